"""Explanations in words: the caption bank, and the caption that links two images.

A relational encoder maps images into the all-MiniLM-L6-v2 caption space, so the
anonymous captions it was trained on (``{Object}s arranged in a ring around a central
{Center}``) can be embedded once with the MiniLM text tower and compared with image
vectors directly. That set of captions is the *caption bank*: relsim-mini's ships
beside its weights (``captions.jsonl``); for ``relsim@...`` or any other relational
encoder the user passes ``--captions FILE.jsonl`` (one ``{"caption": ...}`` per line,
``"family"`` optional; a training ``captions.jsonl`` works as is).

What an explanation is:

* an image's caption: the bank caption nearest to its vector (cosine);
* the caption two images *share*: the bank caption nearest to the normalised mean
  of their two unit vectors. For unit vectors ``q`` and ``h`` that caption maximises
  ``cos(c, q) + cos(c, h)``, the one both images agree on most, rather than one that
  fits the query perfectly and the hit not at all (which the nearest caption of
  either image alone could be). Its score is the cosine to that mean direction.

Embedded banks are cached under :func:`relsearch.home.cache_dir` keyed by the bank's
bytes and the MiniLM weights, so only the first use of a bank imports the text tower.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.atomic import atomic_write
from relsearch.errors import RelsearchError

BANK_NAME = "captions.jsonl"


def shipped_bank_path() -> Path:
    """relsim-mini's caption bank, beside its weights."""
    from relsearch.encoders.onnx_runtime import RELSIM_MINI_DIR  # the same folder, without importing torch

    return RELSIM_MINI_DIR / BANK_NAME


@dataclass(frozen=True)
class Caption:
    text: str
    score: float
    family: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "score": self.score}


@dataclass
class CaptionBank:
    """Captions, their relation families (when known) and their unit MiniLM vectors."""

    captions: list[str]
    families: list[str | None]
    vectors: np.ndarray  # float32 [N, 384], unit rows
    source: str = ""

    def nearest(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index and cosine of the nearest caption for each row of ``vecs`` (unit rows)."""
        vecs = np.atleast_2d(np.asarray(vecs, dtype=np.float32))
        if vecs.shape[1] != self.vectors.shape[1]:
            raise RelsearchError(f"vectors of dim {vecs.shape[1]} cannot be explained with a caption bank "
                                 f"of dim {self.vectors.shape[1]} (not in the caption space)")
        sims = vecs @ self.vectors.T
        idx = sims.argmax(1)
        return idx, sims[np.arange(len(idx)), idx]

    def captions_of(self, vecs: np.ndarray) -> list[Caption]:
        idx, score = self.nearest(vecs)
        return [Caption(self.captions[i], float(s), self.families[i]) for i, s in zip(idx, score)]

    def shared(self, a: np.ndarray, b: np.ndarray) -> list[Caption]:
        """Caption nearest to the normalised mean of each row pair of ``a`` and ``b``."""
        return self.captions_of(mean_direction(a, b))


def mean_direction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``(a + b) / |a + b|`` (a row of exact opposites stays zero)."""
    m = np.atleast_2d(np.asarray(a, dtype=np.float32)) + np.atleast_2d(np.asarray(b, dtype=np.float32))
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def read_bank(path: str | os.PathLike[str]) -> tuple[list[str], list[str | None]]:
    """Captions (first occurrence kept) and families of a ``.jsonl`` bank; one-line errors."""
    from relsearch.safe_io import jsonl_lines

    p = Path(path)
    captions: list[str] = []
    families: list[str | None] = []
    seen: set[str] = set()
    for n, line in jsonl_lines(p, "caption bank"):
        try:
            row = json.loads(line)
            text = row["caption"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError("empty caption")
        except (ValueError, KeyError, TypeError) as exc:
            raise RelsearchError(f"{p}:{n}: not a caption line with a 'caption' string ({exc})") from exc
        if text in seen:
            continue
        seen.add(text)
        captions.append(text)
        fam = row.get("family")
        families.append(str(fam) if fam is not None else None)
    if not captions:
        raise RelsearchError(f"caption bank {p} has no captions")
    return captions, families


def _text_tower_id() -> str:
    """Identifies the caption tower a bank is embedded with, without loading it."""
    from relsearch.encoders.text import caption_tower_id

    return caption_tower_id()


def load_bank(path: str | os.PathLike[str], device: str | None = None) -> CaptionBank:
    """Read a bank and embed it with the MiniLM tower, through the on-disk cache."""
    from relsearch.home import cache_dir

    p = Path(path)
    captions, families = read_bank(p)
    key = hashlib.sha256("\n".join(captions).encode() + b"\0" + _text_tower_id().encode()).hexdigest()[:20]
    cached = cache_dir() / f"caption-bank-{key}.npy"
    vectors = None
    if cached.is_file():
        try:
            vectors = np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            vectors = None  # a torn or foreign file: embed again and overwrite it
        if vectors is not None and vectors.shape[0] != len(captions):
            vectors = None
    if vectors is None:
        from relsearch.encoders.text import embed_text

        vectors = np.ascontiguousarray(embed_text(captions, device=device), dtype=np.float32)
        with atomic_write(cached, durable=False) as f:  # a rebuildable cache
            np.save(f, vectors)
    return CaptionBank(captions, families, vectors.astype(np.float32, copy=False), str(p))


#: Loaded banks by (file identity, device): a few hundred kB of vectors, reread when the file changes.
_BANKS: dict[tuple[str, str | None], CaptionBank] = {}


def bank_for(spec: str, captions: str | os.PathLike[str] | None = None, device: str | None = None) -> CaptionBank:
    """The caption bank that explains encoder ``spec`` (``NAME`` or ``NAME@SOURCE``).

    ``captions`` wins; else relsim-mini's bank (beside its weights, or the shipped one);
    other relational encoders have none shipped and need ``--captions``.
    """
    name, _, source = spec.partition("@")
    if captions is not None:
        path = Path(captions)
    elif name == "relsim-mini":
        beside = Path(source).expanduser() / BANK_NAME if source else None
        path = beside if beside is not None and beside.is_file() else shipped_bank_path()
    else:
        raise RelsearchError(f"encoder {spec!r} ships no caption bank; pass --captions FILE.jsonl "
                             "(one {\"caption\": ...} per line, e.g. its training captions)")
    from relsearch.home import file_identity

    try:
        key = (file_identity(path), device)
    except OSError:
        raise RelsearchError(f"caption bank {path} does not exist") from None
    if key not in _BANKS:
        _BANKS[key] = load_bank(path, device=device)
    return _BANKS[key]


#: The bank's family for captions of pictures with no relation.
NONE_FAMILY = "none"
#: Best caption cosine below which a vector reads as no relation the encoder knows (see
#: :func:`relation_verdict`). Calibrated on relsim-mini with held-out composed scenes, which it
#: reads right: the highest value that keeps nearly all of them (``benchmarks/relation_threshold.py``;
#: the photographs of the real-photograph benchmark's training split are reported beside them).
KNOWN_MIN_SCORE = 0.50


@dataclass(frozen=True)
class RelationVerdict:
    """What a relational column reads in a query: its nearest bank caption, and whether
    that is a relation the encoder knows (``known``) or not (then ``why`` says so)."""

    caption: str
    score: float
    family: str | None
    known: bool
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "score": self.score, "known": self.known, "family": self.family,
                "why": self.why}


def relation_verdict(bank: CaptionBank, vec: np.ndarray, min_score: float | None = None) -> RelationVerdict:
    """The relation ``vec`` reads as: not known when its nearest caption is a ``none``
    caption or scores below ``min_score`` (default :data:`KNOWN_MIN_SCORE`); then its
    neighbours are not relational matches."""
    min_score = KNOWN_MIN_SCORE if min_score is None else min_score
    cap = bank.captions_of(vec)[0]
    why = ""
    if cap.family == NONE_FAMILY:
        why = "its nearest caption is a no-relation caption"
    elif cap.score < min_score:
        why = f"its best caption scores {cap.score:.3f} < {min_score:.2f}"
    return RelationVerdict(cap.text, cap.score, cap.family, not why, why)


def add_relations(searcher: Any, result: Any, captions: str | os.PathLike[str] | None = None) -> None:
    """Fill ``result.relation`` for every relational column with a query vector and a caption bank.

    A column whose encoder has no bank (or is not in the caption space) gets no verdict
    rather than an error: the search itself does not need one.
    """
    manifest = searcher.opened.manifest
    for name in result.ordered():
        if result.kinds.get(name) != "relational" or name not in result.vectors:
            continue
        try:
            bank = bank_for(manifest.encoders[name].spec, captions, device=searcher.device)
            result.relation[name] = relation_verdict(bank, result.vectors[name])
        except RelsearchError:
            continue


@dataclass
class Explanation:
    """``--explain`` output: the query's caption and, per column, each hit's shared caption."""

    query_caption: Caption | None
    hits: dict[str, dict[int, Caption]] = field(default_factory=dict)  # encoder -> id -> shared caption
    #: analogy hits' shared captions (id -> caption), for the analogy column of the views
    analogy: dict[int, Caption] = field(default_factory=dict)

    def caption(self, column: str, hit_id: int) -> Caption | None:
        if column == "analogy":
            return self.analogy.get(hit_id)
        return self.hits.get(column, {}).get(hit_id)

    def to_dict(self, result: Any) -> dict[str, Any]:
        """The JSON contract: hits in rank order, as ``{"id", "caption", "score"}``."""
        out: dict[str, Any] = {
            "query_caption": self.query_caption.to_dict() if self.query_caption else None,
            "hits": {name: [{"id": h.id, "caption": c.text, "score": c.score}
                            for h in result.results[name] if (c := by_id.get(h.id)) is not None]
                     for name, by_id in self.hits.items()},
        }
        if result.analogy is not None:
            out["analogy"] = [{"id": h.id, "caption": c.text, "score": c.score}
                              for h in result.analogy if (c := self.analogy.get(h.id)) is not None]
        return out


def explain_result(searcher: Any, result: Any, captions: str | os.PathLike[str] | None = None) -> Explanation:
    """Shared captions for every relational column of ``result`` (needs ``result.vectors``)."""
    manifest = searcher.opened.manifest
    relational = [n for n in result.ordered() if result.kinds.get(n) == "relational" and n in result.vectors]
    if not relational:
        raise RelsearchError("--explain needs a relational column (e.g. relsim-mini); this index has: "
                             f"{', '.join(result.results)}")
    expl = Explanation(query_caption=None)
    for name in relational:
        entry = manifest.encoders[name]
        bank = bank_for(entry.spec, captions, device=searcher.device)
        q = result.vectors[name]
        if expl.query_caption is None:
            expl.query_caption = bank.captions_of(q)[0]
        hits = list(result.results[name])
        if result.analogy is not None and result.analogy_of.get("relational") == name:
            hits += list(result.analogy)
        ids = np.asarray(sorted({h.id for h in hits}), dtype=np.int64)
        by_id: dict[int, Caption] = {}
        if len(ids):
            vecs = searcher.opened.store.get_vectors(name, ids, entry.dim)
            shared = bank.shared(np.broadcast_to(q, vecs.shape), vecs)
            by_id = dict(zip((int(i) for i in ids), shared))
        expl.hits[name] = {h.id: by_id[h.id] for h in result.results[name] if h.id in by_id}
        if result.analogy is not None and result.analogy_of.get("relational") == name:
            expl.analogy = {h.id: by_id[h.id] for h in result.analogy if h.id in by_id}
    return expl


@dataclass
class PairExplanation:
    """``relsearch explain A B``."""

    a: Caption
    b: Caption
    shared: Caption
    relational: dict[str, float]
    attribute: dict[str, float]
    encoder: str  # the relational encoder whose space the captions come from
    #: "a", "b", "shared": whether each reads as a relation the encoder knows
    relation: dict[str, RelationVerdict] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cap = {"a": self.a, "b": self.b, "shared": self.shared}
        out = {k: {"caption": c.text, "score": c.score} for k, c in cap.items()}
        for k, v in self.relation.items():
            out[k].update(known=v.known, family=v.family, why=v.why)
        return {**out, "relational": self.relational, "attribute": self.attribute}


def explain_pair(image_a: Any, image_b: Any, encoders: list[Any], specs: list[str],
                 captions: str | os.PathLike[str] | None = None, device: str | None = None) -> PairExplanation:
    """Both images' nearest captions, the one they share, and their cosine in every encoder."""
    relational: dict[str, float] = {}
    attribute: dict[str, float] = {}
    first: tuple[str, str, np.ndarray, np.ndarray] | None = None
    for enc, spec in zip(encoders, specs):
        va, vb = enc.embed([image_a, image_b])
        kind = enc.kind
        (relational if kind == "relational" else attribute)[enc.name] = float(va @ vb)
        if kind == "relational" and first is None:
            first = (enc.name, spec, va, vb)
    if first is None:
        raise RelsearchError("explain needs a relational encoder (e.g. relsim-mini) among --encoders")
    name, spec, va, vb = first
    bank = bank_for(spec, captions, device=device)
    ca, cb = bank.captions_of(np.stack([va, vb]))
    verdicts = {"a": relation_verdict(bank, va), "b": relation_verdict(bank, vb)}
    shared = bank.shared(va, vb)[0]
    # a shared caption is only a shared relation when both images read as one the encoder knows
    unknown = [k for k in ("a", "b") if not verdicts[k].known]
    why = (f"{' and '.join(unknown)} read{'s' if len(unknown) == 1 else ''} as no known relation" if unknown
           else "the shared caption is a no-relation caption" if shared.family == NONE_FAMILY else "")
    verdicts["shared"] = RelationVerdict(shared.text, shared.score, shared.family, not why, why)
    return PairExplanation(ca, cb, shared, relational, attribute, name, verdicts)


def write_template_bank(path: str | os.PathLike[str] | None = None) -> Path:
    """Write relsim-mini's bank from the corpus templates (one ``{"caption", "family"}`` per
    template); run after changing ``relsearch/corpus/captions.py``:

        python -c "from relsearch.explain import write_template_bank; write_template_bank()"
    """
    from relsearch.atomic import atomic_write_bytes
    from relsearch.corpus.captions import TEMPLATES

    out = Path(path) if path is not None else shipped_bank_path()
    lines = [json.dumps({"caption": t, "family": fam}) for fam, ts in TEMPLATES.items() for t in ts]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8"))
    return out
