"""``relsearch bench dupes``: near-duplicate precision/recall on planted copies of real photographs,
false groups among different pictures of one style, and the candidate stage at scale.

Three runs:

- **planted**, at each collection size: real photographs (Endless Sky's landscape
  photographs, the Lomiri, MATE-nature, Tux Paint and OpenCV photographs; for a size above
  what is installed, the photographs not used whole are cut into non-overlapping tiles),
  a fifth of the files being planted copies: resized to 60-90 %, cropped by 0-5 % per axis,
  brightness x0.9-1.1, saved as JPEG quality 50-90; a few originals also get a
  byte-identical copy. The folder is indexed with the attribute encoder and ``dupes`` is
  scored pair by pair against the planted groups (every two files of one planted group
  are a true pair), over a sweep of the picture-similarity threshold.
- **similar**: different pictures that share a style, indexed alone (a small, uniform
  collection: where whitening went wrong): the MATE abstract wallpapers, the Xfce, Plasma
  and Lomiri wallpaper series, and series of Endless Sky photographs of one kind of place
  (badlands, dunes, fog, lava, snow...). Every group found there is a false group.
  Recoloured and dark/light variants of one design (GNOME ``-d``/``-l``, Ubuntu MATE's
  Cold/Warm/...) are indexed too and reported apart: they share their shapes.
- **scale**: the candidate stage (:func:`relsearch.dupes.candidate_pairs`) on N synthetic
  vectors fit to the real vectors of the planted run, with near copies planted at the
  cosines real copies had: time and the share of planted pairs among the candidates (the
  pixel check needs the files, which synthetic vectors have not).
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

SIZES = (30, 100, 1000)
SWEEP = (0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
#: Share of a planted collection's files that are near copies, and of copied originals
#: that also get a byte-identical copy.
COPY_SHARE = 0.2
EXACT_EVERY = 8
ENDLESS_SKY = Path("/usr/share/games/endless-sky/images/land")
PHOTO_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "tuxpaint-data", "opencv-doc")
MATE = Path("/usr/share/backgrounds/mate")
#: Endless Sky photograph series used as "same kind of place, different photograph".
SKY_SERIES = ("badlands", "desert", "dune", "fog", "lava", "snow", "sky", "canyon")

__all__ = ["RESULTS_DIR", "format_report", "plant", "run", "run_planted", "run_scale", "run_similar", "score"]


# ----------------------------------------------------------------------------- pictures
def photo_sources() -> list[Path]:
    """Installed real photographs, one file per picture, sorted."""
    from relsearch.corpus.art import package_files

    out = sorted(ENDLESS_SKY.glob("*.jpg")) if ENDLESS_SKY.is_dir() else []
    for pkg in PHOTO_PACKAGES:
        out += package_files(pkg)
    out += sorted((MATE / "nature").glob("*.jpg")) if (MATE / "nature").is_dir() else []
    return sorted(set(out))


def similar_sets() -> dict[str, list[Path]]:
    """Different pictures that share a style (``variants``: one design recoloured), by series."""
    from relsearch.collection import is_image_name
    from relsearch.corpus.art import package_files

    def files(folder: Path, pattern: str = "*") -> list[Path]:
        return sorted(p for p in folder.glob(pattern) if p.is_file() and is_image_name(p.name)) \
            if folder.is_dir() else []

    abstract = [p for p in files(MATE / "abstract") if "_" not in p.stem or p.suffix == ".png"]
    sets = {"mate-abstract": abstract, "xfce": files(Path("/usr/share/backgrounds/xfce")),
            "plasma": package_files("plasma-workspace-wallpapers"),
            "lomiri": package_files("lomiri-wallpapers-16.04") + package_files("lomiri-wallpapers-20.04")}
    for series in SKY_SERIES:
        sets[f"endless-sky-{series}"] = files(ENDLESS_SKY, f"{series}[0-9]*.jpg")
    sets["variants"] = (files(Path("/usr/share/backgrounds/gnome"), "*.webp")
                        + files(MATE / "desktop", "Ubuntu-Mate-*") + files(MATE / "desktop", "MATE-Stripes-*"))
    return {k: v for k, v in sets.items() if len(v) > 1}


def _distinct(images: Any, stats: dict[str, int]) -> Any:
    """``(name, image)`` pairs left after dropping blank or flat pictures and near-copies of earlier ones.

    Left out because they would make the truth wrong: pictures with almost no contrast
    (grey 32x32 standard deviation under 12: an empty sky is a copy of another empty sky)
    and pictures whose grey 24x24 thumbnails correlate >= 0.9 with an earlier one's (one
    photograph shipped twice).
    """
    from PIL import Image

    seen: list[np.ndarray] = []
    for name, img in images:
        grey = np.asarray(img.convert("L").resize((24, 24), Image.Resampling.BOX), dtype=np.float32).ravel()
        if float(np.asarray(img.convert("L").resize((32, 32)), dtype=np.float32).std()) < 12:
            stats["flat"] = stats.get("flat", 0) + 1
            continue
        grey -= grey.mean()
        grey /= np.linalg.norm(grey) + 1e-6
        if seen and float(np.max(np.stack(seen) @ grey)) >= 0.9:
            stats["near_copy_in_source"] = stats.get("near_copy_in_source", 0) + 1
            continue
        seen.append(grey)
        yield name, img


def _pictures(sources: list[Path], n: int, seed: int, stats: dict[str, int]) -> Any:
    """Whole photographs, then 2x2 (3x3...) tiles of the ones not used whole, enough for ``n``."""
    from relsearch.collection import DecodeError, load_image

    order = [sources[i] for i in np.random.default_rng(seed).permutation(len(sources))]
    g = 1
    while g * g * len(order) < n * 1.15:  # some pictures are dropped as flat or repeated
        g += 1
    whole = len(order) if g == 1 else max(0, int((g * g * len(order) - n * 1.15) // (g * g - 1)))
    for k, src in enumerate(order):
        try:
            img = load_image(src, max_side=1024 if k < whole else 1024 * g)
        except DecodeError:
            stats["undecodable"] = stats.get("undecodable", 0) + 1
            continue
        if k < whole:
            yield src.stem, img
            continue
        w, h = img.width // g, img.height // g
        for t in range(g * g):
            x, y = (t % g) * w, (t // g) * h
            yield f"{src.stem}_t{t}", img.crop((x, y, x + w, y + h))


def plant_copy(img: Any, rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
    """A near copy: cropped 0-5 % per axis, resized to 60-90 %, brightness x0.9-1.1 (JPEG quality in ``q``)."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    cx, cy = rng.uniform(0, 0.05, 2)
    left, top = rng.uniform(0, cx), rng.uniform(0, cy)
    img = img.crop((round(left * w), round(top * h), round(w - (cx - left) * w), round(h - (cy - top) * h)))
    f = float(rng.uniform(0.6, 0.9))
    img = img.resize((max(16, round(img.width * f)), max(16, round(img.height * f))), Image.Resampling.BICUBIC)
    b = float(rng.uniform(0.9, 1.1))
    img = ImageEnhance.Brightness(img).enhance(b)
    return img, {"crop_x": float(cx), "crop_y": float(cy), "scale": f, "brightness": b,
                 "q": int(rng.integers(50, 91))}


def plant(sources: list[Path], out: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Write a collection of ``n`` files under ``out``: originals and planted copies of some.

    Returns ``{"groups": [[original, copy...]], "params": {copy: {...}}, "dropped": {...}}``.
    """
    if out.exists():
        shutil.rmtree(out)
    (out / "originals").mkdir(parents=True)
    (out / "copies").mkdir()
    n_copy = max(1, round(n * COPY_SHARE))
    n_exact = n_copy // EXACT_EVERY
    n_orig = n - n_copy - n_exact
    rng = np.random.default_rng(seed)
    copied = set(rng.choice(n_orig, n_copy, replace=False).tolist())
    groups: list[list[str]] = []
    params: dict[str, dict[str, Any]] = {}
    dropped: dict[str, int] = {}
    exacts = 0
    for k, (name, img) in enumerate(_distinct(_pictures(sources, n_orig, seed, dropped), dropped)):
        if k == n_orig:
            break
        orig = out / "originals" / f"{k:05d}_{name}.jpg"
        img.save(orig, quality=92)
        group = [str(orig)]
        if k in copied:
            copy, p = plant_copy(img, rng)
            path = out / "copies" / f"{k:05d}_copy.jpg"
            copy.save(path, quality=p["q"])
            group.append(str(path))
            params[str(path)] = p
            if exacts < n_exact:  # the first few copied originals
                exacts += 1
                exact = out / "copies" / f"{k:05d}_exact.jpg"
                shutil.copyfile(orig, exact)
                group.append(str(exact))
                params[str(exact)] = {"exact": True}
        groups.append(group)
    return {"groups": groups, "params": params, "dropped": dropped}


# ----------------------------------------------------------------------------- scoring
def _pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for i, a in enumerate(sorted(g)) for b in sorted(g)[i + 1 :]}


def score(found: list[list[str]], truth: list[list[str]]) -> dict[str, Any]:
    """Pair precision / recall of ``found`` groups against ``truth``, and the groups holding a false pair."""
    got, want = _pairs(found), _pairs([g for g in truth if len(g) > 1])
    hit = got & want
    false_groups = sum(1 for g in found if _pairs([g]) - want)
    return {"precision": len(hit) / len(got) if got else 1.0, "recall": len(hit) / len(want) if want else 1.0,
            "pairs_found": len(got), "pairs_true": len(want), "pairs_correct": len(hit),
            "groups": len(found), "false_groups": false_groups}


def _scored(index: Path, encoder: str) -> tuple[dict[int, Any], np.ndarray, tuple[np.ndarray, ...], dict[str, float],
                                                np.ndarray]:
    """Records, ids, the candidate pairs with their vector and picture scores, the time of each stage, the vectors."""
    from relsearch.dupes import candidate_pairs, pixel_scores
    from relsearch.indexdir import open_index

    with open_index(index) as opened:
        records = {r.id: r for r in opened.store.iter_records()}
        ids, vecs = opened.store.all_vectors(encoder, opened.manifest.encoders[encoder].dim)
    t0 = time.perf_counter()
    i, j, vsim = candidate_pairs(vecs)
    t1 = time.perf_counter()
    pix = pixel_scores(i, j, lambda r: sorted(records[int(ids[r])].paths))
    return records, ids, (i, j, vsim, pix), {"candidates": t1 - t0, "check": time.perf_counter() - t1}, vecs


def _found(records: dict[int, Any], ids: np.ndarray, pairs: tuple[np.ndarray, ...], threshold: float) -> list[list[str]]:
    from relsearch.dupes import make_groups

    return [g.paths for g in make_groups(records, ids, pairs[0], pairs[1], pairs[3], threshold)]


def _build(folder: Path, index: Path, encoder: str, device: str | None) -> float:
    from relsearch.build import BuildOptions, build_index

    t0 = time.perf_counter()  # an index left by an earlier run is brought up to date, not rebuilt
    build_index(folder, index, BuildOptions(encoders=encoder, progress=False, device=device))
    return time.perf_counter() - t0


def run_planted(work: Path, n: int, encoder: str = "imagenet", threshold: float | None = None,
                device: str | None = None, seed: int = 1) -> dict[str, Any]:
    """Plant a collection of ``n`` files under ``work``, index it, score ``dupes`` over the sweep."""
    from relsearch.dupes import DEFAULT_THRESHOLD

    threshold = threshold or DEFAULT_THRESHOLD
    sources = photo_sources()
    if not sources:
        raise RelsearchError(f"no photographs found (looked in {ENDLESS_SKY} and the packages "
                             f"{', '.join(PHOTO_PACKAGES)})")
    truth = plant(sources, work / f"planted_{n}", n, seed=seed)
    t_build = _build(work / f"planted_{n}", work / f"index_{n}", encoder, device)
    records, ids, pairs, seconds, vecs = _scored(work / f"index_{n}", encoder)
    row = {p: k for k, i in enumerate(ids.tolist()) for p in records[i].paths}
    cand = {(min(row[a], row[b]), max(row[a], row[b])) for a, b in _pairs(truth["groups"])
            if a in row and b in row and row[a] != row[b]}  # same bytes: one record, an exact group
    got = set(zip(pairs[0].tolist(), pairs[1].tolist()))
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    copy_sims = sorted(float(unit[a] @ unit[b]) for a, b in cand)  # plain cosine of every planted pair
    files = sum(len(g) for g in truth["groups"])
    return {
        "benchmark": "dupes-planted", "encoder": encoder, "threshold": threshold, "files": files,
        "originals": len(truth["groups"]), "copies": sum(len(g) - 1 for g in truth["groups"]),
        "exact_copies": sum("exact" in p for p in truth["params"].values()), "dropped": truth["dropped"],
        **score(_found(records, ids, pairs, threshold), truth["groups"]),
        "candidates": len(pairs[0]), "candidate_recall": len(cand & got) / len(cand) if cand else 1.0,
        "copy_cosines": [round(c, 5) for c in copy_sims],
        "sweep": [{"threshold": t, **score(_found(records, ids, pairs, t), truth["groups"])} for t in SWEEP],
        "seconds": {"build": t_build, **seconds},
    }


def run_similar(work: Path, encoder: str = "imagenet", threshold: float | None = None,
                device: str | None = None) -> dict[str, Any]:
    """Index the different-but-similar sets together and list every group ``dupes`` makes of them."""
    from relsearch.dupes import DEFAULT_THRESHOLD

    threshold = threshold or DEFAULT_THRESHOLD
    sets = similar_sets()
    if not sets:
        raise RelsearchError("no wallpaper series installed (mate-backgrounds, xfce4, plasma, lomiri, endless-sky)")
    folder = work / "similar"
    if folder.exists():
        shutil.rmtree(folder)
    series_of = {}
    for name, files in sets.items():
        (folder / name).mkdir(parents=True)
        for p in files:
            dst = folder / name / f"{hashlib.sha256(str(p).encode()).hexdigest()[:6]}_{p.name}"
            shutil.copyfile(p, dst)
            series_of[str(dst)] = name
    t_build = _build(folder, work / "index_similar", encoder, device)
    records, ids, pairs, seconds, _ = _scored(work / "index_similar", encoder)
    found = _found(records, ids, pairs, threshold)
    listed = [{"series": sorted({series_of[p] for p in g}), "files": [str(Path(p).relative_to(folder)) for p in g]}
              for g in found]
    return {
        "benchmark": "dupes-similar", "encoder": encoder, "threshold": threshold,
        "sets": {k: len(v) for k, v in sets.items()}, "files": len(series_of), "candidates": len(pairs[0]),
        "false_groups": sum(1 for g in listed if g["series"] != ["variants"]),
        "variant_groups": sum(1 for g in listed if g["series"] == ["variants"]),
        "groups": listed,
        "sweep": [{"threshold": t, "groups": len(_found(records, ids, pairs, t))} for t in SWEEP],
        "seconds": {"build": t_build, **seconds},
    }


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
    centred = real - real.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    r = min(256, len(s) - 1)
    scale = s[:r] / np.sqrt(len(real) - 1)
    resid = np.sqrt(max(float((s[r:] ** 2).sum()) / (len(real) - 1) / real.shape[1], 1e-12))
    n_copy = int(n * copy_fraction)
    n_base, d = n - n_copy, real.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for a in range(0, n_base, 20_000):
        m = min(20_000, n_base - a)
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


def run_scale(n: int, real: np.ndarray, copy_sims: list[float]) -> dict[str, Any]:
    """Time :func:`relsearch.dupes.candidate_pairs` on ``n`` synthetic vectors fit to ``real``."""
    from relsearch.dupes import WHITEN_MIN, candidate_pairs

    t0 = time.perf_counter()
    vecs, truth = synthetic_vectors(real, n, copy_sims)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    i, j, _ = candidate_pairs(vecs)
    seconds = time.perf_counter() - t0
    got = set(zip(i.tolist(), j.tolist()))
    want = {(int(a), int(b)) for a, b in truth}
    return {
        "benchmark": "dupes-scale", "images": n, "dim": int(real.shape[1]),
        "space": "whitened" if n >= WHITEN_MIN else "plain cosine",
        "vectors": f"synthetic: {len(real)} real vectors of the planted run, each grown into many by noise of "
                   f"twice the real covariance (ReLU-floored, normalised); {len(want)} planted near copies at "
                   "the cosines the real planted copies had",
        "seconds": seconds, "setup_seconds": t_setup, "candidates": len(i), "planted_pairs": len(want),
        "candidate_recall": len(got & want) / len(want) if want else 1.0,
        "candidates_per_image": len(i) / n,
    }


# ----------------------------------------------------------------------------- output
def _write(report: dict[str, Any], results_dir: Path, name: str) -> dict[str, str]:
    results_dir.mkdir(parents=True, exist_ok=True)
    out = {"json": str(results_dir / f"{name}.json")}
    planted = report.get("planted", [])
    if planted:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for run in planted:
            ts = [s["threshold"] for s in run["sweep"]]
            ax.plot(ts, [s["precision"] for s in run["sweep"]], "o-", label=f"precision, {run['files']} files")
            ax.plot(ts, [s["recall"] for s in run["sweep"]], "s--", label=f"recall, {run['files']} files")
        ax.axvline(planted[0]["threshold"], color="grey", ls=":")
        ax.set_xlabel("threshold (picture similarity)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        ax.set_title("dupes on planted copies of photographs")
        fig.tight_layout()
        out["png"] = str(results_dir / f"{name}.png")
        fig.savefig(out["png"], dpi=110)
        plt.close(fig)
    Path(out["json"]).write_text(json.dumps({**report, **out}, indent=2) + "\n")
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = ["files  precision  recall  groups  false  candidates  cand.recall  check s"]
    for r in report.get("planted", []):
        lines.append(f"{r['files']:>5}  {r['precision']:>9.3f}  {r['recall']:>6.3f}  {r['groups']:>6}  "
                     f"{r['false_groups']:>5}  {r['candidates']:>10}  {r['candidate_recall']:>11.3f}  "
                     f"{r['seconds']['check']:>7.1f}")
    sim = report.get("similar")
    if sim:
        lines.append(f"different-but-similar: {sim['files']} files in {len(sim['sets'])} series, "
                     f"{sim['false_groups']} false groups, {sim['variant_groups']} groups of recoloured variants")
        lines += [f"    {', '.join(g['files'])}" for g in sim["groups"]]
    for s in report.get("scale", []):
        lines.append(f"candidates at {s['images']} x {s['dim']}-d ({s['space']}): {s['seconds']:.1f} s, "
                     f"{s['candidates_per_image']:.2f} per image, planted pairs among them {s['candidate_recall']:.3f}")
    return "\n".join(lines)


def run(work: Path, sizes: tuple[int, ...] = SIZES, scale: tuple[int, ...] = (100_000,), encoder: str = "imagenet",
        threshold: float | None = None, results_dir: str | None = RESULTS_DIR, device: str | None = None,
        seed: int = 1) -> dict[str, Any]:
    """The planted run at each size, the different-but-similar run, then the candidate stage at ``scale``."""
    from relsearch.indexdir import open_index

    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"benchmark": "dupes"}
    report["planted"] = [run_planted(work, n, encoder, threshold, device, seed) for n in sizes]
    report["similar"] = run_similar(work, encoder, threshold, device)
    if scale and report["planted"]:
        big = report["planted"][-1]
        with open_index(work / f"index_{sizes[-1]}") as opened:
            _, real = opened.store.all_vectors(encoder, opened.manifest.encoders[encoder].dim)
        sims = big["copy_cosines"] or [0.95]
        report["scale"] = [run_scale(n, real, sims) for n in scale]
    if results_dir:
        report.update(_write(report, Path(results_dir), "dupes"))
    return report
