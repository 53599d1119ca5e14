"""What a damaged store still holds: records whose raw vectors pass their checksum.

``relsearch verify --repair`` rebuilds a store that cannot be read from its collection;
every vector salvaged here is one image it does not embed again. A record counts only
when its JSON parses, its content hash points back at it from the ``hashes`` table (a
second page), and its vector passes the CRC-32 over (id, bytes), so nothing is stored
under another picture's hash.

LMDB trusts the page pointers of the file it maps: walking a damaged one can crash
the process, not just raise. :func:`salvage` therefore walks it in a child process
(``python -m relsearch.store.salvage``); a crash or a hang there means nothing was
salvaged, never a failed repair.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: how long the child may walk a damaged store before the repair gives up on it
TIMEOUT_S = 600.0


@dataclass
class Salvaged:
    """Readable records, one row each: content hash, size, width, height, and per encoder
    the vector (``has`` False where it was not readable)."""

    sha256: list[str] = field(default_factory=list)
    shape: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))  # size, width, height
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> float32 [N, dim]
    has: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> bool [N]

    def __len__(self) -> int:
        return len(self.sha256)


def salvage(store_dir: Path, dims: dict[str, int], timeout: float = TIMEOUT_S) -> Salvaged:
    """What the damaged store at ``store_dir`` still holds for the encoders ``dims`` (name -> dim)."""
    names = list(dims)
    with tempfile.TemporaryDirectory(prefix="relsearch-salvage-") as tmp:
        out = Path(tmp) / "salvaged.npz"
        try:
            subprocess.run([sys.executable, "-m", "relsearch.store.salvage", str(store_dir), str(out),
                            json.dumps(dims)], timeout=timeout, capture_output=True, check=False)
            with np.load(out, allow_pickle=False) as data:
                found = Salvaged([s.decode() for s in data["sha256"]], data["shape"])
                for i, name in enumerate(names):
                    found.vectors[name], found.has[name] = data[f"v{i}"], data[f"m{i}"]
        except (subprocess.TimeoutExpired, OSError, ValueError, KeyError):
            return Salvaged()
    return found


def _walk(store_dir: Path, dims: dict[str, int]) -> dict[str, Any]:
    """The child's walk: every readable record id, then each record and vector on its own get."""
    import lmdb

    from relsearch.store.lmdb_store import id_key, key_id, unpack_vector

    out: dict[str, Any] = {"sha256": [], "shape": [], "vectors": {n: {} for n in dims}}
    env = lmdb.open(os.fsencode(store_dir), readonly=True, lock=False, max_dbs=32, subdir=True)
    dbs = {}
    for name in ["meta", "records", "hashes", *(f"vec:{n}" for n in dims)]:
        try:
            dbs[name] = env.open_db(name.encode(), create=False)
        except lmdb.Error:
            pass
    if "records" not in dbs or "hashes" not in dbs:
        return out
    ids: set[int] = set()
    with env.begin() as txn:
        try:
            ids.update(range(int(json.loads(bytes(txn.get(b"next_id", db=dbs["meta"]))))))
        except Exception:  # noqa: BLE001 - any damage: fall back to the cursor alone
            pass
        try:
            for k in txn.cursor(db=dbs["records"]).iternext(keys=True, values=False):
                ids.add(key_id(k))
        except Exception:  # noqa: BLE001 - a damaged branch ends the walk, not the salvage
            pass
        for rid in sorted(ids):
            try:
                rec = json.loads(bytes(txn.get(id_key(rid), db=dbs["records"])))
                sha = rec["sha256"]
                if len(sha) != 64 or sha.strip("0123456789abcdef") or \
                        txn.get(sha.encode(), db=dbs["hashes"]) != id_key(rid):
                    continue
                shape = [int(rec["size"]), int(rec["width"]), int(rec["height"])]
            except Exception:  # noqa: BLE001 - unreadable record: embedded again
                continue
            vecs = {}
            for name, dim in dims.items():
                try:
                    vec = unpack_vector(rid, txn.get(id_key(rid), db=dbs[f"vec:{name}"]))
                except Exception:  # noqa: BLE001 - unreadable vector: embedded again
                    continue
                if vec is not None and len(vec) == dim and np.isfinite(vec).all():
                    vecs[name] = vec
            if not vecs:
                continue
            for name, vec in vecs.items():
                out["vectors"][name][len(out["sha256"])] = vec
            out["sha256"].append(str(sha))
            out["shape"].append(shape)
    return out


def main(argv: list[str]) -> None:
    store_dir, out, dims = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    dims = {str(k): int(v) for k, v in dims.items()}
    data = _walk(store_dir, dims)
    n = len(data["sha256"])
    arrays = {"sha256": np.array([s.encode() for s in data["sha256"]], dtype="S64"),
              "shape": np.array(data["shape"], dtype=np.int64).reshape(n, 3)}
    for i, (name, dim) in enumerate(dims.items()):
        vecs, has = np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool)
        for row, vec in data["vectors"][name].items():
            vecs[row], has[row] = vec, True
        arrays[f"v{i}"], arrays[f"m{i}"] = vecs, has
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)  # whole or absent: a crash mid-write salvages nothing


if __name__ == "__main__":
    main(sys.argv[1:])
