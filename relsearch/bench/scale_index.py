"""Scale benchmark, index side: sharded on-disk IVF-PQ against the in-memory index.

Both layouts are built from the same trained quantizers (one training run on a
sample, as the sharded build does it) over the same vectors, and searched at the
same nprobe and re-rank depth with the same memory-mapped refine store, so any
difference comes from the layout alone. Every build and every query run is its
own child process, so its peak resident memory is its own:

* ``build_memory``: one process adds every vector to the trained index and
  writes one FAISS file (the codes live in that process's memory);
* ``build_ondisk``: shards of ``shard_rows`` vectors are added by a pool of
  ``workers`` processes, each writing its inverted lists, then merged list by
  list into one ``.ivfdata`` file;
* ``query_*``: load the index (in memory: read whole; on disk: quantizers read,
  lists memory-mapped), search all queries batched and a sample one at a time,
  re-rank exactly from the refine store.

Peak RSS counts every resident page, file-backed ones too (a memory-mapped
list that a query touched is resident while the cache keeps it); the anonymous
(private) peak is reported beside it, sampled every 50 ms.

    relsearch bench scale --n 4000000 --n-queries 1000 --work /data/scale4m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from relsearch.bench import RESULTS_DIR
from relsearch.errors import RelsearchError

#: Single-query timing is cut off after this many seconds (at least 5 queries).
SINGLE_BUDGET_S = 15.0


# ----------------------------------------------------------------- memory probes
class PeakAnon:
    """Samples this process's anonymous RSS in a thread; ``peak`` in bytes."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb("RssAnon") * 1024)
            self._stop.wait(self._every)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kb("RssAnon") * 1024)


def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries
    that over from the parent across fork + exec, so a child started by a big
    parent would report the parent's peak."""
    return _status_kb("VmHWM") * 1024


# ----------------------------------------------------------------- data
def synthetic_to_disk(out_dir: str, n: int, n_queries: int, d: int, seed: int = 0, chunk: int = 250_000) -> tuple[str, str]:
    """Clustered unit vectors (``relsearch.bench.synthetic``'s mixture) written in chunks to ``.npy`` files."""
    from relsearch.bench import synthetic

    os.makedirs(out_dir, exist_ok=True)
    base_path, query_path = os.path.join(out_dir, "base.npy"), os.path.join(out_dir, "queries.npy")
    meta_path = os.path.join(out_dir, "synthetic.json")
    want = {"n": n, "queries": n_queries, "d": d, "seed": seed}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) == want:
                return base_path, query_path
    rng = np.random.default_rng(seed)
    mix = synthetic._mixture(d, max(10, n // 1000), rng, 24)
    base = np.lib.format.open_memmap(base_path, mode="w+", dtype=np.float32, shape=(n, d))
    for i, s in enumerate(range(0, n, chunk)):
        base[s : s + chunk] = synthetic._sample(mix, min(chunk, n - s), np.random.default_rng([seed, 1, i]))
    base.flush()
    del base
    np.save(query_path, synthetic._sample(mix, n_queries, np.random.default_rng([seed, 2])))
    with open(meta_path, "w") as f:
        json.dump(want, f)
    return base_path, query_path


def exact_truth(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 500_000) -> np.ndarray:
    """Exact top-``k`` rows by inner product, scanning ``base`` in chunks (bounded memory)."""
    from relsearch.index._faiss import import_faiss

    faiss = import_faiss()
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for s in range(0, len(base), chunk):
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(np.ascontiguousarray(base[s : s + chunk], dtype=np.float32))
        d, i = flat.search(queries, k)
        cat_s, cat_i = np.concatenate([best_s, d], 1), np.concatenate([best_i, i + s], 1)
        top = np.argsort(-cat_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)
    return best_i


# ----------------------------------------------------------------- child phases
def _phase_build_memory(a: argparse.Namespace) -> dict[str, Any]:
    from relsearch.index._faiss import import_faiss

    faiss = import_faiss()
    base = np.load(a.base, mmap_mode="r")
    t0 = time.perf_counter()
    with PeakAnon() as anon:
        index = faiss.read_index(a.trained)
        for s in range(0, len(base), 65_536):
            index.add_with_ids(np.ascontiguousarray(base[s : s + 65_536]), np.arange(s, min(s + 65_536, len(base))))
        faiss.write_index(index, a.out)
    return {"build_s": time.perf_counter() - t0, "peak_rss": _peak_rss(), "peak_anon": anon.peak}


def _phase_build_ondisk(a: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    from relsearch.index._faiss import import_faiss
    from relsearch.index.sharded import merge_on_disk, plan_shards

    faiss = import_faiss()
    base = np.load(a.base, mmap_mode="r")
    t0 = time.perf_counter()
    with PeakAnon() as anon:
        # Jobs carry row ranges of the .npy, not rows: workers map the file themselves.
        jobs = plan_shards(a.trained, np.arange(len(base)), a.base, a.workdir, a.shard_rows)
        with ProcessPoolExecutor(a.workers) as pool:
            done = list(pool.map(_measured_shard, jobs))
        files, peaks = [f for f, _ in done], [p for _, p in done]
        t_shards = time.perf_counter() - t0
        index = merge_on_disk(a.trained, files, a.ivfdata)
        faiss.write_index(index, a.out)
        for f in files:
            os.unlink(f)
    return {
        "build_s": time.perf_counter() - t0,
        "shards_s": t_shards,
        "merge_s": time.perf_counter() - t0 - t_shards,
        "shards": len(jobs),
        "peak_rss": _peak_rss(),
        "peak_rss_worker": max(peaks),
        "peak_anon": anon.peak,
    }


def _measured_shard(job: Any) -> tuple[str, int]:
    """Build one shard; returns its file and this worker's peak RSS so far."""
    from relsearch.index.sharded import build_shard

    return build_shard(job), _peak_rss()


def _phase_query(a: argparse.Namespace) -> dict[str, Any]:
    from relsearch.index._faiss import import_faiss
    from relsearch.index.refine import RefineStore

    faiss = import_faiss()
    queries = np.load(a.queries)
    truth = np.load(a.truth)
    with PeakAnon() as anon:
        t0 = time.perf_counter()
        index = faiss.read_index(a.out)
        store = RefineStore(a.store)
        load_s = time.perf_counter() - t0
        faiss.extract_index_ivf(index).nprobe = a.nprobe

        def search(q: np.ndarray) -> np.ndarray:
            _, cand = index.search(q, max(a.rerank, 10))
            return store.rerank(q, cand, 10)[1] if a.rerank else cand[:, :10]

        search(queries[:10])  # first-touch of the quantizers, as a warm server would have
        t0 = time.perf_counter()
        found = search(queries)
        batched_qps = len(queries) / (time.perf_counter() - t0)
        t0, done = time.perf_counter(), 0
        for i in range(len(queries)):
            search(queries[i : i + 1])
            done += 1
            if done >= 5 and time.perf_counter() - t0 > SINGLE_BUDGET_S:
                break
        single_qps = done / (time.perf_counter() - t0)
    from relsearch.index import recall_at

    return {
        "recall_at_10": recall_at(found, truth, 10),
        "batched_qps": batched_qps,
        "single_qps": single_qps,
        "single_queries": done,
        "load_s": load_s,
        "peak_rss": _peak_rss(),
        "peak_anon": anon.peak,
        "rss_file_end": _status_kb("RssFile") * 1024,
    }


def _child(phase: str, **kw: Any) -> dict[str, Any]:
    args = [sys.executable, "-m", "relsearch.bench.scale_index", "--phase", phase]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RelsearchError(f"bench scale phase {phase} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_scale(
    work: str,
    n: int = 1_000_000,
    n_queries: int = 1000,
    d: int = 384,
    base: str | None = None,
    queries: str | None = None,
    spec: str | None = None,
    nprobe: int = 32,
    rerank: int = 100,
    shard_rows: int = 1_000_000,
    workers: int = 2,
    results_dir: str = RESULTS_DIR,
) -> dict[str, Any]:
    """Build both layouts under ``work`` and compare them; writes ``scale_index.{json,png}``."""
    from relsearch.index import auto_nlist
    from relsearch.index.refine import write_refine_store

    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    base, queries, source = _vector_files(work, n, n_queries, d, base, queries)
    xb = np.load(base, mmap_mode="r")
    xq = np.ascontiguousarray(np.load(queries), dtype=np.float32)
    n, d = xb.shape
    if xq.ndim != 2 or xq.shape[1] != d:
        raise RelsearchError(f"queries must be [Q, {d}], got {xq.shape}")
    timings = {"data": time.perf_counter() - t0}

    truth_path = os.path.join(work, "truth.npy")
    t0 = time.perf_counter()
    np.save(truth_path, exact_truth(xb, xq, 10))
    timings["truth"] = time.perf_counter() - t0

    spec = spec or f"IVF{auto_nlist(n)},PQ{d // 8}"
    t0 = time.perf_counter()
    trained, n_train = _train_shared(xb, spec, os.path.join(work, "trained.faiss"))
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store = write_refine_store(os.path.join(work, "vectors.vecs"), np.arange(n), xb)
    timings["refine_store"] = time.perf_counter() - t0

    builds, runs, sizes = _build_and_query_both(work, base, queries, trained, truth_path, store, nprobe, rerank,
                                                shard_rows, workers)
    report: dict[str, Any] = {
        "source": source,
        "n": int(n),
        "d": int(d),
        "queries": len(xq),
        "spec": spec,
        "nprobe": nprobe,
        "rerank": rerank,
        "shard_rows": shard_rows,
        "workers": workers,
        "train_on": n_train,
        "timings_s": timings,
        "build": builds,
        "query": runs,
        "bytes": sizes,
        "bytes_per_vector": {k: v / n for k, v in sizes.items()},
        "recall_gap": runs["memory"]["recall_at_10"] - runs["ondisk"]["recall_at_10"],
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "scale_index.json"), "w") as f:
        json.dump(report, f, indent=2)
    _plot(report, os.path.join(results_dir, "scale_index.png"))
    return report


def _vector_files(work: str, n: int, n_queries: int, d: int, base: str | None,
                  queries: str | None) -> tuple[str, str, str]:
    """``(base.npy, queries.npy, what they are)``: the given files, or synthetic ones written under ``work``."""
    if base is None:
        base, queries = synthetic_to_disk(os.path.join(work, "data"), n, n_queries, d)
        return base, queries, f"synthetic clustered (relsearch.bench.synthetic mixture), n={n}, d={d}"
    if queries is None:
        raise RelsearchError("--base needs --queries")
    return base, queries, os.path.abspath(base)


def _train_shared(xb: np.ndarray, spec: str, path: str) -> tuple[str, int]:
    """One training of ``spec`` (the engine's sample size and settings) for both layouts; ``(file, rows)``."""
    from relsearch.index import train_size
    from relsearch.index._faiss import import_faiss
    from relsearch.index.sharded import write_trained

    faiss = import_faiss()
    n, d = xb.shape
    index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.spherical = True
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False
    n_train = train_size(n, ivf.nlist)  # the engine's own training-sample rule
    rows = np.sort(np.random.default_rng(0).choice(n, n_train, replace=False))
    index.train(np.ascontiguousarray(xb[rows]))
    return write_trained(index, path), n_train


def _build_and_query_both(work: str, base: str, queries: str, trained: str, truth: str, store: str, nprobe: int,
                          rerank: int, shard_rows: int, workers: int) -> tuple[dict, dict, dict[str, int]]:
    """Each layout built, then queried, in a process of its own; ``(builds, query runs, file sizes)``."""
    mem_file, disk_file = os.path.join(work, "memory.faiss"), os.path.join(work, "ondisk.faiss")
    ivfdata = os.path.join(work, "ondisk.ivfdata")
    builds = {
        "memory": _child("build_memory", base=base, trained=trained, out=mem_file),
        "ondisk": _child("build_ondisk", base=base, trained=trained, out=disk_file, ivfdata=ivfdata,
                         workdir=os.path.join(work, "shards"), shard_rows=shard_rows, workers=workers),
    }
    common = {"queries": queries, "truth": truth, "store": store, "nprobe": nprobe, "rerank": rerank}
    # Drop nothing from the page cache (that needs root and would be unusual for a
    # server); each query process starts fresh, so its RSS counts only what it touched.
    runs = {
        "memory": _child("query", out=mem_file, **common),
        "ondisk": _child("query", out=disk_file, **common),
    }
    sizes = {
        "memory": os.path.getsize(mem_file),
        "ondisk": os.path.getsize(disk_file) + os.path.getsize(ivfdata),
        "ondisk_ivfdata": os.path.getsize(ivfdata),
        "refine_store": os.path.getsize(store),
    }
    return builds, runs, sizes


def _plot(r: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = ["memory", "ondisk"]
    mib = 1 << 20
    panels = [
        ("recall@10", [r["query"][k]["recall_at_10"] for k in layouts]),
        ("batched QPS", [r["query"][k]["batched_qps"] for k in layouts]),
        ("build s (after training)", [r["build"][k]["build_s"] for k in layouts]),
        ("build peak RSS MiB", [r["build"][k]["peak_rss"] / mib for k in layouts]),
        ("query peak RSS MiB", [r["query"][k]["peak_rss"] / mib for k in layouts]),
        ("index on disk MiB", [r["bytes"][k] / mib for k in layouts]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (title, vals) in zip(axes, panels):
        bars = ax.bar(layouts, vals, color=["#4c72b0", "#dd8452"])
        ax.set_title(title, fontsize=9)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{r['spec']} N={r['n']:,} d={r['d']} nprobe={r['nprobe']} rerank={r['rerank']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry of one measured phase in its own process (``_child``); ``relsearch bench scale`` runs the whole."""
    p = argparse.ArgumentParser(prog="python -m relsearch.bench.scale_index")
    p.add_argument("--phase", required=True, choices=("build_memory", "build_ondisk", "query"))
    for name in ("base", "queries", "trained", "out", "ivfdata", "workdir", "truth", "store"):
        p.add_argument(f"--{name}", default=None)
    for name in ("nprobe", "rerank", "shard-rows", "workers"):
        p.add_argument(f"--{name}", type=int, default=None)
    a = p.parse_args(argv)
    out = {"build_memory": _phase_build_memory, "build_ondisk": _phase_build_ondisk, "query": _phase_query}[a.phase](a)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def format_table(r: dict[str, Any]) -> str:
    """The report as a small text table, one row per layout."""
    mib = 1 << 20
    lines = [
        f"{r['spec']}  N={r['n']:,} d={r['d']}  nprobe={r['nprobe']} rerank={r['rerank']}  ({r['source']})",
        f"{'layout':8} {'recall@10':>9} {'QPS batch':>10} {'QPS 1':>8} {'build s':>8} {'build RSS':>10} "
        f"{'query RSS':>10} {'on disk':>9}",
    ]
    for k in ("memory", "ondisk"):
        q, b = r["query"][k], r["build"][k]
        lines.append(
            f"{k:8} {q['recall_at_10']:9.4f} {q['batched_qps']:10.0f} {q['single_qps']:8.0f} {b['build_s']:8.1f} "
            f"{b['peak_rss'] / mib:8.0f}Mi {q['peak_rss'] / mib:8.0f}Mi {r['bytes'][k] / mib:7.0f}Mi"
        )
    lines.append(f"training {r['timings_s']['train']:.1f} s on {r['train_on']:,} vectors (shared by both layouts)")
    return "\n".join(lines)
