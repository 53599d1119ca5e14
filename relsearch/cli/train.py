"""CLI commands: train (a relational encoder on anonymous captions), train-head (tune relsim-mini's head)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer

from relsearch.cli.app import DeviceOpt, app, print_json, user_errors
from relsearch.errors import RelsearchError
from relsearch.extras import require as require_extra


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``KEY=JSON`` items -> dict (a value that is not JSON stays a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RelsearchError(f"--model-arg needs KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command("train")
@user_errors
def train_cmd(
    data: Annotated[str, typer.Option("--data", help="Captions JSONL ({image, caption}) or the paper's release rows.")],
    out: Annotated[str, typer.Option("--out", help="Output folder: checkpoint, metrics.jsonl, final weights.")],
    encoder: Annotated[str, typer.Option("--encoder", help="NAME or NAME@SOURCE.")] = "relsim-mini",
    val: Annotated[str | None, typer.Option("--val", help="Validation JSONL (labels.jsonl adds precision/leakage).")]
    = None,
    image_dir: Annotated[str | None, typer.Option("--image-dir", help="Image folder for the paper's release format.")]
    = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    steps: Annotated[int | None, typer.Option("--steps", help="Total steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    lr: Annotated[float, typer.Option("--lr")] = 1e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.01,
    warmup_frac: Annotated[float, typer.Option("--warmup-frac")] = 0.05,
    grad_clip: Annotated[float, typer.Option("--grad-clip")] = 1.0,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.07,
    symmetric: Annotated[bool, typer.Option("--symmetric", help="Add the caption -> image loss.")] = False,
    loss_mode: Annotated[str, typer.Option(
        "--loss", metavar="multipos|infonce", help="multipos (near-duplicate captions are positives too) or infonce.")] = "multipos",
    pos_threshold: Annotated[float, typer.Option("--pos-threshold")] = 0.9,
    family_positives: Annotated[bool, typer.Option(
        "--family-positives", help="Captions of the same family label are positives too (labels.jsonl data).")]
    = False,
    group_batches: Annotated[bool, typer.Option(
        "--group-batches", help="Batches keep composed groups whole (compose --grouped rows): scenes that "
        "differ only in relation meet in one batch.")] = False,
    image_loss: Annotated[float, typer.Option(
        "--image-loss", help="Weight of an image -> image term: scenes of the same family are positives, "
        "all others negatives (needs --family-positives; best with --group-batches).")] = 0.0,
    distill: Annotated[float, typer.Option(
        "--distill", metavar="W", help="Weight of the teacher term on rows marked \"target\": \"teacher\" "
        "(ordinary photographs keep the teacher's pairwise cosines; compose --photo-edits writes them).")] = 0.0,
    teacher: Annotated[str, typer.Option(
        "--teacher", metavar="ENCODER", help="Encoder whose neighbourhoods the teacher rows keep.")] = "imagenet",
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every")] = 100,
    cache_views: Annotated[int, typer.Option(
        "--cache-views", help="Cached frozen-feature views per image (0: augment every step).")] = 3,
    cache_from: Annotated[str | None, typer.Option(
        "--cache-from", metavar="RUN", help="Reuse an earlier run's frozen-feature cache (its folder or "
        "feature_cache.pt) whose rows are the first rows of --data; only the rows after them are computed.")]
    = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
    model_arg: Annotated[list[str] | None, typer.Option(
        "--model-arg", metavar="KEY=JSON", help="relsim-mini architecture override, e.g. d_model=128 (repeatable); with relsim-mini@DIR, trunk_blocks / image_size grow the trained weights.")]
    = None,
    resume: Annotated[bool, typer.Option("--resume")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train a relational encoder on anonymous captions; prints the summary as JSON."""
    require_extra("train", "relsearch train")
    from relsearch.train.trainer import TrainConfig, train

    for flag, value in (("--lr", lr), ("--weight-decay", weight_decay), ("--warmup-frac", warmup_frac),
                        ("--grad-clip", grad_clip), ("--temperature", temperature), ("--image-loss", image_loss),
                        ("--distill", distill)):
        if not math.isfinite(value):  # nan slips past every range check, inf turns the loss into nan
            raise RelsearchError(f"{flag} must be a finite number, got {value}")
    try:
        config = TrainConfig(
            data=data, out=out, encoder=encoder, val=val, image_dir=image_dir, epochs=epochs, steps=steps,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_frac=warmup_frac,
            grad_clip=grad_clip, temperature=temperature, symmetric=symmetric, loss_mode=loss_mode,
            pos_threshold=pos_threshold, family_positives=family_positives,
            group_batches=group_batches, image_loss=image_loss, distill=distill, teacher=teacher,
            checkpoint_every=checkpoint_every,
            cache_views=cache_views, cache_from=cache_from, seed=seed, device=device, threads=threads, resume=resume,
            progress=progress, model_args=parse_model_args(model_arg or []),
        )
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    result = train(config)
    print_json({"out": result.out, "steps": result.steps, "final_loss": result.final_loss, "val": result.val,
                "seconds": round(result.seconds, 1)})


@app.command("train-head")
@user_errors
def train_head_cmd(
    init: Annotated[str, typer.Option("--init", help="Trained relsim-mini weights folder to start from.")],
    data: Annotated[str, typer.Option("--data", help="labels.jsonl of the training corpus.")],
    out: Annotated[str, typer.Option("--out", help="Output folder (config.json + model.safetensors).")],
    val: Annotated[str | None, typer.Option("--val", help="labels.jsonl of a validation corpus.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 3000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    lr: Annotated[float, typer.Option("--lr")] = 5e-4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
    save_every: Annotated[int, typer.Option("--save-every", min=0, help="Also save a release every N steps.")] = 0,
) -> None:
    """Tune relsim-mini's query head on cached upper-block features; prints the summary as JSON."""
    require_extra("train", "relsearch train-head")
    from relsearch.train.head_tune import tune

    if not math.isfinite(lr) or lr <= 0:
        raise RelsearchError(f"--lr must be a positive finite number, got {lr}")
    summary = tune(init, data, out, val, steps, batch_size, lr, seed=seed, threads=threads,
                   log=lambda m: typer.echo(m), save_every=save_every)
    print_json(summary)
