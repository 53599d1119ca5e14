"""Command-line interface: ``relsearch`` (see ``relsearch --help``)."""

from __future__ import annotations

import contextlib
import copy
import io
import sys

import typer
import typer.main

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
        args = bare_ray_flag(sys.argv[1:] if argv is None else argv)
        code = app_for(args)(args=args, standalone_mode=False)
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


def app_for(args: list[str]) -> typer.Typer:
    """``app`` with only the command ``args`` name, where they name one.

    Typer turns every registered command into a click command on each run; a run that names its
    command needs only that one, a tenth of a cold query fewer. Anything else (``--help``, no
    command, a typo) gets the whole app, so help and "No such command" read as always.
    """
    name = next((a for a in args if not (a in ("--verbose", "--quiet") or _is_short_flags(a))), None)
    commands = [c for c in app.registered_commands
                if (c.name or typer.main.get_command_name(c.callback.__name__)) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if name is None or len(commands) + len(groups) != 1:
        return app
    lean = copy.copy(app)
    lean.registered_commands, lean.registered_groups = commands, groups
    return lean


def _is_short_flags(arg: str) -> bool:
    """``-v``, ``-vv``, ``-q``: the global options, which come before the command."""
    return len(arg) > 1 and arg[0] == "-" and set(arg[1:]) <= {"v", "q"}


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


__all__ = ["app", "app_for", "main"]
