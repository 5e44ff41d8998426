"""How well a predictor simulates: rollout error against horizon, and latent interventions.

Rollout error (``rollout_store``): each video's history ends at its last observed frame
(``observed_frames - 1``); the predictor rolls on at its window stride, and where the slot
store has the true later frames (clevrer_sim simulates 32 beyond the 128 observed), the
error per horizon step is compared with copying the last frame and linear extrapolation.

Interventions (``intervention_errors``): for each video and each object o that exists in
the first frame and has a counterfactual world (``cf_slots``), the history is the first
``history`` frames; the intervened rollout removes o's slot(s) (the do-operator) and the
factual rollout does not. Both are scored against the slots of the world without o, over
the slots other than o's, matched to the true slots by the Hungarian algorithm on the
error summed over the horizon (learned slots come in any order). The intervention helps
where the intervened error is lower. Cases are also split by how much removing o changes
the others (the truth's own factual-versus-counterfactual gap): the upper half is where a
model has to simulate the change.

Errors are mean squared errors over the slot width (MSE per slot and step).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..data.slot_store import SLOT_SCHEMA_VERSION, SlotStore
from ..data.windows import step_actions
from ..io import atomic_output
from ..models.predictor import CJEPAPredictor
from ..rollout import intervene, rollout
from ..training.predictor import copy_last, horizon_mse, linear_extrapolation


def window_actions(
    store: SlotStore, videos: list[int], start: int, steps: int, stride: int, action_dim: int
) -> torch.Tensor | None:
    """The step actions (B, steps, stride A) of ``videos`` from frame ``start``, or None for a
    predictor without action nodes (trained with windows.actions=false, or on a store without
    actions); an error where store and predictor disagree."""
    if store.one_shot and action_dim:
        raise ValueError(
            f"{store.path} holds one action per video (a PHYRE ball at t = 0), not per-frame actions; "
            "use causaljepa.training.phyre (cjepa eval phyre)"
        )
    if not action_dim:
        return None
    if store.action_dim * stride != action_dim:
        raise ValueError(
            f"the predictor takes {action_dim} action values per step, {store.path} gives "
            f"{store.action_dim * stride} ({store.action_dim} per frame at stride {stride})"
        )
    rows = [step_actions(store.read("actions", i), start, steps, stride) for i in videos]
    return torch.from_numpy(np.stack(rows))


def rollout_store(
    model: CJEPAPredictor,
    store: SlotStore,
    out: str | os.PathLike,
    *,
    stride: int,
    end: int | None = None,
    batch_size: int = 64,
    commit: int = 1,
    use_actions: bool = True,
    progress: bool = True,
) -> dict:
    """Roll every video of ``store`` past frame ``end`` (default: its last observed frame) to the
    store's last frame (or ``future`` steps where ``end`` is the last frame: no truth then);
    write the predicted slots to ``out``; return per-horizon errors where truth exists.

    ``out`` (HDF5): slots (N, S, K, D) float32, frame_index (S,) int64 (the video frame of each
    step), video_ids; attrs kind="rollout", predictor history/stride, source slot store.
    """
    from tqdm import tqdm

    cfg = model.cfg
    H = cfg.history
    end = store.observed_frames - 1 if end is None else end
    first = end - (H - 1) * stride
    if first < 0 or end >= store.num_frames:
        raise ValueError(
            f"history of {H} frames at stride {stride} ending at frame {end} needs frames {first}..{end}; "
            f"the store has 0..{store.num_frames - 1}"
        )
    steps = max(1, (store.num_frames - 1 - end) // stride) if end < store.num_frames - 1 else cfg.future
    frame_index = np.array([end + stride * (j + 1) for j in range(steps)], np.int64)
    has_truth = bool(frame_index[-1] < store.num_frames)
    N, K, D = store.num_videos, store.num_slots, store.slot_dim
    sums = {name: torch.zeros(steps) for name in ("predictor", "copy_last", "linear")}
    with atomic_output(Path(out)) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("slots", (N, steps, K, D), np.float32, track_times=False)
        f.create_dataset("frame_index", data=frame_index, track_times=False)
        f.create_dataset("video_ids", data=np.array(store.video_ids, dtype=object), dtype=h5py.string_dtype())
        for v0 in tqdm(range(0, N, batch_size), desc="rollout", unit="batch", disable=not progress):
            vids = list(range(v0, min(N, v0 + batch_size)))
            hist = torch.stack(
                [torch.from_numpy(store.read("slots", i, first, end + 1, stride)) for i in vids]
            )  # (B, H, K, D)
            actions = window_actions(store, vids, first, H + steps, stride, cfg.action_dim)
            if actions is not None and not use_actions:  # the same model, every action "no action"
                actions = torch.zeros_like(actions)
            pred = rollout(model, hist, steps, actions=actions, commit=commit).cpu()
            ds[v0 : v0 + len(vids)] = pred.numpy()
            if has_truth:
                t0, t1 = int(frame_index[0]), int(frame_index[-1]) + 1
                truth = torch.stack(
                    [torch.from_numpy(store.read("slots", i, t0, t1, stride)) for i in vids]
                )  # (B, S, K, D)
                n = len(vids)
                sums["predictor"] += horizon_mse(pred, truth) * n
                sums["copy_last"] += horizon_mse(copy_last(hist, steps), truth) * n
                sums["linear"] += horizon_mse(linear_extrapolation(hist, steps), truth) * n
        f.attrs.update(
            {
                "schema_version": SLOT_SCHEMA_VERSION,
                "kind": "rollout",
                "slot_store": store.path.name,
                "encoder_hash": store.encoder_hash,
                "history": H,
                "stride": stride,
                "end": end,
                "commit": commit,
            }
        )
    if not has_truth:
        return {"steps": steps, "frame_index": frame_index.tolist()}
    per = {k: (v / N).tolist() for k, v in sums.items()}
    return {
        "steps": steps,
        "frame_index": frame_index.tolist(),
        "horizon_mse": per,
        "mean_mse": {k: float(np.mean(v)) for k, v in per.items()},
        "beats_baselines_from_h2": bool(
            all(
                p < min(c, li)
                for p, c, li in zip(
                    per["predictor"][1:], per["copy_last"][1:], per["linear"][1:], strict=True
                )
            )
        ),
    }


def matched_mse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """pred (S, K1, D), truth (S, K2, D), K1 <= K2 -> the MSE per slot and step under the
    assignment of pred slots to distinct truth slots that minimises the error summed over S."""
    cost = (pred[:, :, None].float() - truth[:, None].float()).pow(2).mean(dim=-1).sum(dim=0)  # (K1, K2)
    rows, cols = linear_sum_assignment(cost.numpy())
    return float(cost[rows, cols].sum()) / (pred.shape[0] * len(rows))


def object_slots(store: SlotStore, video: int, obj: int, frame: int) -> torch.Tensor:
    """(K,) bool: the slots that cover object ``obj`` at ``frame`` (slot_object)."""
    return torch.from_numpy(store.read("slot_object", video, frame, frame + 1)[0] == obj)


def intervention_errors(
    model: CJEPAPredictor,
    store: SlotStore,
    *,
    stride: int,
    steps: int,
    batch_size: int = 64,
    commit: int = 1,
    progress: bool = True,
) -> dict:
    """Latent interventions against counterfactual truth (see the module docstring)."""
    from tqdm import tqdm

    if not (store.has("cf_slots") and store.has("slot_object")):
        raise ValueError(
            f"{store.path}: interventions need counterfactual slots (cf_slots) and slot_object; make the "
            "slots from data generated with data.generator.counterfactuals=true "
            "(cjepa oracle-slots, or cjepa extract-slots counterfactuals=true)"
        )
    cfg = model.cfg
    H = cfg.history
    last = (H - 1) * stride
    steps = min(steps, (store.num_frames - 1 - last) // stride)
    if steps < 1:
        raise ValueError(f"{store.path}: videos of {store.num_frames} frames leave no frame to roll out")
    cases = []  # (video, object, slot selection)
    for i in range(store.num_videos):
        valid = store.read("cf_valid", i)
        for o in np.flatnonzero(valid):
            sel = object_slots(store, i, int(o), 0)
            if bool(sel.any()) and not bool(sel.all()):
                cases.append((i, int(o), sel))
    device = model.out.weight.device
    rows = []
    t0, t1 = last + stride, last + stride * steps + 1  # the rolled-out frames, at the stride
    for c0 in tqdm(
        range(0, len(cases), batch_size), desc="interventions", unit="batch", disable=not progress
    ):
        batch = cases[c0 : c0 + batch_size]
        # what does not depend on the removed object is read and rolled out once per video
        videos = sorted({i for i, _, _ in batch})
        row = torch.tensor([videos.index(i) for i, _, _ in batch])
        hist_v = torch.stack([torch.from_numpy(store.read("slots", i, 0, last + 1, stride)) for i in videos])
        actions_v = window_actions(store, videos, 0, H + steps, stride, cfg.action_dim)
        factual = rollout(model, hist_v.to(device), steps, actions=actions_v, commit=commit).cpu()[row]
        truth_v = [torch.from_numpy(store.read("slots", i, t0, t1, stride)) for i in videos]
        sel = torch.stack([s for _, _, s in batch])  # (B, K)
        actions = None if actions_v is None else actions_v[row]
        removed = intervene(model, hist_v[row].to(device), sel, steps, actions=actions, commit=commit).cpu()
        for b, (i, o, s) in enumerate(batch):
            keep = ~s
            cf_truth = torch.from_numpy(store.read("cf_slots", i, t0, t1, stride, removed=o))  # (S, K, D)
            fact_truth = truth_v[int(row[b])]
            rows.append(
                {
                    "video": i,
                    "object": o,
                    "intervened": matched_mse(removed[b][:, keep], cf_truth),
                    "factual": matched_mse(factual[b][:, keep], cf_truth),
                    "truth_gap": matched_mse(fact_truth[:, keep], cf_truth),
                }
            )
    if not rows:
        raise ValueError(f"{store.path}: no (video, object) pair with a counterfactual world and a slot")
    gaps = np.array([r["truth_gap"] for r in rows])
    upper = gaps >= np.median(gaps)

    def summary(mask: np.ndarray) -> dict:
        iv = np.array([r["intervened"] for r in rows])[mask]
        fa = np.array([r["factual"] for r in rows])[mask]
        return {
            "cases": int(mask.sum()),
            "intervened_mse": float(iv.mean()),
            "factual_mse": float(fa.mean()),
            "intervened_lower_fraction": float((iv < fa).mean()),
            "truth_gap_mse": float(gaps[mask].mean()),
        }

    return {
        "steps": steps,
        "stride": stride,
        "all": summary(np.ones(len(rows), bool)),
        "most_affected_half": summary(upper),
        "cases": rows,
    }
