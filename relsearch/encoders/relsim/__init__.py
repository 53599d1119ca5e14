"""``relsim``: the relational visual similarity encoder (Qwen2.5-VL + LoRA).

``model`` holds the encoder and its factories (:func:`load`, :func:`new`, :func:`relsim`),
``options`` its inference settings (and ``relsim@SOURCE?square=1`` specs), ``pixels`` how
an image is sized (as the released inference script does, or the square crop),
``fast`` the batched inference path, ``release`` reads, validates and writes the
released checkpoint layout, ``identity`` computes the fingerprint an index records.
"""

from relsearch.encoders.relsim.model import (
    DEFAULT_MAX_IMAGE_SIZE,
    RelsimEncoder,
    RelsimOptions,
    load,
    new,
    relsim,
    relsim_module_class,
)
from relsearch.encoders.relsim.release import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DEFAULT_BASE,
    DEFAULT_SOURCE,
    EMBED_DIM,
    LORA_SETTINGS,
    PROJECTION_FILE,
    QUERY_TOKEN,
    RELEASE_FILES,
    write_release,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_BASE",
    "DEFAULT_MAX_IMAGE_SIZE",
    "DEFAULT_SOURCE",
    "EMBED_DIM",
    "LORA_SETTINGS",
    "PROJECTION_FILE",
    "QUERY_TOKEN",
    "RELEASE_FILES",
    "RelsimEncoder",
    "RelsimOptions",
    "load",
    "new",
    "relsim",
    "relsim_module_class",
    "write_release",
]
