"""``build-index --ray``: a real local Ray (2 CPUs) gives the same index as a local build."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import TinyColorEncoder, image_query, make_collection, run_cli
from PIL import Image
from ray_helpers import register, square

from relsearch.build import BuildOptions, build_index
from relsearch.cli.core import bare_ray_flag
from relsearch.indexdir import read_manifest
from relsearch.store import Store

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'relsearch[ray]')")

from relsearch.backends.ray_embed import RayEmbedding, RayOptions  # noqa: E402

HERE = Path(__file__).resolve().parent
DIMS = {"tinycolor": 48, "tinyflip": 48, "tinyslow": 48}


@pytest.fixture(scope="module")
def ray_cluster():
    register()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _local(root: Path, idx: Path, enc: str):
    return build_index(root, idx, BuildOptions(encoders=enc, progress=False, workers=2, batch_size=8))


def _on_ray(root: Path, idx: Path, enc: str, actors: int = 2):
    with RayEmbedding(RayOptions(actors=actors)) as step:
        return build_index(root, idx, BuildOptions(encoders=enc, progress=False, batch_size=8, embedding=step))


def _contents(idx: Path) -> tuple[dict[str, int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        paths = {p: e.id for p, e in store.all_paths().items()}
        vecs = {name: store.all_vectors(name, DIMS[name]) for name in read_manifest(idx).encoders}
    return paths, vecs


def _assert_same(a: Path, b: Path) -> None:
    paths_a, vecs_a = _contents(a)
    paths_b, vecs_b = _contents(b)
    assert paths_a == paths_b  # same paths, same record ids
    assert vecs_a.keys() == vecs_b.keys()
    for name in vecs_a:
        ids_a, va = vecs_a[name]
        ids_b, vb = vecs_b[name]
        assert np.array_equal(ids_a, ids_b)
        assert float(np.abs(va - vb).max()) <= 1e-5


def test_ray_build_equals_local_build_and_stays_equal_incrementally(tmp_path, ray_cluster):
    root = tmp_path / "col"
    paths = make_collection(root, 30)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    Image.open(paths[3]).save(root / "copy_of_3.png")  # same pixels, another file: one record, two paths
    loc, on_ray = tmp_path / "local", tmp_path / "ray"
    enc = "tinycolor,tinyflip"

    loaded_here = TinyColorEncoder.instances
    b = _on_ray(root, on_ray, enc)
    # the driver never loaded the weights: the actors embedded
    assert TinyColorEncoder.instances == loaded_here
    a = _local(root, loc, enc)
    assert (b.added, b.embedded) == (a.added, a.embedded) == (31, 30)
    assert b.failed == a.failed and [f["path"] for f in b.failed] == [str(root / "broken.jpg")]
    _assert_same(loc, on_ray)

    # add, change, delete; then a second encoder joins the index (existing records get vectors)
    make_collection(root / "more", 6, seed=7)
    Image.new("RGB", (20, 20), (240, 20, 20)).save(paths[5])
    os.utime(paths[5], ns=(time.time_ns(), time.time_ns() + 10**9))
    for p in paths[10:14]:
        p.unlink()
    a, b = _local(root, loc, enc), _on_ray(root, on_ray, enc)
    assert (b.added, b.updated, b.removed) == (a.added, a.updated, a.removed) == (6, 1, 4)
    _assert_same(loc, on_ray)
    a, b = _local(root, loc, "tinyslow"), _on_ray(root, on_ray, "tinyslow", actors=1)
    assert b.embedded == a.embedded > 0
    _assert_same(loc, on_ray)
    assert read_manifest(on_ray).generation == read_manifest(loc).generation == 3


def test_cli_ray_flag_builds_and_bad_address_is_one_line(tmp_path, ray_cluster, capsys):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 8)
    assert run_cli("build-index", str(root), "--index", str(idx), "--encoders", "tinycolor",
                   "--ray", "--ray-actors", "1", "--json") == 0
    assert '"added": 8' in capsys.readouterr().out
    assert run_cli("build-index", str(root), "--index", str(tmp_path / "other"), "--encoders", "tinycolor",
                   "--ray=nowhere") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray 'nowhere' is not an address" in err
    assert not (tmp_path / "other").exists()
    # a bare --ray before the folder is not mistaken for an address
    assert bare_ray_flag(["build-index", "--ray", str(root)]) == ["build-index", "--ray=local", str(root)]
    assert bare_ray_flag(["build-index", str(root), "--ray", "ray://head:10001"])[-1] == "ray://head:10001"
    assert run_cli("build-index", str(root), "--ray-actors", "2") == 2
    assert "--ray-actors needs --ray" in capsys.readouterr().err


def test_kill_9_of_the_driver_mid_ray_build(tmp_path, ray_cluster):
    """The previous generation keeps answering; the next build finishes with no duplicates."""
    root, idx = tmp_path / "col", tmp_path / "idx"
    first = make_collection(root, 6)
    assert run_cli("build-index", str(root), "--index", str(idx), "--encoders", "tinyslow") == 0
    make_collection(root / "new", 60, seed=3)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    # The child is the CLI itself, starting its own local Ray; commits every 8 images.
    child = subprocess.Popen(
        [sys.executable, str(HERE / "ray_helpers.py"), "build-index", str(root), "--index", str(idx),
         "--batch-size", "4", "--ray", "--ray-actors", "1"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        pending = 0
        while pending < 8:
            assert child.poll() is None, "the build finished before it could be killed"
            assert time.monotonic() < deadline, "no chunk was committed within 120 s"
            time.sleep(0.2)
            with Store.open(idx / "meta.lmdb", readonly=True) as store:
                pending = len(store.marked("pending"))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:  # Ray's helper processes of the killed child, if any outlived it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    # killed half-way: embedded chunks are in LMDB, but generation 1 still answers alone
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        assert 8 <= len(store.marked("pending")) < 60 and store.generation == 1
    assert read_manifest(idx).count == 6
    hits = image_query(str(first[2]), idx, k=10).results["tinyslow"]
    assert hits[0].path == str(first[2]) and len(hits) == 6

    rep = _on_ray(root, idx, "tinyslow", actors=1)
    assert rep.generation == 2 and rep.embedded < 60  # the killed run's chunks were kept
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        records = list(store.iter_records())
        assert len(records) == 66 and len({r.sha256 for r in records}) == 66
        assert sorted(p for r in records for p in r.paths) == sorted(store.all_paths())
        assert not store.marked("pending")
    m = read_manifest(idx)
    assert m.count == 66 and m.encoders["tinyslow"].faiss["ntotal"] == 66
    # and it is the index a local build of the same folder makes
    _local(root, tmp_path / "fresh", "tinyslow")
    _, vecs = _contents(idx)
    paths, _ = _contents(idx)
    fresh_paths, fresh_vecs = _contents(tmp_path / "fresh")
    assert paths.keys() == fresh_paths.keys()
    by_path = dict(zip(vecs["tinyslow"][0], vecs["tinyslow"][1]))
    fresh_by_path = dict(zip(fresh_vecs["tinyslow"][0], fresh_vecs["tinyslow"][1]))
    for p in paths:
        assert np.abs(by_path[paths[p]] - fresh_by_path[fresh_paths[p]]).max() <= 1e-5


def test_ray_build_of_an_on_disk_index_adds_its_shards_as_ray_tasks(tmp_path, ray_cluster):
    root = tmp_path / "col"
    paths = make_collection(root, 120)
    spec = "ondisk:IVF4,PQ8x4"
    with RayEmbedding(RayOptions(actors=1)) as step:
        rep = build_index(root, tmp_path / "ray", BuildOptions(encoders="tinycolor", index_spec=spec,
                                                               progress=False, embedding=step))
    assert rep.added == 120 and list((tmp_path / "ray" / "faiss").glob("*.ivfdata"))
    build_index(root, tmp_path / "local", BuildOptions(encoders="tinycolor", index_spec=spec, progress=False))
    for p in paths[::20]:
        a = image_query(str(p), tmp_path / "local", k=5).results["tinycolor"]
        b = image_query(str(p), tmp_path / "ray", k=5).results["tinycolor"]
        assert [h.id for h in a] == [h.id for h in b] and a[0].path == str(p)


def test_ray_tasks_map_in_order_and_bench_scale_bad_input(tmp_path, ray_cluster, capsys):
    with RayEmbedding() as step:
        assert list(step.executor().map(square, [3, 1, -2])) == [9, 1, 4]
    assert run_cli("bench", "scale", "--part", "nope") == 2
    assert "--part must be index, ray or all" in capsys.readouterr().err
    assert run_cli("bench", "scale", "--part", "ray", "--ray-actors", "0,2", "--results-dir",
                   str(tmp_path / "r")) == 2
    assert "--ray-actors must be counts" in capsys.readouterr().err
    assert run_cli("bench", "scale", "--part", "all", "--work", str(tmp_path / "w"), "--ray-collection",
                   str(tmp_path / "none"), "--results-dir", str(tmp_path / "r")) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_bench_photo_folder_makes_distinct_photographs(tmp_path):
    from relsearch.bench.scale_ray import PHOTO_DIRS, photo_folder

    if not any(os.path.isdir(d) for d in PHOTO_DIRS):
        pytest.skip("no wallpaper photographs installed (tools/setup.sh installs them)")
    paths = photo_folder(tmp_path, 6)
    assert len(paths) == 6 and len({p.read_bytes() for p in paths}) == 6
    assert all(Image.open(p).size == (640, 480) for p in paths)


def test_pool_shape_one_gpu_per_actor_else_cpu_actors_leave_room_for_decoding():
    step = RayEmbedding(RayOptions(actors=3))
    step._gpus, step._cpus = 2.0, 16.0  # what cluster_resources() reports
    assert step._pool_shape() == (2, 1.0, 0) and step._device(None) == "cuda"
    step._gpus, step._cpus = 0.0, 2.0
    actors, cpus_each, threads = step._pool_shape()
    assert actors == 3 and actors * cpus_each + 2 * 0.25 <= 2.0 and threads == 1
    assert step._device(None) == "cpu" and step._device("cuda:1") == "cuda:1"
    step = RayEmbedding(RayOptions())
    step._gpus, step._cpus = 0.0, 8.0
    assert step._pool_shape()[0] == 4  # default: half the CPUs
    with pytest.raises(ValueError, match="--ray-actors must be >= 1"):
        RayOptions(actors=0)


def test_imagenet_preprocessor_is_its_preprocess_batch_without_the_model():
    import pickle

    import torch

    from relsearch.encoders.imagenet import ImagenetEncoder

    enc = ImagenetEncoder(device="cpu", pretrained=False)
    blob = pickle.dumps(enc.preprocessor())
    assert len(blob) < 10_000  # what the CPU tasks receive: no weights
    images = [Image.new("RGB", (300 + 40 * i, 200), (40 * i, 120, 200)) for i in range(3)]
    assert torch.equal(pickle.loads(blob)(images), enc.preprocess_batch(images))
