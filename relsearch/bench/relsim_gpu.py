"""relsim numerics on a GPU: bf16 on CUDA against float32 on CPU, on the tiny model.

Builds the tiny random-init relsim release (tests/tiny_models.py) in a temp
dir, embeds the same images three ways (CPU float32, CUDA float32, CUDA
bfloat16) and reports how far the CUDA vectors are from the CPU ones, plus
whether an image embedded alone matches it embedded in a batch on CUDA.
Standalone (not collected by pytest); exits 0 with a message when there is no
CUDA device.

    python benchmarks/relsim_gpu.py [--images 16] [--out results.json]   # from a checkout

The tiny model comes from the checkout's ``tests/tiny_models.py`` (test code, not
installed); the thin script ``benchmarks/relsim_gpu.py`` puts ``tests/`` on the path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _compare(ref, other) -> dict[str, float]:
    import numpy as np

    diff = other - ref
    rel = np.linalg.norm(diff, axis=1) / np.linalg.norm(ref, axis=1)
    cos = np.sum(ref * other, axis=1)
    return {
        "max_abs_diff": float(np.abs(diff).max()),
        "rel_diff_mean": float(rel.mean()),
        "rel_diff_max": float(rel.max()),
        "cosine_min": float(cos.min()),
    }


def _embed(release: Path, device: str, dtype: str | None, images: list, batch: int) -> tuple:
    import torch

    from relsearch.encoders import relsim as R

    enc = R.load(str(release), device=device, options=R.RelsimOptions(micro_batch_size=batch, dtype=dtype))
    enc.embed(images[:1])  # warm-up (CUDA context, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vecs = enc.embed(images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return enc, vecs, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="number of test images")
    parser.add_argument("--batch", type=int, default=8, help="micro-batch size")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here too")
    parser.add_argument("--device", default="cuda", help="accelerator to compare against CPU float32 "
                        "(cpu checks the script itself without a GPU)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    try:
        import tiny_models as tm  # tests/tiny_models.py of a checkout
    except ImportError:
        print("error: tests/tiny_models.py is not importable; run benchmarks/relsim_gpu.py from a checkout",
              file=sys.stderr)
        return 2

    result: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "images": args.images}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        result["message"] = "no CUDA device: nothing to compare (run this on a machine with a GPU)"
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        return 0

    import transformers

    dev = args.device
    result["device_name"] = torch.cuda.get_device_name(0) if dev.startswith("cuda") else dev
    result["transformers"] = transformers.__version__
    images = tm.tiny_images(args.images, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        release = tm.make_tiny_relsim(Path(tmp) / "tiny")
        _, cpu, t_cpu = _embed(release, "cpu", None, images, args.batch)
        _, gpu32, t_gpu32 = _embed(release, dev, "float32", images, args.batch)
        # dtype None: the encoder's own choice (bfloat16 on CUDA); forced elsewhere.
        enc16, gpu16, t_gpu16 = _embed(release, dev, None if dev.startswith("cuda") else "bfloat16",
                                       images, args.batch)
        alone16 = np.concatenate([enc16.embed([img]) for img in images])
        tag = dev.split(":")[0]
        result.update({
            "bf16_dtype_used": str(enc16._model_dtype()),
            "seconds": {"cpu_fp32": t_cpu, f"{tag}_fp32": t_gpu32, f"{tag}_bf16": t_gpu16},
            f"{tag}_fp32_vs_cpu_fp32": _compare(cpu, gpu32),
            f"{tag}_bf16_vs_cpu_fp32": _compare(cpu, gpu16),
            f"{tag}_bf16_alone_vs_batched": _compare(gpu16, alone16),
            "unit_norm_max_err_bf16": float(np.abs(np.linalg.norm(gpu16, axis=1) - 1).max()),
        })
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
