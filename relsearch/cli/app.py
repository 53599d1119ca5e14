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
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from relsearch.errors import RelsearchError

#: The command list of ``relsearch --help``: panels, and the order within each.
COMMAND_PANELS = {
    "Search": ("build-index", "query", "view", "explain", "dupes", "info", "verify"),
    "Make models": ("compose", "train", "train-head"),
    "Measure": ("bench",),
    "Export": ("export",),
}
#: Metavars by value type, for options that name none themselves.
_TYPE_METAVARS = {int: "N", float: "X"}
#: Parameter names whose value is a folder.
_FOLDER_NAMES = {"index", "directory", "directories", "root", "out", "art", "collection"}


class _LightCoercion:
    """Typer's runtime coercion for the value types relsearch's parameters use, without pydantic.

    Typer converts every parsed value through a pydantic ``TypeAdapter``; importing pydantic and
    building the adapters is a tenth of a cold query. The parameters here are ``str``, ``Path``,
    ``int`` / ``float`` (some with a minimum or maximum), ``bool`` and lists of ``str`` / ``Path``;
    :func:`light_coercion` returns None for anything else, which typer then coerces itself.
    """

    def __init__(self, kind: type, low: float | None, high: float | None) -> None:
        self.kind, self.low, self.high = kind, low, high

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if param.multiple or param.nargs == -1:
            if value is None:
                return ()
            if isinstance(value, str):
                raise typer.BadParameter("Value must be an iterable.", ctx=ctx, param=param)
            return [self.one(item, param, ctx) for item in value]
        return None if value is None else self.one(value, param, ctx)

    def one(self, value: Any, param: Any, ctx: Any) -> Any:
        if self.kind is bool:
            return _cli_bool(value, param, ctx)
        if self.kind in (str, Path):
            return self.kind(os.fsdecode(value) if isinstance(value, bytes) else value)
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            what = "an integer" if self.kind is int else "a number"
            raise typer.BadParameter(f"Input should be {what}, not {value!r}", ctx=ctx, param=param) from None
        if self.low is not None and number < self.low:
            raise typer.BadParameter(f"Input should be greater than or equal to {_num(self.low)}",
                                     ctx=ctx, param=param)
        if self.high is not None and number > self.high:
            raise typer.BadParameter(f"Input should be less than or equal to {_num(self.high)}",
                                     ctx=ctx, param=param)
        return number


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_TRUE, _FALSE = {"1", "true", "t", "yes", "y", "on"}, {"0", "false", "f", "no", "n", "off", ""}


def _cli_bool(value: Any, param: Any, ctx: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise typer.BadParameter(f"Input should be a boolean, not {value!r}", ctx=ctx, param=param)


def light_coercion(descriptor: Any) -> _LightCoercion | None:
    """The pydantic-free coercion of one parameter, or None where typer's own is needed."""
    info = descriptor.parameter_info
    kind = descriptor.annotation
    if descriptor.is_list:
        kind = (getattr(kind, "__args__", None) or (None,))[0]
    plain = (info.parser is None and not info.clamp and not descriptor.is_file and not descriptor.is_choice
             and not descriptor.is_tuple)
    if not plain or kind not in (str, Path, int, float, bool):
        return None
    if kind is Path and (info.exists or not info.file_okay or not info.dir_okay or info.writable
                         or not info.readable or info.resolve_path or info.allow_dash or info.path_type):
        return None
    if kind in (str, Path, bool) and (info.min is not None or info.max is not None):
        return None
    return _LightCoercion(kind, info.min, info.max)


def _light_runtime_param(param: Any, typer_own: Callable[[], Any]) -> Any:
    """``get_runtime_param`` of relsearch's parameters: :func:`light_coercion` where it applies,
    else ``typer_own`` (the pydantic coercion)."""
    if getattr(param, "_runtime_param", None) is None:
        light = light_coercion(param.type_descriptor)
        param._runtime_param = light if light is not None else typer_own()
    return param._runtime_param


class _PlainArgument(TyperArgument):
    """An argument shown as its metavar alone: ``DIR``, ``[QUERY...]``; no type column."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        many = "..." if self.nargs != 1 and not name.endswith("...") else ""
        return f"{name}{many}" if self.required else f"[{name}{many}]"

    def _get_number_range_help_str(self) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        return [] if self.hidden else [self._usage_display_name()]

    def get_runtime_param(self) -> Any:
        return _light_runtime_param(self, super().get_runtime_param)


class _PlainOption(TyperOption):
    """An option whose value reads ``N``, ``X``, ``DIR``, ``a|b``: no range notation beside it."""

    def _get_number_range_help_str(self) -> str | None:
        return None

    def get_runtime_param(self) -> Any:
        return _light_runtime_param(self, super().get_runtime_param)


def _plain_metavar(param: Any) -> str:
    """A conventional metavar from the parameter's type and name (never a Python type name)."""
    desc = param.type_descriptor
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return ""
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    kind = desc.annotation
    if desc.is_list:
        kind = (getattr(kind, "__args__", None) or (str,))[0]
    name = (param.name or "value").lower()
    if desc.is_path:
        return "DIR" if name in _FOLDER_NAMES or name.endswith(("dir", "dirs")) else "FILE"
    if name.endswith("dir") or name == "out":  # a folder given as text
        return "DIR"
    if kind in _TYPE_METAVARS:
        return _TYPE_METAVARS[kind]
    return name.rpartition("_")[2].upper()


class _PlainGroup(TyperGroup):
    """A group whose command list gives each command's first sentence whole (wrapped, not cut)."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        self._write_commands(formatter, "Commands", self.list_commands(ctx))

    def _write_commands(self, formatter: Any, title: str, names: list[str]) -> None:
        rows = [(n, c.get_short_help_str(limit=1000)) for n in names
                if (c := self.commands.get(n)) is not None and not c.hidden]
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)


def plain_help(command: Any) -> None:
    """Make the help of ``command`` and every command under it read conventionally: click's
    plain layout (``--index DIR  Index directory...``, wrapped to the terminal), no boxes."""
    command.rich_markup_mode = None
    if type(command) is TyperGroup:
        command.__class__ = _PlainGroup
    help_option = command.get_help_option(typer.Context(command))  # made once, then cached
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if isinstance(param, TyperArgument):
            param.__class__ = _PlainArgument
        elif isinstance(param, TyperOption):
            param.__class__ = _PlainOption
        else:
            continue
        if param.metavar is None:
            param.metavar = _plain_metavar(param) if isinstance(param, TyperOption) else param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)


class RelsearchGroup(_PlainGroup):
    """The ``relsearch`` group: plain help throughout, commands listed in :data:`COMMAND_PANELS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_help(self)  # the whole tree: typer builds the subcommands first

    def list_commands(self, ctx: Any) -> list[str]:
        order = [n for names in COMMAND_PANELS.values() for n in names]
        return sorted(self.commands, key=lambda n: order.index(n) if n in order else len(order))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        for panel, names in COMMAND_PANELS.items():
            self._write_commands(formatter, panel, list(names))
        placed = {n for names in COMMAND_PANELS.values() for n in names}
        self._write_commands(formatter, "Other commands", [n for n in self.list_commands(ctx) if n not in placed])


app = typer.Typer(
    name="relsearch",
    help="Relational image retrieval: relational neighbours next to attribute neighbours.",
    cls=RelsearchGroup,
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


def _print_version(value: bool) -> None:
    if value:
        from relsearch import __version__

        typer.echo(f"relsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, show_default=False,
                                         help="More log output on stderr (-v info, -vv debug).")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
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
