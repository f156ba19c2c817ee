"""Frame caches a dataset outgrew are deleted, those in use never are, and `robotrain dataset cache` lists and
clears them: real datasets, real cache files, a real second process holding a cache."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from robotrain.datasets import LeRobotDataset
from robotrain.datasets.frame_cache_store import (
    LOCK_NAME,
    TRASH_PREFIX,
    CacheConfig,
    clear_caches,
    describe_cache,
    lock_cache,
    manage_caches,
)

from .helpers import frame, gray, record

REPO = Path(__file__).resolve().parents[2]
ROBOTRAIN = str(Path(sys.executable).parent / "robotrain")
HOLDER = textwrap.dedent("""
    import sys
    from robotrain.datasets import LeRobotDataset
    dataset = LeRobotDataset("test/synthetic", root=sys.argv[1], frame_cache="on")
    dataset[0]
    print(dataset.frames.directory, flush=True)
    sys.stdin.readline()  # hold the cache until the test says so
""")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ROBOTRAIN_CACHE_DIR", str(tmp_path / "cache"))  # subprocesses inherit it
    return tmp_path / "cache" / "frames"


def cache_directory(root: Path, repo_id: str = "test/synthetic") -> Path:
    """Build (or reuse) the dataset's cache, let go of it, and return its folder."""
    dataset = LeRobotDataset(repo_id, root=root, frame_cache="on")
    directory = dataset.frames.directory
    del dataset
    gc.collect()  # the dataset and its cache point at each other: only the collector frees them (and the lock)
    return directory


def add_episode(root: Path, episode: int, length: int = 4) -> None:
    """Re-record: one more episode, so info.json and the video change (a new fingerprint)."""
    writer = LeRobotDataset.resume("test/synthetic", root=root)
    for i in range(length):
        writer.add_frame(frame(episode, i, length))
    writer.save_episode()


def test_rebuild_removes_the_older_cache_of_that_dataset_only(tmp_path, cache_dir, caplog):
    root, other = record(tmp_path / "ds", [5, 4]), record(tmp_path / "other", [3])
    old, other_cache = cache_directory(root), cache_directory(other)
    assert (old / "observation.image.u8").is_file() and other_cache != old

    add_episode(root, 2)
    with caplog.at_level(logging.INFO, logger="robotrain"):
        grown = LeRobotDataset("test/synthetic", root=root, frame_cache="on")
    new = grown.frames.directory
    assert new != old and not old.exists(), "the cache of the dataset before it changed is deleted"
    assert (new / "observation.image.u8").is_file(), "the current cache is kept"
    assert (other_cache / "observation.image.u8").is_file(), "another dataset's cache is not touched"
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([new.name, other_cache.name])
    assert f"removed 1 older cache(s) of {root}" in caplog.text and "freed" in caplog.text
    assert abs(grown[len(grown) - 1]["observation.image"].mean().item() * 255 - gray(2, 3)) < 4

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="robotrain"):
        again = LeRobotDataset("test/synthetic", root=root, frame_cache="on")
    assert again.frames.directory == new and new.is_dir() and "removed" not in caplog.text


def test_a_cache_another_process_reads_is_never_deleted(tmp_path, cache_dir, caplog):
    root = record(tmp_path / "ds", [5, 4])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        held = Path(holder.stdout.readline().strip())
        assert (held / "observation.image.u8").is_file()
        add_episode(root, 2)
        with caplog.at_level(logging.INFO, logger="robotrain"):
            grown = LeRobotDataset("test/synthetic", root=root, frame_cache="on")
        assert grown.frames.directory != held and (held / "observation.image.u8").is_file()
        assert f"kept {held}" in caplog.text

        report = manage_caches(CacheConfig(clear=True, stale_only=True))
        assert f"kept {held} (test/synthetic): a process is reading it" in report
        assert (held / "observation.image.u8").is_file()
        assert "stale, reading" in manage_caches(CacheConfig())
    finally:
        holder.communicate("done\n", timeout=60)
    del grown
    gc.collect()
    LeRobotDataset("test/synthetic", root=root, frame_cache="on")  # the next run cleans up
    assert not held.exists()


def run_cache(*flags: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ROBOTRAIN, "dataset", "cache", *flags], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.slow  # several real CLI processes or trainings: over 6 s
def test_cli_lists_and_clears_caches(tmp_path, cache_dir):
    first = cache_directory(record(tmp_path / "a", [4]), "test/a")
    stale_root = record(tmp_path / "b", [3, 2])
    stale = cache_directory(stale_root, "test/b")
    video = next((stale_root / "videos").rglob("*.mp4"))
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # test/b changed since
    legacy = cache_dir / "0123456789abcdef0123"  # built before owners were recorded
    legacy.mkdir()
    (legacy / "observation.image.u8").write_bytes(b"\0" * 4096)

    listing = run_cache(cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(f"3 frame cache(s) in {cache_dir}")
    assert any(first.name in line and "current" in line and f"test/a at {tmp_path / 'a'}" in line for line in lines)
    assert any(stale.name in line and "stale" in line and "test/b" in line for line in lines)
    assert any(legacy.name in line and "unknown" in line for line in lines)

    unknown = run_cache("--clear", "--repo_id=test/nope", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and "--repo_id=test/nope: no frame cache belongs to this dataset" \
        in unknown.stderr and "Fix: run `robotrain dataset cache`" in unknown.stderr
    assert first.is_dir() and stale.is_dir() and legacy.is_dir()

    only_stale = run_cache("--clear", "--stale_only", cwd=tmp_path)
    assert only_stale.returncode == 0 and only_stale.stdout.startswith("removed 1 frame cache(s),")
    assert not stale.exists() and first.is_dir() and legacy.is_dir()

    by_repo = run_cache("--clear", "--repo_id=test/a", "--list", cwd=tmp_path)
    assert by_repo.returncode == 0 and by_repo.stdout.splitlines() == [
        by_repo.stdout.splitlines()[0], f"no frame caches in {cache_dir}"]
    assert "removed 1 frame cache(s)" in by_repo.stdout and not first.exists() and legacy.is_dir()

    everything = run_cache("--clear", cwd=tmp_path)
    assert everything.returncode == 0 and "removed 1 frame cache(s), 4.1 kB freed" in everything.stdout
    assert list(cache_dir.iterdir()) == []


def test_a_waiting_reader_starts_over_when_the_cache_is_deleted_under_it(cache_dir):
    directory = cache_dir / "abc"
    deleter = lock_cache(directory, exclusive=True)  # what a deleter holds while it renames the folder away
    got = []
    reader = threading.Thread(target=lambda: got.append(lock_cache(directory, exclusive=False)))
    reader.start()
    time.sleep(0.3)  # the reader is now waiting for the lock (or about to)
    trash = directory.with_name(f"{TRASH_PREFIX}abc-{os.getpid()}")
    os.rename(directory, trash)
    deleter.release()
    reader.join(timeout=10)
    assert got and (directory / LOCK_NAME).is_file()
    assert (directory / LOCK_NAME).stat().st_ino != (trash / LOCK_NAME).stat().st_ino, "a fresh lock file"


def test_clear_keeps_a_cache_being_built(tmp_path, cache_dir):
    directory = cache_directory(record(tmp_path / "ds", [3]))
    builder = lock_cache(directory, exclusive=True)  # as FrameCache.build holds it
    report = clear_caches([describe_cache(directory)])
    assert report.removed == [] and [e.holder for e in report.in_use] == ["building"]
    builder.release()
    assert clear_caches([describe_cache(directory)]).removed and not directory.exists()


def test_clear_removes_what_an_interrupted_deletion_left(cache_dir):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trash = cache_dir / f"{TRASH_PREFIX}0123456789abcdef0123-{finished.stdout.strip()}"  # its deleter is gone
    trash.mkdir(parents=True)
    (trash / "observation.image.u8").write_bytes(b"\0" * 8192)
    alive = cache_dir / f"{TRASH_PREFIX}fedcba9876543210fedc-{os.getpid()}"  # a deletion still running
    alive.mkdir()
    report = clear_caches([])
    assert not trash.exists() and report.freed >= 8192 and alive.is_dir()


def test_cache_budget_counts_reclaimable_page_cache(tmp_path):
    """MemFree is small on any machine that has run a while; the budget must use MemAvailable."""
    from robotrain.datasets.frames import available_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:          300000 kB\nMemAvailable:   22000000 kB\n")
    assert available_memory(meminfo) == 22_000_000 * 1024
