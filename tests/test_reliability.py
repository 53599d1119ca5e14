"""Issue 8 regressions: odd file names, concurrent builds, manifest vs store, damaged
files, killed builds, disk full, and ``relsearch verify``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from engine_helpers import TinyColorEncoder, image_query, make_collection
from fault_harness import REPO, TESTS, answers, run_child
from PIL import Image
from typer.testing import CliRunner

from relsearch import build as build_mod
from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.errors import RelsearchError
from relsearch.indexdir import read_manifest, read_manifest_file
from relsearch.query import Searcher
from relsearch.store import Store
from relsearch.store.lmdb_store import id_key
from relsearch.verify import verify_index

runner = CliRunner()
BAD = b"bad_\xff\xfe.png"  # legal on Linux, not UTF-8


def _build(root: Path, idx: Path, **kw):
    return build_index(root, idx, BuildOptions(**{"encoders": "tinycolor", "progress": False, "workers": 1, **kw}))


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_cli_process(*args: object) -> subprocess.CompletedProcess:
    """The CLI in a child process: a crash by signal (SIGBUS) must not take pytest with it."""
    code = ("import sys\nfrom relsearch import encoders as e\n"
            "e.REGISTRY.setdefault('tinycolor', 'engine_helpers:load_tinycolor')\n"
            "from relsearch.cli import main\nmain(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


# 1. -----------------------------------------------------------------------------------
def test_non_utf8_file_name_round_trips(tmp_path, capsys):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 5)
    bad = os.fsdecode(os.fsencode(root) + b"/" + BAD)  # the str os.listdir gives (surrogateescape)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(bad)
    rep = _build(root, idx)
    assert (rep.added, rep.failed) == (6, [])
    hit = image_query(bad, idx, k=1).results["tinycolor"][0]
    assert hit.path == bad and os.fsencode(hit.path).endswith(b"/" + BAD) and os.path.exists(hit.path)
    # the CLI's JSON carries the same name (\udcXX escapes), which maps back to the bytes
    from relsearch.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["query", bad, "--index", str(idx), "-k", "1", "--json"])
    assert ex.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert os.fsencode(out["results"]["tinycolor"][0]["path"]) == os.fsencode(bad)
    # and the next build sees it as unchanged, a rename away as removed
    assert (_build(root, idx).unchanged, _build(root, idx).added) == (6, 0)
    os.rename(bad, root / "renamed.png")
    rep = _build(root, idx)
    assert (rep.added, rep.removed) == (1, 1) and verify_index(idx).consistent


# 2. -----------------------------------------------------------------------------------
def test_concurrent_build_cannot_drop_the_other_builds_encoder(tmp_path, monkeypatch):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 6)
    _build(root, idx)
    real_scan = build_mod.scan_roots
    other: dict[str, object] = {}

    def scan_while_another_build_runs(*args, **kwargs):
        # Build B scans before it takes the lock; build A adds an encoder and finishes now.
        # (A build that comes while B holds the lock is refused: the test below.)
        if not other:
            other["started"] = True  # A's own scan comes here too
            other["report"] = _build(root, idx, encoders="tinyflip")
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(build_mod, "scan_roots", scan_while_another_build_runs)
    _build(root, idx, encoders="tinycolor")
    # A finished first: B must keep A's encoder and its FAISS file
    assert "tinyflip" in other["report"].encoders
    assert set(read_manifest(idx).encoders) == {"tinycolor", "tinyflip"}
    with Searcher(idx) as s:
        assert s.indexes["tinyflip"].ntotal == 6
    assert verify_index(idx).consistent


def test_second_build_is_refused_while_one_holds_the_lock(tmp_path):
    from relsearch.indexdir import build_lock

    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    _build(root, idx)
    with build_lock(idx), pytest.raises(RelsearchError, match="another build is writing"):
        _build(root, idx, encoders="tinyflip")
    assert set(read_manifest(idx).encoders) == {"tinycolor"}


# 3. -----------------------------------------------------------------------------------
def test_kill_between_switch_and_manifest_write_loses_no_encoder(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 6)
    _build(root, idx)
    assert run_child(root, idx, "tinyflip", fault="switched") != 0  # killed there
    # the store committed the new column with the generation: it answers
    assert set(read_manifest(idx).encoders) == {"tinycolor", "tinyflip"}
    assert set(image_query(str(root / "img_001.png"), idx, k=1).results) == {"tinycolor", "tinyflip"}
    # the exported copy is stale (verify notes it: the store is fine); an idle rebuild rewrites it
    assert set(read_manifest_file(idx).encoders) == {"tinycolor"}
    assert any("right after its switch" in n for n in verify_index(idx).notes)
    rep = build_index(root, idx, BuildOptions(progress=False))
    assert rep.embedded == 0 and any("manifest.json" in r for r in rep.repaired)
    assert set(read_manifest_file(idx).encoders) == {"tinycolor", "tinyflip"}
    assert verify_index(idx).consistent


def test_missing_or_corrupt_manifest_keeps_the_index_encoders(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    _build(root, idx)
    (idx / "manifest.json").unlink()
    rep = build_index(root, idx, BuildOptions(progress=False))  # no --encoders: the index's own
    assert rep.encoders == ["tinycolor"] and rep.embedded == 0
    assert list(read_manifest_file(idx).encoders) == ["tinycolor"]
    (idx / "manifest.json").write_text("{not json")
    rep = build_index(root, idx, BuildOptions(progress=False))
    assert list(read_manifest_file(idx).encoders) == ["tinycolor"] and verify_index(idx).consistent


# 4. -----------------------------------------------------------------------------------
def test_truncated_store_is_one_line_not_sigbus(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 40)
    _build(root, idx)
    data = idx / "meta.lmdb" / "data.mdb"
    size = data.stat().st_size
    assert size > 3 * 4096
    os.truncate(data, 3 * 4096)
    for args in (["query", root / "img_001.png", "--index", idx], ["info", "--index", idx],
                 ["build-index", root, "--index", idx], ["verify", "--index", idx]):
        res = run_cli_process(*args)
        assert res.returncode == 2, (args, res.returncode, res.stderr)  # SIGBUS would be -7
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "truncated" in lines[0] and "verify --repair" in lines[0], lines
    assert data.stat().st_size == 3 * 4096  # nothing rewritten


# 5. -----------------------------------------------------------------------------------
def test_killed_build_keeps_answering_removed_and_changed_files(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 8)
    _build(root, idx)
    before = answers(root, idx)
    paths[2].unlink()
    Image.new("RGB", (16, 16), (0, 250, 0)).save(paths[3])
    os.utime(paths[3], ns=(1, 10**18))
    Image.new("RGB", (16, 16), (250, 0, 250)).save(root / "new.png")
    assert run_child(root, idx, None, fault="chunk") != 0  # died after embedding, before the switch
    assert answers(root, idx) == before  # the removed and the changed file included
    with Searcher(idx) as s:
        assert {r.path for r in s.opened.store.get_records(range(8)).values()} >= {str(paths[2]), str(paths[3])}
    rep = _build(root, idx)
    assert (rep.added, rep.updated, rep.removed) == (1, 1, 1) and verify_index(idx).consistent


def test_temp_files_of_killed_writes_are_removed(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    _build(root, idx)
    left = [idx / "faiss" / ".tmp-k1ll3d.faiss", idx / "faiss" / ".tinycolor.2.faiss.k1ll3d.tmp",
            idx / ".manifest.json.x1y2.tmp"]
    for p in left:
        p.write_bytes(b"half a file")
    rep = _build(root, idx)
    assert rep.embedded == 0 and not any(p.exists() for p in left)


# 6. -----------------------------------------------------------------------------------
def test_verify_finds_an_overwritten_raw_vector_and_build_reembeds_it(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 6)
    _build(root, idx)
    assert run("verify", "--index", idx).exit_code == 0
    # overwrite record 0's raw vector with record 1's bytes, as a bad write would
    env = lmdb.open(str(idx / "meta.lmdb"), max_dbs=32)
    db = env.open_db(b"vec:tinycolor")
    with env.begin(write=True) as txn:
        txn.put(id_key(0), bytes(txn.get(id_key(1), db=db)), db=db)
    env.close()
    res = run("verify", "--index", idx, "--json")
    out = json.loads(res.stdout)
    assert res.exit_code == 1 and not out["consistent"]
    assert any("checksum" in p for p in out["problems"])
    with Searcher(idx) as s:  # a query never scores against the damaged vector
        assert not s.opened.store.get_vectors("tinycolor", np.array([0]), 48).any()
    res = run("verify", "--index", idx, "--repair")
    assert res.exit_code == 1 and "re-embed" in res.output  # the vector itself needs the model
    rep = _build(root, idx)
    assert rep.embedded == 1 and verify_index(idx).consistent
    with Searcher(idx) as s:
        rec = s.opened.store.get_records([0])[0]
        want = TinyColorEncoder().embed([Image.open(rec.path)])[0]
        np.testing.assert_allclose(s.opened.store.get_vectors("tinycolor", np.array([0]), 48)[0], want, atol=1e-6)
    assert image_query(str(paths[0]), idx, k=1).results["tinycolor"][0].score == pytest.approx(1.0, abs=1e-5)


def test_verify_repairs_faiss_and_manifest_without_reembedding(tmp_path, monkeypatch):
    from relsearch.index import IndexConfig, VectorIndex

    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 8)
    _build(root, idx)
    before = answers(root, idx)
    faiss_file = next((idx / "faiss").glob("*.faiss"))
    # a valid FAISS file that lacks two ids (and is not the file the manifest recorded)
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        ids, vecs = store.all_vectors("tinycolor", 48)
    VectorIndex.build(vecs[2:], ids[2:], IndexConfig(spec="Flat")).save(faiss_file)
    (idx / "manifest.json").unlink()
    report = verify_index(idx)
    assert not report.consistent and len(report.problems) >= 2
    assert any("FAISS holds 6 ids" in p for p in report.problems)
    monkeypatch.setattr(build_mod, "get_encoder", lambda *a, **k: pytest.fail("repair must not load a model"))
    res = run("verify", "--index", idx, "--repair")
    assert res.exit_code == 0 and "repaired" in res.output
    assert answers(root, idx) == before and verify_index(idx).consistent


def test_build_index_repairs_a_corrupt_faiss_file(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 5)
    _build(root, idx)
    before = answers(root, idx)
    next((idx / "faiss").glob("*.faiss")).write_bytes(b"garbage")
    rep = build_index(root, idx, BuildOptions(progress=False))
    assert rep.embedded == 0 and rep.repaired and answers(root, idx) == before


# 7. -----------------------------------------------------------------------------------
def test_disk_full_injected_is_one_line_and_old_index_answers(tmp_path, monkeypatch):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 6)
    _build(root, idx)
    before = answers(root, idx)
    Image.new("RGB", (16, 16), (1, 2, 250)).save(root / "new.png")
    monkeypatch.setenv("RELSEARCH_FAULT", "faiss:enospc")
    res = run("build-index", root, "--index", idx)
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "No space left" in line and "disk /" in line
    assert answers(root, idx) == before and verify_index(idx).consistent
    monkeypatch.delenv("RELSEARCH_FAULT")
    assert _build(root, idx).added == 1


@contextlib.contextmanager
def _tmpfs(where: Path, size: str):
    where.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_on_a_real_small_disk(tmp_path):
    root = tmp_path / "col"
    make_collection(root, 6)
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        idx = disk / "idx"
        _build(root, idx)
        before = answers(root, idx)
        for i in range(150):  # more than the disk has room for once it is nearly full
            Image.new("RGB", (16, 16), (i, 255 - i, (7 * i) % 256)).save(root / f"more_{i:03d}.png")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 24 * 1024))
        res = run_cli_process("build-index", root, "--index", idx)
        assert res.returncode == 2, res.stderr
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1 and f"disk {disk}" in line and "Traceback" not in line, line
        assert answers(root, idx) == before and verify_index(idx).consistent
        (disk / "filler").unlink()
        rep = _build(root, idx)
        assert rep.added == 150 and verify_index(idx).consistent


def test_first_build_killed_before_its_first_commit_reads_as_unfinished(tmp_path):
    # (found by the soak) a kill between creating meta.lmdb and its first commit
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    (idx / "meta.lmdb").mkdir(parents=True)
    lmdb.open(str(idx / "meta.lmdb"), max_dbs=32).close()
    with pytest.raises(RelsearchError, match="no finished build yet"):
        image_query(str(root / "img_001.png"), idx)
    assert _build(root, idx).added == 3 and verify_index(idx).consistent
    # ... or even before LMDB wrote its meta pages (an empty data.mdb)
    idx2 = tmp_path / "idx2"
    (idx2 / "meta.lmdb").mkdir(parents=True)
    (idx2 / "meta.lmdb" / "data.mdb").write_bytes(b"")
    with pytest.raises(RelsearchError, match="no finished build yet"):
        image_query(str(root / "img_001.png"), idx2)
    assert _build(root, idx2).added == 3 and verify_index(idx2).consistent


def test_first_build_killed_in_an_atomic_write_is_resumed(tmp_path):
    # (found by the soak) a kill while exclusions.json was being written leaves its temp file
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    idx.mkdir()
    (idx / ".build.lock").write_text("")
    (idx / ".exclusions.json.k1ll3d.tmp").write_text("{")
    assert _build(root, idx).added == 3
    assert not (idx / ".exclusions.json.k1ll3d.tmp").exists() and verify_index(idx).consistent


def test_verify_checks_and_repairs_the_refine_store(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 300, size=8)
    _build(root, idx, index_spec="IVF4,PQ8")  # re-ranks: raw vectors per generation beside FAISS
    refine = next((idx / "faiss").glob("*.vecs"))
    assert verify_index(idx).consistent
    data = bytearray(refine.read_bytes())
    data[-4:] = np.float32(9.0).tobytes()  # the last vector's last component, overwritten
    refine.write_bytes(bytes(data))
    report = verify_index(idx)
    assert any("refine store" in p for p in report.problems)
    assert verify_index(idx, repair=True).consistent



def test_store_check_holds_while_a_build_commits(tmp_path, monkeypatch):
    """A searcher opening while a build committed took the file's size, then read a
    newer meta page, and refused a healthy store as truncated (seen once in CI).
    Here a commit that grows the file lands at each step of the check."""
    from relsearch.store import lmdb_store

    env = lmdb.open(str(tmp_path / "s.lmdb"), map_size=1 << 30)
    data = tmp_path / "s.lmdb" / "data.mdb"
    n = [0]

    def commit() -> None:  # ~64 new pages: the newer meta page points past the old end
        with env.begin(write=True) as txn:
            for _ in range(16):
                txn.put(n[0].to_bytes(8, "big"), os.urandom(16384))
                n[0] += 1

    class Racing:
        def __init__(self, f):
            self.f = f

        def read(self, *a):
            out = self.f.read(*a)
            commit()
            return out

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def racing_open(path, *a, **kw):
        commit()
        return Racing(open(path, *a, **kw))

    commit()
    before = data.stat().st_size
    with monkeypatch.context() as m:
        m.setattr(lmdb_store, "open", racing_open, raising=False)
        lmdb_store.check_data_file(data, attempts=1)  # no retry: the read order alone must hold
    env.close()
    assert data.stat().st_size > before  # the commits did land during the check
    os.truncate(data, before // 2)  # ... and a truly short file is still refused
    with pytest.raises(RelsearchError, match="truncated"):
        lmdb_store.check_data_file(data)
