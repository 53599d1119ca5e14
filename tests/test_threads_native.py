"""The native pools behind numpy (BLAS) and FAISS (OpenMP) are bounded for small work,
from the one place that chooses threads (``relsearch.threads``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relsearch import threads

threadpoolctl = pytest.importorskip("threadpoolctl")
ROOT = Path(__file__).resolve().parent.parent


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}


def test_native_threads_bounds_blas_inside_the_block_only():
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        assert _blas_threads() == {3}
        with threads.native_threads(1):
            assert _blas_threads() == {1}
        assert _blas_threads() == {3}
        with threads.native_threads(None):
            assert _blas_threads() == {3}


def test_use_threads_bounds_blas_until_unset():
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        threads.use_threads(1)
        try:
            assert _blas_threads() == {1}
        finally:
            threads.use_threads(None)
        assert _blas_threads() == {3}


def test_small_work_is_bounded_large_work_is_not(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.threads_for(400) == 1
    assert threads.threads_for(threads.SMALL_ROWS + 1) is None
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.threads_for(400) == 2


def test_faiss_loaded_after_the_choice_gets_it():
    code = ("from relsearch.threads import use_threads\nuse_threads(1)\n"
            "from relsearch.index._faiss import import_faiss\nprint(import_faiss().omp_get_max_threads())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_dupes_runs_a_small_index_on_a_bounded_pool(tmp_path, monkeypatch):
    from engine_helpers import make_collection

    from relsearch import dupes
    from relsearch.build import BuildOptions, build_index

    make_collection(tmp_path / "col", 8)
    build_index(tmp_path / "col", tmp_path / "idx", BuildOptions(encoders="tinycolor", progress=False, workers=1))
    seen: dict[str, set[int]] = {}

    def spy(name):
        real = getattr(dupes, name)

        def wrapped(*args, **kwargs):
            seen[name] = _blas_threads()
            return real(*args, **kwargs)
        monkeypatch.setattr(dupes, name, wrapped)

    spy("candidate_pairs")  # the similarity search over the collection's vectors
    spy("pixel_scores")  # the per-picture check of each candidate pair
    monkeypatch.delenv(threads.ENV, raising=False)
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        dupes.find_dupes(tmp_path / "idx")
        assert _blas_threads() == {3}
    assert seen == {"candidate_pairs": {1}, "pixel_scores": {1}}
