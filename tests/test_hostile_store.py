"""Hostile pass on the index directory: a damaged store, a refused command, files of the
wrong type, interrupted builds. Each case: the exit code, one line on stderr naming the
fix, no traceback, and the command that line names works (the index answers again).

Damage to LMDB pages runs the CLI in a child process: a crash by signal (SIGBUS, SIGSEGV)
must fail the test, not take pytest with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import image_query, make_collection
from fault_harness import REPO, TESTS, run_child
from typer.testing import CliRunner

from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.indexdir import MANIFEST, manifest_bytes, read_manifest, read_manifest_file
from relsearch.store import Store
from relsearch.verify import verify_index

runner = CliRunner()
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "HF_HUB_OFFLINE": "1",
       "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
_MAIN = ("import sys\nfrom relsearch import encoders as e\n"
         "e.REGISTRY.setdefault('tinycolor', 'engine_helpers:load_tinycolor')\n"
         "e.REGISTRY.setdefault('tinyflip', 'engine_helpers:load_tinyflip')\n"
         "from relsearch.cli import main\nmain(sys.argv[1:])")


def _cli(*args: object, fault: str | None = None) -> subprocess.CompletedProcess:
    """``relsearch ARGS`` in a child process (killed at the fault point ``fault``, if given)."""
    env = {**ENV, "RELSEARCH_FAULT": fault} if fault else {k: v for k, v in ENV.items() if k != "RELSEARCH_FAULT"}
    return subprocess.run([sys.executable, "-c", _MAIN, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def _invoke(*args: object):
    """``relsearch ARGS`` in this process (for damage that cannot crash it)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_line(res, code: int, *words: str) -> str:
    """Assert exit ``code``, one line on stderr holding ``words``, no traceback; return the line."""
    rc = res.returncode if isinstance(res, subprocess.CompletedProcess) else res.exit_code
    err = res.stderr
    assert rc == code, (rc, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _build(root: Path, idx: Path, **kw):
    return build_index(root, idx, BuildOptions(**{"encoders": "tinycolor", "progress": False, "workers": 1, **kw}))


def _answers(root: Path, idx: Path, name: str = "img_001.png") -> None:
    """The index answers a query by an image of the collection with that image first."""
    hit = image_query(str(next(root.rglob(name))), idx, k=1).results["tinycolor"][0]
    assert Path(hit.path).name == name and hit.score > 0.99


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """Ten small PNGs and their index (tinycolor)."""
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 10)
    _build(root, idx)
    return root, idx


def _damage(data: Path, at: int, payload: bytes) -> None:
    with open(data, "r+b") as f:
        f.seek(at)
        f.write(payload)


# A. ------------------------------------------------------------------------------------
def test_garbage_in_the_store_is_one_line_and_repair_rebuilds_it(built):
    root, idx = built
    data = idx / "meta.lmdb" / "data.mdb"
    size = data.stat().st_size
    _damage(data, size // 2 - 8192, np.random.default_rng(0).bytes(16384))
    for args in (["verify", "--index", idx], ["build-index", root, "--index", idx],
                 ["dupes", "--index", idx], ["query", root / "img_001.png", "--index", idx]):
        _one_line(_cli(*args), 2, "damaged", f"relsearch verify --repair --index {idx}")
    res = _cli("verify", "--repair", "--index", idx)  # the command every one of them named
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert "rebuilt it from the collection" in res.stdout and "consistent" in res.stdout
    _answers(root, idx)
    assert verify_index(idx).consistent and not (idx / "meta.lmdb.damaged").exists()
    assert _build(root, idx).unchanged == 10


def test_a_repair_killed_while_it_rebuilds_is_finished_by_the_next_one(built):
    root, idx = built
    os.truncate(idx / "meta.lmdb" / "data.mdb", 3 * 4096)
    res = _cli("verify", "--repair", "--index", idx, fault="chunk")  # killed in the rebuild's first commit
    assert res.returncode == -9 and (idx / "meta.lmdb.damaged").is_dir(), res.stderr[-2000:]
    _one_line(_cli("verify", "--index", idx), 2, "repair was interrupted", "verify --repair")
    res = _cli("verify", "--repair", "--index", idx)
    assert res.returncode == 0 and "rebuilt it from the collection" in res.stdout, res.stdout + res.stderr
    _answers(root, idx)
    assert not (idx / "meta.lmdb.damaged").exists()


def test_eight_bytes_on_every_page_is_repaired(built):
    root, idx = built
    data = idx / "meta.lmdb" / "data.mdb"
    for page in range(0, data.stat().st_size, 4096):
        _damage(data, page + 2000, b"\xde\xad\xbe\xef\x01\x02\x03\x04")
    res = _cli("verify", "--index", idx)  # which check trips first depends on the page layout
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr and "verify --repair" in res.stderr
    res = _cli("verify", "--repair", "--index", idx)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert "could be embedded" not in res.stdout + res.stderr
    _answers(root, idx)


def test_every_raw_vector_failing_its_checksum_is_embedded_again(built):
    # dropping them all left nothing to rebuild FAISS from ("no image could be embedded")
    root, idx = built
    with Store.open(idx / "meta.lmdb") as store:
        ids = sorted(store.vector_ids("tinycolor"))
        store.write(lambda txn: [txn.put(i.to_bytes(8, "big"), b"\0" * 196, db=store._db("vec:tinycolor"))
                                 for i in ids])
    assert not verify_index(idx).consistent
    res = _invoke("verify", "--repair", "--index", idx)
    assert res.exit_code == 0 and "could be embedded" not in res.output, res.output
    assert "rebuilt it from the collection" in res.stdout
    _answers(root, idx)
    assert verify_index(idx).consistent


def test_repair_salvages_what_the_damaged_store_still_holds(built):
    root, idx = built
    with Store.open(idx / "meta.lmdb") as store:  # the committed manifest unreadable, one vector bad
        store.write(lambda txn: store.put_meta(txn, "manifest", {"oops": 1}))
        store.write(lambda txn: txn.put((3).to_bytes(8, "big"), b"\1" * 196, db=store._db("vec:tinycolor")))
    _one_line(_invoke("query", root / "img_001.png", "--index", idx), 2, "damaged", "verify --repair")
    res = _invoke("verify", "--repair", "--index", idx)
    assert res.exit_code == 0, res.output
    assert "9 record(s) salvaged with their raw vectors, 1 image(s) embedded again" in res.stdout, res.stdout
    _answers(root, idx)
    assert verify_index(idx).consistent and _build(root, idx).unchanged == 10


_SHRINK = textwrap.dedent("""
    import os, sys
    from relsearch import encoders as e
    e.REGISTRY.setdefault('tinycolor', 'engine_helpers:load_tinycolor')
    from relsearch.errors import RelsearchError
    from relsearch.composed import QueryTerm, search_composed
    from relsearch.query import Searcher
    root, idx = sys.argv[1], sys.argv[2]
    with Searcher(idx) as s:
        search_composed(s, [QueryTerm(root + '/img_001.png')], k=1)
        os.truncate(idx + '/meta.lmdb/data.mdb', 2 * 4096)
        try:
            search_composed(s, [QueryTerm(root + '/img_002.png')], k=1)
            s.opened.store.get_records(range(10))
        except RelsearchError as exc:
            print('error:', exc)
        else:
            print('answered')
""")


def test_a_store_truncated_under_a_running_searcher_is_an_error_not_sigbus(built):
    root, idx = built
    res = subprocess.run([sys.executable, "-c", _SHRINK, str(root), str(idx)], env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])  # SIGBUS would be -7
    assert res.stdout.startswith("error:") and "shrank" in res.stdout and "verify --repair" in res.stdout
    res = _cli("verify", "--repair", "--index", idx)
    assert res.returncode == 0, res.stdout + res.stderr
    _answers(root, idx)


# B. ------------------------------------------------------------------------------------
def test_a_refused_build_changes_no_file_of_the_index(built):
    root, idx = built
    before = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    _one_line(_invoke("build-index", root, "--index", idx, "--exclude-dir", "sub", "--index-spec", "NOTASPEC"),
              2, "NOTASPEC")
    after = {p: p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file() and p.name != "lock.mdb"}
    assert after == before
    rep = _build(root, idx, encoders=None)  # the next plain build: nothing removed
    assert (rep.removed, rep.unchanged) == (0, 10)


# C. ------------------------------------------------------------------------------------
def test_a_corrupt_exclusions_file_is_reported_and_restored_from_the_store(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 10)
    assert _build(root, idx, exclude_dirs=("sub",)).scanned == 6
    (idx / "exclusions.json").write_text("{not json")
    _one_line(_invoke("build-index", root, "--index", idx), 2, "exclusions.json", "verify --repair")
    res = _invoke("verify", "--index", idx)
    assert res.exit_code == 1 and "exclusions.json" in res.stderr, res.output
    res = _invoke("verify", "--repair", "--index", idx)
    assert res.exit_code == 0 and "exclusions.json rewritten" in res.stdout, res.output
    assert json.loads((idx / "exclusions.json").read_text())["dirs"] == ["sub"]
    rep = _build(root, idx, encoders=None)
    assert (rep.added, rep.removed, rep.unchanged) == (0, 0, 6)
    # a deleted one would let the next build bring the folder back: reported, restored
    (idx / "exclusions.json").unlink()
    assert any("exclusions.json is missing" in p for p in verify_index(idx).problems)
    assert verify_index(idx, repair=True).consistent
    assert json.loads((idx / "exclusions.json").read_text())["dirs"] == ["sub"]


def test_a_corrupt_exclusions_file_without_a_stored_copy_is_moved_aside_with_instructions(built):
    root, idx = built
    with Store.open(idx / "meta.lmdb") as store:  # an index written before the store kept a copy
        store.write(lambda txn: store.delete_meta(txn, "exclusions"))
    (idx / "exclusions.json").write_bytes(b"\xff\x00")
    res = _invoke("verify", "--repair", "--index", idx)
    assert res.exit_code == 0, res.output
    assert "exclusions.json.damaged" in res.stdout and "--exclude-dir NAME" in res.stdout
    assert _build(root, idx, encoders=None).unchanged == 10 and verify_index(idx).consistent


# D. ------------------------------------------------------------------------------------
def test_a_kill_right_after_the_switch_is_a_note_and_repair_re_exports(built):
    root, idx = built
    assert run_child(root, idx, "tinyflip", fault="switched") != 0  # killed there
    res = _invoke("verify", "--index", idx)
    assert res.exit_code == 0 and "interrupted right after its switch" in res.stdout, res.output
    assert set(read_manifest_file(idx).encoders) == {"tinycolor"}  # the stale copy is still there
    res = _invoke("verify", "--repair", "--index", idx)
    assert res.exit_code == 0 and "manifest.json rewritten" in res.stdout, res.output
    assert (idx / MANIFEST).read_bytes() == manifest_bytes(read_manifest(idx))
    _answers(root, idx)
    # an edited copy (not an older generation) is still a problem
    (idx / MANIFEST).write_text("{}")
    assert any(MANIFEST in p for p in verify_index(idx).problems)


# E. ------------------------------------------------------------------------------------
def test_an_emptied_store_is_damaged_not_an_interrupted_first_build(built):
    root, idx = built
    os.truncate(idx / "meta.lmdb" / "data.mdb", 0)
    for args in (["query", root / "img_001.png", "--index", idx], ["verify", "--index", idx],
                 ["build-index", root, "--index", idx]):
        line = _one_line(_cli(*args), 2, "damaged", "verify --repair")
        assert "interrupted" not in line
    assert (idx / "meta.lmdb" / "data.mdb").stat().st_size == 0  # no command wrote to it
    res = _cli("verify", "--repair", "--index", idx)
    assert res.returncode == 0, res.stdout + res.stderr
    _answers(root, idx)


def test_the_note_of_a_killed_build_says_what_it_was_doing(built):
    root, idx = built
    make_collection(root / "more", 4, seed=5)
    assert run_child(root, idx, None, fault="chunk") != 0  # a plain build, killed while embedding
    notes = verify_index(idx).notes
    assert any("unfinished build" in n for n in notes) and not any("adding encoder" in n for n in notes), notes
    assert run_child(root, idx, "tinyflip", fault="chunk") != 0  # one adding a column
    notes = verify_index(idx).notes
    assert any("adding encoder(s) tinyflip" in n for n in notes), notes


# F. ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "verify_code"), [("faiss", 1), ("manifest.json", 1), ("exclusions.json", 1),
                                                    ("meta.lmdb/lock.mdb", 2)])
def test_an_entry_of_the_wrong_type_is_one_line_and_repaired(built, name, verify_code):
    root, idx = built
    target = idx / name
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
        target.write_text("not a folder")
    else:
        target.unlink()
        target.mkdir()
    _one_line(_invoke("build-index", root, "--index", idx), 2, name, "verify --repair")
    res = _invoke("verify", "--index", idx)
    assert res.exit_code == verify_code and "Traceback" not in res.output and name in res.stderr, res.output
    res = _invoke("verify", "--repair", "--index", idx)
    assert res.exit_code == 0 and "moved aside" in res.stdout, res.output
    _answers(root, idx)
    rep = _build(root, idx, encoders=None)
    assert (rep.added, rep.removed, rep.unchanged) == (0, 0, 10) and verify_index(idx).consistent
