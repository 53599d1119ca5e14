"""Benchmark runners behind ``relsearch bench ...`` (never imported by the build/query path).

Each runner returns a JSON-serialisable report and, when given a results folder, writes
JSON (+ PNG) there. The default folder is ``benchmarks/results`` under the *working
directory* (resolved when a benchmark runs), never next to the installed package.
"""

from __future__ import annotations

import os

RESULTS_DIR = os.path.join("benchmarks", "results")
"""Default ``--results-dir``: relative, so it resolves against the working directory."""
