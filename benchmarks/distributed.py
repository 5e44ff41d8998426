"""DDP equivalence and resume equality, measured on the built-in data.

    python benchmarks/distributed.py [--steps 30] [--interrupt-at 17]

On smoke clevrer_sim data and its oracle slots (made in a temporary directory):

- ddp_equivalence: ``cjepa train`` (predictor=small) and ``cjepa train-encoder``
  (preset=smoke) in one process and under ``torchrun --nproc_per_node 2`` (gloo) on the same
  global batch, fp32; the largest parameter difference after --steps steps (absolute, and
  relative to the largest parameter), the largest loss-curve difference, and the speed of each.
- resume_equality: the predictor stopped by SIGTERM in the middle of step --interrupt-at
  (the trainer saves and exits with 143), resumed with resume=auto, against the run that was
  never stopped: how many tensors and loss-curve rows differ, and the largest difference.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from causaljepa.benchmarking import emit, machine
from causaljepa.training.checkpoint import load_checkpoint

SIGNAL_AT_STEP = """
import os, signal, sys
from causaljepa import cli
from causaljepa.training import loop

at, original, calls = int(sys.argv[1]), loop.train_step, [0]

def train_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

loop.train_step = train_step
cli.main(sys.argv[2:])
"""


def cjepa(argv: list[str], cwd: Path, procs: int = 1, script: list[str] | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))  # the same cores either way
    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    p = subprocess.run(
        [*launch, *(script or ["-m", "causaljepa"]), *argv], cwd=cwd, env=env, capture_output=True, text=True
    )
    if p.returncode not in (0, 143):
        raise RuntimeError(f"cjepa {argv[0]} ({procs} processes) failed:\n{p.stderr[-3000:]}")
    return p.returncode


def curve(run: Path, name: str = "train/loss") -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["name"] == name}


def compare(a: dict, b: dict) -> dict:
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    scale = max(float(v.float().abs().max()) for v in a.values())
    return {
        "tensors": len(a),
        "tensors_differing": sum(d > 0 for d in diffs.values()),
        "max_abs_param_diff": max(diffs.values()),
        "max_rel_param_diff": max(diffs.values()) / scale,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--interrupt-at", type=int, default=17)
    args = ap.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "ds"
        cjepa(["data", "generate", "preset=smoke", f"data.root={root}"], tmp)
        cjepa(["oracle-slots", f"data.root={root}"], tmp)
        common = [
            f"data.root={root}",
            "trainer.precision=fp32",
            "trainer.progress=false",
            f"train.steps={args.steps}",
        ]
        jobs = {
            "predictor": ["train", "slots=oracle", "predictor=small", "predictor.history=3",
                          "predictor.future=2", "train.batch_size=16", "train.log_every=1",
                          "train.val_every=0"],
            "encoder": ["train-encoder", "preset=smoke", "train.batch_size=8", "train.log_every=1",
                        "train.val_every=0"],
        }  # fmt: skip
        for kind, argv in jobs.items():
            runs = {}
            for procs in (1, 2):
                runs[procs] = tmp / f"{kind}_{procs}"
                cjepa([*argv, *common, f"out={runs[procs]}"], tmp, procs)
            weights = {p: load_checkpoint(r / f"{kind}.pt", kind)["model"] for p, r in runs.items()}
            losses = {p: curve(r) for p, r in runs.items()}
            speed = {p: curve(r, "train/steps_per_s")[args.steps] for p, r in runs.items()}
            line = {
                "bench": "ddp_equivalence",
                "model": kind,
                "processes": [1, 2],
                "steps": args.steps,
                **compare(weights[1], weights[2]),
                "max_loss_curve_diff": max(abs(losses[1][s] - losses[2][s]) for s in losses[1]),
                "steps_per_s": {str(p): round(v, 2) for p, v in speed.items()},
                "machine": info,
            }
            emit(line)

        script = tmp / "signal_at_step.py"
        script.write_text(SIGNAL_AT_STEP)
        argv = [*jobs["predictor"], *common, "train.ckpt_every=5"]
        cjepa([*argv, f"out={tmp / 'straight'}"], tmp)
        rc = cjepa([*argv, f"out={tmp / 'stopped'}"], tmp, script=[str(script), str(args.interrupt_at)])
        saved = load_checkpoint(tmp / "stopped" / "checkpoints" / "last.pt", "predictor")["step"]
        cjepa([*argv, f"out={tmp / 'stopped'}", "resume=auto"], tmp)
        a = load_checkpoint(tmp / "straight" / "predictor.pt", "predictor")["model"]
        b = load_checkpoint(tmp / "stopped" / "predictor.pt", "predictor")["model"]
        la, lb = curve(tmp / "straight"), curve(tmp / "stopped")
        emit(
            {
                "bench": "resume_equality",
                "model": "predictor",
                "steps": args.steps,
                "sigterm_during_step": args.interrupt_at,
                "exit_code": rc,
                "saved_at_step": saved,
                **compare(a, b),
                "loss_rows": len(la),
                "loss_rows_differing": sum(la[s] != lb.get(s) for s in la) + len(set(lb) - set(la)),
                "bitwise_equal": all(torch.equal(a[k], b[k]) for k in a) and la == lb,
                "machine": info,
            }
        )


if __name__ == "__main__":
    main()
