"""Property tests (hypothesis): the store and the scan with arbitrary file names
(undecodable bytes included), and random add/remove/modify sequences with crashes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import TinyColorEncoder
from fault_harness import answers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from relsearch import faults
from relsearch.build import FAULT_POINTS, BuildOptions, build_index
from relsearch.collection import scan
from relsearch.errors import RelsearchError
from relsearch.store import PathEntry, Record, Store
from relsearch.verify import verify_index

# File-name bytes: anything but NUL and '/', often not UTF-8. Hidden (dot) names and
# the extension are fixed by the strategy so every name is an image the scan keeps.
name_bytes = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\0", b"_").replace(b"/", b"_"))
image_names = name_bytes.map(lambda b: b"f" + b + b".png")


@settings(max_examples=60, deadline=None)
@given(st.lists(image_names, min_size=1, max_size=8, unique=True))
def test_store_paths_round_trip_any_bytes(names):
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "s", create=True)
        paths = [os.fsdecode(b"/col/" + n) for n in names]

        def fill(txn):
            for i, p in enumerate(paths):
                store.put_record(txn, Record(i, f"{i:064x}", [p], 1, 1, 1, 0.0))
                store.put_path(txn, p, PathEntry(i, 1, i))
                store.put_vector(txn, "enc", i, np.full(3, i, dtype=np.float32))

        store.write(fill)
        got = store.all_paths()
        assert set(got) == set(paths) and all(got[p].id == i for i, p in enumerate(paths))
        assert {os.fsencode(p) for p in got} == {b"/col/" + n for n in names}
        recs = store.get_records(range(len(paths)))
        assert [recs[i].paths for i in range(len(paths))] == [[p] for p in paths]
        store.write(lambda txn: store.delete_path(txn, paths[0]))
        assert paths[0] not in store.all_paths()
        store.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(image_names, min_size=1, max_size=8, unique=True))
def test_scan_finds_every_name(names):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp)
        for n in names:
            with open(root + b"/" + n, "wb") as f:
                f.write(b"x")
        found = scan(tmp)
        assert sorted(os.fsencode(f.path) for f in found.files) == sorted(root + b"/" + n for n in names)


# ---- build sequences ------------------------------------------------------------------
colors = st.tuples(*[st.integers(0, 255)] * 3)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5), colors),
        st.tuples(st.just("modify"), st.integers(0, 5), colors),
        st.tuples(st.just("remove"), st.integers(0, 5), st.none()),
        st.tuples(st.just("crash"), st.sampled_from([p for p in FAULT_POINTS if p != "locked"]), st.none()),
    ),
    min_size=1, max_size=6,
)
NAME_POOL = [b"a.png", b"bad_\xff\xfe.png", b"caf\xc3\xa9.png", b"sub/\x80x.png", b"dup.png", b"z z.png"]


def _expected(root: Path) -> dict[str, bytes]:
    enc = TinyColorEncoder()
    out = {}
    for f in scan(root).files:
        with Image.open(f.path) as im:
            out[os.path.relpath(f.path, root)] = enc.embed([im])[0].astype(np.float32).tobytes()
    return out


AFTER_SWITCH = ("switched", "exported", "cleaned")


def _columns(root: Path, idx: Path) -> dict[str, bytes]:
    return {p: v for p, (_, v) in answers(root, idx)["tinycolor"].items()}


def _crash_at(point: str, root: Path, idx: Path, opts: BuildOptions, step: int) -> None:
    """A build with work to do at every point dies (disk full) at ``point``: it raised there,
    and the index answers the previous state in full (before the switch) or the new one."""
    Image.new("RGB", (8, 8), (step * 40 % 256, 9, 200)).save(root / f"crash{step}.png")
    before = answers(root, idx)
    os.environ["RELSEARCH_FAULT"] = f"{point}:enospc"
    try:
        with pytest.raises(RelsearchError, match="No space left"):
            build_index(root, idx, opts)
    finally:
        del os.environ["RELSEARCH_FAULT"]
    assert faults.fired() == point
    if point in AFTER_SWITCH:
        assert _columns(root, idx) == _expected(root)
    else:
        assert answers(root, idx) == before


def test_a_crash_step_fires_at_its_point_every_time(tmp_path):
    """The fault state is per build: the same point fires in a second build of one process."""
    root, idx = tmp_path / "col", tmp_path / "idx"
    root.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "seed.png")
    opts = BuildOptions(encoders="tinycolor", progress=False, workers=1, batch_size=2, commit_every=1)
    build_index(root, idx, opts)
    for step, point in enumerate([p for p in FAULT_POINTS if p != "locked"] * 2):
        _crash_at(point, root, idx, opts, step)
    build_index(root, idx, opts)
    assert _columns(root, idx) == _expected(root) and verify_index(idx).consistent


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.lists(image_names, min_size=1, max_size=3, unique=True))
def test_random_sequences_with_crashes_end_equal_to_the_collection(sequence, extra):
    with tempfile.TemporaryDirectory() as tmp:
        root, idx = Path(tmp) / "col", Path(tmp) / "idx"
        base = os.fsencode(root)
        os.makedirs(base + b"/sub")
        for i, n in enumerate(extra):  # a first build over random names
            Image.new("RGB", (8, 8), (i * 60, 5, 5)).save(os.fsdecode(base + b"/" + n))
        Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "seed.png")
        opts = BuildOptions(encoders="tinycolor", progress=False, workers=1, batch_size=2, commit_every=1)
        build_index(root, idx, opts)
        for step, (op, arg, color) in enumerate(sequence):
            name = os.fsdecode(base + b"/" + NAME_POOL[arg]) if op != "crash" else ""
            if op in ("add", "modify"):
                Image.new("RGB", (8, 8), color).save(name)
                os.utime(name, ns=(1, 10**18 + step * 10**9))  # a new mtime for every write
            elif op == "remove":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
            if op == "crash":
                _crash_at(arg, root, idx, opts, step)
                continue
            build_index(root, idx, opts)
            got = answers(root, idx)["tinycolor"]
            assert {p: v for p, (_, v) in got.items()} == _expected(root)
        build_index(root, idx, opts)
        got = answers(root, idx)["tinycolor"]
        assert {p: v for p, (_, v) in got.items()} == _expected(root)
        assert verify_index(idx).consistent
