"""Training under torchrun (2 CPU processes, gloo) equals one process on the combined batch.

The runs go through the real command line: ``torchrun --nproc_per_node 2 driver.py train ...``,
where driver.py is ``cjepa`` plus a dump of each process's final parameters.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import oracle_data

from causaljepa import cli
from causaljepa.data.sampling import ItemStream
from causaljepa.training.checkpoint import load_checkpoint
from causaljepa.training.distributed import Dist, batch_mean, from_env

DRIVER = """
import sys
import torch
from causaljepa import cli
from causaljepa.training import loop

original = loop.Trainer.export

def export(self, name):
    torch.save(self.model.state_dict(), self.run_dir.parent / f"{self.run_dir.name}.rank{self.dist.rank}.pt")
    return original(self, name)

loop.Trainer.export = export
cli.main(sys.argv[1:])
"""


NAN_DRIVER = """
import os, sys
from causaljepa import cli
from causaljepa.models import predictor

original, calls = predictor.CJEPAPredictor.training_loss, [0]

def training_loss(self, batch):  # step 3's loss is nan on rank 1 only
    calls[0] += 1
    loss, metrics = original(self, batch)
    if calls[0] == 3 and os.environ["RANK"] == "1":
        loss = loss * float("nan")
    return loss, metrics

predictor.CJEPAPredictor.training_loss = training_loss
cli.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Smoke clevrer_sim data and its oracle slots, and the driver script."""
    base = tmp_path_factory.mktemp("ddp")
    oracle_data(base)
    (base / "driver.py").write_text(DRIVER)
    (base / "nan_driver.py").write_text(NAN_DRIVER)
    return base


def _run(
    world: Path, procs: int, argv: list[str], cwd: Path, driver: str = "driver.py", ok: bool = True
) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    p = subprocess.run(
        [*launch, str(world / driver), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 or not ok, (
        f"{procs} process(es): rc {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    )
    return p


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/loss"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


COMMANDS = {
    # object masking hides a varying number of objects per window: the loss is a mean over the
    # hidden tokens of the global batch, not the average of the two processes' means
    "predictor": ["train", "preset=smoke", "slots=oracle", "train.steps=3", "train.batch_size=8"],
    "encoder": ["train-encoder", "preset=smoke", "train.steps=3", "train.batch_size=4"],
}


def _seen(state: dict) -> dict:
    """The encoder's parameters less those with a zero true gradient: the decoder's alpha-logit
    bias (the same for every slot), the slot LayerNorm's bias before the bias-free query
    projection, and the key third of the slot predictor's qkv bias (it shifts every logit of a
    query alike). Their gradients measure about 1e-11 against 1e-1 elsewhere."""
    out = {k: v for k, v in state.items() if k not in ("decoder.logit.bias", "corrector.norm_slots.bias")}
    qkv = out.pop("predictor.qkv.bias")
    d = len(qkv) // 3
    out["predictor.qkv.bias[q,v]"] = torch.cat([qkv[:d], qkv[2 * d :]])
    return out


@pytest.mark.parametrize("what", sorted(COMMANDS))
def test_two_processes_train_what_one_process_trains_on_the_combined_batch(world, what):
    common = [f"data.root={world / 'ds'}", "trainer.precision=fp32", "trainer.progress=false"]
    argv = [*COMMANDS[what], *common]
    _run(world, 1, [*argv, f"out={world / what}_1"], world / f"{what}_cwd1")
    p = _run(world, 2, [*argv, f"out={world / what}_2"], world / f"{what}_cwd2")

    rank0 = torch.load(world / f"{what}_2.rank0.pt", weights_only=True)
    rank1 = torch.load(world / f"{what}_2.rank1.pt", weights_only=True)
    for k in rank0:  # the all-reduced gradients and the same optimizer: the same bits
        assert torch.equal(rank0[k], rank1[k]), f"{what}: {k} differs between the two processes"
    single = torch.load(world / f"{what}_1.rank0.pt", weights_only=True)
    # parameters whose true gradient is zero (a shift the softmax over slots cannot see) get
    # float noise as gradient, which Adam scales up to a full step: 1 and 2 processes sum it in
    # another order, so they differ there by up to lr x steps without any error in the sync
    err = _max_diff(*(_seen(d) if what == "encoder" else d for d in (rank0, single)))
    assert err < 1e-5, f"{what}: 2 processes vs 1 on the combined batch: max |param diff| = {err:.3g}"

    # rank 0 wrote the run, once: one export, one Hydra folder, the same loss curve
    kind = "predictor" if what == "predictor" else "encoder"
    exported = load_checkpoint(world / f"{what}_2" / f"{kind}.pt", kind)
    assert exported["step"] == 3
    assert _max_diff(exported["model"], rank0) == 0.0
    assert len(list((world / f"{what}_cwd2").rglob(".hydra"))) == 1
    assert _losses(world / f"{what}_2") == pytest.approx(_losses(world / f"{what}_1"), rel=1e-5)
    assert p.stdout.count(f"{kind}: ") == 1, "only rank 0 reports"


def test_a_nan_on_one_process_stops_every_process_with_the_last_good_state_saved(world):
    out = world / "nan_run"
    argv = [*COMMANDS["predictor"], f"data.root={world / 'ds'}", "trainer.progress=false", f"out={out}"]
    p = _run(world, 2, [*argv, "train.ckpt_every=100"], world / "nan_cwd", driver="nan_driver.py", ok=False)
    said = p.stdout + p.stderr
    assert p.returncode != 0
    assert "step 3 of 3: the training loss is nan" in said  # rank 1
    assert "step 3 of 3: the training loss is not finite on another process" in said  # rank 0
    assert load_checkpoint(out / "checkpoints" / "last.pt", "predictor")["step"] == 2  # written whole
    assert not (out / "checkpoints" / "last.partial.pt").exists()


def test_the_stream_splits_the_global_batch():
    one = ItemStream(num_videos=5, starts=4, batch_size=6, seed=3)  # 20 items: a multiple of 2
    index = one.index
    two = [ItemStream(5, 4, batch_size=6, seed=3, d=Dist(rank=r, world_size=2)) for r in (0, 1)]
    seen = []
    for step in range(7):  # across epoch boundaries (20 items, 6 a step)
        whole = one.items(step)
        shards = [s.items(step) for s in two]
        assert [whole[i] for i in range(0, 6, 2)] == shards[0]  # rank r holds items r, r + 2, ...
        assert [whole[i] for i in range(1, 6, 2)] == shards[1]
        seen += whole
    assert sorted(seen[:20]) == sorted(index[i] for i in range(20)), "an epoch reads every item once"
    assert one.items(5) == ItemStream(5, 4, batch_size=6, seed=3).items(5), "a function of the step"
    assert one.items(0) != ItemStream(5, 4, batch_size=6, seed=4).items(0)


def test_global_batch_size_must_divide():
    with pytest.raises(ValueError, match=r"batch_size=7 is the global batch and must be divisible by the 2"):
        Dist(rank=0, world_size=2).shard(7)
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WORLD_SIZE", "2")
            mp.setenv("RANK", "2")
            from_env()


def test_batch_mean_outside_training_is_the_mean():
    x = torch.tensor([1.0, 2.0, 6.0])
    assert float(batch_mean(x)) == 3.0
    assert float(batch_mean(x[:0])) == 0.0


def test_commands_that_do_not_run_distributed_refuse_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit, match="cjepa eval phyre runs in one process, but WORLD_SIZE=2"):
        cli.main(["eval", "phyre"])
