"""CLI commands: bench ann, bench relational, bench throughput, bench relsim, bench scale, bench text-vectors,
bench realphoto, bench health, bench synthetic, bench scale-plan.

The benchmark runners live in :mod:`relsearch.bench` (never imported by the build/query
path); these commands parse, call them and print. Results go to ``--results-dir``
(default ``benchmarks/results`` under the working directory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from relsearch.cli.app import DeviceOpt, JsonOpt, bench_app, print_json, user_errors
from relsearch.errors import RelsearchError

ResultsOpt = Annotated[Path | None, typer.Option(
    "--results-dir", help="Where the JSON + PNG go (default: benchmarks/results under the working directory).")]
KOpt = Annotated[int, typer.Option("-k", "--top-k", min=1, help="Neighbours per query.")]


def _show(report: dict, as_json: bool, table: Callable[[dict], str], *written: str) -> None:
    """A benchmark's report as one JSON object, or its table (built only then) and the files it wrote."""
    if as_json:
        print_json(report)
        return
    typer.echo(table(report))
    typer.echo("wrote " + " ".join(str(w) for w in written))


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
    analogy_weight: Annotated[float | None, typer.Option(
        "--analogy-weight", min=0.0, help="Weight of the analogy row (default: query's default).")] = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Caption bank for explanation accuracy (default: the encoder's own).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Relational precision/mAP/recall@k, attribute leakage/twins@k, the analogy row, explanation accuracy."""
    from relsearch.bench import relational as rel

    report = rel.run_relational(collection, labels=labels, encoders=encoders, k=k, index=index, out=out,
                                device=device, results_dir=results_dir or rel.RESULTS_DIR,
                                analogy_weight=analogy_weight, captions=captions)
    _show(report, as_json, rel.format_table, report["json"], report["png"], *([report["out"]] if out else []))


@bench_app.command("relsets")
@user_errors
def relsets_cmd(
    root: Annotated[Path, typer.Option("--root", help="Folder holding the composed sets (made when missing).")],
    relsim_mini: Annotated[str | None, typer.Option(
        "--relsim-mini", help="relsim-mini weights folder (default: the shipped weights).")] = None,
    sets: Annotated[str | None, typer.Option(
        "--sets", help="Comma-separated sets: plain9, photo9, photo12, unseen_art12 (default: all); "
        "NAME@SEED is another draw of a set's recipe (photo9@121).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Compose processes.")] = 1,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="Also score the imagenet attribute baseline.")] = True,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """relsim-mini vs imagenet on the relational sets: plain, photographs + JPEG, 12 families, unseen art."""
    from relsearch.bench import relsets

    report = relsets.run_relsets(root, relsim_mini, sets, workers, baseline, results_dir)
    _show(report, as_json, relsets.format_table, report["json"])


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
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Decode workers (default: CPU count).")]
    = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Intra-op threads of torch and ONNX Runtime (default: each one's).")] = None,
    runtimes: Annotated[str | None, typer.Option(
        "--runtimes", help="Time each encoder on these runtimes side by side, e.g. torch,onnx "
                           "(default: the runtime each encoder loads with).")] = None,
    analogy: Annotated[bool, typer.Option(
        "--analogy", help="Also time whole queries with the analogy column (one index of all encoders).")] = False,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Also time whole queries with explanations (one index of all encoders).")] = False,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Images/s of embedding, build-index time by phase, query latency by step."""
    from relsearch.bench import throughput as tp

    report = tp.run_throughput(collection, encoders=encoders, n=n, batch_size=batch_size, queries=queries, k=k,
                               workers=workers, device=device, results_dir=results_dir or tp.RESULTS_DIR,
                               threads=threads, analogy=analogy, explain=explain, runtimes=runtimes)
    _show(report, as_json, tp.format_table, report["json"], report["png"])


@bench_app.command("dupes")
@user_errors
def dupes_cmd(
    work: Annotated[Path, typer.Option("--work", metavar="DIR", help="Scratch folder for the planted pictures and indexes.")],
    sizes: Annotated[str, typer.Option(
        "--sizes", metavar="N,N,...", help="Files of each planted collection (a fifth of them planted copies).")]
    = "30,100,1000",
    scale: Annotated[str, typer.Option(
        "--scale", metavar="N,N,...", help="Synthetic vectors for the candidate-stage timing (0: none).")]
    = "100000",
    threshold: Annotated[float | None, typer.Option(
        "--threshold", metavar="X", min=0.0, max=1.0, help="Picture similarity (default: the dupes default).")]
    = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Which photographs and copy parameters.")] = 1,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Near-duplicate precision/recall on planted copies of photographs, false groups among pictures of one style."""
    from relsearch.bench import dupes as bd

    def counts(text: str, flag: str, least: int) -> tuple[int, ...]:
        try:
            out = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise RelsearchError(f"{flag} takes numbers separated by commas, got {text!r}") from None
        if any(x < least for x in out):
            raise RelsearchError(f"{flag}: every size must be at least {least}, got {text!r}")
        return out

    report = bd.run(work, sizes=counts(sizes, "--sizes", 10), scale=tuple(x for x in counts(scale, "--scale", 0) if x),
                    threshold=threshold, results_dir=str(results_dir or bd.RESULTS_DIR), device=device, seed=seed)
    _show(report, as_json, bd.format_report, report["json"], *([report["png"]] if "png" in report else []))


@bench_app.command("scale")
@user_errors
def scale_cmd(
    part: Annotated[str, typer.Option(
        "--part", help="index: the sharded on-disk index against the in-memory one; ray: images/s of a Ray "
                       "build against a local build; all: both.")] = "index",
    work: Annotated[Path | None, typer.Option(
        "--work", help="Index part: folder for vectors, indexes and shards (several GB at 4M).")] = None,
    n: Annotated[int, typer.Option("--n", min=1000, help="Synthetic vectors when --base is not given.")]
    = 1_000_000,
    n_queries: Annotated[int, typer.Option("--n-queries", min=1)] = 1000,
    d: Annotated[int, typer.Option("--d", min=8)] = 384,
    base: Annotated[Path | None, typer.Option("--base", help="float32 [N, d] .npy instead of synthetic.")]
    = None,
    queries: Annotated[Path | None, typer.Option("--queries", help="float32 [Q, d] .npy (with --base).")]
    = None,
    spec: Annotated[str | None, typer.Option(
        "--spec", help="IVF-PQ factory string without 'fs' (default: the on-disk auto spec).")] = None,
    nprobe: Annotated[int, typer.Option("--nprobe", min=1)] = 32,
    rerank: Annotated[int, typer.Option("--rerank", min=0)] = 100,
    shard_rows: Annotated[int, typer.Option("--shard-rows", min=1)] = 1_000_000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Shard-building processes.")] = 2,
    ray_images: Annotated[int, typer.Option(
        "--ray-images", min=1, help="Ray part: photographs in the folder built locally and on Ray.")] = 500,
    ray_encoders: Annotated[str, typer.Option("--ray-encoders", help="Ray part: encoders of those builds.")]
    = "imagenet",
    ray_collection: Annotated[Path | None, typer.Option(
        "--ray-collection", help="Ray part: build this folder (default: crops of the installed photographs).")]
    = None,
    ray_actors: Annotated[str, typer.Option(
        "--ray-actors", help="Ray part: actor counts to measure, e.g. 1,2.")] = "1,2",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Ray part: build batch size.")] = 32,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Past one machine: the sharded on-disk IVF-PQ against the in-memory index (recall, QPS, build time,
    peak RSS) and, with --part ray/all, Ray build images/s against a local build (JSON + PNG)."""
    if part not in ("ray", "index", "all"):
        raise RelsearchError(f"--part must be index, ray or all, got {part!r}")
    if part != "ray" and work is None:
        raise RelsearchError("--part index needs --work")
    actors: tuple[int, ...] = ()
    if part != "index":
        try:
            actors = tuple(int(a) for a in ray_actors.split(",") if a.strip())
        except ValueError:
            actors = ()
        if not actors or min(actors) < 1:
            raise RelsearchError(f"--ray-actors must be counts >= 1 like 1,2, got {ray_actors!r}")
        if ray_collection is not None and not ray_collection.is_dir():
            raise RelsearchError(f"--ray-collection {ray_collection} is not a folder")
    from relsearch.bench import RESULTS_DIR

    reports: dict[str, Any] = {}
    if part != "ray":
        from relsearch.bench import scale_index

        reports["index"] = scale_index.run_scale(str(work), n, n_queries, d, str(base) if base else None,
                                                 str(queries) if queries else None, spec, nprobe, rerank,
                                                 shard_rows, workers, str(results_dir or scale_index.RESULTS_DIR))
    if part != "index":
        from relsearch.bench import scale_ray

        reports["ray"] = scale_ray.run_scale_ray(ray_images, ray_encoders, ray_collection, actors, batch_size,
                                                 results_dir or RESULTS_DIR)
    if as_json:
        print_json(reports["index"] if part == "index" else reports)
        return
    if "index" in reports:
        typer.echo(scale_index.format_table(reports["index"]))
    if "ray" in reports:
        typer.echo(scale_ray.format_table(reports["ray"]))
        typer.echo(f"wrote {reports['ray']['json']} {reports['ray']['png']}")


@bench_app.command("text-vectors")
@user_errors
def text_vectors_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for base.npy, queries.npy and their sentences.")],
    n: Annotated[int, typer.Option("--n", min=1)] = 100_000,
    n_queries: Annotated[int, typer.Option("--queries", min=1)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Embedding processes.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Real 384-d ANN test vectors: MiniLM embeddings of Debian package descriptions (offline)."""
    from relsearch.bench import text_vectors

    summary = text_vectors.make_text_vectors(str(out), n, n_queries, seed, workers)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"wrote {out}/base.npy ({summary['n']} x {summary['d']}) and {out}/queries.npy ({summary['queries']})")


@bench_app.command("synthetic")
@user_errors
def synthetic_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for base.npy and queries.npy.")] = Path("data/ann"),
    n: Annotated[int, typer.Option("--n", min=1)] = 100_000,
    n_queries: Annotated[int, typer.Option("--queries", min=0)] = 1000,
    d: Annotated[int, typer.Option("--d", min=2)] = 384,
    clusters: Annotated[int | None, typer.Option("--clusters", min=1, help="Default: n // 1000, at least 10.")]
    = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    intrinsic_dim: Annotated[int, typer.Option("--intrinsic-dim", min=1, help="Rank of each cluster's subspace.")]
    = 24,
) -> None:
    """Clustered unit vectors for `bench ann`: base.npy [N, d] and queries.npy [Q, d]."""
    import numpy as np

    from relsearch.bench import synthetic

    if intrinsic_dim > d:
        raise RelsearchError(f"--intrinsic-dim {intrinsic_dim} is more than --d {d}")
    base, queries = synthetic.clustered_with_queries(n, n_queries, d, clusters or max(10, n // 1000), seed,
                                                     intrinsic_dim)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    typer.echo(f"wrote {out / 'base.npy'} {base.shape} and {out / 'queries.npy'} {queries.shape}")


@bench_app.command("scale-plan")
@user_errors
def scale_plan_cmd(
    scale: Annotated[Path, typer.Option("--scale", help="scale_index.json from `relsearch bench scale`.")],
    gpu_rate: Annotated[str, typer.Option(
        "--gpu-rate", help="Assumed relsim images/s per GPU (comma-separated).")] = "10,30,100",
    embed_rate: Annotated[list[str] | None, typer.Option(
        "--embed-rate", metavar="NAME=IMAGES_PER_S", help="A measured CPU encoder rate per machine (repeatable).")]
    = None,
) -> None:
    """The 100M / 1B plan of benchmarks/SCALE.md, computed from a `bench scale` report; prints JSON."""
    import json

    from relsearch.bench import scale_plan

    try:
        report = json.loads(scale.read_text())
        gpu = [float(r) for r in gpu_rate.split(",")]
        rates = {k: float(v) for k, v in (e.split("=", 1) for e in embed_rate or [])}
    except OSError as exc:
        raise RelsearchError(f"cannot read --scale {scale}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # bad JSON, a rate that is not a number, or NAME without =
        raise RelsearchError(f"bench scale-plan: {exc}") from exc
    try:
        print_json(scale_plan.plan(report, gpu, rates))
    except (KeyError, TypeError) as exc:
        raise RelsearchError(f"--scale {scale} is not a `bench scale` report (missing {exc})") from exc


@bench_app.command("cold")
@user_errors
def cold_cmd(
    image: Annotated[Path, typer.Option("--image", help="Query image.")],
    index: Annotated[Path | None, typer.Option(
        "--index", help="Index to query (default: what `relsearch query` picks).")] = None,
    k: KOpt = 20,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Alternating runs of each command.")] = 7,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cold `relsearch query` on ONNX Runtime and on torch, and a bare `import torch`: wall and RSS medians."""
    from relsearch.bench import RESULTS_DIR, cold

    report = cold.run_cold(str(image), str(index) if index else None, k=k, runs=runs,
                           results_dir=results_dir or RESULTS_DIR)
    _show(report, as_json, cold.format_report, report["json"])


@bench_app.command("relsim")
@user_errors
def relsim_cmd(
    device: Annotated[str, typer.Option("--device", help="torch device: cuda for the real measurement.")] = "cuda",
    arch: Annotated[str, typer.Option(
        "--arch", help="full (Qwen2.5-VL-7B shapes, random weights), tiny (CPU test) or an architecture JSON.")]
    = "full",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8,32,64",
    images: Annotated[int, typer.Option("--images", min=1, help="Images timed per batch size.")] = 256,
    paper_images: Annotated[int, typer.Option(
        "--paper-images", min=1, help="Images through the paper's one-image loop (the baseline).")] = 32,
    dtype: Annotated[str | None, typer.Option("--dtype", help="bfloat16 / float32 (default: bf16 on CUDA).")] = None,
    e2e_images: Annotated[int, typer.Option(
        "--e2e-images", min=0, help="Also build-index a folder of this many JPEGs through a release written to "
        "disk (0: skip).")] = 0,
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="Scratch folder for --e2e-images (default: a temporary one).")] = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """relsim embedding speed at full size: the fast path against the paper's one-image loop."""
    import json

    from relsearch.bench import RESULTS_DIR, relsim_speed

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        config = relsim_speed.RelsimBenchConfig(device=device, arch=arch, batch_sizes=sizes, images=images,
                                                paper_images=paper_images, dtype=dtype)
    except ValueError as exc:
        raise RelsearchError(f"bench relsim: {exc}") from exc
    if arch not in ("full", "tiny") and not Path(arch).is_file():
        raise RelsearchError(f"bench relsim: --arch {arch!r} is neither full, tiny nor an existing JSON file")
    result = relsim_speed.run(config)
    if e2e_images:
        import tempfile

        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            e2e = relsim_speed.end_to_end(arch, e2e_images, Path(tmp), device, result["best"]["batch"])
        e2e["ratio_to_bench"] = e2e["img_per_s"] / result["best"]["img_per_s"]
        result["end_to_end"] = e2e
    out = Path(results_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    name = relsim_speed.result_name(result)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    relsim_speed.plot(result, out / f"{name}.png")
    if as_json:
        print_json(result)
        return
    typer.echo(f"relsim {result['arch']} ({result['parameters_b']:.2f}B parameters, {result['dtype']}) "
               f"on {result['device']}, {result['side']} px, {result['visual_tokens_per_image']} visual tokens")
    for r in result["runs"]:
        typer.echo(f"  batch {r['batch']:>3}: {r['img_per_s']:8.2f} img/s  peak {r['peak_gb']:6.2f} GB  "
                   f"vision {100 * r['vision_share']:.0f}%")
    p = result["paper_procedure"]
    typer.echo(f"  paper procedure (1 image/call, output_hidden_states): {p['img_per_s']:.2f} img/s, "
               f"peak {p['peak_gb']:.2f} GB")
    e = result["equivalence"]
    typer.echo(f"  fast vs paper vectors: min cosine {e['min_cosine']:.6f}, mean {e['mean_cosine']:.6f}")
    if "end_to_end" in result:
        x = result["end_to_end"]
        typer.echo(f"  build-index, {x['images']} JPEGs: {x['img_per_s']:.2f} img/s in the embed step "
                   f"({100 * x['ratio_to_bench']:.0f}% of the benchmark's best)")
    typer.echo(f"  wrote {out / (name + '.json')}")


@bench_app.command("realphoto")
@user_errors
def realphoto_cmd(
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Labels .jsonl (default: benchmarks/realphoto/labels_test.jsonl under the working "
        "directory).")] = None,
    encoders: Annotated[str, typer.Option("--encoders", help="Comma-separated encoders.")]
    = "relsim-mini,imagenet",
    relations: Annotated[Path | None, typer.Option(
        "--relations", help="Relation captions (default: relations.json beside the labels, else "
        "benchmarks/realphoto/relations.json).")] = None,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Relation P@10, mAP, same-look leakage and caption -> image P@10 on labelled real photographs,
    beside each encoder's label-free health (JSON + contact-sheet PNG)."""
    from relsearch.bench import realphoto

    report = realphoto.run_realphoto(labels, encoders, relations, device, results_dir)
    _show(report, as_json, realphoto.format_table, report["json"], report["png"])


@bench_app.command("health")
@user_errors
def health_cmd(
    photos: Annotated[Path, typer.Option(
        "--photos", help="A folder of photographs (recursive) or a labels .jsonl (its paths).")],
    encoders: Annotated[str, typer.Option("--encoders", help="Comma-separated encoders.")]
    = "relsim-mini,imagenet",
    limit: Annotated[int | None, typer.Option("--limit", min=3, help="Only the first N photographs (sorted).")]
    = None,
    device: DeviceOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label-free health of each encoder on photographs: effective rank, pair cosines, nearest captions."""
    from relsearch.bench import health

    report = health.run_health(photos, encoders, limit, device, results_dir)
    _show(report, as_json, lambda r: f"{r['images']} photographs from {r['photos']}\n" + health.format_health(r["encoders"]),
          report["json"])
