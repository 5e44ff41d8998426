"""The slot store (DESIGN.md §4): a frozen encoder's slots for every frame of a video store.

One HDF5 file per split, next to nothing else:

    slots        float32 (N, T, K, D)  corrected slots, carried through each whole video
    segments     uint8   (N, T, R, R)  the slot owning each pixel (argmax of the alpha masks)
    slot_object  int8    (N, T, K)     the object (store index) a slot covers most, -1 = none;
                                       only where the video store has instance masks
    video_ids    str     (N,)

Root attributes: schema_version, kind="slots", video_store (file name), encoder_hash
(sha256 of encoder.pt), encoder_config (JSON), num_frames, observed_frames, fps, and
metrics (JSON: FG-ARI, mBO, temporal consistency) where the video store has masks.

``extract_slots`` writes it: the encoder runs over whole videos, ``chunk`` frames at a
time, carrying its slots from one chunk to the next, from fixed initial slots.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..io import atomic_output
from .store import STR, H5Reader, StoreError, VideoStore

SLOT_SCHEMA_VERSION = 1
REQUIRED = ("slots", "segments", "video_ids")


def match_slots_to_objects(segments: torch.Tensor, masks: torch.Tensor, num_slots: int) -> torch.Tensor:
    """segments (B, T, H, W) slot ids, masks (B, T, H, W) object ids (0 = background)
    -> (B, T, K) int8: for every slot the object (0-based store index) with most of its
    pixels among the slot's foreground pixels, -1 where the slot covers no object."""
    B, T = masks.shape[:2]
    O = int(masks.max()) + 1
    if O == 1:  # no object in any of these frames
        return torch.full((B, T, num_slots), -1, dtype=torch.int8)
    seg = segments.reshape(B * T, -1).long()
    obj = masks.reshape(B * T, -1).long()
    rows = torch.arange(B * T)[:, None] * (num_slots * O)
    counts = torch.bincount((rows + seg * O + obj).flatten(), minlength=B * T * num_slots * O)
    counts = counts.reshape(B * T, num_slots, O)[:, :, 1:]  # background is not an object
    best = counts.argmax(dim=-1)
    best = torch.where(counts.amax(dim=-1) > 0, best, torch.full_like(best, -1))
    return best.reshape(B, T, num_slots).to(torch.int8)


class SlotStore(H5Reader):
    """Read access to a slot store, validated on open."""

    def __init__(self, path: str | os.PathLike):
        self._open(path, "write it with 'cjepa extract-slots'", self._validate)

    def _validate(self) -> None:
        a = self.f.attrs
        if a.get("kind") != "slots":
            raise StoreError(
                f"{self.path}: not a slot store (attribute kind={a.get('kind')!r}, expected 'slots')"
            )
        if int(a.get("schema_version", -1)) != SLOT_SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema_version {a.get('schema_version')}, this causaljepa reads "
                f"{SLOT_SCHEMA_VERSION}; extract the slots again"
            )
        for name in REQUIRED:
            if name not in self.f:
                raise StoreError(f"{self.path}: required field '{name}' is missing")
        s = self.f["slots"]
        if s.ndim != 4 or s.dtype != np.float32:
            raise StoreError(
                f"{self.path}: field 'slots' is {s.dtype} {s.shape}, expected float32 (N, T, K, D)"
            )
        self.num_videos, self.num_frames, self.num_slots, self.slot_dim = s.shape
        for name, want in (
            ("segments", (self.num_videos, self.num_frames)),
            ("video_ids", (self.num_videos,)),
        ):
            if self.f[name].shape[: len(want)] != want:
                raise StoreError(
                    f"{self.path}: field '{name}' has shape {self.f[name].shape}, expected {want} leading"
                )
        self.encoder_hash = str(a["encoder_hash"])
        self.encoder_config = json.loads(a["encoder_config"])
        self.observed_frames = int(a["observed_frames"])
        self.fps = float(a["fps"])
        self.metrics = json.loads(a.get("metrics", "{}"))

    def __len__(self) -> int:
        return self.num_videos

    @property
    def video_ids(self) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else v for v in self.f["video_ids"][:]]

    def slots(self, i: int, t0: int = 0, t1: int | None = None, stride: int = 1) -> np.ndarray:
        """(T', K, D) slots of video i, frames t0:t1:stride."""
        if not 0 <= i < self.num_videos:
            raise IndexError(f"{self.path}: video index {i} out of range [0, {self.num_videos})")
        return self.f["slots"][i, t0:t1:stride]


@torch.no_grad()
def extract_slots(
    model,
    video_store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    encoder_hash: str,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 16,
    chunk: int = 32,
    seed: int = 1234,
    progress: bool = True,
) -> dict:
    """Encode every video of ``video_store`` with the frozen ``model`` (a SAVi) into ``out``.

    Returns the metrics (empty where the store has no masks). The file appears only when complete.
    """
    from tqdm import tqdm

    from ..evaluation.object_discovery import fg_ari, mean_best_overlap, temporal_consistency
    from ..models.savi import segmentation
    from ..training.allocator import keep_freed_memory
    from ..training.loop import autocast

    if batch_size < 1 or chunk < 1:
        raise ValueError(f"batch_size ({batch_size}) and chunk ({chunk}) must be >= 1")
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    model = model.to(device).eval()
    cfg = model.cfg
    K, D, R = cfg.num_slots, cfg.slot_dim, cfg.resolution
    gen = torch.Generator().manual_seed(seed)
    sums = {"fg_ari": [0.0, 0], "frame_fg_ari": [0.0, 0], "mbo": [0.0, 0]}
    consistent = counted = 0
    with VideoStore(video_store) as vs, atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        N, T = vs.num_videos, vs.num_frames
        has_masks = vs.has("masks")
        f.create_dataset("slots", (N, T, K, D), np.float32, chunks=(1, min(T, 32), K, D), track_times=False)
        f.create_dataset(
            "segments", (N, T, R, R), np.uint8, chunks=(1, min(T, 32), R, R), compression="gzip",
            compression_opts=1, track_times=False,
        )  # fmt: skip
        if has_masks:
            f.create_dataset("slot_object", (N, T, K), np.int8, track_times=False)
        f.create_dataset("video_ids", data=np.array(vs.video_ids, dtype=object), dtype=STR, track_times=False)
        bar = tqdm(total=N * T, disable=not progress, desc=f"slots {Path(video_store).stem}", unit="frame")
        for v0 in range(0, N, batch_size):
            vids = list(range(v0, min(N, v0 + batch_size)))
            init = model.corrector.init_slots(len(vids), K, gen)  # (B, K, D)
            state = None
            seg_all, mask_all = [], []
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                frames = torch.stack([torch.from_numpy(vs.read("frames", i, t0, t1)) for i in vids])
                with autocast(device, precision):
                    o = model(frames.to(device), state=state, initial_slots=init.to(device))
                state = o.slots[:, -1]
                f["slots"][v0 : v0 + len(vids), t0:t1] = o.slots.float().cpu().numpy()
                f["segments"][v0 : v0 + len(vids), t0:t1] = (
                    o.alpha.float().argmax(dim=2).to(torch.uint8).cpu().numpy()
                )
                if has_masks:
                    masks = torch.stack([torch.from_numpy(vs.read("masks", i, t0, t1)) for i in vids])
                    seg = segmentation(o.alpha, (vs.height, vs.width)).cpu()  # (B, T', H, W)
                    f["slot_object"][v0 : v0 + len(vids), t0:t1] = match_slots_to_objects(
                        seg, masks, K
                    ).numpy()
                    seg_all.append(seg.to(torch.uint8))
                    mask_all.append(masks)
                bar.update(len(vids) * (t1 - t0))
            if has_masks:
                seg, masks = (
                    torch.cat(seg_all, dim=1).long(),
                    torch.cat(mask_all, dim=1).long(),
                )  # (B, T, H, W)
                for name, values in (
                    ("fg_ari", fg_ari(masks, seg)),
                    ("frame_fg_ari", fg_ari(masks.flatten(0, 1), seg.flatten(0, 1))),
                    ("mbo", mean_best_overlap(masks.flatten(0, 1), seg.flatten(0, 1))),
                ):
                    ok = ~torch.isnan(values)
                    sums[name][0] += float(values[ok].sum())
                    sums[name][1] += int(ok.sum())
                c, n = temporal_consistency(masks, seg)
                consistent, counted = consistent + c, counted + n
        bar.close()
        metrics = {}
        if has_masks:
            metrics = {k: (s / n if n else float("nan")) for k, (s, n) in sums.items()}
            metrics["temporal_consistency"] = consistent / counted if counted else float("nan")
            metrics["objects_counted"] = counted
            metrics["videos"] = N
            metrics["frames_per_video"] = T
        f.attrs.update(
            {
                "schema_version": SLOT_SCHEMA_VERSION,
                "kind": "slots",
                "video_store": Path(video_store).name,
                "encoder_hash": encoder_hash,
                "encoder_config": json.dumps(cfg.to_dict()),
                "num_frames": T,
                "observed_frames": vs.observed_frames,
                "fps": vs.fps,
                "seed": seed,
                "metrics": json.dumps(metrics),
            }
        )
    return metrics
