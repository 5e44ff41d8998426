"""Object-discovery metrics of a slot-attention encoder against ground-truth instance masks.

Inputs are integer id maps. Ground truth: ``0`` is background and ``1..O`` are objects. Prediction:
the slot id ``0..K-1`` of every pixel (the argmax over slots of the decoder's alpha masks). ``uint8``
or any other integer dtype is accepted and cast to ``long``; floating-point maps are refused
(``TypeError``), as are negative ids and true/pred maps of different shapes (``ValueError``).

Every metric builds per-row contingency tables with a single ``torch.bincount`` over the whole batch
(each row's cells offset by ``row * num_true * num_pred``), so nothing loops over pixels or rows.

Metrics
-------
``adjusted_rand_index``
    The Hubert–Arabie adjusted Rand index between two partitions of the valid pixels of each row,
    from the ``n choose 2`` pair counts of the contingency table, in float64. Its conventions are
    those of scikit-learn's ``adjusted_rand_score``: two identical partitions (including the trivial
    cases "one cluster in both" and "every point alone in both") score 1.0. A row with fewer than
    two valid pixels has no pairs, so its ARI is undefined: NaN (scikit-learn would say 1.0).
``fg_ari``
    FG-ARI (Greff et al., 2019, "Multi-Object Representation Learning with Iterative Variational
    Inference"): the ARI restricted to the pixels whose ground truth is foreground (``true > 0``);
    how the prediction splits the background does not matter. Every trailing dimension is one
    pixel set: ``[B*T, H, W]`` gives per-frame FG-ARI, while a whole video ``[B, T, H, W]`` gives
    the spatio-temporal "video FG-ARI" of SAVi (Kipf et al., 2022, "Conditional Object-Centric
    Learning from Video"), which also rewards a slot for keeping its object over time. A row with
    fewer than two foreground pixels is NaN. A row whose foreground is a single object scores 1.0
    only if the prediction also keeps it in one segment, else 0.0 (the usual ARI behaviour).
``mean_best_overlap``
    mBO: for every ground-truth object present in a row (at least one pixel), the best IoU with any
    predicted segment (segments are whole, background pixels included), averaged over the row's
    objects. Background is not an object. NaN for a row without any object. Same shape rules as
    ``fg_ari``.
``temporal_consistency``
    For each video and object: in every frame where the object has at least ``min_pixels`` pixels,
    its slot is the predicted id covering most of them (ties go to the lowest id); the object is
    consistent if that slot is the same in all those frames. Returns counts, so that several
    batches add up.
``slot_switches``
    The same best slots, counted as events: per video and object, how many times the best slot
    changes between consecutive counted frames, and how many of those changes go back to a slot
    the object held before (a flicker between two slots sharing it) rather than to a new one (a
    hand-over). Tells a tracker that loses an object once from one that flickers all video long,
    which ``temporal_consistency`` scores alike.
``object_errors``
    What went wrong with each object of a clip, as counts: held by two slots at once within
    frames, moved from one slot to another over the clip, sharing its slot with another
    object, or inside the background's slot. FG-ARI says how much is wrong; this says what.
``summarize``
    The nanmean of per-row values as a Python float, so NaN rows (undefined metric) are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "adjusted_rand_index",
    "fg_ari",
    "mean_best_overlap",
    "object_classes",
    "object_errors",
    "summarize",
    "temporal_consistency",
]


def _as_ids(x: Tensor, name: str) -> Tensor:
    """``x`` as a ``long`` tensor of non-negative ids."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {x.dtype}")
    x = x.long()
    if x.numel() and bool((x < 0).any()):
        raise ValueError(f"{name} has negative ids (min {int(x.min())}); ids must be >= 0")
    return x


def _check_pair(true: Tensor, pred: Tensor, min_ndim: int) -> tuple[Tensor, Tensor]:
    """Validate a (true, pred) pair of id maps of one shape with at least ``min_ndim`` dims."""
    if tuple(true.shape) != tuple(pred.shape):
        raise ValueError(f"true and pred shapes differ: true {tuple(true.shape)} vs pred {tuple(pred.shape)}")
    if true.dim() < min_ndim:
        raise ValueError(f"expected at least {min_ndim} dims, got shape {tuple(true.shape)}")
    return _as_ids(true, "true"), _as_ids(pred, "pred")


def _num_labels(x: Tensor, given: int | None, name: str) -> int:
    """Number of label values the table for ``x`` needs: ``given``, checked, else ``max + 1``."""
    top = int(x.max()) if x.numel() else 0
    if given is None:
        return top + 1
    if given < 1 or top >= given:
        raise ValueError(f"{name}={given} but the ids go up to {top}")
    return given


def contingency(true: Tensor, pred: Tensor, kt: int, kp: int, valid: Tensor | None = None) -> Tensor:
    """Per-row contingency tables: ``(N, P)`` id maps -> ``(N, kt, kp)`` int64 pixel counts.

    ``true < kt`` and ``pred < kp`` are assumed; only pixels where ``valid`` is True are counted.
    """
    n = true.shape[0]
    row = torch.arange(n, device=true.device).unsqueeze(1)  # (N, 1)
    cell = (row * kt + true) * kp + pred  # (N, P)
    cell = cell[valid] if valid is not None else cell.reshape(-1)
    return torch.bincount(cell, minlength=n * kt * kp).view(n, kt, kp)


def _comb2(x: Tensor) -> Tensor:
    """``x choose 2``, exact in int64."""
    return x * (x - 1) // 2


def adjusted_rand_index(
    true: Tensor,
    pred: Tensor,
    valid: Tensor | None = None,
    num_true: int | None = None,
    num_pred: int | None = None,
) -> Tensor:
    """Adjusted Rand index of each row's two partitions over its valid pixels.

    Args:
        true: ``(B, P)`` integer ids of the reference partition.
        pred: ``(B, P)`` integer ids of the predicted partition.
        valid: ``(B, P)`` bool, the pixels to compare (all when None).
        num_true, num_pred: table sizes (every id must be below them); ``max + 1`` when None.

    Returns:
        ``(B,)`` float64. Exact Hubert–Arabie ARI from the ``n choose 2`` pair counts. As in
        scikit-learn's ``adjusted_rand_score``, identical partitions (all valid pixels in one cluster
        in both, every pixel its own cluster in both, or any other exact agreement up to relabelling)
        give 1.0, as does a zero denominator. A row with fewer than 2 valid pixels has no pairs and
        the ARI is undefined there: NaN (use ``summarize`` to average while skipping them).
    """
    true, pred = _check_pair(true, pred, min_ndim=2)
    if true.dim() != 2:
        raise ValueError(f"adjusted_rand_index takes (B, P) id maps, got shape {tuple(true.shape)}")
    if valid is not None:
        if tuple(valid.shape) != tuple(true.shape):
            raise ValueError(
                f"valid shape {tuple(valid.shape)} does not match true/pred shape {tuple(true.shape)}"
            )
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got dtype {valid.dtype}")
        # Ids of ignored pixels must not widen the table.
        true = true.masked_fill(~valid, 0)  # (B, P)
        pred = pred.masked_fill(~valid, 0)  # (B, P)
    kt = _num_labels(true, num_true, "num_true")
    kp = _num_labels(pred, num_pred, "num_pred")

    table = contingency(true, pred, kt, kp, valid)  # (B, Kt, Kp)
    n = table.sum((1, 2))  # (B,)
    index = _comb2(table).sum((1, 2))  # (B,) pairs together in both
    sum_a = _comb2(table.sum(2)).sum(1)  # (B,) pairs together in true
    sum_b = _comb2(table.sum(1)).sum(1)  # (B,) pairs together in pred
    total = _comb2(n)  # (B,) all pairs
    # Same partition: no pair is together in one and apart in the other.
    identical = (index == sum_a) & (index == sum_b)  # (B,)

    # Hubert–Arabie, numerator and denominator both multiplied by C(n, 2):
    #   (index - sum_a*sum_b/total) / ((sum_a + sum_b)/2 - sum_a*sum_b/total)
    # The denominator is rewritten as a sum of non-negative terms, so it does not cancel.
    idx, sa, sb, tot = (v.double() for v in (index, sum_a, sum_b, total))
    num = idx * tot - sa * sb  # (B,)
    den = 0.5 * (sa * (tot - sb) + sb * (tot - sa))  # (B,)
    ari = num / torch.where(den == 0, torch.ones_like(den), den)
    ari = torch.where(identical | (den == 0), torch.ones_like(ari), ari)
    return torch.where(n < 2, torch.full_like(ari, float("nan")), ari)


def _flatten_rows(true: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and flatten ``[B, ...]`` id maps to ``(B, P)``."""
    true, pred = _check_pair(true, pred, min_ndim=2)
    b = true.shape[0]
    return true.reshape(b, -1), pred.reshape(b, -1)


def fg_ari(true_masks: Tensor, pred_masks: Tensor) -> Tensor:
    """FG-ARI: ARI over the foreground pixels (``true_masks > 0``) of each row.

    Args:
        true_masks: ``(B, ...)`` ground-truth ids, 0 = background; trailing dims are flattened.
        pred_masks: ``(B, ...)`` predicted slot ids, same shape.

    Returns:
        ``(B,)`` float64; NaN for a row with fewer than 2 foreground pixels. ``(B, T, H, W)`` gives
        the spatio-temporal video FG-ARI, ``(B*T, H, W)`` the per-frame FG-ARI.
    """
    true, pred = _flatten_rows(true_masks, pred_masks)  # (B, P)
    return adjusted_rand_index(true, pred, valid=true > 0)


def mean_best_overlap(true_masks: Tensor, pred_masks: Tensor) -> Tensor:
    """mBO: mean over a row's ground-truth objects of the best IoU with any predicted segment.

    Args:
        true_masks: ``(B, ...)`` ground-truth ids, 0 = background (not an object).
        pred_masks: ``(B, ...)`` predicted slot ids, same shape.

    Returns:
        ``(B,)`` float64; NaN for a row without any object pixel.
    """
    true, pred = _flatten_rows(true_masks, pred_masks)  # (B, P)
    kt, kp = _num_labels(true, None, "num_true"), _num_labels(pred, None, "num_pred")
    inter = contingency(true, pred, kt, kp).double()  # (B, Kt, Kp)
    area_t = inter.sum(2)  # (B, Kt)
    area_p = inter.sum(1)  # (B, Kp)
    union = area_t.unsqueeze(2) + area_p.unsqueeze(1) - inter  # (B, Kt, Kp)
    iou = inter / union.clamp_min(1)  # (B, Kt, Kp); union >= area_t >= 1 for present objects
    best = iou.amax(2)[:, 1:]  # (B, O)
    present = area_t[:, 1:] > 0  # (B, O)
    return (best * present).sum(1) / present.sum(1)  # 0/0 = NaN without objects


def temporal_consistency(true_masks: Tensor, pred_masks: Tensor, min_pixels: int = 1) -> tuple[int, int]:
    """Count the objects that keep one slot throughout a video.

    Args:
        true_masks: ``(B, T, ...)`` ground-truth ids per frame, 0 = background.
        pred_masks: ``(B, T, ...)`` predicted slot ids, same shape.
        min_pixels: a frame counts for an object when the object has at least this many pixels in it.

    Returns:
        ``(consistent, counted)``: ``counted`` is the number of (video, object) pairs seen in at
        least one frame; ``consistent`` those whose best slot (the predicted id covering most of the
        object's pixels in a frame, ties to the lowest id) is the same in all the frames counted.
    """
    best = _best_slots(true_masks, pred_masks, min_pixels)
    if best is None:
        return 0, 0
    slot, present, kp = best
    lo = torch.where(present, slot, torch.full_like(slot, kp)).amin(1)  # (B, O)
    hi = torch.where(present, slot, torch.full_like(slot, -1)).amax(1)  # (B, O)
    seen = present.any(1)  # (B, O)
    return int((seen & (lo == hi)).sum()), int(seen.sum())


def _best_slots(true_masks: Tensor, pred_masks: Tensor, min_pixels: int) -> tuple[Tensor, Tensor, int] | None:
    """Per video, frame and object the best slot and whether the object counts there:
    ``(slot (B, T, O), present (B, T, O), num_pred)``, or None when there is no frame or no
    object."""
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    true, pred = _check_pair(true_masks, pred_masks, min_ndim=2)
    b, t = true.shape[:2]
    true = true.reshape(b * t, -1)  # (B*T, P)
    pred = pred.reshape(b * t, -1)  # (B*T, P)
    kt, kp = _num_labels(true, None, "num_true"), _num_labels(pred, None, "num_pred")
    if b * t == 0 or kt == 1:
        return None
    table = contingency(true, pred, kt, kp).view(b, t, kt, kp)[:, :, 1:]  # (B, T, O, Kp)
    present = table.sum(3) >= min_pixels  # (B, T, O)
    slot = table.argmax(3)  # (B, T, O); argmax returns the first maximum: the lowest id
    return slot, present, kp


def slot_switches(
    true_masks: Tensor, pred_masks: Tensor, min_pixels: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Count the changes of each object's best slot over a video (see ``temporal_consistency``
    for the best slot and ``min_pixels``).

    Returns:
        ``(switches, returns, seen)``, each ``(B, O)`` for the object ids ``1..O``:
        ``switches`` the changes of best slot between consecutive frames in which the object
        counts (frames where it does not count are skipped, not breaks), ``returns`` those of
        them that go to a slot the object held in an earlier counted frame, ``seen`` whether
        the object counts in any frame. An object seen in no frame has 0 and 0.
    """
    best = _best_slots(true_masks, pred_masks, min_pixels)
    if best is None:
        b = true_masks.shape[0] if true_masks.ndim else 0
        empty = torch.zeros(b, 0, dtype=torch.long)
        return empty, empty.clone(), empty.bool()
    slot, present, kp = best
    b, t, o = slot.shape
    # the best slot of the last counted frame up to each frame (kp before the first one)
    frame = torch.arange(t).view(1, t, 1).expand(b, t, o)
    last = torch.where(present, frame, torch.full_like(frame, -1)).cummax(1).values  # (B, T, O)
    held = torch.cat([torch.full_like(slot[:, :1], kp), slot], 1)  # index 0: nothing held yet
    prev = held.gather(1, torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1] + 1], 1))
    change = present & (prev != kp) & (slot != prev)  # (B, T, O)
    # slots held in earlier counted frames: a running OR over time of one-hot best slots
    onehot = F.one_hot(slot, kp) * present.unsqueeze(-1)  # (B, T, O, Kp) long
    before = torch.cat([torch.zeros_like(onehot[:, :1]), onehot[:, :-1]], 1).cummax(1).values
    returned = change & (before.gather(3, slot.unsqueeze(-1)).squeeze(-1) > 0)
    return change.sum(1), returned.sum(1), present.any(1)


ERROR_CLASSES = ("split_in_frames", "split_over_time", "merged", "in_background", "whole")


def object_classes(
    true_masks: Tensor, pred_masks: Tensor, min_pixels: int = 10, share: float = 0.2
) -> dict[str, Tensor]:
    """Per (video, object) of ids ``1..O``: ``seen``, each class of ``object_errors`` as a
    (B, O) bool tensor, ``best`` (B, O), the slot holding most of the object's counted pixels,
    and ``first`` (B, O), its first counted frame (-1 when never seen). Empty dict when there
    is no frame or no object."""
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    true, pred = _check_pair(true_masks, pred_masks, min_ndim=2)
    b, t = true.shape[:2]
    kt, kp = _num_labels(true, None, "num_true"), _num_labels(pred, None, "num_pred")
    if b * t == 0 or kt == 1:
        return {}
    table = contingency(true.reshape(b * t, -1), pred.reshape(b * t, -1), kt, kp).view(b, t, kt, kp).double()
    background = table[:, :, 0].sum(1).argmax(-1)  # (B,) the background's slot
    obj = table[:, :, 1:]  # (B, T, O, Kp)
    area = obj.sum(-1)  # (B, T, O)
    counted = area >= min_pixels
    seen = counted.any(1)  # (B, O)
    frame_share = obj / area.clamp_min(1).unsqueeze(-1)
    second = frame_share.topk(2, dim=-1).values[..., 1] if kp > 1 else torch.zeros_like(area)
    n = counted.sum(1)  # (B, O)
    second_in_frames = (second * counted).sum(1) / n.clamp_min(1)  # (B, O)
    total = (obj * counted.unsqueeze(-1)).sum(1)  # (B, O, Kp)
    total_share = total / total.sum(-1, keepdim=True).clamp_min(1)
    second_over_time = total_share.topk(2, dim=-1).values[..., 1] if kp > 1 else torch.zeros_like(n)
    best = total.argmax(-1)  # (B, O)
    in_background = seen & (best == background[:, None])
    # another seen object with the same best slot
    same = (best[:, :, None] == best[:, None, :]) & seen[:, :, None] & seen[:, None, :]
    same &= ~torch.eye(best.shape[1], dtype=torch.bool, device=best.device)
    merged = seen & same.any(-1) & ~in_background
    split_in = seen & (second_in_frames > share)
    split_time = seen & (second_over_time > share) & ~split_in
    whole = seen & ~(split_in | split_time | merged | in_background)
    frames = torch.arange(t, device=counted.device).view(1, t, 1)
    first = torch.where(counted, frames, torch.full_like(frames, t)).amin(1)  # (B, O)
    first = torch.where(seen, first, torch.full_like(first, -1))
    classes = (split_in, split_time, merged, in_background, whole)
    return {"seen": seen, **dict(zip(ERROR_CLASSES, classes, strict=True)), "best": best, "first": first}


def object_errors(
    true_masks: Tensor, pred_masks: Tensor, min_pixels: int = 10, share: float = 0.2
) -> dict[str, int]:
    """Classify each (video, object) by how the prediction holds it.

    Args:
        true_masks: ``(B, T, ...)`` ground-truth ids per frame, 0 = background.
        pred_masks: ``(B, T, ...)`` predicted slot ids, same shape.
        min_pixels: a frame counts for an object when the object has at least this many pixels.
        share: the part of an object's pixels a second slot must hold to count.

    Returns:
        counts over the objects seen (in at least one counted frame): ``objects``;
        ``split_in_frames``, a second slot holds on average over the counted frames more than
        ``share`` of the object's pixels of each frame (two slots share it at once);
        ``split_over_time``, over the counted frames together a second slot holds more than
        ``share``, but not within frames (the object changed slot); ``merged``, its best slot
        over the video (the one holding most of its pixels) is also another seen object's and
        is not the background's (the slot holding most background pixels); ``in_background``,
        its best slot is the background's; ``whole``, none of these. An object can be both
        split and merged. ``object_classes`` gives the same per object.
    """
    classes = object_classes(true_masks, pred_masks, min_pixels, share)
    if not classes:
        return dict.fromkeys(("objects", *ERROR_CLASSES), 0)
    return {"objects": int(classes["seen"].sum()), **{k: int(classes[k].sum()) for k in ERROR_CLASSES}}


def summarize(values: Tensor) -> float:
    """NaN-ignoring mean of per-row metric values as a Python float (NaN if none is defined)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.numel() == 0:
        return float("nan")
    return float(values.nanmean())
