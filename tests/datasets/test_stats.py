"""Per-episode stats against numpy, image sub-sampling, exact pooled aggregation and the serialized forms."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from robotrain.datasets.format import DEFAULT_FEATURES, QUANTILES, STAT_NAMES
from robotrain.datasets.stats import (
    aggregate_stats,
    array_stats,
    compute_episode_stats,
    downsample_stride,
    flatten_stats,
    image_stats,
    sample_indices,
    stats_from_json,
    stats_to_json,
    unflatten_stats,
)

EXACT = {"min", "max", "mean", "std", "count"}


def numpy_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """The reference: each stat straight from numpy, over axis 0."""
    values = values.astype(np.float64)
    out = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
           "count": np.array([len(values)])}
    out.update({k: np.quantile(values, q, axis=0) for k, q in QUANTILES.items()})
    return out


def assert_stats_close(actual: dict, expected: dict, keys=STAT_NAMES, rtol: float = 1e-12) -> None:
    for key in keys:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=1e-12, err_msg=key)
        assert np.shape(actual[key]) == np.shape(expected[key]), key


# ---- array_stats --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_array_stats_matches_numpy(dtype) -> None:
    values = (np.random.default_rng(0).normal(3.0, 2.0, size=(257, 6)) * 10).astype(dtype)
    stats = array_stats(values)
    assert tuple(stats) == STAT_NAMES
    assert_stats_close(stats, numpy_stats(values))
    assert stats["count"].dtype == np.int64 and stats["count"].tolist() == [257]
    assert all(stats[k].dtype == np.float64 for k in STAT_NAMES if k != "count")


def test_array_stats_one_dimensional_column_becomes_shape_1() -> None:
    stats = array_stats(np.arange(10, dtype=np.int64))
    assert all(stats[k].shape == (1,) for k in STAT_NAMES)
    assert stats["min"].tolist() == [0.0] and stats["max"].tolist() == [9.0] and stats["q50"].tolist() == [4.5]


def test_array_stats_bool_is_zero_one() -> None:
    values = np.array([[True, False], [True, True], [False, False], [True, False]])
    stats = array_stats(values)
    np.testing.assert_allclose(stats["mean"], [0.75, 0.25])
    np.testing.assert_allclose(stats["min"], [0.0, 0.0])
    np.testing.assert_allclose(stats["max"], [1.0, 1.0])
    assert_stats_close(stats, numpy_stats(values.astype(np.float64)))


def test_array_stats_rejects_empty() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        array_stats(np.zeros((0, 3)))


# ---- image stats and sub-sampling ---------------------------------------------------------------------------
def test_image_stats_match_direct_computation() -> None:
    frames = np.random.default_rng(1).integers(0, 256, size=(7, 24, 32, 3), dtype=np.uint8)
    stats = image_stats(frames)
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    expected = {k: v.reshape(3, 1, 1) for k, v in numpy_stats(pixels).items() if k != "count"}
    assert_stats_close(stats, expected, keys=[k for k in STAT_NAMES if k != "count"], rtol=1e-10)
    assert all(stats[k].shape == (3, 1, 1) for k in STAT_NAMES if k != "count")
    assert stats["count"].tolist() == [7]
    assert all(stats[k].min() >= 0.0 and stats[k].max() <= 1.0 for k in STAT_NAMES if k != "count")


def test_image_stats_skewed_histogram_quantiles() -> None:
    """Few distinct levels make quantiles fall between and on ties: the histogram path must match np.quantile."""
    rng = np.random.default_rng(2)
    frames = rng.choice(np.array([0, 3, 200, 255], dtype=np.uint8), p=[0.02, 0.5, 0.46, 0.02], size=(5, 9, 11, 3))
    frames[..., 2] = 17  # a constant channel: std 0, every quantile 17/255
    stats = image_stats(frames)
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    for key, q in QUANTILES.items():
        np.testing.assert_allclose(stats[key].ravel(), np.quantile(pixels, q, axis=0), rtol=1e-12, err_msg=key)
    assert stats["std"][2, 0, 0] == 0.0 and stats["q99"][2, 0, 0] == pytest.approx(17 / 255)


def test_image_stats_channel_first_and_float() -> None:
    frames = np.random.default_rng(3).integers(0, 256, size=(4, 20, 30, 3), dtype=np.uint8)
    hwc = image_stats(frames)
    chw = image_stats(frames.transpose(0, 3, 1, 2))
    as_float = image_stats(frames.astype(np.float32) / 255.0)
    for key in STAT_NAMES:
        np.testing.assert_allclose(chw[key], hwc[key], rtol=1e-12)
        np.testing.assert_allclose(as_float[key], hwc[key], rtol=1e-6)


def test_image_stats_downsample_large_images() -> None:
    assert downsample_stride(96, 128) == 1
    assert downsample_stride(480, 640) == 4
    frames = np.random.default_rng(4).integers(0, 256, size=(2, 480, 640, 3), dtype=np.uint8)
    stats = image_stats(frames)
    pixels = frames[:, ::4, ::4].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(stats["mean"].ravel(), pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["q50"].ravel(), np.quantile(pixels, 0.5, axis=0), rtol=1e-12)


@pytest.mark.parametrize(("num_frames", "expected"), [
    (1, 1), (50, 50), (100, 100), (300, 100), (400, 100), (5000, int(5000**0.75)), (100_000, int(100_000**0.75)),
    (300_000, 10_000), (10_000_000, 10_000),
])
def test_sample_indices_count(num_frames: int, expected: int) -> None:
    indices = sample_indices(num_frames)
    assert len(indices) == expected
    assert indices.dtype == np.int64
    assert indices[0] == 0 and indices[-1] == num_frames - 1
    assert np.all(np.diff(indices) >= 1)  # distinct and increasing


def test_sample_indices_evenly_spaced() -> None:
    gaps = np.diff(sample_indices(5000))
    assert gaps.max() - gaps.min() <= 1
    assert len(sample_indices(0)) == 0


# ---- compute_episode_stats ----------------------------------------------------------------------------------
def test_compute_episode_stats_features() -> None:
    rng = np.random.default_rng(5)
    n, episode_index = 300, 4
    features = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": None},
        "action": {"dtype": "float32", "shape": [6], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [24, 32, 3], "names": ["height", "width", "channels"]},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "language_instruction": {"dtype": "string", "shape": [1], "names": None},
        **DEFAULT_FEATURES,
    }
    frame_index = np.arange(n, dtype=np.int64)
    episode = {
        "observation.state": rng.normal(size=(n, 6)).astype(np.float32),
        "action": rng.normal(size=(n, 6)).astype(np.float32),
        "observation.images.top": rng.integers(0, 256, size=(n, 24, 32, 3), dtype=np.uint8),
        "next.done": frame_index == n - 1,
        "language_instruction": np.array(["pick"] * n),
        "timestamp": (frame_index / 10).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.full(n, episode_index, dtype=np.int64),
        "index": 1000 + frame_index,
        "task_index": np.zeros(n, dtype=np.int64),
    }
    stats = compute_episode_stats(episode, features)
    assert "language_instruction" not in stats
    assert set(stats) == set(features) - {"language_instruction"}
    assert_stats_close(stats["action"], numpy_stats(episode["action"]))
    for key in DEFAULT_FEATURES:
        assert all(stats[key][k].shape == (1,) for k in STAT_NAMES), key
        assert_stats_close(stats[key], numpy_stats(episode[key][:, None]))
    assert stats["episode_index"]["mean"].tolist() == [episode_index]
    assert stats["index"]["min"].tolist() == [1000] and stats["index"]["max"].tolist() == [1000 + n - 1]
    assert stats["next.done"]["mean"] == pytest.approx(1 / n)
    camera = stats["observation.images.top"]
    assert camera["count"].tolist() == [100]  # 300 frames -> 100 sampled
    sampled = episode["observation.images.top"][sample_indices(n)].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(camera["mean"].ravel(), sampled.mean(0), rtol=1e-12)


def test_compute_episode_stats_presampled_camera_is_kept() -> None:
    frames = np.random.default_rng(6).integers(0, 256, size=(100, 8, 8, 3), dtype=np.uint8)
    stats = compute_episode_stats({"cam": frames}, {"cam": {"dtype": "image", "shape": [8, 8, 3]}})
    assert stats["cam"]["count"].tolist() == [100]


# ---- aggregation --------------------------------------------------------------------------------------------
def random_split(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]])).tolist()


@pytest.mark.parametrize("seed", range(8))
def test_aggregate_of_split_equals_stats_of_concatenation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    total, parts = int(rng.integers(20, 400)), int(rng.integers(2, 10))
    # Episodes with different means and scales: the between-episode term of the pooled variance matters.
    sizes = random_split(rng, total, parts)
    pieces = [rng.normal(rng.normal(0, 5, 3), rng.uniform(0.1, 3), size=(size, 3)) for size in sizes]
    whole = array_stats(np.concatenate(pieces))
    for method in ("weighted", "envelope"):
        aggregated = aggregate_stats([{"x": array_stats(p)} for p in pieces], quantile_method=method)
        assert_stats_close(aggregated["x"], whole, keys=sorted(EXACT), rtol=1e-10)
        assert aggregated["x"]["count"].dtype == np.int64
        assert tuple(aggregated["x"]) == STAT_NAMES


def test_aggregate_images_pool_exactly() -> None:
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, size=(n, 10, 12, 3), dtype=np.uint8) for n in (3, 9, 5)]
    aggregated = aggregate_stats([{"cam": image_stats(f)} for f in frames])["cam"]
    whole = image_stats(np.concatenate(frames))
    assert_stats_close(aggregated, whole, keys=sorted(EXACT), rtol=1e-10)
    assert aggregated["q50"].shape == (3, 1, 1)


@pytest.mark.parametrize("seed", range(4))
def test_weighted_quantiles_within_envelope(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pieces = [rng.normal(rng.normal(0, 3), 1.0, size=(int(rng.integers(5, 200)), 4)) for _ in range(6)]
    episodes = [{"x": array_stats(p)} for p in pieces]
    weighted = aggregate_stats(episodes)["x"]
    envelope = aggregate_stats(episodes, quantile_method="envelope")["x"]
    per_episode = {k: np.stack([e["x"][k] for e in episodes]) for k in QUANTILES}
    for key, q in QUANTILES.items():
        low, high = per_episode[key].min(0), per_episode[key].max(0)
        assert np.all(weighted[key] >= low - 1e-12) and np.all(weighted[key] <= high + 1e-12), key
        np.testing.assert_array_equal(envelope[key], low if q <= 0.5 else high)
        assert np.all(weighted[key] >= weighted["min"]) and np.all(weighted[key] <= weighted["max"])


def test_weighted_quantiles_are_count_weighted() -> None:
    a = {"x": {**array_stats(np.zeros((30, 1))), "q50": np.array([1.0])}}
    b = {"x": {**array_stats(np.zeros((10, 1))), "q50": np.array([5.0])}}
    assert aggregate_stats([a, b])["x"]["q50"].tolist() == [2.0]
    assert aggregate_stats([a, b], quantile_method="envelope")["x"]["q50"].tolist() == [1.0]


def test_aggregate_features_and_errors() -> None:
    one = {"a": array_stats(np.ones((3, 2))), "b": array_stats(np.zeros((3, 1)))}
    two = {"a": array_stats(np.full((5, 2), 3.0))}
    aggregated = aggregate_stats([one, two])
    assert aggregated["b"]["count"].tolist() == [3] and aggregated["a"]["count"].tolist() == [8]
    np.testing.assert_allclose(aggregated["a"]["mean"], [2.25, 2.25])
    assert aggregate_stats([]) == {}
    without_quantiles = {"a": {k: v for k, v in one["a"].items() if k not in QUANTILES}}
    assert set(aggregate_stats([without_quantiles, two])["a"]) == EXACT
    with pytest.raises(ValueError, match="quantile_method"):
        aggregate_stats([one], quantile_method="median")


# ---- serialization ------------------------------------------------------------------------------------------
def sample_stats() -> dict:
    rng = np.random.default_rng(8)
    return {
        "observation.state": array_stats(rng.normal(size=(20, 4)).astype(np.float32)),
        "observation.images.top": image_stats(rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)),
        "frame_index": array_stats(np.arange(20)),
    }


def assert_same_stats(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].keys() == expected[key].keys()
        for name, value in expected[key].items():
            np.testing.assert_array_equal(actual[key][name], value)
            assert actual[key][name].shape == value.shape
            assert actual[key][name].dtype == (np.int64 if name == "count" else np.float64)


def test_json_round_trip() -> None:
    stats = sample_stats()
    data = json.loads(json.dumps(stats_to_json(stats)))
    assert data["observation.images.top"]["mean"] == stats["observation.images.top"]["mean"].tolist()
    assert data["frame_index"]["count"] == [20]
    back = stats_from_json(data)
    assert_same_stats(back, stats)
    assert stats_to_json(back) == data


def test_stats_from_json_scalars_become_1d() -> None:
    back = stats_from_json({"x": {"mean": 1.5, "count": 4}})
    assert back["x"]["mean"].shape == (1,) and back["x"]["count"].tolist() == [4]


def test_flatten_round_trip_through_parquet_rows() -> None:
    stats = sample_stats()
    flat = flatten_stats(stats)
    assert "observation.images.top/q99" in flat and "frame_index/count" in flat
    assert all(isinstance(v, list) for v in flat.values())
    assert_same_stats(unflatten_stats(flat), stats)
    # As the episodes parquet stores and returns them (one row, "stats/" prefix added by the caller).
    row = pa.Table.from_pylist([{f"stats/{k}": v for k, v in flat.items()}]).to_pylist()[0]
    assert_same_stats(unflatten_stats({k[len("stats/"):]: v for k, v in row.items()}), stats)


def test_unflatten_accepts_pandas_style_arrays() -> None:
    stats = sample_stats()
    flat = flatten_stats(stats)
    # pandas turns nested list columns into object arrays of arrays.
    as_objects = {}
    for key, value in flat.items():
        array = np.empty(len(value), dtype=object)
        array[:] = [np.asarray(v) for v in value]
        as_objects[key] = array
    assert_same_stats(unflatten_stats(as_objects), stats)
    with pytest.raises(ValueError, match="feature>/<stat"):
        unflatten_stats({"nostat": [1.0]})
