"""A dataset is data: nothing its metadata says may make robotrain read, list or delete a file outside its folder.

Every field a path is built from is tried: info.json's data_path and video_path templates, the episode table's
file indices, the recording journal (meta/.join-in-progress.json) and the folders that resume globs and cleans.
Each hostile dataset is refused by the reader, by the writer's resume and by `robotrain dataset validate` (which
names the field), and a victim file outside the dataset is never touched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robotrain.datasets import LeRobotDataset
from robotrain.datasets.format import JOIN_JOURNAL, DatasetError
from robotrain.datasets.validate import ValidateConfig, validate_dataset
from robotrain.datasets.writer import DatasetWriter

from .helpers import record

VICTIM = b"precious, outside the dataset"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("pristine") / "ds", [6, 5, 7])


@pytest.fixture
def hostile(pristine: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the dataset, a victim file beside it that matches its templates' file names)."""
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    victim = tmp_path / "victim" / "chunk-000" / "file-000.parquet"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(VICTIM)
    return root, victim


def set_info(root: Path, **values) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info.update(values)
    (root / "meta/info.json").write_text(json.dumps(info))


def refused_everywhere(root: Path, victim: Path, field: str) -> None:
    """Reader and writer refuse the dataset naming `field`; validate reports it; the victim is untouched."""
    with pytest.raises(DatasetError, match=field):
        LeRobotDataset("test/synthetic", root=root)
    with pytest.raises(DatasetError, match=field):
        DatasetWriter.resume("test/synthetic", root=root)
    problems = validate_dataset(ValidateConfig(repo_id="test/synthetic", root=root))
    assert any(field in line for line in problems), problems
    assert victim.read_bytes() == VICTIM


@pytest.mark.parametrize("template", [
    "../victim/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    "data/../../victim/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    "{victim}/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    "~/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
])
def test_data_path_templates_that_leave_the_dataset(hostile, template):
    root, victim = hostile
    template = template.replace("{victim}", str(victim.parent.parent))  # an absolute path to the victim's folder
    set_info(root, data_path=template)
    refused_everywhere(root, victim, "data_path")


@pytest.mark.parametrize("template", [
    "videos/{video_key}/../../../victim/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
    "videos/{video_key}/{episode_index}.mp4",
    "videos/{video_key.__class__}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
])
def test_video_path_templates_that_leave_the_dataset_or_use_unknown_fields(hostile, template):
    root, victim = hostile
    set_info(root, video_path=template)
    refused_everywhere(root, victim, "video_path")


def test_a_folder_linked_outside_is_neither_read_nor_cleaned(hostile):
    """data/ is a link to the victim's folder: resume would list its files and delete the ones not referenced."""
    root, victim = hostile
    shutil.copytree(root / "data", victim.parent.parent, dirs_exist_ok=True)  # the real files, plus the victim
    stray = victim.parent / "file-007.parquet"
    stray.write_bytes(VICTIM)
    shutil.rmtree(root / "data")
    (root / "data").symlink_to(victim.parent.parent)
    with pytest.raises(DatasetError, match="points outside"):
        DatasetWriter.resume("test/synthetic", root=root)
    with pytest.raises(DatasetError, match="points outside"):
        LeRobotDataset("test/synthetic", root=root)
    assert stray.read_bytes() == VICTIM


def test_an_episode_table_folder_linked_outside_is_not_cleaned(hostile):
    """meta/episodes links to a folder that holds an extra table file: resume must not delete it."""
    root, victim = hostile
    outside = victim.parent.parent / "episodes"
    shutil.copytree(root / "meta/episodes", outside)
    extra = outside / "chunk-000" / "file-005.parquet"
    extra.write_bytes(VICTIM)
    shutil.rmtree(root / "meta/episodes")
    (root / "meta/episodes").symlink_to(outside)
    with pytest.raises(DatasetError, match="points outside"):
        DatasetWriter.resume("test/synthetic", root=root)
    assert extra.read_bytes() == VICTIM


@pytest.mark.parametrize(("indices", "problem"), [
    ((-1, 0), r"data/chunk_index and file_index are \[-1, 0\], not non-negative integers"),
    ((0, -3), r"data/chunk_index and file_index are \[0, -3\], not non-negative integers"),
])
def test_episode_table_file_indices_are_checked(hostile, indices, problem):
    root, victim = hostile
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    for column, value in zip(("data/chunk_index", "data/file_index"), indices, strict=True):
        values = table[column].to_pylist()
        values[1] = value
        table = table.set_column(table.column_names.index(column), column, pa.array(values, pa.int64()))
    pq.write_table(table, path)
    problems = validate_dataset(ValidateConfig(repo_id="test/synthetic", root=root))
    assert any(__import__("re").search(problem, line) for line in problems), problems
    assert victim.read_bytes() == VICTIM


def journal(root: Path, **join) -> None:
    entry = {"files": "data", "reserved": [0, 0], "episodes": [0], "starts": [0.0],
             "segments": ["data/chunk-000/file-001.parquet"], **join}
    (root / JOIN_JOURNAL).write_text(json.dumps({"joins": [entry]}))


@pytest.mark.parametrize("join", [
    {"segments": ["../victim/chunk-000/file-000.parquet"]},
    {"segments": ["data/chunk-000/../../../victim/chunk-000/file-000.parquet"]},
    {"segments": ["{victim}"]},
    {"segments": ["meta/info.json"]},
    {"files": "secrets"},
    {"episodes": [7]},
    {"episodes": ["0"]},
    {"starts": []},
])
def test_a_hostile_join_journal_is_refused_by_resume_and_validate(hostile, join):
    root, victim = hostile
    if join.get("segments") == ["{victim}"]:
        join = {"segments": [str(victim)]}
    journal(root, **join)
    before = sorted(p for p in root.rglob("*"))
    with pytest.raises(DatasetError, match=r"join-in-progress\.json"):
        DatasetWriter.resume("test/synthetic", root=root)
    problems = validate_dataset(ValidateConfig(repo_id="test/synthetic", root=root))
    assert any(JOIN_JOURNAL in line and "damaged join journal" in line for line in problems), problems
    assert victim.read_bytes() == VICTIM
    assert sorted(p for p in root.rglob("*")) == before, "nothing in the dataset was deleted either"


def test_a_sound_journal_is_still_finished_by_resume(hostile):
    """The checks refuse only what is hostile: a journal naming this dataset's own segment is replayed."""
    root, _ = hostile
    segment = root / "data/chunk-000/file-001.parquet"
    segment.write_bytes((root / "data/chunk-000/file-000.parquet").read_bytes())
    journal(root, episodes=[0, 1, 2], starts=[0.0, 0.0, 0.0], segments=["data/chunk-000/file-001.parquet"])
    DatasetWriter.resume("test/synthetic", root=root).finalize()
    assert not (root / JOIN_JOURNAL).exists() and not segment.exists()
    assert len(LeRobotDataset("test/synthetic", root=root)) == 18
