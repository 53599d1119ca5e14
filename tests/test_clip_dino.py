"""The CLIP and DINO attribute baselines on tiny random-init models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402
import torch  # noqa: E402

from relsearch.encoders import Encoder, clip, dino, get_encoder  # noqa: E402
from relsearch.errors import MissingWeightsError, RelsearchError  # noqa: E402

TINY_CLIP = "relsearch_tiny_clip"


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory) -> str:
    # open_clip names a config file's model after the file's stem.
    path = tmp_path_factory.mktemp("clip_cfg") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(tm.TINY_CLIP_CFG))
    open_clip.add_model_config(str(path))
    return TINY_CLIP


@pytest.fixture(scope="session")
def images():
    return tm.tiny_images(4)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip
    monkeypatch.delenv("RELSEARCH_ALLOW_DOWNLOAD", raising=False)
    return tmp_path


# ---------------------------------------------------------------------- CLIP
def test_clip_random_init_shape_norm_determinism(tiny_clip_name, images):
    enc = get_encoder(f"clip@{tiny_clip_name}/none", device="cpu")
    assert isinstance(enc, Encoder) and (enc.name, enc.kind, enc.dim) == ("clip", "attribute", 32)
    a, b = enc.embed(images), enc.embed(images)
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-4
    assert enc.embed([]).shape == (0, 32)


def test_clip_checkpoint_file_round_trip(tiny_clip_name, images, tmp_path):
    from safetensors.torch import save_file

    enc = clip.load(f"{tiny_clip_name}/none", device="cpu")
    ckpt = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(ckpt))
    again = clip.load(f"{tiny_clip_name}/{ckpt}", device="cpu")
    np.testing.assert_allclose(again.embed(images), enc.embed(images), atol=1e-6)
    assert again.fingerprint == enc.fingerprint
    with pytest.raises(RelsearchError, match="needs its architecture"):
        clip.load(str(ckpt), device="cpu")


def test_clip_local_dir_brings_its_own_preprocessing(images, tmp_path):
    plain = clip.load(str(tm.make_tiny_clip(tmp_path / "plain")), device="cpu")
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                      "resize_mode": "squash"}
    folder = tm.make_tiny_clip(tmp_path / "hub_layout", preprocess_cfg=preprocess_cfg)
    local = get_encoder(f"clip@{folder}", device="cpu")
    norm = [t for t in local.transform.transforms if type(t).__name__ == "Normalize"][0]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.25, 0.25, 0.25)
    vecs = local.embed(images)
    assert vecs.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # same weights (same seed), different preprocessing: different vectors and fingerprints
    assert np.abs(vecs - plain.embed(images)).max() > 1e-4
    assert local.fingerprint != plain.fingerprint
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="open_clip_model.safetensors"):
        clip.load(str(folder), device="cpu")


def test_clip_tag_resolves_from_local_cache_with_tag_preprocessing(empty_caches):
    commit = "a" * 40
    repo = empty_caches / "hf" / "models--timm--vit_large_patch14_clip_224.openai"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"placeholder")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    kwargs, identity = clip._resolve("ViT-L-14/openai", open_clip)
    assert identity == "ViT-L-14/openai"
    assert kwargs["pretrained"] == str(snap / "open_clip_model.safetensors")
    # OpenAI weights were trained with QuickGELU and their own mean/std.
    assert kwargs["force_quick_gelu"] is True
    assert tuple(kwargs["image_mean"]) == open_clip.OPENAI_DATASET_MEAN
    assert kwargs["image_interpolation"] == "bicubic"


def test_clip_missing_weights_and_bad_specs(empty_caches):
    with pytest.raises(MissingWeightsError) as err:
        clip.load(None, device="cpu")
    msg = str(err.value)
    assert "hf download timm/vit_large_patch14_clip_224.openai" in msg
    assert "open_clip_model.safetensors" in msg and str(empty_caches / "hf") in msg
    with pytest.raises(RelsearchError, match="valid tags"):
        clip.load("ViT-B-32/no-such-tag", device="cpu")
    with pytest.raises(RelsearchError, match="unknown open_clip model"):
        clip.load("NoSuchNet/none", device="cpu")


# ---------------------------------------------------------------------- DINO
@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory) -> Path:
    return tm.make_tiny_dino(tmp_path_factory.mktemp("tiny_dino"))


def test_dino_cls_shape_norm_determinism(tiny_dino, images):
    from transformers import AutoImageProcessor, Dinov2Model

    enc = get_encoder(f"dino@{tiny_dino}", device="cpu")
    assert isinstance(enc, Encoder) and (enc.name, enc.kind, enc.dim) == ("dino", "attribute", 32)
    a, b = enc.embed(images), enc.embed(images)
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    # The CLS token (index 0) of the last hidden state, with the saved processor.
    model = Dinov2Model.from_pretrained(tiny_dino).eval()
    pixels = AutoImageProcessor.from_pretrained(tiny_dino)(images=images, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (56, 56)
    with torch.no_grad():
        cls = torch.nn.functional.normalize(model(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)
    np.testing.assert_allclose(a, cls.numpy(), atol=1e-5)


def test_dino_missing_weights(tiny_dino, empty_caches, tmp_path):
    with pytest.raises(MissingWeightsError, match="hf download facebook/dinov2-large"):
        dino.load(None, device="cpu")
    partial = tmp_path / "no_weights"
    partial.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (partial / name).write_text((tiny_dino / name).read_text())
    with pytest.raises(MissingWeightsError, match="model.safetensors or pytorch_model.bin"):
        dino.load(str(partial), device="cpu")
    with pytest.raises(MissingWeightsError, match="no such directory"):
        dino.load(str(tmp_path / "nowhere"), device="cpu")


# --------------------------------------------------------------- CLIP text tower
def _text_clip(tmp_path) -> Path:
    """A tiny random CLIP whose text tower takes the real tokenizer's ids (full vocabulary)."""
    cfg = {**tm.TINY_CLIP_CFG, "text_cfg": {**tm.TINY_CLIP_CFG["text_cfg"], "vocab_size": 49408}}
    out = tmp_path / "textclip"
    out.mkdir()
    torch.manual_seed(3)
    model = open_clip.CLIP(**cfg)
    from safetensors.torch import save_file

    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return out


def test_clip_text_tower_puts_captions_in_the_image_space(tmp_path, images):
    folder = _text_clip(tmp_path)
    enc = get_encoder(f"clip@{folder}", device="cpu")
    texts = ["a red bicycle", "two cats on a sofa", "a red bicycle"]
    vec = enc.embed_text(texts)
    assert vec.shape == (3, enc.dim) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vec[0], vec[2])
    assert np.abs(vec[0] - vec[1]).max() > 1e-4
    model, _, _ = open_clip.create_model_and_transforms(model_name=f"local-dir:{folder}")
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(texts[:1])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(vec[0], ref[0], atol=1e-5)


def test_text_query_searches_a_clip_column(tmp_path, capsys):
    from engine_helpers import make_collection, run_cli

    folder = _text_clip(tmp_path)
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 8)
    assert run_cli("build-index", str(root), "--index", str(idx), "--encoders", f"clip@{folder}") == 0
    capsys.readouterr()
    assert run_cli("query", "--text", "a red bicycle", "--index", str(idx), "-k", "3", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    hits = data["results"]["clip"]
    enc = get_encoder(f"clip@{folder}", device="cpu")
    from PIL import Image

    scores = enc.embed([Image.open(p).convert("RGB") for p in paths]) @ enc.embed_text(["a red bicycle"])[0]
    assert [h["path"] for h in hits] == [str(paths[i]) for i in np.argsort(-scores)[:3]]
    assert hits[0]["score"] == pytest.approx(float(scores.max()), abs=1e-4)
