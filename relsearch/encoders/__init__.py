"""Encoder registry.

Backbones are imported lazily: each registry entry is ``"module:factory"`` and the
factory is called as ``factory(source=None|str, device=None|str) -> Encoder``.
Adding an encoder means adding one line here and one module beside this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from relsearch.encoders.base import Encoder, EncoderSpec, l2_normalize, parse_encoder_list
from relsearch.errors import MissingWeightsError, RelsearchError, first_line
from relsearch.extras import require as require_extra

#: name -> "module:callable". Order is the order `relsearch info` lists them in.
REGISTRY: dict[str, str] = {
    "relsim-mini": "relsearch.encoders.relsim_mini:load",
    "imagenet": "relsearch.encoders.imagenet:load",
    "relsim": "relsearch.encoders.relsim:load",
    "clip": "relsearch.encoders.clip:load",
    "dino": "relsearch.encoders.dino:load",
}

#: name -> the extra its registry (torch) factory needs; relsim-mini and imagenet need it only off
#: ONNX Runtime (``RELSEARCH_RUNTIME=torch``, a GPU, weights of their own).
EXTRAS: dict[str, str] = {"relsim-mini": "torch", "imagenet": "torch", "relsim": "relsim", "clip": "clip",
                          "dino": "dino"}

#: What `build-index` uses when --encoders is not given: relational first,
#: then the attribute baseline beside it.
DEFAULT_ENCODERS = "relsim-mini,imagenet"


def available() -> list[str]:
    return list(REGISTRY)


def resolve_factory(name: str, lazy: bool = True) -> Callable[..., Encoder]:
    if name not in REGISTRY:
        raise RelsearchError(
            f"unknown encoder {name!r}; valid encoders: {', '.join(REGISTRY)}"
        )
    from relsearch.encoders.onnx_runtime import GRAPHS

    if lazy and name in GRAPHS:  # it may run on ONNX Runtime: import its torch module only when called
        return lambda *args, **kwargs: resolve_factory(name, lazy=False)(*args, **kwargs)
    if name in EXTRAS:
        require_extra(EXTRAS[name], f"encoder {name!r}" + (" on torch" if name in GRAPHS else ""))
    module_name, _, attr = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra is missing
        raise RelsearchError(f"encoder {name!r} needs a package that is not installed: {exc}") from exc
    return getattr(module, attr)


def get_encoder(spec: EncoderSpec | str, device: str | None = None, runtime: str | None = None) -> Encoder:
    """Load the encoder for ``NAME`` or ``NAME@SOURCE``: a new instance on every call.

    Nothing is cached process-wide: the caller (a ``Searcher``, a build, a benchmark)
    owns the model and frees it by dropping its reference (``Searcher.close``).
    ``runtime`` (``auto``, ``torch``, ``onnx``; default ``$RELSEARCH_RUNTIME`` or ``auto``)
    picks ONNX Runtime or torch for the shipped encoders (``encoders/onnx_runtime.py``).
    """
    if isinstance(spec, str):
        try:
            spec = EncoderSpec.parse(spec)
        except ValueError as exc:
            raise RelsearchError(str(exc)) from exc
    light = _on_onnx_runtime(spec, device, runtime)  # before the torch module is imported
    if light is not None:
        return light
    factory = resolve_factory(spec.name)
    try:
        return _with_chosen_threads(factory(source=spec.source, device=device))
    except Exception as exc:
        if not _unreadable_weights(exc):
            raise
        raise MissingWeightsError(f"cannot load encoder {str(spec)!r}: a weights file is damaged or not what "
                                  f"its name says ({type(exc).__name__}: {first_line(exc)})") from None


def _on_onnx_runtime(spec: EncoderSpec, device: str | None, runtime: str | None) -> Encoder | None:
    """``spec`` on ONNX Runtime, or None where the registry's (torch) factory loads it."""
    from relsearch.encoders.onnx_runtime import GRAPHS, load_onnx
    from relsearch.encoders.text import OwnedTextTower

    if spec.name not in GRAPHS or spec.name not in REGISTRY:  # minilm is a caption tower, not an encoder
        return None
    # relsim-mini's text side: a caption tower loaded on its first caption (ONNX Runtime where it can)
    captions = OwnedTextTower("cpu") if spec.name == "relsim-mini" else None
    return load_onnx(spec.name, spec.source, device, runtime, captions=captions)


def _with_chosen_threads(encoder: Encoder) -> Encoder:
    """``encoder``, with torch (which its factory may have just imported) given the chosen threads."""
    from relsearch.threads import apply_to_torch

    apply_to_torch()
    return encoder


def _unreadable_weights(exc: BaseException) -> bool:
    """A weights file the loading library could not parse (junk or a truncated copy at a user's path):
    safetensors raises its own error type, torch's safe loader an ``UnpicklingError``."""
    kind = type(exc)
    return kind.__module__.split(".")[0] == "safetensors" or kind.__name__ in {"SafetensorError", "UnpicklingError"}


def get_encoders(text: str, device: str | None = None, runtime: str | None = None) -> list[Encoder]:
    try:
        specs = parse_encoder_list(text)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    for spec in specs:  # fail on a bad name before loading any weights
        resolve_factory(spec.name)
    return [get_encoder(spec, device=device, runtime=runtime) for spec in specs]


__all__ = [
    "DEFAULT_ENCODERS",
    "Encoder",
    "EncoderSpec",
    "REGISTRY",
    "available",
    "get_encoder",
    "get_encoders",
    "l2_normalize",
    "parse_encoder_list",
]
