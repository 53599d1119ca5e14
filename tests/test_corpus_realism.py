"""Realistic corpus: the three new families, wallpaper-photo backgrounds, the nuisances of real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from relsearch.corpus import FAMILIES, compose
from relsearch.corpus.art import (
    EVAL_PHOTO_PACKAGES,
    PHOTO_POOLS,
    TRAIN_PHOTO_PACKAGES,
    ArtObject,
    _describe,
    missing_photo_packages,
    package_files,
)
from relsearch.corpus.captions import PLACEHOLDERS, TEMPLATES
from relsearch.corpus.families import CLASSIC_FAMILIES, RENDERERS
from relsearch.corpus.realism import Style, drawing_style
from relsearch.errors import RelsearchError

NEW_FAMILIES = ("made_of", "face", "outline")


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELSEARCH_ART_CACHE", "off")


def _disc(ident: str, colour: tuple[int, int, int], size: int = 80, margin: int = 12) -> ArtObject:
    """A solid disc with a transparent border, so adjacent copies stay apart."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([margin, margin, size - margin, size - margin], fill=(*colour, 255))
    return _describe(im, ident)


def _blob(ident: str, colour: tuple[int, int, int]) -> ArtObject:
    """A solid irregular silhouette (a large shape to be built from copies)."""
    im = Image.new("RGBA", (200, 160), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse([0, 20, 140, 160], fill=(*colour, 255))
    d.rectangle([90, 0, 200, 90], fill=(*colour, 255))
    return _describe(im, ident)


def has_placeholder(text: str) -> bool:
    return any(p in text for p in PLACEHOLDERS)


def _source(objs: list[ArtObject]):
    return lambda n: objs[:n]


def _white(w: int = 320, h: int = 300) -> Image.Image:
    return Image.new("RGBA", (w, h), (255, 255, 255, 255))


def _mask_of(canvas: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    a = np.asarray(canvas.convert("RGB")).astype(int)
    return np.abs(a - np.array(colour)).max(axis=2) < 40


@pytest.mark.parametrize("seed", range(6))
def test_made_of_builds_a_silhouette_from_many_small_copies(seed: int) -> None:
    canvas = _white()
    small, shape = _disc("t/red", (220, 20, 20)), _blob("t/blue", (20, 20, 220))
    ids = RENDERERS["made_of"](canvas, _source([small, shape]), np.random.default_rng(seed))
    assert ids == ["t/red", "t/blue"]
    red = _mask_of(canvas, (220, 20, 20))
    _, copies = ndimage.label(red)
    assert copies >= 12, copies  # many small copies ...
    assert not _mask_of(canvas, (20, 20, 220)).any()  # ... and the large shape itself is never drawn
    ys, xs = np.nonzero(red)
    # The copies fill a body, not a line: the covered area spans a good part of the canvas both ways.
    assert xs.max() - xs.min() > 0.4 * canvas.width and ys.max() - ys.min() > 0.4 * canvas.height


@pytest.mark.parametrize("seed", range(6))
def test_outline_traces_a_shape_with_nothing_in_the_middle(seed: int) -> None:
    canvas = _white()
    ids = RENDERERS["outline"](canvas, _source([_disc("t/green", (20, 180, 20))]), np.random.default_rng(seed))
    assert ids == ["t/green"]
    green = _mask_of(canvas, (20, 180, 20))
    _, copies = ndimage.label(green)
    assert copies >= 10, copies
    ys, xs = np.nonzero(green)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    r = int(0.04 * min(canvas.size))
    assert not green[cy - r : cy + r, cx - r : cx + r].any()  # the middle stays empty


@pytest.mark.parametrize("seed", range(6))
def test_face_places_two_eyes_above_a_nose_above_a_mouth(seed: int) -> None:
    canvas = _white()
    eye, nose, mouth = _disc("t/e", (220, 20, 20)), _disc("t/n", (20, 20, 220)), _disc("t/m", (20, 160, 20))
    ids = RENDERERS["face"](canvas, _source([eye, nose, mouth]), np.random.default_rng(seed))
    assert ids == ["t/e", "t/n", "t/m"]
    lab, n_eyes = ndimage.label(_mask_of(canvas, (220, 20, 20)))
    assert n_eyes == 2
    eyes = ndimage.center_of_mass(lab > 0, lab, [1, 2])
    nose_y = np.nonzero(_mask_of(canvas, (20, 20, 220)))[0].mean()
    mouth_y = np.nonzero(_mask_of(canvas, (20, 160, 20)))[0].mean()
    eye_y = np.mean([e[0] for e in eyes])
    assert eye_y < nose_y < mouth_y  # tilt is at most 15 degrees, so the order holds
    assert abs(eyes[0][1] - eyes[1][1]) > 0.15 * canvas.width  # eyes side by side


def test_new_families_have_anonymous_caption_templates() -> None:
    assert FAMILIES[: len(CLASSIC_FAMILIES)] == CLASSIC_FAMILIES  # old scene keys do not move
    for family in NEW_FAMILIES:
        assert family in FAMILIES
        assert 4 <= len(TEMPLATES[family]) <= 5
        assert all(has_placeholder(t) for t in TEMPLATES[family])
    # No template is shared between families: a caption names one relation.
    all_templates = [t for f in FAMILIES for t in TEMPLATES[f]]
    assert len(all_templates) == len(set(all_templates))


def _art(root: Path) -> Path:
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    for i in range(40):
        im = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
        colour = tuple(int(c) for c in rng.integers(0, 220, 3)) + (255,)
        pts = [(float(rng.uniform(0, 90)), float(rng.uniform(0, 90))) for _ in range(6)]
        ImageDraw.Draw(im).polygon(pts, fill=colour)
        ImageDraw.Draw(im).ellipse([20, 20, 70, 70], fill=colour)
        im.save(root / f"obj_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _art(tmp_path_factory.mktemp("art") / "shapes")


def _labels(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]


def test_realism_changes_the_files_but_never_the_relation_or_objects(art: Path, tmp_path: Path) -> None:
    kw = dict(n_per_family=2, split="all", seed=4, art_dirs=[art], distractors=2, size_range=(128, 160))
    compose(tmp_path / "plain", **kw)
    compose(tmp_path / "real", realism=True, **kw)
    compose(tmp_path / "real2", realism=True, workers=2, **kw)
    plain, real = _labels(tmp_path / "plain"), _labels(tmp_path / "real")
    assert [(r["family"], r["objects"], r["caption"]) for r in plain] == [
        (r["family"], r["objects"], r["caption"]) for r in real
    ]
    sizes = []
    for a, b in zip(plain, real):
        pa, pb = tmp_path / "plain" / a["path"], tmp_path / "real" / b["path"]
        assert (tmp_path / "real2" / b["path"]).read_bytes() == pb.read_bytes()  # deterministic
        sizes.append(pb.stat().st_size)
        with Image.open(pa) as ia, Image.open(pb) as ib:
            assert ia.size == ib.size
            if a["family"] != "none":
                assert np.abs(np.asarray(ia, np.int16) - np.asarray(ib, np.int16)).mean() > 0.5
    assert len(set(sizes)) > len(sizes) // 2  # JPEG quality and nuisances vary scene to scene


def test_drop_shadow_darkens_pixels_beside_the_object(art: Path) -> None:
    obj = _disc("t/red", (220, 20, 20))
    rng_args = (np.random.default_rng(0),)
    plain, shaded = _white(), _white()
    RENDERERS["outline"](plain, _source([obj]), *rng_args)
    with drawing_style(Style(shadow=(0.06, 0.06, 0.02, 0.6))):
        RENDERERS["outline"](shaded, _source([obj]), np.random.default_rng(0))
    a, b = np.asarray(plain.convert("L"), float), np.asarray(shaded.convert("L"), float)
    assert (b < a - 30).sum() > 200  # shadow pixels
    assert (_mask_of(plain, (220, 20, 20)) == _mask_of(shaded, (220, 20, 20))).mean() > 0.95


def test_cli_background_modes_match_the_composer() -> None:
    from relsearch.cli import compose as cli_compose
    from relsearch.corpus.compose import BACKGROUND_MODES

    assert cli_compose.BACKGROUND_MODES == BACKGROUND_MODES


def test_bad_background_options_are_user_errors(art: Path, tmp_path: Path) -> None:
    with pytest.raises(RelsearchError, match="backgrounds"):
        compose(tmp_path / "x", 1, "all", seed=0, art_dirs=[art], backgrounds="sky")
    with pytest.raises(RelsearchError, match="photos"):
        compose(tmp_path / "y", 1, "all", seed=0, art_dirs=[art], photos="mine")


def test_train_and_eval_photo_pools_never_share_a_file() -> None:
    assert not set(TRAIN_PHOTO_PACKAGES) & set(EVAL_PHOTO_PACKAGES)
    train = {p for pkg in PHOTO_POOLS["train"] for p in package_files(pkg)}
    evaluation = {p for pkg in PHOTO_POOLS["eval"] for p in package_files(pkg)}
    assert not train & evaluation


def _fake_packages(root: Path, monkeypatch: pytest.MonkeyPatch, files: list[str], packages: tuple[str, ...]) -> None:
    """Create ``files`` under ``root`` and dpkg listings naming all of them for each of ``packages``."""
    from relsearch.corpus import art as art_mod

    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")
    info = root / "info"
    info.mkdir()
    for pkg in packages:
        (info / f"{pkg}.list").write_text("".join(f"{root / f}\n" for f in files))
    monkeypatch.setattr(art_mod, "_DPKG_INFO", info)


def test_package_files_keeps_one_size_of_each_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packages(tmp_path, monkeypatch, ["Autumn/contents/images/640x480.jpg", "Autumn/contents/images/1920x1080.jpg",
                                           "Autumn/contents/screenshot.jpg", "Kite/contents/images/800x600.png",
                                           "flat/meadow.jpg", "flat/meadow_3840x2160.jpg", "flat/readme.txt"], ("wp",))
    got = sorted(str(p.relative_to(tmp_path)) for p in package_files("wp"))
    assert got == ["Autumn/contents/images/1920x1080.jpg", "Kite/contents/images/800x600.png", "flat/meadow.jpg"]
    assert package_files("not-installed") == []


def test_package_files_keeps_only_the_selected_photographs_of_a_mixed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relsearch.corpus import art as art_mod

    # selections only narrow training packages
    assert set(art_mod._PHOTO_SELECTION) <= {*TRAIN_PHOTO_PACKAGES, art_mod.THINGS_PACKAGE}
    assert art_mod.THINGS_PACKAGE not in EVAL_PHOTO_PACKAGES
    _fake_packages(tmp_path, monkeypatch, ["doc/data/room.jpg", "doc/data/chessboard.png", "doc/tutorial/diagram.png",
                                           "icons/app.png", "templates/rocks.jpg", "templates/sheep.jpg",
                                           "starters/frame.png"], ("samples", "paint"))
    monkeypatch.setattr(art_mod, "_PHOTO_SELECTION", {
        "samples": (f"{tmp_path}/doc/data/", frozenset({"room.jpg"})),
        "paint": (f"{tmp_path}/templates/", None),
    })
    assert [p.name for p in package_files("samples")] == ["room.jpg"]
    assert [p.name for p in package_files("paint")] == ["rocks.jpg", "sheep.jpg"]


@pytest.mark.parametrize("pool", ["train", "eval"])
def test_photo_backgrounds_are_real_photographs(
    art: Path, tmp_path: Path, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELSEARCH_ART_CACHE")  # decoded wallpapers are cached once per machine
    missing = missing_photo_packages(pool)
    if missing:
        pytest.skip(f"wallpaper packages not installed: {' '.join(missing)} (tools/setup.sh installs them)")
    compose(tmp_path / "p", 0, "all", seed=2, art_dirs=[art], grouped=True, n_groups=2, size_range=(160, 200),
            backgrounds="photo", photos=pool, realism=True, families=["outline"], distractors=8)
    recs = _labels(tmp_path / "p")
    bare = [r for r in recs if r["family"] == "none" and not r["objects"]]
    detail = []
    for r in bare or recs:
        with Image.open(tmp_path / "p" / r["path"]) as im:
            a = np.asarray(im.convert("L"), float)
        assert a.std() > 8  # never a flat colour (near-uniform wallpapers are dropped at load)
        detail.append(np.abs(np.diff(a, axis=1)).mean())
    # A photograph has detail everywhere: local contrast well above a gradient's. The wallpaper
    # packages also hold some smooth abstract pictures (a sixth of the training pool measures
    # under 1.0), so the typical background is tested, not each one.
    assert len(detail) >= 3 and float(np.median(detail)) > 1.0, detail


def _cutout(colour: tuple[int, int, int], textured: bool, seed: int = 0) -> Image.Image:
    """A disc cut out of a transparent square: photographed (noisy texture) or flat paint."""
    rng = np.random.default_rng(seed)
    rgb = np.broadcast_to(np.array(colour, np.float32), (120, 120, 3)).copy()
    if textured:
        rgb += rng.normal(0, 40, rgb.shape)
    alpha = Image.new("L", (120, 120), 0)
    ImageDraw.Draw(alpha).ellipse([10, 10, 110, 110], fill=255)
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    im.putalpha(alpha)
    return im


def test_only_cut_out_photographs_count_as_photographed_things() -> None:
    from relsearch.corpus.art import _is_photographed

    assert _is_photographed(_cutout((200, 60, 40), textured=True))
    assert not _is_photographed(_cutout((200, 60, 40), textured=False))  # flat paint: a drawing
    opaque = _cutout((200, 60, 40), textured=True)
    opaque.putalpha(255)
    assert not _is_photographed(opaque)  # no cut: a whole picture, not a thing


@pytest.fixture
def fake_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grey training photograph and one photographed red thing, without the Debian packages."""
    from relsearch.corpus import art as art_mod

    grey = Image.fromarray(np.random.default_rng(1).normal(128, 6, (240, 240, 3)).clip(0, 255).astype(np.uint8))
    monkeypatch.setitem(art_mod._photo_pools, "train", [grey])
    monkeypatch.setattr(art_mod, "_things", [_cutout((230, 30, 30), textured=True)])


def _red_share(path: Path) -> float:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), np.int16)
    return float(((a[..., 0] > 150) & (a[..., 1] < 110) & (a[..., 2] < 110)).mean())


def test_things_stand_in_the_photograph_and_leave_the_relation_alone(
    art: Path, tmp_path: Path, fake_photos: None
) -> None:
    kw = dict(n_per_family=0, split="all", seed=5, art_dirs=[art], grouped=True, n_groups=3, size_range=(160, 200),
              backgrounds="photo", families=["stack", "orbit", "outline"])
    compose(tmp_path / "bare", **kw)
    compose(tmp_path / "things", things=True, **kw)
    compose(tmp_path / "things2", things=True, workers=2, **kw)
    bare, things = _labels(tmp_path / "bare"), _labels(tmp_path / "things")
    assert [(r["family"], r["objects"], r["caption"], r["group"]) for r in bare] == [
        (r["family"], r["objects"], r["caption"], r["group"]) for r in things
    ]
    for r in things:
        assert (tmp_path / "things2" / r["path"]).read_bytes() == (tmp_path / "things" / r["path"]).read_bytes()
        # The red thing shows, partly behind the objects (drawn in the same places in both).
        assert _red_share(tmp_path / "things" / r["path"]) > _red_share(tmp_path / "bare" / r["path"]) + 0.01
    assert json.loads((tmp_path / "things" / "summary.json").read_text())["things"] is True


def test_a_groups_scenes_share_their_things(art: Path, tmp_path: Path, fake_photos: None) -> None:
    from relsearch.corpus.art import ArtLibrary
    from relsearch.corpus.compose import ComposeConfig, _scene_setup, plan_scenes

    cfg = ComposeConfig(out_dir=tmp_path, n_per_family=0, split="all", seed=3, grouped=True, n_groups=2,
                        art_dirs=(str(art),), backgrounds="photo", things=True, families=("stack", "orbit"))
    library = ArtLibrary(cfg.art_dirs)
    canvases = [np.asarray(_scene_setup(cfg, library, t)[0]) for t in plan_scenes(cfg)]
    assert np.array_equal(canvases[0], canvases[1])  # group 0: stack and orbit over the same photograph
    assert canvases[0].shape != canvases[2].shape or not np.array_equal(canvases[0], canvases[2])


def test_things_need_photographs_and_their_package(
    art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_photos: None
) -> None:
    from relsearch.corpus import art as art_mod

    with pytest.raises(RelsearchError, match="need photo backgrounds"):
        compose(tmp_path / "x", 1, "all", seed=0, art_dirs=[art], backgrounds="plain", things=True)
    monkeypatch.setattr(art_mod, "_things", [])
    with pytest.raises(RelsearchError, match=f"apt-get install {art_mod.THINGS_PACKAGE}"):
        compose(tmp_path / "y", 1, "all", seed=0, art_dirs=[art], backgrounds="photo", things=True)
    assert not (tmp_path / "y").exists()


def test_tux_paints_stamps_give_many_photographed_things(monkeypatch: pytest.MonkeyPatch) -> None:
    from relsearch.corpus import art as art_mod

    if not package_files(art_mod.THINGS_PACKAGE):
        pytest.skip(f"{art_mod.THINGS_PACKAGE} not installed (tools/setup.sh installs it)")
    monkeypatch.setattr(art_mod, "_things", None)
    things = art_mod.photo_things()
    assert len(things) >= 150  # animals, fruit, tools, vehicles; drawings and letters left out
    for im in things:
        alpha = np.asarray(im)[..., 3]
        assert im.mode == "RGBA" and max(im.size) <= art_mod.THING_SIDE
        assert (alpha == 0).any() and (alpha == 255).any()
