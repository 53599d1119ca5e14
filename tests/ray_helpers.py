"""Helpers for the Ray build tests: a deliberately slow test encoder and a CLI entry point.

``python tests/ray_helpers.py build-index DIR ...`` runs the real CLI in a child process
with the test encoders registered and small commit chunks, so a test can kill -9 it
half-way through a build.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from engine_helpers import TinyColorEncoder

#: seconds per image of ``tinyslow``: slow enough that a build is still running when killed.
SLOW_SECONDS = 0.05


class TinySlowEncoder(TinyColorEncoder):
    """``tinycolor`` that takes its time, like a real model on a busy CPU."""

    name = "tinyslow"

    def embed(self, images):
        time.sleep(SLOW_SECONDS * len(images))
        return TinyColorEncoder.embed(self, images)


def load_tinyslow(source: str | None = None, device: str | None = None) -> TinySlowEncoder:
    return TinySlowEncoder(source)


def square(x: int) -> int:
    """A Ray task for the executor test."""
    return x * x


def register() -> None:
    from relsearch import encoders

    encoders.REGISTRY.setdefault("tinycolor", "engine_helpers:load_tinycolor")
    encoders.REGISTRY.setdefault("tinyflip", "engine_helpers:load_tinyflip")
    encoders.REGISTRY.setdefault("tinyslow", "ray_helpers:load_tinyslow")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    register()
    from relsearch import build
    from relsearch.cli import main

    build.CHUNK = 8  # commit every 8 images, so a kill lands between commits
    main(sys.argv[1:])
