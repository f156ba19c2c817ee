"""Batched camera augmentations: each transform against its definition, LeRobot's subset sampling, and the
properties training relies on (same draw across time steps, determinism, exact resume, range, dtype, device)."""

from __future__ import annotations

import colorsys
import itertools
import math
import shlex

import pytest
import torch
from safetensors.torch import load, save

from robotrain.configs.default import ImageTransformConfig, ImageTransformsConfig
from robotrain.datasets.transforms import (
    BatchAugmenter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    adjust_sharpness,
    affine,
    hsv_to_rgb,
    make_augmenter,
    rgb_to_hsv,
)
from robotrain.errors import ConfigError, UserError

GRAY = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
CAMS = ["observation.images.top", "observation.images.wrist"]


def config(tfs: dict[str, tuple[float, str, dict]], **options) -> ImageTransformsConfig:
    return ImageTransformsConfig(enable=True, tfs={name: ImageTransformConfig(*tf) for name, tf in tfs.items()},
                                 **options)


def only(name: str, seed: int = 0) -> BatchAugmenter:
    """An augmenter applying the default transform `name` (LeRobot's kwargs) to every sample."""
    cfg = ImageTransformsConfig(enable=True, max_num_transforms=1)
    for other, tf in cfg.tfs.items():
        tf.weight = 1.0 if other == name else 0.0
    return BatchAugmenter(cfg, seed=seed)


def assert_uniform(values: torch.Tensor, low: float, high: float) -> None:
    """Values look drawn uniformly in [low, high]: bounds, mean, spread and quartiles (tolerances >= 4 sigma)."""
    values, n, width = values.double().flatten(), values.numel(), high - low
    assert values.min() >= low - 1e-5 and values.max() <= high + 1e-5
    assert abs(values.mean() - (low + high) / 2) < 5 * width / math.sqrt(12 * n)
    assert values.std() == pytest.approx(width / math.sqrt(12), rel=0.08)
    for q in (0.25, 0.5, 0.75):  # a uniform's distribution function is a straight line
        assert (values < low + q * width).double().mean() == pytest.approx(q, abs=0.04)


def per_sample_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """The one factor per sample with numerator = factor * denominator (least squares), checked constant."""
    num, den = numerator.flatten(1).double(), denominator.flatten(1).double()
    factor = (num * den).sum(1) / (den * den).sum(1)
    assert (num - factor[:, None] * den).abs().max() < 1e-4  # the same factor for every pixel of a sample
    return factor


# ---- each transform against its definition --------------------------------------------------------------------
def test_brightness_scales_every_pixel_then_clamps():
    x = torch.rand(4, 3, 5, 5)
    f = torch.tensor([0.0, 0.5, 1.0, 1.7])
    assert torch.equal(adjust_brightness(x, f), (x * f.view(-1, 1, 1, 1)).clamp(0, 1))
    x = torch.rand(2000, 3, 4, 4) * 0.6 + 0.2  # no clamping with factors <= 1.2
    assert_uniform(per_sample_ratio(only("brightness").augment(x), x), 0.8, 1.2)


def test_contrast_blends_with_the_mean_gray():
    x = torch.rand(2000, 3, 4, 4) * 0.4 + 0.3
    out = only("contrast").augment(x)
    mean_gray = (x * GRAY).sum(1, keepdim=True).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    # f * x + (1 - f) * m keeps the mean gray level and scales each pixel's distance to it by f
    assert torch.allclose((out * GRAY).sum(1).mean(dim=(1, 2)), mean_gray.flatten(), atol=1e-5)
    assert_uniform(per_sample_ratio(out - mean_gray, x - mean_gray), 0.8, 1.2)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # mean gray: the luma 0.2989
    expected = torch.tensor([0.5 + 0.5 * 0.2989, 0.5 * 0.2989, 0.5 * 0.2989]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(adjust_contrast(red, 0.5), expected, atol=1e-6)


def test_saturation_blends_with_the_grayscale_image():
    x = torch.rand(2000, 3, 4, 4) * 0.4 + 0.3
    out = only("saturation").augment(x)
    gray = (x * GRAY).sum(1, keepdim=True)
    assert torch.allclose((out * GRAY).sum(1, keepdim=True), gray, atol=1e-3)  # luma kept (weights sum to 0.9999)
    assert_uniform(per_sample_ratio(out - gray, x - gray), 0.5, 1.5)
    assert torch.allclose(adjust_saturation(x[:4], 0.0), gray[:4].expand(4, 3, 4, 4))


@pytest.mark.parametrize(("color", "shift", "expected"), [
    ((1, 0, 0), 1 / 3, (0, 1, 0)), ((1, 0, 0), -1 / 3, (0, 0, 1)), ((1, 0, 0), 1 / 6, (1, 1, 0)),
    ((0, 1, 0), 1 / 3, (0, 0, 1)), ((0, 0, 1), 0.5, (1, 1, 0)), ((0.5, 0.5, 0.5), 0.25, (0.5, 0.5, 0.5)),
])
def test_hue_turns_pure_colors(color, shift, expected):
    out = adjust_hue(torch.tensor(color, dtype=torch.float32).view(1, 3, 1, 1), shift)
    assert torch.allclose(out.flatten(), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


def test_hue_keeps_saturation_and_value_as_colorsys_defines_them():
    x = torch.rand(3, 3, 4, 4)
    shift = torch.tensor([0.05, -0.3, 0.5])
    out = adjust_hue(x, shift)
    for n, i, j in itertools.product(range(3), range(4), range(4)):
        h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        expected = colorsys.hsv_to_rgb((h + shift[n].item()) % 1, s, v)
        assert out[n, :, i, j].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6)


def test_hue_shift_is_uniform_in_its_range():
    x = torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1).expand(2000, 3, 1, 1)
    out = only("hue").augment(x)
    before = colorsys.rgb_to_hsv(0.9, 0.3, 0.2)
    after = torch.tensor([colorsys.rgb_to_hsv(*pixel) for pixel in out.flatten(1).tolist()], dtype=torch.float64)
    assert torch.allclose(after[:, 1:], torch.tensor(before[1:], dtype=torch.float64), atol=1e-5)  # S, V kept
    assert_uniform((after[:, 0] - before[0] + 0.5) % 1 - 0.5, -0.05, 0.05)


def smooth_by_hand(x: torch.Tensor) -> torch.Tensor:
    """The interior of x filtered with [[1,1,1],[1,5,1],[1,1,1]] / 13, one neighbor at a time."""
    h, w = x.shape[-2:]
    total = 4 * x[..., 1:-1, 1:-1]
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        total = total + x[..., 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]
    return total / 13


def test_sharpness_is_the_blend_formula_and_keeps_the_border():
    x = torch.rand(3, 3, 6, 7)
    f = torch.tensor([0.0, 1.0, 1.8])
    out = adjust_sharpness(x, f)
    expected = (f.view(-1, 1, 1, 1) * x[..., 1:-1, 1:-1] + (1 - f.view(-1, 1, 1, 1)) * smooth_by_hand(x)).clamp(0, 1)
    assert torch.allclose(out[..., 1:-1, 1:-1], expected, atol=1e-6)
    border = torch.ones(6, 7, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(out[..., border], x[..., border])
    assert torch.equal(adjust_sharpness(x[..., :2, :], 3.0), x[..., :2, :])  # too small to filter: unchanged
    x = torch.rand(2000, 3, 5, 5) * 0.4 + 0.3
    smooth = smooth_by_hand(x)
    factor = per_sample_ratio(only("sharpness").augment(x)[..., 1:-1, 1:-1] - smooth, x[..., 1:-1, 1:-1] - smooth)
    assert_uniform(factor, 0.5, 1.5)


def test_affine_translation_shifts_whole_pixels_and_fills_zero():
    x = torch.rand(2, 3, 6, 8) + 0.1  # no zeros inside, so the fill is visible
    out = affine(x, torch.zeros(2), torch.tensor([[2.0, -1.0], [-3.0, 2.0]]))
    assert torch.equal(out[0, :, :5, 2:], x[0, :, 1:, :6])  # right by 2, up by 1
    assert (out[0, :, 5:, :] == 0).all() and (out[0, :, :, :2] == 0).all()
    assert torch.equal(out[1, :, 2:, :5], x[1, :, :4, 3:])  # left by 3, down by 2
    filled = affine(x, torch.zeros(2), torch.tensor([[2.0, 0.0]] * 2), fill=(0.25,))
    assert (filled[:, :, :, :2] == 0.25).all()


@pytest.mark.parametrize("size", [5, 6])
def test_affine_rotation_is_clockwise_about_the_center(size):
    x = torch.rand(1, 3, size, size)
    assert torch.equal(affine(x, torch.tensor([90.0]), torch.zeros(1, 2)), torch.rot90(x, k=-1, dims=(-2, -1)))
    assert torch.equal(affine(x, torch.tensor([180.0]), torch.zeros(1, 2)), x.flip(-1, -2))


def test_affine_matches_the_geometry_on_a_linear_ramp():
    h, w = 20, 24
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    ramp = lambda px, py: 0.5 + 0.01 * px + 0.015 * py  # noqa: E731 (linear: bilinear sampling is exact on it)
    image = ramp(xs, ys).expand(1, 3, h, w).double()
    angle, scale, (tx, ty), shear_x = 17.0, 1.1, (2.0, -1.0), 10.0
    out = affine(image, torch.tensor([angle]), torch.tensor([[tx, ty]]), torch.tensor([scale]),
                 torch.tensor([[shear_x, 0.0]]), interpolation="bilinear")
    # torchvision's forward map: x_out = scale * R(angle) * Shear_x(shear) * x_in + t, R clockwise on screen
    rot, sh = math.radians(angle), math.radians(shear_x)
    rotation = torch.tensor([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]], dtype=torch.float64)
    forward = scale * rotation @ torch.tensor([[1, -math.tan(sh)], [0, 1]], dtype=torch.float64)
    source = torch.linalg.solve(forward, torch.stack((xs - tx, ys - ty)).double().view(2, -1)).view(2, h, w)
    inside = (source[0].abs() < w / 2 - 1) & (source[1].abs() < h / 2 - 1)
    assert inside.sum() > 150
    assert torch.allclose(out[0, :, inside], ramp(source[0], source[1])[inside].expand(3, -1), atol=1e-6)


def test_affine_draws_angles_and_whole_pixel_translations_in_range():
    steps = only("affine").schedule(4000, 40, 40)  # translate 0.05 of 40 pixels: up to 2 pixels each way
    params = torch.cat([step.params for step in steps])
    assert_uniform(params[:, 0], -5.0, 5.0)
    for column in (1, 2):  # round(U(-2, 2)): 0 and +-1 a quarter each, +-2 an eighth each
        counts = torch.stack([(params[:, column] == v).double().mean() for v in (-2, -1, 0, 1, 2)])
        assert torch.allclose(counts, torch.tensor([0.125, 0.25, 0.25, 0.25, 0.125], dtype=torch.float64), atol=0.03)
    x = torch.zeros(64, 3, 41, 41)
    x[:, :, 20, 20] = 1.0  # one lit pixel at the center: rotation keeps it, the translation moves it
    shift_only = config({"t": (1.0, "RandomAffine", {"degrees": 0, "translate": [0.05, 0.05]})})
    out = BatchAugmenter(shift_only, seed=0).augment(x)
    assert (out.flatten(1).sum(1) == 3).all()  # one whole pixel per channel, nothing smeared


# ---- subset sampling, order, time steps, determinism ----------------------------------------------------------
def picks_per_sample(steps, batch_size: int) -> list[list[str]]:
    seen: list[list[str]] = [[] for _ in range(batch_size)]
    for step in steps:
        for i in step.indices.tolist():
            seen[i].append(step.name)
    return seen


def inclusion_probabilities(weights: list[float], k: int) -> list[float]:
    """P(item i among k drawn one by one without replacement, each with probability proportional to weight)."""
    total, p = sum(weights), [0.0] * len(weights)
    for sequence in itertools.permutations(range(len(weights)), k):
        prob, left = 1.0, total
        for i in sequence:
            prob, left = prob * weights[i] / left, left - weights[i]
        for i in sequence:
            p[i] += prob
    return p


@pytest.mark.parametrize("max_num", [1, 2, 3])
def test_subset_frequencies_follow_the_weights(max_num):
    weights = {"a": 1.0, "b": 2.0, "off": 0.0, "c": 3.0, "d": 4.0}
    cfg = config({name: (w, "ColorJitter", {"brightness": 0.1}) for name, w in weights.items()},
                 max_num_transforms=max_num)
    cfg.tfs["off"].type = "NotATransform"  # disabled: never built, never checked
    seen = picks_per_sample(BatchAugmenter(cfg, seed=1).schedule(20000, 4, 4), 20000)
    assert all(len(names) == max_num and len(set(names)) == max_num for names in seen)
    expected = inclusion_probabilities([1.0, 2.0, 3.0, 4.0], max_num)
    for name, p in zip("abcd", expected, strict=True):
        assert sum(name in names for names in seen) / 20000 == pytest.approx(p, abs=0.015)
    assert not any("off" in names for names in seen)


def test_max_num_transforms_above_the_count_applies_every_transform():
    cfg = ImageTransformsConfig(enable=True, max_num_transforms=10)
    seen = picks_per_sample(BatchAugmenter(cfg, seed=0).schedule(50, 8, 8), 50)
    assert all(names == list(cfg.tfs) for names in seen)  # all six, in the listed order


def test_random_order_applies_in_the_order_drawn():
    tfs = {"a": (1.0, "ColorJitter", {"brightness": 0.1}), "b": (3.0, "ColorJitter", {"contrast": 0.1})}
    listed = picks_per_sample(BatchAugmenter(config(tfs, max_num_transforms=2), seed=0).schedule(8000, 4, 4), 8000)
    assert all(names == ["a", "b"] for names in listed)
    random_order = config(tfs, max_num_transforms=2, random_order=True)
    drawn = picks_per_sample(BatchAugmenter(random_order, seed=0).schedule(8000, 4, 4), 8000)
    assert sum(names == ["b", "a"] for names in drawn) / 8000 == pytest.approx(0.75, abs=0.03)  # b drawn first


def test_order_changes_the_result_of_non_commuting_transforms():
    tfs = {"double": (1.0, "ColorJitter", {"brightness": [2, 2]}), "flat": (1.0, "ColorJitter", {"contrast": [0, 0]})}
    x = torch.tensor([0.25, 0.75]).repeat(8).view(1, 1, 4, 4).expand(400, 3, 4, 4)  # mean 0.5
    flat_last = (0.5 + 1.0) / 2 * 0.9999  # mean gray of min(2x, 1); flat first gives min(2 * 0.5 * 0.9999, 1)
    listed = BatchAugmenter(config(tfs, max_num_transforms=2), seed=0).augment(x)
    assert torch.allclose(listed, torch.full_like(listed, flat_last), atol=1e-4)
    drawn = BatchAugmenter(config(tfs, max_num_transforms=2, random_order=True), seed=0).augment(x)[:, 0, 0, 0]
    doubled_last = torch.isclose(drawn, torch.tensor(0.9999), atol=1e-4)
    assert (doubled_last | torch.isclose(drawn, torch.tensor(flat_last), atol=1e-4)).all()
    assert doubled_last.double().mean() == pytest.approx(0.5, abs=0.1)


def test_color_jitter_with_several_factors_shuffles_them_per_sample():
    cfg = config({"jitter": (1.0, "ColorJitter", {"brightness": 0.2, "saturation": [0.5, 1.5], "hue": 0.1})})
    steps = BatchAugmenter(cfg, seed=0).schedule(6000, 4, 4)
    first: dict[int, str] = {}
    for step in steps:
        for i in step.indices.tolist():
            first.setdefault(i, step.op.kind)
        low, high = {"brightness": (0.8, 1.2), "saturation": (0.5, 1.5), "hue": (-0.1, 0.1)}[step.op.kind]
        assert step.params.min() >= low and step.params.max() <= high
    assert len(first) == 6000
    for kind in ("brightness", "saturation", "hue"):
        assert list(first.values()).count(kind) / 6000 == pytest.approx(1 / 3, abs=0.03)


def test_same_draw_for_every_time_step_different_across_samples_and_cameras():
    frame = torch.rand(3, 12, 12)
    video = frame.expand(32, 4, 3, 12, 12)  # 32 samples of 4 identical time steps
    out = make_augmenter(ImageTransformsConfig(enable=True), seed=0)({CAMS[0]: video, CAMS[1]: video}, CAMS)
    top, wrist = out[CAMS[0]], out[CAMS[1]]
    assert torch.equal(top, top[:, :1].expand_as(top))  # every time step of a sample alike
    distinct = {tuple(sample[0].flatten().tolist()) for sample in top}
    assert len(distinct) >= 28  # samples differ (a few may draw near-identity factors)
    assert (top - wrist).abs().flatten(1).amax(1).gt(1e-3).double().mean() > 0.8  # cameras draw apart


def test_deterministic_under_the_seed_and_independent_of_the_global_rng():
    x = torch.rand(16, 2, 3, 10, 10)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = make_augmenter(ImageTransformsConfig(enable=True), seed=7).augment(x)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.manual_seed(123)
    assert torch.equal(make_augmenter(ImageTransformsConfig(enable=True), seed=7).augment(x), first)
    assert not torch.equal(make_augmenter(ImageTransformsConfig(enable=True), seed=8).augment(x), first)
    assert not torch.equal(make_augmenter(ImageTransformsConfig(enable=True), seed=7, rank=1).augment(x), first)


def test_state_dict_round_trip_continues_the_same_stream():
    batches = [torch.rand(8, 2, 3, 10, 10) for _ in range(3)]
    straight = BatchAugmenter(ImageTransformsConfig(enable=True), seed=3)
    expected = [straight.augment(b) for b in batches]
    first = BatchAugmenter(ImageTransformsConfig(enable=True), seed=3)
    first.augment(batches[0])
    saved = load(save(first.state_dict()))  # through safetensors, as a checkpoint stores it
    resumed = BatchAugmenter(ImageTransformsConfig(enable=True), seed=99)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.augment(batches[1]), expected[1])
    assert torch.equal(resumed.augment(batches[2]), expected[2])
    with pytest.raises(ValueError, match="generator"):
        resumed.load_state_dict({})


STRONG = {
    "b": (1.0, "ColorJitter", {"brightness": [0.0, 3.0], "contrast": [0.0, 3.0]}),
    "c": (1.0, "ColorJitter", {"saturation": [0.0, 3.0], "hue": 0.5}),
    "s": (1.0, "SharpnessJitter", {"sharpness": [0.0, 5.0]}),
    "a": (1.0, "RandomAffine", {"degrees": 180, "translate": [0.3, 0.3], "scale": [0.5, 1.5], "shear": 20,
                                "interpolation": "bilinear", "fill": [0.2, 0.5, 1.0]}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_stays_in_range_with_dtype_device_and_shape_kept(dtype):
    x = torch.cat([torch.rand(24, 3, 9, 9), torch.zeros(4, 3, 9, 9), torch.ones(4, 3, 9, 9)]).to(dtype)
    out = BatchAugmenter(config(STRONG, max_num_transforms=4, random_order=True), seed=0).augment(x)
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


def test_runs_on_a_stacked_batch_of_two_cameras_and_leaves_the_rest():
    batch = {CAMS[0]: torch.rand(4, 2, 3, 16, 20), CAMS[1]: torch.rand(4, 2, 3, 12, 12),
             "observation.state": torch.rand(4, 2, 5), "task": ["push"] * 4}
    before = {key: value.clone() for key, value in batch.items() if isinstance(value, torch.Tensor)}
    out = make_augmenter(ImageTransformsConfig(enable=True), seed=0)(batch, CAMS + ["observation.images.absent"])
    assert out[CAMS[0]].shape == (4, 2, 3, 16, 20) and out[CAMS[1]].shape == (4, 2, 3, 12, 12)
    assert out["observation.state"] is batch["observation.state"] and out["task"] is batch["task"]
    assert all(torch.equal(batch[key], value) for key, value in before.items())  # inputs not modified in place


def test_work_is_one_batched_call_per_transform_not_per_sample():
    """Speed sanity without a clock: the number of calls does not grow with the batch, and each sample goes
    through exactly its picked transforms (nothing computed for samples that did not pick one)."""
    augmenter = make_augmenter(ImageTransformsConfig(enable=True), seed=0)
    calls, frames = [], []
    for transform in augmenter.transforms:
        for op in transform.ops:
            original = op.apply
            def counting(images, params, original=original):
                calls.append(1)
                frames.append(len(images))
                return original(images, params)
            object.__setattr__(op, "apply", counting)
    augmenter.augment(torch.rand(256, 2, 3, 8, 8))
    assert len(calls) <= len(augmenter.transforms)
    assert sum(frames) == 256 * 2 * 3  # B * T * max_num_transforms


def test_wrong_inputs_are_refused_clearly():
    augmenter = make_augmenter(ImageTransformsConfig(enable=True), seed=0)
    with pytest.raises(TypeError, match="float frames"):
        augmenter.augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        augmenter.augment(torch.rand(3, 8, 8))  # one unbatched image
    with pytest.raises(UserError, match=r"4 channels.*tfs\.brightness\.weight=0"):
        augmenter(({"cam": torch.rand(2, 4, 8, 8)}), ["cam"])
    gray = torch.rand(8, 1, 8, 8)  # single-channel: saturation and hue leave it as is, the rest apply
    assert make_augmenter(ImageTransformsConfig(enable=True), seed=0).augment(gray).shape == gray.shape
    assert make_augmenter(ImageTransformsConfig()) is None  # disabled
    assert BatchAugmenter(config({"x": (0.0, "ColorJitter", {})})).augment(gray) is not gray  # nothing enabled


# ---- configuration --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "field", "words"), [
    ("tfs.blur.type=GaussianBlur", "tfs.blur.type=GaussianBlur", "ColorJitter, SharpnessJitter, RandomAffine"),
    ("tfs.blur.type=SharpnesJitter", "tfs.blur.type", "use SharpnessJitter, or disable"),
    ("tfs.sharpness.kwargs.sharpnes=0.3", "tfs.sharpness.kwargs", "use sharpness instead"),
    ("tfs.brightness.kwargs.brightness=[1.5,0.5]", "tfs.brightness.kwargs", "[1.5, 0.5] must satisfy 0 <= low <= high"),
    ("tfs.hue.kwargs.hue=0.7", "tfs.hue.kwargs", "[-0.7, 0.7] must satisfy -0.5 <= low <= high <= 0.5"),
    ("tfs.affine.kwargs.translate=[0.1,2]", "tfs.affine.kwargs", "translate fractions"),
    ("tfs.affine.kwargs.interpolation=bicubic", "tfs.affine.kwargs", "nearest, bilinear"),
    ("tfs.hue.weight=.nan", "tfs.hue.weight", "finite"),
    ("max_num_transforms=0", "max_num_transforms", "at least 1"),
])
def test_bad_transform_config_names_the_field_and_the_fix(flags, field, words):
    from robotrain.configs.parser import parse_train_config

    args = "--policy.type=act --dataset.repo_id=u/d --dataset.image_transforms.enable=true "
    with pytest.raises(ConfigError) as error:
        parse_train_config(shlex.split(args + f"--dataset.image_transforms.{flags}"))
    message = str(error.value)
    assert f"--dataset.image_transforms.{field}" in message and words in message and "Fix:" in message


def test_disabled_transforms_are_not_checked_and_defaults_are_lerobots():
    cfg = ImageTransformsConfig(tfs={"later": ImageTransformConfig(1.0, "RandomResizedCrop", {"size": 84})})
    cfg.validate()  # enable=false: a LeRobot config naming a transform robotrain lacks still loads
    cfg.enable = True
    with pytest.raises(ConfigError, match="tfs.later.type"):
        cfg.validate()
    with pytest.raises(ConfigError, match=r"^--dataset\.image_transforms\.tfs\.later\.type=RandomResizedCrop"):
        BatchAugmenter(cfg)
    default = BatchAugmenter(ImageTransformsConfig(enable=True))
    assert [t.name for t in default.transforms] == ["brightness", "contrast", "saturation", "hue", "sharpness",
                                                    "affine"]
    assert default.num_picked == 3 and not default.random_order


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.rand(16, 2, 3, 24, 24)
    cpu = make_augmenter(ImageTransformsConfig(enable=True), seed=5).augment(x)
    cuda = make_augmenter(ImageTransformsConfig(enable=True), seed=5).augment(x.cuda())
    assert cuda.device.type == "cuda"
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-4)
