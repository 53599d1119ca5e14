"""HEIC, AVIF, camera RAW (embedded preview) and SVG, on real files made here from photographs.

Every format is scanned, decoded, indexed and queried through the CLI; a missing optional
decoder makes its files fail with "needs PACKAGE", never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from format_helpers import photo_image, photographs, write_avif, write_dng, write_heic, write_jpeg
from typer.testing import CliRunner

from relsearch.cli import app
from relsearch.collection import decode_one, scan
from relsearch.collection import formats as fmt

runner = CliRunner()
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


def cli(*argv: object):
    return runner.invoke(app, [str(a) for a in argv])


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """One file per format, each from a different photograph (so each is found by its own query)."""
    d = tmp_path_factory.mktemp("made")
    a, b, c, e = photographs(4)
    return {"heic": write_heic(a, d / "phone.heic"), "avif": write_avif(b, d / "web.avif"),
            "dng": write_dng(c, d / "camera.dng"), "dng_bare": write_dng(e, d / "bare.dng", preview=False),
            "srcs": d, "heic_src": a, "avif_src": b, "dng_src": c, "bare_src": e}


def _close_to(img, src: Path) -> float:
    """Mean absolute difference (0-255) between a decoded image and its source photograph."""
    ref = photo_image(src, max(img.size)).resize(img.size)
    return float(np.abs(np.asarray(img, dtype=np.float32) - np.asarray(ref, dtype=np.float32)).mean())


@pytest.mark.parametrize("kind", ["heic", "avif", "dng", "dng_bare"])
def test_each_format_decodes_to_its_photograph_and_hashes_its_bytes(made, kind):
    path = made[kind]
    d = decode_one(0, str(path), 256)
    assert d.ok, d.error
    assert d.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert max(d.image.size) <= 256 and d.image.mode == "RGB"
    src = made[{"heic": "heic_src", "avif": "avif_src", "dng": "dng_src", "dng_bare": "bare_src"}[kind]]
    assert _close_to(d.image, src) < 20, kind  # the picture, not a grey box or another photograph


def test_the_raw_preview_is_what_is_decoded(made):
    # the DNG's embedded JPEG is full size; the mosaic without a preview is demosaicked at half size
    with_preview, bare = decode_one(0, str(made["dng"]), None), decode_one(0, str(made["dng_bare"]), None)
    assert with_preview.image.size == (with_preview.width, with_preview.height)
    assert bare.ok and bare.width < with_preview.width


def test_scan_lists_new_formats_skips_raw_beside_jpeg_and_counts_svg(tmp_path, made):
    shutil.copy(made["heic"], tmp_path / "a.HEIC")
    shutil.copy(made["avif"], tmp_path / "b.avif")
    shutil.copy(made["dng"], tmp_path / "c.dng")
    shutil.copy(made["dng"], tmp_path / "IMG_0001.DNG")
    write_jpeg(made["dng_src"], tmp_path / "IMG_0001.jpg")
    (tmp_path / "sub").mkdir()
    shutil.copy(made["dng"], tmp_path / "sub" / "IMG_0001.dng")  # another folder: not beside the JPEG
    (tmp_path / "logo.svg").write_text(SVG)
    (tmp_path / "sub" / "icon.SVG").write_text(SVG)
    res = scan(tmp_path)
    names = sorted(str(Path(f.path).relative_to(tmp_path)) for f in res.files)
    assert names == ["IMG_0001.jpg", "a.HEIC", "b.avif", "c.dng", "sub/IMG_0001.dng"]
    assert [(Path(r).name, Path(j).name) for r, j in res.raw_beside] == [("IMG_0001.DNG", "IMG_0001.jpg")]
    assert sorted(Path(p).name for p in res.vector) == ["icon.SVG", "logo.svg"]
    assert res.notes() == [
        "2 SVG files skipped: vector images are not indexed",
        "1 camera RAW file skipped: the same photograph beside it (JPEG, HEIC...) is indexed instead, "
        "e.g. IMG_0001.DNG beside IMG_0001.jpg"]


def test_build_and_query_each_format_through_the_cli(tmp_path, made):
    col, idx = tmp_path / "photos", tmp_path / "idx"
    others = photographs(8)[4:]
    for i, p in enumerate(others):
        write_jpeg(p, col / "jpeg" / f"p{i}.jpg")
    for kind, name in (("heic", "iphone/IMG_1.HEIC"), ("avif", "web/pic.avif"), ("dng", "camera/DSC_1.dng")):
        (col / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(made[kind], col / name)
    shutil.copy(made["dng"], col / "camera" / "DSC_2.NEF.dng")
    write_jpeg(made["dng_src"], col / "camera" / "DSC_2.jpg")
    shutil.copy(made["dng"], col / "camera" / "DSC_2.dng")  # beside DSC_2.jpg: left out
    (col / "drawing.svg").write_text(SVG)

    res = cli("build-index", col, "--index", idx, "--encoders", "tinycolor")
    assert res.exit_code == 0, res.output
    assert "1 SVG file skipped: vector images are not indexed" in res.stdout
    assert "1 camera RAW file skipped" in res.stdout and "DSC_2.dng beside DSC_2.jpg" in res.stdout
    out = json.loads(cli("build-index", col, "--index", idx, "--json").stdout)
    assert out["failed"] == [] and out["scanned"] == 9 and len(out["notes"]) == 2

    for kind, name in (("heic", "iphone/IMG_1.HEIC"), ("avif", "web/pic.avif"), ("dng", "camera/DSC_1.dng")):
        res = cli("query", made[kind], "--index", idx, "-k", "3", "--json")
        assert res.exit_code == 0, res.output
        q = json.loads(res.stdout)
        # the same bytes are indexed: found as the query itself, with the same-picture files as copies
        assert [Path(p).name for p in [q["query_in_collection"][0]["path"]]] == [Path(name).name], kind
        table = cli("query", made[kind], "--index", idx, "-k", "3")
        assert table.exit_code == 0 and f"indexed as {name}" in table.stdout, table.stdout
    # a HEIC query from outside the collection, of a photograph indexed as JPEG, finds it first
    probe = write_heic(others[1], tmp_path / "probe.heic")
    q = json.loads(cli("query", probe, "--index", idx, "-k", "1", "--json").stdout)
    assert Path(q["results"]["tinycolor"][0]["path"]).name == "p1.jpg" and q["query_in_collection"] == []


def test_no_images_lists_what_was_looked_for_and_the_svgs(tmp_path):
    (tmp_path / "col").mkdir()
    (tmp_path / "col" / "logo.svg").write_text(SVG)
    res = cli("build-index", tmp_path / "col", "--index", tmp_path / "idx", "--encoders", "tinycolor")
    assert res.exit_code == 2 and "Traceback" not in res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "no images found" in line
    for ext in ("heic", "heif", "avif", "dng", "nef", "cr2", "jpg", "webp"):
        assert ext in line, ext
    assert "1 SVG file skipped: vector images are not indexed" in line


def _without(monkeypatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError


@pytest.mark.parametrize(("kind", "missing", "says"), [
    ("heic", "pillow_heif", "needs pillow-heif"),
    ("dng", "rawpy", "needs rawpy"),
    ("avif", "pillow_avif", "needs Pillow built with AVIF"),
])
def test_a_missing_decoder_is_named_not_a_traceback(monkeypatch, tmp_path, made, kind, missing, says):
    _without(monkeypatch, missing)
    if kind == "heic":
        monkeypatch.setattr(fmt, "_heif_registered", False)
    if kind == "avif":
        from PIL import features

        monkeypatch.setattr(features, "check_module", lambda name: False if name == "avif" else True)
    d = decode_one(0, str(made[kind]), 128)
    assert not d.ok and says in d.error
    col = tmp_path / "col"
    write_jpeg(photographs(1)[0], col / "ok.jpg")
    shutil.copy(made[kind], col / made[kind].name)
    res = cli("build-index", col, "--index", tmp_path / "idx", "--encoders", "tinycolor")
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert f"failed: {col / made[kind].name}: {says}" in res.stderr
    q = cli("query", made[kind], "--index", tmp_path / "idx")
    assert q.exit_code == 2 and says in q.stderr and len(q.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_every_format_turns_a_rotated_photograph_upright_once(tmp_path, orientation):
    """EXIF orientation (JPEG, HEIC, AVIF) and a RAW's own orientation (preview or not) agree."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()  # for saving HEIC through Pillow
    src = photographs(1)[0]
    img = photo_image(src, 320)
    exif = Image.Exif()
    exif[0x0112] = orientation
    files = {}
    for ext, fmt_name in (("jpg", "JPEG"), ("heic", "HEIF"), ("avif", "AVIF")):
        files[ext] = tmp_path / f"r.{ext}"
        img.save(files[ext], format=fmt_name, exif=exif.tobytes(), quality=90)
    files["dng"] = write_dng(src, tmp_path / "r.dng", side=320, orientation=orientation)
    files["dng_bare"] = write_dng(src, tmp_path / "bare.dng", side=320, preview=False, orientation=orientation)
    decoded = {k: decode_one(0, str(p), None) for k, p in files.items()}
    ref = np.asarray(decoded["jpg"].image.resize((64, 64)), dtype=np.float32)
    assert decoded["jpg"].image.size == ((img.height, img.width) if orientation != 3 else img.size)
    for kind, d in decoded.items():
        assert d.ok, (kind, d.error)
        got = np.asarray(d.image.resize((64, 64)), dtype=np.float32)
        assert np.abs(got - ref).mean() < 25, (kind, orientation)
        wrong = np.asarray(d.image.transpose(Image.Transpose.ROTATE_180).resize((64, 64)), dtype=np.float32)
        assert np.abs(wrong - ref).mean() > np.abs(got - ref).mean() + 5, (kind, "not told from upside down")


def test_a_raw_uploaded_on_the_page_decodes_by_its_file_name(made):
    """The page sends the file's name with its bytes; a camera RAW without a preview Pillow could
    read is told by its extension, as a file in a collection is."""
    import threading
    from types import SimpleNamespace

    from relsearch.view.server import Refused, ViewApp

    server = SimpleNamespace(decode_slots=threading.Semaphore(1))
    data = made["dng_bare"].read_bytes()
    img = ViewApp.decode_upload(server, data, name="IMG_0001.DNG")
    assert _close_to(img, made["bare_src"]) < 20  # demosaicked, as decode_one does for the file
    for name in ("upload", "../../camera.exe"):  # a name that says nothing (or lies): refused, not guessed
        with pytest.raises(Refused):
            ViewApp.decode_upload(server, data, name=name)
    photo = ViewApp.decode_upload(server, made["dng"].read_bytes(), name="upload")
    assert _close_to(photo, made["dng_src"]) < 12  # its JPEG preview is found without a name
