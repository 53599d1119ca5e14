"""The typer application and the error boundary shared by every command module.

Command modules (``core``, ``train``, ``bench``, ``view``...) import ``app`` /
``bench_app`` from here and register their commands; ``relsearch.cli`` imports
them all. Commands parse and print; the work is done by library functions that
return data.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from relsearch.errors import RelsearchError

app = typer.Typer(
    name="relsearch",
    help="Relational image retrieval: relational neighbours next to attribute neighbours.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks (ANN recall/speed, relational precision, throughput).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

F = TypeVar("F", bound=Callable[..., Any])

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send the ``relsearch`` loggers to stderr: warnings by default, -v info, -vv debug, --quiet errors."""
    if quiet:
        level = logging.ERROR
    else:
        level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logger = logging.getLogger("relsearch")
    for old in [h for h in logger.handlers if getattr(h, "_relsearch_cli", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)  # the stderr of this invocation (tests swap it)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    handler._relsearch_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


@app.callback()
def _global_options(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True,
                                         help="More log output on stderr (-v info, -vv debug).")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
) -> None:
    """Relational image retrieval: relational neighbours next to attribute neighbours."""
    configure_logging(verbose, quiet)

# Options several commands share, defined once so their flags and help read the same everywhere.
# Use as ``as_json: JsonOpt = False`` / ``encoders: ColumnsOpt = None``.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
ColumnsOpt = Annotated[str | None, typer.Option("--encoders", help="Only these columns of the index.")]


def _device_option(value: str | None) -> str | None:
    """``--device`` checked before any work (a bad name is a usage error, exit 2)."""
    if value is None:
        return None
    from relsearch.encoders.base import check_device

    try:
        return check_device(value)
    except RelsearchError as exc:
        raise typer.BadParameter(str(exc)) from None


DeviceOpt = Annotated[str | None, typer.Option("--device", callback=_device_option,
                                               help="torch device: cpu, cuda, cuda:N or mps "
                                                    "(default: cuda, mps, then cpu).")]


def user_errors(func: F) -> F:
    """Turn :class:`RelsearchError` into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RelsearchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
