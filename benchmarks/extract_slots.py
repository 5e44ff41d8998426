"""Speed of slot extraction (``extract_slots``): a trained encoder over whole video stores, as
the main job's slots stage runs it.

    python benchmarks/extract_slots.py --checkpoint runs/main/encoder/encoder.pt \\
        --store runs/main/data/train.h5 --store runs/main/data/validation.h5 \\
        --cf-store runs/main/data_cf/validation.h5 [--precision auto] [--threads 0]

``--store``: stores encoded alone; ``--cf-store``: stores encoded with their counterfactual
videos (one world per removed object), as the main job encodes ``data_cf``. Together the three
above are the main job's slots stage without its picture. One JSON line per store (seconds,
frames encoded and frames/s, the store's FG-ARI where it has masks) and one for the total, with
the machine's matmul peaks. The slot stores are written to a temporary folder and removed.
To compare code versions, run the same command with ``PYTHONPATH`` at another checkout,
alternating, on a machine otherwise idle.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import causaljepa
from causaljepa.benchmarking import device_ceilings, emit
from causaljepa.data.slot_store import extract_slots
from causaljepa.data.store import VideoStore
from causaljepa.training.encoder import load_encoder
from causaljepa.training.loop import resolve_precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="encoder.pt (or a training checkpoint)")
    p.add_argument("--store", action="append", default=[], help="a video store to encode (repeatable)")
    p.add_argument(
        "--cf-store", action="append", default=[],
        help="a video store to encode with its counterfactual videos (repeatable)",
    )  # fmt: skip
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (extract_slots' precision)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    a = p.parse_args()
    stores = [(Path(s), False) for s in a.store] + [(Path(s), True) for s in a.cf_store]
    if not stores:
        p.error("give at least one --store or --cf-store")
    for path, _ in stores:
        if not path.is_file():
            p.error(f"{path}: no such video store")
    if a.threads:
        torch.set_num_threads(a.threads)
    precision = resolve_precision(a.precision, "cpu")
    model, _ = load_encoder(a.checkpoint)
    config = {"checkpoint": str(a.checkpoint), "precision": precision, "batch_size": a.batch_size,
              "chunk": a.chunk, "threads": torch.get_num_threads(),
              "package": str(Path(causaljepa.__file__).parent)}  # fmt: skip
    machine = device_ceilings(torch.device("cpu"))
    total_s, total_frames = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, cf) in enumerate(stores):
            with VideoStore(path) as vs:
                worlds = 1 + (vs.max_objects if cf else 0)
                frames = vs.num_videos * vs.num_frames * worlds
            t0 = time.perf_counter()
            metrics = extract_slots(
                model, path, Path(tmp) / f"{i}.h5", encoder_hash="benchmark", precision=precision,
                batch_size=a.batch_size, chunk=a.chunk, counterfactuals=cf, progress=False,
            )  # fmt: skip
            s = time.perf_counter() - t0
            total_s, total_frames = total_s + s, total_frames + frames
            emit({"benchmark": "extract_slots", "store": str(path), "counterfactuals": cf,
                  "seconds": round(s, 2), "frames": frames, "frames_per_s": round(frames / s, 1),
                  "fg_ari": metrics.get("fg_ari"), "config": config, "machine": machine})  # fmt: skip
    emit({"benchmark": "extract_slots", "store": "total", "seconds": round(total_s, 2),
          "frames": total_frames, "frames_per_s": round(total_frames / total_s, 1), "config": config,
          "machine": machine})  # fmt: skip


if __name__ == "__main__":
    main()
