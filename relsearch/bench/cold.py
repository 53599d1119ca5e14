"""Cold query: a new ``relsearch query IMG -k 20`` process against a bare ``import torch``.

Each run starts both commands as fresh processes, alternating them so that both see the
same moment of a shared machine's load, and records wall time and peak RSS (``wait4``).
The figure of merit is median(query wall) - median(import torch wall): what relsearch
adds on top of the one import every torch program pays. A separate run of the query
lists which of peft / transformers / open_clip it imported (the target: none).

    relsearch bench cold --image IMG --index INDEX --runs 7
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relsearch.errors import RelsearchError

#: The bar for median(query) - median(import torch), seconds (benchmarks/README.md, 'Cold query').
TARGET_S = 1.5
HEAVY = ("peft", "transformers", "open_clip")


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall s, peak RSS bytes, exit code) of ``cmd`` run to completion."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def heavy_imports(query_args: list[str], env: dict[str, str], python: str) -> list[str]:
    """Which of peft / transformers / open_clip a ``relsearch query`` process imports."""
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
            f"sys.argv = ['relsearch', *{query_args!r}]\n"
            "from relsearch.cli import main\nmain()\n")
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("HEAVY ")), None)
    if line is None:
        raise RelsearchError(f"the query failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}")
    return json.loads(line[6:].replace("'", '"'))


def thread_sweep(image: str, index: str, k: int = 20, threads: tuple[int, ...] = (1, 2),
                 repeats: int = 15) -> dict[str, Any]:
    """Warm single-image query (all columns) p50/p95 ms per torch thread count, interleaved.

    Interleaving (1, 2, 1, 2, ...) lets every thread count see the same moments of a shared
    machine's load; this is the measurement behind relsearch.threads' default.
    """
    import numpy as np
    import torch

    from relsearch.query import Searcher, load_query_image

    saved = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in threads}
    img = load_query_image(image)
    try:
        with Searcher(index) as s:
            for n in threads:  # warm every column at every thread count first
                torch.set_num_threads(n)
                s.query_image(img, k)
            for _ in range(repeats):
                for n in threads:
                    torch.set_num_threads(n)
                    t = time.perf_counter()
                    s.query_image(img, k)
                    times[n].append((time.perf_counter() - t) * 1e3)
    finally:
        torch.set_num_threads(saved)
    return {str(n): {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95))}
            for n, v in times.items()}


def run_cold(image: str, index: str | None = None, k: int = 20, runs: int = 7, python: str | None = None,
             results_dir: str | os.PathLike[str] | None = None, threads: bool = True) -> dict[str, Any]:
    """Median walls and peak RSS of ``runs`` alternating cold queries and bare torch imports."""
    if runs < 1:
        raise RelsearchError(f"--runs must be at least 1, got {runs}")
    if not Path(image).is_file():
        raise RelsearchError(f"query image {image} does not exist")
    python = python or sys.executable
    env = dict(os.environ)
    args = ["query", str(image), "-k", str(k)] + (["--index", str(index)] if index else [])
    heavy = heavy_imports(args, env, python)  # also a warm-up of the page cache for both commands
    _timed([python, "-c", "import torch"], env)
    torch_s, query_s, torch_rss, query_rss = [], [], [], []
    for _ in range(runs):
        w, rss, code = _timed([python, "-c", "import torch"], env)
        torch_s.append(w)
        torch_rss.append(rss)
        w, rss, code = _timed([python, "-m", "relsearch", *args], env)
        if code != 0:
            raise RelsearchError(f"relsearch {' '.join(args)} exited with {code}")
        query_s.append(w)
        query_rss.append(rss)
    report: dict[str, Any] = {
        "command": f"relsearch {' '.join(args)}",
        "runs": runs,
        "query_wall_s": query_s, "import_torch_wall_s": torch_s,
        "query_median_s": _median(query_s), "import_torch_median_s": _median(torch_s),
        "query_peak_rss_mb": _median(query_rss) / 2**20, "import_torch_peak_rss_mb": _median(torch_rss) / 2**20,
        "heavy_imports": heavy,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
        "query_threads": os.environ.get("RELSEARCH_QUERY_THREADS", "1 (default)"),
    }
    report["difference_s"] = report["query_median_s"] - report["import_torch_median_s"]
    if threads:
        from relsearch.home import choose_index

        report["warm_query_by_threads"] = thread_sweep(str(image), str(index or choose_index().path), k)
    report["meets_target"] = report["difference_s"] <= TARGET_S and not heavy
    if results_dir is not None:
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["json"] = str(out / "cold_query.json")
        Path(report["json"]).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def format_report(r: dict[str, Any]) -> str:
    return (f"{r['command']}  ({r['runs']} runs, load {r['load_average']:.2f})\n"
            f"  cold query   median {r['query_median_s']:.2f} s, peak RSS {r['query_peak_rss_mb']:.0f} MB\n"
            f"  import torch median {r['import_torch_median_s']:.2f} s, peak RSS {r['import_torch_peak_rss_mb']:.0f} MB\n"
            f"  difference {r['difference_s']:.2f} s (target <= {TARGET_S} s: {r['meets_target']}); "
            f"heavy imports: {', '.join(r['heavy_imports']) or 'none'}"
            + "".join(f"\n  warm single-image query, {n} torch thread(s): p50 {v['p50_ms']:.1f} ms, "
                      f"p95 {v['p95_ms']:.1f} ms" for n, v in r.get("warm_query_by_threads", {}).items()))
