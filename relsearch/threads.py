"""Intra-op threads (torch, ONNX Runtime) for single-image work (one query, one ``explain``).

A single 224x224 image gives torch's intra-op pool little to split, and on a machine
whose cores are busy (a 2-core box running a build, a browser, other queries) every
operator of a two-thread pool waits until *both* threads are scheduled, and a warm
single-image query with torch's default two threads can take many times as long as with
one (benchmarks/README.md, "Cold query"). One thread is therefore the default for
single-image work; ``RELSEARCH_QUERY_THREADS`` overrides it (batch work such as
``build-index`` keeps torch's own default).

The same count goes to ONNX Runtime: each session opened after :func:`use_query_threads`
(or :func:`use_threads`) gets it as its intra-op threads. This module never imports torch:
torch's pool is set when torch is already loaded, and again by :func:`apply_to_torch` when a
torch encoder loads later.
"""

from __future__ import annotations

import os
import sys

from relsearch.errors import RelsearchError

ENV = "RELSEARCH_QUERY_THREADS"
DEFAULT_QUERY_THREADS = 1

#: intra-op threads chosen for this process (None: each runtime's own default)
_chosen: int | None = None


def query_threads() -> int:
    """Threads for single-image work: ``$RELSEARCH_QUERY_THREADS`` or 1."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_QUERY_THREADS
    try:
        n = int(raw)
        if n < 1:
            raise ValueError
    except ValueError:
        raise RelsearchError(f"{ENV} must be a positive integer, got {raw!r}") from None
    return n


def use_query_threads() -> int:
    """Use :func:`query_threads` intra-op threads for single-image work; returns the number set."""
    n = query_threads()
    use_threads(n)
    return n


def use_threads(n: int | None) -> None:
    """Intra-op threads for torch (now, if loaded) and for ONNX Runtime sessions opened from now on.

    ``None`` goes back to ONNX Runtime's default for new sessions and leaves torch's pool as it is.
    """
    global _chosen
    if n is not None and n < 1:
        raise RelsearchError(f"threads must be at least 1, got {n}")
    _chosen = n
    apply_to_torch()


def intra_op_threads() -> int | None:
    """The intra-op threads chosen by :func:`use_threads` (None: the runtime's default)."""
    return _chosen


def apply_to_torch() -> None:
    """Give torch's intra-op pool the chosen count, if torch is loaded (it is never imported here)."""
    torch = sys.modules.get("torch")
    if _chosen is not None and torch is not None and torch.get_num_threads() != _chosen:
        torch.set_num_threads(_chosen)
