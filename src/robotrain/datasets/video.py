"""Encode, concatenate and decode the mp4 files that hold camera frames (LeRobotDataset v3.0).

An episode is encoded on its own at a constant frame rate (frame i at i/fps), then joined with others into its
camera's shared mp4 by remuxing packets with shifted timestamps (no re-encode, each packet written once), so frame i
of an episode sits at from_timestamp + i/fps in the file. Decoding seeks to the keyframe before the wanted time
(g=2 puts one every two frames) and decodes forward, matching frames to the asked times by their presentation
timestamps.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from robotrain.datasets.format import DEFAULT_TOLERANCE_S, DatasetError
from robotrain.files import temporary_path

logger = logging.getLogger(__name__)

# SVT-AV1 prints a ~25-line banner to stderr for every encoded episode; keep its errors only unless the user chose.
os.environ.setdefault("SVT_LOG", "1")

_CODEC_ALIASES = {"h264": "libx264", "hevc": "libx265", "h265": "libx265", "av1": "libsvtav1"}
_DEFAULT_PRESETS: dict[str, int | str] = {"libsvtav1": 12, "libx264": "veryfast", "libx265": "fast"}
# One thread for random access: a second dav1d thread keeps spinning after each frame and slowed the rest of the
# sample (conversion, collation) on 2 cores: 17.7 -> 12.1 ms per 480x640 sample with one (docs/benchmarks.md).
_DECODE_THREADS = 1


@dataclass
class VideoEncoding:
    """How episodes are encoded: the encoder and its settings (stored in info.json)."""

    vcodec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    g: int = 2  # a keyframe every g frames: random access decodes at most g frames
    crf: int = 30
    preset: int | str | None = None
    fast_decode: int = 0

    def __post_init__(self) -> None:
        self.vcodec = _CODEC_ALIASES.get(self.vcodec, self.vcodec)
        if self.preset is None:
            self.preset = _DEFAULT_PRESETS.get(self.vcodec)

    def info(self) -> dict[str, Any]:
        """The encoder-settings keys of a video feature's info in info.json."""
        return {"video.g": self.g, "video.crf": self.crf, "video.preset": self.preset,
                "video.fast_decode": self.fast_decode, "video.video_backend": "pyav", "video.extra_options": {}}

    def options(self) -> dict[str, str]:
        """The FFmpeg encoder options for these settings."""
        options = {"g": str(self.g), "crf": str(self.crf)}
        if self.preset is not None:
            options["preset"] = str(self.preset)
        if self.vcodec == "libsvtav1":
            options["svtav1-params"] = f"fast-decode={self.fast_decode}"
            return options
        options["bf"] = "0"  # no frame reordering: each packet decodes to its own frame at once (cheap seeks)
        if self.vcodec == "libx265":
            options["x265-params"] = "log-level=error"  # else it prints its settings for every episode
        if self.fast_decode:
            options["tune"] = "fastdecode"
        return options


def _open_encoder(container: Any, encoding: VideoEncoding, fps: int, height: int, width: int) -> Any:
    try:
        av.codec.Codec(encoding.vcodec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        raise DatasetError(f"video codec '{encoding.vcodec}' is not available in this PyAV/FFmpeg build. Fix: use "
                           "vcodec='h264' (libx264) or 'libsvtav1'") from None
    stream = container.add_stream(encoding.vcodec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, encoding.pix_fmt
    stream.options = encoding.options()
    return stream


def _encode_into(frames: Iterable[np.ndarray], tmp: Path, fps: int, encoding: VideoEncoding) -> int:
    count, stream, shape = 0, None, None
    with av.open(str(tmp), "w", format="mp4") as container:
        for count, array in enumerate(frames, start=1):  # each (H, W, 3) uint8 RGB
            array = np.asarray(array)
            shape = shape or array.shape
            if array.shape != shape or array.dtype != np.uint8 or len(shape) != 3 or shape[2] != 3:
                raise DatasetError(f"video frame {count - 1} is {array.dtype} {array.shape}; every frame of a video "
                                   f"must be uint8 (H, W, 3) RGB of one size, the first is {shape}")
            if stream is None:
                stream = _open_encoder(container, encoding, fps, shape[0], shape[1])
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = count - 1, Fraction(1, fps)  # frame i at exactly i/fps
            container.mux(stream.encode(frame))
        if stream is not None:
            container.mux(stream.encode(None))  # flush the encoder's queued frames
    return count


DEFAULT_ENCODING = VideoEncoding()


def encode_video(frames: Iterable[np.ndarray], path: Path, fps: int,
                 encoding: VideoEncoding = DEFAULT_ENCODING) -> int:
    """Encode (H, W, 3) uint8 RGB frames into an mp4 at `path`, frame i at i/fps; returns the frame count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        count = _encode_into(frames, tmp, fps, encoding)
        if count == 0:
            raise DatasetError(f"{path}: no frames to encode")
        os.replace(tmp, path)
    except av.FFmpegError as exc:
        other = " or use vcodec='h264'" if encoding.vcodec != "libx264" else ""
        raise DatasetError(f"{path}: encoding {encoding.vcodec} video failed ({exc}). Fix: check the frame size (x264 "
                           f"needs an even width and height) and the encoder settings{other}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("encoded %d frames into %s", count, path)
    return count


def _stream_fps(stream: Any) -> int:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return round(float(rate)) if rate else 0


def _describe(stream: Any) -> dict[str, Any]:
    """What must match for two streams' packets to be played back as one stream."""
    ctx = stream.codec_context
    return {"codec": ctx.codec.canonical_name, "size": (ctx.height, ctx.width), "pix_fmt": ctx.pix_fmt,
            "fps": _stream_fps(stream), "time base": stream.time_base, "codec header": ctx.extradata}


def _remux(source: Any, stream: Any, out: Any, out_stream: Any, shift: int) -> int:
    """Copy `stream`'s packets into `out_stream`, `shift` ticks later; returns the end time of the last frame."""
    step = round(1 / (_stream_fps(stream) * stream.time_base))  # one frame, in stream ticks
    end = shift
    for packet in source.demux(stream):
        if packet.dts is None:  # the demuxer's empty flush packet
            continue
        packet.pts += shift
        packet.dts += shift
        end = max(end, packet.pts + (packet.duration or step))
        packet.stream = out_stream
        out.mux(packet)
    return end


class VideoMismatchError(DatasetError):
    """An episode encoded with other settings than the file it should join: it needs a file of its own."""


class VideoConcatenator:
    """Stream-copies encoded episodes, one after another, into a new mp4 at `dst` (no re-encoding).

    Each source is read once and its packets are written once, so joining N episodes costs their total size.
    The result goes to a temporary file beside `dst` and replaces it on close(); abort() (or an error inside a
    `with` block) removes it, so `dst` is either the whole result or as it was.
    """

    def __init__(self, dst: Path):
        self.dst = Path(dst)
        self.bytes_in = 0  # the appended files' total size, for size caps
        self._tmp = temporary_path(self.dst)
        self._out: Any = None
        self._out_stream: Any = None
        self._first: dict[str, Any] = {}  # what every later source must match (see _describe)
        self._end = 0  # end of the last frame so far, in stream ticks

    def append(self, src: Path) -> float:
        """Append the encoded episode `src`; returns its start time (s) in the result."""
        src = Path(src)
        try:
            with av.open(str(src)) as source:
                stream = source.streams.video[0]
                got = _describe(stream)
                if self._out is None:
                    self.dst.parent.mkdir(parents=True, exist_ok=True)
                    self._out = av.open(str(self._tmp), "w", format="mp4")
                    # opaque=True copies the stream as is; a new codec object would need an AV1 encoder "libdav1d"
                    self._out_stream = self._out.add_stream_from_template(stream, opaque=True)
                    self._first, shift = got, 0  # the first source keeps its own times
                elif mismatched := [name for name in got if got[name] != self._first[name]]:
                    name = mismatched[0]
                    raise VideoMismatchError(
                        f"cannot append {src} to {self.dst}: its {name} is {got[name]!r}, the file's is "
                        f"{self._first[name]!r}. Fix: encode all episodes of a camera with the same settings")
                else:
                    shift = self._end - (stream.start_time or 0)
                start = self._end
                self._end = _remux(source, stream, self._out, self._out_stream, shift)
        except av.FFmpegError as exc:
            raise DatasetError(f"cannot append {src} to {self.dst} ({exc}). Fix: re-encode the episode") from exc
        self.bytes_in += src.stat().st_size
        return float(start * self._first["time base"])

    def close(self) -> None:
        """Finish the file and move it into place at `dst`."""
        if self._out is None:
            raise DatasetError(f"{self.dst}: no video was appended, so there is no file to write")
        try:
            self._out.close()
            os.replace(self._tmp, self.dst)
        finally:
            self._out = None
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the unfinished file; `dst` stays as it was."""
        if self._out is not None:
            self._out.close()
            self._out = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoConcatenator:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def concatenate_videos(sources: Sequence[Path], dst: Path) -> list[float]:
    """Join encoded episodes into one mp4 at `dst`, replaced atomically; returns each one's start time (s)."""
    with VideoConcatenator(dst) as out:
        return [out.append(src) for src in sources]


def _open_input(path: Path) -> Any:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DatasetError(f"{path}: cannot open video ({exc}). Fix: re-download or restore the dataset") from exc
    if not container.streams.video:
        container.close()
        raise DatasetError(f"{path}: holds no video stream. Fix: re-download or restore the dataset")
    return container


def video_info(path: Path) -> dict[str, Any]:
    """The stream keys of a video feature's info in info.json (size, codec, pix_fmt, fps, channels, audio)."""
    with _open_input(Path(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        return {"video.height": ctx.height, "video.width": ctx.width, "video.codec": ctx.codec.canonical_name,
                "video.pix_fmt": ctx.pix_fmt, "video.fps": _stream_fps(stream),
                "video.channels": len(ctx.format.components), "has_audio": bool(container.streams.audio)}


def count_frames(path: Path) -> int:
    """The number of video frames in `path` (counts packets; decodes nothing)."""
    with _open_input(Path(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.dts is not None and not p.is_discard)


class VideoDecoder:
    """One open video file; decodes frames at given timestamps, frame-accurately."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._reformatter = VideoReformatter()
        self._container: Any = None
        self._sequential = False
        self._open(sequential=False)
        self._tick = float(self._stream.time_base)
        fps = _stream_fps(self._stream)
        self._step = 1 / fps if fps else 0.0  # seconds between frames
        self._shape = (self._stream.codec_context.height, self._stream.codec_context.width, 3)
        self._keyframe_gap = 0.0  # the widest keyframe spacing seen: decoding on beats seeking within it

    def _to_rgb(self, frame: Any, **resize: Any) -> np.ndarray:
        """(H, W, 3) uint8 RGB. One reformatter per decoder: frame.to_ndarray builds a new swscale context for
        every frame, which costs 6x the conversion itself (0.19 vs 0.03 ms at 96x96). One swscale thread: PyAV >= 17
        scales with a thread per core by default, and those threads wait on cores that torch's threads hold, which
        made a 96x96 Diffusion sample 2.7 ms instead of 1.0 ms with 2 torch threads."""
        return self._reformatter.reformat(frame, format="rgb24", threads=1, **resize).to_ndarray()

    def _open(self, sequential: bool) -> None:
        """(Re)open the file with a decoder tuned for random access, or for long sequential runs."""
        if self._container is not None:
            self.close()
        self._container = _open_input(self.path)
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        ctx.thread_type = "AUTO"
        if sequential:
            ctx.thread_count = 0  # all cores, with several frames in flight
        else:
            # Frame threading holds each frame back until more packets are in: one random frame would cost ~3
            # decodes. Low delay outputs a frame per packet (and turns frame threads off).
            ctx.thread_count = _DECODE_THREADS
            ctx.flags |= av.codec.context.Flags.low_delay
        self._sequential = sequential
        self._frames: Iterator[tuple[float, Any]] | None = None  # the live decode, None until a seek
        self._last: tuple[float, Any] | None = None  # the frame last taken from _frames (its next one comes next)

    def frames_at(self, timestamps: Sequence[float], tolerance_s: float = DEFAULT_TOLERANCE_S) -> np.ndarray:
        """The frames nearest to `timestamps` (seconds in the file), in the order asked: (T, H, W, 3) uint8."""
        wanted = sorted({float(t) for t in timestamps})
        if not wanted:
            return np.empty((0, *self._shape), np.uint8)
        if self._container is None or self._sequential:
            self._open(sequential=False)
        best: dict[float, tuple[float, Any]] = {}  # asked time -> (frame time, frame)
        seen: list[float] = []  # every decoded frame time, for the error message
        first = 0
        for k in range(1, len(wanted) + 1):  # times further apart than a keyframe gap: seek instead of decoding on
            if k == len(wanted) or wanted[k] - wanted[k - 1] > self._seek_window():
                self._collect(wanted[first:k], best, seen, tolerance_s)
                first = k
        for asked in wanted:
            if asked not in best or abs(best[asked][0] - asked) > tolerance_s:
                self._raise_missing(asked, seen, tolerance_s)
        arrays = {id(f): self._to_rgb(f) for _, f in best.values()}  # each (H, W, 3) uint8
        return np.stack([arrays[id(best[float(t)][1])] for t in timestamps])

    def _collect(self, wanted: list[float], best: dict[float, tuple[float, Any]], seen: list[float],
                 tolerance_s: float) -> None:
        """Decode from before wanted[0] to wanted[-1], keeping in `best` the nearest frame to each wanted time."""
        for time, frame in self._walk(wanted[0]):
            seen.append(time)
            # Frames come at a constant rate, so only wanted times within a frame step of this one can pick it.
            lo = bisect.bisect_left(wanted, time - self._step - tolerance_s)
            for asked in wanted[lo:bisect.bisect_right(wanted, time + self._step + tolerance_s)]:
                if asked not in best or abs(time - asked) < abs(best[asked][0] - asked):
                    best[asked] = (time, frame)
            if time > wanted[-1] - self._step / 2:  # no later frame is nearer to the last wanted time
                return

    def _raise_missing(self, asked: float, seen: list[float], tolerance_s: float) -> None:
        nearest = min(seen, key=lambda t: abs(t - asked), default=None)
        found = f"the nearest frame is at {nearest:.6f}s" if nearest is not None else "no frame was decoded"
        raise DatasetError(f"{self.path}: no frame at {asked:.6f}s ({found}, tolerance {tolerance_s}s). Fix: the "
                           "video holds fewer frames than the episode, or the episode's timestamps are wrong; "
                           "re-download or re-encode the dataset")

    def iter_frames(self, start_s: float, end_s: float,
                    size: tuple[int, int] | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Decode every frame with start_s <= time < end_s in order, as (time, (H, W, 3) uint8), resized to size."""
        tol = DEFAULT_TOLERANCE_S
        resize = {} if size is None else {"height": size[0], "width": size[1], "interpolation": "AREA"}
        if self._container is None or not self._sequential:
            self._open(sequential=True)
        for time, frame in self._walk(start_s - tol):
            if time >= end_s - tol:
                return
            if time >= start_s - tol:
                yield time, self._to_rgb(frame, **resize)

    def _walk(self, start: float) -> Iterator[tuple[float, Any]]:
        """Decoded (time, frame) pairs from the last frame at or before `start` on; seeks only when that is cheaper."""
        if not self._can_continue(start):
            self._seek(start)
        while self._last is not None:
            yield self._last
            self._last = next(self._frames, None) if self._frames is not None else None

    def _seek_window(self) -> float:
        """How far ahead decoding on is cheaper than seeking: about one keyframe gap."""
        return max(self._keyframe_gap, 2 * self._step)

    def _can_continue(self, start: float) -> bool:
        if self._frames is None or self._last is None:
            return False
        return -self._step / 2 <= start - self._last[0] <= self._seek_window()

    def _seek(self, start: float) -> None:
        """Restart decoding at the last keyframe at or before `start`, leaving its frame in self._last."""
        back = 0.0
        while True:
            target = max(0.0, start - back)
            self._restart(round(target / self._tick))
            self._last = next(self._frames, None)
            # The demuxer's index can land past the target (e.g. reordered streams): step back until it does not.
            if target == 0.0 or (self._last is not None and self._last[0] <= start + self._tick):
                return
            back = max(2 * back, 1.0)

    def _restart(self, ticks: int) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
        self._container.seek(ticks, stream=self._stream, backward=True)  # also flushes the decoder
        self._frames = self._decode()

    def _decode(self) -> Iterator[tuple[float, Any]]:
        last_key = None
        try:
            for packet in self._container.demux(self._stream):
                if packet.pts is not None and last_key is not None:  # a lower bound of the keyframe gap
                    self._keyframe_gap = max(self._keyframe_gap, (packet.pts - last_key) * self._tick)
                if packet.is_keyframe:
                    last_key = packet.pts
                for frame in packet.decode():
                    pts = frame.pts if frame.pts is not None else frame.dts
                    yield pts * self._tick, frame
        except av.FFmpegError as exc:
            raise DatasetError(f"{self.path}: cannot decode ({exc}). Fix: re-download or restore the dataset") from exc

    def close(self) -> None:
        """Release the file and the decoder's threads."""
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
        self._frames, self._last = None, None
        if self._container is not None:
            self._container.close()
            self._container = None


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, which changes when it is rewritten or replaced; None if it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class DecoderCache:
    """Per-process LRU of open VideoDecoders (bounded; default 16 files), safe across fork: a child process that
    inherits the cache drops the parent's decoders instead of sharing their FFmpeg state (check os.getpid())."""

    def __init__(self, max_open: int = 16, opener: Any = None):
        self.max_open = max_open
        self.opener = opener or VideoDecoder  # a class with frames_at(times, tolerance_s) and close()
        self._decoders: OrderedDict[Path, VideoDecoder] = OrderedDict()  # least recently used first
        self._pid = os.getpid()
        self._inherited: list[VideoDecoder] = []
        self._identities: dict[Path, tuple[int, int, int] | None] = {}

    def get(self, path: Path) -> VideoDecoder:
        """The open decoder of `path`, opening it (and closing the least recently used one) if needed."""
        self._leave_parents()
        path = Path(path)
        identity = _file_identity(path)
        decoder = self._decoders.pop(path, None)
        if decoder is not None and self._identities.get(path) != identity:
            decoder.close()  # the file was replaced (e.g. an episode appended): the open one shows old frames
            decoder = None
        decoder = decoder or self.opener(path)
        self._decoders[path], self._identities[path] = decoder, identity
        while len(self._decoders) > self.max_open:
            self._decoders.popitem(last=False)[1].close()
        return decoder

    def clear(self) -> None:
        """Close every open decoder of this process."""
        self._leave_parents()
        for decoder in self._decoders.values():
            decoder.close()
        self._decoders.clear()

    def _leave_parents(self) -> None:
        if self._pid != os.getpid():
            # The parent's decoder threads did not survive the fork: closing (or garbage-collecting) their contexts
            # here would join threads that do not exist, so keep them referenced and never touch them.
            self._inherited.extend(self._decoders.values())
            self._decoders, self._pid = OrderedDict(), os.getpid()
