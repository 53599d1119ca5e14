"""``relsim``: the relational visual similarity encoder (Qwen2.5-VL + LoRA).

One user turn holds the image and then the special token ``<|query|>``; the
last-layer hidden state at that token goes through ``Linear(hidden -> 384)``
and L2 normalisation. Similarity is the dot product.

Weights come in the released layout (see :mod:`relsearch.encoders.relsim.release`),
from a local directory or a hub id already in the local HF cache.

Library use::

    model, preprocess = relsearch.relsim("path/or/owner/name")
    vecs = model.embed(preprocess([img_a, img_b]))   # float32 [2, 384]
    score = model(img_a, img_b)                      # cosine similarity
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders import hub
from relsearch.encoders.base import l2_normalize, pick_device
from relsearch.encoders.relsim.identity import base_identity, release_fingerprint
from relsearch.encoders.relsim.release import (
    ADAPTER_WEIGHTS,
    DEFAULT_BASE,
    DEFAULT_SOURCE,
    EMBED_DIM,
    LORA_SETTINGS,
    PROJECTION_FILE,
    QUERY_TOKEN,
    RELEASE_FILES,
    attach_lora,
    load_adapter_state,
    load_base,
    load_processor,
    load_projection,
    lora_state,
    peft_wrap,
    read_adapter_config,
    read_projection,
    read_query_token_id,
    write_release,
)
from relsearch.encoders.text import OwnedTextTower
from relsearch.errors import RelsearchError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: The training resolution: longer image side capped here before the processor.
DEFAULT_MAX_IMAGE_SIZE = 448

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


@dataclass(frozen=True)
class RelsimOptions:
    """Inference settings that do not change the weights.

    ``max_image_size`` caps the longer image side (None keeps native size, up
    to the processor's own pixel budget); ``micro_batch_size`` images go
    through one forward pass; ``dtype`` None means bfloat16 on CUDA and
    float32 elsewhere.
    """

    max_image_size: int | None = DEFAULT_MAX_IMAGE_SIZE
    micro_batch_size: int = 8
    dtype: str | None = None
    #: Centre-crop every image to a ``max_image_size`` square (the paper's 448 px
    #: training crop). False keeps the aspect ratio (longer side capped) as the
    #: reference inference script does.
    square: bool = True
    #: Embed through :mod:`relsearch.encoders.relsim.fast` (merged LoRA, one batched
    #: forward, no padding); needs ``square``. False runs the plain processor path.
    fast: bool = True
    #: Images per forward pass on the fast path (its batches need no padding,
    #: so they can be much larger than ``micro_batch_size``).
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
        if self.fast and not self.square:
            raise ValueError("fast=True needs square=True (one fixed grid for every image)")

    def torch_dtype(self, device: str) -> torch.dtype:
        import torch

        if self.dtype is not None:
            return getattr(torch, _DTYPES[self.dtype])
        return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _make_module_class() -> type:
    """Build the nn.Module subclass lazily so ``import relsearch`` never imports torch."""
    from torch import nn

    class _RelsimModule(nn.Module):
        """Qwen2.5-VL (with LoRA) + projection head: batch -> ``[B, 384]`` unit vectors."""

        def __init__(self, backbone: nn.Module, projection: nn.Linear, query_token_id: int,
                     base_vocab_size: int, carries_embeddings: bool = False) -> None:
            super().__init__()
            self.backbone = backbone  # a peft PeftModel around Qwen2_5_VLForConditionalGeneration
            self.projection = projection
            self.query_token_id = int(query_token_id)
            # Rows in the base checkpoint's embedding matrix, and whether the
            # release brought its own embeddings: `save` needs both.
            self.base_vocab_size = int(base_vocab_size)
            self.carries_embeddings = bool(carries_embeddings)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                    mm_token_type_ids: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
            is_query = input_ids == self.query_token_id
            counts = is_query.sum(dim=1)
            bad = (counts != 1).nonzero().flatten().tolist()
            if bad:
                raise RelsearchError(
                    f"relsim prompt must hold {QUERY_TOKEN} (id {self.query_token_id}) exactly once; "
                    f"sample {bad[0]} has it {int(counts[bad[0]])} times (check the checkpoint's chat template)"
                )
            # The inner Qwen2_5_VLModel: the LoRA layers are injected in place, and
            # skipping the LM head avoids a [B, T, vocab] logits tensor nobody reads.
            inner = self.backbone.get_base_model().model
            extra = {}
            if mm_token_type_ids is not None and _accepts(inner.forward, "mm_token_type_ids"):
                # Newer transformers place the 3-D rope positions with it; older
                # ones find image tokens from input_ids and have no such argument.
                extra["mm_token_type_ids"] = mm_token_type_ids
            out = inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                image_grid_thw=image_grid_thw,
                use_cache=False,
                return_dict=True,
                **extra,
            )
            # last_hidden_state is the final (normed) layer output, i.e. hidden_states[-1].
            hidden = out.last_hidden_state[is_query]
            feats = self.projection(hidden.to(self.projection.weight.dtype))
            return nn.functional.normalize(feats.float(), dim=-1)

    return _RelsimModule


_MODULE_CLASS: type | None = None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


def relsim_module_class() -> type:
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _make_module_class()
    return _MODULE_CLASS


class RelsimEncoder:
    """The relsim encoder: ``Encoder``, ``TextEncoder`` and ``TrainableEncoder``."""

    name = "relsim"
    kind = "relational"
    dim = EMBED_DIM

    def __init__(self, module: Any, processor: Any, device: str, options: RelsimOptions,
                 base_source: str, base_identity: str, fingerprint: str | None = None) -> None:
        self.module = module
        self.processor = processor
        self.device = device
        self.options = options
        self.base_source = base_source
        self._base_identity = base_identity
        self._fingerprint = fingerprint
        self._training_started = False
        self._prompt: str | None = None
        self._captions = OwnedTextTower(device)  # MiniLM, loaded on the first text query
        self._fast: Any = None
        self._merged = False

    # ----------------------------------------------------------------- Encoder
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is not None:
            return self._fingerprint
        current = release_fingerprint(
            lora_state(self.module.backbone).items(),
            self.module.projection.state_dict().items(),
            self.module.query_token_id,
            self._base_identity,
        )
        if not self._training_started:  # weights can no longer change under us
            self._fingerprint = current
        return current

    @property
    def query_token_id(self) -> int:
        return self.module.query_token_id

    def preprocess(self, images: Image.Image | list[Image.Image]) -> Image.Image | list[Image.Image]:
        """RGB conversion and the longer-side cap; list in, list out."""
        from PIL import Image

        if isinstance(images, Image.Image):
            return self._fit(images)
        return [self._fit(img) for img in images]

    def embed(self, images: Image.Image | list[Image.Image]) -> np.ndarray:
        """float32 ``[N, 384]`` unit vectors: the fast path unless ``options.fast`` is off."""
        if self.options.fast:
            return self.embed_fast(images)
        return self.embed_plain(images)

    def embed_fast(self, images: Image.Image | list[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """Fixed square grid, merged LoRA, batched forward (:mod:`relsearch.encoders.relsim.fast`)."""
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = batch_size or self.options.fast_batch_size
        parts = [self.embed_batch(self.preprocess_batch(images[i : i + step])) for i in range(0, len(images), step)]
        return l2_normalize(np.concatenate(parts, axis=0))

    def preprocess_batch(self, images: list[Image.Image]) -> dict[str, Any]:
        """CPU half of the fast path (square crop, patches; pinned on CUDA). Thread-safe."""
        return self.fast().prepare(images)

    def embed_batch(self, batch: dict[str, Any]) -> np.ndarray:
        """Accelerator half of the fast path: ``[n, 384]`` unit vectors for a :meth:`preprocess_batch` batch.

        Before training has started the LoRA is merged into the base weights (exact);
        once it has (validation inside the trainer), it stays separate so the
        adapter's gradients keep flowing.
        """
        import torch

        fast = self.fast()
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode(), fast._installed(merge=not self._training_started):
                return fast.forward(batch).float().cpu().numpy()
        finally:
            self.module.train(was_training)

    def fast(self, side: int | None = None) -> Any:
        """The :class:`~relsearch.encoders.relsim.fast.FastPath` of this encoder (built once per side)."""
        from relsearch.encoders.relsim.fast import DEFAULT_SIDE, FastPath, fixed_side

        want = fixed_side(self.processor.image_processor, side or self.options.max_image_size or DEFAULT_SIDE)
        if self._fast is None or self._fast.side != want:
            self._fast = FastPath(self, want)
        return self._fast

    @property
    def lora_merged(self) -> bool:
        return self._merged

    def merge_lora(self) -> None:
        """Fold the LoRA update into ``q_proj`` / ``v_proj`` (inference only; undone by training)."""
        if not self._merged and not self._training_started:
            self.module.backbone.merge_adapter()
            self._merged = True

    def unmerge_lora(self) -> None:
        if self._merged:
            self.module.backbone.unmerge_adapter()
            self._merged = False

    def embed_plain(self, images: Image.Image | list[Image.Image]) -> np.ndarray:
        """The reference path: processor, padded micro-batches, LoRA applied unmerged."""
        import torch
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.unmerge_lora()
        was_training = self.module.training  # embed may run mid-training (validation)
        self.module.eval()
        step = self.options.micro_batch_size
        parts = []
        try:
            with torch.inference_mode():
                for i in range(0, len(images), step):
                    out = self.forward_train(self.prepare(images[i : i + step]))
                    parts.append(out.float().cpu().numpy())
        finally:
            self.module.train(was_training)
        return l2_normalize(np.concatenate(parts, axis=0))

    def __call__(self, img1: Image.Image, img2: Image.Image) -> float:
        """Cosine similarity of two images (one batched forward pass)."""
        vecs = self.embed([img1, img2])
        return float(vecs[0] @ vecs[1])

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Captions into the 384-d all-MiniLM-L6-v2 space the head was trained to match."""
        return self._captions.embed_text(texts)

    # --------------------------------------------------------- TrainableEncoder
    def train_module(self) -> Any:
        # The weights may change from here on: the fingerprint is recomputed on each access.
        self.unmerge_lora()
        self._fingerprint = None
        self._training_started = True
        return self.module

    def prepare(self, images: list[Image.Image], train: bool = False,
                generator: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Processor outputs for a batch (CPU tensors).

        ``train`` and ``generator`` add no augmentation: the paper trains on the
        images as they are (they exist so every trainable encoder is called alike).
        """
        import torch

        if not images:
            raise RelsearchError("relsim: no images to prepare")
        fitted = [self._fit(img) for img in images]
        prompt = self.prompt()
        enc = self.processor(text=[prompt] * len(fitted), images=fitted, padding=True, return_tensors="pt")
        return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}

    def forward_train(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        moved = {}
        for key, value in batch.items():
            value = value.to(self.device)
            if key == "pixel_values" and torch.is_floating_point(value):
                value = value.to(self._model_dtype())
            moved[key] = value
        return self.module(**moved)

    def save(self, out_dir: str) -> None:
        """Write the release layout (adapter, processor, projection) to ``out_dir``."""
        write_release(self.module, self.processor, self.base_source, out_dir)

    # ------------------------------------------------------------------ helpers
    def prompt(self) -> str:
        """The chat-templated text for one image followed by ``<|query|>``."""
        if self._prompt is None:
            if not getattr(self.processor, "chat_template", None):
                raise RelsearchError("relsim: the checkpoint's processor has no chat template")
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUERY_TOKEN}]}]
            self._prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._prompt

    def _fit(self, img: Image.Image) -> Image.Image:
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise RelsearchError(f"relsim: expected a PIL image, got {type(img).__name__}")
        if self.options.square:
            from relsearch.encoders.relsim.fast import DEFAULT_SIDE, fixed_side, square_crop

            side = fixed_side(self.processor.image_processor, self.options.max_image_size or DEFAULT_SIDE)
            return square_crop(img, side)
        img = img.convert("RGB")
        cap = self.options.max_image_size
        if cap is not None and max(img.size) > cap:
            img = img.copy()
            img.thumbnail((cap, cap), Image.LANCZOS)
        return self._snap_to_grid(img)

    def _snap_to_grid(self, img: Image.Image) -> Image.Image:
        """Resize in PIL to the patch grid the processor would pick.

        The reference pipeline sizes images this way (bicubic, to multiples of
        patch x merge within the processor's pixel budget) before the processor
        sees them, so the processor's own resize becomes a no-op.
        """
        from PIL import Image

        try:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        except ImportError as exc:  # the processor still resizes, only in its own way
            log.debug("no smart_resize in this transformers (%s): the processor resizes", exc)
            return img
        from relsearch.encoders.relsim.fast import pixel_budget

        ip = self.processor.image_processor
        try:
            min_px, max_px = pixel_budget(ip)
        except RelsearchError:
            return img
        factor = int(ip.patch_size) * int(ip.merge_size)
        try:
            height, width = smart_resize(img.height, img.width, factor=factor, min_pixels=min_px, max_pixels=max_px)
        except ValueError as exc:
            raise RelsearchError(f"relsim: cannot use a {img.width}x{img.height} image: {exc}") from exc
        if (width, height) != img.size:
            img = img.resize((width, height), Image.BICUBIC)
        return img

    def _model_dtype(self) -> torch.dtype:
        return next(self.module.backbone.parameters()).dtype


# ---------------------------------------------------------------------- loading
def load(source: str | None = None, device: str | None = None, options: RelsimOptions | None = None,
         base: str | None = None) -> RelsimEncoder:
    """Load a relsim release from a local directory or a cached hub id.

    ``base`` overrides the base model named in ``adapter_config.json`` (a local
    directory or hub id), e.g. when the base lives outside the HF cache.
    """
    options = options or RelsimOptions()
    source = source or DEFAULT_SOURCE
    release = hub.resolve_dir(source, RELEASE_FILES, f"relsim checkpoint {source!r}")
    adapter_cfg = read_adapter_config(release)
    base_source = base or adapter_cfg.get("base_model_name_or_path") or DEFAULT_BASE
    device = pick_device(device)
    dtype = options.torch_dtype(device)

    processor = load_processor(release)
    tokenizer = processor.tokenizer
    query_id = read_query_token_id(tokenizer, release)
    proj = read_projection(release / PROJECTION_FILE)
    if proj["query_token_id"] != query_id:
        raise RelsearchError(
            f"relsim checkpoint {release}: {PROJECTION_FILE} says query_token_id={proj['query_token_id']} "
            f"but the tokenizer maps {QUERY_TOKEN} to {query_id}"
        )

    model, base_dir = load_base(base_source, dtype, device)
    base_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    backbone = attach_lora(model, adapter_cfg)
    adapter_state = load_adapter_state(backbone, release / ADAPTER_WEIGHTS)

    hidden = model.config.get_text_config().hidden_size
    projection = load_projection(proj["projection"], hidden, release)
    carries = any(k.endswith("embed_tokens.weight") for k in adapter_state)
    module = relsim_module_class()(backbone, projection, query_id, base_vocab, carries)
    module.to(device)
    module.eval()

    identity = base_identity(base_dir, query_id, adapter_state)
    fingerprint = release_fingerprint(
        ((k, v) for k, v in adapter_state.items() if "lora_" in k),
        proj["projection"].items(), query_id, identity,
    )
    return RelsimEncoder(module, processor, device, options, base_source, identity, fingerprint)


def new(base: str = DEFAULT_BASE, device: str | None = None, options: RelsimOptions | None = None,
        seed: int = 0) -> RelsimEncoder:
    """A fresh, trainable relsim on ``base``: ``<|query|>`` added, new LoRA, new head.

    This is the starting point the paper trains from; ``save`` writes the
    release layout that :func:`load` reads.
    """
    import torch
    from peft import LoraConfig

    options = options or RelsimOptions()
    device = pick_device(device)
    dtype = options.torch_dtype(device)
    model, base_dir = load_base(base, dtype, device)
    processor = load_processor(base_dir)
    tokenizer = processor.tokenizer
    if QUERY_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [QUERY_TOKEN]})
    query_id = tokenizer.convert_tokens_to_ids(QUERY_TOKEN)
    base_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(seed)
    backbone = peft_wrap(model, LoraConfig(**LORA_SETTINGS))
    hidden = model.config.get_text_config().hidden_size
    projection = torch.nn.Linear(hidden, EMBED_DIM)
    module = relsim_module_class()(backbone, projection, query_id, base_vocab)
    module.to(device)
    # A grown vocabulary gives <|query|> a fresh row that `save` writes with the
    # adapter; identify it the same way `load` will then see it.
    carried = {}
    if query_id >= base_vocab:
        carried["embed_tokens.weight"] = model.get_input_embeddings().weight.detach()
    identity = base_identity(base_dir, query_id, carried)
    return RelsimEncoder(module, processor, device, options, base, identity)


def relsim(source: str | None = None, device: str | None = None, max_image_size: int | None = DEFAULT_MAX_IMAGE_SIZE,
           micro_batch_size: int = 8, base: str | None = None) -> tuple[RelsimEncoder, Callable[..., Any]]:
    """``model, preprocess = relsim(source)``: the dreamsim-style entry point.

    ``model.embed(images)`` gives float32 ``[N, 384]`` unit vectors and
    ``model(a, b)`` their cosine similarity; ``preprocess`` converts a PIL image
    (or a list) to RGB with the longer side capped.
    """
    try:
        options = RelsimOptions(max_image_size=max_image_size, micro_batch_size=micro_batch_size)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    model = load(source, device=device, options=options, base=base)
    return model, model.preprocess
