"""Cheap no-ops and fast errors: a rebuild with nothing changed loads no model (nor torch,
nor ONNX Runtime), and a path argument that does not exist is reported before any model
or heavy runtime is imported. Measured in a child process, as a user runs the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PHOTOS = Path("/usr/share/backgrounds")
HEAVY = ("torch", "onnxruntime", "transformers", "faiss", "pydantic")

# `relsearch ARGV` that reports, on its last stderr line, how many encoders the build
# loaded and which heavy modules were imported.
_PROBE = f"""
HEAVY = {HEAVY!r}
import atexit, json, sys
import relsearch.build as build
loads = []
real = build.get_encoder
build.get_encoder = lambda *a, **k: (loads.append(str(a[0])), real(*a, **k))[1]
atexit.register(lambda: print("PROBE " + json.dumps({{"loads": loads,
                "heavy": [m for m in HEAVY if m in sys.modules]}}), file=sys.stderr))
from relsearch.cli import main
main(sys.argv[1:])
"""


def _run(*argv: str | Path, home: Path, **extra_env: str) -> tuple[int, str, str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "RELSEARCH_FAULT"}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", RELSEARCH_HOME=str(home), PYTHONPATH=str(ROOT),
               **extra_env)
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, argv)], env=env, capture_output=True,
                         text=True, timeout=600)
    probe = [line for line in out.stderr.splitlines() if line.startswith("PROBE ")]
    assert probe, out.stderr
    return out.returncode, out.stdout, out.stderr, json.loads(probe[-1][6:])


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory):
    """Six photographs and a broken file, indexed with the shipped encoders."""
    src = sorted(PHOTOS.glob("*.jpg"))[:6]
    if len(src) < 6:
        pytest.skip(f"needs the photographs in {PHOTOS}")
    base = tmp_path_factory.mktemp("noop")
    col, idx = base / "photos", base / "idx"
    (col / "sub").mkdir(parents=True)
    for i, p in enumerate(src):
        shutil.copy(p, col / ("sub" if i % 2 else "") / p.name)
    (col / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 20)
    code, out, err, probe = _run("build-index", col, "--index", idx, "--json", home=base / "home")
    assert code == 0, err
    report = json.loads(out)
    assert report["added"] == 6 and [f["path"] for f in report["failed"]] == [str(col / "broken.jpg")]
    assert sorted(probe["loads"]) == ["imagenet", "relsim-mini"]  # the probe sees loads when they happen
    return col, idx, base / "home", src


def test_unchanged_rebuild_loads_no_model(photo_index):
    col, idx, home, _ = photo_index
    code, out, err, probe = _run("build-index", col, "--index", idx, "--json", home=home)
    assert code == 0, err
    report = json.loads(out)
    assert (report["added"], report["unchanged"], report["embedded"], report["failed_before"]) == (0, 6, 0, 1)
    assert probe["loads"] == []
    assert "torch" not in probe["heavy"] and "onnxruntime" not in probe["heavy"]


def _cases(col: Path, idx: Path, photo: Path, tmp: Path) -> list[tuple[str, ...]]:
    missing = str(tmp / "no-such.jpg")
    return [
        ("query", missing, "--index", str(idx)),
        ("query", str(photo), missing, "--index", str(idx)),
        ("query", str(photo), "--not", missing, "--index", str(idx)),
        ("query", str(photo), "--index", str(tmp / "no-such-index")),
        ("explain", missing, str(photo)),
        ("explain", str(photo), missing),
        ("build-index", str(tmp / "no-such-folder"), "--index", str(tmp / "new-index")),
        ("build-index", str(col), "--index", str(photo)),
        ("dupes", "--index", str(tmp / "no-such-index")),
        ("verify", "--index", str(tmp / "no-such-index")),
    ]


def test_missing_paths_are_reported_before_any_model_loads(photo_index, tmp_path):
    col, idx, home, src = photo_index
    photo = next(col.rglob(src[0].name))
    for argv in _cases(col, idx, photo, tmp_path):
        code, out, err, probe = _run(*argv, home=home)
        lines = [line for line in err.splitlines() if not line.startswith("PROBE ")]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert "Traceback" not in err
        assert probe == {"loads": [], "heavy": []}, (argv, probe)
    assert not (tmp_path / "new-index").exists()


def test_a_query_skips_pydantic_and_reopens_its_graphs_optimised(photo_index):
    """Typer's pydantic coercion and ONNX Runtime's graph optimisation are most of a cold query's
    avoidable start-up: the CLI coerces its own parameters, and the optimised graphs are kept in the
    cache folder, so the second query opens them as they are and ranks exactly as the first."""
    col, idx, home, src = photo_index
    photo = next(col.rglob(src[1].name))
    graphs = home / "cache" / "onnx"
    shutil.rmtree(graphs, ignore_errors=True)
    first = _run("query", photo, "--index", idx, "-k", "4", "--json", home=home, RELSEARCH_RUNTIME="onnx")
    kept = sorted(p.name.split(".")[0] for p in graphs.glob("*.onnx"))
    second = _run("query", photo, "--index", idx, "-k", "4", "--json", home=home, RELSEARCH_RUNTIME="onnx")
    for code, _out, err, probe in (first, second):
        assert code == 0, err
        assert "pydantic" not in probe["heavy"] and "torch" not in probe["heavy"]
    assert {"imagenet", "relsim-mini"} <= set(kept)  # (and minilm, which embedded the caption bank)
    assert not list(graphs.glob(".*.tmp"))
    assert json.loads(first[1]) == json.loads(second[1])
    (next(graphs.glob("relsim-mini.*.onnx"))).write_bytes(b"a damaged cache file")
    third = _run("query", photo, "--index", idx, "-k", "4", "--json", home=home, RELSEARCH_RUNTIME="onnx")
    assert third[0] == 0, third[2]
    assert json.loads(third[1]) == json.loads(first[1])  # dropped and optimised again
    assert next(graphs.glob("relsim-mini.*.onnx")).stat().st_size > 1_000_000
