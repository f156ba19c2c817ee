"""One writer per dataset folder: a second recorder is refused with the first one's pid; a lock left by a killed
writer is taken over. The first writer runs in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from robotrain.cli import main
from robotrain.datasets import LeRobotDataset
from robotrain.datasets.format import DatasetError
from robotrain.files import folder_lock_path, lock_holder

from .helpers import features, frame, record

HOLD = textwrap.dedent("""
    import sys, time
    from robotrain.datasets import LeRobotDataset
    writer = LeRobotDataset.resume("test/synthetic", root=sys.argv[1])
    print("holding", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def writer_process(tmp_path):
    """A subprocess holding a DatasetWriter open on a fresh dataset; yields (root, process)."""
    root = record(tmp_path / "ds", [5, 4])
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    yield root, process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_with_the_first_ones_pid(writer_process, tmp_path):
    root, process = writer_process
    assert lock_holder(folder_lock_path(root)) == process.pid
    with pytest.raises(DatasetError, match=rf"is being written by process {process.pid}"):
        LeRobotDataset.resume("test/synthetic", root=root)
    with pytest.raises(DatasetError, match=rf"is being written by process {process.pid}"):
        LeRobotDataset.create("test/synthetic", 10, features(), root=root)


def test_a_second_recorder_gets_one_line_and_exit_2(writer_process, capsys):
    root, process = writer_process
    code = main(["dataset", "record-sim", "--env.type=pusht", "--repo_id=test/synthetic", f"--root={root}",
                 "--num_episodes=3"])
    assert code == 2
    assert f"is being written by process {process.pid}" in capsys.readouterr().err


def test_a_lock_left_by_a_killed_writer_is_taken_over(writer_process):
    root, process = writer_process
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert folder_lock_path(root).exists(), "a kill leaves the lock file behind"
    assert lock_holder(folder_lock_path(root)) is None
    writer = LeRobotDataset.resume("test/synthetic", root=root)
    for i in range(3):
        writer.add_frame(frame(2, i, 3))
    writer.save_episode()
    writer.finalize()
    assert not folder_lock_path(root).exists(), "a writer that finishes removes its lock file"
    assert len(LeRobotDataset("test/synthetic", root=root)) == 12


def test_the_lock_is_reentrant_within_a_process_and_released_by_finalize(tmp_path):
    root = record(tmp_path / "ds", [3])
    first = LeRobotDataset.resume("test/synthetic", root=root)
    second = LeRobotDataset.resume("test/synthetic", root=root)  # e.g. record-sim holds it while its writer opens
    second.finalize()
    assert lock_holder(folder_lock_path(root)) == os.getpid(), "still held through the first writer"
    first.finalize()
    assert not Path(folder_lock_path(root)).exists()


READ_CACHE = textwrap.dedent("""
    import sys, time
    from robotrain.datasets import LeRobotDataset
    dataset = LeRobotDataset("test/synthetic", root=sys.argv[1], frame_cache="on")  # builds it, then reads it
    print("reading", flush=True)
    time.sleep(120)
""")


def test_building_a_frame_cache_another_process_already_reads_does_not_wait_for_it(tmp_path):
    """Two processes of one training start together on a dataset whose cache is not built: one builds it and
    reads it for the whole run; the other, which found no cache a moment before, must use it, not wait."""
    from robotrain.datasets.frame_cache_store import cache_directory, dataset_fingerprint
    from robotrain.datasets.frames import FrameCache

    root = record(tmp_path / "ds", [5, 4])
    reader = subprocess.Popen([sys.executable, "-c", READ_CACHE, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"
        dataset = LeRobotDataset("test/synthetic", root=root, frame_cache="off")
        cache = FrameCache(dataset, cache_directory(dataset_fingerprint(root), None))
        finished = threading.Event()
        threading.Thread(target=lambda: (cache.build(), finished.set()), daemon=True).start()
        assert finished.wait(timeout=60), "build() waited for the reading process"
        assert cache.is_complete()
    finally:
        reader.kill()
        reader.wait()
