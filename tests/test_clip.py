import numpy as np
import pytest
import torch

from fgb2i_hf.clip import CLIPScorer, images_to_tensor

TINY = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def test_embeddings_are_unit_norm_and_round_trip(tmp_path):
    scorer = CLIPScorer.from_config(TINY)
    images = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    img = scorer.encode_images(images)
    txt = scorer.encode_text(["a dog", "a red car", "x"])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    scorer.save_pretrained(tmp_path)
    again = CLIPScorer.from_pretrained(str(tmp_path))
    torch.testing.assert_close(again.encode_images(images), img)
    torch.testing.assert_close(again.encode_text(["a dog", "a red car", "x"]), txt)


def test_image_inputs_agree_across_formats():
    images = np.random.default_rng(1).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    from PIL import Image

    a = images_to_tensor(images)
    b = images_to_tensor([Image.fromarray(i) for i in images])
    c = images_to_tensor(torch.from_numpy(images))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert a.shape == (2, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        images_to_tensor(images[0])


def test_missing_folder_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        CLIPScorer.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("name", ["tiny", "simnsd/clip"])
def test_text_embeddings_on_the_trimmed_context_equal_the_full_contexts(name):
    """encode_text runs the causal text tower only up to the batch's last end-of-text token; the padding after it
    cannot change the pooled embedding, so the result equals open_clip's full-context encode_text up to float
    rounding (different matrix shapes: not bit-equal by construction, hence a tolerance)."""
    torch.manual_seed(0)
    scorer = CLIPScorer.from_config(TINY) if name == "tiny" else CLIPScorer.from_pretrained(name)
    texts = ["a dog", "two people riding bicycles down a busy street past a red bus", "x", ""]
    tokens = scorer.tokenize(texts)
    length = int(tokens.argmax(-1).max()) + 1
    assert length < tokens.shape[1]  # the trimmed path runs on fewer positions
    with torch.no_grad():
        full = scorer.model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(scorer.encode_text(texts), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scorer.encode_text(texts[:1]), full[:1], atol=1e-5, rtol=1e-4)  # trimmed to 3 positions
