"""Contrastive training of a relational image encoder into the MiniLM caption space.

One loop for any :class:`~relsearch.encoders.base.TrainableEncoder` (relsim-mini,
relsim): image -> caption InfoNCE (see :mod:`relsearch.train.loss`), AdamW,
warmup + cosine, gradient clipping, atomic checkpoints with everything needed to
resume bit-for-bit (trainable weights, optimizer, scheduler, step, RNG), a
validation pass per epoch, metrics as JSONL.

The data order is a pure function of ``(seed, epoch)``, so a run resumed at step
``s`` sees exactly the batches an uninterrupted run would have seen.

Encoders that expose ``cache_features(batch)`` (relsim-mini: its frozen trunk)
get those features computed once per image and augmented view and cached in
the output folder; each step then only runs the trainable part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relsearch.atomic import atomic_write
from relsearch.encoders.base import FeatureCachingEncoder, TrainableEncoder
from relsearch.errors import RelsearchError
from relsearch.threads import use_threads
from relsearch.train.data import CaptionRecord, load_image, read_dataset
from relsearch.train.loss import (
    LossConfig,
    contrastive_loss,
    image_label_loss,
    positive_mask,
    teacher_similarity_loss,
)
from relsearch.train.safe_state import load_tensors, rng_state, set_rng_state

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CACHE_NAME = "feature_cache.pt"
ARGS_NAME = "train_args.json"
TEACHER_NAME = "teacher_vectors.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; written to ``train_args.json`` in the output folder."""

    data: str
    out: str
    encoder: str = "relsim-mini"
    val: str | None = None
    image_dir: str | None = None
    epochs: int = 10
    #: total optimisation steps; None means ``epochs`` full passes.
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    temperature: float = 0.07
    symmetric: bool = False
    loss_mode: str = "multipos"
    pos_threshold: float = 0.9
    #: also treat captions of the same ``family`` label as positives (labelled data only).
    family_positives: bool = False
    #: fill batches with whole composed groups (``compose --grouped``: one object set and
    #: background drawn in every family), so a batch holds scenes that differ only in relation.
    group_batches: bool = False
    #: weight of the image -> image term among scenes of the same family (needs family_positives).
    image_loss: float = 0.0
    #: weight of the teacher-similarity term on rows marked ``"target": "teacher"`` (ordinary
    #: photographs keep the teacher's pairwise cosines instead of sharing one caption).
    distill: float = 0.0
    #: the encoder whose neighbourhoods those rows keep.
    teacher: str = "imagenet"
    checkpoint_every: int = 100
    #: frozen-feature views per image (view 0 clean, others augmented); 0 = no cache.
    cache_views: int = 3
    #: an earlier run (or its feature_cache.pt) whose cached rows are the first rows of ``data``:
    #: those features are reused and only the rows after them are computed.
    cache_from: str | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    resume: bool = False
    progress: bool = True
    #: architecture overrides for a fresh relsim-mini (e.g. {"d_model": 128}).
    model_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for a contrastive loss, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("weight_decay must be >= 0 and grad_clip > 0")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        if self.family_positives and self.loss_mode != "multipos":
            raise ValueError("family_positives needs loss_mode 'multipos'")
        if self.image_loss < 0 or self.distill < 0:
            raise ValueError(f"image_loss and distill must be >= 0, got {self.image_loss!r}, {self.distill!r}")
        if self.image_loss and not self.family_positives:
            raise ValueError("image_loss compares scenes by family label: it needs family_positives")
        if self.cache_views < 0:
            raise ValueError(f"cache_views must be >= 0, got {self.cache_views!r}")
        if self.cache_from and not self.cache_views:
            raise ValueError("cache_from reuses cached frozen features: it needs cache_views >= 1")
        self.loss_config()  # validates temperature / mode / threshold

    def loss_config(self) -> LossConfig:
        return LossConfig(temperature=self.temperature, symmetric=self.symmetric,
                          mode=self.loss_mode, pos_threshold=self.pos_threshold)


@dataclass
class TrainResult:
    out: str
    steps: int
    final_loss: float
    val: dict[str, Any] | None
    seconds: float


# -- encoder construction ---------------------------------------------------------------


def build_encoder(spec: str, device: str | None, model_args: dict[str, Any]) -> TrainableEncoder:
    """A trainable encoder for ``NAME`` or ``NAME@SOURCE``.

    ``relsim-mini`` without a source starts from a fresh head (ImageNet backbone,
    zero LoRA): training reproduces the shipped weights rather than tuning them. With a
    source and model args (``trunk_blocks``, ``image_size``) it grows the trained weights
    (:func:`relsearch.encoders.relsim_mini.grow`).
    """
    from relsearch.encoders import EncoderSpec, resolve_factory

    try:
        parsed = EncoderSpec.parse(spec)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    if parsed.name == "relsim-mini" and parsed.source is None:
        from relsearch.encoders.relsim_mini import RelsimMiniConfig, RelsimMiniEncoder

        try:
            config = RelsimMiniConfig(**model_args)
        except (TypeError, ValueError) as exc:
            raise RelsearchError(f"bad relsim-mini model args: {exc}") from exc
        return RelsimMiniEncoder(config, device=device)
    if parsed.name == "relsim-mini" and model_args:
        from relsearch.encoders.relsim_mini import grow

        return grow(parsed.source, device=device, **model_args)
    if model_args:
        raise RelsearchError("model args only apply to relsim-mini")
    encoder = resolve_factory(parsed.name)(source=parsed.source, device=device)
    if not isinstance(encoder, TrainableEncoder):
        raise RelsearchError(f"encoder {parsed.name!r} cannot be trained (no train_module/forward_train)")
    return encoder


# -- schedule, checkpoint ---------------------------------------------------------------


def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine to 0 at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write then rename: a kill mid-write leaves the previous file intact."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def save_checkpoint(path: Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, config: TrainConfig) -> None:
    trainable = {k: v.detach().cpu().clone() for k, v in module.named_parameters() if v.requires_grad}
    atomic_torch_save({
        "step": step,
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": asdict(config),
    }, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; refuses one that could run code."""
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or not {"step", "trainable", "rng"} <= set(state):
        raise RelsearchError(f"cannot read checkpoint {path}: not a relsearch training checkpoint")
    return state


# -- data -------------------------------------------------------------------------------


def batch_indices(n: int, batch_size: int, seed: int, step: int,
                  units: list[np.ndarray] | None = None) -> np.ndarray:
    """Item ids of global ``step``: a per-epoch permutation, last partial batch dropped.

    With ``units`` (:func:`group_units`), the epoch's order permutes whole groups, keeping each
    one's rows next to each other.
    """
    per_epoch = n // batch_size
    epoch, b = divmod(step, per_epoch)
    if units is None:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.concatenate([units[i] for i in np.random.default_rng([seed, epoch, 3]).permutation(len(units))])
    return order[b * batch_size : (b + 1) * batch_size]


def group_units(records: list[CaptionRecord]) -> list[np.ndarray]:
    """Row ids bundled by composed group; a group is (image folder, group id), ungrouped rows stand alone."""
    units: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        key = (str(Path(r.image).parent), r.group) if r.group is not None else i
        units.setdefault(key, []).append(i)
    return [np.asarray(v) for v in units.values()]


def batch_views(idx: np.ndarray, views: int, seed: int, step: int) -> np.ndarray:
    return np.random.default_rng([seed, step, 1]).integers(0, views, size=len(idx))


def prepare_batch(encoder: TrainableEncoder, images: list, train: bool,
                  generator: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """``encoder.prepare`` with our seeded generator (augmentations replay exactly on resume)."""
    return encoder.prepare(images, train=train, generator=generator)


def _records_key(records: list[CaptionRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.image.encode())
        try:
            st = os.stat(r.image)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            pass
    return h.hexdigest()[:16]


def build_feature_cache(encoder: FeatureCachingEncoder, records: list[CaptionRecord], views: int, seed: int,
                        path: Path | None, progress: bool, batch_size: int = 32,
                        base: Path | None = None) -> dict[str, torch.Tensor]:
    """Frozen features for every image and view: ``{key: [views, N, ...]}``, reused from ``path``.

    ``base``, another run's cache whose rows are the first rows of ``records`` (an earlier
    round's data), supplies those rows; only the rows after them are computed. A cache read
    from a file is memory-mapped: a training run over a cache of many gigabytes reads the rows
    of each batch from the page cache instead of holding the whole cache in its own memory.
    """
    # Only the frozen part matters: runs with other heads or seeds share the cache.
    fp = encoder.cache_fingerprint
    key = f"{fp}:{_records_key(records)}:{views}:{seed}"
    if path is not None and path.is_file():
        try:
            cached = load_tensors(path, "feature cache", mmap=True)
        except RelsearchError as exc:  # damaged or unsafe: recomputed and overwritten below
            logging.getLogger(__name__).warning("%s; recomputing it", exc)
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["features"]
    prefix = _cached_prefix(base, fp, records, views, seed) if base is not None else {}
    first = next(iter(prefix.values())).shape[1] if prefix else 0
    from tqdm import tqdm

    # One tensor per feature, filled in place: no second full copy while it is assembled.
    features: dict[str, torch.Tensor] = {}

    def slot(name: str, rows: torch.Tensor) -> torch.Tensor:
        if name not in features:
            features[name] = torch.empty((views, len(records), *rows.shape[1:]), dtype=rows.dtype)
        return features[name]

    for name, t in prefix.items():
        slot(name, t[0])[:, :first] = t
    bar = tqdm(total=views * (len(records) - first), desc="caching frozen features", unit="img",
               disable=not progress, file=sys.stderr)
    for start in range(first, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [load_image(r.image) for r in chunk]
        for v in range(views):
            rng = np.random.default_rng([seed, v, start])
            feats = encoder.cache_features(prepare_batch(encoder, images, v > 0, rng))
            for name, t in feats.items():
                slot(name, t)[v, start : start + len(chunk)] = t
            bar.update(len(chunk))
    bar.close()
    if path is None:
        return features
    atomic_torch_save({"key": key, "features": features}, path)
    features.clear()  # the file is the cache now: drop the in-memory copy
    return load_tensors(path, "feature cache", mmap=True)["features"]


def _cache_file(source: str | None) -> Path | None:
    """``--cache-from``: a run folder (its feature_cache.pt) or the cache file itself."""
    if not source:
        return None
    path = Path(source)
    if path.is_dir():
        path = path / CACHE_NAME
    if not path.is_file():
        raise RelsearchError(f"--cache-from {source}: no feature cache there")
    return path


def _cached_prefix(base: Path, fp: str, records: list[CaptionRecord], views: int,
                   seed: int) -> dict[str, torch.Tensor]:
    """The features of ``base`` (a cache file) when its rows are the first rows of ``records``.

    Memory-mapped, so reusing a cache of many gigabytes does not hold it twice in memory.
    """
    cached = load_tensors(base, "feature cache", mmap=True)
    parts = cached.get("key", "").rsplit(":", 3) if isinstance(cached, dict) else []
    feats = cached.get("features") if isinstance(cached, dict) else None
    if len(parts) != 4 or not isinstance(feats, dict) or not feats:
        raise RelsearchError(f"{base} is not a relsearch feature cache")
    their_fp, their_rows, their_views, their_seed = parts
    if their_fp != fp:
        raise RelsearchError(f"feature cache {base} was computed by another frozen trunk ({their_fp}; this "
                             f"encoder's is {fp}): it cannot be reused")
    if their_views != str(views) or their_seed != str(seed):
        raise RelsearchError(f"feature cache {base} holds {their_views} view(s) drawn with seed {their_seed}; "
                             f"reuse it with --cache-views {their_views} --seed {their_seed}")
    n = next(iter(feats.values())).shape[1]
    if n > len(records) or _records_key(records[:n]) != their_rows:
        raise RelsearchError(f"feature cache {base} holds {n} images that are not the first {n} rows of the "
                             "training data (same files, unchanged): start this round's data with the earlier "
                             "round's rows")
    return feats


@dataclass
class Batch:
    """One step's inputs, caption targets, family ids (or None) and row ids into the data."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    groups: torch.Tensor | None
    rows: torch.Tensor


class BatchSource:
    """Batches by global step, from cached features or freshly prepared images."""

    def __init__(self, encoder: Any, records: list[CaptionRecord], text_emb: torch.Tensor,
                 config: TrainConfig, features: dict[str, torch.Tensor] | None,
                 groups: torch.Tensor | None = None) -> None:
        self.groups = groups
        self.encoder = encoder
        self.records = records
        self.text_emb = text_emb
        self.config = config
        self.features = features
        self.units = group_units(records) if config.group_batches else None

    def __call__(self, step: int) -> Batch:
        cfg = self.config
        idx = batch_indices(len(self.records), cfg.batch_size, cfg.seed, step, self.units)
        if self.features is not None:
            views = next(iter(self.features.values())).shape[0]
            v = torch.from_numpy(batch_views(idx, views, cfg.seed, step))
            ii = torch.from_numpy(idx)
            batch = {name: t[v, ii] for name, t in self.features.items()}
        else:
            rng = np.random.default_rng([cfg.seed, step, 2])
            images = [load_image(self.records[i].image) for i in idx]
            batch = prepare_batch(self.encoder, images, True, rng)
        ii = torch.from_numpy(idx)
        return Batch(batch, self.text_emb[ii], None if self.groups is None else self.groups[ii], ii)


# -- validation -------------------------------------------------------------------------


def embed_for_eval(encoder: Any, records: list[CaptionRecord], features: dict[str, torch.Tensor] | None,
                   batch_size: int = 64) -> np.ndarray:
    """Eval-mode embeddings through ``forward_train`` (no LoRA merge, so training can go on)."""
    module = encoder.train_module()
    was_training = module.training
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            if features is not None:
                batch = {k: t[0, start : start + batch_size] for k, t in features.items()}
            else:
                images = [load_image(r.image) for r in records[start : start + batch_size]]
                batch = encoder.prepare(images, train=False)
            out.append(encoder.forward_train(batch).float().cpu())
    module.train(was_training)
    emb = torch.cat(out).numpy()
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def validate(image_emb: np.ndarray, records: list[CaptionRecord], text_emb: np.ndarray,
             pos_threshold: float, k: int = 10) -> dict[str, Any]:
    """Image -> caption recall@1/5 (a hit is any caption positive for the row), plus, when
    the rows carry family labels, relational precision@k, leakage@k and caption -> image
    precision@k over the distinct captions."""
    caps = sorted({r.caption for r in records})
    cap_id = {c: i for i, c in enumerate(caps)}
    first = {}
    for i, r in enumerate(records):
        first.setdefault(r.caption, i)
    uniq = np.stack([text_emb[first[c]] for c in caps])
    own = np.array([cap_id[r.caption] for r in records])
    positive = positive_mask(torch.from_numpy(uniq), pos_threshold).numpy()[own]  # [N, C]
    ranked = np.argsort(-(image_emb @ uniq.T), axis=1, kind="stable")
    report: dict[str, Any] = {}
    for kk in (1, 5):
        top = ranked[:, :kk]
        report[f"i2t_recall@{kk}"] = float(np.take_along_axis(positive, top, 1).any(1).mean())
    families = [r.family for r in records]
    if all(families):
        from relsearch import retrieval_metrics as metrics

        objects = [r.objects for r in records]
        rel = metrics.retrieval_report(image_emb, families, objects if all(objects) else None, k=k)
        report[f"precision@{k}"] = rel["precision_at_k"]
        if "leakage_at_k" in rel:
            report[f"leakage@{k}"] = rel["leakage_at_k"]
        cap_family = {}
        for r in records:
            cap_family.setdefault(r.caption, r.family)
        t2i = metrics.text_to_image_precision(uniq, [cap_family[c] for c in caps], image_emb, families, k=k)
        report[f"t2i_precision@{k}"] = t2i["precision_at_k"]
    return report


# -- the loop ---------------------------------------------------------------------------


class _Log:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def text_embeddings(records: list[CaptionRecord], device: str | None) -> torch.Tensor:
    """MiniLM embedding of every record's caption (each distinct caption embedded once)."""
    from relsearch.encoders.text import text_tower

    caps = sorted({r.caption for r in records})
    emb = text_tower(device).embed_tensor(caps)
    pos = {c: i for i, c in enumerate(caps)}
    return emb[torch.tensor([pos[r.caption] for r in records])]


def teacher_vectors(records: list[CaptionRecord], spec: str, path: Path | None,
                    device: str | None) -> torch.Tensor:
    """``[N, E]`` L2-normalised vectors of the teacher rows under encoder ``spec`` (zeros for the
    others), computed once and kept in ``path``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    rows = [i for i, r in enumerate(records) if r.teacher]
    key = f"{spec}:{_records_key([records[i] for i in rows])}"
    if path is not None and path.is_file():
        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") == key:
                return fh.get_tensor("vectors")
    from relsearch.encoders import get_encoder

    try:
        teacher = get_encoder(spec, device=device)
    except (ValueError, KeyError) as exc:
        raise RelsearchError(f"--teacher {spec}: {exc}") from exc
    parts = [teacher.embed([load_image(records[i].image) for i in rows[s : s + 32]]) for s in range(0, len(rows), 32)]
    found = np.concatenate(parts).astype(np.float32)
    vectors = torch.zeros((len(records), found.shape[1]), dtype=torch.float32)
    vectors[torch.tensor(rows)] = torch.from_numpy(found / np.linalg.norm(found, axis=1, keepdims=True))
    if path is not None:
        save_file({"vectors": vectors}, str(path), metadata={"key": key})
    return vectors


def family_ids(records: list[CaptionRecord]) -> torch.Tensor:
    """One id per family label; every teacher row gets an id of its own (it has no relation twin)."""
    if not all(r.family for r in records):
        raise RelsearchError("--family-positives needs a 'family' on every row (train on labels.jsonl)")
    names = {f: i for i, f in enumerate(sorted({r.family for r in records if not r.teacher}))}
    return torch.tensor([len(names) + i if r.teacher else names[r.family] for i, r in enumerate(records)])


@dataclass
class _Run:
    """What a training loop needs, set up from a :class:`TrainConfig`."""

    encoder: Any
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    source: BatchSource
    total: int
    steps_per_epoch: int
    val_records: list[CaptionRecord] | None
    val_text: np.ndarray | None
    val_features: dict[str, torch.Tensor] | None
    teacher_mask: torch.Tensor
    teacher_emb: torch.Tensor | None
    cached_views: int


def _check_paths(config: TrainConfig) -> tuple[list[CaptionRecord], list[CaptionRecord] | None, Path | None]:
    """Read the data and refuse a bad run before anything is written or loaded."""
    ckpt_path = Path(config.out) / CHECKPOINT_NAME
    if ckpt_path.exists() and not config.resume:
        raise RelsearchError(f"{ckpt_path} exists: pass --resume to continue it, or pick another --out")
    if config.resume and not ckpt_path.exists():
        raise RelsearchError(f"--resume given but no checkpoint at {ckpt_path}")
    records = read_dataset(config.data, image_dir=config.image_dir)
    if len(records) < config.batch_size:
        raise RelsearchError(f"{len(records)} training pairs is fewer than one batch of {config.batch_size}")
    val_records = read_dataset(config.val) if config.val else None
    if config.group_batches and not any(r.group is not None for r in records):
        raise RelsearchError("--group-batches needs grouped rows (a 'group' per row, from compose --grouped)")
    if any(r.teacher for r in records) and not config.distill:
        raise RelsearchError("the data has rows with \"target\": \"teacher\": give their weight with --distill W")
    return records, val_records, _cache_file(config.cache_from)


def _setup(config: TrainConfig) -> _Run:
    records, val_records, cache_base = _check_paths(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    encoder = build_encoder(config.encoder, config.device, dict(config.model_args))
    module = encoder.train_module()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise RelsearchError(f"encoder {config.encoder!r} has no trainable parameters")
    text_emb = text_embeddings(records, encoder.device)
    val_text = text_embeddings(val_records, encoder.device).numpy() if val_records else None
    can_cache = config.cache_views > 0 and isinstance(encoder, FeatureCachingEncoder)
    if config.cache_from and not can_cache:
        raise RelsearchError(f"--cache-from: encoder {config.encoder!r} has no frozen-feature cache")
    features = val_features = None
    if can_cache:
        features = build_feature_cache(encoder, records, config.cache_views, config.seed,
                                       out / CACHE_NAME, config.progress, base=cache_base)
        if val_records:
            val_features = build_feature_cache(encoder, val_records, 1, config.seed,
                                               out / ("val_" + CACHE_NAME), config.progress)
    teacher_mask = torch.tensor([r.teacher for r in records])
    teacher_emb = (teacher_vectors(records, config.teacher, out / TEACHER_NAME, config.device)
                   if bool(teacher_mask.any()) else None)
    groups = family_ids(records) if config.family_positives else None
    steps_per_epoch = len(records) // config.batch_size
    return _Run(encoder=encoder, module=module, params=params,
                source=BatchSource(encoder, records, text_emb, config, features, groups),
                total=config.steps if config.steps is not None else config.epochs * steps_per_epoch,
                steps_per_epoch=steps_per_epoch, val_records=val_records, val_text=val_text,
                val_features=val_features, teacher_mask=teacher_mask, teacher_emb=teacher_emb,
                cached_views=config.cache_views if can_cache else 0)


def _restore(config: TrainConfig, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> int:
    """Load ``--resume``'s checkpoint into the run; returns its step."""
    ckpt_path = Path(config.out) / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path)
    named = dict(module.named_parameters())
    missing = sorted(set(state["trainable"]) - set(named))
    if missing:
        raise RelsearchError(f"checkpoint {ckpt_path} does not match the encoder (e.g. {missing[0]})")
    with torch.no_grad():
        for k, v in state["trainable"].items():
            named[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def step_loss(run: _Run, config: TrainConfig, loss_cfg: LossConfig, batch: Batch,
              image_emb: torch.Tensor) -> torch.Tensor:
    """The step's loss: captions for relation rows, image labels, teacher similarity for teacher rows."""
    device = image_emb.device
    groups = None if batch.groups is None else batch.groups.to(device)
    taught = run.teacher_mask[batch.rows].to(device)
    rel = ~taught
    loss = image_emb.sum() * 0.0
    if int(rel.sum()) >= 2:
        loss = contrastive_loss(image_emb[rel], batch.targets.to(device)[rel], loss_cfg,
                                None if groups is None else groups[rel])
    if config.image_loss:
        loss = loss + config.image_loss * image_label_loss(image_emb, groups, config.temperature)
    if config.distill and run.teacher_emb is not None and int(taught.sum()) >= 2:
        teacher = run.teacher_emb[batch.rows].to(device)[taught]
        loss = loss + config.distill * teacher_similarity_loss(image_emb[taught], teacher)
    return loss


def _validate_step(run: _Run, config: TrainConfig, log: _Log, step: int, bar: Any) -> dict[str, Any]:
    val_emb = embed_for_eval(run.encoder, run.val_records, run.val_features)
    report = validate(val_emb, run.val_records, run.val_text, config.pos_threshold)
    log.write({"step": step, "epoch": (step - 1) // run.steps_per_epoch, "val": report})
    bar.write(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in report.items()), file=sys.stderr)
    return report


def train(config: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run (or resume) a training run; returns a summary and prints nothing on stdout.

    ``on_step(step, loss)`` is called after every optimiser step (tests use it to
    stop a run mid-way, as a kill would).
    """
    started = time.time()
    if config.threads:  # through the one place that sets threads: encoders loaded later keep it
        use_threads(config.threads)
    run = _setup(config)
    out = Path(config.out)
    total = run.total
    optimizer = torch.optim.AdamW(run.params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, max(1, int(round(config.warmup_frac * total)))))
    loss_cfg = config.loss_config()
    if config.resume:
        step = _restore(config, run.module, optimizer, scheduler)
    else:
        step = 0
        (out / ARGS_NAME).write_text(json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")
    log = _Log(out / METRICS_NAME)
    log.write({"event": "start", "step": step, "total_steps": total, "train_pairs": len(run.source.records),
               "steps_per_epoch": run.steps_per_epoch, "cached_views": run.cached_views})
    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not config.progress, file=sys.stderr)
    run.module.train()
    loss_value = float("nan")
    val_report = None
    while step < total:
        batch = run.source(step)
        loss = step_loss(run, config, loss_cfg, batch, run.encoder.forward_train(batch.inputs).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        loss_value = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        log.write({"step": step, "epoch": (step - 1) // run.steps_per_epoch, "loss": loss_value,
                   "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                   "time": round(time.time() - started, 2)})
        if step % config.checkpoint_every == 0 or step == total:
            save_checkpoint(out / CHECKPOINT_NAME, step, run.module, optimizer, scheduler, config)
        if run.val_records and (step % run.steps_per_epoch == 0 or step == total):
            val_report = _validate_step(run, config, log, step, bar)
        if on_step is not None:
            on_step(step, loss_value)
    bar.close()
    run.module.eval()
    run.encoder.save(str(out))
    log.write({"event": "done", "step": step, "loss": loss_value, "time": round(time.time() - started, 2)})
    return TrainResult(out=str(out), steps=step, final_loss=loss_value, val=val_report,
                       seconds=time.time() - started)
