"""Where a dataset lives: one DatasetLocation (repo_id, root, revision) decides it for every reader, writer and tool.

`root` when given, else $HF_LEROBOT_HOME/<repo_id>. Reading resolves a location that is absent locally by
downloading it from the Hub (meta/ first, then only the data and video files of the selected episodes); with no
network the error says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from robotrain.datasets.format import (
    CODEBASE_VERSION,
    INFO_PATH,
    DatasetError,
    chunk_file_path,
    lerobot_home,
    read_episodes,
    read_info,
)
from robotrain.hub import check_repo_id, hub_offline_requested, hub_reachable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetLocation:
    """A dataset's identity and folder."""

    repo_id: str
    root: Path | str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        check_repo_id(self.repo_id)

    @property
    def local_dir(self) -> Path:
        """The folder the dataset is (or will be) in; nothing is downloaded."""
        return Path(self.root).expanduser() if self.root is not None else lerobot_home() / self.repo_id

    def resolve(self, episodes: list[int] | None = None) -> Path:
        """The local folder holding the dataset, downloading what is missing when the Hub can be reached."""
        target = self.local_dir
        if (target / INFO_PATH).is_file() or (self.root is not None and target.is_dir()):
            return target  # an existing folder is read as is; the reader says precisely what is wrong with it
        if hub_offline_requested() or not hub_reachable():
            why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else "the Hugging Face Hub cannot be reached"
            if self.root is not None:
                raise DatasetError(f"dataset {self.repo_id}: root {target} does not exist and {why}. Fix: point root "
                                   f"at the folder that holds {INFO_PATH}")
            raise DatasetError(f"dataset {self.repo_id} is not at {target} (no {INFO_PATH}) and {why}. Fix: pass "
                               "--dataset.root=DIR (root=DIR) pointing at a local copy, or record one with "
                               "`robotrain dataset record-sim`")
        download_dataset(self.repo_id, target, self.revision or CODEBASE_VERSION, episodes)
        return target


def download_dataset(repo_id: str, target: Path, revision: str, episodes: list[int] | None) -> None:
    """meta/ first, then the data and video files that the selected episodes live in."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        _snapshot(repo_id, target, revision, ["meta/**"])
    except RepositoryNotFoundError:
        raise DatasetError(f"dataset {repo_id} is not on the Hub (or is private). Fix: check the id, log in with "
                           "`hf auth login`, or use --dataset.root=DIR") from None
    except RevisionNotFoundError:
        raise DatasetError(f"dataset {repo_id} has no revision '{revision}' on the Hub; a dataset without a v3.0 "
                           "tag is usually v2.1. Fix: download it with --dataset.revision=v2.1, then run "
                           f"`robotrain dataset convert --root={target}`") from None
    _snapshot(repo_id, target, revision, episode_file_patterns(target, episodes))


def episode_file_patterns(root: Path, episodes: list[int] | None) -> list[str]:
    """Relative paths of the data and video files that hold `episodes` (all when None)."""
    info, table = read_info(root), read_episodes(root)
    rows = table.to_pylist()
    if episodes is not None:
        rows = [rows[i] for i in episodes if i < len(rows)]
    paths = set()
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    for row in rows:
        paths.add(chunk_file_path(info["data_path"], row["data/chunk_index"], row["data/file_index"]))
        for key in video_keys:
            paths.add(chunk_file_path(info["video_path"], row[f"videos/{key}/chunk_index"],
                                      row[f"videos/{key}/file_index"], video_key=key))
    return sorted(paths)


def _snapshot(repo_id: str, target: Path, revision: str, patterns: list[str]) -> None:
    from huggingface_hub import snapshot_download

    logger.info("downloading %s (%d pattern(s)) from the Hub into %s", repo_id, len(patterns), target)
    snapshot_download(repo_id, repo_type="dataset", revision=revision, local_dir=target, allow_patterns=patterns)


