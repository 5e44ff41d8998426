"""CLEVRER question files: load and validate, unchanged from the schema.

A question file is a list of ``{"scene_index", "video_filename", "questions": [...]}``.
A descriptive question has ``question_id, question, question_type, question_subtype,
program, answer``; explanatory, predictive and counterfactual questions have ``choices``
of ``{choice_id, choice, program, answer: "correct" | "wrong"}``. The real test split has
neither answers nor programs; both are optional here and validated where present.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
MATERIALS = ("rubber", "metal")
# the columns of a store's object_properties, and the vocabulary stored with it
PROPERTY_VOCAB = (("color", COLORS), ("shape", SHAPES), ("material", MATERIALS))
VOCAB = {"colors": list(COLORS), "shapes": list(SHAPES), "materials": list(MATERIALS)}
QUESTION_TYPES = ("descriptive", "explanatory", "predictive", "counterfactual")
DESCRIPTIVE_SUBTYPES = ("count", "exist", "query_color", "query_shape", "query_material")
# CLEVRER's 21 descriptive answers
ANSWERS = (*[str(i) for i in range(6)], "yes", "no", *COLORS, *SHAPES, *MATERIALS)
CHOICE_ANSWERS = ("correct", "wrong")
_FILTER_VALUES = {"filter_color": COLORS, "filter_shape": SHAPES, "filter_material": MATERIALS}
_SUBTYPE_ANSWERS = {
    "count": ANSWERS[:6],
    "exist": ("yes", "no"),
    "query_color": COLORS,
    "query_shape": SHAPES,
    "query_material": MATERIALS,
}


def property_ids(obj: dict, where: str) -> tuple[int, int, int]:
    """(colour, shape, material) indices of an annotation's object_property entry."""
    ids = []
    for key, vocab in PROPERTY_VOCAB:
        value = obj.get(key)
        if value not in vocab:
            raise ValueError(
                f"{where}: object {obj.get('object_id')} has unknown {key} {value!r}; "
                f"known values are {list(vocab)}"
            )
        ids.append(vocab.index(value))
    return ids[0], ids[1], ids[2]


class QuestionFileError(ValueError):
    """A question file does not follow the CLEVRER question schema."""


def _check_program(program, where: str) -> None:
    if not isinstance(program, list) or not all(isinstance(tok, str) for tok in program):
        raise QuestionFileError(f"{where}: 'program' must be a list of strings, got {program!r}")
    for k, tok in enumerate(program):
        allowed = _FILTER_VALUES.get(tok)
        if allowed is not None:
            if k == 0 or program[k - 1] not in allowed:
                prev = program[k - 1] if k else None
                raise QuestionFileError(
                    f"{where}: program applies '{tok}' to unknown value {prev!r}; "
                    f"known values are {list(allowed)}"
                )


def validate_question(q: dict, where: str) -> None:
    """Raise QuestionFileError naming ``where`` if ``q`` breaks the schema."""
    if not isinstance(q, dict):
        raise QuestionFileError(f"{where}: a question must be an object, got {type(q).__name__}")
    for key in ("question_id", "question", "question_type"):
        if key not in q:
            raise QuestionFileError(f"{where}: question is missing '{key}'")
    where = f"{where}, question_id {q['question_id']}"
    qtype = q["question_type"]
    if qtype not in QUESTION_TYPES:
        raise QuestionFileError(
            f"{where}: unknown question_type {qtype!r}; expected one of {list(QUESTION_TYPES)}"
        )
    if "program" in q:
        _check_program(q["program"], where)
    if qtype == "descriptive":
        sub = q.get("question_subtype")
        if sub not in DESCRIPTIVE_SUBTYPES:
            raise QuestionFileError(
                f"{where}: unknown question_subtype {sub!r}; expected one of {list(DESCRIPTIVE_SUBTYPES)}"
            )
        if "answer" in q and q["answer"] not in _SUBTYPE_ANSWERS[sub]:
            raise QuestionFileError(
                f"{where}: answer {q['answer']!r} is not a valid {sub} answer; expected one of "
                f"{list(_SUBTYPE_ANSWERS[sub])}"
            )
        return
    choices = q.get("choices")
    if not isinstance(choices, list) or not choices:
        raise QuestionFileError(f"{where}: a {qtype} question needs a non-empty 'choices' list")
    for c in choices:
        if not isinstance(c, dict) or "choice_id" not in c or "choice" not in c:
            raise QuestionFileError(f"{where}: each choice needs 'choice_id' and 'choice', got {c!r}")
        cwhere = f"{where}, choice_id {c['choice_id']}"
        if "program" in c:
            _check_program(c["program"], cwhere)
        if "answer" in c and c["answer"] not in CHOICE_ANSWERS:
            raise QuestionFileError(f"{cwhere}: answer {c['answer']!r} must be 'correct' or 'wrong'")


def load_questions(path: str | os.PathLike) -> list[dict]:
    """Load and validate a CLEVRER question file (real or simulated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise QuestionFileError(
            f"{path}: not valid JSON ({e}); a CLEVRER question file is a JSON list"
        ) from e
    if not isinstance(data, list):
        raise QuestionFileError(f"{path}: top level is {type(data).__name__}, expected a list of videos")
    for k, video in enumerate(data):
        if not isinstance(video, dict) or "scene_index" not in video or "questions" not in video:
            raise QuestionFileError(f"{path}: entry {k} needs 'scene_index' and 'questions'")
        where = f"{path}, scene_index {video['scene_index']}"
        if not isinstance(video["questions"], list):
            raise QuestionFileError(f"{where}: 'questions' must be a list")
        for q in video["questions"]:
            validate_question(q, where)
    return data


def question_stats(videos: list[dict]) -> dict:
    """Counts per type, choices and correct choices per multiple-choice question."""
    per_type: Counter = Counter()
    subtypes: Counter = Counter()
    choices: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES[1:]}
    correct: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES[1:]}
    for v in videos:
        for q in v["questions"]:
            t = q["question_type"]
            per_type[t] += 1
            if t == "descriptive":
                subtypes[q.get("question_subtype")] += 1
            else:
                choices[t][len(q["choices"])] += 1
                correct[t][sum(c.get("answer") == "correct" for c in q["choices"])] += 1
    n = max(len(videos), 1)
    return {
        "videos": len(videos),
        "questions_per_type": {t: per_type[t] for t in QUESTION_TYPES},
        "questions_per_video": {t: per_type[t] / n for t in QUESTION_TYPES},
        "descriptive_subtypes": dict(sorted(subtypes.items())),
        "choices_hist": {t: dict(sorted(c.items())) for t, c in choices.items()},
        "correct_choices_hist": {t: dict(sorted(c.items())) for t, c in correct.items()},
    }


_WORD = re.compile(r"[a-z0-9]+")
_PLURAL = {f"{shape}s": shape for shape in SHAPES}
_KEY_OF = {v: key for key, vocab in PROPERTY_VOCAB for v in vocab}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def mentions(ws: list[str]) -> list[tuple[int, int, dict[str, str]]]:
    """Objects named by attributes in a word list: (first word, end word, {attribute: value}).

    A mention is a run of colour / material / shape words ("red metal cube"; a plural shape
    names all objects of that shape), ending at the shape or followed by "object(s)"; each
    attribute at most once ("red blue" is two mentions). Bare "object" names nothing.
    """
    out, i = [], 0
    while i < len(ws):
        attrs: dict[str, str] = {}
        j = i
        while j < len(ws):
            value = _PLURAL.get(ws[j], ws[j])
            key = _KEY_OF.get(value)
            if key is None or key in attrs:
                break
            attrs[key] = value
            j += 1
            if key == "shape":
                break
        if not attrs:
            i += 1
            continue
        if "shape" not in attrs and j < len(ws) and ws[j] in ("object", "objects"):
            j += 1
        out.append((i, j, attrs))
        i = j
    return out


def attribute_ids(attrs: dict[str, str]) -> list[int]:
    """(colour, shape, material) value ids of a description such as {"color": "red"}, -1 where
    it names no value."""
    return [vocab.index(attrs[key]) if key in attrs else -1 for key, vocab in PROPERTY_VOCAB]


def named_objects(props: np.ndarray, text: str) -> list[int | None]:
    """The annotated object (row of ``props``) each mention in ``text`` names, in reading order;
    None for a mention that no single object fits ("The red cube collides with the sphere")."""
    return [described_object(props, attrs) for _, _, attrs in mentions(words(text))]


def described_object(props: np.ndarray, attrs: dict[str, str]) -> int | None:
    """The one annotated object (row of props (O, 3) value ids, -1 = no object) that ``attrs``
    describe, or None where none or several fit."""
    ids = np.array(attribute_ids(attrs))
    named = ids >= 0
    fits = (props >= 0).all(axis=-1) & (props[:, named] == ids[named]).all(axis=-1)
    match = np.flatnonzero(fits)
    return int(match[0]) if len(match) == 1 else None
