"""Training speed of the slot-attention video encoder: images/s and achieved GFLOP/s.

    python benchmarks/encoder.py [--encoder savi_32] [--set iters=1 ...] [--batch 8] [--clip 6]
        [--steps 10] [--precision bf16|fp32] [--device cpu|cuda] [--profile 20]

FLOPs of one training step (forward and backward) are counted by torch's profiler
(``with_flops``: matrix multiplies and convolutions; element-wise work is not counted, so
the figure is a lower bound of the work done). Prints one JSON line per precision measured, with the
machine's fp32 (and bf16) matrix-multiply rate measured in the same run: the fraction of
the fp32 peak is the figure of issue 3 (target >= 40 % on CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from causaljepa.benchmarking import device_ceilings, emit, flop_rates, timed
from causaljepa.models.savi import EncoderConfig, SAVi
from causaljepa.training.allocator import keep_freed_memory
from causaljepa.training.loop import LossModule, train_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "encoder"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="savi_32", help="a config in configs/encoder/")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the encoder config (repeatable), e.g. --set iters=1",
    )
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--clip", type=int, default=6, help="frames per clip")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    p.add_argument(
        "--size", type=int, default=64, help="stored frame size (frames are resized to the model's)"
    )
    p.add_argument("--precision", choices=["bf16", "fp32", "both"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (trainer.compile)")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print the N (op, input shapes) with the most self time in one step, to stderr",
    )
    a = p.parse_args()
    device = torch.device(a.device)
    keep_freed_memory(device)  # as the trainer does
    fields = yaml.safe_load((CONFIGS / f"{a.encoder}.yaml").read_text())
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            p.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        fields[key] = yaml.safe_load(value)
    cfg = EncoderConfig(**fields)
    machine_info = device_ceilings(device)
    frames = torch.randint(0, 256, (a.batch, a.clip, a.size, a.size, 3), dtype=torch.uint8, device=device)
    flops = None
    for precision in ("fp32", "bf16") if a.precision == "both" else (a.precision,):
        torch.manual_seed(0)
        model = SAVi(cfg).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-4)

        forward = torch.compile(LossModule(model)) if a.compile else None

        def step(model=model, opt=opt, precision=precision, forward=forward):
            train_step(
                model,
                frames,
                opt,
                lr=1e-4,
                grad_clip=1.0,
                device=device,
                precision=precision,
                forward=forward,
            )

        for _ in range(3):
            step()
        if flops is None:  # the arithmetic of a step, counted once in fp32: autocast's bf16
            # kernels are reported under other op names, which the profiler counts differently
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities, with_flops=True) as prof:
                train_step(model, frames, opt, lr=1e-4, grad_clip=1.0, device=device, precision="fp32")
            flops = sum(e.flops for e in prof.key_averages())  # forward + backward of one step
        dt = timed(step, a.steps, device)
        if a.profile:
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                step()
            table = prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=a.profile, max_shapes_column_width=70
            )
            print(f"{precision}: the ops of one training step by self time\n{table}", file=sys.stderr)
        emit(
            {
                "benchmark": "encoder_train_step",
                "precision": precision,
                "images_per_s": round(a.batch * a.clip / dt, 1),
                **flop_rates(flops, dt, machine_info, precision),
                "config": {
                    "encoder": a.encoder,
                    **cfg.to_dict(),
                    "batch": a.batch,
                    "clip": a.clip,
                    "compile": a.compile,
                },
                "machine": machine_info,
            }
        )


if __name__ == "__main__":
    main()
