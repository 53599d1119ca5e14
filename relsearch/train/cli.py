"""``relsearch train`` as a plain function of argv (``main(argv) -> exit code``).

Kept free of typer so one test can run the whole pipeline in-process; the typer
command in ``relsearch.cli.train`` forwards its options here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from relsearch.errors import RelsearchError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relsearch train",
                                description="Train a relational encoder on anonymous captions.")
    p.add_argument("--data", required=True, help="captions JSONL ({image, caption}) or the paper's release rows")
    p.add_argument("--out", required=True, help="output folder: checkpoint, metrics.jsonl, final weights")
    p.add_argument("--encoder", default="relsim-mini", help="NAME or NAME@SOURCE (default relsim-mini)")
    p.add_argument("--val", default=None, help="validation JSONL (labels.jsonl adds precision/leakage)")
    p.add_argument("--image-dir", default=None, help="image folder for the paper's release format")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="total steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--symmetric", action="store_true", help="add the caption -> image loss")
    p.add_argument("--loss", dest="loss_mode", choices=["multipos", "infonce"], default="multipos",
                   help="multipos: near-duplicate captions are positives too (default)")
    p.add_argument("--pos-threshold", type=float, default=0.9)
    p.add_argument("--family-positives", action="store_true",
                   help="captions of the same family label are positives too (labels.jsonl data)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--cache-views", type=int, default=3,
                   help="cached frozen-feature views per image (0: augment every step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=JSON",
                   help="relsim-mini architecture override, e.g. d_model=128 (repeatable)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def parse_model_args(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RelsearchError(f"--model-arg needs KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """Train; prints the summary as JSON on stdout. Returns 0, or 2 with one line on bad input."""
    from relsearch.train.trainer import TrainConfig, train

    args = build_parser().parse_args(argv)
    try:
        values = vars(args)
        values["model_args"] = parse_model_args(values.pop("model_arg"))
        try:
            config = TrainConfig(**values)
        except ValueError as exc:
            raise RelsearchError(str(exc)) from exc
        result = train(config)
    except RelsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({"out": result.out, "steps": result.steps, "final_loss": result.final_loss,
                      "val": result.val, "seconds": round(result.seconds, 1)}, indent=2))
    return 0
