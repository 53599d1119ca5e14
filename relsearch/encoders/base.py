"""The encoder protocols every backbone is wrapped behind.

An encoder turns a list of PIL images into float32 unit vectors ``[N, dim]``.
``fingerprint`` identifies the weights (not the code) so an index built with one
set of weights refuses to be queried with another.

Optional capabilities are declared protocols, checked with ``isinstance`` by the
build, the query, the trainer and the benchmarks (never by probing attributes);
each name has one meaning:

- :class:`Encoder`: ``embed(images)``, ``name``, ``dim``, ``kind``, ``fingerprint``.
- :class:`PipelinedEncoder`: ``preprocess_batch(images) -> batch`` (CPU, thread-safe:
  the build runs it one batch ahead) and ``embed_batch(batch)``.
- :class:`PortablePreprocessing`: a pipelined encoder whose ``preprocessor()`` returns
  ``preprocess_batch`` without the model, picklable (Ray's CPU tasks run it).
- :class:`TextEncoder`: ``embed_text(texts)`` into the same space (text queries).
- :class:`TrainableEncoder`: ``train_module``, ``prepare`` (training batches),
  ``forward_train``, ``save`` (what ``relsearch train`` needs).
- :class:`FeatureCachingEncoder`: a trainable encoder with a frozen part whose
  output ``cache_features`` computes once per image and view (``cache_fingerprint``).

``preprocess`` alone is only the dreamsim-style helper a factory such as
``relsearch.relsim()`` returns beside the model (PIL in, PIL out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from relsearch.errors import RelsearchError  # noqa: F401


@runtime_checkable
class Encoder(Protocol):
    """What the engine needs from an image encoder."""

    name: str
    dim: int
    #: "relational" or "attribute": the query view puts relational columns first.
    kind: str

    @property
    def fingerprint(self) -> str: ...

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Return float32 ``[len(images), dim]``, each row L2-normalised."""
        ...


@runtime_checkable
class PipelinedEncoder(Encoder, Protocol):
    """An encoder whose CPU preprocessing can run ahead of its forward pass."""

    def preprocess_batch(self, images: list[Image.Image]) -> Any:
        """CPU work (resize, normalise) into a batch; thread-safe."""
        ...

    def embed_batch(self, batch: Any) -> np.ndarray:
        """Unit vectors of a batch, with ``embed(x) == embed_batch(preprocess_batch(x))``."""
        ...


@runtime_checkable
class PortablePreprocessing(PipelinedEncoder, Protocol):
    """A pipelined encoder whose preprocessing can run in another process."""

    def preprocessor(self) -> Callable[[list[Image.Image]], Any]:
        """:meth:`preprocess_batch` without the model: a picklable callable."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """An encoder whose space is a caption space: text searches its index."""

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]`` unit rows in the encoder's own space."""
        ...


@dataclass(frozen=True)
class EncoderSpec:
    """``NAME`` or ``NAME@SOURCE`` as typed on the command line."""

    name: str
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"invalid encoder name {self.name!r}")
        if self.source is not None and not self.source:
            raise ValueError(f"empty source in encoder spec {self.name!r}@")

    @classmethod
    def parse(cls, text: str) -> EncoderSpec:
        text = text.strip()
        name, sep, source = text.partition("@")
        return cls(name=name.strip(), source=source.strip() if sep else None)

    def __str__(self) -> str:
        return self.name if self.source is None else f"{self.name}@{self.source}"


def parse_encoder_list(text: str) -> list[EncoderSpec]:
    """Parse ``a,b@src,c`` into specs; duplicates are an error."""
    specs = [EncoderSpec.parse(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ValueError("no encoder given")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"encoder listed twice: {', '.join(dupes)}")
    return specs


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]], extra: str = "") -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (first 16 hex chars).

    Hashing the actual bytes (not file names or mtimes) means two copies of the
    same weights agree and a fine-tuned copy does not.
    """
    h = hashlib.sha256(extra.encode())
    for key, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        # bf16 has no numpy dtype: view the raw bytes as int16 instead.
        if t.dtype.is_floating_point and t.element_size() == 2:
            h.update(t.view(dtype=__import__("torch").int16).numpy().tobytes())
        else:
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


#: The torch device types relsearch runs its models on (``--device``).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: str) -> str:
    """``device`` checked against this machine: a bad name raises :class:`RelsearchError`;
    ``cuda``/``mps`` on a machine without one falls back to ``cpu`` with a logged warning
    (as a GPU copy of a FAISS index does); ``cuda:N`` past the last GPU raises."""
    import logging
    import re

    from relsearch.errors import RelsearchError
    from relsearch.extras import missing, require

    text = device.strip()
    if missing("torch"):  # the core runs on ONNX Runtime, on the CPU only
        named = re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", text)
        if named is None:
            raise RelsearchError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
        if named.group(1) == "cpu":
            return text
        require("torch", f"--device {text}")
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise RelsearchError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available()}
    if not available[parsed.type]:
        logging.getLogger(__name__).warning("device %s is not available on this machine, using the CPU", text)
        return "cpu"
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise RelsearchError(f"device {text} does not exist: this machine has {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1})")
    return text


def pick_device(device: str | None = None) -> str:
    """``device`` if given (checked by :func:`check_device`), else cuda, then mps, then cpu."""
    import torch

    if device:
        return check_device(device)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


@runtime_checkable
class TrainableEncoder(Protocol):
    """What the trainer (``relsearch.train``) needs from a relational encoder.

    relsim (Qwen2.5-VL + LoRA) and relsim-mini (EfficientNet-Lite0 + LoRA) both
    implement it, so one trainer fine-tunes either.
    """

    name: str
    dim: int
    #: torch device the module lives on (where training batches go).
    device: str

    @property
    def fingerprint(self) -> str: ...

    def train_module(self) -> torch.nn.Module:
        """The module whose ``requires_grad`` parameters are optimised (LoRA + head)."""
        ...

    def prepare(self, images: list[Image.Image], train: bool = False,
                generator: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """CPU preprocessing into a training batch; ``train`` augments, drawing from
        ``generator`` (so augmentations replay exactly on resume)."""
        ...

    def forward_train(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable forward: ``[B, dim]`` L2-normalised embeddings."""
        ...

    def save(self, out_dir: str) -> None:
        """Write the encoder's release layout so ``load(source=out_dir)`` reads it back."""
        ...


@runtime_checkable
class FeatureCachingEncoder(TrainableEncoder, Protocol):
    """A trainable encoder with a frozen part the trainer computes once and caches."""

    @property
    def cache_fingerprint(self) -> str:
        """Identifies what :meth:`cache_features` computes (frozen weights, input size, precision)."""
        ...

    def cache_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The frozen part's output for a ``prepare`` batch; ``forward_train`` accepts it."""
        ...


def frozen(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` on ``device``, in eval mode, with every parameter frozen."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def embed_in_batches(images: list[Image.Image], dim: int, batch_size: int,
                     forward: Callable[[list[Image.Image]], torch.Tensor]) -> np.ndarray:
    """Run ``forward`` over ``images`` in batches under inference mode; unit float32 rows."""
    import torch

    if not images:
        return np.zeros((0, dim), dtype=np.float32)
    with torch.inference_mode():
        parts = [forward(images[i : i + batch_size]).float().cpu().numpy()
                 for i in range(0, len(images), batch_size)]
    return l2_normalize(np.concatenate(parts, axis=0))
