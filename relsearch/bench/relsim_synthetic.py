"""Offline stand-ins for relsim's tokenizer, processor and base model (no download).

The benchmarks and the tests need a Qwen2.5-VL of a given shape without the
hub: a byte-level BPE tokenizer holding Qwen's chat and vision special tokens,
a Qwen2.5-VL processor around it, and a random-init model built from an
architecture description (the published 7B shapes ship as ``qwen2_5_vl_7b.json``
beside this module). Random weights change no timing and no code path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QUERY_TOKEN = "<|query|>"

#: Qwen's chat and vision special tokens, in the order the real tokenizer has them.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: A Qwen2.5-VL style chat template (system default, vision block per image,
#: generation prompt), small enough to read.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: The published architecture of Qwen2.5-VL-7B-Instruct.
FULL_ARCH = Path(__file__).with_name("qwen2_5_vl_7b.json")
#: The released processor's pixel budget (min 56*56, max 28*28*1280).
FULL_PIXELS = (56 * 56, 28 * 28 * 1280)
#: The tiny test processor's budget: a 64x48 image becomes a 2x2 grid of merged tokens.
TINY_PIXELS = (28 * 28, 56 * 56 * 4)


def tokenizer(with_query: bool = True) -> Any:
    """Byte-level BPE over the 256 byte symbols plus Qwen's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = QWEN_SPECIAL_TOKENS + ([QUERY_TOKEN] if with_query else [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="right",
    )


def processor(with_query: bool = True, chat_template: str = CHAT_TEMPLATE,
              pixels: tuple[int, int] = TINY_PIXELS) -> Any:
    """A Qwen2.5-VL processor around :func:`tokenizer` with the given pixel budget."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    min_px, max_px = pixels
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_px, max_pixels=max_px),
        tokenizer=tokenizer(with_query=with_query),
        video_processor=Qwen2VLVideoProcessor(min_pixels=min_px, max_pixels=max_px),
        chat_template=chat_template,
    )


def qwen_config(arch: dict[str, Any], tok: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` of the shapes in ``arch``, with ``tok``'s special-token ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(arch["text_config"])
    if text["vocab_size"] < len(tok):
        raise ValueError(f"vocab_size {text['vocab_size']} is smaller than the tokenizer ({len(tok)})")
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(arch["vision_config"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def read_arch(path: str | Path = FULL_ARCH) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    missing = [k for k in ("text_config", "vision_config") if k not in data]
    if missing:
        raise ValueError(f"{path}: architecture file lacks {', '.join(missing)}")
    return data


#: The tiny test architecture: 2 + 2 layers, hidden 64 / 32. The embedding matrix is
#: padded past the tokenizer length, like the real checkpoint's.
TINY_ARCH: dict[str, Any] = {
    "text_config": {
        "vocab_size": 280,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        # head_dim 16 -> 8 rotary frequencies split over (t, h, w)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    },
}


def random_model(arch: dict[str, Any], tok: Any, device: str = "cpu", dtype: Any = None, seed: int = 0) -> Any:
    """A random-init ``Qwen2_5_VLForConditionalGeneration`` built directly on ``device`` in ``dtype``.

    Parameters are allocated where they will live (no float32 copy in host RAM
    first: 8.3B parameters would be 33 GB), SDPA attention.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    dtype = dtype or torch.float32
    config = qwen_config(arch, tok)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()
