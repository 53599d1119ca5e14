"""``relsim``: the relational visual similarity encoder (Qwen2.5-VL + LoRA).

One user turn holds the image and then the special token ``<|query|>``; the
last-layer hidden state at that token goes through ``Linear(hidden -> 384)``
and L2 normalisation. Similarity is the dot product.

Weights come in the released layout, from a local directory or a hub id already
in the local HF cache::

    adapter_config.json        LoRA settings; base_model_name_or_path names the base
    adapter_model.safetensors  LoRA tensors (and, when saved, the resized embeddings)
    tokenizer / processor files, with <|query|> added
    projection_and_config.pt   {"projection": Linear state_dict, "query_token_id": int}

Library use::

    model, preprocess = relsearch.relsim("path/or/owner/name")
    vecs = model.embed(preprocess([img_a, img_b]))   # float32 [2, 384]
    score = model(img_a, img_b)                      # cosine similarity
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders import hub
from relsearch.encoders.base import fingerprint_tensors, l2_normalize, pick_device
from relsearch.errors import MissingWeightsError, RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

QUERY_TOKEN = "<|query|>"
EMBED_DIM = 384
DEFAULT_SOURCE = "thaoshibe/relsim-qwenvl25-lora"
DEFAULT_BASE = "Qwen/Qwen2.5-VL-7B-Instruct"
#: The training resolution: longer image side capped here before the processor.
DEFAULT_MAX_IMAGE_SIZE = 448

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROJECTION_FILE = "projection_and_config.pt"
RELEASE_FILES = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROJECTION_FILE]

#: The paper's LoRA: rank 16, alpha 32, dropout 0.05, no bias, on the language
#: model's q/v projections (the vision tower's attention is a fused ``qkv``, so
#: these names only match the language model).
LORA_SETTINGS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "bias": "none",
    "target_modules": ["q_proj", "v_proj"],
}

# Adapters saved before transformers moved the text stack under
# ``model.language_model`` use the older names; map them onto the current ones.
_KEY_RENAMES = [
    ("base_model.model.model.layers.", "base_model.model.model.language_model.layers."),
    ("base_model.model.model.embed_tokens.", "base_model.model.model.language_model.embed_tokens."),
]

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

    def __post_init__(self) -> None:
        if self.max_image_size is not None and (not isinstance(self.max_image_size, int)
                                                or self.max_image_size < 28):
            raise ValueError(f"max_image_size must be an int >= 28 or None, got {self.max_image_size!r}")
        if not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive int, got {self.micro_batch_size!r}")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))} or None, got {self.dtype!r}")

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
    """The relsim encoder: implements ``Encoder`` and ``TrainableEncoder``."""

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

    # ----------------------------------------------------------------- Encoder
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is not None:
            return self._fingerprint
        current = _fingerprint(
            _lora_state(self.module.backbone).items(),
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
        """float32 ``[N, 384]`` unit vectors, computed in micro-batches."""
        import torch
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
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
        from relsearch.encoders.text import embed_text

        return embed_text(texts, device=self.device)

    # --------------------------------------------------------- TrainableEncoder
    def train_module(self) -> Any:
        # The weights may change from here on: the fingerprint is recomputed on each access.
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
        import torch

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backbone = self.module.backbone
        # Embeddings are written when they cannot be rebuilt from the base: the
        # resize added rows (random init) or the loaded release carried its own.
        # A shrink keeps the base's rows, so the adapter stays small.
        rows = backbone.get_input_embeddings().weight.shape[0]
        keep = rows > self.module.base_vocab_size or self.module.carries_embeddings
        backbone.save_pretrained(str(out), save_embedding_layers=bool(keep))
        cfg_path = out / ADAPTER_CONFIG
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = self.base_source
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        self.processor.save_pretrained(str(out))
        projection = {k: v.detach().to("cpu").clone() for k, v in self.module.projection.state_dict().items()}
        torch.save({"projection": projection, "query_token_id": int(self.module.query_token_id)},
                   out / PROJECTION_FILE)

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
        except ImportError:  # the processor still resizes, only in its own way
            return img
        ip = self.processor.image_processor
        size = ip.size
        min_px = getattr(size, "shortest_edge", None) or getattr(ip, "min_pixels", None)
        max_px = getattr(size, "longest_edge", None) or getattr(ip, "max_pixels", None)
        if not min_px or not max_px:
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
    adapter_cfg = _read_adapter_config(release)
    base_source = base or adapter_cfg.get("base_model_name_or_path") or DEFAULT_BASE
    device = pick_device(device)
    dtype = options.torch_dtype(device)

    processor = _load_processor(release)
    tokenizer = processor.tokenizer
    query_id = _query_token_id(tokenizer, release)
    proj = _read_projection(release / PROJECTION_FILE)
    if proj["query_token_id"] != query_id:
        raise RelsearchError(
            f"relsim checkpoint {release}: {PROJECTION_FILE} says query_token_id={proj['query_token_id']} "
            f"but the tokenizer maps {QUERY_TOKEN} to {query_id}"
        )

    model, base_dir = _load_base(base_source, dtype, device)
    base_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    backbone = _attach_lora(model, adapter_cfg)
    adapter_state = _load_adapter_state(backbone, release / ADAPTER_WEIGHTS)

    hidden = model.config.get_text_config().hidden_size
    projection = _load_projection(proj["projection"], hidden, release)
    carries = any(k.endswith("embed_tokens.weight") for k in adapter_state)
    module = relsim_module_class()(backbone, projection, query_id, base_vocab, carries)
    module.to(device)
    module.eval()

    identity = _base_identity(base_dir, query_id, adapter_state)
    fingerprint = _fingerprint(
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
    model, base_dir = _load_base(base, dtype, device)
    processor = _load_processor(base_dir)
    tokenizer = processor.tokenizer
    if QUERY_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [QUERY_TOKEN]})
    query_id = tokenizer.convert_tokens_to_ids(QUERY_TOKEN)
    base_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(seed)
    backbone = _peft_wrap(model, LoraConfig(**LORA_SETTINGS))
    hidden = model.config.get_text_config().hidden_size
    projection = torch.nn.Linear(hidden, EMBED_DIM)
    module = relsim_module_class()(backbone, projection, query_id, base_vocab)
    module.to(device)
    # A grown vocabulary gives <|query|> a fresh row that `save` writes with the
    # adapter; identify it the same way `load` will then see it.
    carried = {}
    if query_id >= base_vocab:
        carried["embed_tokens.weight"] = model.get_input_embeddings().weight.detach()
    identity = _base_identity(base_dir, query_id, carried)
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


# ---------------------------------------------------------------------- helpers
def _read_adapter_config(release: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((release / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RelsearchError(f"relsim checkpoint {release}: unreadable {ADAPTER_CONFIG}: {exc}") from exc
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RelsearchError(f"relsim checkpoint {release}: expected a LoRA adapter, got {cfg.get('peft_type')!r}")
    return cfg


def _load_processor(path: Path) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RelsearchError(f"relsim: cannot load the processor/tokenizer files in {path}: {exc}") from exc
    # Right padding keeps each sample's tokens (and so its positions) exactly
    # as when it is embedded alone: the image and <|query|> come before any pad.
    processor.tokenizer.padding_side = "right"
    return processor


def _query_token_id(tokenizer: Any, release: Path) -> int:
    vocab = tokenizer.get_vocab()
    if QUERY_TOKEN not in vocab:
        raise RelsearchError(
            f"relsim checkpoint {release}: the tokenizer has no {QUERY_TOKEN} token "
            "(the processor/tokenizer files must be the ones saved with the adapter)"
        )
    return int(vocab[QUERY_TOKEN])


def _read_projection(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RelsearchError(
            f"relsim: refusing {path}: it holds pickled objects beyond tensors and plain values "
            "(only {'projection': state_dict, 'query_token_id': int} is accepted)"
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise RelsearchError(f"relsim: cannot read {path}: {exc}") from exc
    if not isinstance(blob, dict) or "projection" not in blob or "query_token_id" not in blob:
        raise RelsearchError(f"relsim: {path} must be a dict with 'projection' and 'query_token_id'")
    state, qid = blob["projection"], blob["query_token_id"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RelsearchError(f"relsim: {path}: 'projection' must be a state_dict of tensors")
    if isinstance(qid, torch.Tensor):
        qid = qid.item()
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise RelsearchError(f"relsim: {path}: 'query_token_id' must be an int, got {qid!r}")
    return {"projection": dict(state), "query_token_id": int(qid)}


def _load_projection(state: dict[str, torch.Tensor], hidden: int, release: Path) -> torch.nn.Linear:
    import torch

    projection = torch.nn.Linear(hidden, EMBED_DIM)
    try:
        projection.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise RelsearchError(
            f"relsim checkpoint {release}: the projection does not fit Linear({hidden} -> {EMBED_DIM}): "
            f"{' '.join(str(exc).split())[:200]}"
        ) from exc
    return projection


def _load_base(base_source: str, dtype: torch.dtype, device: str) -> tuple[Any, Path]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    what = f"relsim base model {base_source!r}"
    command = hub.fetch_command(base_source) if hub.looks_like_hub_id(base_source) else None
    base_dir = hub.resolve_dir(base_source, ["config.json"], what)
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        absent = [s for s in shards if not (base_dir / s).is_file()]
        if absent:
            raise hub.missing_weights(what, absent, str(base_dir), command)
    elif not any(base_dir.glob("*.safetensors")):
        raise hub.missing_weights(what, ["model.safetensors"], str(base_dir), command)
    # Straight onto the accelerator: a 7B model should not be staged in host RAM.
    placement = None if device == "cpu" else {"": device}
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(base_dir), dtype=dtype, local_files_only=True, device_map=placement)
    except OSError as exc:
        raise MissingWeightsError(f"{what}: cannot load weights from {base_dir}: {' '.join(str(exc).split())}") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model, base_dir


def _attach_lora(model: Any, adapter_cfg: dict[str, Any]) -> Any:
    from peft import LoraConfig

    fields = set(LoraConfig.__dataclass_fields__)
    kwargs = {k: v for k, v in adapter_cfg.items() if k in fields and k not in {"peft_type", "task_type"}}
    # Trainable after loading so the trainer can fine-tune a release; inference
    # runs under torch.inference_mode, so this costs nothing there.
    kwargs["inference_mode"] = False
    kwargs.pop("base_model_name_or_path", None)
    kwargs.pop("revision", None)
    try:
        config = LoraConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RelsearchError(f"relsim: invalid {ADAPTER_CONFIG}: {exc}") from exc
    return _peft_wrap(model, config)


def _peft_wrap(model: Any, config: Any) -> Any:
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft asks transformers a deprecated question; users cannot act on the warning.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def _lora_state(backbone: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(backbone, save_embedding_layers=False)


def _load_adapter_state(backbone: Any, path: Path) -> dict[str, torch.Tensor]:
    """Load LoRA (and any saved embedding) tensors into ``backbone``; return them by key."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise RelsearchError(f"relsim: cannot read {path}: {exc}") from exc
    expected = set(_lora_state(backbone))
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key not in expected:
            for old, new in _KEY_RENAMES:
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
        state[key] = value
    lora = {k: v for k, v in state.items() if "lora_" in k}
    missing = sorted(expected - set(lora))
    unknown = sorted(set(lora) - expected)
    if missing or unknown:
        example = (missing or unknown)[0]
        raise RelsearchError(
            f"relsim: {path} does not match the base model's LoRA layout "
            f"({len(missing)} tensors missing, {len(unknown)} unexpected, e.g. {example})"
        )
    try:
        set_peft_model_state_dict(backbone, lora)
    except RuntimeError as exc:
        raise RelsearchError(f"relsim: {path} does not fit the base model: {' '.join(str(exc).split())[:300]}") from exc

    # Embeddings saved with the adapter (a resized vocabulary) replace the base's.
    for key, value in state.items():
        if "lora_" in key:
            continue
        if key.endswith("embed_tokens.weight"):
            target = backbone.get_input_embeddings().weight
        elif key.endswith("lm_head.weight"):
            target = backbone.get_output_embeddings().weight
        else:
            raise RelsearchError(f"relsim: {path} holds an unexpected tensor {key}")
        if tuple(target.shape) != tuple(value.shape):
            raise RelsearchError(
                f"relsim: {path}: {key} has shape {tuple(value.shape)}, the resized model expects {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
    return state


def _base_identity(base_dir: Path, query_id: int, adapter_state: dict[str, torch.Tensor]) -> str:
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


def _fingerprint(lora: Any, projection: Any, query_id: int, identity: str) -> str:
    lora_items = sorted(((k, v.float()) for k, v in lora), key=lambda kv: kv[0])
    proj_items = sorted(((f"projection.{k}", v.float()) for k, v in projection), key=lambda kv: kv[0])
    return fingerprint_tensors(lora_items + proj_items, extra=f"relsim/{EMBED_DIM}/q{query_id}/base:{identity}")
