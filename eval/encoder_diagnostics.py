"""Six diagnostics of the object-discovery figures (README, Figures, encoder).

    python eval/encoder_diagnostics.py ceiling [--store datasets/clevrer_sim/validation.h5]
        FG-ARI and mBO of a perfect segmentation seen at 16x16, 32x32 and 64x64, on the
        validation clips the encoder's training scores (16 videos x 24 frames): what the
        model's resolution alone allows.
    python eval/encoder_diagnostics.py consistency --slots runs/enc/slots/validation.h5 \
        [--store datasets/clevrer_sim/validation.h5]
        temporal consistency of a slot store's segments when an object counts in a frame only
        from 1, 5, 10, 20 pixels on: tells slots that swap from objects at the frame's edge;
        and at each threshold the mean number of changes of an object's best slot per video,
        with the share of them that return to a slot the object held before (flicker between
        slots sharing it) rather than hand it to a new one.
    python eval/encoder_diagnostics.py sources --checkpoint runs/enc/encoder.pt \
        [--store VALIDATION.h5] [--precision bf16|fp32]
        FG-ARI and mBO on the validation clips the encoder's training scores, of the
        segmentation read from the decoder's alpha masks (the training figure) and of the one
        read from the corrector's last slot attention: tells whether a fault (a rim in a spare
        slot) comes from slot attention itself or from the decoder. bf16 (the default) runs
        the model as training's validation does under trainer=cpu, so the alpha figure is the
        training's own.
    python eval/encoder_diagnostics.py errors (--checkpoint runs/enc/encoder.pt | --slots
        runs/enc/slots/validation.h5) [--store VALIDATION.h5] [--precision bf16|fp32]
        [--min-pixels 10] [--share 0.2] [--list]
        what is wrong with each object of the validation clips the encoder's training scores
        (the alpha masks' segmentation, as the training's figure), or of a slot store's whole
        videos: counts of objects held by two slots at once within frames, moved to another
        slot, sharing their slot with another object (over a whole video, also one slot taking
        two objects in turn), or inside the background's slot, and of whole ones.
    python eval/encoder_diagnostics.py logits --checkpoint runs/enc/encoder.pt [--store VALIDATION.h5]
        [--video 2] [--frame 0]
        what decides which slot takes an object: per ground-truth object of one frame of one
        validation video (run from the validation's initial slots), the mean over its feature
        pixels of each corrected slot's attention logit against it (query-key, before any
        bias) and of each slot's locality bias there, with each slot's attention mass (README,
        Encoder: colour outweighed the locality bias, and dark objects shared one slot).
    python eval/encoder_diagnostics.py copies --checkpoint runs/enc/encoder.pt [--store VALIDATION.h5]
        [--video 0] [--frames 48] [--distance 0.5] [--show 0 5 20]
        slots that are copies of one another, over the first frames of one validation video
        from the validation's initial slots: per frame shown, each slot's attention mass (in
        feature pixels) and its distance to the nearest other slot; then the share of frames
        with at least one pair of slots closer than --distance (README, Encoder: near-empty
        slots become one vector, and an entering object is split between the copies).

Each prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import torch
import torch.nn.functional as F

from causaljepa.data.store import VideoStore
from causaljepa.evaluation.object_discovery import ERROR_CLASSES, object_classes, object_errors, slot_switches
from causaljepa.models.savi import frames_to_input, log_density, segmentation
from causaljepa.training.encoder import (
    VAL_SEED,
    ClipConfig,
    Validator,
    discovery_metrics,
    load_encoder,
    resolution_ceiling,
)
from causaljepa.training.loop import autocast


def ceiling(store: Path, resolutions: list[int]) -> None:
    clips = ClipConfig()
    with VideoStore(store) as vs:
        n = min(clips.val_videos, vs.num_videos)
        masks = torch.stack([torch.from_numpy(vs.read("masks", i, 0, clips.val_frames)) for i in range(n)])
    for r in resolutions:
        print(json.dumps({"diagnostic": "resolution_ceiling", "resolution": r, "videos": n,
                          "frames": clips.val_frames, **resolution_ceiling(masks, r)}))  # fmt: skip


def _store_segments(slots: Path, store: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A slot store's segments, upsampled to its video store's masks, and the masks: (B, T, H, W) each."""
    with h5py.File(slots, "r") as f:
        seg = torch.from_numpy(f["segments"][:]).long()  # (B, T, R, R) slot ids at the model's resolution
        made_from = f.attrs.get("video_store")
    if made_from != store.name:
        raise SystemExit(f"--slots {slots} was made from {made_from!r}, not from --store {store}")
    with VideoStore(store) as vs:
        n, t = vs.num_videos, vs.num_frames
        masks = torch.stack([torch.from_numpy(vs.read("masks", i, 0, t)) for i in range(n)])
    if masks.shape[:2] != seg.shape[:2]:
        raise SystemExit(
            f"--slots {slots}: {tuple(seg.shape[:2])} videos x frames, --store {store}: {(n, t)}"
        )
    return F.interpolate(seg.float(), size=masks.shape[-2:], mode="nearest").long(), masks.long()


def consistency(slots: Path, store: Path, thresholds: list[int]) -> None:
    seg, masks = _store_segments(slots, store)
    for t in thresholds:
        # an object is consistent (temporal_consistency) exactly when its best slot never changes
        switches, returns, seen = slot_switches(masks.long(), seg, min_pixels=t)
        n, c = int(seen.sum()), int((seen & (switches == 0)).sum())
        total, back = int(switches[seen].sum()), int(returns[seen].sum())
        print(json.dumps({"diagnostic": "temporal_consistency", "min_pixels": t, "consistent": c,
                          "objects": n, "fraction": c / n if n else float("nan")}))  # fmt: skip
        print(json.dumps({"diagnostic": "slot_switches", "min_pixels": t, "objects": n,
                          "switches": total, "per_object": total / n if n else float("nan"),
                          "returning": back / total if total else float("nan")}))  # fmt: skip


def _validation_maps(
    checkpoint: Path, store: Path | None, precision: str
) -> tuple[Validator, torch.Tensor, torch.Tensor]:
    """The checkpoint's validation clips (those its training scored, from its data root unless
    ``store``), their alpha masks and slot attention, in ``precision``."""
    model, ckpt = load_encoder(checkpoint)
    if store is None:  # the validation videos of the data the encoder was trained on
        store = Path(ckpt["extra"]["data_root"]) / "validation.h5"
    clips = ClipConfig(**ckpt["extra"].get("clips", {}))  # the clips its training validated on
    with VideoStore(store) as vs:
        validator = Validator(vs, clips, batch_size=8)
    with autocast(torch.device("cpu"), precision):
        alpha, attn, _ = validator.maps(model)
    return validator, alpha, attn


def sources(checkpoint: Path, store: Path | None, precision: str) -> None:
    validator, alpha, attn = _validation_maps(checkpoint, store, precision)
    for name, maps in (("alpha", alpha), ("attention", attn)):
        row = {"diagnostic": "segmentation_source", "source": name, "checkpoint": str(checkpoint)}
        row.update(precision=precision, **discovery_metrics(maps, validator.masks))
        print(json.dumps(row))


def errors(
    checkpoint: Path | None,
    slots: Path | None,
    store: Path | None,
    precision: str,
    min_pixels: int,
    share: float,
    listing: bool,
) -> None:
    if slots is not None:  # whole videos: the slot store's segments
        store = store or Path("datasets/clevrer_sim/validation.h5")
        seg, masks = _store_segments(slots, store)
        source = {"slots": str(slots)}

        def frame(b: int, t: int) -> torch.Tensor:
            with VideoStore(store) as vs:
                return torch.from_numpy(vs.read("frames", b, t, t + 1)[0])
    else:
        validator, alpha, _ = _validation_maps(checkpoint, store, precision)
        masks = validator.masks.long()
        seg = segmentation(alpha, tuple(masks.shape[-2:]))  # (B, T, H, W)
        source = {"checkpoint": str(checkpoint), "precision": precision}

        def frame(b: int, t: int) -> torch.Tensor:
            return validator.frames[b, t]

    counts = object_errors(masks, seg, min_pixels=min_pixels, share=share)
    print(
        json.dumps(
            {"diagnostic": "object_errors", **source, "min_pixels": min_pixels, "share": share, **counts}
        )
    )
    if not listing or not counts["objects"]:
        return
    classes = object_classes(masks, seg, min_pixels=min_pixels, share=share)
    for b, o in (classes["seen"] & ~classes["whole"]).nonzero().tolist():
        t = int(classes["first"][b, o])
        rgb = frame(b, t)[masks[b, t] == o + 1].float().mean(0)  # the object's mean colour there
        print(json.dumps({"diagnostic": "object_error", "video": b, "object": o + 1, "first_frame": t,
                          "rgb": [round(float(c)) for c in rgb], "best_slot": int(classes["best"][b, o]),
                          "classes": [k for k in ERROR_CLASSES if classes[k][b, o]]}))  # fmt: skip


def _video_clip(checkpoint: Path, store: Path | None, video: int, frames: int):
    """The encoder, and the first ``frames`` frames and masks of one validation video."""
    model, ckpt = load_encoder(checkpoint)
    if store is None:
        store = Path(ckpt["extra"]["data_root"]) / "validation.h5"
    with VideoStore(store) as vs:
        if not 0 <= video < vs.num_videos:
            raise SystemExit(f"--video {video}: {store} has videos 0..{vs.num_videos - 1}")
        n = min(frames, vs.num_frames)
        clip = torch.from_numpy(vs.read("frames", video, 0, n))[None]
        masks = torch.from_numpy(vs.read("masks", video, 0, n)) if vs.has("masks") else None
    return model, clip, masks


@torch.no_grad()
def logits(checkpoint: Path, store: Path | None, video: int, frame: int) -> None:
    model, clip, masks = _video_clip(checkpoint, store, video, frame + 1)
    if masks is None:
        raise SystemExit("logits: the store has no masks to say which pixels are which object")
    if frame >= clip.shape[1]:
        raise SystemExit(f"--frame {frame}: the video has frames 0..{clip.shape[1] - 1}")
    model.eval()
    gen = torch.Generator().manual_seed(VAL_SEED)
    init = model.corrector.init_slots(1, model.cfg.num_slots, gen)
    out = model(clip, initial_slots=init, generator=gen)
    c, s = model.corrector, model.encoder.size
    feats = model.encoder(
        frames_to_input(clip[:, frame : frame + 1], model.cfg.resolution)[:, 0]
    )  # (1, N, D)
    content = c.logits(out.slots[:, frame], c.keys(c.norm_inputs(feats)))[0]  # (K, N)
    attn = out.attn[:, frame]  # (1, K, N)
    bias = (
        model.locality_bias(log_density(attn, s, s))[0]
        if model.cfg.locality > 0
        else torch.zeros_like(content)
    )
    ids = F.interpolate(masks[frame][None, None].float(), size=(s, s), mode="nearest").long().flatten()
    print(json.dumps({"diagnostic": "slot_mass", "video": video, "frame": frame,
                      "mass": [round(float(m), 1) for m in attn[0].sum(-1)]}))  # fmt: skip
    for o in ids.unique().tolist():
        at = ids == o
        print(json.dumps({"diagnostic": "slot_logits", "object": o, "pixels": int(at.sum()),
                          "content": [round(float(x), 1) for x in content[:, at].mean(-1)],
                          "bias": [round(float(x), 1) for x in bias[:, at].mean(-1)]}))  # fmt: skip


@torch.no_grad()
def copies(
    checkpoint: Path, store: Path | None, video: int, frames: int, distance: float, show: list[int]
) -> None:
    model, clip, _ = _video_clip(checkpoint, store, video, frames)
    gen = torch.Generator().manual_seed(VAL_SEED)  # the validation's initial slots, then any redrawn
    init = model.corrector.init_slots(1, model.cfg.num_slots, gen)
    out = model(clip, initial_slots=init, generator=gen)
    slots, mass = out.slots[0].float(), out.attn[0].float().sum(-1)  # (T, K, D), (T, K)
    d = torch.cdist(slots, slots) + torch.diag(torch.full((slots.shape[1],), float("inf")))  # (T, K, K)
    nearest = d.min(dim=-1).values  # (T, K)
    for t in show:
        if 0 <= t < len(slots):
            print(json.dumps({"diagnostic": "slot_copies", "frame": t,
                              "mass": [round(float(m), 2) for m in mass[t]],
                              "nearest": [round(float(x), 2) for x in nearest[t]]}))  # fmt: skip
    with_copies = (nearest < distance).any(dim=-1)  # (T,)
    print(json.dumps({"diagnostic": "frames_with_copies", "checkpoint": str(checkpoint), "video": video,
                      "frames": len(slots), "distance": distance,
                      "fraction": float(with_copies.float().mean())}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("--store", type=Path, default=Path("datasets/clevrer_sim/validation.h5"))
    c.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 64])
    t = sub.add_parser("consistency")
    t.add_argument("--slots", type=Path, required=True)
    t.add_argument("--store", type=Path, default=Path("datasets/clevrer_sim/validation.h5"))
    t.add_argument("--min-pixels", type=int, nargs="+", default=[1, 5, 10, 20])
    o = sub.add_parser("sources")
    o.add_argument("--checkpoint", type=Path, required=True)
    o.add_argument("--store", type=Path, default=None, help="default: the checkpoint's data root")
    o.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    e = sub.add_parser("errors")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="the validation clips its training scored")
    which.add_argument("--slots", type=Path, help="a slot store's whole videos")
    e.add_argument(
        "--store", type=Path, default=None,
        help="default: the checkpoint's data root, or datasets/clevrer_sim/validation.h5 with --slots",
    )  # fmt: skip
    e.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    e.add_argument("--min-pixels", type=int, default=10, help="pixels an object needs to count in a frame")
    e.add_argument("--share", type=float, default=0.2, help="the share of an object a second slot must hold")
    e.add_argument("--list", action="store_true", help="also a line per object that is not whole")
    g = sub.add_parser("logits")
    g.add_argument("--checkpoint", type=Path, required=True)
    g.add_argument("--store", type=Path, default=None, help="default: the checkpoint's data root")
    g.add_argument("--video", type=int, default=2)
    g.add_argument("--frame", type=int, default=0)
    k = sub.add_parser("copies")
    k.add_argument("--checkpoint", type=Path, required=True)
    k.add_argument("--store", type=Path, default=None, help="default: the checkpoint's data root")
    k.add_argument("--video", type=int, default=0)
    k.add_argument("--frames", type=int, default=48, help="frames from the video's start")
    k.add_argument("--distance", type=float, default=0.5, help="slots closer than this are copies")
    k.add_argument("--show", type=int, nargs="*", default=[0, 5, 20], help="frames to print per slot")
    a = p.parse_args()
    if a.what == "ceiling":
        torch.set_num_threads(1)
        ceiling(a.store, a.resolutions)
    elif a.what == "consistency":
        torch.set_num_threads(1)
        consistency(a.slots, a.store, a.min_pixels)
    elif a.what == "errors":
        errors(a.checkpoint, a.slots, a.store, a.precision, a.min_pixels, a.share, a.list)
    elif a.what == "logits":
        logits(a.checkpoint, a.store, a.video, a.frame)
    elif a.what == "copies":
        copies(a.checkpoint, a.store, a.video, a.frames, a.distance, a.show)
    else:
        sources(a.checkpoint, a.store, a.precision)


if __name__ == "__main__":
    main()
