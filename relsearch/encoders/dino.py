"""``dino``: the DINOv2 CLS token, an attribute-similarity baseline.

``dino`` loads ``facebook/dinov2-large`` from the local HF cache;
``dino@PATH_OR_ID`` any Dinov2 checkpoint in HF format (a local directory or a
cached hub id). The image processor saved with the weights does the
preprocessing, and the embedding is the CLS token of the last hidden state, as
in the paper's baseline.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders import hub
from relsearch.encoders.base import embed_in_batches, fingerprint_tensors, frozen, pick_device
from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_SOURCE = "facebook/dinov2-large"
_REQUIRED = ["config.json", "preprocessor_config.json"]
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class DinoEncoder:
    name = "dino"
    kind = "attribute"

    def __init__(self, model: Any, processor: Any, device: str, identity: str, batch_size: int = 32) -> None:
        self.model = frozen(model, device)
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)
        # The processor settings change the vectors as much as the weights do.
        extra = f"dino/cls/{identity}/{json.dumps(processor.to_dict(), sort_keys=True, default=str)}"
        self._fingerprint = fingerprint_tensors(self.model.state_dict().items(), extra=extra)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        def forward(chunk: list[Image.Image]) -> torch.Tensor:
            pixels = self.processor(images=[img.convert("RGB") for img in chunk], return_tensors="pt")["pixel_values"]
            return self.model(pixel_values=pixels.to(self.device)).last_hidden_state[:, 0]

        return embed_in_batches(images, self.dim, self.batch_size, forward)


def load(source: str | None = None, device: str | None = None) -> DinoEncoder:
    """Build the DINOv2 encoder from a local directory or a cached hub id."""
    from transformers import AutoImageProcessor, Dinov2Model

    source = source or DEFAULT_SOURCE
    what = f"dino {source!r}"
    folder = hub.resolve_dir(source, _REQUIRED, what)
    if not any((folder / w).is_file() for w in _WEIGHTS):
        command = hub.fetch_command(source) if hub.looks_like_hub_id(source) else None
        raise hub.missing_weights(what, [" or ".join(_WEIGHTS)], str(folder), command)
    try:
        model = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RelsearchError(f"dino: cannot load {folder}: {' '.join(str(exc).split())[:300]}") from exc
    return DinoEncoder(model, processor, pick_device(device), identity=model.config.model_type)
