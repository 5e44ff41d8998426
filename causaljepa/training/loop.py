"""The training loop shared by every model: schedule, precision, logging, checkpoints, resume.

A model trained here has ``training_loss(batch) -> (loss, metrics)``. The loop owns what
is the same for every model: AdamW with linear warm-up and cosine decay, gradient
clipping, bf16 autocast, optional torch.compile, pinned-memory copies to the GPU, a CSV and
TensorBoard log, periodic validation, a progress bar, atomic checkpoints every
``ckpt_every`` steps and when the run is interrupted (SIGINT, SIGTERM), resume from such a
checkpoint to the same numbers, a stop with the last good state saved when the loss or the
gradient is not finite, and DistributedDataParallel under torchrun
(``causaljepa.training.distributed``).

Run directory:

    metrics.csv           one row per logged step (train) or validation (val/...)
    tb/                   TensorBoard events
    checkpoints/last.pt   the full training state (resume from here)
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io import write_json_atomic
from . import distributed
from .allocator import keep_freed_memory
from .checkpoint import checkpoint_path, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import ONE, Dist

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("cpu", "cuda")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether this machine computes bf16 natively on ``device_type``: a CUDA GPU with bf16, or a
    CPU with AVX512-BF16 or AMX. Elsewhere autocast emulates bf16, and a training step is many
    times slower than in fp32 (12.6 times for the small predictor's step on an AVX2 CPU, README)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    probes = (getattr(torch.cpu, name, None) for name in names)
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(precision: str, device_type: str, name: str = "precision") -> str:
    """``auto`` is bf16 where the device computes it natively (``native_bf16``) and fp32 elsewhere;
    fp32 and bf16 are kept as asked. ``name``: the config key a wrong value is reported under."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device_type) else "fp32"


@dataclass(frozen=True)
class TrainerConfig:
    """Where and how to compute (configs/trainer/*.yaml)."""

    device: str = "cpu"  # cpu | cuda
    # auto | fp32 | bf16 (autocast; weights and optimizer stay fp32); auto: bf16 where native
    precision: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default (one per core)
    progress: bool = True  # a tqdm bar on the terminal
    compile: bool = False  # torch.compile the training step (the first steps pay the compilation)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"trainer.device must be one of {DEVICES}, got {self.device!r}")
        # record what runs: checkpoints and fingerprints name fp32 or bf16, never auto
        resolved = resolve_precision(self.precision, self.device, "trainer.precision")
        object.__setattr__(self, "precision", resolved)
        if self.threads < 0:
            raise ValueError(f"trainer.threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation schedule (the ``train`` section of a training command)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 200
    final_lr_ratio: float = 0.0  # the cosine decays to lr * final_lr_ratio at the last step
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    log_every: int = 25
    val_every: int = 250  # 0: validate only at the end
    ckpt_every: int = 250

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "val_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"train.final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)  # the last step, steps - 1, ends the decay
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.final_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cpu_numerics() -> dict:
    """What sets the last digits of a CPU run besides the seed: the thread count (it splits the
    reductions) and the instruction set the kernels were chosen for (AVX2, AVX512, ...).
    Training is chaotic enough that such digits grow into different figures, so every
    checkpoint records both (README, "Same seed, same numbers")."""
    return {"cpu_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _say_numerics_differ(path, before: dict, now: dict) -> None:
    """A note when a CPU run resumes with another thread count or instruction set than it had."""
    differ = {k: (before[k], now[k]) for k in cpu_numerics() if k in before and before[k] != now[k]}
    if not differ:
        return
    what = ", ".join(f"{k} {a} then, {b} now" for k, (a, b) in differ.items())
    hint = ""
    if "cpu_threads" in differ:
        hint = f" (trainer.threads={before['cpu_threads']} gives the threads back)"
    print(
        f"note: {path} was trained with other CPU numerics ({what}): the run continues, but not "
        f"to the numbers of an uninterrupted run{hint}"
    )


class NonFiniteLossError(FloatingPointError):
    """The training loss or the gradient norm is nan or inf."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM; ``signum`` says which. ``hard``: a second Ctrl-C
    cut a step short, so the state in memory is not whole and was not saved."""

    def __init__(self, signum: int, hard: bool = False):
        super().__init__(f"stopped by signal {signum}")
        self.signum, self.hard = signum, hard

    def __reduce__(self):  # pickled whole (the main job's stages in processes of their own send it back)
        return type(self), (self.signum, self.hard)


def resolve_device(cfg: TrainerConfig, local_rank: int = 0) -> torch.device:
    """The training device (cuda:LOCAL_RANK under torchrun on GPUs)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is available; use trainer=cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory(cfg.device)  # about 1.5x faster CPU steps; see causaljepa/training/allocator.py
    return torch.device("cuda", local_rank) if cfg.device == "cuda" else torch.device("cpu")


def to_device(batch, device: torch.device):
    """Tensors of a batch (a tensor, or dicts/lists/tuples of them) on ``device``; on CUDA through
    pinned host memory, so the copy is asynchronous."""
    if isinstance(batch, torch.Tensor):
        if device.type != "cuda":
            return batch
        return batch.pin_memory().to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class LossModule(torch.nn.Module):
    """forward(batch) = model.training_loss(batch): the module DDP and torch.compile wrap, so the
    loss is computed through the wrapper and the backward pass synchronises the gradients."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.training_loss(batch)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, or nothing for fp32 (``auto``: see ``resolve_precision``)."""
    if resolve_precision(precision, device.type) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(
    model: torch.nn.Module,
    batch,
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    grad_clip: float,
    device: torch.device,
    precision: str,
    forward: Callable | None = None,
    dist: Dist = ONE,
) -> dict[str, float]:
    """One optimizer step on one batch; returns the model's metrics plus loss, lr and grad norm.

    ``forward`` computes (loss, metrics) from the batch (default ``model.training_loss``; the
    trainer passes the DDP-wrapped or compiled ``LossModule``). A loss that is not finite on
    any process, or a gradient norm that is not finite, raises NonFiniteLossError before the
    parameters or the optimizer state change.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    with autocast(device, precision), distributed.global_batch():
        loss, metrics = (model.training_loss if forward is None else forward)(batch)
    finite = bool(torch.isfinite(loss.detach()))
    if distributed.any_rank(not finite, dist):
        value = f"{loss.item()}" if not finite else "not finite on another process"
        raise NonFiniteLossError(f"the training loss is {value}; lower train.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    if not torch.isfinite(norm):  # the gradients are all-reduced: every process sees the same norm
        loss_value = "" if dist.active else f" (loss {float(loss.detach())})"  # a share under DDP
        raise NonFiniteLossError(
            f"the gradient norm is {float(norm)}{loss_value}; lower train.lr or check the data"
        )
    optimizer.step()
    return {"loss": float(loss.detach()), "lr": lr, "grad_norm": float(norm), **metrics}


class RunLog:
    """metrics.csv plus TensorBoard. A resumed run drops CSV rows after the checkpoint's step."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = run_dir / "metrics.csv"
        kept: list[dict] = []
        if resume_step is not None and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "name", "value"])
            w.writeheader()
            w.writerows(kept)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def log(self, step: int, metrics: dict[str, float], prefix: str) -> None:
        new = [{"step": step, "name": f"{prefix}/{k}", "value": repr(float(v))} for k, v in metrics.items()]
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=["step", "name", "value"]).writerows(new)
        for r in new:
            self.tb.add_scalar(r["name"], float(r["value"]), step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


class Trainer:
    """Runs ``model.training_loss`` over batches from ``next_batch(step, generator)``.

    ``kind`` and ``model_config`` go into every checkpoint so that it can be rebuilt and
    checked; ``extra`` (plain values: data paths, the resolved command config) too.

    ``shards=True`` says that ``next_batch`` returns this process's share of the global batch
    (``self.dist`` says which): only such trainings run under torchrun, wrapped in
    DistributedDataParallel. Others refuse to start there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        trainer: TrainerConfig,
        run_dir: str | os.PathLike,
        *,
        kind: str,
        model_config: dict,
        seed: int,
        extra: dict | None = None,
        shards: bool = False,
    ):
        self.dist = distributed.setup(trainer.device)
        if self.dist.active and not shards:
            raise RuntimeError(
                f"{kind} training runs in one process; it was started with WORLD_SIZE={self.dist.world_size} "
                "(torchrun): start it without torchrun. cjepa train-encoder and cjepa train run distributed"
            )
        self.device = resolve_device(trainer, self.dist.local_rank)
        self.model = model.to(self.device)
        self.forward: Callable = LossModule(self.model)
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # DDP broadcasts rank 0's weights to the other processes here
            self.forward = DistributedDataParallel(self.forward, device_ids=ids)
        if trainer.compile:
            self.forward = torch.compile(self.forward)
        self.optim, self.trainer = optim, trainer
        self.run_dir = Path(run_dir)
        self.kind, self.model_config = kind, model_config
        self.extra = {**(extra or {}), **cpu_numerics()}
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=optim.lr,
        )
        self.generator = torch.Generator().manual_seed(seed)  # draws the training batches
        torch.manual_seed(seed)
        self.step = 0
        self.last_val: dict[str, float] = {}

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir)

    def save(self, path: Path | None = None) -> Path:
        """Write the training state (rank 0 only: the processes hold the same state)."""
        path = path or self.checkpoint_path
        if not self.dist.is_main:
            return path
        return save_checkpoint(
            path,
            kind=self.kind,
            model_config=self.model_config,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            step=self.step,
            rng=rng_state(self.generator),
            extra={**self.extra, "optim": asdict(self.optim), "last_val": self.last_val},
        )

    def resume(self, path: str | os.PathLike) -> None:
        ckpt = load_checkpoint(path, self.kind)
        if ckpt["model_config"] != self.model_config:
            diff = {
                k: (ckpt["model_config"].get(k), v)
                for k, v in self.model_config.items()
                if ckpt["model_config"].get(k) != v
            }
            raise ValueError(f"{path}: was trained with another model config; (checkpoint, now): {diff}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], self.generator)
        self.step = int(ckpt["step"])
        self.last_val = dict(ckpt["extra"].get("last_val", {}))
        if self.dist.is_main:
            print(f"resumed from {path} at step {self.step}")
            if self.device.type == "cpu":
                _say_numerics_differ(path, ckpt["extra"], self.extra)

    def export(self, name: str) -> Path:
        """The trained weights as <run_dir>/<name> (what later commands load: config, weights,
        step, the last validation and ``extra``), and the last validation as val.json (rank 0)."""
        out = self.run_dir / name
        if self.dist.is_main:
            save_checkpoint(
                out,
                kind=self.kind,
                model_config=self.model_config,
                model=self.model.state_dict(),
                step=self.step,
                extra={"val": self.last_val, **self.extra},
            )
            write_json_atomic(self.run_dir / "val.json", self.last_val)
        distributed.barrier(self.dist)  # the others return once the files are there
        return out

    def train(
        self,
        next_batch: Callable[[int, torch.Generator], object],
        validate: Callable[[torch.nn.Module], dict[str, float]] | None,
        export: str,
        resume: str | os.PathLike | None = None,
    ) -> Path:
        """A whole training run: resume from ``resume`` where given, ``fit``, and ``export`` the
        weights as <run_dir>/<export>; returns that path (the last validation is ``last_val``)."""
        if resume is not None:
            self.resume(resume)
        self.fit(next_batch, validate)
        return self.export(export)

    def fit(
        self,
        next_batch: Callable[[int, torch.Generator], object],
        validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Train up to ``optim.steps``; returns the last validation metrics (rank 0's; {} on others).

        ``next_batch(step, generator)``: the batch of optimizer step ``step`` (0-based); random
        draws come from ``generator``, whose state the checkpoints keep.
        """
        from tqdm import tqdm

        o = self.optim
        main = self.dist.is_main
        log = None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log = RunLog(self.run_dir, resume_step=self.step if self.step else None)
        bar = tqdm(
            total=o.steps,
            initial=self.step,
            disable=not (self.trainer.progress and main),
            desc=self.kind,
            unit="step",
        )
        t_start, done_at_start = time.perf_counter(), self.step
        self._batch_rng: dict | None = None
        try:
            # the handlers stay in place while the state is saved: a pre-emption that signals
            # again (or torchrun, stopping the others) cannot kill the save half-way
            with _deferred_interrupts() as stop:
                try:
                    self._loop(next_batch, validate, log, bar, t_start, done_at_start, stop)
                except KeyboardInterrupt as e:
                    if not isinstance(e, TrainingInterrupted):  # raised by code in the step, not a signal
                        e = TrainingInterrupted(signal.SIGINT)
                    self._stopped(e, bar)
                    raise e from None
                except NonFiniteLossError as e:
                    self._save_and_wait()
                    saved = f"is saved in {self.checkpoint_path}" if main else "is saved by rank 0"
                    raise NonFiniteLossError(
                        f"step {self.step + 1} of {o.steps}: {e}. Training stopped; the last good state "
                        f"(after step {self.step}) {saved}"
                    ) from None
        finally:
            bar.close()
            if log is not None:
                log.close()
        distributed.barrier(self.dist)  # every process leaves training at the same step
        return self.last_val

    def _save_and_wait(self) -> None:
        """Save the state as it was before the step in progress (which did not count: its batch
        is drawn again on resume); every process waits until rank 0 has written it, so none
        exits first (torchrun would then stop rank 0 in the middle of the save)."""
        if self._batch_rng is not None:
            set_rng_state(self._batch_rng, self.generator)
            self._batch_rng = None
        self.save()
        distributed.barrier(self.dist)

    def _stopped(self, e: TrainingInterrupted, bar) -> None:
        """A stop by signal: save and say how to resume; after a hard stop, say what is on disk."""
        if e.hard:  # a step, a validation or a save was cut short: the state in memory is not whole
            last = self.checkpoint_path
            kept = f"{last} holds the last checkpoint" if last.exists() else "no checkpoint was written"
            if self.dist.is_main:
                bar.write(f"stopped at once (a second Ctrl-C) after step {self.step}, without saving; {kept}")
            return
        self._save_and_wait()
        if self.dist.is_main:
            bar.write(f"interrupted at step {self.step}; resume with resume={self.checkpoint_path}")

    def _loop(self, next_batch, validate, log, bar, t_start, done_at_start, stop) -> None:
        o, d = self.optim, self.dist
        while self.step < o.steps:
            # Ctrl-C or SIGTERM between two steps (on any process): the state is whole
            if distributed.any_rank(stop.is_set(), d):
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            self._batch_rng = rng_state(self.generator)  # restored if this step is cut short
            batch = to_device(next_batch(self.step, self.generator), self.device)
            metrics = train_step(
                self.model,
                batch,
                self.optimizer,
                lr=lr_at(self.step, o),
                grad_clip=o.grad_clip,
                device=self.device,
                precision=self.trainer.precision,
                forward=self.forward,
                dist=d,
            )
            self.step += 1
            self._batch_rng = None
            bar.update(1)
            if self.step % o.log_every == 0 or self.step == o.steps:
                metrics = distributed.mean_over_ranks(metrics, d)  # the global batch's figures
                elapsed = time.perf_counter() - t_start
                metrics["steps_per_s"] = (self.step - done_at_start) / max(elapsed, 1e-9)
                if log is not None:
                    log.log(self.step, metrics, "train")
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4g}", **{k: f"{v:.3f}" for k, v in self.last_val.items()}
                )
            final = self.step == o.steps
            due = validate is not None and (final or (o.val_every and self.step % o.val_every == 0))
            if due and d.is_main:  # the other processes wait for rank 0 at the next collective
                with autocast(self.device, self.trainer.precision):
                    self.last_val = validate(self.model)
                log.log(self.step, self.last_val, "val")
            if final or self.step % o.ckpt_every == 0:
                self.save()


@contextlib.contextmanager
def _deferred_interrupts():
    """SIGINT and SIGTERM set a flag instead of raising mid-step; the loop stops at the next
    step boundary and saves, so the checkpoint resumes to the same numbers. A second Ctrl-C
    (SIGINT after SIGINT: a person insisting) raises at once; repeated SIGTERMs (a scheduler
    and torchrun both signalling) are one request. Outside the main thread, signals are left
    alone."""
    stop = threading.Event()
    stop.signum = 0  # which signal asked to stop
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            if signum == signal.SIGINT and stop.signum == signal.SIGINT:
                raise TrainingInterrupted(signum, hard=True)
            return
        stop.signum = signum
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
