"""Keep freed memory in the process on Linux/glibc, so CPU training does not page-fault.

A training step allocates and frees the same large activations (tens of MB) every step.
glibc serves allocations above its mmap threshold with fresh ``mmap`` calls and returns
them to the OS on free, so every step pays page faults for memory it just gave back: on a
2-core machine that was a third of the encoder's training time, spent in the kernel.
Raising the mmap threshold to its maximum, growing the heap in 1 GiB steps of address space
(pages become resident only when touched) and never trimming it lets the allocator reuse
that memory. Timed with ``train_step`` on the quick encoder, with and without this call
(bf16, batch 8 x 6 frames, 2 cores): 0.32-0.35 s
per step before, 0.23 s after; the heap padding is what matters.

This changes allocation only, never results. It does nothing where glibc's ``mallopt`` is
not available (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems

_done = False


def keep_freed_memory(device: torch.device | str = "cpu") -> bool:
    """Tune glibc's malloc once per process for CPU work on ``device``; True if it took effect
    (a CUDA device's tensors do not live in malloc's heap: nothing to do)."""
    global _done
    if _done:
        return True
    if torch.device(device).type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok &= mallopt(M_TOP_PAD, 2**30) == 1
    _done = ok
    return ok
