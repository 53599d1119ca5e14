"""CLI commands: bench ann, bench relational, bench throughput.

The benchmark runners live in :mod:`relsearch.bench` (never imported by the build/query
path); these commands parse, call them and print. Results go to ``--results-dir``
(default ``benchmarks/results`` under the working directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relsearch.cli.app import DeviceOpt, JsonOpt, bench_app, print_json, user_errors
from relsearch.errors import RelsearchError

ResultsOpt = Annotated[Path | None, typer.Option(
    "--results-dir", help="Where the JSON + PNG go (default: benchmarks/results under the working directory).")]
KOpt = Annotated[int, typer.Option("-k", "--k", min=1)]


@bench_app.command("ann")
@user_errors
def ann_cmd(
    base: Annotated[Path, typer.Option("--base", help="float32 [N, d] .npy (L2-normalised vectors).")],
    queries: Annotated[Path, typer.Option("--queries", help="float32 [Q, d] .npy.")],
    k: KOpt = 10,
    spec: Annotated[str, typer.Option("--spec", help="auto or a FAISS factory string, e.g. IVF1024,PQ48.")]
    = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Write the returned ids [Q, k] int64 here (.npy).")]
    = None,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Also write recall@10 vs QPS over nprobe (JSON + PNG).")] = False,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """ANN recall/speed of the engine's index against exact search."""
    from relsearch.bench import ann

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
    collection: Annotated[Path, typer.Option("--collection", help="Labelled collection folder.")],
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="labels.jsonl (default: COLLECTION/labels.jsonl).")] = None,
    encoders: Annotated[str | None, typer.Option(
        "--encoders", help="Comma-separated encoders (default pair).")] = None,
    k: KOpt = 10,
    index: Annotated[Path | None, typer.Option(
        "--index", help="Build into / reuse this index (default: temporary).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write neighbours, one JSON line per query and encoder.")] = None,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Relational precision/mAP/recall@k and attribute leakage@k of each encoder."""
    from relsearch.bench import relational as rel

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
    collection: Annotated[Path | None, typer.Option(
        "--collection", help="Images to use (default: synthetic photos).")] = None,
    encoders: Annotated[str, typer.Option("--encoders", help="Comma-separated encoders.")] = "imagenet",
    n: Annotated[int, typer.Option("--n", min=1, help="Images to embed and index.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries timed one at a time.")] = 100,
    k: KOpt = 10,
    workers: Annotated[int | None, typer.Option("--workers", help="Decode workers (default: CPU count).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="torch intra-op threads (default: torch's).")] = None,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Images/s of embedding, build-index time by phase, query latency by step."""
    from relsearch.bench import throughput as tp

    report = tp.run_throughput(collection, encoders=encoders, n=n, batch_size=batch_size, queries=queries, k=k,
                               workers=workers, device=device, results_dir=results_dir or tp.RESULTS_DIR,
                               threads=threads)
    if as_json:
        print_json(report)
        return
    typer.echo(tp.format_table(report))
    typer.echo(f"wrote {report['json']} {report['png']}")


@bench_app.command("dupes")
@user_errors
def dupes_cmd(
    work: Annotated[Path, typer.Option("--work", help="Scratch folder for the planted pictures and indexes.")],
    n: Annotated[int, typer.Option("--n", min=1000, help="Images in the scale run (synthetic vectors).")] = 100_000,
    copied: Annotated[int, typer.Option("--copied", min=1, help="Originals that get planted copies.")] = 100,
    clipart: Annotated[int, typer.Option("--clipart", min=0, help="openclipart drawings besides the wallpapers.")]
    = 300,
    threshold: Annotated[float | None, typer.Option("--threshold", min=0.0, max=1.0)] = None,
    skip_scale: Annotated[bool, typer.Option("--skip-scale", help="Only the planted precision/recall run.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Which openclipart sample and copy parameters.")] = 1,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Near-duplicate precision/recall on planted copies of real pictures, and dupes time at --n images."""
    from relsearch.bench import dupes as bd

    report = bd.run(work, n=n, n_copied=copied, n_clipart=clipart, threshold=threshold,
                    results_dir=str(results_dir or bd.RESULTS_DIR), device=device, skip_scale=skip_scale, seed=seed)
    if as_json:
        print_json(report)
        return
    for part in report.values():
        typer.echo(bd.format_report(part))
        typer.echo(f"wrote {part['json']}" + (f" {part['png']}" if "png" in part else ""))
