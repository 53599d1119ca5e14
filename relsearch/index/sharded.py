"""IVF-PQ built in shards and merged into one index whose inverted lists live on disk.

The coarse quantizer and the product quantizer are trained once, on a sample,
and written as an empty "trained" index. Each shard then reads that file, adds
its own ``(ids, vectors)`` and writes its inverted lists to a shard file; shards
share nothing, so they run in any executor: threads or processes here, Ray
tasks in a cluster build (anything with ``map(fn, iterable)``). The merge
copies every shard's lists, list by list, into one FAISS ``OnDiskInvertedLists``
data file (``*.ivfdata``) that is memory-mapped at query time: a query process
holds the quantizers and touches only the lists it probes, so its resident
memory is a small part of the index, and every process serving the same index
shares the pages through the OS cache.

FAISS's on-disk lists hold plain codes; fast-scan indexes pack 32 codes per
block and cannot live there, so the on-disk layout is 8-bit IVF-PQ
(``IVF{nlist},PQ{m}``), re-ranked exactly from the refine store as in memory.

A shard worker is the plain function :func:`build_shard` of a picklable
:class:`ShardJob`, so a distributed caller needs nothing else::

    jobs = plan_shards(trained_file, ids, vectors, workdir, shard_rows)
    shard_files = list(executor.map(build_shard, jobs))   # or ray.get([remote(build_shard).remote(j) ...])
    index = merge_on_disk(trained_file, shard_files, "encoder.7.ivfdata")
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from relsearch.errors import RelsearchError
from relsearch.index import _faiss

#: Vectors per shard by default. A shard's index is built in the worker's
#: memory (its codes, ids and one chunk of raw vectors), so 1M rows keep a
#: worker under ~1 GB at d=384 while giving each worker minutes of work,
#: which amortises its start-up (reading the trained index) to nothing.
DEFAULT_SHARD_ROWS = 1_000_000
IVFDATA_SUFFIX = ".ivfdata"
_ADD_CHUNK = 65_536


class Executor(Protocol):
    """What the shard builder needs of an executor: ``concurrent.futures``-style ``map``."""

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]: ...


@dataclass(frozen=True)
class ShardJob:
    """One shard's work: add ``vectors`` under ``ids`` to the trained index, write ``out``.

    ``vectors`` may be a memory map (``np.load(..., mmap_mode="r")`` rows): the
    worker reads it chunk by chunk.
    """

    trained: str
    out: str
    ids: np.ndarray
    #: The rows themselves, or ``(npy_path, start, stop)``: the worker then maps
    #: the file and reads its rows, so nothing large travels with the job.
    vectors: np.ndarray | tuple[str, int, int]

    def rows(self) -> np.ndarray:
        """This shard's vectors (a memory map when given as a file range)."""
        if isinstance(self.vectors, tuple):
            path, start, stop = self.vectors
            return np.load(path, mmap_mode="r")[start:stop]
        return self.vectors


def write_trained(index: Any, path: str | os.PathLike[str]) -> str:
    """Save a trained, empty FAISS index as the shards' common starting point."""
    faiss = _faiss.import_faiss()
    if index.ntotal:
        raise ValueError(f"the trained index must be empty, it holds {index.ntotal} vectors")
    faiss.write_index(index, os.fspath(path))
    return os.fspath(path)


def build_shard(job: ShardJob) -> str:
    """Add one shard's vectors to a copy of the trained index and write it; returns the file.

    Runs in any process (it only needs faiss and numpy); on a Ray worker the
    ``job`` travels by pickle.
    """
    faiss = _faiss.import_faiss()
    index = faiss.read_index(job.trained)
    ids = np.ascontiguousarray(job.ids, dtype=np.int64)
    vectors = job.rows()
    if len(ids) != len(vectors):
        raise ValueError(f"shard {job.out}: {len(ids)} ids for {len(vectors)} vectors")
    for s in range(0, len(ids), _ADD_CHUNK):
        chunk = np.ascontiguousarray(vectors[s : s + _ADD_CHUNK], dtype=np.float32)
        index.add_with_ids(chunk, ids[s : s + _ADD_CHUNK])
    tmp = job.out + ".tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, job.out)
    return job.out


def plan_shards(
    trained: str, ids: np.ndarray, vectors: np.ndarray | str, workdir: str | os.PathLike[str], shard_rows: int
) -> list[ShardJob]:
    """Cut ``(ids, vectors)`` into jobs of at most ``shard_rows`` rows, writing under ``workdir``.

    ``vectors`` may be the path of a ``[N, d]`` .npy: each job then carries only
    its row range (for process or cluster executors).
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    n = len(ids)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return [
        ShardJob(trained, os.path.join(os.fspath(workdir), f"shard{i:05d}.faiss"), ids[s : s + shard_rows],
                 (vectors, s, min(s + shard_rows, n)) if isinstance(vectors, str) else vectors[s : s + shard_rows])
        for i, s in enumerate(range(0, n, shard_rows))
    ]


def merge_on_disk(trained: str, shard_files: list[str], ivfdata: str | os.PathLike[str]) -> Any:
    """One index: the trained quantizers plus every shard's lists, copied into ``ivfdata``.

    Shards are opened memory-mapped (never loaded whole) and copied list by
    list, so the merge needs little memory whatever the total size. The
    returned index reads its lists from ``ivfdata``; write it with
    :func:`faiss.serialize_index` (which records the data file's path).
    """
    faiss = _faiss.import_faiss()
    index = faiss.read_index(trained)
    ivf = faiss.extract_index_ivf(index)
    if index.ntotal:
        raise ValueError("the trained index must be empty")
    if is_fast_scan(ivf):
        raise RelsearchError(
            f"on-disk inverted lists hold plain codes; {type(ivf).__name__} packs them in blocks "
            "(use an IVF-PQ spec without 'fs')"
        )
    shards, lists = [], faiss.InvertedListsPtrVector()
    for fname in shard_files:
        shard = faiss.read_index(fname, faiss.IO_FLAG_MMAP)
        sivf = faiss.extract_index_ivf(shard)
        if sivf.nlist != ivf.nlist or sivf.code_size != ivf.code_size:
            raise RelsearchError(f"shard {fname} was not built from this trained index")
        shards.append(shard)  # keeps each shard's mapped lists alive until the merge is done
        lists.push_back(sivf.invlists)
    with quiet_stdout():
        out = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.path.abspath(ivfdata))
        ntotal = out.merge_from_multiple(lists.data(), lists.size(), False, False)
    ivf.replace_invlists(out, True)
    out.this.disown()  # the index owns the lists now
    ivf.ntotal = index.ntotal = ntotal
    del shards
    return index


def is_fast_scan(ivf: Any) -> bool:
    """Whether the IVF index ``ivf`` packs its codes in fast-scan blocks."""
    faiss = _faiss.import_faiss()
    return ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)


def build_sharded(
    trained_index: Any,
    ids: np.ndarray,
    vectors: np.ndarray,
    ivfdata: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    shard_rows: int = DEFAULT_SHARD_ROWS,
    executor: Executor | None = None,
) -> Any:
    """Add ``vectors`` to ``trained_index`` in shards and merge them into ``ivfdata``.

    ``executor`` runs :func:`build_shard` over the jobs (default: in this
    process, one after another). Shard files are written under ``workdir``
    and deleted after the merge.
    """
    Path(workdir).mkdir(parents=True, exist_ok=True)
    trained = write_trained(trained_index, os.path.join(os.fspath(workdir), "trained.faiss"))
    jobs = plan_shards(trained, ids, vectors, workdir, shard_rows)
    files = list(executor.map(build_shard, jobs)) if executor is not None else [build_shard(j) for j in jobs]
    try:
        return merge_on_disk(trained, files, ivfdata)
    finally:
        for f in [*files, trained]:
            with contextlib.suppress(OSError):
                os.unlink(f)
        with contextlib.suppress(OSError):
            os.rmdir(workdir)  # only if empty: a caller's own folder with other files stays


def ivfdata_path(faiss_file: str | os.PathLike[str]) -> Path:
    """Where the on-disk inverted lists of the FAISS file ``faiss_file`` live."""
    return Path(faiss_file).with_suffix(IVFDATA_SUFFIX)


def on_disk_lists(faiss: Any, index: Any) -> Any | None:
    """The ``OnDiskInvertedLists`` of ``index``, or None when its lists are in memory."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def ivfdata_name_offset(payload: bytes | memoryview, ivfdata: str | os.PathLike[str]) -> int:
    """Byte offset, in a serialised on-disk index, of the data file's recorded path.

    FAISS stores the absolute path of the ``.ivfdata`` file inside the
    serialised index (a uint64 length, then the bytes). Recording where lets
    :func:`with_ivfdata_name` point a loaded index at the data file beside it,
    wherever the index directory has been moved or copied since.
    """
    name = os.fspath(ivfdata).encode()
    needle = struct.pack("<Q", len(name)) + name
    blob = bytes(payload)
    at = blob.rfind(needle)
    if at < 0:
        raise ValueError(f"the serialised index does not name {os.fspath(ivfdata)}")
    return at


def with_ivfdata_name(payload: bytes | memoryview, offset: int, ivfdata: str | os.PathLike[str]) -> bytes:
    """``payload`` with the data-file path recorded at ``offset`` replaced by ``ivfdata``."""
    blob = bytes(payload)
    (old_len,) = struct.unpack_from("<Q", blob, offset)
    name = os.fspath(ivfdata).encode()
    return blob[:offset] + struct.pack("<Q", len(name)) + name + blob[offset + 8 + old_len :]


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence C-level writes to fd 1 (FAISS prints "resizing ..." while merging lists).

    The CLI's ``--json`` output owns stdout; a stray line there would break it.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreter): nothing to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def rewrite_on_disk(
    index: Any, ivfdata: str | os.PathLike[str], remove_ids: np.ndarray, add_ids: np.ndarray,
    add_vectors: np.ndarray,
) -> Any:
    """A new on-disk index in ``ivfdata``: ``index``'s lists less ``remove_ids``, plus the added vectors.

    The lists of ``index`` are only read (other processes may be serving them).
    FAISS can grow or shrink on-disk lists in place, but re-slotting a list
    while the file is re-mapped returned wrong ids in our tests (faiss 1.15), so
    a new generation is always written whole: each old list is read through the
    map, filtered, and merged with a shard holding the new vectors.
    """
    faiss = _faiss.import_faiss()
    ivf = faiss.extract_index_ivf(index)
    remove = np.unique(np.asarray(remove_ids, dtype=np.int64))
    kept = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    cs = int(ivf.code_size)
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).copy()
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), size * cs).copy().reshape(size, cs)
        keep = ~np.isin(ids, remove) if len(remove) else np.ones(size, bool)
        if keep.any():
            ids, codes = np.ascontiguousarray(ids[keep]), np.ascontiguousarray(codes[keep])
            kept.add_entries(lst, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    fresh = _empty_copy(index)
    if len(add_ids):
        fresh.add_with_ids(np.ascontiguousarray(add_vectors, dtype=np.float32),
                           np.ascontiguousarray(add_ids, dtype=np.int64))
    out_index = _empty_copy(index)
    out_ivf = faiss.extract_index_ivf(out_index)
    lists = faiss.InvertedListsPtrVector()
    lists.push_back(kept)
    lists.push_back(faiss.extract_index_ivf(fresh).invlists)
    with quiet_stdout():
        out = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.path.abspath(ivfdata))
        ntotal = out.merge_from_multiple(lists.data(), lists.size(), False, False)
    out_ivf.replace_invlists(out, True)
    out.this.disown()
    out_ivf.ntotal = out_index.ntotal = ntotal
    del kept, fresh
    return out_index


def _empty_copy(index: Any) -> Any:
    """The trained quantizers of ``index`` with empty in-memory lists."""
    faiss = _faiss.import_faiss()
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    ivf = faiss.extract_index_ivf(copy)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns (and frees) them now
    ivf.ntotal = copy.ntotal = 0
    return copy
