"""The collection: find image files under a folder, hash them, decode them."""

from __future__ import annotations

from relsearch.collection.decode import (
    Decoded,
    DecodeError,
    decode_one,
    default_workers,
    iter_batches,
    iter_decoded,
    load_image,
)
from relsearch.collection.scan import (
    IMAGE_EXTENSIONS,
    FileEntry,
    ScanResult,
    is_image_name,
    scan,
    sha256_file,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DecodeError",
    "Decoded",
    "FileEntry",
    "ScanResult",
    "decode_one",
    "default_workers",
    "is_image_name",
    "iter_batches",
    "iter_decoded",
    "load_image",
    "scan",
    "sha256_file",
]
