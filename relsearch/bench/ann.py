"""ANN benchmark: the engine's vector index against exact search, in one run.

Builds the index exactly as ``build-index`` does (``VectorIndex.build`` with
record ids 0..N-1 and a raw-vector lookup for re-ranking), then reports
recall@1 / recall@10 against exact inner-product search, QPS for one batch of
all queries and for one query at a time, the same two QPS figures for exact
flat search measured in the same process, build / train time and index bytes
per vector. ``sweep=True`` adds a recall-vs-QPS curve over nprobe, with and
without re-ranking, one curve per spec, as JSON and PNG in benchmarks/results/.

    relsearch bench synthetic --n 1000000 --queries 1000 --out data/ann1m
    relsearch bench ann --base data/ann1m/base.npy --queries data/ann1m/queries.npy --sweep
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from relsearch.bench import RESULTS_DIR, pyplot
from relsearch.errors import RelsearchError
from relsearch.index import IndexConfig, VectorIndex, recall_at
from relsearch.index._faiss import import_faiss
from relsearch.index.refine import write_refine_store

#: Exact one-query-at-a-time search on 1M vectors is slow, so it is timed on as
#: many queries as fit in this budget (at least 5).
EXACT_SINGLE_BUDGET_S = 20.0
#: Recall has long plateaued by 256 probes (1/8 of the lists at 1M vectors),
#: while each doubling doubles the sweep's run time.
SWEEP_MAX_NPROBE = 256


def load_vectors(path: str, what: str = "vectors") -> np.ndarray:
    """Read a ``[N, d]`` .npy as float32; a missing or malformed file raises RelsearchError."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise RelsearchError(f"{what} file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise RelsearchError(f"cannot read {what} file {path} as .npy: {e}") from None
    if x.ndim != 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
        raise RelsearchError(
            f"{what} file {path} must hold a non-empty numeric [N, d] array, got {x.dtype} {x.shape}"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _time_batched(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = search(queries)
    return out, len(queries) / (time.perf_counter() - t0)


def _time_single(
    search: Callable[[np.ndarray], Any], queries: np.ndarray, budget_s: float | None = None
) -> tuple[float, int]:
    """QPS of one query per call; stops after ``budget_s`` (at least 5 queries)."""
    t0 = time.perf_counter()
    done = 0
    for i in range(len(queries)):
        search(queries[i : i + 1])
        done += 1
        if budget_s is not None and done >= 5 and time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0), done


def _file_bytes(index: VectorIndex) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        index.save(path)
        return os.path.getsize(path)


def _sweep_curve(
    index: VectorIndex,
    queries: np.ndarray,
    true_ids: np.ndarray,
    k: int,
    lookup: Callable[[np.ndarray], np.ndarray],
) -> list[dict[str, Any]]:
    """Recall@k and batched QPS for nprobe in 1, 2, 4, ... up to SWEEP_MAX_NPROBE, re-ranking off and on."""
    saved = (index.nprobe, index.rerank)
    rerank_on = index.rerank or 100
    points = []
    nprobe = 1
    while nprobe <= min(index.nlist, SWEEP_MAX_NPROBE):
        for rerank in (0, rerank_on):
            index.nprobe, index.rerank = nprobe, rerank
            (_, ids), qps = _time_batched(lambda q: index.search(q, k, vector_lookup=lookup), queries)
            points.append(
                {"nprobe": nprobe, "rerank": rerank, "recall_at_10": recall_at(ids, true_ids, 10), "qps": qps}
            )
        nprobe *= 2
    index.nprobe, index.rerank = saved
    return points


def _plot(sweep: dict[str, Any], path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec, points in sweep["curves"].items():
        for rerank in sorted({p["rerank"] for p in points}):
            pts = [p for p in points if p["rerank"] == rerank]
            label = f"{spec} rerank {rerank}" if rerank else f"{spec} no rerank"
            ax.plot([p["recall_at_10"] for p in pts], [p["qps"] for p in pts], marker="o", label=label)
            for p in pts:
                ax.annotate(str(p["nprobe"]), (p["recall_at_10"], p["qps"]), fontsize=7, alpha=0.7)
    ax.axhline(sweep["exact_qps_batched"], color="grey", linestyle="--", label="exact flat (batched)")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact")
    ax.set_ylabel("queries / s (batched, log)")
    ax.set_title(f"N={sweep['n']:,} d={sweep['d']}  (labels: nprobe)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_ann(
    base: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    spec: str = "auto",
    out: str | None = None,
    sweep: bool = False,
    results_dir: str = RESULTS_DIR,
) -> dict[str, Any]:
    """Benchmark the engine's index on ``base`` with ``queries``; returns the report dict.

    ``out`` saves the returned ids (``[Q, k]`` int64 .npy). With ``sweep`` the
    curve is written to ``results_dir/ann_sweep.json`` and ``ann_sweep.png``.
    """
    base, queries, config = _checked(base, queries, k, spec, out)
    kk = max(k, 10)  # recall@10 is always reported
    exact = exact_baseline(base, queries, kk)

    def lookup(ids: np.ndarray) -> np.ndarray:
        return base[ids]

    with tempfile.TemporaryDirectory(prefix="relsearch-ann-") as store_dir:
        index, build_s, refine_s = _build_timed(base, config, lookup, store_dir)
        (_, ids), qps = _time_batched(lambda q: index.search(q, kk, vector_lookup=lookup), queries)
        single_qps, _ = _time_single(lambda q: index.search(q, kk, vector_lookup=lookup), queries)
        report = _report(index, base, queries, k, spec, ids, exact, qps, single_qps, build_s, refine_s)
        if out:
            try:
                np.save(out, np.ascontiguousarray(ids[:, :k], dtype=np.int64))
            except OSError as e:
                raise RelsearchError(f"cannot write ids to {out}: {e.strerror or e}") from None
            report["out"] = out
        if sweep and index.is_ivf:
            report["sweep"] = _write_sweep(index, base, queries, exact, kk, lookup, config, results_dir)
    return report


def _checked(base: np.ndarray, queries: np.ndarray, k: int, spec: str,
             out: str | None) -> tuple[np.ndarray, np.ndarray, IndexConfig]:
    """The inputs as contiguous float32 and the index config; what can fail fails here, before the long part."""
    if k < 1:
        raise RelsearchError(f"k must be >= 1, got {k}")
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1] or not len(queries) or not len(base):
        raise RelsearchError(
            f"need base [N, d] and queries [Q, d] with the same d, got {base.shape} and {queries.shape}"
        )
    try:
        config = IndexConfig(spec=spec)
    except ValueError as e:
        raise RelsearchError(str(e)) from None
    if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise RelsearchError(f"cannot write ids to {out}: no such directory")
    if not config.is_auto:
        faiss = import_faiss()
        try:
            faiss.index_factory(base.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise RelsearchError(
                f"invalid FAISS index spec {spec!r} for dimension {base.shape[1]}: {str(e).strip().splitlines()[0]}"
            ) from None
    return base, queries, config


def exact_baseline(base: np.ndarray, queries: np.ndarray, kk: int) -> dict[str, Any]:
    """Exact flat search: the true neighbours and the speed baseline (batched and one by one)."""
    faiss = import_faiss()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    (_, true_ids), qps = _time_batched(lambda q: flat.search(q, kk), queries)
    single_qps, single_n = _time_single(lambda q: flat.search(q, kk), queries, EXACT_SINGLE_BUDGET_S)
    flat.reset()  # free the copy of the base before building the index
    return {"true_ids": true_ids, "qps_batched": qps, "qps_single": single_qps, "single_queries_timed": single_n}


def _build_timed(base: np.ndarray, config: IndexConfig, lookup: Any,
                 store_dir: str) -> tuple[VectorIndex, float, float]:
    """The index as ``build-index`` builds it, re-ranking from a memory-mapped refine store file."""
    n = len(base)
    t0 = time.perf_counter()
    index = VectorIndex.build(base, np.arange(n, dtype=np.int64), config, vector_lookup=lookup)
    build_s = time.perf_counter() - t0
    refine_s = 0.0
    if index.rerank:
        t0 = time.perf_counter()
        index.attach_refine_store(write_refine_store(os.path.join(store_dir, "ann.vecs"), np.arange(n), base))
        refine_s = time.perf_counter() - t0
    return index, build_s, refine_s


def _report(index: VectorIndex, base: np.ndarray, queries: np.ndarray, k: int, spec: str, ids: np.ndarray,
            exact: dict[str, Any], qps: float, single_qps: float, build_s: float, refine_s: float) -> dict[str, Any]:
    n, d = base.shape
    true_ids = exact["true_ids"]
    info = index.info()
    file_bytes = _file_bytes(index)
    return {
        "n": n,
        "d": d,
        "queries": len(queries),
        "k": k,
        "spec": index.spec,
        "requested_spec": spec,
        "nlist": index.nlist,
        "nprobe": index.nprobe,
        "rerank": index.rerank,
        "recall_at_1": recall_at(ids, true_ids, 1),
        "recall_at_10": recall_at(ids, true_ids, 10),
        f"recall_at_{k}": recall_at(ids, true_ids, k),
        "qps_batched": qps,
        "qps_single": single_qps,
        "exact_qps_batched": exact["qps_batched"],
        "exact_qps_single": exact["qps_single"],
        "exact_single_queries_timed": exact["single_queries_timed"],
        "speedup_batched": qps / exact["qps_batched"],
        "speedup_single": single_qps / exact["qps_single"],
        "build_s": build_s,
        "train_s": info["timings"].get("train_s", 0.0),
        "add_s": info["timings"].get("add_s", 0.0),
        "tune_s": info["timings"].get("tune_s", 0.0),
        "trained_on": info["trained_on"],
        "tuned_recall": info["tuned_recall"],
        "index_file_bytes": file_bytes,
        "bytes_per_vector": file_bytes / n,
        "ram_bytes_per_vector": info["ram_bytes_per_vector"],
        "disk_bytes_per_vector": info["disk_bytes_per_vector"],
        "refine_bytes_per_vector": info["refine_bytes_per_vector"],
        "refine_store_s": refine_s,
        "threads": import_faiss().omp_get_max_threads(),
    }


def _write_sweep(index: VectorIndex, base: np.ndarray, queries: np.ndarray, exact: dict[str, Any], kk: int,
                 lookup: Any, config: IndexConfig, results_dir: str) -> dict[str, Any]:
    """Recall/QPS curves of ``index`` (and of the automatic spec, when another was forced), as JSON + PNG."""
    n, d = base.shape
    true_ids = exact["true_ids"]
    curves = {index.spec: _sweep_curve(index, queries, true_ids, kk, lookup)}
    if config.is_auto is False:
        auto = VectorIndex.build(base, np.arange(n, dtype=np.int64), IndexConfig(), vector_lookup=lookup)
        if auto.is_ivf and auto.spec not in curves:
            curves[auto.spec] = _sweep_curve(auto, queries, true_ids, kk, lookup)
    doc = {"n": n, "d": d, "queries": len(queries), "exact_qps_batched": exact["qps_batched"], "curves": curves}
    os.makedirs(results_dir, exist_ok=True)
    json_path = os.path.join(results_dir, "ann_sweep.json")
    png_path = os.path.join(results_dir, "ann_sweep.png")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    _plot(doc, png_path)
    return {"json": json_path, "png": png_path, "curves": curves}


def format_report(r: dict[str, Any]) -> str:
    """The report as a few human-readable lines (what the CLI prints without --json)."""
    return "\n".join(
        [
            f"N={r['n']:,} d={r['d']} queries={r['queries']} spec={r['spec']} nprobe={r['nprobe']} rerank={r['rerank']}",
            f"recall@1 {r['recall_at_1']:.4f}  recall@10 {r['recall_at_10']:.4f}",
            f"QPS batched {r['qps_batched']:,.0f} (exact {r['exact_qps_batched']:,.1f}, x{r['speedup_batched']:.1f})",
            f"QPS single  {r['qps_single']:,.0f} (exact {r['exact_qps_single']:,.1f}, x{r['speedup_single']:.1f})",
            f"build {r['build_s']:.1f} s (train {r['train_s']:.1f} s on {r['trained_on']:,}, "
            f"add {r['add_s']:.1f} s, tune {r['tune_s']:.1f} s)",
            f"index {r['index_file_bytes']:,} bytes = {r['bytes_per_vector']:.1f} bytes/vector; "
            f"RAM {r['ram_bytes_per_vector']:.1f} B/vector, disk {r['disk_bytes_per_vector']:.1f} B/vector "
            f"(refine store {r['refine_bytes_per_vector']:.1f}, memory-mapped)",
        ]
    )
