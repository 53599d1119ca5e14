"""Inference settings of the relsim encoder, and how an encoder spec carries them.

``relsim@SOURCE?square=1&max_image_size=448`` loads ``SOURCE`` with those settings; the
spec (options included) is what an index manifest records, so a query reloads the
encoder exactly as the build used it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: No cap: the released inference script leaves the size to the checkpoint's processor.
DEFAULT_MAX_IMAGE_SIZE: int | None = None

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class RelsimOptions:
    """Inference settings that do not change the weights.

    The defaults embed as the released inference script does: the image keeps its
    aspect ratio and is sized by the checkpoint's own processor (``min_pixels`` /
    ``max_pixels``, sides multiples of 28). ``max_image_size`` caps the longer side
    first (the script's own ``max_image_size`` argument, LANCZOS); ``square`` centre-crops
    every image to one square instead (the paper's 448 px training crop; a deviation from
    the released inference). ``micro_batch_size`` images go through one forward of the
    plain path, ``fast_batch_size`` through one of the fast path; ``dtype`` None means
    bfloat16 on CUDA and float32 elsewhere.
    """

    max_image_size: int | None = DEFAULT_MAX_IMAGE_SIZE
    micro_batch_size: int = 8
    dtype: str | None = None
    #: Centre-crop to a ``max_image_size`` (default 448) square: one grid for every
    #: image. Changes the vectors, so it is part of the encoder's fingerprint.
    square: bool = False
    #: Embed through :mod:`relsearch.encoders.relsim.fast` (merged LoRA, images bucketed
    #: by patch grid, no padding). False runs the plain processor path.
    fast: bool = True
    fast_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.max_image_size is not None and (not isinstance(self.max_image_size, int)
                                                or self.max_image_size < 28):
            raise ValueError(f"max_image_size must be an int >= 28 or None, got {self.max_image_size!r}")
        if not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive int, got {self.micro_batch_size!r}")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))} or None, got {self.dtype!r}")
        if not isinstance(self.fast_batch_size, int) or self.fast_batch_size < 1:
            raise ValueError(f"fast_batch_size must be a positive int, got {self.fast_batch_size!r}")

    def torch_dtype(self, device: str) -> torch.dtype:
        import torch

        if self.dtype is not None:
            return getattr(torch, _DTYPES[self.dtype])
        return torch.bfloat16 if device.startswith("cuda") else torch.float32

    def with_query(self, query: str) -> RelsimOptions:
        """These options updated by ``key=value&key=value`` (the part of a spec after ``?``)."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for part in filter(None, query.split("&")):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if key not in known or not sep:
                raise RelsearchError(f"relsim: unknown option {part!r} in the encoder spec; valid options: "
                                     f"{', '.join(f'{k}=...' for k in known)}")
            changes[key] = _parse_value(key, value, getattr(self, key))
        try:
            return replace(self, **changes)
        except ValueError as exc:
            raise RelsearchError(f"relsim: {exc}") from exc


def _parse_value(key: str, value: str, current: Any) -> Any:
    low = value.lower()
    if isinstance(current, bool):
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise RelsearchError(f"relsim: option {key} takes 1 or 0, got {value!r}")
    if key == "dtype":
        return None if low in ("", "auto", "none") else low
    if key == "max_image_size" and low in ("", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise RelsearchError(f"relsim: option {key} takes an integer, got {value!r}") from None


def split_source(source: str | None) -> tuple[str | None, str]:
    """``"DIR?square=1"`` -> ``("DIR", "square=1")``; an existing path containing ``?`` stays whole."""
    if source is None or "?" not in source or Path(source).exists():
        return source, ""
    path, _, query = source.rpartition("?")
    return (path or None), query
