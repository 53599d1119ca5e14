"""Hostile input, one case per test: the package never unpickles, whatever a file holds."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import relsearch

PACKAGE = Path(relsearch.__file__).parent


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            yield (owner.id if isinstance(owner, ast.Name) else None), node.func.attr, node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def unpickling_calls(source: str) -> list[str]:
    """``pickle.load(s)``, ``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)``."""
    found = []
    for owner, attr, call in _calls(ast.parse(source)):
        if owner in {"pickle", "cPickle", "dill", "joblib"} and attr in {"load", "loads"}:
            found.append(f"{owner}.{attr} line {call.lineno}")
        elif owner == "torch" and attr == "load" and _keyword(call, "weights_only") is not True:
            found.append(f"torch.load line {call.lineno}")
        elif owner in {"np", "numpy"} and attr == "load" and _keyword(call, "allow_pickle") is True:
            found.append(f"np.load(allow_pickle=True) line {call.lineno}")
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    bad = ("import pickle, torch, numpy as np\npickle.loads(b)\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n")
    assert len(unpickling_calls(bad)) == 4
    assert unpickling_calls("torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\n") == []


def test_nothing_in_the_package_unpickles() -> None:
    found = {str(p.relative_to(PACKAGE)): calls for p in sorted(PACKAGE.rglob("*.py"))
             if (calls := unpickling_calls(p.read_text(encoding="utf-8")))}
    assert found == {}


def test_ray_rows_travel_without_pickles() -> None:
    from relsearch.backends.ray_embed import pack_arrays, unpack_arrays

    rows = {"x/relsim-mini": np.arange(12, dtype=np.float32).reshape(3, 4), "image": np.zeros((2, 2, 3), np.uint8)}
    back = unpack_arrays(pack_arrays(rows))
    assert set(back) == set(rows) and all(np.array_equal(back[k], rows[k]) for k in rows)
    assert unpack_arrays(pack_arrays({})) == {}
    objects = pack_arrays({"evil": np.array([object()], dtype=object)})
    with pytest.raises(ValueError):
        unpack_arrays(objects)
