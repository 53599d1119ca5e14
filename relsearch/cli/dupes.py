"""CLI command: dupes (exact and near-duplicate groups of an index)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from relsearch.cli.app import JsonOpt, app, print_json, user_errors
from relsearch.cli.core import IndexOpt, chosen_index
from relsearch.dupes import DEFAULT_THRESHOLD


@app.command("dupes")
@user_errors
def dupes_cmd(
    index: IndexOpt = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", min=0.0, max=1.0, metavar="X",
        help="Picture similarity (0-1: detail correlation after aligning a small crop) at or above which "
             "two candidate images are near-duplicates.")]
    = DEFAULT_THRESHOLD,
    encoder: Annotated[str | None, typer.Option(
        "--encoder", metavar="NAME",
        help="Column the candidates come from (default: the index's first attribute column).")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE", help="Also write an HTML page of the groups' thumbnails.")] = None,
    sheet: Annotated[Path | None, typer.Option(
        "--sheet", metavar="FILE", help="Also write a PNG sheet of the groups' thumbnails.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Groups of identical (same bytes) and near-identical images (resized, recompressed, cropped...).

    Candidates come from the stored vectors; every near pair is then confirmed on the
    pictures themselves, so pictures that only share a style are not grouped.
    """
    from relsearch.dupes import find_dupes

    result = find_dupes(index or chosen_index(), threshold=threshold, encoder=encoder)
    if html is not None or sheet is not None:
        from relsearch.view.dupes_page import write_dupes_page, write_dupes_sheet

        if html is not None:
            typer.echo(f"wrote {write_dupes_page(result, html)}", err=True)
        if sheet is not None:
            typer.echo(f"wrote {write_dupes_sheet(result, sheet)}", err=True)
    if as_json:
        print_json(result.to_dict())
        return
    _print_groups(result)


def _print_groups(result: Any) -> None:
    near = sum(g.kind == "near" for g in result.groups)
    typer.echo(f"{result.index}: {result.images} images, {len(result.groups) - near} exact and {near} near-duplicate "
               f"groups ({result.encoder} column for candidates, pictures compared at {result.threshold:g})")
    if result.unchecked:
        typer.echo(f"note: {result.unchecked} candidate pairs not compared: a file could not be read", err=True)
    for g in result.groups:
        if g.kind == "exact":
            typer.echo(f"exact {g.score:.3f}  {len(g.paths)} files, same bytes")
            for p in g.paths:
                typer.echo(f"    {p}")
            continue
        extra = f" ({len(g.paths)} files)" if len(g.paths) != len(g.members) else ""
        typer.echo(f"near  {g.score:.3f}  {len(g.members)} pictures{extra}")
        for m in g.members:
            copies = f"  +{len(m.copies)} cop{'y' if len(m.copies) == 1 else 'ies'}: {', '.join(m.copies)}" \
                if m.copies else ""
            typer.echo(f"    {m.score:.3f}  {m.path}{copies}")
