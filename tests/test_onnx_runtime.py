"""The shipped encoders on ONNX Runtime: same vectors, same indexes, same fingerprints as torch."""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relsearch.encoders import get_encoder
from relsearch.encoders import onnx_runtime as rt
from relsearch.errors import RelsearchError

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parent.parent
PHOTO_DIRS = [Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers")]
CLIPART = Path("/usr/share/openclipart/png")
MIN_COSINE = 0.9999


def _photos(n: int) -> list[Path]:
    """Distinct photographs (a wallpaper package holds one picture at many sizes: one each)."""
    by_picture: dict[str, Path] = {}
    for p in sorted(p for d in PHOTO_DIRS if d.is_dir() for p in d.rglob("*.jpg")):
        by_picture.setdefault(str(p.parent) if p.parent.name == "images" else str(p), p)
    found = list(by_picture.values())
    if len(found) < 2:
        pytest.skip("no photographs installed (tools/setup.sh installs the wallpapers)")
    return found[-n:]  # the export checks the first ones: test others


def _clipart(n: int) -> list[Path]:
    found = sorted(CLIPART.rglob("*.png")) if CLIPART.is_dir() else []
    if not found:
        pytest.skip("no clip art installed (tools/setup.sh installs openclipart-png)")
    return found[5::131][:n]


def _resaved(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Photographs, the same re-saved as JPEG, clip art (alpha on white), and odd shapes."""
    from relsearch.collection import load_image

    photos = [load_image(p, max_side=800) for p in _photos(4)]
    art = [load_image(p, max_side=800) for p in _clipart(5)]
    odd = [Image.new("L", (31, 200), 90), Image.new("RGBA", (300, 40), (10, 200, 30, 128))]
    return [*photos, *[_resaved(p, 30) for p in photos[:2]], *art, *odd]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _torch(name: str):
    enc = get_encoder(name, device="cpu", runtime="torch")
    if hasattr(enc, "bf16"):
        enc.bf16 = False  # the graph computes in float32
    return enc


# -- preprocessing ---------------------------------------------------------------------------
def test_numpy_preprocessing_equals_the_torch_preprocessing(images) -> None:
    from relsearch.encoders.backbones import LITE_MEAN, LITE_STD, to_tensor_batch
    from relsearch.encoders.relsim_mini import RelsimMiniConfig, RelsimMiniEncoder

    crop = rt.crop_pixels(images, 224)
    assert crop.dtype == np.float32 and crop.shape == (len(images), 3, 224, 224)
    np.testing.assert_allclose(crop, to_tensor_batch(images, 224, LITE_MEAN, LITE_STD).numpy(), rtol=0, atol=1e-5)
    mini = RelsimMiniEncoder(RelsimMiniConfig(image_size=288, pretrained_backbone=False), device="cpu")
    squash = rt.squash_pixels(images, 288)
    np.testing.assert_allclose(squash, mini.preprocess_batch(images).numpy(), rtol=0, atol=1e-5)


# -- the shipped graphs ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(rt.GRAPHS))
def test_shipped_graph_is_up_to_date_with_the_torch_weights(name: str) -> None:
    """Fails when weights change without `relsearch export onnx` being run again."""
    path = rt.GRAPH_DIR / rt.GRAPHS[name]
    assert path.is_file(), f"{path} missing: run relsearch export onnx"
    info = rt.graph_info(rt.open_session(path))
    if name == "minilm":
        from relsearch.encoders.text import MiniLMTextEncoder

        torch_fp = MiniLMTextEncoder(device="cpu").fingerprint
    else:
        torch_fp = _torch(name).fingerprint
    assert (info.name, info.fingerprint) == (name, torch_fp)
    assert rt.source_mismatch(info) is None


@pytest.mark.parametrize("name", ["relsim-mini", "imagenet"])
def test_onnx_and_torch_encoders_agree_per_image(name: str, images) -> None:
    light, heavy = get_encoder(name, device="cpu", runtime="onnx"), _torch(name)
    assert light.runtime == "onnx" and not hasattr(heavy, "runtime")
    assert (light.name, light.dim, light.kind, light.fingerprint) == (heavy.name, heavy.dim, heavy.kind,
                                                                      heavy.fingerprint)
    a, b = light.embed(images), heavy.embed(images)
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = _cosines(a, b)
    assert cos.min() >= MIN_COSINE, cos
    # the pipelined path and the portable preprocessor give the same vectors
    np.testing.assert_allclose(light.embed_batch(light.preprocessor()(images[:3])), a[:3], atol=1e-6)


def test_caption_towers_agree_and_relsim_mini_searches_by_text() -> None:
    from relsearch.corpus.captions import TEMPLATES
    from relsearch.encoders.text import MiniLMTextEncoder, caption_tower

    texts = [t for options in TEMPLATES.values() for t in options] + ["", "word " * 300]
    light = caption_tower("cpu", runtime="onnx")
    heavy = MiniLMTextEncoder(device="cpu")
    assert light.runtime == "onnx" and light.fingerprint == heavy.fingerprint
    a, b = light.embed_text(texts), heavy.embed_text(texts)
    cos = _cosines(a, b)
    assert cos.min() >= MIN_COSINE, cos
    # nearest other caption is the same for every caption
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -2)
    np.fill_diagonal(sb, -2)
    assert np.array_equal(sa.argmax(1), sb.argmax(1))
    mini = get_encoder("relsim-mini", device="cpu", runtime="onnx")
    np.testing.assert_allclose(mini.embed_text(texts[:3]), a[:3], atol=1e-6)
    assert light.embed_text([]).shape == (0, 384)


# -- which runtime loads -----------------------------------------------------------------------
def test_runtime_selection(monkeypatch, caplog, tmp_path) -> None:
    monkeypatch.delenv(rt.RUNTIME_ENV, raising=False)
    assert get_encoder("imagenet").runtime == "onnx"  # auto, on a CPU
    monkeypatch.setenv(rt.RUNTIME_ENV, "torch")
    assert not hasattr(get_encoder("imagenet"), "runtime")
    monkeypatch.setenv(rt.RUNTIME_ENV, "tensorflow")
    with pytest.raises(RelsearchError, match="RELSEARCH_RUNTIME must be one of auto, torch, onnx"):
        get_encoder("imagenet")
    monkeypatch.setenv(rt.RUNTIME_ENV, "onnx")
    with pytest.raises(RelsearchError, match="runs on the CPU"):
        get_encoder("imagenet", device="cuda")
    assert get_encoder("tinycolor").name == "tinycolor"  # encoders without a graph load as always
    monkeypatch.delenv(rt.RUNTIME_ENV)
    monkeypatch.setattr(rt, "onnxruntime_installed", lambda: False)
    with caplog.at_level(logging.DEBUG, logger="relsearch.encoders.onnx_runtime"):
        assert not hasattr(get_encoder("imagenet"), "runtime")
    assert "onnxruntime is not installed" in caplog.text


def test_relsim_mini_at_a_folder_uses_the_graph_only_for_the_same_weights(tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(rt.RELSIM_MINI_DIR, same)
    shutil.copytree(rt.RELSIM_MINI_DIR, other)
    state = load_file(str(other / "model.safetensors"))
    key = sorted(k for k in state if k.startswith("head."))[0]
    state[key] = state[key] + np.float32(0.01)
    save_file(state, str(other / "model.safetensors"))
    assert get_encoder(f"relsim-mini@{same}", device="cpu").runtime == "onnx"
    trained = get_encoder(f"relsim-mini@{other}", device="cpu")
    assert not hasattr(trained, "runtime")  # torch: its weights are not the graph's
    assert trained.fingerprint != get_encoder("relsim-mini").fingerprint
    with pytest.raises(RelsearchError, match="differs from the weights the graph was exported from"):
        get_encoder(f"relsim-mini@{other}", device="cpu", runtime="onnx")


def test_a_damaged_graph_falls_back_to_torch_or_fails_in_one_line(tmp_path, monkeypatch) -> None:
    graphs = tmp_path / "onnx"
    graphs.mkdir()
    (graphs / "imagenet.onnx").write_bytes(b"not a graph")
    monkeypatch.setattr(rt, "GRAPH_DIR", graphs)
    assert not hasattr(get_encoder("imagenet", device="cpu"), "runtime")
    with pytest.raises(RelsearchError, match="cannot open"):
        get_encoder("imagenet", device="cpu", runtime="onnx")


def test_build_and_query_on_onnx_runtime_never_import_torch(tmp_path) -> None:
    from engine_helpers import make_collection

    make_collection(tmp_path / "col", n=4)
    code = (
        "import sys\n"
        "from relsearch.build import BuildOptions, build_index\n"
        "from relsearch.encoders import get_encoder\n"
        "from relsearch.composed import composed_query\n"
        "col, idx = sys.argv[1], sys.argv[2]\n"
        "build_index(col, idx, BuildOptions(progress=False, workers=1))\n"
        "res = composed_query(['text:a row of circles'], idx, k=2)\n"
        "assert list(res.results) == ['relsim-mini'], res.results\n"
        "res = composed_query([sorted(__import__('glob').glob(col + '/*.png'))[0]], idx, k=2)\n"
        "assert sorted(res.results) == ['imagenet', 'relsim-mini'], res.results\n"
        "assert all(get_encoder(n).runtime == 'onnx' for n in ('relsim-mini', 'imagenet'))\n"
        "from relsearch.threads import intra_op_threads\n"
        "assert intra_op_threads() == 1  # a query chose single-image threads for its sessions\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "col"), str(tmp_path / "idx")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- indexes built on either runtime ------------------------------------------------------------
def test_indexes_built_on_either_runtime_answer_alike_and_open_on_the_other(tmp_path, monkeypatch) -> None:
    from relsearch.build import BuildOptions, build_index
    from relsearch.composed import search_image
    from relsearch.query import Searcher

    col = tmp_path / "col"
    col.mkdir()
    for i, p in enumerate([*_photos(4), *_clipart(8)]):
        shutil.copy(p, col / f"{i:02d}{p.suffix}")
    built = {}
    for runtime in ("onnx", "torch"):
        monkeypatch.setenv(rt.RUNTIME_ENV, runtime)
        built[runtime] = tmp_path / f"index-{runtime}"
        build_index(col, built[runtime], BuildOptions(encoders="relsim-mini,imagenet", progress=False, workers=1))
    manifests = {r: json.loads((p / "manifest.json").read_text()) for r, p in built.items()}
    identity = {r: {n: {k: e[k] for k in ("spec", "fingerprint", "dim", "kind")} for n, e in m["encoders"].items()}
                for r, m in manifests.items()}
    assert identity["onnx"] == identity["torch"] and len(identity["onnx"]) == 2
    queries = [Image.open(p).convert("RGB") for p in sorted(col.iterdir())[::3]]
    answers = {}
    for runtime in ("onnx", "torch"):
        monkeypatch.setenv(rt.RUNTIME_ENV, runtime)
        for index in ("onnx", "torch"):  # each runtime opens both indexes
            with Searcher(built[index]) as s:
                answers[runtime, index] = [search_image(s, q, k=5).results for q in queries]
    base = answers["torch", "torch"]
    for key, got in answers.items():
        for mine, theirs in zip(got, base):
            assert mine.keys() == theirs.keys() == {"relsim-mini", "imagenet"}
            for name in theirs:  # the same top-k; near-ties may swap places (every vector moves a little)
                assert {h.path for h in mine[name]} == {h.path for h in theirs[name]}, (key, name)
                assert mine[name][0].path == theirs[name][0].path, (key, name)
                np.testing.assert_allclose([h.score for h in mine[name]], [h.score for h in theirs[name]], atol=1e-2)


# -- export -------------------------------------------------------------------------------------
def test_export_onnx_writes_a_checked_graph_and_refuses_bad_names(tmp_path, images) -> None:
    pytest.importorskip("onnx")
    from typer.testing import CliRunner

    from relsearch.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["export", "onnx", "--encoders", "clip", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no ONNX export for 'clip'" in bad.output
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("keep")
    bad = runner.invoke(app, ["export", "onnx", "--encoders", "imagenet", "--out", str(tmp_path / "file")])
    assert bad.exit_code == 2 and "cannot write graphs into" in bad.output
    assert (tmp_path / "file").read_text() == "keep"
    res = runner.invoke(app, ["export", "onnx", "--encoders", "imagenet", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    (report,) = json.loads(res.output[res.output.index("["):])
    assert report["min_cosine"] >= MIN_COSINE and report["weights"] in ("fp16", "fp32")
    graph = tmp_path / "imagenet.onnx"
    assert report["bytes"] == graph.stat().st_size < 15e6
    session = rt.open_session(graph)
    info = rt.graph_info(session)
    heavy = _torch("imagenet")
    assert info.fingerprint == heavy.fingerprint and rt.source_mismatch(info) is None
    light = rt.OnnxImageEncoder(session, info)
    assert _cosines(light.embed(images), heavy.embed(images)).min() >= MIN_COSINE


def test_onnx_encoders_declare_their_capabilities() -> None:
    from relsearch.encoders import base

    protocols = (base.Encoder, base.PipelinedEncoder, base.PortablePreprocessing, base.TextEncoder,
                 base.TrainableEncoder, base.FeatureCachingEncoder)
    caps = {name: {p.__name__ for p in protocols if isinstance(get_encoder(name, runtime="onnx"), p)}
            for name in ("relsim-mini", "imagenet")}
    assert caps == {"relsim-mini": {"Encoder", "PipelinedEncoder", "PortablePreprocessing", "TextEncoder"},
                    "imagenet": {"Encoder", "PipelinedEncoder", "PortablePreprocessing"}}
    pre = get_encoder("imagenet", runtime="onnx").preprocessor()
    assert pickle.loads(pickle.dumps(pre))([Image.new("RGB", (40, 30))]).shape == (1, 3, 224, 224)


def test_query_threads_reach_torch_when_a_torch_encoder_loads_later() -> None:
    code = (
        "import sys\n"
        "from relsearch.threads import use_query_threads\n"
        "use_query_threads()\n"
        "assert 'torch' not in sys.modules\n"
        "from relsearch.encoders import get_encoder\n"
        "get_encoder('imagenet', runtime='torch')\n"
        "print(sys.modules['torch'].get_num_threads())\n"
    )
    env = {**__import__("os").environ, "RELSEARCH_QUERY_THREADS": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_bench_throughput_times_both_runtimes_side_by_side(tmp_path) -> None:
    from typer.testing import CliRunner

    from relsearch.cli import app

    runner = CliRunner()
    base = ["bench", "throughput", "--encoders", "imagenet", "--n", "4", "--batch-size", "2", "--queries", "2",
            "--threads", "1", "--results-dir", str(tmp_path / "out")]
    bad = runner.invoke(app, [*base, "--runtimes", "torch,jax"])
    assert bad.exit_code == 2 and "--runtimes must list distinct runtimes" in bad.output
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, [*base, "--runtimes", "torch,onnx", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    encs = report["encoders"]
    assert list(encs) == ["imagenet:torch", "imagenet:onnx"]
    assert [encs[k]["runtime"] for k in encs] == ["torch", "onnx"]
    assert encs["imagenet:torch"]["fingerprint"] == encs["imagenet:onnx"]["fingerprint"]
    assert report["onnx_threads"] == 1 and all(e["raw_forward"]["images_per_s"] > 0 for e in encs.values())
