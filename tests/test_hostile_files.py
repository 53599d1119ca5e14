"""Hostile files: swapped pictures, stored vectors of the wrong picture, garbage refine
stores, FIFOs and devices where files belong, and pathological ignore patterns.

Every case asserts the exit code, one line on stderr without a traceback, that nothing
hangs (each CLI run has a deadline; FIFOs are opened for writing to free a stuck reader),
and that the index still answers afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from engine_helpers import TinyColorEncoder, image_query, make_collection, run_cli
from PIL import Image

from relsearch import build as build_mod
from relsearch.build import BuildOptions, build_index
from relsearch.collection import decode_one, load_image, scan
from relsearch.collection.exclude import read_ignore_file
from relsearch.collection.wildmatch import BadPattern, compile_line
from relsearch.errors import RelsearchError
from relsearch.indexdir import STORE_DIR
from relsearch.safe_io import NotRegularFile, read_regular
from relsearch.store import Store
from relsearch.verify import verify_index

ENC = "tinycolor"


def _build(root: Path, idx: Path, **kw):
    return build_index(root, idx, BuildOptions(**{"encoders": ENC, "progress": False, "workers": 1, **kw}))


def _release(fifos: list[Path]) -> None:
    """Open each FIFO for writing once, so a reader blocked on it returns."""
    for f in fifos:
        try:
            os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def _in_time(fn, timeout: float = 60.0, fifos: list[Path] = ()):
    """``fn()``, failing the test (not hanging it) when it takes longer than ``timeout``."""
    box: dict[str, object] = {}

    def go() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        _release(list(fifos))
        t.join(10)
        pytest.fail(f"still running after {timeout} s (hung)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def cli(*args: object, timeout: float = 60.0, fifos: list[Path] = ()):
    """``relsearch ARGS`` through the console entry point (usage errors are one line there)."""

    def go() -> SimpleNamespace:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli(*map(str, args))  # any exception but SystemExit fails the test
        return SimpleNamespace(exit_code=code, output=out.getvalue(), stderr=err.getvalue())

    res = _in_time(go, timeout, fifos)
    assert "Traceback" not in res.output + res.stderr
    return res


def one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def answers(idx: Path, image: Path) -> None:
    """The index answers a query with the image itself first, at a sane score."""
    hits = image_query(image, idx, k=3).results[ENC]
    assert hits and hits[0].path == str(image)
    assert all(-1.001 <= h.score <= 1.001 for h in hits), [h.score for h in hits]


def _vector(path: Path) -> np.ndarray:
    return TinyColorEncoder().embed([load_image(path, max_side=512)])[0]


def _picture(path: Path, rgb: tuple[int, int, int]) -> Path:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:16] = rgb
    arr[16:] = [255 - c for c in rgb]
    Image.fromarray(arr).save(path)
    return path


# A. the vector comes from the bytes that were hashed ----------------------------------------
def test_decode_hashes_the_bytes_it_decodes(tmp_path) -> None:
    p = _picture(tmp_path / "a.png", (10, 200, 30))
    d = decode_one(0, str(p), 512)
    assert d.ok and d.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_picture_saved_over_between_hash_and_decode_never_pairs_hash_and_vector(tmp_path, monkeypatch) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    target = root / "img_001.png"
    old = target.read_bytes()
    other = _picture(tmp_path / "other.png", (250, 10, 10)).read_bytes()
    real_hash = build_mod.sha256_file

    def hash_then_swap(path):  # the user saves over the file right after the build hashed it
        digest = real_hash(path)
        if Path(path) == target:
            target.write_bytes(other)
        return digest

    monkeypatch.setattr(build_mod, "sha256_file", hash_then_swap)
    rep = _build(root, idx)
    assert [f["path"] for f in rep.failed] == [str(target)] and "changed" in rep.failed[0]["error"]
    old_sha = hashlib.sha256(old).hexdigest()
    with Store.open(idx / STORE_DIR, readonly=True) as store:
        for rec in store.iter_records():
            assert rec.sha256 != old_sha  # nothing stored under the hash of bytes no one embedded
            p = Path(rec.paths[0])
            assert hashlib.sha256(p.read_bytes()).hexdigest() == rec.sha256
            stored = store.get_vectors(ENC, np.array([rec.id]), TinyColorEncoder.dim)[0]
            np.testing.assert_allclose(stored, _vector(p), atol=1e-5)
    monkeypatch.setattr(build_mod, "sha256_file", real_hash)

    # the next build indexes the new content, and a copy of the old picture gets its own vector
    copy = root / "copy_of_old.png"
    copy.write_bytes(old)
    rep = _build(root, idx)
    assert rep.failed == [] and verify_index(idx).consistent
    with Store.open(idx / STORE_DIR, readonly=True) as store:
        for p in (target, copy):
            rid = store.get_path(str(p)).id
            stored = store.get_vectors(ENC, np.array([rid]), TinyColorEncoder.dim)[0]
            np.testing.assert_allclose(stored, _vector(p), atol=1e-5)
    answers(idx, copy)
    answers(idx, target)


# B. verify --deep -------------------------------------------------------------------------
def _swap_two_vectors(idx: Path) -> tuple[int, int]:
    """Store each of two records' vectors under the other's id, with valid checksums."""
    with Store.open(idx / STORE_DIR) as store:
        a, b = sorted(store.record_ids())[:2]
        va, vb = store.get_vectors(ENC, np.array([a, b]), TinyColorEncoder.dim)

        def swap(txn) -> None:
            store.put_vector(txn, ENC, a, vb)
            store.put_vector(txn, ENC, b, va)

        store.write(swap)
    return a, b


def test_verify_deep_flags_and_repairs_a_wrong_vector_with_a_valid_checksum(tmp_path) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 6)
    _build(root, idx)
    a, b = _swap_two_vectors(idx)
    plain = cli("verify", "--index", idx)
    assert plain.exit_code == 0 and "consistent" in plain.output  # the checksums cannot see it

    res = cli("verify", "--deep", "--index", idx)
    assert res.exit_code == 1, res.output
    problems = [ln for ln in res.stderr.splitlines() if "problem:" in ln]
    assert len(problems) == 2 and all("stored vector differs" in ln for ln in problems)
    assert any(f"record {a} " in ln for ln in problems) and any(f"record {b} " in ln for ln in problems)
    assert "6 of 6 images" in res.output  # a small index is checked whole

    sampled = cli("verify", "--deep", "--sample", "2", "--index", idx, "--json")
    deep = json.loads(sampled.output)["deep"]
    assert (deep["sampled"], deep["checked"], deep["of"]) == (2, 2, 6)
    assert sampled.exit_code == (1 if deep["problems"] else 0)  # the sample may miss both

    fixed = cli("verify", "--deep", "--repair", "--index", idx)
    assert fixed.exit_code == 0, fixed.output + fixed.stderr
    assert "2 stored vector(s) replaced" in fixed.output
    again = cli("verify", "--deep", "--index", idx)
    assert again.exit_code == 0 and again.stderr == "", again.stderr
    for p in sorted(root.rglob("*.png"))[:3]:
        answers(idx, p)


def test_verify_deep_bad_options_are_one_line(tmp_path) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    _build(root, idx)
    one_line_error(cli("verify", "--deep", "--min-cosine", "1.5", "--index", idx), "--min-cosine")
    one_line_error(cli("verify", "--deep", "--index", tmp_path / "nothing"))


# C. refine store overwritten with garbage --------------------------------------------------
@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """An IVF-PQ index that re-ranks from a refine store, and a pristine copy of it."""
    base = tmp_path_factory.mktemp("refined")
    root, idx = base / "col", base / "idx"
    make_collection(root, 300, size=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELSEARCH_HOME", str(base / "home"))
        _build(root, idx, index_spec="IVF4,PQ8")
    return root, idx


def _fresh_copy(refined, tmp_path: Path) -> tuple[Path, Path]:
    root, idx = refined
    copy = tmp_path / "idx"
    shutil.copytree(idx, copy)
    return root, copy


@pytest.mark.parametrize("keep", ["header and ids", "header", "nothing"])
def test_garbage_refine_store_fails_the_query_in_one_line(refined, tmp_path, keep) -> None:
    root, idx = _fresh_copy(refined, tmp_path)
    vecs = next((idx / "faiss").glob("*.vecs"))
    data = bytearray(vecs.read_bytes())
    n = int.from_bytes(data[8:16], "little")
    start = {"header and ids": 24 + 8 * n, "header": 24, "nothing": 0}[keep]
    rng = np.random.default_rng(7)
    data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()  # same size
    vecs.write_bytes(bytes(data))
    image = sorted(root.rglob("*.png"))[5]

    line = one_line_error(cli("query", image, "--index", idx, "-k", "5"), "refine store", "verify --repair")
    assert "e+3" not in line
    with pytest.raises(RelsearchError, match="verify --repair"):
        image_query(image, idx, k=5)
    assert not verify_index(idx).consistent
    fixed = cli("verify", "--repair", "--index", idx)
    assert fixed.exit_code == 0, fixed.stderr
    answers(idx, image)


# D. FIFOs, devices and unbounded reads -----------------------------------------------------
def _fifo_in_place_of(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("what", ["faiss", "vecs", "manifest"])
def test_fifo_in_the_index_folder_hangs_nothing(refined, tmp_path, what) -> None:
    root, idx = _fresh_copy(refined, tmp_path)
    victim = {"faiss": lambda: next((idx / "faiss").glob("*.faiss")),
              "vecs": lambda: next((idx / "faiss").glob("*.vecs")),
              "manifest": lambda: idx / "manifest.json"}[what]()
    fifos = [_fifo_in_place_of(victim)]
    image = sorted(root.rglob("*.png"))[3]

    res = cli("verify", "--index", idx, fifos=fifos)
    assert res.exit_code == 1 and "problem:" in res.stderr
    if what != "manifest":  # queries read the manifest from the store
        one_line_error(cli("query", image, "--index", idx, "-k", "3", fifos=fifos), "not a regular file")
    fixed = cli("verify", "--repair", "--index", idx, fifos=fifos)
    assert fixed.exit_code == 0, fixed.stderr
    assert cli("verify", "--index", idx).exit_code == 0
    answers(idx, image)


def test_fifo_in_place_of_the_lmdb_store_is_one_line(tmp_path) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    _build(root, idx)
    data = idx / STORE_DIR / "data.mdb"
    kept = tmp_path / "data.mdb.kept"
    os.replace(data, kept)
    os.mkfifo(data)
    image = sorted(root.rglob("*.png"))[0]
    one_line_error(cli("query", image, "--index", idx, "-k", "3", fifos=[data]), "not a regular file")
    one_line_error(cli("verify", "--index", idx, fifos=[data]), "data.mdb")
    os.unlink(data)
    os.replace(kept, data)
    answers(idx, image)


def test_fifo_in_place_of_the_stored_exclusions_is_one_line(tmp_path) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    _build(root, idx)
    fifos = [_fifo_in_place_of(idx / "exclusions.json")]
    one_line_error(cli("build-index", root, "--index", idx, "--encoders", ENC, fifos=fifos), "exclusions.json",
                   "not a regular file")
    res = cli("verify", "--repair", "--index", idx, fifos=fifos)
    assert res.exit_code == 0, res.stderr
    assert cli("build-index", root, "--index", idx, "--encoders", ENC).exit_code == 0
    answers(idx, sorted(root.rglob("*.png"))[0])


def test_fifo_faiss_file_is_rebuilt_by_build_index(refined, tmp_path) -> None:
    root, idx = _fresh_copy(refined, tmp_path)
    fifos = [_fifo_in_place_of(next((idx / "faiss").glob("*.faiss")))]
    res = cli("build-index", root, "--index", idx, "--encoders", ENC, fifos=fifos, timeout=120)
    assert res.exit_code == 0, res.stderr
    assert verify_index(idx).consistent
    answers(idx, sorted(root.rglob("*.png"))[0])


def test_fifo_or_device_as_ignore_file_is_skipped_with_a_report(tmp_path) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    fifo = root / ".relsearchignore"
    os.mkfifo(fifo)
    (root / "sub" / ".relsearchignore").symlink_to("/dev/zero")
    res = cli("build-index", root, "--index", idx, "--encoders", ENC, fifos=[fifo], timeout=60)
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    found = _in_time(lambda: scan(root), 30, [fifo])
    reasons = dict(found.skipped)
    assert "FIFO" in reasons[str(fifo)] and "character device" in reasons[str(root / "sub" / ".relsearchignore")]
    assert len(found.files) == 4
    answers(idx, sorted(root.rglob("*.png"))[0])


def test_file_swapped_for_a_fifo_after_the_scan_is_reported_and_the_lock_released(tmp_path, monkeypatch) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 5)
    _build(root, idx)
    victim = root / "img_002.png"
    keep = victim.read_bytes()
    victim.write_bytes(_picture(tmp_path / "new.png", (1, 2, 3)).read_bytes())  # changed: to be hashed
    real_scan = build_mod.scan_roots
    fifos: list[Path] = []

    def scan_then_swap(*args, **kw):
        found = real_scan(*args, **kw)
        if victim.is_file() and not fifos:
            fifos.append(_fifo_in_place_of(victim))
        return found

    monkeypatch.setattr(build_mod, "scan_roots", scan_then_swap)
    rep = _in_time(lambda: _build(root, idx), 60, fifos)
    assert any(f["path"] == str(victim) and "not a regular file" in f["error"] for f in rep.failed), rep.failed
    monkeypatch.setattr(build_mod, "scan_roots", real_scan)
    victim.unlink()
    victim.write_bytes(keep)
    assert _build(root, idx).failed == []  # the lock was released, the file is indexed again
    answers(idx, victim)


def test_fifo_image_is_a_decode_error_not_a_hang(tmp_path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    d = _in_time(lambda: decode_one(0, str(fifo), 64), 20, [fifo])
    assert not d.ok and "FIFO" in d.error
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 2)
    _build(root, idx)
    one_line_error(cli("query", fifo, "--index", idx, fifos=[fifo]), "not a regular file")
    answers(idx, sorted(root.rglob("*.png"))[0])
    with pytest.raises(NotRegularFile):
        _in_time(lambda: read_regular(fifo), 20, [fifo])
    with pytest.raises(NotRegularFile):
        read_regular("/dev/zero")


# E. ignore patterns -------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["**********x", "*a*a*a*a*a*a*a*a*a*a*b", "**/**/**/**/**/**/**/**/x"])
def test_pathological_ignore_pattern_costs_a_glance(tmp_path, pattern) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    deep = root.joinpath(*["a" * 20] * 8)
    deep.mkdir(parents=True)
    _picture(deep / ("a" * 200 + ".png"), (9, 99, 199))
    (root / ".relsearchignore").write_text(pattern + "\n")
    t = time.perf_counter()
    res = cli("build-index", root, "--index", idx, "--encoders", ENC, timeout=60)
    assert res.exit_code == 0, res.stderr
    assert time.perf_counter() - t < 30
    answers(idx, deep / ("a" * 200 + ".png"))


def test_bad_ignore_lines_are_skipped_with_one_warning_each(tmp_path, caplog) -> None:
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    _picture(root / "skip1.png", (5, 5, 5))
    lines = ["\\", "abc\\", "!", "[z-a]", "[abc", "skip*.png"]
    (root / ".relsearchignore").write_text("\n".join(lines) + "\n")
    ignore = read_ignore_file(str(root))
    assert [b.split(": ")[0].rsplit(":", 1)[1] for b in ignore.bad_lines] == ["1", "2", "3", "5"]
    assert all(b.startswith(str(root / ".relsearchignore") + ":") for b in ignore.bad_lines)

    res = cli("build-index", root, "--index", idx, "--encoders", ENC)
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ".relsearchignore:" in ln]
    assert len(warnings) == 4 and all("left out" in w for w in warnings), res.stderr
    assert ".relsearchignore:4" not in res.stderr  # [z-a] is a valid pattern that matches nothing, as in git
    with Store.open(idx / STORE_DIR, readonly=True) as store:
        assert store.get_path(str(root / "skip1.png")) is None  # the good line still applies
        assert len(store.all_paths()) == 4
    answers(idx, sorted(root.rglob("img_*.png"))[0])


def test_oversized_ignore_file_is_refused_unread(tmp_path) -> None:
    root = tmp_path / "col"
    make_collection(root, 2)
    with open(root / ".relsearchignore", "wb") as f:
        f.truncate(64 << 20)  # sparse: a bound, not the disk, refuses it
    found = _in_time(lambda: scan(root), 30)
    assert "larger than" in dict(found.skipped)[str(root / ".relsearchignore")]
    assert len(found.files) == 2


GIT_CASES = [
    ("*.png", "a/b/x.png"), ("exports/", "a/exports/"), ("exports/", "a/exports"), ("/raw/", "raw/"),
    ("/raw/", "x/raw/"), ("a/**", "a/"), ("a/**", "a/b/c"), ("a/**/b", "a/b"), ("a/**/b", "a/x/y/b"),
    ("**/foo", "x/y/foo"), ("**/foo", "foo"), ("[a-c]x", "bx"), ("[z-a]x", "bx"), ("[!a]x", "bx"),
    ("\\*x", "*x"), ("\\*x", "ax"), ("a?c", "abc"), ("***x", "ax"), ("x***", "xyz/"), ("a/***/b", "a/q/r/b"),
    ("[[:digit:]]*.png", "1a.png"), ("foo\\ ", "foo "), ("d/*.png", "d/e/x.png"), ("*", ".hidden"),
    ("[]]x", "]x"), ("[\\]]x", "]x"), ("[a-]x", "-x"),
]


@pytest.mark.parametrize("pattern,path", GIT_CASES)
def test_ignore_matching_agrees_with_git(tmp_path, pattern, path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(pattern + "\n")
    is_dir = path.endswith("/")
    rel = path.rstrip("/")
    made = tmp_path / rel  # real files and folders, so git knows which is which
    made.parent.mkdir(parents=True, exist_ok=True)
    made.mkdir() if is_dir else made.write_bytes(b"")
    git = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", "--no-index", "--", rel],
                         capture_output=True)
    assert git.returncode in (0, 1), git.stderr
    rule = compile_line(pattern)
    ours = rule is not None and rule.matches(rel.split("/"), is_dir) and not rule.negate
    assert ours == (git.returncode == 0), (pattern, path)


def test_bad_patterns_raise_bad_pattern() -> None:
    for line in ["\\", "abc\\", "!", "[abc", "[[:nope:]]"]:
        with pytest.raises(BadPattern):
            compile_line(line)
    assert compile_line("# comment") is None and compile_line("   ") is None
