"""The 100M / 1B plan of ``benchmarks/SCALE.md``, computed from measured JSON.

Every number in the plan's tables is derived here from a ``bench scale``
report (on-disk index: bytes per vector, shard add rate, merge rate, query
latency, RSS) and from the embedding rates given on the command line, so the
plan can be recomputed when a measurement changes:

    relsearch bench scale-plan --scale benchmarks/results/scale_index.json \\
        --embed-rate relsim-mini=46.6 --gpu-rate 10,30,100

Scaling rules (stated so they can be argued with):

* nlist follows the engine's own rule (:func:`relsearch.index.auto_nlist`);
* adding a vector costs one coarse assignment (nlist x d multiply-adds with the
  flat quantizer) plus PQ encoding, so the measured add rate is scaled by the
  ratio of nlists (an upper bound on the cost: PQ encoding does not grow);
* k-means training costs points x nlist per iteration, with the engine's
  training-sample rule;
* the merge copies the lists once: its measured bytes/s is kept;
* a query scans nprobe lists whose length grows as N / nlist: the measured
  single-query latency is scaled by that ratio (again an upper bound: part of
  it is fixed per-query overhead).
"""

from __future__ import annotations

import math
from typing import Any

from relsearch.index import auto_nlist, train_size

TARGETS = (100_000_000, 1_000_000_000)
HOURS = 24.0


def _nlist_of(spec: str) -> int:
    return int(spec.split(",")[0].replace("IVF", "").split("_")[0])


def plan(scale: dict[str, Any], gpu_rates: list[float], embed_rates: dict[str, float]) -> dict[str, Any]:
    """The plan for each target size, from a ``bench scale`` report."""
    n, d = int(scale["n"]), int(scale["d"])
    nlist = _nlist_of(scale["spec"])
    ivf_bpv = scale["bytes"]["ondisk_ivfdata"] / n
    build = scale["build"]["ondisk"]
    cores = int(scale.get("cpu_count") or 1)
    add_rate_core = n / (build["shards_s"] * cores)  # vectors per core-second
    merge_rate = scale["bytes"]["ondisk_ivfdata"] / max(build["merge_s"], 1e-9)
    train_points = int(scale["train_on"])
    train_core_s = scale["timings_s"]["train"] * cores
    q = scale["query"]["ondisk"]
    single_ms = 1000.0 / q["single_qps"]
    out: dict[str, Any] = {"measured": {
        "n": n, "d": d, "nlist": nlist, "ivfdata_bytes_per_vector": ivf_bpv,
        "add_vectors_per_core_s": add_rate_core, "merge_bytes_per_s": merge_rate,
        "train_points": train_points, "train_core_s": train_core_s, "single_query_ms": single_ms,
        "query_peak_rss": q["peak_rss"], "recall_at_10": q["recall_at_10"], "nprobe": scale["nprobe"],
        "rerank": scale["rerank"],
    }, "targets": {}}
    for big in TARGETS:
        nl = auto_nlist(big)
        pts = train_size(big, nl)
        add_core_h = big / (add_rate_core * nlist / nl) / 3600
        row = {
            "nlist": nl,
            "ivfdata_gb": big * ivf_bpv / 1e9,
            "query_ram_mb": (nl * d * 4 + 256 * d * 4 + nl * 24) / 1e6,
            "refine_f32_gb": big * d * 4 / 1e9,
            "refine_sq8_gb": big * d / 1e9,
            "shards_1m": math.ceil(big / 1_000_000),
            "add_core_hours": add_core_h,
            "add_cores_for_24h": math.ceil(add_core_h / HOURS),
            "train_points": pts,
            "train_core_hours": train_core_s * (pts * nl) / (train_points * nlist) / 3600,
            "merge_hours": big * ivf_bpv / merge_rate / 3600,
            "list_length": big / nl,
            "single_query_ms_upper": single_ms * (big / nl) / (n / nlist),
            "scan_mb_per_query": scale["nprobe"] * big / nl * ivf_bpv / 1e6,
            "refine_read_kb_per_query": scale["rerank"] * d * 4 / 1e3,
            "embed": {f"gpu@{r:g}/s": {"gpu_hours": big / r / 3600, "actors_24h": math.ceil(big / r / 3600 / HOURS)}
                      for r in gpu_rates},
        }
        for name, rate in embed_rates.items():
            row["embed"][name] = {"machine_hours": big / rate / 3600,
                                  "machines_24h": math.ceil(big / rate / 3600 / HOURS)}
        out["targets"][str(big)] = row
    return out
