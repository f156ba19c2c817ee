"""`--dataset.video_backend=torchcodec`: decoding with torchcodec (LeRobot 0.4's default backend) instead of PyAV.

torchcodec is optional: it is not a dependency of robotrain and it loads the system's FFmpeg libraries
(`pip install torchcodec`, and FFmpeg 4-7 from the OS). PyAV, which bundles its own FFmpeg, stays the default and
builds the frame cache either way; this backend decodes the frames read on the fly.

Frame i of a file robotrain or LeRobot writes lies at i / fps, so an asked time becomes a frame index; the frame's
own time is checked against the tolerance, as the PyAV decoder does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robotrain.datasets.format import DEFAULT_TOLERANCE_S, DatasetError

INSTALL = "pip install torchcodec (it also needs FFmpeg's shared libraries: e.g. apt-get install ffmpeg)"


def check_available() -> None:
    """A DatasetError naming the fix when torchcodec cannot be imported (absent, or FFmpeg's libraries missing)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as exc:  # ImportError, or OSError/RuntimeError when FFmpeg's libraries cannot be loaded
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DatasetError(f"video_backend 'torchcodec' cannot be used: {reason}. Fix: {INSTALL}, or use "
                           "--dataset.video_backend=pyav (bundled with robotrain)") from None


class TorchcodecDecoder:
    """One open video file, decoded with torchcodec; the interface of video.VideoDecoder that on-the-fly reads use."""

    def __init__(self, path: Path):
        from torchcodec.decoders import VideoDecoder

        self.path = Path(path)
        try:
            self._decoder = VideoDecoder(str(self.path), seek_mode="exact")
        except (RuntimeError, ValueError) as exc:
            raise DatasetError(f"{self.path}: cannot open video ({str(exc).splitlines()[0]}). Fix: re-download or "
                               "restore the dataset") from None
        self._fps = float(self._decoder.metadata.average_fps)
        self._count = int(self._decoder.metadata.num_frames)

    def frames_at(self, timestamps: Sequence[float], tolerance_s: float = DEFAULT_TOLERANCE_S) -> np.ndarray:
        """The frames at `timestamps` (seconds in the file), in the order asked: (T, H, W, 3) uint8."""
        indices = [min(max(round(float(t) * self._fps), 0), self._count - 1) for t in timestamps]
        try:
            batch = self._decoder.get_frames_at(indices)
        except (RuntimeError, IndexError) as exc:
            raise DatasetError(f"{self.path}: decoding failed ({str(exc).splitlines()[0]}). Fix: re-download or "
                               "restore the dataset") from None
        for asked, found in zip(timestamps, batch.pts_seconds.tolist(), strict=True):
            if abs(found - float(asked)) > tolerance_s:
                raise DatasetError(f"{self.path}: no frame at {float(asked):.6f}s (the nearest frame is at "
                                   f"{found:.6f}s, tolerance {tolerance_s}s). Fix: check the dataset's timestamps "
                                   "and fps (`robotrain dataset validate`)")
        return batch.data.permute(0, 2, 3, 1).contiguous().numpy()  # (T, C, H, W) -> (T, H, W, 3)

    def close(self) -> None:
        self._decoder = None
