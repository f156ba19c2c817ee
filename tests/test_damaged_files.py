"""Damaged datasets and checkpoints, and risky run folders: one line on stderr, exit 2, nothing written or deleted.

Each case copies a pristine dataset and a pristine run (a tiny ACT trained for two steps) into its own folder,
damages one thing, runs one `robotrain` command in process, and compares a snapshot of every file (path, size,
modification time, content hash) before and after. The flag corpus is tests/configs/test_bad_input.py; together
they are the bad-input corpus of the project.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from robotrain.cli import main
from tests.configs.test_bad_input import CASES as FLAG_CASES
from tests.datasets.helpers import features, frame, record
from tests.training.test_train_e2e import TINY

TRAIN = ["train", *TINY["act"], "--dataset.repo_id=test/synthetic", "--batch_size=4", "--num_workers=0",
         "--steps=4", "--log_freq=1"]


# ---- the pristine files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """<base>/ds (3 episodes, AV1 video) and <base>/run (checkpoints/000002 + last), made once."""
    base = tmp_path_factory.mktemp("pristine")
    record(base / "ds", [12, 9, 14])
    assert main([*TRAIN[:-2], "--log_freq=1", f"--dataset.root={base / 'ds'}", "--steps=2",
                 f"--output_dir={base / 'run'}"]) == 0
    return base


@pytest.fixture
def case_dir(pristine: Path, workdir: Path) -> Path:
    shutil.copytree(pristine / "ds", workdir / "ds", symlinks=True)
    shutil.copytree(pristine / "run", workdir / "run", symlinks=True)
    return workdir


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, size, mtime and a hash of file contents (links by their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        if path.is_symlink():
            out[str(path)] = ("link", os.readlink(path))
        elif path.is_dir():
            out[str(path)] = ("dir",)
        else:
            out[str(path)] = ("file", stat.st_size, stat.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


# ---- damage ------------------------------------------------------------------------------------------------
def edit_json(path: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Change the JSON object in `path` in place (what `change` returns is ignored)."""
    def damage(base: Path) -> None:
        target = base / path
        data = json.loads(target.read_text())
        change(data)
        target.write_text(json.dumps(data))
    return damage


def set_key(path: str, key: str, value: object) -> Callable[[Path], None]:
    return edit_json(path, lambda data: data.__setitem__(key, value))


def write(path: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(base: Path) -> None:
        target = base / path
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def truncate(path: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(base: Path) -> None:
        target = base / path
        data = target.read_bytes()
        target.write_bytes(data[: int(len(data) * keep)])
    return damage


def remove(path: str) -> Callable[[Path], None]:
    def damage(base: Path) -> None:
        target = base / path
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    return damage


def replace_header(path: str) -> Callable[[Path], None]:
    def damage(base: Path) -> None:
        target = base / path
        data = target.read_bytes()
        target.write_bytes(b"\xff" * 8 + data[8:])  # a header length no file can hold
    return damage


def info_features(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return edit_json("ds/meta/info.json", lambda info: change(info["features"]))


def nan_dataset(key: str, value: float) -> Callable[[Path], None]:
    """The dataset re-recorded with one bad value in episode 1, frame 3 (the writer accepts it with allow_nan)."""
    def damage(base: Path) -> None:
        from robotrain.datasets import LeRobotDataset

        shutil.rmtree(base / "ds")
        writer = LeRobotDataset.create("test/synthetic", 10, features(), root=base / "ds", allow_nan=True)
        for episode, length in enumerate([12, 9, 14]):
            for i in range(length):
                values = frame(episode, i, length)
                if (episode, i) == (1, 3):
                    values[key] = np.full_like(values[key], value)
                writer.add_frame(values)
            writer.save_episode()
        writer.finalize()
    return damage


def episodes_file(change: Callable) -> Callable[[Path], None]:
    """Rewrite meta/episodes/chunk-000/file-000.parquet through `change(table) -> table`."""
    def damage(base: Path) -> None:
        import pyarrow.parquet as pq

        path = base / "ds/meta/episodes/chunk-000/file-000.parquet"
        pq.write_table(change(pq.read_table(path)), path)
    return damage


def shift_episode_index(table):
    import pyarrow as pa

    return table.set_column(0, "episode_index", pa.array([0, 2, 3], pa.int64()))


def outside_symlink(path: str) -> Callable[[Path], None]:
    """Replace a folder of the dataset by a link to a copy of it outside the dataset."""
    def damage(base: Path) -> None:
        target, outside = base / path, base / "elsewhere"
        shutil.copytree(target, outside)
        shutil.rmtree(target)
        target.symlink_to(outside)
    return damage


def loose_checkpoint(base: Path) -> None:
    shutil.copytree(base / "run/checkpoints/000002", base / "loose/000002")


def stopped_before_first_checkpoint(base: Path) -> None:
    shutil.rmtree(base / "run/checkpoints")


def no_damage(base: Path) -> None:
    pass


DS = "--dataset.root=ds"
RESUME = ["train", "--output_dir=run", "--resume=true", "--steps=4"]
FINETUNE = [*TRAIN, DS, "--output_dir=new", "--policy.path=run/checkpoints/last/pretrained_model"]
FINETUNE = [a for a in FINETUNE if not a.startswith("--policy.") or a.startswith("--policy.path")]

# (id, damage, command, pattern the one error line must match)
CASES: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    # ---- meta/info.json
    ("info missing", remove("ds/meta/info.json"), [*TRAIN, DS], r"meta/info\.json is missing"),
    ("info not json", write("ds/meta/info.json", "{oops"), [*TRAIN, DS], r"info\.json is not valid JSON"),
    ("info a list", write("ds/meta/info.json", "[1, 2]"), [*TRAIN, DS], r"info\.json does not hold a JSON object"),
    ("info v2.1", set_key("ds/meta/info.json", "codebase_version", "v2.1"), [*TRAIN, DS],
     r"LeRobot v2\.1 dataset.*robotrain dataset convert"),
    ("info v9", set_key("ds/meta/info.json", "codebase_version", "v9.0"), [*TRAIN, DS],
     r"codebase_version v9\.0 is not supported"),
    ("fps text", set_key("ds/meta/info.json", "fps", "fast"), [*TRAIN, DS], r"fps is 'fast'; it must be a positive"),
    ("fps fraction", set_key("ds/meta/info.json", "fps", 29.97), [*TRAIN, DS], r"fps is 29\.97; it must be"),
    ("fps zero", set_key("ds/meta/info.json", "fps", 0), [*TRAIN, DS], r"fps is 0; it must be a positive"),
    ("fps bool", set_key("ds/meta/info.json", "fps", True), [*TRAIN, DS], r"fps is True; it must be a positive"),
    ("info lacks total_frames", edit_json("ds/meta/info.json", lambda i: i.pop("total_frames")), [*TRAIN, DS],
     r"info\.json lacks total_frames"),
    ("features empty", set_key("ds/meta/info.json", "features", {}), [*TRAIN, DS], r"features is missing or empty"),
    ("feature without shape", info_features(lambda f: f["action"].pop("shape")), [*TRAIN, DS],
     r"feature 'action' needs a dtype and a shape"),
    ("feature name with slash", info_features(lambda f: f.__setitem__("a/b", f.pop("action"))), [*TRAIN, DS],
     r"feature name 'a/b' contains '/'"),
    ("data_path absolute", set_key("ds/meta/info.json", "data_path", "/tmp/x/{chunk_index}/{file_index}.parquet"),
     [*TRAIN, DS], r"data_path '/tmp/x/.*' points outside the dataset folder"),
    ("data_path parent", set_key("ds/meta/info.json", "data_path", "../x/{chunk_index}/{file_index}.parquet"),
     [*TRAIN, DS], r"data_path '\.\./x/.*' points outside the dataset folder"),
    ("data_path home", set_key("ds/meta/info.json", "data_path", "~/x/{chunk_index}/{file_index}.parquet"),
     [*TRAIN, DS], r"data_path '~/x/.*' points outside the dataset folder"),
    ("data_path unknown field", set_key("ds/meta/info.json", "data_path", "data/{episode_index}.parquet"),
     [*TRAIN, DS], r"data_path 'data/\{episode_index\}\.parquet' uses the field\(s\) episode_index"),
    ("data_path attribute", set_key("ds/meta/info.json", "data_path", "data/{chunk_index.real}/{file_index}.pq"),
     [*TRAIN, DS], r"data_path .* uses the field\(s\) chunk_index\.real"),
    ("data_path broken", set_key("ds/meta/info.json", "data_path", "data/{chunk_index"), [*TRAIN, DS],
     r"data_path 'data/\{chunk_index' is not a valid template"),
    ("data_path not text", set_key("ds/meta/info.json", "data_path", 7), [*TRAIN, DS],
     r"data_path is 7, not a path template"),
    ("video_path parent", set_key("ds/meta/info.json", "video_path",
                                  "videos/../../{video_key}/{chunk_index}/{file_index}.mp4"), [*TRAIN, DS],
     r"video_path .* points outside the dataset folder"),
    ("video_path unknown field", set_key("ds/meta/info.json", "video_path", "videos/{camera}/{file_index}.mp4"),
     [*TRAIN, DS], r"video_path .* uses the field\(s\) camera"),
    ("video_path missing", set_key("ds/meta/info.json", "video_path", None), [*TRAIN, DS],
     r"video_path is None, not a path template"),
    ("data folder links outside", outside_symlink("ds/data"), [*TRAIN, DS],
     r"info\.json data_path points outside .*ds \(data/chunk-000/file-000\.parquet\)"),
    ("videos folder links outside", outside_symlink("ds/videos"), [*TRAIN, DS, "--dataset.frame_cache=off"],
     r"info\.json video_path points outside"),
    # ---- meta/tasks, meta/episodes, data files, stats
    ("tasks missing", remove("ds/meta/tasks.parquet"), [*TRAIN, DS], r"tasks\.parquet is missing \(the task list\)"),
    ("tasks truncated", truncate("ds/meta/tasks.parquet"), [*TRAIN, DS], r"tasks\.parquet is corrupt or truncated"),
    ("episodes missing", remove("ds/meta/episodes"), [*TRAIN, DS], r"meta/episodes holds no episode files"),
    ("episodes truncated", truncate("ds/meta/episodes/chunk-000/file-000.parquet"), [*TRAIN, DS],
     r"file-000\.parquet is corrupt or truncated \(episode metadata\)"),
    ("episode indices with a gap", episodes_file(shift_episode_index), [*TRAIN, DS],
     r"episode indices are not 0\.\.2 without gaps"),
    ("data file missing", remove("ds/data/chunk-000/file-000.parquet"), [*TRAIN, DS],
     r"data/chunk-000/file-000\.parquet is missing \(frame data\)"),
    ("data file truncated", truncate("ds/data/chunk-000/file-000.parquet"), [*TRAIN, DS],
     r"file-000\.parquet is corrupt or truncated \(frame data\)"),
    ("total_episodes too high", set_key("ds/meta/info.json", "total_episodes", 5), [*TRAIN, DS],
     r"info\.json says 5 episodes but meta/episodes holds 3"),
    ("stats not json", write("ds/meta/stats.json", "{"), [*TRAIN, DS], r"stats\.json is damaged"),
    ("stats a list", write("ds/meta/stats.json", "[]"), [*TRAIN, DS], r"stats\.json is damaged"),
    ("stats not numbers", write("ds/meta/stats.json", '{"action": {"mean": "x"}}'), [*TRAIN, DS],
     r"stats\.json is damaged"),
    ("nan in state", nan_dataset("observation.state", float("nan")), [*TRAIN, DS],
     r"'observation\.state' holds NaN or infinite values in 1 frame\(s\) \(episode 1\)"),
    ("inf in action", nan_dataset("action", float("inf")), [*TRAIN, DS],
     r"'action' holds NaN or infinite values in 1 frame\(s\) \(episode 1\)"),
    ("root missing", no_damage, [*TRAIN, "--dataset.root=nowhere"], r"root .*nowhere does not exist"),
    ("repo_id escapes", no_damage, [*TRAIN[:-5], "--dataset.repo_id=../up", *TRAIN[-4:]],
     r"--dataset\.repo_id=\.\./up: is not a dataset id"),
    ("video truncated, cached at start", truncate("ds/videos/observation.image/chunk-000/file-000.mp4", 0.3),
     [*TRAIN, DS, "--dataset.frame_cache=on"], r"file-000\.mp4: cannot open video"),
    # ---- checkpoints: fine-tuning and evaluating read pretrained_model
    ("weights truncated", truncate("run/checkpoints/000002/pretrained_model/model.safetensors"), FINETUNE,
     r"model\.safetensors is damaged \(.*\): it cannot be loaded"),
    ("weights bad header", replace_header("run/checkpoints/000002/pretrained_model/model.safetensors"), FINETUNE,
     r"model\.safetensors is damaged"),
    ("weights missing", remove("run/checkpoints/000002/pretrained_model/model.safetensors"), FINETUNE,
     r"--policy\.path=.*: holds no model\.safetensors"),
    ("policy config not json", write("run/checkpoints/000002/pretrained_model/config.json", "{"), FINETUNE,
     r"--policy\.path=.*config\.json: is not valid JSON"),
    ("policy config unknown type", set_key("run/checkpoints/000002/pretrained_model/config.json", "type", "gpt"),
     FINETUNE, r"--policy\.type=gpt: is not a policy type"),
    ("weights cut at the end", truncate("run/checkpoints/000002/pretrained_model/model.safetensors", 0.99),
     FINETUNE, r"model\.safetensors is damaged"),
    ("weights empty", write("run/checkpoints/000002/pretrained_model/model.safetensors", b""), FINETUNE,
     r"model\.safetensors is damaged"),
    # ---- checkpoints: resuming reads training_state
    ("optimizer state truncated", truncate("run/checkpoints/000002/training_state/optimizer_state.safetensors"),
     [*RESUME, DS], r"optimizer_state\.safetensors is damaged"),
    ("optimizer state bad header",
     replace_header("run/checkpoints/000002/training_state/optimizer_state.safetensors"), [*RESUME, DS],
     r"optimizer_state\.safetensors is damaged"),
    ("optimizer groups not json", write("run/checkpoints/000002/training_state/optimizer_param_groups.json", "["),
     [*RESUME, DS], r"optimizer_param_groups\.json is damaged"),
    ("rng state truncated", truncate("run/checkpoints/000002/training_state/rng_state.safetensors"),
     [*RESUME, DS], r"rng_state\.safetensors is damaged"),
    ("training step not json", write("run/checkpoints/000002/training_state/training_step.json", "{\"st"),
     [*RESUME, DS], r"training_step\.json is damaged"),
    ("training step without step", write("run/checkpoints/000002/training_state/training_step.json", "{}"),
     [*RESUME, DS], r"training_step\.json is damaged \('step'\)"),
    ("training step text", write("run/checkpoints/000002/training_state/training_step.json", '{"step": "two"}'),
     [*RESUME, DS], r"training_step\.json is damaged \(step is 'two'\)"),
    ("training step negative", write("run/checkpoints/000002/training_state/training_step.json", '{"step": -1}'),
     [*RESUME, DS], r"training_step\.json is damaged \(step is -1\)"),
    ("train config not json", write("run/checkpoints/000002/pretrained_model/train_config.json", "{"),
     [*RESUME, DS], r"--config_path=.*train_config\.json: is not valid JSON"),
    ("optimizer state missing", remove("run/checkpoints/000002/training_state/optimizer_state.safetensors"),
     [*RESUME, DS], r"training_state/optimizer_state\.safetensors is missing"),
    # ---- resuming: which run, how far
    ("resume to fewer steps", no_damage, [*RESUME[:-1], DS, "--steps=1"],
     r"--steps=1: is not above the step .*000002 was saved at \(2\)"),
    ("resume to the same step", no_damage, [*RESUME[:-1], DS, "--steps=2"], r"--steps=2: is not above the step"),
    ("resume a loose checkpoint", loose_checkpoint,
     ["train", "--config_path=loose/000002/pretrained_model", "--resume=true", DS],
     r"--config_path=.*: belongs to a checkpoint outside a run's checkpoints/ folder.*--output_dir"),
    ("resume into another run", loose_checkpoint,
     ["train", "--config_path=loose/000002/pretrained_model", "--resume=true", DS, "--output_dir=ds"],
     r"--output_dir=ds: holds files of another run"),
    ("resume a folder with no run", no_damage, ["train", "--output_dir=ds", "--resume=true"],
     r"--output_dir=ds: has no checkpoint to resume"),
    ("new run where one stopped early", stopped_before_first_checkpoint, [*TRAIN, DS, "--output_dir=run"],
     r"--output_dir=run: holds a run that stopped before its first checkpoint.*--output_dir=run --resume=true"),
    ("new run over a finished one", no_damage, [*TRAIN, DS, "--output_dir=run"],
     r"--output_dir=run: already exists and holds files from another run"),
]


@pytest.mark.parametrize(("name", "damage", "command", "expected"), CASES, ids=[c[0] for c in CASES])
def test_damaged_input(name, damage, command, expected, case_dir, capsys):
    damage(case_dir)
    before = snapshot(case_dir)
    code = main(command)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("robotrain ") and ": error: " in line]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert re.search(expected, lines[0]), lines[0]
    assert snapshot(case_dir) == before, "a refused command must not write or delete anything"


def test_the_corpus_has_at_least_80_cases():
    assert len(CASES) + len(FLAG_CASES) >= 80
