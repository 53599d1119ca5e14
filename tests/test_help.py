"""Help that reads like a command-line tool's: plain metavars, 80 columns, grouped commands."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from relsearch import __version__
from relsearch.cli import app
from relsearch.cli.app import COMMAND_PANELS

# What typer prints when left to itself: Python type names, range notation, {argument}.
PYTHONIC = re.compile(r"<[a-zA-Z][^>]*>|\b(?:str|int|float|bool|NoneType|Path)\b|list\[|\[x?[<>]=|x[<>]=|"
                      r"\{[a-z_]+\}")


def _command_paths(command, prefix=()):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*prefix, name))


PATHS = list(_command_paths(typer.main.get_command(app)))


def _help(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed() -> None:
    # the walk below must reach the commands people use, or it proves nothing
    assert {("query",), ("build-index",), ("view",), ("bench", "ann"), ("export", "onnx")} <= set(PATHS)
    assert len(PATHS) > 20


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "relsearch")
def test_help_is_plain_and_fits_80_columns(path: tuple[str, ...]) -> None:
    text = _help(*path)
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    pythonic = [line for line in text.splitlines() if PYTHONIC.search(line)]
    assert not pythonic, "\n".join(pythonic)
    assert "…" not in text  # nothing cut to fit


def test_metavars_name_the_value() -> None:
    text = _help("query")
    assert "  -k, --top-k N  " in text and "[default: 20]" in text  # defaults shown
    assert "  --index DIR  " in text and "  --html FILE  " in text and "  --analogy-weight X  " in text
    assert "  --backend faiss|milvus  " in text  # choices listed
    assert re.search(r"^  --explain {3,}Add", text, re.M)  # a flag takes no value
    build = _help("build-index")
    assert "Usage: relsearch build-index [OPTIONS] DIR..." in build
    assert "  --default-excludes / --no-default-excludes\n" in build  # long names whole, help below


def test_commands_are_grouped_in_order() -> None:
    text = _help()
    titles = re.findall(r"^([A-Z][A-Za-z ]+):$", text, re.M)
    assert titles == ["Options", *COMMAND_PANELS]
    listed = re.findall(r"^  ([a-z][a-z-]+) +\S", text, re.M)
    assert listed == [n for names in COMMAND_PANELS.values() for n in names]
    registered = set(typer.main.get_command(app).commands)
    assert registered == set(listed)  # a new command must be given a panel


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"relsearch {__version__}"


def test_top_k_long_form() -> None:
    from engine_helpers import run_cli

    assert run_cli("query", "--top-k", "0", "x.png") == 2  # the long form is parsed (and range-checked)


def test_info_without_an_index_says_so_and_succeeds() -> None:
    import json

    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0 and "no index in" in result.stdout and "build-index DIR" in result.stdout
    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["indexes"] == []


def test_verbose_build_logs_its_phases(tmp_path) -> None:
    from engine_helpers import make_collection

    make_collection(tmp_path / "col", 4)
    args = ["build-index", str(tmp_path / "col"), "--index", str(tmp_path / "idx"), "--encoders", "tinycolor"]
    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == 0 and "INFO" not in quiet.stderr
    make_collection(tmp_path / "col" / "more", 2, seed=5)  # something to embed on the second build
    loud = CliRunner().invoke(app, ["-v", *args])
    assert loud.exit_code == 0, loud.output
    phases = [line.split(": ", 2)[1].split(":")[0] for line in loud.stderr.splitlines()
              if line.startswith("INFO relsearch.build: ")]
    assert [p for p in phases if p in {"scan", "diff", "embed", "index", "commit"}] == \
        ["scan", "diff", "embed", "index", "commit"], loud.stderr


@pytest.mark.parametrize("path", [p for p in PATHS if p], ids=" ".join)
def test_a_run_that_names_its_command_builds_only_it_and_reads_the_same(path: tuple[str, ...]) -> None:
    from relsearch.cli import app_for

    lean = app_for(["-v", *path, "--help"])
    built = typer.main.get_command(lean)
    assert list(built.commands) == [path[0]]  # only the command named (a group keeps its subcommands)
    env = {"COLUMNS": "80", "TERMINAL_WIDTH": "80"}
    assert CliRunner().invoke(lean, [*path, "--help"], env=env).output == _help(*path)


@pytest.mark.parametrize("argv", [[], ["--help"], ["qeury"], ["-vx", "query"], ["--version"]])
def test_anything_but_a_command_name_gets_the_whole_app(argv: list[str]) -> None:
    from relsearch.cli import app_for

    assert app_for(argv) is app
