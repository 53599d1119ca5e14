"""Logging: GPU fallbacks say why, and -v / --quiet choose what reaches stderr."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from relsearch.cli import app
from relsearch.index import _faiss


class _BrokenGpuFaiss:
    """A faiss build whose GPU calls fail the way a missing driver makes them fail."""

    METRIC_INNER_PRODUCT = 0

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_num_gpus(self):
        raise RuntimeError("CUDA driver version is insufficient")

    def GpuClonerOptions(self):  # noqa: N802  (faiss's name)
        raise RuntimeError("no CUDA-capable device is detected")

    def IndexFlatIP(self, d):  # noqa: N802
        raise RuntimeError("no CUDA-capable device is detected")


@pytest.fixture
def broken_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _faiss.import_faiss()
    monkeypatch.setattr(_faiss, "import_faiss", lambda: _BrokenGpuFaiss(real))


def test_gpu_fallbacks_log_the_reason(broken_gpu, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relsearch")
    assert _faiss.to_gpu(object()) is None
    assert _faiss.gpu_flat_for_training(8, 0) is None
    messages = [r.getMessage() for r in caplog.records if r.name == "relsearch.index._faiss"]
    assert any("searching on the CPU" in m and "no CUDA-capable device" in m for m in messages)
    assert any("training on the CPU" in m and "no CUDA-capable device" in m for m in messages)


def test_gpu_count_logs_a_broken_cuda_install(monkeypatch, caplog) -> None:
    real = _faiss.import_faiss()
    fake = _BrokenGpuFaiss(real)
    fake.StandardGpuResources = object  # looks like a GPU build
    monkeypatch.setattr(_faiss, "import_faiss", lambda: fake)
    _faiss.gpu_count.cache_clear()
    try:
        caplog.set_level(logging.WARNING, logger="relsearch")
        assert _faiss.gpu_count() == 0
    finally:
        _faiss.gpu_count.cache_clear()
    assert any("CUDA driver version is insufficient" in r.getMessage() for r in caplog.records)


@pytest.fixture
def vectors(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "q.npy", base[:10])
    return tmp_path / "b.npy", tmp_path / "q.npy"


@pytest.mark.parametrize(("flags", "shown"), [([], False), (["-v"], True), (["-q"], False), (["-vv"], True)])
def test_verbosity_flags_choose_what_reaches_stderr(vectors, tmp_path, flags, shown) -> None:
    base, queries = vectors
    args = [*flags, "bench", "ann", "--base", str(base), "--queries", str(queries), "-k", "5",
            "--spec", "IVF8,PQ4", "--results-dir", str(tmp_path / "r"), "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert ("INFO relsearch.index.tuning: tuned IVF8,PQ4: nprobe" in r.stderr) is shown
    logger = logging.getLogger("relsearch")
    want = {(): logging.WARNING, ("-v",): logging.INFO, ("-q",): logging.ERROR, ("-vv",): logging.DEBUG}
    assert logger.level == want[tuple(flags)]
