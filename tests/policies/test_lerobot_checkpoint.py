"""Checkpoints written by LeRobot: statistics in processor files (0.4) or in model.safetensors under LeRobot's
buffer names (<= 0.3), Diffusion's backbone under numbered names.

The fast tests write LeRobot's file layouts here, with the file names, JSON and state keys LeRobot 0.4.4 writes
(checked against files the peer saved) and the buffer names LeRobot 0.3 gave its Normalize modules, from a robotrain
policy, and load them back: directly, through make_policy (fine-tuning, --adapt_features) and through the CLI with a
Hub id. The slow test has the real LeRobot (the peer venv) save ACT and Diffusion checkpoints and compares its
actions with robotrain's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robotrain.cli import main
from robotrain.configs.types import FeatureType, PolicyFeature
from robotrain.errors import UserError
from robotrain.policies import ACTConfig, ACTPolicy, DiffusionConfig, DiffusionPolicy, Policy
from robotrain.policies.base import load_policy_config
from robotrain.policies.factory import make_policy
from robotrain.policies.normalize import STAT_NAMES

VISUAL, STATE, ACTION = FeatureType.VISUAL, FeatureType.STATE, FeatureType.ACTION
CAMERAS = ("observation.images.left", "observation.images.right")
PRE, POST = "policy_preprocessor.json", "policy_postprocessor.json"
PRE_STATE = "policy_preprocessor_step_3_normalizer_processor.safetensors"
POST_STATE = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"
# LeRobot's Diffusion backbone is nn.Sequential(*resnet.children()[:-2]); robotrain names the children.
LEROBOT_RESNET_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def dataset_stats(seed: int = 0, state_dim: int = 3,
                  cameras: tuple[str, ...] = CAMERAS) -> dict[str, dict[str, torch.Tensor]]:
    """Every statistic a LeRobot dataset has (not only those a policy uses), images per channel (3, 1, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def stats(shape, scale):
        low = torch.rand(shape, generator=gen) * scale - scale
        high = low + torch.rand(shape, generator=gen) * scale + 0.1
        return {"mean": (low + high) / 2, "std": (high - low) / 4, "min": low, "max": high,
                "q01": low + 0.01, "q99": high - 0.01, "count": torch.tensor([500.0])}

    out = {cam: stats((3, 1, 1), 1.0) for cam in cameras}
    out.update({"observation.state": stats((state_dim,), 5.0), "action": stats((2,), 30.0)})
    return out


def stats_for(policy: Policy, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """dataset_stats for the policy's cameras and state size."""
    features = policy.config.input_features
    cameras = tuple(key for key, feature in features.items() if feature.type is VISUAL)
    return dataset_stats(seed, features["observation.state"].shape[0], cameras)


def tiny_act(seed: int = 0, camera: str = CAMERAS[0], frame: tuple[int, int, int] = (3, 32, 32),
             state_dim: int = 3) -> ACTPolicy:
    config = ACTConfig(input_features={camera: PolicyFeature(VISUAL, frame),
                                       "observation.state": PolicyFeature(STATE, (state_dim,))},
                       output_features={"action": PolicyFeature(ACTION, (2,))},
                       dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=2, n_decoder_layers=1,
                       n_vae_encoder_layers=2, latent_dim=4, chunk_size=6, n_action_steps=3,
                       pretrained_backbone_weights=None, device="cpu")
    torch.manual_seed(seed)
    policy = ACTPolicy(config)
    policy.load_stats(stats_for(policy))
    return policy.eval()


def tiny_diffusion(seed: int = 0) -> DiffusionPolicy:
    inputs = {cam: PolicyFeature(VISUAL, (3, 32, 32)) for cam in CAMERAS}
    config = DiffusionConfig(input_features={**inputs, "observation.state": PolicyFeature(STATE, (3,))},
                             output_features={"action": PolicyFeature(ACTION, (2,))},
                             horizon=8, n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4,
                             diffusion_step_embed_dim=8, spatial_softmax_num_keypoints=4, crop_shape=(28, 28),
                             use_separate_rgb_encoder_per_camera=True, noise_scheduler_type="DDIM",
                             num_train_timesteps=10, device="cpu")
    torch.manual_seed(seed)
    policy = DiffusionPolicy(config)
    policy.load_stats(dataset_stats())
    return policy.eval()


def lerobot_weights(policy: Policy) -> dict[str, torch.Tensor]:
    """The policy's state dict as LeRobot 0.4 saves it: no statistics, Diffusion's backbone children numbered and
    its spatial-softmax grid saved."""
    out = {}
    for name, tensor in policy.state_dict().items():
        if name.startswith("normalizer."):
            continue
        parts = name.split(".")
        if parts[0] == "diffusion" and "backbone" in parts:
            child = parts.index("backbone") + 1
            parts[child] = LEROBOT_RESNET_INDEX[parts[child]]
        out[".".join(parts)] = tensor.contiguous()
    if isinstance(policy, DiffusionPolicy):
        for index, encoder in enumerate(policy.diffusion.rgb_encoder):
            out[f"diffusion.rgb_encoder.{index}.pool.pos_grid"] = encoder.pool.pos_grid.clone()
    return out


def processor_config(config, features: dict, registry_name: str) -> dict:
    norm_map = {ftype: mode.value for ftype, mode in config.normalization_mapping.items()}
    shapes = {key: {"type": f.type.value, "shape": list(f.shape)} for key, f in features.items()}
    return {"registry_name": registry_name, "config": {"eps": 1e-8, "features": shapes, "norm_map": norm_map}}


def save_lerobot_checkpoint(policy: Policy, directory: Path, stats: dict | None = None) -> Path:
    """config.json, model.safetensors and the four processor files, laid out and keyed as LeRobot 0.4.4 does."""
    policy.save_pretrained(directory)
    save_file(lerobot_weights(policy), str(directory / "model.safetensors"))
    config = policy.config
    pre = processor_config(config, {**config.input_features, **config.output_features}, "normalizer_processor")
    pre["state_file"] = PRE_STATE
    post = processor_config(config, config.output_features, "unnormalizer_processor")
    post["state_file"] = POST_STATE
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    write_json(directory / PRE, {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}}, device, pre]})
    write_json(directory / POST, {"name": "policy_postprocessor", "steps": [post, device]})
    flat = {f"{feature}.{stat}": value for feature, values in (stats or stats_for(policy)).items()
            for stat, value in values.items()}
    save_file(flat, str(directory / PRE_STATE))
    save_file(flat, str(directory / POST_STATE))
    return directory


def save_legacy_checkpoint(policy: Policy, directory: Path) -> Path:
    """config.json and a model.safetensors as LeRobot <= 0.3 saved them: the policy's statistics as buffers of its
    normalize_inputs, normalize_targets and unnormalize_outputs modules, the rest named as LeRobot 0.4 names it."""
    policy.save_pretrained(directory)
    state = lerobot_weights(policy)
    outputs = set(policy.config.output_features)
    for feature, key in policy.normalizer.keys.items():
        stats = policy.normalizer.stats[key]
        modules = ("normalize_targets", "unnormalize_outputs") if feature in outputs else ("normalize_inputs",)
        for module in modules:
            for stat in STAT_NAMES[stats.mode]:
                state[f"{module}.buffer_{feature.replace('.', '_')}.{stat}"] = getattr(stats, stat).clone()
    save_file(state, str(directory / "model.safetensors"))
    return directory


LAYOUTS = {"robotrain": lambda policy, directory: policy.save_pretrained(directory),
           "lerobot": save_lerobot_checkpoint, "lerobot_0.3": save_legacy_checkpoint}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def observation(policy: Policy, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.rand(2, *f.shape, generator=gen) if f.type is VISUAL else 5 * torch.randn(2, *f.shape,
            generator=gen) for key, f in policy.config.input_features.items()}


def test_act_from_lerobot_layout_gives_the_same_actions(tmp_path):
    policy = tiny_act()
    save_lerobot_checkpoint(policy, tmp_path)
    assert not any(k.startswith("normalizer.") for k in load_file(tmp_path / "model.safetensors"))
    loaded = Policy.from_pretrained(tmp_path)
    assert isinstance(loaded, ACTPolicy)
    obs = observation(policy)
    assert torch.equal(loaded.predict_action_chunk(obs), policy.predict_action_chunk(obs))
    torch.testing.assert_close(loaded.normalizer.state_dict(), policy.normalizer.state_dict(), rtol=0, atol=0)


def test_diffusion_from_lerobot_layout_gives_the_same_actions(tmp_path):
    policy = tiny_diffusion()
    save_lerobot_checkpoint(policy, tmp_path)
    loaded = DiffusionPolicy.from_pretrained(tmp_path)
    noise = torch.randn(2, policy.config.horizon, 2, generator=torch.Generator().manual_seed(3))
    for p in (policy, loaded):
        p.reset()
    for step in range(6):  # two observations in the history, a new chunk after four steps
        obs = observation(policy, seed=step)
        assert torch.equal(loaded.select_action(obs, noise=noise), policy.select_action(obs, noise=noise))


@pytest.mark.parametrize("make", [tiny_act, tiny_diffusion])
def test_lerobot_0_3_checkpoints_give_the_same_actions(tmp_path, make):
    policy = make()
    save_legacy_checkpoint(policy, tmp_path)
    assert any(k.startswith("normalize_inputs.buffer_observation_images_") for k in load_file(tmp_path /
                                                                                                "model.safetensors"))
    loaded = Policy.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.normalizer.state_dict(), policy.normalizer.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(loaded.state_dict(), policy.state_dict(), rtol=0, atol=0)
    noise = {"noise": torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(3))} if make is tiny_diffusion \
        else {}
    for p in (policy, loaded):
        p.reset()
    for step in range(3):
        obs = observation(policy, seed=step)
        assert torch.equal(loaded.select_action(obs, **noise), policy.select_action(obs, **noise))


def test_lerobot_0_3_actions_take_the_statistics_of_unnormalize_outputs(tmp_path, caplog):
    """LeRobot 0.3 un-normalized predictions with unnormalize_outputs; normalize_targets scaled training targets."""
    policy = tiny_act()
    save_legacy_checkpoint(policy, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["normalize_targets.buffer_action.mean"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with caplog.at_level(logging.WARNING):
        loaded = Policy.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.normalizer.state_dict(), policy.normalizer.state_dict(), rtol=0, atol=0)
    assert "normalize_targets.buffer_action.mean differs from unnormalize_outputs.buffer_action.mean" in caplog.text


def set_tensor(directory: Path, key: str, value: torch.Tensor | None) -> None:
    state = load_file(directory / "model.safetensors")
    if value is None:
        del state[key]
    else:
        state[key] = value
    save_file(state, str(directory / "model.safetensors"))


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("normalize_inputs.buffer_observation_state.std", None,
     ["has no 'normalize_inputs.buffer_observation_state.std'", "'observation.state' (MEAN_STD)"]),
    ("unnormalize_outputs.buffer_action.mean", torch.full((2,), torch.inf),
     ["'unnormalize_outputs.buffer_action.mean' is not set (it holds inf", "fine-tune it on a dataset"]),
    ("normalize_inputs.buffer_observation_images_left.mean", torch.zeros(4),
     ["'normalize_inputs.buffer_observation_images_left.mean' has 4 values", "shape (3, 1, 1)"]),
])
def test_unusable_lerobot_0_3_checkpoints_name_the_buffer_and_fix(tmp_path, key, value, expected):
    save_legacy_checkpoint(tiny_act(), tmp_path)
    set_tensor(tmp_path, key, value)
    with pytest.raises(UserError) as info:
        Policy.from_pretrained(tmp_path)
    message = str(info.value)
    assert all(part in message for part in expected) and "model.safetensors" in message, message
    assert "Fix:" in message and "\n" not in message


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoints_load_from_the_hub_cache(tmp_path, monkeypatch, layout):
    """A Hub id resolves through huggingface_hub's cache (offline here); a repo without processor files is fine."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--someone--act_tiny" / "snapshots" / ("a" * 40)
    LAYOUTS[layout](tiny_act(), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = Policy.from_pretrained("someone/act_tiny")
    obs = observation(loaded)
    assert torch.equal(loaded.predict_action_chunk(obs), tiny_act().predict_action_chunk(obs))


def test_robotrain_weights_beside_processor_files_keep_their_own_statistics(tmp_path):
    save_lerobot_checkpoint(tiny_act(), tmp_path, stats=dataset_stats(seed=5))
    policy = tiny_act()
    policy.save_pretrained(tmp_path)  # robotrain's model.safetensors carries its statistics: they win
    loaded = Policy.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.normalizer.state_dict(), policy.normalizer.state_dict(), rtol=0, atol=0)


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


def drop_stat(directory: Path, key: str) -> None:
    state = load_file(directory / PRE_STATE)
    del state[key]
    save_file(state, str(directory / PRE_STATE))


def no_stats(directory: Path) -> None:
    edit_json(directory / PRE, lambda d: d["steps"][3].pop("state_file"))
    (directory / PRE_STATE).unlink()


def set_norm_map(directory: Path) -> None:
    edit_json(directory / PRE, lambda d: d["steps"][3]["config"]["norm_map"].update(STATE="MIN_MAX"))


def wrong_shape(directory: Path) -> None:
    state = load_file(directory / PRE_STATE)
    state["observation.state.std"] = torch.ones(4)
    save_file(state, str(directory / PRE_STATE))


def no_processors(directory: Path) -> None:
    for name in (PRE, POST, PRE_STATE, POST_STATE):
        (directory / name).unlink()


@pytest.mark.parametrize(("corrupt", "expected"), [
    (no_stats, [PRE, "no state_file", "without normalization statistics"]),
    (lambda d: drop_stat(d, "observation.state.std"), [PRE_STATE, "'observation.state.std'"]),
    (lambda d: (d / POST_STATE).unlink(), [POST_STATE, "is missing"]),
    (wrong_shape, [PRE_STATE, "'observation.state.std' has 4 values"]),
    (set_norm_map, [PRE, "norm_map.STATE is MIN_MAX", "normalization_mapping.STATE is MEAN_STD"]),
    (lambda d: edit_json(d / POST, lambda j: j["steps"].insert(1, {"registry_name": "absolute_actions_processor"})),
     [POST, "steps[1] is 'absolute_actions_processor'"]),
    (lambda d: edit_json(d / PRE, lambda j: j["steps"][0]["config"]["rename_map"].update({"a": "b"})),
     [PRE, "steps[0] renames observations"]),
    (lambda d: edit_json(d / PRE, lambda j: j["steps"].pop(3)), [PRE, "no 'normalizer_processor' step"]),
    (lambda d: (d / POST).write_text("{}"), [POST, "no list of 'steps'"]),
    (no_processors, ["model.safetensors holds no normalization statistics", PRE, "Fix: copy"]),
])
def test_unusable_lerobot_checkpoints_name_the_file_key_and_fix(tmp_path, corrupt, expected):
    save_lerobot_checkpoint(tiny_act(), tmp_path)
    corrupt(tmp_path)
    with pytest.raises(UserError) as info:
        Policy.from_pretrained(tmp_path)
    message = str(info.value)
    assert all(part in message for part in expected), message
    assert "Fix:" in message and "\n" not in message


def test_wrong_weight_names_are_reported(tmp_path):
    save_lerobot_checkpoint(tiny_diffusion(), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["diffusion.unet.extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=r"1 unexpected tensors \(e.g. diffusion.unet.extra.weight\)"):
        Policy.from_pretrained(tmp_path)
    assert isinstance(Policy.from_pretrained(tmp_path, strict=False), DiffusionPolicy)


def dataset_meta(policy: Policy, seed: int = 7, **changes: PolicyFeature) -> SimpleNamespace:
    """What make_policy reads of a dataset: its features (the policy's, with `changes`) and statistics."""
    features = {**policy.config.input_features, **policy.config.output_features, **changes}
    info = {key: {"dtype": "video" if f.type is VISUAL else "float32", "names": None,
                  "shape": [f.shape[1], f.shape[2], f.shape[0]] if f.type is VISUAL else list(f.shape)}
            for key, f in features.items()}
    for key, f in features.items():
        if f.type is VISUAL:
            info[key]["names"] = ["height", "width", "channels"]
    cameras = tuple(key for key, f in features.items() if f.type is VISUAL)
    stats = dataset_stats(seed, features["observation.state"].shape[0], cameras)
    return SimpleNamespace(repo_id="test/finetune", features=info, stats=stats)


def pretrained_config(directory: Path):
    """The config `--policy.path=<directory>` gives make_policy."""
    config = load_policy_config(directory / "config.json")
    config.pretrained_path = directory
    return config


def assert_same_weights(policy: Policy, expected: Policy) -> None:
    ours = {k: v for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    theirs = {k: v for k, v in expected.state_dict().items() if not k.startswith("normalizer.")}
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def drop_legacy_stats(directory: Path) -> None:
    """LeRobot 0.3 saved a policy built without dataset statistics with its buffers at inf."""
    state = load_file(directory / "model.safetensors")
    save_file({k: torch.full_like(v, torch.inf) if "buffer_" in k else v for k, v in state.items()},
              str(directory / "model.safetensors"))


@pytest.mark.parametrize(("layout", "strip"), [("lerobot", no_stats), ("lerobot", no_processors),
                                               ("lerobot_0.3", drop_legacy_stats)])
def test_fine_tuning_needs_no_statistics_in_the_checkpoint(tmp_path, layout, strip):
    """The dataset's statistics replace the checkpoint's, so fine-tuning loads one saved without them; evaluating or
    resuming, which keep the checkpoint's, refuse it."""
    policy = tiny_act()
    LAYOUTS[layout](policy, tmp_path)
    strip(tmp_path)
    meta = dataset_meta(policy)
    tuned = make_policy(pretrained_config(tmp_path), ds_meta=meta)
    assert_same_weights(tuned, policy)
    tuned_state = tuned.normalizer.stats["observation_state"]
    torch.testing.assert_close(tuned_state.mean, meta.stats["observation.state"]["mean"], rtol=0, atol=0)
    with pytest.raises(UserError, match="fine-tune it on a dataset"):
        make_policy(pretrained_config(tmp_path), ds_meta=meta, use_dataset_stats=False)
    with pytest.raises(UserError, match="fine-tune it on a dataset"):
        Policy.from_pretrained(tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_adapt_features_keeps_a_lerobot_diffusion_backbone(tmp_path, caplog, layout):
    """--adapt_features=true maps LeRobot's names too: the ResNet (numbered children in LeRobot) is kept, only the
    layers fed by the changed state are re-initialized."""
    policy = tiny_diffusion()
    LAYOUTS[layout](policy, tmp_path)
    meta = dataset_meta(policy, **{"observation.state": PolicyFeature(STATE, (5,))})
    with caplog.at_level(logging.WARNING):
        adapted = make_policy(pretrained_config(tmp_path), ds_meta=meta, adapt_features=True)
    assert adapted.config.input_features["observation.state"].shape == (5,)
    ours, theirs = adapted.state_dict(), policy.state_dict()
    backbone = [k for k in theirs if ".backbone." in k]
    assert len(backbone) > 20 and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    fresh = [k for k in theirs if ours[k].shape != theirs[k].shape]
    assert fresh and all(k.startswith(("diffusion.unet.", "normalizer.")) for k in fresh)
    assert "re-initialized" in caplog.text and "ignored" not in caplog.text  # every saved tensor found its place


@pytest.fixture
def fresh_hub_cache(tmp_path, monkeypatch):
    """The Hub as a first download sees it: huggingface_hub.hf_hub_download copies a file of remote/<repo id>/ into an
    empty cache only when asked for it, so a command finds only the files it fetched. Returns (remote, fetched)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from robotrain import hub

    remote, cache, fetched = tmp_path / "remote", tmp_path / "cache", []

    def download(repo_id, filename, repo_type="model", revision=None, local_files_only=False):
        assert not local_files_only
        if not (remote / repo_id / filename).is_file():
            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        (cache / repo_id).mkdir(parents=True, exist_ok=True)
        fetched.append(f"{repo_id}/{filename}")
        return shutil.copy(remote / repo_id / filename, cache / repo_id / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "hub_offline_requested", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    return remote, fetched


@pytest.fixture(scope="module")
def recorded_dataset(tmp_path_factory) -> Path:
    from tests.datasets.helpers import record

    return record(tmp_path_factory.mktemp("data") / "ds", [6, 6])


@pytest.mark.parametrize("layout", [*LAYOUTS, "lerobot_without_stats"])
def test_train_fine_tunes_a_hub_checkpoint_on_a_fresh_cache(workdir, fresh_hub_cache, recorded_dataset, layout):
    """`robotrain train --policy.path=<hub id>` fetches what loading needs (weights, processor files), whichever
    format the repo holds; the Hub here holds one repo of each."""
    remote, fetched = fresh_hub_cache
    policy = tiny_act(camera="observation.image", frame=(3, 32, 48), state_dim=2)  # the recorded dataset's features
    for name, save in LAYOUTS.items():
        save(policy, remote / "someone" / name)
    shutil.copytree(remote / "someone" / "lerobot", remote / "someone" / "lerobot_without_stats")
    no_stats(remote / "someone" / "lerobot_without_stats")
    code = main(["train", f"--policy.path=someone/{layout}", "--dataset.repo_id=test/synthetic",
                 f"--dataset.root={recorded_dataset}", "--steps=1", "--batch_size=2", "--num_workers=0",
                 "--output_dir=run"])
    assert code == 0
    assert f"someone/{layout}/model.safetensors" in fetched
    if layout in ("lerobot", "lerobot_without_stats"):  # LeRobot 0.4 keeps the action statistics there
        assert f"someone/{layout}/{POST_STATE}" in fetched
    tuned = load_file(workdir / "run/checkpoints/last/pretrained_model/model.safetensors")
    start = policy.state_dict()["model.backbone.conv1.weight"]
    torch.testing.assert_close(tuned["model.backbone.conv1.weight"], start, rtol=0, atol=1e-3)  # one small step


@pytest.mark.slow
def test_actions_match_lerobot_for_its_own_checkpoints(tmp_path):
    """LeRobot saves tiny ACT and Diffusion checkpoints (random weights, statistics it computed) and acts on fixed
    observations; robotrain loads the same directories and must produce the same actions."""
    if not PEER_PYTHON.exists():
        pytest.skip(f"the LeRobot peer venv is absent ({PEER_PYTHON}); build it with ../shared/peer/setup_lerobot.sh")
    script = Path(__file__).with_name("peer_lerobot_checkpoint.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(PEER_PYTHON), str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for policy_type in ("act", "diffusion"):
        io = load_file(tmp_path / policy_type / "io.safetensors")
        policy = Policy.from_pretrained(tmp_path / policy_type)
        assert policy.name == policy_type
        steps = sorted({int(key.split(".")[1]) for key in io if key.startswith("step.")})
        observations = [{key.split(".", 2)[2]: value for key, value in io.items() if key.startswith(f"step.{t}.")}
                        for t in steps]
        extra = {"noise": io["noise"]} if "noise" in io else {}
        got, expected = [], []
        if "chunk" in io:
            got.append(policy.predict_action_chunk(observations[0]))
            expected.append(io["chunk"])
        policy.reset()
        for t, obs in enumerate(observations):
            got.append(policy.select_action(obs, **extra))
            expected.append(io[f"action.{t}"])
        # Compared in the network's units (normalized actions): in dataset units the tolerance would scale with
        # the statistics (actions here reach ~40).
        normalize = policy.normalizer.normalize
        for ours, theirs in zip(got, expected, strict=True):
            assert torch.isfinite(theirs).all() and np.abs(theirs.numpy()).max() > 1  # in dataset units
            torch.testing.assert_close(normalize({"action": ours})["action"], normalize({"action": theirs})["action"],
                                       rtol=0, atol=1e-5)
