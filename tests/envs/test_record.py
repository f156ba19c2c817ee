"""`robotrain dataset record-sim`: features, seed order, keep_failed, resume after interruptions, errors.

Fast tests use a fake expert (deterministic arrays from the seed, failing every seed = 2 mod 3) on PushT's
features; the real experts are exercised by the sim-marked test at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from robotrain import cli
from robotrain.configs.types import FeatureType
from robotrain.datasets import LeRobotDataset
from robotrain.envs import experts
from robotrain.envs.configs import AlohaEnv, EnvConfig, PushtEnv
from robotrain.envs.experts import Demonstration
from robotrain.envs.record import SIDECAR_PATH, RecordSimConfig, dataset_features, record_sim
from robotrain.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[2]
TASK = "Push the T-shaped block onto the target."
PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"


def fake_expert(env_cfg: EnvConfig, seed: int, render: bool = True) -> Demonstration:
    """A deterministic stand-in for a scripted expert: 4-6 frames, fails when seed % 3 == 2."""
    time.sleep(float(os.environ.get("FAKE_EXPERT_SLEEP", "0")))
    rng = np.random.default_rng(seed)
    n = 4 + seed % 3
    observations = {}
    for key, feature in env_cfg.features.items():
        if feature.type is FeatureType.VISUAL:
            channels, height, width = feature.shape
            ramp = np.linspace(0, 200, width, dtype=np.float32)[None, None, :, None]
            level = (10 * seed + 5 * np.arange(n, dtype=np.float32))[:, None, None, None]
            if render:
                observations[key] = np.broadcast_to(ramp + level, (n, height, width, channels)).astype(np.uint8)
        elif feature.type is not FeatureType.ACTION:
            observations[key] = rng.normal(size=(n, *feature.shape)).astype(np.float32)
    actions = rng.normal(size=(n, *env_cfg.features["action"].shape)).astype(np.float32)
    successes = np.zeros(n, dtype=bool)
    successes[-1] = seed % 3 != 2
    return Demonstration(observations, actions, successes.astype(np.float32), successes, seed, TASK)


def broken_expert(env_cfg: EnvConfig, seed: int, render: bool = True) -> Demonstration:
    """Interrupts the recording at seed 4, as a Ctrl-C would."""
    if seed == 4:
        raise KeyboardInterrupt
    return fake_expert(env_cfg, seed, render)


def picky_expert(env_cfg: EnvConfig, seed: int, render: bool = True) -> Demonstration:
    """Refuses the env's settings, as the ALOHA expert does for an episode_length shorter than its plan."""
    raise ConfigError("env.episode_length", env_cfg.episode_length, "is too short for the plan", "use 400")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(experts, "get_expert", lambda env_cfg: fake_expert)


def config(tmp_path: Path, **overrides) -> RecordSimConfig:
    values = {"env": PushtEnv(), "repo_id": "local/fake", "root": tmp_path / "ds", "num_episodes": 4,
              "num_workers": 0, "vcodec": "h264"}
    cfg = RecordSimConfig(**{**values, **overrides})
    cfg.validate()
    return cfg


def episode_actions(root: Path) -> list[np.ndarray]:
    ds = LeRobotDataset("local/fake", root=root)
    episodes = ds.columns["episode_index"].numpy()
    actions = ds.columns["action"].numpy()
    return [actions[episodes == e] for e in range(ds.num_episodes)]


def sidecar(root: Path) -> dict:
    return json.loads((root / SIDECAR_PATH).read_text())


def test_features_content_and_seed_order(tmp_path, fake):
    report = record_sim(config(tmp_path))
    assert (report.episodes, report.new_episodes, report.attempts, report.failed_seeds) == (4, 4, 5, [2])
    assert report.complete and report.frames == sum(4 + s % 3 for s in (0, 1, 3, 4))
    ds = LeRobotDataset("local/fake", root=report.root)
    features = ds.meta.features
    camera = features["observation.image"]
    assert camera["dtype"] == "video" and list(camera["shape"]) == [96, 96, 3]
    assert features["observation.state"]["names"] == ["x", "y"]
    assert {k: features[k]["dtype"] for k in ("next.reward", "next.success", "next.done")} == \
        {"next.reward": "float32", "next.success": "bool", "next.done": "bool"}
    assert ds.meta.info["robot_type"] == "pusht" and ds.fps == 10 and ds.meta.tasks == [TASK]
    from robotrain.policies.factory import dataset_to_policy_features

    policy_features = dataset_to_policy_features(features)
    assert {k: tuple(f.shape) for k, f in policy_features.items()} == \
        {k: tuple(f.shape) for k, f in PushtEnv().features.items()}
    for got, seed in zip(episode_actions(report.root), (0, 1, 3, 4), strict=True):
        np.testing.assert_array_equal(got, fake_expert(PushtEnv(), seed).actions)
    done, success = ds.columns["next.done"].numpy(), ds.columns["next.success"].numpy()
    ends = np.flatnonzero(np.diff(ds.columns["episode_index"].numpy(), append=-1))
    assert np.array_equal(np.flatnonzero(done), ends) and np.array_equal(np.flatnonzero(success), ends)
    item = ds[0]
    assert item["task"] == TASK and item["observation.image"].shape == (3, 96, 96)
    assert sidecar(report.root)["episodes"] == [{"seed": s, "success": True} for s in (0, 1, 3, 4)]
    assert sidecar(report.root)["dropped_seeds"] == [2]


def test_keep_failed_keeps_every_seed(tmp_path, fake):
    report = record_sim(config(tmp_path, keep_failed=True, num_episodes=3))
    assert (report.episodes, report.attempts, report.failed_seeds) == (3, 3, [2])
    ds = LeRobotDataset("local/fake", root=report.root)
    success = ds.columns["next.success"].numpy()
    episodes = ds.columns["episode_index"].numpy()
    assert not success[episodes == 2].any() and success[episodes == 1].any()


def test_interrupted_then_resumed_matches_uninterrupted(tmp_path, fake, monkeypatch):
    reference = record_sim(config(tmp_path / "ref"))
    monkeypatch.setattr(experts, "get_expert", lambda env_cfg: broken_expert)
    with pytest.raises(KeyboardInterrupt):
        record_sim(config(tmp_path))
    root = tmp_path / "ds"
    assert len(LeRobotDataset("local/fake", root=root)) > 0  # loads up to its last saved episode
    assert [e["seed"] for e in sidecar(root)["episodes"]] == [0, 1, 3]
    monkeypatch.setattr(experts, "get_expert", lambda env_cfg: fake_expert)
    resumed = record_sim(config(tmp_path))
    assert (resumed.new_episodes, resumed.attempts, resumed.episodes) == (1, 1, 4)
    for got, want in zip(episode_actions(root), episode_actions(reference.root), strict=True):
        np.testing.assert_array_equal(got, want)
    more = record_sim(config(tmp_path, num_episodes=6))  # a larger count continues the same recording
    assert (more.new_episodes, more.episodes, more.failed_seeds) == (2, 6, [2, 5])
    again = record_sim(config(tmp_path, num_episodes=6))
    assert (again.new_episodes, again.attempts) == (0, 0)


def test_kill_during_save_is_retried(tmp_path, fake, monkeypatch):
    """A save that dies before its commit leaves a sidecar entry ahead of the dataset; resume redoes that seed."""
    from robotrain.datasets.writer import DatasetWriter

    commit = DatasetWriter._commit

    def dying_commit(self, n, stats):
        if self.info["total_episodes"] == 2:
            raise SystemExit("killed")
        commit(self, n, stats)

    monkeypatch.setattr(DatasetWriter, "_commit", dying_commit)
    with pytest.raises(SystemExit):
        record_sim(config(tmp_path))
    root = tmp_path / "ds"
    assert [e["seed"] for e in sidecar(root)["episodes"]] == [0, 1, 3]
    assert LeRobotDataset("local/fake", root=root).num_episodes == 2
    monkeypatch.setattr(DatasetWriter, "_commit", commit)
    report = record_sim(config(tmp_path))
    assert (report.new_episodes, report.attempts, report.episodes) == (2, 2, 4)
    assert [e["seed"] for e in sidecar(root)["episodes"]] == [0, 1, 3, 4]
    np.testing.assert_array_equal(episode_actions(root)[2], fake_expert(PushtEnv(), 3).actions)


def test_other_settings_or_other_datasets_are_refused(tmp_path, fake):
    record_sim(config(tmp_path, num_episodes=1))
    with pytest.raises(UserError, match=r"recorded with --seed=0 \(this run: 7\).*Fix: repeat the original flags"):
        record_sim(config(tmp_path, seed=7))
    with pytest.raises(UserError, match=r"--env.obs_type=pixels_agent_pos \(this run: environment_state_agent_pos"):
        record_sim(config(tmp_path, env=PushtEnv(obs_type="environment_state_agent_pos")))
    (tmp_path / "ds" / SIDECAR_PATH).unlink()
    with pytest.raises(UserError, match="record-sim did not write"):
        record_sim(config(tmp_path))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no dataset"):
        record_sim(config(tmp_path, root=tmp_path / "other"))


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_expert_refusing_the_settings_leaves_nothing(tmp_path, workers):
    with pytest.raises(UserError, match=r"--env.episode_length=300: is too short for the plan. Fix: use 400"):
        record_sim(config(tmp_path, num_workers=workers), expert=picky_expert)
    assert not (tmp_path / "ds").exists()


def test_max_attempts_stops_a_failing_expert(tmp_path, fake):
    report = record_sim(config(tmp_path, num_episodes=3, max_attempts=3))
    assert not report.complete and report.episodes == 2 and report.failed_seeds == [2]


def test_cli_exits_1_when_attempts_run_out(tmp_path, fake, capsys):
    args = ["--env.type=pusht", "--repo_id=local/fake", f"--root={tmp_path / 'ds'}", "--num_workers=0"]
    assert run_cli(*args, "--num_episodes=3", "--max_attempts=3") == 1
    assert "only 2 of 3 episodes after 3 seeds; rerun with a larger --max_attempts" in capsys.readouterr().err
    assert run_cli(*args, "--num_episodes=3", "--max_attempts=4") == 0


def test_features_of_aloha():
    features = dataset_features(AlohaEnv(task="AlohaTransferCube-v0"))
    assert features["observation.images.top"]["shape"] == [480, 640, 3]
    assert features["observation.state"]["names"][0] == "left_waist" and len(features["action"]["names"]) == 14


def run_cli(*args: str) -> int:
    return cli.main(["dataset", "record-sim", *args])


def test_cli_records_and_prints_the_train_command(tmp_path, fake, capsys):
    root = tmp_path / "ds"
    code = run_cli("--env.type=pusht", "--repo_id=local/fake", f"--root={root}", "--num_episodes=2",
                   "--num_workers=0", "--vcodec=h264")
    out = capsys.readouterr().out
    assert code == 0 and f"{root} holds 2 episodes" in out
    assert f"robotrain train --dataset.repo_id=local/fake --dataset.root={root} --policy.type=diffusion" in out


def test_cli_interrupted_says_how_to_continue(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experts, "get_expert", lambda env_cfg: broken_expert)
    args = ["--env.type=pusht", "--repo_id=local/fake", f"--root={tmp_path / 'ds'}", "--num_workers=0"]
    assert run_cli(*args) == 130
    assert "Run the same command again to continue" in capsys.readouterr().err
    monkeypatch.setattr(experts, "get_expert", lambda env_cfg: fake_expert)
    assert run_cli(*args, "--num_episodes=5") == 0
    assert "recorded 2 new episode(s) from 3 seed(s)" in capsys.readouterr().out


@pytest.mark.parametrize(("flags", "message"), [
    (["--env.type=pusht", "--repo_id=a/b", "--num_episodes=0"], "--num_episodes=0: must be at least 1"),
    (["--env.type=pusht", "--repo_id=a/b", "--vcodec=vp9"], "--vcodec=vp9: is not a supported codec"),
    (["--env.type=aloha", "--env.task=AlohaTransferCub-v0", "--repo_id=a/b"], "did you mean --env.task=Aloha"),
    (["--env.type=xarm", "--repo_id=a/b", "--env.obs_type=state"], "--env.obs_type=state"),
    (["--env.type=pusht", "--repo_id=../x"], "--repo_id=../x: is not a dataset id"),
    (["--env.type=pusht", "--repo_id=a/b", "--num_episode=3"], "did you mean --num_episodes"),
])
def test_cli_bad_flags(flags, message, tmp_path, capsys):
    assert run_cli(*flags, f"--root={tmp_path / 'ds'}") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ds").exists()


@pytest.mark.slow
def test_workers_give_the_same_dataset(tmp_path, fake):
    inline = record_sim(config(tmp_path / "inline", num_episodes=5))
    pooled = record_sim(config(tmp_path / "pooled", num_episodes=5, num_workers=2))
    assert pooled.episodes == inline.episodes == 5
    for name in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        assert pq.read_table(pooled.root / name).equals(pq.read_table(inline.root / name))


CHILD = """
import sys
from robotrain.envs import experts
from tests.envs.test_record import fake_expert
experts.get_expert = lambda env_cfg: fake_expert
from robotrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def wait_until_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _proc_state(p)]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="watches worker processes through /proc and pgrep")
def test_sigkill_mid_recording_then_resume(tmp_path, fake):
    """A real process (with a worker pool) killed by SIGKILL mid-recording; the dataset loads and resumes."""
    root = tmp_path / "ds"
    args = ["dataset", "record-sim", "--env.type=pusht", "--repo_id=local/fake", f"--root={root}",
            "--num_episodes=8", "--num_workers=2"]
    env = {**os.environ, "FAKE_EXPERT_SLEEP": "0.3", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if (root / SIDECAR_PATH).is_file() and len(sidecar(root)["episodes"]) >= 3:
            break
        time.sleep(0.02)
    assert child.poll() is None, "the recording ended before it could be killed"
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True,
                                              text=True).stdout.split()]
    child.kill()  # SIGKILL to the recorder only: its expert workers must notice and leave
    child.wait()
    assert workers and wait_until_gone(workers, timeout=10), "expert workers outlived the killed recorder"
    saved = LeRobotDataset("local/fake", root=root).num_episodes
    assert 2 <= saved < 8
    report = record_sim(config(tmp_path, num_episodes=8, vcodec="libsvtav1"))
    assert report.episodes == 8 and report.new_episodes == 8 - saved
    reference = record_sim(config(tmp_path / "ref", num_episodes=8, vcodec="libsvtav1"))
    for got, want in zip(episode_actions(root), episode_actions(reference.root), strict=True):
        np.testing.assert_array_equal(got, want)
    ds = LeRobotDataset("local/fake", root=root)
    assert ds[len(ds) - 1]["observation.image"].shape == (3, 96, 96)


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason=f"LeRobot peer venv not found at {PEER_PYTHON} "
                    "(build it with bash ../shared/peer/setup_lerobot.sh)")
def test_lerobot_reads_a_recording(tmp_path, fake):
    report = record_sim(config(tmp_path, num_episodes=2, vcodec="libsvtav1"))
    out = tmp_path / "peer.npz"
    done = subprocess.run([str(PEER_PYTHON), str(REPO / "bench/peer_dump.py"), str(report.root), str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ds = LeRobotDataset("local/fake", root=report.root)
    with np.load(out) as peer:
        for i in range(len(ds)):
            item = ds[i]
            assert str(peer[f"plain/{i}/task"]) == TASK
            for key in ("action", "observation.state", "next.reward", "next.success", "next.done", "index"):
                np.testing.assert_array_equal(peer[f"plain/{i}/{key}"], item[key].numpy(), err_msg=key)
            pixels = np.abs(peer[f"plain/{i}/observation.image"] - item["observation.image"].numpy()).max()
            assert pixels <= 2 / 255


@pytest.mark.sim
def test_real_pusht_expert(tmp_path):
    pytest.importorskip("robotrain.envs.experts.pusht", reason="the PushT expert is not written yet")
    cfg = RecordSimConfig(env=PushtEnv(episode_length=20), repo_id="local/pusht_scripted", root=tmp_path / "ds",
                          num_episodes=2, keep_failed=True, num_workers=0)
    cfg.validate()
    report = record_sim(cfg)
    ds = LeRobotDataset("local/pusht_scripted", root=report.root)
    assert ds.num_episodes == 2 and len(ds) <= 40 and ds[0]["observation.image"].shape == (3, 96, 96)
    assert ds.meta.tasks == ["Push the T-shaped block onto the target."]


@pytest.mark.sim
@pytest.mark.slow
def test_real_aloha_expert_in_a_worker(tmp_path):
    """One full transfer-cube episode (~35 CPU-s: 400 rendered 480x640 frames) recorded by a spawned worker."""
    pytest.importorskip("robotrain.envs.experts.aloha", reason="the ALOHA expert is not written yet")
    cfg = RecordSimConfig(env=AlohaEnv(task="AlohaTransferCube-v0"), repo_id="local/aloha_scripted",
                          root=tmp_path / "ds", num_episodes=1, num_workers=1)
    cfg.validate()
    report = record_sim(cfg)
    assert report.complete and report.failed_seeds == [] and report.frames == 400
    ds = LeRobotDataset("local/aloha_scripted", root=report.root)
    item = ds[399]
    assert item["observation.images.top"].shape == (3, 480, 640) and bool(item["next.done"])
    assert bool(item["next.success"]) and item["observation.state"].shape == (14,)
