"""Collection scan, hashing and decoding, on tiny images built at test time."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relsearch.collection import (
    IMAGE_EXTENSIONS,
    Decoded,
    DecodeError,
    iter_batches,
    iter_decoded,
    load_image,
    scan,
    sha256_file,
)
from relsearch.errors import RelsearchError

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def _near(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def _solid(path: Path, size: tuple[int, int] = (8, 6), color=RED, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def _noise(path: Path, size: tuple[int, int] = (64, 64), **save) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save)
    return path


def _rel(root: Path, result) -> list[str]:
    return [os.path.relpath(f.path, root) for f in result.files]


# --------------------------------------------------------------------------- scan


def test_scan_recursive_case_insensitive_and_sorted(tmp_path: Path) -> None:
    _solid(tmp_path / "b.jpg")
    _solid(tmp_path / "A.JPG", format="JPEG")
    _solid(tmp_path / "sub" / "c.PnG", format="PNG")
    _solid(tmp_path / "sub" / "deep" / "d.JpEg", format="JPEG")
    _solid(tmp_path / "e.TIF", format="TIFF")
    _solid(tmp_path / "f.webp")
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "photo.jpg.bak").write_bytes(b"x")
    (tmp_path / "layers.xcf").write_bytes(b"x")

    result = scan(tmp_path)

    assert _rel(tmp_path, result) == sorted(
        ["A.JPG", "b.jpg", "e.TIF", "f.webp", "sub/c.PnG", "sub/deep/d.JpEg"]
    )
    assert [f.path for f in result.files] == sorted(f.path for f in result.files)
    assert result.skipped == []
    entry = next(f for f in result.files if f.path.endswith("b.jpg"))
    st = os.stat(tmp_path / "b.jpg")
    assert (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert os.path.isabs(entry.path)


def test_scan_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    _solid(tmp_path / "shown.png")
    _solid(tmp_path / ".hidden.png")
    _solid(tmp_path / ".cache" / "thumb.png")
    _solid(tmp_path / "sub" / ".thumbs" / "t.jpg")
    _solid(tmp_path / "sub" / "ok.jpg")

    result = scan(tmp_path)

    assert _rel(tmp_path, result) == ["shown.png", "sub/ok.jpg"]
    assert result.skipped == []


def test_scan_relative_root_gives_absolute_normalised_paths(tmp_path: Path, monkeypatch) -> None:
    _solid(tmp_path / "pics" / "a.png")
    monkeypatch.chdir(tmp_path)
    result = scan("./pics/../pics/")
    assert [f.path for f in result.files] == [str(tmp_path / "pics" / "a.png")]


def test_scan_follows_file_symlink_without_resolving_it(tmp_path: Path) -> None:
    target = _solid(tmp_path / "store" / "real.png")
    (tmp_path / "link.png").symlink_to(target)

    result = scan(tmp_path)

    assert _rel(tmp_path, result) == ["link.png", "store/real.png"]
    link = result.files[0]
    assert link.path == str(tmp_path / "link.png")
    assert link.size == target.stat().st_size


def test_scan_symlink_loop_terminates_and_lists_each_file_once(tmp_path: Path) -> None:
    _solid(tmp_path / "top.png")
    _solid(tmp_path / "sub" / "inner.png")
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(".", target_is_directory=True)

    result = scan(tmp_path)

    assert _rel(tmp_path, result) == ["sub/inner.png", "top.png"]
    reasons = dict(result.skipped)
    assert set(reasons) == {str(tmp_path / "sub" / "up"), str(tmp_path / "sub" / "self")}
    assert all("symlink loop" in r for r in reasons.values())


def test_scan_follows_folder_symlink_outside_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _solid(root / "a.png")
    _solid(tmp_path / "elsewhere" / "far.jpg")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    result = scan(root)

    assert _rel(root, result) == ["a.png", "linked/far.jpg"]


def test_scan_prefers_plain_path_over_duplicate_folder_link(tmp_path: Path) -> None:
    _solid(tmp_path / "sub" / "x.png")
    # "alias" sorts before "sub"; the plain folder must still win
    (tmp_path / "alias").symlink_to(tmp_path / "sub", target_is_directory=True)

    result = scan(tmp_path)

    assert _rel(tmp_path, result) == ["sub/x.png"]
    assert len(result.skipped) == 1
    path, reason = result.skipped[0]
    assert path == str(tmp_path / "alias") and "already scanned" in reason


def test_scan_reports_broken_symlink(tmp_path: Path) -> None:
    _solid(tmp_path / "ok.png")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "gone_dir").symlink_to(tmp_path / "missing_dir")

    result = scan(tmp_path)

    assert _rel(tmp_path, result) == ["ok.png"]
    assert sorted(result.skipped) == [
        (str(tmp_path / "gone.jpg"), "broken symlink"),
        (str(tmp_path / "gone_dir"), "broken symlink"),
    ]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder")
def test_scan_reports_unreadable_folder(tmp_path: Path) -> None:
    _solid(tmp_path / "ok.png")
    locked = tmp_path / "locked"
    _solid(locked / "secret.png")
    locked.chmod(0)
    try:
        result = scan(tmp_path)
    finally:
        locked.chmod(0o755)
    assert _rel(tmp_path, result) == ["ok.png"]
    assert result.skipped[0][0] == str(locked)
    assert "unreadable" in result.skipped[0][1]


def test_scan_reports_folder_it_cannot_list(tmp_path: Path, monkeypatch) -> None:
    # chmod cannot lock out root, so make listing fail the way it would for a user
    _solid(tmp_path / "ok.png")
    locked = tmp_path / "locked"
    _solid(locked / "secret.png")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan(tmp_path)
    assert _rel(tmp_path, result) == ["ok.png"]
    assert result.skipped == [(str(locked), "unreadable folder: Permission denied")]


def test_scan_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(RelsearchError, match="not found"):
        scan(tmp_path / "nope")
    afile = _solid(tmp_path / "a.png")
    with pytest.raises(RelsearchError, match="not a folder"):
        scan(afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = scan(empty)
    assert result.files == [] and result.skipped == []


def test_image_extensions_constant() -> None:
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert {".jpg", ".png", ".gif", ".tiff", ".webp", ".bmp"} <= set(IMAGE_EXTENSIONS)


def test_sha256_identical_content_identical_hash(tmp_path: Path) -> None:
    data = os.urandom(3000)
    a, b, c = tmp_path / "a.jpg", tmp_path / "sub_b.png", tmp_path / "c.jpg"
    a.write_bytes(data)
    b.write_bytes(data)
    c.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    # a chunk size that does not divide the length exercises the tail read
    assert sha256_file(a, chunk=7) == sha256_file(b) == hashlib.sha256(data).hexdigest()
    assert sha256_file(c) != sha256_file(a)
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


# ------------------------------------------------------------------ bad files


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "zero.jpg"
    p.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        load_image(p)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    full = _noise(tmp_path / f"full.{fmt.lower()}", format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        load_image(cut)


def test_text_file_with_image_extension(tmp_path: Path) -> None:
    p = tmp_path / "readme.jpg"
    p.write_text("this is not a jpeg\n" * 20)
    with pytest.raises(DecodeError, match="not an image"):
        load_image(p)


def test_corrupt_gifs(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gif"
    garbage.write_bytes(b"GIF89a" + bytes(range(256)) * 2)
    # a valid header and palette followed by a broken LZW stream
    broken = tmp_path / "broken.gif"
    broken.write_bytes(
        b"GIF89a\x10\x00\x10\x00\x80\x00\x00"
        + b"\x00\x00\x00\xff\xff\xff"
        + b",\x00\x00\x00\x00\x10\x00\x10\x00\x00\x02\x05garbage"
    )
    for p in (garbage, broken):
        with pytest.raises(DecodeError) as info:
            load_image(p)
        assert info.value.reason and "\n" not in info.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb(tmp_path: Path, monkeypatch) -> None:
    p = _solid(tmp_path / "big.png", size=(64, 64))
    # PIL refuses outright above twice this many pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DecodeError, match="decompression bomb"):
        load_image(p)


# ------------------------------------------------------------- good files


def _two_halves(size=(40, 20)) -> Image.Image:
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6(tmp_path: Path, fmt: str) -> None:
    im = _two_halves()
    if fmt == "PNG":  # lossless: a single marker pixel must land exactly
        im.putpixel((0, 0), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; shown rotated 90 degrees clockwise
    p = tmp_path / f"o6.{fmt.lower()}"
    im.save(p, format=fmt, exif=exif, quality=95)

    out = load_image(p)

    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # the stored left half (red) is on top once upright
    assert _near(out.getpixel((10, 5)), RED)
    assert _near(out.getpixel((10, 35)), BLUE)
    if fmt == "PNG":
        # stored top-left -> shown top-right
        assert out.getpixel((19, 0)) == (0, 255, 0)
        assert out.getpixel((0, 0)) == RED

    small = load_image(p, max_side=10)
    assert small.size == (5, 10)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    p = tmp_path / "a.png"
    im.save(p)

    out = load_image(p)

    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert _near(out.getpixel((1, 0)), (127, 127, 127), tol=2)
    assert out.getpixel((3, 1)) == RED


def test_grey_alpha_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("LA", (3, 3), (0, 255))
    im.putpixel((1, 1), (0, 0))
    p = tmp_path / "la.png"
    im.save(p)
    out = load_image(p)
    assert out.getpixel((1, 1)) == WHITE
    assert out.getpixel((0, 0)) == (0, 0, 0)


def test_palette_transparency_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # 0 black, 1 red
    im.putpixel((2, 2), 0)
    p = tmp_path / "p.png"
    im.save(p, transparency=0)
    assert Image.open(p).mode == "P"

    out = load_image(p)

    assert out.mode == "RGB"
    assert out.getpixel((2, 2)) == WHITE  # black but transparent -> white
    assert out.getpixel((0, 0)) == RED


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, (0, 255, 0), BLUE)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(p).n_frames == 3

    out = load_image(p)

    assert out.mode == "RGB" and out.size == (10, 10)
    assert _near(out.getpixel((5, 5)), RED, tol=4)


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 30000, 65535]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")

    out = load_image(p)

    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (117, 117, 117)  # 30000/257, where clipping gives 255
    assert out.getpixel((2, 0)) == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 20), (0, 255, 255, 0)).save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (40, 20)
    assert _near(out.getpixel((20, 10)), RED)
    small = load_image(p, max_side=10)  # the draft path must cope with CMYK too
    assert small.mode == "RGB" and small.size == (10, 5)


@pytest.mark.parametrize(
    ("name", "fmt"), [("x.webp", "WEBP"), ("x.bmp", "BMP"), ("x.tiff", "TIFF"), ("x.gif", "GIF")]
)
def test_other_formats(tmp_path: Path, name: str, fmt: str) -> None:
    p = _two_halves((30, 12))
    path = tmp_path / name
    p.save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 12)
    assert _near(out.getpixel((3, 6)), RED, tol=4)
    assert _near(out.getpixel((27, 6)), BLUE, tol=4)


def test_greyscale_becomes_rgb(tmp_path: Path) -> None:
    p = tmp_path / "g.png"
    Image.new("L", (5, 5), 200).save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.getpixel((2, 2)) == (200, 200, 200)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_max_side_downscales_keeping_aspect_never_upscales(tmp_path: Path, fmt: str) -> None:
    big = _solid(tmp_path / f"big.{fmt.lower()}", size=(800, 400), format=fmt)
    tall = _solid(tmp_path / f"tall.{fmt.lower()}", size=(90, 300), format=fmt)
    small = _solid(tmp_path / f"small.{fmt.lower()}", size=(30, 20), format=fmt)

    assert load_image(big, max_side=100).size == (100, 50)
    assert load_image(tall, max_side=100).size == (30, 100)
    assert load_image(small, max_side=100).size == (30, 20)
    assert load_image(big).size == (800, 400)
    with pytest.raises(ValueError):
        load_image(big, max_side=0)


# ----------------------------------------------------------- streaming


def _mixed_collection(tmp_path: Path, n: int = 18) -> tuple[list[str], set[int]]:
    paths, bad = [], set()
    for i in range(n):
        p = tmp_path / f"{i:03d}.png"
        if i % 4 == 1:
            p.write_text("junk")
            bad.add(i)
        elif i % 4 == 3 and i > 10:
            p.write_bytes(b"")
            bad.add(i)
        else:
            Image.new("RGB", (100 + i, 50), (i * 10, 0, 0)).save(p)
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.png"))
    bad.add(n)
    return paths, bad


def test_iter_decoded_keeps_order_and_reports_errors(tmp_path: Path) -> None:
    paths, bad = _mixed_collection(tmp_path)

    out = list(iter_decoded(paths, max_side=32, workers=2, prefetch=3))

    assert [d.index for d in out] == list(range(len(paths)))
    assert [d.path for d in out] == paths
    for d in out:
        if d.index in bad:
            assert d.image is None and d.error and not d.ok
            assert (d.width, d.height) == (0, 0)
        else:
            assert d.error is None and d.ok
            assert d.image.mode == "RGB" and max(d.image.size) <= 32
            assert (d.width, d.height) == (100 + d.index, 50)  # original size
            assert _near(d.image.getpixel((5, 5)), (d.index * 10, 0, 0), tol=2)
    errors = {d.path: d.error for d in out if d.error}
    assert errors[paths[1]] == "not an image"
    assert errors[paths[11]] == "empty file"
    assert errors[paths[-1]] == "file not found"


def test_iter_decoded_streams_with_bounded_prefetch(tmp_path: Path) -> None:
    p = _solid(tmp_path / "one.png")
    pulled = 0

    def source():
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield str(p)

    stream = iter_decoded(source(), max_side=8, workers=2, prefetch=5)
    first = next(stream)
    assert first.ok and first.index == 0
    assert pulled <= 6  # prefetch plus the one refilled after the first yield
    for _ in range(10):
        next(stream)
    assert pulled <= 16
    stream.close()  # early stop shuts the pool down
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_iter_decoded_process_backend(tmp_path: Path) -> None:
    paths, bad = _mixed_collection(tmp_path, n=6)
    out = list(iter_decoded(paths, max_side=16, workers=1, backend="process"))
    assert [d.index for d in out] == list(range(len(paths)))
    assert {d.index for d in out if not d.ok} == bad
    assert all(d.image.size[0] == 16 for d in out if d.ok)


def test_iter_decoded_rejects_bad_arguments(tmp_path: Path) -> None:
    for kwargs in ({"prefetch": 0}, {"workers": 0}, {"max_side": 0}, {"backend": "gpu"}):
        with pytest.raises(ValueError):
            list(iter_decoded([str(tmp_path / "a.png")], **kwargs))
    assert list(iter_decoded([])) == []


def _fake(index: int, ok: bool) -> Decoded:
    image = Image.new("RGB", (1, 1)) if ok else None
    return Decoded(index, f"/x/{index}.png", image, None if ok else "not an image", 1, 1)


def test_iter_batches_groups_successes_and_flags_failures() -> None:
    pattern = [True, False, True, True, False, False, True, True, True, False]
    stream = [_fake(i, ok) for i, ok in enumerate(pattern)]

    batches = list(iter_batches(iter(stream), batch_size=2))

    assert [d.index for b in batches for d in b] == list(range(len(pattern)))
    assert [sum(d.ok for d in b) for b in batches] == [2, 2, 2, 0]
    assert [d.index for d in batches[0]] == [0, 1, 2]  # the failure rides along
    assert [d.index for d in batches[-1]] == [9]  # trailing failures still come out
    assert [sum(d.image is not None for d in b) for b in batches] == [2, 2, 2, 0]

    assert [len(b) for b in iter_batches([_fake(0, True)] * 5, batch_size=3)] == [3, 2]
    assert list(iter_batches([], batch_size=4)) == []
    with pytest.raises(ValueError):
        list(iter_batches([], batch_size=0))


def test_iter_batches_over_real_decodes(tmp_path: Path) -> None:
    paths, bad = _mixed_collection(tmp_path)
    batches = list(iter_batches(iter_decoded(paths, max_side=16, workers=2), batch_size=4))
    good = len(paths) - len(bad)
    assert sum(d.image is not None for b in batches for d in b) == good
    assert all(sum(d.image is not None for d in b) == 4 for b in batches[:-1])
    assert sorted(d.index for b in batches for d in b if not d.ok) == sorted(bad)
