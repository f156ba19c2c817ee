"""Strict checks of what a recorder gives the writer: feature specs at create(), each frame at add_frame()."""

from __future__ import annotations

from typing import Any

import numpy as np

from robotrain.datasets.format import DEFAULT_FEATURES, DatasetError, is_camera

CAMERA_DTYPES = ("image", "video")
TEXT_DTYPES = ("string", "language")


def validate_features(features: dict[str, dict[str, Any]], use_videos: bool) -> dict[str, dict[str, Any]]:
    """Checked copies of the user's feature specs; cameras become `video` or `image` as use_videos asks."""
    if not isinstance(features, dict) or not features:
        raise DatasetError("features must be a non-empty dict {name: {'dtype': ..., 'shape': [...]}}")
    checked: dict[str, dict[str, Any]] = {}
    for key, spec in features.items():
        if key in DEFAULT_FEATURES:
            continue  # the writer fills these itself
        if "/" in key:
            raise DatasetError(f"feature name '{key}' contains '/', which the format forbids. Fix: use '.' instead")
        if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
            raise DatasetError(f"feature '{key}' needs 'dtype' and 'shape', got {spec!r}")
        dtype = spec["dtype"]
        shape = [int(s) for s in (spec["shape"] if isinstance(spec["shape"], (list, tuple)) else [spec["shape"]])]
        if not shape or min(shape) < 1:
            raise DatasetError(f"feature '{key}' has shape {spec['shape']}; every dimension must be >= 1")
        if dtype in CAMERA_DTYPES:
            if len(shape) != 3 or shape[2] != 3:
                raise DatasetError(f"camera '{key}' has shape {shape}; cameras are [height, width, 3]")
            dtype = "video" if use_videos else "image"
        elif dtype not in TEXT_DTYPES:
            try:
                np.dtype(dtype)
            except TypeError:
                raise DatasetError(f"feature '{key}' has dtype '{dtype}', which is neither a numpy dtype nor one "
                                   "of image, video, string") from None
        names = spec.get("names")
        if dtype in ("image", "video") and names is None:
            names = ["height", "width", "channels"]
        checked[key] = {"dtype": dtype, "shape": shape, "names": names}
    return checked


def validate_frame(frame: dict[str, Any], features: dict[str, dict[str, Any]], position: int,
                   allow_nan: bool = False) -> dict[str, Any]:
    """One frame as numpy values of the declared dtypes and shapes (cameras as HWC uint8), plus its task.

    NaN and infinite numbers are refused unless `allow_nan`: they make the dataset's statistics NaN, and a policy
    trained on them diverges far from where the bad frame is.
    """
    where = f"add_frame (frame {position} of this episode)"
    if not isinstance(frame, dict):
        raise DatasetError(f"{where}: a frame is a dict of feature values, got {type(frame).__name__}")
    task = frame.get("task")
    if not isinstance(task, str) or not task:
        raise DatasetError(f"{where}: 'task' must be a non-empty string describing the episode's task")
    given = set(frame) - {"task"}
    missing, extra = sorted(set(features) - given), sorted(given - set(features) - set(DEFAULT_FEATURES))
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise DatasetError(f"{where}: {'; '.join(parts)} (the features given to create() are {sorted(features)})")
    checked: dict[str, Any] = {"task": task}
    for key, feature in features.items():
        checked[key] = _check_value(frame[key], key, feature, where)
        if not allow_nan and isinstance(checked[key], np.ndarray) and checked[key].dtype.kind == "f" \
                and not np.isfinite(checked[key]).all():
            bad = "NaN" if np.isnan(checked[key]).any() else "an infinite value"
            raise DatasetError(f"{where}: '{key}' holds {bad} ({checked[key].tolist()}). Fix: record finite values, "
                               "or pass allow_nan=True (record-sim: --allow_nan=true) to keep them")
    return checked


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "convert") and hasattr(value, "size"):  # PIL.Image
        value = np.asarray(value.convert("RGB"))
    return np.asarray(value)


def _check_value(value: Any, key: str, feature: dict[str, Any], where: str) -> Any:
    dtype, shape = feature["dtype"], tuple(feature["shape"])
    if dtype in TEXT_DTYPES:
        if not isinstance(value, str):
            raise DatasetError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
        return value
    array = _as_numpy(value)
    if is_camera(feature):
        return _check_camera(array, key, shape, where)
    if array.shape == () and shape == (1,):
        array = array.reshape(1)
    if array.shape != shape:
        raise DatasetError(f"{where}: '{key}' has shape {array.shape}, expected {shape}")
    target = np.dtype(dtype)
    if not np.can_cast(array.dtype, target, casting="same_kind"):
        raise DatasetError(f"{where}: '{key}' has dtype {array.dtype}, which cannot become {dtype} without losing "
                           f"meaning. Fix: pass {dtype} values")
    return array.astype(target)


def _check_camera(array: np.ndarray, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """HWC or CHW, uint8 or float in [0, 1] -> HWC uint8."""
    height, width, channels = shape
    if array.shape == (channels, height, width) and array.shape != shape:
        array = array.transpose(1, 2, 0)
    if array.shape != shape:
        raise DatasetError(f"{where}: camera '{key}' has shape {array.shape}, expected {list(shape)} (HWC) or "
                           f"{[channels, height, width]} (CHW)")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DatasetError(f"{where}: camera '{key}' holds NaN or infinite pixels. Fix: pass uint8 0-255, or "
                               "finite floats in [0, 1]")
        if array.min() < 0 or array.max() > 1:
            raise DatasetError(f"{where}: camera '{key}' holds floats outside [0, 1]. Fix: pass uint8 0-255, or "
                               "floats scaled to [0, 1]")
        return np.ascontiguousarray((array * 255).round().astype(np.uint8))
    raise DatasetError(f"{where}: camera '{key}' has dtype {array.dtype}; use uint8 or float in [0, 1]")
