"""Anonymous-caption datasets: which image goes with which caption.

Two on-disk formats are read into the same list of :class:`CaptionRecord`:

- relsearch JSONL: one ``{"image": path, "caption": text}`` per line (the
  composer's ``captions.jsonl``); its ``labels.jsonl`` rows (``path``,
  ``caption``, ``family``, ``objects``, ...) are read too, keeping the labels
  for validation. Relative paths resolve against the JSONL file's folder.
- the paper's release format: rows with ``image_hash``, ``url_link`` and
  ``caption`` (JSONL, a JSON list, or CSV), the images stored as
  ``<image_hash>.png`` in an image directory.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


@dataclass(frozen=True)
class CaptionRecord:
    """One training pair, with optional labels kept for evaluation only."""

    image: str
    caption: str
    family: str | None = None
    objects: tuple[str, ...] = field(default_factory=tuple)
    group: str | None = None
    #: trained toward its neighbourhood under a teacher encoder instead of its caption
    #: (``"target": "teacher"``: an ordinary photograph, see relsearch.corpus.photo_edits).
    teacher: bool = False

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError(f"empty image path for caption {self.caption!r}")
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise ValueError(f"empty caption for image {self.image!r}")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON-list or CSV file as dicts."""
    if not path.is_file():
        raise RelsearchError(f"caption file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RelsearchError(f"{path} is not a caption file: byte {exc.start} is not UTF-8 text "
                             "(expected JSONL, a JSON list or CSV)") from None
    except OSError as exc:
        raise RelsearchError(f"cannot read caption file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".csv":
        try:
            return list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise RelsearchError(f"{path}: not a valid CSV file ({exc})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise RelsearchError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise RelsearchError(f"{path}: expected a JSON list of rows (objects)")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RelsearchError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise RelsearchError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append(row)
    return rows


def _objects(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def read_caption_jsonl(path: str | Path, check_files: bool = True) -> list[CaptionRecord]:
    """Read ``{"image", "caption"}`` rows (or composer ``labels.jsonl`` rows with ``path``)."""
    path = Path(path)
    root = path.parent
    records = []
    for i, row in enumerate(_read_rows(path), 1):
        image = row.get("image", row.get("path"))
        caption = row.get("caption")
        if not image or not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
            raise RelsearchError(f"{path}: row {i} needs non-empty 'image' (or 'path') and 'caption' strings")
        full = Path(image) if Path(image).is_absolute() else root / image
        if check_files and not full.is_file():
            raise RelsearchError(f"{path}: row {i}: image not found: {full}")
        group = row.get("group")
        records.append(CaptionRecord(
            image=str(full), caption=caption.strip(),
            family=str(row["family"]) if row.get("family") else None,
            objects=_objects(row.get("objects")),
            group=None if group is None else str(group),
            teacher=row.get("target") == "teacher",
        ))
    if not records:
        raise RelsearchError(f"{path}: no caption rows")
    return records


def read_paper_release(rows_path: str | Path, image_dir: str | Path | None = None,
                       skip_missing: bool = True) -> list[CaptionRecord]:
    """Read the paper's anonymous-caption release (``image_hash``, ``url_link``, ``caption``).

    Images are looked up as ``<image_dir>/<image_hash>.png`` (``image_dir``
    defaults to the rows file's folder). Rows whose image was never downloaded
    are skipped when ``skip_missing`` (links rot; the set is still usable),
    otherwise they are an error. ``url_link`` is not fetched: nothing here uses
    the network.
    """
    rows_path = Path(rows_path)
    image_root = Path(image_dir) if image_dir is not None else rows_path.parent
    if not image_root.is_dir():
        raise RelsearchError(f"image directory not found: {image_root}")
    records = []
    for i, row in enumerate(_read_rows(rows_path), 1):
        h = str(row.get("image_hash") or "").strip()
        caption = row.get("caption")
        if not h or not isinstance(caption, str) or not caption.strip():
            raise RelsearchError(f"{rows_path}: row {i} needs 'image_hash' and 'caption'")
        if "/" in h or "\\" in h or h.startswith("."):
            raise RelsearchError(f"{rows_path}: row {i}: invalid image_hash {h!r}")
        image = image_root / f"{h}.png"
        if not image.is_file():
            if skip_missing:
                continue
            raise RelsearchError(f"{rows_path}: row {i}: image not found: {image}")
        records.append(CaptionRecord(image=str(image), caption=caption.strip()))
    if not records:
        raise RelsearchError(f"{rows_path}: no rows with an image under {image_root}")
    return records


def is_paper_release(path: str | Path) -> bool:
    """True when the file's first row has the release's ``image_hash`` column."""
    rows = _read_rows(Path(path))
    return bool(rows) and "image_hash" in rows[0]


def read_dataset(path: str | Path, image_dir: str | Path | None = None) -> list[CaptionRecord]:
    """Read either format, told apart by the ``image_hash`` column."""
    if is_paper_release(path):
        return read_paper_release(path, image_dir=image_dir)
    if image_dir is not None:
        raise RelsearchError("--image-dir applies to the paper's release format (image_hash rows) only")
    return read_caption_jsonl(path)


def load_image(path: str) -> Image.Image:
    """Decode a training image exactly as indexing and querying do (EXIF rotation, alpha on
    white: :func:`relsearch.collection.load_image`), so a model trains on what it will see."""
    from relsearch.collection import DecodeError
    from relsearch.collection import load_image as decode

    try:
        return decode(path)
    except DecodeError as exc:
        raise RelsearchError(f"cannot read image {path}: {exc.reason}") from exc
