"""Speed of PHYRE action ranking: candidate actions scored per second by the world model
(predictor + success readout), and the simulator's attempts per second.

    python benchmarks/phyre.py [--predictor phyre] [--candidates 10000] [--batch 2048]
        [--precision fp32|bf16|both] [--device cpu|cuda]

Scoring is what ranking a task costs the model: one scene (5 slots x 16, the oracle slots of
phyre_sim) shared by every candidate, one forward pass of the predictor (frame 0 + the ball's
action node -> ``future`` frames) and of the readout per batch (``training.phyre.score_actions``).
FLOPs are the predictor's matrix multiplies counted from the shapes (benchmarks/predictor.py's
``step_flops`` / 3: forward only; the readout's are left out, so the rate is a lower bound).
Under bf16 the predictor runs in autocast and the readout in fp32, as in the evaluation.
Each JSON line carries the machine's fp32 and bf16 matrix-multiply rates measured in the same
run. The target of issue 7 is >= 10,000 candidates/s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from causaljepa.benchmarking import device_ceilings, emit, flop_rates, timed
from causaljepa.data.phyre_slots import PHYRE_ORACLE_FIELDS
from causaljepa.models.predictor import CJEPAPredictor, PredictorConfig
from causaljepa.sim import phyre_sim as ps
from causaljepa.training.allocator import keep_freed_memory
from causaljepa.training.phyre import ReadoutConfig, SuccessReadout, score_actions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predictor import step_flops

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "predictor"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictor", default="phyre", help="a config in configs/predictor/")
    p.add_argument("--candidates", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="timed scorings (after one warm-up)")
    p.add_argument("--precision", choices=["bf16", "fp32", "both"], default="both")
    p.add_argument("--simulations", type=int, default=300, help="attempts simulated for the simulator rate")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    keep_freed_memory(device)
    K, D = ps.MAX_OBJECTS, len(PHYRE_ORACLE_FIELDS)
    raw = yaml.safe_load((CONFIGS / f"{a.predictor}.yaml").read_text())
    cfg = PredictorConfig(**{**raw, "slot_dim": D, "action_dim": 3})
    machine_info = device_ceilings(device)
    torch.manual_seed(0)
    model = CJEPAPredictor(cfg).to(device).eval()
    readout = SuccessReadout(ReadoutConfig(frames=1 + cfg.future, slot_dim=D)).to(device).eval()
    scene = torch.randn(K, D)
    actions = torch.rand(a.candidates, 3, generator=torch.Generator().manual_seed(0))
    flops = step_flops(cfg, a.candidates, K) / 3  # forward only
    config = {"predictor": a.predictor, **cfg.to_dict(), "slots": K, "candidates": a.candidates,
              "batch": a.batch, "threads": torch.get_num_threads()}  # fmt: skip
    for precision in ("fp32", "bf16") if a.precision == "both" else (a.precision,):

        def score():
            score_actions(model, readout, scene, actions, batch_size=a.batch, precision=precision)  # noqa: B023

        score()
        dt = min(timed(score, 1, device) for _ in range(a.repeats))
        emit(
            {
                "benchmark": "phyre_scoring",
                "precision": precision,
                "candidates_per_s": round(a.candidates / dt, 1),
                **flop_rates(flops, dt, machine_info, precision),
                "config": config,
                "machine": machine_info,
            }
        )
    # the simulator: valid random attempts, fast path (no recording), over the first task of each template
    tasks = [ps.make_task(t, 0) for t in range(len(ps.TEMPLATE_NAMES))]
    cand = ps.sample_actions(4 * a.simulations, 0)
    t0, n = time.perf_counter(), 0
    for i in range(a.simulations):
        task = tasks[i % len(tasks)]
        act = cand[i]
        if ps.is_valid(task, act):
            ps.simulate(task, act, fps=None)
            n += 1
    dt = time.perf_counter() - t0
    emit({"benchmark": "phyre_simulation", "attempts_per_s": round(n / dt, 1), "attempts": n,
          "valid_share": round(n / a.simulations, 3), "machine": machine_info})  # fmt: skip
    t0 = time.perf_counter()
    valid = [ps.valid_mask(task, ps.sample_actions(a.candidates, 1)) for task in tasks]
    dt = time.perf_counter() - t0
    share = round(float(np.mean([v.mean() for v in valid])), 3)
    emit({"benchmark": "phyre_validity", "actions_per_s": round(len(tasks) * a.candidates / dt, 1),
          "valid_share": share, "machine": machine_info})  # fmt: skip


if __name__ == "__main__":
    main()
