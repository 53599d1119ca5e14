"""Benchmark runners behind ``relsearch bench ...`` (never imported by the build/query path).

Each runner returns a JSON-serialisable report and, when given a results folder, writes
JSON (+ PNG) there. The default folder is ``benchmarks/results`` under the *working
directory* (resolved when a benchmark runs), never next to the installed package.
"""

from __future__ import annotations

import os
from typing import Any

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
