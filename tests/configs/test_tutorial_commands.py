"""The commands of LeRobot's training tutorial, with `robotrain train` in place of `lerobot-train`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import draccus
import pytest

from robotrain.configs.parser import parse_train_config
from robotrain.envs.configs import AlohaEnv, PushtEnv
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig, AdamWConfig
from robotrain.optim.schedulers import DiffuserSchedulerConfig
from robotrain.policies import ACTConfig, DiffusionConfig

from .helpers import make_checkpoint, make_policy_dir

TUTORIAL = {
    "pusht": "--dataset.repo_id=lerobot/pusht --policy.type=diffusion --env.type=pusht",
    "insertion": "--policy.type=act --dataset.repo_id=lerobot/aloha_sim_insertion_human --env.type=aloha "
                 "--output_dir=outputs/train/act_aloha_insertion",
    "transfer": "--policy.type=act --dataset.repo_id=lerobot/aloha_sim_transfer_cube_human --env.type=aloha "
                "--env.task=AlohaTransferCube-v0 --output_dir=outputs/train/act_aloha_transfer",
    "from_config": "--config_path=outputs/train/act_aloha_transfer/checkpoints/last/pretrained_model/ "
                   "--output_dir=outputs/train/act_aloha_transfer_2 --policy.n_action_steps=80",
    "resume": "--config_path=outputs/train/run_resumption/checkpoints/last/pretrained_model/ --resume=true "
              "--steps=200000",
    "finetune": "--policy.path=lerobot/act_aloha_sim_transfer_cube_human "
                "--dataset.repo_id=lerobot/aloha_sim_insertion_human --env.type=aloha --env.task=AlohaInsertion-v0",
    "act_custom": "--policy.type=act --dataset.repo_id=user/d --policy.dim_model=512 --policy.n_heads=8 "
                  "--policy.n_encoder_layers=4 --policy.n_decoder_layers=1 --policy.chunk_size=100 "
                  "--policy.n_action_steps=100 --policy.use_vae=true --policy.latent_dim=32 --policy.kl_weight=10.0 "
                  "--policy.optimizer_lr=1e-5 --policy.dropout=0.1 --batch_size=32 --steps=20000",
}


def parse(name: str):
    return parse_train_config(shlex.split(TUTORIAL[name]))


def test_diffusion_pusht(workdir):
    cfg = parse("pusht")
    assert isinstance(cfg.policy, DiffusionConfig) and isinstance(cfg.env, PushtEnv)
    assert cfg.dataset.repo_id == "lerobot/pusht"
    assert (cfg.policy.horizon, cfg.policy.n_action_steps, cfg.policy.crop_shape) == (16, 8, (84, 84))
    assert cfg.optimizer == AdamConfig(lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
    assert cfg.scheduler == DiffuserSchedulerConfig(name="cosine", num_warmup_steps=500)
    assert cfg.job_name == "pusht_diffusion"
    parts = cfg.output_dir.parts
    assert parts[:2] == ("outputs", "train") and parts[3].endswith("_pusht_diffusion")
    assert (cfg.seed, cfg.batch_size, cfg.steps, cfg.eval_freq, cfg.log_freq, cfg.save_freq) == \
        (1000, 8, 100_000, 20_000, 200, 20_000)
    assert not cfg.output_dir.exists(), "parsing must not create the run directory"


def test_act_aloha_insertion(workdir):
    cfg = parse("insertion")
    assert isinstance(cfg.policy, ACTConfig) and isinstance(cfg.env, AlohaEnv)
    assert cfg.env.task == "AlohaInsertion-v0" and cfg.env.fps == 50 and cfg.env.episode_length == 400
    assert cfg.output_dir == Path("outputs/train/act_aloha_insertion")
    assert cfg.optimizer == AdamWConfig(lr=1e-5, weight_decay=1e-4) and cfg.scheduler is None
    assert cfg.job_name == "aloha_act"


def test_act_aloha_transfer_cube(workdir):
    cfg = parse("transfer")
    assert cfg.env.task == "AlohaTransferCube-v0"
    assert cfg.policy.chunk_size == 100 and cfg.policy.n_action_steps == 100 and cfg.policy.dim_model == 512


def test_new_run_from_a_checkpoints_config(workdir):
    with pytest.raises(ConfigError, match="config_path.*does not exist"):
        parse("from_config")  # no such run yet: fails only because the data is absent
    make_checkpoint(Path("outputs/train/act_aloha_transfer"), shlex.split(TUTORIAL["transfer"])[:-1])
    cfg = parse("from_config")
    assert cfg.output_dir == Path("outputs/train/act_aloha_transfer_2")
    assert cfg.policy.n_action_steps == 80 and cfg.policy.chunk_size == 100
    assert cfg.env.task == "AlohaTransferCube-v0" and not cfg.resume
    assert cfg.policy.pretrained_path is None, "a new run from a config trains from scratch"


def test_resume(workdir):
    with pytest.raises(ConfigError, match="config_path"):
        parse("resume")
    run = Path("outputs/train/run_resumption")
    checkpoint = make_checkpoint(run, ["--policy.type=act", "--dataset.repo_id=lerobot/aloha_sim_transfer_cube_human",
                                       "--env.type=aloha", "--steps=1000"])
    cfg = parse("resume")
    assert cfg.resume and cfg.steps == 200_000
    assert cfg.plan.mode == "resume" and cfg.plan.checkpoint == checkpoint.resolve() and cfg.plan.start_step == 100
    assert cfg.policy.pretrained_path == checkpoint.resolve() / "pretrained_model"
    assert cfg.output_dir == run.resolve(), "a resumed run keeps writing into its own directory"
    assert cfg.dataset.repo_id == "lerobot/aloha_sim_transfer_cube_human"


def test_resume_from_output_dir_alone(workdir):
    run = Path("outputs/train/r")
    make_checkpoint(run, ["--policy.type=act", "--dataset.repo_id=u/d", "--steps=50"])
    cfg = parse_train_config([f"--output_dir={run}", "--resume=true", "--steps=800"])
    assert cfg.resume and cfg.steps == 800 and cfg.plan.checkpoint.name == "000100"


def test_finetune_from_policy_path(workdir):
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        parse("finetune")  # not downloaded, and offline: fails only because the data is absent
    trained = ACTConfig(chunk_size=50, n_action_steps=50, dim_model=256)
    make_policy_dir(Path("lerobot/act_aloha_sim_transfer_cube_human"), {"type": "act", **draccus.encode(trained)})
    cfg = parse("finetune")
    assert isinstance(cfg.policy, ACTConfig)
    assert (cfg.policy.chunk_size, cfg.policy.dim_model) == (50, 256)
    assert cfg.policy.pretrained_path == Path("lerobot/act_aloha_sim_transfer_cube_human")
    assert cfg.env.task == "AlohaInsertion-v0"


def test_policy_path_flags_override_checkpoint(workdir):
    make_policy_dir(Path("ckpt"), {"type": "act", **draccus.encode(ACTConfig())})
    cfg = parse_train_config(["--policy.path=ckpt", "--dataset.repo_id=u/d", "--policy.n_action_steps=20",
                              "--policy.optimizer_lr=3e-5"])
    assert cfg.policy.n_action_steps == 20 and cfg.optimizer.lr == 3e-5


def test_act_with_every_field(workdir):
    cfg = parse("act_custom")
    p = cfg.policy
    assert (p.dim_model, p.n_heads, p.n_encoder_layers, p.n_decoder_layers) == (512, 8, 4, 1)
    assert (p.chunk_size, p.n_action_steps, p.use_vae, p.latent_dim) == (100, 100, True, 32)
    assert (p.kl_weight, p.optimizer_lr, p.dropout) == (10.0, 1e-5, 0.1)
    assert (cfg.batch_size, cfg.steps, cfg.env) == (32, 20000, None)
    assert cfg.job_name == "act"


def test_lerobot_train_config_loads(workdir):
    """A train_config.json as LeRobot writes it: extra fields are ignored with a warning, not an error."""
    run = Path("lr_run/checkpoints/000010/pretrained_model")
    run.mkdir(parents=True)
    data = {
        "dataset": {"repo_id": "lerobot/pusht", "root": None, "episodes": None, "revision": None,
                    "use_imagenet_stats": True, "video_backend": "torchcodec", "streaming": False},
        "env": {"type": "pusht", "task": "PushT-v0", "fps": 10, "episode_length": 300,
                "obs_type": "pixels_agent_pos", "render_mode": "rgb_array",
                "features": {"action": {"type": "ACTION", "shape": [2]}}, "features_map": {"action": "action"}},
        "policy": {"type": "diffusion", "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8,
                   "use_peft": False, "compile_model": False},
        "output_dir": "outputs/x", "job_name": "pusht_diffusion", "resume": False, "seed": 1000,
        "num_workers": 4, "batch_size": 64, "steps": 200000, "env_eval_freq": 10000, "log_freq": 200,
        "save_checkpoint": True, "save_freq": 10000, "use_policy_training_preset": True,
        "optimizer": {"type": "adam", "lr": 1e-4}, "scheduler": {"type": "diffuser", "name": "cosine"},
        "eval": {"n_episodes": 50, "batch_size": 50, "use_async_envs": False},
        "wandb": {"enable": False, "project": "lerobot", "run_id": "abc"},
        "rename_map": {}, "peft": None,
    }
    (run / "train_config.json").write_text(json.dumps(data))
    cfg = parse_train_config([f"--config_path={run}"])
    assert cfg.batch_size == 64 and cfg.eval_freq == 10000 and cfg.num_workers == 4
    assert cfg.dataset.video_backend == "torchcodec" and cfg.env.task == "PushT-v0"
    assert cfg.wandb.run_id is None, "a new run must not log into the old run's W&B run"
    assert cfg.output_dir != Path("outputs/x"), "a new run gets a new directory"
