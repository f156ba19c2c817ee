"""Files the way robotrain writes them: atomically, under one writer at a time, never outside their folder.

- atomic_write: the new content goes to a hidden temporary file beside the target (unique per process and thread,
  so two writers never share one), then os.replace puts it in place. A reader, or a crash, sees the old file or
  the new one, never half of one. Temporary names start with "." and end with ".tmp", which is how cleanups know
  them.
- WriterLock: an exclusive flock on a lock file that holds the owner's pid. The kernel drops a flock when its
  process dies, so a lock left by a killed process is simply taken over; a live holder is named in the error.
- path_inside: a path built from data (a template, a journal entry) that must stay inside a folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robotrain.errors import UserError

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    """A hidden sibling of `path` no other process or thread uses: .<name>.<pid>-<thread>.tmp"""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}")


def is_temporary(path: Path) -> bool:
    """Whether `path` is a leftover temporary file of atomic_write (or of an older robotrain)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def atomic_write(path: Path | str, write: Callable[[Path], Any], durable: bool = False) -> None:
    """Call `write(tmp)` to fill a temporary file, then move it onto `path` in one step.

    durable=True also fsyncs the file before the rename (it survives a power loss, not only a crash). On any error
    the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path | str, data: Any) -> None:
    """Indented JSON with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=4) + "\n")


def path_inside(root: Path, relative: str | Path, what: str) -> Path:
    """root / relative, when it lies inside `root` after resolving '..' and symbolic links; else a UserError.

    `what` names where the path came from (e.g. "info.json data_path"), for the message.
    """
    root = Path(root)
    candidate = root / relative
    real_root = root.resolve()
    try:
        candidate.resolve().relative_to(real_root)
    except ValueError:
        raise UserError(f"{what} points outside {root} ({relative}), which robotrain never reads, lists or deletes. "
                        "Fix: restore the file from the dataset's source") from None
    return candidate


# ---- one writer at a time ----------------------------------------------------------------------------------
class WriterLock:
    """An exclusive lock held by this process on `path`; release() (or garbage collection) gives it back.

    Re-entrant within a process: taking a lock this process already holds returns another handle on it (a recorder
    holds its dataset's lock while the DatasetWriter it opens takes the same one); the lock is given back when the
    last handle is released.
    """

    def __init__(self, path: Path):
        self.path = path
        self._release = weakref.finalize(self, _drop_handle, path)

    def release(self) -> None:
        self._release()

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_HELD: dict[Path, list[int]] = {}  # lock path -> [fd, handles, pid], for the locks this process holds


def _drop_handle(path: Path) -> None:
    held = _HELD.get(path)
    if held is None or held[2] != os.getpid():  # a forked child never gives back its parent's lock
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[path]
        _unlock(path, held[0])


def folder_lock_path(folder: Path) -> Path:
    """The lock file of a folder that one process at a time may write (a dataset, a run): beside the folder, so it
    exists before the folder does and never appears among the folder's own files."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _unlock(path: Path, fd: int) -> None:
    # Removed while still held: a process waiting on the old file sees that it is gone and starts again.
    try:
        if _is_file_at(fd, path):
            path.unlink()
    finally:
        os.close(fd)


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        at_path, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


def try_flock(fd: int, exclusive: bool = True, wait: bool = False) -> bool:
    """Take a flock on `fd`; False when `wait` is off and another process holds it in a conflicting way."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def lock_holder(path: Path) -> int | None:
    """The pid of the live process holding the lock at `path`, or None when nobody holds it (probed, not taken)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if try_flock(fd, exclusive=False):
            return None
        return _read_pid(path)
    finally:
        os.close(fd)


def acquire_writer_lock(path: Path, busy: Callable[[int | None], UserError]) -> WriterLock:
    """Hold `path` exclusively, or raise busy(holder_pid) at once when a live process holds it.

    A lock file left by a process that died is taken over (the kernel released its flock); the file is rewritten
    with this process's pid.
    """
    path = Path(path).absolute()
    if path in _HELD and _HELD[path][2] == os.getpid():
        _HELD[path][1] += 1
        return WriterLock(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_flock(fd):
            os.close(fd)
            raise busy(_read_pid(path))
        if not _is_file_at(fd, path):  # its holder removed it as we took it: take the new file
            os.close(fd)
            continue
        previous = _read_pid(path)
        if previous is not None and previous != os.getpid():
            logger.info("%s: taking over the lock left by process %d, which has stopped", path, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[path] = [fd, 1, os.getpid()]
        return WriterLock(path)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def human_bytes(size: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as file managers and `df -H` show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
