"""Training the C-JEPA predictor (``cjepa train``) on a slot store.

Windows of ``history + future`` frames at ``windows.stride`` are drawn from
<slots>/train.h5; a mask is drawn per window (``causaljepa.masking``) from the trainer's
persistent generator; the loss is the predictor's (hidden history tokens + future tokens).
Validation shows the model ``history`` frames of fixed windows of <slots>/validation.h5
and scores its future prediction per horizon (MSE over the slot width), next to the two
baselines a predictor must beat: copying the last frame and linear extrapolation.

Outputs in the run directory (besides the trainer's metrics.csv, tb/, checkpoints/last.pt):

    predictor.pt   weights, PredictorConfig, and (extra) the masking, windows and slot store used
    val.json       the last validation metrics
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..data.sampling import ItemStream
from ..data.slot_store import SlotStore
from ..data.windows import WindowSampler
from ..masking import MaskConfig, MaskSampler
from ..models.predictor import CJEPAPredictor, PredictorConfig
from .checkpoint import load_model
from .loop import OptimConfig, Trainer, TrainerConfig

KIND = "predictor"
VAL_SEED = 4321  # the fixed validation windows


@dataclass(frozen=True)
class WindowConfig:
    """The ``windows`` section: how windows are cut from the slot store."""

    stride: int = 2  # frame stride inside a window (CLEVRER: 2)
    val_windows: int = 256
    actions: bool = True  # feed the store's actions (if it has any) as action nodes
    cache_mb: int = 1024  # a slot store up to this size is read into memory; a larger one is streamed

    def __post_init__(self) -> None:
        if self.stride < 1 or self.val_windows < 1:
            raise ValueError(
                f"windows.stride ({self.stride}) and windows.val_windows ({self.val_windows}) must be >= 1"
            )
        if self.cache_mb < 0:
            raise ValueError(f"windows.cache_mb must be >= 0 (0: always stream), got {self.cache_mb}")


def resolve_slots(data_root: str | os.PathLike, slots: str) -> Path:
    """``slots``: "learned" (<root>/slots, from cjepa extract-slots), "oracle" (<root>/oracle_slots,
    from cjepa oracle-slots) or a directory holding <split>.h5 slot stores."""
    if slots == "learned":
        return Path(data_root) / "slots"
    if slots == "oracle":
        return Path(data_root) / "oracle_slots"
    return Path(slots)


def check_same_encoder(store: SlotStore, ckpt: dict) -> None:
    """A predictor runs only on slots of the encoder it was trained on (oracle: "oracle"), of
    the width D it was built for and the slot count K it was trained with."""
    want = ckpt["extra"]["encoder_hash"]
    if store.encoder_hash != want:
        raise ValueError(
            f"{store.path} holds slots of encoder {store.encoder_hash[:12]}, the predictor was trained on "
            f"{want[:12]}; give slots= a directory made by the same encoder"
        )
    D = int(ckpt["model_config"]["slot_dim"])
    K = ckpt["extra"].get("num_slots")  # recorded since the predictor's training wrote it
    if store.slot_dim != D or (K is not None and store.num_slots != int(K)):
        raise ValueError(
            f"{store.path} holds K={store.num_slots} slots of width D={store.slot_dim}; the predictor "
            f"was trained on K={K} slots of width D={D}. Give slots= the kind of slot store it was "
            "trained on (its checkpoint's extra.slot_dir)"
        )


def fit_to_store(cfg: PredictorConfig, store: SlotStore, windows: WindowConfig) -> PredictorConfig:
    """Fill slot_dim (0 = the store's) and action_dim (the store's actions x stride) from the store."""
    if cfg.slot_dim not in (0, store.slot_dim):
        raise ValueError(
            f"predictor.slot_dim={cfg.slot_dim} but {store.path} holds slots of width {store.slot_dim}; "
            "leave predictor.slot_dim=0 to take the store's"
        )
    action_dim = store.action_dim * windows.stride if windows.actions else 0
    if cfg.action_dim not in (0, action_dim):
        raise ValueError(
            f"predictor.action_dim={cfg.action_dim}, but the windows carry {action_dim} action values "
            f"per step ({store.action_dim} per frame x stride {windows.stride}); leave it 0"
        )
    return replace(cfg, slot_dim=store.slot_dim, action_dim=action_dim)


def copy_last(history: torch.Tensor, steps: int) -> torch.Tensor:
    """Baseline: the last history frame, repeated. history (B, H, K, D) -> (B, steps, K, D)."""
    return history[:, -1:].expand(-1, steps, -1, -1)


def linear_extrapolation(history: torch.Tensor, steps: int) -> torch.Tensor:
    """Baseline: last + h (last - previous), for h = 1..steps. (B, H, K, D) -> (B, steps, K, D);
    with one history frame there is no velocity to extrapolate: the last frame, repeated."""
    if history.shape[1] < 2:
        return copy_last(history, steps)
    last, prev = history[:, -1:], history[:, -2:-1]
    h = torch.arange(1, steps + 1, dtype=history.dtype, device=history.device)[None, :, None, None]
    return last + h * (last - prev)


def horizon_mse(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B, S, K, D) twice -> (S,): mean squared error per horizon step."""
    return (pred.float() - truth.float()).pow(2).mean(dim=(0, 2, 3))


class FutureValidator:
    """Future-slot error per horizon on fixed validation windows, with the two baselines (copy the
    last history frame, extrapolate the last two) unless ``baselines`` is false."""

    def __init__(self, sampler: WindowSampler, n: int, batch_size: int, baselines: bool = True):
        self.batch = sampler.fixed(n, VAL_SEED)
        self.H, self.F, self.batch_size = sampler.H, sampler.F, batch_size
        hist, fut = self.batch["slots"][:, : self.H], self.batch["slots"][:, self.H :]
        self.baselines = (
            {
                "copy_last": horizon_mse(copy_last(hist, self.F), fut),
                "linear": horizon_mse(linear_extrapolation(hist, self.F), fut),
            }
            if baselines
            else {}
        )

    @torch.no_grad()
    def __call__(self, model: CJEPAPredictor) -> dict[str, float]:
        model.eval()
        device = model.out.weight.device
        slots, n = self.batch["slots"], len(self.batch["slots"])
        hidden = torch.zeros(slots.shape[:3], dtype=torch.bool)
        hidden[:, self.H :] = True
        preds = []
        for i in range(0, n, self.batch_size):
            sl = slice(i, i + self.batch_size)
            actions = self.batch.get("actions")
            pred, _ = model(
                slots[sl].to(device),
                hidden[sl].to(device),
                None if actions is None else actions[sl].to(device),
            )
            preds.append(pred[:, self.H :].float().cpu())
        model.train()
        err = horizon_mse(torch.cat(preds), slots[:, self.H :])
        out = {"mse_future": float(err.mean())}
        out.update({f"mse_h{h + 1}": float(e) for h, e in enumerate(err)})
        for name, base in self.baselines.items():
            out[f"{name}_future"] = float(base.mean())
        return out


def train_predictor(
    slot_dir: str | os.PathLike,
    predictor: PredictorConfig,
    masking: MaskConfig,
    optim: OptimConfig,
    trainer: TrainerConfig,
    windows: WindowConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> Path:
    """Train on <slot_dir>/train.h5, validate on validation.h5 if present; returns predictor.pt."""
    slot_dir, run_dir = Path(slot_dir), Path(run_dir)
    train_store = SlotStore(slot_dir / "train.h5")
    cfg = fit_to_store(predictor, train_store, windows)
    torch.manual_seed(seed)
    model = CJEPAPredictor(cfg)
    cache = windows.cache_mb * 2**20
    sampler = WindowSampler(
        train_store, cfg.history, cfg.future, windows.stride, actions=windows.actions, cache_bytes=cache
    )
    masks = MaskSampler(masking, train_store.num_slots, cfg.history, cfg.future)
    info = {
        "slot_dir": str(slot_dir),
        "encoder_hash": train_store.encoder_hash,
        "num_slots": train_store.num_slots,
        "masking": asdict(masking),
        "windows": asdict(windows),
        **(extra or {}),
    }
    t = Trainer(
        model,
        optim,
        trainer,
        run_dir,
        kind=KIND,
        model_config=cfg.to_dict(),
        seed=seed,
        extra=info,
        shards=True,
    )
    # every window of the store, in shuffled epochs, split over the training processes
    stream = ItemStream(train_store.num_videos, sampler.starts, optim.batch_size, seed, t.dist)

    def next_batch(step: int, gen: torch.Generator) -> dict:
        items = stream.items(step)
        batch = sampler.batch([v for v, _ in items], [s for _, s in items])
        # masks for the whole global batch, from the generator every process holds: each takes its items'
        batch["hidden"] = masks.sample(optim.batch_size, gen)[stream.global_positions()]  # (B / N, T, K)
        return batch

    validate, val_path = None, slot_dir / "validation.h5"
    if t.dist.is_main and val_path.exists():  # rank 0 validates; it reads its fixed windows once, here
        with SlotStore(val_path) as val_store:
            val_sampler = WindowSampler(
                val_store, cfg.history, cfg.future, windows.stride, actions=windows.actions, cache_bytes=cache
            )
            validate = FutureValidator(val_sampler, windows.val_windows, max(optim.batch_size, 64))
    elif t.dist.is_main:
        print(f"no validation: {val_path} does not exist")
    try:
        return t.train(next_batch, validate, "predictor.pt", resume)
    finally:
        train_store.close()


def load_predictor(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[CJEPAPredictor, dict]:
    """A trained predictor in eval mode, and its checkpoint (``extra`` has masking and windows)."""
    return load_model(path, KIND, PredictorConfig, CJEPAPredictor, device)
