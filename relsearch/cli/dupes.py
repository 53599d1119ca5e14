"""CLI command: dupes (exact and near-duplicate groups of an index)."""

from __future__ import annotations

from typing import Annotated

import typer

from relsearch.cli.app import JsonOpt, app, print_json, user_errors
from relsearch.cli.core import IndexOpt, chosen_index
from relsearch.dupes import DEFAULT_THRESHOLD


@app.command("dupes")
@user_errors
def dupes_cmd(
    index: IndexOpt = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", min=0.0, max=1.0, help="Cosine similarity at or above which two images are near-duplicates.")]
    = DEFAULT_THRESHOLD,
    encoder: Annotated[str | None, typer.Option(
        "--encoder", help="Column to compare in (default: the index's first attribute column).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Groups of identical (same bytes) and near-identical images (resized, recompressed, cropped...)."""
    from relsearch.dupes import find_dupes

    result = find_dupes(index or chosen_index(), threshold=threshold, encoder=encoder)
    if as_json:
        print_json(result.to_dict())
        return
    near = sum(g.kind == "near" for g in result.groups)
    typer.echo(f"{result.index}: {result.images} images, {len(result.groups) - near} exact and {near} near-duplicate "
               f"groups ({result.encoder} column, threshold {result.threshold:g})")
    for g in result.groups:
        typer.echo(f"{g.kind:<5} {g.score:.3f}  {len(g.paths)} files")
        for p in g.paths:
            typer.echo(f"    {p}")



