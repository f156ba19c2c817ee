"""Camera augmentations (`--dataset.image_transforms`), batched on the training device.

LeRobot applies torchvision transforms to each sample in its loader workers. robotrain applies the same transforms,
with the same config names and defaults, to whole batches once they are on the training device as float in [0, 1]:
the workers only decode, and one call per transform augments every sample that drew it.

Semantics (LeRobot's `ImageTransforms` and `RandomSubsetApply`), per sample and per camera:
  1. pick min(#enabled, max_num_transforms) of the enabled transforms (weight > 0), without replacement, with
     probability proportional to weight;
  2. apply them in the order listed in the config, or in the order drawn when random_order=true;
  3. each transform draws its factor uniformly in its range (a ColorJitter with several factors applies them in a
     random order, as torchvision's does).
Every time step of one sample's observation (B, T, C, H, W) gets the same draw. LeRobot does the same: it calls the
transform once on the stacked (T, C, H, W) frames of a camera, so stacked frames stay consistent with each other.

    batch[cam] (B, T, C, H, W)
      -> schedule: subsets, orders, factors for B samples   (CPU generator owned here, a few numbers per sample)
      -> for each step: gather the samples that take it -> op on (n*T, C, H, W) -> scatter back

Random numbers come from a CPU torch.Generator the augmenter owns (`state_dict()` goes into checkpoints), never from
the global RNG: a resumed run draws the same augmentations as an uninterrupted one, on any device, and the host knows
which samples each step takes without waiting for the device.

Definitions, as torchvision.transforms.v2 has them (written here: torchvision does not import on these machines):
  brightness f: x*f;  contrast f: f*x + (1-f)*mean(gray(x));  saturation f: f*x + (1-f)*gray(x), each clamped to
  [0, 1], gray = 0.2989 R + 0.587 G + 0.114 B;  hue h: the HSV hue turned by h (in turns), saturation and value kept;
  sharpness f: f*x + (1-f)*smooth(x) inside a one-pixel border, which is kept (smooth: 3x3 kernel [[1,1,1],[1,5,1],
  [1,1,1]]/13);  affine: x_out = R(angle) Sh(shear) scale (x_in - c) + c + t about the image center c, angle in
  degrees clockwise on screen, t whole pixels drawn within a fraction of width/height, nearest sampling, fill 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from robotrain.errors import ConfigError, UserError, did_you_mean

if TYPE_CHECKING:
    from robotrain.configs.default import ImageTransformConfig, ImageTransformsConfig

FIELD = "dataset.image_transforms"
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's luma weights (ITU-R 601-2)
INTERPOLATIONS = ("nearest", "bilinear")
# Mixed into the seed: the model's own stream (set_seed) starts from the same --seed and must not repeat these draws.
_STREAM_TAG = 0x1A6E


# ---- adjustments: (N, C, H, W) float in [0, 1], one factor per image (N,) or a number ---------------------------
def _per_image(value: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """A factor per image as (N, 1, 1, 1) on the images' device and dtype, to broadcast over (C, H, W)."""
    return torch.as_tensor(value).to(images.device, images.dtype, non_blocking=True).reshape(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    f = _per_image(factor, images)
    return (images * f + other * (1 - f)).clamp_(0, 1)


def _check_channels(images: torch.Tensor) -> None:
    if images.shape[-3] not in (1, 3):
        raise ValueError(f"color adjustments need 1 or 3 channels, got images of shape {tuple(images.shape)}")


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of RGB images (N, 3, H, W); single-channel images are their own."""
    _check_channels(images)
    if images.shape[-3] == 1:
        return images
    r, g, b = images.unbind(dim=-3)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(-3)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Every pixel times `factor`, clamped to [0, 1]."""
    return (images * _per_image(factor, images)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the image's mean gray level: 0 gives a flat gray image, 1 the image, above 1 more contrast."""
    mean = to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)  # (N, 1, 1, 1)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the grayscale image: 0 gives gray, 1 the image; single-channel images are returned unchanged."""
    if images.shape[-3] == 1:
        return images
    return _blend(images, to_grayscale(images), factor)


def _hue_sixths(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hue in sixths of a turn, chroma, value), each (N, H, W), of RGB images; the hue of gray pixels is arbitrary."""
    value = images.amax(dim=-3)  # amax/amin: reductions without indices run several times faster on CPUs
    chroma = value - images.amin(dim=-3)
    r, g, b = images.unbind(dim=-3)
    # From the largest channel (on ties every formula gives the same hue); gray pixels divide 0 by 1.
    sector = torch.where(r == value, g - b, torch.where(g == value, b - r + 2 * chroma, r - g + 4 * chroma))
    return sector / torch.where(chroma > 0, chroma, torch.ones_like(chroma)), chroma, value


def _from_hue_sixths(sixths: torch.Tensor, chroma: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """RGB (N, 3, H, W) from hue in sixths, chroma and value (N, H, W)."""
    # Channel n (R: 5, G: 3, B: 1) is value minus chroma times its distance to its own hue sector, clamped to [0, 1].
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=sixths.dtype, device=sixths.device).view(1, 3, 1, 1)
    k = (sixths.unsqueeze(-3) + offsets).remainder_(6)  # (N, 3, H, W)
    falloff = torch.minimum(k, 4 - k).clamp_(0, 1)
    return (value.unsqueeze(-3) - chroma.unsqueeze(-3) * falloff).clamp_(0, 1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] to HSV, hue in turns [0, 1) (0 for gray pixels)."""
    sixths, chroma, value = _hue_sixths(images)
    hue = torch.where(chroma > 0, (sixths / 6).remainder(1), torch.zeros_like(sixths))
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    return torch.stack((hue, saturation, value), dim=-3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV (hue in turns) to RGB."""
    hue, saturation, value = hsv.unbind(dim=-3)
    return _from_hue_sixths(hue * 6, value * saturation, value)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    """Turn the hue by `shift` (in turns, within [-0.5, 0.5]), saturation and value kept; gray images unchanged."""
    if images.shape[-3] == 1:
        return images
    _check_channels(images)
    # The HSV round trip without forming S: chroma = value * saturation is all the way back needs.
    sixths, chroma, value = _hue_sixths(images)
    return _from_hue_sixths(sixths + 6 * _per_image(shift, images)[:, 0], chroma, value)


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with a smoothed copy (0: smooth, 1: unchanged, 2: sharper) inside a one-pixel border, which is kept as
    is; images smaller than 3x3 are returned unchanged (torchvision's definition)."""
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images
    interior = images[..., 1:-1, 1:-1]
    # The kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 as (3x3 window sum + 4 * center) / 13, the window sum from shifted
    # slices (rows, then columns): on CPUs several times faster than a depthwise conv2d or avg_pool2d.
    rows = images[..., :-2] + images[..., 1:-1] + images[..., 2:]  # (N, C, H, W-2)
    window = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # (N, C, H-2, W-2): no padding
    smooth = (window + interior * 4) / 13
    out = images.clone()
    out[..., 1:-1, 1:-1] = _blend(interior, smooth, factor)
    return out


def affine_theta(angle: torch.Tensor, translate: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor,
                 height: int, width: int) -> torch.Tensor:
    """(N, 2, 3) maps from output to input in grid_sample's normalized coordinates (align_corners=False), for the
    forward map x_out = M (x_in - c) + c + t in pixels: M = scale * rotation(angle) * shear, as torchvision builds it.

    angle (N,) and shear (N, 2) in degrees, translate (N, 2) in pixels (x right, y down), scale (N,).
    """
    rot, sx, sy = (torch.deg2rad(v.double()) for v in (angle, shear[:, 0], shear[:, 1]))
    # torchvision's rotation-with-shear matrix [[a, b], [c, d]] has determinant 1: its inverse is [[d, -b], [-c, a]].
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    inverse = torch.stack((d, -b, -c, a), dim=1).view(-1, 2, 2) / scale.double().view(-1, 1, 1)  # (N, 2, 2)
    offset = -(inverse @ translate.double().unsqueeze(-1)).squeeze(-1)  # (N, 2): x_in = inverse (x_out - t)
    # Centered pixels -> normalized: x = x_n * W/2, y = y_n * H/2, so entry (i, j) is scaled by half_j / half_i.
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1)
    return torch.cat((linear, (offset / half).unsqueeze(-1)), dim=-1)


def affine(images: torch.Tensor, angle: torch.Tensor, translate: torch.Tensor, scale: torch.Tensor | None = None,
           shear: torch.Tensor | None = None, interpolation: str = "nearest",
           fill: tuple[float, ...] = (0.0,)) -> torch.Tensor:
    """Rotate (degrees, clockwise on screen) about the center, scale, shear and translate (pixels) each image;
    pixels from outside the image take `fill` (one value, or one per channel)."""
    n, c, h, w = images.shape
    scale = torch.ones(n, dtype=torch.float64) if scale is None else scale
    shear = torch.zeros(n, 2, dtype=torch.float64) if shear is None else shear
    theta = affine_theta(angle, translate, scale, shear, h, w).to(images.device, images.dtype, non_blocking=True)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)  # (N, H, W, 2)
    out = F.grid_sample(images, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if any(fill):
        if len(fill) not in (1, c):
            raise ValueError(f"affine fill has {len(fill)} values for images with {c} channels")
        inside = F.grid_sample(torch.ones_like(images[:, :1]), grid, mode=interpolation, padding_mode="zeros",
                               align_corners=False)  # (N, 1, H, W): 1 where the source pixel exists
        fill_values = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        out = out * inside + (1 - inside) * fill_values
    return out


ADJUSTMENTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
    "hue": adjust_hue, "sharpness": adjust_sharpness,
}
COLOR_KINDS = ("brightness", "contrast", "saturation", "hue")


# ---- ops: one adjustment with the range its parameters are drawn from ------------------------------------------
class Op(Protocol):
    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Parameters (n, k) for n samples, on the CPU."""

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) with their parameters (N, k)."""


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


@dataclass(frozen=True)
class FactorOp:
    """One factor drawn uniformly in [low, high]: brightness, contrast, saturation, hue or sharpness."""

    kind: str
    low: float
    high: float

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        return _uniform(n, self.low, self.high, generator).unsqueeze(1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return ADJUSTMENTS[self.kind](images, params[:, 0])


@dataclass(frozen=True)
class AffineOp:
    """torchvision's RandomAffine: ranges for the angle, the translation (fractions), scale and shear (x, x, y, y)."""

    degrees: tuple[float, float]
    translate: tuple[float, float] | None = None
    scale: tuple[float, float] | None = None
    shear: tuple[float, float, float, float] | None = None
    interpolation: str = "nearest"
    fill: tuple[float, ...] = (0.0,)

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 6): angle, tx, ty (whole pixels, as torchvision rounds them), scale, shear x, shear y."""
        zeros = torch.zeros(n, dtype=torch.float64)
        angle = _uniform(n, *self.degrees, generator)
        tx = ty = zeros
        if self.translate is not None:
            max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
            tx = _uniform(n, -max_dx, max_dx, generator).round()
            ty = _uniform(n, -max_dy, max_dy, generator).round()
        scale = _uniform(n, *self.scale, generator) if self.scale is not None else torch.ones(n, dtype=torch.float64)
        shear_x = _uniform(n, *self.shear[:2], generator) if self.shear is not None else zeros
        shear_y = _uniform(n, *self.shear[2:], generator) if self.shear is not None else zeros
        return torch.stack((angle, tx, ty, scale, shear_x, shear_y), dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return affine(images, params[:, 0], params[:, 1:3], params[:, 3], params[:, 4:6], self.interpolation,
                      self.fill)


@dataclass(frozen=True)
class Transform:
    """One configured transform: its name in the config and its ops (several ops apply in random order)."""

    name: str
    type: str
    ops: tuple[Op, ...]


# ---- config -> transforms ----------------------------------------------------------------------------------------
KWARGS = {
    "Identity": (),
    "ColorJitter": COLOR_KINDS,
    "SharpnessJitter": ("sharpness",),
    "RandomAffine": ("degrees", "translate", "scale", "shear", "interpolation", "fill"),
}
EXAMPLES = {
    "Identity": "{}",
    "ColorJitter": "{brightness: [0.8, 1.2]}",
    "SharpnessJitter": "{sharpness: [0.5, 1.5]}",
    "RandomAffine": "{degrees: [-5, 5], translate: [0.05, 0.05]}",
}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


def _numbers(value: Any, what: str, lengths: tuple[int, ...] = (2,)) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        counts = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{what} must be a list of {counts} numbers, got {value!r}")
    return tuple(_number(v, what) for v in value)


def _jitter_range(value: Any, what: str, center: float, bound: tuple[float, float],
                  clip_at_zero: bool = True) -> tuple[float, float] | None:
    """torchvision's convention: a number v means [center - v, center + v], a pair is the range itself; None when
    the range is the center alone (nothing to do)."""
    if isinstance(value, (list, tuple)):
        low, high = _numbers(value, what)
    else:
        v = _number(value, what)
        if v < 0:
            raise ValueError(f"{what} given as one number must be non-negative, got {v}")
        low, high = center - v, center + v
        if clip_at_zero:
            low = max(low, 0.0)
    if not bound[0] <= low <= high <= bound[1]:
        lower, upper = ([f"{b:g}"] if math.isfinite(b) else [] for b in bound)
        rule = [*lower, "low", "high", *upper]
        raise ValueError(f"{what} range [{low:g}, {high:g}] must satisfy {' <= '.join(rule)}")
    return None if low == high == center else (low, high)


def _parse_color_jitter(kwargs: dict[str, Any]) -> list[Op]:
    ops: list[Op] = []
    for kind in COLOR_KINDS:
        if kwargs.get(kind) is None:
            continue
        center, bound = (0.0, (-0.5, 0.5)) if kind == "hue" else (1.0, (0.0, math.inf))
        span = _jitter_range(kwargs[kind], kind, center, bound, clip_at_zero=kind != "hue")
        if span is not None:
            ops.append(FactorOp(kind, *span))
    return ops


def _parse_sharpness(kwargs: dict[str, Any]) -> list[Op]:
    if kwargs.get("sharpness") is None:
        raise ValueError("sharpness is required, e.g. [0.5, 1.5]")
    span = _jitter_range(kwargs["sharpness"], "sharpness", 1.0, (0.0, math.inf))
    return [FactorOp("sharpness", *span)] if span is not None else []


def _parse_affine(kwargs: dict[str, Any]) -> list[Op]:
    if kwargs.get("degrees") is None:
        raise ValueError("degrees is required, e.g. [-5, 5] (0 for no rotation)")
    degrees = _jitter_range(kwargs["degrees"], "degrees", 0.0, (-math.inf, math.inf), clip_at_zero=False)
    translate = scale = shear = None
    if kwargs.get("translate") is not None:
        translate = _numbers(kwargs["translate"], "translate")
        if not all(0 <= t <= 1 for t in translate):
            raise ValueError(f"translate fractions must lie in [0, 1], got {list(translate)}")
    if kwargs.get("scale") is not None:
        scale = _numbers(kwargs["scale"], "scale")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {list(scale)}")
    if kwargs.get("shear") is not None:
        value = kwargs["shear"]
        if isinstance(value, (list, tuple)):
            shear = _numbers(value, "shear", (2, 4))
        else:
            shear = _jitter_range(value, "shear", 0.0, (-math.inf, math.inf), clip_at_zero=False) or (0.0, 0.0)
        shear = (*shear, 0.0, 0.0)[:4]
    interpolation = str(kwargs.get("interpolation", "nearest")).lower().removeprefix("interpolationmode.")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {kwargs['interpolation']!r}")
    fill = kwargs.get("fill", 0)
    fill = _numbers(fill, "fill", (1, 3)) if isinstance(fill, (list, tuple)) else (_number(fill, "fill"),)
    if not all(0 <= v <= 1 for v in fill):
        raise ValueError(f"fill must lie in [0, 1] (frames are float in [0, 1]), got {list(fill)}")
    return [AffineOp(degrees or (0.0, 0.0), translate, scale, shear, interpolation, fill)]


PARSERS: dict[str, Callable[[dict[str, Any]], list[Op]]] = {
    "Identity": lambda kwargs: [],
    "ColorJitter": _parse_color_jitter,
    "SharpnessJitter": _parse_sharpness,
    "RandomAffine": _parse_affine,
}


def make_transform(name: str, cfg: ImageTransformConfig, field: str) -> Transform:
    """The transform a config entry describes, or a ConfigError naming `<field>.type` or `<field>.kwargs`."""
    parse = PARSERS.get(cfg.type)
    if parse is None:
        close = did_you_mean(str(cfg.type), PARSERS)
        raise ConfigError(f"{field}.type", cfg.type,
                          f"is not a transform robotrain supports (supported: {', '.join(PARSERS)})",
                          f"use {close if close else 'a supported type'}, or disable this transform with "
                          f"--{field}.weight=0")
    kwargs = dict(cfg.kwargs or {})
    unknown = [key for key in kwargs if key not in KWARGS[cfg.type]]
    if unknown:
        close = did_you_mean(unknown[0], KWARGS[cfg.type])
        takes = ", ".join(KWARGS[cfg.type]) or "nothing"
        raise ConfigError(f"{field}.kwargs", kwargs, f"{cfg.type} takes no argument '{unknown[0]}' (it takes {takes})",
                          f"use {close} instead" if close else f"e.g. --{field}.kwargs='{EXAMPLES[cfg.type]}'")
    try:
        ops = parse(kwargs)
    except ValueError as exc:
        raise ConfigError(f"{field}.kwargs", kwargs, f"{cfg.type}: {exc}",
                          f"e.g. --{field}.kwargs='{EXAMPLES[cfg.type]}'") from None
    return Transform(name, cfg.type, tuple(ops))


def check_transforms(config: ImageTransformsConfig, field: str = FIELD) -> list[Transform]:
    """The enabled transforms (weight > 0) of `config`, in the order listed; a ConfigError on the first bad one."""
    if config.max_num_transforms < 1:
        raise ConfigError(f"{field}.max_num_transforms", config.max_num_transforms, "must be at least 1",
                          "pick how many transforms apply per sample, e.g. 3, or set enable=false")
    return [make_transform(name, tf, f"{field}.tfs.{name}") for name, tf in config.tfs.items() if tf.weight > 0]


# ---- the augmenter -------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One batched call: `op` of transform `name` on the samples `indices` (CPU) with their `params` (n, k)."""

    name: str
    op: Op
    indices: torch.Tensor
    params: torch.Tensor


def stream_seed(seed: int, rank: int = 0) -> int:
    """The augmentation stream's seed for (--seed, process rank): its own, apart from the model's and other ranks'."""
    return int(np.random.SeedSequence([seed % 2**64, rank, _STREAM_TAG]).generate_state(1, dtype=np.uint64)[0])


class BatchAugmenter:
    """LeRobot's image transforms on whole batches: per sample and camera a weighted random subset of the enabled
    transforms, drawn from a generator this object owns; `state_dict()` belongs in checkpoints for exact resume.

    seed: --seed (None draws a fresh one); rank: the process's rank, so that each rank augments differently.
    """

    def __init__(self, config: ImageTransformsConfig, seed: int | None = None, rank: int = 0):
        self.transforms = check_transforms(config)
        self.weights = torch.tensor([config.tfs[tf.name].weight for tf in self.transforms], dtype=torch.float64)
        self.num_picked = min(len(self.transforms), config.max_num_transforms)
        self.random_order = config.random_order
        # On the CPU whatever the training device: the stream is the same on every device, its state is a small
        # CPU tensor, and the host knows which samples each step takes without a device sync.
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(stream_seed(seed, rank))
        self._color_transforms = [tf.name for tf in self.transforms
                                  if any(getattr(op, "kind", None) in COLOR_KINDS for op in tf.ops)]

    def __call__(self, batch: dict[str, Any], camera_keys: list[str]) -> dict[str, Any]:
        """A new batch whose cameras (those of `camera_keys` it holds, in that order) are augmented; the rest as is."""
        out = dict(batch)
        for key in camera_keys:
            if key in out:
                out[key] = self.augment(out[key], key)
        return out

    def augment(self, frames: torch.Tensor, key: str = "frames") -> torch.Tensor:
        """One camera's frames (B, C, H, W) or (B, T, C, H, W), float in [0, 1], augmented per sample; every time
        step of a sample gets the same draw. Returns a new tensor of the same shape, dtype and device."""
        if not frames.is_floating_point():
            raise TypeError(f"{key}: augmentations take float frames in [0, 1], got {frames.dtype} "
                            "(augment after batch_to_device)")
        if frames.dim() not in (4, 5):
            raise ValueError(f"{key}: expected a batch (B, C, H, W) or (B, T, C, H, W), got {tuple(frames.shape)}")
        video = frames if frames.dim() == 5 else frames.unsqueeze(1)  # (B, T, C, H, W)
        b, t, c, h, w = video.shape
        if c not in (1, 3) and self._color_transforms:
            names = ", ".join(self._color_transforms)
            raise UserError(f"camera {key} has {c} channels, and color transforms ({names}) need 1 or 3. Fix: "
                            f"disable them, e.g. --{FIELD}.tfs.{self._color_transforms[0]}.weight=0")
        steps = self.schedule(b, h, w)
        # Half precision would round the color-space conversions visibly: work in float32 then.
        work = video.float() if video.dtype in (torch.float16, torch.bfloat16) else video.clone()
        for step in steps:
            params = step.params.repeat_interleave(t, dim=0)  # (n, k) -> (n*T, k): one draw for all time steps
            if len(step.indices) == b:  # every sample: no gather
                work = step.op.apply(work.flatten(0, 1), params).reshape(b, t, c, h, w)
                continue
            index = step.indices.to(frames.device, non_blocking=True)
            taken = work.index_select(0, index).flatten(0, 1)  # (n*T, C, H, W)
            work.index_copy_(0, index, step.op.apply(taken, params).reshape(-1, t, c, h, w))
        return work.to(frames.dtype).reshape(frames.shape)

    def schedule(self, batch_size: int, height: int, width: int) -> list[Step]:
        """The steps that augment one camera's batch, in the order they apply, drawn from the generator: which
        samples take which transform, in which order, with which factors. Draws the same amount of random numbers
        whatever is picked, so the stream's position depends only on the number of batches and their size."""
        if not self.transforms:
            return []
        g = self.generator
        # (B, k): each sample's transforms, weighted, without replacement, in the order drawn (LeRobot's multinomial).
        picked = torch.multinomial(self.weights.expand(batch_size, -1), self.num_picked, replacement=False,
                                   generator=g)
        params = [[op.sample(batch_size, height, width, g) for op in tf.ops] for tf in self.transforms]
        # (B, m): the order of a transform's own ops per sample (ColorJitter shuffles its factors, as torchvision's).
        orders = [torch.rand(batch_size, len(tf.ops), generator=g).argsort(dim=1) if len(tf.ops) > 1
                  else torch.zeros(batch_size, 1, dtype=torch.long) for tf in self.transforms]
        if self.random_order:  # stage = (slot, transform): sample s meets its k-th draw in the k-th slot
            stages = [(j, picked[:, slot] == j) for slot in range(self.num_picked)
                      for j in range(len(self.transforms))]
        else:  # listed order: one stage per transform, every sample meets its picks in the listed sequence
            stages = [(j, (picked == j).any(dim=1)) for j in range(len(self.transforms))]
        steps = []
        for j, takes in stages:
            transform = self.transforms[j]
            for position in range(len(transform.ops)):
                for u, op in enumerate(transform.ops):
                    indices = (takes & (orders[j][:, position] == u)).nonzero().flatten()
                    if len(indices):
                        steps.append(Step(transform.name, op, indices, params[j][u][indices]))
        return steps

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's state: a uint8 tensor, ready for a safetensors file."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the stream `state_dict()` captured."""
        value = state.get("generator")
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise ValueError("an augmenter state needs a 'generator' uint8 tensor (from BatchAugmenter.state_dict())")
        self.generator.set_state(value.cpu())


def make_augmenter(config: ImageTransformsConfig, seed: int | None = None, rank: int = 0) -> BatchAugmenter | None:
    """The training augmenter of --dataset.image_transforms, or None when it is not enabled."""
    return BatchAugmenter(config, seed, rank) if config.enable else None
