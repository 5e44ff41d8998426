"""Shared pieces of benchmarks/: the machine's own ceiling and one JSON line per figure."""

from __future__ import annotations

import json
import os
import platform
import time


def matmul_gflops(dtype, device, n: int = 2048, repeats: int = 5) -> float:
    """The matrix-multiply rate (GFLOP/s) of ``device`` in ``dtype`` with torch's current thread
    count: best of ``repeats`` after a warm-up."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timed(lambda: a @ b, 1, device)  # warm-up
    return 2 * n**3 / min(timed(lambda: a @ b, 1, device) for _ in range(repeats)) / 1e9


def machine(device=None) -> dict:
    """What the machine is, and the fp32 matmul rate of ``device`` (default: the CPU)."""
    import torch

    device = torch.device("cpu") if device is None else device
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fp32_matmul_gflops": round(matmul_gflops(torch.float32, device), 1),
    }


def device_ceilings(device) -> dict:
    """``machine()`` for ``device``: its fp32 and bf16 matrix-multiply rates (GFLOP/s), and whether
    it computes bf16 natively. Where it does not, bf16 is emulated at a few GFLOP/s, and its rate is
    measured on 512 x 512 matrices instead of 2048 x 2048 (a minute of the machine otherwise)."""
    import torch

    from .training.loop import native_bf16

    info = machine(device)
    native = native_bf16(device.type)
    info["bf16_native"] = native
    info["bf16_matmul_gflops"] = round(matmul_gflops(torch.bfloat16, device, n=2048 if native else 512), 1)
    return {**info, "device": str(device)}


def timed(fn, steps: int, device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (CUDA work waited for)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def best_ms(fn, repeats: int, device=None) -> float:
    """Milliseconds of the fastest of ``repeats`` calls of ``fn`` after one warm-up call."""
    import torch

    device = torch.device("cpu") if device is None else device
    fn()
    return min(timed(fn, 1, device) for _ in range(repeats)) * 1000


def flop_rates(flops: float, seconds: float, ceilings: dict, precision: str) -> dict:
    """A step's FLOPs and time as achieved GFLOP/s and fractions of the measured peaks: of the
    fp32 peak always, of the bf16 peak for a bf16 step only (an fp32 step against an emulated
    bf16 peak gave fractions like 30, which mean nothing)."""
    achieved = flops / seconds / 1e9
    out = {
        "step_s": round(seconds, 4),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_gflops": round(achieved, 1),
        "fraction_of_fp32_peak": round(achieved / ceilings["fp32_matmul_gflops"], 3),
    }
    if precision == "bf16" and ceilings.get("bf16_matmul_gflops"):
        out["fraction_of_bf16_peak"] = round(achieved / ceilings["bf16_matmul_gflops"], 3)
    return out


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
