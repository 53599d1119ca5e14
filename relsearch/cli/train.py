"""CLI commands: train, compose.

Both forward their arguments untouched to ``main(argv)`` functions (argparse), so the
same code runs as ``relsearch train ...``, ``python -m relsearch.train ...`` and
in-process from tests; ``--help`` shows their own option lists.
"""

from __future__ import annotations

import typer

from relsearch.cli.app import app

_FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("train", context_settings=_FORWARD, add_help_option=False)
def train_cmd(ctx: typer.Context) -> None:
    """Train a relational encoder on anonymous captions (relsearch train --help)."""
    from relsearch.train.cli import main

    raise typer.Exit(code=main(list(ctx.args)))


@app.command("compose", context_settings=_FORWARD, add_help_option=False)
def compose_cmd(ctx: typer.Context) -> None:
    """Compose a relational corpus from clip art (relsearch compose --help)."""
    from tools.compose_corpus import main

    raise typer.Exit(code=main(list(ctx.args)))
