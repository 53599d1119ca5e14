"""``relsim``: the relational visual similarity encoder (Qwen2.5-VL + LoRA).

One user turn holds the image and then the special token ``<|query|>``; the
last-layer hidden state at that token goes through ``Linear(hidden -> 384)``
and L2 normalisation. Similarity is the dot product.

Weights come in the released layout (see :mod:`relsearch.encoders.relsim.release`),
from a local directory or a hub id already in the local HF cache.

Images are sized as the released inference script (``relsim/relsim_score.py``) sizes
them: RGB, ``qwen_vl_utils``' resize to sides that are multiples of 28, then the
checkpoint's processor within its ``min_pixels`` / ``max_pixels``; the aspect ratio is kept
and nothing is cropped (:mod:`relsearch.encoders.relsim.pixels`). ``square=1``
(``relsim@SOURCE?square=1``, or ``RelsimOptions(square=True)``) centre-crops every image to
the paper's 448 px training square instead: faster in batches (one grid), but a deviation
from the released procedure, with its own fingerprint so indexes of the two never mix.

Library use::

    model, preprocess = relsearch.relsim("path/or/owner/name")
    vecs = model.embed(preprocess([img_a, img_b]))   # float32 [2, 384]
    score = model(img_a, img_b)                      # cosine similarity
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders import hub
from relsearch.encoders.base import l2_normalize, pick_device
from relsearch.encoders.relsim.identity import base_identity, inference_fingerprint, release_fingerprint
from relsearch.encoders.relsim.options import DEFAULT_MAX_IMAGE_SIZE, RelsimOptions, split_source
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

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

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
        """The weights' fingerprint combined with :meth:`preprocessing` (both change the vectors)."""
        return inference_fingerprint(self.weights_fingerprint, self.preprocessing())

    @property
    def weights_fingerprint(self) -> str:
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

    def preprocessing(self) -> str:
        """How images are sized, in words: what besides the weights decides the vectors."""
        from relsearch.encoders.relsim.pixels import grid_factor, pixel_budget

        ip = self.processor.image_processor
        lo, hi = pixel_budget(ip)
        budget = (f"pixels {lo}..{hi} in {grid_factor(ip)} px cells, mean {list(ip.image_mean)}, "
                  f"std {list(ip.image_std)}")
        if self.options.square:
            return f"centre crop {self.square_side()} px square; {budget}"
        return f"aspect kept, longer side cap {self.options.max_image_size}; {budget}"

    def square_side(self) -> int:
        """Side of the ``square`` crop: ``max_image_size`` (default 448) on the processor's grid."""
        from relsearch.encoders.relsim.fast import DEFAULT_SIDE
        from relsearch.encoders.relsim.pixels import fixed_side

        return fixed_side(self.processor.image_processor, self.options.max_image_size or DEFAULT_SIDE)

    @property
    def query_token_id(self) -> int:
        return self.module.query_token_id

    def preprocess(self, images: Image.Image | list[Image.Image]) -> Image.Image | list[Image.Image]:
        """RGB conversion, as the released ``preprocess_image``; list in, list out (sizing is :meth:`fit`'s)."""
        from PIL import Image

        if isinstance(images, Image.Image):
            return self._rgb(images)
        return [self._rgb(img) for img in images]

    def fit(self, images: Image.Image | list[Image.Image]) -> Image.Image | list[Image.Image]:
        """The sizing :meth:`embed` applies before the processor: RGB, cap, 28 px grid (or the square crop)."""
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
        """Images grouped by patch grid, merged LoRA, batched forwards (:mod:`relsearch.encoders.relsim.fast`).

        The whole list is sorted by grid first, so each forward holds as many images of
        one grid as ``batch_size`` allows; the rows come back in the input order.
        """
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        fast = self.fast()
        fitted = [self._fit(img) for img in images]
        order = sorted(range(len(fitted)), key=lambda i: fast.grid_of(fitted[i]))
        step = batch_size or self.options.fast_batch_size
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i in range(0, len(order), step):
            rows = order[i : i + step]
            out[rows] = self.embed_batch(fast.prepare_fitted([fitted[r] for r in rows]))
        return l2_normalize(out)

    def preprocess_batch(self, images: list[Image.Image]) -> dict[str, Any]:
        """CPU half of the fast path (sizing, grouping by grid, patches; pinned on CUDA). Thread-safe."""
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

    def fast(self) -> Any:
        """The :class:`~relsearch.encoders.relsim.fast.FastPath` of this encoder (built once)."""
        from relsearch.encoders.relsim.fast import FastPath

        if self._fast is None:
            self._fast = FastPath(self)
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

        ``train`` batches are centre-cropped to the 448 px square, as the paper's training
        loader does; inference batches are sized as :meth:`embed` sizes them. ``generator``
        adds no augmentation: the paper trains on the images as they are (it exists so every
        trainable encoder is called alike).
        """
        import torch

        if not images:
            raise RelsearchError("relsim: no images to prepare")
        fitted = [self._fit(img, square=train) for img in images]
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

    @staticmethod
    def _rgb(img: Image.Image) -> Image.Image:
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise RelsearchError(f"relsim: expected a PIL image, got {type(img).__name__}")
        return img.convert("RGB")

    def _fit(self, img: Image.Image, square: bool = False) -> Image.Image:
        from relsearch.encoders.relsim.pixels import native_fit, square_crop

        img = self._rgb(img)
        if self.options.square or square:
            return square_crop(img, self.square_side())
        return native_fit(img, self.processor.image_processor, self.options.max_image_size)

    def _model_dtype(self) -> torch.dtype:
        return next(self.module.backbone.parameters()).dtype


# ---------------------------------------------------------------------- loading
def load(source: str | None = None, device: str | None = None, options: RelsimOptions | None = None,
         base: str | None = None) -> RelsimEncoder:
    """Load a relsim release from a local directory or a cached hub id.

    ``source`` may end in ``?key=value&...`` (``relsim@DIR?square=1`` on the command
    line): :class:`RelsimOptions` fields that override ``options``. ``base`` overrides
    the base model named in ``adapter_config.json`` (a local directory or hub id),
    e.g. when the base lives outside the HF cache.
    """
    source, query = split_source(source)
    options = (options or RelsimOptions()).with_query(query)
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
           micro_batch_size: int = 8, base: str | None = None,
           square: bool = False) -> tuple[RelsimEncoder, Callable[..., Any]]:
    """``model, preprocess = relsim(source)``: the dreamsim-style entry point.

    ``model.embed(images)`` gives float32 ``[N, 384]`` unit vectors and
    ``model(a, b)`` their cosine similarity; ``preprocess`` converts a PIL image
    (or a list) to RGB, as the released ``preprocess_image`` does. ``max_image_size``
    caps the longer side first (the released ``embed``'s argument of that name);
    ``square`` centre-crops to the 448 px training square, a deviation from the
    released inference.
    """
    try:
        options = RelsimOptions(max_image_size=max_image_size, micro_batch_size=micro_batch_size, square=square)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    model = load(source, device=device, options=options, base=base)
    return model, model.preprocess
