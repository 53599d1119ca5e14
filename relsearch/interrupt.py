"""Ctrl-C and SIGTERM during a build: keep what is embedded, then stop.

While a build holds :class:`StopSignals` (in the main thread), SIGINT and SIGTERM raise
:class:`BuildInterrupted` where the build is, which is safe at any point of its write
order (``relsearch.build``). Inside :meth:`StopSignals.deferred` (the embedding loop) the
first signal only asks the loop to stop: it finishes the batch in hand, commits what is
embedded and raises then; a second signal raises at once. Inside
:meth:`StopSignals.shielded` (an LMDB commit) signals are only recorded, so the commit of
the finished images is never cut short by the signal that asked for it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BuildInterrupted(KeyboardInterrupt):
    """A build stopped by SIGINT or SIGTERM; ``saved`` images it embedded are committed."""

    def __init__(self, signum: int, saved: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.saved = saved

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def message(self) -> str:
        return f"interrupted: {self.saved} images saved; run the same command to continue"


class StopSignals:
    """SIGINT / SIGTERM handlers for the length of a build (a no-op outside the main thread)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self.count = 0
        self.saved = 0  # images committed by this build so far
        self._defer = False
        self._shield = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                # a build started with the signal ignored (nohup, `cmd &` in a script) keeps it ignored
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupted(self) -> BuildInterrupted:
        return BuildInterrupted(self.signum or signal.SIGINT, self.saved)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1
        if self._shield:
            return
        if self._defer and self.count == 1:
            sys.stderr.write("\nstopping: saving the images embedded so far (Ctrl-C again stops at once)\n")
            return
        raise self.interrupted()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal here asks the caller to stop at its next check (:attr:`requested`)."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Signals here are recorded, never raised: the caller checks :attr:`requested` after."""
        before = self._shield
        self._shield = True
        try:
            yield
        finally:
            self._shield = before
