"""torch threads for single-image work (one query, one ``explain``).

A single 224x224 image gives torch's intra-op pool little to split, and on a machine
whose cores are busy (a 2-core box running a build, a browser, other queries) every
operator of a two-thread pool waits until *both* threads are scheduled: measured here,
a warm single-image query took 3.6 s with torch's default two threads against 0.09 s
with one (benchmarks/README.md, "cold query"). One thread is therefore the default for
single-image work; ``RELSEARCH_QUERY_THREADS`` overrides it (batch work such as
``build-index`` keeps torch's own default).
"""

from __future__ import annotations

import os

from relsearch.errors import RelsearchError

ENV = "RELSEARCH_QUERY_THREADS"
DEFAULT_QUERY_THREADS = 1


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
    """Set torch's intra-op threads for single-image work; returns the number set."""
    import torch

    n = query_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
