"""CLI command: compose (a relational corpus of scenes from clip art).

    relsearch compose --out DIR --split train --per-family 500 --seed 0
    relsearch compose --out DIR --split test --grouped --groups 40 --distractors 40
    relsearch compose --out DIR --split all --grouped --groups 20 --art MY_ART_DIR

Prints the summary as JSON; exits 2 with one line on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relsearch.cli.app import app, print_json, user_errors
from relsearch.errors import RelsearchError

# Spelled out rather than imported: importing relsearch.corpus here would cost every other
# command (a cold `relsearch query`) its import time. tests/test_modes.py checks they agree.
SPLITS = ("train", "val", "test", "all")
IMAGE_FORMATS = ("jpg", "png")
BACKGROUND_MODES = ("default", "plain", "photo", "mixed")


@app.command("compose")
@user_errors
def compose_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (created).")] = None,
    split: Annotated[str, typer.Option("--split", metavar="|".join(SPLITS), help=f"Object-identity split: {', '.join(SPLITS)}.")] = "train",
    per_family: Annotated[int, typer.Option("--per-family", help="Scenes per family.")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    grouped: Annotated[bool, typer.Option(
        "--grouped", help="Benchmark groups: one object set, background and canvas rendered in every family.",
    )] = False,
    groups: Annotated[int, typer.Option("--groups", help="Number of groups (grouped mode).")] = 0,
    art: Annotated[list[Path] | None, typer.Option(
        "--art", help="Art folder (repeatable); replaces the default openclipart art.")] = None,
    distractors: Annotated[int, typer.Option("--distractors", help="No-relation scenes (family none).")] = 0,
    min_size: Annotated[int, typer.Option("--min-size", help="Smallest canvas side, px.")] = 192,
    max_size: Annotated[int, typer.Option("--max-size", help="Largest canvas side, px.")] = 384,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Render processes (2 helps on an idle machine).")] = 1,
    image_format: Annotated[str, typer.Option("--format", metavar="|".join(IMAGE_FORMATS), help=f"Image file format: {', '.join(IMAGE_FORMATS)}.")]
    = "jpg",
    families: Annotated[str | None, typer.Option(
        "--families", help="Comma-separated relation families (default: all twelve).")] = None,
    backgrounds: Annotated[str, typer.Option(
        "--backgrounds", metavar="MODE", help=f"Backgrounds: {', '.join(BACKGROUND_MODES)} (photo: wallpaper photographs).")]
    = "default",
    photos: Annotated[str, typer.Option(
        "--photos", metavar="train|eval", help="Wallpaper pool: train, or eval (packages never used in training).")] = "train",
    realism: Annotated[bool, typer.Option(
        "--realism", help="Nuisances of real files: shadows, cut edges, resize, blur, noise, casts, JPEG 35-95.")]
    = False,
    things: Annotated[bool, typer.Option(
        "--things", help="Photographed things (cut-out photographs) stand in each photograph (photo backgrounds).")]
    = False,
    photo_edits: Annotated[bool, typer.Option(
        "--photo-edits", help="Relation-making edits of the training photographs instead of clip-art scenes: "
        "--groups photographs, each in every edit plus untouched (needs --out).")] = False,
    plain: Annotated[int, typer.Option(
        "--plain", metavar="N", help="With --photo-edits: N more untouched photograph crops.")] = 0,
    export_sample_art: Annotated[Path | None, typer.Option(
        "--export-sample-art", metavar="DIR",
        help="Only write scikit-image's sample images to DIR as an unseen-art folder.")] = None,
    export_emoji_art: Annotated[Path | None, typer.Option(
        "--export-emoji-art", metavar="DIR",
        help="Only render a colour emoji font's pictographs to DIR as an unseen-art folder.")] = None,
) -> None:
    """Compose a relational corpus (scenes + anonymous captions + labels) from clip art."""
    from relsearch.corpus.art import export_emoji_art as export_emoji
    from relsearch.corpus.art import export_sample_art as export_sample
    from relsearch.corpus.compose import compose

    if export_sample_art is not None:
        print_json({"exported": export_sample(export_sample_art), "dir": str(export_sample_art)})
        return
    if export_emoji_art is not None:
        print_json({"exported": export_emoji(export_emoji_art), "dir": str(export_emoji_art)})
        return
    if out is None:
        raise RelsearchError("--out is required (or one of --export-sample-art / --export-emoji-art)")
    if photo_edits:
        from relsearch.corpus.photo_edits import compose_photo_edits

        print_json(compose_photo_edits(out, groups, plain, seed=seed, workers=workers))
        return
    summary = compose(out, n_per_family=per_family, split=split, seed=seed, grouped=grouped, n_groups=groups,
                      art_dirs=list(art) if art else None, distractors=distractors,
                      size_range=(min_size, max_size), workers=workers, image_format=image_format,
                      families=[f.strip() for f in families.split(",") if f.strip()] if families else None,
                      backgrounds=backgrounds, photos=photos, realism=realism, things=things)
    print_json(summary)
