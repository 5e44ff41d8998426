"""Fused scaled dot-product attention, computed where it is fastest and most accurate.

``sdpa`` is ``F.scaled_dot_product_attention`` except for bf16 inputs on a CPU: there it runs in
fp32 (autocast off) and returns bf16. torch's CPU flash-attention kernel in bf16 has a slow
backward: for the main job's predictor (width 128, 4 layers, 112 tokens, batch 32, one thread)
it took 224 ms of a 322 ms training step, against 44 ms in fp32, so under bf16 autocast the
whole step was slower than in fp32 (README, Precision on CPUs). The forward costs the same in
either. The projections around attention stay in bf16, where their matrix products are fast.
On CUDA the bf16 kernels are the fast ones and nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """q (..., Nq, E), k (..., Nk, E), v (..., Nk, Ev), attn_mask bool or additive, broadcast to
    (..., Nq, Nk) -> (..., Nq, Ev) in q's dtype: softmax(q k^T / sqrt(E) + mask) v."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.float()  # SDPA takes a float mask only in the query's dtype
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask, dropout_p=dropout_p
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
