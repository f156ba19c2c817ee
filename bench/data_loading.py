"""Data loading speed: robotrain's LeRobotDataset against the peer (lerobot 0.4.4) on the same files and machine.

Two AV1 datasets (96x96 and 480x640, textured frames so decoding costs what real cameras cost), two sample
shapes (Diffusion: 2 frames + 2 states + 16 actions; ACT: 1 frame + 100 actions), DataLoader with shuffling,
batch 8 (robotrain's side with its collate_fn, as `robotrain train` loads). robotrain runs with the frame cache
(built once, timed separately) and without it (on-the-fly decoding). Prints samples/s, the ratio to the peer, the
cache's disk size and build time, and peak RSS. "Decoder ceiling": the highest ratio any loader could reach without
the frame cache, from decoder_floor_samples_per_s (only the AV1 decoding each sample needs, one decoder thread per
core) over the peer's samples/s.
`--existing ROOT` adds datasets already on disk (e.g. one `robotrain dataset record-sim` wrote from a simulator's
rendered camera), measured the same way; `--sizes` with no value skips the generated ones.

Usage: python bench/data_loading.py [--batches 40] [--workers 0 2] [--sizes 96 480] [--existing ROOT ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from compat_peer import PEER_DIR, PEER_PYTHON, ensure_peer  # noqa: E402

SHAPES = {96: (96, 96, 60, 100), 480: (480, 640, 20, 100)}  # size -> (height, width, episodes, frames per episode)


def write_dataset(root: Path, height: int, width: int, episodes: int, frames: int) -> None:
    """Moving shapes over a fixed texture: compresses like a camera view, not like a flat test card."""
    from robotrain.datasets import LeRobotDataset

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    texture = ((texture.astype(np.int32) + np.roll(texture, 1, axis=1)) // 2).astype(np.uint8)
    features = {
        "observation.image": {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    }
    writer = LeRobotDataset.create("bench/data", 10, features, root=root)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(episodes):
        pos, vel = rng.uniform(0.2, 0.8, 2), rng.normal(0, 0.02, 2)
        for _ in range(frames):
            img = texture.copy()
            cy, cx = pos[1] * height, pos[0] * width
            img[((yy - cy) ** 2 + (xx - cx) ** 2) < (height / 8) ** 2] = (40, 40, 220)
            writer.add_frame({"observation.image": img, "observation.state": pos.astype(np.float32),
                              "action": (pos + vel).astype(np.float32), "task": "reach"})
            pos = np.clip(pos + vel, 0.05, 0.95)
        writer.save_episode()


def delta_timestamps(policy: str, fps: int, cameras: list[str]) -> dict[str, list[float]]:
    """The same queries the peer's script makes."""
    if policy == "diffusion":
        delta = {k: [-1 / fps, 0.0] for k in (*cameras, "observation.state")}
        delta["action"] = [i / fps for i in range(-1, 15)]
        return delta
    return {"action": [i / fps for i in range(100)]}


def measure(ds: torch.utils.data.Dataset, workers: int, batches: int, batch_size: int = 8,
            to_float: tuple[str, ...] = (), min_seconds: float = 2.0) -> float:
    """Samples/s through a shuffled DataLoader with robotrain's collate_fn, over `batches` batches and at least
    `min_seconds` (fast cached loaders finish 40 batches in milliseconds); `to_float` cameras arrive as uint8 and are
    made float in [0, 1] inside the timed loop, as `robotrain train` does after loading (there on the device)."""
    from robotrain.datasets.collate import collate

    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(0),
                                         persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # warm-up: worker start, decoder open
    start, n, done = time.perf_counter(), 0, 0
    while done < batches or time.perf_counter() - start < min_seconds:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        for key in to_float:
            batch[key] = batch[key].float().div_(255)
        n += batch["action"].shape[0]
        done += 1
    return n / (time.perf_counter() - start)


def decoder_floor_samples_per_s(ds, delta: dict[str, list[float]], samples: int = 160, seed: int = 0) -> float:
    """Samples/s of the least video work any reader must do for random samples on one core: packets already in
    memory, one dav1d thread (as both tools use), and for each wanted frame only the frames from its keyframe to it
    (a frame after one decoded for the same sample continues from there). No colour conversion, no copies, no
    collation. Above the peer's samples/s by a factor F, it caps any loader's ratio at F without the frame cache."""
    import av

    decoders: dict[Path, tuple[av.codec.CodecContext, list[av.Packet], np.ndarray, np.ndarray]] = {}

    def decoder(path: Path):
        if path not in decoders:
            container = av.open(str(path))
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            stream.codec_context.flags |= av.codec.context.Flags.low_delay
            packets = [p for p in container.demux(stream) if p.size]
            times = np.array([float(p.pts * stream.time_base) for p in packets])
            keys = np.array([p.is_keyframe for p in packets])
            decoders[path] = (stream.codec_context, packets, times, keys)
        return decoders[path]

    rng = np.random.default_rng(seed)
    plans = []  # per sample: (codec context, packets, [runs of packet positions to decode])
    for row in rng.integers(0, len(ds), samples):
        for key in ds.meta.camera_keys:
            offsets = torch.tensor([round(d * ds.fps) for d in delta.get(key, [0.0])])
            rows, _ = ds.query_rows(int(row), offsets)
            path, wanted = ds.video_timestamps(key, sorted(set(rows.tolist())))
            ctx, packets, times, keys = decoder(path)
            runs, position = [], -1
            for t in wanted:
                target = int(np.argmin(np.abs(times - t)))
                keyframe = int(np.flatnonzero(keys[: target + 1])[-1])
                first = position + 1 if keyframe <= position < target else keyframe
                runs.append(range(first, target + 1))
                position = target
            plans.append((ctx, packets, runs))
    started = time.perf_counter()
    for ctx, packets, runs in plans:
        for run in runs:
            if run.start == 0 or packets[run.start].is_keyframe:
                ctx.flush_buffers()  # a jump: the decoder starts again at a keyframe
            for i in run:
                ctx.decode(packets[i])
    return samples / (time.perf_counter() - started)


def peer_samples_per_s(root: Path, policy: str, workers: int, batches: int) -> float:
    out = subprocess.run([str(PEER_PYTHON), str(PEER_DIR / "bench_lerobot_data.py"), str(root), "--policy", policy,
                          "--workers", str(workers), "--batches", str(batches)], check=True, capture_output=True,
                         text=True, cwd=root.parent).stdout
    line = next(x for x in out.splitlines() if x.startswith("lerobot_data"))
    return float(line.split("samples_per_s=")[1].split()[0])


def run(args: argparse.Namespace, work: Path) -> list[str]:
    from robotrain.datasets import LeRobotDataset
    from robotrain.datasets.frames import FrameCache
    from robotrain.datasets.loader import cpu_count

    os.environ["ROBOTRAIN_CACHE_DIR"] = str(work / "cache")
    rows = []
    datasets = []
    for size in args.sizes:
        height, width, episodes, frames = SHAPES[size]
        root = work / f"data_{size}"
        started = time.perf_counter()
        write_dataset(root, height, width, episodes, frames)
        datasets.append((root, f"generated, written in {time.perf_counter() - started:.0f} s"))
    datasets += [(root.resolve(), "existing") for root in args.existing]
    for root, origin in datasets:
        meta = LeRobotDataset("bench/data", root=root).meta
        camera = meta.features[meta.camera_keys[0]]["shape"]
        name = f"{camera[0]}x{camera[1]}" + ("" if origin.startswith("generated") else f" ({root.name})")
        video_mb = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4")) / 2**20
        started = time.perf_counter()
        LeRobotDataset("bench/data", root=root, frame_cache="on")
        build_s = time.perf_counter() - started
        cache_mb = FrameCache.nbytes(LeRobotDataset("bench/data", root=root)) / 2**20
        rows.append(f"dataset {name} ({origin}): {meta.total_frames} frames, {meta.total_episodes} episodes, videos "
                    f"{video_mb:.1f} MiB ({video_mb * 2**10 / meta.total_frames / len(meta.camera_keys):.1f} KiB per "
                    f"frame); frame cache {cache_mb:.0f} MiB on disk, built in {build_s:.1f} s")
        floors: dict[str, float] = {}
        for policy in ("diffusion", "act"):
            delta = delta_timestamps(policy, meta.fps, meta.camera_keys)
            for workers in args.workers:
                peer = peer_samples_per_s(root, policy, workers, args.batches)
                cached = measure(LeRobotDataset("bench/data", root=root, delta_timestamps=delta, frame_cache="on"),
                                 workers, args.batches)
                as_trained = measure(LeRobotDataset("bench/data", root=root, delta_timestamps=delta, frame_cache="on",
                                                    return_uint8=True), workers, args.batches,
                                     to_float=tuple(meta.camera_keys))
                decoding = LeRobotDataset("bench/data", root=root, delta_timestamps=delta, frame_cache="off")
                decoded = measure(decoding, workers, args.batches)
                decoded_as_trained = measure(
                    LeRobotDataset("bench/data", root=root, delta_timestamps=delta, frame_cache="off",
                                   return_uint8=True), workers, args.batches, to_float=tuple(meta.camera_keys))
                if policy not in floors:
                    floors[policy] = decoder_floor_samples_per_s(decoding, delta)
                ceiling = floors[policy] * min(max(workers, 1), cpu_count()) / peer
                rows.append(f"| {name} | {policy} | {workers} | {peer:.1f} | {cached:.1f} | {cached / peer:.1f}x | "
                            f"{as_trained:.1f} | {as_trained / peer:.1f}x | {decoded:.1f} | {decoded / peer:.2f}x | "
                            f"{decoded_as_trained:.1f} | {decoded_as_trained / peer:.2f}x | {ceiling:.2f}x |")
                print(rows[-1], flush=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(f"peak RSS of the robotrain benchmark process: {rss_mb:.0f} MiB")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--sizes", type=int, nargs="*", default=[96, 480], choices=sorted(SHAPES))
    parser.add_argument("--existing", type=Path, nargs="*", default=[], help="datasets on disk to measure too")
    parser.add_argument("--reuse_freed_memory", action="store_true",
                        help="robotrain's side with the allocator setting `robotrain train` applies (robotrain.memory)")
    parser.add_argument("--out", type=Path, default=None, help="keep the datasets here instead of a temp dir")
    args = parser.parse_args()
    if args.reuse_freed_memory:  # the peer runs in its own processes, untouched
        from robotrain.memory import reuse_freed_memory

        assert reuse_freed_memory(), "glibc's mallopt is not available here"
    ensure_peer()
    print("| dataset | sample | workers | lerobot samples/s | robotrain cached | ratio | robotrain cached, uint8 "
          "(as train loads) | ratio | robotrain decoding | ratio | decoding, uint8 (as train loads) | ratio | "
          "decoder ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = run(args, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(args, Path(tmp))
    print("\n".join(r for r in rows if not r.startswith("|")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
