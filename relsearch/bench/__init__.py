"""Benchmark runners behind ``relsearch bench ...`` (never imported by the build/query path).

Each runner returns a JSON-serialisable report and, when given a results folder, writes
JSON (+ PNG) there. The default folder is ``benchmarks/results`` under the *working
directory* (resolved when a benchmark runs), never next to the installed package.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError

RESULTS_DIR = os.path.join("benchmarks", "results")
"""Default ``--results-dir``: relative, so it resolves against the working directory."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or an error naming the extra."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RelsearchError("benchmark plots need matplotlib: pip install 'relsearch[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p95 and mean of per-query times given in seconds, in milliseconds."""
    a = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean())}
