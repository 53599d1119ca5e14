"""Identity of relsim weights: the fingerprint an index records for its relsim column.

Cheap (1-D tensors of the base, the LoRA tensors, the head) and independent of dtype
and device, so the same release loaded on CPU or GPU opens the same index. The
recorded fingerprint also names how images are sized (:func:`inference_fingerprint`):
the same weights with the square crop give other vectors, and an index built one way
must refuse the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relsearch.encoders.base import fingerprint_tensors
from relsearch.encoders.relsim.release import EMBED_DIM

if TYPE_CHECKING:  # pragma: no cover
    import torch


def base_identity(base_dir: Path, query_id: int, adapter_state: dict[str, torch.Tensor]) -> str:
    """Identify the base weights cheaply and independently of dtype and device.

    Hashes the model config's shape fields, every 1-D tensor (norms, biases) of
    the base checkpoint as stored on disk, and the ``<|query|>`` embedding row
    (from the adapter when it carries embeddings, else from the base).
    """
    from safetensors import safe_open

    cfg = json.loads((base_dir / "config.json").read_text())
    keep = {k: v for k, v in sorted(cfg.items()) if isinstance(v, (int, str, list, dict)) and k not in
            {"transformers_version", "torch_dtype", "dtype", "_name_or_path", "architectures"}}
    named: list[tuple[str, torch.Tensor]] = []
    query_row = None
    for emb_key, value in adapter_state.items():
        if emb_key.endswith("embed_tokens.weight"):
            query_row = value[query_id]
    for shard in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                if len(shape) == 1:
                    named.append((key, f.get_tensor(key).float()))
                elif query_row is None and key.endswith("embed_tokens.weight") and query_id < shape[0]:
                    query_row = f.get_slice(key)[query_id : query_id + 1].float()[0]
    named.sort(key=lambda kv: kv[0])
    if query_row is not None:
        named.append(("query_row", query_row.float()))
    return fingerprint_tensors(named, extra=json.dumps(_strip_volatile(keep), sort_keys=True, default=str))


def _strip_volatile(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if kk not in {"transformers_version", "torch_dtype", "dtype",
                                                              "_name_or_path"}}
        out[k] = v
    return out


def release_fingerprint(lora: Any, projection: Any, query_id: int, identity: str) -> str:
    lora_items = sorted(((k, v.float()) for k, v in lora), key=lambda kv: kv[0])
    proj_items = sorted(((f"projection.{k}", v.float()) for k, v in projection), key=lambda kv: kv[0])
    return fingerprint_tensors(lora_items + proj_items, extra=f"relsim/{EMBED_DIM}/q{query_id}/base:{identity}")


def inference_fingerprint(weights: str, preprocessing: str) -> str:
    """The fingerprint of ``weights`` used with the image sizing described by ``preprocessing``."""
    return hashlib.sha256(f"{weights}|{preprocessing}".encode()).hexdigest()[:16]
