"""The runtime (build, query, page, CLI, encoders) never imports benchmark-only code."""

from __future__ import annotations

import subprocess
import sys

RUNTIME = ("relsearch.build", "relsearch.query", "relsearch.composed", "relsearch.modes", "relsearch.verify",
           "relsearch.view.server", "relsearch.cli", "relsearch.encoders", "relsearch.encoders.relsim",
           "relsearch.encoders.relsim.model")


def test_importing_the_runtime_loads_nothing_of_relsearch_bench():
    code = ("import importlib, sys\n"
            f"for m in {RUNTIME!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('relsearch.bench')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_relsim_stand_ins_live_with_the_benchmarks():
    import relsearch.bench.relsim_synthetic as stand_ins
    import relsearch.encoders.relsim as relsim

    assert stand_ins.FULL_ARCH.is_file() and stand_ins.FULL_ARCH.parent.name == "bench"
    assert not hasattr(relsim, "synthetic")
    assert stand_ins.read_arch()["vision_config"]
