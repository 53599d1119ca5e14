"""CLI command: verify (consistency of an index, and repair without re-embedding)."""

from __future__ import annotations

from typing import Annotated

import typer

from relsearch.cli.app import JsonOpt, app, print_json, user_errors
from relsearch.cli.core import IndexOpt

RepairOpt = Annotated[bool, typer.Option("--repair", help="Rebuild FAISS files from the raw vectors and the manifest "
                                         "from the store (no re-embedding).")]


@app.command("verify")
@user_errors
def verify_cmd(
    index: IndexOpt = None,
    repair: RepairOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check manifest, LMDB store and FAISS files against each other; exit 1 if they disagree."""
    from relsearch.cli.core import _chosen_index
    from relsearch.verify import verify_index

    report = verify_index(index or _chosen_index(), repair=repair)
    if as_json:
        print_json(report.to_dict())
    else:
        state = "consistent" if report.consistent else f"{len(report.problems)} problem(s)"
        typer.echo(f"{report.index}: generation {report.generation}, {report.records} images, {report.paths} paths, "
                   f"{report.vectors_checked} raw vectors checked [{', '.join(report.encoders)}]: {state}")
        for line in report.repaired:
            typer.echo(f"  repaired: {line}")
        for line in report.notes:
            typer.echo(f"  note: {line}")
        for line in report.problems:
            typer.echo(f"  problem: {line}", err=True)
        if report.problems and not repair:
            typer.echo("  (relsearch verify --repair fixes what needs no re-embedding)", err=True)
    if not report.consistent:
        raise typer.Exit(code=1)
