"""Training state on disk that cannot run code when read back.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a checkpoint or a
feature cache downloaded from elsewhere (or planted in a shared run folder) could
execute anything on ``--resume`` or ``export``. Everything the trainer saves is
therefore tensors and plain values (dicts, lists, tuples, numbers, strings, None)
and is read with ``weights_only=True``: the unpickler then refuses any other object.

The random-number states are the one awkward part: NumPy's is a tuple holding an
ndarray, which :func:`rng_state` turns into a tensor. Checkpoints written before this
module still load: NumPy arrays are allowed as data (no callables) when reading.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relsearch.errors import RelsearchError


class UnsafeFileError(RelsearchError):
    """A file that would need arbitrary (code-running) unpickling to read."""


def _numpy_data_globals() -> list[Any]:
    # What an ndarray pickle names: a reconstructor, the class and its dtype classes.
    # None of them runs user code; they let old checkpoints' NumPy RNG states load.
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
            type(np.dtype(np.float64)), type(np.dtype(np.int64))]


def load_tensors(path: str | Path, what: str, mmap: bool = False) -> Any:
    """``torch.load`` restricted to tensors and plain values; ``what`` names the file in errors.

    ``mmap`` maps the tensors' storage from the file instead of reading it into memory.

    Raises :class:`UnsafeFileError` for a file holding any other object, and
    :class:`RelsearchError` for one that cannot be read at all.
    """
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"refusing {what} {path}: it holds pickled objects beyond tensors and plain values, "
            "which could run code when loaded; only load files this project wrote"
        ) from exc
    except Exception as exc:  # truncated, not a torch file, unreadable
        raise RelsearchError(f"cannot read {what} {path}: {exc}") from exc


def rng_state() -> dict[str, Any]:
    """torch, NumPy and Python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` (or an older checkpoint's raw tuple) holds."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    else:
        np.random.set_state(npy)
    py = state["python"]
    # A tuple may come back as a list; random.setstate wants (version, tuple, gauss).
    random.setstate((py[0], tuple(py[1]), py[2]))
