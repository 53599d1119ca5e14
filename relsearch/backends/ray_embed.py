"""The embedding step of a build on Ray Data (``build-index --ray [ADDRESS]``).

The driver (``relsearch.build``) scans, diffs against LMDB and commits in chunks with a
generation switch exactly as a local build does; :class:`RayEmbedding` only replaces the
step that turns the list of new paths into vectors:

* decode (+ the encoder's preprocessing where it offers a weight-free ``preprocessor()``)
  runs as Ray Data CPU tasks;
* the encoders run in an actor pool (``map_batches`` with a class: weights load once per
  actor), one GPU per actor where the cluster has GPUs, ``actors`` CPU actors otherwise;
* results stream back in input order (``iter_batches``) so the driver allocates the same
  record ids a local build would.

Decoding uses the same function as a local build, so a bad file gets the same message.
The driver never loads model weights: one Ray task on a worker reports each encoder's
dim, kind and weight fingerprint, which the build checks against the index before it
writes anything. Files are read by the workers: on a multi-machine cluster the collection
must be on a path every node sees.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from relsearch.collection import Decoded
from relsearch.encoders.base import EncoderSpec, PipelinedEncoder
from relsearch.errors import RelsearchError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from relsearch.build import BuildOptions, EmbeddedBatch

#: decoded images are downscaled like a local build's (relsearch.build decodes at 512).
MAX_SIDE = 512
#: logical CPUs a decode task asks for: less than an actor's, so Ray never fuses decoding
#: into the actors (it would then wait on the model instead of running beside it).
DECODE_CPUS = 0.25


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RelsearchError(f"--ray needs the 'ray' extra: pip install 'relsearch[ray]' ({exc})") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray part of a build runs."""

    #: None: start a local Ray for the build; "auto": join the running cluster (RAY_ADDRESS /
    #: ``ray start``); "ray://host:port" (Ray Client) or "host:port" of a head node.
    address: str | None = None
    #: encoder actors on a cluster without GPUs (default: half the cluster's CPUs, at least 1);
    #: with GPUs, one actor per GPU up to this many.
    actors: int | None = None
    #: CPUs of a locally started Ray (default: all of this machine's).
    num_cpus: int | None = None
    #: rows per batch through decode and the encoders (default: the build's --batch-size).
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--ray-actors must be >= 1, got {self.actors!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.address is not None and not self.address.strip():
            raise ValueError("--ray address is empty; give none, 'auto' or ray://HOST:PORT")


@dataclass(frozen=True)
class RemoteEncoder:
    """What the driver knows of an encoder whose weights live only in Ray actors."""

    name: str
    dim: int
    kind: str
    fingerprint: str
    spec: str
    #: a picklable, weight-free ``images -> batch`` for the CPU tasks, or None (the actor preprocesses)
    preprocessor: Callable[[list[Any]], Any] | None = None


# ---------------------------------------------------------------------------------------------
# Code that runs on Ray workers. Module-level so Ray pickles it by reference.
def _prepare_worker(sys_path: list[str], registry: dict[str, str]) -> None:
    """Make encoders registered at run time (plugins, tests) loadable on a worker too."""
    for entry in sys_path:
        if entry and entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)
    from relsearch import encoders

    for name, target in registry.items():
        encoders.REGISTRY.setdefault(name, target)


def _load_on_worker(spec: str, device: str | None, sys_path: list[str], registry: dict[str, str]) -> Any:
    _prepare_worker(sys_path, registry)
    from relsearch.encoders import get_encoder

    return get_encoder(spec, device=device)


def _describe(spec: str, device: str | None, sys_path: list[str], registry: dict[str, str]) -> RemoteEncoder:
    enc = _load_on_worker(spec, device, sys_path, registry)
    from relsearch.encoders.base import PortablePreprocessing

    return RemoteEncoder(enc.name, int(enc.dim), enc.kind, enc.fingerprint, spec,
                         enc.preprocessor() if isinstance(enc, PortablePreprocessing) else None)


def _decode_batch(batch: dict[str, np.ndarray], preprocessors: dict[str, Callable[[list[Any]], Any]],
                  ) -> dict[str, np.ndarray]:
    """CPU task: decode (as a local build does) and, where possible, preprocess for each encoder."""
    from relsearch.collection import decode_one

    n = len(batch["i"])
    errors = np.empty(n, dtype=object)
    payloads = np.empty(n, dtype=object)
    width = np.zeros(n, dtype=np.int64)
    height = np.zeros(n, dtype=np.int64)
    ok: list[tuple[int, Any]] = []
    for j in range(n):
        d = decode_one(int(batch["i"][j]), str(batch["path"][j]), MAX_SIDE)
        errors[j] = d.error or ""
        payloads[j] = b""
        if d.ok:
            width[j], height[j] = d.width, d.height
            ok.append((j, d.image))
    # preprocess row groups that need the same encoders together (one call per encoder)
    groups: dict[str, list[tuple[int, Any]]] = {}
    for j, image in ok:
        groups.setdefault(str(batch["need"][j]), []).append((j, image))
    for need, members in groups.items():
        names = need.split(",")
        images = [image for _, image in members]
        prepared = {name: _as_numpy(preprocessors[name](images)) for name in names if name in preprocessors}
        for row, (j, image) in enumerate(members):
            item = {f"x/{name}": x[row] for name, x in prepared.items()}
            if len(prepared) < len(names):  # some encoder preprocesses in its actor
                item["image"] = np.asarray(image)
            payloads[j] = pack_arrays(item)
    return {"i": batch["i"], "need": batch["need"], "error": errors, "width": width, "height": height,
            "payload": payloads}


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as ``.npz`` bytes: rows travel between Ray tasks without pickles."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays :func:`pack_arrays` packed; refuses object arrays (no unpickling)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _as_numpy(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


class _EncoderActor:
    """One Ray actor: loads every encoder of the build once, embeds batch after batch."""

    def __init__(self, specs: list[str], device: str | None, threads: int | None,
                 sys_path: list[str], registry: dict[str, str]) -> None:
        if threads:  # actors share the cores: no oversubscription (torch and ONNX Runtime alike)
            from relsearch.threads import use_threads

            use_threads(threads)
        self.encoders = {}
        for spec in specs:
            enc = _load_on_worker(spec, device, sys_path, registry)
            self.encoders[enc.name] = enc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        n = len(batch["i"])
        vecs: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        groups: dict[str, list[int]] = {}
        items: dict[int, dict[str, Any]] = {}
        for j in range(n):
            if not batch["error"][j]:
                items[j] = unpack_arrays(batch["payload"][j])
                groups.setdefault(str(batch["need"][j]), []).append(j)
        for need, rows in groups.items():
            for name in need.split(","):
                enc = self.encoders[name]
                if f"x/{name}" in items[rows[0]]:
                    out = enc.embed_batch(_as_batch(enc, np.stack([items[j][f"x/{name}"] for j in rows])))
                else:
                    images = [Image.fromarray(items[j]["image"]) for j in rows]
                    out = enc.embed_batch(enc.preprocess_batch(images)) if isinstance(enc, PipelinedEncoder) \
                        else enc.embed(images)
                for j, row in zip(rows, np.asarray(out, dtype=np.float32)):
                    vecs[j][name] = row
        out_col = np.empty(n, dtype=object)
        for j in range(n):
            out_col[j] = pack_arrays(vecs[j])
        return {"i": batch["i"], "error": batch["error"], "width": batch["width"], "height": batch["height"],
                "vecs": out_col}


def _as_batch(enc: Any, x: np.ndarray) -> Any:
    """Preprocessed pixels as ``enc.embed_batch`` takes them: numpy on ONNX Runtime (no torch there)."""
    if getattr(enc, "runtime", None) == "onnx":
        return np.ascontiguousarray(x)
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------------
class RayEmbedding:
    """A build's embedding step on Ray Data; use as a context manager around ``build_index``.

    Ray is connected (or a local one started) on first use, so an unchanged rebuild never
    starts it; a Ray started here is shut down on exit, a joined one is left running.
    """

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self._ray: Any = None
        self._started = False
        self._gpus = 0.0
        self._cpus = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> RayEmbedding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        ray = _require_ray()
        if not ray.is_initialized():
            address = self.options.address
            kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
            try:
                if address is None:
                    # address="local": a new Ray for this build even where `ray start` runs one
                    ray.init(address="local", num_cpus=self.options.num_cpus or os.cpu_count() or 1,
                             include_dashboard=False,
                             **kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                what = "start a local Ray" if address is None else f"connect to Ray at {address}"
                raise RelsearchError(f"cannot {what}: {first_line(exc)}") from exc
            self._started = True
        resources = ray.cluster_resources()
        self._gpus = float(resources.get("GPU", 0.0))
        self._cpus = float(resources.get("CPU", 1.0))
        self._ray = ray
        return ray

    # -- EmbeddingStep -----------------------------------------------------------------------
    def load(self, spec: EncoderSpec, device: str | None = None) -> RemoteEncoder:
        """Describe ``spec`` from a worker (dim, kind, fingerprint), without loading it here."""
        ray = self._connect()
        from relsearch.encoders import resolve_factory

        resolve_factory(spec.name)  # an unknown name fails here, with the registry's message
        task = ray.remote(_describe).options(num_cpus=1 if not self._gpus else 0,
                                             num_gpus=1 if self._gpus else 0)
        try:
            return ray.get(task.remote(str(spec), self._device(device), *self._shipping([spec])))
        except ray.exceptions.RayTaskError as exc:
            raise _user_error(exc, f"encoder {spec} failed to load on a Ray worker") from None

    def embed(self, paths: list[str], missing: list[list[str]], encoders: list[Any],
              opts: BuildOptions) -> Iterator[EmbeddedBatch]:
        ray = self._connect()
        from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

        batch = self.options.batch_size or opts.batch_size
        actors, actor_cpus, threads = self._pool_shape()
        specs = [e.spec for e in encoders]
        preprocessors = {e.name: e.preprocessor for e in encoders if e.preprocessor is not None}
        items = [{"i": i, "path": p, "need": ",".join(m)} for i, (p, m) in enumerate(zip(paths, missing))]

        ctx = DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        # Ray Data logs each dataset's start and plan at INFO: shown with -v, not by default.
        data_log = logging.getLogger("ray.data")
        saved_level = data_log.level
        if not logging.getLogger("relsearch").isEnabledFor(logging.INFO):
            data_log.setLevel(logging.ERROR)
        # Input order kept: the driver allocates record ids in the order rows come back,
        # so a Ray build gives the same ids as a local one.
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False  # the build's own bar counts committed rows
        try:
            ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
            # A few long-lived decode workers: each new one pays its imports (PIL, numpy, torch for
            # a preprocessor) again, and decoding is a small share of the work next to a model.
            ds = ds.map_batches(_decode_batch, fn_kwargs={"preprocessors": preprocessors},
                                batch_size=batch, num_cpus=DECODE_CPUS,
                                compute=TaskPoolStrategy(size=max(1, int(self._cpus) // 2)))
            ds = ds.map_batches(
                _EncoderActor,
                fn_constructor_kwargs={"specs": specs, "device": self._device(opts.device), "threads": threads,
                                       "sys_path": self._shipping(specs)[0],
                                       "registry": self._shipping(specs)[1]},
                batch_size=batch,
                compute=ActorPoolStrategy(size=actors),
                num_cpus=actor_cpus,
                num_gpus=1 if self._gpus else 0,
            )
            for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                yield [(Decoded(int(i), paths[int(i)], None, str(err) or None, int(w), int(h)),
                        unpack_arrays(v) if not err else {})
                       for i, err, w, h, v in zip(out["i"], out["error"], out["width"], out["height"],
                                                  out["vecs"])]
        except ray.exceptions.RayTaskError as exc:
            raise _user_error(exc, "the Ray embedding failed") from None
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
            data_log.setLevel(saved_level)

    def executor(self) -> RayTasks:
        """A ``map(fn, items)`` over Ray tasks (sharded index builds run their shards through it)."""
        return RayTasks(self)

    # -- helpers ---------------------------------------------------------------------------
    def _pool_shape(self) -> tuple[int, float, int]:
        """(actors, logical CPUs per actor, torch threads per actor)."""
        if self._gpus:
            actors = max(1, min(int(self._gpus), self.options.actors or int(self._gpus)))
            return actors, 1.0, 0
        actors = self.options.actors or max(1, int(self._cpus) // 2)
        # Leave room in Ray's accounting for decode tasks beside the actors; the actors'
        # torch threads share the real cores between them.
        # (Rounded down: a sum over the cluster's CPUs would leave decode tasks unscheduled.)
        per_actor = math.floor(100 * min(1.0, (self._cpus - 2 * DECODE_CPUS) / actors)) / 100
        threads = max(1, int(self._cpus) // actors)
        return actors, max(0.01, per_actor), threads

    def _device(self, device: str | None) -> str | None:
        if device:
            return device
        return "cuda" if self._gpus else "cpu"

    @staticmethod
    def _shipping(specs: list[Any]) -> tuple[list[str], dict[str, str]]:
        """Import path and registry entries a worker needs to load these encoders."""
        from relsearch import encoders

        names = [EncoderSpec.parse(str(s)).name for s in specs]
        return list(sys.path), {n: encoders.REGISTRY[n] for n in names if n in encoders.REGISTRY}


class RayTasks:
    """``concurrent.futures``-style ``map`` on Ray: one task per item, results in order."""

    def __init__(self, embedding: RayEmbedding) -> None:
        self._embedding = embedding

    def map(self, fn: Callable[..., Any], *iterables: Any) -> Iterator[Any]:
        ray = self._embedding._connect()
        task = ray.remote(fn)
        refs = [task.remote(*args) for args in zip(*iterables)]
        try:
            yield from (ray.get(ref) for ref in refs)
        except ray.exceptions.RayTaskError as exc:
            raise _user_error(exc, f"a Ray task ({getattr(fn, '__name__', fn)}) failed") from None


def _user_error(exc: BaseException, what: str) -> RelsearchError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RelsearchError):
        return RelsearchError(str(cause))
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return RelsearchError(f"{what}: {lines[-1] if lines else type(exc).__name__}")


@contextlib.contextmanager
def embedding_step(ray: str | None, actors: int | None = None) -> Iterator[RayEmbedding | None]:
    """The CLI's ``--ray [ADDRESS]`` / ``--ray-actors N``: a :class:`RayEmbedding`, or None (local)."""
    if ray is None:
        if actors is not None:
            raise RelsearchError("--ray-actors needs --ray")
        yield None
        return
    address = None if ray == "local" else ray
    if address is not None and not is_ray_address(address):
        raise RelsearchError(f"--ray {address!r} is not an address: give none, 'auto', ray://HOST:PORT "
                             "or HOST:PORT")
    try:
        options = RayOptions(address=address, actors=actors)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    with RayEmbedding(options) as step:
        yield step


def is_ray_address(text: str) -> bool:
    """``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (what ``ray.init(address=...)`` takes)."""
    import re

    return text == "auto" or text.startswith("ray://") or bool(re.fullmatch(r"[\w.\-\[\]:]+:\d+", text))
