"""Any TrainConfig saved as train_config.json parses back equal; the file is plain JSON with "type" keys."""

from __future__ import annotations

import json
import shlex

import pytest

from robotrain.configs.parser import parse_eval_config, parse_train_config
from robotrain.configs.train import load_train_config, policy_names, save_config

POLICIES = policy_names()  # every policy with a model
ENVS = ["", "--env.type=pusht --env.obs_type=environment_state_agent_pos",
        "--env.type=aloha --env.task=AlohaTransferCube-v0", "--env.type=xarm"]
EXTRA = [
    "",
    "--use_policy_training_preset=false --optimizer.type=sgd --optimizer.momentum=0.9 --scheduler.type=vqbet",
    "--use_policy_training_preset=false --optimizer.type=adamw --scheduler.type=cosine_decay_with_warmup "
    "--wandb.enable=true --wandb.mode=offline --dataset.episodes=[3,1,2] --dataset.root=data/x --seed=null",
    "--dataset.image_transforms.enable=true --dataset.image_transforms.tfs.hue.weight=2 --eval.n_episodes=10 "
    "--eval.batch_size=5 --num_workers=0 --policy.device=cpu --policy.tags=[a,b]",
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("extra", EXTRA, ids=["defaults", "sgd", "adamw", "misc"])
def test_train_config_round_trip(policy, env, extra, workdir):
    cfg = parse_train_config(shlex.split(f"--policy.type={policy} --dataset.repo_id=u/d {env} {extra}"))
    path = workdir / "train_config.json"
    save_config(cfg, path)
    data = json.loads(path.read_text())
    assert data["policy"]["type"] == policy
    assert data["optimizer"]["type"] == cfg.optimizer.type
    if cfg.env is not None:
        assert data["env"]["type"] == cfg.env.type
    assert load_train_config(path) == cfg


def test_partial_dict_flag_refines_default(workdir):
    cfg = parse_train_config(shlex.split("--policy.type=act --dataset.repo_id=u/d "
                                         "--dataset.image_transforms.tfs.hue.weight=2"))
    tfs = cfg.dataset.image_transforms.tfs
    assert tfs["hue"].weight == 2 and tfs["hue"].kwargs == {"hue": [-0.05, 0.05]}
    assert set(tfs) == {"brightness", "contrast", "saturation", "hue", "sharpness", "affine"}


def test_yaml_config_with_cli_override(workdir):
    (workdir / "exp.yaml").write_text("dataset:\n  repo_id: u/d\npolicy:\n  type: act\n  chunk_size: 20\n"
                                      "  n_action_steps: 20\nbatch_size: 4\n")
    cfg = parse_train_config(["--config_path=exp.yaml", "--batch_size=16", "--policy.n_action_steps=10"])
    assert (cfg.batch_size, cfg.policy.chunk_size, cfg.policy.n_action_steps) == (16, 20, 10)


def test_cli_type_switch_discards_the_files_choice(workdir):
    (workdir / "exp.yaml").write_text("dataset: {repo_id: u/d}\n"
                                      "policy: {type: act, chunk_size: 20, n_action_steps: 20}\n")
    cfg = parse_train_config(["--config_path=exp.yaml", "--policy.type=diffusion"])
    assert cfg.policy.type == "diffusion" and cfg.policy.horizon == 16


@pytest.mark.parametrize(("word", "expected"), [("true", True), ("True", True), ("TRUE", True), ("yes", True),
                                                 ("false", False), ("False", False), ("FALSE", False), ("no", False)])
def test_booleans_any_case(word, expected, workdir):
    cfg = parse_train_config(["--policy.type=act", "--dataset.repo_id=u/d", f"--policy.use_vae={word}"])
    assert cfg.policy.use_vae is expected


def test_space_separated_values_and_bare_booleans(workdir):
    cfg = parse_train_config(["--policy.type", "act", "--dataset.repo_id", "u/d", "--steps", "123",
                              "--wandb.enable", "--policy.temporal_ensemble_coeff", "0.01",
                              "--policy.n_action_steps=1"])
    assert cfg.steps == 123 and cfg.wandb.enable and cfg.policy.temporal_ensemble_coeff == 0.01


def test_push_to_hub_defaults_to_false(workdir):
    assert parse_train_config(["--policy.type=act", "--dataset.repo_id=u/d"]).policy.push_to_hub is False


def test_old_spellings_are_accepted_with_a_note(workdir, caplog):
    cfg = parse_train_config(["--policy.type=act", "--dataset.repo_id=u/d", "--device=cpu", "--offline.steps=7",
                              "--env_eval_freq=3"])
    assert (cfg.policy.device, cfg.steps, cfg.eval_freq) == ("cpu", 7, 3)
    notes = [r.getMessage() for r in caplog.records]
    assert "note: --device is now spelled --policy.device (accepted this time)" in notes
    assert any("--offline.steps is now spelled --steps" in n for n in notes)
    assert any("--env_eval_freq is now spelled --eval_freq" in n for n in notes)


def test_eval_config(workdir):
    (workdir / "ckpt").mkdir()
    (workdir / "ckpt" / "config.json").write_text(json.dumps({"type": "diffusion", "n_obs_steps": 2}))
    cfg = parse_eval_config(["-p", "ckpt", "--env.type=pusht", "--eval.n_episodes=10", "--eval.batch_size=10"])
    assert cfg.policy.type == "diffusion" and str(cfg.policy.pretrained_path) == "ckpt"
    assert cfg.eval.n_episodes == 10 and cfg.job_name == "pusht_diffusion"
    assert cfg.output_dir.parts[:2] == ("outputs", "eval")
