"""No function in relsearch/ is longer than MAX_LINES lines.

Counted with `ast` from the ``def`` line (decorators left out) to the function's last line,
docstring and comments included; nested functions are counted on their own as well as
inside the function that holds them. A long function is split where its pieces have names
of their own (a step of the write order, one phase of a benchmark), not cut at a line count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "relsearch"
MAX_LINES = 80


def long_functions(root: Path = PACKAGE_DIR, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function of ``root`` longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_package_is_over_the_limit():
    found = long_functions()
    assert not found, f"functions over {MAX_LINES} lines (split them where the pieces have names):\n" + "\n".join(found)


def test_the_count_sees_a_long_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "long.py").write_text(f"def short():\n    return 1\n\n\nclass A:\n    def long(self):\n{body}\n")
    (pkg / "ok.py").write_text("def f():\n" + "\n".join(f"    y{i} = {i}" for i in range(MAX_LINES - 1)) + "\n")
    assert long_functions(pkg) == [f"pkg/long.py:6 long ({MAX_LINES + 1} lines)"]
