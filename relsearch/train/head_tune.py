"""Second-stage training of relsim-mini: tune the query head on cached upper-block features.

The first stage (``relsearch train``) trains LoRA on blocks 12-15 and the head from scratch; each
step runs four backbone blocks. Starting from trained weights, this stage keeps the LoRA blocks as
they are, runs the whole backbone once per image (merged, bf16 where the CPU has it: inference
speed) and caches the 7 x 7 x 320 map, then trains only the head, whose steps cost milliseconds.
That buys tens of epochs over a new corpus (new families, photographs, JPEG) in the time the
first stage needs for one.

    relsearch train-head --init relsearch/weights/relsim-mini \\
        --data corpus/train/labels.jsonl --val corpus/val/labels.jsonl --out runs/head --steps 3000

Augmentation on the cached maps: a left-right flip (no relation family depends on handedness).
Loss: the multi-positive image -> caption loss with same-family positives, as the first stage.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from relsearch.errors import RelsearchError
from relsearch.threads import use_threads
from relsearch.train.data import CaptionRecord, load_image, read_dataset
from relsearch.train.loss import LossConfig, contrastive_loss


def _read_cache(cache: Path, key: str) -> torch.Tensor | None:
    """The cached maps when ``cache`` holds them for ``key``; None for another key or no file.

    The cache is a safetensors file (tensors and a string header, nothing that can run code
    when read): a file planted in a run folder can at worst be refused.
    """
    if not cache.is_file():
        return None
    try:
        with safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("features")
    except Exception as exc:  # not safetensors, truncated, no "features"
        raise RelsearchError(f"cannot read the feature cache {cache}: {exc}; delete it to recompute") from exc


def upper_features(init: str, records: list[CaptionRecord], cache: Path, batch: int = 32,
                   log: Any = None) -> torch.Tensor:
    """[N, 320, 7, 7] float16 maps after the (merged) LoRA blocks, cached in ``cache``."""
    from relsearch.encoders.relsim_mini import load

    enc = load(init)
    key = json.dumps({"fingerprint": enc.fingerprint, "images": [r.image for r in records]})
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    enc._ready_for_inference()  # merged LoRA + folded BatchNorm, channels-last
    model = enc.model
    parts = []
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        ims = [load_image(r.image) for r in records[i : i + batch]]
        x = enc.preprocess_batch(ims).to(enc.device)
        with torch.inference_mode(), enc._autocast():
            parts.append(model.upper(model.trunk(x)).to(torch.float16).cpu())
        if log and (i // batch) % 10 == 0:
            log(f"features {i + len(ims)}/{len(records)} {time.perf_counter() - started:.0f}s")
    feats = torch.cat(parts)
    tmp = cache.with_suffix(".tmp")
    save_file({"features": feats.contiguous()}, str(tmp), metadata={"key": key})
    tmp.replace(cache)
    return feats


def _family_groups(records: list[CaptionRecord]) -> torch.Tensor:
    if not all(r.family for r in records):
        raise RelsearchError("head tuning needs a 'family' on every row (train on labels.jsonl)")
    names = {f: i for i, f in enumerate(sorted({r.family for r in records}))}
    return torch.tensor([names[r.family] for r in records])


def evaluate_head(head: torch.nn.Module, feats: torch.Tensor, records: list, text: np.ndarray) -> dict[str, Any]:
    """Validation report of ``head`` over cached upper features (eval mode, then back to train)."""
    from relsearch.train.trainer import validate

    head.eval()
    with torch.no_grad():
        emb = torch.cat([torch.nn.functional.normalize(head(feats[i : i + 256].float()), dim=-1)
                         for i in range(0, len(feats), 256)]).numpy()
    head.train()
    return validate(emb, records, text, 0.9)


def flipped_batch(feats: torch.Tensor, idx: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The rows ``idx`` of the cached maps, about half of them mirrored left to right."""
    x = feats[idx].float()
    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
    x[flip] = torch.flip(x[flip], dims=[3])
    return x


def tune(init: str, data: str, out: str, val: str | None = None, steps: int = 3000, batch_size: int = 128,
         lr: float = 5e-4, weight_decay: float = 0.01, warmup_frac: float = 0.05, temperature: float = 0.07,
         seed: int = 0, threads: int | None = None, log: Any = print, save_every: int = 0) -> dict[str, Any]:
    """Tune the head of the relsim-mini at ``init`` on ``data``; saves the release into ``out``.

    ``save_every`` > 0 also saves a release every that many steps into ``out/stepN`` (a run cut
    short by the clock still leaves usable weights).
    """
    from relsearch.encoders.relsim_mini import load
    from relsearch.train.trainer import lr_lambda, text_embeddings

    if threads:
        use_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_dataset(data)
    groups = _family_groups(records)
    feats = upper_features(init, records, out_dir / "upper_features.safetensors", log=log)
    text = text_embeddings(records, None)
    val_records = read_dataset(val) if val else None
    val_feats = upper_features(init, val_records, out_dir / "val_upper_features.safetensors") if val_records else None

    enc = load(init, trainable=True)  # the peft model: what ``save`` writes LoRA + head from
    head = enc.model.head
    # Only the head is optimised; LoRA keeps requires_grad (it is part of the saved release) but
    # gets no gradient: the cached maps are computed after it.
    params = list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, max(1, int(warmup_frac * steps))))
    loss_cfg = LossConfig(temperature=temperature)
    n = len(records)
    history = []
    log_every = max(1, min(50, steps // 10))
    started = time.perf_counter()

    val_text = text_embeddings(val_records, None).numpy() if val_records else None

    def evaluate() -> dict[str, Any]:
        return evaluate_head(head, val_feats, val_records, val_text)

    head.train()
    order = rng.permutation(n)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + batch_size])
        pos += batch_size
        x = flipped_batch(feats, idx, rng)
        emb = torch.nn.functional.normalize(head(x), dim=-1)
        loss = contrastive_loss(emb, text[idx], loss_cfg, groups[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row: dict[str, Any] = {"step": step + 1, "loss": round(loss.item(), 4),
                                   "seconds": round(time.perf_counter() - started, 1)}
            if val_records and ((step + 1) % (10 * log_every) == 0 or step + 1 == steps):
                row.update({k: round(v, 4) for k, v in evaluate().items()})
            history.append(row)
            log(json.dumps(row))
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            head.eval()
            enc.save(str(out_dir / f"step{step + 1}"))
            head.train()
    head.eval()
    enc.save(str(out_dir))
    summary = {"init": init, "data": data, "steps": steps, "batch_size": batch_size, "lr": lr,
               "train_pairs": n, "final": history[-1] if history else None,
               "seconds": round(time.perf_counter() - started, 1)}
    (out_dir / "head_tune.json").write_text(json.dumps({"summary": summary, "history": history}, indent=2) + "\n")
    if not math.isfinite(loss.item()):
        raise RelsearchError("training diverged (loss is not finite)")
    return summary
