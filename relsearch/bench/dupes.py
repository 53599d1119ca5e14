"""``relsearch bench dupes``: precision/recall on planted copies of real pictures, and time at scale.

Two runs:

- **planted**: real pictures (Debian/Ubuntu desktop wallpapers, mostly photographs, and
  openclipart drawings), some of them copied as resized, recompressed, cropped-by-a-few-
  pixels and colour-shifted JPEGs, a few as byte-identical files. The folder is indexed
  with the attribute encoder and ``find_dupes`` is scored pair by pair against the planted
  groups (every two files of one planted group are a true pair), over a threshold sweep.
- **scale**: an index directory of N synthetic attribute vectors whose distribution is fit
  to the real vectors of the planted run (mean, top principal axes, residual spread, the
  ReLU floor of pooled CNN features), with near copies planted at the similarities the
  real copies had. ``find_dupes`` runs end to end on it (LMDB load, range search, groups).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.bench import RESULTS_DIR, pyplot
from relsearch.errors import RelsearchError

TRANSFORMS = ("resized", "recompressed", "cropped", "colour_shifted")
WALLPAPER_DIRS = (Path("/usr/share/backgrounds"),)
SWEEP = (0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.93, 0.95)

__all__ = ["RESULTS_DIR", "plant", "run_planted", "run_scale"]


# ----------------------------------------------------------------------------- pictures
def default_sources(n_clipart: int = 300, seed: int = 0) -> list[Path]:
    """Desktop wallpapers (one of each light/dark pair) and a seeded sample of openclipart."""
    from relsearch.collection import is_image_name
    from relsearch.corpus.art import OPENCLIPART_DIR

    walls: dict[str, Path] = {}
    for top in WALLPAPER_DIRS:
        if top.is_dir():
            for p in sorted(top.rglob("*")):
                if p.is_file() and is_image_name(p.name):
                    # adwaita-d / adwaita-l are one design in two colourings: keep one
                    stem = p.stem[:-2] if p.stem.endswith(("-d", "-l")) else p.stem
                    walls.setdefault(stem, p)
    clip: list[Path] = []
    if OPENCLIPART_DIR.is_dir() and n_clipart:
        every = sorted(p for p in OPENCLIPART_DIR.rglob("*.png"))
        rng = np.random.default_rng(seed)
        clip = [every[i] for i in sorted(rng.choice(len(every), min(n_clipart, len(every)), replace=False))]
    return list(walls.values()) + clip


def _transform(img: Any, kind: str, rng: np.random.Generator) -> tuple[Any, int]:
    """One planted copy of ``img`` (RGB) and the JPEG quality to save it at."""
    from PIL import Image

    w, h = img.size
    if kind == "resized":
        f = float(rng.uniform(0.4, 0.7))
        return img.resize((max(32, int(w * f)), max(32, int(h * f))), Image.BICUBIC), 90
    if kind == "recompressed":
        return img, int(rng.integers(30, 50))
    if kind == "cropped":
        a, b, c, d = (int(v) for v in rng.integers(2, 9, 4))
        return img.crop((a, b, w - c, h - d)), 92
    if kind == "colour_shifted":
        x = np.asarray(img, dtype=np.float32)
        gain = np.array([1.0 + rng.uniform(0.04, 0.1), 1.0, 1.0 - rng.uniform(0.04, 0.1)], dtype=np.float32)
        x = np.clip(x * gain * rng.uniform(1.0, 1.08) + rng.uniform(-8, 8, 3), 0, 255)
        return Image.fromarray(x.astype(np.uint8)), 92
    raise ValueError(f"unknown transform {kind!r}")


def _originals(sources: list[Path], max_side: int, stats: dict[str, int]) -> Any:
    """Distinct pictures from ``sources``, each at most ``max_side`` pixels.

    Left out, and counted in ``stats``: undecodable files, blank pictures (transparent
    overlays composite to plain white), drawings with under 5% ink (a small arrow on an
    empty canvas is a near-copy of every other one at any resolution), and pictures
    that already are near-copies of an earlier one (grey 24x24 thumbnails correlated at
    0.9 or more: the wallpaper folders hold one picture under two names, openclipart
    holds recolourings of one drawing), which would make the planted truth wrong.
    """
    from PIL import Image

    from relsearch.collection import DecodeError, load_image

    seen: list[np.ndarray] = []
    for src in sources:
        try:
            img = load_image(src, max_side=max_side)
        except DecodeError:
            stats["undecodable"] = stats.get("undecodable", 0) + 1
            continue
        thumb = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32)
        if thumb.std() < 6:
            stats["blank"] = stats.get("blank", 0) + 1
            continue
        if src.suffix.lower() == ".png" and np.mean(thumb.min(axis=2) < 235) < 0.05:
            stats["little_ink"] = stats.get("little_ink", 0) + 1
            continue
        grey = np.asarray(img.convert("L").resize((24, 24), Image.BOX), dtype=np.float32).ravel()
        grey -= grey.mean()
        grey /= np.linalg.norm(grey) + 1e-6
        if seen and float(np.max(np.stack(seen) @ grey)) >= 0.9:
            stats["near_copy_in_source"] = stats.get("near_copy_in_source", 0) + 1
            continue
        seen.append(grey)
        yield src, img


def plant(sources: list[Path], out: Path, n_copied: int, n_exact: int = 10, seed: int = 0,
          max_side: int = 1024) -> dict[str, Any]:
    """Write originals (at most ``max_side``) and planted copies of every third, ``n_copied`` at most.

    Returns ``{"groups": [[path, ...]], "kind": {path: transform}, "dropped": {...}}``;
    the first path of a group is the original.
    """
    if out.exists():
        shutil.rmtree(out)
    (out / "originals").mkdir(parents=True)
    (out / "copies").mkdir()
    rng = np.random.default_rng(seed)
    groups: list[list[str]] = []
    kind: dict[str, str] = {}
    dropped: dict[str, int] = {}
    copied = 0
    for made, (src, img) in enumerate(_originals(sources, max_side, dropped)):
        name = f"{made:04d}"
        orig = out / "originals" / (name + (".png" if src.suffix.lower() == ".png" else ".jpg"))
        img.save(orig, **({"quality": 95} if orig.suffix == ".jpg" else {}))
        group = [str(orig)]
        if made % 3 == 0 and copied < n_copied:  # every third: photographs and drawings alike
            for t in TRANSFORMS:
                copy, q = _transform(img, t, rng)
                path = out / "copies" / f"{name}_{t}.jpg"
                copy.save(path, quality=q)
                group.append(str(path))
                kind[str(path)] = t
            if copied < n_exact:
                path = out / "copies" / f"{name}_exact{orig.suffix}"
                shutil.copyfile(orig, path)
                group.append(str(path))
                kind[str(path)] = "exact"
            copied += 1
        groups.append(group)
    return {"groups": groups, "kind": kind, "dropped": dropped}


def _pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for i, a in enumerate(sorted(g)) for b in sorted(g)[i + 1 :]}


def score(found: list[list[str]], truth: list[list[str]], kind: dict[str, str]) -> dict[str, Any]:
    """Pair precision / recall of ``found`` groups against ``truth``, and recall per transform."""
    got, want = _pairs(found), _pairs([g for g in truth if len(g) > 1])
    hit = got & want
    per: dict[str, list[bool]] = {}
    for g in truth:
        for p in g[1:]:
            per.setdefault(kind[p], []).append((min(g[0], p), max(g[0], p)) in got)
    return {
        "precision": len(hit) / len(got) if got else 1.0,
        "recall": len(hit) / len(want) if want else 1.0,
        "pairs_found": len(got), "pairs_true": len(want), "pairs_correct": len(hit),
        "copy_recall": {k: float(np.mean(v)) for k, v in sorted(per.items())},
    }


def _groups_at(result: Any, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], ids: np.ndarray,
               records: dict[int, Any], threshold: float) -> list[list[str]]:
    from relsearch.dupes import components

    i, j, s = pairs
    keep = s >= threshold
    out = [sorted(r.paths) for r in records.values() if len(r.paths) > 1]  # exact copies
    for rows, _ in components(len(ids), i[keep], j[keep], s[keep]):
        out.append([p for r in rows for p in records[int(ids[r])].paths])
    return out


def run_planted(work: Path, n_copied: int = 100, n_clipart: int = 300, encoder: str = "imagenet",
                threshold: float | None = None, results_dir: str | None = RESULTS_DIR,
                device: str | None = None, seed: int = 1) -> dict[str, Any]:
    """Plant copies under ``work``, index them, score ``dupes`` over a threshold sweep."""
    from relsearch.build import BuildOptions, build_index
    from relsearch.dupes import DEFAULT_THRESHOLD, find_dupes, near_pairs
    from relsearch.indexdir import open_index

    threshold = threshold or DEFAULT_THRESHOLD
    sources = default_sources(n_clipart, seed=seed)
    if not sources:
        raise RelsearchError("no pictures found (looked in /usr/share/backgrounds and openclipart-png)")
    t0 = time.perf_counter()
    truth = plant(sources, work / "pictures", n_copied, seed=seed)
    idx = work / "index"
    if idx.exists():
        shutil.rmtree(idx)
    build_index(work / "pictures", idx, BuildOptions(encoders=encoder, progress=False, device=device))
    t_build = time.perf_counter() - t0

    result = find_dupes(idx, threshold=threshold, encoder=encoder)
    default = score([g.paths for g in result.groups], truth["groups"], truth["kind"])
    with open_index(idx) as opened:
        records = {r.id: r for r in opened.store.iter_records()}
        ids, vecs = opened.store.all_vectors(encoder, opened.manifest.encoders[encoder].dim)
    pairs = near_pairs(vecs, min(SWEEP))
    sweep = [{"threshold": t, **score(_groups_at(result, pairs, ids, records, t), truth["groups"], truth["kind"])}
             for t in SWEEP]
    # similarity of every planted copy to its original: the scale run plants at these
    row = {p: r for r in records.values() for p in r.paths}
    pos = {int(i): k for k, i in enumerate(ids)}
    copy_sims: dict[str, list[float]] = {}
    for g in truth["groups"]:
        for p in g[1:]:
            a, b = vecs[pos[row[g[0]].id]], vecs[pos[row[p].id]]
            copy_sims.setdefault(truth["kind"][p], []).append(float(a @ b))
    n_files = sum(len(g) for g in truth["groups"])
    report = {
        "benchmark": "dupes-planted", "encoder": encoder, "threshold": threshold,
        "pictures": {"files": n_files, "originals": len(truth["groups"]), "with_copies": n_copied,
                     "copies_per_original": len(TRANSFORMS), "exact_copies": sum(k == "exact" for k in truth["kind"].values()),
                     "sources": "Debian/Ubuntu desktop wallpapers (/usr/share/backgrounds) + openclipart-png sample "
                                f"(seed {seed})",
                     "dropped": truth["dropped"]},
        **{k: default[k] for k in ("precision", "recall", "pairs_found", "pairs_true", "pairs_correct", "copy_recall")},
        "sweep": sweep,
        "copy_similarity": {k: {"min": float(np.min(v)), "median": float(np.median(v)), "all": [round(x, 5) for x in v]}
                            for k, v in sorted(copy_sims.items())},
        "seconds": {"plant+build": t_build, "dupes": result.seconds.get("total", 0.0)},
    }
    if results_dir:
        report.update(_write(report, Path(results_dir), "dupes_planted"))
    return report


# ----------------------------------------------------------------------------- scale
def synthetic_vectors(real: np.ndarray, n: int, copy_sims: list[float], copy_fraction: float = 0.05,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors drawn around ``real`` ones and the planted (original, copy) row pairs.

    Each row is a random real vector plus Gaussian noise with twice the real vectors' own
    covariance (top 256 principal axes and an isotropic rest), floored at 0 as pooled
    ReLU features are, then normalised: rows grown from one real vector are alike (as
    bursts of photographs of one scene are) without being copies. Each planted copy is
    its original moved, half along the principal axes and half isotropically, to a
    cosine drawn from ``copy_sims`` (the similarities real planted copies had).
    """
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    centred = real - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    r = min(256, len(s) - 1)
    scale = s[:r] / np.sqrt(len(real) - 1)
    resid = np.sqrt(max(float((s[r:] ** 2).sum()) / (len(real) - 1) / real.shape[1], 1e-12))
    n_copy = int(n * copy_fraction)
    n_base = n - n_copy
    d = real.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for a in range(0, n_base, 20_000):
        m = min(20_000, n_base - a)
        # noise at twice the real spread: rows grown from one real vector stay alike (raw cosine
        # ~0.4-0.5, like bursts of one scene) but are not near-copies of each other
        x = real[rng.integers(0, len(real), m)] + 2.0 * ((rng.standard_normal((m, r)) * scale) @ vt[:r]
                                                       + resid * rng.standard_normal((m, d)))
        x = np.maximum(x, 0)
        out[a : a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    orig = rng.choice(n_base, n_copy, replace=False)
    target = rng.choice(np.asarray(copy_sims, dtype=np.float64), n_copy)
    for a in range(0, n_copy, 20_000):
        rows = orig[a : a + 20_000]
        x = out[rows].astype(np.float64)
        u = 0.5 * (rng.standard_normal((len(rows), r)) @ vt[:r]) / np.sqrt(r) + 0.5 * rng.standard_normal(
            (len(rows), d)) / np.sqrt(d)
        u -= (u * x).sum(1, keepdims=True) * x  # orthogonal to the original
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = np.clip(target[a : a + 20_000], -1, 1)[:, None]
        out[n_base + a : n_base + a + len(rows)] = (c * x + np.sqrt(1 - c**2) * u).astype(np.float32)
    return out, np.stack([orig, np.arange(n_base, n)], axis=1)


def write_index(path: Path, vectors: np.ndarray, encoder: str = "imagenet") -> None:
    """An index directory holding ``vectors`` as the ``encoder`` column of fake image records."""
    from relsearch.indexdir import EncoderEntry, Manifest, write_manifest
    from relsearch.store import SCHEMA_VERSION, PathEntry, Record, Store

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    n, d = vectors.shape
    with Store.open(path / "meta.lmdb", create=True) as store:
        for a in range(0, n, 10_000):
            def chunk(txn: Any, a: int = a) -> None:
                for i in range(a, min(n, a + 10_000)):
                    p = f"/synthetic/{i:07d}.jpg"
                    store.put_record(txn, Record(i, hashlib.sha256(p.encode()).hexdigest(), [p], 0, 0, 0, 0.0))
                    store.put_path(txn, p, PathEntry(i, 0, 0))
                    store.put_vector(txn, encoder, i, vectors[i])
            store.write(chunk)
        manifest = Manifest(SCHEMA_VERSION, "/synthetic", {encoder: EncoderEntry(
            encoder, encoder, "synthetic", d, "attribute", {})}, count=n)
        store.write(lambda txn: store.put_meta(txn, "manifest", manifest.to_dict()))  # what open_index reads
    write_manifest(path, manifest)


def run_scale(n: int, planted: dict[str, Any], real: np.ndarray, work: Path, threshold: float | None = None,
              results_dir: str | None = RESULTS_DIR) -> dict[str, Any]:
    """Time ``find_dupes`` on an index of ``n`` synthetic vectors fit to ``real``."""
    from relsearch.dupes import DEFAULT_THRESHOLD, find_dupes, whiten

    threshold = threshold or DEFAULT_THRESHOLD
    sims = [s for k, v in planted["copy_similarity"].items() if k != "exact" for s in v["all"]]
    t0 = time.perf_counter()
    vecs, truth = synthetic_vectors(real, n, sims)
    idx = work / f"synthetic_{n}"
    write_index(idx, vecs)
    t_setup = time.perf_counter() - t0
    white = whiten(vecs)  # the space dupes scores in
    planted_sims = np.einsum("ij,ij->i", white[truth[:, 0]], white[truth[:, 1]])
    del white
    reachable = {(int(a), int(b)) for (a, b), s in zip(truth, planted_sims) if s >= threshold}
    del vecs
    t0 = time.perf_counter()
    result = find_dupes(idx, threshold=threshold)
    seconds = time.perf_counter() - t0
    got = {(min(a, b), max(a, b)) for g in result.groups for a in g.ids for b in g.ids if a < b}
    want = {(int(a), int(b)) for a, b in truth}
    report = {
        "benchmark": "dupes-scale", "images": n, "dim": int(real.shape[1]), "threshold": threshold,
        "vectors": f"synthetic: {len(real)} real imagenet vectors of the planted run, each grown into many "
                   "by noise of twice the real covariance (ReLU-floored, normalised); "
                   f"{len(want)} planted near copies at the raw cosines the real copies had",
        "seconds": seconds, "phases": result.seconds, "setup_seconds": t_setup,
        "planted_pairs": len(want), "pairs_found": len(got),
        "planted_found": len(got & want),
        "recall_planted": len(got & want) / len(want) if want else 1.0,
        # misses of the search itself: planted pairs at or above the threshold that were not found
        "recall_above_threshold": len(got & reachable) / len(reachable) if reachable else 1.0,
        "planted_above_threshold": len(reachable),
        "precision_planted": len(got & want) / len(got) if got else 1.0,
    }
    if results_dir:
        report.update(_write(report, Path(results_dir), f"dupes_scale_{n}"))
    return report


# ----------------------------------------------------------------------------- output
def _write(report: dict[str, Any], results_dir: Path, name: str) -> dict[str, str]:
    results_dir.mkdir(parents=True, exist_ok=True)
    out = {"json": str(results_dir / f"{name}.json")}
    if "sweep" in report:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ts = [s["threshold"] for s in report["sweep"]]
        ax.plot(ts, [s["precision"] for s in report["sweep"]], "o-", label="precision")
        ax.plot(ts, [s["recall"] for s in report["sweep"]], "s-", label="recall")
        ax.axvline(report["threshold"], color="grey", ls=":")
        ax.set_xlabel("threshold (cosine, attribute column)")
        ax.set_ylim(0, 1.02)
        ax.legend()
        ax.set_title("dupes on planted copies")
        fig.tight_layout()
        out["png"] = str(results_dir / f"{name}.png")
        fig.savefig(out["png"], dpi=110)
        plt.close(fig)
    Path(out["json"]).write_text(json.dumps({**report, **out}, indent=2) + "\n")
    return out


def format_report(report: dict[str, Any]) -> str:
    if report["benchmark"] == "dupes-scale":
        return (f"dupes at {report['images']} x {report['dim']}-d: {report['seconds']:.1f} s "
                f"(load {report['phases']['load']:.1f}, pairs {report['phases']['pairs']:.1f}); planted pairs "
                f"found {report['planted_found']}/{report['planted_pairs']}, precision "
                f"{report['precision_planted']:.3f}")
    lines = [f"dupes on {report['pictures']['files']} planted files ({report['encoder']}): precision "
             f"{report['precision']:.3f}, recall {report['recall']:.3f} at {report['threshold']:g}",
             "threshold  precision  recall"]
    lines += [f"{s['threshold']:>9.2f}  {s['precision']:>9.3f}  {s['recall']:>6.3f}" for s in report["sweep"]]
    lines.append("copy recall: " + ", ".join(f"{k} {v:.2f}" for k, v in report["copy_recall"].items()))
    return "\n".join(lines)


def run(work: Path, n: int = 100_000, n_copied: int = 100, n_clipart: int = 300, threshold: float | None = None,
        results_dir: str | None = RESULTS_DIR, device: str | None = None, skip_scale: bool = False,
        seed: int = 1) -> dict[str, Any]:
    """The planted run, then (unless ``skip_scale``) the scale run fit to its vectors."""
    from relsearch.indexdir import open_index

    work.mkdir(parents=True, exist_ok=True)
    planted = run_planted(work, n_copied=n_copied, n_clipart=n_clipart, threshold=threshold,
                          results_dir=results_dir, device=device, seed=seed)
    out = {"planted": planted}
    if not skip_scale:
        with open_index(work / "index") as opened:
            _, real = opened.store.all_vectors("imagenet", opened.manifest.encoders["imagenet"].dim)
        out["scale"] = run_scale(n, planted, real, work, threshold=threshold, results_dir=results_dir)
    return out
