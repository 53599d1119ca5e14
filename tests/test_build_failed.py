"""Files that fail to decode are remembered by (path, size, mtime) and not tried again until
they change; ``--retry-failed`` tries them anyway; verify covers the list."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import engine_helpers
import pytest
from engine_helpers import make_collection, run_cli
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.store import Store
from relsearch.verify import verify_index

OPTS = dict(progress=False, workers=1)


def _broken(root: Path) -> list[Path]:
    bad = [root / "garbage.jpg", root / "sub" / "truncated.png"]
    bad[0].write_bytes(b"not a picture at all" * 50)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(bad[1])
    bad[1].write_bytes(bad[1].read_bytes()[:60])
    return bad


def _failed_meta(idx: Path):
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        return store.get_meta("failed")


def _loads() -> tuple[int, int]:
    return engine_helpers.TinyColorEncoder.instances, engine_helpers.TinyColorEncoder.images_embedded


def test_failed_files_are_skipped_until_they_change(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 6)
    bad = _broken(root)
    rep = build_index(root, idx, BuildOptions(encoders="tinycolor", **OPTS))
    assert rep.added == 6 and sorted(f["path"] for f in rep.failed) == sorted(map(str, bad))
    assert rep.failed_before == 0
    assert set(_failed_meta(idx)) == set(map(str, bad))

    # nothing changed: the failures are listed again, and no model loads to find that out
    before = _loads()
    rep = build_index(root, idx, BuildOptions(**OPTS))
    assert _loads() == before
    assert rep.failed_before == 2 and sorted(f["path"] for f in rep.failed) == sorted(map(str, bad))
    assert all(f["status"].startswith("failed before") for f in rep.failed)
    assert (rep.added, rep.unchanged, rep.generation) == (0, 6, 1)

    # one touched (a new mtime): tried again, fails again; the other still skipped
    os.utime(bad[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    rep = build_index(root, idx, BuildOptions(**OPTS))
    assert rep.failed_before == 1
    assert {f["path"]: "status" in f for f in rep.failed} == {str(bad[0]): False, str(bad[1]): True}

    # one repaired: indexed; the other deleted: forgotten
    Image.new("RGB", (32, 32), (250, 250, 0)).save(bad[1])
    bad[0].unlink()
    rep = build_index(root, idx, BuildOptions(**OPTS))
    assert (rep.added, rep.failed, rep.failed_before) == (1, [], 0)
    assert _failed_meta(idx) is None
    assert verify_index(idx).consistent


def test_retry_failed_tries_them_anyway(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    bad = _broken(root)
    build_index(root, idx, BuildOptions(encoders="tinycolor", **OPTS))
    rep = build_index(root, idx, BuildOptions(retry_failed=True, **OPTS))
    assert rep.failed_before == 0 and sorted(f["path"] for f in rep.failed) == sorted(map(str, bad))
    assert not any("status" in f for f in rep.failed)
    assert set(_failed_meta(idx)) == set(map(str, bad))  # still failing: remembered again


def test_cli_says_what_it_skipped(tmp_path, capsys):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    _broken(root)
    assert run_cli("build-index", str(root), "--index", str(idx), "--encoders", "tinycolor") == 0
    capsys.readouterr()
    assert run_cli("build-index", str(root), "--index", str(idx)) == 0
    err = capsys.readouterr().err
    assert "2 failed before, unchanged: skipped; --retry-failed to try again" in err
    assert "failed: " not in err  # not listed one by one every time
    assert run_cli("build-index", str(root), "--index", str(idx), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failed_before"] == 2 and len(out["failed"]) == 2 and out["embedded"] == 0
    assert run_cli("build-index", str(root), "--index", str(idx), "--retry-failed") == 0
    err = capsys.readouterr().err
    assert err.count("failed: ") == 2 and "failed before" not in err


def test_verify_notes_the_list_and_repairs_a_malformed_one(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    _broken(root)
    build_index(root, idx, BuildOptions(encoders="tinycolor", **OPTS))
    report = verify_index(idx)
    assert report.consistent and any("2 file(s) failed to decode before" in n for n in report.notes)
    with Store.open(idx / "meta.lmdb") as store:
        store.write(lambda txn: store.put_meta(txn, "failed", {"x.jpg": ["big", 1, "?"]}))
    report = verify_index(idx)
    assert not report.consistent and any("failed before is malformed" in p for p in report.problems)
    report = verify_index(idx, repair=True)
    assert any("malformed list" in r for r in report.repaired)
    assert _failed_meta(idx) is None and verify_index(idx).consistent
    # a build after that tries the files again and remembers them anew
    rep = build_index(root, idx, BuildOptions(**OPTS))
    assert rep.failed_before == 0 and len(_failed_meta(idx)) == 2


@pytest.mark.parametrize("raw", [[], {"a": [1, 2]}, {"a": [True, 2, "x"]}, {"a": [1, 2, 3]}])
def test_a_malformed_list_is_not_trusted(raw):
    from relsearch.build import remembered_failures

    assert remembered_failures(raw) is None
    assert remembered_failures({"a": [1, 2, "bad"]}) == {"a": [1, 2, "bad"]}
