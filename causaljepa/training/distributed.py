"""Several processes, one model: torchrun, DistributedDataParallel and the global batch.

``torchrun --nproc_per_node N [--nnodes M ...] -m causaljepa train-encoder|train ...`` starts
one process per device; each reads RANK, WORLD_SIZE and LOCAL_RANK from its environment.
The process group uses gloo on CPU and nccl on CUDA (one GPU per process: cuda:LOCAL_RANK).

What every process does, so that N processes train exactly the model one process would
train on the combined batch (tests/test_distributed.py checks it):

- ``train.batch_size`` is the global batch; each process takes batch_size / N items of it.
  The items come from a ``torch.utils.data.DistributedSampler`` over every window (or clip)
  of the store, one shuffled epoch after another (``causaljepa.data.sampling``); the union
  of the N processes' items at a step is the single-process batch at that step.
- Per-item random draws (the predictor's masks) are drawn for the whole global batch from
  the trainer's generator, identical on every process, and each takes its items' draws.
- The loss is computed through the DDP-wrapped module, so the backward pass all-reduces
  the gradients. A loss that is a mean over a variable number of tokens per item (the
  predictor's hidden tokens) is a mean over the *global* batch (``batch_mean``): DDP
  averages gradients over processes, which is the global mean only when every process
  holds the same number of tokens.
- Rank 0 alone logs, validates, writes checkpoints and the exported model; every process
  resumes from the same checkpoint (on several nodes it must be on a shared file system).
- A stop (SIGINT or SIGTERM, which torchrun forwards to every process) and a non-finite
  loss are agreed on by all processes at the same step (``any_rank``), so none is left
  waiting in a collective.

Statistics over the batch that are not means (SIGReg) are computed per process over its
items. Every process draws dropout from the same global RNG stream (so a checkpoint's
single RNG state resumes all of them): dropout masks repeat across processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 validates and saves while the others wait


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> int:
        """Items per process of a global batch of ``batch_size``."""
        if batch_size % self.world_size:
            fit = batch_size - batch_size % self.world_size or self.world_size
            raise ValueError(
                f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                f"{self.world_size} training processes (e.g. {fit})"
            )
        return batch_size // self.world_size


ONE = Dist()  # a single process


def from_env() -> Dist:
    """RANK, WORLD_SIZE, LOCAL_RANK as torchrun sets them; one process where they are absent."""
    if "WORLD_SIZE" not in os.environ:
        return Dist()
    try:
        rank, world, local = (int(os.environ.get(k, "0")) for k in ENV)
    except ValueError as e:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {e}") from e
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(
            f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: "
            "need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"
        )
    return Dist(rank, world, local)


def setup(device_type: str) -> Dist:
    """Join the process group (once) where torchrun started several processes; returns this
    process's place. Idempotent: a group already initialised is reused."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    d = from_env()
    if not d.active:
        return d
    if device_type == "cuda":
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group(
        backend="nccl" if device_type == "cuda" else "gloo",
        rank=d.rank,
        world_size=d.world_size,
        timeout=TIMEOUT,
    )
    return d


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every process if ``flag`` is True on any (a collective: every process calls it)."""
    if not d.active:
        return flag
    t = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(metrics: dict[str, float], d: Dist) -> dict[str, float]:
    """Each value averaged over the processes (a collective; the same keys on every process)."""
    if not d.active or not metrics:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return dict(zip(keys, (t / d.world_size).tolist(), strict=True))


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def broadcast(obj, d: Dist):
    """Rank 0's ``obj`` on every process (a picklable value)."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_global_batch = False


@contextlib.contextmanager
def global_batch():
    """Inside, ``batch_mean`` averages over the items of every process (the trainer's
    training step under DDP); outside (validation, evaluation, one process) over the local ones."""
    global _global_batch
    before, _global_batch = _global_batch, dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        _global_batch = before


def batch_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` (1-D: the selected tokens of this process's items) over the global
    batch, scaled so that DDP's average of the processes' gradients is that mean's gradient:
    sum_local x world_size / count_global. Outside ``global_batch``, or in one process: the mean.
    An empty selection everywhere gives 0."""
    if not _global_batch:
        return values.mean() if values.numel() else values.new_zeros(())
    count = torch.tensor([float(values.numel())], device=values.device)
    dist.all_reduce(count)
    return values.sum() * dist.get_world_size() / count.clamp_min(1.0).squeeze(0)
