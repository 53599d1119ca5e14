"""Named fault points for crash testing (``RELSEARCH_FAULT``).

A build calls :func:`point` at each named step of its documented write order
(see :mod:`relsearch.build`). With ``RELSEARCH_FAULT`` unset this is one dict
lookup. The fault-injection tests set it in a subprocess:

- ``RELSEARCH_FAULT=switch``       SIGKILL the process on reaching point ``switch``;
- ``RELSEARCH_FAULT=chunk#2``      ... on reaching it the 2nd time;
- ``RELSEARCH_FAULT=export:enospc`` raise ``OSError(ENOSPC)`` there instead (disk full).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "RELSEARCH_FAULT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Die (or fail) here if ``RELSEARCH_FAULT`` names this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, action = spec.partition(":")
    target, _, nth = target.partition("#")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(nth or 1):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
