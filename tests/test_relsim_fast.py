"""relsim's fast path on the tiny random-init release: same vectors as the plain path and the released procedure."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tiny_models import aspect_images, make_tiny_relsim, official_relsim_vectors, tiny_images  # noqa: E402

from relsearch.encoders.relsim import RelsimOptions, load  # noqa: E402
from relsearch.encoders.relsim.fast import fixed_side, patchify, square_crop  # noqa: E402


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_relsim(tmp_path_factory.mktemp("relsim-fast"), seed=3)


@pytest.fixture()
def encoder(release):
    return load(str(release), device="cpu", options=RelsimOptions(micro_batch_size=3))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_square_crop_keeps_the_centre():
    from PIL import Image

    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red middle third
    out = square_crop(img, 56)
    assert out.size == (56, 56)
    arr = np.asarray(out)
    assert arr[28, 28, 0] > 200 and arr[28, 28, 1] < 50  # centre is red
    assert square_crop(Image.new("L", (20, 90)), 28).mode == "RGB"


def test_patchify_matches_the_qwen_processor(encoder):
    ip = encoder.processor.image_processor
    side = fixed_side(ip, 448)
    assert side % 28 == 0 and side <= 448
    imgs = [square_crop(im, side) for im in tiny_images(3, seed=5)]
    ours = patchify(np.stack([np.asarray(im) for im in imgs]), ip)
    theirs = ip(images=imgs, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs.float(), atol=1e-5)
    # a wide image already on the processor's grid: no resize, the same patches
    wide = encoder.fit(aspect_images()["wide_small"])
    assert wide.size == (140, 56)
    ours = patchify(np.stack([np.asarray(wide)]), ip)
    assert torch.allclose(ours, ip(images=[wide], return_tensors="pt")["pixel_values"].float(), atol=1e-5)


def test_fast_path_equals_plain_path_on_the_same_pixels(encoder):
    imgs = [encoder.fit(im) for im in tiny_images(5, seed=7)]
    plain = encoder.embed_plain(imgs)
    quick = encoder.embed_fast(imgs, batch_size=4)
    cos = _cos(plain, quick)
    assert cos.min() >= 0.9999, cos
    assert np.allclose(np.linalg.norm(quick, axis=1), 1.0, atol=1e-5)


def test_default_embed_uses_the_fast_path_and_batching_does_not_change_vectors(encoder, release):
    imgs = tiny_images(5, seed=11) + list(aspect_images(seed=2).values())
    together = encoder.embed(imgs)
    alone = np.concatenate([encoder.embed([im]) for im in imgs])
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(together, encoder.embed_fast(imgs, batch_size=4), atol=1e-5)
    # the plain path (processor, padded batches) sizes images the same way ...
    assert _cos(together, encoder.embed_plain(imgs)).min() >= 0.9999
    # ... and both are the released one-image-at-a-time procedure
    assert _cos(together, official_relsim_vectors(encoder, imgs)).min() >= 0.9999
    # the square crop is another encoding, on the fast and the plain path alike
    square = load(str(release), device="cpu", options=RelsimOptions(square=True))
    cropped = square.embed(imgs)
    assert _cos(cropped, square.embed_plain(imgs)).min() >= 0.9999
    assert _cos(together, cropped).min() < 0.999


def test_a_mixed_batch_is_grouped_by_grid_in_one_prepare(encoder):
    shapes = aspect_images(seed=4)
    imgs = [shapes["wide"], shapes["square"], shapes["tall"], shapes["wide"], shapes["square_small"]]
    batch = encoder.preprocess_batch(imgs)
    groups = {size: rows for size, rows, _ in batch["groups"]}
    assert groups == {(56, 168): [0, 3], (112, 112): [1], (168, 56): [2], (56, 56): [4]}
    for (h, w), rows, values in batch["groups"]:
        assert values.shape[0] == len(rows) * (h // 14) * (w // 14)
    vecs = encoder.embed_batch(batch)
    assert np.allclose(vecs[0], vecs[3], atol=1e-5)
    np.testing.assert_allclose(vecs, encoder.embed_plain(imgs), atol=1e-4)
    # one grid per batch with the square crop
    encoder.options = RelsimOptions(square=True)
    assert len(encoder.preprocess_batch(imgs)["groups"]) == 1


def test_images_the_processor_still_resizes_take_its_own_pixels(encoder):
    from PIL import Image

    # 100x300 stays 112x308 after process_vision_info's sizing; the tiny budget makes it 56x168
    tall = encoder.fit(aspect_images()["tall"])
    assert tall.size == (112, 308)
    on_grid = tall.resize((56, 168), Image.BICUBIC)
    batch = encoder.fast().prepare_fitted([tall, on_grid])
    ((size, rows, values),) = batch["groups"]
    assert size == (168, 56) and rows == [0, 1]
    ip = encoder.processor.image_processor
    half = values.shape[0] // 2
    assert torch.allclose(values[:half], ip(images=[tall], return_tensors="pt")["pixel_values"].float(), atol=1e-6)
    assert torch.allclose(values[half:], patchify(np.stack([np.asarray(on_grid)]), ip), atol=1e-6)


def test_merged_lora_equals_unmerged(encoder):
    fast = encoder.fast()
    imgs = [encoder.fit(im) for im in tiny_images(4, seed=13)]
    merged = encoder.embed_fast(imgs)
    assert encoder.lora_merged
    encoder.unmerge_lora()
    assert not encoder.lora_merged
    batch = fast.prepare(imgs)
    with torch.inference_mode(), fast._installed(merge=False):
        unmerged = fast.forward(batch).numpy()
    assert _cos(merged, unmerged).min() >= 0.9999
    # and the adapter is not a no-op: without it the vectors move
    backbone = encoder.module.backbone
    with backbone.disable_adapter(), torch.inference_mode(), fast._installed(merge=False):
        bare = fast.forward(batch).numpy()
    assert _cos(merged, bare).min() < 0.999


@pytest.mark.parametrize("size", [(112, 112), (84, 56), (56, 196)])
def test_batched_window_attention_equals_the_per_window_loop(encoder, size):
    from PIL import Image

    fast = encoder.fast()
    visual = encoder.module.backbone.get_base_model().model.visual
    # 112x112: 4 equal windows; 84x56 and 56x196: windows of two lengths (grid not a multiple of the window)
    imgs = [im.resize(size, Image.BICUBIC) for im in tiny_images(3, seed=17)]
    ((grid_size, _, values),) = fast.prepare_fitted(imgs)["groups"]
    prompt = fast.prompt_for(*grid_size)
    grid = prompt.grid_thw.expand(3, -1)
    with torch.inference_mode():
        loop = visual(values, grid_thw=grid).pooler_output
        with fast._installed(merge=False):
            batched = visual(values, grid_thw=grid).pooler_output
            fast._state["grid"] = grid_size  # as forward_group sets it: the plan is cached per grid
            cached = [visual(values, grid_thw=grid).pooler_output for _ in range(2)]
            fast._state["grid"] = None
    for out in [batched, *cached]:
        assert torch.allclose(loop, out, atol=1e-5)
    assert any(key[0] == grid_size for key in fast._plans)
    # the patch is removed again after the call
    assert "forward" not in vars(visual.blocks[0].attn)


def test_training_after_fast_embedding_unmerges_and_keeps_the_fingerprint(encoder):
    before = encoder.fingerprint
    encoder.embed(tiny_images(2))
    assert encoder.lora_merged
    encoder.train_module()
    assert not encoder.lora_merged
    assert encoder.fingerprint == before


def test_bench_relsim_tiny_on_cpu_writes_the_result_contract(tmp_path):
    from relsearch.bench.relsim_speed import RelsimBenchConfig, run

    result = run(RelsimBenchConfig(device="cpu", arch="tiny", batch_sizes=(1, 4), images=8, paper_images=2,
                                   equivalence_images=8))
    assert [r["batch"] for r in result["runs"]] == [1, 4]
    assert result["sizing"] == "aspect" and set(result["sizings"]) == {"aspect", "square"}
    for name, part in result["sizings"].items():
        for r in part["runs"]:
            assert r["img_per_s"] > 0 and 0.0 < r["vision_share"] <= 1.0
        assert part["paper_procedure"]["img_per_s"] > 0
        assert part["equivalence"]["min_cosine"] >= 0.9999, name
    # the bench's images hold several shapes: several grids unless cropped
    assert result["sizings"]["aspect"]["grids"] > 1 and result["sizings"]["square"]["grids"] == 1
    assert result["sizings"]["aspect"]["runs"][1]["forwards"] > result["sizings"]["square"]["runs"][1]["forwards"]
    assert set(result["packages"]) >= {"torch", "transformers", "peft"}
    json.dumps(result)  # serialisable as written


def test_full_architecture_file_has_the_published_shapes():
    from relsearch.bench import relsim_synthetic as synthetic

    arch = synthetic.read_arch()
    text, vision = arch["text_config"], arch["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
            text["num_key_value_heads"], text["intermediate_size"]) == (3584, 28, 28, 4, 18944)
    assert (vision["depth"], vision["hidden_size"], vision["patch_size"], vision["spatial_merge_size"]) == (
        32, 1280, 14, 2)
    assert sum(text["rope_parameters"]["mrope_section"]) * 2 == text["hidden_size"] // text["num_attention_heads"]
    # and it builds (on the meta device: shapes only, no memory)
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = synthetic.qwen_config(arch, synthetic.tokenizer())
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    assert 8.2e9 < n < 8.4e9  # Qwen2.5-VL-7B has 8.29B parameters


def test_end_to_end_release_on_disk_builds_an_index(tmp_path):
    """The GPU benchmark's end-to-end step, on the tiny architecture: a written release loads through build-index."""
    from relsearch.bench.relsim_speed import end_to_end

    out = end_to_end("tiny", 6, tmp_path, "cpu", batch_size=4)
    assert out["images"] == 6 and out["img_per_s"] > 0
    assert (tmp_path / "index" / "manifest.json").is_file()
