"""Encoder registry.

Backbones are imported lazily: each registry entry is ``"module:factory"`` and the
factory is called as ``factory(source=None|str, device=None|str) -> Encoder``.
Adding an encoder means adding one line here and one module beside this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from relsearch.encoders.base import Encoder, EncoderSpec, l2_normalize, parse_encoder_list
from relsearch.errors import RelsearchError

#: name -> "module:callable". Order is the order `relsearch info` lists them in.
REGISTRY: dict[str, str] = {
    "relsim-mini": "relsearch.encoders.relsim_mini:load",
    "imagenet": "relsearch.encoders.imagenet:load",
    "relsim": "relsearch.encoders.relsim:load",
    "clip": "relsearch.encoders.clip:load",
    "dino": "relsearch.encoders.dino:load",
}

#: What `build-index` uses when --encoders is not given: relational first,
#: then the attribute baseline beside it.
DEFAULT_ENCODERS = "relsim-mini,imagenet"


def available() -> list[str]:
    return list(REGISTRY)


def resolve_factory(name: str) -> Callable[..., Encoder]:
    if name not in REGISTRY:
        raise RelsearchError(
            f"unknown encoder {name!r}; valid encoders: {', '.join(REGISTRY)}"
        )
    module_name, _, attr = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra is missing
        raise RelsearchError(f"encoder {name!r} needs a package that is not installed: {exc}") from exc
    return getattr(module, attr)


def get_encoder(spec: EncoderSpec | str, device: str | None = None) -> Encoder:
    """Load the encoder for ``NAME`` or ``NAME@SOURCE``: a new instance on every call.

    Nothing is cached process-wide: the caller (a ``Searcher``, a build, a benchmark)
    owns the model and frees it by dropping its reference (``Searcher.close``).
    """
    if isinstance(spec, str):
        try:
            spec = EncoderSpec.parse(spec)
        except ValueError as exc:
            raise RelsearchError(str(exc)) from exc
    return resolve_factory(spec.name)(source=spec.source, device=device)


def get_encoders(text: str, device: str | None = None) -> list[Encoder]:
    try:
        specs = parse_encoder_list(text)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    for spec in specs:  # fail on a bad name before loading any weights
        resolve_factory(spec.name)
    return [get_encoder(spec, device=device) for spec in specs]


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
