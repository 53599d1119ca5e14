"""relsim's inference fast path: images bucketed by patch grid, merged LoRA, batched attention.

The plain path (:meth:`RelsimEncoder.embed_plain`) hands a batch to the Qwen2-VL
processor, which pads every prompt to the longest one and lets the model compute the
3-D rope positions sample by sample. The fast path gives the same vectors (tests check
cosine >= 0.9999 in float32 against the released one-image-at-a-time procedure) and
changes only how they are computed:

- images are sized exactly as on the plain path (:mod:`relsearch.encoders.relsim.pixels`:
  aspect kept, the checkpoint's pixel budget), then grouped by the patch grid the
  processor gives them. Images of one grid have prompts of one length, one set of rope
  positions and ``<|query|>`` at one place: those are computed once per grid
  (:class:`FixedPrompt`), and a group runs as one forward with no padding. With
  ``RelsimOptions.square`` every image has the same grid and a batch is one group;
- pixels already at their grid size are normalised and cut into patches with torch in the
  processor's layout (:func:`patchify`) on CPU worker threads (pinned memory on CUDA);
  the few the processor still has to resize go through the processor itself;
- the LoRA update is merged into ``q_proj`` / ``v_proj`` (``W + s * B @ A``), exact up
  to rounding, and unmerged again if training starts;
- the vision tower's attention runs one SDPA call per distinct segment length (windows of
  equal size, or whole images, stacked together) instead of one call per window;
- only the decoder body runs (no language-model head over 152k entries), no per-layer
  hidden states are kept, and the last hidden state is read at ``<|query|>`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders.relsim.pixels import (  # noqa: F401  (re-exported: their former home)
    fixed_side,
    pixel_budget,
    processor_size,
    square_crop,
)
from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: The paper's training crop (the side of ``RelsimOptions.square``).
DEFAULT_SIDE = 448


def patchify(pixels: np.ndarray, image_processor: Any) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B * gh * gw, C * T * P * P]`` in the processor's layout.

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
    """What every row of one grid's group shares: tokens, rope positions, the query's place."""

    input_ids: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [3, 1, L]
    grid_thw: torch.Tensor  # [1, 3]
    query_pos: int
    size: tuple[int, int]  # (height, width) in pixels

    def to(self, device: str) -> FixedPrompt:
        return FixedPrompt(self.input_ids.to(device), self.position_ids.to(device), self.grid_thw.to(device),
                           self.query_pos, self.size)


def fixed_prompt(encoder: Any, height: int, width: int) -> FixedPrompt:
    """Tokens and 3-D rope positions for one ``width`` x ``height`` image, from the model's own code."""
    import inspect

    import torch
    from PIL import Image

    dummy = Image.new("RGB", (width, height))
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
    return FixedPrompt(input_ids, positions, grid, int(hits[0]), (height, width))


def _segment_plan(cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Token indices ``[segments, length]`` per distinct segment length of ``cu_seqlens``."""
    import torch

    bounds = cu_seqlens.tolist()
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    device = cu_seqlens.device
    return [torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)
            for length, starts in by_length.items()]


def _grouped_attention(attn: Any, plans: dict[Any, list[Any]], state: dict[str, Any]) -> Any:
    """A forward for one vision block's attention: one SDPA call per distinct segment length.

    Same arithmetic as the module's own forward (qkv, vision rotary, SDPA per segment,
    proj), with the segments of one length stacked into a batch. ``plans`` is shared by
    every block of one fast path; while the fast path runs a group, ``state["grid"]``
    names its grid, so (grid, tokens, segments) identifies ``cu_seqlens`` and the host
    sync that reads it happens once per shape, not per block and call.
    """
    import torch
    import torch.nn.functional as F
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    original = attn.forward

    def forward(hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                max_seqlen: int | None = None, **kwargs: Any) -> torch.Tensor:
        if position_embeddings is None:
            return original(hidden_states, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings,
                            max_seqlen=max_seqlen, **kwargs)
        n = hidden_states.shape[0]
        key = (state.get("grid"), n, cu_seqlens.numel() - 1)
        plan = plans.get(key) if key[0] is not None else None
        if plan is None:
            plan = _segment_plan(cu_seqlens)
            if key[0] is not None:
                plans[key] = plan
        q, k, v = attn.qkv(hidden_states).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        if len(plan) == 1 and plan[0].numel() == n:  # equal segments in order: views, no gather
            segments, length = plan[0].shape

            def split(x: torch.Tensor) -> torch.Tensor:  # [n, H, D] -> [segments, H, length, D]
                return x.reshape(segments, length, attn.num_heads, -1).transpose(1, 2)

            out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scaling)
            return attn.proj(out.transpose(1, 2).reshape(n, -1))
        out = torch.empty_like(q)
        for index in plan:
            part = F.scaled_dot_product_attention(q[index].transpose(1, 2), k[index].transpose(1, 2),
                                                  v[index].transpose(1, 2), scale=attn.scaling)
            out[index] = part.transpose(1, 2)
        return attn.proj(out.reshape(n, -1))

    return forward


class FastPath:
    """The fast forward of one loaded :class:`RelsimEncoder` (built by ``encoder.fast()``)."""

    def __init__(self, encoder: Any, batched_attention: bool = True) -> None:
        self.encoder = encoder
        self.image_processor = encoder.processor.image_processor
        self.batched_attention = batched_attention
        self._prompts: dict[tuple[int, int], FixedPrompt] = {}
        self._plans: dict[Any, list[Any]] = {}
        self._state: dict[str, Any] = {"grid": None}

    def prompt_for(self, height: int, width: int) -> FixedPrompt:
        """The :class:`FixedPrompt` of a ``width`` x ``height`` grid (computed once, then kept)."""
        size = (int(height), int(width))
        if size not in self._prompts:
            self._prompts[size] = fixed_prompt(self.encoder, *size).to(self.encoder.device)
        return self._prompts[size]

    # ------------------------------------------------------------------ CPU side
    def grid_of(self, fitted: Image.Image) -> tuple[int, int]:
        """``(height, width)`` the processor gives an image already through ``encoder.fit``."""
        return processor_size(self.image_processor, fitted.height, fitted.width)

    def prepare(self, images: list[Image.Image]) -> dict[str, Any]:
        """Sizing, grouping by grid and patches on the CPU (thread-safe); pinned when the model is on CUDA.

        The batch is ``{"n": n, "groups": [((height, width), rows, pixel_values), ...]}``:
        ``rows`` are the images' places in ``images``.
        """
        if not images:
            raise RelsearchError("relsim: no images to prepare")
        return self.prepare_fitted([self.encoder._fit(img) for img in images])

    def prepare_fitted(self, fitted: list[Image.Image]) -> dict[str, Any]:
        """:meth:`prepare` for images already through ``encoder.fit``."""
        by_grid: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(fitted):
            by_grid.setdefault(self.grid_of(img), []).append(i)
        pin = str(self.encoder.device).startswith("cuda")
        groups = []
        for size, rows in by_grid.items():
            values = self._pixel_values([fitted[r] for r in rows], size)
            groups.append((size, rows, values.pin_memory() if pin else values))
        return {"n": len(fitted), "groups": groups}

    def _pixel_values(self, imgs: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """Patches of images that share one grid, in order: torch for those already at size, else the processor."""
        import torch

        h, w = size
        at_size = [i for i, im in enumerate(imgs) if im.size == (w, h)]
        if len(at_size) == len(imgs):
            return patchify(np.stack([np.asarray(im) for im in imgs]), self.image_processor)
        per_image: list[Any] = [None] * len(imgs)
        rows = (h // int(self.image_processor.patch_size)) * (w // int(self.image_processor.patch_size))
        if at_size:
            direct = patchify(np.stack([np.asarray(imgs[i]) for i in at_size]), self.image_processor)
            for j, i in enumerate(at_size):
                per_image[i] = direct[j * rows : (j + 1) * rows]
        rest = [i for i in range(len(imgs)) if per_image[i] is None]
        resized = self.image_processor(images=[imgs[i] for i in rest], return_tensors="pt")["pixel_values"]
        for j, i in enumerate(rest):
            per_image[i] = resized[j * rows : (j + 1) * rows].float()
        return torch.cat(per_image, dim=0)

    # ------------------------------------------------------------------ GPU side
    def embed_prepared(self, batch: dict[str, Any]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._installed():
            out = self.forward(batch)
        return out.float().cpu().numpy()

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[n, 384]`` unit vectors in the batch's order; LoRA merged and attention installed by the caller."""
        import torch

        out: torch.Tensor | None = None
        for (h, w), rows, values in batch["groups"]:
            vecs = self.forward_group(self.prompt_for(h, w), values, len(rows))
            if out is None:
                out = vecs.new_empty((int(batch["n"]), vecs.shape[1]))
            out[torch.as_tensor(rows, device=vecs.device)] = vecs
        if out is None:
            raise RelsearchError("relsim: an empty batch")
        return out

    def forward_group(self, prompt: FixedPrompt, pixel_values: torch.Tensor, n: int) -> torch.Tensor:
        """``[n, 384]`` unit vectors of ``n`` images of ``prompt``'s grid: one forward, no padding."""
        import torch

        enc = self.encoder
        values = pixel_values.to(enc.device, non_blocking=True).to(enc._model_dtype())
        inner = enc.module.backbone.get_base_model().model
        self._state["grid"] = prompt.size
        try:
            out = inner(
                input_ids=prompt.input_ids.expand(n, -1),
                attention_mask=None,  # no padding: plain causal attention
                position_ids=prompt.position_ids.expand(-1, n, -1),
                pixel_values=values,
                image_grid_thw=prompt.grid_thw.expand(n, -1),
                use_cache=False,
                return_dict=True,
            )
        finally:
            self._state["grid"] = None
        hidden = out.last_hidden_state[:, prompt.query_pos]
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
                    blk.attn.forward = _grouped_attention(blk.attn, self._plans, self._state)
                    patched.append(blk.attn)
            try:
                yield
            finally:
                for attn in patched:  # back to the class's own forward
                    del attn.forward

        return ctx()
