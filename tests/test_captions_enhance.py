import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from captions_helpers import ArrayStimuli, corrupt_h5_image, random_images, write_h5_brick
from fgb2i_hf.captions.cache import CaptionCacheError, read_cache
from fgb2i_hf.captions.enhance import (LLAVA_PROMPT_FORMAT, ImageCaptioner, NotAVisionLanguageModelError,
                                       enhance_captions)
from fgb2i_hf.captions.length import clip_token_count
from fgb2i_hf.data import NSDStimuli
from fgb2i_hf.testing import save_tiny_llava, tiny_llava
from greedy_helpers import MARGIN, smallest_greedy_margin

GEN = {"max_new_tokens": 12}


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(str(tmp_path_factory.mktemp("tiny_llava")))


@pytest.fixture(scope="module")
def captioner(llava_dir):
    return ImageCaptioner.from_pretrained(llava_dir, generation_kwargs=GEN)


def lines_of(path):
    data = open(path, "rb").read()
    assert data == b"" or data.endswith(b"\n"), "the cache ends with a torn line"
    return [json.loads(line) for line in data.decode().splitlines()]


def test_captions_are_written_for_exactly_the_requested_ids(captioner, tmp_path):
    stimuli = ArrayStimuli(random_images(20))
    path = str(tmp_path / "fine.jsonl")
    summary = enhance_captions(captioner, stimuli, [7, 3, 3, 12, 0, 19], path, batch_size=4, progress=False)
    records = lines_of(path)
    assert sorted(r["nsd_id"] for r in records) == [0, 3, 7, 12, 19]  # each once, repeats captioned once
    for r in records:
        assert set(r) == {"nsd_id", "caption", "model", "revision", "settings_hash", "truncated"}
        assert r["model"] == captioner.model_id and r["revision"] == "main"
        assert r["settings_hash"] == captioner.settings_hash and isinstance(r["caption"], str)
    assert (summary.requested, summary.done, summary.skipped, summary.failed) == (5, 5, 0, {})
    assert "done 5, skipped 0" in str(summary) and "failed 0" in str(summary)


def test_rerun_skips_ids_already_done_with_the_same_settings(captioner, tmp_path):
    stimuli = ArrayStimuli(random_images(10))
    path = str(tmp_path / "fine.jsonl")
    enhance_captions(captioner, stimuli, [1, 2, 3], path, batch_size=2, progress=False)
    before = open(path, "rb").read()
    again = enhance_captions(captioner, stimuli, [1, 2, 3], path, batch_size=2, progress=False)
    assert (again.done, again.skipped) == (0, 3) and open(path, "rb").read() == before
    more = enhance_captions(captioner, stimuli, [2, 3, 4, 5], path, batch_size=2, progress=False)
    assert (more.done, more.skipped) == (2, 2)
    assert sorted(r["nsd_id"] for r in lines_of(path)) == [1, 2, 3, 4, 5]


def test_batched_captions_equal_one_image_at_a_time(captioner, tmp_path):
    stimuli = ArrayStimuli(random_images(6, seed=3))
    a = enhance_captions(captioner, stimuli, range(6), str(tmp_path / "a.jsonl"), batch_size=4, progress=False)
    b = enhance_captions(captioner, stimuli, range(6), str(tmp_path / "b.jsonl"), batch_size=1, progress=False,
                         prefetch=False)
    assert a.done == b.done == 6
    # batches of 4 and of 1 run other kernels: the same captions because no greedy step is a near-tie (this random
    # LLaVA's logits are ~0.1 in size, so its rounding noise is ~1e-7 and a tenth of MARGIN is still far above it)
    tokenizer = captioner.processor.tokenizer
    for image in random_images(6, seed=3):
        inputs = captioner.prepare([image])
        out = captioner.model.generate(**inputs, **GEN, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                       output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, inputs["input_ids"].shape[1]:]
        assert smallest_greedy_margin(new, torch.stack(out.logits, 1), tokenizer.eos_token_id) >= MARGIN / 10
    assert {r["nsd_id"]: r["caption"] for r in lines_of(tmp_path / "a.jsonl")} == \
           {r["nsd_id"]: r["caption"] for r in lines_of(tmp_path / "b.jsonl")}


def test_prompt_uses_the_chat_template_or_llava_format_and_enters_the_hash():
    model, with_template = tiny_llava()
    _, without_template = tiny_llava(chat_template=False)
    a = ImageCaptioner(model, with_template, "m", prompt="Describe the scene.")
    b = ImageCaptioner(model, without_template, "m", prompt="Describe the scene.")
    assert a.prompt_text == b.prompt_text == "USER: <image>\nDescribe the scene. ASSISTANT:"
    assert a.prompt_text == LLAVA_PROMPT_FORMAT.format(prompt="Describe the scene.")
    assert a.settings_hash == b.settings_hash
    c = ImageCaptioner(model, with_template, "m", prompt="List the objects.")
    d = ImageCaptioner(model, with_template, "m", prompt="Describe the scene.", generation_kwargs={"num_beams": 2})
    assert len({a.settings_hash, c.settings_hash, d.settings_hash}) == 3
    assert a.generation_kwargs["do_sample"] is False  # greedy by default
    with pytest.raises(ValueError, match="prompt"):
        ImageCaptioner(model, with_template, "m", prompt="  ")


def test_processor_pads_on_the_left_and_cpu_runs_in_float32(captioner):
    assert captioner.processor.tokenizer.padding_side == "left"
    assert captioner.dtype == torch.float32 and captioner.device.type == "cpu"
    inputs = captioner.prepare(random_images(2, size=40))
    n_image_tokens = int((inputs["input_ids"][0] == captioner.model.config.image_token_id).sum())
    assert n_image_tokens == 4  # (28 // 14) ** 2 patches: what the vision tower produces


def test_a_tokenizer_without_pad_token_pads_with_eos():
    model, processor = tiny_llava()
    processor.tokenizer.pad_token = None
    captioner = ImageCaptioner(model, processor, "m", generation_kwargs=GEN)
    assert processor.tokenizer.pad_token == "</s>"
    assert len(captioner.caption(random_images(2))) == 2


def test_progress_bar_shows_the_eta_and_counts(captioner, tmp_path, capfd):
    enhance_captions(captioner, ArrayStimuli(random_images(4)), range(4), str(tmp_path / "f.jsonl"), batch_size=2,
                     progress=True)
    err = capfd.readouterr().err
    assert "captioning" in err and "4/4" in err and "img/s" in err and "<00:00" in err  # elapsed<remaining


def test_long_captions_are_cut_to_77_clip_tokens_and_counted(llava_dir, tmp_path):
    captioner = ImageCaptioner.from_pretrained(llava_dir, generation_kwargs={"max_new_tokens": 100})
    uncut = ImageCaptioner.from_pretrained(llava_dir, generation_kwargs={"max_new_tokens": 100}, max_clip_tokens=None)
    stimuli = ArrayStimuli(random_images(4))
    summary = enhance_captions(captioner, stimuli, range(4), str(tmp_path / "f.jsonl"), batch_size=4, progress=False)
    records = lines_of(tmp_path / "f.jsonl")
    raw = dict(zip(range(4), uncut.generate(uncut.prepare(stimuli.get(range(4))))))
    assert summary.truncated == sum(r["truncated"] for r in records) > 0
    for r in records:
        assert clip_token_count(r["caption"]) <= 77
        assert r["truncated"] == (clip_token_count(raw[r["nsd_id"]]) > 77)
        assert raw[r["nsd_id"]].startswith(r["caption"])


def test_a_cache_written_with_other_settings_is_refused_unless_mixing_is_allowed(llava_dir, tmp_path):
    stimuli = ArrayStimuli(random_images(4))
    path = str(tmp_path / "f.jsonl")
    first = ImageCaptioner.from_pretrained(llava_dir, generation_kwargs=GEN)
    other = ImageCaptioner.from_pretrained(llava_dir, generation_kwargs=GEN, prompt="List every object.")
    enhance_captions(first, stimuli, [0, 1], path, progress=False)
    before = open(path, "rb").read()
    with pytest.raises(CaptionCacheError, match=f"{first.settings_hash} \\(2 records\\)"):
        enhance_captions(other, stimuli, [0, 1, 2], path, progress=False)
    assert open(path, "rb").read() == before
    summary = enhance_captions(other, stimuli, [0, 1, 2], path, progress=False, allow_mixed_settings=True)
    assert summary.done == 3
    by_hash = {}
    for r in lines_of(path):
        by_hash.setdefault(r["settings_hash"], []).append(r["nsd_id"])
    assert by_hash == {first.settings_hash: [0, 1], other.settings_hash: [0, 1, 2]}


def test_ids_not_in_imgbrick_are_refused_before_anything_is_written(captioner, tmp_path):
    stimuli = ArrayStimuli(random_images(5))
    path = tmp_path / "f.jsonl"
    with pytest.raises(ValueError, match=r"nsd_id \[-1, 5, 9\] not in imgBrick .*ids 0\.\.4"):
        enhance_captions(captioner, stimuli, [0, 5, 9, -1], str(path), progress=False)
    assert not path.exists()


def test_an_unreadable_image_fails_alone_and_is_retried_on_the_next_run(captioner, tmp_path):
    images = random_images(8)
    brick = write_h5_brick(str(tmp_path / "nsd_stimuli.hdf5"), images)
    corrupt_h5_image(brick, 5)
    path = str(tmp_path / "f.jsonl")

    with NSDStimuli(brick) as stimuli:  # the data package's reader of imgBrick
        summary = enhance_captions(captioner, stimuli, range(8), path, batch_size=3, progress=False)
    assert list(summary.failed) == [5] and "unreadable image" in summary.failed[5] and "OSError" in summary.failed[5]
    assert sorted(r["nsd_id"] for r in lines_of(path)) == [0, 1, 2, 3, 4, 6, 7]
    assert "failed nsd_id 5: unreadable image" in str(summary)
    write_h5_brick(brick, images)  # the file is repaired: the next run captions only the missing image
    with NSDStimuli(brick) as stimuli:
        again = enhance_captions(captioner, stimuli, range(8), path, batch_size=3, progress=False)
    assert (again.done, again.skipped, again.failed) == (1, 7, {})
    assert sorted(r["nsd_id"] for r in lines_of(path)) == list(range(8))


def test_an_image_of_the_wrong_shape_is_reported_as_failed(captioner, tmp_path):
    class Gray(ArrayStimuli):
        def get(self, ids):
            return self.images[list(ids)][..., 0]  # (N, H, W): no channels

    summary = enhance_captions(captioner, Gray(random_images(2)), [0, 1], str(tmp_path / "f.jsonl"), progress=False)
    assert sorted(summary.failed) == [0, 1] and "expected uint8 (H, W, 3)" in summary.failed[0]


def test_a_text_only_model_is_not_a_vision_language_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = str(tmp_path / "gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(folder)
    with pytest.raises(NotAVisionLanguageModelError, match=r"gpt2.*'gpt2' model \(GPT2LMHeadModel\), not a vision-language"):
        ImageCaptioner.from_pretrained(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAVisionLanguageModelError, match="cannot load a transformers model config"):
        ImageCaptioner.from_pretrained(str(empty))
    with pytest.raises(NotAVisionLanguageModelError, match="no image processor"):
        model, processor = tiny_llava()
        ImageCaptioner(model, processor.tokenizer, "tok-only")


def test_an_exception_mid_run_keeps_finished_batches_and_a_torn_line_is_repaired(captioner, tmp_path, caplog):
    stimuli = ArrayStimuli(random_images(9))
    path = str(tmp_path / "f.jsonl")
    calls = []
    original = captioner.generate

    def failing_generate(inputs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(inputs)

    captioner.generate = failing_generate
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            enhance_captions(captioner, stimuli, range(9), path, batch_size=2, progress=False)
    finally:
        del captioner.generate
    assert sorted(r["nsd_id"] for r in lines_of(path)) == [0, 1, 2, 3]  # only the batch in flight is lost
    with open(path, "ab") as f:  # and a torn line, as a power cut mid-write would leave
        f.write(b'{"nsd_id": 4, "caption": "a half-writ')
    summary = enhance_captions(captioner, stimuli, range(9), path, batch_size=2, progress=False)
    assert (summary.dropped_lines, summary.skipped, summary.done) == (1, 4, 5)
    assert "torn last line" in caplog.text
    records = lines_of(path)
    assert sorted(r["nsd_id"] for r in records) == list(range(9))


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from captions_helpers import ArrayStimuli, random_images
    from fgb2i_hf.captions import cache as C
    from fgb2i_hf.captions.enhance import ImageCaptioner, enhance_captions

    captioner = ImageCaptioner.from_pretrained({model!r}, generation_kwargs={gen!r})
    original, calls = C.CaptionCache.append, []

    def append(self, records):
        calls.append(1)
        if len(calls) == 3:  # the third batch: half of its first line reaches the disk, then the process is killed
            data = C.encode_records(records)
            with open(self.path, "ab") as f:
                f.write(data[: data.index(b"\\n") // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, records)

    C.CaptionCache.append = append
    enhance_captions(captioner, ArrayStimuli(random_images(12)), range(12), {path!r}, batch_size=3, progress=False)
""")


def test_resume_after_a_kill_mid_write_has_no_duplicates_and_no_torn_lines(llava_dir, captioner, tmp_path):
    path = str(tmp_path / "fine.jsonl")
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=os.path.dirname(__file__), model=llava_dir, gen=GEN, path=path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                        os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    scan = read_cache(path)
    assert sorted(r["nsd_id"] for r in scan.records) == list(range(6))  # two whole batches survived
    assert len(scan.bad_lines) == 1  # the torn third batch
    survived = open(path, "rb").read().split(b"\n")[:6]

    resumed = ImageCaptioner.from_pretrained(llava_dir, generation_kwargs=GEN)  # same settings as the killed run
    summary = enhance_captions(resumed, ArrayStimuli(random_images(12)), range(12), path, batch_size=3, progress=False)
    assert (summary.dropped_lines, summary.skipped, summary.done) == (1, 6, 6)
    records = lines_of(path)
    assert [r["nsd_id"] for r in records] == list(range(12))  # no duplicates, nothing missing
    assert open(path, "rb").read().split(b"\n")[:6] == survived  # finished batches are kept as written
    fresh = enhance_captions(resumed, ArrayStimuli(random_images(12)), range(12), str(tmp_path / "fresh.jsonl"),
                             batch_size=3, progress=False)
    # same result as an uninterrupted run; exact by construction: the same weights file and batches of 3, so the
    # same kernels on this machine, whichever process ran them
    assert fresh.done == 12 and lines_of(tmp_path / "fresh.jsonl") == records
