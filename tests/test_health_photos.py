"""The shipped relational encoder keeps real photographs apart (no collapse onto one point)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relsearch.bench.health import effective_rank, pair_cosines
from relsearch.encoders import get_encoder

PHOTOS = sorted((Path(__file__).parent / "fixtures" / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    return {name: get_encoder(name, device="cpu").embed(images) for name in ("relsim-mini", "imagenet")}


def test_the_fixture_holds_real_photographs() -> None:
    assert len(PHOTOS) >= 12


def test_relsim_mini_spreads_real_photographs_like_an_attribute_encoder(vectors: dict[str, np.ndarray]) -> None:
    rel, att = vectors["relsim-mini"], vectors["imagenet"]
    assert effective_rank(rel) >= 0.5 * effective_rank(att)
    # A collapsed encoder puts most pairs near 1: its neighbour lists are near-ties.
    assert float(np.percentile(pair_cosines(rel), 90)) <= 0.9


def test_the_check_fails_on_a_collapsed_set(vectors: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    collapsed = vectors["relsim-mini"].mean(0) + 0.005 * rng.standard_normal(vectors["relsim-mini"].shape)
    collapsed /= np.linalg.norm(collapsed, axis=1, keepdims=True)
    assert float(np.percentile(pair_cosines(collapsed), 90)) > 0.9
