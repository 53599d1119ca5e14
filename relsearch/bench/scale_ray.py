"""Ray part of ``relsearch bench scale``: images/s of a Ray build against a local build.

The same folder of photographs is built into fresh indexes: once locally (decode threads
and the encoder in this process) and once per actor count through Ray Data
(``build-index --ray``: decode + preprocess as CPU tasks, the encoder in an actor pool).
Ray is started once before the Ray builds, as a user's running cluster would be
(``--ray auto``); its start-up is reported on its own, and the cold figure a one-off
``--ray`` build would see is start-up + build. Every Ray index is compared with the
local one: same paths, same record ids, vectors within 1e-5.

Without ``--ray-collection`` the folder is N JPEG crops (640x480, random position, scale
and mirror) of the photographs installed under /usr/share/backgrounds, so decode and
resize costs are those of real photos.

    relsearch bench scale --part ray --ray-images 500 --ray-encoders imagenet
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.bench import RESULTS_DIR, pyplot
from relsearch.errors import RelsearchError

#: where Debian / Ubuntu desktop packages install wallpaper photographs
PHOTO_DIRS = ("/usr/share/backgrounds", "/usr/share/wallpapers")
CROP_SIZE = (640, 480)


def photo_folder(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct JPEG crops of the installed wallpaper photographs under ``root``."""
    from PIL import Image

    sources = sorted(p for d in PHOTO_DIRS if os.path.isdir(d) for p in Path(d).rglob("*")
                     if p.suffix.lower() in (".jpg", ".jpeg") and p.stat().st_size > 50_000)
    if not sources:
        raise RelsearchError(f"no photographs under {' or '.join(PHOTO_DIRS)}; pass --ray-collection DIR")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    w, h = CROP_SIZE
    out: list[Path] = []
    per_source = -(-n // len(sources))
    for s, src in enumerate(sources):
        with Image.open(src) as im:
            im.draft("RGB", (im.width // 2, im.height // 2))  # a 4K wallpaper decodes at half size
            photo = im.convert("RGB")
        for j in range(per_source):
            if len(out) == n:
                return out
            scale = rng.uniform(0.35, 0.9)
            cw, ch = max(w // 2, int(photo.width * scale)), max(h // 2, int(photo.height * scale))
            cw, ch = min(cw, photo.width), min(ch, photo.height)
            x0, y0 = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
            crop = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(CROP_SIZE, Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            path = root / f"photo_{s:03d}_{j:03d}.jpg"
            crop.save(path, quality=90)
            out.append(path)
    return out


def _same_index(a: Path, b: Path) -> dict[str, Any]:
    """Paths, ids and vectors of two indexes of the same folder."""
    from relsearch.indexdir import read_manifest
    from relsearch.store import Store

    out: dict[str, Any] = {}
    with Store.open(a / "meta.lmdb", readonly=True) as sa, Store.open(b / "meta.lmdb", readonly=True) as sb:
        out["same_paths_and_ids"] = {p: e.id for p, e in sa.all_paths().items()} == \
            {p: e.id for p, e in sb.all_paths().items()}
        diffs = {}
        for name, entry in read_manifest(a).encoders.items():
            ia, va = sa.all_vectors(name, entry.dim)
            ib, vb = sb.all_vectors(name, entry.dim)
            diffs[name] = float(np.abs(va - vb).max()) if np.array_equal(ia, ib) else float("inf")
        out["max_abs_diff"] = diffs
    return out


def run_scale_ray(n: int = 500, encoders: str = "imagenet", collection: str | os.PathLike[str] | None = None,
                  actors: tuple[int, ...] = (1, 2), batch_size: int = 32,
                  results_dir: str | os.PathLike[str] | None = RESULTS_DIR) -> dict[str, Any]:
    """Build the same folder locally and on Ray with each actor count; images/s of each."""
    try:
        import ray
    except ImportError as exc:
        raise RelsearchError(f"bench scale --part ray needs the 'ray' extra: pip install 'relsearch[ray]' ({exc})") \
            from exc
    from relsearch.backends.ray_embed import RayEmbedding, RayOptions
    from relsearch.build import BuildOptions

    if ray.is_initialized():
        raise RelsearchError("bench scale --part ray starts its own local Ray; run it outside a Ray driver")
    with tempfile.TemporaryDirectory(prefix="relsearch-scale-ray-") as tmp_dir:
        tmp = Path(tmp_dir)
        if collection is None:
            folder = tmp / "photos"
            photo_folder(folder, n)
            source = f"{n} JPEG crops ({CROP_SIZE[0]}x{CROP_SIZE[1]}) of the photographs in /usr/share/backgrounds"
        else:
            folder = Path(collection)
            source = str(folder)
        cpus = os.cpu_count() or 1
        runs: list[dict[str, Any]] = []

        def timed(name: str, index: Path, opts: BuildOptions, actors_n: int | None) -> dict[str, Any]:
            runs.append(_timed_build(folder, index, opts, name, actors_n))
            return runs[-1]

        base = dict(encoders=encoders, progress=False, batch_size=batch_size)
        local = timed("local", tmp / "local", BuildOptions(**base), None)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        ray_start = time.perf_counter() - t
        try:
            for a in actors:
                with RayEmbedding(RayOptions(actors=a, batch_size=batch_size)) as step:
                    run = timed(f"ray-{a}", tmp / f"ray{a}", BuildOptions(**base, embedding=step), a)
                run.update(_same_index(tmp / "local", tmp / f"ray{a}"))
                run["vs_local"] = round(run["images_per_s"] / local["images_per_s"], 3)
        finally:
            ray.shutdown()
        # the local build again: drift of a shared machine between the first and last run
        local2 = timed("local-again", tmp / "local2", BuildOptions(**base), None)
    local_rate = (local["images_per_s"] + local2["images_per_s"]) / 2
    for run in runs:
        if run["actors"]:
            run["vs_local_mean"] = round(run["images_per_s"] / local_rate, 3)
    report: dict[str, Any] = {
        "benchmark": "scale-ray",
        "collection": source,
        "encoders": encoders,
        "batch_size": batch_size,
        "cpus": cpus,
        "ray_version": ray.__version__,
        "ray_start_seconds": round(ray_start, 2),
        # a shared machine: the runs compete with whatever else runs, so say how busy it was
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "runs": runs,
        "note": "Ray started once before the Ray builds (a running cluster, as with --ray auto); a one-off "
                "`--ray` build also pays ray_start_seconds. vs_local_mean divides by the mean of the two "
                "local runs (before and after the Ray runs).",
    }
    if results_dir is not None:
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["json"] = str(out / "scale_ray.json")
        report["png"] = str(out / "scale_ray.png")
        Path(report["json"]).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        _plot(report, report["png"])
    return report


def _timed_build(folder: Path, index: Path, opts: Any, name: str, actors: int | None) -> dict[str, Any]:
    """One build of ``folder`` into ``index``: its wall time, images/s and phases."""
    from relsearch.build import build_index

    t = time.perf_counter()
    rep = build_index(folder, index, opts)
    seconds = time.perf_counter() - t
    return {"run": name, "actors": actors, "images": rep.embedded, "seconds": round(seconds, 2),
            "images_per_s": round(rep.embedded / seconds, 2),
            "phases": {k: round(v, 2) for k, v in rep.seconds.items()}, "failed": len(rep.failed)}


def _plot(report: dict[str, Any], path: str) -> None:
    plt = pyplot()
    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = [r["run"] for r in runs]
    rates = [r["images_per_s"] for r in runs]
    bars = ax.bar(names, rates, color=["#777" if r["actors"] is None else "#3a7" for r in runs])
    for bar, r in zip(bars, runs):
        label = f"{r['images_per_s']:.1f}" + (f"\n{r['vs_local_mean']:.2f}x" if r.get("vs_local_mean") else "")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("images / s (whole build)")
    ax.set_title(f"build-index, local vs --ray: {runs[0]['images']} images, {report['encoders']}, "
                 f"{report['cpus']} CPUs", fontsize=9)
    ax.set_ylim(0, max(rates) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['collection']}; encoders {report['encoders']}; {report['cpus']} CPUs; "
             f"Ray start-up {report['ray_start_seconds']:.1f} s (not in the Ray rows)",
             f"{'run':<12} {'actors':>6} {'images':>7} {'seconds':>8} {'img/s':>7} {'vs local':>9}  same index"]
    for r in report["runs"]:
        same = ""
        if r["actors"]:
            same = f"ids {'yes' if r['same_paths_and_ids'] else 'NO'}, max |dv| " + \
                   ", ".join(f"{v:.1e}" for v in r["max_abs_diff"].values())
        vs = f"{r['vs_local_mean']:.2f}x" if r.get("vs_local_mean") else ""
        lines.append(f"{r['run']:<12} {r['actors'] or '':>6} {r['images']:>7} {r['seconds']:>8.1f} "
                     f"{r['images_per_s']:>7.1f} {vs:>9}  {same}")
    return "\n".join(lines)
