"""--dataset.video_backend=torchcodec: the same frames as PyAV where torchcodec is installed; one clear line where
it is not (it is optional and needs the system's FFmpeg libraries)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from robotrain.datasets import LeRobotDataset
from robotrain.datasets.format import DatasetError

from .helpers import gray, record


def torchcodec_works() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not torchcodec_works(), reason="torchcodec (and FFmpeg's shared libraries) are not installed")
def test_torchcodec_gives_pyavs_frames(tmp_path):
    root = record(tmp_path / "ds", [6, 5])
    delta = {"observation.image": [-0.1, 0.0, 0.2]}
    pyav = LeRobotDataset("test/synthetic", root=root, delta_timestamps=delta, return_uint8=True)
    codec = LeRobotDataset("test/synthetic", root=root, delta_timestamps=delta, return_uint8=True,
                           video_backend="torchcodec")
    for index in range(len(pyav)):
        a, b = pyav[index]["observation.image"], codec[index]["observation.image"]
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a.numpy().astype(int) - b.numpy().astype(int)).max() <= 2  # the same decoder, other RGB
        assert torch_equal(pyav[index]["observation.image_is_pad"], codec[index]["observation.image_is_pad"])
    episode, frame = 1, 3  # the encoded gray level survives both paths
    assert abs(int(codec[6 + frame]["observation.image"][1, 0, 0, 0]) - gray(episode, frame)) <= 3


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_without_torchcodec_the_backend_is_refused_naming_the_fix(tmp_path, monkeypatch):
    root = record(tmp_path / "ds", [4])
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(DatasetError, match=r"video_backend 'torchcodec' cannot be used: .*pip install torchcodec.*"
                                           r"--dataset\.video_backend=pyav"):
        LeRobotDataset("test/synthetic", root=root, video_backend="torchcodec")
