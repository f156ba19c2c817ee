"""LeRobot's Diffusion Policy tensor names -> robotrain's.

LeRobot's backbone is nn.Sequential(*resnet.children()[:-2]), so its children are numbered where robotrain's ResNet
(torchvision's names) names them; LeRobot also saves the spatial-softmax coordinate grid, which robotrain rebuilds
from the config.
"""

from __future__ import annotations

import re

import torch

from robotrain.policies.backbones import rename_lerobot_backbone

_BACKBONE = re.compile(r"^(diffusion\.rgb_encoder(?:\.\d+)?\.backbone)\.(\d+)\.")
_DROPPED = re.compile(r"^diffusion\.rgb_encoder(?:\.\d+)?\.pool\.pos_grid$")


def map_lerobot_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone children by name instead of index; the saved coordinate grid left out."""
    return rename_lerobot_backbone(state, _BACKBONE, _DROPPED)
