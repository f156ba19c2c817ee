"""Feature and normalization types shared by datasets, envs and policies (names and values as LeRobot's)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FeatureType(str, Enum):
    """What a feature is to a policy; decides its normalization and where it enters the model."""

    STATE = "STATE"
    VISUAL = "VISUAL"
    ENV = "ENV"
    ACTION = "ACTION"
    REWARD = "REWARD"
    LANGUAGE = "LANGUAGE"


class NormalizationMode(str, Enum):
    """How a feature is normalized with dataset statistics before it reaches the model."""

    MIN_MAX = "MIN_MAX"
    MEAN_STD = "MEAN_STD"
    IDENTITY = "IDENTITY"
    QUANTILES = "QUANTILES"
    QUANTILE10 = "QUANTILE10"


@dataclass
class PolicyFeature:
    """A policy input or output: its type and its shape (channel-first for images)."""

    type: FeatureType
    shape: tuple[int, ...]


# Batch keys, as LeRobot names them: every module that reads or writes a batch uses these names.
OBS_PREFIX = "observation."
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGE = "observation.image"  # the single camera of PushT and xArm
OBS_IMAGES = "observation.images"  # named cameras are observation.images.<camera>
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"
TASK = "task"


def pad_key(key: str) -> str:
    """The mask a sample carries beside a time-stacked feature: True where a step lies outside its episode."""
    return f"{key}_is_pad"
