"""The PHYRE world model: the C-JEPA predictor with the ball as a one-shot action node, and a
success readout on its rollouts.

An episode is an attempt at a task: the scene before the ball is placed (frame 0 of the slot
store, the same for every attempt at a task) and the ball's (x, y, r) as the action node at
t = 0. The predictor sees frame 0 and the action and predicts the slots of frames
``stride, 2 stride, ..., future x stride`` in one pass (``PredictorConfig.history = 1``):
one encoded scene and one forward pass per candidate action, which is what makes scoring
thousands of candidates cheap. With one history frame there is nothing to mask in the history
(frame 0 is always visible), so the masking strategies all reduce to future prediction here.
A share of the training episodes (``EpisodeConfig.observed_share``) also shows the predictor
the first predicted frames (an observed prefix), so that it can also carry an episode on from
what it has seen: violation-of-expectation surprise compares each frame with its expectation
from the frames before it.

The success readout (``SuccessReadout``) is a permutation-invariant DeepSets head over the
predicted slots of every frame: a per-slot MLP, mean and max over slots, the frames
concatenated, an MLP to one logit. It is trained on the frozen predictor's rollouts of the
training tasks' attempts (as SlotFormer trains its readout on rollouts), so it reads the
kind of slots it will be given at test time.

Outputs of a fold's run directory:

    predictor/   the trainer's run (metrics.csv, tb/, checkpoints/, predictor.pt, val.json)
    readout/     the readout's run (readout.pt, val.json: accuracy and AUROC on held-out tasks)
    plausibility/  the plausibility model (predictor.pt: the sliding-window predictor for VoE)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.slot_store import SlotStore
from ..masking import MaskConfig, MaskSampler
from ..models.predictor import CJEPAPredictor, PredictorConfig
from .checkpoint import load_model
from .loop import OptimConfig, Trainer, TrainerConfig, autocast
from .predictor import KIND, FutureValidator

READOUT_KIND = "phyre_readout"


@dataclass(frozen=True)
class EpisodeConfig:
    """The ``episodes`` section: which frames of an attempt the predictor predicts."""

    stride: int = 10  # store frames between predicted frames (5 fps: two seconds)
    val_episodes: int = 256  # held-out attempts scored per validation
    # the share of training episodes that also see their first h - 1 predicted frames (h drawn
    # uniformly from 2..future): the predictor learns to carry on from what it has seen, which
    # is how violation-of-expectation surprise is measured (frame j predicted from frames < j)
    observed_share: float = 0.5

    def __post_init__(self) -> None:
        if self.stride < 1 or self.val_episodes < 1:
            raise ValueError(
                f"episodes.stride ({self.stride}) and episodes.val_episodes ({self.val_episodes}) "
                "must be >= 1"
            )
        if not 0 <= self.observed_share <= 1:
            raise ValueError(f"episodes.observed_share must be in [0, 1], got {self.observed_share}")


def episode_times(future: int, stride: int) -> np.ndarray:
    """The store frames of an episode: 0 and the ``future`` predicted ones, ``stride`` apart."""
    return np.arange(0, future * stride + 1, stride)


class EpisodeSampler:
    """Episodes (frame 0 and the predicted frames, the one-shot action, the success label) of
    the attempts ``videos`` of a phyre_sim slot store, read into memory once.

    ``sample(B, generator)`` -> {"slots": (B, 1 + F, K, D), "actions": (B, 3), "success": (B,)}.
    """

    def __init__(self, store: SlotStore, videos, future: int, stride: int):
        if not store.one_shot or "success" not in store.f:
            raise ValueError(
                f"{store.path} is not a slot store of task attempts (one-shot actions and success labels); "
                "make it with 'cjepa oracle-slots data=phyre_sim' or 'cjepa extract-slots data=phyre_sim'"
            )
        last = future * stride
        if future < 1 or last >= store.num_frames:
            raise ValueError(
                f"{store.path}: {future} predicted frames at stride {stride} reach frame {last}, the "
                f"attempts have {store.num_frames} frames (0..{store.num_frames - 1}); lower "
                "predictor.future or episodes.stride"
            )
        self.videos = np.asarray(sorted(int(v) for v in videos), np.int64)
        if not len(self.videos):
            raise ValueError(f"{store.path}: no attempts selected for this sampler")
        self.H, self.F, self.stride = 1, future, stride
        self.path, self.encoder_hash = store.path, store.encoder_hash
        self.num_slots, self.slot_dim, self.action_dim = store.num_slots, store.slot_dim, store.action_dim
        times = episode_times(future, stride)
        self.slots = torch.from_numpy(store.f["slots"][:, times][self.videos])  # (N, 1 + F, K, D)
        self.actions = torch.from_numpy(store.f["actions"][:][self.videos])  # (N, A)
        self.success = torch.from_numpy(store.f["success"][:][self.videos])  # (N,)

    def __len__(self) -> int:
        return len(self.videos)

    def batch(self, idx: torch.Tensor) -> dict:
        return {"slots": self.slots[idx], "actions": self.actions[idx], "success": self.success[idx]}

    def sample(self, B: int, generator: torch.Generator) -> dict:
        return self.batch(torch.randint(0, len(self), (B,), generator=generator))

    def fixed(self, n: int, seed: int) -> dict:
        return self.sample(n, torch.Generator().manual_seed(seed))


def future_hidden(B: int, steps: int, K: int, device=None, seen: int = 1) -> torch.Tensor:
    """(B, 1 + steps, K): frames 0 .. seen - 1 visible (default: frame 0 alone), the rest hidden."""
    hidden = torch.ones(B, 1 + steps, K, dtype=torch.bool, device=device)
    hidden[:, :seen] = False
    return hidden


def observe_prefix(hidden: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """hidden (B, 1 + F, K) -> a copy where a ``share`` of the episodes also see frames 1 .. h - 1,
    h drawn uniformly from 2..F per episode (F >= 2; with F = 1 nothing changes)."""
    B, T = hidden.shape[:2]
    out = hidden.clone()
    if T < 3 or share == 0:
        return out
    pick = torch.rand(B, generator=generator) < share  # (B,)
    h = torch.randint(2, T, (B,), generator=generator)  # the first hidden frame
    seen = (torch.arange(T)[None, :] < h[:, None]) & pick[:, None]  # (B, T)
    out[seen] = False
    return out


@torch.no_grad()
def predict_episodes(
    model: CJEPAPredictor,
    scene: torch.Tensor,
    actions: torch.Tensor,
    *,
    precision: str = "fp32",
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """scene (B, K, D) frame-0 slots, actions (B, A) -> predicted slots (B, 1 + F, K, D); frame 0
    is the scene itself. ``seen`` (B, j, K, D): frames 1 .. j observed too (returned as given),
    the rest predicted from them."""
    B, K, D = scene.shape
    F = model.cfg.future
    device = model.out.weight.device
    slots = torch.zeros(B, 1 + F, K, D, device=device)
    slots[:, 0] = scene.to(device)
    j = 1 if seen is None else 1 + seen.shape[1]
    if seen is not None:
        slots[:, 1:j] = seen.to(device)
    with autocast(device, precision):
        pred, _ = model(slots, future_hidden(B, F, K, device, seen=j), actions.to(device))
    pred = pred.float()
    pred[:, :j] = slots[:, :j]
    return pred


def train_phyre_predictor(
    train: EpisodeSampler,
    val: EpisodeSampler,
    predictor: PredictorConfig,
    masking: MaskConfig,
    optim: OptimConfig,
    trainer: TrainerConfig,
    episodes: EpisodeConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> Path:
    """Train on the episodes ``train``, validate on ``val`` (EpisodeSamplers of one slot store, cut
    at the predictor's future and episodes.stride); returns predictor.pt."""
    if predictor.history != 1:
        raise ValueError(
            f"predictor.history={predictor.history}: a PHYRE episode is predicted from frame 0 (the scene "
            "before the ball) alone; set predictor.history=1"
        )
    if predictor.slot_dim not in (0, train.slot_dim) or predictor.action_dim not in (0, train.action_dim):
        raise ValueError(
            f"predictor.slot_dim={predictor.slot_dim} / action_dim={predictor.action_dim}, but {train.path} "
            f"holds slots of width {train.slot_dim} and {train.action_dim} action columns; leave both 0"
        )
    for s in (train, val):
        if (s.F, s.stride) != (predictor.future, episodes.stride):
            raise ValueError(
                f"episodes cut at future={s.F}, stride={s.stride}; the predictor predicts "
                f"predictor.future={predictor.future} frames at episodes.stride={episodes.stride}"
            )
    cfg = replace(predictor, slot_dim=train.slot_dim, action_dim=train.action_dim)
    torch.manual_seed(seed)
    model = CJEPAPredictor(cfg)
    masks = MaskSampler(masking, train.num_slots, cfg.history, cfg.future)

    def next_batch(step: int, gen: torch.Generator) -> dict:
        batch = train.sample(optim.batch_size, gen)
        batch["hidden"] = observe_prefix(masks.sample(optim.batch_size, gen), episodes.observed_share, gen)
        return batch

    validate = FutureValidator(val, min(episodes.val_episodes, len(val)), max(optim.batch_size, 64))
    info = {
        "slot_dir": str(train.path.parent),
        "encoder_hash": train.encoder_hash,
        "masking": asdict(masking),
        "episodes": asdict(episodes),
        **(extra or {}),
    }
    t = Trainer(model, optim, trainer, run_dir, kind=KIND, model_config=cfg.to_dict(), seed=seed, extra=info)
    return t.train(next_batch, validate, "predictor.pt", resume)


# the success readout -------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadoutConfig:
    """configs/eval_phyre.yaml ``readout``: the success classifier on predicted slots."""

    dim: int = 64
    hidden: int = 128
    frames: int = 0  # 1 + the predictor's future (0: filled in from the predictor)
    slot_dim: int = 0  # D (0: filled in from the slot store)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.hidden < 1 or self.frames < 0 or self.slot_dim < 0:
            raise ValueError(
                f"readout: dim ({self.dim}) and hidden ({self.hidden}) must be >= 1, frames and slot_dim >= 0"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class SuccessReadout(nn.Module):
    """Predicted slots (B, T, K, D) -> success logit (B,); invariant to the order of the slots."""

    def __init__(self, cfg: ReadoutConfig):
        super().__init__()
        if cfg.frames < 1 or cfg.slot_dim < 1:
            raise ValueError(
                f"ReadoutConfig.frames={cfg.frames} and slot_dim={cfg.slot_dim}: both must be set (>= 1) "
                "before building the readout (train_readout fills them from the predictor)"
            )
        self.cfg = cfg
        self.slot = nn.Sequential(nn.Linear(cfg.slot_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.head = nn.Sequential(
            nn.Linear(2 * cfg.dim * cfg.frames, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1)
        )

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        h = self.slot(slots)  # (B, T, K, dim)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=-1)  # (B, T, 2 dim)
        return self.head(pooled.flatten(1)).squeeze(-1)  # (B,)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.head[0].weight.device
        logits = self(batch["slots"].to(device))
        y = batch["success"].to(device).float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        acc = ((logits > 0).float() == y).float().mean()
        return loss, {"bce": float(loss.detach()), "accuracy": float(acc)}


def rollouts_of(model: CJEPAPredictor, sampler: EpisodeSampler, batch_size: int = 512) -> torch.Tensor:
    """The predictor's rollouts (N, 1 + F, K, D) of every episode of ``sampler``."""
    out = []
    for i in range(0, len(sampler), batch_size):
        sl = slice(i, i + batch_size)
        out.append(predict_episodes(model, sampler.slots[sl, 0], sampler.actions[sl]).cpu())
    return torch.cat(out)


class _Rollouts:
    """A fixed set of predicted episodes with their labels, sampled like an EpisodeSampler."""

    def __init__(self, slots: torch.Tensor, success: torch.Tensor):
        self.slots, self.success = slots, success

    def sample(self, B: int, generator: torch.Generator) -> dict:
        idx = torch.randint(0, len(self.slots), (B,), generator=generator)
        return {"slots": self.slots[idx], "success": self.success[idx]}


def train_readout(
    model: CJEPAPredictor,
    train: EpisodeSampler,
    val: EpisodeSampler,
    cfg: ReadoutConfig,
    optim: OptimConfig,
    trainer: TrainerConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> Path:
    """Train the readout on the frozen predictor's rollouts of ``train``; validate on ``val``."""
    from ..evaluation.influence import auroc

    cfg = replace(cfg, frames=1 + model.cfg.future, slot_dim=model.cfg.slot_dim)
    torch.manual_seed(seed)
    readout = SuccessReadout(cfg)
    data = _Rollouts(rollouts_of(model, train), train.success)
    val_slots = rollouts_of(model, val)

    @torch.no_grad()
    def validate(m: SuccessReadout) -> dict[str, float]:
        m.eval()
        logits = m(val_slots.to(m.head[0].weight.device)).float().cpu()
        m.train()
        y = val.success.numpy()
        return {"accuracy": float(((logits > 0).numpy() == y).mean()), "auroc": auroc(logits.numpy(), y)}

    t = Trainer(readout, optim, trainer, run_dir, kind=READOUT_KIND, model_config=cfg.to_dict(), seed=seed,
                extra=extra or {})  # fmt: skip
    return t.train(lambda step, gen: data.sample(optim.batch_size, gen), validate, "readout.pt", resume)


def load_readout(path: str | os.PathLike, device="cpu") -> tuple[SuccessReadout, dict]:
    return load_model(path, READOUT_KIND, ReadoutConfig, SuccessReadout, device)


@torch.no_grad()
def score_actions(
    model: CJEPAPredictor,
    readout: SuccessReadout,
    scene: torch.Tensor,
    actions: torch.Tensor,
    *,
    batch_size: int = 4096,
    precision: str = "fp32",
) -> torch.Tensor:
    """Success logits (N,) of N candidate actions (N, A) on one scene (K, D): one forward pass of
    the predictor and the readout per batch, the scene shared by every candidate."""
    device = model.out.weight.device
    out = []
    for i in range(0, len(actions), batch_size):
        a = actions[i : i + batch_size].to(device)
        pred = predict_episodes(model, scene[None].expand(len(a), -1, -1), a, precision=precision)
        out.append(readout(pred).float().cpu())  # fp32: bf16 logits would tie many candidates
    return torch.cat(out) if out else torch.zeros(0)


# the plausibility model ---------------------------------------------------------------------
@dataclass(frozen=True)
class PlausibilityConfig:
    """configs/eval_phyre.yaml ``plausibility``: C-JEPA's sliding-window predictor of observed
    clips, every object a slot (the ball too: in a clip it is seen), for violation of expectation.

    Windows of ``predictor.history`` + ``predictor.future`` frames at ``stride`` slide over whole
    attempts; object masking hides whole objects over the history after the first frame. A clip's
    frame t is expected from the ``history`` frames around it, at the store's full frame rate, so
    a violation is judged against a fraction of a second of motion, not against a whole rollout.

    ``after``: how many of those frames come after t (0: all before it, a forecast). With
    after > 0 the expectation is an interpolation: a collision between t - stride and t + stride
    is seen in the frame after, so it is no surprise, while a jump, a vanishing or a change of
    colour that lasts is still not explained by either side. The window's tokens are then the
    frames before t, the frames after t, and t last (the predictor's one future token): its
    learned frame positions mean "before", "after" and "expected"."""

    predictor: PredictorConfig = field(
        default_factory=lambda: PredictorConfig(
            dim=64,
            layers=2,
            heads=4,
            head_dim=16,
            mlp_hidden=128,
            dropout=0.0,
            history=3,
            future=1,
            slot_dim=0,
        )
    )
    masking: MaskConfig = field(default_factory=lambda: MaskConfig("object", 0, 2))
    # 20,000 steps: at 3,000 it was still learning (validation error 0.0010, 0.0004 at 20,000)
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=20_000, batch_size=64, warmup_steps=200, val_every=2000, ckpt_every=1000
        )
    )
    stride: int = 1  # store frames between window frames (5 fps: 0.2 s)
    val_windows: int = 512
    after: int = 0  # of the history frames, how many come after the expected one

    def __post_init__(self) -> None:
        if self.stride < 1 or self.val_windows < 1:
            raise ValueError(
                f"plausibility.stride ({self.stride}) and plausibility.val_windows ({self.val_windows}) "
                "must be >= 1"
            )
        if not 0 <= self.after < self.predictor.history:
            raise ValueError(
                f"plausibility.after={self.after}: it must be in [0, predictor.history - 1] = "
                f"[0, {self.predictor.history - 1}] (at least one frame before the expected one)"
            )
        if self.predictor.future != 1 or self.predictor.action_dim:
            raise ValueError(
                f"plausibility.predictor: future={self.predictor.future}, action_dim="
                f"{self.predictor.action_dim}; it expects one frame at a time (future=1) and has no action "
                "node (action_dim=0: the ball is a slot)"
            )


def window_frames(history: int, future: int, stride: int, after: int = 0) -> torch.Tensor:
    """(history + future,) frame offsets of a window's tokens from its first frame: the frames in
    time order, except that with ``after`` > 0 (one expected frame, future=1) the ``after``
    frames that follow the expected one come before it, and it is the last token."""
    t = stride * torch.arange(history + future)
    if after:
        if future != 1 or not 0 < after < history:
            raise ValueError(f"after={after} needs future=1 (got {future}) and 0 < after < history={history}")
        e = history - after  # the expected frame's place in time
        t = torch.cat([t[:e], t[e + 1 :], t[e : e + 1]])
    return t


class ClipWindows:
    """Sliding windows over whole attempts ``slots`` (N, T, K, D), sampled like a WindowSampler:
    ``sample(B, generator)`` -> {"slots": (B, history + future, K, D)}, tokens ordered by
    ``window_frames`` (``after``: frames after the expected one, see PlausibilityConfig)."""

    def __init__(self, slots: torch.Tensor, history: int, future: int, stride: int, after: int = 0):
        self.slots, self.H, self.F, self.stride = slots, history, future, stride
        self.offsets = window_frames(history, future, stride, after)
        self.span = (history + future - 1) * stride + 1
        if self.span > slots.shape[1]:
            raise ValueError(
                f"windows of {history + future} frames at stride {stride} span {self.span} frames; the "
                f"attempts have {slots.shape[1]}"
            )

    def __len__(self) -> int:
        return len(self.slots)

    def sample(self, B: int, generator: torch.Generator) -> dict:
        v = torch.randint(0, len(self.slots), (B,), generator=generator)
        s = torch.randint(0, self.slots.shape[1] - self.span + 1, (B,), generator=generator)
        t = s[:, None] + self.offsets[None]  # (B, H + F)
        return {"slots": self.slots[v[:, None], t]}

    def fixed(self, n: int, seed: int) -> dict:
        return self.sample(n, torch.Generator().manual_seed(seed))


def train_plausibility(
    train: torch.Tensor,
    val: torch.Tensor,
    cfg: PlausibilityConfig,
    trainer: TrainerConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> Path:
    """Train the plausibility predictor on whole attempts (N, T, K + 1, D); returns predictor.pt."""
    pc = cfg.predictor
    if pc.slot_dim not in (0, train.shape[-1]):
        raise ValueError(f"plausibility.predictor.slot_dim={pc.slot_dim}, the slots have {train.shape[-1]}")
    pc = replace(pc, slot_dim=train.shape[-1])
    torch.manual_seed(seed)
    model = CJEPAPredictor(pc)
    sampler = ClipWindows(train, pc.history, pc.future, cfg.stride, cfg.after)
    masks = MaskSampler(cfg.masking, train.shape[2], pc.history, pc.future)

    def next_batch(step: int, gen: torch.Generator) -> dict:
        batch = sampler.sample(cfg.train.batch_size, gen)
        batch["hidden"] = masks.sample(cfg.train.batch_size, gen)
        return batch

    val_windows = ClipWindows(val, pc.history, pc.future, cfg.stride, cfg.after)
    # copy-last and linear extrapolation read the last history tokens as the latest frames: not so
    # when frames after the expected one are among them
    validate = FutureValidator(
        val_windows, cfg.val_windows, max(cfg.train.batch_size, 64), baselines=not cfg.after
    )
    info = {"masking": asdict(cfg.masking), "stride": cfg.stride, "after": cfg.after,
            "encoder_hash": "oracle", **(extra or {})}  # fmt: skip
    t = Trainer(
        model, cfg.train, trainer, run_dir, kind=KIND, model_config=pc.to_dict(), seed=seed, extra=info
    )
    return t.train(next_batch, validate, "predictor.pt", resume)


@torch.no_grad()
def window_errors(
    model: CJEPAPredictor, clips: torch.Tensor, stride: int, batch_size: int = 4096, after: int = 0
) -> torch.Tensor:
    """clips (B, T, K, D) -> squared errors (B, T', K, D) of the plausibility predictor's
    expectation of every frame it can expect (``expected_frames``), each from the ``history``
    frames around it (``after`` of them after it: the value the model was trained with)."""
    H, F = model.cfg.history, model.cfg.future
    B, T, K, D = clips.shape
    span = (H + F - 1) * stride + 1
    starts = torch.arange(0, T - span + 1)
    t = starts[:, None] + window_frames(H, F, stride, after)[None]  # (S, H + F)
    windows = clips[:, t].flatten(0, 1)  # (B S, H + F, K, D)
    hidden = torch.zeros(len(windows), H + F, K, dtype=torch.bool)
    hidden[:, H:] = True
    device = model.out.weight.device
    out = []
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size].to(device)
        pred, _ = model(w, hidden[i : i + batch_size].to(device))
        out.append((pred[:, H].float() - w[:, H]).pow(2).cpu())
    return torch.cat(out).reshape(B, len(starts), K, D)


def expected_frames(num_frames: int, history: int, stride: int, after: int = 0) -> slice:
    """The frames ``window_errors`` expects, in its order: from (history - after) x stride to
    the last that still has ``after`` frames after it."""
    return slice((history - after) * stride, num_frames - after * stride)
