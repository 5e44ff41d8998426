"""CLEVRER question answering over slots: the reader, its examples and its metrics.

The reader follows ALOE (Ding et al. 2021): one transformer over a question's word tokens
(and, for a multiple-choice question, one choice's tokens) and a video's slot tokens, with
a learned [CLS] token whose output feeds two heads: the descriptive answer (CLEVRER's 21
answers) and, per choice, correct / wrong. Every token is an embedding plus a type
embedding (question word, choice word, observed slot, predicted-future slot,
counterfactual slot) plus a position (word position, or the frame's index in its part of
the video). There is no slot-index embedding: the reader is permutation-equivariant in
slots, as the encoder and the predictor are.

Grounded mentions (``reader.ground``): a question or choice names objects by their attributes
("the red cube", "the metal object"). Each such mention r (in reading order, question first,
at most ``reader.max_mentions``) has an embedding that is added to its words and, weighted by
the probability that the slot is the named object, to every slot token: p(slot covers an
object) x the product of p(attribute = named value) from the attribute readout of
``evaluation/clevrer_qa.py`` (trained on the training split's slots labelled by the objects
they cover). "Does the blue sphere collide with the green cylinder?" then asks whether the
slot tokens marked 2 and 3 meet, rather than leaving the reader to learn from a few thousand
questions which slots the words point at. ALOE learns that pointing from CLEVRER's 18,642
counterfactual questions and a self-supervised slot loss; with the simulated sets here the
unmarked reader answered "wrong" to every counterfactual choice. The marks are a per-slot
function of the slot alone, so the reader stays permutation-equivariant in slots.

What it sees of a video (``VisualParts``): the observed slots at ``frame_stride``; for a
predictive question also the predictor's rollout past the last observed frame; for a
counterfactual question under protocol (b) also the latent-intervention rollout of the
world without the object the question names (``evaluation/clevrer_qa.py`` makes both).

The word vocabulary comes from the training question file, so real CLEVRER question files
work as well as simulated ones. A word of another question file that the training questions
never use is an error naming the question and the words (``reader.unknown_words=error``),
or, with ``reader.unknown_words=unk``, reads as [UNK] (and the count is printed).

Shapes: E examples, B batch, L words, T frames, K slots, D slot width, d reader width.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.questions import (
    ANSWERS,
    PROPERTY_VOCAB,
    QUESTION_TYPES,
    QuestionFileError,
    attribute_ids,
    mentions,
    words,
)
from ..models.predictor import Block
from . import plus_minus

PAD, UNK = "[PAD]", "[UNK]"
UNKNOWN_WORDS = ("error", "unk")  # what a word outside the vocabulary is
# token types
T_QUESTION, T_CHOICE, T_OBSERVED, T_FUTURE, T_COUNTERFACTUAL, T_CLS = range(1, 7)
EXTRA_NONE, EXTRA_FUTURE, EXTRA_CF = 0, 1, 2
# the attribute readout's log-probabilities per slot: colour (8), shape (3), material (2), object (1)
ATTR_SIZES = tuple(len(vocab) for _, vocab in PROPERTY_VOCAB)
GROUND_WIDTH = sum(ATTR_SIZES) + 1


def mention_scores(logp: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """How likely each slot is each mentioned object, in log space.

    logp (B, T, K, GROUND_WIDTH): the readout's log-probabilities (colour, shape, material,
    then log p(object)); named (B, R, 3): each mention's value ids (``attribute_ids``), -1 =
    attribute not named -> (B, T, K, R) log p(object) + sum of log p(named value).
    """
    B, T, K, _ = logp.shape
    R = named.shape[1]
    score = logp[..., -1:].expand(B, T, K, R)
    start = 0
    for j, n in enumerate(ATTR_SIZES):
        idx = named[:, None, None, :, j].expand(B, T, K, R)
        got = torch.gather(logp[..., start : start + n], 3, idx.clamp(min=0))
        score = score + torch.where(idx >= 0, got, torch.zeros_like(got))
        start += n
    return score


def mention_weights(logp: torch.Tensor, named: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``mention_scores`` as probabilities (B, T, K, R), 0 for the mentions not ``valid`` (B, R)."""
    return mention_scores(logp, named).exp() * valid[:, None, None, :]


class Vocabulary:
    """Words of question and choice texts -> ids; 0 = [PAD], 1 = [UNK]."""

    def __init__(self, tokens: list[str]):
        if tokens[:2] != [PAD, UNK] or len(set(tokens)) != len(tokens):
            raise ValueError("a Vocabulary starts with [PAD], [UNK] and lists each word once")
        self.tokens = list(tokens)
        self.index = {w: i for i, w in enumerate(tokens)}

    @classmethod
    def from_questions(cls, videos: list[dict]) -> Vocabulary:
        seen = set()
        for v in videos:
            for q in v["questions"]:
                seen.update(words(q["question"]))
                for c in q.get("choices", []):
                    seen.update(words(c["choice"]))
        return cls([PAD, UNK, *sorted(seen)])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in words(text)]

    def unknown(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary."""
        return [w for w in words(text) if w not in self.index]


def named_object(q: dict) -> dict[str, str]:
    """The attributes naming the object a counterfactual question removes ("... if the red cube
    is removed?"): from the program's filters before ``get_counterfact`` where there is a program,
    else from the words between "if" and "removed"."""
    out: dict[str, str] = {}
    prog = q.get("program")
    if prog:
        stop = prog.index("get_counterfact") if "get_counterfact" in prog else len(prog)
        for k in range(1, stop):
            tok = prog[k]
            if tok.startswith("filter_") and tok[7:] in ("color", "shape", "material"):
                out[tok[7:]] = prog[k - 1]
    if not out:
        m = re.search(r"\bif (.*) (?:is|were|was) removed", q["question"].lower())
        named = mentions(words(m.group(1))) if m else []
        if named:
            out = named[0][2]
    if not out:
        raise QuestionFileError(
            f"question {q.get('question_id')} ({q['question']!r}): cannot tell which object it removes; "
            "expected a program with filter_color/shape/material before get_counterfact, or "
            "'... if the <color> <material> <shape> is removed'"
        )
    return out


@dataclass
class Examples:
    """One row per descriptive question and per choice of a multiple-choice question."""

    words: torch.Tensor  # (E, L) int64 word ids, 0 = pad
    word_types: torch.Tensor  # (E, L) int64: T_QUESTION, T_CHOICE, 0 = pad
    video: torch.Tensor  # (E,) int64 index into the video store / slot store
    extra: torch.Tensor  # (E,) EXTRA_NONE | EXTRA_FUTURE | EXTRA_CF
    cf_index: torch.Tensor  # (E,) row of the counterfactual rollouts, -1 = none
    target: torch.Tensor  # (E,) answer index (descriptive) or 1 = correct / 0 = wrong
    is_choice: torch.Tensor  # (E,) bool
    question: torch.Tensor  # (E,) question ordinal (choices of one question share it)
    qtype: torch.Tensor  # (E,) index into QUESTION_TYPES
    word_mention: torch.Tensor  # (E, L) int64: 0 = no mention, r + 1 = a word of mention r
    named: torch.Tensor  # (E, R, 3) int64 colour, shape, material value ids of mention r, -1 = not named
    mention_valid: torch.Tensor  # (E, R) bool

    def __len__(self) -> int:
        return len(self.video)

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.__dict__.items()}


@dataclass
class Counterfactuals:
    """The counterfactual questions of a split, one row each: what protocol (b) must simulate."""

    video: list[int]
    attrs: list[dict[str, str]]  # the removed object's attributes as the question names them
    question: list[int]  # question ordinal


def video_index(video_ids: list[str], videos: list[dict], where: str) -> list[int]:
    """Row of each question file entry's video in a store whose ids are ``video_ids``."""
    rows = {vid: i for i, vid in enumerate(video_ids)}
    out = []
    for v in videos:
        name = v.get("video_filename") or f"video_{int(v['scene_index']):05d}"
        stem = name.rsplit("/", 1)[-1].split(".")[0]
        if stem not in rows:
            raise KeyError(
                f"{where}: questions about {stem} (scene_index {v['scene_index']}) but the store has no "
                f"such video (it has {len(rows)} videos, e.g. {video_ids[:2]})"
            )
        out.append(rows[stem])
    return out


def build_examples(
    videos: list[dict],
    rows: list[int],
    vocab: Vocabulary,
    max_words: int,
    counterfactual_extra: bool,
    *,
    unknown_words: str = "error",
    source: str = "the question file",
    max_mentions: int = 4,
) -> tuple[Examples, Counterfactuals]:
    """The reader's examples for a question file (videos already mapped to store ``rows``).

    Predictive questions read the future rollout; counterfactual questions read the
    counterfactual rollout where ``counterfactual_extra`` (protocol b), else the observed
    slots only (protocol a, as published). A text longer than ``max_words`` is an error; so
    is a word outside ``vocab`` unless ``unknown_words="unk"`` (then it reads as [UNK]), and
    a question with its choice naming more than ``max_mentions`` objects.
    """
    if unknown_words not in UNKNOWN_WORDS:
        raise ValueError(f"reader.unknown_words must be one of {UNKNOWN_WORDS}, got {unknown_words!r}")
    keys = ("words", "types", "video", "extra", "cf", "target", "choice", "q", "qtype", "wm", "named")
    cols = {k: [] for k in keys}
    cfs = Counterfactuals([], [], [])
    unknown: dict[str, list[str]] = {}  # question -> its words outside the vocabulary
    n_q = 0
    for v, row in zip(videos, rows, strict=True):
        for q in v["questions"]:
            qtype = q["question_type"]
            texts = [q["question"], *(c["choice"] for c in q.get("choices", []))]
            if bad := sorted({w for t in texts for w in vocab.unknown(t)}):
                unknown[f"{q['question_id']} of scene {v['scene_index']}"] = bad
            qw = vocab.encode(q["question"])
            qm = mentions(words(q["question"]))
            extra, cf = EXTRA_NONE, -1
            if qtype == "predictive":
                extra = EXTRA_FUTURE
            elif qtype == "counterfactual" and counterfactual_extra:
                extra, cf = EXTRA_CF, len(cfs.video)
                cfs.video.append(row)
                cfs.attrs.append(named_object(q))
                cfs.question.append(n_q)
            if qtype == "descriptive":
                if "answer" not in q:
                    raise QuestionFileError(
                        f"question {q['question_id']} of {v['scene_index']} has no answer"
                    )
                items = [(qw, [T_QUESTION] * len(qw), ANSWERS.index(q["answer"]), False, qm)]
            else:
                items = []
                for c in q["choices"]:
                    if "answer" not in c:
                        raise QuestionFileError(
                            f"question {q['question_id']} of {v['scene_index']}: choice {c['choice_id']} "
                            "has no answer"
                        )
                    cw = vocab.encode(c["choice"])
                    cm = [(a + len(qw), b + len(qw), m) for a, b, m in mentions(words(c["choice"]))]
                    items.append(
                        (
                            qw + cw,
                            [T_QUESTION] * len(qw) + [T_CHOICE] * len(cw),
                            int(c["answer"] == "correct"),
                            True,
                            qm + cm,
                        )
                    )
            for w, t, target, is_choice, ms in items:
                if len(w) > max_words:
                    raise ValueError(
                        f"question {q['question_id']} of scene {v['scene_index']} has {len(w)} words "
                        f"with its choice, more than reader.max_words={max_words}; raise reader.max_words"
                    )
                if len(ms) > max_mentions:
                    raise ValueError(
                        f"question {q['question_id']} of scene {v['scene_index']} names {len(ms)} objects "
                        f"with its choice ({[m for _, _, m in ms]}), more than reader.max_mentions="
                        f"{max_mentions}; raise reader.max_mentions"
                    )
                wm = [0] * max_words
                named = [[-1, -1, -1] for _ in range(max_mentions)]
                for r, (a, b, attrs) in enumerate(ms):
                    wm[a:b] = [r + 1] * (b - a)
                    named[r] = attribute_ids(attrs)
                cols["wm"].append(wm)
                cols["named"].append(named)
                cols["words"].append(w + [0] * (max_words - len(w)))
                cols["types"].append(t + [0] * (max_words - len(t)))
                cols["video"].append(row)
                cols["extra"].append(extra)
                cols["cf"].append(cf)
                cols["target"].append(target)
                cols["choice"].append(is_choice)
                cols["q"].append(n_q)
                cols["qtype"].append(QUESTION_TYPES.index(qtype))
            n_q += 1
    if not cols["video"]:
        raise ValueError("the question file has no questions")
    if unknown and unknown_words == "error":
        shown = "; ".join(f"question {q}: {ws}" for q, ws in list(unknown.items())[:3])
        raise QuestionFileError(
            f"{source}: {len(unknown)} question(s) use words outside the reader's vocabulary of "
            f"{len(vocab) - 2} words (those of the training questions), e.g. {shown}. Check that the "
            "file is a CLEVRER question file of the same language, or set reader.unknown_words=unk "
            "to read such words as [UNK]"
        )
    if unknown:
        print(f"{source}: {len(unknown)} question(s) have words outside the vocabulary; read as [UNK]")
    long = {k: torch.tensor(cols[k], dtype=torch.int64) for k in cols if k != "choice"}
    ex = Examples(
        words=long["words"],
        word_types=long["types"],
        video=long["video"],
        extra=long["extra"],
        cf_index=long["cf"],
        target=long["target"],
        is_choice=torch.tensor(cols["choice"], dtype=torch.bool),
        question=long["q"],
        qtype=long["qtype"],
        word_mention=long["wm"],
        named=long["named"],
        mention_valid=(long["named"] >= 0).any(-1),
    )
    return ex, cfs


@dataclass
class VisualParts:
    """What the reader can see of a split's videos, in memory.

    The ``*_logp`` parts are the attribute readout's log-probabilities of the same slots
    (``GROUND_WIDTH`` each, see ``mention_weights``); without them no slot is marked as a
    mentioned object (``reader.ground=false``)."""

    observed: torch.Tensor  # (N, To, K, D) observed slots at the reader's frame stride
    future: torch.Tensor | None  # (N, Tf, K, D) the predictor's rollout past the observed frames
    counterfactual: torch.Tensor | None  # (M, To, K, D) one per counterfactual question (protocol b)
    observed_logp: torch.Tensor | None = None  # (N, To, K, GROUND_WIDTH)
    future_logp: torch.Tensor | None = None  # (N, Tf, K, GROUND_WIDTH)
    counterfactual_logp: torch.Tensor | None = None  # (M, To, K, GROUND_WIDTH)

    def batch(self, ex: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Visual tokens of a batch of examples: observed then one extra part (padded, masked),
        and, where there are log-probabilities and mentions, how likely each slot is each mention."""
        obs = self.observed[ex["video"]]  # (B, To, K, D)
        B, _, K, D = obs.shape
        # as long as the longest extra part this batch reads (0 where none reads one)
        Te = max(
            self.future.shape[1]
            if self.future is not None and bool((ex["extra"] == EXTRA_FUTURE).any())
            else 0,
            self.counterfactual.shape[1]
            if self.counterfactual is not None and bool((ex["extra"] == EXTRA_CF).any())
            else 0,
        )
        grounded = self.observed_logp is not None and "named" in ex
        extra = obs.new_zeros(B, Te, K, D)
        extra_logp = obs.new_zeros(B, Te, K, GROUND_WIDTH) if grounded else None
        extra_type = torch.zeros(B, dtype=torch.int64)
        valid = torch.zeros(B, Te, dtype=torch.bool)
        for kind, part, logp, rows, token_type, need in (
            (
                EXTRA_FUTURE,
                self.future,
                self.future_logp,
                ex["video"],
                T_FUTURE,
                "the predictor's future rollout",
            ),
            (
                EXTRA_CF,
                self.counterfactual,
                self.counterfactual_logp,
                ex["cf_index"],
                T_COUNTERFACTUAL,
                "the counterfactual rollouts",
            ),
        ):
            sel = ex["extra"] == kind
            if not bool(sel.any()):
                continue
            if part is None or (grounded and logp is None):
                raise ValueError(f"{int(sel.sum())} examples need {need}, which was not given")
            x = part[rows[sel]]
            extra[sel, : x.shape[1]] = x
            if grounded:
                extra_logp[sel, : x.shape[1]] = logp[rows[sel]]
            valid[sel, : x.shape[1]] = True
            extra_type[sel] = token_type
        out = {"observed": obs, "extra": extra, "extra_type": extra_type, "extra_valid": valid}
        if grounded:
            named, ok = ex["named"], ex["mention_valid"]
            out["observed_ground"] = mention_weights(self.observed_logp[ex["video"]], named, ok)
            out["extra_ground"] = mention_weights(extra_logp, named, ok)
        return out


@dataclass(frozen=True)
class ReaderConfig:
    """configs/reader/*.yaml: the QA reader and what it sees."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    mlp_hidden: int = 128
    dropout: float = 0.1
    max_words: int = 40  # question + choice words; a longer text is an error, never cut
    frame_stride: int = 16  # observed frames seen: 0, s, 2s, ... (CLEVRER 128 frames: 8 at 16)
    future_every: int = 2  # every n-th rollout step of the predicted future
    max_frames: int = 32  # size of the frame-position table
    unknown_words: str = "error"  # a word the training questions never use: error | unk ([UNK])
    ground: bool = True  # mark the slots of the objects a question names (needs slot_object to train)
    max_mentions: int = 4  # objects one question with its choice may name; more is an error

    def __post_init__(self) -> None:
        positive = ("dim", "layers", "heads", "mlp_hidden", "max_words", "frame_stride", "future_every")
        for name in (*positive, "max_mentions"):
            if getattr(self, name) < 1:
                raise ValueError(f"reader.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"reader.dim={self.dim} must be divisible by reader.heads={self.heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"reader.dropout must be in [0, 1), got {self.dropout}")
        if self.unknown_words not in UNKNOWN_WORDS:
            raise ValueError(
                f"reader.unknown_words must be one of {UNKNOWN_WORDS}, got {self.unknown_words!r}"
            )


class QAReader(nn.Module):
    """Transformer over [CLS], words and slot tokens (see the module docstring)."""

    def __init__(self, cfg: ReaderConfig, vocab_size: int, slot_dim: int):
        super().__init__()
        self.cfg, d = cfg, cfg.dim
        self.word = nn.Embedding(vocab_size, d, padding_idx=0)
        self.word_pos = nn.Embedding(cfg.max_words, d)
        self.slot = nn.Sequential(nn.LayerNorm(slot_dim), nn.Linear(slot_dim, d))
        self.frame_pos = nn.Embedding(cfg.max_frames, d)
        self.kind = nn.Embedding(T_CLS + 1, d)
        self.mention = nn.Embedding(cfg.max_mentions + 1, d, padding_idx=0)  # 0: no mention
        # per frame, each mentioned object's slot and each pair of them (module docstring)
        # ordered by their later mention, so the pairs of the first R mentions are a prefix
        self.pairs = sorted(itertools.combinations(range(cfg.max_mentions), 2), key=lambda p: (p[1], p[0]))
        self.named_slot = nn.Sequential(nn.LayerNorm(slot_dim + 1), nn.Linear(slot_dim + 1, d))
        self.pair = nn.Sequential(
            nn.LayerNorm(3 * slot_dim + 3),
            nn.Linear(3 * slot_dim + 3, cfg.mlp_hidden),
            nn.GELU(),
            nn.Linear(cfg.mlp_hidden, d),
        )
        self.pair_id = nn.Embedding(max(1, len(self.pairs)), d)
        self.cls = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, d // cfg.heads, cfg.mlp_hidden, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.answer = nn.Linear(d, len(ANSWERS))
        self.choice = nn.Linear(d, 1)
        for emb in (self.word_pos, self.frame_pos, self.kind, self.mention, self.pair_id):
            nn.init.normal_(emb.weight, std=0.02)

    def _frames(self, slots: torch.Tensor, types: torch.Tensor, ground: torch.Tensor | None) -> torch.Tensor:
        """slots (B, T, K, D), types (B,), ground (B, T, K, R) or None -> tokens (B, T K, d)."""
        B, T, K, _ = slots.shape
        if T > self.cfg.max_frames:
            raise ValueError(f"{T} frames in one part; reader.max_frames={self.cfg.max_frames}")
        x = self.slot(slots) + self.frame_pos.weight[:T][None, :, None] + self.kind(types)[:, None, None]
        if ground is not None:
            x = x + ground @ self.mention.weight[1 : ground.shape[-1] + 1]
        return x.reshape(B, T * K, x.shape[-1])

    def _named(
        self, slots: torch.Tensor, ground: torch.Tensor, types: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mention and pair tokens of one part.

        slots (B, T, K, D), ground (B, T, K, R) mention weights, types (B,), keep (B, T, R)
        -> tokens (B, T (R + P), d) and which of them exist (B, T (R + P)).
        The slot of mention r at frame t is the ground-weighted mean of the frame's slots, with
        how much of a slot was found (the summed weight, at most 1) as one more feature.
        """
        B, T = slots.shape[:2]
        mass = ground.sum(dim=2)  # (B, T, R)
        named = torch.einsum("btkr,btkd->btrd", ground, slots) / mass.clamp(min=1e-6)[..., None]
        named = torch.cat([named, mass.clamp(max=1.0)[..., None]], dim=-1)  # (B, T, R, D + 1)
        base = self.frame_pos.weight[:T][None, :, None] + self.kind(types)[:, None, None]
        tokens = [self.named_slot(named) + self.mention.weight[1 : named.shape[2] + 1] + base]
        exists = [keep]
        pairs = [(i, j) for i, j in self.pairs if j < named.shape[2]]  # a prefix of self.pairs
        if pairs:
            a, b = (torch.tensor(i, device=slots.device) for i in zip(*pairs, strict=True))
            na, nb = named[:, :, a], named[:, :, b]  # (B, T, P, D + 1)
            pair_id = self.pair_id.weight[: len(pairs)]
            tokens.append(self.pair(torch.cat([na, nb, na - nb], dim=-1)) + pair_id + base)
            exists.append(keep[:, :, a] & keep[:, :, b])
        d = tokens[0].shape[-1]
        return (
            torch.cat([t.reshape(B, -1, d) for t in tokens], dim=1),
            torch.cat([e.reshape(B, -1) for e in exists], dim=1),
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (answer logits (B, 21), choice logit (B,))."""
        w, wt = batch["words"], batch["word_types"]
        B, L = w.shape
        obs, extra = batch["observed"], batch["extra"]
        K = obs.shape[2]
        text = self.word(w) + self.word_pos.weight[:L][None] + self.kind(wt)
        if "word_mention" in batch:
            text = text + self.mention(batch["word_mention"])
        observed_type = torch.full((B,), T_OBSERVED, device=w.device)
        observed = self._frames(obs, observed_type, batch.get("observed_ground"))
        more = self._frames(extra, batch["extra_type"].clamp(min=1), batch.get("extra_ground"))
        cls = (self.cls + self.kind.weight[T_CLS]).expand(B, 1, -1)
        parts = [cls, text, observed, more]  # (B, 1 + L + (To + Te) K, d) and named objects' tokens
        keep = [
            torch.ones(B, 1, dtype=torch.bool, device=w.device),
            wt > 0,
            torch.ones(B, observed.shape[1], dtype=torch.bool, device=w.device),
            batch["extra_valid"].repeat_interleave(K, dim=1),
        ]
        if "observed_ground" in batch:
            # mentions fill from the first: the batch's last used one bounds the tokens made
            R = int(batch["mention_valid"].sum(dim=1).max())
            named = batch["mention_valid"][:, :R]  # (B, R)
            for slots, ground, types, frames in (
                (
                    obs,
                    batch["observed_ground"][..., :R],
                    observed_type,
                    torch.ones(B, 1, dtype=torch.bool, device=w.device),
                ),
                (
                    extra,
                    batch["extra_ground"][..., :R],
                    batch["extra_type"].clamp(min=1),
                    batch["extra_valid"],
                ),
            ):
                if R == 0 or slots.shape[1] == 0:
                    continue
                frames = frames.expand(B, slots.shape[1])
                tok, ok = self._named(slots, ground, types, frames[:, :, None] & named[:, None, :])
                parts.append(tok)
                keep.append(ok)
        x = torch.cat(parts, dim=1)
        keep = torch.cat(keep, dim=1)  # (B, N): padding is never attended to
        # a key-padding mask (B, 1, N), broadcast over the queries: expanded to (B, N, N) it
        # made SDPA convert N^2 booleans per example and layer, 8 % of a CPU training step
        mask = keep[:, None, :]
        for blk in self.blocks:
            x, _ = blk(x, mask)
        h = self.norm(x[:, 0])
        return self.answer(h), self.choice(h)[:, 0]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.cls.device
        batch = {k: v.to(device) for k, v in batch.items()}
        answer, choice = self(batch)
        is_choice, target = batch["is_choice"], batch["target"]
        ce = F.cross_entropy(answer.float(), target.clamp(max=len(ANSWERS) - 1), reduction="none")
        bce = F.binary_cross_entropy_with_logits(choice.float(), target.float(), reduction="none")
        loss = torch.where(is_choice, bce, ce).mean()
        with torch.no_grad():
            right = torch.where(is_choice, (choice > 0).long() == target, answer.argmax(-1) == target)
        return loss, {"loss": float(loss.detach()), "accuracy": float(right.float().mean())}


@torch.no_grad()
def predict(
    model: QAReader, ex: Examples, parts: VisualParts, batch_size: int = 256, device="cpu"
) -> torch.Tensor:
    """(E,) the predicted answer index (descriptive) or 1 / 0 (choice correct / wrong).
    Batches hold examples that read the same extra part (``extra_groups``)."""
    model.eval()
    out = torch.zeros(len(ex), dtype=torch.int64)
    for rows in extra_groups(ex):
        for i in range(0, len(rows), batch_size):
            idx = rows[i : i + batch_size]
            b = ex.take(idx)
            b.update(parts.batch(b))
            b = {k: v.to(device) for k, v in b.items()}
            answer, choice = model(b)
            out[idx] = torch.where(b["is_choice"], (choice > 0).long(), answer.argmax(-1)).cpu()
    return out


def extra_groups(ex: Examples) -> list[torch.Tensor]:
    """The rows of the examples that read no extra part, the future rollout, and a counterfactual
    one (those present). A batch of one group pays only for the tokens its examples read."""
    groups = [torch.nonzero(ex.extra == k).flatten() for k in (EXTRA_NONE, EXTRA_FUTURE, EXTRA_CF)]
    return [g for g in groups if len(g)]


def accuracy_table(ex: Examples, pred: torch.Tensor) -> dict[str, float]:
    """Accuracies in percent: descriptive; per option and per question for each multiple-choice
    type; and over all questions (a multiple-choice question counts when all its choices are right)."""
    right = (pred == ex.target).numpy()
    q, qtype = ex.question.numpy(), ex.qtype.numpy()
    n_q = int(q.max()) + 1
    q_right = np.ones(n_q, bool)
    np.logical_and.at(q_right, q, right)
    q_type = np.zeros(n_q, np.int64)
    q_type[q] = qtype
    out: dict[str, float] = {}
    for t, name in enumerate(QUESTION_TYPES):
        rows = qtype == t
        if not rows.any():
            continue
        if name == "descriptive":
            out["descriptive"] = 100.0 * float(right[rows].mean())
        else:
            out[f"{name}_option"] = 100.0 * float(right[rows].mean())
            out[f"{name}_question"] = 100.0 * float(q_right[q_type == t].mean())
    out["all_question"] = 100.0 * float(q_right.mean())
    return out


COLUMNS = (
    ("descriptive", "descriptive"),
    ("explanatory_option", "explanatory opt"),
    ("explanatory_question", "explanatory q"),
    ("predictive_option", "predictive opt"),
    ("predictive_question", "predictive q"),
    ("counterfactual_option", "counterfactual opt"),
    ("counterfactual_question", "counterfactual q"),
    ("all_question", "all q"),
)


def markdown_table(rows: dict[str, dict[str, float | tuple[float, float]]]) -> str:
    """rows: name -> metrics (a number, or (mean, std) over seeds; std None: one seed, the mean
    alone) -> a markdown table."""
    present = [(k, title) for k, title in COLUMNS if any(k in r for r in rows.values())]
    lines = ["| | " + " | ".join(t for _, t in present) + " |", "|---" * (len(present) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for k, _ in present:
            v = r.get(k)
            if v is None:
                cells.append("")
            elif isinstance(v, tuple):
                cells.append(plus_minus(*v))
            else:
                cells.append(f"{v:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
