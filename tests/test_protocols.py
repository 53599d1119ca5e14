"""Encoder capabilities are declared protocols, one meaning per name (relsearch.encoders.base)."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models as tm
from engine_helpers import TinyColorEncoder

from relsearch.encoders.base import (
    Encoder,
    FeatureCachingEncoder,
    PipelinedEncoder,
    PortablePreprocessing,
    TextEncoder,
    TrainableEncoder,
)

ALL = (Encoder, PipelinedEncoder, PortablePreprocessing, TextEncoder, TrainableEncoder, FeatureCachingEncoder)


def _caps(enc: object) -> set[str]:
    return {p.__name__ for p in ALL if isinstance(enc, p)}


@pytest.fixture(scope="module")
def shipped() -> tuple:
    from relsearch.encoders.imagenet import load as load_imagenet
    from relsearch.encoders.relsim_mini import load as load_mini

    return load_mini(device="cpu"), load_imagenet(device="cpu")


def test_shipped_encoders_declare_what_they_can(shipped) -> None:
    mini, imagenet = shipped
    assert _caps(mini) == {"Encoder", "PipelinedEncoder", "TextEncoder", "TrainableEncoder",
                                              "FeatureCachingEncoder"}
    assert _caps(imagenet) == {"Encoder", "PipelinedEncoder", "PortablePreprocessing"}
    assert _caps(TinyColorEncoder()) == {"Encoder"}


def test_relsim_is_pipelined_trainable_and_textual(tmp_path) -> None:
    from relsearch.encoders import relsim

    release = str(tm.make_tiny_relsim(tmp_path / "r"))
    enc = relsim.load(release, device="cpu")
    assert _caps(enc) == {"Encoder", "PipelinedEncoder", "TextEncoder", "TrainableEncoder"}
    # `preprocess` is only the dreamsim-style PIL -> PIL helper relsim() returns beside the model
    assert enc.preprocess([tm.tiny_images(1)[0].convert("L")])[0].mode == "RGB"


def test_pipelined_split_matches_embed(shipped) -> None:
    images = tm.tiny_images(3)
    for enc in shipped:
        assert not hasattr(enc, "preprocess") and not hasattr(enc, "embed_preprocessed")
        np.testing.assert_allclose(enc.embed_batch(enc.preprocess_batch(images)), enc.embed(images), atol=1e-5)


def test_clip_is_an_encoder_with_a_text_tower(tmp_path) -> None:
    pytest.importorskip("open_clip")
    from relsearch.encoders.clip import load as load_clip

    enc = load_clip(str(tm.make_tiny_clip(tmp_path / "c")), device="cpu")
    # free-text search (embed_text); not pipelined, not trainable
    assert _caps(enc) == {"Encoder", "TextEncoder"} and callable(enc.transform)
