"""Cold query: a new ``relsearch query IMG -k 20`` process on ONNX Runtime, on torch, and a bare
``import torch``, in one run.

Each round starts every command as a fresh process, alternating them so that all see the same
moment of a shared machine's load, and records wall time and peak RSS (``wait4``). The figures
of merit: the ONNX query's median wall (target :data:`TARGET_S`) and its ratio to the torch
query's median (target :data:`TARGET_RATIO`). A separate run of the ONNX query lists which of
torch / transformers / peft / open_clip it imported (the target: none). Where the ``torch``
extra is not installed, only the ONNX query is timed.

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

#: The bar for the ONNX query's median wall, seconds (benchmarks/README.md, 'Cold query').
TARGET_S = 1.0
#: The bar for median(ONNX query) / median(torch query).
TARGET_RATIO = 0.5
HEAVY = ("torch", "peft", "transformers", "open_clip")


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
    """Which of torch / peft / transformers / open_clip a ``relsearch query`` process imports."""
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
    """Warm single-image query (all columns) p50/p95 ms per intra-op thread count, interleaved.

    One searcher per thread count, its encoders loaded under that count (ONNX Runtime sessions
    keep the threads they open with; torch's pool is set again before each query). Interleaving
    (1, 2, 1, 2, ...) lets every count see the same moments of a shared machine's load; this is
    the measurement behind relsearch.threads' default.
    """
    import contextlib

    import numpy as np

    from relsearch import threads as thread_conf
    from relsearch.composed import search_image
    from relsearch.query import Searcher, load_query_image

    saved = thread_conf.intra_op_threads()
    times: dict[int, list[float]] = {n: [] for n in threads}
    img = load_query_image(image)
    try:
        with contextlib.ExitStack() as stack:
            searchers = {}
            for n in threads:  # warm every column at every thread count first
                thread_conf.use_threads(n)
                searchers[n] = stack.enter_context(Searcher(index))
                search_image(searchers[n], img, k)
            for _ in range(repeats):
                for n in threads:
                    thread_conf.use_threads(n)
                    t = time.perf_counter()
                    search_image(searchers[n], img, k)
                    times[n].append((time.perf_counter() - t) * 1e3)
    finally:
        thread_conf.use_threads(saved)
    return {str(n): {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95))}
            for n, v in times.items()}


def _rounds(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, dict[str, list[float]]]:
    """Wall seconds and peak RSS MB of ``runs`` alternating rounds of every command (name -> argv, env)."""
    out: dict[str, dict[str, list[float]]] = {name: {"wall_s": [], "rss_mb": [], "first_s": []}
                                              for name in commands}
    for name, (cmd, env) in commands.items():  # warm the page cache, bytecode and graph caches
        out[name]["first_s"].append(_timed(cmd, env)[0])
    for _ in range(runs):
        for name, (cmd, env) in commands.items():
            wall, rss, code = _timed(cmd, env)
            if code != 0:
                raise RelsearchError(f"{name}: {' '.join(cmd[2:])} exited with {code}")
            out[name]["wall_s"].append(wall)
            out[name]["rss_mb"].append(rss / 2**20)
    return out


def run_cold(image: str, index: str | None = None, k: int = 20, runs: int = 7, python: str | None = None,
             results_dir: str | os.PathLike[str] | None = None, threads: bool = True) -> dict[str, Any]:
    """Median walls and peak RSS of ``runs`` alternating cold queries (ONNX, torch) and bare torch imports."""
    from relsearch.encoders.onnx_runtime import RUNTIME_ENV
    from relsearch.extras import missing

    if runs < 1:
        raise RelsearchError(f"--runs must be at least 1, got {runs}")
    if not Path(image).is_file():
        raise RelsearchError(f"query image {image} does not exist")
    python = python or sys.executable
    args = ["query", str(image), "-k", str(k)] + (["--index", str(index)] if index else [])
    # Children run as Python does by default, keeping the bytecode of the modules they import
    # (the first, untimed round writes it); a caller's PYTHONDONTWRITEBYTECODE would otherwise make
    # every timed run compile relsearch's sources again, which no installed copy does.
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    onnx_env = {**base_env, RUNTIME_ENV: "onnx"}
    heavy = heavy_imports(args, onnx_env, python)
    commands = {"onnx_query": ([python, "-m", "relsearch", *args], onnx_env)}
    has_torch = not missing("torch")
    if has_torch:
        commands["torch_query"] = ([python, "-m", "relsearch", *args], {**base_env, RUNTIME_ENV: "torch"})
        commands["import_torch"] = ([python, "-c", "import torch"], base_env)
    timed = _rounds(commands, runs)
    report: dict[str, Any] = {"command": f"relsearch {' '.join(args)}", "runs": runs, "heavy_imports": heavy}
    for name, t in timed.items():
        report[name] = {"wall_s": t["wall_s"], "median_s": _median(t["wall_s"]), "peak_rss_mb": _median(t["rss_mb"]),
                        "first_run_s": t["first_s"][0]}
    onnx_s = report["onnx_query"]["median_s"]
    report["onnx_over_torch"] = onnx_s / report["torch_query"]["median_s"] if has_torch else None
    report.update(caller_disabled_bytecode="PYTHONDONTWRITEBYTECODE" in os.environ,
                  load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, cpus=os.cpu_count(),
                  query_threads=os.environ.get("RELSEARCH_QUERY_THREADS", "1 (default)"))
    if threads:
        from relsearch.home import choose_index

        report["warm_query_by_threads"] = thread_sweep(str(image), str(index or choose_index().path), k)
    ratio_ok = report["onnx_over_torch"] is None or report["onnx_over_torch"] <= TARGET_RATIO
    report["meets_target"] = onnx_s <= TARGET_S and ratio_ok and not heavy
    if results_dir is not None:
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["json"] = str(out / "cold_query.json")
        Path(report["json"]).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def format_report(r: dict[str, Any]) -> str:
    names = {"onnx_query": "cold query, ONNX Runtime", "torch_query": "cold query, torch", "import_torch": "import torch"}
    lines = [f"{r['command']}  ({r['runs']} runs, load {r['load_average']:.2f})"]
    lines += [f"  {label:<25} median {r[key]['median_s']:.2f} s, peak RSS {r[key]['peak_rss_mb']:.0f} MB"
              f" (first run {r[key]['first_run_s']:.2f} s)" for key, label in names.items() if key in r]
    ratio = r.get("onnx_over_torch")
    lines.append(f"  ONNX / torch {f'{ratio:.2f}x' if ratio is not None else 'n/a (no torch extra)'}; targets: "
                 f"ONNX <= {TARGET_S} s and <= {TARGET_RATIO}x torch: {r['meets_target']}; "
                 f"heavy imports: {', '.join(r['heavy_imports']) or 'none'}")
    lines += [f"  warm single-image query, {n} thread(s): p50 {v['p50_ms']:.1f} ms, p95 {v['p95_ms']:.1f} ms"
              for n, v in r.get("warm_query_by_threads", {}).items()]
    return "\n".join(lines)
