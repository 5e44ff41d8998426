"""Dataset statistics, side by side with CLEVRER's published figures."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..io import save_figure
from .questions import (
    QUESTION_TYPES,
    load_questions,
    named_objects,
    property_ids,
    question_stats,
)
from .store import VideoStore

# CLEVRER training split (REFERENCE.md): 10,000 videos; question counts per type.
CLEVRER_TRAIN_VIDEOS = 10_000
CLEVRER_TRAIN_QUESTIONS = {
    "descriptive": 109_952,
    "explanatory": 16_799,
    "predictive": 7_179,
    "counterfactual": 18_642,
}
CLEVRER_FIGURES = {
    "objects_per_video": "4-6",
    "collisions_per_video": "typically 2-3",
    "choices_per_question": "2-4",
    "correct_choices": "zero to several",
    "questions_per_video": {t: n / CLEVRER_TRAIN_VIDEOS for t, n in CLEVRER_TRAIN_QUESTIONS.items()},
}


def _hist(values) -> dict[int, int]:
    return {int(k): int(v) for k, v in sorted(Counter(values).items())}


def _summary(values) -> dict:
    v = np.asarray(values, float)
    if v.size == 0:
        return {"mean": None, "min": None, "max": None, "hist": {}}
    return {"mean": float(v.mean()), "min": int(v.min()), "max": int(v.max()), "hist": _hist(v.astype(int))}


def dataset_stats(store_path: str | os.PathLike, questions_path: str | os.PathLike | None = None) -> dict:
    """Objects, collisions, entries and exits per video (from the annotations) and question statistics."""
    objects, collisions, entering, exiting = [], [], [], []
    scenes: dict[int, tuple[np.ndarray, set]] = {}  # scene -> object_properties ids, pairs colliding observed
    with VideoStore(store_path) as store:
        info = {
            "store": str(Path(store_path).name),
            "source": store.source,
            "videos": len(store),
            "frames": store.num_frames,
            "observed_frames": store.observed_frames,
            "resolution": [store.height, store.width],
            "fps": store.fps,
        }
        for i in range(len(store)):
            ann = store.annotation(i)
            if not ann:
                continue
            seen = {
                tuple(sorted(c["object_ids"]))
                for c in ann["collision"]
                if c["frame_id"] < store.observed_frames
            }
            props = np.full((1 + max((o["object_id"] for o in ann["object_property"]), default=-1), 3), -1)
            for o in ann["object_property"]:
                props[o["object_id"]] = property_ids(o, f"{store_path}: video {i}")
            scenes[int(ann["scene_index"])] = (props, seen)
            objects.append(len(ann["object_property"]))
            collisions.append(len(ann["collision"]))
            view = np.array(
                [
                    [o["inside_camera_view"] for o in sorted(f["objects"], key=lambda o: o["object_id"])]
                    for f in ann["motion_trajectory"]
                ],
                bool,
            )  # (T, O)
            entering.append(int((~view[0] & view.any(0)).sum()))
            exiting.append(int((view[:-1] & ~view[1:]).any(0).sum()))
    stats = {
        **info,
        "annotated_videos": len(objects),
        "objects_per_video": _summary(objects),
        "collisions_per_video": _summary(collisions),
        "entering_per_video": _summary(entering),
        "exiting_per_video": _summary(exiting),
        "clevrer": CLEVRER_FIGURES,
    }
    if questions_path is not None:
        videos = load_questions(questions_path)
        stats["questions"] = question_stats(videos)
        stats["questions"]["counterfactual_from_observed_collisions"] = observed_collision_answers(
            videos, scenes
        )
    return stats


def observed_collision_answers(videos: list[dict], scenes: dict[int, tuple[np.ndarray, set]]) -> dict:
    """A reference for readers without a world model: counterfactual questions answered without
    simulating. A choice naming two objects is "correct" exactly when the pair collides in the
    observed frames, any other choice "wrong". Accuracies in percent, per option and per
    question (all choices right); ``unresolved``: choices naming two objects of which one is no
    single annotated object (answered "wrong"). ``scenes``: scene index -> (object property ids
    (O, 3) as ``VideoStore``'s object_properties, the pairs colliding in the observed frames)."""
    options = right = questions = q_right = unresolved = 0
    for v in videos:
        if int(v["scene_index"]) not in scenes:
            continue
        props, seen = scenes[int(v["scene_index"])]
        for q in v["questions"]:
            if q["question_type"] != "counterfactual" or any("answer" not in c for c in q["choices"]):
                continue
            all_right = True
            for c in q["choices"]:
                ids = named_objects(props, c["choice"])
                unresolved += len(ids) == 2 and None in ids
                guess = len(ids) == 2 and None not in ids and tuple(sorted(ids)) in seen
                ok = guess == (c["answer"] == "correct")
                options += 1
                right += ok
                all_right &= ok
            questions += 1
            q_right += all_right
    if not questions:
        return {"questions": 0}
    return {
        "questions": questions,
        "option": 100.0 * right / options,
        "question": 100.0 * q_right / questions,
        "unresolved": unresolved,
    }


def format_stats(stats: dict) -> str:
    """A markdown report of ``dataset_stats`` next to CLEVRER's figures."""
    ref = stats["clevrer"]
    lines = [
        f"## {stats['store']} ({stats['source']}): {stats['videos']} videos, {stats['frames']} frames "
        f"({stats['observed_frames']} observed), {stats['resolution'][0]}x{stats['resolution'][1]}, "
        f"{stats['fps']:g} fps",
        "",
        "| per video | mean | range | histogram | CLEVRER |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("objects_per_video", "objects"),
        ("collisions_per_video", "collisions"),
        ("entering_per_video", "objects entering"),
        ("exiting_per_video", "objects exiting"),
    ):
        s = stats[key]
        if s["mean"] is None:
            lines.append(f"| {label} | - | - | no annotations | {ref.get(key, '')} |")
            continue
        hist = " ".join(f"{k}:{v}" for k, v in s["hist"].items())
        lines.append(f"| {label} | {s['mean']:.2f} | {s['min']}-{s['max']} | {hist} | {ref.get(key, '')} |")
    q = stats.get("questions")
    if q:
        lines += [
            "",
            "| question type | count | per video | CLEVRER per video | choices (hist) | correct (hist) |",
            "|---|---|---|---|---|---|",
        ]
        for t in QUESTION_TYPES:
            ch = " ".join(f"{k}:{v}" for k, v in q["choices_hist"].get(t, {}).items()) or "-"
            co = " ".join(f"{k}:{v}" for k, v in q["correct_choices_hist"].get(t, {}).items()) or "-"
            lines.append(
                f"| {t} | {q['questions_per_type'][t]} | {q['questions_per_video'][t]:.2f} | "
                f"{ref['questions_per_video'][t]:.2f} | {ch} | {co} |"
            )
        sub = " ".join(f"{k}:{v}" for k, v in q["descriptive_subtypes"].items())
        lines += ["", f"descriptive subtypes: {sub}"]
        ref = q.get("counterfactual_from_observed_collisions", {})
        if ref.get("questions"):
            lines += [
                "",
                f"counterfactual questions answered from the observed collisions alone (a choice 'A collides "
                f"with B' is correct iff A and B collide in the observed frames): {ref['option']:.1f} % per "
                f"option, {ref['question']:.1f} % per question ({ref['questions']} questions, "
                f"{ref['unresolved']} choices naming no single object)",
            ]
    return "\n".join(lines)


def plot_stats(stats: dict, path: str | os.PathLike) -> Path:
    """Histograms of objects and collisions per video, and questions per video against CLEVRER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    q = stats.get("questions")
    fig, axes = plt.subplots(1, 4 if q else 2, figsize=(16 if q else 8, 3.2))
    for ax, key, title in (
        (axes[0], "objects_per_video", "objects per video"),
        (axes[1], "collisions_per_video", "collisions per video (observed)"),
    ):
        h = stats[key]["hist"]
        ax.bar(list(h), list(h.values()), color="#4472c4")
        ax.set_title(title)
        ax.set_xlabel("count")
        ax.set_ylabel("videos")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if q:
        x = np.arange(len(QUESTION_TYPES))
        ours = [q["questions_per_video"][t] for t in QUESTION_TYPES]
        ref = [stats["clevrer"]["questions_per_video"][t] for t in QUESTION_TYPES]
        axes[2].bar(x - 0.2, ours, 0.4, label="this dataset")
        axes[2].bar(x + 0.2, ref, 0.4, label="CLEVRER train")
        axes[2].set_xticks(x, [t[:6] for t in QUESTION_TYPES])
        axes[2].set_title("questions per video")
        axes[2].legend()
        for k, t in enumerate(QUESTION_TYPES[1:]):
            h = q["choices_hist"][t]
            axes[3].bar(np.array(list(h), float) + (k - 1) * 0.25, list(h.values()), 0.25, label=t)
        axes[3].set_title("choices per multiple-choice question")
        axes[3].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[3].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
