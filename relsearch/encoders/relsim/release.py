"""The relsim release on disk: read, validate and write it.

A release directory (local, or a hub id in the local HF cache) holds::

    adapter_config.json        LoRA settings; base_model_name_or_path names the base
    adapter_model.safetensors  LoRA tensors (and, when saved, the resized embeddings)
    tokenizer / processor files, with <|query|> added
    projection_and_config.pt   {"projection": Linear state_dict, "query_token_id": int}

Every reader raises :class:`RelsearchError` (or :class:`MissingWeightsError`) naming the
file and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relsearch.encoders import hub
from relsearch.errors import MissingWeightsError, RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

QUERY_TOKEN = "<|query|>"
EMBED_DIM = 384
DEFAULT_SOURCE = "thaoshibe/relsim-qwenvl25-lora"
DEFAULT_BASE = "Qwen/Qwen2.5-VL-7B-Instruct"

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


def read_adapter_config(release: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((release / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RelsearchError(f"relsim checkpoint {release}: unreadable {ADAPTER_CONFIG}: {exc}") from exc
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RelsearchError(f"relsim checkpoint {release}: expected a LoRA adapter, got {cfg.get('peft_type')!r}")
    return cfg


def load_processor(path: Path) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RelsearchError(f"relsim: cannot load the processor/tokenizer files in {path}: {exc}") from exc
    # Right padding keeps each sample's tokens (and so its positions) exactly
    # as when it is embedded alone: the image and <|query|> come before any pad.
    processor.tokenizer.padding_side = "right"
    return processor


def read_query_token_id(tokenizer: Any, release: Path) -> int:
    vocab = tokenizer.get_vocab()
    if QUERY_TOKEN not in vocab:
        raise RelsearchError(
            f"relsim checkpoint {release}: the tokenizer has no {QUERY_TOKEN} token "
            "(the processor/tokenizer files must be the ones saved with the adapter)"
        )
    return int(vocab[QUERY_TOKEN])


def read_projection(path: Path) -> dict[str, Any]:
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


def load_projection(state: dict[str, torch.Tensor], hidden: int, release: Path) -> torch.nn.Linear:
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


def load_base(base_source: str, dtype: torch.dtype, device: str) -> tuple[Any, Path]:
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


def attach_lora(model: Any, adapter_cfg: dict[str, Any]) -> Any:
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
    return peft_wrap(model, config)


def peft_wrap(model: Any, config: Any) -> Any:
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft asks transformers a deprecated question; users cannot act on the warning.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def lora_state(backbone: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(backbone, save_embedding_layers=False)


def load_adapter_state(backbone: Any, path: Path) -> dict[str, torch.Tensor]:
    """Load LoRA (and any saved embedding) tensors into ``backbone``; return them by key."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise RelsearchError(f"relsim: cannot read {path}: {exc}") from exc
    expected = set(lora_state(backbone))
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


def write_release(module: Any, processor: Any, base_source: str, out_dir: str | Path) -> None:
    """Write the release layout (adapter, processor, projection) of ``module`` to ``out_dir``."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = module.backbone
    # Embeddings are written when they cannot be rebuilt from the base: the
    # resize added rows (random init) or the loaded release carried its own.
    # A shrink keeps the base's rows, so the adapter stays small.
    rows = backbone.get_input_embeddings().weight.shape[0]
    keep = rows > module.base_vocab_size or module.carries_embeddings
    backbone.save_pretrained(str(out), save_embedding_layers=bool(keep))
    cfg_path = out / ADAPTER_CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_source
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    processor.save_pretrained(str(out))
    projection = {k: v.detach().to("cpu").clone() for k, v in module.projection.state_dict().items()}
    torch.save({"projection": projection, "query_token_id": int(module.query_token_id)}, out / PROJECTION_FILE)
