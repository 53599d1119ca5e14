"""Helpers for engine tests: a cheap encoder and a tiny image collection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from relsearch.encoders.base import l2_normalize


class TinyColorEncoder:
    """4x4 RGB thumbnail (48-d), mean-centred; ``source`` changes the 'weights'."""

    name = "tinycolor"
    kind = "attribute"
    dim = 48
    #: across every instance: encoders are not cached, each build / Searcher loads its own.
    images_embedded = 0
    instances = 0

    def __init__(self, source: str | None = None) -> None:
        self.source = source or "v1"
        self.calls = 0
        TinyColorEncoder.instances += 1

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def embed(self, images):
        self.calls += len(images)
        TinyColorEncoder.images_embedded += len(images)
        rows = [np.asarray(im.convert("RGB").resize((4, 4), Image.BILINEAR), dtype=np.float32).ravel()
                for im in images]
        x = np.stack(rows) / 255.0 - 0.5
        if self.source != "v1":
            x = x[:, ::-1].copy()
        return l2_normalize(x + 1e-3)


def load_tinycolor(source: str | None = None, device: str | None = None) -> TinyColorEncoder:
    return TinyColorEncoder(source)


class TinyFlipEncoder(TinyColorEncoder):
    """A second cheap column: the same thumbnail read mirrored."""

    name = "tinyflip"

    def embed(self, images):
        return TinyColorEncoder.embed(self, [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images])


def load_tinyflip(source: str | None = None, device: str | None = None) -> TinyFlipEncoder:
    return TinyFlipEncoder(source)


def make_collection(root: Path, n: int = 12, seed: int = 0, size: int = 32) -> list[Path]:
    """``n`` distinct small PNGs (coloured blocks) under ``root`` and a subfolder."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = root / ("sub" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((size, size), Image.NEAREST)
        p = sub / f"img_{i:03d}.png"
        img.save(p)
        paths.append(p)
    return paths


def run_cli(*argv: str) -> int:
    """``relsearch ARGV...`` in-process, as the console script runs it; returns the exit code."""
    from relsearch.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def image_query(path: str | Path, index: str | Path, k: int = 20, modes=None, encoders: str | None = None):
    """Neighbours of the image file ``path`` through the engine's one query path, by its pixels.

    :func:`relsearch.composed.search_image` on the decoded file, as the page searches an
    upload: an indexed copy of the query stays among its hits (``composed_query`` on a path
    sets it apart as ``query_in_collection``), so a test can check that an image finds itself.
    """
    from relsearch.composed import search_image
    from relsearch.modes import apply_modes
    from relsearch.query import Searcher, load_query_image

    image = load_query_image(path)
    with Searcher(index, encoders=encoders) as searcher:
        result = search_image(searcher, image, k, label=str(path))
        return apply_modes(searcher, result, k, modes) if modes else result
