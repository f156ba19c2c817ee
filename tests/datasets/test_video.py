"""Encode, append and decode small mp4 files: every frame carries its index, so each read checks the right frame."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from robotrain.datasets import video
from robotrain.datasets.format import DatasetError
from robotrain.datasets.video import (
    DecoderCache,
    VideoDecoder,
    VideoEncoding,
    concatenate_videos,
    count_frames,
    encode_video,
    video_info,
)

H, W, FPS = 64, 96, 30
CODECS = ["libsvtav1", "h264"]


def make_frame(index: int) -> np.ndarray:
    """A gradient with a flat band whose gray level encodes `index`, and a bar that moves with it."""
    frame = np.zeros((H, W, 3), np.uint8)  # (H, W, 3) uint8
    frame[:, :, 1] = np.linspace(0, 200, W, dtype=np.uint8)
    frame[:16] = 20 + 5 * index
    x = (index * 4) % (W - 8)
    frame[24:, x:x + 8] = 255
    return frame


def frame_index(frame: np.ndarray) -> int:
    """The index make_frame drew into `frame` (at any size), read back from the band's mean (robust to compression)."""
    height = frame.shape[0]
    return round((float(frame[height // 32:height * 7 // 32].mean()) - 20) / 5)


def indices(frames: np.ndarray) -> list[int]:
    return [frame_index(f) for f in frames]


def write(path: Path, first: int, count: int, vcodec: str = "libsvtav1") -> Path:
    assert encode_video((make_frame(i) for i in range(first, first + count)), path, FPS, VideoEncoding(vcodec)) == count
    return path


@pytest.fixture(scope="module")
def av1_file(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("video") / "clip.mp4", 0, 20)


@pytest.mark.parametrize("vcodec", CODECS)
def test_encode_decode_every_frame(tmp_path, vcodec):
    path = write(tmp_path / "clip.mp4", 0, 20, vcodec)
    frames = VideoDecoder(path).frames_at([i / FPS for i in range(20)])
    assert frames.shape == (20, H, W, 3) and frames.dtype == np.uint8
    assert indices(frames) == list(range(20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp file left behind


@pytest.mark.parametrize("vcodec", CODECS)
def test_keyframe_every_g_frames(tmp_path, vcodec):
    path = write(tmp_path / "clip.mp4", 0, 12, vcodec)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.dts is not None]
        keyframes = [round(p.pts * stream.time_base * FPS) for p in packets if p.is_keyframe]
    assert len(packets) == 12
    assert keyframes == list(range(0, 12, 2))


def test_concatenate_three_episodes(tmp_path):
    lengths, first, episodes = [12, 10, 15], 0, []
    for number, length in enumerate(lengths):
        episodes.append(write(tmp_path / f"episode-{number}.mp4", first, length))
        first += length
    target = tmp_path / "videos" / "file-000.mp4"
    target.parent.mkdir()
    starts = concatenate_videos(episodes, target)
    assert starts == pytest.approx([0, 12 / FPS, 22 / FPS], abs=1e-9)
    assert count_frames(target) == 37
    decoder = VideoDecoder(target)
    first = 0
    for start, length in zip(starts, lengths, strict=True):
        frames = decoder.frames_at([start + i / FPS for i in range(length)])
        assert indices(frames) == list(range(first, first + length))
        first += length
    assert [p.name for p in target.parent.iterdir()] == ["file-000.mp4"]


def test_concatenation_refuses_a_different_frame_size(tmp_path, av1_file):
    target = tmp_path / "file.mp4"
    concatenate_videos([av1_file], target)
    before = target.read_bytes()
    other = tmp_path / "small.mp4"
    encode_video([np.zeros((32, 48, 3), np.uint8)] * 4, other, FPS)
    with pytest.raises(DatasetError, match="small.mp4.*size"):
        concatenate_videos([target, other], target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.mp4", "small.mp4"]


def test_frames_at_unsorted_and_duplicate_times(av1_file):
    decoder = VideoDecoder(av1_file)
    asked = [15, 3, 3, 0, 19, 15, 7]
    assert indices(decoder.frames_at([i / FPS for i in asked])) == asked
    assert indices(decoder.frames_at([4 / FPS + 5e-5])) == [4]  # within the tolerance
    assert decoder.frames_at([]).shape == (0, H, W, 3)


def test_frames_at_decodes_on_instead_of_seeking(monkeypatch, av1_file):
    restarts = []
    original = VideoDecoder._restart
    monkeypatch.setattr(VideoDecoder, "_restart", lambda self, ticks: (restarts.append(ticks), original(self, ticks)))
    decoder = VideoDecoder(av1_file)
    for asked in ([3], [3], [4], [5, 6], [7]):
        assert indices(decoder.frames_at([i / FPS for i in asked])) == asked
    assert len(restarts) == 1
    assert indices(decoder.frames_at([1 / FPS])) == [1]  # backwards: seeks again
    assert len(restarts) == 2
    # Far apart: decodes on to frame 2, then seeks ahead to 17 instead of decoding the frames between.
    assert indices(decoder.frames_at([17 / FPS, 2 / FPS])) == [17, 2]
    assert len(restarts) == 3


@pytest.mark.parametrize("time", [20 / FPS, 25 / FPS, 3.5 / FPS])
def test_time_without_a_frame_names_the_file(av1_file, time):
    with pytest.raises(DatasetError, match=r"clip\.mp4.*nearest frame.*fewer frames than the episode"):
        VideoDecoder(av1_file).frames_at([0, time])


def test_video_info(tmp_path, av1_file):
    assert video_info(av1_file) == {"video.height": H, "video.width": W, "video.codec": "av1",
                                    "video.pix_fmt": "yuv420p", "video.fps": FPS, "video.channels": 3,
                                    "has_audio": False}
    assert video_info(write(tmp_path / "h264.mp4", 0, 4, "h264"))["video.codec"] == "h264"


def test_count_frames(tmp_path, av1_file):
    assert count_frames(av1_file) == 20
    assert count_frames(write(tmp_path / "h264.mp4", 0, 13, "h264")) == 13


def test_iter_frames_with_resize(av1_file):
    decoder = VideoDecoder(av1_file)
    pairs = list(decoder.iter_frames(5 / FPS, 15 / FPS, size=(32, 48)))
    assert [t for t, _ in pairs] == pytest.approx([i / FPS for i in range(5, 15)], abs=1e-6)
    assert all(f.shape == (32, 48, 3) and f.dtype == np.uint8 for _, f in pairs)
    assert indices(np.stack([f for _, f in pairs])) == list(range(5, 15))
    # The next episode starts where this one ended; full size again.
    assert [frame_index(f) for _, f in decoder.iter_frames(15 / FPS, 20 / FPS)] == list(range(15, 20))
    assert indices(decoder.frames_at([2 / FPS])) == [2]  # random access after a sequential run


def test_decoder_cache_evicts_and_survives_fork(monkeypatch, tmp_path, av1_file):
    paths = [write(tmp_path / f"{i}.mp4", i, 3) for i in range(3)]
    cache = DecoderCache(max_open=2)
    first = cache.get(paths[0])
    assert cache.get(paths[0]) is first
    second = cache.get(paths[1])
    cache.get(paths[2])  # evicts paths[0], the least recently used
    assert cache.get(paths[1]) is second
    assert cache.get(paths[0]) is not first
    monkeypatch.setattr(video.os, "getpid", lambda: -1)  # as in a forked DataLoader worker
    child = cache.get(paths[1])
    assert child is not second
    assert indices(child.frames_at([0.0])) == [1]
    cache.clear()


def test_unknown_codec(tmp_path):
    with pytest.raises(DatasetError, match="nocodec.*h264"):
        encode_video([make_frame(0)], tmp_path / "clip.mp4", FPS, VideoEncoding(vcodec="nocodec"))
    assert list(tmp_path.iterdir()) == []


def test_encode_is_atomic(tmp_path, av1_file):
    target = tmp_path / "clip.mp4"
    target.write_bytes(av1_file.read_bytes())

    def frames_then_crash():
        yield make_frame(0)
        yield make_frame(1)
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        encode_video(frames_then_crash(), target, FPS)
    assert target.read_bytes() == av1_file.read_bytes()  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with pytest.raises(DatasetError, match="frame 1"):
        encode_video([make_frame(0), np.zeros((H, W), np.uint8)], target, FPS)
    assert count_frames(target) == 20


def test_encoding_settings():
    assert VideoEncoding().info() == {"video.g": 2, "video.crf": 30, "video.preset": 12, "video.fast_decode": 0,
                                      "video.video_backend": "pyav", "video.extra_options": {}}
    h264 = VideoEncoding(vcodec="h264", fast_decode=1)
    assert (h264.vcodec, h264.preset, h264.options()["tune"]) == ("libx264", "veryfast", "fastdecode")
    assert VideoEncoding(fast_decode=2).options()["svtav1-params"] == "fast-decode=2"


def test_decoder_cache_reopens_a_replaced_file(tmp_path):
    """Joining episodes replaces the file atomically; a cached decoder of the old file must not be served."""
    path = write(tmp_path / "grow.mp4", 0, 6)
    cache = DecoderCache()
    assert indices(cache.get(path).frames_at([5 / FPS])) == [5]
    concatenate_videos([path, write(tmp_path / "more.mp4", 6, 4)], path)
    assert indices(cache.get(path).frames_at([9 / FPS])) == [9]
