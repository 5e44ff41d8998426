"""Training the slot-attention video encoder (``cjepa train-encoder``).

Clips of ``clip_length`` frames are drawn from the training store; the model learns to
reconstruct them. Validation runs the encoder over the first ``val_frames`` frames of the
first ``val_videos`` validation videos (a fixed set, fixed initial slots) and scores the
alpha masks against the simulator's instance masks: video FG-ARI, per-frame FG-ARI, mBO.

Outputs in the run directory (besides the trainer's metrics.csv, tb/, checkpoints/last.pt):

    encoder.pt    the trained encoder (weights + config; what ``cjepa extract-slots`` reads)
    val.json      the last validation metrics ({} without a validation store with masks)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.clips import ClipSampler
from ..data.sampling import ItemStream
from ..data.store import VideoStore
from ..evaluation.object_discovery import fg_ari, mean_best_overlap, summarize
from ..models.savi import EncoderConfig, SAVi, segmentation
from .checkpoint import load_model
from .loop import OptimConfig, Trainer, TrainerConfig

KIND = "encoder"
VAL_SEED = 1234  # the initial slots of validation and extraction


@dataclass(frozen=True)
class ClipConfig:
    """What the encoder sees in training and validation (the ``clips`` section)."""

    length: int = 6  # frames per training clip
    stride: int = 1  # frame stride inside a clip
    val_videos: int = 16
    val_frames: int = 24  # frames from the start of each validation video (at the same stride)

    def __post_init__(self) -> None:
        for name in ("length", "stride", "val_videos", "val_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"clips.{name} must be >= 1, got {getattr(self, name)}")


def discovery_metrics(alpha: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """alpha (B, T, K, R, R), masks (B, T, H, W) -> video FG-ARI, frame FG-ARI, mBO (nan-means)."""
    seg = segmentation(alpha, tuple(masks.shape[-2:])).cpu()  # (B, T, H, W)
    masks = masks.long().cpu()
    return {
        "fg_ari": summarize(fg_ari(masks, seg)),
        "frame_fg_ari": summarize(fg_ari(masks.flatten(0, 1), seg.flatten(0, 1))),
        "mbo": summarize(mean_best_overlap(masks.flatten(0, 1), seg.flatten(0, 1))),
    }


def resolution_ceiling(masks: torch.Tensor, resolution: int) -> dict[str, float]:
    """The discovery metrics of a perfect segmentation seen at the model's resolution.

    masks (B, T, H, W) instance ids -> each id's one-hot map area-resized to R x R (what a
    model at R x R could at best predict), scored by ``discovery_metrics`` as a model's alpha
    masks are: resized back bilinearly, argmax, against the full-resolution masks.
    """
    m = masks.long()
    k = int(m.max()) + 1
    one_hot = torch.nn.functional.one_hot(m, k).permute(0, 1, 4, 2, 3).float()  # (B, T, K, H, W)
    alpha = torch.nn.functional.interpolate(one_hot.flatten(0, 1), size=(resolution, resolution), mode="area")
    return discovery_metrics(alpha.unflatten(0, m.shape[:2]), m)


class Validator:
    """Fixed validation clips, encoded from fixed initial slots, scored against instance masks."""

    def __init__(self, store: VideoStore, clips: ClipConfig, batch_size: int):
        n = min(clips.val_videos, store.num_videos)
        span = min((clips.val_frames - 1) * clips.stride + 1, store.num_frames)
        self.frames = torch.stack(
            [torch.from_numpy(store.read("frames", i, 0, span, clips.stride)) for i in range(n)]
        )
        self.masks = torch.stack(
            [torch.from_numpy(store.read("masks", i, 0, span, clips.stride)) for i in range(n)]
        )
        self.batch_size = batch_size

    @torch.no_grad()
    def maps(self, model: SAVi) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The clips' alpha masks (B, T, K, R, R), the corrector's last attention reshaped to
        the feature grid (B, T, K, S, S), and the mean reconstruction error."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(VAL_SEED)
        init = model.corrector.init_slots(len(self.frames), model.cfg.num_slots, gen)  # (B, K, D)
        alphas, attns, losses = [], [], []
        s = model.encoder.size
        for i in range(0, len(self.frames), self.batch_size):
            sl = slice(i, i + self.batch_size)
            out = model(self.frames[sl].to(device), initial_slots=init[sl].to(device), generator=gen)
            alphas.append(out.alpha.float().cpu())
            attns.append(out.attn.float().cpu().unflatten(-1, (s, s)))
            losses.append(SAVi.loss(out) * len(out.alpha))
        model.train(was_training)
        return torch.cat(alphas), torch.cat(attns), float(sum(losses) / len(self.frames))

    def __call__(self, model: SAVi) -> dict[str, float]:
        alpha, _, mse = self.maps(model)
        metrics = discovery_metrics(alpha, self.masks)
        metrics["mse"] = mse
        return metrics


def train_encoder(
    data_root: str | os.PathLike,
    encoder: EncoderConfig,
    optim: OptimConfig,
    trainer: TrainerConfig,
    clips: ClipConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    extra: dict | None = None,
    train_file: str = "train.h5",
    val_file: str = "validation.h5",
) -> Path:
    """Train an encoder on <data_root>/<train_file>, validate on <val_file> (where it has masks);
    returns encoder.pt. phyre_sim has one store of every task's attempts (rollouts.h5) for both."""
    root, run_dir = Path(data_root), Path(run_dir)
    torch.manual_seed(seed)
    model = SAVi(encoder)
    train_store = VideoStore(root / train_file)
    sampler = ClipSampler(train_store, clips.length, clips.stride)
    t = Trainer(
        model,
        optim,
        trainer,
        run_dir,
        kind=KIND,
        model_config=encoder.to_dict(),
        seed=seed,
        extra={"data_root": str(root), "clips": asdict(clips), **(extra or {})},
        shards=True,
    )
    validate = _validator(root / val_file, clips, optim.batch_size) if t.dist.is_main else None  # rank 0's
    # every clip of the store, in shuffled epochs, split over the training processes
    stream = ItemStream(train_store.num_videos, sampler.starts, optim.batch_size, seed, t.dist)

    def next_batch(step: int, gen: torch.Generator) -> dict:
        # the initial slots' noise is drawn for the whole global batch from the generator every
        # process holds, and each takes its items' rows: N processes train what one would
        shape = (optim.batch_size, encoder.num_slots, encoder.slot_dim)
        noise = torch.randn(shape, generator=gen)
        rows = stream.global_positions()
        batch = {"frames": sampler.clips(stream.items(step))[0], "slot_noise": noise[rows]}
        if encoder.frame_noise:  # the noise of later frames (slot_noise, refresh_mass), drawn the same way
            refresh = torch.randn(shape[0], clips.length, *shape[1:], generator=gen)  # (B, T, K, D)
            batch["refresh_noise"] = refresh[rows]
        return batch

    try:
        return t.train(next_batch, validate, "encoder.pt", resume)
    finally:
        train_store.close()


def _validator(path: Path, clips: ClipConfig, batch_size: int) -> Validator | None:
    """The validation clips of the store at ``path``, or None (said) where it is missing or has no masks."""
    if not path.exists():
        print(f"no validation: {path} does not exist")
        return None
    with VideoStore(path) as store:
        if not store.has("masks"):
            print(f"no validation: {path} has no instance masks (real CLEVRER has none)")
            return None
        return Validator(store, clips, batch_size)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SAVi, dict]:
    """A trained encoder (encoder.pt or a training checkpoint) in eval mode, and its checkpoint."""
    return load_model(path, KIND, EncoderConfig, SAVi, device)
