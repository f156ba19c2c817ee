"""Normalization statistics: per-episode stats, their aggregation, and their stats.json / episodes-parquet forms.

Every feature gets STAT_NAMES: min, max, mean, std, count and the QUANTILES q01..q99. Vectors (T, D) reduce over
frames to (D,); cameras give per-channel stats shaped (3, 1, 1) on pixels scaled to [0, 1], from a sub-sample of
frames and pixels. `count` is always shape (1,): frames for vectors, sampled frames for cameras.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robotrain.datasets.format import QUANTILES, STAT_NAMES

Stats = dict[str, np.ndarray]
FeatureStats = dict[str, Stats]

MIN_IMAGE_SAMPLES = 100
MAX_IMAGE_SAMPLES = 10_000
IMAGE_SAMPLE_POWER = 0.75
IMAGE_TARGET_SIDE = 150  # px: per-channel stats barely move under downsampling, and this keeps them cheap
SKIPPED_DTYPES = ("string", "language")
CAMERA_DTYPES = ("image", "video")
QUANTILE_METHODS = ("weighted", "envelope")
_HISTOGRAM_CHUNK = 64  # frames per bincount call

_QUANTILE_KEYS = tuple(QUANTILES)
_QUANTILE_VALUES = np.array([QUANTILES[k] for k in _QUANTILE_KEYS], dtype=np.float64)


# ---- sampling -----------------------------------------------------------------------------------------------
def num_image_samples(num_frames: int) -> int:
    """How many frames of an n-frame episode feed the image stats: 100 (or all, if fewer), else n**0.75, <= 10 000."""
    if num_frames <= 0:
        return 0
    # max(...) makes the rule continuous: n**0.75 only exceeds 100 past n ~ 464, so short episodes get 100.
    return max(min(num_frames, MIN_IMAGE_SAMPLES), min(int(num_frames**IMAGE_SAMPLE_POWER), MAX_IMAGE_SAMPLES))


def sample_indices(num_frames: int) -> np.ndarray:
    """Evenly spaced, strictly increasing frame indices (first and last included) to use for image stats."""
    num = num_image_samples(num_frames)
    if num == 0:
        return np.zeros(0, dtype=np.int64)
    # floor, not round: with a step >= 1, floored values stay distinct (banker's rounding can merge neighbours).
    return np.floor(np.linspace(0, num_frames - 1, num)).astype(np.int64)


def downsample_stride(height: int, width: int) -> int:
    """The pixel stride that brings an image's larger side to about IMAGE_TARGET_SIDE px (1: leave it)."""
    return max(1, round(max(height, width) / IMAGE_TARGET_SIDE))


# ---- per-episode stats --------------------------------------------------------------------------------------
def _to_channels_last(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) as given, or (T, C, H, W) moved to channels-last (a view, no copy)."""
    if frames.ndim != 4:
        raise ValueError(f"camera frames must be (T, H, W, 3), got shape {frames.shape}")
    if frames.shape[-1] in (1, 3, 4):
        return frames
    if frames.shape[1] in (1, 3, 4):
        return np.moveaxis(frames, 1, -1)
    raise ValueError(f"camera frames must be (T, H, W, 3) or (T, 3, H, W), got shape {frames.shape}")


def _uint8_histogram(frames: np.ndarray) -> np.ndarray:
    """Per-channel 256-bin histograms (C, 256) of uint8 frames (T, H, W, C), a few frames at a time."""
    num_channels = frames.shape[-1]
    # Channel c's values land in bins [256 c, 256 c + 256): one bincount gives every channel's histogram.
    offsets = np.arange(num_channels, dtype=np.int64) * 256
    hist = np.zeros(256 * num_channels, dtype=np.int64)
    for start in range(0, len(frames), _HISTOGRAM_CHUNK):  # bounds the int64 copy bincount needs
        chunk = frames[start:start + _HISTOGRAM_CHUNK].reshape(-1, num_channels).astype(np.int64) + offsets
        hist += np.bincount(chunk.ravel(), minlength=256 * num_channels)
    return hist.reshape(num_channels, 256)


def _histogram_stats(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Exact stats, in pixel levels 0..255, of the values counted by per-channel histograms (C, 256)."""
    n = int(hist[0].sum())
    levels = np.arange(256, dtype=np.float64)
    weights = hist.astype(np.float64)
    mean = weights @ levels / n
    var = (weights * (levels - mean[:, None]) ** 2).sum(axis=1) / n  # two-pass: no E[x^2] - mean^2 cancellation
    cum = np.cumsum(hist, axis=1)
    present = hist > 0
    out = {
        "min": present.argmax(axis=1).astype(np.float64),
        "max": (255 - present[:, ::-1].argmax(axis=1)).astype(np.float64),
        "mean": mean,
        "std": np.sqrt(var),
    }
    # np.quantile's default ("linear"): value at fractional rank h = (n - 1) * q between sorted[lo] and sorted[lo + 1].
    rank = (n - 1) * _QUANTILE_VALUES
    lo = np.floor(rank).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    # sorted[k] is the first level whose cumulative count exceeds k, i.e. the number of levels with cum <= k.
    at_lo = (cum[:, :, None] <= lo).sum(axis=1).astype(np.float64)  # (C, quantiles)
    at_hi = (cum[:, :, None] <= hi).sum(axis=1).astype(np.float64)
    values = at_lo + (rank - lo) * (at_hi - at_lo)
    out.update(zip(_QUANTILE_KEYS, values.T, strict=True))
    return out


def _float_channel_stats(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of float pixels (N, C), already in [0, 1]."""
    pixels = pixels.astype(np.float64, copy=False)
    out = {"min": pixels.min(axis=0), "max": pixels.max(axis=0), "mean": pixels.mean(axis=0),
           "std": pixels.std(axis=0)}
    out.update(zip(_QUANTILE_KEYS, np.quantile(pixels, _QUANTILE_VALUES, axis=0), strict=True))
    return out


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats (C, 1, 1) in [0, 1] of camera frames (T, H, W, C) uint8 (or float in [0, 1]), downsampled."""
    frames = _to_channels_last(np.asarray(frames))
    if frames.shape[0] == 0:
        raise ValueError("image_stats needs at least one frame")
    stride = downsample_stride(frames.shape[1], frames.shape[2])
    frames = frames[:, ::stride, ::stride, :]
    if frames.dtype == np.uint8:
        stats = {k: v / 255.0 for k, v in _histogram_stats(_uint8_histogram(frames)).items()}
    else:
        stats = _float_channel_stats(frames.reshape(-1, frames.shape[-1]))
    out = {k: stats[k].reshape(-1, 1, 1) for k in STAT_NAMES if k != "count"}
    out["count"] = np.array([frames.shape[0]], dtype=np.int64)
    return out


def array_stats(values: np.ndarray) -> Stats:
    """Stats of numeric or bool values (T, ...) reduced over frames; a 1-D (T,) column counts as (T, 1)."""
    values = np.asarray(values)
    if values.shape[0] == 0:
        raise ValueError("array_stats needs at least one frame")
    if values.ndim == 1:
        values = values[:, None]  # stats.json stores even scalar features as 1-element lists
    values = values.astype(np.float64)  # bools become 0/1; ints lose nothing below 2**53
    out = {"min": values.min(axis=0), "max": values.max(axis=0), "mean": values.mean(axis=0),
           "std": values.std(axis=0), "count": np.array([values.shape[0]], dtype=np.int64)}
    out.update(zip(_QUANTILE_KEYS, np.quantile(values, _QUANTILE_VALUES, axis=0), strict=True))
    return {k: out[k] for k in STAT_NAMES}


def compute_episode_stats(episode: dict[str, np.ndarray], features: dict[str, dict]) -> FeatureStats:
    """Stats of every numeric, bool and camera feature of one episode; string/language features get none."""
    out: FeatureStats = {}
    for key, feature in features.items():
        if feature["dtype"] in SKIPPED_DTYPES or key not in episode:
            continue
        values = np.asarray(episode[key])
        if feature["dtype"] in CAMERA_DTYPES:
            # Idempotent on an already sub-sampled array: sample_indices(k) is every frame for k <= 100.
            out[key] = image_stats(values[sample_indices(len(values))])
            continue
        shape = tuple(feature.get("shape") or ())
        if shape and values.size == len(values) * int(np.prod(shape)):
            values = values.reshape(len(values), *shape)  # (T,) index columns -> (T, 1), as info.json declares
        out[key] = array_stats(values)
    return out


# ---- aggregation --------------------------------------------------------------------------------------------
def _aggregate_feature(stats: list[Stats], quantile_method: str) -> Stats:
    """One feature's stats over episodes: exact for min/max/mean/std/count, approximate for quantiles."""
    counts = np.array([int(np.asarray(s["count"]).reshape(-1)[0]) for s in stats], dtype=np.int64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("cannot aggregate stats whose counts sum to zero")
    means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in stats])
    weights = (counts / total).reshape(-1, *([1] * (means.ndim - 1)))
    mean = (weights * means).sum(axis=0)
    variances = np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in stats])
    # Parallel algorithm: within-episode variance plus the spread of episode means around the pooled mean.
    var = (weights * (variances + (means - mean) ** 2)).sum(axis=0)
    out = {
        "min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in stats]), axis=0),
        "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in stats]), axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(var, 0.0)),
        "count": np.array([total], dtype=np.int64),
    }
    for key, q in QUANTILES.items():
        if not all(key in s for s in stats):
            continue  # e.g. stats written before quantiles existed: leave them out rather than invent them
        per_episode = np.stack([np.asarray(s[key], dtype=np.float64) for s in stats])
        if quantile_method == "envelope":
            out[key] = per_episode.min(axis=0) if q <= 0.5 else per_episode.max(axis=0)
        else:
            out[key] = (weights * per_episode).sum(axis=0)
    return {k: out[k] for k in STAT_NAMES if k in out}


def aggregate_stats(episodes: list[FeatureStats], quantile_method: str = "weighted") -> FeatureStats:
    """Dataset stats from per-episode stats; each feature over the episodes that have it.

    Quantiles cannot be pooled exactly from per-episode quantiles. "weighted" (the default) takes the count-weighted
    mean of episode quantiles: an approximation that is exact when episodes share a distribution and otherwise sits
    between the episodes' values. "envelope" (LeRobot's choice) takes the min over episodes for q <= 0.5 and the max
    above; it never under-states the range, but with many episodes it tracks the most extreme single episode, so q01
    and q99 drift out towards min and max and normalization built on them loses resolution.
    """
    if quantile_method not in QUANTILE_METHODS:
        raise ValueError(f"quantile_method must be one of {QUANTILE_METHODS}, got {quantile_method!r}")
    by_feature: dict[str, list[Stats]] = {}
    for episode in episodes:
        for key, stats in episode.items():
            by_feature.setdefault(key, []).append(stats)
    return {key: _aggregate_feature(stats, quantile_method) for key, stats in by_feature.items()}


# ---- serialization ------------------------------------------------------------------------------------------
def _stack_nested(value: Any) -> Any:
    """pandas' object arrays of arrays (how it reads nested list columns) as one numeric array; else as given."""
    object_array = isinstance(value, np.ndarray) and value.dtype == object
    list_of_arrays = isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], np.ndarray)
    if object_array or list_of_arrays:
        return np.stack([np.asarray(_stack_nested(v)) for v in value])
    return value


def _to_array(value: Any, stat: str) -> np.ndarray:
    """A stat read back from JSON or parquet as an array: float64 (count int64), at least 1-D."""
    dtype = np.int64 if stat == "count" else np.float64
    return np.atleast_1d(np.asarray(_stack_nested(value), dtype=dtype))


def _to_list(value: Any) -> Any:
    """An array as nested Python lists (ints stay ints), ready for json or pyarrow."""
    return np.atleast_1d(np.asarray(value)).tolist()


def stats_to_json(stats: FeatureStats) -> dict[str, dict[str, Any]]:
    """{feature: {stat: array}} as nested lists, the layout of meta/stats.json."""
    return {key: {name: _to_list(value) for name, value in feature.items()} for key, feature in stats.items()}


def stats_from_json(data: dict[str, dict[str, Any]]) -> FeatureStats:
    """meta/stats.json's nested lists as arrays: float64, count int64, at least 1-D."""
    return {key: {name: _to_array(value, name) for name, value in feature.items()} for key, feature in data.items()}


def flatten_stats(stats: FeatureStats) -> dict[str, list]:
    """{"<feature>/<stat>": nested list}: the episodes parquet columns, less their "stats/" prefix."""
    return {f"{key}/{name}": _to_list(value) for key, feature in stats.items() for name, value in feature.items()}


def unflatten_stats(flat: dict[str, Any]) -> FeatureStats:
    """The inverse of flatten_stats; splits on the last "/" since stat names never hold one."""
    out: FeatureStats = {}
    for column, value in flat.items():
        key, sep, name = column.rpartition("/")
        if not sep:
            raise ValueError(f"stats column {column!r} is not <feature>/<stat>")
        if value is None:
            continue  # an episode without this feature, in a parquet file whose other rows have it
        out.setdefault(key, {})[name] = _to_array(value, name)
    return out
