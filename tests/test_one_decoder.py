"""Training decodes images exactly as indexing and querying do (EXIF rotation, alpha on white)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from relsearch.collection import load_image as index_decode
from relsearch.errors import RelsearchError
from relsearch.train.data import load_image as train_decode


def test_transparent_pixels_are_white_for_training_too(tmp_path) -> None:
    img = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    img.paste((200, 0, 0, 255), (0, 0, 10, 10))
    img.save(tmp_path / "a.png")
    got = np.asarray(train_decode(str(tmp_path / "a.png")))
    assert got.shape == (10, 20, 3)
    assert tuple(got[5, 15]) == (255, 255, 255) and tuple(got[5, 2]) == (200, 0, 0)
    np.testing.assert_array_equal(got, np.asarray(index_decode(tmp_path / "a.png")))


def test_exif_rotation_is_applied_for_training_too(tmp_path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 255, 0), (0, 0, 10, 20))  # a yellow band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    got = train_decode(str(tmp_path / "r.jpg"))
    assert got.size == (20, 40)  # upright: portrait
    np.testing.assert_array_equal(np.asarray(got), np.asarray(index_decode(tmp_path / "r.jpg")))


def test_unreadable_training_image_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(RelsearchError, match="cannot read image .*bad.jpg"):
        train_decode(str(tmp_path / "bad.jpg"))
