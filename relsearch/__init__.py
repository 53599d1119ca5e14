"""relsearch: relational image retrieval.

Heavy parts (torch, faiss, model code) are imported on first use, never at
``import relsearch``.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# A library leaves logging set-up to its application (the CLI: -v / --quiet).
logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> "module:attr", resolved lazily
_LAZY = {
    "relsim": "relsearch.encoders.relsim:relsim",
    "get_encoder": "relsearch.encoders:get_encoder",
    "build_index": "relsearch.build:build_index",
    "composed_query": "relsearch.composed:composed_query",
    "search_composed": "relsearch.composed:search_composed",
    "open_index": "relsearch.indexdir:open_index",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, _, attr = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'relsearch' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
