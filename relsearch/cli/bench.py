"""CLI commands: bench ann, bench relational, bench throughput.

The benchmark code lives in the repository's ``benchmarks/`` package (never imported
by the engine); these commands parse, call it and print.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import typer

from relsearch.cli.app import JsonOpt, bench_app, print_json, user_errors
from relsearch.errors import RelsearchError

ResultsOpt = typer.Option(None, "--results-dir",
                          help="Where the JSON + PNG go (default: benchmarks/results of the checkout).")


def _bench_module(name: str) -> Any:
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ImportError as exc:
        raise RelsearchError(
            f"benchmarks.{name} is not importable ({exc}); run `relsearch bench` from the repository checkout"
        ) from exc


@bench_app.command("ann")
@user_errors
def ann_cmd(
    base: Path = typer.Option(..., "--base", help="float32 [N, d] .npy (L2-normalised vectors)."),
    queries: Path = typer.Option(..., "--queries", help="float32 [Q, d] .npy."),
    k: int = typer.Option(10, "-k", "--k", min=1),
    spec: str = typer.Option("auto", "--spec", help="auto or a FAISS factory string, e.g. IVF1024,PQ48."),
    out: Path | None = typer.Option(None, "--out", help="Write the returned ids [Q, k] int64 here (.npy)."),
    sweep: bool = typer.Option(False, "--sweep", help="Also write recall@10 vs QPS over nprobe (JSON + PNG)."),
    results_dir: Path | None = ResultsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """ANN recall/speed of the engine's index against exact search."""
    ann = _bench_module("ann")
    b = ann.load_vectors(str(base), "base")
    q = ann.load_vectors(str(queries), "queries")
    if b.shape[1] != q.shape[1]:
        raise RelsearchError(f"base vectors are {b.shape[1]}-d but queries are {q.shape[1]}-d")
    if k > b.shape[0]:
        raise RelsearchError(f"-k {k} is more than the {b.shape[0]} base vectors")
    if out is not None and not out.parent.is_dir():
        raise RelsearchError(f"folder of --out {out} does not exist")
    try:
        report = ann.run_ann(b, q, k=k, spec=spec, out=str(out) if out else None, sweep=sweep,
                             results_dir=str(results_dir or ann.RESULTS_DIR))
    except (ValueError, RuntimeError) as exc:
        raise RelsearchError(f"cannot build index {spec!r}: {str(exc).strip().splitlines()[-1]}") from exc
    if as_json:
        print_json(report)
        return
    typer.echo(ann.format_report(report))
    if "sweep" in report:
        typer.echo(f"sweep: {report['sweep']['json']} {report['sweep']['png']}")
    elif sweep:
        typer.echo(f"no sweep: {report['spec']} is not an IVF index (nothing to sweep)")


@bench_app.command("relational")
@user_errors
def relational_cmd(
    collection: Path = typer.Option(..., "--collection", help="Labelled collection folder."),
    labels: Path | None = typer.Option(None, "--labels", help="labels.jsonl (default: COLLECTION/labels.jsonl)."),
    encoders: str | None = typer.Option(None, "--encoders", help="Comma-separated encoders (default pair)."),
    k: int = typer.Option(10, "-k", "--k", min=1),
    index: Path | None = typer.Option(None, "--index", help="Build into / reuse this index (default: temporary)."),
    out: Path | None = typer.Option(None, "--out", help="Write neighbours, one JSON line per query and encoder."),
    device: str | None = typer.Option(None, "--device"),
    results_dir: Path | None = ResultsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Relational precision/mAP/recall@k and attribute leakage@k of each encoder."""
    rel = _bench_module("relational")
    report = rel.run_relational(collection, labels=labels, encoders=encoders, k=k, index=index, out=out,
                                device=device, results_dir=results_dir or rel.RESULTS_DIR)
    if as_json:
        print_json(report)
        return
    typer.echo(rel.format_table(report))
    typer.echo(f"wrote {report['json']} {report['png']}" + (f" {report['out']}" if out else ""))


@bench_app.command("throughput")
@user_errors
def throughput_cmd(
    collection: Path | None = typer.Option(None, "--collection", help="Images to use (default: synthetic photos)."),
    encoders: str = typer.Option("imagenet", "--encoders", help="Comma-separated encoders."),
    n: int = typer.Option(256, "--n", min=1, help="Images to embed and index."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    queries: int = typer.Option(100, "--queries", min=1, help="Queries timed one at a time."),
    k: int = typer.Option(10, "-k", "--k", min=1),
    workers: int | None = typer.Option(None, "--workers", help="Decode workers (default: CPU count)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch intra-op threads (default: torch's)."),
    device: str | None = typer.Option(None, "--device"),
    results_dir: Path | None = ResultsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Images/s of embedding, build-index time by phase, query latency by step."""
    tp = _bench_module("throughput")
    report = tp.run_throughput(collection, encoders=encoders, n=n, batch_size=batch_size, queries=queries, k=k,
                               workers=workers, device=device, results_dir=results_dir or tp.RESULTS_DIR,
                               threads=threads)
    if as_json:
        print_json(report)
        return
    typer.echo(tp.format_table(report))
    typer.echo(f"wrote {report['json']} {report['png']}")
