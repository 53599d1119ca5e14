"""``imagenet``: pooled EfficientNet-Lite0 features, an attribute-similarity baseline.

Global average pooling of the last feature map throws away *where* things are,
so this encoder matches on what is shown: exactly the attribute similarity the
relational encoders are compared against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders.base import fingerprint_tensors, frozen, l2_normalize, pick_device
from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


class ImagenetEncoder:
    name = "imagenet"
    kind = "attribute"
    dim = 1280
    image_size = 224

    def __init__(self, device: str | None = None, pretrained: bool = True, batch_size: int = 32) -> None:
        import torch

        from relsearch.encoders.backbones import efficientnet_lite0, fold_batchnorms

        self.device = pick_device(device)
        self.batch_size = batch_size
        self.model = frozen(efficientnet_lite0(pretrained=pretrained), self.device)
        if pretrained:  # hashing 18 MB of tensors is skipped when the weights file is unchanged
            from relsearch.encoders.backbones import pretrained_path
            from relsearch.home import cached_fingerprint, file_identity

            self._fingerprint = cached_fingerprint(
                f"imagenet/224|fp1|{file_identity(pretrained_path())}",
                lambda: fingerprint_tensors(self.model.state_dict().items(), extra="imagenet/224"))
        else:
            self._fingerprint = fingerprint_tensors(self.model.state_dict().items(), extra="imagenet/224")
        # after the fingerprint (it names the released weights): inference-only speed-ups
        self.model = fold_batchnorms(self.model).to(memory_format=torch.channels_last)
        self._torch = torch

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def preprocess_batch(self, images: list[Image.Image]):
        from relsearch.encoders.backbones import LITE_MEAN, LITE_STD, to_tensor_batch

        return to_tensor_batch(images, self.image_size, LITE_MEAN, LITE_STD)

    def preprocessor(self) -> Callable[[list[Image.Image]], Any]:
        """:meth:`preprocess_batch` without the model, picklable: Ray's CPU tasks run it."""
        from relsearch.encoders.backbones import LITE_MEAN, LITE_STD, to_tensor_batch

        return functools.partial(to_tensor_batch, size=self.image_size, mean=LITE_MEAN, std=LITE_STD)

    def embed_batch(self, x) -> np.ndarray:
        with self._torch.inference_mode():
            feats = self.model.extract_features(x.to(self.device).contiguous(memory_format=self._torch.channels_last))
            pooled = feats.mean(dim=(2, 3))
        return l2_normalize(pooled.float().cpu().numpy())

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self.embed_batch(self.preprocess_batch(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)


def load(source: str | None = None, device: str | None = None) -> ImagenetEncoder:
    if source is not None:
        raise RelsearchError("encoder 'imagenet' takes no @SOURCE (its weights ship with the package)")
    return ImagenetEncoder(device=device)
