"""Tiny random-init checkpoints in the layouts the real encoders load.

Nothing here downloads anything: every model is built from a config with
random weights, every tokenizer with the ``tokenizers`` library. Used by the
encoder tests and by ``benchmarks/relsim_gpu.py`` (so it imports no pytest).
"""

from __future__ import annotations

import json
from pathlib import Path

from relsearch.bench import relsim_synthetic as synthetic
from relsearch.bench.relsim_synthetic import CHAT_TEMPLATE, QUERY_TOKEN, QWEN_SPECIAL_TOKENS  # noqa: F401

TEXT_HIDDEN = synthetic.TINY_ARCH["text_config"]["hidden_size"]
# Like the real checkpoint, the embedding matrix is padded past the tokenizer
# length, so resizing to the tokenizer shrinks it and `<|query|>` keeps a row
# that already exists in the base.
TINY_VOCAB = synthetic.TINY_ARCH["text_config"]["vocab_size"]


def tiny_tokenizer(with_query: bool = True):
    """Byte-level BPE over the 256 byte symbols plus Qwen's special tokens."""
    return synthetic.tokenizer(with_query=with_query)


def tiny_processor(with_query: bool = True, chat_template: str = CHAT_TEMPLATE):
    # Small pixel budget: a 64x48 image becomes a 2x2 grid of merged tokens.
    return synthetic.processor(with_query=with_query, chat_template=chat_template, pixels=synthetic.TINY_PIXELS)


def tiny_qwen_config(tokenizer, vocab_size: int = TINY_VOCAB):
    arch = {**synthetic.TINY_ARCH, "text_config": {**synthetic.TINY_ARCH["text_config"], "vocab_size": vocab_size}}
    return synthetic.qwen_config(arch, tokenizer)


def make_tiny_qwen_base(out_dir: str | Path, seed: int = 0, vocab_size: int = TINY_VOCAB) -> Path:
    """A random-init Qwen2.5-VL in HF format plus its processor (no `<|query|>`).

    ``vocab_size`` equal to the tokenizer length leaves no spare embedding row,
    so adding `<|query|>` has to grow the matrix.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = tiny_processor(with_query=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(processor.tokenizer, vocab_size))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_tiny_relsim(out_dir: str | Path, seed: int = 0, with_query: bool = True,
                     lora_scale: float = 0.5) -> Path:
    """A relsim release for a tiny base, in the released checkpoint layout.

    ``out_dir/base`` holds the base model; ``out_dir/relsim`` holds
    ``adapter_config.json`` (naming the base by path), ``adapter_model.safetensors``,
    the processor files with ``<|query|>`` and ``projection_and_config.pt``.
    ``lora_B`` is filled with non-zero values so the adapter changes the output.
    Returns the release directory.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    root = Path(out_dir)
    base_dir = make_tiny_qwen_base(root / "base", seed=seed)
    release = root / "relsim"
    release.mkdir(parents=True, exist_ok=True)

    processor = tiny_processor(with_query=True)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(processor.tokenizer))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                      target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * lora_scale)
    peft_model.save_pretrained(release)
    # The release names its base as given at training time; here, a local path.
    cfg_path = release / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg, indent=2))

    if with_query:
        processor.save_pretrained(release)
    else:
        tiny_processor(with_query=False).save_pretrained(release)
    projection = torch.nn.Linear(TEXT_HIDDEN, 384)
    torch.nn.init.normal_(projection.weight, std=0.2, generator=gen)
    query_id = processor.tokenizer.convert_tokens_to_ids(QUERY_TOKEN)
    torch.save({"projection": projection.state_dict(), "query_token_id": int(query_id)},
               release / "projection_and_config.pt")
    return release


def to_legacy_processor_layout(release: str | Path) -> None:
    """Rewrite processor files the way transformers 4.x saved them.

    Released checkpoints carry ``preprocessor_config.json`` (flat, with
    ``min_pixels``/``max_pixels``) and ``chat_template.json`` instead of one
    ``processor_config.json`` and ``chat_template.jinja``.
    """
    folder = Path(release)
    nested = json.loads((folder / "processor_config.json").read_text())
    image = dict(nested["image_processor"])
    size = image.pop("size")
    image.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"],
                 processor_class="Qwen2_5_VLProcessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (folder / "processor_config.json").unlink()
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    (folder / "chat_template.jinja").unlink()


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip(out_dir: str | Path, seed: int = 0, preprocess_cfg: dict | None = None) -> Path:
    """A random-init CLIP in open_clip's hub layout, loadable as ``clip@DIR``."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    cfg = {"model_cfg": TINY_CLIP_CFG}
    if preprocess_cfg is not None:
        cfg["preprocess_cfg"] = preprocess_cfg
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return out


def make_tiny_dino(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init Dinov2 with its image processor, loadable as ``dino@DIR``."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=56, patch_size=14)
    Dinov2Model(config).save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def tiny_images(n: int = 4, seed: int = 0) -> list:
    """Small RGB images of varied sizes and content."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (40, 72), (96, 96), (50, 30), (120, 80), (33, 57)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out.append(Image.fromarray(arr, mode="RGB"))
    return out


def _fetch_image_resize(img):
    """``qwen_vl_utils.fetch_image``'s resize of a PIL image, restated (0.0.14: 28 px cells, 4..16384 cells).

    Written apart from relsearch's own sizing so the reference does not share its code.
    """
    import math

    factor, lo, hi = 28, 4 * 28 * 28, 16384 * 28 * 28
    width, height = img.size
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > hi:
        beta = math.sqrt(height * width / hi)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < lo:
        beta = math.sqrt(lo / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return img.resize((w, h))


def official_vision_inputs(messages):
    """``process_vision_info(messages)``'s images: the package's own when installed, else the restatement."""
    try:
        from qwen_vl_utils import process_vision_info
    except ImportError:
        return [_fetch_image_resize(part["image"].convert("RGB")) for m in messages for part in m["content"]
                if part["type"] == "image"]
    return process_vision_info(messages)[0]


def official_relsim_vectors(encoder, images, max_image_size=None):
    """The released inference procedure (``relsim/relsim_score.py``), one image per call.

    ``preprocess_image`` (RGB), ``embed``'s optional LANCZOS cap, the chat template with
    the image and ``<|query|>`` in one user turn, ``process_vision_info``, the
    checkpoint's processor, the full model with ``output_hidden_states`` and the LoRA
    unmerged, ``hidden_states[-1]`` at ``<|query|>``, the head, L2. Only the model and
    processor come from ``encoder``. Every processor output goes to the model: the
    released code passes four of them, which is the same on the transformers it pins,
    while newer ones place the rope positions with ``mm_token_type_ids``.
    """
    import numpy as np
    import torch
    from PIL import Image

    encoder.unmerge_lora()
    module, processor = encoder.module, encoder.processor
    out = []
    for img in images:
        img = img.convert("RGB")
        if max_image_size and max(img.size) > max_image_size:
            img = img.copy()
            img.thumbnail((max_image_size, max_image_size), Image.LANCZOS)
        messages = [{"role": "user", "content": [{"type": "image", "image": img},
                                                 {"type": "text", "text": QUERY_TOKEN}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=official_vision_inputs(messages), padding=True, return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with torch.no_grad():
            hidden = module.backbone(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1]
            at = (inputs["input_ids"][0] == encoder.query_token_id).nonzero().flatten()
            assert at.numel() == 1, "the prompt must hold <|query|> once"
            vec = torch.nn.functional.normalize(module.projection(hidden[0, at]).float(), dim=-1)
        out.append(vec.numpy())
    return np.concatenate(out, axis=0)


def aspect_images(seed: int = 0) -> dict:
    """Square, wide (3:1) and tall (1:3) RGB images, smooth with noise, in sizes the tiny
    processor's budget (784..12544 px) shrinks and sizes it keeps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = {"square": (150, 150), "wide": (300, 100), "tall": (100, 300),
             "square_small": (60, 60), "wide_small": (150, 50), "tall_small": (40, 120)}
    out = {}
    for name, (w, h) in sizes.items():
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (2 + c) + yy * (5 - c)) % 256 for c in range(3)], axis=-1)
        noise = rng.integers(0, 60, size=(h, w, 3))
        out[name] = Image.fromarray(((base + noise) % 256).astype(np.uint8), mode="RGB")
    return out
