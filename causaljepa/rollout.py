"""Rolling a trained predictor forward, and the do-operator in latent space.

``rollout`` runs one autoregressive chain: the model sees the last ``history`` frames
(observed, then its own predictions), predicts the next ``future`` frames, and the first
``commit`` of them join the chain; the window slides by ``commit`` and repeats. Frames are
the predictor's steps (one step = the window stride of its training, in video frames).

By default all ``future`` frames join at once: the predictor trained to give them from an
observed history, never from its own output, and each pass that feeds a prediction back as
history adds an error of a kind training never showed it. Committing one frame a pass feeds
back ``future`` times as often, and its error compounds (README, Figures, predictor: on
clevrer_sim, one frame a pass gives 1.3 to 4.8 times the mean rollout error of all ten).

``intervene`` changes the world before rolling it forward:

- remove: the slot does not exist from history frame ``at`` on: no token attends to its
  tokens (the token graph loses them), so the rest of the world evolves without it;
- replace: the slot takes ``value`` at history frame ``at``; its tokens in later history
  frames are hidden, so the model infers them from the new state, then rolls forward.

The other slots' history is left as observed: the intervention acts on what happens next.

Shapes: B batch, H0 history frames given, S steps rolled out, K slots, D slot width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.predictor import CJEPAPredictor, PredictorConfig


def token_mask(absent: torch.Tensor, nodes_per_frame: int) -> torch.Tensor | None:
    """absent (B, T, K) bool -> attention mask (B, N, N): no token attends to an absent one (each
    still sees itself, so no attention row is empty); None where nothing is absent."""
    if not bool(absent.any()):
        return None
    B = absent.shape[0]
    a = F.pad(absent, (0, nodes_per_frame), value=False).reshape(B, -1)  # (B, N): action nodes exist
    N = a.shape[1]
    eye = torch.eye(N, dtype=torch.bool, device=a.device)
    return (~a)[:, None, :].expand(B, N, N) | eye


def _pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad (or cut) dim 1 to ``length``."""
    if x.shape[1] >= length:
        return x[:, :length]
    pad = x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


def commit_frames(cfg: PredictorConfig, commit: int | None) -> int:
    """The predicted frames that join a rollout's chain per pass: ``commit``, or all of the
    predictor's ``future`` frames when None; an error outside 1..future."""
    Fu = cfg.future
    commit = Fu if commit is None else commit
    if Fu < 1:
        raise ValueError("this predictor has future=0: it predicts no frame, so it cannot roll out")
    if not 1 <= commit <= Fu:
        raise ValueError(f"commit must be in [1, future={Fu}], got {commit}")
    return commit


@torch.no_grad()
def rollout(
    model: CJEPAPredictor,
    history: torch.Tensor,
    steps: int,
    *,
    actions: torch.Tensor | None = None,
    absent: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
    commit: int | None = None,
    given: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Roll the world ``steps`` steps past ``history`` (B, H0 >= model history, K, D).

    actions: (B, H0 + steps, A) step actions from the first history frame on (missing steps
    count as no action), or a one-shot (B, A) at the first frame of the chain.
    absent:  (B, H0 + steps, K) or (B, K) bool, tokens that do not exist.
    hidden:  (B, H0, K) bool, history tokens the model must infer in its first window (they
    must lie in the last ``history`` frames, after the window's first frame).
    commit:  predicted frames that join the chain per forward pass, 1..future; None: future.
    given:   (values (B, H0 + steps, K, D), mask (B, H0 + steps, K) bool): tokens known from outside
    the model (an object that enters the scene, which nothing in the world causes). Where the
    mask is set past the history, the value replaces the prediction as the frame joins the
    chain, so later passes read it as history.
    Returns (B, steps, K, D).
    """
    cfg = model.cfg
    H, Fu = cfg.history, cfg.future
    B, H0, K, _ = history.shape
    commit = commit_frames(cfg, commit)
    if H0 < H:
        raise ValueError(f"history has {H0} frames; this predictor needs at least {H}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = model.out.weight.device
    total = H0 + steps
    traj = _pad_time(history.to(device).float(), total)  # (B, total, K, D)
    if absent is None:
        absent = torch.zeros(B, total, K, dtype=torch.bool)
    elif absent.dim() == 2:
        absent = absent[:, None].expand(B, total, K)
    if absent.shape != (B, total, K):
        raise ValueError(f"absent must be (B, K) or (B, {total}, K), got {tuple(absent.shape)}")
    absent = absent.to(device)
    absent = torch.cat([absent, absent[:, -1:].expand(B, Fu, K)], dim=1)  # past the end: as at the end
    one_shot = actions is not None and actions.dim() == 2
    if actions is not None and not one_shot:
        actions = _pad_time(actions.to(device), total + Fu)
    first_hidden = torch.zeros(B, H, K, dtype=torch.bool, device=device)
    if hidden is not None:
        if hidden.shape != (B, H0, K):
            raise ValueError(f"hidden must be (B, H0={H0}, K={K}), got {tuple(hidden.shape)}")
        if bool(hidden[:, : H0 - H + 1].any()):
            raise ValueError(
                f"hidden marks frames before frame {H0 - H + 1} of the history; only the last {H - 1} "
                "frames (after the first window's anchor frame) can be inferred"
            )
        first_hidden = hidden[:, H0 - H :].to(device)
    if given is not None:
        values, known = given
        if values.shape != traj.shape or known.shape != (B, total, K):
            raise ValueError(
                f"given must be (values (B, {total}, K, D) = {tuple(traj.shape)}, mask (B, {total}, K)), "
                f"got {tuple(values.shape)} and {tuple(known.shape)}"
            )
        values, known = values.to(device).float(), known.to(device).bool()
    pos = H0
    while pos < total:
        w0 = pos - H
        win = _pad_time(traj[:, w0:], H + Fu)  # (B, H + F, K, D)
        hid = torch.zeros(B, H + Fu, K, dtype=torch.bool, device=device)
        hid[:, H:] = True
        if pos == H0:
            hid[:, :H] |= first_hidden
        mask = token_mask(absent[:, w0 : w0 + H + Fu], model.nodes_per_frame)
        if actions is None:
            act = None
        elif one_shot:  # at the chain's first frame; a later window sees "no action"
            act = actions.to(device) if w0 == 0 else torch.zeros_like(actions, device=device)
        else:
            act = actions[:, w0 : w0 + H + Fu]
        pred, _ = model(win, hid, act, mask)
        pred = pred.float()
        if pos == H0 and hidden is not None:
            traj[:, w0:pos] = torch.where(first_hidden[..., None], pred[:, :H], traj[:, w0:pos])
        n = min(commit, total - pos)
        new = pred[:, H : H + n]
        if given is not None:  # known tokens replace the predictions
            new = torch.where(known[:, pos : pos + n, :, None], values[:, pos : pos + n], new)
        traj[:, pos : pos + n] = new
        pos += n
    return traj[:, H0:]


def intervene(
    model: CJEPAPredictor,
    history: torch.Tensor,
    slot: torch.Tensor | int,
    steps: int,
    *,
    at: int = 0,
    value: torch.Tensor | None = None,
    actions: torch.Tensor | None = None,
    commit: int | None = None,
    given: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """do(remove slot from history frame ``at`` on) or, with ``value`` (B, D), do(slot := value at
    frame ``at``), then roll forward ``steps`` steps. slot: an index or (B,) indices, or a
    (B, K) bool of slots to remove together (one object split over several slots).
    given: as ``rollout``'s (not on a removed slot, which stays removed).
    Returns (B, steps, K, D); removed slots' rows are zeros."""
    B, H0, K, _ = history.shape
    if not 0 <= at < H0:
        raise ValueError(f"at={at} is outside the history's frames [0, {H0})")
    sel = torch.as_tensor(slot)
    if sel.dim() == 2:
        if value is not None:
            raise ValueError("replace takes one slot per sample, not a (B, K) selection")
        chosen = sel.bool()
    else:
        sel = sel.expand(B) if sel.dim() == 0 else sel
        if sel.shape != (B,) or int(sel.min()) < 0 or int(sel.max()) >= K:
            raise ValueError(f"slot must be an index in [0, {K}) or (B={B},) of them, got {slot}")
        chosen = F.one_hot(sel.long(), K).bool()  # (B, K)
    if chosen.shape != (B, K):
        raise ValueError(f"slot selection must be (B={B}, K={K}), got {tuple(chosen.shape)}")
    if value is None:
        absent = torch.zeros(B, H0 + steps, K, dtype=torch.bool)
        absent[:, at:] = chosen[:, None]
        if given is not None:
            given = (given[0], given[1] & ~chosen[:, None].to(given[1].device))
        out = rollout(model, history, steps, actions=actions, absent=absent, commit=commit, given=given)
        return out.masked_fill(chosen.to(out.device)[:, None, :, None], 0.0)
    if value.shape != (B, history.shape[-1]):
        raise ValueError(f"value must be (B={B}, D={history.shape[-1]}), got {tuple(value.shape)}")
    if at < H0 - model.cfg.history:
        raise ValueError(
            f"at={at}: a replacement must fall in the last {model.cfg.history} history frames "
            f"(at >= {H0 - model.cfg.history}) so the model can carry it forward"
        )
    history = history.clone()
    history[torch.arange(B), at, sel] = value.to(history.dtype)
    hidden = torch.zeros(B, H0, K, dtype=torch.bool)
    hidden[:, at + 1 :] = chosen[:, None]
    return rollout(model, history, steps, actions=actions, hidden=hidden, commit=commit, given=given)
