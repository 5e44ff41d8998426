"""PHYRE evaluation of a world model: action ranking (AUCCESS), rollout fidelity and object
permanence, and violation of expectation (``cjepa eval phyre``, ``eval/phyre_plausibility.py``).

For each fold (PHYRE's within-template and cross-template splits, ``phyre_sim.folds``):

1. the world model (``causaljepa.training.phyre``: frame 0 + the ball as an action node) is
   trained on the training tasks' attempts, every tenth training task held out for validation
   (and for the error scales below), the success readout on its rollouts, and the plausibility
   model (``train_plausibility``: a sliding-window predictor over every object of the clip);
2. **fidelity**: the slot error per predicted frame on the test tasks' attempts, next to
   copying frame 0; **permanence**: the share of rollouts in which a present object vanishes
   (its predicted ``present`` falls below 0.5), an absent one appears, or two objects that are
   apart in the truth are predicted on top of each other (a duplicate);
3. **violation of expectation**: implausible versions of test attempts, made from the
   simulator's states from a random store frame j on (j >= both models' first expected frame)
   for a random dynamic body o: ``teleport`` (o jumps by 0.15-0.3 of the scene once and carries
   on from there), ``vanish`` (o is gone), ``colour`` (o takes another dynamic role's colour),
   ``pass_through`` (the attempt re-simulated with the pair of bodies (or body and ball) whose
   collision matters most passing through each other; none where no pair's does, counted in
   ``voe.clips``). Two models expect the clip's frames: the plausibility model, frame t from
   the frames just before it (and, with ``plausibility.after`` > 0, just after it), and the
   world model, frame j at its stride from frames < j (it is trained to carry on from an
   observed prefix, ``EpisodeConfig.observed_share``). A model's **tail surprise**
   (``tail_surprise``) is the largest over the clip's frames, slots and features of -log the
   share of its held-out errors of that feature (attempts of training tasks) that are as
   large. Each feature is judged against its own error distribution: a rolling ball's
   velocity errors are heavy-tailed (a collision the model did not foresee), its position
   errors are not, so a jump in position is rare where a large velocity error is not.
   ``voe.combined``: the two models' tail surprises added (-log of the product of the two
   shares); the plausibility model sees a jump 0.2 s after it, the world model a collision that
   did not happen 2 s later. Alone: ``voe.plausibility``, ``voe.world_model_tail``. Every frame
   expected from frame 0 and the action alone: ``voe.world_model_from_scene`` (scaled, below)
   and its tail surprise ``voe.world_model_from_scene_tail``, added to the plausibility model's
   in ``voe.combined_from_scene`` (a frame after a violation is not expected from the violated
   frames before it, as in step mode, but from the scene and the action). **The figure**
   (``voe.<type>``) is the one of these five tail surprises (``SELECTABLE``) chosen on
   validation tasks (``voe.selected``): clips of every type made of half the validation tasks'
   attempts, judged against the other half's errors; the surprise whose worst type has the
   highest AUROC there (``choose_surprise``). And, surprise = the largest per-slot error, each
   feature's squared error in units of the model's mean held-out error, averaged over the
   slot's features (``scaled_surprise``): ``voe.plausibility_scaled`` (the figure up to
   2026-12-07), ``voe.plausibility_unscaled`` (plain squared errors), ``voe.world_model`` and
   ``voe.world_model_from_scene``. AUROC of surprise, implausible against the unmodified
   attempts, per type; for pass-throughs also by how far the violation moves a body
   (``voe.pass_through_by_effect``, ``auroc_by_effect``), and whether each model expects the
   contact a pass-through leaves out (``voe.contact_preference``, ``contact_preference``);
4. **action ranking**: for each test task the fixed candidate set (``sample_actions(n,
   CANDIDATE_SEED)``, the valid ones) is scored by predictor + readout, and simulated in rank
   order until solved, at most ``max_attempts`` valid attempts; AUCCESS over the test tasks,
   next to a random order (the lower bound) and the simulator oracle (an order that puts a
   solving candidate first where one exists: the upper bound).

Oracle slots only: the implausible clips are built from object states, and learned slots of
them would need the clips rendered and encoded, which this evaluation does not do.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..data.phyre_slots import phyre_oracle_features
from ..data.slot_store import SlotStore
from ..data.store import VideoStore
from ..io import write_json_atomic, write_text_atomic
from ..masking import MaskConfig
from ..models.predictor import PredictorConfig
from ..sim import phyre_sim as ps
from ..sim.phyre_generate import BALL, ROLLOUTS_FILE, TASKS_FILE, TaskIndex, padded_states
from ..training.checkpoint import file_hash, last_checkpoint
from ..training.loop import PRECISIONS, OptimConfig, TrainerConfig
from ..training.phyre import (
    EpisodeConfig,
    EpisodeSampler,
    PlausibilityConfig,
    ReadoutConfig,
    episode_times,
    expected_frames,
    load_readout,
    predict_episodes,
    rollouts_of,
    score_actions,
    train_phyre_predictor,
    train_plausibility,
    train_readout,
    window_errors,
)
from ..training.predictor import load_predictor
from . import mean_std, plus_minus
from .influence import auroc

CANDIDATE_SEED = 20190613  # the fixed candidate action set of every task
VIOLATIONS = ("teleport", "vanish", "colour", "pass_through")
VOE_VARIANTS = (  # every surprise reported; the figure is one of SELECTABLE, chosen on validation
    "plausibility",
    "world_model_tail",
    "plausibility_scaled",
    "plausibility_unscaled",
    "world_model",
    "world_model_from_scene",
    "world_model_from_scene_tail",
    "combined",
    "combined_from_scene",
)
SELECTABLE = (  # the figure's candidates: the tail surprises, each model's and both added
    "combined",
    "combined_from_scene",
    "plausibility",
    "world_model_tail",
    "world_model_from_scene_tail",
)
EFFECT_EDGES = (0.1, 0.2, 0.4)  # pass-through bins by effect (scene fractions), above voe.min_effect
BY_EFFECT = SELECTABLE  # the surprises of each pass-through bin
SCALE_FLOOR = 1e-4  # added to each feature's error scale: features the model never gets wrong
DYNAMIC_ROLES = tuple(r for r in ps.ROLES if r in ps.DYNAMIC_ROLES)  # in ROLES' order: seeded choices repeat
FOLD_KINDS = ps.FOLD_KINDS


@dataclass(frozen=True)
class RankingConfig:
    candidates: int = 10_000  # the candidate set, before invalid actions are dropped
    max_attempts: int = 100  # valid attempts per task (PHYRE's AUCCESS counts k <= 100)
    tasks: int = 0  # test tasks ranked per fold (0: all), evenly spaced over the test tasks
    batch_size: int = 2048
    precision: str = "auto"  # of the scoring passes: auto | fp32 | bf16 (autocast); auto: bf16 where native

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.max_attempts < 1 or self.tasks < 0 or self.batch_size < 1:
            raise ValueError(
                f"ranking: candidates ({self.candidates}), max_attempts ({self.max_attempts}) and batch_size "
                f"({self.batch_size}) must be >= 1, tasks ({self.tasks}) >= 0"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"ranking.precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class VoEConfig:
    attempts: int = 400  # test attempts turned into clips of every violation type (0: all)
    teleport: tuple[float, float] = (0.15, 0.3)  # jump length, scene fractions
    min_effect: float = 0.05  # a pass-through must move some body this far (scene fractions)

    def __post_init__(self) -> None:
        lo, hi = self.teleport
        if self.attempts < 0 or not 0 < lo <= hi < 0.5 or self.min_effect <= 0:
            raise ValueError(
                f"voe: attempts ({self.attempts}) >= 0, 0 < teleport[0] <= teleport[1] < 0.5 (got "
                f"{self.teleport}) and min_effect > 0 (got {self.min_effect}) needed"
            )


@dataclass(frozen=True)
class PhyreEvalConfig:
    """Everything one evaluation needs besides the data (plain values; see configs/eval_phyre.yaml)."""

    predictor: PredictorConfig
    masking: MaskConfig
    predictor_train: OptimConfig
    episodes: EpisodeConfig
    readout: ReadoutConfig
    readout_train: OptimConfig
    trainer: TrainerConfig
    ranking: RankingConfig = field(default_factory=RankingConfig)
    voe: VoEConfig = field(default_factory=VoEConfig)
    plausibility: PlausibilityConfig = field(default_factory=PlausibilityConfig)
    folds: dict[str, list[int]] = field(default_factory=lambda: {"within": [0, 1, 2], "cross": [0]})
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [k for k in self.folds if k not in FOLD_KINDS]
        if bad or not any(self.folds.values()):
            raise ValueError(
                f"folds: give seeds for {list(FOLD_KINDS)} (at least one fold), got {self.folds}"
            )
        for k, seeds in self.folds.items():
            if any(not 0 <= s <= 9 for s in seeds) or len(set(seeds)) != len(seeds):
                raise ValueError(f"folds.{k}={seeds}: PHYRE's folds are distinct seeds in 0..9")


# AUCCESS ----------------------------------------------------------------------------------------
def auccess(attempts: list[int | None], max_attempts: int = 100) -> float:
    """PHYRE's AUCCESS (0-100): s_k = the share of tasks solved within k valid attempts,
    weighted by w_k = log(k + 1) - log(k), k = 1..max_attempts. ``attempts`` holds per task
    the attempt that solved it (1-based), None where none of the first max_attempts did."""
    if not attempts:
        raise ValueError("auccess: no tasks")
    k = np.arange(1, max_attempts + 1)
    w = np.log(k + 1) - np.log(k)
    solved_at = np.array([a if a is not None else max_attempts + 1 for a in attempts])
    s = (solved_at[None, :] <= k[:, None]).mean(axis=1)  # (max_attempts,)
    return float(100 * (w * s).sum() / w.sum())


class OutcomeCache:
    """Simulated outcomes of one task's candidates, so no candidate is simulated twice."""

    def __init__(self, task: ps.Task, candidates: np.ndarray):
        self.task, self.candidates, self.known = task, candidates, {}
        self.simulated = 0

    def solved(self, i: int) -> bool:
        if i not in self.known:
            self.known[i] = bool(ps.simulate(self.task, self.candidates[i], fps=None).solved)
            self.simulated += 1
        return self.known[i]

    def first_solved(self, order, limit: int | None) -> int | None:
        """The 1-based attempt in ``order`` (indices into candidates) that solves the task."""
        for n, i in enumerate(order[:limit] if limit else order, start=1):
            if self.solved(int(i)):
                return n
        return None


# VoE clips ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """One attempt's world at every store frame: states (T, O, F), present (T, O), and the object
    properties (O, 3), which change to ``props_after`` from frame ``changed_at`` on (a colour change).
    ``effect`` (a pass-through): the largest distance, scene fractions along x or y, between a scene
    body's place in this world and in the attempt at the same frame."""

    states: np.ndarray
    present: np.ndarray
    props: np.ndarray
    changed_at: int | None = None
    props_after: np.ndarray | None = None
    effect: float | None = None  # a pass-through: how far it moves some body from where it was

    def slots(self, vs: VideoStore, times: np.ndarray, *, ball: bool = False) -> np.ndarray:
        """The oracle slots (len(times), K, D) of this world at ``times`` (K + 1 with the ball)."""
        args = (vs.state_fields, vs.vocab["roles"], vs.vocab["shapes"])
        st, pe = self.states[times], self.present[times]
        out = phyre_oracle_features(st, pe, self.props, *args, ball=ball)
        if self.changed_at is not None:
            after = phyre_oracle_features(st, pe, self.props_after, *args, ball=ball)
            later = times >= self.changed_at
            out[later] = after[later]
        return out


def violation_worlds(
    vs: VideoStore, tasks: list[ps.Task], video: int, voe: VoEConfig, rng: np.random.Generator, first: int
) -> dict[str, World]:
    """The world of video ``video`` ("plausible") and each implausible version of it that can be
    made, violated from a random frame j in [first, T) on, on a random dynamic scene body (a
    pass-through only where some pair's collision matters)."""
    roles = vs.vocab["roles"]
    states, present = vs.read("states", video), vs.read("present", video)  # (T, O, F), (T, O)
    props = vs.read("object_properties", video)
    worlds = {"plausible": World(states, present, props)}
    dyn = [o for o in range(BALL) if props[o, 0] >= 0 and roles[props[o, 0]] in DYNAMIC_ROLES]
    o = int(rng.choice(dyn))
    j = int(rng.integers(first, len(states)))  # the first violated frame
    col = {n: i for i, n in enumerate(vs.state_fields)}
    s = states.copy()
    ang = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(*voe.teleport)
    for c, d in ((col["x"], math.cos(ang)), (col["y"], math.sin(ang))):
        if not 0.03 <= s[j, o, c] + dist * d <= 0.97:
            d = -d  # jump the other way, to stay inside the scene (decided once: one jump)
        s[j:, o, c] += dist * d
    worlds["teleport"] = World(s, present, props)
    p = present.copy()
    p[j:, o] = False
    worlds["vanish"] = World(states * p[..., None], p, props)
    pr = props.copy()
    others = [r for r in DYNAMIC_ROLES if r != roles[props[o, 0]]]
    pr[o, 0] = roles.index(str(rng.choice(others)))
    worlds["colour"] = World(states, present, props, j, pr)
    task = tasks[int(vs.read("task", video))]
    action = vs.read("actions", video)
    best, best_effect = None, voe.min_effect
    n = len(task.bodies)
    _, _, radius = ps.action_to_ball(action)
    for pair in [(b, n) for b in range(n)] + [tuple(task.goal)]:
        r = ps.simulate(task, action, fps=vs.fps, no_collide=pair)
        st, pe = padded_states(task, r, radius)
        effect = float(np.abs(st[:, :BALL, :2] - states[:, :BALL, :2]).max())
        if effect > best_effect:
            best, best_effect = World(st, pe, props, effect=effect), effect
    if best is not None:
        worlds["pass_through"] = best
    return worlds


def expectation_errors(
    model, clips: torch.Tensor, actions: torch.Tensor, *, step: bool = True
) -> torch.Tensor:
    """clips (B, 1 + F, K, D), actions (B, A) -> squared errors (B, F, K, D) of the predictor's
    expectation of frames 1..F. ``step``: frame j is expected from frames 0 .. j - 1 of the clip
    (what has been seen so far); else every frame from frame 0 and the action alone (the rollout
    that ranks actions)."""
    F = clips.shape[1] - 1
    if not step:
        return (predict_episodes(model, clips[:, 0], actions)[:, 1:] - clips[:, 1:]).pow(2)
    return torch.stack(
        [
            (predict_episodes(model, clips[:, 0], actions, seen=clips[:, 1:j])[:, j] - clips[:, j]).pow(2)
            for j in range(1, F + 1)
        ],
        dim=1,
    )


def error_scale(err: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """err (N, F, K, D): a model's squared errors on held-out attempts of training tasks, of the
    frames ``expected`` (N, F, K, D) -> (D,): its mean squared error per slot feature over the
    present slots: how far off its expectations usually are."""
    present = (expected[..., 0] > 0.5)[..., None]  # (N, F, K, 1)
    return (err * present).sum(dim=(0, 1, 2)) / present.sum().clamp(min=1)


def scaled_surprise(err: torch.Tensor, scale: torch.Tensor | None = None) -> np.ndarray:
    """err (B, F, K, D) squared errors (``expectation_errors``, ``window_errors``) -> (B,): the
    largest over frames and slots of the slot's mean over features of err / (scale +
    SCALE_FLOOR) (``error_scale``: then in units of the model's usual error, the negative
    log-likelihood of a diagonal Gaussian up to constants); plain err where scale is None."""
    if scale is not None:
        err = err / (scale + SCALE_FLOOR)
    return err.mean(dim=-1).flatten(1).amax(dim=1).numpy()


def held_out_errors(err: torch.Tensor, expected: torch.Tensor) -> np.ndarray:
    """err (N, F, K, D): a model's squared errors on held-out attempts of training tasks, of the
    frames ``expected`` (N, F, K, D) -> (D, M): each feature's errors over the M present slots,
    sorted: what ``tail_surprise`` compares a clip's errors with."""
    present = (expected[..., 0] > 0.5).numpy()  # (N, F, K)
    if not present.any():
        raise ValueError("held_out_errors: no present slot in the held-out frames")
    return np.sort(err.numpy()[present].T, axis=1)  # (D, M)


def tail_surprise(err: torch.Tensor, held_out: np.ndarray) -> np.ndarray:
    """err (B, F, K, D) squared errors of clips, held_out (D, M) from ``held_out_errors`` -> (B,):
    the largest over frames, slots and features of -log((1 + c) / (1 + M)), c the held-out errors
    of that feature at least as large, plus log(e / (the largest + SCALE_FLOOR)) where the error
    e is beyond every held-out one (so such errors still rank by size). Every slot counts: a
    vanished object's is the predicted presence against none."""
    B, D = err.shape[0], err.shape[-1]
    if held_out.ndim != 2 or held_out.shape[0] != D:
        raise ValueError(f"tail_surprise: held_out {held_out.shape} must be (D={D}, M)")
    M = held_out.shape[1]
    e = err.reshape(B, -1, D).numpy()
    worst = np.full(B, -np.inf)
    for j in range(D):
        c = M - np.searchsorted(held_out[j], e[..., j], side="left")  # held-out errors >= e
        beyond = np.log(np.maximum(e[..., j] / (held_out[j, -1] + SCALE_FLOOR), 1.0))
        worst = np.maximum(worst, (np.log1p(M) - np.log1p(c) + beyond).max(axis=1))
    return worst


# fidelity and permanence ------------------------------------------------------------------------
def fidelity(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    """pred, truth (N, 1 + F, K, D) -> slot MSE per predicted frame, copy-frame-0's, and the
    permanence failures (shares of rollouts)."""
    mse = (pred[:, 1:] - truth[:, 1:]).pow(2).mean(dim=(0, 2, 3))
    copy = (truth[:, :1] - truth[:, 1:]).pow(2).mean(dim=(0, 2, 3))
    tp, pp = truth[..., 0] > 0.5, pred[..., 0]  # present (N, T, K)
    vanish = (tp & (pp < 0.5)).flatten(1).any(dim=1)
    appear = (~tp & (pp > 0.5)).flatten(1).any(dim=1)
    pos_t, pos_p = truth[..., 1:3], pred[..., 1:3]  # (N, T, K, 2)
    dt = (pos_t[:, :, :, None] - pos_t[:, :, None]).norm(dim=-1)  # (N, T, K, K)
    dp = (pos_p[:, :, :, None] - pos_p[:, :, None]).norm(dim=-1)
    both = tp[:, :, :, None] & tp[:, :, None]
    off_diag = ~torch.eye(tp.shape[-1], dtype=torch.bool)
    duplicate = (both & off_diag & (dt > 0.1) & (dp < 0.02)).flatten(1).any(dim=1)
    return {
        "mse_per_frame": [float(v) for v in mse],
        "copy_frame0_per_frame": [float(v) for v in copy],
        "mse": float(mse.mean()),
        "copy_frame0": float(copy.mean()),
        "vanish": float(vanish.float().mean()),
        "appear": float(appear.float().mean()),
        "duplicate": float(duplicate.float().mean()),
        "rollouts": len(pred),
    }


# one fold ---------------------------------------------------------------------------------------
def split_videos(task_of: np.ndarray, train_tasks, test_tasks) -> dict[str, np.ndarray]:
    """Attempt indices of a fold: train, val (every tenth training task) and test."""
    train_tasks = sorted(train_tasks)
    val_tasks = set(train_tasks[::10])
    fit = [t for t in train_tasks if t not in val_tasks]
    pick = lambda ts: np.flatnonzero(np.isin(task_of, list(ts)))  # noqa: E731
    return {"train": pick(fit), "val": pick(val_tasks), "test": pick(test_tasks)}


def _trained(run_dir: Path, artefact: str, fingerprint: dict, train) -> Path:
    """``run_dir/artefact`` if a run with this fingerprint made it, else train (resuming an
    interrupted run); a finished or interrupted run under another fingerprint is an error."""
    path, meta = run_dir / artefact, run_dir / "fingerprint.json"
    fingerprint = json.loads(json.dumps(fingerprint))  # as read back (tuples are lists)
    old = json.loads(meta.read_text()) if meta.exists() else None
    if (path.exists() or old is not None) and old != fingerprint:
        differ = sorted(k for k in {**(old or {}), **fingerprint} if (old or {}).get(k) != fingerprint.get(k))
        what = "was made" if path.exists() else "holds an interrupted run"
        raise ValueError(
            f"{run_dir} {what} with other inputs than this evaluation's (they differ in {differ}); "
            "remove it or choose another out="
        )
    if path.exists():
        return path
    write_json_atomic(meta, fingerprint)
    return train(last_checkpoint(run_dir))


def evaluation_inputs(root: Path, slot_dir: Path) -> tuple[list[ps.Task], dict]:
    """The tasks, and the hashes of the data every fold reads (part of each fold's fingerprint),
    once the slot store is checked to be oracle slots of the video store's attempts."""
    if not (slot_dir / ROLLOUTS_FILE).exists():
        raise FileNotFoundError(
            f"{slot_dir / ROLLOUTS_FILE} does not exist; make it with 'cjepa oracle-slots data=phyre_sim'"
        )
    tasks = TaskIndex.load(root).tasks
    with SlotStore(slot_dir / ROLLOUTS_FILE) as store, VideoStore(root / ROLLOUTS_FILE) as vs:
        if not store.is_oracle:
            raise ValueError(
                f"{store.path} holds learned slots (encoder {store.encoder_hash[:12]}); the PHYRE evaluation "
                "runs on oracle slots (its implausible clips are made from object states): give slots=oracle"
            )
        if not np.array_equal(vs.f["task"][:], store.f["task"][:]):
            raise ValueError(
                f"{store.path} and {vs.path} list different attempts; make the slots again with "
                "'cjepa oracle-slots data=phyre_sim'"
            )
    hashes = {"slots": file_hash(slot_dir / ROLLOUTS_FILE), "rollouts": file_hash(root / ROLLOUTS_FILE),
              "tasks": file_hash(root / TASKS_FILE)}  # fmt: skip
    return tasks, hashes


def run_fold(
    root: Path,
    slot_dir: Path,
    tasks: list[ps.Task],
    inputs: dict,
    cfg: PhyreEvalConfig,
    kind: str,
    fold: int,
    out: Path,
    *,
    progress: bool = True,
) -> dict:
    """Train, evaluate and write <out>/<kind>_<fold>/results.json for one fold; ``tasks`` and
    ``inputs`` (the data's hashes) from ``evaluation_inputs``."""
    run = out / f"{kind}_{fold}"
    store = SlotStore(slot_dir / ROLLOUTS_FILE)
    try:
        task_of = store.f["task"][:]
        train_t, test_t = ps.folds(tasks, fold, kind)
        videos = split_videos(task_of, train_t, test_t)
        base = {"kind": kind, "fold": fold, **inputs, "seed": cfg.seed,
                "trainer": {k: v for k, v in asdict(cfg.trainer).items() if k != "progress"}}  # fmt: skip
        pfp = {**base, "predictor": asdict(cfg.predictor), "masking": asdict(cfg.masking),
               "train": asdict(cfg.predictor_train), "episodes": asdict(cfg.episodes)}  # fmt: skip
        train_s, val_s, test_s = (
            EpisodeSampler(store, videos[k], cfg.predictor.future, cfg.episodes.stride)
            for k in ("train", "val", "test")
        )
        ppath = _trained(
            run / "predictor", "predictor.pt", pfp,
            lambda resume: train_phyre_predictor(
                train_s, val_s, cfg.predictor, cfg.masking, cfg.predictor_train, cfg.trainer, cfg.episodes,
                run / "predictor", seed=cfg.seed, resume=resume, extra=base,
            ),
        )  # fmt: skip
        model, _ = load_predictor(ppath)
        rfp = {**pfp, "predictor_sha": file_hash(ppath), "readout": asdict(cfg.readout),
               "readout_train": asdict(cfg.readout_train)}  # fmt: skip
        rpath = _trained(
            run / "readout", "readout.pt", rfp,
            lambda resume: train_readout(
                model, train_s, val_s, cfg.readout, cfg.readout_train, cfg.trainer, run / "readout",
                seed=cfg.seed, resume=resume, extra=base,
            ),
        )  # fmt: skip
        efp = {**rfp, "readout_sha": file_hash(rpath), "ranking": asdict(cfg.ranking), "voe": asdict(cfg.voe),
               "plausibility": asdict(cfg.plausibility)}  # fmt: skip
        efp = json.loads(json.dumps(efp))  # as read back (tuples are lists)
        done = run / "results.json"
        if done.exists():
            kept = json.loads(done.read_text())
            if kept.get("fingerprint") == efp:
                if {*VOE_VARIANTS, "selected"} <= set(kept.get("voe", {})):
                    print(f"{kind} fold {fold}: kept {done}")
                    return kept
                # written by code that reported fewer VoE surprises: the trained models are kept
                print(f"{kind} fold {fold}: {done} lacks VoE surprises this code reports; scoring again")
        readout, _ = load_readout(rpath)
        results = {"fingerprint": efp, "kind": kind, "fold": fold, "train_tasks": len(train_t),
                   "test_tasks": len(test_t), "attempts": {k: len(v) for k, v in videos.items()}}  # fmt: skip

        # fidelity and permanence, and the readout on the test attempts' rollouts
        pred = rollouts_of(model, test_s)
        results["fidelity"] = fidelity(pred, test_s.slots)
        with torch.no_grad():
            logits = readout(pred).numpy()
        y = test_s.success.numpy()
        results["readout"] = {"accuracy": float(((logits > 0) == y).mean()), "auroc": auroc(logits, y),
                              "solved_share": float(y.mean())}  # fmt: skip

        # violation of expectation
        with VideoStore(Path(root) / ROLLOUTS_FILE) as vs:
            plfp = {**base, "plausibility": asdict(cfg.plausibility)}
            val_ball = ball_slots(vs, val_s.videos)  # in val_s's order
            plpath = _trained(
                run / "plausibility", "predictor.pt", plfp,
                lambda resume: train_plausibility(
                    ball_slots(vs, videos["train"]), val_ball, cfg.plausibility,
                    cfg.trainer, run / "plausibility", seed=cfg.seed, resume=resume, extra=base,
                ),
            )  # fmt: skip
            plausibility, _ = load_predictor(plpath)
            results["voe"] = voe_scores(
                vs, tasks, model, plausibility, cfg, videos["test"], val_s, val_ball, progress=progress,
            )  # fmt: skip

        # action ranking
        results["ranking"] = rank_tasks(tasks, test_t, store, task_of, model, readout, cfg.ranking, cfg.seed,
                                        progress=progress)  # fmt: skip
    finally:
        store.close()
    write_json_atomic(run / "results.json", results)
    return results


def _against_plausible(plausible: np.ndarray, implausible: np.ndarray) -> float:
    """AUROC of surprise: implausible clips (positives) against plausible ones."""
    labels = np.r_[np.zeros(len(plausible), bool), np.ones(len(implausible), bool)]
    return auroc(np.r_[plausible, implausible], labels)


def _aurocs(s: dict[str, np.ndarray]) -> dict:
    """AUROC of each violation type's surprises against the plausible clips', and the medians."""
    out = {k: _against_plausible(s["plausible"], s[k]) for k in VIOLATIONS if k in s}
    out["surprise_median"] = {k: float(np.median(v)) for k, v in s.items()}
    return out


def auroc_by_effect(
    surprises: dict[str, dict[str, np.ndarray]], effects: np.ndarray, lo: float
) -> list[dict]:
    """The pass-through AUROCs by how far the violation moves a body: ``surprises`` maps a surprise's
    name to its ``plausible`` and ``pass_through`` scores, ``effects`` (n,) each pass-through clip's
    ``World.effect`` (> ``lo``, voe.min_effect) -> one entry per bin of ``EFFECT_EDGES`` above ``lo``
    with clips in it: {"effect": [low, high or None], "clips": n, <name>: AUROC against every
    plausible clip}."""
    edges = [lo, *(e for e in EFFECT_EDGES if e > lo), math.inf]
    out = []
    for a, b in itertools.pairwise(edges):
        inside = (effects >= a) & (effects < b)
        if not inside.any():
            continue
        entry = {"effect": [a, None if math.isinf(b) else b], "clips": int(inside.sum())}
        for name, s in surprises.items():
            entry[name] = _against_plausible(s["plausible"], s["pass_through"][inside])
        out.append(entry)
    return out


def ball_slots(vs: VideoStore, videos) -> torch.Tensor:
    """Oracle slots with the ball (N, T, K + 1, D) of whole attempts: what the plausibility model sees."""
    times = np.arange(vs.num_frames)
    return torch.from_numpy(np.stack([
        World(vs.read("states", int(v)), vs.read("present", int(v)), vs.read("object_properties", int(v)))
        .slots(vs, times, ball=True)
        for v in videos
    ]))  # fmt: skip


@dataclass
class VoEClips:
    """The clips of some attempts made plausible and implausible (``violation_clips``), by type
    (``plausible`` and each of ``VIOLATIONS`` that could be made): ``clips`` at the world
    model's times (N, 1 + F, K, D), ``seen`` every frame with the ball (N, T, K + 1, D), the
    attempts' ``actions`` (N, A); ``effects`` (n,) of the pass-through clips, in their order,
    and ``pass_source`` (n,): the index of each one's real attempt among the plausible clips."""

    clips: dict[str, torch.Tensor]
    seen: dict[str, torch.Tensor]
    actions: dict[str, torch.Tensor]
    effects: np.ndarray
    pass_source: np.ndarray

    def counts(self) -> dict[str, int]:
        """Clips of each type, 0 for a type none could be made of."""
        return {k: len(self.clips.get(k, ())) for k in ("plausible", *VIOLATIONS)}


def violation_clips(
    vs: VideoStore, tasks, videos, voe: VoEConfig, rng: np.random.Generator, first: int, times: np.ndarray,
    *, progress=True, desc="VoE clips",
) -> VoEClips:  # fmt: skip
    """Every clip ``violation_worlds`` makes of each attempt of ``videos``, gathered by type."""
    from tqdm import tqdm

    types = ("plausible", *VIOLATIONS)
    lists: dict[str, dict[str, list]] = {n: {k: [] for k in types} for n in ("c", "s", "a")}
    effects, source = [], []
    all_frames = np.arange(vs.num_frames)
    for v in tqdm(videos, desc=desc, unit="attempt", disable=not progress):
        a = vs.read("actions", int(v))
        for k, w in violation_worlds(vs, tasks, int(v), voe, rng, first).items():
            lists["c"][k].append(w.slots(vs, times))
            lists["s"][k].append(w.slots(vs, all_frames, ball=True))
            lists["a"][k].append(a)
            if k == "pass_through":
                effects.append(w.effect)
                source.append(len(lists["c"]["plausible"]) - 1)  # this attempt's plausible clip
    stacked = {n: {k: torch.from_numpy(np.stack(v)) for k, v in d.items() if v} for n, d in lists.items()}
    return VoEClips(
        stacked["c"],
        stacked["s"],
        stacked["a"],
        np.asarray(effects, np.float64),
        np.asarray(source, np.int64),
    )


def contact_preference(
    real: torch.Tensor, violated: torch.Tensor, err_real: torch.Tensor, err_violated: torch.Tensor, first: int
) -> dict:
    """Does a model expect the real outcome of a contact? real, violated (n, T, K, D): pairs of
    clips that are the same up to a frame c (a pass-through and its real attempt); err_real,
    err_violated (n, T', K, D): a model's squared errors of frames first, first + 1, ... of them.
    At frame c a forecaster (one that expects a frame from frames before it alone) has seen the
    same past in both clips, so it expects the same frame; -> {"share": of the pairs, those where
    its error of frame c (the largest over slots of the slot's summed squared error) is larger on
    the violated clip (ties count half): 1 if it always expects the contact to happen, 0.5 if it
    cannot tell; "pairs": how many count, "unseen": pairs whose frame c it does not expect
    (before ``first`` or after its last expected frame, or no frame differs)}."""
    differ = (real - violated).abs().flatten(2).amax(dim=2) > 1e-6  # (n, T)
    c = torch.where(differ.any(dim=1), differ.float().argmax(dim=1), -1)
    ok = (c >= first) & (c - first < err_real.shape[1])
    idx = torch.nonzero(ok).flatten()
    t = c[idx] - first
    e_real = err_real[idx, t].sum(dim=-1).amax(dim=-1)
    e_viol = err_violated[idx, t].sum(dim=-1).amax(dim=-1)
    pref = (e_viol > e_real).float() + 0.5 * (e_viol == e_real).float()
    share = float(pref.mean()) if len(idx) else float("nan")
    return {"share": share, "pairs": len(idx), "unseen": len(c) - len(idx)}


def model_errors(
    model, plausibility, cfg: PhyreEvalConfig, seen: torch.Tensor, clips: torch.Tensor, actions: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Both models' squared errors of the same attempts: ``seen`` (N, T, K + 1, D) every frame
    with the ball, ``clips`` (N, 1 + F, K, D) at the world model's times, ``actions`` (N, A) ->
    {"plausibility": ``window_errors`` (N, T', K + 1, D); the world model's (N, F, K, D), "step":
    frame j expected from frames < j, and "scene": every frame from frame 0 and the action}."""
    stride, after = cfg.plausibility.stride, cfg.plausibility.after
    return {
        "plausibility": window_errors(plausibility, seen, stride, after=after),
        "step": expectation_errors(model, clips, actions, step=True),
        "scene": expectation_errors(model, clips, actions, step=False),
    }


@dataclass(frozen=True)
class Reference:
    """What a clip's errors are judged against: ``model_errors`` of held-out attempts of training
    tasks, and the frames each expected (N, ..., D; its present slots are the ones that count)."""

    errors: dict[str, torch.Tensor]
    expected: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model, plausibility, cfg: PhyreEvalConfig, ball, slots, actions) -> Reference:
        """``ball`` (N, T, K + 1, D) the attempts' every frame with the ball, ``slots`` (N, 1 + F,
        K, D) their episodes, ``actions`` (N, A)."""
        history, stride, after = plausibility.cfg.history, cfg.plausibility.stride, cfg.plausibility.after
        frames = expected_frames(ball.shape[1], history, stride, after)
        return cls(
            model_errors(model, plausibility, cfg, ball, slots, actions),
            {"plausibility": ball[:, frames], "step": slots[:, 1:], "scene": slots[:, 1:]},
        )

    def rows(self, keep: np.ndarray) -> Reference:
        """The reference of the attempts ``keep`` (a boolean mask) alone."""
        keep = torch.from_numpy(np.asarray(keep, bool))
        return Reference(
            {k: v[keep] for k, v in self.errors.items()}, {k: v[keep] for k, v in self.expected.items()}
        )


def clip_surprises(
    errs: dict[str, dict[str, torch.Tensor]], ref: Reference
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """``errs``: clip type -> ``model_errors`` of those clips -> each surprise of ``voe_scores``
    (its name -> clip type -> (N,) scores), the errors judged against ``ref``; and the
    plausibility model's and the world model's (step mode) error scales."""
    held = {m: held_out_errors(ref.errors[m], ref.expected[m]) for m in ref.errors}
    scale = {m: error_scale(ref.errors[m], ref.expected[m]) for m in ref.errors}

    def judged(mode, surprise):  # surprise: errors (N, ..., D) of one clip type -> (N,)
        return {k: surprise(e[mode]) for k, e in errs.items()}

    out = {"plausibility_unscaled": judged("plausibility", scaled_surprise)}
    for mode, scaled, tail in (
        ("plausibility", "plausibility_scaled", "plausibility"),
        ("step", "world_model", "world_model_tail"),
        ("scene", "world_model_from_scene", "world_model_from_scene_tail"),
    ):
        out[scaled] = judged(mode, partial(scaled_surprise, scale=scale[mode]))
        out[tail] = judged(mode, partial(tail_surprise, held_out=held[mode]))
    # both models' tail surprises added: -log of the product of the two shares
    for name, wm in (("combined", "world_model"), ("combined_from_scene", "world_model_from_scene")):
        out[name] = {k: out["plausibility"][k] + out[f"{wm}_tail"][k] for k in errs}
    return out, {"plausibility": scale["plausibility"].tolist(), "world_model": scale["step"].tolist()}


def selection_split(task_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """task_of (N,) the tasks of the validation attempts -> two boolean masks (N,), the reference
    attempts, whose errors the surprises are judged against, and the selection attempts, whose
    clips choose the figure's surprise, and how they were split: "tasks" (the tasks at even and
    at odd places in sorted order: no scene of the selection clips is among the reference
    attempts), or, with one validation task (a tiny data set), "attempts" (its attempts at even
    and at odd places: the same scene, other actions)."""
    order = np.unique(task_of)
    if len(order) >= 2:
        selection = np.isin(task_of, order[1::2])
        return ~selection, selection, "tasks"
    if len(task_of) < 2:
        raise ValueError(
            f"voe: choosing the figure's surprise needs at least 2 validation attempts (of every tenth "
            f"training task), got {len(task_of)}; give the fold more training tasks or attempts"
        )
    selection = np.arange(len(task_of)) % 2 == 1
    return ~selection, selection, "attempts"


def choose_surprise(aurocs: dict[str, dict]) -> str:
    """The surprise (of ``SELECTABLE``) whose worst violation type has the highest AUROC on the
    selection clips (ties: the highest mean over types, then ``SELECTABLE``'s order)."""

    def key(name):
        v = [aurocs[name][k] for k in VIOLATIONS if k in aurocs[name]]
        if not v or any(x != x for x in v):
            raise ValueError(
                f"choose_surprise: {name} has AUROCs {aurocs[name]}; every type's must be a number"
            )
        return (min(v), float(np.mean(v)), -SELECTABLE.index(name))

    return max(SELECTABLE, key=key)


def voe_scores(
    vs: VideoStore,
    tasks,
    model,
    plausibility,
    cfg: PhyreEvalConfig,
    test_videos: np.ndarray,
    val: EpisodeSampler,
    val_clips: torch.Tensor,
    *,
    progress=True,
) -> dict:
    """AUROC of surprise, implausible against plausible clips, per violation type, for the same
    clips seen by two models. ``plausibility``: the sliding-window predictor of the observed clip
    (``train_plausibility``), each feature's errors judged against its errors on ``val_clips``
    (``tail_surprise``); ``plausibility_scaled`` and ``_unscaled``: its per-slot errors in units
    of its mean errors on ``val_clips``, and plain. ``world_model``: the ranking model, frame j
    expected from frames < j at its stride, scaled by its usual errors on ``val``, and
    ``world_model_tail``, its tail surprise against its errors on ``val``; every frame expected
    from frame 0 alone: ``world_model_from_scene``, and its tail surprise,
    ``world_model_from_scene_tail``. ``combined``: the plausibility model's and the world
    model's tail surprises added; ``combined_from_scene``: with the from-scene tail surprise.

    The figure (the top-level ``<type>`` keys, ``selected``): the surprise of ``SELECTABLE``
    chosen on the validation attempts (``val.videos``), never on the test clips: the
    validation attempts are split in two (``selection_split``), clips of every type are made of the
    selection half's attempts and scored against the reference half's errors, and the surprise
    whose worst type does best there (``choose_surprise``) is the one reported on the test clips."""
    times = episode_times(model.cfg.future, cfg.episodes.stride)
    first = max(int(times[1]), plausibility.cfg.history * cfg.plausibility.stride)  # both expect frame j
    n = cfg.voe.attempts
    chosen = test_videos if not n else test_videos[:: max(1, len(test_videos) // n)][:n]
    rng = np.random.default_rng([cfg.seed, 7])
    test = violation_clips(vs, tasks, chosen, cfg.voe, rng, first, times, progress=progress)
    if len(val_clips) != len(val.videos):
        raise ValueError(
            f"voe_scores: val_clips has {len(val_clips)} attempts, val {len(val.videos)}; give the clips of "
            "val.videos, in that order (ball_slots(vs, val.videos))"
        )
    ref = Reference.of(model, plausibility, cfg, val_clips, val.slots, val.actions)

    def errors_of(c: VoEClips) -> dict[str, dict[str, torch.Tensor]]:
        return {
            k: model_errors(model, plausibility, cfg, c.seen[k], c.clips[k], c.actions[k]) for k in c.clips
        }

    errs = errors_of(test)
    s, scale = clip_surprises(errs, ref)
    out = {"clips": test.counts(), **{name: _aurocs(v) for name, v in s.items()}}

    # the figure's surprise, chosen on clips of validation tasks judged against the other validation tasks
    keep, sel, split = selection_split(vs.f["task"][:][val.videos])
    sel_videos = val.videos[sel]
    sel_videos = sel_videos if not n else sel_videos[:: max(1, len(sel_videos) // n)][:n]
    rng_sel = np.random.default_rng([cfg.seed, 8])
    picks = violation_clips(vs, tasks, sel_videos, cfg.voe, rng_sel, first, times, progress=progress,
                            desc="VoE clips (selection)")  # fmt: skip
    on_sel, _ = clip_surprises(errors_of(picks), ref.rows(keep))
    on_val = {name: _aurocs(on_sel[name]) for name in SELECTABLE}
    figure = choose_surprise(on_val)
    out["selected"] = {
        "surprise": figure,
        "split": split,
        "clips": picks.counts(),
        "validation": {name: {k: v[k] for k in VIOLATIONS if k in v} for name, v in on_val.items()},
    }
    out.update({k: out[figure][k] for k in VIOLATIONS if k in out[figure]})
    if len(test.effects):
        out["pass_through_by_effect"] = auroc_by_effect(
            {name: s[name] for name in BY_EFFECT}, test.effects, cfg.voe.min_effect
        )
        src = test.pass_source  # each pass-through's real attempt: which of the two does a model expect?
        models = [("world_model", test.clips, "step", 1)]  # frames 1..F, each from the frames before it
        if not cfg.plausibility.after:  # else its window holds frames after c, which differ: not a forecast
            T = test.seen["plausible"].shape[1]
            first_pl = expected_frames(T, plausibility.cfg.history, cfg.plausibility.stride).start
            models.insert(0, ("plausibility", test.seen, "plausibility", first_pl))
        out["contact_preference"] = {
            name: contact_preference(clips["plausible"][src], clips["pass_through"],
                                     errs["plausible"][mode][src], errs["pass_through"][mode], start)
            for name, clips, mode, start in models
        }  # fmt: skip
    out["error_scale"] = scale
    return out


def score_task(
    task: ps.Task, ti: int, store: SlotStore, task_of: np.ndarray, model, readout, rc: RankingConfig
) -> tuple[np.ndarray, torch.Tensor]:
    """Task ``ti``'s valid candidates (n, 3) of the fixed set and their success logits (n,), from
    frame 0 of any of its attempts (the scene before the ball: the same in all of them)."""
    candidates = ps.sample_actions(rc.candidates, CANDIDATE_SEED)
    cand = candidates[ps.valid_mask(task, candidates)]
    v0 = int(np.flatnonzero(task_of == ti)[0])
    scene = torch.from_numpy(store.read("slots", v0, 0, 1)[0])  # (K, D)
    logits = score_actions(
        model, readout, scene, torch.from_numpy(cand), batch_size=rc.batch_size, precision=rc.precision
    )
    return cand, logits


def rank_tasks(tasks, test_t, store, task_of, model, readout, rc: RankingConfig, seed: int, *, progress=True):
    from tqdm import tqdm

    test_t = sorted(test_t)
    chosen = (
        test_t
        if not rc.tasks
        else [test_t[i] for i in np.linspace(0, len(test_t) - 1, rc.tasks).round().astype(int)]
    )
    chosen = list(dict.fromkeys(chosen))  # distinct (rc.tasks > the test tasks: each once)
    att = {"model": [], "random": [], "oracle": []}
    scored, score_s, simulated = 0, 0.0, 0
    per_task = []
    for ti in tqdm(chosen, desc="ranking", unit="task", disable=not progress):
        task = tasks[ti]
        t0 = time.perf_counter()
        cand, scores = score_task(task, ti, store, task_of, model, readout, rc)  # validity checks included
        score_s += time.perf_counter() - t0
        scored += len(cand)
        cache = OutcomeCache(task, cand)
        order = np.argsort(-scores.numpy(), kind="stable")
        rng = np.random.default_rng([seed, ti])
        random_order = rng.permutation(len(cand))
        att["model"].append(cache.first_solved(order, rc.max_attempts))
        att["random"].append(cache.first_solved(random_order, rc.max_attempts))
        att["oracle"].append(1 if cache.first_solved(random_order, None) is not None else None)
        simulated += cache.simulated
        per_task.append({"task": task.task_id, "valid": len(cand),
                         **{k: v[-1] for k, v in att.items()}})  # fmt: skip
    return {
        "auccess": {k: auccess(v, rc.max_attempts) for k, v in att.items()},
        "tasks": len(chosen),
        "candidates_per_s": scored / max(score_s, 1e-9),
        "no_valid_candidate": sum(t["valid"] == 0 for t in per_task),  # such tasks count as unsolved
        "oracle_unsolved": sum(t["oracle"] is None for t in per_task),  # no candidate solves them
        "candidates_scored": scored,
        "simulated": simulated,
        "per_task": per_task,
    }


# the whole evaluation ---------------------------------------------------------------------------
def summarize(results: list[dict], max_attempts: int) -> dict:
    """Mean and sample std over folds of each kind; per-template AUCCESS at ``max_attempts``
    (ranking.max_attempts, the same for every fold: a fold ranked otherwise is recomputed).
    Fewer than two folds with a value have no spread: std is None (JSON null), never 0.0."""

    def ms(values):
        values = list(values)
        v = [x for x in values if x == x]  # NaN-free: n says how many folds count
        mean, std = mean_std(v) if v else (float("nan"), None)
        return {"mean": mean, "std": std, "n": len(v), "of": len(values)}

    out = {}
    for kind in FOLD_KINDS:
        rs = [r for r in results if r["kind"] == kind]
        if not rs:
            continue
        out[kind] = {
            "folds": [r["fold"] for r in rs],
            "auccess": {k: ms(r["ranking"]["auccess"][k] for r in rs) for k in ("model", "random", "oracle")},
            "voe": {k: ms(r["voe"].get(k, float("nan")) for r in rs) for k in VIOLATIONS},
            "voe_selected": [r["voe"]["selected"]["surprise"] for r in rs],  # each fold's figure
            **{
                f"voe_{variant}": {
                    k: ms(r["voe"][variant].get(k, float("nan")) for r in rs) for k in VIOLATIONS
                }
                for variant in VOE_VARIANTS
            },
            "readout_auroc": ms(r["readout"]["auroc"] for r in rs),
            "mse": ms(r["fidelity"]["mse"] for r in rs),
            "mse_per_frame": np.mean([r["fidelity"]["mse_per_frame"] for r in rs], axis=0).tolist(),
            "copy_frame0_per_frame": np.mean(
                [r["fidelity"]["copy_frame0_per_frame"] for r in rs], axis=0
            ).tolist(),
            "copy_frame0": ms(r["fidelity"]["copy_frame0"] for r in rs),
            **{k: ms(r["fidelity"][k] for r in rs) for k in ("vanish", "appear", "duplicate")},
            "candidates_per_s": ms(r["ranking"]["candidates_per_s"] for r in rs),
            "per_template": per_template([t for r in rs for t in r["ranking"]["per_task"]], max_attempts),
        }
    return out


def per_template(per_task: list[dict], max_attempts: int) -> dict[str, dict]:
    """AUCCESS per template (the task id's first field) of ranked tasks pooled over folds."""
    by: dict[str, list[dict]] = {}
    for t in per_task:
        by.setdefault(t["task"].split(":")[0], []).append(t)
    return {
        name: {
            "tasks": len(ts),
            **{k: auccess([t[k] for t in ts], max_attempts) for k in ("model", "random")},
        }
        for name, ts in sorted(by.items())
    }


def _effect_label(effect: list) -> str:
    """[0.2, 0.4] -> '0.2-0.4', [0.4, None] -> '0.4+' (a pass-through bin's effects)."""
    lo, hi = effect
    return f"{lo:g}+" if hi is None else f"{lo:g}-{hi:g}"


def _chosen(names: list[str]) -> str:
    """Each fold's chosen surprise, once each with how many folds chose it where they differ."""
    counts = Counter(names)  # in the order first chosen
    if len(counts) == 1:
        return f"surprise: {names[0]}"
    return "surprises: " + ", ".join(f"{n} in {c} of {len(names)} folds" for n, c in counts.items())


def results_markdown(summary: dict, results: list[dict]) -> str:
    def part(m):  # where some folds had no value (NaN), say over how many the mean is
        return "" if m.get("n", 0) == m.get("of", 0) else f" (n={m['n']} of {m['of']})"

    def f(m, digits=1):  # one fold has no spread: the mean alone
        return plus_minus(m["mean"], m["std"], digits) + part(m)

    def g(m):
        return f(m, 3)

    lines = ["# PHYRE evaluation (phyre_sim)", "", "## AUCCESS (mean ± sample std over folds)", "",
             "| split | folds | world model | random | simulator oracle |",
             "|---|---|---|---|---|"]  # fmt: skip
    for kind, s in summary.items():
        a = s["auccess"]
        lines.append(
            f"| {kind}-template | {s['folds']} | {f(a['model'])} | {f(a['random'])} | {f(a['oracle'])} |"
        )
    lines += ["", "## Violation of expectation: AUROC of surprise, implausible against plausible", "",
              "| split, surprise | " + " | ".join(VIOLATIONS) + " |",
              "|---|" + "---|" * len(VIOLATIONS)]  # fmt: skip
    for kind, s in summary.items():
        lines.append(
            f"| **{kind}, the figure** ({_chosen(s['voe_selected'])}) | "
            + " | ".join(g(s["voe"][k]) for k in VIOLATIONS)
            + " |"
        )
        for variant in VOE_VARIANTS:
            lines.append(
                f"| {kind}, {variant} | " + " | ".join(g(s[f"voe_{variant}"][k]) for k in VIOLATIONS) + " |"
            )
    by_effect = [(r, r["voe"].get("pass_through_by_effect")) for r in results]
    by_effect = [(r, bins) for r, bins in by_effect if bins]  # none in a fold without pass-throughs
    if by_effect:
        lines += ["", "## Pass-through AUROC by how far it moves a body (scene fractions), per fold", "",
                  f"Clips, then AUROC against every plausible clip: {' / '.join(BY_EFFECT)}.",
                  ""]  # fmt: skip
        for r, bins in by_effect:
            cells = "; ".join(
                f"{_effect_label(b['effect'])}: {b['clips']}, " + " / ".join(f"{b[k]:.3f}" for k in BY_EFFECT)
                for b in bins
            )
            lines.append(f"- {r['kind']} {r['fold']}: {cells}")
    prefs = [(r, r["voe"]["contact_preference"]) for r in results if "contact_preference" in r["voe"]]
    if prefs:
        lines += ["", "## Does a model expect the contact a pass-through leaves out?", "",
                  "At the first frame where a pass-through differs from its real attempt, both clips have "
                  "the same past; the share of pairs where the model's error there is larger on the "
                  "pass-through (1: it always expects the contact; 0.5: it cannot tell; below 0.5: it "
                  "expects the bodies to glide on). Pairs counted in brackets.", ""]  # fmt: skip
        for r, p in prefs:
            cells = "; ".join(f"{name} {v['share']:.3f} ({v['pairs']})" for name, v in p.items())
            lines.append(f"- {r['kind']} {r['fold']}: {cells}")
    lines += ["", "## Rollouts on the test tasks", "",
              "| split | slot MSE | copy frame 0 | vanish | appear | duplicate | readout AUROC "
              "| candidates/s |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['mse']['mean']:.4f} | {s['copy_frame0']['mean']:.4f} | "
            f"{s['vanish']['mean']:.3f} | "
            f"{s['appear']['mean']:.3f} | {s['duplicate']['mean']:.3f} | {g(s['readout_auroc'])} | "
            f"{s['candidates_per_s']['mean']:.0f} |"
        )
    lines += ["", "## Slot MSE per predicted frame (mean over folds): world model / copy frame 0", ""]
    for kind, s in summary.items():
        cells = " | ".join(
            f"{m:.4f} / {c:.4f}" for m, c in zip(s["mse_per_frame"], s["copy_frame0_per_frame"], strict=True)
        )
        lines.append(f"- {kind}: {cells}")
    lines += ["", "## AUCCESS per template (test tasks pooled over the folds): world model / random", ""]
    for kind, s in summary.items():
        cells = ", ".join(
            f"{ps.TEMPLATE_NAMES[int(t)]} {v['model']:.1f} / {v['random']:.1f}"
            for t, v in s["per_template"].items()
        )
        lines.append(f"- {kind}: {cells}")
    lines += ["", "## Per fold", "",
              "| fold | AUCCESS model / random / oracle | VoE, the figure: " + " / ".join(VIOLATIONS)
              + " | its surprise, chosen on validation (worst type's AUROC there) |",
              "|---|---|---|---|"]  # fmt: skip
    for r in results:
        a = r["ranking"]["auccess"]
        v = " / ".join(f"{r['voe'].get(k, float('nan')):.3f}" for k in VIOLATIONS)
        sel = r["voe"]["selected"]
        worst = min(sel["validation"][sel["surprise"]].values())
        lines.append(
            f"| {r['kind']} {r['fold']} | {a['model']:.1f} / {a['random']:.1f} / {a['oracle']:.1f} | {v} | "
            f"{sel['surprise']} ({worst:.3f}) |"
        )
    return "\n".join(lines) + "\n"


def evaluate_phyre(root: str | Path, slot_dir: str | Path, cfg: PhyreEvalConfig, out: str | Path,
                   *, progress: bool = True) -> dict:  # fmt: skip
    """Every fold of ``cfg.folds``; writes <out>/results.{json,md} and the ranking picture."""
    root, slot_dir, out = Path(root), Path(slot_dir), Path(out)
    tasks, inputs = evaluation_inputs(root, slot_dir)
    results = []
    for kind, seeds in cfg.folds.items():
        for fold in seeds:  # a finished fold is kept where its inputs are the same, else an error
            results.append(run_fold(root, slot_dir, tasks, inputs, cfg, kind, fold, out, progress=progress))
            a = results[-1]["ranking"]["auccess"]
            print(f"{kind} fold {fold}: AUCCESS model {a['model']:.1f}, random {a['random']:.1f}, "
                  f"oracle {a['oracle']:.1f}")  # fmt: skip
    summary = summarize(results, cfg.ranking.max_attempts)
    write_json_atomic(out / "results.json", {"summary": summary, "folds": results})
    write_text_atomic(out / "results.md", results_markdown(summary, results))
    first = results[0]
    run = out / f"{first['kind']}_{first['fold']}"
    per_task = first["ranking"]["per_task"]
    # a task the model solved at its 2nd to 4th attempt shows failed and solved rollouts side by side
    shown = next((t for t in per_task if t["model"] is not None and 2 <= t["model"] <= 4), per_task[0])
    task_id = shown["task"]
    png = ranking_picture(
        tasks, slot_dir, run, task_id, cfg, out / f"ranking_{task_id.replace(':', '_')}.png"
    )
    print(f"written: {out / 'results.md'}  {png}")
    return summary


def ranking_picture(
    tasks: list[ps.Task],
    slot_dir: Path,
    run: Path,
    task_id: str,
    cfg: PhyreEvalConfig,
    path: Path,
    rows: int = 4,
) -> Path:
    """A task's best-ranked actions (rows) and their simulated rollouts (columns), each row
    titled with its rank, action, readout probability and the simulated outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    ti = next(i for i, t in enumerate(tasks) if t.task_id == task_id)
    task = tasks[ti]
    model, _ = load_predictor(run / "predictor" / "predictor.pt")
    readout, _ = load_readout(run / "readout" / "readout.pt")
    with SlotStore(slot_dir / ROLLOUTS_FILE) as store:
        cand, logits = score_task(task, ti, store, store.f["task"][:], model, readout, cfg.ranking)
    logits = logits.numpy()
    order = np.argsort(-logits, kind="stable")[:rows]
    times = [0.0, 1.0, 2.0, 4.0, 6.0, task.max_seconds]
    fig, axes = plt.subplots(
        rows, len(times), figsize=(1.9 * len(times), 2.1 * rows), constrained_layout=True
    )
    for r, i in enumerate(order):
        a = cand[i]
        roll = ps.simulate(task, a, fps=5.0)
        frames, _ = ps.render(task, roll.states, roll.present, ps.action_to_ball(a)[2], 128, 128)
        outcome = f"solved at {roll.solved_at:.1f} s" if roll.solved else "failed"
        for c, t in enumerate(times):
            ax = axes[r, c]
            ax.imshow(frames[min(len(frames) - 1, round(t * roll.fps))] if c else frames[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t = {t:.0f} s" if c else "ball placed", fontsize=8)
        p = 1 / (1 + math.exp(-float(logits[i])))
        axes[r, 0].set_ylabel(
            f"rank {r + 1}: ({a[0]:.2f}, {a[1]:.2f}, {a[2]:.2f})\np = {p:.2f}, {outcome}", fontsize=8
        )
    fig.suptitle(
        f"task {task_id} ({task.template}): the world model's best-ranked actions, simulated", fontsize=10
    )
    return save_figure(fig, path)
