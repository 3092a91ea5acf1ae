"""convert_vdvae: a state dict under the released VDVAE names (openai/vdvae) -> VDVAEModel, and back.

The released names and shapes are generated here from a description of the released module layout (vae.py,
vae_helpers.py of openai/vdvae, read, not imported): the test never builds our model to know what to expect.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fgb2i_hf.models.vdvae import VDVAEModel, parse_block_string
from fgb2i_hf.models.vdvae import mixture_of_logistics as mol
from fgb2i_hf.models.vdvae.convert_vdvae import convert_state_dict, main, to_released_state_dict

# A small model that still has every feature: wider low resolutions (encoder zero-padding, decoder channel slices),
# a resolution without a learned initial state (16 > no_bias_above), 1x1 convs at 1 px, two mixture components.
SMALL = dict(image_size=16, width=8, zdim=3, custom_width_str="4:12,1:12",
             enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1",
             bottleneck_multiple=0.5, no_bias_above=8, num_mixtures=2, num_target_layers=3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions: one thread beat two on the shared 2-core CPU (a training step of the trainer test's model,
    0.74 s vs 19 s under load), so this module runs on one and restores the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def released_shapes(hps) -> dict[str, tuple]:
    """The released model's state-dict names and shapes: VAE(encoder=Encoder, decoder=Decoder)."""
    widths = {int(k): int(v) for k, v in (e.split(":") for e in hps["custom_width_str"].split(",") if e)}
    width_at = lambda res: widths.get(res, hps["width"])  # noqa: E731
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def block(name, cin, mid, cout, res):  # Block: c1 1x1, c2 and c3 3x3 (1x1 at res <= 2), c4 1x1
        k = 3 if res > 2 else 1
        conv(f"{name}.c1", cin, mid, 1), conv(f"{name}.c2", mid, mid, k), conv(f"{name}.c3", mid, mid, k)
        conv(f"{name}.c4", mid, cout, 1)

    conv("encoder.in_conv", 3, hps["width"], 3)
    for i, (res, _) in enumerate(parse_block_string(hps["enc_blocks"], "enc")):
        w = width_at(res)
        block(f"encoder.enc_blocks.{i}", w, int(w * hps["bottleneck_multiple"]), w, res)
    dec = parse_block_string(hps["dec_blocks"], "dec")
    for i, (res, _) in enumerate(dec):  # DecBlock: enc (posterior), prior, z_proj, resnet
        w, z = width_at(res), hps["zdim"]
        mid = int(w * hps["bottleneck_multiple"])
        block(f"decoder.dec_blocks.{i}.enc", 2 * w, mid, 2 * z, res)
        block(f"decoder.dec_blocks.{i}.prior", w, mid, 2 * z + w, res)
        conv(f"decoder.dec_blocks.{i}.z_proj", z, w, 1)
        block(f"decoder.dec_blocks.{i}.resnet", w, mid, w, res)
    for j, res in enumerate(r for r in sorted({r for r, _ in dec}) if r <= hps["no_bias_above"]):
        shapes[f"decoder.bias_xs.{j}"] = (1, width_at(res), res, res)
    conv("decoder.out_net.out_conv", hps["width"], hps["num_mixtures"] * 10, 1)
    shapes["decoder.gain"] = shapes["decoder.bias"] = (1, hps["width"], 1, 1)
    return shapes


def released_state(hps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.3 for k, s in released_shapes(hps).items()}


def released_computation(state, hps, images):
    """The released model's forward on its own names, written functionally: posterior means of every layer (each
    layer fed its posterior mean) and the output-distribution parameters."""
    widths = {int(k): int(v) for k, v in (e.split(":") for e in hps["custom_width_str"].split(",") if e)}
    width_at = lambda res: widths.get(res, hps["width"])  # noqa: E731

    def block(name, x, residual, pool=None):
        h = x
        for c in range(1, 5):
            weight = state[f"{name}.c{c}.weight"]
            h = F.conv2d(F.gelu(h), weight, state[f"{name}.c{c}.bias"], padding=weight.shape[-1] // 2)
        h = x + h if residual else h
        return F.avg_pool2d(h, pool) if pool else h

    x = (images * 255 - hps["pixel_mean"]) / hps["pixel_std"]
    x = F.conv2d(x, state["encoder.in_conv.weight"], state["encoder.in_conv.bias"], padding=1)
    acts = {x.shape[-1]: x}
    for i, (_, pool) in enumerate(parse_block_string(hps["enc_blocks"], "enc")):
        x = block(f"encoder.enc_blocks.{i}", x, True, pool)
        x = torch.cat([x, x.new_zeros(x.shape[0], width_at(x.shape[-1]) - x.shape[1], *x.shape[2:])], 1)
        acts[x.shape[-1]] = x
    n, z_dim = images.shape[0], hps["zdim"]
    dec = parse_block_string(hps["dec_blocks"], "dec")
    states = {state[k].shape[-1]: state[k].repeat(n, 1, 1, 1) for k in state if k.startswith("decoder.bias_xs.")}
    means = []
    for i, (res, mixin) in enumerate(dec):
        p = f"decoder.dec_blocks.{i}"
        x = states.get(res, torch.zeros(n, width_at(res), res, res))
        if mixin is not None:
            x = x + F.interpolate(states[mixin][:, :x.shape[1]], scale_factor=res // mixin)
        qm = block(f"{p}.enc", torch.cat([x, acts[res]], 1), False)[:, :z_dim]
        x = x + block(f"{p}.prior", x, False)[:, 2 * z_dim:]
        x = x + F.conv2d(qm, state[f"{p}.z_proj.weight"], state[f"{p}.z_proj.bias"])
        states[res] = block(f"{p}.resnet", x, True)
        means.append(qm)
    top = states[hps["image_size"]] * state["decoder.gain"] + state["decoder.bias"]
    return means, F.conv2d(top, state["decoder.out_net.out_conv.weight"], state["decoder.out_net.out_conv.bias"])


@pytest.fixture(scope="module")
def hps():
    return {**SMALL, "pixel_mean": 115.92961967, "pixel_std": 69.37404}


def test_released_names_convert_and_map_back_exactly(hps):
    released = released_state(hps)
    ours = convert_state_dict(released, SMALL)
    assert len(ours) == len(released)
    model = VDVAEModel(**SMALL)
    model.load_state_dict(ours, strict=True)  # every parameter filled, nothing left over
    back = to_released_state_dict(model.state_dict())
    assert back.keys() == released.keys()
    for name, tensor in released.items():
        assert torch.equal(back[name], tensor), name  # a copy of the same values: bit-exact


def test_converted_model_computes_what_the_released_layout_computes(hps):
    released = released_state(hps, seed=1)
    model = VDVAEModel(**SMALL)
    model.load_state_dict(convert_state_dict(released, SMALL))
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    means, params = released_computation(released, hps, images)
    with torch.no_grad():
        ours = model.encode(images, num_layers=model.num_layers)
    for i, (a, b) in enumerate(zip(ours, means)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"layer {i}")  # same maths, other op order
    decoded = model.decode(ours, output="mean")
    torch.testing.assert_close(decoded, (mol.mean(params, 2) + 1) / 2, atol=1e-5, rtol=1e-5)


def test_ddp_prefix_is_stripped(hps):
    released = released_state(hps)
    ours = convert_state_dict({f"module.{k}": v for k, v in released.items()}, SMALL)
    assert ours.keys() == convert_state_dict(released, SMALL).keys()


def test_bad_checkpoints_name_the_key(hps):
    released = released_state(hps)
    missing = dict(released)
    del missing["decoder.dec_blocks.2.prior.c3.weight"]
    with pytest.raises(KeyError, match=r"missing key.*decoder\.dec_blocks\.2\.prior\.c3\.weight"):
        convert_state_dict(missing, SMALL)
    extra = {**released, "decoder.dec_blocks.99.z_proj.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"unexpected key.*decoder\.dec_blocks\.99\.z_proj\.weight"):
        convert_state_dict(extra, SMALL)
    stray = {**released, "encoder.extra_head.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"encoder\.extra_head\.weight"):
        convert_state_dict(stray, SMALL)
    wrong = {**released, "encoder.enc_blocks.1.c2.weight": torch.zeros(4, 4, 1, 1)}
    with pytest.raises(ValueError, match=r"encoder\.enc_blocks\.1\.c2\.weight.*\(4, 4, 1, 1\).*\(4, 4, 3, 3\)"):
        convert_state_dict(wrong, SMALL)
    # the default (ImageNet-64) config refuses the small model's weights, naming a key
    with pytest.raises((KeyError, ValueError), match=r"'(encoder|decoder)\."):
        convert_state_dict(released)


def test_imagenet64_layout_matches_the_released_parameter_count():
    """The released layout of the ImageNet-64 hyperparameters: 125,005,860 values (openai/vdvae README:
    "125M parameter model"), and our default model has the same names' shapes (built on the meta device)."""
    from fgb2i_hf.models.vdvae.configuration_vdvae import IMAGENET64_DEC_BLOCKS, IMAGENET64_ENC_BLOCKS
    from fgb2i_hf.models.vdvae.convert_vdvae import to_our_name

    hps = dict(width=512, zdim=16, custom_width_str="", enc_blocks=IMAGENET64_ENC_BLOCKS,
               dec_blocks=IMAGENET64_DEC_BLOCKS, bottleneck_multiple=0.25, no_bias_above=64, num_mixtures=10)
    shapes = released_shapes(hps)
    assert sum(math.prod(s) for s in shapes.values()) == 125_005_860
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in VDVAEModel().state_dict().items()}
    assert {to_our_name(k): s for k, s in shapes.items()} == ours


def test_cli_writes_a_loadable_folder(hps, tmp_path):
    import json

    released = released_state(hps)
    checkpoint = tmp_path / "small-model-ema.th"
    torch.save(released, checkpoint)
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL))
    out = tmp_path / "converted"
    main(["--checkpoint", str(checkpoint), "--output_dir", str(out), "--config", str(config)])
    loaded = VDVAEModel.from_pretrained(str(out))
    assert loaded.config.zdim == 3 and loaded.config.dec_blocks == SMALL["dec_blocks"]
    back = to_released_state_dict(loaded.state_dict())
    assert all(torch.equal(back[k], v) for k, v in released.items())  # float32 stored and loaded: bit-exact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch folder left behind
    with pytest.raises(FileNotFoundError, match="no VDVAE checkpoint"):
        main(["--checkpoint", str(tmp_path / "nope.th"), "--output_dir", str(out)])
