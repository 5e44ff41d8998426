"""Counterfactual questions answered by geometry: a world model's "what if", without a reader.

A counterfactual choice says "A collides with B" in the world without X. On oracle slots (one
slot per object, its position in the slot) such a choice can be answered with no learned
reader: "correct" where A and B come within the contact distance, in the observed frames, of a
world simulated without X. The score then belongs to the simulation alone, not to a reader's
training (whose seed spread is 3 points on 788 questions, README).

The contact distance is read from the calibration split's observed frames: the distance that
best tells the annotated collisions from the pairs that never collide (no counterfactual truth
is used, and no validation data).

Worlds scored, one row each:
- ``factual``: the observed world, X's removal changing nothing (what a model without a world
  model answers).
- ``truth``: the re-simulated world without X (``cf_slots``), where the slot store has it:
  the ceiling of the geometric reading itself.
- ``constant velocity``: every object keeps its velocity from the start, with no collisions
  and no damping (a reference with no physics), and each predictor's rollout
  (``rollout.intervene``: X's slot removed).

Each simulated world starts at one of two frames:
- ``first``: the video's first ``history`` frames (protocol (b) of the QA reader).
- ``contact``: the last frame (at the stride) before X first comes within the contact distance
  of another object; the world before it is the observed one. In this world objects act on
  each other only by contact, so until X touches something the world without X is the
  observed world (abduction from the video). Where X touches nothing in the observed frames,
  the world without X is the observed world and nothing is simulated. Where X touches
  something before the history ends, the simulation starts as from ``first``.

and with or without ``entries``: an object that enters the scene after the start (nothing in
this world causes an entry) joins the simulated world at its observed state over its first
``history`` steps, which the predictor reads as history, then moves by the simulation. Without
them a simulation has only the objects present when it starts.

With ``factual_rollouts``, each predictor also rolls the world on from the same start with
nothing removed (its own factual world), scored as if it were the world without X: where a
predictor's answers come out the same either way, its rollout does not simulate what removing X
changes, whatever its score. ``changed`` (every row with a simulated world; the truth's against
the observed world, a predictor's against its factual rollout) is the share of choices (of two
named objects) whose answer the removal turns.

Every choice is also put in one of four kinds by the label and the observed world: ``kept`` (a
collision of the observed world that still happens), ``new`` (happens only without X), ``lost``
(happens only with X) and ``never``. The factual world is right on kept and never and wrong on
new and lost; a world model earns its keep on those two.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.oracle import ORACLE_FIELDS
from ..data.questions import described_object, load_questions, named_objects
from ..data.slot_store import SlotStore
from ..data.store import VideoStore
from ..io import save_figure, write_json_atomic, write_text_atomic
from ..rollout import intervene, rollout
from . import mean_std, plus_minus
from .qa import named_object, video_index

KINDS = ("kept", "new", "lost", "never")
STARTS = ("first", "contact")
_PRESENT, _X, _Y, _VX, _VY = (ORACLE_FIELDS.index(k) for k in ("present", "x", "y", "vx", "vy"))
_SCALE = np.array([3.0, 2.0], np.float32)  # oracle x / 3, y / 2 -> world units; velocities / 3


def check_oracle(store: SlotStore) -> None:
    """The geometric reading needs positions: oracle slots (``cjepa oracle-slots``)."""
    if store.encoder_hash != "oracle" or store.slot_dim != len(ORACLE_FIELDS):
        raise ValueError(
            f"{store.path}: slots of encoder {store.encoder_hash[:12]!r} with D={store.slot_dim}; the "
            f"geometric counterfactual reading needs oracle slots (D={len(ORACLE_FIELDS)}, positions in "
            "the slot): make them with 'cjepa oracle-slots' and give slots=oracle"
        )


def positions(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Oracle slots (..., T, K, D) -> world positions (..., T, K, 2) and presence (..., T, K) bool."""
    return slots[..., [_X, _Y]] * _SCALE, slots[..., _PRESENT] > 0.5


def pair_distance(xy: np.ndarray, present: np.ndarray, a: int, b: int) -> float:
    """The closest A and B come over the frames where both exist (inf where they never do)."""
    both = present[:, a] & present[:, b]
    if not both.any():
        return math.inf
    return float(np.linalg.norm(xy[both, a] - xy[both, b], axis=-1).min())


def first_contact(xy: np.ndarray, present: np.ndarray, o: int, distance: float) -> int | None:
    """The first frame where object ``o`` is within ``distance`` of another present object."""
    d = np.linalg.norm(xy - xy[:, o : o + 1], axis=-1)  # (T, K)
    near = (d < distance) & present & present[:, o : o + 1]
    near[:, o] = False
    frames = np.flatnonzero(near.any(axis=1))
    return int(frames[0]) if len(frames) else None


@dataclass
class Calibration:
    distance: float  # world units: closer than this counts as a contact
    accuracy: float  # percent of the calibration pairs it classifies right
    pairs: int
    collisions: int


def calibrate_contact(
    slots: SlotStore, videos: VideoStore, stride: int, grid: np.ndarray | None = None
) -> Calibration:
    """The contact distance that best tells, at ``stride``, the pairs the annotations say collide
    in the observed frames from the pairs that do not (ties: the smallest distance)."""
    grid = np.round(np.arange(0.30, 1.50, 0.01), 2) if grid is None else grid
    if list(slots.video_ids) != list(videos.video_ids):
        raise ValueError(
            f"{slots.path} and {videos.path} hold other videos (video_ids differ): the contact distance "
            "is calibrated on a video store and the oracle slots made from it"
        )
    T = slots.observed_frames
    dists, labels = [], []
    for i in range(slots.num_videos):
        ann = videos.annotation(i)
        if not ann:
            continue
        hit = {tuple(sorted(c["object_ids"])) for c in ann["collision"] if c["frame_id"] < T}
        xy, present = positions(slots.read("slots", i, 0, T, stride))
        seen = np.flatnonzero(present.any(axis=0))
        for ia, a in enumerate(seen):
            for b in seen[ia + 1 :]:
                dists.append(pair_distance(xy, present, int(a), int(b)))
                labels.append((int(a), int(b)) in hit)
    if not labels or not any(labels):
        raise ValueError(
            f"{videos.path}: no annotated collision in the observed frames of {len(labels)} object pairs; "
            "the contact distance is calibrated on a split with collisions (calibration_split=train)"
        )
    d, y = np.array(dists), np.array(labels)
    acc = [((d < g) == y).mean() for g in grid]
    best = int(np.argmax(acc))
    return Calibration(float(grid[best]), 100.0 * float(acc[best]), len(y), int(y.sum()))


@dataclass
class Item:
    """One counterfactual question: its video row, the object it removes (None: no single
    annotated object fits), and per choice the two objects named (None: not two single
    objects) and whether it is correct."""

    video: int
    removed: int | None
    pairs: list[tuple[int, int] | None]
    labels: list[bool]


def counterfactual_items(questions: list[dict], rows: list[int], props: np.ndarray) -> list[Item]:
    """The scored counterfactual questions of a question file (every choice labelled)."""
    items = []
    for video, row in zip(questions, rows, strict=True):
        for q in video["questions"]:
            if q["question_type"] != "counterfactual" or any("answer" not in c for c in q["choices"]):
                continue
            removed = described_object(props[row], named_object(q))
            pairs = []
            for c in q["choices"]:
                ids = named_objects(props[row], c["choice"])
                pairs.append(tuple(ids) if len(ids) == 2 and None not in ids else None)
            labels = [c["answer"] == "correct" for c in q["choices"]]
            items.append(Item(row, removed, pairs, labels))
    return items


def start_row(item_slots: np.ndarray, removed: int, start: str, history: int, stride: int, distance: float):
    """Where the simulation of the world without ``removed`` starts, as a row at ``stride``
    (its history ends there), or None where nothing needs simulating (``contact``: the object
    touches nothing). ``item_slots``: the video's observed frames at stride 1."""
    first = history - 1
    if start == "first":
        return first
    xy, present = positions(item_slots)
    t = first_contact(xy, present, removed, distance)
    if t is None:
        return None
    return max(first, (t - 1) // stride)


def entry_mask(observed: np.ndarray, e: int, removed: int | None, history: int) -> np.ndarray:
    """(R, K) bool: rows after ``e`` where an object absent at row ``e`` (other than ``removed``;
    None: any) is given from the observation: its first ``history`` present rows."""
    present = observed[..., _PRESENT] > 0.5  # (R, K)
    given = np.zeros_like(present)
    for k in np.flatnonzero(~present[e] & present[e + 1 :].any(axis=0)):
        if k == removed:
            continue
        rows = e + 1 + np.flatnonzero(present[e + 1 :, k])
        given[rows[:history], k] = True
    return given


def constant_velocity(observed: np.ndarray, e: int, given: np.ndarray, dt: float) -> np.ndarray:
    """Rows after ``e`` of a world where every object keeps its velocity (no collisions, no
    damping): from row ``e``, or an entering object from its last given row. ``observed`` (R, K,
    D) with the removed object already zeroed; returns (R, K, D)."""
    out = observed.copy()
    R, K, _ = observed.shape
    out[e + 1 :] = 0.0
    out[given] = observed[given]
    for k in range(K):
        present_at = [e] if observed[e, k, _PRESENT] > 0.5 else []
        rows = present_at + list(e + 1 + np.flatnonzero(given[e + 1 :, k]))
        if not rows:
            continue
        r0 = rows[-1]
        state = observed[r0, k]
        n = np.arange(1, R - r0, dtype=np.float32)[:, None]
        out[r0 + 1 :, k] = state
        # per second: x_norm moves by vx_norm (both / 3), y_norm by vy_norm * 3 / 2
        out[r0 + 1 :, k, _X] = state[_X] + state[_VX] * dt * n[:, 0]
        out[r0 + 1 :, k, _Y] = state[_Y] + state[_VY] * 1.5 * dt * n[:, 0]
    return out


def answer(world: np.ndarray, pairs: list[tuple[int, int] | None], distance: float) -> list[bool]:
    """Per choice: does its pair come within ``distance`` in ``world`` (R, K, D)?"""
    xy, present = positions(world)
    return [p is not None and pair_distance(xy, present, *p) < distance for p in pairs]


def changed(guesses: list[list[bool]], other: list[list[bool]], items: list[Item]) -> float:
    """Percent of the choices of two named objects whose answer differs between two worlds."""
    pairs = [(g, o) for gs, os_, it in zip(guesses, other, items, strict=True)
             for g, o, p in zip(gs, os_, it.pairs, strict=True) if p is not None]  # fmt: skip
    return 100.0 * sum(g != o for g, o in pairs) / len(pairs) if pairs else math.nan


def score(guesses: list[list[bool]], items: list[Item], factual: list[list[bool]]) -> dict:
    """Per option and per question accuracy (percent), and per option for each kind of choice."""
    right = options = q_right = 0
    kind_n = dict.fromkeys(KINDS, 0)
    kind_right = dict.fromkeys(KINDS, 0)
    for guess, item, fact in zip(guesses, items, factual, strict=True):
        ok = [g == y for g, y in zip(guess, item.labels, strict=True)]
        right += sum(ok)
        options += len(ok)
        q_right += all(ok)
        for good, y, f in zip(ok, item.labels, fact, strict=True):
            kind = ("kept" if f else "new") if y else ("lost" if f else "never")
            kind_n[kind] += 1
            kind_right[kind] += good
    return {
        "option": 100.0 * right / options,
        "question": 100.0 * q_right / len(items),
        "kinds": {k: 100.0 * kind_right[k] / kind_n[k] if kind_n[k] else None for k in KINDS},
        "kind_counts": kind_n,
    }


def simulate_without(
    model,
    rows: np.ndarray,
    removed: np.ndarray | None,
    e: int,
    *,
    entries: bool,
    actions: torch.Tensor | None = None,
    commit: int | None = None,
) -> np.ndarray:
    """The worlds without one slot each: ``rows`` (B, R, K, D) observed at the predictor's stride,
    ``removed`` (B,) slot indices -> (B, R, K, D): rows up to ``e`` as observed with the removed
    slot zeroed, then ``rollout.intervene`` from the ``history`` rows ending at ``e``; with
    ``entries``, objects that enter after ``e`` are given over their first ``history`` rows.
    ``actions``: the step actions from the first history row on, or None. ``removed=None``: the
    same rollout from the same rows with nothing removed (the predictor's factual world)."""
    H = model.cfg.history
    B, R = rows.shape[:2]
    if not H - 1 <= e < R:
        raise ValueError(f"the simulation starts at row {e}; it needs {H} history rows and a row after")
    base = rows.copy()
    if removed is not None:
        base[np.arange(B), :, removed] = 0.0
    steps = R - 1 - e
    if steps < 1:
        return base
    given = None
    if entries:
        drop = [None] * B if removed is None else [int(r) for r in removed]
        known = np.stack([entry_mask(base[j], e, drop[j], H) for j in range(B)])  # (B, R, K)
        given = (torch.from_numpy(base[:, e + 1 - H :]), torch.from_numpy(known[:, e + 1 - H :]))
    device = model.out.weight.device
    hist = torch.from_numpy(base[:, e + 1 - H : e + 1]).to(device)
    if removed is None:
        pred = rollout(model, hist, steps, actions=actions, commit=commit, given=given)
    else:
        sel = torch.as_tensor(removed, dtype=torch.int64)
        pred = intervene(model, hist, sel, steps, actions=actions, commit=commit, given=given)
    pred = pred.cpu().numpy()
    return np.concatenate([base[:, : e + 1], pred], axis=1)


def predictor_worlds(
    model,
    observed: np.ndarray,
    items: list[Item],
    starts: list[int | None],
    *,
    entries: bool,
    batch_size: int,
    remove: bool = True,
) -> list[np.ndarray | None]:
    """Per item, ``simulate_without`` its removed object from its start (None where ``starts``
    is None; ``remove=False``: nothing removed). ``observed``: (N, R, K, D), every video at the
    predictor's stride. Each world is simulated once: items of one video, start and removed
    object (with ``remove=False``: of one video and start) share the same array, read-only."""
    out: list[np.ndarray | None] = [None] * len(items)
    # start row -> (video, removed slot or None) -> the items of that world
    worlds_at: dict[int, dict[tuple[int, int | None], list[int]]] = {}
    for m, e in enumerate(starts):
        if e is not None:
            key = (items[m].video, items[m].removed if remove else None)
            worlds_at.setdefault(e, {}).setdefault(key, []).append(m)
    for e, by_world in sorted(worlds_at.items()):
        keys = list(by_world)
        for b in range(0, len(keys), batch_size):
            batch = keys[b : b + batch_size]
            rows = np.stack([observed[video] for video, _ in batch])
            removed = np.array([r for _, r in batch]) if remove else None
            worlds = simulate_without(model, rows, removed, e, entries=entries)
            for world, key in zip(worlds, batch, strict=True):
                for m in by_world[key]:
                    out[m] = world
    return out


HORIZONS = (1, 2, 4, 8, 16, 32)


def position_errors(
    worlds: list[np.ndarray | None], starts: list[int | None], truth: list[np.ndarray | None]
) -> dict[str, float | None]:
    """Mean distance (world units) between each object's simulated and true position, ``h`` steps
    after the simulation's start, over the objects present in both and the items simulated
    (those with a start and a truth) -> {str(h): error, None where no item reaches h}."""
    per_h: dict[int, list[float]] = {h: [] for h in HORIZONS}
    for w, e, t in zip(worlds, starts, truth, strict=True):
        if w is None or e is None or t is None:
            continue
        xy, present = positions(w)
        txy, tpresent = positions(t)
        for h in HORIZONS:
            r = e + h
            if r >= len(t):
                break
            both = present[r] & tpresent[r]
            if both.any():
                per_h[h].append(float(np.linalg.norm(xy[r, both] - txy[r, both], axis=-1).mean()))
    return {str(h): float(np.mean(v)) if v else None for h, v in per_h.items()}


def checkpoint_names(checkpoints: list[str]) -> list[str]:
    """Short names: each checkpoint's folders after those all share ("none/seed0")."""
    parts = [Path(c).resolve().parent.parts for c in checkpoints]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    names = ["/".join(p[common:]) for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoints={checkpoints}: two of them have the same name {names}")
    return names


def group_of(name: str) -> str | None:
    """ "none/seed0" -> "none": rows that differ only by the seed are summarised together."""
    m = re.fullmatch(r"(.*?)/?seed\d+", name)
    return m.group(1) or "all" if m else None


@dataclass
class CfGeometryOptions:
    split: str = "validation"
    calibration_split: str = "train"
    stride: int = 2
    history: int = 6
    starts: tuple[str, ...] = STARTS
    entries: tuple[bool, ...] = (False, True)
    factual_rollouts: bool = False  # also each predictor's rollout with nothing removed (module docstring)
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True


def evaluate_cf_geometry(
    checkpoints: list[str],
    data_root: str | os.PathLike,
    slot_dir: str | os.PathLike,
    out: str | os.PathLike,
    opts: CfGeometryOptions,
    truth_dir: str | os.PathLike | None = None,
) -> dict:
    """Score the factual world, the truth, constant velocity and each predictor's worlds on the
    split's counterfactual questions; write <out>/results.json, results.md and results.png."""
    from tqdm import tqdm

    from ..training.predictor import check_same_encoder, load_predictor

    for s in opts.starts:
        if s not in STARTS:
            raise ValueError(f"starts: {s!r} is not one of {list(STARTS)}")
    if opts.stride < 1 or opts.history < 1:
        raise ValueError(f"stride={opts.stride} and history={opts.history} must be >= 1")
    root, slot_dir, out = Path(data_root), Path(slot_dir), Path(out)
    qpath = root / "questions" / f"{opts.split}.json"
    with (
        SlotStore(slot_dir / f"{opts.calibration_split}.h5") as cs,
        VideoStore(root / f"{opts.calibration_split}.h5") as cv,
    ):
        check_oracle(cs)
        calib = calibrate_contact(cs, cv, opts.stride)
    with VideoStore(root / f"{opts.split}.h5") as vs:
        props = vs.f["object_properties"][:]
    questions = load_questions(qpath)
    names = checkpoint_names(checkpoints) if checkpoints else []
    models = []  # every predictor is loaded and checked before any world is simulated
    with SlotStore(slot_dir / f"{opts.split}.h5") as store:
        check_oracle(store)
        for ckpt_path in checkpoints:
            model, ckpt = load_predictor(ckpt_path, opts.device)
            check_same_encoder(store, ckpt)
            stride = int(ckpt["extra"]["windows"]["stride"])
            if stride != opts.stride:
                raise ValueError(
                    f"{ckpt_path}: the predictor steps {stride} frames, the scoring runs at "
                    f"stride={opts.stride}; give stride={stride}"
                )
            models.append(model)
        rows = video_index(list(store.video_ids), questions, str(qpath))
        items = counterfactual_items(questions, rows, props)
        if not items:
            raise ValueError(f"{qpath}: no counterfactual question with labelled choices to score")
        T = store.observed_frames
        full = store.f["slots"][:, :T]  # (N, T, K, D) at stride 1, for the contacts
        dt = opts.stride / store.fps
        truth_store = Path(truth_dir) / f"{opts.split}.h5" if truth_dir else None
        truth = None
        if truth_store is not None or store.has("cf_slots"):
            with SlotStore(truth_store) if truth_store else nullcontext(store) as ts:
                if not ts.has("cf_slots"):
                    raise ValueError(f"{ts.path}: truth= names a slot store without cf_slots")
                if list(ts.video_ids) != list(store.video_ids):
                    raise ValueError(
                        f"{ts.path} holds other videos than {store.path} (video_ids differ); truth= must be "
                        "the oracle slots of the same videos, generated with counterfactuals"
                    )
                truth = [
                    None
                    if it.removed is None
                    else ts.read("cf_slots", it.video, 0, T, opts.stride, removed=it.removed)
                    for it in items
                ]
    observed = full[:, :: opts.stride]  # (N, R, K, D)
    d = calib.distance
    factual = [answer(observed[it.video], it.pairs, d) for it in items]
    rows_out: dict[str, dict] = {"factual": score(factual, items, factual)}
    if truth is not None:
        guesses = [
            factual[m] if w is None else answer(w, it.pairs, d)
            for m, (it, w) in enumerate(zip(items, truth, strict=True))
        ]
        rows_out["truth"] = {**score(guesses, items, factual), "changed": changed(guesses, factual, items)}

    starts_seen: dict[tuple[int, str], list[int | None]] = {}

    def starts_for(history: int, start: str) -> list[int | None]:
        """Each item's start row (computed once per history and start, shared by every row)."""
        if (history, start) not in starts_seen:
            starts_seen[history, start] = [
                None
                if it.removed is None
                else start_row(full[it.video], it.removed, start, history, opts.stride, d)
                for it in items
            ]
        return starts_seen[history, start]

    def zeroed(it: Item) -> np.ndarray:
        w = observed[it.video].copy()
        w[:, it.removed] = 0.0
        return w

    def rows_for(label: str, worlds_of, own: bool = False) -> None:
        """The rows of one simulator: per start and entries, its worlds without the removed object
        and, with ``own``, its worlds with nothing removed (``worlds_of(..., remove=False)``; where
        nothing is simulated, the observed world)."""
        for start in opts.starts:
            for entries in opts.entries:
                worlds, starts = worlds_of(start, entries)
                guesses = [
                    factual[m] if it.removed is None else answer(zeroed(it) if w is None else w, it.pairs, d)
                    for m, (it, w) in enumerate(zip(items, worlds, strict=True))
                ]
                row = score(guesses, items, factual)
                if truth is not None:
                    row["position_error"] = position_errors(worlds, starts, truth)
                world = f"from {start}{', entries' if entries else ''}"
                rows_out[f"{label}, {world}"] = row
                if not own:
                    continue
                own_worlds, _ = worlds_of(start, entries, remove=False)
                kept = [
                    factual[m] if it.removed is None or w is None else answer(w, it.pairs, d)
                    for m, (it, w) in enumerate(zip(items, own_worlds, strict=True))
                ]
                row["changed"] = changed(guesses, kept, items)
                rows_out[f"{label}, factual rollout, {world}"] = score(kept, items, factual)

    def cv_worlds(start: str, entries: bool) -> tuple[list[np.ndarray | None], list[int | None]]:
        worlds, starts = [], starts_for(opts.history, start)
        for it, e in zip(items, starts, strict=True):
            if e is None:
                worlds.append(None)
                continue
            w = zeroed(it)
            given = entry_mask(w, e, it.removed, opts.history) if entries else np.zeros(w.shape[:2], bool)
            worlds.append(constant_velocity(w, e, given, dt))
        return worlds, starts

    rows_for("constant velocity", cv_worlds)
    contact_starts = starts_for(opts.history, "contact")
    counts = {
        "questions": len(items),
        "unresolved": sum(it.removed is None for it in items),
        "untouched": sum(
            e is None for it, e in zip(items, contact_starts, strict=True) if it.removed is not None
        ),
        "contact_in_history": sum(e == opts.history - 1 for e in contact_starts),
    }
    jobs = tqdm(
        list(zip(names, models, strict=True)), desc="predictors", unit="predictor", disable=not opts.progress
    )
    for name, model in jobs:

        def model_worlds(start: str, entries: bool, model=model, remove=True):
            starts = starts_for(model.cfg.history, start)
            worlds = predictor_worlds(
                model, observed, items, starts, entries=entries, batch_size=opts.batch_size, remove=remove
            )
            return worlds, starts

        rows_for(name, model_worlds, own=opts.factual_rollouts)
    result = {
        "calibration": {**asdict(calib), "split": opts.calibration_split, "stride": opts.stride},
        "counts": counts,
        "rows": rows_out,
        "groups": summarize_groups(rows_out),
        "checkpoints": dict(zip(names, [str(c) for c in checkpoints], strict=True)),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", result)
    md = write_text_atomic(out / "results.md", format_results(result))
    png = plot_results(result, out / "results.png")
    return {**result, "markdown": str(md), "png": str(png)}


def summarize_groups(rows: dict[str, dict]) -> dict[str, dict]:
    """Rows "<group>/seed<s>, <world>" -> per (group, world): per-question mean and std over seeds
    (and of ``changed``, where the rows have it)."""
    groups: dict[str, list[dict]] = {}
    for label, r in rows.items():
        name, _, world = label.partition(", ")
        g = group_of(name)
        if g is not None:
            groups.setdefault(f"{g}, {world}", []).append(r)
    out = {}
    for k, rs in groups.items():
        out[k] = {"seeds": len(rs), "question": mean_std([r["question"] for r in rs])}
        if all("changed" in r for r in rs):
            out[k]["changed"] = mean_std([r["changed"] for r in rs])
    return out


def format_results(result: dict) -> str:
    c, n = result["calibration"], result["counts"]
    lines = [
        "# Counterfactual questions answered by geometry",
        "",
        f'{n["questions"]} counterfactual questions. A choice "A collides with B" is answered "correct" '
        f"where A and B come within {c['distance']:.2f} world units in the world without the removed "
        f"object, at stride {c['stride']}: the distance that tells {c['accuracy']:.1f} % of {c['pairs']} "
        f"object pairs of the {c['split']} split right against its annotated collisions "
        f"({c['collisions']} colliding pairs).",
        f"Removed object touches nothing in the observed frames (its world is the observed one): "
        f"{n['untouched']}; touches something before the history ends (from contact = from first): "
        f"{n['contact_in_history']}; no single object fits the question (answered as observed): "
        f"{n['unresolved']}.",
        "",
        "| world | per option | per question | kept | new | lost | never | changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in result["rows"].items():
        kinds = " | ".join("" if r["kinds"][k] is None else f"{r['kinds'][k]:.1f}" for k in KINDS)
        turned = f"{r['changed']:.1f}" if "changed" in r else ""
        lines.append(f"| {label} | {r['option']:.1f} | {r['question']:.1f} | {kinds} | {turned} |")
    counts = next(iter(result["rows"].values()))["kind_counts"]
    lines += [
        "",
        "Choices of each kind: " + ", ".join(f"{k} {counts[k]}" for k in KINDS) + ". Changed: the share of "
        "choices (of two named objects) whose answer the removal turns: the truth's against the observed "
        "world, a predictor's against its own factual rollout (factual_rollouts=true).",
    ]
    errors = {k: r["position_error"] for k, r in result["rows"].items() if "position_error" in r}
    if errors:
        lines += [
            "",
            "Mean distance (world units) between simulated and true positions, h steps after the "
            "simulation starts:",
            "",
            "| world | " + " | ".join(f"h={h}" for h in HORIZONS) + " |",
            "|---" * (len(HORIZONS) + 1) + "|",
        ]
        for k, e in errors.items():
            cells = " | ".join("" if e[str(h)] is None else f"{e[str(h)]:.3f}" for h in HORIZONS)
            lines.append(f"| {k} | {cells} |")
    if result["groups"]:
        lines += [
            "",
            "Per question, mean ± std over seeds:",
            "",
            "| predictor, world | seeds | per question | changed |",
        ]
        lines.append("|---|---|---|---|")
        for k, g in result["groups"].items():
            turned = plus_minus(*g["changed"]) if "changed" in g else ""
            lines.append(f"| {k} | {g['seeds']} | {plus_minus(*g['question'])} | {turned} |")
    return "\n".join(lines) + "\n"


def plot_results(result: dict, path: Path) -> Path:
    """Per-question accuracy of every world, one bar each (predictors run over several seeds: one bar
    per predictor and world, the mean, with the std over seeds), the observed world as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, groups = result["rows"], result["groups"]
    bars: list[tuple[str, float, float | None]] = []
    for label, r in rows.items():
        name = label.partition(", ")[0]
        if group_of(name) is None:
            bars.append((label, r["question"], None))
    bars += [(k, *g["question"]) for k, g in groups.items()]
    labels = [b[0] for b in bars]
    colours = [
        "tab:grey" if k == "factual" else "tab:green" if k == "truth" else
        "tab:orange" if k.startswith("constant velocity") else
        "lightsteelblue" if ", factual rollout, " in k else "tab:blue"
        for k in labels
    ]  # fmt: skip
    # the labels take about 0.055 inch a character at this size: the bars keep 4.5 inches beside them
    width = 4.5 + 0.055 * max(len(k) for k in labels)
    fig, ax = plt.subplots(figsize=(width, 0.3 * len(bars) + 1.0))
    err = [0.0 if b[2] is None else b[2] for b in bars]
    ax.barh(range(len(bars)), [b[1] for b in bars], xerr=err, color=colours, capsize=2)
    ax.axvline(rows["factual"]["question"], color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(bars)), labels, fontsize=7)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_xlabel("counterfactual questions answered right, per question (%)")
    if any(c == "lightsteelblue" for c in colours):
        ax.set_title("light: the predictor's own rollout with nothing removed", fontsize=8)
    ax.set_xlim(0, 100)
    fig.tight_layout()
    return save_figure(fig, path)
