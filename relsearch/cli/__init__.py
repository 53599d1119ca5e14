"""Command-line interface: ``relsearch`` (see ``relsearch --help``)."""

from relsearch.cli import bench, core, train, view  # noqa: F401  (register commands)
from relsearch.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
