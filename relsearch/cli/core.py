"""CLI commands: build-index, query, info."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from relsearch.cli.app import ColumnsOpt, DeviceOpt, JsonOpt, app, print_json, user_errors
from relsearch.errors import RelsearchError

IndexOpt = Annotated[Path | None, typer.Option("--index", help="Index directory (default: indexes/<name of DIR>).")]
EncodersOpt = Annotated[str | None, typer.Option(
    "--encoders", help="Comma-separated encoders, each NAME or NAME@SOURCE.")]


@app.command("build-index")
@user_errors
def build_index_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder of images (scanned recursively).")],
    index: IndexOpt = None,
    encoders: EncodersOpt = None,
    index_spec: Annotated[str | None, typer.Option(
        "--index-spec", help="Force a FAISS factory string, e.g. 'IVF1024,PQ48'.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", help="Decode workers (default: CPU count).")] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed a folder of images into one FAISS index per encoder, with LMDB metadata."""
    from relsearch.build import BuildOptions, build_index

    try:
        opts = BuildOptions(encoders=encoders, index_spec=index_spec, batch_size=batch_size, workers=workers,
                            device=device, progress=not as_json and os.isatty(2))
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    report = build_index(directory, index, opts)
    if as_json:
        d = report.to_dict()
        print_json({k: d[k] for k in ("index", "scanned", "added", "updated", "removed", "unchanged", "failed",
                                      "encoders", "generation", "seconds")})
        return
    typer.echo(
        f"{report.index}: scanned {report.scanned}, added {report.added}, updated {report.updated}, "
        f"removed {report.removed}, unchanged {report.unchanged}, failed {len(report.failed)} "
        f"[{', '.join(report.encoders)}] in {report.seconds.get('total', 0):.1f}s"
    )
    for f in report.failed[:20]:
        typer.echo(f"  failed: {f['path']}: {f['error']}", err=True)
    if len(report.failed) > 20:
        typer.echo(f"  ... and {len(report.failed) - 20} more failures (see --json)", err=True)


@app.command("query")
@user_errors
def query_cmd(
    image: Annotated[Path | None, typer.Argument(help="Query image (may be outside the collection).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per encoder.")] = 20,
    index: IndexOpt = None,
    encoders: ColumnsOpt = None,
    text: Annotated[str | None, typer.Option(
        "--text", help="Search the relational columns with an anonymous caption.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page of the result.")] = None,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Also write a PNG contact sheet of the result.")]
    = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Relational and attribute neighbours of IMG, one column per encoder."""
    from relsearch.query import query

    index = index or _only_index()
    result = query(str(image) if image is not None else None, index, k=k, encoders=encoders, text=text,
                   device=device)
    if html is not None or sheet is not None:
        from relsearch.view import write_html, write_sheet

        if html is not None:
            write_html(result, html)
        if sheet is not None:
            write_sheet(result, sheet)
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(format_table(result, k))


def _only_index() -> Path:
    """With no --index: the single index under ./indexes, else a clear message."""
    from relsearch.indexdir import find_indexes

    found = find_indexes(Path.cwd() / "indexes")
    if len(found) == 1:
        return found[0]
    if not found:
        raise RelsearchError("no index under ./indexes; build one with: relsearch build-index DIR (or pass --index)")
    names = ", ".join(str(p) for p in found)
    raise RelsearchError(f"several indexes under ./indexes ({names}); choose one with --index")


def format_table(result, k: int) -> str:  # type: ignore[no-untyped-def]
    """Side-by-side text table: rank, then one (score, name) column per encoder."""
    names = result.ordered()
    width = 34
    head = "rank  " + "".join(f"{n + (' (relational)' if result.kinds.get(n) == 'relational' else ''):<{width}}"
                              for n in names)
    lines = [f"query: {result.query}", head, "-" * len(head)]
    for r in range(k):
        cells = []
        for n in names:
            hits = result.results[n]
            if r < len(hits):
                h = hits[r]
                label = os.path.basename(h.path)
                label = label if len(label) <= width - 9 else "…" + label[-(width - 10):]
                cells.append(f"{h.score:6.3f}  {label:<{width - 8}}")
            else:
                cells.append(" " * width)
        if not any(c.strip() for c in cells):
            break
        lines.append(f"{r + 1:>4}  " + "".join(cells))
    return "\n".join(lines)


@app.command("info")
@user_errors
def info_cmd(
    index: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What indexes exist, how big, which encoders."""
    from relsearch.indexdir import find_indexes, index_info

    targets = [index] if index is not None else find_indexes(Path.cwd() / "indexes")
    if index is None and not targets:
        raise RelsearchError("no index under ./indexes; build one with: relsearch build-index DIR (or pass --index)")
    infos = [index_info(t) for t in targets]
    if as_json:
        print_json(infos[0] if index is not None else {"indexes": infos})
        return
    for info in infos:
        typer.echo(f"{info['index']}  ({info['images']} images, {info['paths']} paths, "
                   f"{info['bytes_on_disk'] / 1e6:.1f} MB)  collection: {info['collection']}")
        for name, e in info["encoders"].items():
            f = e["faiss"]
            typer.echo(f"  {name:<12} {e['kind']:<10} dim {e['dim']:<5} weights {e['fingerprint']}  "
                       f"faiss {f.get('spec')} nprobe {f.get('nprobe')} ntotal {f.get('ntotal')}")
