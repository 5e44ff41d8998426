"""Training clips from a video store: short windows of frames (and masks), drawn at random.

Storage stays separate from transforms: clips are raw uint8 arrays as stored; the model
resizes and normalises. Sampling uses a ``torch.Generator`` owned by the caller, so a run
resumed from a checkpoint (which saves that generator's state) draws the same clips.
"""

from __future__ import annotations

import torch

from .store import VideoStore


class ClipSampler:
    """Random clips of ``length`` frames, ``stride`` apart, from a store.

    ``sample(batch, generator)`` -> uint8 (B, L, H, W, 3), and masks (B, L, H, W) with
    ``with_masks=True``.
    """

    def __init__(self, store: VideoStore, length: int, stride: int = 1, with_masks: bool = False):
        span = (length - 1) * stride + 1
        if length < 1 or stride < 1:
            raise ValueError(f"clip length ({length}) and stride ({stride}) must be >= 1")
        if span > store.num_frames:
            raise ValueError(
                f"{store.path}: clips of {length} frames at stride {stride} span {span} frames, "
                f"longer than the store's videos ({store.num_frames} frames)"
            )
        if with_masks and not store.has("masks"):
            raise ValueError(f"{store.path}: has no instance masks (only simulated stores do)")
        self.store, self.length, self.stride, self.span = store, length, stride, span
        self.with_masks = with_masks
        self.starts = store.num_frames - span + 1  # clip starts per video

    def read(self, video: int, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        end = start + self.span
        frames = torch.from_numpy(self.store.read("frames", video, start, end, self.stride))
        masks = None
        if self.with_masks:
            masks = torch.from_numpy(self.store.read("masks", video, start, end, self.stride))
        return frames, masks

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        videos = torch.randint(0, self.store.num_videos, (batch,), generator=generator).tolist()
        starts = torch.randint(0, self.starts, (batch,), generator=generator).tolist()
        return self.clips(list(zip(videos, starts, strict=True)))

    def clips(self, items: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clips at (video, start) ``items`` (as ``sample`` returns them)."""
        items = [self.read(v, s) for v, s in items]
        frames = torch.stack([f for f, _ in items])  # (B, L, H, W, 3)
        masks = torch.stack([m for _, m in items]) if self.with_masks else None  # (B, L, H, W)
        return frames, masks
