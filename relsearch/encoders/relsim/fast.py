"""relsim's inference fast path: one fixed square grid, merged LoRA, batched window attention.

The plain path (:meth:`RelsimEncoder.embed`) follows the reference pipeline: each
image keeps its aspect ratio, the Qwen2-VL processor patches it, a batch is padded
to its longest prompt, and the language model's 3-D rope positions are computed
sample by sample. On a GPU that costs more than the model: padding, a Python loop
per sample, and one attention call per vision window.

The fast path gives the same vectors on the same inputs (tests check cosine >= 0.9999
in float32) and changes only how they are computed:

- every image is resized (shorter side) and centre-cropped to one square side, by
  default 448 px, the paper's training crop; then every image has the same number of
  visual tokens, a batch needs no padding, and the prompt, its rope positions and the
  place of ``<|query|>`` are the same for every row: they are computed once;
- pixels are normalised and cut into patches with torch, in the Qwen2-VL image
  processor's layout, on CPU worker threads (pinned memory on CUDA);
- the LoRA update is merged into ``q_proj`` / ``v_proj`` (``W + s * B @ A``), exact up
  to rounding, and unmerged again if training starts;
- the vision tower's windowed attention runs as one batched SDPA over all windows of
  the batch (a 448 px square has 16 windows of 64 patches each) instead of one call per
  window; full-attention blocks batch over images the same way;
- only the decoder body runs (no language-model head over 152k entries), no per-layer
  hidden states are kept, and the last hidden state is read at ``<|query|>`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: The paper's training crop.
DEFAULT_SIDE = 448


def fixed_side(image_processor: Any, requested: int = DEFAULT_SIDE) -> int:
    """The square side the processor would keep for a ``requested`` x ``requested`` image.

    A multiple of patch x merge (28 px for Qwen2.5-VL) within the processor's pixel
    budget: 448 stays 448 with the released processor; a tiny test processor with a
    small budget gets a smaller square.
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    min_px, max_px = pixel_budget(image_processor)
    h, w = smart_resize(requested, requested, factor=factor, min_pixels=min_px, max_pixels=max_px)
    if h != w:  # pragma: no cover - smart_resize scales both sides alike
        raise RelsearchError(f"relsim: the processor turns a square into {w}x{h}")
    return int(h)


def pixel_budget(image_processor: Any) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` of a Qwen2-VL image processor, old or new config layout."""
    size = image_processor.size
    min_px = getattr(size, "shortest_edge", None) or getattr(image_processor, "min_pixels", None)
    max_px = getattr(size, "longest_edge", None) or getattr(image_processor, "max_pixels", None)
    if isinstance(size, dict):
        min_px = min_px or size.get("shortest_edge")
        max_px = max_px or size.get("longest_edge")
    if not min_px or not max_px:
        raise RelsearchError("relsim: the image processor states no pixel budget (min/max pixels)")
    return int(min_px), int(max_px)


def square_crop(img: Image.Image, side: int) -> Image.Image:
    """RGB, shorter side resized to ``side`` (bicubic), centre crop ``side`` x ``side``."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - side) // 2, (nh - side) // 2
    if (nw, nh) != (side, side):
        img = img.crop((left, top, left + side, top + side))
    return img


def patchify(pixels: np.ndarray, image_processor: Any) -> torch.Tensor:
    """uint8 ``[B, S, S, 3]`` -> float32 ``[B * g * g, C * T * P * P]`` in the processor's layout.

    Rescale to [0, 1], normalise with the processor's mean/std, then group patches
    merge-window by merge-window with each patch repeated over the temporal axis,
    exactly as the Qwen2-VL image processor flattens a still image.
    """
    import torch

    p = int(image_processor.patch_size)
    m = int(image_processor.merge_size)
    t = int(image_processor.temporal_patch_size)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x * float(image_processor.rescale_factor) - mean) / std
    b, c, h, w = x.shape
    gh, gw = h // p, w // p
    x = x.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)
    return x.reshape(b * gh * gw, c * t * p * p)


@dataclass
class FixedPrompt:
    """What every row of a fast batch shares: tokens, rope positions, the query's place."""

    input_ids: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [3, 1, L]
    grid_thw: torch.Tensor  # [1, 3]
    query_pos: int
    side: int

    def to(self, device: str) -> FixedPrompt:
        return FixedPrompt(self.input_ids.to(device), self.position_ids.to(device), self.grid_thw.to(device),
                           self.query_pos, self.side)


def fixed_prompt(encoder: Any, side: int) -> FixedPrompt:
    """Tokens and 3-D rope positions for one ``side`` x ``side`` image, from the model's own code."""
    import inspect

    import torch
    from PIL import Image

    dummy = Image.new("RGB", (side, side))
    enc = encoder.processor(text=[encoder.prompt()], images=[dummy], return_tensors="pt")
    input_ids = enc["input_ids"]
    grid = enc["image_grid_thw"]
    hits = (input_ids[0] == encoder.query_token_id).nonzero().flatten().tolist()
    if len(hits) != 1:  # same words as the plain path's check
        raise RelsearchError(
            f"relsim prompt must hold <|query|> (id {encoder.query_token_id}) exactly once; sample 0 has it "
            f"{len(hits)} times (check the checkpoint's chat template)"
        )
    inner = encoder.module.backbone.get_base_model().model
    kwargs: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": torch.ones_like(input_ids)}
    if "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = enc["mm_token_type_ids"]
    with torch.no_grad():
        positions, _ = inner.get_rope_index(input_ids, **kwargs)
    return FixedPrompt(input_ids, positions, grid, int(hits[0]), side)


def _batched_window_attention(attn: Any, equal_cache: dict[tuple[int, int], bool]) -> Any:
    """A forward for one vision block's attention that batches equal-length segments.

    Same arithmetic as the module's own forward (qkv, vision rotary, SDPA per
    segment, proj); when every segment of ``cu_seqlens`` has one length they are
    stacked into a single SDPA call. Otherwise the module's own forward runs.
    ``equal_cache`` is shared by every block and call of one fast path: all its
    images have one grid, so (patches, segments) says whether the segments are
    equal, and the host sync that finds out happens once per shape, not per block.
    """
    import torch.nn.functional as F
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    original = attn.forward

    def forward(hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                max_seqlen: int | None = None, **kwargs: Any) -> torch.Tensor:
        n = hidden_states.shape[0]
        segments = cu_seqlens.numel() - 1
        key = (n, segments)
        if key not in equal_cache:  # one host sync per shape
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
            equal_cache[key] = len(set(lengths)) == 1 and position_embeddings is not None
        if not equal_cache[key]:
            return original(hidden_states, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings,
                            max_seqlen=max_seqlen, **kwargs)
        q, k, v = attn.qkv(hidden_states).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        seg = n // segments

        def split(x: torch.Tensor) -> torch.Tensor:  # [n, H, D] -> [segments, H, seg, D]
            return x.reshape(segments, seg, attn.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(n, -1))

    return forward


class FastPath:
    """The fast forward of one loaded :class:`RelsimEncoder` (built by ``encoder.fast()``)."""

    def __init__(self, encoder: Any, side: int = DEFAULT_SIDE, batched_attention: bool = True) -> None:
        self.encoder = encoder
        ip = encoder.processor.image_processor
        self.image_processor = ip
        self.side = fixed_side(ip, side)
        self.prompt = fixed_prompt(encoder, self.side).to(encoder.device)
        self.batched_attention = batched_attention
        self._equal_segments: dict[tuple[int, int], bool] = {}

    # ------------------------------------------------------------------ CPU side
    def prepare(self, images: list[Image.Image]) -> dict[str, Any]:
        """Square crop + patches on the CPU (thread-safe); pinned when the model is on CUDA."""
        if not images:
            raise RelsearchError("relsim: no images to prepare")
        pixels = np.stack([np.asarray(square_crop(img, self.side)) for img in images])
        values = patchify(pixels, self.image_processor)
        if str(self.encoder.device).startswith("cuda"):
            values = values.pin_memory()
        return {"pixel_values": values, "n": len(images)}

    # ------------------------------------------------------------------ GPU side
    def embed_prepared(self, batch: dict[str, Any]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._installed():
            out = self.forward(batch)
        return out.float().cpu().numpy()

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[n, 384]`` unit vectors; LoRA must be merged and the patches installed by the caller."""
        import torch

        enc = self.encoder
        n = int(batch["n"])
        dtype = enc._model_dtype()
        values = batch["pixel_values"].to(enc.device, non_blocking=True).to(dtype)
        p = self.prompt
        inner = enc.module.backbone.get_base_model().model
        out = inner(
            input_ids=p.input_ids.expand(n, -1),
            attention_mask=None,  # no padding: plain causal attention
            position_ids=p.position_ids.expand(-1, n, -1),
            pixel_values=values,
            image_grid_thw=p.grid_thw.expand(n, -1),
            use_cache=False,
            return_dict=True,
        )
        hidden = out.last_hidden_state[:, p.query_pos]
        proj = enc.module.projection
        return torch.nn.functional.normalize(proj(hidden.to(proj.weight.dtype)).float(), dim=-1)

    def _installed(self, merge: bool = True) -> Any:
        """Merge the LoRA (unless ``merge`` is False) and batch the vision attention, for one call."""
        import contextlib

        @contextlib.contextmanager
        def ctx() -> Any:
            if merge:
                self.encoder.merge_lora()
            patched = []
            if self.batched_attention:
                for blk in self.encoder.module.backbone.get_base_model().model.visual.blocks:
                    blk.attn.forward = _batched_window_attention(blk.attn, self._equal_segments)
                    patched.append(blk.attn)
            try:
                yield
            finally:
                for attn in patched:  # back to the class's own forward
                    del attn.forward

        return ctx()
