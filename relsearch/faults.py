"""Named fault points for crash testing (``RELSEARCH_FAULT``).

A build calls :func:`point` at each named step of its documented write order
(see :mod:`relsearch.build`) and :func:`new_run` when it starts. With
``RELSEARCH_FAULT`` unset a point is one dict lookup. The fault-injection tests set it:

- ``RELSEARCH_FAULT=switched``       SIGKILL the process on reaching point ``switched``;
- ``RELSEARCH_FAULT=chunk#2``        ... on reaching it the 2nd time in this build;
- ``RELSEARCH_FAULT=exported:enospc`` raise ``OSError(ENOSPC)`` there instead (disk full).

Hits are counted per build, not per process: a test that runs several builds in one
process gets the fault in each of them. :func:`fired` names the point that last raised,
so a test can check that its fault went off where it meant it to.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "RELSEARCH_FAULT"
_hits: dict[str, int] = {}
_fired: list[str] = []


def new_run() -> None:
    """Start counting hits afresh: called once at the start of every build."""
    _hits.clear()
    _fired.clear()


def fired() -> str | None:
    """The point that raised a fault in the current build, if one did."""
    return _fired[-1] if _fired else None


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
        _fired.append(name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
