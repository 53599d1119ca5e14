"""``relsearch bench relsim``: relsim's embedding speed at full size, fast path vs the paper's loop.

Builds Qwen2.5-VL with the published 7B shapes (``relsearch/bench/qwen2_5_vl_7b.json``)
and random weights directly on the device, adds the paper's LoRA (r 16, alpha 32, q_proj /
v_proj), ``<|query|>`` and Linear(3584 -> 384), and runs the project's own relsim encoder on
it. Random weights change no timing. The images mix square, landscape, portrait, wide (3:1)
and tall (1:3) shapes. For each sizing (``aspect``: the default, as the released inference
sizes images, batches grouped by patch grid; ``square``: the 448 px centre crop, one grid)
and batch size it reports images/s of the fast path (:mod:`relsearch.encoders.relsim.fast`),
peak GPU memory and the share of time in the vision tower; in the same run, the paper's
procedure on the same pixels as the baseline (one image per call, full forward with
``output_hidden_states``, LoRA unmerged) and how close the two paths' vectors are. The
top-level ``runs``, ``best``, ``paper_procedure`` and ``equivalence`` are the first sizing's.

``--arch tiny`` runs the same code on the tiny test architecture (CPU, seconds): the CI test.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError


@dataclass
class RelsimBenchConfig:
    device: str = "cuda"
    arch: str = "full"  # "full", "tiny" or a JSON path
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    images: int = 256
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 elsewhere
    side: int = 448
    paper_images: int = 16
    equivalence_images: int = 16
    seed: int = 0
    #: "aspect" (the released sizing, bucketed by grid) and / or "square" (the centre crop).
    sizings: tuple[str, ...] = ("aspect", "square")

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes!r}")
        if self.images < 1 or self.paper_images < 1 or self.equivalence_images < 1:
            raise ValueError("image counts must be >= 1")
        if not self.sizings or set(self.sizings) - {"aspect", "square"}:
            raise ValueError(f"sizings must be aspect and/or square, got {self.sizings!r}")


def build_random_relsim(arch: dict[str, Any], device: str, dtype: str | None, pixels: tuple[int, int],
                        seed: int = 0, max_image_size: int | None = None, square: bool = False) -> Any:
    """The project's :class:`RelsimEncoder` around a random-init model of shapes ``arch``."""
    import torch
    from peft import LoraConfig

    from relsearch.bench import relsim_synthetic as synthetic
    from relsearch.encoders.relsim.model import RelsimEncoder, RelsimOptions, relsim_module_class
    from relsearch.encoders.relsim.release import EMBED_DIM, LORA_SETTINGS, peft_wrap

    options = RelsimOptions(max_image_size=max_image_size, dtype=dtype, square=square)
    torch_dtype = options.torch_dtype(device)
    processor = synthetic.processor(with_query=True, pixels=pixels)
    tok = processor.tokenizer
    model = synthetic.random_model(arch, tok, device=device, dtype=torch_dtype, seed=seed)
    query_id = tok.convert_tokens_to_ids(synthetic.QUERY_TOKEN)
    torch.manual_seed(seed + 1)
    backbone = peft_wrap(model, LoraConfig(**LORA_SETTINGS))
    with torch.no_grad():  # a non-zero adapter, so merging it changes the weights
        for name, param in backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    hidden = model.config.get_text_config().hidden_size
    with torch.device(device):
        projection = torch.nn.Linear(hidden, EMBED_DIM)
    rows = model.get_input_embeddings().weight.shape[0]
    module = relsim_module_class()(backbone, projection, query_id, rows)
    module.eval()
    return RelsimEncoder(module, processor, device, options, base_source="random", base_identity="random",
                         fingerprint="random")


def _images(n: int, seed: int) -> list[Any]:
    """Photograph-sized RGB images (smooth gradients plus noise): square, 4:3, 3:4, 3:2, 3:1 and 1:3."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (800, 600), (512, 512), (1024, 683), (1200, 400), (400, 1200)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (1 + c) + yy * (3 - c)) % 256 for c in range(3)], axis=-1)
        noise = rng.integers(0, 40, size=(h, w, 3))
        out.append(Image.fromarray(((base + noise) % 256).astype(np.uint8), mode="RGB"))
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paper_vectors(encoder: Any, images: list[Any]) -> tuple[np.ndarray, float]:
    """The paper's procedure: one image per call, full forward with hidden states, unmerged LoRA.

    Returns (vectors, seconds). Images are sized by ``encoder.fit``: as the released
    ``process_vision_info`` sizes them, or with the encoder's square crop, so the two
    paths are compared on the same pixels.
    """
    import torch

    encoder.unmerge_lora()
    device = encoder.device
    prompt = encoder.prompt()
    out = []
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for img in images:
            inputs = encoder.processor(text=[prompt], images=[encoder.fit(img)], return_tensors="pt")
            inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            inputs["pixel_values"] = inputs["pixel_values"].to(encoder._model_dtype())
            result = encoder.module.backbone(**inputs, output_hidden_states=True, use_cache=False)
            at = (inputs["input_ids"][0] == encoder.query_token_id).nonzero().flatten()
            hidden = result.hidden_states[-1][0, at]
            proj = encoder.module.projection
            vec = torch.nn.functional.normalize(proj(hidden.to(proj.weight.dtype)).float(), dim=-1)
            out.append(vec.cpu().numpy())
    _sync(device)
    return np.concatenate(out, axis=0), time.perf_counter() - t0


def prepared_batches(encoder: Any, images: list[Any], batch: int) -> list[dict[str, Any]]:
    """The fast path's CPU work as ``embed_fast`` does it: fit, sort by grid, ``batch`` images per batch."""
    fast = encoder.fast()
    fitted = [encoder.fit(img) for img in images]
    order = sorted(range(len(fitted)), key=lambda i: fast.grid_of(fitted[i]))
    return [fast.prepare_fitted([fitted[r] for r in order[i : i + batch]]) for i in range(0, len(order), batch)]


def _fast_rate(encoder: Any, images: list[Any], batch: int, device: str) -> dict[str, float]:
    import torch

    fast = encoder.fast()
    t0 = time.perf_counter()
    prepared = prepared_batches(encoder, images, batch)
    prepare_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fast.embed_prepared(prepared[0])  # warm-up (kernels, allocator)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for b in prepared:
        fast.embed_prepared(b)
        n += int(b["n"])
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    vision = _vision_share(fast, prepared[0], device)
    forwards = sum(len(b["groups"]) for b in prepared)
    return {"batch": batch, "img_per_s": n / seconds, "peak_gb": peak, "vision_share": vision, "images": n,
            "forwards": forwards, "cpu_prepare_img_per_s": n / max(prepare_s, 1e-9)}


def _vision_share(fast: Any, batch: dict[str, Any], device: str, repeats: int = 3) -> float:
    """Time of the vision tower alone over the time of the whole fast forward, first grid of the batch."""
    import torch

    enc = fast.encoder
    visual = enc.module.backbone.get_base_model().model.visual
    (h, w), rows, pixel_values = batch["groups"][0]
    n = len(rows)
    prompt = fast.prompt_for(h, w)
    values = pixel_values.to(device).to(enc._model_dtype())
    grid = prompt.grid_thw.expand(n, -1)
    with torch.inference_mode(), fast._installed():
        for timed in (False, True):  # first pass warms up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                visual(values, grid_thw=grid)
            _sync(device)
            t_vision = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(repeats):
                fast.forward_group(prompt, pixel_values, n)
            _sync(device)
            t_all = time.perf_counter() - t0
            if timed:
                return float(min(1.0, t_vision / max(t_all, 1e-9)))
    return 0.0


def _sizing(encoder: Any, config: RelsimBenchConfig, sizing: str, images: list[Any]) -> dict[str, Any]:
    """Speed, the paper's loop and equivalence for one sizing (``aspect`` or ``square``)."""
    from dataclasses import replace

    import torch

    square = sizing == "square"
    encoder.options = replace(encoder.options, square=square, max_image_size=config.side if square else None)
    runs = [_fast_rate(encoder, images[: config.images], b, config.device) for b in config.batch_sizes]
    # Equivalence on the same pixels: fast path (merged, batched) vs the paper's loop (unmerged).
    eq_images = images[: config.equivalence_images]
    fast_vecs = encoder.embed_fast(eq_images, batch_size=max(config.batch_sizes))
    paper_vecs, _ = paper_vectors(encoder, eq_images)
    cos = np.sum(fast_vecs * paper_vecs, axis=1)
    if config.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _, paper_s = paper_vectors(encoder, images[: config.paper_images])
    paper_peak = torch.cuda.max_memory_allocated() / 2**30 if config.device.startswith("cuda") else 0.0
    fast = encoder.fast()
    grids = [fast.grid_of(encoder.fit(img)) for img in images[: config.images]]
    cell = int(fast.image_processor.merge_size) * int(fast.image_processor.patch_size)
    best = max(runs, key=lambda r: r["img_per_s"])
    return {
        "side": encoder.square_side() if square else None,
        "grids": len(set(grids)),
        "visual_tokens_per_image": float(np.mean([h * w for h, w in grids])) / cell**2,
        "runs": runs,
        "best": {"batch": best["batch"], "img_per_s": best["img_per_s"], "peak_gb": best["peak_gb"]},
        "paper_procedure": {"img_per_s": config.paper_images / paper_s, "peak_gb": paper_peak,
                            "images": config.paper_images},
        "equivalence": {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                        "images": len(eq_images)},
    }


def run(config: RelsimBenchConfig) -> dict[str, Any]:
    import torch

    from relsearch.bench import relsim_synthetic as synthetic

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise RelsearchError("bench relsim --device cuda: torch sees no CUDA device here (try --device cpu --arch tiny)")
    if config.arch == "full":
        arch, pixels = synthetic.read_arch(), synthetic.FULL_PIXELS
    elif config.arch == "tiny":
        arch, pixels = synthetic.TINY_ARCH, synthetic.TINY_PIXELS
    else:
        arch, pixels = synthetic.read_arch(config.arch), synthetic.FULL_PIXELS
    t0 = time.perf_counter()
    encoder = build_random_relsim(arch, config.device, config.dtype, pixels, seed=config.seed)
    build_s = time.perf_counter() - t0
    images = _images(max(config.images, config.paper_images, config.equivalence_images), config.seed)
    sizings = {name: _sizing(encoder, config, name, images) for name in config.sizings}
    first = sizings[config.sizings[0]]
    square_side = encoder.square_side()
    return {
        "benchmark": "relsim",
        "device": torch.cuda.get_device_name(0) if config.device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "arch": config.arch,
        "dtype": str(encoder._model_dtype()).replace("torch.", ""),
        "sizing": config.sizings[0],
        "side": first["side"] or square_side,
        "visual_tokens_per_image": first["visual_tokens_per_image"],
        "parameters_b": sum(p.numel() for p in encoder.module.parameters()) / 1e9,
        "build_s": build_s,
        "runs": first["runs"],
        "best": first["best"],
        "paper_procedure": first["paper_procedure"],
        "equivalence": first["equivalence"],
        "sizings": sizings,
        "packages": {name: _version(name) for name in ("torch", "transformers", "peft")},
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sizings = result.get("sizings") or {"aspect": result}
    labels = {"aspect": "fast path, aspect kept (grouped by grid)", "square": "fast path, 448 px square crop"}
    for name, part in sizings.items():
        batches = [r["batch"] for r in part["runs"]]
        line = ax.plot(batches, [r["img_per_s"] for r in part["runs"]], "o-", label=labels.get(name, name))
        ax.axhline(part["paper_procedure"]["img_per_s"], color=line[0].get_color(), ls="--",
                   label=f"paper procedure, {name} (1 image/call)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"relsim ({result['arch']}, {result['dtype']}) on {result['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def result_name(result: dict[str, Any]) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in result["device"].lower()).strip("_") or "cpu"
    return f"relsim_{'fullsize' if result['arch'] == 'full' else result['arch']}_{slug}"


def write_random_release(arch: dict[str, Any], out_dir: Path, device: str, pixels: tuple[int, int],
                         seed: int = 0) -> Path:
    """A random-init base model and relsim release on disk, in the layout ``relsim@DIR`` loads.

    For the end-to-end check through ``build-index`` (which loads a release from a
    path like a user's): ``out_dir/base`` (config + safetensors + processor) and
    ``out_dir/relsim`` (adapter, processor with ``<|query|>``, projection).
    """
    import json

    from relsearch.bench import relsim_synthetic as synthetic
    from relsearch.encoders.relsim.release import ADAPTER_CONFIG

    encoder = build_random_relsim(arch, device, None, pixels, seed=seed)
    base_dir, release = out_dir / "base", out_dir / "relsim"
    base = encoder.module.backbone.get_base_model()
    # The base without the adapter, as a user's downloaded Qwen2.5-VL would be.
    with encoder.module.backbone.disable_adapter():
        state = {k: v for k, v in base.state_dict().items() if "lora_" not in k}
        clean = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    base.config.save_pretrained(base_dir)
    _save_sharded(clean, base_dir)
    synthetic.processor(with_query=False, pixels=pixels).save_pretrained(base_dir)
    encoder.base_source = str(base_dir)
    encoder.save(str(release))
    cfg = json.loads((release / ADAPTER_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir)
    return release


def _save_sharded(state: dict[str, Any], out: Path, shard_bytes: int = 4 << 30) -> None:
    """safetensors shards + ``model.safetensors.index.json``, as HF checkpoints are laid out."""
    import json

    from safetensors.torch import save_file

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.detach().contiguous()
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.cpu() for k, v in shard.items()}, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def end_to_end(arch_name: str, n_images: int, work: Path, device: str, batch_size: int) -> dict[str, Any]:
    """``build-index`` on a folder of ``n_images`` JPEGs with a random relsim release: images/s of the embed step."""
    from relsearch.bench import relsim_synthetic as synthetic
    from relsearch.build import BuildOptions, build_index

    arch, pixels = (synthetic.read_arch(), synthetic.FULL_PIXELS) if arch_name == "full" else (
        synthetic.TINY_ARCH, synthetic.TINY_PIXELS)
    t0 = time.perf_counter()
    release = write_random_release(arch, work / "model", device, pixels)
    write_s = time.perf_counter() - t0
    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(_images(n_images, seed=7)):
        img.save(folder / f"{i:05d}.jpg", quality=90)
    report = build_index(folder, work / "index", BuildOptions(encoders=f"relsim@{release}", device=device,
                                                             batch_size=batch_size, progress=False))
    embed_s = report.seconds.get("embed", 0.0)
    return {"images": report.embedded, "embed_s": embed_s, "img_per_s": report.embedded / max(embed_s, 1e-9),
            "total_s": report.seconds.get("total", 0.0), "write_release_s": write_s, "batch": batch_size}
