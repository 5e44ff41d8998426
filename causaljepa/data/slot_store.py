"""The slot store (DESIGN.md §4): a frozen encoder's slots for every frame of a video store.

One HDF5 file per split, next to nothing else:

    slots        float32 (N, T, K, D)  corrected slots, carried through each whole video
    video_ids    str     (N,)
    segments     uint8   (N, T, R, R)  the slot owning each pixel (argmax of the alpha masks);
                                       learned slots only
    slot_object  int8    (N, T, K)     the object (store index) a slot covers most, -1 = none;
                                       only where the video store has instance masks (or states)
    actions      float32 (N, T, A)     copied from the video store where it has actions
                 float32 (N, A)        (one action per video at t = 0, e.g. a PHYRE ball)
    task, success int32 / bool (N,)    copied from a video store of task attempts (phyre_sim)
    cf_slots     float32 (N, O, T, K, D)  the slots of the world without object o, where the
                                       video store has counterfactual videos
    cf_valid     bool    (N, O)        False where object o does not exist

Root attributes: schema_version, kind="slots", video_store (file name), encoder_hash
(sha256 of encoder.pt, or "oracle" for slots made from object states: ``data/oracle.py``),
encoder_config (JSON), num_frames, observed_frames, fps, action_fields (JSON, with
actions), and metrics (JSON: FG-ARI, mBO, temporal consistency) where the video store has masks.

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
REQUIRED = ("slots", "video_ids")


def match_slots_to_objects(segments: torch.Tensor, masks: torch.Tensor, num_slots: int) -> torch.Tensor:
    """segments (B, T, H, W) slot ids, masks (B, T, H, W) object ids (0 = background)
    -> (B, T, K) int8: for every slot the object (0-based store index) with most of its
    pixels among the slot's foreground pixels, -1 where the slot covers no object."""
    B, T = masks.shape[:2]
    O = int(masks.max()) + 1
    if O == 1:  # no object in any of these frames
        return torch.full((B, T, num_slots), -1, dtype=torch.int8)
    from ..evaluation.object_discovery import contingency

    seg = segments.reshape(B * T, -1).long()
    obj = masks.reshape(B * T, -1).long()
    counts = contingency(seg, obj, num_slots, O)[:, :, 1:]  # (B T, K, O - 1): background is not an object
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
        N, T, K, D = s.shape
        expected = {
            "video_ids": (N,),
            "segments": (N, T),
            "slot_object": (N, T, K),
            "actions": (N,) if "actions" in self.f and self.f["actions"].ndim == 2 else (N, T),
            "task": (N,),
            "success": (N,),
            "cf_slots": (N,),
            "cf_valid": (N,),
        }
        for name, want in expected.items():
            if name in self.f and self.f[name].shape[: len(want)] != want:
                raise StoreError(
                    f"{self.path}: field '{name}' has shape {self.f[name].shape}, expected {want} leading"
                )
        if "cf_slots" in self.f and self.f["cf_slots"].shape[2:] != (T, K, D):
            raise StoreError(
                f"{self.path}: field 'cf_slots' has shape {self.f['cf_slots'].shape}, "
                f"expected (N, O, {T}, {K}, {D})"
            )
        missing = [k for k in ("encoder_hash", "encoder_config", "observed_frames", "fps") if k not in a]
        if missing:
            raise StoreError(f"{self.path}: attributes {missing} are missing; extract the slots again")
        try:  # attributes are data: parsed as JSON, never evaluated
            self.action_fields = tuple(json.loads(a.get("action_fields", "[]")))
            self.encoder_config = json.loads(a["encoder_config"])
            self.metrics = json.loads(a.get("metrics", "{}"))
        except (json.JSONDecodeError, TypeError) as e:
            raise StoreError(f"{self.path}: an attribute is not valid JSON: {e}") from e
        self.one_shot = "actions" in self.f and self.f["actions"].ndim == 2
        if "actions" in self.f and self.f["actions"].shape[-1:] != (len(self.action_fields),):
            raise StoreError(
                f"{self.path}: field 'actions' has shape {self.f['actions'].shape}, expected "
                f"(N, {'' if self.one_shot else 'T, '}{len(self.action_fields)}) as its 'action_fields' "
                "attribute names"
            )
        self.action_dim = self.f["actions"].shape[-1] if "actions" in self.f else 0
        self.encoder_hash = str(a["encoder_hash"])
        self.observed_frames = int(a["observed_frames"])
        self.fps = float(a["fps"])

    def read(
        self, name: str, i: int, t0: int = 0, t1: int | None = None, stride: int = 1, *, removed=None
    ) -> np.ndarray:
        """Frames t0:t1:stride of a per-frame field (slots, actions, slot_object, segments) of
        video i; for cf_slots, (O, T', K, D): every object's counterfactual world, or with
        ``removed=o`` only the world without object o, (T', K, D)."""
        if name not in self.f:
            raise KeyError(
                f"{self.path}: field '{name}' is not in this slot store (fields: {sorted(self.f)})"
            )
        i = self._check_index(i)
        if name == "cf_valid":
            return self.f[name][i]
        if name == "cf_slots":
            return self.f[name][i, slice(None) if removed is None else removed, t0:t1:stride]
        return self.f[name][i, t0:t1:stride]

    @property
    def is_oracle(self) -> bool:
        return self.encoder_hash == "oracle"


def _frame_noise(seed: int, videos: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Standard normal noise (len(videos), T, K, D) of the frames after the first, each video's
    from a generator of its own (seed, video index): the batch size does not change a video's draws."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed((seed << 32) + 1 + i)) for i in videos]
    )


@torch.no_grad()
def _encode(
    model, read, init: torch.Tensor, refresh: torch.Tensor | None, T: int, chunk: int, device, precision: str
) -> torch.Tensor:
    """Slots (B, T, K, D) of B whole videos, ``read(t0, t1)`` -> uint8 (B, t1 - t0, H, W, 3),
    encoded ``chunk`` frames at a time from ``init`` (B, K, D), carrying the slots across chunks;
    ``refresh``: the noise of the frames after the first (B, T, K, D), or None."""
    from ..training.loop import autocast

    state, out = None, []
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        frames = torch.from_numpy(read(t0, t1))
        noise = None if refresh is None else refresh[:, t0:t1].to(device)
        with autocast(device, precision):
            o = model(frames.to(device), state=state, initial_slots=init.to(device), refresh_noise=noise)
        state = o.carry
        out.append(o.slots.float().cpu())
    return torch.cat(out, dim=1)


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
    counterfactuals: bool = False,
) -> dict:
    """Encode every video of ``video_store`` with the frozen ``model`` (a SAVi) into ``out``.

    ``counterfactuals``: also encode the store's counterfactual videos (``cf_frames``, one
    per removed object; O times the work) into ``cf_slots``, from the same initial slots as
    the factual video: the truth for latent interventions on learned slots.
    Returns the metrics (empty where the store has no masks). The file appears only when complete.
    """
    from tqdm import tqdm

    from ..evaluation.object_discovery import fg_ari, mean_best_overlap, temporal_consistency
    from ..models.savi import segmentation, slot_ids
    from ..training.allocator import keep_freed_memory
    from ..training.loop import autocast, resolve_precision

    if batch_size < 1 or chunk < 1:
        raise ValueError(f"batch_size ({batch_size}) and chunk ({chunk}) must be >= 1")
    device = torch.device(device)
    precision = resolve_precision(precision, device.type)  # a wrong name fails before any encoding
    keep_freed_memory(device)
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
        if vs.has("actions"):
            f.create_dataset("actions", data=vs.f["actions"][:], track_times=False)
            f.attrs["action_fields"] = json.dumps(list(vs.action_fields))
        for name in ("task", "success"):  # attempts at tasks (phyre_sim)
            if vs.has(name):
                f.create_dataset(name, data=vs.f[name][:], track_times=False)
        if counterfactuals:
            if not vs.has("cf_frames"):
                raise StoreError(
                    f"{vs.path}: has no counterfactual videos (cf_frames); generate the data with "
                    "data.generator.counterfactuals=true or extract without counterfactuals"
                )
            O = vs.max_objects
            cf_slots = f.create_dataset(
                "cf_slots", (N, O, T, K, D), np.float32, chunks=(1, 1, min(T, 32), K, D), track_times=False
            )
            f.create_dataset("cf_valid", data=vs.f["cf_valid"][:], track_times=False)
        worlds = 1 + (vs.max_objects if counterfactuals else 0)  # the factual video and each cf video
        bar = tqdm(
            total=N * T * worlds, disable=not progress, desc=f"slots {Path(video_store).stem}", unit="frame"
        )
        for v0 in range(0, N, batch_size):
            vids = list(range(v0, min(N, v0 + batch_size)))
            init = model.corrector.init_slots(len(vids), K, gen)  # (B, K, D)
            # the noise of later frames (slot_noise, refresh_mass), the same for a video's cf worlds
            refresh = _frame_noise(seed, vids, (T, K, D)) if cfg.frame_noise else None
            state = None
            seg_all, mask_all = [], []
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                frames = torch.stack([torch.from_numpy(vs.read("frames", i, t0, t1)) for i in vids])
                noise = None if refresh is None else refresh[:, t0:t1].to(device)
                with autocast(device, precision):
                    o = model(
                        frames.to(device), state=state, initial_slots=init.to(device), refresh_noise=noise
                    )
                state = o.carry
                f["slots"][v0 : v0 + len(vids), t0:t1] = o.slots.float().cpu().numpy()
                f["segments"][v0 : v0 + len(vids), t0:t1] = slot_ids(o.alpha, 2).to(torch.uint8).cpu().numpy()
                if has_masks:
                    masks = torch.stack([torch.from_numpy(vs.read("masks", i, t0, t1)) for i in vids])
                    seg = segmentation(o.alpha, (vs.height, vs.width)).cpu()  # (B, T', H, W)
                    f["slot_object"][v0 : v0 + len(vids), t0:t1] = match_slots_to_objects(
                        seg, masks, K
                    ).numpy()
                    seg_all.append(seg.to(torch.uint8))
                    mask_all.append(masks)
                bar.update(len(vids) * (t1 - t0))
            if counterfactuals:
                for b, i in enumerate(vids):
                    cf_slots[i] = _encode(
                        model, lambda t0, t1, i=i: vs.read("cf_frames", i, t0, t1),
                        init[b : b + 1].expand(O, -1, -1),
                        None if refresh is None else refresh[b : b + 1].expand(O, -1, -1, -1),
                        T, chunk, device, precision,
                    ).numpy()  # fmt: skip
                    bar.update(O * T)
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
