"""Fetching single files from the Hugging Face Hub, with one clear line when it cannot be reached."""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from robotrain.errors import ConfigError

_OFFLINE_WORDS = ("1", "on", "yes", "true")
# A Hub-style id: one or two path segments of safe characters, never `..` (it names a folder under the cache).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_valid_repo_id(repo_id: str) -> bool:
    """True for ids like lerobot/pusht; false for anything that could leave the cache folder."""
    return isinstance(repo_id, str) and bool(_REPO_ID.match(repo_id)) and ".." not in repo_id


def check_repo_id(repo_id: str, flag: str = "repo_id", root_flag: str = "root") -> None:
    """A ConfigError naming `flag` when `repo_id` is not a dataset id; the fix points at `root_flag` for folders."""
    if not is_valid_repo_id(repo_id):
        raise ConfigError(flag, repo_id or None,
                          "is not a dataset id (letters, digits, '.', '_', '-', at most one '/', no '..')",
                          f"use an id such as lerobot/pusht, and --{root_flag}=DIR for a folder elsewhere")


def hub_offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE_WORDS


@lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails at once instead of after huggingface_hub's retries."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def fetch_hub_file(repo_id: str, filename: str, flag: str, repo_type: str = "model",
                   revision: str | None = None) -> Path:
    """The local path of `filename` in Hub repo `repo_id` (from the cache when offline); ConfigError otherwise."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return _download(repo_id, filename, repo_type, revision)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else "the Hugging Face Hub cannot be reached"
        raise ConfigError(flag, repo_id, f"is not a local directory, and {why} (it is not in the local cache either)",
                          f"pass a local directory holding {filename}") from None
    except RepositoryNotFoundError:
        raise ConfigError(flag, repo_id, "is neither a local directory nor a Hub repo",
                          "check the spelling, or pass a local directory") from None
    except EntryNotFoundError:
        raise ConfigError(flag, repo_id, f"is a Hub repo without {filename}",
                          f"point at a repo or directory that holds {filename}") from None


def fetch_optional_hub_file(repo_id: str, filename: str, repo_type: str = "model",
                            revision: str | None = None) -> Path | None:
    """Like fetch_hub_file for a file only some repos have: None when the repo lacks it (offline: the cache does)."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return _download(repo_id, filename, repo_type, revision)
    except EntryNotFoundError:  # LocalEntryNotFoundError is one too: offline, an uncached file may not exist
        return None


def _download(repo_id: str, filename: str, repo_type: str, revision: str | None) -> Path:
    """hf_hub_download, from the cache only when offline was asked for or the Hub cannot be reached."""
    from huggingface_hub import hf_hub_download

    offline = hub_offline_requested() or not hub_reachable()
    return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, local_files_only=offline))
