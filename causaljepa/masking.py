"""Which slot tokens the predictor must infer (DESIGN.md §6).

A window has T = history + future frames of K slots. ``MaskSampler.sample`` returns a
boolean ``hidden`` (B, T, K): True where the token is replaced by a query and becomes a
target. In every strategy the first frame is visible (its slots are the identity anchors)
and every future token is hidden; the strategies differ in what they hide in history
frames 1 .. history-1:

- ``object``: whole objects over the whole history after the first frame. The number of
  hidden objects is drawn per sample, uniformly from [min_objects, max_objects] (clipped
  to K). Inferring a hidden object's state from the others is a latent intervention.
- ``none``:   nothing in the history: the no-masking baseline (future prediction only).
- ``token``:  random (frame, slot) history tokens at the budget ``object`` would hide:
  the number of objects n is drawn as for ``object`` and n x (history - 1) tokens are
  hidden, scattered over slots and frames.
- ``tube``:   n objects (drawn as for ``object``), each over one contiguous run of history
  frames of random start and length (at least one frame): partial occlusions.

Action nodes are never masked: the mask covers slot tokens only. Masks are drawn per
sample from the generator passed in (the trainer's persistent, checkpointed generator), so
they differ across samples and steps and repeat across runs with the same seed: unlike the
published code, which re-seeded its mask generator on every call and so hid the same slot
indices for every sample of every epoch (REFERENCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("object", "none", "token", "tube")


@dataclass(frozen=True)
class MaskConfig:
    """configs/masking/*.yaml"""

    strategy: str = "object"
    min_objects: int = 0  # per sample, uniformly from [min_objects, max_objects]
    max_objects: int = 4

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"masking.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"masking: need 0 <= min_objects ({self.min_objects}) <= max_objects ({self.max_objects})"
            )

    @property
    def name(self) -> str:
        """A short name for run directories and tables: none, or <strategy>_<min>-<max>."""
        return "none" if self.strategy == "none" else f"{self.strategy}_{self.min_objects}-{self.max_objects}"


class MaskSampler:
    """Draws ``hidden`` (B, T, K) masks for windows of ``history`` + ``future`` frames of K slots."""

    def __init__(self, cfg: MaskConfig, num_slots: int, history: int, future: int):
        if history < 1 or future < 0 or num_slots < 1:
            raise ValueError(
                f"MaskSampler: need history >= 1 (got {history}), future >= 0 (got {future}), "
                f"num_slots >= 1 (got {num_slots})"
            )
        self.cfg, self.K, self.H, self.F = cfg, num_slots, history, future

    def _counts(self, B: int, gen: torch.Generator) -> torch.Tensor:
        lo, hi = min(self.cfg.min_objects, self.K), min(self.cfg.max_objects, self.K)
        return torch.randint(lo, hi + 1, (B,), generator=gen)  # (B,)

    def sample(self, B: int, generator: torch.Generator) -> torch.Tensor:
        K, H, F = self.K, self.H, self.F
        hidden = torch.zeros(B, H + F, K, dtype=torch.bool)
        hidden[:, H:] = True  # the future is always predicted
        s = self.cfg.strategy
        if s == "none" or H == 1:
            return hidden
        n = self._counts(B, generator)  # (B,) objects (or the object-equivalent budget) per sample
        if s == "object":
            order = torch.rand(B, K, generator=generator).argsort(dim=1)  # a random object order
            chosen = order < n[:, None]  # (B, K): the first n objects of the order
            hidden[:, 1:H] |= chosen[:, None, :]
        elif s == "token":
            slots = (H - 1) * K
            order = torch.rand(B, slots, generator=generator).argsort(dim=1)
            chosen = order < (n * (H - 1))[:, None]  # (B, (H-1) K)
            hidden[:, 1:H] |= chosen.view(B, H - 1, K)
        else:  # tube
            order = torch.rand(B, K, generator=generator).argsort(dim=1)
            chosen = order < n[:, None]  # (B, K)
            start = torch.randint(1, H, (B, K), generator=generator)  # first hidden frame
            length = 1 + (torch.rand(B, K, generator=generator) * (H - start)).long()  # in [1, H - start]
            t = torch.arange(H)[None, :, None]  # (1, H, 1)
            run = (t >= start[:, None, :]) & (t < (start + length)[:, None, :])  # (B, H, K)
            hidden[:, :H] |= run & chosen[:, None, :]
        return hidden


def targets(hidden: torch.Tensor, history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two loss terms' token sets: (hidden history tokens, future tokens), each (B, T, K) bool."""
    hist = hidden.clone()
    hist[:, history:] = False
    fut = hidden.clone()
    fut[:, :history] = False
    return hist, fut
