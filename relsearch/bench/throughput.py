"""Throughput benchmark: embedding speed, build-index time by phase, query latency by step.

Per encoder:

* raw forward rate: images/s of ``encoder.embed`` on pre-decoded batches of the build's
  batch size (decode excluded, model already warm);
* build-index on the same images into a fresh index, its wall time split into scan
  (walk + hash + diff), embed (inside the encoder's forward), waits+writes (the rest of the
  embedding phase: decode not hidden behind the forward, LMDB writes) and index (FAISS
  build + commit); the build's images/s over the raw forward rate is the share of the
  model's speed the pipeline keeps;
* query latency with a warm :class:`~relsearch.query.Searcher`, through the engine's own
  query path (:func:`relsearch.composed.search_composed`): p50 / p95 of decode, embed,
  search + lookup, and of the whole query, over many queries.

Nothing of the engine is patched: the build gets the benchmark's encoder through
``BuildOptions.preloaded``, wrapped in a :class:`TimedEncoder` that times its forward
calls, and the build's own report gives the other phases.

    relsearch bench throughput --encoders imagenet            # synthetic photos
    relsearch bench throughput --collection data/bench --encoders imagenet
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.bench import RESULTS_DIR, latency_ms, pyplot
from relsearch.encoders.base import PipelinedEncoder
from relsearch.errors import RelsearchError

#: Phases of a build's wall time ("waits+writes": the embedding phase outside the forward).
PHASES = ("scan", "embed", "waits+writes", "index")
#: Steps of a query ("other": the rest of the query call: generation check, terms, hits).
STEPS = ("decode", "embed", "search+lookup", "other")


def synthetic_photos(root: Path, n: int, seed: int = 0, size: tuple[int, int] = (480, 360)) -> list[Path]:
    """``n`` JPEGs of gradients and shapes, sized like small photos (decode cost included)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        a, b = rng.random(3) * 255, rng.random(3) * 255
        t = ((xx / w) * rng.random() + (yy / h) * rng.random())[..., None] / 2
        img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            x1, y1 = x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
        p = root / f"photo_{i:05d}.jpg"
        img.save(p, quality=88)
        out.append(p)
    return out


class TimedEncoder:
    """An encoder that forwards every call to ``inner`` and adds up the time of its forwards.

    The build runs it like any encoder (it has the same protocols: see :func:`timed`);
    ``forward_s`` is the time inside ``embed`` / ``embed_batch``, ``preprocess_s`` the time
    inside ``preprocess_batch`` (overlapped with the forward when the build pipelines).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.forward_s = 0.0
        self.preprocess_s = 0.0

    name = property(lambda self: self.inner.name)
    dim = property(lambda self: self.inner.dim)
    kind = property(lambda self: self.inner.kind)
    fingerprint = property(lambda self: self.inner.fingerprint)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def embed(self, images: list[Any]) -> np.ndarray:
        t = time.perf_counter()
        try:
            return self.inner.embed(images)
        finally:
            self.forward_s += time.perf_counter() - t


class _TimedPipelined(TimedEncoder):
    def preprocess_batch(self, images: list[Any]) -> Any:
        t = time.perf_counter()
        try:
            return self.inner.preprocess_batch(images)
        finally:
            self.preprocess_s += time.perf_counter() - t

    def embed_batch(self, batch: Any) -> np.ndarray:
        t = time.perf_counter()
        try:
            return self.inner.embed_batch(batch)
        finally:
            self.forward_s += time.perf_counter() - t


def timed(encoder: Any) -> TimedEncoder:
    """``encoder`` wrapped in a :class:`TimedEncoder` that keeps its pipelined protocol, if it has one."""
    return _TimedPipelined(encoder) if isinstance(encoder, PipelinedEncoder) else TimedEncoder(encoder)


def raw_forward_rate(encoder: Any, images: list[Any], batch_size: int) -> dict[str, Any]:
    """images/s of the model alone on pre-decoded batches (first batch is a warm-up).

    For a :class:`PipelinedEncoder` the batches are also
    pre-processed, so this is the forward pass only; ``embed_pil`` adds the resize and
    normalisation (``encoder.embed`` on decoded images).
    """
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    pipelined = isinstance(encoder, PipelinedEncoder)

    def rate(fn: Any, inputs: list[Any]) -> dict[str, float]:
        for x in inputs[:2]:  # warm-up: first calls pick kernels and grow the allocator
            fn(x)
        t = time.perf_counter()
        for x in inputs:
            fn(x)
        s = time.perf_counter() - t
        return {"seconds": s, "images_per_s": len(images) / s}

    out: dict[str, Any] = {"images": len(images), "pipelined": pipelined}
    if pipelined:
        out.update(rate(encoder.embed_batch, [encoder.preprocess_batch(b) for b in batches]))
        out["embed_pil"] = rate(encoder.embed, batches)
    else:
        out.update(rate(encoder.embed, batches))
    return out


def query_latency(index: Path, name: str, paths: list[str], k: int, device: str | None) -> dict[str, Any]:
    """p50/p95 of a whole warm query, one at a time, through the engine's query path.

    Per query: decode (:func:`~relsearch.query.load_query_image`), then
    :func:`~relsearch.composed.search_composed` (generation check, embed, FAISS search, LMDB
    lookup, hits), whose result carries its own embed and search + lookup timings.
    """
    from relsearch.composed import QueryTerm, search_composed
    from relsearch.query import Searcher, load_query_image

    parts: dict[str, list[float]] = {step: [] for step in (*STEPS, "total")}
    with Searcher(index, encoders=name, device=device) as s:
        s.encoder(name)  # load the model before the first timed query
        for warm, p in enumerate([*paths[:3], *paths]):
            t0 = time.perf_counter()
            img = load_query_image(p)
            t1 = time.perf_counter()
            result = search_composed(s, [QueryTerm(p)], k, images={p: img})
            t2 = time.perf_counter()
            if warm < 3:
                continue
            embed = result.timings_ms[f"{name}.embed"] / 1e3
            search = result.timings_ms[f"{name}.search+lookup"] / 1e3
            for key, v in zip(parts, (t1 - t0, embed, search, max(0.0, t2 - t1 - embed - search), t2 - t0)):
                parts[key].append(v)
    return {"queries": len(paths), "k": k, **{key: latency_ms(v) for key, v in parts.items()}}


def timed_build(enc: Any, root: Path, index: Path, batch_size: int, workers: int | None,
                device: str | None) -> dict[str, Any]:
    """Build ``index`` from ``root`` with the loaded ``enc``; wall time, images/s and the split by phase."""
    from relsearch.build import BuildOptions, build_index

    clock = timed(enc)
    t = time.perf_counter()
    b = build_index(root, index, BuildOptions(encoders=enc.name, batch_size=batch_size, workers=workers,
                                              device=device, progress=False, preloaded={enc.name: clock}))
    wall = time.perf_counter() - t
    sec = b.seconds
    split = {
        "scan": sec.get("scan", 0.0) + sec.get("diff", 0.0),
        "embed": clock.forward_s,
        "waits+writes": max(0.0, sec.get("embed", 0.0) - clock.forward_s),
        "index": sec.get("index", 0.0),
    }
    return {"seconds": wall, "images_per_s": b.embedded / wall if wall > 0 else 0.0, "split_s": split,
            "preprocess_overlapped_s": clock.preprocess_s, "embedded": b.embedded, "failed": len(b.failed)}


def _measure(enc: Any, root: Path, paths: list[str], decoded: list[Any], index: Path, batch_size: int,
             queries: int, k: int, workers: int | None, device: str | None) -> dict[str, Any]:
    """One loaded encoder: raw forward rate (before and after the build), the build by phase, queries."""
    # The forward rate is taken before and after the build and averaged: on a shared
    # machine the load moves during a run, and the ratio should compare like with like.
    before = raw_forward_rate(enc, decoded, batch_size)
    build = timed_build(enc, root, index, batch_size, workers, device)
    after = raw_forward_rate(enc, decoded, batch_size)
    raw = {**before, "images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2,
           "before_build_images_per_s": before["images_per_s"],
           "after_build_images_per_s": after["images_per_s"]}
    raw.pop("seconds", None)
    return {
        "kind": enc.kind,
        "dim": enc.dim,
        "runtime": getattr(enc, "runtime", "torch"),
        "fingerprint": enc.fingerprint,
        "raw_forward": raw,
        "build": build,
        "build_over_raw": build["images_per_s"] / raw["images_per_s"],
        # share of the build's wall time spent inside the forward: 1.0 means decode,
        # preprocessing and writes are fully hidden; unlike the ratio above it does not
        # depend on two timings taken at different moments of a shared machine's load.
        "forward_share": build["split_s"]["embed"] / build["seconds"] if build["seconds"] > 0 else 0.0,
        "query": query_latency(index, enc.name, paths[:queries], k, device),
    }


def parse_runtimes(text: str | None) -> list[str | None]:
    """``torch,onnx`` -> ``["torch", "onnx"]``; None -> ``[None]`` (the default choice of each encoder)."""
    from relsearch.encoders.onnx_runtime import RUNTIMES

    if text is None:
        return [None]
    names = [r.strip().lower() for r in text.split(",") if r.strip()]
    bad = [r for r in names if r not in RUNTIMES]
    if not names or bad or len(set(names)) != len(names):
        raise RelsearchError(f"--runtimes must list distinct runtimes of {', '.join(RUNTIMES)}, got {text!r}")
    return list(names)


def _source_images(collection: str | os.PathLike[str] | None, n: int, tmp: str) -> tuple[Path, str]:
    """The folder the run indexes (synthetic photos, or the first ``n`` images linked) and its label."""
    from relsearch.collection import scan

    if collection is None:
        root = Path(tmp) / "photos"
        synthetic_photos(root, n)
        return root, f"{n} synthetic 480x360 JPEGs"
    root = Path(collection)
    if not root.is_dir():
        raise RelsearchError(f"collection folder {root} does not exist")
    files = scan(root).files
    if not files:
        raise RelsearchError(f"no images found under {root}")
    if len(files) > n:  # index exactly the first n: link them into one folder
        root = Path(tmp) / "subset"
        root.mkdir()
        for i, f in enumerate(files[:n]):
            os.symlink(f.path, root / f"{i:06d}{Path(f.path).suffix}")
    return root, f"{min(n, len(files))} images of {Path(collection).resolve()}"


def run_throughput(
    collection: str | os.PathLike[str] | None = None,
    encoders: str = "imagenet",
    n: int = 256,
    batch_size: int = 32,
    queries: int = 100,
    k: int = 10,
    workers: int | None = None,
    device: str | None = None,
    results_dir: str | os.PathLike[str] | None = RESULTS_DIR,
    threads: int | None = None,
    analogy: bool = False,
    explain: bool = False,
    runtimes: str | None = None,
) -> dict[str, Any]:
    """Measure every encoder of ``encoders``; returns the report (JSON + PNG in ``results_dir``).

    ``threads`` sets the intra-op threads (torch's and ONNX Runtime's) for the run (None: each
    runtime's default). On a machine whose cores are busy with other work, two intra-op threads
    can be many times slower than one, because every operator waits for both threads to be
    scheduled. ``runtimes`` (``torch,onnx``) measures every encoder once per runtime, side by
    side, as ``NAME:RUNTIME``; without it each encoder loads as ``get_encoder`` picks.

    Without ``collection``, ``n`` synthetic photos are written to a temporary folder; with
    one, its first ``n`` images are used (copied nowhere: the build indexes the folder).
    """
    import torch

    from relsearch import threads as thread_conf
    from relsearch.collection import load_image, scan
    from relsearch.encoders.onnx_runtime import forced_runtime

    if n < 1 or batch_size < 1 or queries < 1 or k < 1:
        raise RelsearchError("--n, --batch-size, --queries and -k must all be at least 1")
    if threads is not None and threads < 1:
        raise RelsearchError(f"--threads must be at least 1, got {threads}")
    rts = parse_runtimes(runtimes)
    saved_threads, saved_chosen = torch.get_num_threads(), thread_conf.intra_op_threads()
    thread_conf.use_threads(threads if threads is not None else saved_chosen)  # before any session opens
    try:
        loaded = _load_per_runtime(encoders, rts, device)  # bad names fail before any work
        with tempfile.TemporaryDirectory(prefix="relsearch-throughput-") as tmp:
            root, source = _source_images(collection, n, tmp)
            paths = [f.path for f in scan(root).files]
            decoded = [load_image(p, max_side=512) for p in paths]
            report = _report_head(source, len(paths), batch_size, device)
            for rt, enc in loaded:
                key = enc.name if rt is None else f"{enc.name}:{rt}"
                with forced_runtime(rt):  # the query's Searcher loads the same runtime
                    report["encoders"][key] = _measure(enc, root, paths, decoded, Path(tmp) / f"index-{key}",
                                                       batch_size, queries, k, workers, device)
            if analogy or explain:  # the whole query with its modes, on one index of every encoder
                from relsearch.bench.modes_eval import modes_latency

                report["query_modes"] = modes_latency(root, paths[:queries], encoders, k, analogy, explain,
                                                      Path(tmp) / "index-all", device)
    finally:
        thread_conf.use_threads(saved_chosen)
        torch.set_num_threads(saved_threads)
    if results_dir is not None:
        _write(report, Path(results_dir))
    return report


def _load_per_runtime(encoders: str, runtimes: list[str | None], device: str | None) -> list[tuple[str | None, Any]]:
    """``(runtime, encoder)`` for every encoder of ``encoders`` under every runtime."""
    from relsearch.encoders import get_encoders
    from relsearch.encoders.onnx_runtime import forced_runtime

    loaded = []
    for rt in runtimes:
        with forced_runtime(rt):
            loaded += [(rt, enc) for enc in get_encoders(encoders, device=device)]
    return loaded


def _report_head(source: str, images: int, batch_size: int, device: str | None) -> dict[str, Any]:
    """What the run measured on: images, batch, threads, the machine's load."""
    import torch

    from relsearch import threads as thread_conf

    return {"source": source, "images": images, "batch_size": batch_size, "device": device or "auto",
            "cpus": os.cpu_count(), "encoders": {}, "torch_threads": torch.get_num_threads(),
            "onnx_threads": thread_conf.intra_op_threads() or "default",
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["json"], report["png"] = str(out / "throughput.json"), str(out / "throughput.png")
    Path(report["json"]).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot(report, report["png"])


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Stacked build phases, images/s (raw vs build), stacked query latency p50."""
    plt = pyplot()

    names = list(report["encoders"])
    enc = report["encoders"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for phase in PHASES:
        vals = np.array([enc[n]["build"]["split_s"][phase] for n in names])
        axes[0].barh(y, vals, left=left, label=phase, height=0.5)
        left += vals
    axes[0].set_yticks(y, names)
    axes[0].set_xlabel("seconds")
    axes[0].set_title(f"build-index, {report['images']} images, threads {report['torch_threads']}")
    axes[0].legend(fontsize=7, ncol=3)
    w = 0.38
    raw = [enc[n]["raw_forward"]["images_per_s"] for n in names]
    bld = [enc[n]["build"]["images_per_s"] for n in names]
    b1 = axes[1].bar(y - w / 2, raw, w, label="raw forward (pre-decoded)")
    b2 = axes[1].bar(y + w / 2, bld, w, label="build-index")
    axes[1].bar_label(b1, fmt="%.1f", fontsize=7)
    axes[1].bar_label(b2, fmt="%.1f", fontsize=7)
    axes[1].set_xticks(y, names)
    axes[1].set_ylabel("images / s")
    axes[1].set_title("embedding throughput")
    axes[1].legend(fontsize=7)
    left = np.zeros(len(names))
    for step in STEPS:
        vals = np.array([enc[n]["query"][step]["p50_ms"] for n in names])
        axes[2].barh(y, vals, left=left, label=step, height=0.5)
        left += vals
    for i, n in enumerate(names):
        axes[2].plot(enc[n]["query"]["total"]["p95_ms"], i, "k|", markersize=14)
    axes[2].set_yticks(y, names)
    axes[2].set_xlabel("ms (bars p50 by step, | total p95)")
    axes[2].set_title("query latency, warm")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['source']}, batch {report['batch_size']}, torch threads {report['torch_threads']}, "
             f"onnx threads {report.get('onnx_threads', 'default')}"]
    head = (f"{'encoder':<18}{'raw img/s (before/after)':>26}{'build img/s':>12}{'ratio':>7}{'fwd share':>10}  build s: "
            + " ".join(f"{p:>13}" for p in PHASES))
    lines += [head, "-" * len(head)]
    for name, r in report["encoders"].items():
        s = r["build"]["split_s"]
        raw = r["raw_forward"]
        spread = f"({raw.get('before_build_images_per_s', 0):.1f}/{raw.get('after_build_images_per_s', 0):.1f})"
        lines.append(f"{name:<18}{raw['images_per_s']:>12.1f} {spread:>13}{r['build']['images_per_s']:>12.1f}"
                     f"{r['build_over_raw']:>7.2f}{r['forward_share']:>10.2f}  {'':8}" + " ".join(f"{s[p]:>13.2f}" for p in PHASES))
    if "query_modes" in report:
        qm = report["query_modes"]
        modes = " ".join(f"--{m}" for m in qm["modes"])
        lines_modes = [f"whole query {modes} ({qm['encoders']}, k {qm['k']}, {qm['queries']} queries): "
                       + ", ".join(f"{p} p50 {qm[p]['p50_ms']:.1f} ms" for p in
                                   ("decode", "columns", "analogy", "explain", "total"))
                       + f"; total p95 {qm['total']['p95_ms']:.1f} ms"]
    else:
        lines_modes = []
    head = f"{'encoder':<18}" + "".join(f"{st + ' p50/p95 ms':>26}" for st in (*STEPS, "total"))
    lines += ["", head, "-" * len(head)]
    for name, r in report["encoders"].items():
        q = r["query"]
        lines.append(f"{name:<18}" + "".join(f"{q[st]['p50_ms']:>16.2f} / {q[st]['p95_ms']:>7.2f}"
                                             for st in (*STEPS, "total")))
    return "\n".join(lines + lines_modes)
