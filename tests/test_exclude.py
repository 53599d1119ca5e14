"""Exclusions: --exclude-dir patterns, defaults, .relsearchignore files, and incremental builds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import TinyColorEncoder, image_query
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.collection import scan
from relsearch.collection.exclude import DEFAULT_EXCLUDES, STORED_NAME, Exclusions
from relsearch.errors import RelsearchError
from relsearch.indexdir import open_index

OPTS = dict(encoders="tinycolor", progress=False, workers=2)


def _img(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((24, 24), Image.NEAREST).save(path)
    return path


def _rel(root: Path, paths) -> set[str]:
    return {os.path.relpath(p, root).replace(os.sep, "/") for p in paths}


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """Kept images beside every kind of excluded folder and an ignore file."""
    root = tmp_path / "col"
    keep = ["a.png", "trips/b.png", "trips/2020/c.png", "exports_not/d.png", "trips/keep.tmp.png"]
    drop = ["@eaDir/a.png/SYNOPHOTO_THUMB_M.png", "trips/@eaDir/t.png", "System Volume Information/x.png",
            "$RECYCLE.BIN/S-1-5/y.png", "web/node_modules/pkg/logo.png", "$Recycle.Bin/z.png",
            "exports/e.png", "trips/exports/f.png", "trips/scratch.tmp.png", "trips/2020/raw/g.png",
            "thumbnails/h.png", "trips/2020/thumbnails/i.png"]
    for i, rel in enumerate(keep + drop):
        _img(root / rel, i)
    (root / ".relsearchignore").write_text("# exports anywhere\nexports/\n*.tmp.png\n!keep.tmp.png\n")
    (root / "trips" / "2020" / ".relsearchignore").write_text("/raw/\n")
    return root


def test_scan_prunes_defaults_flags_and_ignore_files(planted: Path) -> None:
    result = scan(planted, Exclusions(dirs=("thumbnails",)))
    assert _rel(planted, (f.path for f in result.files)) == {
        "a.png", "trips/b.png", "trips/2020/c.png", "exports_not/d.png", "trips/keep.tmp.png"}
    folders = _rel(planted, (p for p, _ in result.excluded.folders))
    assert folders == {"@eaDir", "trips/@eaDir", "System Volume Information", "$RECYCLE.BIN",
                       "$Recycle.Bin", "web/node_modules", "exports", "trips/exports", "trips/2020/raw",
                       "thumbnails", "trips/2020/thumbnails"}
    assert _rel(planted, (p for p, _ in result.excluded.files)) == {"trips/scratch.tmp.png"}
    rules = dict(result.excluded.folders)
    assert rules[str(planted / "trips" / "2020" / "raw")] == str(planted / "trips" / "2020" / ".relsearchignore")
    assert rules[str(planted / "thumbnails")] == "exclude-dir thumbnails"
    assert result.excluded.counts() == {"folders": 11, "files": 1}


def test_scan_without_defaults_keeps_nas_folders(planted: Path) -> None:
    result = scan(planted, Exclusions(defaults=False, ignore_files=False))
    rels = _rel(planted, (f.path for f in result.files))
    assert "@eaDir/a.png/SYNOPHOTO_THUMB_M.png" in rels and "web/node_modules/pkg/logo.png" in rels
    assert "exports/e.png" in rels and result.excluded.counts() == {"folders": 0, "files": 0}


def test_patterns_with_a_slash_match_the_relative_path(planted: Path) -> None:
    result = scan(planted, Exclusions(dirs=("trips/2020",), defaults=False, ignore_files=False))
    rels = _rel(planted, (f.path for f in result.files))
    assert not any(r.startswith("trips/2020/") for r in rels) and "trips/b.png" in rels
    glob = scan(planted, Exclusions(dirs=("trip?",), defaults=False, ignore_files=False))
    assert not any(r.startswith("trips/") for r in _rel(planted, (f.path for f in glob.files)))


@pytest.mark.parametrize("bad", ["", "/", "/abs/path", "../up"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="exclude-dir"):
        Exclusions(dirs=(bad,))


def test_defaults_are_the_documented_ones() -> None:
    assert set(DEFAULT_EXCLUDES) == {"@eaDir", ".Trash-*", "System Volume Information", "$RECYCLE.BIN",
                                     "node_modules", ".git"}
    ex = Exclusions()
    assert ex.dir_rule(".Trash-1000", ".Trash-1000") == ".Trash-*"
    assert ex.dir_rule("photos", "photos") is None


def test_build_indexes_none_of_the_excluded_files(planted: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    rep = build_index(planted, idx, BuildOptions(**OPTS, exclude_dirs=("thumbnails",)))
    assert rep.added == 5 and rep.excluded == {"folders": 11, "files": 1, "removed": 0}
    with open_index(idx) as opened:
        assert _rel(planted, opened.store.all_paths()) == {
            "a.png", "trips/b.png", "trips/2020/c.png", "exports_not/d.png", "trips/keep.tmp.png"}
    assert json.loads((idx / STORED_NAME).read_text()) == {"dirs": ["thumbnails"], "defaults": True}


def test_exclusion_added_later_removes_files_and_embeds_nothing(planted: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    idx = tmp_path / "idx"
    build_index(planted, idx, BuildOptions(**OPTS))
    with open_index(idx) as opened:
        assert len(opened.store.all_paths()) == 7  # the two thumbnails folders are still in
    calls: list[int] = []
    monkeypatch.setattr(TinyColorEncoder, "embed", lambda self, imgs: calls.append(len(imgs)))
    (planted / "trips" / ".relsearchignore").write_text("2020/\n")
    rep = build_index(planted, idx, BuildOptions(**OPTS, exclude_dirs=("thumbnails",)))
    assert calls == [] and rep.embedded == 0 and rep.added == 0
    assert rep.removed == 3 and rep.excluded["removed"] == 3
    with open_index(idx) as opened:
        assert _rel(planted, opened.store.all_paths()) == {"a.png", "trips/b.png", "exports_not/d.png",
                                                          "trips/keep.tmp.png"}
        assert opened.store.count("records") == 4
    monkeypatch.undo()
    hits = image_query(str(planted / "trips" / "b.png"), idx, k=10).results["tinycolor"]
    assert len(hits) == 4 and hits[0].path == str(planted / "trips" / "b.png")


def test_stored_exclusions_survive_a_build_without_the_flag(planted: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    build_index(planted, idx, BuildOptions(**OPTS, exclude_dirs=("thumbnails",)))
    rep = build_index(planted, idx, BuildOptions(**OPTS))  # flag dropped: the index remembers it
    assert (rep.added, rep.removed, rep.unchanged) == (0, 0, 5)
    assert rep.excluded["folders"] == 11
    # forgetting them brings the folders back (and the defaults stay on)
    rep = build_index(planted, idx, BuildOptions(**OPTS, forget_excludes=True))
    assert rep.added == 2 and rep.excluded["folders"] == 9
    assert json.loads((idx / STORED_NAME).read_text()) == {"dirs": [], "defaults": True}
    # turning the defaults off is remembered too
    build_index(planted, idx, BuildOptions(**OPTS, default_excludes=False))
    rep = build_index(planted, idx, BuildOptions(**OPTS))
    assert rep.unchanged == 13 and rep.added == 0


def test_everything_excluded_is_an_error_and_writes_nothing(planted: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    build_index(planted, idx, BuildOptions(**OPTS))
    before = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    (planted / ".relsearchignore").write_text("*\n")
    with pytest.raises(RelsearchError, match="no images found"):
        build_index(planted, idx, BuildOptions(**OPTS, exclude_dirs=("more",)))
    after = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    assert after == before
    with pytest.raises(RelsearchError, match="exclude-dir"):
        build_index(planted, idx, BuildOptions(**OPTS, exclude_dirs=("/etc",)))


# --------------------------------------------------------------------------- CLI
def _cli(*args):
    from typer.testing import CliRunner

    from relsearch.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_reports_exclusions_and_lists_defaults(planted: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    res = _cli("build-index", planted, "--index", idx, "--encoders", "tinycolor", "--json",
               "--exclude-dir", "thumbnails", "--exclude-dir", "trips/2020")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["added"] == 4 and out["excluded"] == {"folders": 10, "files": 1, "removed": 0}
    res = _cli("build-index", planted, "--index", idx, "--forget-excludes")
    assert res.exit_code == 0 and "added 3" in res.stdout and "excluded 9 folders + 1 files" in res.stdout
    text = " ".join(_cli("build-index", "--help").stdout.replace("│", " ").split())  # rich wraps in a box
    for name in DEFAULT_EXCLUDES:
        assert name in text


def test_cli_bad_pattern_is_one_line_and_writes_nothing(planted: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    assert _cli("build-index", planted, "--index", idx, "--encoders", "tinycolor").exit_code == 0
    before = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    res = _cli("build-index", planted, "--index", idx, "--exclude-dir", "../elsewhere")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "--exclude-dir" in res.stderr
    after = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    assert after == before
