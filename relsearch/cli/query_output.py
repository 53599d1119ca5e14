"""What ``relsearch query`` does with a result besides its table: score threshold, paths for
pipes, copying or linking the matches into a folder, and the files it wrote."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from relsearch.errors import RelsearchError
from relsearch.results import Hit


def check_output_options(paths: bool, as_json: bool, copy_to: Path | None, link_to: Path | None,
                         min_score: float | None) -> None:
    """Refuse a bad combination before anything is searched (one line, exit 2)."""
    import math

    if paths and as_json:
        raise RelsearchError("--paths and --json each print the whole answer: give one of them")
    if copy_to is not None and link_to is not None:
        raise RelsearchError("give one of --copy-to and --link-to")
    if min_score is not None and not math.isfinite(min_score):
        raise RelsearchError(f"--min-score must be a number, got {min_score}")
    for flag, dest in (("--copy-to", copy_to), ("--link-to", link_to)):
        if dest is not None and dest.exists() and not dest.is_dir():
            raise RelsearchError(f"{flag} {dest} is a file, not a folder")


def search_k(k: int, queries: list[str] | None, as_json: bool) -> int:
    """Hits to ask for so that ``k`` are left to show: one more per query image, whose indexed
    copy the views show as the query (the JSON keeps it, marked, among its ``k``)."""
    return k if as_json else k + sum(not q.startswith("text:") for q in queries or [])


def without_query(result: Any, k: int) -> Any:
    """A copy of ``result`` for the views: the indexed copy of the query left out of every
    column (it is shown as the query), ranks renumbered, at most ``k`` hits a column."""
    import copy

    mine = result.query_in_collection

    def keep(hits: list[Hit]) -> list[Hit]:
        kept = [h for h in hits if h.id not in mine][:k]
        return [Hit(r + 1, h.score, h.path, h.id, h.paths) for r, h in enumerate(kept)]

    out = copy.copy(result)
    out.results = {name: keep(hits) for name, hits in result.results.items()}
    out.analogy = keep(result.analogy) if result.analogy is not None else None
    return out


def apply_min_score(result: Any, min_score: float) -> None:
    """Drop the hits scoring below ``min_score`` from every column (analogy included)."""
    for name, hits in result.results.items():
        result.results[name] = [h for h in hits if h.score >= min_score]
    if result.analogy is not None:
        result.analogy = [h for h in result.analogy if h.score >= min_score]


def matches(result: Any) -> list[Hit]:
    """The hits of every column, each content once, best rank first (columns in display order)."""
    from relsearch.view.html import columns

    cols = [hits for _, _, _, hits in columns(result)]
    seen: set[int] = set()
    out: list[Hit] = []
    for rank in range(max((len(c) for c in cols), default=0)):
        for hits in cols:
            if rank < len(hits) and hits[rank].id not in seen:
                seen.add(hits[rank].id)
                out.append(hits[rank])
    return out


def match_paths(result: Any) -> list[str]:
    """One absolute path per match (exact copies once, under the path the hit shows)."""
    return [os.path.abspath(h.path) for h in matches(result)]


def place_matches(result: Any, dest: Path, link: bool) -> list[tuple[str, Path]]:
    """Copy (or symlink, with ``link``) every match into ``dest``; never overwrites.

    A name already taken in ``dest`` gets ``-2``, ``-3``... before its extension. Returns
    ``(source, placed)`` pairs; a match whose file is gone is left out.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RelsearchError(f"cannot create {dest}: {exc.strerror or exc}") from None
    placed: list[tuple[str, Path]] = []
    for src in match_paths(result):
        if not os.path.isfile(src):
            continue
        try:
            placed.append((src, _place(src, dest, link)))
        except OSError as exc:
            raise RelsearchError(f"cannot {'link' if link else 'copy'} {src} into {dest}: "
                                 f"{exc.strerror or exc}") from None
    return placed


def _place(src: str, dest: Path, link: bool) -> Path:
    stem, ext = os.path.splitext(os.path.basename(src))
    for n in range(1, 100_000):
        target = dest / (f"{stem}{ext}" if n == 1 else f"{stem}-{n}{ext}")
        try:
            if link:
                os.symlink(src, target)
            else:
                _copy_new(src, target)
            return target
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for {stem}{ext}")


def _copy_new(src: str, target: Path) -> None:
    # "x" opens only a name nobody has: a file that appeared since we looked is not overwritten
    from relsearch.safe_io import regular_opener

    with open(src, "rb", opener=regular_opener) as fin, open(target, "xb") as fout:
        try:
            shutil.copyfileobj(fin, fout, 1 << 20)
        except BaseException:
            fout.close()
            target.unlink(missing_ok=True)
            raise
    shutil.copystat(src, target)


def placed_line(placed: list[tuple[str, Path]], dest: Path, link: bool) -> str:
    verb = "linked" if link else "copied"
    n = len(placed)
    return f"{verb} {n} match{'es' if n != 1 else ''} into {dest}"
