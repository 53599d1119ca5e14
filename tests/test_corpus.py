"""Relational corpus composer: determinism, splits, family contents, captions, groups, CLI."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import run_cli
from PIL import Image, ImageDraw

from relsearch.corpus import FAMILIES, TEMPLATES, ArtLibrary, compose, split_of
from relsearch.corpus.art import EMOJI_FONTS, OPENCLIPART_DIR, export_emoji_art, load_object
from relsearch.errors import RelsearchError

# the role placeholders anonymous captions use in place of object names
PLACEHOLDER = re.compile(r"\{(Object|Other|Container|Center|Cover)\}")

# Words that appear in the art file names below; no caption may contain them.
NAMES = ("zebra", "walrus", "quokka", "narwhal", "axolotl", "pangolin", "okapi", "tapir")


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELSEARCH_ART_CACHE", "off")


def _make_art(root: Path, n: int = 60) -> Path:
    """Synthetic clip art: solid shapes with alpha, plus opaque images on a flat background."""
    rng = np.random.default_rng(123)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = int(rng.integers(60, 140)), int(rng.integers(60, 140))
        opaque = i % 5 == 0
        im = Image.new("RGBA", (w, h), (255, 255, 255, 255) if opaque else (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(5)]
            colour = tuple(int(c) for c in rng.integers(0, 200, 3)) + (255,)
            if rng.random() < 0.5:
                d.polygon(pts, fill=colour)
            else:
                x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
                d.ellipse([x0, y0, x0 + w / 2, y0 + h / 2], fill=colour)
        name = f"{NAMES[i % len(NAMES)]}_{i:03d}"
        if opaque:
            im.convert("RGB").save(root / f"{name}.jpg", quality=95)
        else:
            im.save(root / f"{name}.png")
    return root


def _labels(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_art(tmp_path_factory.mktemp("art") / "zoo")


def test_same_seed_gives_identical_bytes_and_workers_do_not_matter(art: Path, tmp_path: Path) -> None:
    a = compose(tmp_path / "a", 2, "all", seed=7, art_dirs=[art], distractors=2, size_range=(96, 160))
    compose(tmp_path / "b", 2, "all", seed=7, art_dirs=[art], distractors=2, size_range=(96, 160))
    compose(tmp_path / "c", 2, "all", seed=7, art_dirs=[art], distractors=2, size_range=(96, 160), workers=2)
    ta, tb, tc = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b"), _tree_bytes(tmp_path / "c")
    assert a["images"] == 2 * len(FAMILIES) + 2
    assert len([k for k in ta if k.startswith("images/")]) == a["images"]
    assert ta == tb
    assert ta == tc


def test_different_seeds_differ(art: Path, tmp_path: Path) -> None:
    compose(tmp_path / "a", 1, "all", seed=1, art_dirs=[art], size_range=(96, 128))
    compose(tmp_path / "b", 1, "all", seed=2, art_dirs=[art], size_range=(96, 128))
    ta, tb = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    images = [k for k in ta if k.startswith("images/")]
    differing = sum(ta[k] != tb[k] for k in images)
    assert differing == len(images)


def test_split_of_is_stable_and_roughly_80_10_10() -> None:
    ids = [f"src/item_{i}.png" for i in range(3000)]
    counts = Counter(split_of(i) for i in ids)
    assert [split_of(i) for i in ids[:50]] == [split_of(i) for i in ids[:50]]
    assert 0.75 < counts["train"] / 3000 < 0.85
    assert 0.07 < counts["val"] / 3000 < 0.13
    assert 0.07 < counts["test"] / 3000 < 0.13


def test_splits_use_disjoint_objects(tmp_path: Path) -> None:
    art = _make_art(tmp_path / "big", n=200)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        compose(tmp_path / split, 2, split, seed=0, art_dirs=[art], size_range=(96, 128))
        recs = _labels(tmp_path / split)
        assert {r["split"] for r in recs} == {split}
        seen[split] = {o for r in recs for o in r["objects"]}
        assert seen[split] and all(split_of(o) == split for o in seen[split])
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]


def test_every_family_renders_with_its_required_counts(art: Path, tmp_path: Path) -> None:
    summary = compose(tmp_path / "c", 3, "all", seed=3, art_dirs=[art], distractors=3, size_range=(128, 192))
    recs = _labels(tmp_path / "c")
    by_family = Counter(r["family"] for r in recs)
    assert by_family == {**{f: 3 for f in FAMILIES}, "none": 3}
    assert summary["families"] == dict(sorted(by_family.items()))
    for r in recs:
        n = len(r["objects"])
        if r["family"] in ("progression", "mirror", "split", "outline"):
            assert n == 1, r
        elif r["family"] in ("odd_one_out", "orbit", "size_contrast", "occlusion", "made_of"):
            assert n == 2, r
        elif r["family"] == "face":
            assert 2 <= n <= 3, r  # eyes, nose, mouth (a small art folder may repeat one)
        elif r["family"] == "nesting":
            assert 3 <= n <= 4, r
        elif r["family"] == "stack":
            assert 1 <= n <= 6, r
        with Image.open(tmp_path / "c" / r["path"]) as im:
            assert im.mode == "RGB"
            assert 128 <= min(im.size) and max(im.size) <= 192
            pixels = np.asarray(im)
        if r["family"] != "none":
            # Something was drawn over the background: the scene is not one flat colour.
            assert pixels.reshape(-1, 3).std(axis=0).max() > 5


def test_captions_are_anonymous_templates_with_placeholders(art: Path, tmp_path: Path) -> None:
    compose(tmp_path / "c", 4, "all", seed=5, art_dirs=[art], distractors=2, size_range=(96, 128))
    recs = _labels(tmp_path / "c")
    caps = [json.loads(x) for x in (tmp_path / "c" / "captions.jsonl").read_text().splitlines()]
    assert [c["image"] for c in caps] == [r["path"] for r in recs]
    assert [c["caption"] for c in caps] == [r["caption"] for r in recs]
    for r in recs:
        assert r["caption"] in TEMPLATES[r["family"]]
        lowered = r["caption"].lower()
        assert not any(name in lowered for name in NAMES)
        for o in r["objects"]:
            assert Path(o).stem.lower() not in lowered
        if r["family"] != "none":
            assert PLACEHOLDER.search(r["caption"])
    for family in FAMILIES:
        assert len(TEMPLATES[family]) >= 3
        assert all(PLACEHOLDER.search(t) for t in TEMPLATES[family])


def test_grouped_mode_renders_every_family_per_group(art: Path, tmp_path: Path) -> None:
    compose(
        tmp_path / "g",
        0,
        "all",
        seed=11,
        grouped=True,
        n_groups=3,
        art_dirs=[art],
        distractors=3,
        size_range=(96, 160),
    )
    recs = _labels(tmp_path / "g")
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in recs:
        groups[r["group"]].append(r)
    assert sorted(groups) == [0, 1, 2]
    for members in groups.values():
        assert sorted(r["family"] for r in members if r["family"] != "none") == sorted(FAMILIES)
        # One canvas per group, and every family shows the group's first object.
        sizes = set()
        for r in members:
            with Image.open(tmp_path / "g" / r["path"]) as im:
                sizes.add(im.size)
        assert len(sizes) == 1
        # Families that give role {Object} to the group's first object all show the same one.
        lead = ("progression", "odd_one_out", "orbit", "split", "occlusion")
        firsts = {r["objects"][0] for r in members if r["family"] in lead}
        assert len(firsts) == 1
        assert len({o for r in members for o in r["objects"]}) <= 6
    # Groups differ in objects: relational matches show other objects.
    obj_sets = [{o for r in m for o in r["objects"]} for m in groups.values()]
    assert obj_sets[0] != obj_sets[1]


def test_load_object_crops_to_alpha_and_removes_flat_background(tmp_path: Path) -> None:
    im = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle([50, 20, 129, 79], fill=(200, 30, 30, 255))
    im.save(tmp_path / "a.png")
    obj = load_object(tmp_path / "a.png", "t/a.png", max_side=80)
    assert obj is not None and obj.image.size == (80, 60) and obj.fill > 0.95
    flat = Image.new("RGB", (120, 120), (250, 250, 250))
    ImageDraw.Draw(flat).ellipse([30, 30, 89, 89], fill=(10, 90, 200))
    flat.save(tmp_path / "b.png")
    obj = load_object(tmp_path / "b.png", "t/b.png", max_side=60)
    assert obj is not None and obj.image.size == (60, 60)
    corner_alpha = np.asarray(obj.image)[0, 0, 3]
    assert corner_alpha == 0  # the flat white background was cut away
    Image.new("RGBA", (100, 100), (0, 0, 0, 0)).save(tmp_path / "empty.png")
    assert load_object(tmp_path / "empty.png", "t/empty.png") is None
    sliver = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(sliver).rectangle([0, 140, 299, 160], fill=(0, 0, 0, 255))
    sliver.save(tmp_path / "sliver.png")
    assert load_object(tmp_path / "sliver.png", "t/sliver.png") is None


def test_disk_cache_gives_the_same_objects(art: Path, tmp_path: Path) -> None:
    plain = ArtLibrary([art], cache_dir="off")
    cold = ArtLibrary([art], cache_dir=tmp_path / "cache")
    warm = ArtLibrary([art], cache_dir=tmp_path / "cache")
    ids = plain.ids("all")[:10]
    for i in ids:
        a, b = plain.get(i), cold.get(i)
        assert (a is None) == (b is None)
    assert any((tmp_path / "cache").rglob("*.png"))
    for i in ids:
        a, c = plain.get(i), warm.get(i)
        if a is not None:
            assert c is not None and np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_bad_input_raises_user_errors(art: Path, tmp_path: Path) -> None:
    with pytest.raises(RelsearchError):
        compose(tmp_path / "x", 1, "nope", seed=0, art_dirs=[art])
    with pytest.raises(RelsearchError):
        compose(tmp_path / "x", 1, "all", seed=0, art_dirs=[tmp_path / "missing"])
    with pytest.raises(RelsearchError):
        compose(tmp_path / "x", -1, "all", seed=0, art_dirs=[art])
    assert not (tmp_path / "x").exists()


def test_cli_main_writes_corpus_and_rejects_bad_art(art: Path, tmp_path: Path, capsys) -> None:
    rc = run_cli(
        "compose",
        *[
            "--out",
            str(tmp_path / "o"),
            "--split",
            "all",
            "--per-family",
            "1",
            "--seed",
            "3",
            "--art",
            str(art),
            "--min-size",
            "96",
            "--max-size",
            "128",
            "--workers",
            "1",
            "--distractors",
            "1",
            "--format",
            "png",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == len(FAMILIES) + 1
    recs = _labels(tmp_path / "o")
    assert len(recs) == len(FAMILIES) + 1
    for r in recs:
        assert r["path"].endswith(".png")
        with Image.open(tmp_path / "o" / r["path"]) as im:
            assert im.format == "PNG"
    rc = run_cli("compose", *["--out", str(tmp_path / "p"), "--art", str(tmp_path / "nowhere")])
    assert rc == 2
    assert "art folder not found" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(not OPENCLIPART_DIR.is_dir(), reason="openclipart-png is not installed")
def test_openclipart_scenes_compose(tmp_path: Path) -> None:
    summary = compose(tmp_path / "oc", 1, "test", seed=0, size_range=(160, 200))
    recs = _labels(tmp_path / "oc")
    assert summary["images"] == len(FAMILIES)
    objs = {o for r in recs for o in r["objects"]}
    assert objs and all(o.startswith("openclipart/") and split_of(o) == "test" for o in objs)


@pytest.mark.skipif(not any(p.is_file() for p in EMOJI_FONTS), reason="no colour emoji font")
def test_emoji_export_is_usable_unseen_art(tmp_path: Path) -> None:
    assert export_emoji_art(tmp_path / "emoji", limit=24) == 24
    summary = compose(tmp_path / "e", 1, "all", seed=0, art_dirs=[tmp_path / "emoji"], size_range=(96, 128))
    objs = {o for r in _labels(tmp_path / "e") for o in r["objects"]}
    assert summary["images"] == len(FAMILIES)
    assert objs and all(o.startswith("emoji/u") for o in objs)
