"""Command-line interface: ``relsearch`` (see ``relsearch --help``)."""

from __future__ import annotations

import contextlib
import io
import sys

import typer

from relsearch.cli import bench, compose, core, dupes, explain, export, train, verify, view  # noqa: F401  (register commands)
from relsearch.cli.app import app
from relsearch.cli.core import bare_ray_flag


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors too are one line on stderr and exit code 2."""
    try:  # typer vendors click from 0.2x on; older releases use click itself
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click

    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        # A file name that is not UTF-8 reaches Python as surrogates: print its bytes as they are
        # (as ls does) rather than fail on them in a UTF-8 locale.
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors=errors)  # type: ignore[union-attr]
    try:
        code = app(args=bare_ray_flag(sys.argv[1:] if argv is None else argv), standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # bare `relsearch` / `relsearch bench`: help, as asked
        text = exc.format_message()  # typer's rich help has printed itself already; plain help has not
        code = 0
        if text and text.strip():
            try:
                print(text)
            except BrokenPipeError:  # `relsearch | head`: the reader has what it wanted (click does
                _quiet_stdout()      # the same for the output of commands)
    except click.UsageError as exc:
        where = f"relsearch {exc.ctx.command_path.partition(' ')[2]}".strip() if exc.ctx else "relsearch"
        print(f"error: {' '.join(exc.format_message().split())} (see: {where} --help)", file=sys.stderr)
        code = exc.exit_code
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


__all__ = ["app", "main"]
