"""Training files read back without running code: checkpoints, feature caches, RNG states."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relsearch.errors import RelsearchError
from relsearch.train.data import CaptionRecord
from relsearch.train.safe_state import UnsafeFileError, load_tensors, rng_state, set_rng_state
from relsearch.train.trainer import build_feature_cache, load_checkpoint


class Payload:
    """Unpickling this calls ``open(marker, "w")``: stands in for any code an attacker picks."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious(path: Path, marker: Path, wrap) -> Path:
    torch.save(wrap(Payload(marker)), path)
    return path


def test_the_payload_does_run_under_plain_unpickling(tmp_path):
    # The fixture is live: weights_only=False (the former loader) executes it.
    marker = tmp_path / "ran"
    path = _malicious(tmp_path / "ckpt.pt", marker, lambda p: {"step": 1, "x": p})
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = _malicious(tmp_path / "ckpt.pt", marker,
                      lambda p: {"step": 3, "trainable": {}, "rng": p, "config": {}})
    with pytest.raises(UnsafeFileError, match="refusing checkpoint .*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_or_truncated_checkpoint_is_one_line_error(tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"step": 1, "trainable": {"w": torch.zeros(1000)}, "rng": {}}, junk)
    junk.write_bytes(junk.read_bytes()[:600])  # a kill mid-copy
    with pytest.raises(RelsearchError, match="cannot read checkpoint") as err:
        load_checkpoint(junk)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(RelsearchError, match="not a relsearch training checkpoint"):
        load_checkpoint(other)


class _CachingStub:
    """The smallest feature-caching encoder: mean colour of each image as its 'feature'."""

    cache_fingerprint = "stub-v1"

    def prepare(self, images, train, generator=None):
        return {"pixels": torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).mean((0, 1))
                                       for im in images])}

    def cache_features(self, batch):
        return {"colour": batch["pixels"]}


def test_malicious_feature_cache_is_ignored_and_rewritten(tmp_path):
    records = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (60 * i, 20, 200)).save(p)
        records.append(CaptionRecord(image=str(p), caption=f"caption {i}"))
    marker = tmp_path / "ran"
    cache = _malicious(tmp_path / "features.pt", marker, lambda p: {"key": p, "features": {}})
    feats = build_feature_cache(_CachingStub(), records, views=1, seed=0, path=cache, progress=False)
    assert not marker.exists()
    assert feats["colour"].shape == (1, 3, 3)
    assert feats["colour"][0, 1, 0].item() == pytest.approx(60.0)
    # rewritten as plain tensors: loads safely and is reused on the next call
    assert torch.equal(load_tensors(cache, "feature cache")["features"]["colour"], feats["colour"])
    again = build_feature_cache(_CachingStub(), records, views=1, seed=0, path=cache, progress=False)
    assert torch.equal(again["colour"], feats["colour"])


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(torch.load(path, weights_only=True))  # plain data: no allowlist needed
    got = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_checkpoint_written_before_the_change_still_loads(tmp_path):
    # Older checkpoints kept NumPy's raw state tuple (an ndarray inside): data, not code.
    np.random.seed(5)
    old = {"step": 2, "trainable": {"w": torch.ones(2)}, "config": {},
           "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the allowlist is for
    state = load_checkpoint(path)
    expected = np.random.random(2)
    np.random.seed(0)
    set_rng_state(state["rng"])
    assert np.array_equal(np.random.random(2), expected)
