"""The relsearch import graph has no cycles and no cross-module private imports.

The graph is built statically with `ast`, so the test needs no optional dependency. Every
import counts: module level, inside functions (a lazy import that closes a circle only hides it
until someone hoists it) and under `if TYPE_CHECKING:` (a type-only circle still ties two
modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "relsearch"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside a function."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every relsearch import in one file."""
    out: list[tuple[str, str | None]] = []
    is_package = path.name == "__init__.py"
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name in known]
            continue
        base = _base_of(node, module, is_package)
        if base not in known:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append((sub, None) if sub in known else (base, alias.name))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """module -> the relsearch modules it imports, and private imports."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for module, path in modules.items():
        for target, name in _imports_of(module, path, known):
            if target != module:
                graph[module].add(target)
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                private.append(f"{module} imports {name} from {target}")
    return graph, private


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None; iterative DFS."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        state[root] = 1
        iters = [iter(sorted(graph[root]))]
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_graph_resolves_every_import_form():
    graph, _ = _graph()
    assert "relsearch.errors" in graph["relsearch.query"]  # from relsearch.errors import ...
    assert "relsearch.snapshot" in graph["relsearch.query"]  # from relsearch import snapshot
    assert "relsearch.encoders.onnx_runtime" in graph["relsearch.encoders"]  # inside a function
    assert "relsearch.index.faiss_index" in graph["relsearch.index"]  # a package's __init__


def test_find_cycle_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_circular_imports_between_relsearch_modules():
    graph, _ = _graph()
    cycle = _find_cycle(graph)
    assert cycle is None, "circular import: " + " -> ".join(cycle or [])


def test_no_private_names_imported_across_relsearch_modules():
    _, private = _graph()
    assert not private, "private imports:\n" + "\n".join(private)
