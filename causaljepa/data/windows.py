"""Training windows for the predictor: history + future frames of slots, at a frame stride.

A window starting at frame s covers frames s, s + stride, ..., s + (T - 1) stride with
T = history + future. Its action node at step j carries the actions of every frame in
[s + j stride, s + (j + 1) stride), concatenated (stride x A values), so no action between
two window frames is lost or blurred.

Storage stays separate from transforms: windows are the stored float32 slots; masks are
drawn by the caller (``causaljepa.masking``).
"""

from __future__ import annotations

import numpy as np
import torch

from .slot_store import SlotStore

CACHE_BYTES = 2**30  # default: slot arrays up to this size are read into memory once


def step_actions(actions: np.ndarray, start: int, steps: int, stride: int) -> np.ndarray:
    """Per-frame actions (T_video, A) -> (steps, stride A): window step j holds the actions of
    frames [start + j stride, start + (j + 1) stride), concatenated; frames past the video's
    end count as no action."""
    A = actions.shape[1]
    out = np.zeros((steps * stride, A), np.float32)
    avail = actions[start : start + steps * stride]
    out[: len(avail)] = avail
    return out.reshape(steps, stride * A)


class WindowSampler:
    """Windows of ``history + future`` frames at ``stride`` from a slot store.

    ``sample(B, generator)`` -> {"slots": (B, T, K, D), "actions": (B, T, stride A)?, "video",
    "start"}; windows lie inside frames [0, ``frames``) of each video (default: all frames).

    Memory: a slot array of at most ``cache_bytes`` is read into memory once; a larger one is
    streamed, each window read from the HDF5 file as it is drawn (a few chunks of
    (1, 32, K, D) floats, through h5py's 1 MiB chunk cache), so the sampler's memory does not
    grow with the store. The actions (N, T, A) are small and always read once.
    """

    def __init__(
        self,
        store: SlotStore,
        history: int,
        future: int,
        stride: int,
        *,
        frames: int | None = None,
        actions: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ):
        if history < 1 or future < 0 or stride < 1:
            raise ValueError(
                f"history ({history}) >= 1, future ({future}) >= 0, stride ({stride}) >= 1 needed"
            )
        self.store, self.H, self.F, self.stride = store, history, future, stride
        self.T = history + future
        self.frames = store.num_frames if frames is None else frames
        self.span = (self.T - 1) * stride + 1
        if not 1 <= self.frames <= store.num_frames or self.span > self.frames:
            raise ValueError(
                f"{store.path}: windows of {self.T} frames at stride {stride} span {self.span} frames; "
                f"the usable frames are {self.frames} of {store.num_frames}"
            )
        if actions and store.action_dim and store.one_shot:
            raise ValueError(
                f"{store.path} holds one action per video (a PHYRE ball at t = 0), not per-frame actions; "
                "its windows start at frame 0: use causaljepa.training.phyre (cjepa eval phyre)"
            )
        self.starts = self.frames - self.span + 1  # window starts per video
        self.use_actions = actions and store.action_dim > 0
        self.action_dim = store.action_dim * stride if self.use_actions else 0
        self._slots = None
        if store.f["slots"].size * 4 <= cache_bytes:
            self._slots = store.f["slots"][:]  # (N, T, K, D)
        self._actions = store.f["actions"][:] if self.use_actions else None  # (N, T, A): small

    @property
    def streamed(self) -> bool:
        """Whether windows are read from the file as they are drawn (the store is over the cache)."""
        return self._slots is None

    def __len__(self) -> int:
        """The number of distinct windows."""
        return self.store.num_videos * (self.frames - self.span + 1)

    def window(self, video: int, start: int) -> dict:
        end = start + self.span
        if not (0 <= start and end <= self.frames):
            raise IndexError(f"window [{start}, {end}) is outside frames [0, {self.frames})")
        if self._slots is not None:
            slots = self._slots[video, start : end : self.stride]
        else:
            slots = self.store.read("slots", video, start, end, self.stride)
        item = {"slots": torch.from_numpy(np.ascontiguousarray(slots))}  # (T, K, D)
        if self.use_actions:
            item["actions"] = torch.from_numpy(self.step_actions(self._actions[video], start, self.T))
        return item

    def step_actions(self, actions: np.ndarray, start: int, steps: int) -> np.ndarray:
        return step_actions(actions, start, steps, self.stride)

    def batch(self, videos, starts) -> dict:
        items = [self.window(int(v), int(s)) for v, s in zip(videos, starts, strict=True)]
        out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        out["video"] = torch.as_tensor(list(videos))
        out["start"] = torch.as_tensor(list(starts))
        return out

    def sample(self, B: int, generator: torch.Generator) -> dict:
        videos = torch.randint(0, self.store.num_videos, (B,), generator=generator)
        starts = torch.randint(0, self.starts, (B,), generator=generator)
        return self.batch(videos.tolist(), starts.tolist())

    def fixed(self, n: int, seed: int) -> dict:
        """``n`` windows drawn once from ``seed``: the same set whatever the training state."""
        return self.sample(n, torch.Generator().manual_seed(seed))
