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


def image_grid(rows: list[tuple[str, np.ndarray]], titles: list[str], panel: float, aspect: float = 1.0,
               label_size: int = 8, extra_height: float = 1.0):  # fmt: skip
    """A figure of image rows: rows[r] = (label, images (n, H, W, 3)), one column per title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(titles)
    fig, axes = plt.subplots(
        len(rows), n, figsize=(n * panel + 0.6, len(rows) * panel * aspect + extra_height), squeeze=False
    )
    for r, (label, imgs) in enumerate(rows):
        for k, title in enumerate(titles):
            ax = axes[r, k]
            ax.imshow(imgs[k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
            if k == 0:
                ax.set_ylabel(label, fontsize=label_size)
    return fig


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
    titles = []
    for t in ts:
        near = [p for f, ps in hits.items() if abs(f - int(t)) <= 1 for p in ps]
        title = f"t={t}" + ("" if t < observed else " (future)")
        if near:
            title += "\ncollision " + ", ".join(f"{a}-{b}" for a, b in near)
        titles.append(title)
    H, W = frames.shape[1], frames.shape[2]
    # 1.8 inches per panel width; the height follows the frame's aspect
    fig = image_grid(rows, titles, panel=1.8, aspect=H / W)
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


def show_slots(model, store_path: str | os.PathLike, video: int, out: str | os.PathLike, num_frames: int = 8,
               seed: int = 1234) -> Path:  # fmt: skip
    """Save a PNG of what the encoder sees in one video.

    The encoder runs over the whole video (slots carried from frame to frame, as in
    extraction); ``num_frames`` evenly spaced frames are shown. Rows: the frames; the
    reconstructions; the segmentation (each pixel tinted by the slot that owns it); then one
    row per slot, that slot's colours weighted by its alpha mask. A slot that keeps its object
    keeps its row.
    """
    import torch

    from .models.savi import slot_ids

    if num_frames < 1:
        raise ValueError(f"show_slots: num_frames must be >= 1, got {num_frames}")
    with VideoStore(store_path) as store:
        frames = torch.from_numpy(store.read("frames", video))[None]  # (1, T, H, W, 3)
        vid, T = store.video_ids[video], store.num_frames
    gen = torch.Generator().manual_seed(seed)  # the initial slots, then any redrawn ones
    init = model.corrector.init_slots(1, model.cfg.num_slots, gen)
    with torch.no_grad():
        o = model.eval()(frames, initial_slots=init, generator=gen)
    ts = np.unique(np.linspace(0, T - 1, min(num_frames, T)).round().astype(int))

    def to_img(x):  # (..., 3, R, R) in [-1, 1] -> (..., R, R, 3) uint8
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).numpy()

    recon = to_img(o.recon[0, ts])  # (n, R, R, 3)
    target = to_img(o.target[0, ts])
    seg = slot_ids(o.alpha[0, ts], 1).numpy()  # (n, R, R)
    white = torch.ones_like(o.rgb[0, ts])
    per_slot = to_img(o.alpha[0, ts][:, :, None] * o.rgb[0, ts] + (1 - o.alpha[0, ts][:, :, None]) * white)
    rows = [
        ("input", target),
        ("reconstruction", recon),
        ("segmentation", overlay_masks(target, seg + 1, alpha=0.6)),
    ]
    share = o.alpha[0].mean(dim=(0, 2, 3))  # (K,) the slot's mean alpha over the video
    rows += [(f"slot {k} ({100 * float(share[k]):.0f}%)", per_slot[:, k]) for k in range(model.cfg.num_slots)]
    fig = image_grid(rows, [f"t={t}" for t in ts], panel=1.3, label_size=7, extra_height=0.6)
    fig.suptitle(f"{vid}: slots of the encoder ({model.cfg.num_slots} slots at {model.cfg.resolution}px)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def plot_curves(
    curves: dict[str, list[float]], x: list[float], out: str | os.PathLike, *, title: str, xlabel: str,
    ylabel: str, log: bool = True,
) -> Path:  # fmt: skip
    """Line plot of named curves over x (e.g. rollout error per horizon against the baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        ax.plot(x, ys, marker="o", markersize=3, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)
