"""Labelled photographs shared by the photo benchmarks: the labels file, the encoders, the vectors.

``bench realphoto`` scores encoders on these photographs and ``bench health`` checks the same
vectors without labels; both read them from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError


@dataclass(frozen=True)
class Label:
    """One labelled photograph (``path`` resolved against the labels file's folder)."""

    path: str
    package: str
    relation: str
    look: str
    sha256: str
    split: str = ""
    note: str = ""


def read_labels(labels: str | os.PathLike[str]) -> list[Label]:
    """Parse a labels ``.jsonl``; one-line errors for a missing file or a bad line."""
    from relsearch.safe_io import jsonl_lines

    p = Path(labels)
    out: list[Label] = []
    for n, line in jsonl_lines(p, "labels file"):
        try:
            row = json.loads(line)
            path, relation = str(row["path"]), str(row["relation"])
            if not path or not relation:
                raise ValueError("empty path or relation")
        except (ValueError, KeyError, TypeError) as exc:
            raise RelsearchError(f"{p}:{n}: not a label line with 'path' and 'relation' ({exc})") from exc
        full = path if os.path.isabs(path) else str(p.parent / path)
        out.append(Label(full, str(row.get("package") or ""), relation, str(row.get("look") or ""),
                         str(row.get("sha256") or ""), str(row.get("split") or ""), str(row.get("note") or "")))
    if not out:
        raise RelsearchError(f"labels file {p} has no labels")
    return out


def encoder_specs(encoders: str, device: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(spec, loaded encoder)`` one at a time, every name checked before any weights load."""
    from relsearch.encoders import get_encoder, parse_encoder_list, resolve_factory

    try:
        specs = parse_encoder_list(encoders)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    for spec in specs:
        resolve_factory(spec.name)
    return ((str(spec), get_encoder(spec, device=device)) for spec in specs)


def embed_paths(encoder: Any, paths: list[str], batch: int = 16) -> np.ndarray:
    """Unit vectors of ``paths``, decoded as the index decodes them."""
    from relsearch.collection import DecodeError, load_image

    out = []
    for i in range(0, len(paths), batch):
        images = []
        for p in paths[i : i + batch]:
            try:
                images.append(load_image(p, max_side=512))
            except DecodeError as exc:
                raise RelsearchError(f"photograph {p} does not decode: {exc}") from exc
        out.append(np.asarray(encoder.embed(images), dtype=np.float32))
    return np.concatenate(out)
