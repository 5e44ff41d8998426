"""Slot attention (Locatello et al. 2020) with optional implicit differentiation (Chang et al. 2022).

Slots compete for input features: the attention is a softmax over *slots* (each input goes
to the slots that explain it), then normalised over *inputs* (each slot takes a weighted
mean of what it won). A GRU and a residual MLP update the slots; the step is repeated.

Every slot goes through the same weights, and the initial slots are drawn from one shared
learnable Gaussian, so slots are exchangeable: permuting the initial slots permutes the
output slots and the attention rows and changes nothing else.

Shapes: B batch, N inputs, K slots, D slot width, C input width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa

UPDATE_NORMS = ("mean", "sum")


def check_update(update_norm: str, update_mass: float, gate_mass: float, prefix: str) -> None:
    """ValueError, its message starting with ``prefix``, unless ``update_norm``, ``update_mass``
    and ``gate_mass`` are valid options of ``SlotAttention``."""
    if update_norm not in UPDATE_NORMS:
        raise ValueError(f"{prefix}update_norm must be one of {list(UPDATE_NORMS)}, got {update_norm!r}")
    if not update_mass >= 0:
        raise ValueError(f"{prefix}update_mass must be >= 0, got {update_mass}")
    if update_mass > 0 and update_norm != "mean":
        raise ValueError(f"{prefix}update_mass applies to update_norm 'mean', not {update_norm!r}")
    if not gate_mass >= 0:
        raise ValueError(f"{prefix}gate_mass must be >= 0, got {gate_mass}")


class SlotAttention(nn.Module):
    """``forward(inputs (B, N, C), slots (B, K, D)) -> slots (B, K, D), attn (B, K, N)``.

    ``implicit=True`` runs all but the last iteration without gradient and passes the
    gradient of the last one straight through to the initial slots (first-order implicit
    differentiation): constant memory in the number of iterations, and the known cure for
    the unstable gradients of unrolled slot attention.

    ``update_norm``: how a slot's attention-weighted values are normalised. ``"mean"`` (the
    paper's) divides by the slot's own attention mass, so a slot that won almost nothing gets
    an update as large as one that won an object, and a near-empty slot keeps a full copy of
    whatever it grazes. ``"sum"`` divides by N / K, the same for every slot (Krimmel et al.
    2024, selection-size normalisation), so the update carries the slot's mass: a slot with
    the average share N / K gets the weighted mean, an empty one almost nothing.
    ``update_mass`` m > 0 (with ``"mean"``) divides by the slot's mass plus m inputs' worth
    instead: a slot holding an object of many more than m inputs gets almost the weighted
    mean, a slot holding less than m inputs gets a damped update, mass / (mass + m) of it.

    ``gate_mass`` g > 0 damps the step itself: a slot moves by mass / (mass + g) of the change
    the GRU and the MLP make. ``update_mass`` damps only what the GRU is fed, and a GRU fed
    nothing still maps every state toward one fixed point: near-empty slots became one and the
    same vector within a few frames (README, Encoder). Gated, they converge more slowly (the
    slot predictor between frames still draws them together).

    ``cosine_scale`` c > 0: the attention logits are c times the cosine similarity of query and
    key instead of their dot product over sqrt(D), so their range is fixed at [-c, c]. With the
    dot product the model can grow the logits without bound as it trains, and an additive bias
    (the encoder's locality) then weighs less and less against them.
    """

    def __init__(
        self,
        dim: int,
        input_dim: int,
        iters: int = 3,
        mlp_hidden: int = 128,
        implicit: bool = True,
        eps: float = 1e-8,
        update_norm: str = "mean",
        update_mass: float = 0.0,
        gate_mass: float = 0.0,
        cosine_scale: float = 0.0,
    ):
        super().__init__()
        if iters < 1:
            raise ValueError(f"SlotAttention: iters must be >= 1, got {iters}")
        check_update(update_norm, update_mass, gate_mass, "SlotAttention: ")
        if not cosine_scale >= 0:
            raise ValueError(f"SlotAttention: cosine_scale must be >= 0, got {cosine_scale}")
        self.dim, self.iters, self.implicit, self.eps = dim, iters, implicit, eps
        self.update_norm, self.update_mass, self.gate_mass = update_norm, update_mass, gate_mass
        self.cosine = cosine_scale > 0
        self.scale = cosine_scale if self.cosine else dim**-0.5
        self.norm_inputs = nn.LayerNorm(input_dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(input_dim, dim, bias=False)
        self.to_v = nn.Linear(input_dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, dim))
        # the shared Gaussian every initial slot is drawn from
        self.init_mu = nn.Parameter(torch.empty(dim))
        self.init_log_sigma = nn.Parameter(torch.empty(dim))
        bound = math.sqrt(6.0 / (2 * dim))  # xavier-uniform of a (1, dim) tensor, as in the paper
        nn.init.uniform_(self.init_mu, -bound, bound)
        nn.init.uniform_(self.init_log_sigma, -bound, bound)

    def init_slots(
        self, batch: int, num_slots: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, K, D) i.i.d. draws from the shared Gaussian; ``generator`` makes them reproducible."""
        where = self.init_mu.device if generator is None else generator.device
        return self.slots_from_noise(
            torch.randn(batch, num_slots, self.dim, generator=generator, device=where)
        )

    def slots_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise (B, K, D) -> initial slots mu + sigma noise (B, K, D)."""
        mu = self.init_mu
        return mu + self.init_log_sigma.exp() * noise.to(mu)

    def keys(self, inputs: torch.Tensor) -> torch.Tensor:
        """The keys (B, N, D) of normalised inputs (B, N, C): unit vectors under cosine_scale."""
        k = self.to_k(inputs)
        return F.normalize(k, dim=-1) if self.cosine else k

    def logits(self, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The attention logits (B, K, N), fp32, of slots (B, K, D) against keys (B, N, D), before
        any bias: the query-key dot product over sqrt(D), or cosine_scale times their cosine."""
        q = self.to_q(self.norm_slots(slots))  # (B, K, D)
        if self.cosine:
            q = F.normalize(q, dim=-1)
        return (torch.einsum("bkd,bnd->bkn", q, k) * self.scale).float()

    def step(
        self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration. slots (B, K, D), k and v (B, N, D), optional additive logit bias
        (B, K, N) -> slots (B, K, D), attn (B, K, N)."""
        B, K, D = slots.shape
        logits = self.logits(slots, k)  # (B, K, N)
        if bias is not None:
            logits = logits + bias
        attn = logits.softmax(dim=1).to(v.dtype)  # competition between slots
        if self.update_norm == "mean":
            weights = attn + self.eps
            # weighted mean over inputs (with update_mass: over the mass plus update_mass)
            weights = weights / (weights.sum(dim=-1, keepdim=True) + self.update_mass)
        else:
            weights = attn * (K / attn.shape[-1])  # weighted sum, one scale for all slots
        updates = torch.einsum("bkn,bnd->bkd", weights, v)  # (B, K, D)
        new = self.gru(updates.reshape(B * K, D), slots.reshape(B * K, D)).reshape(B, K, D)
        new = new + self.mlp(self.norm_mlp(new))
        if self.gate_mass > 0:
            mass = attn.sum(dim=-1, keepdim=True).to(new.dtype)  # (B, K, 1)
            return slots + mass / (mass + self.gate_mass) * (new - slots), attn
        return new, attn

    def forward(
        self,
        inputs: torch.Tensor,
        slots: torch.Tensor,
        iters: int | None = None,
        bias: torch.Tensor | None = None,
        locality: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``bias`` (B, K, N): added to the first iteration's attention logits. ``locality``:
        attention (B, K, N) -> the bias of the next iteration (computed without gradient, a
        fixed prior for that iteration, as in an EM step)."""
        iters = self.iters if iters is None else iters
        if iters < 1:
            raise ValueError(f"SlotAttention: iters must be >= 1, got {iters}")
        inputs = self.norm_inputs(inputs)
        k, v = self.keys(inputs), self.to_v(inputs)  # (B, N, D)

        def next_bias(attn: torch.Tensor) -> torch.Tensor | None:
            if locality is None:
                return bias
            with torch.no_grad():
                return locality(attn.detach())

        if not self.implicit:
            for i in range(iters):
                slots, attn = self.step(slots, k, v, bias)
                if i < iters - 1:
                    bias = next_bias(attn)
            return slots, attn
        start = slots
        with torch.no_grad():
            for _ in range(iters - 1):
                slots, attn = self.step(slots, k, v, bias)
                bias = next_bias(attn)
        # straight-through: the value of the fixed point, the gradient of the initial slots
        slots = slots.detach() + (start - start.detach())
        return self.step(slots, k, v, bias)


class SlotPredictor(nn.Module):
    """One pre-norm transformer block over the slots of a frame: carries slots to the next frame.

    No slot-index embedding, so it is permutation-equivariant. (B, K, D) -> (B, K, D).
    """

    def __init__(self, dim: int, heads: int = 4, mlp_hidden: int = 256):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SlotPredictor: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        B, K, D = slots.shape
        qkv = self.qkv(self.norm_attn(slots)).reshape(B, K, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, K, D/heads)
        out = sdpa(q, k, v).transpose(1, 2).reshape(B, K, D)
        slots = slots + self.proj(out)
        return slots + self.mlp(self.norm_mlp(slots))
