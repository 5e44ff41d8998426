"""The C-JEPA predictor: a bidirectional transformer over (time x object) tokens (DESIGN.md §6).

    window  slots (B, T, K, D), T = history + future frames, hidden (B, T, K) bool
    visible token (t, k)  = in(slot[t, k]) + time[t]
    hidden token  (t, k)  = mask + time[t] + anchor(slot[0, k])      the identity anchor
                            (predictor.anchor=last: the slot's last visible value instead)
    action node   (t)     = ActionEncoder(action[t]) + time[t] + action_type
    tokens ─ pre-norm blocks (fused SDPA, attention restricted by the token graph) ─> out(·)

The predictions of hidden tokens are the model's guesses of the slots it was not shown.
No slot-index embedding exists anywhere, so permuting the slots permutes the predictions;
the action node has a type embedding of its own (it is a different kind of node, not a
position among slots).

Tokens are laid out frame by frame: node ``t * (K + Na) + j`` is slot j of frame t for
j < K and the action node for j = K (Na = 1 where the world has actions, else 0).

The token graph says which node may attend to which. It is a torch_geometric-style
``edge_index`` (2, E) of (source, target) pairs (a target attends to its sources) turned
into a boolean attention mask by ``graph_mask``; every node always attends to itself. The
default is the complete graph, and no mask is built at all.

Shapes: B batch, T frames in the window, K slots, D slot width, A action width, N tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..masking import targets
from ..training.distributed import batch_mean
from .attention import sdpa


@dataclass(frozen=True)
class PredictorConfig:
    """configs/predictor/*.yaml. The published CLEVRER configuration is the default."""

    slot_dim: int = 128  # D of the slot store: the input and target width (0: cjepa train takes the store's)
    dim: int = 128  # the model width; slots are projected in and out
    layers: int = 6
    heads: int = 16
    head_dim: int = 8  # attention width = heads x head_dim (the published code runs 16 x 8)
    mlp_hidden: int = 2048
    dropout: float = 0.1  # on each block's attention and MLP outputs (nanoGPT's resid_dropout)
    attn_dropout: float = 0.0  # on the attention weights; > 0 leaves the fused SDPA kernels on CPU
    history: int = 6  # frames the model is shown (the first always visible)
    future: int = 10  # frames it predicts after them
    action_dim: int = 0  # A; 0 = a world without actions (no action nodes)
    residual: bool = True  # predictions = the slot's last visible value + the model's output
    # a hidden token's anchor: the slot at the window's first frame (published), or its last
    # visible value (the latest visible frame at or before the token's), which for a future token
    # is the object's current state
    anchor: str = "first"
    # the error a hidden token's prediction is trained on: mse (published), or l1 (absolute error,
    # whose minimiser is the median outcome, not the mean of a collision and a miss)
    loss: str = "mse"
    sigreg_weight: float = 0.0  # weight of the SIGReg term on the output tokens; 0 = off
    sigreg_directions: int = 256

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "heads", "head_dim", "mlp_hidden", "history"):
            if getattr(self, name) < 1:
                raise ValueError(f"predictor.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("slot_dim", "future", "action_dim", "sigreg_directions"):
            if getattr(self, name) < 0:
                raise ValueError(f"predictor.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"predictor.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.sigreg_weight < 0:
            raise ValueError(f"predictor.sigreg_weight must be >= 0, got {self.sigreg_weight}")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"predictor.loss must be 'mse' or 'l1', got {self.loss!r}")
        if self.anchor not in ("first", "last"):
            raise ValueError(f"predictor.anchor must be 'first' or 'last', got {self.anchor!r}")

    @property
    def window(self) -> int:
        return self.history + self.future

    def to_dict(self) -> dict:
        return asdict(self)


def last_visible(slots: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """slots (B, T, K, D), hidden (B, T, K) -> (B, T, K, D): at each token, the slot's value at its
    latest visible frame at or before it (frame 0 is always visible)."""
    T = slots.shape[1]
    t = torch.arange(T, device=slots.device)[None, :, None].expand_as(hidden)  # (B, T, K)
    last = torch.where(hidden, torch.zeros_like(t), t).cummax(dim=1).values  # last visible frame
    return torch.gather(slots, 1, last[..., None].expand_as(slots))


def graph_mask(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """edge_index (2, E) of (source, target) -> bool (N, N) attention mask, [target, source] =
    may attend; the diagonal is always allowed (a node sees itself)."""
    from torch_geometric.utils import to_dense_adj

    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(
            f"edge_index names nodes outside [0, {num_nodes}): min {int(edge_index.min())}, "
            f"max {int(edge_index.max())}"
        )
    adj = to_dense_adj(edge_index.long(), max_num_nodes=num_nodes)[0] > 0  # [source, target]
    return adj.T | torch.eye(num_nodes, dtype=torch.bool, device=adj.device)


def complete_graph(num_nodes: int) -> torch.Tensor:
    """The default token graph: every node attends to every node. (2, N^2)."""
    i = torch.arange(num_nodes)
    return torch.stack(torch.meshgrid(i, i, indexing="ij")).reshape(2, -1)


DROP_LEVELS = 1 << 15  # a CPU dropout mask compares 15 random bits: p is rounded to a multiple of 2^-15


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU dropout mask: 0 with probability p (rounded to a multiple of 2^-15), else 1 / keep,
    keep being the rounded keep probability, so the mask's mean is exactly 1.

    ``nn.Dropout`` on CPU draws one Mersenne-twister number per element: its forward and
    backward took 1.6-2.3 times a linear layer's of the same width at the QA reader's shape,
    this mask's 0.7-0.8 times (``python benchmarks/dropout.py``). Here each 64-bit draw is cut
    into four 16-bit lanes, whose low 15 bits are uniform (``random_`` on int64 draws from
    [0, 2^63)): a quarter of the draws. It uses torch's global generator, so a seed repeats
    the masks."""
    n = math.prod(shape)
    drop = min(round(p * DROP_LEVELS), DROP_LEVELS - 1)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n]
    keep = (bits & (DROP_LEVELS - 1)) >= drop
    return keep.reshape(shape).to(dtype) * (DROP_LEVELS / (DROP_LEVELS - drop))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with ``dropout_mask`` on CPU (the same rate to 2^-15, far cheaper masks);
    elsewhere, and in eval mode, exactly ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return x * dropout_mask(x.shape, self.p, x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block with fused scaled-dot-product attention.

    Dropout acts on the attention and MLP outputs (N x dim values), not on the MLP's hidden
    layer (16 x more values at MLP 2048): drawing those masks took 30 % of a CPU training step
    of the published configuration. Attention-weight dropout (``attn_dropout``) is off by
    default for the same reason, and because it makes SDPA leave its fused kernels on CPU.
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, mlp_hidden: int, dropout: float, attn_dropout: float = 0.0
    ):
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_hidden), nn.Linear(mlp_hidden, dim)  # the MLP
        self.drop = Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, dim), mask bool (N, N), (B, N, N) or (B, 1, N) (the same keys for every query)
        -> x, attention (B, heads, N, N) if asked."""
        q, k, v = rearrange(
            self.qkv(self.norm1(x)), "b n (three h e) -> three b h n e", three=3, h=self.heads
        )
        m = None if mask is None else (mask if mask.dim() == 2 else mask[:, None])  # broadcast over heads
        weights = None
        if need_weights:  # the explicit path, for influence probes; same numbers as SDPA
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, h, N, N)
            if m is not None:
                scores = scores.masked_fill(~m, float("-inf"))
            weights = scores.float().softmax(dim=-1).to(v.dtype)
            o = weights @ v
        else:
            o = sdpa(q, k, v, attn_mask=m, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(rearrange(o, "b h n e -> b n (h e)")))
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))
        return x, weights


class ActionEncoder(nn.Module):
    """Per-step actions (B, T, A) -> one token per step (B, T, dim). A one-shot action
    (B, A) is the action of step 0, and 'no action' (zeros) at every later step."""

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(action_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, actions: torch.Tensor, T: int) -> torch.Tensor:
        if actions.dim() == 2:  # one-shot: (B, A) at t = 0
            steps = actions.new_zeros(actions.shape[0], T, actions.shape[1])
            steps[:, 0] = actions
            actions = steps
        return self.net(actions)  # (B, T, dim)


class CJEPAPredictor(nn.Module):
    """Predicts hidden slot tokens of a window from the visible ones (and the actions)."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        if cfg.slot_dim < 1:
            raise ValueError("PredictorConfig.slot_dim is 0: set it to the slot store's width")
        self.cfg = cfg
        d = cfg.dim
        self.slot_in = nn.Linear(cfg.slot_dim, d)
        self.anchor = nn.Linear(cfg.slot_dim, d)  # the identity anchor of a hidden token
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.time = nn.Parameter(torch.randn(cfg.window, d) * 0.02)
        self.actions = ActionEncoder(cfg.action_dim, d) if cfg.action_dim else None
        self.action_type = nn.Parameter(torch.randn(d) * 0.02) if cfg.action_dim else None
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.head_dim, cfg.mlp_hidden, cfg.dropout, cfg.attn_dropout)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.slot_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        if cfg.residual:  # start from "nothing changes since the last visible frame"
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def nodes_per_frame(self) -> int:
        return 1 if self.cfg.action_dim else 0

    def tokens(self, slots: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """slots (B, T, K, D), hidden (B, T, K) -> tokens (B, T, K + Na, dim)."""
        cfg = self.cfg
        B, T, K, D = slots.shape
        if D != cfg.slot_dim or T > cfg.window or hidden.shape != (B, T, K):
            raise ValueError(
                f"slots {tuple(slots.shape)} and hidden {tuple(hidden.shape)}: expected slots "
                f"(B, T <= {cfg.window}, K, {cfg.slot_dim}) and hidden (B, T, K)"
            )
        if bool(hidden[:, 0].any()):
            raise ValueError("hidden marks tokens of the window's first frame; its slots are the anchors")
        time = self.time[:T][None, :, None]  # (1, T, 1, dim)
        visible = self.slot_in(slots)  # (B, T, K, dim)
        anchored = slots[:, :1] if cfg.anchor == "first" else last_visible(slots, hidden)
        query = self.mask_token + self.anchor(anchored)  # (B, 1 or T, K, dim)
        x = torch.where(hidden[..., None], query, visible) + time  # (B, T, K, dim)
        if self.actions is None:
            if actions is not None:
                raise ValueError("actions were given but predictor.action_dim is 0 (a world without actions)")
            return x
        if actions is None or actions.shape[-1] != cfg.action_dim or actions.shape[0] != B:
            raise ValueError(
                f"this predictor has action nodes: actions must be (B={B}, T, {cfg.action_dim}) or "
                f"(B, {cfg.action_dim}), got {None if actions is None else tuple(actions.shape)}"
            )
        if actions.dim() == 3 and actions.shape[1] != T:
            raise ValueError(f"actions cover {actions.shape[1]} steps, the slots {T}")
        a = self.actions(actions.to(x.dtype), T) + self.action_type + time[:, :, 0]  # (B, T, dim)
        return torch.cat([x, a[:, :, None]], dim=2)  # (B, T, K + 1, dim)

    def forward(
        self,
        slots: torch.Tensor,
        hidden: torch.Tensor,
        actions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Predict every slot token of the window.

        slots (B, T, K, D): values under ``hidden`` are never read (except frame 0, always
        visible); hidden (B, T, K) bool; actions (B, T, A) or one-shot (B, A) where the world
        has actions; mask: bool attention mask (N, N) or (B, N, N) over the window's tokens
        (``graph_mask``), None = complete graph.
        Returns predictions (B, T, K, D) and, if ``need_weights``, each block's attention
        (B, heads, N, N) (else an empty list).
        """
        out, weights = self._run(slots, hidden, actions, mask, need_weights)
        return self._predict(out, slots, hidden), weights

    def _predict(self, tokens: torch.Tensor, slots: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Output tokens (B, T, K, dim) -> slots (B, T, K, D). With ``residual``, each prediction is
        a change from the slot's last visible value (its latest visible frame at or before t; frame
        0 is always visible), so an untrained model copies the last frame and training learns
        the dynamics on top; only visible slots are read."""
        pred = self.out(tokens)
        if not self.cfg.residual:
            return pred
        return pred + last_visible(slots, hidden).to(pred.dtype)

    def _run(self, slots, hidden, actions, mask, need_weights):
        """-> the output slot tokens (B, T, K, dim) and the attention maps."""
        T, K = slots.shape[1:3]
        x = self.tokens(slots, hidden, actions)  # (B, T, K + Na, dim)
        x = rearrange(x, "b t j d -> b (t j) d")  # (B, N, dim)
        weights = []
        for block in self.blocks:
            x, w = block(x, mask, need_weights)
            if w is not None:
                weights.append(w)
        return rearrange(self.norm(x), "b (t j) d -> b t j d", t=T)[:, :, :K], weights

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: slots (B, T, K, D), hidden (B, T, K) bool, optional actions.

        Loss = error over the hidden history tokens + error over all future tokens (each a mean
        over its tokens and the slot width; squared error, or absolute error with ``loss: l1``);
        the first-frame anchors are never targets.
        """
        device = self.out.weight.device
        slots = batch["slots"].to(device, non_blocking=True)
        hidden = batch["hidden"].to(device, non_blocking=True)
        actions = batch.get("actions")
        actions = None if actions is None else actions.to(device, non_blocking=True)
        tokens, _ = self._run(slots, hidden, actions, None, False)
        pred = self._predict(tokens, slots, hidden)  # (B, T, K, D)
        hist, fut = targets(hidden, self.cfg.history)
        diff = pred.float() - slots.float()
        err = (diff.abs() if self.cfg.loss == "l1" else diff.pow(2)).mean(dim=-1)  # (B, T, K)
        # means over the tokens of the whole batch (of every process under DDP: distributed.py)
        err_hist, err_fut = batch_mean(err[hist]), batch_mean(err[fut])
        loss = err_hist + err_fut
        name = self.cfg.loss
        metrics = {f"{name}_history": float(err_hist.detach()), f"{name}_future": float(err_fut.detach())}
        if self.cfg.sigreg_weight:
            reg = sigreg(tokens.flatten(0, 2).float(), self.cfg.sigreg_directions)
            loss = loss + self.cfg.sigreg_weight * reg
            metrics["sigreg"] = float(reg.detach())
        return loss, metrics


def sigreg(z: torch.Tensor, directions: int, knots: int = 17) -> torch.Tensor:
    """SIGReg (LeWorldModel): how far the embeddings z (N, d) are from an isotropic Gaussian.

    z is projected on ``directions`` random unit vectors (drawn from torch's global RNG); for
    each projection the empirical characteristic function is compared with the standard
    Gaussian's, exp(-t^2 / 2), on ``knots`` points of [0, 3] (Epps-Pulley), weighted by the
    Gaussian's, integrated by the trapezoid rule, and averaged over directions.
    """
    u = torch.randn(z.shape[1], directions, device=z.device)
    u = u / u.norm(dim=0, keepdim=True)
    p = z @ u  # (N, M)
    t = torch.linspace(0, 3, knots, device=z.device)  # (Q,)
    tp = p[:, :, None] * t  # (N, M, Q)
    phi = torch.exp(-0.5 * t**2)
    err = (tp.cos().mean(0) - phi) ** 2 + tp.sin().mean(0) ** 2  # (M, Q)
    return torch.trapezoid(err * phi, t, dim=-1).mean()
