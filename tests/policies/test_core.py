"""The pieces every policy stands on: normalization buffers, the torchvision-named ResNet, make_policy's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from robotrain.configs.types import FeatureType, NormalizationMode, PolicyFeature
from robotrain.errors import ConfigError, UserError
from robotrain.policies.backbones import FrozenBatchNorm2d, make_resnet
from robotrain.policies.factory import dataset_to_policy_features, features_mismatch, get_policy_class
from robotrain.policies.normalize import Normalizer

FEATURES = {
    "observation.image": PolicyFeature(FeatureType.VISUAL, (3, 4, 5)),
    "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
    "action": PolicyFeature(FeatureType.ACTION, (2,)),
}
NORM_MAP = {"VISUAL": NormalizationMode.MEAN_STD, "STATE": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.IDENTITY}
STATS = {
    "observation.image": {"mean": np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1), "std": np.array([0.5, 1.0, 2.0])},
    "observation.state": {"min": np.array([0.0, -2.0]), "max": np.array([10.0, 2.0])},
}


def test_normalization_math_and_inverse():
    norm = Normalizer(FEATURES, NORM_MAP, STATS)
    batch = {"observation.image": torch.rand(2, 3, 4, 5), "observation.state": torch.tensor([[5.0, 0.0], [0.0, 2.0]]),
             "action": torch.tensor([[3.0, 4.0]]), "task": ["x"]}
    out = norm.normalize(batch)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    std = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1)
    torch.testing.assert_close(out["observation.image"], (batch["observation.image"] - mean) / (std + 1e-8))
    torch.testing.assert_close(out["observation.state"], torch.tensor([[0.0, 0.0], [-1.0, 1.0]]))
    assert out["action"] is batch["action"] and out["task"] == ["x"]  # identity and non-features pass through
    assert batch["observation.state"][0, 0] == 5.0  # the input batch is not modified
    back = norm.unnormalize("observation.state", out["observation.state"])
    torch.testing.assert_close(back, batch["observation.state"])


def test_statistics_are_buffers_saved_with_the_weights():
    norm = Normalizer(FEATURES, NORM_MAP, STATS)
    state = norm.state_dict()
    assert set(state) == {"stats.observation_image.mean", "stats.observation_image.std",
                          "stats.observation_state.min", "stats.observation_state.max"}
    fresh = Normalizer(FEATURES, NORM_MAP)
    with pytest.raises(UserError, match="no statistics for 'observation.image'"):
        fresh.normalize({"observation.image": torch.zeros(1, 3, 4, 5)})
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.normalize({"observation.state": torch.ones(1, 2)})["observation.state"],
                               norm.normalize({"observation.state": torch.ones(1, 2)})["observation.state"])


def test_missing_or_misshapen_statistics_are_named():
    with pytest.raises(UserError, match="no statistics for 'observation.state'"):
        Normalizer(FEATURES, NORM_MAP, {"observation.image": STATS["observation.image"]})
    bad = {**STATS, "observation.state": {"min": np.zeros(3), "max": np.ones(3)}}
    with pytest.raises(UserError, match="'observation.state.min' has 3 values"):
        Normalizer(FEATURES, NORM_MAP, bad)
    with pytest.raises(ConfigError, match="normalization_mapping"):
        Normalizer(FEATURES, {"STATE": NormalizationMode.QUANTILES})


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_176_512), ("resnet34", 21_284_672),
                                               ("resnet50", 23_508_032)])
def test_resnet_parameter_counts_equal_torchvisions_without_the_head(name, params):
    # torchvision's totals minus the 1000-class head: 11,689,512 - 513,000 (resnet18), and so on.
    assert sum(p.numel() for p in make_resnet(name).parameters()) == params


def test_resnet_weights_load_from_safetensors_and_torch_files(tmp_path):
    torch.manual_seed(0)
    source = make_resnet("resnet18", norm="batch")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # a classifier's head is ignored
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    image = torch.rand(1, 3, 64, 64)
    source.eval()
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        frozen = make_resnet("resnet18", norm="frozen", weights=str(path))  # BN statistics become frozen buffers
        assert isinstance(frozen.bn1, FrozenBatchNorm2d)
        torch.testing.assert_close(frozen(image), source(image), atol=1e-5, rtol=1e-5)


def test_resnet_weights_errors_name_the_flag(tmp_path):
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigError, match="does not hold resnet18 weights"):
        make_resnet("resnet18", weights=str(tmp_path / "partial.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be read as weights"):
        make_resnet("resnet18", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match="neither a file"):
        make_resnet("resnet18", weights="no_such_weights")


def test_imagenet_weights_offline_say_how_to_proceed(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    with pytest.raises(ConfigError) as info:
        make_resnet("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    message = str(info.value)
    assert "timm/resnet18.tv_in1k" in message and "resnet18-f37072fd.pth" in message
    assert "--policy.pretrained_backbone_weights=null" in message


def test_dilation_keeps_the_last_stage_resolution():
    image = torch.rand(1, 3, 96, 96)
    assert make_resnet("resnet18")(image).shape == (1, 512, 3, 3)
    assert make_resnet("resnet18", dilate_last=True)(image).shape == (1, 512, 6, 6)


def test_dataset_features_become_policy_features():
    features = {
        "observation.images.top": {"dtype": "video", "shape": [480, 640, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [14]},
        "observation.environment_state": {"dtype": "float32", "shape": [16]},
        "action": {"dtype": "float32", "shape": [14]},
        "next.reward": {"dtype": "float32", "shape": [1]},
        "timestamp": {"dtype": "float32", "shape": [1]},
    }
    out = dataset_to_policy_features(features)
    assert out == {"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 480, 640)),
                   "observation.state": PolicyFeature(FeatureType.STATE, (14,)),
                   "observation.environment_state": PolicyFeature(FeatureType.ENV, (16,)),
                   "action": PolicyFeature(FeatureType.ACTION, (14,))}
    assert features_mismatch(out, {}) == [f"'{k}' {tuple(f.shape)} is missing" for k, f in out.items()]
    smaller = {**out, "observation.state": PolicyFeature(FeatureType.STATE, (2,))}
    assert features_mismatch(out, smaller) == ["'observation.state' has shape (2,), the policy expects (14,)"]


def test_policy_types_without_a_model_say_so():
    from robotrain.policies import ACTConfig, PolicySpec

    config_only = PolicySpec(name="planned", config_class=ACTConfig, model=None)
    with pytest.raises(UserError, match=r"--policy\.type=planned: has a config but no model .*policies with a model: "
                                        r"act, diffusion"):
        config_only.policy_class()
    with pytest.raises(UserError, match=r"--policy\.type=actt: is not a policy type.*did you mean --policy\.type=act"):
        get_policy_class("actt")
