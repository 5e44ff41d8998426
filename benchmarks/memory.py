"""Peak resident memory of training on stores several times larger than the loader's cache.

    python benchmarks/memory.py [--store-gb 1.5] [--cache-mb 256] [--steps 40]

Writes synthetic stores in a temporary directory (random data, the real layouts and
chunking), runs ``cjepa train`` and ``cjepa train-encoder`` on them in child processes and
prints one JSON line per run with the child's peak resident set size (ru_maxrss):

- predictor, streamed: a slot store of --store-gb with windows.cache_mb=--cache-mb, so the
  windows are read from HDF5 as they are drawn;
- predictor, in memory: the same store with a cache larger than it (what the cache bounds);
- predictor, floor: a store of 50 videos (the process's memory without data);
- encoder, streamed: a video store of --store-gb (clips are always read from HDF5, through the
  store's 64 MiB chunk cache).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from causaljepa.benchmarking import emit, machine
from causaljepa.data.slot_store import SLOT_SCHEMA_VERSION
from causaljepa.data.store import STR, StoreLayout, VideoStoreWriter

T, K, D = 128, 7, 128  # CLEVRER-sized slot videos: 128 frames of 7 slots of width 128
H = W = 64


def write_slot_store(path: Path, videos: int, seed: int = 0) -> int:
    """A slot store of random slots with the extractor's layout; returns its slot bytes."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(
            {
                "schema_version": SLOT_SCHEMA_VERSION,
                "kind": "slots",
                "video_store": "synthetic",
                "encoder_hash": "synthetic",
                "encoder_config": "{}",
                "num_frames": T,
                "observed_frames": T,
                "fps": 25.0,
            }
        )
        ds = f.create_dataset("slots", (videos, T, K, D), np.float32, chunks=(1, 32, K, D))
        ids = np.array([f"video_{i:05d}" for i in range(videos)], dtype=object)
        f.create_dataset("video_ids", data=ids, dtype=STR)
        for i in range(0, videos, 64):  # 64 videos (29 MB) at a time
            n = min(64, videos - i)
            ds[i : i + n] = rng.standard_normal((n, T, K, D), dtype=np.float32)
    return videos * T * K * D * 4


def write_video_store(path: Path, videos: int, seed: int = 0) -> int:
    """A video store of random 64x64 frames (incompressible: the worst case); returns its frame bytes."""
    rng = np.random.default_rng(seed)
    layout = StoreLayout(num_videos=videos, num_frames=T, height=H, width=W)
    with VideoStoreWriter(path, layout, {"source": "synthetic", "fps": 25.0}) as w:
        for i in range(videos):
            w.write(
                i,
                {
                    "frames": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                    "video_ids": f"video_{i:05d}",
                    "scene_index": i,
                    "annotations": "",
                },
            )
    return videos * T * H * W * 3


CHILD = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if p.returncode:
    sys.exit(p.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)
"""


def peak_rss(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(peak resident MiB, seconds) of ``python -m causaljepa argv`` in a child process."""
    p = subprocess.run(
        [sys.executable, "-c", CHILD, sys.executable, "-m", "causaljepa", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if p.returncode:
        raise RuntimeError(f"cjepa {' '.join(argv[:1])} failed:\n{p.stderr[-3000:]}")
    kib, seconds = p.stdout.split()
    return int(kib) / 1024, float(seconds)


def report(run: str, size: int, cache_mb: int, rss_mb: float, seconds: float, steps: int, info: dict) -> None:
    emit(
        {
            "bench": "memory",
            "run": run,
            "store_mb": round(size / 2**20),
            "cache_mb": cache_mb,
            "store_over_cache": round(size / 2**20 / cache_mb, 2),
            "peak_rss_mb": round(rss_mb),
            "steps": steps,
            "seconds": round(seconds, 1),
            "machine": info,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store-gb", type=float, default=1.5)
    ap.add_argument("--cache-mb", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slot_videos = int(args.store_gb * 2**30 / (T * K * D * 4))
        t = time.perf_counter()
        big = write_slot_store(tmp / "big" / "train.h5", slot_videos)
        small = write_slot_store(tmp / "small" / "train.h5", 50)
        print(f"slot stores written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        common = [
            "predictor=small", "train.batch_size=16", f"train.steps={args.steps}", "train.log_every=10",
            "train.val_every=0", "train.ckpt_every=100000", "trainer.progress=false", "data.root=.",
        ]  # fmt: skip
        runs = {
            "predictor_streamed": (tmp / "big", big, args.cache_mb),
            "predictor_in_memory": (tmp / "big", big, int(big / 2**20) + 64),
            "predictor_floor": (tmp / "small", small, args.cache_mb),
        }
        for name, (slots, size, cache) in runs.items():
            argv = ["train", f"slots={slots}", f"windows.cache_mb={cache}", f"out={tmp / name}", *common]
            report(name, size, cache, *peak_rss(argv, tmp), args.steps, info)
        video_videos = int(args.store_gb * 2**30 / (T * H * W * 3))
        t = time.perf_counter()
        frames = write_video_store(tmp / "video" / "train.h5", video_videos)
        print(f"video store written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        argv = [
            "train-encoder", "preset=smoke", f"data.root={tmp / 'video'}", f"out={tmp / 'encoder'}",
            "train.batch_size=8", f"train.steps={args.steps}", "train.val_every=0", "train.ckpt_every=100000",
            "trainer.progress=false",
        ]  # fmt: skip
        cache = 64  # VideoStore's h5py chunk cache
        report("encoder_streamed", frames, cache, *peak_rss(argv, tmp), args.steps, info)


if __name__ == "__main__":
    main()
