"""`pip install .` into a fresh venv: only relsearch lands in site-packages, and it runs.

The fresh venv sees the test environment's packages through a .pth file (so torch is
not installed a second time) and the package is installed with ``--no-deps``; what the
test checks is the new venv's *own* site-packages and the installed console script.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a source checkout holds that is no part of the package and is slow or large to copy.
_NOT_SOURCE = (".git", ".venv", "indexes", "data", "runs", "examples", "build", "dist", "__pycache__",
               "*.egg-info", ".pytest_cache", ".ruff_cache", ".whl", ".gl", ".device")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    # The test environment's packages (torch, faiss, pip, setuptools...) after the venv's own.
    shared = [os.path.realpath(p) for p in site.getsitepackages()]
    (purelib / "_test_shared_env.pth").write_text("\n".join(shared) + "\n")
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    # --ignore-installed: never touch the relsearch the shared environment may hold.
    r = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
              "--no-index", str(src)], cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"tmp": tmp, "purelib": purelib, "bin": env_dir / "bin", "env": env}  # type: ignore[dict-item]


def test_only_relsearch_lands_in_site_packages(installed: dict) -> None:
    own = sorted(p.name for p in installed["purelib"].iterdir() if p.name != "_test_shared_env.pth")
    assert own == ["relsearch", "relsearch-0.1.0.dist-info"], own
    pkg = installed["purelib"] / "relsearch"
    assert (pkg / "py.typed").is_file() and (pkg / "view" / "static" / "browse.js").is_file()
    assert (pkg / "weights" / "relsim-mini" / "model.safetensors").is_file()
    assert (pkg / "weights" / "relsim-mini" / "MODEL_CARD.md").is_file()
    assert not list(installed["purelib"].rglob("relsim_mini_history.md"))  # repository docs only
    assert (pkg / "bench" / "ann.py").is_file() and (pkg / "encoders" / "relsim" / "model.py").is_file()
    assert not list(pkg.rglob("tests")) and not (installed["purelib"] / "benchmarks").exists()


def test_installed_cli_helps_and_writes_results_under_the_working_directory(installed: dict) -> None:
    exe, env, work = installed["bin"] / "relsearch", installed["env"], installed["tmp"] / "work"
    work.mkdir()
    r = _run([str(exe), "--help"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    for verb in ("build-index", "query", "info", "view", "compose", "train", "bench"):
        assert verb in r.stdout
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    np.save(work / "base.npy", base)
    np.save(work / "q.npy", base[:20])
    r = _run([str(exe), "bench", "ann", "--base", "base.npy", "--queries", "q.npy", "-k", "5",
              "--spec", "IVF4,Flat", "--sweep", "--json"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = json.loads(r.stdout)["sweep"]
    assert (work / sweep["json"]).resolve() == (work / "benchmarks" / "results" / "ann_sweep.json").resolve()
    assert (work / "benchmarks" / "results" / "ann_sweep.png").is_file()
    assert not list(installed["purelib"].rglob("ann_sweep.json"))


def test_installed_package_composes_indexes_and_queries(installed: dict) -> None:
    """The demo's steps with the installed console script and the shipped weights."""
    exe, env, work = installed["bin"] / "relsearch", installed["env"], installed["tmp"] / "demo"
    work.mkdir()
    art = work / "art"
    art.mkdir()
    from PIL import Image, ImageDraw

    for i, colour in enumerate(["red", "green", "blue", "orange", "purple", "teal"]):
        img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        ImageDraw.Draw(img).ellipse((8, 8 + i, 56, 50), fill=colour)
        img.save(art / f"obj{i}.png")
    r = _run([str(exe), "compose", "--out", "coll", "--split", "all", "--per-family", "1", "--art", "art",
              "--min-size", "96", "--max-size", "128"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run([str(exe), "build-index", "coll", "--index", "idx", "--workers", "1", "--json"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["encoders"] == ["relsim-mini", "imagenet"]
    query = sorted((work / "coll").rglob("*.jpg"))[0]
    r = _run([str(exe), "query", str(query), "--index", "idx", "-k", "3", "--json"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout)["results"]
    assert set(results) == {"relsim-mini", "imagenet"}
    for hits in results.values():  # the query is in the collection: its own nearest neighbour
        assert Path(hits[0]["path"]).resolve() == query.resolve()
