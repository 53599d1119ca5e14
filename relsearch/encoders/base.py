"""The encoder protocol every backbone is wrapped behind.

An encoder turns a list of PIL images into float32 unit vectors ``[N, dim]``.
``fingerprint`` identifies the weights (not the code) so an index built with one
set of weights refuses to be queried with another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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
        """Return float32 ``[len(images), dim]``, each row L2-normalised.

        Optional, for pipelined builds: ``preprocess(images) -> batch`` (CPU work,
        thread-safe, run one batch ahead in a helper thread) and
        ``embed_preprocessed(batch) -> np.ndarray``, with
        ``embed(x) == embed_preprocessed(preprocess(x))``.
        """
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


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else cuda, then mps, then cpu."""
    import torch

    if device:
        return device
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

    def train_module(self) -> torch.nn.Module:
        """The module whose ``requires_grad`` parameters are optimised (LoRA + head)."""
        ...

    def prepare(self, images: list[Image.Image], train: bool = False) -> dict[str, torch.Tensor]:
        """CPU preprocessing into a batch (runs in data-loader workers)."""
        ...

    def forward_train(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable forward: ``[B, dim]`` L2-normalised embeddings."""
        ...

    def save(self, out_dir: str) -> None:
        """Write the encoder's release layout so ``load(source=out_dir)`` reads it back."""
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
