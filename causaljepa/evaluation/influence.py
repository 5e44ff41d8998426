"""Influence-neighbourhood probes: which object does a trained predictor let act on which?

A probe window is the predictor's own window: ``history`` visible frames and ``future``
hidden frames at the training stride, starting at frame ``a``; ``t_h`` is its last visible
frame and ``b`` its last frame. The nodes of a window are the objects present at ``t_h``
that at least one slot covers (``slot_object``), plus the action node where the world has
actions. With learned slots an object may own several slots (S_i); a node's influence sums
over its source slots and averages over its target slots.

Influence of node i on node j, three measures (each (M, M), [target j, source i]):

- attention: the attention that j's future query tokens (the frames it must predict) pay to
  all of i's tokens (every frame), averaged over j's query tokens;
  ``attention`` averages the layers and heads, ``attention_last`` is the last layer
  (heads averaged), ``attention_rollout`` propagates head-averaged attention through the
  layers with the residual path (Abnar & Zuidema 2020: each layer 0.5 A + 0.5 I, rows
  normalised, multiplied from the first layer to the last). Each layer's and head's own
  values are kept as ``heads`` (L, h, M, M).
- intervention: how much j's predicted future changes (mean squared change over its future
  frames and slot width) when i is removed from the window (``intervention_remove``: no
  token attends to i's tokens, the do-operator of ``causaljepa.rollout``), or when i's
  history after the anchor frame is masked (``intervention_mask``: the model must infer i).
- gradient: the Frobenius norm of the Jacobian of j's predicted future with respect to i's
  visible (history) slots, estimated with ``probes`` Gaussian projections
  (E ||J^T v||^2 = ||J||_F^2), divided by sqrt(|S_j|).

The action node's influence on j uses the same measures: attention to the action tokens,
the change when every action of the window is replaced by "no action" (both interventions),
and the gradient with respect to the window's actions.

The influence neighbourhood of j is the smallest set of sources (objects and the action
node, never j itself) whose influences, taken from the largest down, carry at least
``share`` of j's total incoming influence; ties go to the lower node index. The top-k
neighbourhood is the k largest. A target with zero total influence has an empty
neighbourhood.

Ground truth (from clevrer_sim's extra truth), for ordered pairs of nodes i != j:

- contact: i and j touch in the predicted span [t_h, b] (the collision events of the
  store's truth JSON, seen or off-screen; a real CLEVRER store uses its annotation's
  collisions, which cover only the observed frames). Symmetric.
- counterfactual: from the counterfactual videos (the world re-simulated without i).
  Determined only where j is in the same state at t_h in both worlds (position and velocity
  within ``agree``): removing i has not changed j's past, so the window asks the same
  question the probe asks. Then i influences j if j's position in the two worlds differs by
  more than ``threshold`` world units at some frame of (t_h, b]. Pairs where j already
  differs at t_h are undetermined (-1) and left out of the scores, and counted.
- the action influences j if a push acts on j in [t_h, b) (``truth["pushes"]``).

Per video, the window influences are averaged over the windows where both nodes exist; the
video truths are: contact at any frame, and counterfactual: j's position differs by more
than ``threshold`` at some frame where j exists in both worlds.

Scores: AUROC and average precision of each measure's influences against each truth, pooled
over the determined pairs of all windows (and, separately, all videos).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from einops import rearrange

from ..data.slot_store import SlotStore
from ..data.store import VideoStore
from ..models.predictor import CJEPAPredictor
from ..rollout import token_mask
from .dynamics import window_actions

MEASURES = (
    "attention",
    "attention_last",
    "attention_rollout",
    "intervention_remove",
    "intervention_mask",
    "gradient",
)
TRUTHS = ("contact", "counterfactual")
# reference scores that use no model, only the true states at t_h (where the store has them):
# near pairs interact. -distance at t_h, and -the closest approach in (t_h, b] when both keep
# their velocity at t_h. A probe is worth reading where it beats these.
BASELINES = ("proximity", "extrapolated_proximity")


@dataclass(frozen=True)
class ProbeConfig:
    """The ``probe`` section of configs/eval_influence.yaml."""

    every: int = 16  # frames between the starts of consecutive probe windows
    threshold: float = 0.1  # counterfactual truth: world units j's position must diverge by
    agree: float = 0.02  # counterfactual truth: j unchanged at t_h (position and velocity) within this
    share: float = 0.8  # the neighbourhood carries this share of j's incoming influence
    top_k: int = 2
    probes: int = 4  # Gaussian projections for the Jacobian norm
    batch_size: int = 16  # windows per forward pass
    max_sequences: int = 256  # sequences per forward pass in the intervention and gradient probes

    def __post_init__(self) -> None:
        for name in ("every", "top_k", "probes", "batch_size", "max_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"probe.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.share <= 1:
            raise ValueError(f"probe.share must be in (0, 1], got {self.share}")
        if not 0 < self.agree < self.threshold:
            raise ValueError(
                f"probe.agree ({self.agree}) must be > 0 and below probe.threshold ({self.threshold})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# scores ------------------------------------------------------------------------------------
def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney U statistic over average ranks. NaN without both classes."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks over ties, 1-based
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the precision at the rank of each positive, scores sorted high to low; tied
    scores are one threshold (each positive in a tie gets the precision at the tie's end).
    NaN without positives."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos = int(labels.sum())
    if pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    last = np.r_[s[1:] != s[:-1], True]  # the end of each run of equal scores
    ends = np.flatnonzero(last)
    ap, start = 0.0, 0
    for e in ends:
        hits = int(y[start : e + 1].sum())
        ap += hits * tp[e] / (e + 1)
        start = e + 1
    return float(ap / pos)


def neighbourhood(incoming: np.ndarray, share: float) -> np.ndarray:
    """incoming (S,) non-negative influences of the candidate sources of one target ->
    bool (S,): the smallest set, taken from the largest down (ties: lower index first), whose
    sum reaches ``share`` of the total; empty where the total is 0."""
    incoming = np.asarray(incoming, np.float64)
    if np.any(incoming < 0) or not np.all(np.isfinite(incoming)):
        raise ValueError(f"influences must be finite and >= 0, got {incoming}")
    total = incoming.sum()
    out = np.zeros(len(incoming), bool)
    if total <= 0:
        return out
    order = np.argsort(-incoming, kind="mergesort")
    cum = np.cumsum(incoming[order])
    n = int(np.searchsorted(cum, share * total * (1 - 1e-12))) + 1
    out[order[: min(n, len(order))]] = True
    return out


def top_k(incoming: np.ndarray, k: int) -> np.ndarray:
    """bool (S,): the k largest (ties: lower index first), never a zero influence."""
    incoming = np.asarray(incoming, np.float64)
    order = np.argsort(-incoming, kind="mergesort")[:k]
    out = np.zeros(len(incoming), bool)
    out[order[incoming[order] > 0]] = True
    return out


# probes ------------------------------------------------------------------------------------
def _to_nodes(x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """x (B, ..., K_tgt, K_src) slot-level influences, G (B, K, M) slot-to-node one-hot
    -> (B, ..., M_tgt, M_src): summed over source slots, averaged over target slots."""
    size = G.sum(dim=1).clamp(min=1)  # (B, M)
    extra = x.dim() - 3
    Gx = G.reshape(G.shape[0], *([1] * extra), *G.shape[1:])
    out = Gx.transpose(-1, -2) @ x @ Gx  # (B, ..., M, M)
    return out / size.reshape(size.shape[0], *([1] * extra), -1, 1)


def _target_mean(x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """x (B, ..., K) per target slot -> (B, ..., M): averaged over each node's slots."""
    size = G.sum(dim=1).clamp(min=1)  # (B, M)
    return torch.einsum("b...k,bkm->b...m", x, G) / size.reshape(size.shape[0], *([1] * (x.dim() - 2)), -1)


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def probe_windows(
    model: CJEPAPredictor,
    slots: torch.Tensor,
    G: torch.Tensor,
    actions: torch.Tensor | None,
    cfg: ProbeConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Every measure on a batch of windows.

    slots (B, T, K, D) a window each (T = history + future); G (B, K, M) float, 1 where slot
    k belongs to node m (a row of zeros: a slot of no node; a column of zeros: a padding
    node); actions (B, T, A) or None.
    Returns {measure: (B, M, M) [target, source]}, "heads": (B, L, h, M, M), and, with
    actions, {"action_" + measure: (B, M)}. Diagonals are zero.
    """
    H, Fu = model.cfg.history, model.cfg.future
    B, T, K, D = slots.shape
    M = G.shape[2]
    if T != H + Fu:
        raise ValueError(f"probe windows must have history + future = {H + Fu} frames, got {T}")
    device = model.out.weight.device
    slots, G = slots.to(device).float(), G.to(device).float()
    actions = None if actions is None else actions.to(device).float()
    Na = model.nodes_per_frame
    hidden = torch.zeros(B, T, K, dtype=torch.bool, device=device)
    hidden[:, H:] = True
    out: dict[str, torch.Tensor] = {}

    # attention ---------------------------------------------------------------------------
    with torch.no_grad():
        _, weights = model(slots, hidden, actions, None, need_weights=True)
        base, _ = model(slots, hidden, actions, None)  # the reference of the interventions, same kernels
    W = torch.stack(weights, dim=1).float()  # (B, L, h, N, N), N = T (K + Na)
    L, N = W.shape[1], W.shape[3]
    eye = torch.eye(N, device=device)
    roll = eye.expand(B, N, N)
    for layer in range(L):
        a = 0.5 * W[:, layer].mean(dim=1) + 0.5 * eye  # (B, N, N)
        roll = (a / a.sum(dim=-1, keepdim=True)) @ roll

    def slot_level(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """w (..., N, N) -> influences (..., K_tgt, K_src + Na): future queries, all keys."""
        w = rearrange(w, "... (tq jq) (tk jk) -> ... tq jq tk jk", tq=T, tk=T)
        w = w[..., H:, :K, :, :].mean(dim=-4).sum(dim=-2)  # (..., K, K + Na)
        return w[..., :K], (w[..., K] if Na else None)

    for name, w in (
        ("heads", W),
        ("attention", W.mean(dim=(1, 2))),
        ("attention_last", W[:, -1].mean(dim=1)),
        ("attention_rollout", roll),
    ):
        obj, act = slot_level(w)
        out[name] = _to_nodes(obj, G)
        if act is not None and name != "heads":
            out["action_" + name] = _target_mean(act, G)

    # interventions: one sequence per (window, removed node) ----------------------------------
    def changes(seq_slots, seq_hidden, seq_actions, seq_absent) -> torch.Tensor:
        """-> (S, K): the mean squared change of each slot's predicted future."""
        rows = []
        idx = torch.arange(seq_slots.shape[0], device=device) // M  # the window of each sequence
        for c in _chunks(seq_slots.shape[0], cfg.max_sequences):
            mask = None if seq_absent is None else token_mask(seq_absent[c], Na)
            act = None if seq_actions is None else seq_actions[c]
            with torch.no_grad():
                pred, _ = model(seq_slots[c], seq_hidden[c], act, mask)
            rows.append((pred[:, H:].float() - base[idx[c], H:].float()).pow(2).mean(dim=(1, 3)))
        return torch.cat(rows)  # (S, K)

    rep = lambda x: None if x is None else x.repeat_interleave(M, dim=0)  # noqa: E731 (B M, ...)
    node_slots = rearrange(G > 0, "b k m -> (b m) k")  # (B M, K): the removed node's slots
    absent = node_slots[:, None, :].expand(B * M, T, K)
    d_remove = changes(rep(slots), rep(hidden), rep(actions), absent)
    masked = rep(hidden).clone()
    masked[:, 1:H] |= node_slots[:, None, :]
    d_mask = changes(rep(slots), masked, rep(actions), None)
    for name, d in (("intervention_remove", d_remove), ("intervention_mask", d_mask)):
        d = _target_mean(rearrange(d, "(b m) k -> b m k", m=M), G)  # (B, M_src, M_tgt)
        out[name] = d.transpose(1, 2)
    if actions is not None:
        with torch.no_grad():
            pred, _ = model(slots, hidden, torch.zeros_like(actions), None)
        d = (pred[:, H:].float() - base[:, H:].float()).pow(2).mean(dim=(1, 3))  # (B, K)
        out["action_intervention_remove"] = out["action_intervention_mask"] = _target_mean(d, G)

    # gradient: sequences (window, target node, probe) ---------------------------------------
    P = cfg.probes
    grads, act_grads = [], []
    tgt = rearrange(G, "b k m -> b m k").repeat_interleave(P, dim=1)  # (B, M P, K)
    tgt = rearrange(tgt, "b s k -> (b s) k")
    v_all = torch.randn(B * M * P, Fu, K, D, generator=generator).to(device) * tgt[:, None, :, None]
    win = torch.arange(B * M * P, device=device) // (M * P)
    for c in _chunks(B * M * P, cfg.max_sequences):
        x = slots[win[c]].clone().requires_grad_(True)
        act = None if actions is None else actions[win[c]].clone().requires_grad_(True)
        pred, _ = model(x, hidden[win[c]], act, None)
        (pred[:, H:].float() * v_all[c]).sum().backward()
        grads.append(x.grad[:, :H].pow(2).sum(dim=(1, 3)))  # (S, K): per source slot
        if act is not None:
            act_grads.append(act.grad.pow(2).sum(dim=(1, 2)))  # (S,)
    g = rearrange(torch.cat(grads), "(b m p) k -> b m p k", m=M, p=P).mean(dim=2)  # (B, M_tgt, K)
    size = G.sum(dim=1).clamp(min=1)  # (B, M)
    out["gradient"] = ((g @ G) / size[:, :, None]).sqrt()  # (B, M_tgt, M_src)
    if act_grads:
        ga = rearrange(torch.cat(act_grads), "(b m p) -> b m p", m=M, p=P).mean(dim=2)
        out["action_gradient"] = (ga / size).sqrt()
    # zero: the diagonal, and every pair with a padding node (one without slots)
    exists = G.sum(dim=1) > 0  # (B, M)
    off = (
        ~torch.eye(M, dtype=torch.bool, device=device) & exists[:, :, None] & exists[:, None, :]
    )  # (B, M, M)
    for name in MEASURES:
        out[name] = out[name] * off
    out["heads"] = out["heads"] * off[:, None, None]
    for name in [k for k in out if k.startswith("action_")]:
        out[name] = out[name] * exists
    return {k: v.detach().cpu() for k, v in out.items()}


# ground truth ------------------------------------------------------------------------------
def contact_events(vs: VideoStore, i: int) -> list[tuple[int, int, int]]:
    """(frame, a, b) contacts of video i: the simulator's truth (seen and off-screen
    collisions), else the CLEVRER annotation's collisions; [] where the store has neither."""
    truth = vs.truth(i) if vs.has("truth") else {}
    if truth:
        return [tuple(e) for e in truth.get("collisions", []) + truth.get("offscreen_collisions", [])]
    ann = vs.annotation(i)
    return [(int(c["frame_id"]), *map(int, c["object_ids"])) for c in ann.get("collision", [])]


def push_events(vs: VideoStore, i: int) -> list[tuple[int, int]]:
    """(frame, object) of every push in video i's truth."""
    truth = vs.truth(i) if vs.has("truth") else {}
    return [(int(p["frame"]), int(p["object_id"])) for p in truth.get("pushes", [])]


@dataclass
class VideoTruth:
    """What the probes are scored against, for one video (O = the store's max objects)."""

    contacts: list[tuple[int, int, int]]
    pushes: list[tuple[int, int]]
    present: np.ndarray  # (T, O) bool
    position: np.ndarray | None  # (T, O, 2) world units, None without states
    velocity: np.ndarray | None  # (T, O, 2)
    cf_present: np.ndarray | None  # (O_removed, T, O) bool, None without counterfactual videos
    cf_position: np.ndarray | None  # (O_removed, T, O, 2)
    cf_velocity: np.ndarray | None
    cf_valid: np.ndarray | None  # (O,) bool
    fps: float

    @classmethod
    def read(cls, vs: VideoStore, i: int) -> VideoTruth:
        col = {name: c for c, name in enumerate(vs.state_fields)}
        has_states = vs.has("states") and all(k in col for k in ("x", "y", "vx", "vy"))
        pos = vel = None
        if has_states:
            s = vs.read("states", i)
            pos, vel = s[..., [col["x"], col["y"]]], s[..., [col["vx"], col["vy"]]]
        present = vs.read("present", i) if vs.has("present") else None
        cf = has_states and vs.has("cf_states")
        cfs = vs.read("cf_states", i) if cf else None
        return cls(
            contacts=contact_events(vs, i),
            pushes=push_events(vs, i),
            present=present,
            position=pos,
            velocity=vel,
            cf_present=vs.read("cf_present", i) if cf else None,
            cf_position=None if cfs is None else cfs[..., [col["x"], col["y"]]],
            cf_velocity=None if cfs is None else cfs[..., [col["vx"], col["vy"]]],
            cf_valid=vs.read("cf_valid", i) if cf else None,
            fps=vs.fps,
        )

    @property
    def has_counterfactuals(self) -> bool:
        return self.cf_position is not None

    def baselines(self, objects: list[int], t_h: int, t1: int) -> dict[str, np.ndarray]:
        """{name: (M, M)} the BASELINES scores (symmetric, zero diagonal); {} without states."""
        if self.position is None or self.fps <= 0:
            return {}
        p, v = self.position[t_h, objects], self.velocity[t_h, objects]  # (M, 2)
        M = len(objects)
        off = ~np.eye(M, dtype=bool)
        near = -np.linalg.norm(p[:, None] - p[None], axis=-1)
        dt = np.arange(1, t1 - t_h + 1) / self.fps  # (S,) seconds after t_h
        path = p[None] + dt[:, None, None] * v[None]  # (S, M, 2)
        approach = -np.linalg.norm(path[:, :, None] - path[:, None], axis=-1).min(axis=0)
        return {"proximity": near * off, "extrapolated_proximity": approach * off}

    def contact(self, objects: list[int], t0: int, t1: int) -> np.ndarray:
        """(M, M) int8 [target, source]: the pair touches at a frame in [t0, t1]."""
        idx = {o: m for m, o in enumerate(objects)}
        out = np.zeros((len(objects), len(objects)), np.int8)
        for f, a, b in self.contacts:
            if t0 <= f <= t1 and a in idx and b in idx:
                out[idx[a], idx[b]] = out[idx[b], idx[a]] = 1
        return out

    def pushed(self, objects: list[int], t0: int, t1: int) -> np.ndarray:
        """(M,) int8: a push acts on the object at a frame in [t0, t1)."""
        hit = {o for f, o in self.pushes if t0 <= f < t1}
        return np.array([int(o in hit) for o in objects], np.int8)

    def counterfactual(self, objects: list[int], t_h: int, t1: int, cfg: ProbeConfig) -> np.ndarray:
        """(M, M) int8 [target, source]: 1 if removing the source changes the target in (t_h, t1],
        0 if not, -1 undetermined (the target already differs at t_h, or a world is missing)."""
        return self._removal_effect(objects, slice(t_h + 1, t1 + 1), t_h, cfg)

    def video_counterfactual(self, objects: list[int], cfg: ProbeConfig) -> np.ndarray:
        """(M, M) int8: removing the source moves the target by more than the threshold at some
        frame where the target exists in both worlds (-1 without that world)."""
        return self._removal_effect(objects, slice(None), None, cfg)

    def _removal_effect(self, objects, frames: slice, agree_at: int | None, cfg: ProbeConfig) -> np.ndarray:
        """[target, source]: does the target's position move by more than the threshold in
        ``frames`` in the world without the source (where both worlds have it)? With
        ``agree_at``, only targets in the same state at that frame in both worlds (else -1)."""
        M = len(objects)
        out = np.full((M, M), -1, np.int8)
        if not self.has_counterfactuals:
            return out
        for si, i in enumerate(objects):
            if not self.cf_valid[i]:
                continue
            for tj, j in enumerate(objects):
                if i == j:
                    continue
                if agree_at is not None:
                    t = agree_at
                    if not (self.cf_present[i, t, j] and self.present[t, j]):
                        continue
                    dp = np.linalg.norm(self.cf_position[i, t, j] - self.position[t, j])
                    dv = np.linalg.norm(self.cf_velocity[i, t, j] - self.velocity[t, j])
                    if dp > cfg.agree or dv > cfg.agree:
                        continue
                both = self.cf_present[i, frames, j] & self.present[frames, j]
                gap = np.linalg.norm(self.cf_position[i, frames, j] - self.position[frames, j], axis=-1)
                out[tj, si] = int(bool(np.any(gap[both] > cfg.threshold)))
        return out


# windows -----------------------------------------------------------------------------------
@dataclass
class Window:
    """One probe window of one video."""

    video: int
    start: int  # a, the first frame
    last_visible: int  # t_h
    end: int  # b, the last frame
    objects: list[int]  # the nodes' object indices (store order)
    slots_of: list[list[int]]  # the slots of each node


def window_plan(store: SlotStore, video: int, history: int, future: int, stride: int, every: int):
    """The probe windows of one video: starts 0, every, 2 every, ... while the window fits in
    the video; only windows with at least two nodes at their last visible frame."""
    span = (history + future - 1) * stride
    if span >= store.num_frames:
        raise ValueError(
            f"{store.path}: a window of {history}+{future} frames at stride {stride} spans {span + 1} "
            f"frames; the videos have {store.num_frames}"
        )
    owner = store.read("slot_object", video) if store.has("slot_object") else None
    if owner is None:
        raise ValueError(
            f"{store.path}: influence probes need slot_object (which object each slot covers); "
            "extract the slots from a video store with masks or states"
        )
    out = []
    for a in range(0, store.num_frames - span, every):
        t_h = a + (history - 1) * stride
        objects = sorted({int(o) for o in owner[t_h] if o >= 0})
        if len(objects) < 2:
            continue
        slots_of = [[int(k) for k in np.flatnonzero(owner[t_h] == o)] for o in objects]
        out.append(Window(video, a, t_h, a + span, objects, slots_of))
    return out


def node_matrix(windows: list[Window], K: int, M: int) -> torch.Tensor:
    """(B, K, M) float: 1 where slot k belongs to node m of each window."""
    G = torch.zeros(len(windows), K, M)
    for b, w in enumerate(windows):
        for m, ks in enumerate(w.slots_of):
            G[b, ks, m] = 1.0
    return G


@dataclass
class WindowResult:
    """The probes and truths of one window; arrays are [target, source] over its nodes."""

    window: Window
    measures: dict[str, np.ndarray]  # (M, M) per measure (and per baseline where there are states)
    heads: np.ndarray  # (L, h, M, M) attention per layer and head
    action: dict[str, np.ndarray] | None  # (M,) per measure: the action node's influence
    contact: np.ndarray  # (M, M) int8
    counterfactual: np.ndarray  # (M, M) int8, -1 undetermined
    pushed: np.ndarray | None  # (M,) int8


def probe_store(
    model: CJEPAPredictor,
    store: SlotStore,
    vs: VideoStore,
    *,
    stride: int,
    cfg: ProbeConfig,
    seed: int = 0,
    progress: bool = True,
) -> list[VideoResult]:
    """Probe every window of ``store``, attach the truths of the video store ``vs`` it was made
    from (each video's read once), and aggregate each video's windows; ``seed`` draws the
    gradient probe's projections. Videos without a window to probe are left out."""
    from tqdm import tqdm

    if store.video_ids != vs.video_ids:
        raise ValueError(
            f"{store.path} and {vs.path} hold different videos; give the video store the slots were made from"
        )
    model.eval()
    H, Fu = model.cfg.history, model.cfg.future
    plan = [w for v in range(store.num_videos) for w in window_plan(store, v, H, Fu, stride, cfg.every)]
    if not plan:
        raise ValueError(f"{store.path}: no window with at least two objects to probe")
    truths: dict[int, VideoTruth] = {}
    per_video: dict[int, list[WindowResult]] = {}
    generator = torch.Generator().manual_seed(seed)
    for c in tqdm(
        list(_chunks(len(plan), cfg.batch_size)), desc="influence probes", unit="batch", disable=not progress
    ):
        batch = plan[c]
        M = max(len(w.objects) for w in batch)
        slots = torch.stack(
            [torch.from_numpy(store.read("slots", w.video, w.start, w.end + 1, stride)) for w in batch]
        )  # (B, T, K, D)
        acts = [
            window_actions(store, [w.video], w.start, H + Fu, stride, model.cfg.action_dim) for w in batch
        ]
        actions = None if acts[0] is None else torch.cat(acts)  # (B, T, stride A)
        out = probe_windows(model, slots, node_matrix(batch, store.num_slots, M), actions, cfg, generator)
        for b, w in enumerate(batch):
            if w.video not in truths:
                truths[w.video] = VideoTruth.read(vs, w.video)
            truth = truths[w.video]
            m = len(w.objects)
            per_video.setdefault(w.video, []).append(
                WindowResult(
                    window=w,
                    measures={
                        **{k: out[k][b, :m, :m].numpy() for k in MEASURES},
                        **truth.baselines(w.objects, w.last_visible, w.end),
                    },
                    heads=out["heads"][b, ..., :m, :m].numpy(),
                    action=(
                        {k: out["action_" + k][b, :m].numpy() for k in MEASURES}
                        if actions is not None
                        else None
                    ),
                    contact=truth.contact(w.objects, w.last_visible, w.end),
                    counterfactual=truth.counterfactual(w.objects, w.last_visible, w.end, cfg),
                    pushed=truth.pushed(w.objects, w.last_visible, w.end) if actions is not None else None,
                )
            )
    return [aggregate_video(rs, truths[v], cfg) for v, rs in per_video.items()]


def window_results(videos: list[VideoResult]) -> list[WindowResult]:
    """Every window of ``videos``, in order."""
    return [w for v in videos for w in v.windows]


@dataclass
class VideoResult:
    """A video's influences: each window's, averaged over the windows where both nodes exist."""

    video: int
    objects: list[int]
    measures: dict[str, np.ndarray]  # (M, M), NaN where the pair never shares a window
    action: dict[str, np.ndarray] | None  # (M,)
    contact: np.ndarray  # (M, M) int8: any contact in the video
    counterfactual: np.ndarray  # (M, M) int8
    pushed: np.ndarray | None  # (M,) int8: pushed at some frame
    windows: list[WindowResult]
    truth: VideoTruth  # what the truths above come from (and the objects' positions)


def aggregate_video(windows: list[WindowResult], truth: VideoTruth, cfg: ProbeConfig) -> VideoResult:
    """The windows of one video -> its video-level influences and truths."""
    objects = sorted({o for r in windows for o in r.window.objects})
    idx = {o: m for m, o in enumerate(objects)}
    M = len(objects)
    names = scored_names(windows)
    sums = {k: np.zeros((M, M)) for k in names}
    count = np.zeros((M, M))
    act_sums = {k: np.zeros(M) for k in MEASURES} if windows[0].action is not None else None
    act_count = np.zeros(M)
    for r in windows:
        sel = np.array([idx[o] for o in r.window.objects])
        grid = np.ix_(sel, sel)
        count[grid] += 1
        act_count[sel] += 1
        for k in names:
            sums[k][grid] += r.measures[k]
        for k in act_sums or ():
            act_sums[k][sel] += r.action[k]
    with np.errstate(invalid="ignore", divide="ignore"):
        measures = {k: np.where(count > 0, v / count, np.nan) for k, v in sums.items()}
        action = None if act_sums is None else {k: v / np.maximum(act_count, 1) for k, v in act_sums.items()}
    T = len(truth.present) if truth.present is not None else windows[-1].window.end + 1
    return VideoResult(
        video=windows[0].window.video,
        objects=objects,
        measures=measures,
        action=action,
        contact=truth.contact(objects, 0, T - 1),
        counterfactual=truth.video_counterfactual(objects, cfg),
        pushed=truth.pushed(objects, 0, T) if action is not None else None,
        windows=windows,
        truth=truth,
    )


def scored_names(results) -> list[str]:
    """The measures, then the baselines every result has."""
    return list(MEASURES) + [k for k in BASELINES if all(k in r.measures for r in results)]


def _pairs(results, truth: str, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The off-diagonal (target, source) pairs with a determined truth, pooled over results
    (video results: only pairs that shared a window) -> scores per name, labels, and the
    video of each pair."""
    scores: dict[str, list] = {k: [] for k in names}
    labels, videos = [], []
    for r in results:
        y = getattr(r, truth)
        ok = (y >= 0) & ~np.eye(len(y), dtype=bool) & np.isfinite(r.measures[MEASURES[0]])
        for k in names:
            scores[k].append(r.measures[k][ok])
        labels.append(y[ok])
        videos.append(np.full(int(ok.sum()), r.window.video if isinstance(r, WindowResult) else r.video))
    cat = np.concatenate
    return {k: cat(v) for k, v in scores.items()}, cat(labels).astype(bool), cat(videos).astype(np.int64)


def pair_arrays(results) -> dict[str, np.ndarray]:
    """The scored pairs as flat arrays (for ``pairs.npz`` and ``bootstrap_difference``):
    <truth>.label, <truth>.video and <truth>.<measure> for each truth."""
    names = scored_names(results)
    out = {}
    for truth in TRUTHS:
        s, y, v = _pairs(results, truth, names)
        out[f"{truth}.label"], out[f"{truth}.video"] = y, v
        out.update({f"{truth}.{k}": s[k] for k in names})
    return out


def bootstrap_difference(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], truth: str, measure: str, n: int = 1000, seed: int = 0
) -> dict | None:
    """AUROC(b) - AUROC(a) on the same pairs, with a 95 % interval from resampling videos with
    replacement (``n`` times; pairs of one video move together, as they are not independent).
    None where a and b were not scored on the same pairs."""
    y, v = a[f"{truth}.label"], a[f"{truth}.video"]
    if not (np.array_equal(y, b[f"{truth}.label"]) and np.array_equal(v, b[f"{truth}.video"])):
        return None
    sa, sb = a[f"{truth}.{measure}"], b[f"{truth}.{measure}"]
    ids = np.unique(v)
    rows = {u: np.flatnonzero(v == u) for u in ids}
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = np.concatenate([rows[u] for u in rng.choice(ids, len(ids))])
        diffs.append(auroc(sb[idx], y[idx]) - auroc(sa[idx], y[idx]))
    diffs = np.array(diffs)
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (np.nan, np.nan)
    return {"difference": auroc(sb, y) - auroc(sa, y), "low": float(lo), "high": float(hi), "resamples": n}


def score(results, truths=TRUTHS) -> dict:
    """AUROC and AP of every measure against every truth, over ``results`` (windows or
    videos); the action node's against the pushes where there are any."""
    out = {}
    names = scored_names(results)
    for truth in truths:
        s, y, _ = _pairs(results, truth, names)
        entry: dict = {"positives": int(y.sum()), "negatives": int((~y).sum())}
        if truth == "counterfactual":
            entry["undetermined"] = int(
                sum(
                    ((c < 0) & ~np.eye(len(c), dtype=bool)).sum() for c in (r.counterfactual for r in results)
                )
            )
        entry["measures"] = {k: {"auroc": auroc(s[k], y), "ap": average_precision(s[k], y)} for k in names}
        out[truth] = entry
    with_actions = [r for r in results if r.action is not None]
    if with_actions:
        y = np.concatenate([r.pushed for r in with_actions]).astype(bool)
        s = {k: np.concatenate([r.action[k] for r in with_actions]) for k in MEASURES}
        out["action"] = {
            "positives": int(y.sum()),
            "negatives": int((~y).sum()),
            "measures": {k: {"auroc": auroc(s[k], y), "ap": average_precision(s[k], y)} for k in MEASURES},
        }
    return out


def best_measure(scores: dict, truth: str = "counterfactual") -> tuple[str, float]:
    """The probe measure (not a baseline) with the highest AUROC against ``truth`` (NaN when
    nothing is scored)."""
    m = {k: v for k, v in scores[truth]["measures"].items() if k in MEASURES}
    finite = {k: v["auroc"] for k, v in m.items() if math.isfinite(v["auroc"])}
    if not finite:
        return "", float("nan")
    k = max(finite, key=finite.get)
    return k, finite[k]
