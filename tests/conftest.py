"""Tests run offline, on CPU, in a fresh working directory each."""

from __future__ import annotations

import pytest
import torch

# Tests run tiny models, where a second intra-op thread mostly waits for the first (and, on a busy 2-core machine,
# made some tests 100x slower). Benchmarks and the training subprocesses keep torch's default.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may reach the Hub or write into the user's caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home / "lerobot"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("ROBOTRAIN_CACHE_DIR", str(home / "robotrain"))


@pytest.fixture
def workdir(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A fresh current directory, so relative paths such as outputs/train/... land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
