"""Hostile input at the command line: one line on stderr and exit code 2 (or a working
command), never a traceback, and the indexes already there still answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import TinyColorEncoder, image_query, make_collection, run_cli
from PIL import Image

from relsearch import encoders as enc_registry
from relsearch.build import BuildOptions, build_index
from relsearch.encoders.base import check_device, l2_normalize
from relsearch.errors import MissingWeightsError, RelsearchError
from relsearch.home import index_home
from relsearch.indexdir import faiss_path, read_manifest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BAD = b"\xff\xfe"  # not UTF-8: a name only bytes can spell


class TinyGrayEncoder(TinyColorEncoder):
    """A third cheap column of another width (16-d): its FAISS file cannot pass for a 48-d one."""

    name = "tinygray"
    dim = 16

    def embed(self, images):
        rows = [np.asarray(im.convert("L").resize((4, 4)), dtype=np.float32).ravel() / 255.0 - 0.5
                for im in images]
        return l2_normalize(np.stack(rows) + 1e-3)


def load_tinygray(source: str | None = None, device: str | None = None) -> TinyGrayEncoder:
    return TinyGrayEncoder(source)


def load_junk_weights(source: str | None = None, device: str | None = None) -> TinyColorEncoder:
    """An encoder whose loader reads a safetensors file from the user's path, as clip/dino do."""
    from safetensors.torch import load_file

    load_file(str(Path(source or ".") / "model.safetensors"))
    return TinyColorEncoder(source)


@pytest.fixture(autouse=True)
def _test_encoders(monkeypatch):
    monkeypatch.setitem(enc_registry.REGISTRY, "tinygray", "test_hostile_cli:load_tinygray")
    monkeypatch.setitem(enc_registry.REGISTRY, "junkweights", "test_hostile_cli:load_junk_weights")


def cli(capsys, *argv: object) -> tuple[int, str, list[str]]:
    """``relsearch ARGV`` in-process: (exit code, stdout, non-empty stderr lines)."""
    capsys.readouterr()
    code = run_cli(*[a if isinstance(a, str) else os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    if isinstance(out, bytes):  # capsysbinary: file names that are not UTF-8 come back as they are
        out, err = os.fsdecode(out), os.fsdecode(err)
    return code, out, [line for line in err.splitlines() if line.strip()]


def one_line_error(code: int, err: list[str], *words: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    for word in words:
        assert word in err[0], err


def answers(idx: Path, probe: Path) -> dict[str, list[tuple[str, float]]]:
    result = image_query(probe, idx, k=3)
    return {name: [(os.path.basename(h.path), round(h.score, 5)) for h in hits]
            for name, hits in result.results.items()}


@pytest.fixture
def built(tmp_path):
    """A collection and its index (two columns), with what the index answers before the test."""
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 8)
    build_index(root, idx, BuildOptions(encoders="tinycolor,tinyflip", progress=False, workers=1))
    return root, idx, paths[1], answers(idx, paths[1])


# 1. --device -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:-1", "cuda:x"])
@pytest.mark.parametrize("command", ["query", "build-index", "view"])
def test_a_bad_device_is_one_line(capsys, built, command, device):
    root, idx, probe, before = built
    argv = {"query": ["query", probe, "--index", idx], "build-index": ["build-index", root, "--index", idx],
            "view": ["view", idx, "--no-browser"]}[command]
    code, out, err = cli(capsys, *argv, "--device", device)
    one_line_error(code, err, "--device", repr(device))
    assert answers(idx, probe) == before


def test_cuda_without_cuda_falls_back_to_the_cpu_with_a_warning(capsys, built):
    root, idx, probe, before = built
    code, out, err = cli(capsys, "query", probe, "--index", idx, "--device", "cuda:7", "--json")
    assert code == 0, err
    assert any("cuda:7 is not available" in line and "CPU" in line for line in err), err
    assert json.loads(out)["results"]
    assert check_device("cuda:7") == "cpu" and check_device("cpu") == "cpu"


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0" and check_device("cuda") == "cuda"
    with pytest.raises(RelsearchError, match=r"cuda:7 does not exist: this machine has 1 CUDA device"):
        check_device("cuda:7")


def test_a_real_encoder_gets_the_checked_device():
    encoder = enc_registry.get_encoder("relsim-mini", device="cuda:7")  # no CUDA in the tests
    assert encoder.device == "cpu"
    with pytest.raises(RelsearchError, match="unknown device"):
        enc_registry.get_encoder("relsim-mini", device="bogus")


# 2. counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["build-index", "{root}", "--index", "{tmp}/new", "--encoders", "tinycolor", "--workers", "0"],
    ["build-index", "{root}", "--index", "{tmp}/new", "--encoders", "tinycolor", "--batch-size", "-1"],
    ["query", "{probe}", "--index", "{idx}", "-k", "0"],
    ["query", "{probe}", "--index", "{idx}", "-k", "many"],
    ["bench", "throughput", "--workers", "0"],
    ["train", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/new", "--threads", "-1"],
    ["train", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/new", "--lr", "nan"],
    ["train", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/new", "--grad-clip", "inf"],
    ["verify", "--index", "{idx}", "--min-cosine", "2"],
    ["dupes", "--index", "{idx}", "--threshold", "nan"],
    ["view", "{idx}", "--port", "70000"],
])
def test_a_bad_count_or_number_is_one_line(capsys, built, tmp_path, argv):
    root, idx, probe, before = built
    filled = [a.format(root=root, idx=idx, probe=probe, tmp=tmp_path) for a in argv]
    code, out, err = cli(capsys, *filled)
    one_line_error(code, err)
    assert not (tmp_path / "new").exists()
    assert answers(idx, probe) == before


# 3. train --data ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b"\x80\x04\x95" + bytes(range(256)),  # a pickle's opening, then binary
    json.dumps([1, 2]).encode(),  # JSON, but no rows
    b'{"image": 5, "caption": "a thing on another"}\n',  # a row of the wrong types
])
def test_train_data_that_is_not_captions_is_one_line(capsys, tmp_path, content):
    data = tmp_path / "evil.pkl"
    data.write_bytes(content)
    code, out, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", "--encoder", "relsim-mini")
    one_line_error(code, err, str(data))
    assert not (tmp_path / "run").exists()


# 4. weights at a user's path ---------------------------------------------------------------
def _junk_release(folder: Path, junk: bytes) -> Path:
    from relsearch.encoders.relsim_mini import WEIGHTS_DIR

    folder.mkdir(parents=True)
    shutil.copy(WEIGHTS_DIR / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(junk)
    return folder


@pytest.mark.parametrize("junk", [b"", b"abc", bytes(range(256)) * 4, b"\xff" * 8 + b"{}"])
def test_relsim_mini_with_junk_weights_is_one_line(capsys, built, tmp_path, junk):
    root, idx, probe, before = built
    release = _junk_release(tmp_path / "release", junk)
    code, out, err = cli(capsys, "build-index", root, "--index", tmp_path / "new", "--encoders",
                         f"relsim-mini@{release}")
    one_line_error(code, err, "model.safetensors")
    assert not (tmp_path / "new" / "meta.lmdb").exists()
    with pytest.raises(MissingWeightsError):
        enc_registry.get_encoder(f"relsim-mini@{release}")


def test_any_encoder_with_junk_safetensors_is_one_line(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(MissingWeightsError, match=r"junkweights@.*SafetensorError"):
        enc_registry.get_encoder(f"junkweights@{folder}")
    from tiny_models import make_tiny_dino

    dino = make_tiny_dino(tmp_path / "dino")
    (dino / "model.safetensors").write_bytes(bytes(range(256)))
    with pytest.raises(RelsearchError, match="dino"):
        enc_registry.get_encoder(f"dino@{dino}")


# 5. FAISS files swapped between columns ----------------------------------------------------
def test_swapped_faiss_files_name_the_repair(capsys, tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    probe = make_collection(root, 8)[2]
    build_index(root, idx, BuildOptions(encoders="tinycolor,tinygray", progress=False, workers=1))
    before = answers(idx, probe)
    gen = read_manifest(idx).generation
    a, b = faiss_path(idx, "tinycolor", gen), faiss_path(idx, "tinygray", gen)
    a.rename(a.with_suffix(".tmp"))
    b.rename(a)
    a.with_suffix(".tmp").rename(b)
    code, out, err = cli(capsys, "query", probe, "--index", idx)
    one_line_error(code, err, "relsearch verify --repair", "dimensional")
    code, out, err = cli(capsys, "verify", "--index", idx, "--repair")
    assert code == 0, err
    assert answers(idx, probe) == before


# 6. names that are not UTF-8 ---------------------------------------------------------------
def test_non_utf8_index_and_collection_names_work(capsysbinary, tmp_path):
    capsys = capsysbinary
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/col" + BAD))  # what os.listdir gives (surrogates)
    probe = make_collection(root, 6)[1]
    idx = Path(os.fsdecode(os.fsencode(tmp_path) + b"/idx" + BAD))
    code, out, err = cli(capsys, "build-index", root, "--index", idx, "--encoders", "tinycolor")
    assert code == 0, err
    code, out, err = cli(capsys, "build-index", root, "--encoders", "tinycolor")  # the home: named after DIR
    assert code == 0, err
    assert (Path(os.fsdecode(os.fsencode(index_home()) + b"/col" + BAD)) / "meta.lmdb").is_dir()
    for argv in (["query", probe, "--index", idx, "--json"], ["query", probe, "--json"], ["info"],
                 ["verify", "--index", idx]):
        code, out, err = cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert "Traceback" not in "".join(err)
    assert answers(idx, probe)["tinycolor"][0] == (probe.name, 1.0)


def test_the_page_of_a_non_utf8_index_opens(tmp_path):
    import threading
    import urllib.request

    from relsearch.view.server import make_server

    root = tmp_path / "col"
    probe = make_collection(root, 4)[0]
    idx = Path(os.fsdecode(os.fsencode(tmp_path) + b"/idx" + BAD))
    build_index(root, idx, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    server = make_server(idx, port=0, k=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(server.url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        request = urllib.request.Request(server.url + "query?k=2", data=probe.read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            hits = json.loads(answer.read())["result"]["results"]["tinycolor"]
        assert os.path.basename(hits[0]["path"]) == probe.name
    finally:
        server.shutdown()
        server.server_close()


def _run_process(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real ``relsearch`` console script in a child process (bytes argv, real stderr)."""
    code = ("import sys\nfrom relsearch import encoders as e\n"
            "e.REGISTRY.setdefault('tinycolor', 'engine_helpers:load_tinycolor')\n"
            "from relsearch.cli import main\nmain(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-c", code, *(os.fsencode(a) if isinstance(a, Path) else a for a in args)]
    return subprocess.run(argv, env=env, capture_output=True, timeout=timeout)


def test_non_utf8_index_path_in_a_real_process(tmp_path):
    root = tmp_path / "col"
    probe = make_collection(root, 5)[0]
    idx = Path(os.fsdecode(os.fsencode(tmp_path) + b"/idx" + BAD))
    built = _run_process("build-index", root, "--index", idx, "--encoders", "tinycolor")
    assert built.returncode == 0, built.stderr.decode(errors="replace")
    res = _run_process("query", probe, "--index", idx, "--json", "-k", "1")
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
    assert os.path.basename(json.loads(res.stdout)["results"]["tinycolor"][0]["path"]) == probe.name


# 7. one damaged index in the home ----------------------------------------------------------
def test_a_damaged_index_in_the_home_does_not_hide_the_others(capsys, tmp_path):
    good_root, bad_root = tmp_path / "good", tmp_path / "bad"
    probe = make_collection(good_root, 6)[0]
    make_collection(bad_root, 6, seed=1)
    for root in (good_root, bad_root):  # bad is built last: the one chosen without --index
        code, out, err = cli(capsys, "build-index", root, "--encoders", "tinycolor")
        assert code == 0, err
    good, bad = index_home() / "good", index_home() / "bad"
    before = answers(good, probe)
    (bad / "meta.lmdb" / "data.mdb").write_bytes(b"\x00garbage" * 64)

    code, out, err = cli(capsys, "info")
    assert code == 0, err
    damaged = [line for line in out.splitlines() if "DAMAGED" in line]
    assert len(damaged) == 1 and str(bad) in damaged[0] and "relsearch verify --repair" in damaged[0]
    assert f"{good}  (6 images" in out
    code, out, err = cli(capsys, "info", "--json")
    listed = {Path(i["index"]).name: i for i in json.loads(out)["indexes"]}
    assert code == 0 and "damaged" in listed["bad"] and listed["good"]["images"] == 6

    code, out, err = cli(capsys, "query", probe, "--json", "-k", "3")
    assert code == 0, err
    assert str(good) in err[0] and "skipped 1 damaged" in err[0]
    assert answers(good, probe) == before

    shutil.copy(bad / "meta.lmdb" / "data.mdb", good / "meta.lmdb" / "data.mdb")  # now none opens
    code, out, err = cli(capsys, "query", probe)
    one_line_error(code, err, "damaged")


def test_an_unreadable_entry_in_the_home_is_not_an_index(capsys, tmp_path):
    root = tmp_path / "col"
    make_collection(root, 4)
    assert cli(capsys, "build-index", root, "--encoders", "tinycolor")[0] == 0
    (index_home() / "stray-file").write_bytes(b"x")
    (index_home() / "empty-folder").mkdir()
    code, out, err = cli(capsys, "info")
    assert code == 0 and "1 index(es)" in out, err


# 8. export to a file that is not Milvus ----------------------------------------------------
def test_export_milvus_to_a_foreign_file_is_one_line(built, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    root, idx, probe, before = built
    foreign = tmp_path / "notes.db"
    foreign.write_bytes(b"not a milvus database\n" * 10)
    res = _run_process("export", "milvus", "--index", idx, "--uri", foreign)
    err = [line for line in res.stderr.decode(errors="replace").splitlines() if line.strip()]
    one_line_error(res.returncode, err, str(foreign))
    assert foreign.read_bytes() == b"not a milvus database\n" * 10
    assert answers(idx, probe) == before


def test_export_milvus_to_a_non_utf8_file_name_is_one_line(capsysbinary, built, tmp_path):
    pytest.importorskip("pymilvus")
    root, idx, probe, before = built
    uri = os.fsdecode(os.fsencode(tmp_path) + b"/m" + BAD + b".db")
    code, out, err = cli(capsysbinary, "export", "milvus", "--index", idx, "--uri", uri)
    one_line_error(code, err, "UTF-8", "--uri")
    assert not os.path.exists(uri)
    assert answers(idx, probe) == before


# 9. a build where every file fails ---------------------------------------------------------
def _unreadable_collection(root: Path, n: int) -> None:
    root.mkdir()
    for i in range(n):
        (root / f"broken_{i:02d}.png").write_bytes(b"\x89PNG not really" + bytes([i]))


def test_a_build_where_every_file_fails_lists_them(capsys, tmp_path):
    root = tmp_path / "col"
    _unreadable_collection(root, 23)
    code, out, err = cli(capsys, "build-index", root, "--index", tmp_path / "idx", "--encoders", "tinycolor")
    assert code == 2
    failed = [line for line in err if line.startswith("  failed: ")]
    assert len(failed) == 20 and "broken_00.png" in failed[0] and ": " in failed[0].split("broken_00.png")[1]
    assert err[-2].strip() == "... and 3 more failures (see --json)"
    assert err[-1].startswith("error: ") and "23 file(s) failed" in err[-1]
    assert not any("Traceback" in line for line in err)

    code, out, err = cli(capsys, "build-index", root, "--index", tmp_path / "idx", "--encoders", "tinycolor",
                         "--json")
    report = json.loads(out)
    one_line_error(code, err, "23 file(s) failed")
    assert report["failed_count"] == 23 and len(report["failed"]) == 23
    assert {Path(f["path"]).name for f in report["failed"]} == {f"broken_{i:02d}.png" for i in range(23)}
    assert all(f["error"] for f in report["failed"])


def test_a_build_with_some_failures_still_lists_them(capsys, built):
    root, idx, probe, before = built
    (root / "broken.png").write_bytes(b"junk")
    Image.new("RGB", (20, 20), (9, 99, 199)).save(root / "fine.png")
    code, out, err = cli(capsys, "build-index", root, "--index", idx)
    assert code == 0, err
    assert any(line.startswith("  failed: ") and "broken.png" in line for line in err)
