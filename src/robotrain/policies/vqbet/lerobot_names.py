"""LeRobot's VQ-BeT tensor names -> robotrain's.

Everything is named as in LeRobot 0.4.4 except:
- the ResNet: LeRobot's backbone is nn.Sequential(*resnet.children()[:-2]), so its children are numbered where
  robotrain's ResNet (torchvision's names) names them (the same numbering as Diffusion Policy's);
- two constant buffers LeRobot saves and robotrain rebuilds from the config: the spatial-softmax coordinate grid and
  each attention layer's causal mask (robotrain's attention takes is_causal=True instead, see gpt.py).
"""

from __future__ import annotations

import re

import torch

from robotrain.policies.backbones import rename_lerobot_backbone

_BACKBONE = re.compile(r"^(vqbet\.rgb_encoder\.backbone)\.(\d+)\.")
_DROPPED = re.compile(r"^vqbet\.(rgb_encoder\.pool\.pos_grid|policy\.transformer\.h\.\d+\.attn\.bias)$")


def map_lerobot_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone children by name instead of index; the saved grid and causal masks left out."""
    return rename_lerobot_backbone(state, _BACKBONE, _DROPPED)
