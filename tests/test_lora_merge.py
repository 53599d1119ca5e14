"""relsim-mini inference without peft: merged-path vectors equal the peft path's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relsearch.encoders.lora_merge import LoraPair, delta_weight, peft_named_state, split_lora_state
from relsearch.encoders.relsim_mini import WEIGHTS_DIR, RelsimMiniConfig, RelsimMiniEncoder, load

TINY = RelsimMiniConfig(image_size=64, d_model=32, n_layers=1, n_heads=2, lora_rank=2, trunk_blocks=14,
                        dropout=0.0)


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)) for _ in range(n)]


def _saved_tiny(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    enc = RelsimMiniEncoder(TINY, device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B, so the adapters change the output
        for name, p in enc.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    enc.save(str(tmp_path))
    return tmp_path


def _pair(plain: RelsimMiniEncoder, peft: RelsimMiniEncoder, imgs: list[Image.Image]) -> float:
    plain.bf16 = peft.bf16 = False
    assert plain.fingerprint == peft.fingerprint  # indexes built either way still open
    a, b = plain.embed(imgs), peft.embed(imgs)
    return float((a * b).sum(1).min())


def test_merged_equals_peft_on_a_tiny_release(tmp_path: Path) -> None:
    src = _saved_tiny(tmp_path)
    plain = load(str(src), device="cpu")
    assert not plain.model.peft_adapters and plain.model.lora_pairs
    assert _pair(plain, load(str(src), device="cpu", trainable=True), _images()) >= 0.9999


def test_merged_equals_peft_on_the_shipped_weights() -> None:
    if not (WEIGHTS_DIR / "model.safetensors").is_file():
        pytest.skip("no shipped relsim-mini weights")
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (200, 240, 3), dtype=np.uint8))
            for i in range(2)]
    assert _pair(load(device="cpu"), load(device="cpu", trainable=True), imgs) >= 0.9999


def test_plain_encoder_turns_trainable_on_demand(tmp_path: Path) -> None:
    src = _saved_tiny(tmp_path)
    enc = load(str(src), device="cpu")
    fp = enc.fingerprint
    module = enc.train_module()  # the trainer's entry point: peft adapters, same weights
    assert enc.model.peft_adapters
    assert any("lora_A" in n and p.requires_grad for n, p in module.named_parameters())
    assert enc.fingerprint == fp
    enc.save(str(tmp_path / "again"))
    assert load(str(tmp_path / "again"), device="cpu").fingerprint == fp


def test_delta_is_scaled_b_times_a() -> None:
    a, b = torch.randn(2, 5, 1, 1), torch.randn(3, 2, 1, 1)
    want = (b[:, :, 0, 0] @ a[:, :, 0, 0]) * (16 / 2)
    torch.testing.assert_close(delta_weight(LoraPair(a, b), 16)[:, :, 0, 0], want)


def test_split_rejects_half_pairs_and_renames_like_peft() -> None:
    a, b = torch.zeros(2, 4, 1, 1), torch.zeros(6, 2, 1, 1)
    with pytest.raises(ValueError, match="incomplete"):
        split_lora_state({"x.conv.lora_A.default.weight": a})
    pairs, rest = split_lora_state({"x.conv.lora_A.default.weight": a, "x.conv.lora_B.default.weight": b,
                                    "head.w": torch.ones(1)})
    assert set(pairs) == {"x.conv"} and set(rest) == {"head.w"}
    named = peft_named_state({"x.conv.weight": torch.ones(6, 4, 1, 1), "head.w": torch.ones(1)}, pairs)
    assert set(named) == {"x.conv.base_layer.weight", "x.conv.lora_A.default.weight",
                          "x.conv.lora_B.default.weight", "head.w"}


def test_inference_paths_do_not_import_peft_transformers_or_open_clip() -> None:
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from relsearch.encoders import get_encoder\n"
        "img = Image.new('RGB', (64, 48), (200, 30, 30))\n"
        "for name in ('relsim-mini', 'imagenet'):\n"
        "    get_encoder(name, device='cpu').embed([img])\n"
        "import relsearch.cli, relsearch.query, relsearch.view\n"
        "print(sorted(m for m in ('peft', 'transformers', 'open_clip') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_imagenet_folded_batchnorm_keeps_the_vectors() -> None:
    from relsearch.encoders.backbones import efficientnet_lite0
    from relsearch.encoders.imagenet import ImagenetEncoder

    enc = ImagenetEncoder(device="cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.model.modules())
    ref = efficientnet_lite0(pretrained=True).eval()  # BatchNorm unfolded
    imgs = _images(2)
    with torch.inference_mode():
        want = ref.extract_features(enc.preprocess_batch(imgs)).mean(dim=(2, 3)).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert float((enc.embed(imgs) * want).sum(1).min()) >= 0.9999


def test_switch_to_peft_keeps_a_head_changed_on_the_plain_model(tmp_path: Path) -> None:
    src = _saved_tiny(tmp_path)
    enc = load(str(src), device="cpu")
    enc.embed(_images(1))  # merged for inference, as a head-only tuner would run it
    with torch.no_grad():
        enc.model.head.proj_out.bias.add_(0.25)
    enc.save(str(tmp_path / "tuned"))
    back = load(str(tmp_path / "tuned"), device="cpu")
    torch.testing.assert_close(back.model.head.proj_out.bias, enc.model.head.proj_out.bias)
    assert back.fingerprint != load(str(src), device="cpu").fingerprint
