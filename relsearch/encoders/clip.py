"""``clip``: the CLIP image embedding, an attribute-similarity baseline.

The paper's CLIP-I is OpenAI CLIP ViT-L/14, the default here. Sources:

- ``clip`` / ``clip@ViT-L-14/openai``: an open_clip model name and pretrained tag;
  the weights must already be in the local cache (the HF cache for hub-hosted
  tags, ``~/.cache/clip`` for URL-hosted ones).
- ``clip@MODEL/FILE``: an open_clip model name and a local checkpoint file.
- ``clip@DIR``: a directory in open_clip's hub layout (``open_clip_config.json``
  plus ``open_clip_model.safetensors``), whose config also carries the preprocessing.
- ``clip@hf-hub:ORG/REPO``: the same layout from the local HF cache.
- ``clip@MODEL/none``: random initialisation (tests and shape checks only).

Preprocessing is the transform open_clip builds from the weights' own config
(mean, std, interpolation, resize mode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.encoders import hub
from relsearch.encoders.base import embed_in_batches, fingerprint_tensors, frozen, pick_device
from relsearch.errors import MissingWeightsError, RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_TAG = "openai"
RANDOM_INIT_TAG = "none"
_HF_CONFIG = "open_clip_config.json"
_HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipEncoder:
    name = "clip"
    kind = "attribute"

    def __init__(self, model: Any, transform: Any, device: str, identity: str, batch_size: int = 32,
                 tokenizer_name: str | None = None) -> None:
        import torch

        self.model = frozen(model, device)
        self.transform = transform  # open_clip's per-image PIL -> tensor
        self.device = device
        self.batch_size = batch_size
        self.identity = identity
        #: open_clip model name the text tokenizer is built from (None: no text tower)
        self.tokenizer_name = tokenizer_name
        self._tokenizer: Any = None
        with torch.inference_mode():
            probe = self.transform(_blank())[None].to(device)
            self.dim = int(self.model.encode_image(probe).shape[-1])
        # Only the image tower is used. Its repr carries what the weights alone do
        # not (activation, e.g. QuickGELU), the transform carries the preprocessing;
        # the source label is left out so one set of weights has one fingerprint.
        extra = f"clip/{self.model.visual!r}/{self.transform!r}"
        self._fingerprint = fingerprint_tensors(self.model.visual.state_dict().items(), extra=extra)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        def forward(chunk: list[Image.Image]) -> torch.Tensor:
            x = torch.stack([self.transform(img.convert("RGB")) for img in chunk])
            return self.model.encode_image(x.to(self.device))

        return embed_in_batches(images, self.dim, self.batch_size, forward)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """CLIP's text tower: ``[len(texts), dim]`` unit rows in the image space (free-text search)."""
        import torch

        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self._tokenizer(texts[start : start + self.batch_size]).to(self.device)
                vec = self.model.encode_text(tokens).float()
                vec = vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                out[start : start + len(vec)] = vec.cpu().numpy()
        return out

    def _make_tokenizer(self) -> Any:
        import open_clip

        if self.tokenizer_name is None or not hasattr(self.model, "encode_text"):
            raise RelsearchError(f"clip ({self.identity}) has no text tower to search with a caption")
        try:
            return open_clip.get_tokenizer(self.tokenizer_name, context_length=self.model.context_length)
        except (OSError, ValueError, RuntimeError) as exc:  # a hub tokenizer missing from the local cache
            raise RelsearchError(f"clip ({self.identity}): cannot build its text tokenizer offline: "
                                 f"{' '.join(str(exc).split())[:200]}") from exc


def load(source: str | None = None, device: str | None = None) -> ClipEncoder:
    """Build the CLIP encoder for ``source`` (see the module docstring)."""
    try:
        import open_clip
    except ImportError as exc:
        raise RelsearchError("encoder 'clip' needs open_clip_torch: pip install 'relsearch[clip]'") from exc

    kwargs, identity = _resolve(source or f"{DEFAULT_MODEL}/{DEFAULT_TAG}", open_clip)
    try:
        model, _, transform = open_clip.create_model_and_transforms(**kwargs)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise RelsearchError(f"clip: cannot build {identity}: {' '.join(str(exc).split())[:300]}") from exc
    return ClipEncoder(model, transform, pick_device(device), identity, tokenizer_name=kwargs["model_name"])


def _resolve(source: str, open_clip: Any) -> tuple[dict[str, Any], str]:
    """open_clip arguments that load ``source`` from local files only, and a label for it."""
    if source.startswith("hf-hub:"):
        repo = source[len("hf-hub:"):]
        folder = _cached_hub_folder(repo)
        return {"model_name": f"local-dir:{folder}"}, f"hf-hub:{repo}"

    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / _HF_CONFIG).is_file() or not any((path / w).is_file() for w in _HF_WEIGHTS):
            raise hub.missing_weights("clip", [_HF_CONFIG, " or ".join(_HF_WEIGHTS)], str(path), None)
        return {"model_name": f"local-dir:{path}"}, f"local-dir:{path.name}"
    if path.is_file():
        raise RelsearchError(
            f"clip@{source}: a checkpoint file needs its architecture: use clip@MODEL/{source} "
            f"(e.g. clip@{DEFAULT_MODEL}-quickgelu/{source} for OpenAI weights)"
        )

    model_name, sep, tag = source.partition("/")
    tag = tag if sep else DEFAULT_TAG
    if model_name not in open_clip.list_models():
        raise RelsearchError(f"clip: unknown open_clip model {model_name!r} (see open_clip.list_models())")
    if tag.lower() == RANDOM_INIT_TAG:
        return {"model_name": model_name, "pretrained": None}, f"{model_name}/random-init"
    if os.path.isfile(tag):
        return {"model_name": model_name, "pretrained": tag}, f"{model_name}/file:{Path(tag).name}"

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise RelsearchError(
            f"clip: {tag!r} is neither a pretrained tag of {model_name} nor a file; "
            f"valid tags: {', '.join(tags) or 'none'} (or {RANDOM_INIT_TAG!r} for random init)"
        )
    weights = _cached_tag_weights(cfg)
    kwargs: dict[str, Any] = {"model_name": model_name, "pretrained": weights}
    if weights is None:
        if not hub.download_allowed():
            raise _missing_tag(model_name, tag, cfg)
        kwargs["pretrained"] = tag  # the user allowed open_clip to fetch it
    else:
        # Loading by file loses what the tag implies; pass it on explicitly.
        kwargs.update(
            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            image_mean=cfg.get("mean"),
            image_std=cfg.get("std"),
            image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"),
        )
    return kwargs, f"{model_name}/{tag}"


def _hub_file_candidates(hf_hub: str) -> tuple[str, list[str]]:
    # open_clip's convention: "org/repo/" (default file names) or "org/repo/file".
    repo, filename = os.path.split(hf_hub)
    if not filename:
        return repo, list(_HF_WEIGHTS)
    stem, ext = os.path.splitext(filename)
    alternatives = [stem + ".safetensors"] if ext in {".bin", ".pth"} else []
    return repo, alternatives + [filename]


def _cached_tag_weights(cfg: dict[str, Any]) -> str | None:
    if cfg.get("hf_hub"):
        repo, names = _hub_file_candidates(cfg["hf_hub"])
        for name in names:
            found = hub.resolve_file(repo, name)
            if found:
                return found
    if cfg.get("url"):
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if cached.is_file():
            return str(cached)
    return None


def _missing_tag(model_name: str, tag: str, cfg: dict[str, Any]) -> MissingWeightsError:
    places, files, command = [], [], None
    if cfg.get("hf_hub"):
        repo, names = _hub_file_candidates(cfg["hf_hub"])
        files += [f"{repo}/{n}" for n in names]
        places.append(f"the local Hugging Face cache {hub.hf_cache_dir()}")
        command = hub.fetch_command(repo, names[:1])
    if cfg.get("url"):
        files.append(os.path.basename(cfg["url"]))
        places.append(str(Path("~/.cache/clip").expanduser()))
    return hub.missing_weights(f"clip {model_name}/{tag}", files, " and ".join(places), command)


def _cached_hub_folder(repo: str) -> Path:
    snapshot = hub.resolve_dir(repo, [_HF_CONFIG], f"clip hf-hub:{repo}")
    if not any((snapshot / w).is_file() for w in _HF_WEIGHTS):
        raise hub.missing_weights(f"clip hf-hub:{repo}", list(_HF_WEIGHTS), str(snapshot), hub.fetch_command(repo))
    return snapshot


def _blank() -> Image.Image:
    from PIL import Image

    return Image.new("RGB", (32, 32))
