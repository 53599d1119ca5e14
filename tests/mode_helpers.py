"""A cheap relational test encoder in the 384-d caption space (analogy / explain / browse tests)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from relsearch.encoders.base import l2_normalize

_PROJ = np.random.default_rng(7).standard_normal((48, 384)).astype(np.float32)


class TinyRelEncoder:
    """A fixed random projection of the mirrored 4x4 thumbnail into 384-d, marked relational."""

    name = "tinyrel"
    kind = "relational"
    dim = 384

    def __init__(self, source: str | None = None) -> None:
        from relsearch.encoders.text import OwnedTextTower

        self.source = source or "v1"
        self._text = OwnedTextTower("cpu")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(("tinyrel" + self.source).encode()).hexdigest()[:16]

    def embed(self, images):
        rows = [np.asarray(im.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).resize((4, 4), Image.BILINEAR),
                           dtype=np.float32).ravel() for im in images]
        x = np.stack(rows) / 255.0 - 0.5 if rows else np.zeros((0, 48), np.float32)
        return l2_normalize(x @ _PROJ + 1e-3)

    def embed_text(self, texts):
        return self._text.embed_text(texts)


def load_tinyrel(source: str | None = None, device: str | None = None) -> TinyRelEncoder:
    return TinyRelEncoder(source)


def register() -> None:
    from relsearch import encoders

    encoders.REGISTRY.setdefault("tinyrel", "mode_helpers:load_tinyrel")
