"""The on-disk format of one vector index file (one file, replaced atomically)::

    b"RSFAISS\\n"                 magic, 8 bytes
    uint64 little-endian L        length of the header
    32 bytes                      sha256 of the header
    L bytes of UTF-8 JSON         format, spec, nprobe, rerank, build facts,
                                  payload length and sha256
    payload                       faiss.serialize_index of the CPU index

The header travels with the index so the search parameters can never drift
from the index they were tuned for, and the checksum turns any truncation or
bit rot into a clean error before faiss parses a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

import numpy as np

from relsearch.atomic import atomic_write
from relsearch.errors import RelsearchError, first_line
from relsearch.safe_io import read_regular

MAGIC = b"RSFAISS\n"
FORMAT_VERSION = 1


def write_index_file(path: str | os.PathLike[str], meta: dict[str, Any], payload: np.ndarray) -> None:
    """Write ``meta`` (JSON-serialisable) and the serialised index ``payload`` (uint8) atomically."""
    path = os.fspath(path)
    meta = {**meta, "format": FORMAT_VERSION, "payload_bytes": int(payload.nbytes),
            "payload_sha256": hashlib.sha256(payload.data).hexdigest()}
    header = json.dumps(meta, sort_keys=True).encode("utf-8")
    try:
        with atomic_write(path) as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", len(header)))
            f.write(hashlib.sha256(header).digest())
            f.write(header)
            f.write(payload.data)
    except OSError as e:
        raise RelsearchError(f"cannot write index file {path}: {e.strerror or e}") from None


def read_index_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], memoryview]:
    """The header and the checked payload of a file written by :func:`write_index_file`.

    Any damage (bad magic, truncation, checksum, unknown format) raises one-line
    :class:`RelsearchError` saying to rebuild.
    """
    path = os.fspath(path)
    try:
        # a FIFO or device in its place is refused at once, never waited on or read forever
        blob = read_regular(path, limit=None)
    except FileNotFoundError:
        raise RelsearchError(f"index file not found: {path}") from None
    except OSError as e:
        raise RelsearchError(f"cannot read index file {path}: {e.strerror or e}") from None

    def corrupt(why: str) -> RelsearchError:
        return RelsearchError(f"corrupt index file {path}: {why}; rebuild the index")

    if len(blob) < len(MAGIC) + 8 + 32 or blob[: len(MAGIC)] != MAGIC:
        raise corrupt("not a relsearch index (bad magic)")
    (hlen,) = struct.unpack_from("<Q", blob, len(MAGIC))
    start = len(MAGIC) + 8 + 32
    if start + hlen > len(blob):
        raise corrupt("truncated header")
    header = blob[start : start + hlen]
    if hashlib.sha256(header).digest() != blob[start - 32 : start]:
        raise corrupt("header checksum mismatch")
    try:
        meta = json.loads(header.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("header is not an object")
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        size, digest = int(meta["payload_bytes"]), str(meta["payload_sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise corrupt(f"bad header ({first_line(e)})") from None
    payload = memoryview(blob)[start + hlen :]
    if len(payload) != size:
        raise corrupt(f"payload is {len(payload)} bytes, header says {size} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise corrupt("checksum mismatch")
    return meta, payload
