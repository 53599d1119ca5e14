"""LoRA for inference without peft: fold saved adapters into plain conv weights.

peft is what *trains* the adapters (``inject_adapter_in_model``), but importing it
pulls in transformers and costs seconds on every cold start, only for inference to
fold the adapters away again. A saved LoRA pair is two small tensors per adapted
layer, ``<layer>.lora_A.<adapter>.weight`` ``[r, in, kh, kw]`` and
``<layer>.lora_B.<adapter>.weight`` ``[out, r, 1, 1]``; the merged weight is
``W + (alpha / r) * B @ A`` (peft's own rule for convolutions, plain LoRA without
rsLoRA or DoRA), which this module applies with plain torch.

The weight fingerprint of an index is taken over the *peft* model's state dict
(``<layer>.base_layer.weight`` plus the adapter tensors), so :func:`peft_named_state`
rebuilds exactly those names from a plain model and the saved adapters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

_LORA_KEY = re.compile(r"^(?P<layer>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


@dataclass
class LoraPair:
    """One adapted layer's saved adapter."""

    a: torch.Tensor  # [r, in, kh, kw]
    b: torch.Tensor  # [out, r, 1, 1]
    adapter: str = "default"

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def split_lora_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, LoraPair], dict[str, torch.Tensor]]:
    """``state`` -> (adapters by layer name, every other tensor). Raises ``ValueError`` on a half pair."""
    halves: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m is None:
            rest[key] = value
            continue
        halves.setdefault(m["layer"], {})[m["ab"]] = (m["adapter"], value)
    pairs = {}
    for layer, ab in halves.items():
        if set(ab) != {"A", "B"} or ab["A"][0] != ab["B"][0]:
            raise ValueError(f"LoRA layer {layer} has an incomplete adapter pair ({', '.join(sorted(ab))})")
        a, b = ab["A"][1], ab["B"][1]
        if a.dim() != 4 or b.dim() != 4 or b.shape[1] != a.shape[0] or tuple(b.shape[2:]) != (1, 1):
            raise ValueError(f"LoRA layer {layer}: A {tuple(a.shape)} and B {tuple(b.shape)} are not a conv pair")
        pairs[layer] = LoraPair(a=a, b=b, adapter=ab["A"][0])
    return pairs, rest


def delta_weight(pair: LoraPair, alpha: float) -> torch.Tensor:
    """``(alpha / r) * B @ A`` shaped like the conv weight ``[out, in, kh, kw]``, in float32."""
    a, b = pair.a.float(), pair.b.float()
    return torch.einsum("or,rihw->oihw", b[:, :, 0, 0], a) * (alpha / pair.rank)


def merge_lora_(model: nn.Module, pairs: dict[str, LoraPair], alpha: float) -> None:
    """Add each adapter's delta to its conv in place (``model``: the plain, un-injected module)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer, pair in pairs.items():
            conv = modules.get(layer)
            if not isinstance(conv, nn.Conv2d):
                raise ValueError(f"LoRA layer {layer} is not a Conv2d of the model")
            delta = delta_weight(pair, alpha)
            if conv.groups != 1 or tuple(delta.shape) != tuple(conv.weight.shape):
                raise ValueError(f"LoRA layer {layer}: delta {tuple(delta.shape)} does not fit the conv "
                                 f"weight {tuple(conv.weight.shape)} (groups {conv.groups})")
            conv.weight.add_(delta.to(conv.weight.dtype))


def peft_named_state(plain_state: dict[str, torch.Tensor], pairs: dict[str, LoraPair]) -> dict[str, torch.Tensor]:
    """The state dict peft's injected model would have: adapted convs under ``base_layer``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in plain_state.items():
        layer, _, leaf = key.rpartition(".")
        out[f"{layer}.base_layer.{leaf}" if layer in pairs else key] = value
    for layer, pair in pairs.items():
        out[f"{layer}.lora_A.{pair.adapter}.weight"] = pair.a
        out[f"{layer}.lora_B.{pair.adapter}.weight"] = pair.b
    return out
