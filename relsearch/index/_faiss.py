"""Loading faiss, and the optional GPU helpers.

faiss is imported on first use, never at ``import relsearch``.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from typing import Any

log = logging.getLogger(__name__)

_GPU_RESOURCES: Any = None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _tune_runtime_env() -> None:
    """Environment settings the bundled native libraries read once, at load time."""
    if "faiss" in sys.modules:
        return
    _pin_openblas_kernel()
    # faiss parallelises many tiny loops (each 8-d PQ slice of k-means, each
    # probe of a single query). With OpenMP's default busy-waiting, a core that
    # is shared with any other process turns every barrier into a stall (PQ
    # training on a busy 2-core machine slows several-fold per slice).
    # Sleeping waits cost microseconds when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _pin_openblas_kernel() -> None:
    """Name the OpenBLAS kernel when the bundled OpenBLAS would guess wrong.

    The faiss-cpu wheel bundles an older OpenBLAS whose run-time CPU detection
    does not know recent Xeons and falls back to a generic kernel: matrix
    products (k-means, flat search, coarse assignment) then run several times
    slower. The
    environment variable is read once, when the library loads, so it has to be
    set before faiss is first imported. A value the user set is respected.
    """
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    flags = _cpu_flags()
    if "avx512f" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


def import_faiss() -> Any:
    """Return the faiss module (imported lazily)."""
    _tune_runtime_env()
    fresh = "faiss" not in sys.modules
    import faiss

    if fresh:  # its OpenMP pool gets the thread count chosen before it loaded
        from relsearch.threads import apply_to_native

        apply_to_native()
    return faiss


@functools.cache
def gpu_count() -> int:
    """Number of GPUs faiss can use; 0 with faiss-cpu. Asked once per process."""
    faiss = import_faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception as exc:  # a broken CUDA install must not stop CPU search
        log.warning("faiss GPU support unusable, using the CPU: %s: %s", type(exc).__name__, exc)
        return 0


def gpu_resources() -> Any:
    """One shared ``StandardGpuResources`` (scratch memory, streams) per process."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = import_faiss().StandardGpuResources()
    return _GPU_RESOURCES


def to_gpu(cpu_index: Any) -> Any | None:
    """A GPU copy of ``cpu_index`` for searching, or None when it cannot live on a GPU.

    The CPU index stays the master copy (it supports removal and serialisation,
    which GPU indexes do not), so a failure here only means searching on the CPU.
    """
    faiss = import_faiss()
    try:
        co = faiss.GpuClonerOptions()
        # float16 lookup tables let GPU IVF-PQ handle more than 48 sub-quantizers
        # and halve shared-memory use; the exact re-ranking step makes up the
        # small precision loss.
        co.useFloat16 = True
        return faiss.index_cpu_to_gpu(gpu_resources(), 0, cpu_index, co)
    except Exception as exc:  # any GPU failure: the CPU copy answers instead
        log.warning("cannot copy the index to the GPU, searching on the CPU: %s: %s", type(exc).__name__, exc)
        return None


def gpu_flat_for_training(d: int, metric: int) -> Any | None:
    """A GPU flat index to do k-means assignment in ``IndexIVF.train``, or None."""
    faiss = import_faiss()
    try:
        flat = faiss.IndexFlatIP(d) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
        return faiss.index_cpu_to_gpu(gpu_resources(), 0, flat)
    except Exception as exc:  # any GPU failure: k-means runs on the CPU instead
        log.warning("cannot train on the GPU, training on the CPU: %s: %s", type(exc).__name__, exc)
        return None


def set_gpu_nprobe(gpu_index: Any, nprobe: int) -> None:
    faiss = import_faiss()
    faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", int(nprobe))
