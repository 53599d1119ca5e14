"""relsim on a tiny random-init Qwen2.5-VL in the released checkpoint layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import tiny_models as tm  # noqa: E402
import torch  # noqa: E402

from relsearch.encoders import relsim as R  # noqa: E402
from relsearch.encoders.base import Encoder, TrainableEncoder  # noqa: E402
from relsearch.errors import MissingWeightsError, RelsearchError  # noqa: E402


class _NotATensor:
    """Stands in for an arbitrary pickled object inside a projection file."""


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    return tm.make_tiny_relsim(tmp_path_factory.mktemp("tiny_relsim"))


@pytest.fixture(scope="session")
def encoder(release):
    return R.load(str(release), device="cpu")


@pytest.fixture(scope="session")
def images():
    return tm.tiny_images(5)


def _copy_release(release: Path, dst: Path) -> Path:
    shutil.copytree(release, dst)
    return dst


def test_shape_unit_norm_and_protocols(encoder, images):
    vecs = encoder.embed(images)
    assert vecs.shape == (5, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all()
    assert isinstance(encoder, Encoder) and isinstance(encoder, TrainableEncoder)
    assert (encoder.name, encoder.kind, encoder.dim) == ("relsim", "relational", 384)
    assert len(encoder.fingerprint) == 16
    # distinct random images give distinct vectors
    assert np.abs(vecs[0] - vecs[1]).max() > 1e-4


def test_prompt_is_one_user_turn_image_then_query(encoder):
    prompt = encoder.prompt()
    assert prompt.count(R.QUERY_TOKEN) == 1
    assert prompt.index("<|image_pad|>") < prompt.index(R.QUERY_TOKEN)
    assert prompt.count("<|im_start|>user") == 1 and prompt.endswith("<|im_start|>assistant\n")


def test_same_image_alone_or_in_batch(encoder, images):
    batched = encoder.embed(images)
    alone = np.concatenate([encoder.embed([img]) for img in images])
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    # micro-batching splits the list without changing results
    small = R.RelsimOptions(micro_batch_size=2)
    old = encoder.options
    encoder.options = small
    try:
        np.testing.assert_allclose(encoder.embed(images), batched, atol=1e-5)
    finally:
        encoder.options = old


def test_adapter_changes_output_and_base_is_frozen(encoder, images):
    with_adapter = encoder.embed(images[:2])
    with encoder.module.backbone.disable_adapter():
        without = encoder.embed(images[:2])
    assert np.abs(with_adapter - without).max() > 1e-3
    lora_names = [n for n, _ in encoder.module.named_parameters() if "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)
    assert all(("q_proj" in n or "v_proj" in n) for n in lora_names)
    frozen = [n for n, p in encoder.module.named_parameters() if "lora_" not in n and "projection" not in n]
    assert frozen and not any(p.requires_grad for n, p in encoder.module.named_parameters() if n in frozen)


def test_similarity_call_and_public_factory(release, images):
    import relsearch

    model, preprocess = relsearch.relsim(str(release), device="cpu")
    a, b = preprocess(images[0]), preprocess(images[1])
    assert model(a, a) == pytest.approx(1.0, abs=1e-5)
    vecs = model.embed([a, b])
    assert model(a, b) == pytest.approx(float(vecs[0] @ vecs[1]), abs=1e-5)
    # preprocess is the released preprocess_image: RGB, no resize (embed sizes once)
    gray = images[0].convert("L")
    assert preprocess([gray])[0].mode == "RGB" and preprocess(gray).size == gray.size


def test_registry_loads_relsim_at_dir(release, encoder, images):
    from relsearch.encoders import get_encoder

    enc = get_encoder(f"relsim@{release}", device="cpu")
    assert isinstance(enc, Encoder) and enc.name == "relsim"
    np.testing.assert_allclose(enc.embed(images[:2]), encoder.embed(images[:2]), atol=1e-6)
    assert enc.fingerprint == encoder.fingerprint


def test_image_sizing_cap_and_square_crop(encoder):
    from PIL import Image

    from relsearch.encoders.relsim.pixels import processor_size

    ip = encoder.processor.image_processor
    old = encoder.options
    try:
        # default: process_vision_info's sizing (multiples of 28, aspect kept, no cap) ...
        assert encoder.options == R.RelsimOptions() and encoder.options.max_image_size is None
        fitted = encoder.fit(Image.new("L", (100, 50)))
        assert fitted.mode == "RGB" and fitted.size == (112, 56)
        assert encoder.fit(Image.new("RGB", (1000, 500))).size == (1008, 504)
        # ... then the checkpoint's processor budget (784..12544 px on the tiny one)
        assert processor_size(ip, 504, 1008) == (56, 140)
        # the released embed's max_image_size: LANCZOS thumbnail of the longer side first
        encoder.options = R.RelsimOptions(max_image_size=448)
        assert encoder.fit(Image.new("RGB", (1000, 500))).size == (448, 224)
        # the square crop: one side on the processor's grid
        encoder.options = R.RelsimOptions(square=True)
        square = encoder.fit(Image.new("L", (100, 50)))
        assert square.mode == "RGB" and square.size == (112, 112)
    finally:
        encoder.options = old
    with pytest.raises(RelsearchError, match="1:200"):
        encoder.fit(Image.new("RGB", (2100, 10)))
    with pytest.raises(ValueError, match="max_image_size"):
        R.RelsimOptions(max_image_size=0)
    with pytest.raises(ValueError, match="micro_batch_size"):
        R.RelsimOptions(micro_batch_size=0)
    with pytest.raises(RelsearchError, match="max_image_size"):
        R.relsim("unused", max_image_size=3)


def test_training_batches_use_the_papers_square_crop(encoder):
    """Training follows the released training loader (centre square); inference does not crop."""
    from PIL import Image

    wide = [Image.new("RGB", (300, 100), (200, 10, 10))]
    train, infer = encoder.prepare(wide, train=True), encoder.prepare(wide, train=False)
    (_, th, tw), (_, ih, iw) = train["image_grid_thw"][0].tolist(), infer["image_grid_thw"][0].tolist()
    assert th == tw and iw > ih


def test_sizing_is_process_vision_info(encoder):
    """``fit`` gives the pixels ``qwen_vl_utils.process_vision_info`` gives (the package when installed)."""
    rng = np.random.default_rng(5)
    for w, h in [(150, 50), (50, 150), (33, 57), (1000, 500), (20, 20), (12, 1200), (3000, 2000)]:
        img = _random_image(rng, w, h)
        want = tm.official_vision_inputs([{"role": "user", "content": [{"type": "image", "image": img}]}])[0]
        got = encoder.fit(img)
        assert got.size == want.size, (w, h)
        assert np.array_equal(np.asarray(got), np.asarray(want)), (w, h)


def _random_image(rng, w, h):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


def test_save_load_round_trip(encoder, images, tmp_path):
    out = tmp_path / "saved"
    encoder.save(str(out))
    for name in R.RELEASE_FILES + ["tokenizer.json"]:
        assert (out / name).exists(), name
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == encoder.base_source
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.05)
    again = R.load(str(out), device="cpu")
    np.testing.assert_allclose(again.embed(images), encoder.embed(images), atol=1e-6)
    assert again.fingerprint == encoder.fingerprint


def test_adapter_with_pre_v5_key_names_loads(release, encoder, images, tmp_path):
    from safetensors.torch import load_file, save_file

    old = _copy_release(release, tmp_path / "old_keys")
    state = load_file(str(old / "adapter_model.safetensors"))
    renamed = {k.replace("model.language_model.layers.", "model.layers."): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, str(old / "adapter_model.safetensors"))
    enc = R.load(str(old), device="cpu")
    np.testing.assert_allclose(enc.embed(images[:2]), encoder.embed(images[:2]), atol=1e-6)


def test_training_path_gradients_and_fingerprint(release, images, tmp_path):
    enc = R.load(str(release), device="cpu")
    before = enc.fingerprint
    module = enc.train_module()
    module.train()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n.startswith("projection.") for n in trainable)
    batch = enc.prepare(images[:3], train=True)
    out = enc.forward_train(batch)
    assert out.shape == (3, 384) and out.requires_grad
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    (out @ out.T).sum().backward()
    no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, no_grad
    with torch.no_grad():
        for p in trainable.values():
            p.add_(p.grad, alpha=-0.1)
    after_one_step = enc.fingerprint
    assert after_one_step != before
    with torch.no_grad():
        module.projection.bias.add_(0.01)
    assert enc.fingerprint != after_one_step
    # embedding for validation mid-training leaves the module in training mode
    assert enc.embed(images[:1]).shape == (1, 384) and module.training
    enc.save(str(tmp_path / "trained"))
    assert R.load(str(tmp_path / "trained"), device="cpu").fingerprint == enc.fingerprint


def test_new_from_base_saves_a_loadable_release(release, images, tmp_path):
    fresh = R.new(str(release.parent / "base"), device="cpu", seed=3)
    assert R.QUERY_TOKEN in fresh.processor.tokenizer.get_vocab()
    out = tmp_path / "fresh"
    fresh.save(str(out))
    loaded = R.load(str(out), device="cpu")
    np.testing.assert_allclose(loaded.embed(images[:2]), fresh.embed(images[:2]), atol=1e-6)
    assert loaded.fingerprint == fresh.fingerprint


def test_missing_query_token_is_a_clear_error(release, tmp_path):
    bad = _copy_release(release, tmp_path / "no_query")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bad / f).unlink()
    tm.tiny_processor(with_query=False).save_pretrained(bad)
    with pytest.raises(RelsearchError, match=r"no <\|query\|> token"):
        R.load(str(bad), device="cpu")


@pytest.mark.parametrize("template_edit, count", [
    (lambda t: t.replace("You are a helpful assistant.", "<|query|>"), 2),
    (lambda t: t.replace("{{ part['text'] }}", ""), 0),
])
def test_query_token_must_occur_exactly_once(release, images, tmp_path, template_edit, count):
    bad = _copy_release(release, tmp_path / "template")
    template = template_edit(tm.CHAT_TEMPLATE)
    assert template != tm.CHAT_TEMPLATE
    (bad / "chat_template.jinja").write_text(template)
    enc = R.load(str(bad), device="cpu")
    with pytest.raises(RelsearchError, match=f"exactly once; sample 0 has it {count} times"):
        enc.embed(images[:1])


def test_pickled_object_in_projection_file_is_refused(release, tmp_path):
    bad = _copy_release(release, tmp_path / "pickled")
    blob = torch.load(bad / R.PROJECTION_FILE, weights_only=True)
    blob["extra"] = _NotATensor()
    torch.save(blob, bad / R.PROJECTION_FILE)
    with pytest.raises(RelsearchError, match="refusing"):
        R.load(str(bad), device="cpu")


def test_projection_query_id_must_match_tokenizer(release, tmp_path):
    bad = _copy_release(release, tmp_path / "qid")
    blob = torch.load(bad / R.PROJECTION_FILE, weights_only=True)
    blob["query_token_id"] = 3
    torch.save(blob, bad / R.PROJECTION_FILE)
    with pytest.raises(RelsearchError, match="query_token_id=3"):
        R.load(str(bad), device="cpu")


def test_missing_weights_messages(release, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("RELSEARCH_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(MissingWeightsError) as err:
        R.load("someone/relsim-not-cached", device="cpu")
    msg = str(err.value)
    for part in ("adapter_config.json", "adapter_model.safetensors", "projection_and_config.pt",
                 str(tmp_path / "empty_cache"), "hf download someone/relsim-not-cached"):
        assert part in msg
    assert "\n" not in msg

    partial = _copy_release(release, tmp_path / "partial")
    (partial / R.PROJECTION_FILE).unlink()
    with pytest.raises(MissingWeightsError, match=f"projection_and_config.pt in {partial}"):
        R.load(str(partial), device="cpu")

    # The base is named by a hub id that is not in the cache.
    no_base = _copy_release(release, tmp_path / "no_base")
    cfg = json.loads((no_base / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen2.5-VL-7B-Instruct"
    (no_base / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MissingWeightsError, match="hf download Qwen/Qwen2.5-VL-7B-Instruct"):
        R.load(str(no_base), device="cpu")


def test_hub_ids_resolve_from_the_local_cache(release, encoder, images, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, src in (("tiny/relsim-release", release), ("tiny/qwen-base", release.parent / "base")):
        repo_dir = cache / f"models--{repo.replace('/', '--')}"
        shutil.copytree(src, repo_dir / "snapshots" / commit)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(commit)
    snap = cache / "models--tiny--relsim-release" / "snapshots" / commit
    cfg = json.loads((snap / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "tiny/qwen-base"
    (snap / "adapter_config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    enc = R.load("tiny/relsim-release", device="cpu")
    assert enc.base_source == "tiny/qwen-base"
    np.testing.assert_allclose(enc.embed(images[:2]), encoder.embed(images[:2]), atol=1e-6)
    assert enc.fingerprint == encoder.fingerprint


def test_release_with_transformers_4_processor_files_loads(release, encoder, images, tmp_path):
    legacy = _copy_release(release, tmp_path / "legacy")
    tm.to_legacy_processor_layout(legacy)
    assert (legacy / "preprocessor_config.json").exists() and not (legacy / "processor_config.json").exists()
    enc = R.load(str(legacy), device="cpu")
    np.testing.assert_allclose(enc.embed(images[:2]), encoder.embed(images[:2]), atol=1e-6)
    assert enc.fingerprint == encoder.fingerprint


def test_embeddings_saved_in_the_adapter_replace_the_base_rows(release, encoder, images, tmp_path):
    from safetensors.torch import load_file, save_file

    carried = _copy_release(release, tmp_path / "with_embeddings")
    state = load_file(str(carried / "adapter_model.safetensors"))
    rows = len(encoder.processor.tokenizer)
    embed = torch.randn(rows, tm.TEXT_HIDDEN, generator=torch.Generator().manual_seed(7))
    state["base_model.model.model.embed_tokens.weight"] = embed  # pre-v5 name, as releases have it
    save_file(state, str(carried / "adapter_model.safetensors"))
    enc = R.load(str(carried), device="cpu")
    torch.testing.assert_close(enc.module.backbone.get_input_embeddings().weight, embed)
    assert np.abs(enc.embed(images[:2]) - encoder.embed(images[:2])).max() > 1e-4
    assert enc.fingerprint != encoder.fingerprint

    state["base_model.model.model.embed_tokens.weight"] = embed[:-1]
    save_file(state, str(carried / "adapter_model.safetensors"))
    with pytest.raises(RelsearchError, match="embed_tokens.weight has shape"):
        R.load(str(carried), device="cpu")


def test_growing_the_vocabulary_saves_the_new_rows(images, tmp_path):
    # No spare row in the base: <|query|> gets a freshly initialised embedding,
    # which only survives a round trip if the adapter carries the embeddings.
    base = tm.make_tiny_qwen_base(tmp_path / "base", vocab_size=len(tm.tiny_tokenizer(with_query=False)))
    fresh = R.new(str(base), device="cpu", seed=1)
    assert fresh.query_token_id == fresh.module.base_vocab_size
    fresh.save(str(tmp_path / "grown"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "grown" / "adapter_model.safetensors"), "pt") as f:
        assert any(k.endswith("embed_tokens.weight") for k in f.keys())
    loaded = R.load(str(tmp_path / "grown"), device="cpu")
    np.testing.assert_allclose(loaded.embed(images[:2]), fresh.embed(images[:2]), atol=1e-6)
    assert loaded.fingerprint == fresh.fingerprint


def test_captions_go_to_the_shared_text_space(encoder):
    """The real caption tower (all-MiniLM-L6-v2 from its PyPI package), owned by the encoder."""
    from relsearch.encoders.text import MiniLMTextEncoder

    caps = ["{Object}s arranged in a ring around a central {Center}", "a cat chasing a mouse"]
    got = encoder.embed_text(caps)
    assert got.shape == (2, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the owned tower may run on ONNX Runtime: the torch tower's vectors up to rounding
    np.testing.assert_allclose(got, MiniLMTextEncoder(device="cpu").embed_text(caps), atol=1e-3)
    assert float(got[0] @ got[1]) < 0.9  # different captions, different vectors
    tower = encoder._captions._tower
    encoder.embed_text(caps[:1])
    assert encoder._captions._tower is tower  # loaded once, kept by the encoder


def test_matches_the_reference_computation(encoder, images):
    """hidden_states[-1] at <|query|> through the full model, then the head, as the paper computes it."""
    batch = encoder.prepare(images[:3])
    with torch.no_grad():
        out = encoder.module.backbone(**batch, output_hidden_states=True, return_dict=True)
        last = out.hidden_states[-1]
        rows = torch.stack([last[i, (batch["input_ids"][i] == encoder.query_token_id).nonzero()[0, 0]]
                            for i in range(3)])
        ref = torch.nn.functional.normalize(encoder.module.projection(rows), dim=-1).numpy()
        # Without the modality ids the rope positions of the image tokens change.
        no_types = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
        moved = encoder.module(**no_types).numpy()
    np.testing.assert_allclose(encoder.embed(images[:3]), ref, atol=1e-5)
    assert np.abs(moved - ref).max() > 1e-4


def test_cli_end_to_end_three_columns(release, tmp_path):
    """`build-index --encoders relsim@DIR,clip@DIR,dino@DIR` then `query`: three columns, relsim first."""
    import json

    from engine_helpers import make_collection
    from tiny_models import make_tiny_clip, make_tiny_dino
    from typer.testing import CliRunner

    from relsearch.cli import app

    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 5, size=48)
    clip_dir, dino_dir = make_tiny_clip(tmp_path / "clip"), make_tiny_dino(tmp_path / "dino")
    runner = CliRunner()
    encs = f"relsim@{release},clip@{clip_dir},dino@{dino_dir}"
    res = runner.invoke(app, ["build-index", str(root), "--index", str(idx), "--encoders", encs, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["encoders"] == ["relsim", "clip", "dino"]
    res = runner.invoke(app, ["query", str(paths[1]), "-k", "3", "--index", str(idx), "--json"])
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)["results"]
    assert set(results) == {"relsim", "clip", "dino"}
    for hits in results.values():
        assert len(hits) == 3 and hits[0]["path"] == str(paths[1])
    table = runner.invoke(app, ["query", str(paths[1]), "-k", "3", "--index", str(idx)]).stdout
    header = next(line for line in table.splitlines() if line.startswith("rank"))
    assert header.index("relsim") < header.index("clip") and "dino" in header


def test_trainer_fine_tunes_relsim_into_a_loadable_release(release, images, tmp_path):
    """`relsearch train --encoder relsim@DIR` runs the shared trainer and writes the release layout."""
    import json

    from engine_helpers import run_cli

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    caps = ["{Object} nested inside {Container}", "the same {Object} repeated in a row, growing at every step",
            "{Object} facing its own reflection across a central line", "{Object}s piled on top of one another"]
    with open(data / "captions.jsonl", "w") as f:
        for i, (im, c) in enumerate(zip(images, caps)):
            im.save(data / "images" / f"{i}.png")
            f.write(json.dumps({"image": f"images/{i}.png", "caption": c}) + "\n")
    out = tmp_path / "out"
    rc = run_cli("train", *["--data", str(data / "captions.jsonl"), "--encoder", f"relsim@{release}", "--out", str(out),
               "--steps", "3", "--batch-size", "4", "--cache-views", "0", "--no-progress", "--device", "cpu",
               "--lr", "1e-2"])
    assert rc == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "projection_and_config.pt"):
        assert (out / name).is_file(), name
    before = R.load(str(release), device="cpu")
    after = R.load(str(out), device="cpu")
    assert after.fingerprint != before.fingerprint
    va, vb = after.embed(images[:2]), before.embed(images[:2])
    assert va.shape == (2, 384) and not np.allclose(va, vb, atol=1e-4)


def _cos_rows(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_default_embedding_is_the_released_procedure(release, encoder):
    """Square, wide (3:1) and tall (1:3): the library API embeds as relsim_score.py does, one image per call."""
    import relsearch
    from relsearch.encoders import get_encoder

    shapes = tm.aspect_images()
    imgs = list(shapes.values())
    ref = tm.official_relsim_vectors(encoder, imgs)
    model, preprocess = relsearch.relsim(str(release), device="cpu")
    by_spec = get_encoder(f"relsim@{release}", device="cpu")
    for got in (encoder.embed(imgs), encoder.embed_plain(imgs), model.embed(preprocess(imgs)), by_spec.embed(imgs)):
        cos = _cos_rows(got, ref)
        assert cos.min() >= 0.999, dict(zip(shapes, cos.round(5)))
    # a cap is the released embed's max_image_size
    capped = get_encoder(f"relsim@{release}?max_image_size=100", device="cpu")
    cos = _cos_rows(capped.embed(imgs), tm.official_relsim_vectors(encoder, imgs, max_image_size=100))
    assert cos.min() >= 0.999
    # the square crop is a deviation: it shows on the wide and the tall image
    square = get_encoder(f"relsim@{release}?square=1", device="cpu")
    cos = dict(zip(shapes, _cos_rows(square.embed(imgs), ref)))
    assert cos["wide"] < 0.999 and cos["tall"] < 0.999, cos


def test_sizing_is_part_of_the_fingerprint(release, encoder):
    from relsearch.encoders import get_encoder

    square = get_encoder(f"relsim@{release}?square=1", device="cpu")
    capped = get_encoder(f"relsim@{release}?max_image_size=448", device="cpu")
    plain = get_encoder(f"relsim@{release}?fast=0&micro_batch_size=2", device="cpu")
    assert square.options.square and capped.options.max_image_size == 448 and not plain.options.fast
    assert square.weights_fingerprint == capped.weights_fingerprint == encoder.weights_fingerprint
    prints = {encoder.fingerprint, square.fingerprint, capped.fingerprint, encoder.weights_fingerprint}
    assert len(prints) == 4 and all(len(p) == 16 for p in prints)
    assert plain.fingerprint == encoder.fingerprint  # the path and batch sizes give the same vectors


@pytest.mark.parametrize("query, message", [
    ("crop=1", r"unknown option 'crop=1' in the encoder spec; valid options: max_image_size=\.\.\."),
    ("square", "unknown option 'square'"),
    ("square=maybe", "option square takes 1 or 0, got 'maybe'"),
    ("max_image_size=big", "option max_image_size takes an integer"),
    ("max_image_size=3", "max_image_size must be an int >= 28"),
])
def test_spec_options_are_checked_before_loading(query, message, tmp_path):
    from relsearch.encoders import get_encoder

    with pytest.raises(RelsearchError, match=message):
        get_encoder(f"relsim@{tmp_path / 'not-a-release'}?{query}", device="cpu")


def test_build_index_stores_the_released_vectors_and_keeps_sizings_apart(release, encoder, tmp_path):
    """`build-index --encoders relsim@DIR`: the stored vectors are the released procedure's;
    `relsim@DIR?square=1` has its own fingerprint, is refused into that index and reloads for queries."""
    from PIL import Image
    from typer.testing import CliRunner

    from relsearch.cli import app
    from relsearch.indexdir import open_index

    shapes = tm.aspect_images(seed=9)
    root, idx, sq = tmp_path / "col", tmp_path / "idx", tmp_path / "sq"
    root.mkdir()
    for name, img in shapes.items():
        img.save(root / f"{name}.png")
    runner = CliRunner()
    res = runner.invoke(app, ["build-index", str(root), "--index", str(idx), "--encoders", f"relsim@{release}"])
    assert res.exit_code == 0, res.output
    with open_index(idx) as opened:
        assert opened.manifest.encoders["relsim"].fingerprint == encoder.fingerprint
        stored = {Path(rec.path).stem: opened.store.get_vectors("relsim", np.array([rec.id]), 384)[0]
                  for rec in opened.store.iter_records()}
    ref = tm.official_relsim_vectors(encoder, [Image.open(root / f"{name}.png") for name in shapes])
    cos = {name: float(stored[name] @ ref[i]) for i, name in enumerate(shapes)}
    assert min(cos.values()) >= 0.999, cos

    before = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    square_spec = f"relsim@{release}?square=1"
    res = runner.invoke(app, ["build-index", str(root), "--index", str(idx), "--encoders", square_spec])
    assert res.exit_code == 2 and "rebuild into a new --index path" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"} == before

    res = runner.invoke(app, ["build-index", str(root), "--index", str(sq), "--encoders", square_spec])
    assert res.exit_code == 0, res.output
    with open_index(sq) as opened:
        entry = opened.manifest.encoders["relsim"]
        assert entry.spec == square_spec and entry.fingerprint not in (encoder.fingerprint, encoder.weights_fingerprint)
    res = runner.invoke(app, ["query", str(root / "wide.png"), "-k", "2", "--index", str(sq), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"]["relsim"][0]["path"] == str(root / "wide.png")
