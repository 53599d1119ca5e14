"""CLI: ``relsearch export milvus`` (copy an index into another engine for serving), ``export onnx``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relsearch.cli.app import ColumnsOpt, JsonOpt, app, print_json, user_errors
from relsearch.errors import RelsearchError

export_app = typer.Typer(help="Copy an index into another engine (Milvus); export the encoders to ONNX.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("milvus")
@user_errors
def milvus_cmd(
    index: Annotated[Path, typer.Option("--index", help="Index directory to export.")],
    uri: Annotated[str, typer.Option(
        "--uri", help="Milvus server (http://HOST:19530) or a milvus-lite file (./archive.db).")],
    collection: Annotated[str | None, typer.Option(
        "--collection", help="Collection name prefix (default: the index folder's name); one per encoder.")] = None,
    encoders: ColumnsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One Milvus collection per encoder (id, vector, path, sha256); again after a build: upserts and deletes."""
    from relsearch.backends.milvus import export_milvus

    if not (index / "manifest.json").exists():
        raise RelsearchError(f"{index} is not a relsearch index (no manifest.json)")
    names = [e.strip() for e in encoders.split(",") if e.strip()] if encoders else None
    report = export_milvus(index, uri, prefix=collection, encoders=names)
    if as_json:
        print_json(report.to_dict())
        return
    for c in report.collections:
        params = ", ".join(f"{k}={v}" for k, v in c.index_params.items())
        typer.echo(f"{c.collection}: {c.rows} vectors ({c.upserted} upserted, {c.deleted} deleted), "
                   f"{c.index_type}{f' ({params})' if params else ''}")
        if c.note:
            typer.echo(f"  note: {c.note}")
    typer.echo(f"{report.uri}: generation {report.generation} of {report.index} in {report.seconds:.1f}s")


@export_app.command("onnx")
@user_errors
def onnx_cmd(
    encoders: Annotated[str, typer.Option(
        "--encoders", help="Comma-separated: relsim-mini, imagenet, minilm (default: all three).")]
    = "relsim-mini,imagenet,minilm",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the graphs (default: the package's relsearch/weights/onnx).")] = None,
    tokenizer_only: Annotated[bool, typer.Option(
        "--tokenizer-only", help="Only copy MiniLM's tokenizer.json from its package (no graph, no check).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """ONNX graphs of the shipped encoders, checked against torch on photographs, clip art and captions."""
    from relsearch.encoders.onnx_export import export_onnx, export_tokenizer

    if tokenizer_only:
        path = export_tokenizer(out)
        if as_json:
            print_json({"tokenizer": str(path)})
        else:
            typer.echo(f"{path}: MiniLM's tokenizer")
        return
    names = [e.strip() for e in encoders.split(",") if e.strip()]
    if not names:
        raise RelsearchError("--encoders names no encoder")
    results = export_onnx(names, out)
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    for r in results:
        tried = ", ".join(f"{fmt} {cos:.7f}" for fmt, cos in r.tried.items())
        typer.echo(f"{r.path}: {r.name} {r.weights}, {r.bytes / 1e6:.1f} MB, fingerprint {r.fingerprint}, "
                   f"lowest cosine to torch over {r.checked} inputs: {tried} ({r.seconds:.0f}s)")
