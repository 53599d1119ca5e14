"""Stage-2 head tuning of relsim-mini on cached upper-block features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_helpers import run_cli
from safetensors.torch import load_file
from test_train import TINY_MODEL, make_scene_set

from relsearch.encoders.relsim_mini import WEIGHTS_NAME, RelsimMiniConfig, RelsimMiniEncoder, load
from relsearch.errors import RelsearchError
from relsearch.train.head_tune import tune


@pytest.fixture()
def init_release(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    enc = RelsimMiniEncoder(RelsimMiniConfig(**TINY_MODEL), device="cpu")
    with torch.no_grad():  # a "trained" LoRA, so keeping it fixed is visible
        for name, p in enc.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = tmp_path / "init"
    enc.save(str(out))
    return out


def test_tune_changes_only_the_head_and_learns(init_release: Path, tmp_path: Path) -> None:
    data = make_scene_set(tmp_path / "data", n=16)
    out = tmp_path / "tuned"
    summary = tune(str(init_release), str(data / "labels.jsonl"), str(out), val=str(data / "labels.jsonl"),
                   steps=60, batch_size=8, lr=3e-3, threads=1, log=lambda m: None, save_every=30)
    before, after = load_file(str(init_release / WEIGHTS_NAME)), load_file(str(out / WEIGHTS_NAME))
    assert set(before) == set(after)  # same weight format
    lora = [k for k in before if "lora_" in k]
    head = [k for k in before if k.startswith("head.")]
    assert lora and head
    assert all(torch.equal(before[k], after[k]) for k in lora)
    assert any(not torch.equal(before[k], after[k]) for k in head)
    assert load(str(out)).fingerprint != load(str(init_release)).fingerprint
    assert (out / "step30" / WEIGHTS_NAME).is_file()  # the intermediate release
    history = json.loads((out / "head_tune.json").read_text())["history"]
    assert history and history[-1]["step"] == 60
    # Two toy families of 8: every image's top caption is its family's, and 7 of its 10 image
    # neighbours (all the other same-family images) share its family.
    assert summary["final"]["i2t_recall@1"] == 1.0
    assert summary["final"]["precision@10"] == pytest.approx(0.7)


def test_cached_maps_through_the_head_equal_the_encoder(init_release: Path, tmp_path: Path) -> None:
    """The head trains on exactly what inference computes before it."""
    from relsearch.train.data import load_image, read_dataset
    from relsearch.train.head_tune import upper_features

    data = make_scene_set(tmp_path / "data", n=4)
    records = read_dataset(data / "labels.jsonl")
    feats = upper_features(str(init_release), records, tmp_path / "maps.safetensors")
    again = upper_features(str(init_release), records, tmp_path / "maps.safetensors")  # from the cache
    assert torch.equal(feats, again)
    enc = load(str(init_release))
    with torch.no_grad():
        via_cache = torch.nn.functional.normalize(enc.model.head(feats.float()), dim=-1).numpy()
    direct = enc.embed([load_image(r.image) for r in records])
    assert (via_cache * direct).sum(1).min() > 0.99


def test_cli_reports_bad_input_in_one_line(init_release: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    img = make_scene_set(tmp_path / "data", n=2) / "img" / "000.png"
    bad.write_text(json.dumps({"image": str(img), "caption": "a caption"}) + "\n")  # no family
    code = run_cli("train-head", "--init", str(init_release), "--data", str(bad), "--out", str(tmp_path / "o"),
                   "--steps", "2")
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "family" in err[0]
    with pytest.raises(RelsearchError):
        tune(str(tmp_path / "missing"), str(bad), str(tmp_path / "o2"))


class _Planted:
    """Unpickling this writes a marker file: what a planted cache would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.mark.parametrize("name", ["upper_features.safetensors", "upper_features.pt"])
def test_a_planted_cache_runs_no_code(init_release: Path, tmp_path: Path, name: str, capsys) -> None:
    """A pickle planted in the run folder under the cache's name (or the old one) runs nothing."""
    import pickle

    data = make_scene_set(tmp_path / "data", n=4)
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    (out / name).write_bytes(pickle.dumps({"key": "x", "features": _Planted(str(marker))}))
    code = run_cli("train-head", "--init", str(init_release), "--data", str(data / "labels.jsonl"), "--out", str(out),
                   "--steps", "2", "--batch-size", "4")
    assert not marker.exists()
    if name.endswith(".safetensors"):  # the cache's own name: refused in one line, nothing trained
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "feature cache" in err[0]
    else:  # the old name is never read
        assert code == 0
