"""Pictures a person looks at: frame strips with instance masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data.store import VideoStore
from .io import save_figure

# distinct overlay colours for instance ids 1..10 (0 = background is left unpainted)
INSTANCE_COLORS = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 190),
    ],
    np.float32,
)


def overlay_masks(frames: np.ndarray, masks: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Paint instance masks over frames.

    frames: (T, H, W, 3) uint8;  masks: (T, H, W) instance ids, 0 = background
    returns (T, H, W, 3) uint8 with each instance tinted in its colour and its outline drawn
    """
    out = frames.astype(np.float32)
    ids = masks.astype(np.int64)
    fg = ids > 0
    color = INSTANCE_COLORS[(ids - 1) % len(INSTANCE_COLORS)]  # (T, H, W, 3)
    out[fg] = (1 - alpha) * out[fg] + alpha * color[fg]
    # outline: pixels whose right or lower neighbour belongs to another instance
    edge = np.zeros_like(fg)
    edge[:, :, :-1] |= ids[:, :, :-1] != ids[:, :, 1:]
    edge[:, :-1, :] |= ids[:, :-1, :] != ids[:, 1:, :]
    edge &= fg
    out[edge] = color[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def show_video(
    store_path: str | os.PathLike,
    video: int,
    out: str | os.PathLike,
    num_frames: int = 8,
    counterfactual: int | None = None,
) -> Path:
    """Save a PNG strip of ``num_frames`` evenly spaced frames of one video.

    Rows: the frames; the frames with instance masks (simulated data); the world re-simulated
    without object ``counterfactual`` (stores generated with counterfactual videos).
    Frames with a collision (within +-1 frame) are marked in their title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with VideoStore(store_path) as store:
        if num_frames < 1:
            raise ValueError(f"show_video: num_frames must be >= 1, got {num_frames}")
        ts = np.unique(
            np.linspace(0, store.num_frames - 1, min(num_frames, store.num_frames)).round().astype(int)
        )
        frames = store.read("frames", video, times=ts)  # (n, H, W, 3)
        rows = [("frames", frames)]
        if store.has("masks"):
            rows.append(("instance masks", overlay_masks(frames, store.read("masks", video, times=ts))))
        ann = store.annotation(video)
        if counterfactual is not None:
            if not store.has("cf_frames"):
                raise ValueError(
                    f"{store_path}: no counterfactual videos in this store; generate with "
                    "data.generator.counterfactuals=true"
                )
            if (
                not 0 <= counterfactual < store.max_objects
                or not store.read("cf_valid", video)[counterfactual]
            ):
                raise ValueError(f"{store_path}: video {video} has no object {counterfactual}")
            cf = store.read("cf_frames", video, times=ts, removed=counterfactual)
            cfm = store.read("cf_masks", video, times=ts, removed=counterfactual)
            rows.append((f"without object {counterfactual}", overlay_masks(cf, cfm)))
        vid = store.video_ids[video]
        observed = store.observed_frames
    hits = {}
    for c in ann.get("collision", []):
        hits.setdefault(int(c["frame_id"]), []).append(tuple(c["object_ids"]))
    n, H, W = len(ts), frames.shape[1], frames.shape[2]
    panel = 1.8  # inches per panel width; height follows the frame's aspect
    fig, axes = plt.subplots(
        len(rows), n, figsize=(n * panel + 0.6, len(rows) * panel * H / W + 1.0), squeeze=False
    )
    for r, (label, imgs) in enumerate(rows):
        for k, t in enumerate(ts):
            ax = axes[r, k]
            ax.imshow(imgs[k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                near = [p for f, ps in hits.items() if abs(f - int(t)) <= 1 for p in ps]
                title = f"t={t}" + ("" if t < observed else " (future)")
                if near:
                    title += "\ncollision " + ", ".join(f"{a}-{b}" for a, b in near)
                ax.set_title(title, fontsize=7)
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
    # legend: object id (as in the collision labels), its mask colour and its description
    from matplotlib.patches import Patch

    props = ann.get("object_property", [])
    handles = [
        Patch(
            color=INSTANCE_COLORS[p["object_id"] % len(INSTANCE_COLORS)] / 255,
            label=f"{p['object_id']}: {p['color']} {p['material']} {p['shape']}",
        )
        for p in props
    ]
    fig.suptitle(vid, fontsize=9)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    return save_figure(fig, out, dpi=110)
