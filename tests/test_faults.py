"""Faults during training: signals, SIGKILL during a checkpoint write, non-finite losses.

The signal tests run the real command (``python -m causaljepa train ...``) in a subprocess
that sends itself the signal in the middle of a chosen step, through the trainer's own
handler; the run is then resumed with resume=auto and compared, tensor for tensor and row
for row, with a run that was never interrupted.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import oracle_data

from causaljepa.training.checkpoint import load_checkpoint
from causaljepa.training.loop import NonFiniteLossError, OptimConfig, Trainer, TrainerConfig

SIGNAL_DRIVER = """
import os, signal, sys
from causaljepa import cli
from causaljepa.training import loop

signum, at_call, times = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
original, calls = loop.train_step, [0]

def train_step(*args, **kwargs):  # the signal arrives (`times` times) while step `at_call` runs
    calls[0] += 1
    if calls[0] == at_call:
        for _ in range(times):
            os.kill(os.getpid(), signum)
    return original(*args, **kwargs)

loop.train_step = train_step
cli.main(sys.argv[4:])
"""

KILL_DRIVER = """
import sys, torch
from causaljepa.training.checkpoint import save_checkpoint

path = sys.argv[1]
for step in range(10**6):  # ~32 MB a checkpoint, every tensor filled with its step
    w = torch.full((8 * 2**20,), float(step))
    save_checkpoint(path, kind="toy", model_config={}, model={"w": w}, step=step)
    print(step, flush=True)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    oracle_data(base)
    (base / "signal_driver.py").write_text(SIGNAL_DRIVER)
    (base / "kill_driver.py").write_text(KILL_DRIVER)
    return base


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _rows(run: Path) -> list[tuple[int, str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [
            (int(r["step"]), r["name"], r["value"])
            for r in csv.DictReader(f)
            if r["name"] != "train/steps_per_s"  # wall-clock: the one figure that may differ
        ]


def _train_argv(world: Path, out: Path) -> list[str]:
    return [
        "train", "preset=smoke", "slots=oracle", f"data.root={world / 'ds'}", f"out={out}",
        "train.steps=8", "train.ckpt_every=3", "train.val_every=4", "trainer.progress=false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def straight(world) -> Path:
    out = world / "straight"
    p = subprocess.run(
        [sys.executable, "-m", "causaljepa", *_train_argv(world, out)],
        cwd=world, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    ("sig", "times"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 3)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-repeated"],  # a scheduler and torchrun may both signal
)
def test_a_signal_saves_exits_cleanly_and_resumes_to_the_same_run(world, straight, sig, times):
    out = world / f"stopped_{sig.name}_{times}"
    driver = [sys.executable, str(world / "signal_driver.py"), str(int(sig)), "5", str(times)]
    p = subprocess.run(
        [*driver, *_train_argv(world, out)],
        cwd=world, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 128 + int(sig), (p.returncode, p.stderr[-3000:])
    assert (
        f"interrupted at step 5; resume with resume={out / 'checkpoints' / 'last.pt'}" in p.stdout + p.stderr
    )
    assert "Traceback" not in p.stderr, "a clean exit, not a crash"
    last = load_checkpoint(out / "checkpoints" / "last.pt", "predictor")
    assert last["step"] == 5  # step 5 was finished, then the state saved
    assert not (out / "predictor.pt").exists()

    p = subprocess.run(
        [sys.executable, "-m", "causaljepa", *_train_argv(world, out), "resume=auto"],
        cwd=world, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout and "at step 5" in p.stdout
    want = load_checkpoint(straight / "predictor.pt", "predictor")["model"]
    got = load_checkpoint(out / "predictor.pt", "predictor")["model"]
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, f"the resumed run ends with other weights: {differ[:3]}"
    assert _rows(out) == _rows(straight), "the loss curve and validations are the uninterrupted run's"


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(world, tmp_path):
    out = tmp_path / "hard"
    driver = [sys.executable, str(world / "signal_driver.py"), str(int(signal.SIGINT)), "5", "2"]
    p = subprocess.run(
        [*driver, *_train_argv(world, out)],
        cwd=world,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 130, p.stderr[-3000:]
    last = out / "checkpoints" / "last.pt"
    said = f"stopped at once (a second Ctrl-C) after step 4, without saving; {last} holds the last checkpoint"
    assert said in p.stdout + p.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt", "predictor")["step"] == 3  # ckpt_every=3


def test_sigkill_during_checkpoint_writes_never_leaves_a_torn_checkpoint(world, tmp_path):
    path = tmp_path / "last.pt"
    for trial, delay in enumerate((0.0, 0.013, 0.031, 0.057, 0.09)):
        proc = subprocess.Popen(
            [sys.executable, str(world / "kill_driver.py"), str(path)],
            stdout=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        written = -1
        while written < 1 + trial:  # a few complete checkpoints, then kill it mid-write
            line = proc.stdout.readline()
            assert line, "the writer died"
            written = int(line)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        ckpt = load_checkpoint(path, "toy")  # whole and readable
        assert ckpt["step"] >= written
        assert torch.equal(ckpt["model"]["w"], torch.full((8 * 2**20,), float(ckpt["step"])))
        path.unlink()


class Toy(torch.nn.Module):
    """A linear regression whose loss (or gradient) turns non-finite at a chosen call."""

    def __init__(self, bad_call: int, bad: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))
        self.calls, self.bad_call, self.bad = 0, bad_call, bad

    def training_loss(self, x):
        self.calls += 1
        loss = (x @ self.w - 1.0).pow(2).mean()
        if self.calls == self.bad_call:
            if self.bad == "loss":
                loss = loss * float("nan")
            else:  # a finite loss whose gradient is not: d sqrt(|u|) / du at u = 0
                loss = loss + (self.w.sum() * 0.0).abs().sqrt()
        return loss, {}


def _toy_trainer(run: Path, bad_call: int, bad: str) -> Trainer:
    # warm-up over the first 3 steps: steps 1 and 2 have the same learning rate in a 2-step run
    optim = OptimConfig(
        steps=6, batch_size=2, lr=0.1, warmup_steps=3, log_every=1, val_every=0, ckpt_every=100
    )
    cfg = TrainerConfig(precision="fp32", progress=False)
    return Trainer(Toy(bad_call, bad), optim, cfg, run, kind="toy", model_config={}, seed=0)


def _toy_batch(step: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(2, 4, generator=gen)


@pytest.mark.parametrize(
    ("bad", "message"), [("loss", "the training loss is nan"), ("grad", "the gradient norm is")]
)
def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, bad, message):
    clean = _toy_trainer(tmp_path / "clean", bad_call=0, bad=bad)
    clean.optim = replace(clean.optim, steps=2)
    clean.fit(_toy_batch)

    t = _toy_trainer(tmp_path / "run", bad_call=3, bad=bad)
    with pytest.raises(NonFiniteLossError, match=rf"step 3 of 6: {message}") as e:
        t.fit(_toy_batch)
    assert f"the last good state (after step 2) is saved in {t.checkpoint_path}" in str(e.value)
    last = load_checkpoint(t.checkpoint_path, "toy")
    assert last["step"] == 2
    assert torch.isfinite(last["model"]["w"]).all()
    assert torch.equal(last["model"]["w"], clean.model.w.detach()), "the state before the bad step"
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f) if r["name"] == "train/loss"]
    assert logged == [1, 2]
    assert all(math.isfinite(float(v)) for v in last["model"]["w"])
