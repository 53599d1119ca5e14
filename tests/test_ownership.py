"""No process-wide model caches: a Searcher or a build owns the models it loads."""

from __future__ import annotations

import gc
import weakref

from engine_helpers import TinyColorEncoder, make_collection
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.encoders import get_encoder
from relsearch.query import Searcher


def test_get_encoder_loads_a_new_instance_each_time() -> None:
    a, b = get_encoder("tinycolor"), get_encoder("tinycolor")
    assert a is not b and a.fingerprint == b.fingerprint


def test_searcher_close_releases_its_models(tmp_path) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 6)
    built = TinyColorEncoder.instances
    build_index(root, idx, BuildOptions(encoders="tinycolor", workers=1, progress=False))
    assert TinyColorEncoder.instances == built + 1
    s = Searcher(idx)
    enc = s.encoder("tinycolor")
    assert s.encoder("tinycolor") is enc  # kept while the searcher lives
    s.search_vectors("tinycolor", enc.embed([Image.open(paths[0])]), 1)
    ref = weakref.ref(enc)
    del enc
    s.close()
    gc.collect()
    assert ref() is None, "a closed Searcher's model is still referenced somewhere"


def test_build_uses_a_preloaded_encoder_instead_of_loading_one(tmp_path) -> None:
    root = tmp_path / "col"
    make_collection(root, 4)
    mine = get_encoder("tinycolor")
    before = TinyColorEncoder.instances
    build_index(root, tmp_path / "idx", BuildOptions(encoders="tinycolor", workers=1, progress=False,
                                                     preloaded={"tinycolor": mine}))
    assert TinyColorEncoder.instances == before and mine.calls == 4
