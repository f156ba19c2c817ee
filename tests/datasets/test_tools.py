"""Dataset tools on real small datasets: the summary, validation of fresh and corrupted copies, the episode page."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robotrain.datasets.format import DatasetError
from robotrain.datasets.inspect import InfoConfig, dataset_summary
from robotrain.datasets.validate import ValidateConfig, episodes_label, validate_dataset
from robotrain.datasets.video import VideoDecoder, count_frames, video_info
from robotrain.datasets.visualize import VisualizeConfig, nice_ticks, scaled_size, visualize_episode

from .helpers import TASKS, gray, record

LENGTHS = [12, 7, 15]
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
VIDEO = "videos/observation.image/chunk-000/file-000.mp4"


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    return record(tmp_path_factory.mktemp("tools") / "video", LENGTHS)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return record(tmp_path_factory.mktemp("tools") / "image", [5, 4], use_videos=False)


@pytest.fixture
def copy(video_root, tmp_path):
    """A fresh copy of the video dataset, to corrupt."""
    return shutil.copytree(video_root, tmp_path / "copy")


def validate(root) -> list[str]:
    return validate_dataset(ValidateConfig("test/synthetic", root=root))


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_column(path, name: str, change) -> None:
    """Rewrite one column of a parquet file through a numpy array (schema and its metadata kept)."""
    table = pq.read_table(path)
    values = table[name].to_numpy().copy()
    change(values)
    index = table.column_names.index(name)
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type)),
                   path)


def lines_about(problems: list[str], prefix: str) -> list[str]:
    return [p for p in problems if p.startswith(prefix)]


# ---- info --------------------------------------------------------------------------------------------------
def test_summary_reports_counts_tasks_and_features(video_root):
    text = dataset_summary(InfoConfig("test/synthetic", root=video_root))
    assert re.search(r"episodes\s+3\n", text) and re.search(r"frames\s+34\n", text) and re.search(r"fps\s+10\n", text)
    assert "v3.0" in text and "0:00:03" in text and "min 7, mean 11.3, max 15 frames" in text
    assert "tasks (2)" in text and f"'{TASKS[0]}'  (2 episodes)" in text and f"'{TASKS[1]}'  (1 episode)" in text
    for name in ("observation.image", "observation.state", "action", "next.reward", "next.done", "task_index"):
        assert f"\n  {name} " in text
    assert "av1 48x32" in text and "episode, frame" in text
    assert "size on disk" in text and "videos" in text and "stats.json: 10 of 10 features" in text


def test_episodes_label():
    assert episodes_label([3]) == "episode 3"
    assert episodes_label([2, 0, 1, 7, 9, 10]) == "episodes 0-2, 7, 9-10"


# ---- validate ----------------------------------------------------------------------------------------------
def test_fresh_datasets_are_valid(video_root, image_root):
    assert validate(video_root) == []
    assert validate(image_root) == []


def test_missing_info_is_one_problem(tmp_path):
    problems = validate(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("meta/info.json: is missing")


def test_wrong_total_frames(copy):
    edit_json(copy / "meta/info.json", lambda info: info.update(total_frames=35))
    assert validate(copy) == ["meta/info.json: total_frames is 35, but the episodes' lengths sum to 34 and the data "
                              "files hold 34 rows"]


def test_altered_timestamp(copy):
    def change(times):
        times[14] += 0.05  # episode 1, frame 2

    edit_column(copy / DATA, "timestamp", change)
    problems = validate(copy)
    assert len(problems) == 1
    assert problems[0].startswith(f"{DATA}: episode 1: timestamp is not frame_index / fps for 1 frame(s) (frame 2:")


def test_altered_frame_index_and_task_index(copy):
    edit_column(copy / DATA, "frame_index", lambda v: v.__setitem__(3, 9))
    edit_column(copy / DATA, "task_index", lambda v: v.__setitem__(20, 5))
    problems = validate(copy)
    assert any(p.startswith(f"{DATA}: episode 0: frame_index is not 0..11") for p in problems)
    assert any(p.startswith(f"{DATA}: episode 2: task_index 5 (frame 1) is not a task") for p in problems)
    assert len(problems) == 2


def test_deleted_video(copy):
    (copy / VIDEO).unlink()
    assert validate(copy) == [f"{VIDEO}: episodes 0-2: is missing (camera 'observation.image')"]


@pytest.mark.parametrize("cut", [100, "half"])
def test_truncated_video(copy, cut):
    path = copy / VIDEO
    data = path.read_bytes()
    path.write_bytes(data[:-(len(data) // 2 if cut == "half" else cut)])
    problems = validate(copy)
    assert problems and all(p.startswith(f"{VIDEO}: ") for p in problems)
    if cut == 100:  # the index (at the end) is damaged: no frame is found, and every episode is short
        assert f"{VIDEO}: episodes 0-2: holds 0 frames, fewer than the 34 of its episodes" in problems
        assert len(lines_about(problems, f"{VIDEO}: episode ")) == 3


def test_truncated_video_with_index_first(copy):
    """A file with its index at the front (ffmpeg's faststart) loses frames, not the index, when cut."""
    import av

    path = copy / VIDEO
    moved = copy / "fast.mp4"
    with av.open(str(path)) as source, av.open(str(moved), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0], opaque=True)
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = moved.read_bytes()
    path.write_bytes(data[:-len(data) // 3])
    moved.unlink()
    problems = validate(copy)
    assert problems and all(p.startswith(f"{VIDEO}: ") for p in problems)
    assert any("fewer than the 34 of its episodes" in p for p in problems)
    assert any(p.startswith(f"{VIDEO}: episode 2: holds ") for p in problems)  # the last episode lost frames


def test_stats_json_missing_a_feature(copy):
    edit_json(copy / "meta/stats.json", lambda stats: stats.pop("action"))
    assert validate(copy) == ["meta/stats.json: has no stats for feature 'action'"]


def test_stats_with_wrong_shapes(copy):
    edit_json(copy / "meta/stats.json", lambda stats: stats["observation.image"].update(mean=[0.5, 0.5, 0.5]))
    table = pq.read_table(copy / EPISODES)
    pq.write_table(table.drop_columns(["stats/action/q01"]), copy / EPISODES)
    problems = validate(copy)
    assert "meta/stats.json: stats of 'observation.image': mean has shape (3,), expected (3, 1, 1)" in problems
    assert f"{EPISODES}: per-episode stats of 'action' lack the column(s) stats/action/q01" in problems
    assert len(problems) == 2


def test_episode_length_changed(copy):
    edit_column(copy / EPISODES, "length", lambda v: v.__setitem__(1, 8))
    problems = validate(copy)
    assert f"{EPISODES}: episode 1: dataset_to_index - dataset_from_index is 7, but length is 8" in problems
    assert f"{DATA}: episode 1: holds 7 rows, but meta/episodes says its length is 8" in problems
    assert any(p.startswith(f"{VIDEO}: episode 1: holds 7 frames in [from_timestamp") for p in problems)
    assert any(p.startswith(f"{EPISODES}: episode 1: videos/observation.image: to_timestamp - from_timestamp")
               for p in problems)
    assert any(p.startswith("meta/info.json: total_frames is 34, but the episodes' lengths sum to 35")
               for p in problems)


def test_episode_index_gap_and_data_columns(copy):
    edit_column(copy / EPISODES, "episode_index", lambda v: v.__setitem__(2, 5))
    table = pq.read_table(copy / DATA)
    pq.write_table(table.drop_columns(["next.done"]), copy / DATA)
    problems = validate(copy)
    assert any(p.startswith("meta/episodes: episode_index values are not 0..2, each once (missing [2]")
               for p in problems)
    assert f"{DATA}: lacks the column(s) next.done that info.json lists" in problems
    assert any(p.startswith(f"{DATA}: holds rows of episode 2, which meta/episodes does not place") for p in problems)


def test_many_problems_are_all_reported(copy):
    edit_json(copy / "meta/info.json", lambda info: info.update(total_frames=30))
    edit_json(copy / "meta/stats.json", lambda stats: stats.pop("observation.state"))
    (copy / VIDEO).unlink()
    problems = validate(copy)
    assert problems == [
        "meta/info.json: total_frames is 30, but the episodes' lengths sum to 34 and the data files hold 34 rows",
        f"{VIDEO}: episodes 0-2: is missing (camera 'observation.image')",
        "meta/stats.json: has no stats for feature 'observation.state'",
    ]


def test_two_problems_give_two_lines(copy):
    edit_json(copy / "meta/info.json", lambda info: info.update(total_tasks=3))
    edit_column(copy / DATA, "index", lambda v: v.__setitem__(30, 99))
    problems = validate(copy)
    assert len(problems) == 2
    assert problems[0] == "meta/info.json: total_tasks is 3, but meta/tasks.parquet holds 2 tasks"
    assert problems[1].startswith(f"{DATA}: episode 2: index is not 19..33 in order (frame 11 has index 99")


# ---- visualize ---------------------------------------------------------------------------------------------
def embedded_videos(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:video/mp4;base64,([A-Za-z0-9+/=]+)"', page)]


def check_embedded(video: bytes, tmp_path, episode: int, length: int) -> None:
    path = tmp_path / "embedded.mp4"
    path.write_bytes(video)
    assert count_frames(path) == length
    assert video_info(path)["video.codec"] == "h264"
    decoder = VideoDecoder(path)
    frames = decoder.frames_at([0.0, (length - 1) / 10])  # (2, H, W, 3) at 10 fps
    decoder.close()
    assert abs(frames[0].mean() - gray(episode, 0)) < 4 and abs(frames[1].mean() - gray(episode, length - 1)) < 4


def test_visualize_writes_a_page(video_root, tmp_path):
    output = tmp_path / "page.html"
    assert visualize_episode(VisualizeConfig("test/synthetic", root=video_root, episode=1, output=output)) == output
    page = output.read_text()
    assert page.count("<video") == 1 and page.count("<svg") == 3  # state, action, reward
    assert "test/synthetic · episode 1" in page and TASKS[1] in page and "7 frames" in page
    assert ">episode</span>" in page and ">x</span>" in page and "time (s)" in page and 'class="cursor"' in page
    assert "currentTime" in page
    [video] = embedded_videos(page)
    check_embedded(video, tmp_path, episode=1, length=7)
    assert not list(tmp_path.glob(".*.tmp"))


def test_visualize_image_dataset_at_default_path(image_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = visualize_episode(VisualizeConfig("test/synthetic", root=image_root, episode=1))
    assert output == tmp_path / "test_synthetic_episode_1.html"
    page = output.read_text()
    assert page.count("<video") == 1 and page.count("<svg") == 3
    check_embedded(embedded_videos(page)[0], tmp_path, episode=1, length=4)


def test_visualize_out_of_range_episode(video_root, tmp_path):
    with pytest.raises(DatasetError, match=r"episode 3 does not exist .* \(0\.\.2\)"):
        visualize_episode(VisualizeConfig("test/synthetic", root=video_root, episode=3, output=tmp_path / "x.html"))
    assert not (tmp_path / "x.html").exists()


def test_plot_helpers():
    assert scaled_size(480, 640) == (240, 320) and scaled_size(32, 48) == (32, 48) and scaled_size(33, 47) == (32, 46)
    assert nice_ticks(0.0, 1.4) == [0.0, 0.5, 1.0] and nice_ticks(-3.0, 17.0) == [0.0, 5.0, 10.0, 15.0]
    assert np.allclose(nice_ticks(0.013, 0.091), [0.02, 0.04, 0.06, 0.08])
