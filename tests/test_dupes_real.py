"""``dupes`` on real files: photographs with planted near-copies, the MATE abstract wallpapers, pictures out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from relsearch.bench.dupes import photo_sources, plant_copy
from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.collection import load_image
from relsearch.dupes import DEFAULT_THRESHOLD, find_dupes
from relsearch.dupes_check import signature, similarity

MATE_ABSTRACT = Path("/usr/share/backgrounds/mate/abstract")
#: Six different transparent overlays (and one photograph-like painting) of mate-backgrounds.
MATE_NAMES = ("Arc-Colors-Transparent-Wallpaper.png", "Flow.png", "Gulp.png", "Silk.png", "Spring.png",
              "Waves.png", "Elephants.jpg")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """30 pictures: 24 real photographs, 6 planted near-copies; plus two byte-identical copies."""
    photos = photo_sources()
    if len(photos) < 24:
        pytest.skip(f"needs 24 installed photographs (endless-sky-data, lomiri-wallpapers...), found {len(photos)}")
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    originals, copies = [], {}
    for k, src in enumerate(photos[:: max(1, len(photos) // 24)][:24]):
        orig = root / f"{k:02d}_{src.stem}.jpg"
        load_image(src, max_side=640).save(orig, quality=92)
        originals.append(orig)
        if k % 4 == 1:
            img, p = plant_copy(load_image(orig), rng)
            copies[orig] = root / "edited" / f"{k:02d}_copy.jpg"
            copies[orig].parent.mkdir(exist_ok=True)
            img.save(copies[orig], quality=p["q"])
    copied = next(iter(copies))
    inside = root / "backup" / copied.name  # an exact copy of a picture that also has a near copy
    alone = root / "backup" / originals[0].name  # an exact copy of a picture without one
    inside.parent.mkdir()
    shutil.copyfile(copied, inside)
    shutil.copyfile(originals[0], alone)
    idx = root.parent / (root.name + "_index")
    build_index(root, idx, BuildOptions(encoders="imagenet", progress=False))
    return {"root": root, "index": idx, "copies": copies, "inside": inside, "alone": alone,
            "originals": originals}


def test_planted_copies_are_found_among_30_pictures(planted) -> None:
    result = find_dupes(planted["index"])
    assert result.images == 30 and result.unchecked == 0
    near = [set(g.paths) for g in result.groups if g.kind == "near"]
    want = [{str(o), str(c)} for o, c in planted["copies"].items()]
    assert len(want) == 6
    for pair in want:  # each planted copy in its original's group, nothing else in it
        assert any(pair <= g for g in near), pair
    assert all(len(g - {str(planted["inside"])}) == 2 for g in near)
    assert len(near) == 6


def test_no_exact_pair_is_listed_twice(planted) -> None:
    result = find_dupes(planted["index"])
    every = [p for g in result.groups for p in g.paths]
    assert len(every) == len(set(every))  # each file in one group at most
    exact = [g for g in result.groups if g.kind == "exact"]
    assert [g.paths for g in exact] == [sorted([str(planted["originals"][0]), str(planted["alone"])])]
    holder = next(g for g in result.groups if str(planted["inside"]) in g.paths)
    assert holder.kind == "near" and len(holder.members) == 2
    member = next(m for m in holder.members if m.copies)
    assert sorted([member.path, *member.copies]) == sorted([str(next(iter(planted["copies"]))), str(planted["inside"])])


def test_dupes_writes_html_and_sheet_and_says_so(planted, tmp_path: Path) -> None:
    html, sheet = tmp_path / "out" / "dupes.html", tmp_path / "dupes.png"
    res = CliRunner().invoke(app, ["dupes", "--index", str(planted["index"]), "--html", str(html),
                                   "--sheet", str(sheet)])
    assert res.exit_code == 0, res.output
    assert f"wrote {html}" in res.stderr and f"wrote {sheet}" in res.stderr
    assert "+1 copy" in res.stdout and res.stdout.count(Path(str(planted["inside"])).name) == 2
    page = html.read_text(encoding="utf-8")
    assert page.count('<section class="group near">') == 6 and page.count('<section class="group exact">') == 1
    assert page.count("data:image/jpeg;base64,") == 6 * 2 + 2  # every picture of every group, inline
    for copy in planted["copies"].values():
        assert copy.name in page
    assert "+1 copy" in page
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.width >= 2 * 160 and img.height > 7 * 160


def test_unwritable_html_is_one_line_and_exit_2(planted, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["dupes", "--index", str(planted["index"]), "--html", str(tmp_path)])
    assert res.exit_code == 2 and "cannot write" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_pixel_check_tells_the_mate_overlays_apart_and_keeps_copies() -> None:
    files = [MATE_ABSTRACT / n for n in MATE_NAMES]
    if not all(p.is_file() for p in files):
        pytest.skip("mate-backgrounds is not installed (apt-get install mate-backgrounds)")
    sigs = [signature(p) for p in files]
    for a in range(len(sigs)):
        assert similarity(sigs[a], sigs[a]) == pytest.approx(1.0)
        for b in range(a + 1, len(sigs)):
            assert similarity(sigs[a], sigs[b]) < DEFAULT_THRESHOLD, (files[a].name, files[b].name)
    # the same painting at another resolution is a copy
    big = MATE_ABSTRACT / "Elephants_3840x2160.jpg"
    if big.is_file():
        assert similarity(sigs[-1], signature(big)) >= DEFAULT_THRESHOLD


def test_mate_abstract_wallpapers_are_not_grouped(tmp_path: Path) -> None:
    files = [MATE_ABSTRACT / n for n in MATE_NAMES]
    if not all(p.is_file() for p in files):
        pytest.skip("mate-backgrounds is not installed (apt-get install mate-backgrounds)")
    root = tmp_path / "walls"
    root.mkdir()
    for p in files:
        shutil.copyfile(p, root / p.name)
    build_index(root, tmp_path / "idx", BuildOptions(encoders="imagenet", progress=False))
    res = CliRunner().invoke(app, ["dupes", "--index", str(tmp_path / "idx"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["candidates"] >= 5  # the vectors alone call the white overlays copies of each other
    assert out["groups"] == []
