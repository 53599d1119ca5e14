"""relsim numerics on a GPU (see ``relsearch.bench.relsim_gpu``); run from a checkout:

    python benchmarks/relsim_gpu.py [--images 16] [--out results.json]
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the checkout's relsearch and its tiny test models

from relsearch.bench.relsim_gpu import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
