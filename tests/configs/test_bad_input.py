"""Every user mistake: one line on stderr naming the flag, the value and the fix; exit code 2; nothing written."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import draccus
import pytest

from robotrain.cli import main
from robotrain.policies import ACTConfig

from .helpers import make_checkpoint, make_policy_dir

ACT = "--policy.type=act --dataset.repo_id=u/d"
DIFF = "--policy.type=diffusion --dataset.repo_id=u/d"

# (command line after `robotrain`, pattern the single stderr line must contain)
CASES = [
    # missing required fields
    ("train --policy.type=act", r"--dataset\.repo_id: is required .*Fix: add --dataset\.repo_id=lerobot/pusht"),
    ("train --dataset.repo_id=u/d", r"--policy\.type: no policy chosen.*--policy\.path"),
    ("eval --policy.path=ckpt", r"--env\.type: is needed, or a dataset.*<aloha\|pusht\|xarm>.*--dataset\.repo_id=ID"),
    ("train --policy.type=act --dataset.repo_id=u/d --dataset.val_fraction=1.5", r"--dataset\.val_fraction=1\.5: must be at least 0 and below 1"),
    ("train --policy.type=act --dataset.repo_id=u/d --dataset.val_episodes=[1] --dataset.val_fraction=0.2", r"--dataset\.val_fraction=0\.2: cannot be combined with --dataset\.val_episodes"),
    ("train --policy.type=act --dataset.repo_id=u/d --dataset.episodes=[0,1] --dataset.val_episodes=[5]", r"--dataset\.val_episodes=\[5\]: holds episodes outside --dataset\.episodes \(\[5\]\)"),
    ("train --policy.type=act --dataset.repo_id=u/d --dataset.val_episodes=[1,1]", r"--dataset\.val_episodes=\[1,1\]: lists an episode twice"),
    ("train --policy.type=act --dataset.repo_id=u/d --gradient_accumulation_steps=0", r"--gradient_accumulation_steps=0: must be at least 1"),
    ("train --policy.type=act --dataset.repo_id=u/d --keep_last_checkpoints=-1", r"--keep_last_checkpoints=-1: cannot be negative"),
    ("eval --policy.path=ckpt --dataset.repo_id=u/d --eval.max_samples=0", r"--eval\.max_samples=0: must be at least 1"),
    ("eval --env.type=pusht", r"--policy\.path: no policy to evaluate"),
    ("train --dataset.repo_id=u/d --policy.dim_model=64", r"--policy\.dim_model: choose the policy first.*--policy\.type="),
    # unknown flags, with close matches
    (f"train {ACT} --policy.dim_modle=3", r"--policy\.dim_modle=3: ACTConfig has no option 'dim_modle'.*did you mean --policy\.dim_model\?"),
    (f"train {ACT} --batchsize=8", r"--batchsize=8: is not an option.*did you mean --batch_size\?"),
    (f"train {ACT} --dim_model=64", r"--dim_model=64: is not an option.*did you mean --policy\.dim_model\?"),
    (f"train {ACT} --dataset.repoid=x", r"--dataset\.repoid=x: DatasetConfig has no option.*did you mean --dataset\.repo_id\?"),
    (f"train {DIFF} --policy.chunk_size=10", r"--policy\.chunk_size=10: DiffusionConfig has no option 'chunk_size'; it belongs to act, mlp, smolvla"),
    (f"train {ACT} --wandb.enabled=true", r"did you mean --wandb\.enable\?"),
    (f"train {ACT} --eval.n_episode=3", r"did you mean --eval\.n_episodes\?"),
    (f"train {ACT} --env.type=pusht --env.tsk=PushT-v0", r"did you mean --env\.task\?"),
    (f"train {ACT} --xyzzy=1", r"--xyzzy=1: is not an option of this command"),
    # unknown .type choices
    ("train --policy.type=actt --dataset.repo_id=u/d", r"--policy\.type=actt: is not a policy type \(choose one of act, diffusion, mlp, smolvla, tdmpc, vqbet\).*did you mean --policy\.type=act\?"),
    (f"train {ACT} --env.type=alooha", r"--env\.type=alooha: is not a env type.*did you mean --env\.type=aloha\?"),
    (f"train {ACT} --use_policy_training_preset=false --optimizer.type=adamx", r"--optimizer\.type=adamx: is not a optimizer type.*adam, adamw, sgd"),
    (f"train {ACT} --use_policy_training_preset=false --optimizer.type=adam --scheduler.type=cos", r"--scheduler\.type=cos: is not a scheduler type.*cosine"),
    # wrong value types
    (f"train {ACT} --batch_size=abc", r"--batch_size=abc: is not a whole number\. Fix: write e\.g\. --batch_size=8"),
    (f"train {ACT} --batch_size=2.5", r"--batch_size=2\.5: is not a whole number"),
    (f"train {ACT} --steps=true", r"--steps=true: is not a whole number"),
    (f"train {ACT} --policy.optimizer_lr=fast", r"--policy\.optimizer_lr=fast: is not a number"),
    (f"train {ACT} --resume=maybe", r"--resume=maybe: is not true or false"),
    (f"train {ACT} --policy.use_vae=2", r"--policy\.use_vae=2: is not true or false"),
    (f"train {ACT} --dataset.episodes=3", r"--dataset\.episodes=3: is not a list"),
    (f"train {ACT} --dataset.episodes=[0,a]", r"--dataset\.episodes\.1=a: is not a whole number"),
    (f"train {DIFF} --policy.crop_shape=[84]", r"--policy\.crop_shape=\[84\]: needs exactly 2 values"),
    (f"train {ACT} '--policy.normalization_mapping={{STATE: BAD}}'", r"--policy\.normalization_mapping\.STATE=BAD: is not one of MIN_MAX"),
    (f"train {ACT} --dataset.episodes=[0,1", r"--dataset\.episodes=\[0,1: cannot be read as a value"),
    (f"train {ACT} --steps", r"--steps: needs a value"),
    (f"train {ACT} --eval=3", r"--eval=3: is a group of options, not a value"),
    # cross-field rules
    (f"train {ACT} --policy.n_action_steps=200", r"--policy\.n_action_steps=200: must not exceed chunk_size \(100\)"),
    (f"train {ACT} --policy.temporal_ensemble_coeff=0.01", r"--policy\.temporal_ensemble_coeff=0\.01: temporal ensembling .* needs n_action_steps=1.*add --policy\.n_action_steps=1"),
    (f"train {ACT} --policy.n_obs_steps=2", r"--policy\.n_obs_steps=2: ACT sees one observation step only"),
    (f"train {ACT} --policy.dim_model=100 --policy.n_heads=8", r"--policy\.n_heads=8: must divide dim_model \(100\)"),
    (f"train {ACT} --policy.vision_backbone=vit", r"--policy\.vision_backbone=vit: is not a supported backbone"),
    (f"train {DIFF} --policy.horizon=20", r"--policy\.horizon=20: must be a multiple of 2\*\*len\(down_dims\) = 8.*--policy\.horizon=16"),
    (f"train {DIFF} --policy.n_action_steps=16", r"--policy\.n_action_steps=16: must not exceed horizon - n_obs_steps \+ 1 \(15\)"),
    (f"train {DIFF} --policy.prediction_type=v", r"--policy\.prediction_type=v: is not one of epsilon, sample"),
    (f"train {DIFF} --policy.pretrained_backbone_weights=ResNet18_Weights.IMAGENET1K_V1", r"--policy\.use_group_norm=true: replaces the batch norms"),
    ("train --policy.type=tdmpc --dataset.repo_id=u/d --policy.n_action_steps=3", r"--policy\.n_action_steps=3: more than 1 needs n_action_repeats=1"),
    ("train --policy.type=smolvla --dataset.repo_id=u/d --policy.n_action_steps=60", r"--policy\.n_action_steps=60: must not exceed chunk_size \(50\)"),
    (f"train {ACT} --batch_size=0", r"--batch_size=0: must be at least 1"),
    (f"train {ACT} --save_freq=-1", r"--save_freq=-1: cannot be negative"),
    (f"train {ACT} --dataset.episodes=[0,0]", r"--dataset\.episodes=\[0,0\]: lists an episode twice"),
    (f"train {ACT} --dataset.episodes=[-1]", r"--dataset\.episodes=\[-1\]: episode indices cannot be negative"),
    ("train --policy.type=act --dataset.repo_id=../etc", r"--dataset\.repo_id=\.\./etc: is not a dataset id"),
    ("train --policy.type=act --dataset.repo_id=/abs/path", r"--dataset\.repo_id=/abs/path: is not a dataset id.*--dataset\.root=DIR"),
    (f"train {ACT} --dataset.video_backend=ffmpeg", r"--dataset\.video_backend=ffmpeg: is not a video backend"),
    (f"train {ACT} --env.type=aloha --env.task=AlohaInsertion-v1", r"--env\.task=AlohaInsertion-v1: is not a aloha task.*did you mean --env\.task=AlohaInsertion-v0\?"),
    (f"train {ACT} --env.type=pusht --env.obs_type=rgb", r"--env\.obs_type=rgb: is not an observation type of pusht"),
    (f"train {ACT} --env.type=pusht --env.obs_type=block_frme",
     r"--env\.obs_type=block_frme: is not an observation type of pusht.*did you mean --env\.obs_type=block_frame\?"),
    (f"train {ACT} --eval.n_episodes=5 --eval.batch_size=10", r"--eval\.batch_size=10: is more environments than episodes"),
    (f"train {ACT} --wandb.mode=cloud", r"--wandb\.mode=cloud: is not a W&B mode"),
    (f"train {ACT} --policy.device=gpu", r"--policy\.device=gpu: is not a device"),
    (f"train {ACT} --policy.push_to_hub=true", r"--policy\.push_to_hub=true: needs a Hub repo to push to.*--policy\.repo_id="),
    (f"train {ACT} --optimizer.lr=1e-3", r"--optimizer\.lr: is ignored while the policy's training preset is on.*--use_policy_training_preset=false"),
    (f"train {ACT} --use_policy_training_preset=false", r"--optimizer\.type: is needed when --use_policy_training_preset=false"),
    (f"train {ACT} --use_policy_training_preset=false --optimizer.type=sgd --optimizer.nesterov=true", r"--optimizer\.nesterov=true: needs momentum > 0"),
    (f"train {ACT} --use_policy_training_preset=false --optimizer.type=adam --optimizer.betas=[0.9,1.5]", r"--optimizer\.betas=\[0\.9,1\.5\]: each beta must be in \[0, 1\)"),
    (f"train {ACT} --batch_size=8 --batch_size=16", r"--batch_size=16: is given twice \(also as --batch_size=8\)"),
    # sources: config_path and policy.path
    (f"train {ACT} --config_path=nowhere/train_config.json", r"--config_path=nowhere/train_config\.json: does not exist"),
    ("train --config_path=emptydir", r"--config_path=emptydir: is a directory without train_config\.json"),
    ("train --config_path=broken.json", r"--config_path=broken\.json: is not valid JSON"),
    ("train --config_path=list.yaml", r"--config_path=list\.yaml: does not hold a mapping"),
    ("train --config_path=typo.json", r"--config_path=typo\.json: has no setting 'bach_size' \(TrainConfig\).*did you mean 'batch_size'"),
    ("train --policy.path=ckpt --policy.type=act --dataset.repo_id=u/d", r"--policy\.type=act: cannot be combined with --policy\.path"),
    ("train --policy.path=emptydir --dataset.repo_id=u/d", r"--policy\.path=emptydir: holds no config\.json"),
    ("train --policy.path=user/not_downloaded --dataset.repo_id=u/d", r"--policy\.path=user/not_downloaded: is not a local directory, and HF_HUB_OFFLINE is set"),
    ("train --policy.path=notype --dataset.repo_id=u/d", r"--policy\.path=notype: .* has no \"type\" key"),
    ("train --policy.path=ckpt --resume=true --output_dir=run", r"--policy\.path=ckpt: cannot be combined with --resume=true"),
    ("train --resume=true", r"--resume=true: needs to know which run to continue"),
    ("train --resume=true --output_dir=emptydir", r"--output_dir=emptydir: has no checkpoint to resume"),
    ("train --resume=true --config_path=lonely", r"--config_path=lonely/train_config\.json: is not inside a training checkpoint"),
    (f"train {ACT} --output_dir=run", r"--output_dir=run: already exists and holds files from another run.*--resume=true"),
    (f"train {ACT} --output_dir=afile", r"--output_dir=afile: is a file, not a directory"),
    (f"train {ACT} --output_dir=afile/run", r"--output_dir=afile/run: cannot be created \(afile is a file\)"),
    ("eval --env.type=pusht --policy.path=ckpt --output_dir=run", r"--output_dir=run: already exists and holds files"),
    # spellings from older tutorials
    ("train policy=act env=aloha dataset_repo_id=lerobot/aloha_sim_insertion_human training.offline_steps=100000 "
     "hydra.run.dir=outputs/x",
     r"'policy=act' is Hydra-style .* robotrain train --policy\.type=act --env\.type=aloha "
     r"--dataset\.repo_id=lerobot/aloha_sim_insertion_human --steps=100000 --output_dir=outputs/x$"),
    ("train --policy.type=act device=cuda --dataset.repo_id=u/d", r"Run instead: robotrain train --policy\.type=act --policy\.device=cuda --dataset\.repo_id=u/d"),
    ("eval -p lerobot/diffusion_pusht eval.n_episodes=10 eval.batch_size=10",
     r"Run instead: robotrain eval -p lerobot/diffusion_pusht --eval\.n_episodes=10 --eval\.batch_size=10"),
    (f"train {ACT} -x", r"'-x' is not an option of robotrain train"),
    (f"train {ACT} stray", r"unexpected argument 'stray'"),
    ("dataset convrt", r"'convrt' is not a dataset tool; did you mean `robotrain dataset convert`\?"),
]


@pytest.fixture
def fixtures_on_disk(workdir: Path) -> Path:
    """Files the source cases point at, created before each case."""
    (workdir / "emptydir").mkdir()
    (workdir / "broken.json").write_text("{not json")
    (workdir / "list.yaml").write_text("- 1\n- 2\n")
    (workdir / "typo.json").write_text('{"dataset": {"repo_id": "u/d"}, "bach_size": 4}')
    (workdir / "afile").write_text("x")
    make_policy_dir(workdir / "ckpt", {"type": "act", **draccus.encode(ACTConfig())})
    make_policy_dir(workdir / "notype", {"chunk_size": 10})
    checkpoint = make_checkpoint(workdir / "run", shlex.split(ACT))
    (workdir / "lonely").mkdir()
    (workdir / "lonely" / "train_config.json").write_bytes(
        (checkpoint / "pretrained_model" / "train_config.json").read_bytes())
    return workdir


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.lstat().st_mtime for p in root.rglob("*")}


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[c for c, _ in CASES])
def test_bad_input(command: str, expected: str, fixtures_on_disk: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(fixtures_on_disk)
    code = main(shlex.split(command))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert code == 2, err
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith(("robotrain train: error: ", "robotrain eval: error: ", "robotrain dataset: error: "))
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in err and out == ""
    assert snapshot(fixtures_on_disk) == before, "a failed command must not write anything"


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


def test_unwritable_output_dir_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    assert main(shlex.split(f"train {ACT} --output_dir=locked/run")) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_unknown_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["trian"]) == 2
    assert "did you mean `robotrain train`?" in capsys.readouterr().err
