"""Generation speed of clevrer_sim: videos per second, written to an HDF5 store.

    python benchmarks/generate.py [--videos 200] [--workers 2] [--height 64 --width 64]
        [--frames 128 --future 32] [--counterfactuals]

Prints one JSON line: the figure, the configuration and the machine (with its fp32 matmul
rate, measured in the same run, for reading figures across machines). Target (issue 2):
>= 5 videos/s at 64x64, 160 frames, no counterfactual videos, 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from causaljepa.benchmarking import emit, machine
from causaljepa.sim.generate import GenerateConfig, generate_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=128, help="observed frames")
    p.add_argument("--future", type=int, default=32, help="simulated future frames")
    p.add_argument("--counterfactuals", action="store_true")
    a = p.parse_args()
    base = GenerateConfig()
    cfg = replace(
        base,
        videos={"train": a.videos},
        height=a.height,
        width=a.width,
        counterfactuals=a.counterfactuals,
        scene=replace(base.scene, observed_frames=a.frames, future_frames=a.future),
    )
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store, _ = generate_split(cfg, "train", Path(tmp), workers=a.workers)
        dt = time.perf_counter() - t
        size = store.stat().st_size
    emit(
        {
            "benchmark": "generate",
            "videos_per_s": round(a.videos / dt, 2),
            "seconds": round(dt, 2),
            "store_mb_per_video": round(size / a.videos / 1e6, 3),
            "config": {
                "videos": a.videos,
                "workers": a.workers,
                "resolution": [a.height, a.width],
                "frames": a.frames + a.future,
                "counterfactuals": a.counterfactuals,
            },
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
