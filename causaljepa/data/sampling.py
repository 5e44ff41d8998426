"""Which training items each step reads: shuffled epochs, split over the training processes.

An item is one (video, start) pair: a window of the predictor or a clip of the encoder.
Every video has the same number of starts, so the items are numbered
``video * starts + start``. ``ItemStream`` hands each process its items step after step:
the items of a ``torch.utils.data.DistributedSampler`` (shuffled with ``seed + epoch``),
one epoch after another with no item dropped at an epoch's end, ``per_process`` items a
step. The stream is a function of the step alone, so

- a run resumed at step s reads exactly what the uninterrupted run read at step s, and
- with N processes the union of their items at a step is the one-process batch at that
  step (where the item count is a multiple of N; otherwise the sampler pads each epoch
  with repeats of its first items, as PyTorch's does, and the epochs differ by those).

Within a step, process r's j-th item is item j N + r of the global batch
(``global_positions``): per-item draws made for the global batch are split the same way.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from ..training.distributed import ONE, Dist


class ItemIndex(torch.utils.data.Dataset):
    """Items ``video * starts + start`` -> (video, start)."""

    def __init__(self, num_videos: int, starts: int):
        if num_videos < 1 or starts < 1:
            raise ValueError(f"ItemIndex: need num_videos >= 1 and starts >= 1, got {num_videos}, {starts}")
        self.num_videos, self.starts = num_videos, starts

    def __len__(self) -> int:
        return self.num_videos * self.starts

    def __getitem__(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} is outside [0, {len(self)})")
        return divmod(int(i), self.starts)


class ItemStream:
    """This process's items, ``per_process`` a step, over shuffled epochs of the ``starts``
    windows (or clips) of each of ``num_videos`` videos."""

    def __init__(self, num_videos: int, starts: int, batch_size: int, seed: int, d: Dist = ONE):
        self.index, self.d = ItemIndex(num_videos, starts), d
        self.per_process = d.shard(batch_size)
        self.sampler = DistributedSampler(
            self.index, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed, drop_last=False
        )
        self.epoch_length = len(self.sampler)  # items of one epoch for this process
        self._epoch, self._order = -1, []

    def _epoch_items(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        return self._order

    def items(self, step: int) -> list[tuple[int, int]]:
        """(video, start) of this process's items at ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        first = step * self.per_process
        out = []
        for pos in range(first, first + self.per_process):
            epoch, offset = divmod(pos, self.epoch_length)
            out.append(self.index[self._epoch_items(epoch)[offset]])
        return out

    def global_positions(self) -> slice:
        """Where this process's items sit in the global batch: r, r + N, r + 2N, ..."""
        return slice(self.d.rank, None, self.d.world_size)
