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

The native pools behind numpy (BLAS) and FAISS (OpenMP) get the same bound for small work:
:func:`use_threads` limits those loaded by then (and FAISS's when it loads, through
:func:`apply_to_native`), and :func:`native_threads` / :func:`threads_for` bound one block of
numpy or FAISS work by its size (dupes' similarity search: a few hundred vectors gain nothing
from a second thread, and a busy machine makes each pool wait for all of its threads).
Large work keeps the libraries' own defaults. threadpoolctl does the limiting where it is
installed; without it FAISS is still bounded through its own call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from relsearch.errors import RelsearchError

ENV = "RELSEARCH_QUERY_THREADS"
DEFAULT_QUERY_THREADS = 1
#: up to this many vectors, numpy / FAISS work runs on the bounded pool (:func:`threads_for`)
SMALL_ROWS = 50_000

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
    apply_to_native()


def intra_op_threads() -> int | None:
    """The intra-op threads chosen by :func:`use_threads` (None: the runtime's default)."""
    return _chosen


def apply_to_torch() -> None:
    """Give torch's intra-op pool the chosen count, if torch is loaded (it is never imported here)."""
    torch = sys.modules.get("torch")
    if _chosen is not None and torch is not None and torch.get_num_threads() != _chosen:
        torch.set_num_threads(_chosen)


#: the process-wide native limit :func:`use_threads` set (a threadpoolctl limiter), undone by ``None``
_native: Any = None


def apply_to_native() -> None:
    """Give the BLAS / OpenMP pools loaded by now (numpy's, FAISS's) the chosen count, or
    their own defaults back when the choice is ``None``."""
    global _native
    if _native is not None:
        _native.restore_original_limits()
        _native = None
    if _chosen is None:
        return
    _native = _limit(_chosen)
    faiss = sys.modules.get("faiss")
    if faiss is not None and _native is None:
        faiss.omp_set_num_threads(_chosen)


def threads_for(rows: int) -> int | None:
    """Threads for numpy / FAISS work on ``rows`` vectors: :func:`query_threads` for small
    work, None (the libraries' defaults) for large."""
    return query_threads() if rows <= SMALL_ROWS else None


@contextlib.contextmanager
def native_threads(n: int | None) -> Iterator[None]:
    """The BLAS and OpenMP pools (numpy, FAISS) limited to ``n`` threads inside the block
    (``None``: as they are)."""
    if n is not None and n < 1:
        raise RelsearchError(f"threads must be at least 1, got {n}")
    limiter = _limit(n) if n is not None else None
    faiss = sys.modules.get("faiss")
    before = faiss.omp_get_max_threads() if faiss is not None and n is not None and limiter is None else None
    if before is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if before is not None:
            faiss.omp_set_num_threads(before)


def _limit(n: int) -> Any:
    """A threadpoolctl limiter of every loaded BLAS and OpenMP pool to ``n``, or None without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n)
