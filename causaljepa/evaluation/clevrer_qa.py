"""CLEVRER QA with a world model: rollouts for the reader, grounding, training and scoring.

Two protocols (``PROTOCOLS``):

- ``a``, as published: the reader sees the observed slots; a predictive question also sees
  the predictor's rollout past the last observed frame. Descriptive, explanatory and
  counterfactual questions read the same encoder slots whatever the predictor.
- ``b``, ours: in addition, a counterfactual question ("which event will happen if the red
  cube is removed?") reads the latent-intervention rollout of the world without that object:
  the predictor starts from the video's first ``history`` frames with the named object's slot
  removed (``rollout.intervene``) and rolls forward over the observed frames. The world model
  answers "what if" by simulating it.

Grounding the named object to a slot (protocol b): a small attribute readout (an MLP from a
slot to colour, shape and material logits) is trained on the training split's slots in the
predictor's first history window, each labelled with the annotated properties of the object
it covers (``slot_object``, from the instance masks for learned slots; by construction for
oracle slots); slots that cover no object are not used. A question's object is the slot whose
named attributes are most likely (summed log-probabilities, best frame of the window). The
grounding accuracy on validation (the chosen slot covers the named object in some frame of
the window) is reported with the results. A store without ``slot_object`` (real CLEVRER has
no instance masks) cannot train the readout, so protocol (b) is refused there with that reason.

The reader trains on the training split (its rollouts made by the same predictor, so it
learns to read that predictor's simulations) and is scored on the validation split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.questions import PROPERTY_VOCAB, attribute_ids, described_object, load_questions
from ..data.slot_store import SlotStore
from ..data.store import VideoStore
from ..io import write_json_atomic, write_text_atomic
from ..models.predictor import CJEPAPredictor
from ..training.checkpoint import file_hash, last_checkpoint
from ..training.loop import OptimConfig, Trainer, TrainerConfig
from .cf_geometry import calibrate_contact, check_oracle, simulate_without, start_row
from .dynamics import rollout_store, window_actions
from .qa import (
    ATTR_SIZES,
    GROUND_WIDTH,
    Counterfactuals,
    Examples,
    QAReader,
    ReaderConfig,
    VisualParts,
    Vocabulary,
    accuracy_table,
    build_examples,
    extra_groups,
    markdown_table,
    mention_scores,
    predict,
    video_index,
)

PROTOCOLS = ("a", "b")
KIND = "qa_reader"
_KEYS = tuple(key for key, _ in PROPERTY_VOCAB)  # colour, shape, material


class AttributeReadout(nn.Module):
    """slot (D) -> colour, shape and material logits (8 + 3 + 2) and an object logit (does the
    slot cover an object at all)."""

    def __init__(self, slot_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(slot_dim),
            nn.Linear(slot_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, GROUND_WIDTH),
        )

    def logits(self, slots: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(..., D) -> ([colour, shape, material logits], object logit (..., 1))."""
        *parts, obj = self.net(slots).split([*ATTR_SIZES, 1], dim=-1)
        return parts, obj

    def log_probs(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) -> {attribute: (..., values) log-probabilities, "object": (...) log p(object)}."""
        parts, obj = self.logits(slots)
        out = {key: F.log_softmax(p, dim=-1) for key, p in zip(_KEYS, parts, strict=True)}
        out["object"] = F.logsigmoid(obj[..., 0])
        return out

    @torch.no_grad()
    def ground_logp(self, slots: torch.Tensor, batch: int = 65536) -> torch.Tensor:
        """(..., D) -> (..., GROUND_WIDTH): the layout ``qa.mention_weights`` reads."""
        flat = slots.reshape(-1, slots.shape[-1]).float()
        out = []
        for i in range(0, len(flat), batch):
            lp = self.log_probs(flat[i : i + batch])
            out.append(torch.cat([*(lp[key] for key in _KEYS), lp["object"][:, None]], dim=-1))
        return torch.cat(out).reshape(*slots.shape[:-1], GROUND_WIDTH)


def readout_frames(store: SlotStore, frame_stride: int, window: list[int]) -> list[int]:
    """The frames the readout trains on: the reader's observed frames and the first history window."""
    return sorted(set(range(0, store.observed_frames, frame_stride)) | set(window))


def readout_data(store: SlotStore, props: np.ndarray, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every slot at ``frames`` -> (X (M, D), Y (M, 3) attribute ids of the object it covers,
    -1 where it covers none). At least one slot must cover an annotated object."""
    slots = store.f["slots"][:, frames]  # (N, F, K, D)
    obj = store.f["slot_object"][:, frames].astype(np.int64)  # (N, F, K), -1 = no object
    video = np.broadcast_to(np.arange(store.num_videos)[:, None, None], obj.shape)
    p = props[video, np.maximum(obj, 0)]  # (N, F, K, 3)
    covers = (obj >= 0) & (p >= 0).all(axis=-1)
    if not covers.any():
        raise ValueError(f"{store.path}: no slot covers an annotated object in frames {frames}")
    y = np.where(covers[..., None], p, -1)
    D = slots.shape[-1]
    return torch.from_numpy(slots.reshape(-1, D)).float(), torch.from_numpy(y.reshape(-1, 3)).long()


def fit_readout(x: torch.Tensor, y: torch.Tensor, *, steps: int = 400, seed: int = 0) -> AttributeReadout:
    """Full-batch AdamW on the three attribute cross-entropies (slots that cover an object) and the
    object / no-object cross-entropy (every slot; rows of ``y`` that are -1 cover no object)."""
    torch.manual_seed(seed)
    model = AttributeReadout(x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    covers = y[:, 0] >= 0
    for _ in range(steps):
        parts, obj = model.logits(x)
        loss = F.binary_cross_entropy_with_logits(obj[:, 0], covers.float())
        for j, logits in enumerate(parts):
            loss = loss + F.cross_entropy(logits[covers], y[covers, j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


_READOUTS: dict[tuple, AttributeReadout] = {}  # trained_readout's fits in this process
_READOUTS_KEPT = 8


def trained_readout(store: SlotStore, props: np.ndarray, frames: list[int], *, seed: int) -> AttributeReadout:
    """``fit_readout`` on ``readout_data(store, props, frames)``, fitted once per process for the
    same store bytes, properties, frames and seed: the main job's two QA stages and the ablation's
    runs (one per masking x seed) read the same training slots. The fit is deterministic under
    its seed, so a kept one is the one a fresh fit would give."""
    key = (file_hash(store.path), hashlib.sha256(np.ascontiguousarray(props).tobytes()).hexdigest(),
           str(props.dtype), props.shape, tuple(frames), seed)  # fmt: skip
    if key not in _READOUTS:
        if len(_READOUTS) >= _READOUTS_KEPT:
            _READOUTS.pop(next(iter(_READOUTS)))  # the oldest
        _READOUTS[key] = fit_readout(*readout_data(store, props, frames), seed=seed)
    return _READOUTS[key]


@torch.no_grad()
def readout_accuracy(model: AttributeReadout, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per attribute on the slots that cover an object, and object / no object on every slot."""
    lp = model.log_probs(x)
    covers = y[:, 0] >= 0
    out = {
        key: float((lp[key][covers].argmax(-1) == y[covers, j]).float().mean()) for j, key in enumerate(_KEYS)
    }
    out["object"] = float(((lp["object"] > np.log(0.5)) == covers).float().mean())
    return out


def ground(model: AttributeReadout, slots: torch.Tensor, attrs: list[dict[str, str]]) -> torch.Tensor:
    """slots (B, T, K, D), one attribute description per row -> (B,) the slot most likely to be
    the described object (``mention_scores``: log p(object) plus the log-probabilities of the
    named values, at the slot's best frame)."""
    named = torch.tensor([attribute_ids(a) for a in attrs])[:, None]  # (B, 1, 3)
    score = mention_scores(model.ground_logp(slots), named)[..., 0]  # (B, T, K)
    return score.amax(dim=1).argmax(dim=1)


def object_properties(path: Path) -> np.ndarray:
    """(N, O, 3) colour, shape, material ids of a video store's objects (-1 = none)."""
    with VideoStore(path) as vs:
        if not vs.has("object_properties"):
            raise ValueError(f"{path}: no object_properties; the grounding readout needs annotated objects")
        return vs.f["object_properties"][:]


def observed_part(store: SlotStore, frame_stride: int) -> torch.Tensor:
    """(N, To, K, D): every video's observed frames 0, s, 2s, ..."""
    return torch.from_numpy(store.f["slots"][:, : store.observed_frames : frame_stride])


def future_part(
    model: CJEPAPredictor,
    store: SlotStore,
    out: Path,
    *,
    stride: int,
    every: int,
    commit: int | None,
    batch_size: int,
    source: dict,
) -> tuple[torch.Tensor, dict]:
    """The predictor's rollout past the last observed frame (kept as ``out`` and its .json, reused
    only where the .json's ``source`` fingerprint is this one's), every ``every``-th step
    -> (N, Tf, K, D), and its errors against the truth where the store has later frames."""
    import h5py

    meta = out.with_suffix(".json")
    result = json.loads(meta.read_text()) if out.exists() and meta.exists() else None
    if result is None or result.get("source") != source:
        result = rollout_store(model, store, out, stride=stride, batch_size=batch_size, commit=commit)
        result["source"] = source
        write_json_atomic(meta, result)
    with h5py.File(out, "r") as f:
        slots = f["slots"][:, every - 1 :: every]
    if slots.shape[1] == 0:
        raise ValueError(
            f"the future rollout has {result['steps']} steps, fewer than reader.future_every={every}: "
            "predictive questions would see nothing; lower reader.future_every"
        )
    return torch.from_numpy(slots), result


def check_frame_stride(frame_stride: int, stride: int) -> None:
    """The counterfactual rollout runs at the predictor's stride and must land on the reader's frames."""
    if frame_stride % stride:
        raise ValueError(
            f"reader.frame_stride={frame_stride} must be a multiple of the predictor's stride {stride} so "
            "the counterfactual rollout has the reader's frames"
        )


def counterfactual_part(
    model: CJEPAPredictor,
    store: SlotStore,
    readout: AttributeReadout,
    cfs: Counterfactuals,
    *,
    stride: int,
    frame_stride: int,
    commit: int | None,
    batch_size: int,
    progress: bool = True,
    start: str = "first",
    entries: bool = False,
    contact: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per counterfactual question: the world without its named object over the observed frames,
    at the reader's frames 0, s, 2s, ... -> ((M, To, K, D), the grounded slot (M,)).

    ``start="first"``: rolled out from the video's first ``history`` frames. ``"contact"`` (oracle
    slots): the observed world up to the last step before the grounded object first comes within
    ``contact`` world units of another object, rolled out from there (nothing before it differs
    in a world whose objects act only by contact; an object that touches nothing leaves the
    observed world). ``entries`` (oracle slots, whose ``present`` field says when an object
    enters): objects that enter later join the rollout (``cf_geometry.simulate_without``)."""
    from tqdm import tqdm

    H = model.cfg.history
    last = (H - 1) * stride
    available = (store.observed_frames - 1 - last) // stride
    check_frame_stride(frame_stride, stride)
    if available < 1:
        raise ValueError(f"{store.path}: {store.observed_frames} observed frames leave nothing to roll out")
    if start not in ("first", "contact"):
        raise ValueError(f"counterfactual start must be 'first' or 'contact', got {start!r}")
    if start == "contact" or entries:
        check_oracle(store)
    if start == "contact" and contact is None:
        raise ValueError("start='contact' needs the contact distance (cf_geometry.calibrate_contact)")
    pick = torch.arange(0, store.observed_frames, frame_stride) // stride  # rows at the predictor's stride
    R = max(int(pick.max()) + 1, H + 1)  # no further than the last frame the reader sees
    M = len(cfs.video)
    K, D = store.num_slots, store.slot_dim
    out = torch.zeros(M, len(pick), K, D)
    chosen = torch.zeros(M, dtype=torch.int64)
    frames = ground_frames(store, frame_stride, stride, H, start, entries)
    for m0 in tqdm(
        range(0, M, batch_size), desc="counterfactual rollouts", unit="batch", disable=not progress
    ):
        rows = list(range(m0, min(M, m0 + batch_size)))
        vids = [cfs.video[m] for m in rows]
        full = [store.read("slots", i, 0, store.observed_frames) for i in vids]  # read once: (T, K, D) each
        sel = ground(
            readout, torch.from_numpy(np.stack([f[frames] for f in full])), [cfs.attrs[m] for m in rows]
        )
        chosen[rows] = sel
        videos = np.stack([f[: (R - 1) * stride + 1 : stride] for f in full])  # (B, R, K, D)
        starts = []
        for j in range(len(rows)):
            e = start_row(full[j], int(sel[j]), start, H, stride, contact)  # None: touches nothing
            starts.append(R - 1 if e is None else min(e, R - 1))
        for e in sorted(set(starts)):
            group = [j for j, s in enumerate(starts) if s == e]
            gv = [vids[j] for j in group]
            actions = window_actions(
                store, gv, (e + 1 - H) * stride, R - 1 - e + H, stride, model.cfg.action_dim
            )
            worlds = simulate_without(
                model, videos[group], sel[group].numpy(), e, entries=entries, actions=actions, commit=commit
            )  # (B', R, K, D) at the predictor's stride
            out[[rows[j] for j in group]] = torch.from_numpy(worlds[:, pick.numpy()])
    return out, chosen


def ground_frames(
    store: SlotStore, frame_stride: int, stride: int, history: int, start: str, entries: bool
) -> list[int]:
    """The frames where protocol (b) looks for the object a counterfactual question names: the
    first history window, or, where the simulated world holds objects that enter later (a start
    at contact, or entries), also the reader's frames over the whole observed video (those the
    attribute readout trains on)."""
    window = list(range(0, history * stride, stride))
    if start == "first" and not entries:
        return window
    return readout_frames(store, frame_stride, window)


def true_counterfactual_part(
    store: SlotStore, props: np.ndarray, cfs: Counterfactuals, frame_stride: int
) -> torch.Tensor:
    """The diagnostic upper bound of protocol (b): the slots of the re-simulated world without the
    named object (``cf_slots``) in place of the predictor's rollout -> (M, To, K, D)."""
    if not store.has("cf_slots"):
        raise ValueError(
            f"{store.path} has no cf_slots; counterfactuals=truth needs slots of data generated with "
            "data.generator.counterfactuals=true"
        )
    rows = []
    for i, attrs in zip(cfs.video, cfs.attrs, strict=True):
        o = described_object(props[i], attrs)
        if o is None or not store.read("cf_valid", i)[o]:
            raise ValueError(f"{store.path}: video {i}: no single object with cf_slots matches {attrs}")
        rows.append(store.read("cf_slots", i, 0, store.observed_frames, frame_stride, removed=o))
    return torch.from_numpy(np.stack(rows))


def grounding_accuracy(
    store: SlotStore, props: np.ndarray, cfs: Counterfactuals, chosen: torch.Tensor, frames: list[int]
) -> dict:
    """Fraction of counterfactual questions whose grounded slot covers the named object in one of
    ``frames``; questions whose description matches no single annotated object are not scored."""
    hits, scored = 0, 0
    owners = store.f["slot_object"][:, frames]  # (N, F, K): read once
    for m, (i, attrs) in enumerate(zip(cfs.video, cfs.attrs, strict=True)):
        o = described_object(props[i], attrs)
        if o is None:
            continue
        scored += 1
        covers = owners[i]  # (F, K)
        hits += bool((covers[:, int(chosen[m])] == o).any())
    return {"questions": scored, "accuracy": hits / scored if scored else float("nan")}


@dataclass
class Split:
    """One split's questions, examples and visual parts under one protocol."""

    examples: Examples
    parts: VisualParts


def train_reader(
    train: Split,
    val: Split,
    vocab: Vocabulary,
    cfg: ReaderConfig,
    optim: OptimConfig,
    trainer: TrainerConfig,
    run_dir: Path,
    *,
    seed: int,
    extra: dict,
    source: dict,
) -> dict[str, float]:
    """Train on ``train``, validate on ``val``; writes <run_dir>/reader.pt and returns the last
    validation (accuracy table)."""
    slot_dim = train.parts.observed.shape[-1]
    torch.manual_seed(seed)
    model = QAReader(cfg, len(vocab), slot_dim)

    # each batch comes from one extra_groups group, chosen in proportion to its size: every
    # example is as likely as with uniform draws, and a batch makes only the tokens it reads
    groups = extra_groups(train.examples)
    sizes = torch.tensor([len(g) for g in groups], dtype=torch.float64)

    def next_batch(step: int, gen: torch.Generator) -> dict:
        rows = groups[int(torch.multinomial(sizes, 1, generator=gen))]
        idx = rows[torch.randint(len(rows), (optim.batch_size,), generator=gen)]
        b = train.examples.take(idx)
        b.update(train.parts.batch(b))
        return b

    def validate(m: QAReader) -> dict[str, float]:
        pred = predict(m, val.examples, val.parts, device=t.device)
        m.train()
        return accuracy_table(val.examples, pred)

    # the inputs' fingerprint is part of the config, so resuming under other inputs is an error
    config = {"reader": asdict(cfg), "vocab": vocab.tokens, "slot_dim": slot_dim, "source": source}
    t = Trainer(model, optim, trainer, run_dir, kind=KIND, model_config=config, seed=seed, extra=extra)
    t.train(next_batch, validate, "reader.pt", resume=last_checkpoint(run_dir))
    return t.last_val


@dataclass(frozen=True)
class QAConfig:
    """What ``evaluate_clevrer`` needs besides paths."""

    reader: ReaderConfig
    optim: OptimConfig
    trainer: TrainerConfig
    protocols: tuple[str, ...] = PROTOCOLS
    commit: int | None = None
    batch_size: int = 64  # rollouts
    seed: int = 0
    counterfactuals: str = "rollout"  # protocol (b) reads: "rollout" (the world model) | "truth" (diagnostic)
    # where protocol (b)'s rollout starts: "first" frames | "contact" (oracle slots): the observed
    # world until the removed object first touches another (counterfactual_part)
    counterfactual_start: str = "first"
    counterfactual_entries: bool = False  # objects entering later join the rollout

    def __post_init__(self) -> None:
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise ValueError(f"protocol {p!r} is not known; protocols are {list(PROTOCOLS)}")
        if self.counterfactuals not in ("rollout", "truth"):
            raise ValueError(f"counterfactuals must be 'rollout' or 'truth', got {self.counterfactuals!r}")
        if self.counterfactual_start not in ("first", "contact"):
            raise ValueError(
                f"counterfactual_start must be 'first' or 'contact', got {self.counterfactual_start!r}"
            )


def evaluate_clevrer(
    data_root: str | os.PathLike,
    slot_dir: str | os.PathLike,
    predictor: str | os.PathLike,
    out: str | os.PathLike,
    cfg: QAConfig,
) -> dict:
    """Train and score a QA reader per protocol for one predictor; writes under ``out``:
    rollout_<split>.h5/.json, protocol_<p>/ (the reader's run: reader.pt, metrics.csv),
    results.json and results.md. A protocol whose results exist is not run again, and an
    interrupted reader continues from its last checkpoint."""
    from ..training.predictor import check_same_encoder, load_predictor

    data_root, slot_dir, out = Path(data_root), Path(slot_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    source = {
        "predictor_sha256": file_hash(predictor),
        "slot_dir": str(slot_dir),
        "reader": asdict(cfg.reader),
        "optim": asdict(cfg.optim),
        "seed": cfg.seed,
        "commit": cfg.commit,
        "counterfactuals": cfg.counterfactuals,
    }
    rollout_source = dict(source)  # the future rollout does not depend on protocol (b)'s options
    # recorded only where they differ from the defaults, so results made before these options
    # existed keep their fingerprint
    if cfg.counterfactual_start != "first":
        source["counterfactual_start"] = cfg.counterfactual_start
    if cfg.counterfactual_entries:
        source["counterfactual_entries"] = True
    for p, old in results.get("sources", {}).items():
        if p in cfg.protocols and old != source:
            diff = sorted(k for k in source if old.get(k) != source[k])
            raise ValueError(
                f"{results_path} holds protocol ({p}) results made with other inputs (differing: {diff}); "
                "choose another out= or delete that directory"
            )
    todo = [p for p in cfg.protocols if p not in results.get("protocols", {})]
    rc = cfg.reader
    # the attribute readout marks named objects' slots (reader.ground) and grounds protocol (b)
    need_readout = bool(todo) and (rc.ground or ("b" in todo and cfg.counterfactuals == "rollout"))
    props = {}
    if need_readout or "b" in todo:
        props = {s: object_properties(data_root / f"{s}.h5") for s in ("train", "validation")}
    if not todo:
        _write_markdown(out, results)
        return results
    model, ckpt = load_predictor(predictor, cfg.trainer.device)
    stride = int(ckpt["extra"]["windows"]["stride"])
    questions = {s: load_questions(data_root / "questions" / f"{s}.json") for s in ("train", "validation")}
    vocab = Vocabulary.from_questions(questions["train"])
    stores = {s: SlotStore(slot_dir / f"{s}.h5") for s in ("train", "validation")}
    try:
        for st in stores.values():
            check_same_encoder(st, ckpt)
        contact = None
        if "b" in todo and cfg.counterfactuals == "rollout":  # checked before any rollout or training
            check_frame_stride(rc.frame_stride, stride)
            if cfg.counterfactual_start == "contact" or cfg.counterfactual_entries:
                for st in stores.values():
                    check_oracle(st)
            if cfg.counterfactual_start == "contact":
                with VideoStore(data_root / "train.h5") as vs:
                    calibration = calibrate_contact(stores["train"], vs, stride)
                contact = calibration.distance
        if need_readout:
            for st in stores.values():
                if not st.has("slot_object"):
                    uses = (["reader.ground=true (set reader.ground=false)"] if rc.ground else []) + (
                        ["protocol (b) (use protocols=[a])"] if "b" in todo else []
                    )
                    raise ValueError(
                        f"{st.path} has no slot_object (which object each slot covers): the attribute "
                        f"readout cannot be trained, and {' and '.join(uses)} need it"
                    )
        rows = {s: video_index(stores[s].video_ids, questions[s], f"questions/{s}.json") for s in stores}
        observed = {s: observed_part(st, rc.frame_stride) for s, st in stores.items()}
        future, rollout_errors = {}, {}
        for s, st in stores.items():
            future[s], rollout_errors[s] = future_part(
                model, st, out / f"rollout_{s}.h5", stride=stride, every=rc.future_every,
                commit=cfg.commit, batch_size=cfg.batch_size, source=rollout_source,
            )  # fmt: skip
        extra_info = {
            "predictor": str(predictor),
            "slot_dir": str(slot_dir),
            "encoder_hash": stores["train"].encoder_hash,
        }
        grounding, readout = None, None
        frames = list(range(0, model.cfg.history * stride, stride))  # the first history window
        logp = {s: {} for s in stores}  # the readout's log-probabilities per part (reader.ground)
        if need_readout:
            seen = {s: readout_frames(st, rc.frame_stride, frames) for s, st in stores.items()}
            readout = trained_readout(stores["train"], props["train"], seen["train"], seed=cfg.seed)
            grounding = {
                "readout_validation_accuracy": readout_accuracy(
                    readout, *readout_data(stores["validation"], props["validation"], seen["validation"])
                )
            }
            if rc.ground:
                for s in stores:
                    logp[s] = {
                        "observed_logp": readout.ground_logp(observed[s]),
                        "future_logp": readout.ground_logp(future[s]),
                    }
        for protocol in todo:
            splits = {}
            for s, st in stores.items():
                ex, cfs = build_examples(
                    questions[s], rows[s], vocab, rc.max_words, protocol == "b",
                    unknown_words=rc.unknown_words, source=str(data_root / "questions" / f"{s}.json"),
                    max_mentions=rc.max_mentions,
                )  # fmt: skip
                cf = None
                if protocol == "b" and cfg.counterfactuals == "truth":
                    cf = true_counterfactual_part(st, props[s], cfs, rc.frame_stride)
                elif protocol == "b":
                    cf, chosen = counterfactual_part(
                        model, st, readout, cfs, stride=stride, frame_stride=rc.frame_stride,
                        commit=cfg.commit, batch_size=cfg.batch_size, progress=cfg.trainer.progress,
                        start=cfg.counterfactual_start, entries=cfg.counterfactual_entries, contact=contact,
                    )  # fmt: skip
                    if s == "validation":
                        looked = ground_frames(
                            st, rc.frame_stride, stride, model.cfg.history, cfg.counterfactual_start,
                            cfg.counterfactual_entries,
                        )  # fmt: skip
                        grounding["questions"] = grounding_accuracy(st, props[s], cfs, chosen, looked)
                cf_logp = {}
                if rc.ground and cf is not None:
                    cf_logp = {"counterfactual_logp": readout.ground_logp(cf)}
                splits[s] = Split(ex, VisualParts(observed[s], future[s], cf, **logp[s], **cf_logp))
            metrics = train_reader(
                splits["train"], splits["validation"], vocab, rc, cfg.optim, cfg.trainer,
                out / f"protocol_{protocol}", seed=cfg.seed, extra={**extra_info, "protocol": protocol},
                source={**source, "protocol": protocol},
            )  # fmt: skip
            results.setdefault("protocols", {})[protocol] = metrics
            results.setdefault("sources", {})[protocol] = source
            results.update(
                {
                    "predictor": str(predictor),
                    "masking": ckpt["extra"]["masking"],
                    "slots": str(slot_dir),
                    "seed": cfg.seed,
                    "rollout_mse": {s: r.get("mean_mse") for s, r in rollout_errors.items()},
                    "validation_questions": int(splits["validation"].examples.question.max()) + 1,
                }
            )
            if grounding is not None:
                results["grounding"] = grounding
            if contact is not None:
                results["contact_calibration"] = asdict(calibration)
            write_json_atomic(results_path, results)
    finally:
        for st in stores.values():
            st.close()
    _write_markdown(out, results)
    return results


def _write_markdown(out: Path, results: dict) -> Path:
    rows = {f"protocol ({p})": results["protocols"][p] for p in PROTOCOLS if p in results["protocols"]}
    return write_text_atomic(out / "results.md", markdown_table(rows) + "\n")
