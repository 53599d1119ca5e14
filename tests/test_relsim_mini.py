"""relsim-mini: architecture invariants on a tiny config, and the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relsearch.encoders.base import Encoder, TrainableEncoder
from relsearch.encoders.relsim_mini import (
    CONFIG_NAME,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    RelsimMiniConfig,
    RelsimMiniEncoder,
    load,
)
from relsearch.errors import MissingWeightsError

#: The issue's bar: relational precision at least 0.3 above the attribute baseline.
PRECISION_MARGIN = 0.3

TINY = RelsimMiniConfig(image_size=64, d_model=32, n_layers=1, n_heads=2, lora_rank=2,
                        lora_convs=("_expand_conv", "_project_conv"), trunk_blocks=14,
                        dropout=0.0)


def images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(80, 60), (50, 90), (64, 64), (120, 40)]
    return [Image.fromarray(rng.integers(0, 256, (sizes[i % 4][1], sizes[i % 4][0], 3), dtype=np.uint8))
            for i in range(n)]


def tiny_encoder(seed: int = 0) -> RelsimMiniEncoder:
    torch.manual_seed(seed)
    enc = RelsimMiniEncoder(TINY, device="cpu")
    enc.bf16 = False  # exact comparisons below
    return enc


def _perturb_lora(enc: RelsimMiniEncoder, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in enc.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_protocols_shapes_and_unit_norm() -> None:
    enc = tiny_encoder()
    assert isinstance(enc, Encoder) and isinstance(enc, TrainableEncoder)
    assert enc.kind == "relational" and enc.dim == 384
    emb = enc.embed(images(3))
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert enc.embed([]).shape == (0, 384)


def test_only_lora_and_head_train_and_all_get_gradients() -> None:
    enc = tiny_encoder()
    module = enc.train_module()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert not any(p.requires_grad for p in module.trunk.parameters())
    _perturb_lora(enc)  # with B = 0 (peft's init) A gets no gradient
    module.train()
    batch = enc.prepare(images(4), train=True, generator=np.random.default_rng(0))
    out = enc.forward_train(batch)
    assert out.shape == (4, 384)
    (out @ torch.randn(384)).sum().backward()
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cached_trunk_features_give_the_same_output() -> None:
    enc = tiny_encoder()
    enc.model.eval()
    batch = enc.prepare(images(2))
    with torch.no_grad():
        direct = enc.forward_train(batch)
        cached = enc.forward_train(enc.cache_features(batch))
    # the cache stores float16: close, not identical
    torch.testing.assert_close(direct, cached, atol=5e-3, rtol=0)


def test_lora_changes_output_and_merge_keeps_it() -> None:
    enc = tiny_encoder()
    enc.model.eval()
    x = enc.prepare(images(2))["pixels"]
    with torch.no_grad():
        before = enc.model(x)
        _perturb_lora(enc)
        after = enc.model(x)
    assert (before - after).abs().max() > 1e-3
    emb = enc.embed(images(2))  # merges LoRA and folds BatchNorm
    np.testing.assert_allclose(emb, after.numpy(), atol=1e-4)


def test_save_load_round_trip(tmp_path: Path) -> None:
    enc = tiny_encoder()
    _perturb_lora(enc)
    enc.save(str(tmp_path))
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert cfg["d_model"] == 32 and cfg["lora_convs"] == ["_expand_conv", "_project_conv"]
    back = load(source=str(tmp_path), device="cpu")
    back.bf16 = False
    assert back.fingerprint == enc.fingerprint
    np.testing.assert_allclose(back.embed(images(2)), enc.embed(images(2)), atol=1e-5)
    other = tiny_encoder(seed=1)
    assert other.fingerprint != enc.fingerprint


def test_load_reports_missing_or_mismatched_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="not found"):
        load(source=str(tmp_path / "nowhere"))
    enc = tiny_encoder()
    enc.save(str(tmp_path))
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**cfg, "d_model": 64}))
    with pytest.raises(MissingWeightsError, match="shape"):
        load(source=str(tmp_path))


@pytest.mark.parametrize("bad", [{"image_size": 100}, {"trunk_blocks": 16}, {"d_model": 30, "n_heads": 4},
                                 {"lora_convs": ("_depthwise_conv",)}, {"dropout": 1.0}])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        RelsimMiniConfig(**bad)


# -- the shipped weights ------------------------------------------------------------


def test_shipped_weights_load_and_embed() -> None:
    assert (WEIGHTS_DIR / WEIGHTS_NAME).is_file(), "relsim-mini weights are missing from the package"
    assert (WEIGHTS_DIR / WEIGHTS_NAME).stat().st_size <= 50 * 1024 * 1024
    card = (WEIGHTS_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert len(card.splitlines()) < 150, "the shipped card is a summary; history lives in benchmarks/"
    enc = load(device="cpu")
    assert f"`{enc.fingerprint}`" in card, "the model card names other weights than the shipped ones"
    assert (Path(__file__).parents[1] / "benchmarks" / "relsim_mini_history.md").is_file()
    imgs = images(3)
    emb = enc.embed(imgs)
    assert emb.shape == (3, 384) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(enc.embed(imgs[::-1])[::-1], emb, atol=1e-3)  # order/batch independent
    np.testing.assert_array_equal(enc.embed(imgs), emb)  # deterministic
    assert len(enc.fingerprint) == 16
    text = enc.embed_text(["{Object}s arranged in a ring around a central {Center}"])
    assert text.shape == (1, 384)


@pytest.mark.parametrize("backgrounds", ["plain", "photo"])
def test_shipped_relsim_mini_beats_imagenet_on_unseen_objects(tmp_path: Path, backgrounds: str) -> None:
    """Relational precision on a small grouped set of test-split objects (fixed seed).

    Each group renders one object set on one background in every family, so an
    attribute encoder is drawn to the group's twins and a relational one to the
    same family in other groups. ``photo``: all twelve families over wallpaper
    photographs never used in training, with shadows, cut edges, blur, noise,
    colour casts and JPEG at quality 35-95.
    """
    pytest.importorskip("relsearch.corpus.compose")
    from relsearch import retrieval_metrics as metrics
    from relsearch.corpus.art import OPENCLIPART_DIR, missing_photo_packages
    from relsearch.corpus.compose import compose
    from relsearch.corpus.families import CLASSIC_FAMILIES
    from relsearch.encoders.imagenet import load as load_imagenet
    from relsearch.train.data import load_image, read_caption_jsonl

    if not OPENCLIPART_DIR.is_dir():
        pytest.skip("openclipart-png is not installed")
    if backgrounds == "photo":
        missing = missing_photo_packages("eval")
        if missing:
            pytest.skip(f"evaluation wallpapers not installed: apt-get install {' '.join(missing)}")
        compose(tmp_path, n_per_family=0, split="test", seed=12, grouped=True, n_groups=6,
                size_range=(192, 256), backgrounds="photo", photos="eval", realism=True)
    else:
        compose(tmp_path, n_per_family=0, split="test", seed=11, grouped=True, n_groups=6,
                size_range=(192, 256), families=CLASSIC_FAMILIES)
    recs = read_caption_jsonl(tmp_path / "labels.jsonl")
    imgs = [load_image(r.image) for r in recs]
    families = [r.family for r in recs]
    objects = [r.objects for r in recs]
    k = 5  # each query has 5 same-family scenes (the other groups)
    mini = metrics.retrieval_report(load(device="cpu").embed(imgs), families, objects, k=k)
    base = metrics.retrieval_report(load_imagenet(device="cpu").embed(imgs), families, objects, k=k)
    print(f"{backgrounds}: relsim-mini P@{k}={mini['precision_at_k']:.3f} leak={mini['leakage_at_k']:.3f}; "
          f"imagenet P@{k}={base['precision_at_k']:.3f} leak={base['leakage_at_k']:.3f}")
    assert mini["precision_at_k"] >= base["precision_at_k"] + PRECISION_MARGIN, (mini, base)
    assert mini["leakage_at_k"] < base["leakage_at_k"], (mini, base)


def test_index_of_other_relsim_mini_weights_refuses_with_rebuild_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """New shipped weights change the fingerprint: an index built with the old ones must refuse."""
    from engine_helpers import make_collection, run_cli
    from safetensors.torch import load_file, save_file

    import relsearch.encoders.relsim_mini as rm

    old = tmp_path / "old_weights"
    old.mkdir()
    (old / CONFIG_NAME).write_text((WEIGHTS_DIR / CONFIG_NAME).read_text())
    state = load_file(str(WEIGHTS_DIR / WEIGHTS_NAME))
    key = sorted(k for k in state if k.startswith("head."))[0]
    state[key] = state[key] + 0.01  # other weights of the same architecture
    save_file(state, str(old / WEIGHTS_NAME))
    coll, idx = tmp_path / "coll", tmp_path / "idx"
    make_collection(coll, n=4)
    monkeypatch.setattr(rm, "WEIGHTS_DIR", old)
    monkeypatch.setenv("RELSEARCH_RUNTIME", "torch")  # the patched folder is the torch loader's
    assert run_cli("build-index", str(coll), "--index", str(idx), "--encoders", "relsim-mini") == 0
    monkeypatch.setattr(rm, "WEIGHTS_DIR", WEIGHTS_DIR)
    outside = tmp_path / "outside.png"
    images(1, seed=5)[0].save(outside)  # not in the index: its vector must come from the encoder
    capsys.readouterr()
    code = run_cli("query", str(outside), "--index", str(idx), "-k", "2")
    err = capsys.readouterr().err
    assert code != 0
    assert "rebuild" in err and "relsim-mini" in err, err


def test_grow_deepens_lora_and_resizes_without_changing_the_trained_model(tmp_path: Path) -> None:
    from relsearch.encoders.relsim_mini import grow
    from relsearch.errors import RelsearchError
    from relsearch.train.trainer import build_encoder

    enc = tiny_encoder()
    _perturb_lora(enc)
    enc.save(str(tmp_path / "a"))
    deeper = build_encoder(f"relsim-mini@{tmp_path / 'a'}", "cpu", {"trunk_blocks": 12})  # what `train` runs
    deeper.bf16 = False
    assert deeper.config.trunk_blocks == 12 and deeper.config.d_model == TINY.d_model
    lora = {k: v.detach() for k, v in deeper.model.trainable_state().items() if "lora_" in k}
    assert len(lora) == 2 * len([k for k in enc.model.trainable_state() if "lora_" in k])  # 4 blocks, was 2
    new_b = [v for k, v in lora.items() if "lora_B" in k and k.startswith(("upper.blocks.0.", "upper.blocks.1."))]
    assert new_b and all(float(v.abs().max()) == 0.0 for v in new_b)  # blocks 12, 13: fresh pairs
    moved = [v for k, v in lora.items() if "lora_B" in k and k.startswith("upper.blocks.2.")]
    assert moved and float(moved[0].abs().max()) > 0  # block 14's trained pair, re-indexed
    np.testing.assert_allclose(deeper.embed(images(3)), enc.embed(images(3)), atol=1e-5)
    assert deeper.fingerprint != enc.fingerprint  # another config: indexes must be rebuilt

    larger = grow(str(tmp_path / "a"), device="cpu", image_size=96)
    assert tuple(larger.model.head.row_embed.shape) == (3, TINY.d_model)
    emb = larger.embed(images(2))
    assert np.isfinite(emb).all() and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    with pytest.raises(RelsearchError, match="can only shrink"):
        grow(str(tmp_path / "a"), device="cpu", trunk_blocks=15)
    with pytest.raises(RelsearchError, match="grow only in"):
        grow(str(tmp_path / "a"), device="cpu", d_model=64)
