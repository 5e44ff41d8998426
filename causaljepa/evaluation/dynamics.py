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

From the first frame, a case whose worlds part inside the history (o touches another object
before the rollout starts) shows the others' factual history, o's effects included, to both
rollouts: no do-operator can undo what the history already shows. The second protocol,
``at_onset``, starts each case's history at the last frame where the two worlds still agree
(the frame before the ``onset``, the first frame where any other object's state or presence
differs, read from the video store's simulated states: ``counterfactual_onsets``), so the
whole effect of removing o lies in the rolled-out frames. Its ``factual_own_mse`` (the
factual rollout against the factual world) tells whether the predictor simulates the
interaction at all: a predictor that ignores o is closer to the world without o
(``factual_mse``) than to its own.

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
from ..data.store import VideoStore
from ..data.windows import step_actions
from ..io import atomic_output
from ..models.predictor import CJEPAPredictor
from ..rollout import commit_frames, intervene, rollout
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
    commit: int | None = None,
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
    commit = commit_frames(cfg, commit)  # written down as the number it is
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


def matched_errors(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """pred (S, K1, D), truth (S, K2, D), K1 <= K2 -> (S,) the MSE per slot at each step under
    the assignment of pred slots to distinct truth slots that minimises the error summed over S."""
    err = (pred[:, :, None].float() - truth[:, None].float()).pow(2).mean(dim=-1)  # (S, K1, K2)
    rows, cols = linear_sum_assignment(err.sum(dim=0).numpy())
    return err[:, rows, cols].mean(dim=1)


def matched_mse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """``matched_errors`` averaged over the steps: the MSE per slot and step."""
    return float(matched_errors(pred, truth).mean())


def counterfactual_onsets(video_store: VideoStore, atol: float = 1e-5) -> np.ndarray:
    """(N, O) int64: for each video and removed object o, the first frame where another object's
    simulated state or presence differs between the factual world and the world without o;
    T (the frame count) where removing o changes nothing, -1 where o has no counterfactual world."""
    if not video_store.has("cf_states"):
        raise ValueError(
            f"{video_store.path}: onsets need counterfactual states (cf_states); generate the data "
            "with data.generator.counterfactuals=true"
        )
    N, T, O = video_store.num_videos, video_store.num_frames, video_store.max_objects
    onsets = np.full((N, O), -1, np.int64)
    for i in range(N):
        states, present = video_store.read("states", i), video_store.read("present", i)  # (T, O, F), (T, O)
        cf_states, cf_present = video_store.read("cf_states", i), video_store.read("cf_present", i)
        for o in np.flatnonzero(video_store.read("cf_valid", i)):
            others = np.arange(O) != o
            both = present[:, others] & cf_present[o][:, others]
            moved = ~np.isclose(states[:, others], cf_states[o][:, others], rtol=0.0, atol=atol).all(-1)
            differs = (present[:, others] != cf_present[o][:, others]) | (both & moved)
            frames = np.flatnonzero(differs.any(axis=1))
            onsets[i, o] = int(frames[0]) if len(frames) else T
    return onsets


def object_slots(store: SlotStore, video: int, obj: int, frame: int) -> torch.Tensor:
    """(K,) bool: the slots that cover object ``obj`` at ``frame`` (slot_object)."""
    return torch.from_numpy(store.read("slot_object", video, frame, frame + 1)[0] == obj)


def store_onsets(store: SlotStore, video_store: str | os.PathLike | None = None) -> np.ndarray | None:
    """``counterfactual_onsets`` of the video store ``store`` was made from: ``video_store``, or
    by default the file its ``video_store`` attribute names in the directory above the slots'
    (``<data root>/slots/validation.h5`` -> ``<data root>/validation.h5``). None where that
    default is missing, holds other videos or has no counterfactual states; an error where an
    explicit ``video_store`` does not fit."""
    explicit = video_store is not None
    path = (
        Path(video_store)
        if explicit
        else store.path.parent.parent / str(store.f.attrs.get("video_store", ""))
    )
    if not path.is_file():
        if explicit:
            raise FileNotFoundError(f"video_store={path}: no such file")
        return None
    with VideoStore(path) as vs:
        problem = None
        if vs.video_ids != store.video_ids:
            problem = f"holds other videos than {store.path}"
        elif not vs.has("cf_states"):
            problem = "has no counterfactual states (cf_states)"
        if problem:
            if explicit:
                raise ValueError(f"video_store={path} {problem}; pass the store the slots were made from")
            return None
        return counterfactual_onsets(vs)


def intervention_errors(
    model: CJEPAPredictor,
    store: SlotStore,
    *,
    stride: int,
    steps: int,
    onsets: np.ndarray | None = None,
    batch_size: int = 64,
    commit: int | None = None,
    progress: bool = True,
) -> dict:
    """Latent interventions against counterfactual truth (see the module docstring).

    onsets: ``counterfactual_onsets`` of the video store the slots were made from; without it
    the ``at_onset`` protocol is not run (``at_onset`` is None) and cases carry no onset."""
    if not (store.has("cf_slots") and store.has("slot_object")):
        raise ValueError(
            f"{store.path}: interventions need counterfactual slots (cf_slots) and slot_object; make the "
            "slots from data generated with data.generator.counterfactuals=true "
            "(cjepa oracle-slots, or cjepa extract-slots counterfactuals=true)"
        )
    if onsets is not None and onsets.shape[0] != store.num_videos:
        raise ValueError(
            f"onsets has {onsets.shape[0]} videos, {store.path} has {store.num_videos}: pass the onsets of "
            "the video store these slots were made from"
        )
    last = (model.cfg.history - 1) * stride
    steps = min(steps, (store.num_frames - 1 - last) // stride)
    if steps < 1:
        raise ValueError(f"{store.path}: videos of {store.num_frames} frames leave no frame to roll out")
    cases = []  # (video, object, first history frame, o's slots there)
    for i in range(store.num_videos):
        valid = store.read("cf_valid", i)
        for o in np.flatnonzero(valid):
            sel = object_slots(store, i, int(o), 0)
            if bool(sel.any()) and not bool(sel.all()):
                cases.append((i, int(o), 0, sel))
    if not cases:
        raise ValueError(f"{store.path}: no (video, object) pair with a counterfactual world and a slot")
    run = dict(stride=stride, steps=steps, batch_size=batch_size, commit=commit, progress=progress)
    rows, curves = _score(model, store, cases, desc="interventions", **run)
    for r in rows:
        r["onset"] = None if onsets is None else int(onsets[r["video"], r["object"]])
    gaps = np.array([r["truth_gap"] for r in rows])
    result = {
        "steps": steps,
        "stride": stride,
        "all": _summary(rows, np.ones(len(rows), bool)) | {"horizon_mse": curves},
        "most_affected_half": _summary(rows, gaps >= np.median(gaps)),
        "history_affected_fraction": None,
        "at_onset": None,
        "cases": rows,
    }
    if onsets is not None:
        chosen, excluded = _onset_cases(store, cases, onsets, last=last, stride=stride, steps=steps)
        result["history_affected_fraction"] = excluded["history_affected"] / len(cases)
        at_onset = {"cases": len(chosen), "excluded": excluded}
        if chosen:
            rows, curves = _score(model, store, chosen, desc="at onset", **run)
            for r in rows:
                r["onset"] = int(onsets[r["video"], r["object"]])
            at_onset |= _summary(rows, np.ones(len(rows), bool)) | {"horizon_mse": curves, "case_list": rows}
        result["at_onset"] = at_onset
    return result


def _onset_cases(
    store: SlotStore, cases: list, onsets: np.ndarray, *, last: int, stride: int, steps: int
) -> tuple[list, dict[str, int]]:
    """The at-onset protocol's cases (module docstring): each case's history moved to end at frame
    onset - 1, and the counts of the cases left out, by reason."""
    excluded = {"history_affected": 0, "no_effect_in_range": 0, "object_not_in_a_slot": 0}
    chosen = []
    for i, o, _, _ in cases:
        end = int(onsets[i, o]) - 1  # the last frame where both worlds agree
        if end < last:
            excluded["history_affected"] += 1
        elif end + stride * steps > store.num_frames - 1:  # never, or too late to roll out
            excluded["no_effect_in_range"] += 1
        else:
            sel = object_slots(store, i, o, end - last)
            if bool(sel.any()) and not bool(sel.all()):
                chosen.append((i, o, end - last, sel))
            else:
                excluded["object_not_in_a_slot"] += 1
    return chosen, excluded


ERRORS = ("intervened", "factual", "factual_own", "truth_gap")


def _summary(rows: list[dict], mask: np.ndarray) -> dict:
    """Means over the cases where ``mask`` holds (a case is a dict of errors)."""
    col = {k: np.array([r[k] for r in rows])[mask] for k in ERRORS}
    return {
        "cases": int(mask.sum()),
        "intervened_mse": float(col["intervened"].mean()),
        "factual_mse": float(col["factual"].mean()),
        "factual_own_mse": float(col["factual_own"].mean()),
        "intervened_lower_fraction": float((col["intervened"] < col["factual"]).mean()),
        "truth_gap_mse": float(col["truth_gap"].mean()),
    }


@torch.no_grad()
def _score(
    model: CJEPAPredictor,
    store: SlotStore,
    cases: list[tuple[int, int, int, torch.Tensor]],
    *,
    stride: int,
    steps: int,
    batch_size: int,
    commit: int | None,
    progress: bool,
    desc: str,
) -> tuple[list[dict], dict[str, list[float]]]:
    """Each case (video i, object o, first history frame w0, o's slots): the intervened rollout
    (o removed) and the factual one from the history w0..w0 + (history - 1) * stride, scored over
    the other slots (``ERRORS``). Returns one row per case and the mean error per step."""
    from tqdm import tqdm

    H = model.cfg.history
    last = (H - 1) * stride
    device = model.out.weight.device
    curves = {name: torch.zeros(steps) for name in ERRORS}
    rows = []
    for c0 in tqdm(range(0, len(cases), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = cases[c0 : c0 + batch_size]
        # what does not depend on the removed object is read and rolled out once per history
        starts = sorted({(i, w0) for i, _, w0, _ in batch})
        row = torch.tensor([starts.index((i, w0)) for i, _, w0, _ in batch])
        hist = torch.stack(
            [torch.from_numpy(store.read("slots", i, w0, w0 + last + 1, stride)) for i, w0 in starts]
        )
        acts = [window_actions(store, [i], w0, H + steps, stride, model.cfg.action_dim) for i, w0 in starts]
        actions = None if acts[0] is None else torch.cat(acts)
        factual = rollout(model, hist.to(device), steps, actions=actions, commit=commit).cpu()[row]
        sel = torch.stack([s for *_, s in batch])
        actions = None if actions is None else actions[row]
        removed = intervene(model, hist[row].to(device), sel, steps, actions=actions, commit=commit).cpu()
        for b, (i, o, w0, s) in enumerate(batch):
            keep = ~s
            t0, t1 = w0 + last + stride, w0 + last + stride * steps + 1  # the rolled-out frames
            cf_truth = torch.from_numpy(store.read("cf_slots", i, t0, t1, stride, removed=o))  # (S, K, D)
            fact_truth = torch.from_numpy(store.read("slots", i, t0, t1, stride))[:, keep]
            per = {
                "intervened": matched_errors(removed[b][:, keep], cf_truth),
                "factual": matched_errors(factual[b][:, keep], cf_truth),
                "factual_own": matched_errors(factual[b][:, keep], fact_truth),
                "truth_gap": matched_errors(fact_truth, cf_truth),
            }
            for name, e in per.items():
                curves[name] += e
            rows.append({"video": i, "object": o} | {k: float(e.mean()) for k, e in per.items()})
    return rows, {name: (c / len(rows)).tolist() for name, c in curves.items()}
