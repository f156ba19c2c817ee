"""LeRobot's Diffusion Policy tensor names -> robotrain's.

LeRobot's backbone is nn.Sequential(*resnet.children()[:-2]), so its children are numbered where robotrain's ResNet
(torchvision's names) names them; LeRobot also saves the spatial-softmax coordinate grid, which robotrain rebuilds
from the config.
"""

from __future__ import annotations

import re

import torch

_BACKBONE = re.compile(r"^(diffusion\.rgb_encoder(?:\.\d+)?\.backbone)\.(\d+)\.")
_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_GRID = re.compile(r"^diffusion\.rgb_encoder(?:\.\d+)?\.pool\.pos_grid$")


def map_lerobot_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone children by name instead of index; the saved coordinate grid left out."""
    out = {}
    for name, tensor in state.items():
        if _GRID.match(name):
            continue
        match = _BACKBONE.match(name)
        if match and match.group(2) in _RESNET_CHILDREN:
            name = f"{match.group(1)}.{_RESNET_CHILDREN[match.group(2)]}.{name[match.end():]}"
        out[name] = tensor
    return out
