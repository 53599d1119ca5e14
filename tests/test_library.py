"""One library over several folders: build-index DIR1 DIR2, query --here, older single-folder indexes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from engine_helpers import make_collection
from typer.testing import CliRunner

from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.errors import RelsearchError
from relsearch.indexdir import Manifest, read_manifest

OPTS = BuildOptions(encoders="tinycolor", progress=False, workers=1)


def _snapshot(idx: Path) -> dict[str, bytes]:
    return {str(p.relative_to(idx)): p.read_bytes() for p in sorted(idx.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def library(tmp_path):
    a, b, c, idx = tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "idx"
    make_collection(a, 6)
    make_collection(b, 9, seed=1)
    make_collection(c, 3, seed=2)
    res = _cli("build-index", a, b, "--index", idx, "--encoders", "tinycolor", "--json")
    assert res.exit_code == 0, res.output
    return a, b, c, idx


def test_several_folders_make_one_index(library):
    a, b, c, idx = library
    m = read_manifest(idx)
    assert m.collection_roots() == [str(a.resolve()), str(b.resolve())] and m.count == 15
    assert json.loads((idx / "manifest.json").read_text())["roots"] == m.collection_roots()
    info = _cli("info", "--index", idx)
    assert info.exit_code == 0 and f"collection: {a.resolve()}, {b.resolve()}" in info.output

    again = json.loads(_cli("build-index", a, b, "--index", idx, "--json").stdout)
    assert (again["unchanged"], again["added"], again["removed"]) == (15, 0, 0)
    # naming a third folder grows the library; the stored ones come first
    grown = json.loads(_cli("build-index", c, a, b, "--index", idx, "--json").stdout)
    assert (grown["added"], grown["removed"]) == (3, 0)
    assert read_manifest(idx).collection_roots() == [str(p.resolve()) for p in (a, b, c)]


def test_leaving_out_a_folder_is_refused_and_writes_nothing(library):
    a, b, c, idx = library
    before = _snapshot(idx)
    res = _cli("build-index", a, "--index", idx)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "holds collection folders" in res.stderr and f"build-index {a.resolve()} {b.resolve()}" in res.stderr
    assert _snapshot(idx) == before


def test_nested_or_missing_folders_are_refused(tmp_path):
    a = tmp_path / "a"
    make_collection(a, 4)
    with pytest.raises(RelsearchError, match="is inside"):
        build_index([a, a / "sub"], tmp_path / "idx", OPTS)
    with pytest.raises(RelsearchError, match="does not exist"):
        build_index([a, tmp_path / "gone"], tmp_path / "idx", OPTS)
    assert not (tmp_path / "idx").exists()


def test_single_folder_manifest_is_unchanged(tmp_path):
    a = tmp_path / "a"
    make_collection(a, 4)
    build_index(a, tmp_path / "idx", OPTS)
    on_disk = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert "roots" not in on_disk  # what older relsearch wrote and reads
    old = Manifest.from_dict(on_disk)
    assert old.roots == [] and old.collection_roots() == [str(a.resolve())]


def test_query_here_keeps_hits_under_the_working_folder(library, monkeypatch):
    a, b, c, idx = library
    probe = sorted(a.rglob("*.png"))[0]
    monkeypatch.chdir(b)
    monkeypatch.delenv("PWD", raising=False)
    res = _cli("query", probe, "--index", idx, "-k", "5", "--here", "--json")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["results"]["tinycolor"]
    assert len(hits) == 5 and all(h["path"].startswith(str(b) + os.sep) for h in hits)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    everywhere = json.loads(_cli("query", probe, "--index", idx, "-k", "15", "--json").stdout)["results"]["tinycolor"]
    assert any(not h["path"].startswith(str(b)) for h in everywhere[:5])  # the scope changed the answer

    monkeypatch.chdir(b / "sub")  # a subfolder scopes further
    sub = json.loads(_cli("query", probe, "--index", idx, "-k", "5", "--here", "--json").stdout)["results"]
    assert sub["tinycolor"] and all("/b/sub/" in h["path"] for h in sub["tinycolor"])

    monkeypatch.chdir(c)  # not part of the index
    res = _cli("query", probe, "--index", idx, "--here")
    assert res.exit_code == 2 and "--here" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_repair_rebuilds_every_folder_of_a_library(library):
    from relsearch.verify import verify_index

    a, b, c, idx = library
    os.truncate(idx / "meta.lmdb" / "data.mdb", 3 * 4096)  # a store LMDB cannot read: rebuilt from the folders
    report = verify_index(idx, repair=True)
    assert any("rebuilt it from the collection" in line and str(b.resolve()) in line for line in report.repaired)
    m = read_manifest(idx)
    assert m.collection_roots() == [str(a.resolve()), str(b.resolve())] and m.count == 15
    assert verify_index(idx).consistent


def test_scan_of_several_folders_keeps_what_each_passed_over(tmp_path):
    from relsearch.collection.roots import check_roots, scan_roots

    a, b = tmp_path / "a", tmp_path / "b"
    make_collection(a, 3)
    make_collection(b, 2, seed=1)
    (b / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (b / ".hidden").mkdir()
    scanned = scan_roots(check_roots([a, b]))
    assert len(scanned.files) == 5 and [f.path for f in scanned.files] == sorted(f.path for f in scanned.files)
    assert [(p, why) for p, why in scanned.skipped] == [(str(b / "gone.png"), "broken symlink")]
