"""Data and video files that grow one episode at a time without being rewritten (the v3.0 writer's open files).

A file that is still being filled is a *run*. Its location L = (chunk_index, file_index) is reserved but not yet
written; each episode saved into the run goes to a file of its own, a *segment*, at the locations after L
(next_chunk_file(L), then the next one, ...). A segment is a complete v3.0 file (a video segment starts at 0 s) and
the episode table points at it, so a dataset whose last files are runs is valid: robotrain and LeRobot load it.
Closing a run writes the concatenation of its segments at L (a hard link when there is one segment); the writer
then points the run's episodes at L and deletes the segments. Every episode's bytes are written twice at most.

L comes before its segments on purpose: readers that load every data file in path order (LeRobot) meet L's rows
first, at their right place, and segments a crash left behind only after the last frame, where they are ignored.
After a crash the runs are found again from the episode table alone (find_open_run): a run is the trailing
episodes that each own one file, at consecutive locations, right after a location no episode uses.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from robotrain.datasets.format import DatasetError, chunk_file_path, dataset_file, next_chunk_file
from robotrain.datasets.video import concatenate_videos
from robotrain.files import is_temporary, temporary_path

Location = tuple[int, int]  # (chunk_index, file_index)


def previous_location(location: Location, chunks_size: int) -> Location | None:
    """The location whose next_chunk_file is `location`; None for the very first."""
    chunk, file = location
    if file > 0:
        return chunk, file - 1
    return (chunk - 1, chunks_size - 1) if chunk > 0 else None


@dataclass
class Run:
    """An open file: its reserved location and the episodes whose segments it holds so far."""

    reserved: Location
    episodes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # bytes of each segment, for the file size cap

    @property
    def bytes(self) -> int:
        return sum(self.sizes)


@dataclass
class EpisodeFiles:
    """One kind of per-episode file: the data parquet ("data") or one camera's mp4 ("videos/<key>")."""

    name: str
    template: str  # info.json's data_path or video_path
    cap_bytes: int  # a run closes before an episode that would take it to this size
    video_key: str | None = None
    run: Run | None = None

    def location(self, row: dict[str, Any]) -> Location:
        return int(row[f"{self.name}/chunk_index"]), int(row[f"{self.name}/file_index"])

    def path(self, root: Path, location: Location) -> Path:
        """The file at `location`, checked to lie inside the dataset folder."""
        relative = chunk_file_path(self.template, *location, video_key=self.video_key)
        return dataset_file(root, relative, f"info.json {'video_path' if self.video_key else 'data_path'}")

    def pattern(self) -> str:
        """A glob matching every file of this kind."""
        return re.sub(r"\{(chunk|file)_index[^}]*\}", "*", self.template).format(video_key=self.video_key)


def join_segments(sources: list[Path], target: Path, is_video: bool) -> list[float]:
    """Write the concatenation of `sources` at `target` (atomically); returns each source's start time (s)."""
    tmp = temporary_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if len(sources) == 1:
        try:
            os.link(sources[0], tmp)  # one segment: the file is already what the run should hold
        except OSError:  # a filesystem without hard links
            shutil.copyfile(sources[0], tmp)
        os.replace(tmp, target)
        return [0.0]
    if is_video:
        return concatenate_videos(sources, target)
    table = pa.concat_tables([pq.read_table(path) for path in sources])
    pq.write_table(table, tmp, compression="snappy", use_dictionary=True)
    os.replace(tmp, target)
    return [0.0] * len(sources)


def find_open_run(files: EpisodeFiles, rows: list[dict[str, Any]], root: Path, chunks_size: int) -> Run | None:
    """The run a writer left open in the committed episode table `rows`, if any (see the module docstring)."""
    locations = [files.location(row) for row in rows]
    uses = Counter(locations)
    last = len(locations) - 1
    if last < 0 or uses[locations[last]] != 1:
        return None
    first = last
    while (first > 0 and uses[locations[first - 1]] == 1
           and next_chunk_file(*locations[first - 1], chunks_size) == locations[first]):
        first -= 1
    reserved = previous_location(locations[first], chunks_size)
    if reserved is None or reserved in uses:
        return None  # a closed file (every closed file is in use; a run's reserved location never is)
    sizes = [files.path(root, location).stat().st_size for location in locations[first:]]
    return Run(reserved, list(range(first, last + 1)), sizes)


def remove_unreferenced(files: EpisodeFiles, rows: list[dict[str, Any]], root: Path) -> list[Path]:
    """Delete the files of this kind that no committed episode points at (what a killed save left); returns them."""
    used = {files.path(root, files.location(row)) for row in rows}
    stray = [path for path in sorted(root.glob(files.pattern())) if path not in used]
    for path in stray:
        dataset_file(root, path.relative_to(root), f"a {files.name} file").unlink()
    return stray


def remove_leftovers(root: Path, folders: list[str]) -> None:
    """Delete temporary and pending files (hidden names) that a killed writer left in the dataset's folders."""
    for folder in folders:
        for path in (root / folder).rglob(".*"):
            if path.is_file() and (is_temporary(path) or path.name.startswith(".pending-")):
                dataset_file(root, path.relative_to(root), "a temporary file").unlink()


def read_join_journal(journal: Path, kinds: dict[str, EpisodeFiles], root: Path, episodes: int) -> list[dict[str, Any]]:
    """The joins a killed writer journaled, checked: each names a kind of file this dataset has, committed episodes,
    and segments that are files of that kind inside the dataset (the switch deletes them)."""
    try:
        joins = json.loads(journal.read_text())["joins"]
        for join in joins:
            files = kinds.get(join["files"])
            if files is None:
                raise ValueError(f"'files' names {join['files']!r}, which this dataset does not have")
            if not all(isinstance(e, int) and 0 <= e < episodes for e in join["episodes"]):
                raise ValueError(f"'episodes' lists {join['episodes']}, not committed episodes (0..{episodes - 1})")
            if len(join["starts"]) != len(join["episodes"]) or len(join["reserved"]) != 2:
                raise ValueError("'starts' or 'reserved' does not fit its episodes")
            pattern = files.pattern()
            for segment in join["segments"]:
                if not isinstance(segment, str) or not fnmatch.fnmatch(segment, pattern):
                    raise ValueError(f"'segments' lists {segment!r}, which is not a {files.name} file ({pattern})")
                try:
                    dataset_file(root, segment, "it")
                except DatasetError:
                    raise ValueError(f"'segments' lists {segment!r}, which lies outside the dataset") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{journal}: damaged join journal ({exc}). Fix: restore the dataset from a copy; the "
                           "journal is written only while a writer joins files") from None
    return joins
