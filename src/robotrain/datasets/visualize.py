"""`robotrain dataset visualize`: one episode as a self-contained HTML page (videos, plots, a synced time cursor).

Cameras are re-encoded to H.264, which every browser plays (AV1 in mp4 is not universal), scaled to at most
MAX_VIDEO_WIDTH px wide and embedded as base64 data URIs, so the page is a single file that opens offline.
Plots are inline SVG drawn here; a few lines of JavaScript move a cursor over them with the video's time.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robotrain.configs.types import ACTION, OBS_STATE, REWARD
from robotrain.datasets.dataset import LeRobotDataset, decode_png
from robotrain.datasets.format import DatasetError
from robotrain.datasets.inspect import flatten_names
from robotrain.datasets.metadata import LeRobotDatasetMetadata
from robotrain.datasets.validate import camera_layout
from robotrain.datasets.video import VideoDecoder, VideoEncoding, encode_video
from robotrain.files import atomic_write_text

logger = logging.getLogger(__name__)

MAX_VIDEO_WIDTH = 320  # px: plenty to see what the robot does, and keeps the page a few MB
PLOTTED_KEYS = (OBS_STATE, ACTION, REWARD)
PLOT_WIDTH, PLOT_HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 40  # plot margins (px) for tick labels and axis titles
MAX_PLOT_POINTS = 2000  # per line: more adds bytes, not detail, at PLOT_WIDTH px
Scale = Callable[[float], float]  # data value -> SVG coordinate
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class VisualizeConfig:
    """Which episode `robotrain dataset visualize` renders, and where the page goes."""

    repo_id: str
    """Dataset id, e.g. lerobot/pusht: a folder under $HF_LEROBOT_HOME, or a Hub repo when online."""
    root: Path | None = None
    """Local folder holding the dataset; overrides the cache lookup (works offline)."""
    episode: int = 0
    """Index of the episode to render."""
    output: Path | None = None
    """HTML file to write; null writes ./<repo_id with / replaced by _>_episode_<episode>.html."""


def default_output(repo_id: str, episode: int) -> Path:
    """./<repo_id with / replaced by _>_episode_<N>.html in the working directory."""
    return Path.cwd() / f"{repo_id.replace('/', '_')}_episode_{episode}.html"


def visualize_episode(cfg: VisualizeConfig) -> Path:
    """Write one episode's page (cameras as H.264 videos, state/action/reward plots); returns its path."""
    meta = LeRobotDatasetMetadata(cfg.repo_id, cfg.root)
    if not 0 <= cfg.episode < meta.total_episodes:
        raise DatasetError(f"episode {cfg.episode} does not exist in {cfg.repo_id}, which has {meta.total_episodes} "
                           f"episodes (0..{meta.total_episodes - 1}). Fix: choose --episode in that range")
    dataset = LeRobotDataset(cfg.repo_id, root=meta.root, episodes=[cfg.episode])
    cameras = [(key, _camera_mp4(dataset, key, cfg.episode)) for key in meta.camera_keys]
    plots = []
    for key in PLOTTED_KEYS:
        if key in dataset.columns:
            values = dataset.columns[key].numpy().reshape(len(dataset), -1).astype(np.float64)
            plots.append((key, values, dimension_names(meta.features[key].get("names"), values.shape[1])))
    tasks = meta.episodes["tasks"][cfg.episode].as_py() or []
    page = render_page(cfg.repo_id, cfg.episode, " / ".join(tasks), meta.fps, len(dataset), cameras, plots)
    output = Path(cfg.output).expanduser() if cfg.output is not None else default_output(cfg.repo_id, cfg.episode)
    atomic_write_text(output, page)
    logger.debug("wrote %s (%d bytes)", output, len(page))
    return output



def dimension_names(names: object, size: int) -> list[str]:
    """info.json's names for a feature's dimensions when they fit, else dim 0, dim 1, ..."""
    flat = flatten_names(names) if names is not None else []
    return flat if len(flat) == size else [f"dim {i}" for i in range(size)]


# ---- cameras ----------------------------------------------------------------------------------------------
def scaled_size(height: int, width: int) -> tuple[int, int]:
    """At most MAX_VIDEO_WIDTH wide, aspect kept, both even (H.264 with 4:2:0 chroma needs even sizes)."""
    new_width = min(width, MAX_VIDEO_WIDTH)
    new_height = round(height * new_width / width)
    return max(2, new_height - new_height % 2), max(2, new_width - new_width % 2)


def _video_frames(dataset: LeRobotDataset, key: str, episode: int,
                  size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The episode's frames of a video camera, decoded in one sequential pass and resized: (H, W, 3) uint8."""
    meta = dataset.meta
    start = float(meta.episodes[f"videos/{key}/from_timestamp"][episode].as_py())
    end = float(meta.episodes[f"videos/{key}/to_timestamp"][episode].as_py())
    decoder = VideoDecoder(meta.get_video_file_path(episode, key))
    try:
        for _, frame in decoder.iter_frames(start, end, size):
            yield frame
    finally:
        decoder.close()


def _image_frames(dataset: LeRobotDataset, key: str, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The episode's frames of an image (PNG) camera, decoded and resized: (H, W, 3) uint8."""
    from PIL import Image

    for data in dataset.images[key]:
        frame = decode_png(data)
        if frame.shape[:2] != size:
            frame = np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.Resampling.BOX))
        yield frame


def _camera_mp4(dataset: LeRobotDataset, key: str, episode: int) -> bytes:
    """One camera's frames of the episode as H.264 mp4 bytes, scaled down for the page."""
    height, width, _ = camera_layout(dataset.meta.features[key])
    size = scaled_size(height, width)
    frames = _image_frames(dataset, key, size) if key in dataset.images else _video_frames(dataset, key, episode, size)
    fps = dataset.fps
    # A keyframe a second (not the dataset's every-2-frames) keeps the page small; browsers seek fine within it.
    encoding = VideoEncoding(vcodec="h264", g=fps, crf=23)
    with tempfile.TemporaryDirectory(prefix="robotrain-visualize-") as tmp:
        path = Path(tmp) / "camera.mp4"
        count = encode_video(frames, path, fps, encoding)
        if count != len(dataset):
            logger.warning("%s: episode %d has %d frames but %d were decoded from camera %s", dataset.repo_id,
                           episode, len(dataset), count, key)
        return path.read_bytes()


# ---- plots -----------------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """The y range: the finite values' min and max with 5 % room, never empty."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.1, 0.5)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _polyline(times: np.ndarray, column: np.ndarray, x: Scale, y: Scale, color: str, name: str) -> str:
    """One dimension as an SVG polyline, thinned to MAX_PLOT_POINTS; its name shows on hover."""
    stride = max(1, math.ceil(len(times) / MAX_PLOT_POINTS))
    keep = np.unique(np.r_[np.arange(0, len(times), stride), len(times) - 1])
    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times[keep], column[keep], strict=True)
                      if math.isfinite(v))
    return (f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}">'
            f"<title>{html.escape(name)}</title></polyline>")


def svg_plot(title: str, times: np.ndarray, values: np.ndarray, names: list[str]) -> str:
    """An inline SVG line plot of each column of `values` (T, D) over `times` (s), with axes and a time cursor."""
    width, height = PLOT_WIDTH - LEFT - RIGHT, PLOT_HEIGHT - TOP - BOTTOM
    t_max = float(times[-1]) if len(times) > 1 and times[-1] > 0 else 1.0
    lo, hi = _value_range(values)

    def x(t: float) -> float:
        return LEFT + t / t_max * width

    def y(v: float) -> float:
        return TOP + (hi - v) / (hi - lo) * height

    parts = [f'<svg class="plot" viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" xmlns="http://www.w3.org/2000/svg" '
             f'role="img" aria-label="{html.escape(title)} over time">',
             f'<rect x="{LEFT}" y="{TOP}" width="{width}" height="{height}" class="frame"/>']
    for tick in nice_ticks(lo, hi):
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + width}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.4g}</text>')
    for tick in nice_ticks(0.0, t_max):
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP}" y2="{TOP + height}" class="grid"/>'
                     f'<text x="{x(tick):.1f}" y="{TOP + height + 16}" text-anchor="middle">{tick:.4g}</text>')
    parts.append(f'<text x="{LEFT + width / 2}" y="{PLOT_HEIGHT - 4}" text-anchor="middle" class="axis">'
                 "time (s)</text>")
    parts.append(f'<text transform="translate(14 {TOP + height / 2}) rotate(-90)" text-anchor="middle" '
                 f'class="axis">{html.escape(title)}</text>')
    for i, name in enumerate(names):
        parts.append(_polyline(times, values[:, i], x, y, PALETTE[i % len(PALETTE)], name))
    parts.append(f'<line class="cursor" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + height}" '
                 f'data-x0="{LEFT}" data-w="{width}" data-tmax="{t_max}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(names: list[str]) -> str:
    """An HTML legend: each dimension's color and name."""
    items = "".join(f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(name)}</span>'
                    for i, name in enumerate(names))
    return f'<div class="legend">{items}</div>'


# ---- page ------------------------------------------------------------------------------------------------
def render_page(repo_id: str, episode: int, task: str, fps: int, length: int, cameras: list[tuple[str, bytes]],
                plots: list[tuple[str, np.ndarray, list[str]]]) -> str:
    """The whole HTML document: header, one <video> per camera, one <svg> plot per feature, the cursor script."""
    title = f"{repo_id} · episode {episode}"
    full_title = f"{title} · {task or 'no task'} · {length} frames"
    videos = "\n".join(
        f'<figure><video controls preload="auto" playsinline src="data:video/mp4;base64,'
        f'{base64.b64encode(data).decode("ascii")}"></video><figcaption>{html.escape(key)}</figcaption></figure>'
        for key, data in cameras)
    times = np.arange(length) / fps
    figures = "\n".join(f"<figure><figcaption>{html.escape(key)}</figcaption>{svg_plot(key, times, values, names)}"
                        f"{_legend(names)}</figure>" for key, values, names in plots)
    out = io.StringIO()
    out.write(f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(full_title)}</title>'
              f"<style>{_CSS}</style></head>\n")
    out.write(f'<body data-fps="{fps}" data-frames="{length}">\n<h1>{html.escape(title)}</h1>\n')
    out.write(f'<p class="about">task: <b>{html.escape(task or "(none)")}</b> · {length} frames · '
              f"{length / fps:.2f} s at {fps} fps</p>\n")
    out.write('<p id="time">t = 0.00 s · frame 0</p>\n')
    if cameras:
        out.write(f'<section class="cameras">\n{videos}\n</section>\n')
    out.write(f'<section class="plots">\n{figures}\n</section>\n<script>{_SCRIPT}</script>\n</body></html>\n')
    return out.getvalue()


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; margin: 0 0 4px; } .about { margin: 0 0 8px; color: #555; }
#time { font-variant-numeric: tabular-nums; color: #333; }
figure { margin: 0 16px 16px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
.cameras { display: flex; flex-wrap: wrap; }
video { width: 320px; max-width: 100%; background: #000; image-rendering: pixelated; }
svg.plot { width: 100%; max-width: 760px; cursor: crosshair; font-size: 11px; }
svg .frame { fill: #fafafa; stroke: #bbb; } svg .grid { stroke: #e4e4e4; } svg .axis { font-size: 12px; }
svg .cursor { stroke: #d00; stroke-width: 1.5; }
.legend span { margin-right: 12px; white-space: nowrap; }
.legend i { display: inline-block; width: 12px; height: 3px; margin-right: 4px; vertical-align: middle; }
"""

# The cursor follows the first video's currentTime every animation frame (timeupdate fires only ~4 times a second);
# the videos play, pause and seek together; a click on a plot seeks to that time.
_SCRIPT = """
const fps = +document.body.dataset.fps, frames = +document.body.dataset.frames;
const videos = [...document.querySelectorAll("video")];
const cursors = [...document.querySelectorAll("line.cursor")];
function show(t) {
  for (const c of cursors) {
    const x = +c.dataset.x0 + Math.min(Math.max(t / +c.dataset.tmax, 0), 1) * +c.dataset.w;
    c.setAttribute("x1", x); c.setAttribute("x2", x);
  }
  const frame = Math.min(Math.floor(t * fps + 1e-6), frames - 1);
  document.getElementById("time").textContent = `t = ${t.toFixed(2)} s · frame ${frame}`;
}
function seek(t) { for (const v of videos) v.currentTime = t; show(t); }
for (const v of videos) {
  v.addEventListener("play", () => videos.forEach(o => { if (o !== v && o.paused) o.play(); }));
  v.addEventListener("pause", () => videos.forEach(o => { if (o !== v && !o.paused) o.pause(); }));
  v.addEventListener("seeked", () => videos.forEach(o => {
    if (o !== v && Math.abs(o.currentTime - v.currentTime) > 0.5 / fps) o.currentTime = v.currentTime; }));
}
for (const svg of document.querySelectorAll("svg.plot")) {
  svg.addEventListener("click", e => {
    const c = svg.querySelector("line.cursor"), box = svg.getBoundingClientRect();
    const x = (e.clientX - box.left) * svg.viewBox.baseVal.width / box.width;
    seek(Math.min(Math.max((x - +c.dataset.x0) / +c.dataset.w, 0), 1) * +c.dataset.tmax);
  });
}
(function tick() { if (videos.length) show(videos[0].currentTime); requestAnimationFrame(tick); })();
"""
