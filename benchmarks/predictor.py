"""Speed of the C-JEPA predictor: training clips/s, achieved GFLOP/s, rollout frames/s.

    python benchmarks/predictor.py [--predictor cjepa_clevrer] [--slots 7] [--slot-dim 128]
        [--batch 64] [--steps 5] [--precision fp32|bf16|both] [--device cpu|cuda] [--commit N]

The default is the published CLEVRER configuration: 7 slots x 128, 6 history + 10 future
frames, 6 layers, 16 heads of 8 dimensions, MLP 2048, dropout 0.1, batch 64, with object
masking. FLOPs of a training step are counted from the shapes (``step_flops``: every matrix
multiply of the forward pass, attention's two included, times 3 for forward plus backward;
element-wise work is not counted, so the figure is a lower bound of the work done). Each
JSON line carries the machine's fp32 and bf16 matrix-multiply rates measured in the same
run: the fraction of the fp32 peak in fp32 is the figure of issue 4 (target >= 50 % on CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from causaljepa.benchmarking import device_ceilings, emit, flop_rates, timed
from causaljepa.masking import MaskConfig, MaskSampler
from causaljepa.models.predictor import CJEPAPredictor, PredictorConfig
from causaljepa.rollout import commit_frames, rollout
from causaljepa.training.allocator import keep_freed_memory
from causaljepa.training.loop import LossModule, autocast, train_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "predictor"


def step_flops(cfg: PredictorConfig, batch: int, slots: int) -> int:
    """Matrix-multiply FLOPs of one training step (forward + backward = 3 x forward)."""
    n = cfg.window * (slots + (1 if cfg.action_dim else 0))  # tokens per clip
    tokens = batch * n
    inner = cfg.heads * cfg.head_dim
    per_layer = 2 * tokens * cfg.dim * (3 * inner + inner + 2 * cfg.mlp_hidden)  # qkv, proj, MLP
    per_layer += 2 * 2 * batch * n * n * inner  # scores and the weighted sum
    io = 2 * batch * cfg.window * slots * cfg.slot_dim * cfg.dim * 3  # slot in, anchor, out
    return 3 * (cfg.layers * per_layer + io)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictor", default="cjepa_clevrer", help="a config in configs/predictor/")
    p.add_argument("--slots", type=int, default=7)
    p.add_argument("--slot-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--rollout-steps", type=int, default=16, help="predicted frames per rollout")
    p.add_argument(
        "--commit", type=int, default=None,
        help="predicted frames that join the rollout chain per pass (default: all, as cjepa rollout)",
    )  # fmt: skip
    p.add_argument("--precision", choices=["bf16", "fp32", "both"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (trainer.compile)")
    a = p.parse_args()
    device = torch.device(a.device)
    keep_freed_memory(device)  # as the trainer does
    raw = yaml.safe_load((CONFIGS / f"{a.predictor}.yaml").read_text())
    cfg = PredictorConfig(**{**raw, "slot_dim": a.slot_dim})
    machine_info = device_ceilings(device)
    gen = torch.Generator().manual_seed(0)
    slots = torch.randn(a.batch, cfg.window, a.slots, cfg.slot_dim, generator=gen)
    hidden = MaskSampler(MaskConfig("object"), a.slots, cfg.history, cfg.future).sample(a.batch, gen)
    batch = {"slots": slots.to(device), "hidden": hidden.to(device)}
    flops = step_flops(cfg, a.batch, a.slots)
    config = {
        "predictor": a.predictor,
        **cfg.to_dict(),
        "slots": a.slots,
        "batch": a.batch,
        "compile": a.compile,
    }
    for precision in ("fp32", "bf16") if a.precision == "both" else (a.precision,):
        torch.manual_seed(0)
        model = CJEPAPredictor(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), 5e-4)

        forward = torch.compile(LossModule(model)) if a.compile else None

        def step(model=model, opt=opt, precision=precision, forward=forward):
            train_step(
                model, batch, opt, lr=5e-4, grad_clip=1.0, device=device, precision=precision, forward=forward
            )

        for _ in range(2):
            step()
        dt = timed(step, a.steps, device)
        emit(
            {
                "benchmark": "predictor_train_step",
                "precision": precision,
                "clips_per_s": round(a.batch / dt, 1),
                **flop_rates(flops, dt, machine_info, precision),
                "config": config,
                "machine": machine_info,
            }
        )
        model.eval()
        history = slots[:, : cfg.history].to(device)
        commit = commit_frames(cfg, a.commit)

        def roll():
            with autocast(device, precision):  # noqa: B023
                rollout(model, history, a.rollout_steps, commit=commit)  # noqa: B023

        roll()
        dt = timed(roll, 1, device)
        emit(
            {
                "benchmark": "predictor_rollout",
                "precision": precision,
                "frames_per_s": round(a.batch * a.rollout_steps / dt, 1),
                "rollout_s": round(dt, 4),
                "config": {**config, "rollout_steps": a.rollout_steps, "commit": commit},
                "machine": machine_info,
            }
        )


if __name__ == "__main__":
    main()
