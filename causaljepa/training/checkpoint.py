"""Checkpoints (DESIGN.md §8): versioned, self-describing, atomic, loadable with weights_only=True.

A checkpoint is a dict:

    format_version  int     FORMAT_VERSION
    kind            str     what model it holds ("encoder", "predictor", ...)
    model_config    dict    the resolved model config (plain values), to rebuild the model
    model           dict    state dict
    optimizer       dict    optimizer state (absent in a weights-only export)
    step            int     optimizer steps taken
    rng             dict    torch RNG states, including the data sampler's generator
    extra           dict    anything else the trainer needs to resume (plain values)

It is written to ``<name>.partial.pt``, flushed to disk and renamed, so a save interrupted
at any moment (SIGKILL, a power cut) leaves the previous checkpoint under the name, never a
torn one.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import torch

from ..io import atomic_output

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of another kind, or of another format version."""


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The RNG states a resumed run needs to continue with the same numbers."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():  # this process's GPU only: under DDP every rank draws alike
        state["cuda_device"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(state["python"]), gauss))
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"])
    if generator is not None:
        if "generator" not in state:
            raise CheckpointError("the checkpoint holds no data-sampler RNG state to resume from")
        generator.set_state(state["generator"])


def save_checkpoint(path: str | os.PathLike, **fields) -> Path:
    """Write a checkpoint atomically. ``kind``, ``model_config`` and ``model`` are required."""
    for name in ("kind", "model_config", "model"):
        if name not in fields:
            raise ValueError(f"save_checkpoint: field '{name}' is required")
    with atomic_output(path, durable=True) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **fields}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, kind: str, map_location="cpu") -> dict:
    """Load and check a checkpoint of the given kind; every problem names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unsafe pickle
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not a causaljepa checkpoint (no 'format_version')")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {ckpt['format_version']}, this causaljepa reads {FORMAT_VERSION}"
        )
    if ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a '{ckpt.get('kind')}' model, expected a '{kind}' checkpoint")
    for name in ("model_config", "model"):
        if name not in ckpt:
            raise CheckpointError(f"{path}: field '{name}' is missing")
    return ckpt


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes (hex): names the exact weights a derived file came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a training run keeps its latest state: <run_dir>/checkpoints/last.pt."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run's latest state where an interrupted run left one, else None."""
    last = checkpoint_path(run_dir)
    return last if last.exists() else None


def load_model(path: str | os.PathLike, kind: str, config_cls, model_cls, device="cpu"):
    """A trained model of ``kind`` rebuilt from its checkpoint's config, in eval mode on ``device``,
    and the checkpoint; a config this causaljepa cannot read is an error naming the file."""
    ckpt = load_checkpoint(path, kind)
    try:
        cfg = config_cls(**ckpt["model_config"])
    except TypeError as e:
        raise ValueError(
            f"{path}: its model_config does not match this causaljepa's {config_cls.__name__}: {e}"
        ) from e
    model = model_cls(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise CheckpointError(
            f"{path}: its weights do not fit the {kind} its model_config describes (the file was "
            f"edited, or assembled from another model): " + " ".join(str(e).split())[:600]
        ) from e
    return model.to(device).eval(), ckpt
