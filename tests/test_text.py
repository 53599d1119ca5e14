"""The MiniLM caption tower: 384-d unit vectors that rank related captions first."""

from __future__ import annotations

import numpy as np
import pytest

from relsearch.encoders.text import TEXT_DIM, embed_text, text_tower


@pytest.fixture(scope="module")
def tower():
    return text_tower("cpu")


def test_unit_vectors_of_384_dims(tower) -> None:
    emb = tower.embed_text(["{Object}s arranged in a ring around a central {Center}", "a dog", ""])
    assert emb.shape == (3, TEXT_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert tower.embed_text([]).shape == (0, TEXT_DIM)


def test_similar_captions_score_higher_than_unrelated(tower) -> None:
    ring, ring2, stack, cooking = tower.embed_text([
        "{Object}s arranged in a ring around a central {Center}",
        "a circle of {Object}s evenly spaced around {Center}",
        "{Object}s piled on top of one another into a tower",
        "stir the soup and add salt before serving",
    ])
    assert ring @ ring2 > ring @ stack > ring @ cooking
    assert ring @ ring2 > 0.6


def test_deterministic_batch_independent_and_fingerprinted(tower) -> None:
    caps = ["{Object} nested inside {Container}, layer within layer", "a short one"]
    together = tower.embed_text(caps)
    alone = np.concatenate([tower.embed_text([c]) for c in caps])
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding must not change the mean
    # the one-off may run the fp16-weight graph on ONNX Runtime: the same vectors up to rounding
    np.testing.assert_allclose(embed_text(caps, device="cpu"), together, atol=1e-3)
    assert len(tower.fingerprint) == 16 and tower.fingerprint == text_tower("cpu").fingerprint
