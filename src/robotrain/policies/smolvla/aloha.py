"""`adapt_to_pi_aloha`: ALOHA's joint and gripper conventions <-> the pi0 runtime's (SmolVLA's base was trained in it).

Constants as LeRobot's (from the ALOHA and Interbotix code, and measurements on a Trossen robot). LeRobot 0.4.4 applies
these to the already normalized state and actions (its normalizer runs in the preprocessor, before the policy), and
so does robotrain, so checkpoints trained with the flag behave the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLIPPED_JOINTS = (1, 2, 8, 9)
GRIPPERS = (6, 13)


def _to_unit(x: Tensor, low: float, high: float) -> Tensor:
    return (x - low) / (high - low)


def _from_unit(x: Tensor, low: float, high: float) -> Tensor:
    return x * (high - low) + low


def gripper_to_angular(value: Tensor) -> Tensor:
    """ALOHA's linear gripper position -> the angular one, in [0, 1]."""
    linear = _from_unit(value, 0.01844, 0.05800)  # PUPPET_GRIPPER_POSITION_OPEN / _CLOSED
    arm, horn = 0.036, 0.022  # Interbotix gripper linkage
    angle = torch.arcsin(torch.clamp((horn**2 + linear**2 - arm**2) / (2 * horn * linear), -1.0, 1.0))
    return _to_unit(angle, 0.4, 1.5)


def gripper_from_angular(value: Tensor) -> Tensor:
    """The model's angular gripper value -> ALOHA's gripper joint range."""
    return _to_unit(_from_unit(value, 0.4, 1.5), -0.6213, 1.4910)  # PUPPET_GRIPPER_JOINT_OPEN / _CLOSE


def gripper_from_angular_inv(value: Tensor) -> Tensor:
    """The inverse of gripper_from_angular (applied to training targets)."""
    return _to_unit(_from_unit(value, -0.6213, 1.4910), 0.4, 1.5)


def _convert(x: Tensor, gripper_fn) -> Tensor:
    out = x.clone()
    out[..., list(FLIPPED_JOINTS)] *= -1
    for index in GRIPPERS:
        out[..., index] = gripper_fn(out[..., index])
    return out


def decode_state(state: Tensor) -> Tensor:
    """(..., 14) ALOHA state -> the pi0 convention."""
    return _convert(state, gripper_to_angular)


def encode_actions(actions: Tensor) -> Tensor:
    """(..., 14) predicted actions -> ALOHA's convention."""
    return _convert(actions, gripper_from_angular)


def encode_actions_inv(actions: Tensor) -> Tensor:
    """(..., 14) ALOHA actions (training targets) -> the pi0 convention."""
    return _convert(actions, gripper_from_angular_inv)
