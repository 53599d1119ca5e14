"""CLI contracts of build-index / query / info, and bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from engine_helpers import make_collection
from typer.testing import CliRunner

from relsearch.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _snapshot(idx: Path) -> dict[str, bytes]:
    return {str(p.relative_to(idx)): p.read_bytes() for p in sorted(idx.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture()
def built(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 8)
    res = run("build-index", root, "--index", idx, "--encoders", "tinycolor", "--json")
    assert res.exit_code == 0, res.output
    return root, idx, paths, json.loads(res.stdout)


def test_build_index_json_contract(built):
    root, idx, paths, out = built
    assert set(out) >= {"index", "scanned", "added", "updated", "removed", "unchanged", "failed", "encoders"}
    assert (out["scanned"], out["added"], out["failed"], out["encoders"]) == (8, 8, [], ["tinycolor"])
    again = json.loads(run("build-index", root, "--index", idx, "--json").stdout)
    assert (again["added"], again["unchanged"]) == (0, 8)


def test_query_json_and_table(built, tmp_path):
    root, idx, paths, _ = built
    res = run("query", paths[2], "-k", "3", "--index", idx, "--json")
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["query"] == str(paths[2])
    hits = out["results"]["tinycolor"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and set(hits[0]) == {"rank", "score", "path", "id", "copies", "is_query"}
    assert hits[0]["path"] == str(paths[2])
    # a query image from outside the collection works
    outside = make_collection(tmp_path / "elsewhere", 1, seed=99)[0]
    table = run("query", outside, "-k", "2", "--index", idx)
    assert table.exit_code == 0 and "tinycolor" in table.stdout and "   1  " in table.stdout


def test_info(built):
    _, idx, _, _ = built
    res = run("info", "--index", idx, "--json")
    info = json.loads(res.stdout)
    assert info["images"] == 8 and info["encoders"]["tinycolor"]["dim"] == 48
    assert "tinycolor" in run("info", "--index", idx).stdout


def test_default_index_location(tmp_path, monkeypatch):
    root = tmp_path / "moodboard"
    make_collection(root, 3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELSEARCH_HOME", str(tmp_path / "home"))
    res = run("build-index", root, "--encoders", "tinycolor", "--json")
    assert json.loads(res.stdout)["index"] == str(tmp_path / "home" / "indexes" / "moodboard")
    assert not (tmp_path / "indexes").exists()  # never the working directory
    assert run("query", root / "img_001.png", "-k", "1", "--json").exit_code == 0
    assert "moodboard" in run("info").stdout


def _assert_one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in res.output


def test_bad_inputs_one_line_exit_2_nothing_written(built, tmp_path):
    root, idx, paths, _ = built
    snap = _snapshot(idx)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("build-index", tmp_path / "missing", "--index", idx), "does not exist"),
        (("build-index", empty, "--index", tmp_path / "new"), "no images found"),
        (("build-index", root, "--index", idx, "--encoders", "nosuch"), "unknown encoder 'nosuch'"),
        (("build-index", root, "--index", idx, "--encoders", "tinycolor@other"), "weights"),
        (("query", not_image, "--index", idx), "not a readable image"),
        (("query", tmp_path / "nope.png", "--index", idx), "does not exist"),
        (("query", paths[0], "--index", tmp_path / "noindex"), "no index"),
        (("query", paths[0], "--index", idx, "--encoders", "nosuch"), "unknown encoder"),
        (("query", paths[0], "--index", idx, "--encoders", "imagenet"), "has no 'imagenet' column"),
        (("info", "--index", tmp_path / "noindex"), "no index"),
    ]
    for args, needle in cases:
        _assert_one_line_error(run(*args), needle)
    assert _snapshot(idx) == snap
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_index_path(tmp_path):
    root = tmp_path / "col"
    make_collection(root, 2)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _assert_one_line_error(run("build-index", root, "--index", ro / "idx", "--encoders", "tinycolor"),
                               "not writable")
    finally:
        ro.chmod(0o700)


def test_index_path_under_a_file_is_refused(tmp_path):
    root = tmp_path / "col"
    make_collection(root, 2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_one_line_error(run("build-index", root, "--index", blocker / "idx", "--encoders", "tinycolor"),
                           "not a directory")


@pytest.mark.parametrize("victim", ["manifest.json", "faiss", "meta.lmdb/data.mdb"])
def test_corrupt_index_files(built, victim):
    root, idx, paths, _ = built
    target = idx / victim
    if target.is_dir():
        target = next(p for p in target.iterdir() if p.suffix == ".faiss")
    good_manifest = (idx / "manifest.json").read_bytes()
    target.write_bytes(b"garbage" * 3)
    snap = _snapshot(idx)
    res = run("query", paths[0], "--index", idx)
    if victim == "manifest.json":
        # manifest.json is a copy of the manifest committed in LMDB: queries do not need it
        assert res.exit_code == 0
    else:
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    res = run("build-index", root, "--index", idx)
    if victim == "meta.lmdb/data.mdb":  # the source of truth itself: nothing to rebuild from
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
        assert _snapshot(idx) == snap
        return
    # what can be rebuilt without embedding is repaired by a plain rebuild
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((idx / "manifest.json").read_text())
    assert list(manifest["encoders"]) == list(json.loads(good_manifest)["encoders"])
    assert run("query", paths[0], "--index", idx).exit_code == 0


def test_unwritable_index_path_reported_before_any_write(tmp_path, monkeypatch):
    # Running as root, permissions are not enforced; simulate what a user without them sees.
    import relsearch.indexdir as indexdir

    root = tmp_path / "col"
    make_collection(root, 2)
    monkeypatch.setattr(indexdir, "_can_write", lambda path: False)
    _assert_one_line_error(run("build-index", root, "--index", tmp_path / "ro" / "idx", "--encoders", "tinycolor"),
                           "not writable")
    assert not (tmp_path / "ro").exists()


def test_end_to_end_with_real_imagenet_encoder(tmp_path):
    """The shipped offline attribute encoder through the whole CLI: build, rebuild, query."""
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 6, size=96)
    out = json.loads(run("build-index", root, "--index", idx, "--encoders", "imagenet", "--json").stdout)
    assert (out["added"], out["encoders"]) == (6, ["imagenet"])
    res = json.loads(run("query", paths[4], "-k", "6", "--index", idx, "--json").stdout)
    hits = res["results"]["imagenet"]
    assert len(hits) == 6 and hits[0]["path"] == str(paths[4]) and hits[0]["score"] > 0.99
    assert hits[-1]["score"] < hits[0]["score"]


def test_bad_index_spec_fails_before_anything_is_written(built):
    root, idx, _, _ = built
    snap = _snapshot(idx)
    make_collection(root / "more", 2, seed=42)  # there is work to do, so a late failure would write
    _assert_one_line_error(run("build-index", root, "--index", idx, "--index-spec", "Garbage42"),
                           "invalid FAISS index spec")
    assert _snapshot(idx) == snap


def test_bad_index_spec_on_a_new_index_creates_nothing(tmp_path):
    root = tmp_path / "col"
    make_collection(root, 2)
    _assert_one_line_error(run("build-index", root, "--index", tmp_path / "new", "--encoders", "tinycolor",
                               "--index-spec", "Garbage42"), "invalid FAISS index spec")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv, needle", [
    (["query", "x.png", "-k", "0"], "greater than or equal to 1"),
    (["build-index"], "Missing argument"),
    (["nosuch"], "No such command"),
    (["build-index", ".", "--bogus"], "No such option"),
])
def test_console_entry_point_usage_errors_are_one_line(argv, needle, capsys):
    from relsearch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err
