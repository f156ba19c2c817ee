"""The frame cache on disk: one folder per dataset fingerprint and frame size, whose it is, who is using it, and
removing it.

    <cache root>/<fingerprint>/<camera>.u8     every frame of one camera (a .npy file, memory-mapped)
                               <camera>.json   written when that camera is complete
                               .owner.json     its cameras, and the datasets (repo_id, root) that use it
                               .lock           flock'ed by every process that reads or builds the cache
    <cache root>/<fingerprint>-<H>x<W>/...      the same, with every frame resized to H x W (a folder of its own, so
                                               a run reading one size never blocks a run building another)

A dataset that changes gets a new fingerprint, so its old cache is never read again. Whenever a dataset opens
its cache, the caches it owned before are deleted when no dataset still matches them (remove_stale_caches), and
`robotrain dataset cache` lists or clears them by hand.

Why a lock and not an age rule: several training runs may share a cache, and a run reads it for days without
touching its mtime (mapped pages are read, not opened), so no age tells "in use" from "abandoned". Instead every
process that reads a cache holds a shared flock on its .lock for as long as it uses the cache (forked DataLoader
workers inherit it); a build holds it exclusively. A cache is deleted only by a process that gets the exclusive
lock without waiting, so a cache being read or built is never deleted. The kernel drops a lock when its holders
exit or crash, so a killed run leaves no stale lock behind. The deleter renames the folder away while it still
holds the lock: a process that was waiting for that lock then finds a different (or no) lock file at the path,
and starts over with a fresh folder instead of reading a half-deleted one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

from robotrain.datasets.format import INFO_PATH
from robotrain.errors import ConfigError, UserError, did_you_mean
from robotrain.files import atomic_write_text, human_bytes

logger = logging.getLogger(__name__)

LOCK_NAME, OWNER_NAME = ".lock", ".owner.json"
TRASH_PREFIX = ".removing-"  # a folder being deleted; left behind only when the deleting process died


def cache_root() -> Path:
    return Path(os.environ.get("ROBOTRAIN_CACHE_DIR", "~/.cache/robotrain")).expanduser() / "frames"


def dataset_fingerprint(root: Path) -> str:
    """Changes whenever info.json or any video file changes (OSError when root holds no dataset)."""
    digest = hashlib.sha256((root / INFO_PATH).read_bytes())
    for path in sorted((root / "videos").rglob("*.mp4")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def cache_directory(fingerprint: str, frame_size: tuple[int, int] | None) -> Path:
    """The folder of the dataset's cache at native resolution (frame_size None) or resized to frame_size."""
    name = fingerprint if frame_size is None else f"{fingerprint}-{frame_size[0]}x{frame_size[1]}"
    return cache_root() / name


def folder_fingerprint(directory: Path) -> str:
    """The dataset fingerprint a cache folder belongs to, whatever its frame size."""
    return directory.name.partition("-")[0]


# ---- locks -------------------------------------------------------------------------------------------------
class CacheLock:
    """A held flock on a cache folder's .lock; released by release() or when garbage-collected."""

    def __init__(self, fd: int):
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._close()


def _flock(fd: int, exclusive: bool, wait: bool) -> bool:
    """Take the lock; False when `wait` is off and another process holds it in a conflicting way."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _is_lock_at(fd: int, directory: Path) -> bool:
    """Whether `fd` is still the file at directory/.lock (a deleter renames the folder away while holding it)."""
    try:
        at_path, held = os.stat(directory / LOCK_NAME), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


def lock_cache(directory: Path, exclusive: bool, wait: bool = True) -> CacheLock | None:
    """Lock a cache folder (created if absent) for reading (shared) or building (exclusive), waiting if needed;
    with wait=False, None when another process holds it in a conflicting way."""
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:  # deleted between mkdir and open
            continue
        if not _flock(fd, exclusive, wait=False):
            if not wait:
                os.close(fd)
                return None
            logger.info("waiting for another process that is building or reading the frame cache %s", directory)
            _flock(fd, exclusive, wait=True)
        if _is_lock_at(fd, directory):
            return CacheLock(fd)
        os.close(fd)  # the cache was deleted while we waited: start again with a fresh folder


def _holder(directory: Path) -> str | None:
    """'reading' or 'building' when another process holds the cache, else None (probed without waiting)."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:  # every holder creates the file first
        return None
    try:
        if _flock(fd, exclusive=True, wait=False):
            return None
        return "reading" if _flock(fd, exclusive=False, wait=False) else "building"
    finally:
        os.close(fd)


def _remove(directory: Path) -> bool:
    """Delete a cache folder unless a process is reading or building it (then False). OSError when the folder
    cannot be deleted (permissions)."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:  # removed by another process meanwhile
        return False
    trash = directory.with_name(f"{TRASH_PREFIX}{directory.name}-{os.getpid()}")
    try:
        if not _flock(fd, exclusive=True, wait=False) or not _is_lock_at(fd, directory):
            return False
        os.rename(directory, trash)
    finally:
        os.close(fd)
    shutil.rmtree(trash)
    return True


def _cache_folders() -> list[Path]:
    """Every cache folder under cache_root(), by name (folders being deleted are left out)."""
    if not cache_root().is_dir():
        return []
    return sorted(p for p in cache_root().iterdir() if p.is_dir() and not p.name.startswith("."))


# ---- owners and listing ------------------------------------------------------------------------------------
def record_owner(directory: Path, repo_id: str, root: Path, cameras: list[str]) -> None:
    """Add the dataset (repo_id, root) to the cache's owners, if it is not there yet."""
    record = _read_record(directory) or {"cameras": cameras, "datasets": []}
    entry = {"repo_id": repo_id, "root": str(root.resolve())}
    if entry in record["datasets"]:
        return
    record["datasets"].append(entry)
    atomic_write_text(directory / OWNER_NAME, json.dumps(record, indent=2))  # readers never see half a file


def _read_record(directory: Path) -> dict | None:
    """.owner.json; None for a cache built before robotrain wrote it."""
    try:
        record = json.loads((directory / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    well_formed = isinstance(record, dict) and isinstance(record.get("cameras"), list) \
        and isinstance(record.get("datasets"), list) \
        and all(isinstance(o, dict) and {"repo_id", "root"} <= set(o) for o in record["datasets"])
    return record if well_formed else None


def _disk_bytes(directory: Path) -> int:
    """Space the folder takes on disk (st_blocks: a build that stopped early leaves sparse files)."""
    total = 0
    try:
        for path in directory.rglob("*"):
            total += path.lstat().st_blocks * 512
    except FileNotFoundError:  # being deleted by another process
        pass
    return total


def _current_fingerprint(root: str) -> str | None:
    try:
        return dataset_fingerprint(Path(root))
    except OSError:  # the dataset folder is gone
        return None


@dataclass
class CacheEntry:
    """One cache folder as `robotrain dataset cache` shows it."""

    directory: Path
    owners: list[dict[str, str]]  # {"repo_id", "root"} of each dataset that used it; [] when not recorded
    nbytes: int
    state: str  # "current" (a dataset still matches it), "stale" (none does), "unknown" (no owners recorded)
    complete: bool  # False: a build that stopped midway (it resumes when its dataset is opened again)
    holder: str | None  # "reading" or "building" by another process, else None

    @property
    def repo_ids(self) -> list[str]:
        return sorted({o["repo_id"] for o in self.owners})


def describe_cache(directory: Path) -> CacheEntry:
    record = _read_record(directory)
    if record is None:
        owners, state, cameras = [], "unknown", [p.stem for p in directory.glob("*.u8")]
    else:
        owners, cameras = record["datasets"], record["cameras"]
        current = any(_current_fingerprint(o["root"]) == folder_fingerprint(directory) for o in owners)
        state = "current" if current else "stale"
    complete = bool(cameras) and all((directory / f"{c}.json").is_file() for c in cameras)
    return CacheEntry(directory, owners, _disk_bytes(directory), state, complete, _holder(directory))


def list_caches() -> list[CacheEntry]:
    """Every cache folder under cache_root(), by name."""
    return [describe_cache(p) for p in _cache_folders()]


def _remove_abandoned_trash() -> int:
    """Delete what a deleting process that died midway left behind; returns the bytes freed."""
    freed = 0
    for trash in cache_root().glob(f"{TRASH_PREFIX}*") if cache_root().is_dir() else []:
        if not _deleter_died(trash):
            continue
        size = _disk_bytes(trash)
        shutil.rmtree(trash, ignore_errors=True)
        if not trash.exists():
            logger.info("frame cache: removed %s, left by an interrupted deletion (%s freed)", trash, human_bytes(size))
            freed += size
    return freed


def _deleter_died(trash: Path) -> bool:
    """Whether the process that was deleting this folder is gone (its pid ends the folder's name)."""
    try:
        os.kill(int(trash.name.rpartition("-")[2]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):  # not our name, or a live process of another user
        return False
    return False


# ---- removing ----------------------------------------------------------------------------------------------
def remove_stale_caches(root: Path, current: str) -> None:
    """Delete the caches the dataset at `root` used before it changed, unless a dataset still matches them or
    another process is using them; log what was removed and the space freed."""
    resolved = str(root.resolve())
    _remove_abandoned_trash()
    freed, removed = 0, 0
    for directory in _cache_folders():
        record = _read_record(directory) if folder_fingerprint(directory) != current else None
        if record is None or all(o["root"] != resolved for o in record["datasets"]):
            continue
        try:
            entry = describe_cache(directory)
            if entry.state != "stale":  # a copy of the dataset elsewhere still has this fingerprint
                continue
            gone = _remove(directory)
        except OSError as exc:  # never stop a training run over the cleanup
            logger.warning("frame cache: could not remove %s, an older cache of %s (%s)", directory, root, exc)
            continue
        if gone:
            freed, removed = freed + entry.nbytes, removed + 1
        else:
            logger.info("frame cache: kept %s, an older cache of %s, because a process is still using it; a later "
                        "run removes it, or `robotrain dataset cache --clear`", directory, root)
    if removed:
        logger.info("frame cache: removed %d older cache(s) of %s, %s freed", removed, root, human_bytes(freed))


@dataclass
class ClearReport:
    removed: list[CacheEntry]
    in_use: list[CacheEntry]  # kept: a process is reading or building them
    freed: int  # bytes


def clear_caches(entries: list[CacheEntry]) -> ClearReport:
    """Delete these caches, except those a process is reading or building."""
    report = ClearReport([], [], _remove_abandoned_trash())
    for entry in entries:
        try:
            gone = _remove(entry.directory)
        except OSError as exc:
            raise UserError(f"cannot remove the frame cache {entry.directory} ({exc}). Fix: check the permissions "
                            "of the folder, or delete it by hand") from None
        if gone:
            report.removed.append(entry)
            report.freed += entry.nbytes
        elif entry.directory.exists():
            report.in_use.append(entry)
    return report


# ---- `robotrain dataset cache` -----------------------------------------------------------------------------
@dataclass
class CacheConfig:
    """What `robotrain dataset cache` lists or deletes (frame caches live under $ROBOTRAIN_CACHE_DIR/frames)."""

    clear: bool = False
    """Delete the chosen caches; those a running process is reading or building are kept and named."""
    repo_id: str | None = None
    """Only the caches of this dataset id (as the list shows it)."""
    stale_only: bool = False
    """Only the stale caches: no dataset matches them any more (each one that used them changed or is gone)."""
    list: bool = False
    """List the chosen caches: what the command does without --clear; with it, lists what is left."""


def manage_caches(cfg: CacheConfig) -> str:
    """Delete the chosen caches when asked, and describe them: the text the command prints."""
    chosen = select_caches(list_caches(), cfg.repo_id)
    if cfg.stale_only:
        chosen = [e for e in chosen if e.state == "stale"]
    parts = []
    if cfg.clear:
        parts.append(_clear_text(clear_caches(chosen)))
    if cfg.list or not cfg.clear:
        left = {e.directory for e in chosen}
        parts.append(_list_text([e for e in list_caches() if e.directory in left]))
    return "\n".join(parts)


def select_caches(entries: list[CacheEntry], repo_id: str | None) -> list[CacheEntry]:
    """The entries owned by `repo_id` (all when None); ConfigError naming the known ids when it owns none."""
    if repo_id is None:
        return entries
    chosen = [e for e in entries if repo_id in e.repo_ids]
    if not chosen:
        known = sorted({r for e in entries for r in e.repo_ids})
        guess = did_you_mean(repo_id, known)
        cached = f"did you mean {guess}?" if guess else \
            f"cached: {', '.join(known)}" if known else f"{cache_root()} holds no cache of a known dataset"
        raise ConfigError("repo_id", repo_id, f"no frame cache belongs to this dataset ({cached})",
                          "run `robotrain dataset cache` to list the caches")
    return chosen


def _clear_text(report: ClearReport) -> str:
    lines = [f"removed {len(report.removed)} frame cache(s), {human_bytes(report.freed)} freed"]
    lines += [f"kept {e.directory} ({', '.join(e.repo_ids) or 'unknown dataset'}): a process is "
              f"{e.holder or 'using'} it" for e in report.in_use]
    return "\n".join(lines)


def _list_text(entries: list[CacheEntry]) -> str:
    if not entries:
        return f"no frame caches in {cache_root()}"
    total = sum(e.nbytes for e in entries)
    lines = [f"{len(entries)} frame cache(s) in {cache_root()}, {human_bytes(total)}:"]
    for e in entries:
        state = e.state + ("" if e.complete else ", incomplete") + (f", {e.holder}" if e.holder else "")
        owners = [f"{o['repo_id']} at {o['root']}" for o in e.owners] or ["built by an older robotrain"]
        lines.append(f"  {e.directory.name}  {human_bytes(e.nbytes):>9}  {state:<24}  {owners[0]}")
        lines += [f"  {'':20}  {'':9}  {'':24}  {owner}" for owner in owners[1:]]
    lines += ["states: current = a dataset that used it still matches it; stale = each one changed or is gone;",
              "        unknown = built before robotrain recorded owners; incomplete = its build stopped midway",
              "remove: robotrain dataset cache --clear [--repo_id=ID] [--stale_only]  (a cache in use is kept)"]
    return "\n".join(lines)
