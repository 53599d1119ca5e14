"""Compose the offline relational corpus.

    python -m tools.compose_corpus --out DIR --split train --per-family 500 --seed 0
    python -m tools.compose_corpus --out DIR --split test --grouped --groups 40 --distractors 40
    python -m tools.compose_corpus --out DIR --split all --grouped --groups 20 --art MY_ART_DIR

Prints the summary as JSON; exits 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from relsearch.corpus.art import SPLITS, export_emoji_art, export_sample_art
from relsearch.corpus.compose import IMAGE_FORMATS, compose
from relsearch.errors import RelsearchError


def compose_command(
    out: Path,
    split: str = "train",
    per_family: int = 100,
    seed: int = 0,
    grouped: bool = False,
    groups: int = 0,
    art: Sequence[Path] | None = None,
    distractors: int = 0,
    min_size: int = 192,
    max_size: int = 384,
    workers: int | None = None,
    image_format: str = "jpg",
) -> dict:
    """Compose a corpus into ``out`` and return its summary (prints nothing).

    The CLI verb's body: ``split`` in train/val/test/all; ``per_family`` scenes per family, or
    with ``grouped`` ``groups`` groups rendered in every family; ``art`` folders replace the
    default openclipart art; ``distractors`` no-relation scenes; canvas sides drawn in
    [min_size, max_size]; ``workers`` processes (default 1); ``image_format`` jpg or png.
    Raises RelsearchError on
    bad input.
    """
    return compose(
        out,
        n_per_family=per_family,
        split=split,
        seed=seed,
        grouped=grouped,
        n_groups=groups,
        art_dirs=list(art) if art else None,
        distractors=distractors,
        size_range=(min_size, max_size),
        workers=workers or 1,
        image_format=image_format,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.compose_corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (created)")
    p.add_argument("--split", choices=SPLITS, default="train", help="object-identity split")
    p.add_argument("--per-family", type=int, default=100, help="scenes per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--grouped",
        action="store_true",
        help="benchmark groups: one object set, background and canvas rendered in every family",
    )
    p.add_argument("--groups", type=int, default=0, help="number of groups (grouped mode)")
    p.add_argument(
        "--art",
        type=Path,
        action="append",
        help="art folder (repeatable); replaces the default openclipart art",
    )
    p.add_argument("--distractors", type=int, default=0, help="no-relation scenes (family none)")
    p.add_argument("--min-size", type=int, default=192, help="smallest canvas side, px")
    p.add_argument("--max-size", type=int, default=384, help="largest canvas side, px")
    p.add_argument(
        "--workers", type=int, default=None, help="render processes (default 1; 2 helps on an idle machine)"
    )
    p.add_argument("--format", choices=IMAGE_FORMATS, default="jpg", help="image file format")
    p.add_argument(
        "--export-sample-art",
        type=Path,
        default=None,
        metavar="DIR",
        help="only write scikit-image's sample images to DIR as an unseen-art folder",
    )
    p.add_argument(
        "--export-emoji-art",
        type=Path,
        default=None,
        metavar="DIR",
        help="only render a colour emoji font's pictographs to DIR as an unseen-art folder",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.out is None and args.export_sample_art is None and args.export_emoji_art is None:
        parser.error("--out is required")
    try:
        if args.export_sample_art is not None:
            n = export_sample_art(args.export_sample_art)
            print(json.dumps({"exported": n, "dir": str(args.export_sample_art)}))
            return 0
        if args.export_emoji_art is not None:
            n = export_emoji_art(args.export_emoji_art)
            print(json.dumps({"exported": n, "dir": str(args.export_emoji_art)}))
            return 0
        summary = compose_command(
            args.out,
            args.split,
            args.per_family,
            args.seed,
            args.grouped,
            args.groups,
            args.art,
            args.distractors,
            args.min_size,
            args.max_size,
            args.workers,
            args.format,
        )
    except RelsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
