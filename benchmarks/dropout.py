"""Speed of dropout on CPU: ``nn.Dropout`` against the blocks' ``Dropout`` (``dropout_mask``),
next to a linear layer of the same width for scale.

    python benchmarks/dropout.py [--shape 64 300 64] [--p 0.1] [--repeats 5] [--threads 0]

The default shape is a QA-reader batch: 64 examples x 300 tokens x width 64. One JSON line per
op: forward + backward in ms (best of ``--repeats``), and the ratio to the linear layer's
forward + backward, with the machine's fp32 matmul peak.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from causaljepa.benchmarking import best_ms, device_ceilings, emit
from causaljepa.models.predictor import Dropout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs="+", default=[64, 300, 64], help="the activations; last: width")
    p.add_argument("--p", type=float, default=0.1, help="the dropout rate")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    a = p.parse_args()
    if any(n < 1 for n in a.shape) or a.repeats < 1 or not 0 < a.p < 1:
        p.error("--shape and --repeats must be >= 1 and 0 < --p < 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(*a.shape, requires_grad=True)
    ops = {
        "linear": nn.Linear(a.shape[-1], a.shape[-1]),
        "nn_dropout": nn.Dropout(a.p),
        "cpu_dropout": Dropout(a.p),
    }
    ms = {name: best_ms(lambda op=op: op(x).sum().backward(), a.repeats) for name, op in ops.items()}
    machine = device_ceilings(torch.device("cpu"))
    for name, t in ms.items():
        emit({"benchmark": "dropout", "op": name, "forward_backward_ms": round(t, 2),
              "of_linear": round(t / ms["linear"], 2),
              "config": {"shape": a.shape, "p": a.p, "threads": torch.get_num_threads()},
              "machine": machine})  # fmt: skip


if __name__ == "__main__":
    main()
