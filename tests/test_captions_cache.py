import json
import logging
import os
import stat

import pytest

from fgb2i_hf.captions.cache import CaptionCache, CaptionCacheError, read_cache, settings_hash, write_records_atomic

BASE = dict(model="llava-hf/llava-1.5-7b-hf", revision="main", prompt="USER: <image>\nDescribe. ASSISTANT:",
            generation_kwargs={"max_new_tokens": 96, "do_sample": False}, max_clip_tokens=77)


def rec(i, h="h1", caption=None):
    return {"nsd_id": i, "caption": caption or f"caption {i}", "model": "m", "revision": "main", "settings_hash": h,
            "truncated": False}


def test_settings_hash_is_stable_and_sensitive_to_each_setting():
    h = settings_hash(**BASE)
    assert h == settings_hash(**{**BASE, "generation_kwargs": {"do_sample": False, "max_new_tokens": 96}})  # key order
    changed = [dict(BASE, model="other"), dict(BASE, revision="abc"), dict(BASE, prompt="Describe."),
               dict(BASE, generation_kwargs={"max_new_tokens": 50, "do_sample": False}), dict(BASE, max_clip_tokens=None)]
    hashes = {settings_hash(**c) for c in changed}
    assert h not in hashes and len(hashes) == len(changed)


def test_read_cache_sorts_good_records_from_torn_and_corrupt_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    good = [rec(0), rec(1, caption="un café ☕")]
    path.write_bytes(
        (json.dumps(good[0]) + "\n").encode()
        + b"\n"  # blank: ignored
        + b'{"nsd_id": 5, "caption": "broken\n'  # corrupt JSON
        + b'{"nsd_id": -1, "caption": "x"}\n'  # negative id
        + b'{"nsd_id": 2, "caption": 7}\n'  # caption not a string
        + b'[1, 2]\n'  # not an object
        + b"\xff\xfe\n"  # not UTF-8
        + (json.dumps(good[1], ensure_ascii=False) + "\n").encode()
        + b'{"nsd_id": 9, "capt'  # torn last line
    )
    scan = read_cache(str(path))
    assert scan.records == good
    assert [n for n, _ in scan.bad_lines] == [3, 4, 5, 6, 7, 9]
    assert "torn last line" in scan.bad_lines[-1][1]
    assert "'nsd_id' must be a non-negative int" in scan.bad_lines[1][1]


def test_open_drops_bad_lines_reports_them_and_rewrites_the_file(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + "garbage\n" + json.dumps(rec(1)) + "\n" + '{"nsd_id": 2, "cap')
    with caplog.at_level(logging.WARNING), CaptionCache.open(str(path), "h1") as cache:
        assert cache.done == {0, 1}
        assert [n for n, _ in cache.scan.bad_lines] == [2, 4]
    assert "dropping 2 torn or corrupt line(s)" in caplog.text and "line 2" in caplog.text and str(path) in caplog.text
    assert path.read_text() == json.dumps(rec(0)) + "\n" + json.dumps(rec(1)) + "\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_append_writes_complete_lines_and_marks_ids_done(tmp_path):
    path = tmp_path / "sub" / "c.jsonl"
    with CaptionCache.open(str(path), "h1") as cache:
        assert cache.done == set()
        cache.append([rec(3), rec(4)])
        cache.append([rec(5)])
        assert cache.done == {3, 4, 5}
    data = path.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 3
    assert [r["nsd_id"] for r in read_cache(str(path)).records] == [3, 4, 5]


def test_append_rejects_records_without_the_required_keys(tmp_path):
    with CaptionCache.open(str(tmp_path / "c.jsonl"), "h1") as cache:
        with pytest.raises(CaptionCacheError, match="'caption' must be a string"):
            cache.append([{"nsd_id": 1}])
    assert not (tmp_path / "c.jsonl").exists() or (tmp_path / "c.jsonl").read_text() == ""


def test_cache_with_other_settings_is_refused_unless_mixing_is_allowed(tmp_path):
    path = tmp_path / "c.jsonl"
    write_records_atomic(str(path), [rec(0, "h1"), rec(1, "h1"), {"nsd_id": 2, "caption": "oracle", "model": "simnsd/oracle"}])
    before = path.read_bytes()
    with pytest.raises(CaptionCacheError) as err:
        CaptionCache.open(str(path), "h2")
    msg = str(err.value)
    assert str(path) in msg and "h1 (2 records)" in msg and "none (1 records)" in msg and "h2" in msg
    assert "allow_mixed_settings" in msg and "simnsd/oracle" in msg
    assert path.read_bytes() == before  # a refusal changes nothing
    with CaptionCache.open(str(path), "h2", allow_mixed_settings=True) as cache:
        assert cache.done == set()  # other settings' captions do not count as done
    with CaptionCache.open(str(path), "h1", allow_mixed_settings=True) as cache:
        assert cache.done == {0, 1}


def test_a_second_writer_is_refused_while_the_first_holds_the_cache(tmp_path):
    path = str(tmp_path / "c.jsonl")
    with CaptionCache.open(path, "h1"):
        with pytest.raises(CaptionCacheError, match="another process is writing"):
            CaptionCache.open(path, "h1")
    with CaptionCache.open(path, "h1"):  # released on close
        pass


def test_a_folder_is_not_a_cache(tmp_path):
    with pytest.raises(CaptionCacheError, match="is a folder"):
        CaptionCache.open(str(tmp_path), "h1")


def test_repairing_a_cache_keeps_its_permissions(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + '{"nsd_id": 1, "cap')
    os.chmod(path, 0o644)
    with CaptionCache.open(str(path), "h1") as cache:
        assert cache.done == {0}
    assert path.read_text() == json.dumps(rec(0)) + "\n"  # repaired...
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # ...with its mode (the temporary file's was 0600)
    fresh = tmp_path / "fresh.jsonl"
    write_records_atomic(str(fresh), [rec(0)])  # a new file: the process's umask, like open() would give
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~umask


def test_no_lock_file_is_left_beside_the_cache(tmp_path):
    path = str(tmp_path / "c.jsonl")
    with CaptionCache.open(path, "h1") as cache:
        cache.append([rec(0)])
        with pytest.raises(CaptionCacheError, match="another process is writing"):
            CaptionCache.open(path, "h1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    with CaptionCache.open(path, "h1") as cache:  # and it can be taken again
        assert cache.done == {0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_a_duplicate_id_is_reported_and_dropped(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    lines = [rec(0), rec(1), rec(0, caption="captioned again"), rec(0, "h2")]  # h2: other settings, not a duplicate
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with caplog.at_level(logging.WARNING), CaptionCache.open(str(path), "h1", allow_mixed_settings=True) as cache:
        assert cache.done == {0, 1}
    assert "dropping 1 duplicate record(s)" in caplog.text and "line 3 repeats nsd_id 0 of line 1" in caplog.text
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in (lines[0], lines[1], lines[3]))
