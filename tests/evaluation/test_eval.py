"""`robotrain eval` and evaluation during training, on the real PushT simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robotrain.cli import main
from robotrain.datasets.video import count_frames
from tests.training.test_train_e2e import TINY

pytestmark = [pytest.mark.sim, pytest.mark.slow]


@pytest.fixture(scope="module")
def pusht_shaped(tmp_path_factory) -> Path:
    """A dataset with PushT's features (96x96 camera, 2-D state and action), so a policy trained on it fits the env."""
    from robotrain.datasets.dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("data") / "pusht_like"
    features = {
        "observation.image": {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    }
    rng = np.random.default_rng(0)
    writer = LeRobotDataset.create("test/pusht_like", 10, features, root=root)
    for _ in range(2):
        for _ in range(10):
            writer.add_frame({"observation.image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
                              "observation.state": rng.uniform(50, 450, 2).astype(np.float32),
                              "action": rng.uniform(50, 450, 2).astype(np.float32), "task": "push"})
        writer.save_episode()
    writer.finalize()
    return root


def test_training_evaluates_in_simulation_and_eval_writes_eval_info(workdir, pusht_shaped):
    run = workdir / "run"
    code = main(["train", *TINY["act"], "--dataset.repo_id=test/pusht_like", f"--dataset.root={pusht_shaped}",
                 "--env.type=pusht", "--env.episode_length=8", "--eval_freq=2", "--eval.n_episodes=2",
                 "--eval.batch_size=2", "--eval.use_async_envs=false", "--steps=2", "--batch_size=2",
                 "--num_workers=0", f"--output_dir={run}"])
    assert code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 2 and 0 <= evals[0]["pc_success"] <= 100
    videos = sorted((run / "eval" / "videos_step_000002").glob("*.mp4"))
    assert [v.name for v in videos] == ["eval_episode_0.mp4", "eval_episode_1.mp4"]

    out = workdir / "eval"
    policy = run / "checkpoints" / "last" / "pretrained_model"
    argv = ["eval", f"--policy.path={policy}", "--env.type=pusht", "--env.episode_length=6", "--eval.n_episodes=3",
            "--eval.batch_size=2", "--eval.max_episodes_rendered=1", "--eval.use_async_envs=false"]
    assert main([*argv, f"--output_dir={out}"]) == 0
    info = json.loads((out / "eval_info.json").read_text())
    assert [e["seed"] for e in info["per_episode"]] == [1000, 1001, 1002]
    assert all(e["length"] == 6 for e in info["per_episode"])  # PushT episodes run to the truncation here
    assert set(info["aggregated"]) == {"avg_sum_reward", "avg_max_reward", "pc_success", "eval_s", "eval_ep_s"}
    assert info["video_paths"] == [str(out / "videos" / "eval_episode_0.mp4")]
    assert count_frames(Path(info["video_paths"][0])) == 7  # the first frame and one per step
    again = workdir / "eval_again"
    assert main([*argv, f"--output_dir={again}"]) == 0  # same seeds, same policy: same episodes
    repeat = json.loads((again / "eval_info.json").read_text())
    assert [e["sum_reward"] for e in repeat["per_episode"]] == [e["sum_reward"] for e in info["per_episode"]]


def test_eval_refuses_a_policy_the_env_cannot_feed(workdir, pusht_shaped, capsys):
    run = workdir / "run"
    assert main(["train", *TINY["act"], "--dataset.repo_id=test/pusht_like", f"--dataset.root={pusht_shaped}",
                 "--steps=1", "--batch_size=2", "--num_workers=0", f"--output_dir={run}"]) == 0
    policy = run / "checkpoints" / "last" / "pretrained_model"
    code = main(["eval", f"--policy.path={policy}", "--env.type=aloha", "--env.task=AlohaInsertion-v0",
                 f"--output_dir={workdir / 'eval'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "observation.image" in err and "robotrain eval: error:" in err
    assert not (workdir / "eval").exists()


def test_evaluating_during_training_leaves_training_unchanged(workdir, pusht_shaped):
    from tests.training.test_train_e2e import assert_same_weights, weights

    # Diffusion samples noise from torch's RNG when it acts, so an unguarded evaluation would shift training.
    common = ["train", *TINY["diffusion"], "--dataset.repo_id=test/pusht_like", f"--dataset.root={pusht_shaped}",
              "--steps=4", "--batch_size=2", "--num_workers=0"]
    assert main([*common, f"--output_dir={workdir / 'plain'}"]) == 0
    assert main([*common, "--env.type=pusht", "--env.episode_length=5", "--eval_freq=2", "--eval.n_episodes=1",
                 "--eval.use_async_envs=false", f"--output_dir={workdir / 'evaluated'}"]) == 0
    assert_same_weights(weights(workdir / "evaluated"), weights(workdir / "plain"))
