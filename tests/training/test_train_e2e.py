"""`robotrain train` end to end, in process: checkpoint layout, exact resume, NaN stop, disk check, fine-tuning."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from robotrain.cli import main
from tests.datasets.helpers import record

TINY = {
    "act": ["--policy.type=act", "--policy.dim_model=16", "--policy.n_heads=2", "--policy.dim_feedforward=32",
            "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=4",
            "--policy.chunk_size=4", "--policy.n_action_steps=4", "--policy.pretrained_backbone_weights=null"],
    "diffusion": ["--policy.type=diffusion", "--policy.down_dims=[8,16]", "--policy.horizon=8",
                  "--policy.n_action_steps=4", "--policy.crop_shape=[28,40]", "--policy.diffusion_step_embed_dim=8",
                  "--policy.spatial_softmax_num_keypoints=4", "--policy.num_train_timesteps=10",
                  "--policy.drop_n_last_frames=2"],
    "mlp": ["--policy.type=mlp", "--policy.hidden_dim=16", "--policy.n_blocks=1", "--policy.chunk_size=4",
            "--policy.n_action_steps=4", "--policy.n_obs_steps=2"],
    # A built-in tiny SmolVLM (no download); its image cache on, as by default.
    "smolvla": ["--policy.type=smolvla", "--policy.vlm_model_name=builtin:tiny-smolvlm",
                "--policy.resize_imgs_with_padding=[32,32]", "--policy.chunk_size=4", "--policy.n_action_steps=4",
                "--policy.num_vlm_layers=4", "--policy.max_state_dim=8", "--policy.max_action_dim=8"],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", [12, 9, 14])


def run_train(dataset: Path, policy: str, *flags: str) -> int:
    return main(["train", *TINY[policy], "--dataset.repo_id=test/synthetic", f"--dataset.root={dataset}",
                 "--batch_size=4", "--log_freq=1", "--num_workers=0", *flags])


def weights(run: Path, step: str = "last") -> dict:
    return load_file(str(run / "checkpoints" / step / "pretrained_model" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_checkpoints_follow_lerobots_layout(workdir, dataset, policy):
    run = workdir / "run"
    assert run_train(dataset, policy, "--steps=4", "--save_freq=2", f"--output_dir={run}") == 0
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000002", "000004", "last"]
    assert os.readlink(checkpoints / "last") == "000004"
    assert sorted(p.name for p in (checkpoints / "000004" / "pretrained_model").iterdir()) == [
        "config.json", "model.safetensors", "train_config.json"]
    assert sorted(p.name for p in (checkpoints / "000004" / "training_state").iterdir()) == sorted(
        ["optimizer_param_groups.json", "optimizer_state.safetensors", "rng_state.safetensors",
         "training_step.json"] + (["scheduler_state.json"] if policy == "diffusion" else []))
    step = json.loads((checkpoints / "last" / "training_state" / "training_step.json").read_text())
    assert step["step"] == 4 and step["samples"] == 16
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)
    assert {p.name for p in (run / "plots").iterdir()} >= {"loss.png", "lr.png", "grad_norm.png"}


@pytest.mark.parametrize("policy", ["act", "diffusion", "mlp", "smolvla"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(workdir, dataset, policy):
    full = workdir / "full"
    assert run_train(dataset, policy, "--steps=6", "--save_freq=3", f"--output_dir={full}") == 0
    # A crash after the step-3 checkpoint: the later checkpoint never happened.
    crashed = workdir / "crashed"
    shutil.copytree(full, crashed, symlinks=True)
    shutil.rmtree(crashed / "checkpoints" / "000006")
    (crashed / "checkpoints" / "last").unlink()
    (crashed / "checkpoints" / "last").symlink_to("000003")
    config = crashed / "checkpoints" / "last" / "pretrained_model"
    assert main(["train", f"--config_path={config}", "--resume=true"]) == 0
    assert_same_weights(weights(crashed), weights(full))
    rows = [json.loads(line)["step"] for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]  # the redone steps replace, not duplicate, the log rows


def test_a_nan_loss_stops_and_keeps_the_last_good_step(workdir, dataset, monkeypatch, capsys):
    from robotrain.policies.act.modeling import ACTPolicy

    calls = {"n": 0}
    forward = ACTPolicy.forward

    def diverging(self, batch):
        calls["n"] += 1
        loss, metrics = forward(self, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setattr(ACTPolicy, "forward", diverging)
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=5", "--save_freq=0", f"--output_dir={run}") == 1
    err = capsys.readouterr().err
    assert "the loss became nan at step 3" in err and "last good step (2)" in err
    assert os.readlink(run / "checkpoints" / "last") == "000002"


def test_a_full_disk_is_reported_before_training(workdir, dataset, monkeypatch, capsys):
    import shutil as shutil_module

    usage = shutil_module.disk_usage(workdir)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _: usage._replace(free=10_000))
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=5", f"--output_dir={run}") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"--output_dir={run}: only 10.0 kB free" in errors[0]
    assert not run.exists()


def test_frame_cache_flag_decides_whether_frames_are_cached(workdir, dataset, monkeypatch, capsys):
    """off: no cache is written; on: a cache that does not fit stops with the fix, one that fits is built."""
    from robotrain.datasets import frames

    cache_root = Path(os.environ["ROBOTRAIN_CACHE_DIR"]) / "frames"
    shutil.rmtree(cache_root, ignore_errors=True)  # the module's dataset may be cached by an earlier test
    assert run_train(dataset, "act", "--steps=2", "--dataset.frame_cache=off", "--output_dir=off") == 0
    assert not list(cache_root.rglob("*.u8")), "off decodes on the fly and writes no cache"
    with monkeypatch.context() as patch:
        patch.setattr(frames, "cache_budget", lambda directory: 10)
        assert run_train(dataset, "act", "--steps=2", "--dataset.frame_cache=on", "--output_dir=on") != 0
    assert not (workdir / "on").exists()
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--dataset.frame_cache=off" in errors[0], errors
    assert run_train(dataset, "act", "--steps=2", "--dataset.frame_cache=on", "--output_dir=on2") == 0
    assert len(list(cache_root.rglob("*.u8"))) == 1


def test_fine_tuning_on_other_features_needs_adapt_features(workdir, dataset, tmp_path, capsys):
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=2", f"--output_dir={run}") == 0
    other = _dataset_with_state_dim(tmp_path / "other", 3)
    pretrained = run / "checkpoints" / "last" / "pretrained_model"
    common = ["train", f"--policy.path={pretrained}", "--dataset.repo_id=test/other", f"--dataset.root={other}",
              "--steps=2", "--batch_size=2", "--num_workers=0"]
    assert main([*common, f"--output_dir={workdir / 'refused'}"]) == 2
    err = capsys.readouterr().err
    assert "'observation.state' has shape (3,), the policy expects (2,)" in err and "--adapt_features=true" in err
    assert not (workdir / "refused").exists()
    assert main([*common, "--adapt_features=true", f"--output_dir={workdir / 'adapted'}"]) == 0
    adapted, original = weights(workdir / "adapted"), weights(run)
    assert adapted["model.backbone.conv1.weight"].shape == original["model.backbone.conv1.weight"].shape


def _dataset_with_state_dim(root: Path, dim: int) -> Path:
    import numpy as np

    from robotrain.datasets.dataset import LeRobotDataset
    from tests.datasets.helpers import features, frame

    spec = features()
    spec["observation.state"] = {"dtype": "float32", "shape": [dim], "names": None}
    writer = LeRobotDataset.create("test/other", 10, spec, root=root)
    for episode in range(2):
        for i in range(8):
            item = frame(episode, i, 8)
            item["observation.state"] = np.full(dim, i, np.float32)
            writer.add_frame(item)
        writer.save_episode()
    writer.finalize()
    return root
