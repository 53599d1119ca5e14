"""CLI command: verify (consistency of an index, and repair without re-embedding)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relsearch.cli.app import JsonOpt, app, print_json, user_errors
from relsearch.cli.core import IndexOpt

RepairOpt = Annotated[bool, typer.Option("--repair", help="Rebuild FAISS files from the raw vectors and the manifest "
                                         "from the store (no re-embedding); a store that cannot be read is "
                                         "rebuilt from the collection (re-embedding it).")]
DeepOpt = Annotated[bool, typer.Option("--deep", help="Also re-embed a sample of indexed files and flag stored "
                                       "vectors that differ from their file's embedding (loads the encoders); "
                                       "with --repair, replace those vectors.")]
SampleOpt = Annotated[int, typer.Option("--sample", min=1, help="Files --deep re-embeds (all when the index "
                                        "holds no more).")]
MinCosineOpt = Annotated[float, typer.Option("--min-cosine", min=-1.0, max=1.0, help="--deep flags a stored vector whose cosine with "
                                             "its file's embedding is below this.")]


@app.command("verify")
@user_errors
def verify_cmd(
    index: IndexOpt = None,
    repair: RepairOpt = False,
    deep: DeepOpt = False,
    sample: SampleOpt = 64,
    min_cosine: MinCosineOpt = 0.98,
    as_json: JsonOpt = False,
) -> None:
    """Check manifest, LMDB store and FAISS files against each other; exit 1 if they disagree."""
    from relsearch.cli.core import chosen_index
    from relsearch.verify import verify_index

    report = verify_index(index or chosen_index(), repair=repair)
    deep_report = _deep(report, repair, sample, min_cosine) if deep else None
    if as_json:
        print_json({**report.to_dict(), **({"deep": deep_report.to_dict()} if deep_report else {})})
    else:
        state = "consistent" if report.consistent else f"{len(report.problems)} problem(s)"
        typer.echo(f"{report.index}: generation {report.generation}, {report.records} images, {report.paths} paths, "
                   f"{report.vectors_checked} raw vectors checked [{', '.join(report.encoders)}]: {state}")
        _echo_findings(report, None if repair else "relsearch verify --repair fixes what needs no re-embedding")
        if deep_report is not None:
            _echo_deep(deep_report, repair)
    if not report.consistent or (deep_report is not None and not deep_report.consistent):
        raise typer.Exit(code=1)


def _deep(report: Any, repair: bool, sample: int, min_cosine: float) -> Any:
    """The --deep check, once the index agrees with itself (its findings come first)."""
    from relsearch.verify_deep import DeepReport, deep_verify

    if not report.consistent:
        return DeepReport(index=report.index, min_cosine=min_cosine,
                          notes=["not run: fix the problems above first (relsearch verify --repair)"])
    return deep_verify(report.index, sample=sample, min_cosine=min_cosine, repair=repair)


def _echo_deep(deep: Any, repair: bool) -> None:
    state = "consistent" if deep.consistent else f"{sum(map(len, deep.mismatched.values()))} vector(s) differ"
    typer.echo(f"  deep: {deep.checked} of {deep.of} images re-embedded and compared "
               f"(cosine >= {deep.min_cosine}): {state}")
    _echo_findings(deep, None if repair else "relsearch verify --deep --repair re-embeds those")


def _echo_findings(report: Any, hint: str | None) -> None:
    """Repaired / note lines on stdout, problem lines (and ``hint`` after them) on stderr."""
    for line in report.repaired:
        typer.echo(f"  repaired: {line}")
    for line in report.notes:
        typer.echo(f"  note: {line}")
    for line in report.problems:
        typer.echo(f"  problem: {line}", err=True)
    if report.problems and hint:
        typer.echo(f"  ({hint})", err=True)
