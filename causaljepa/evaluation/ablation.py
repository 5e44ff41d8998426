"""The masking ablation: does object-level masking make a world model better at "what if"?

For every slot set (learned, oracle), every masking (``max_masked`` 0 = none, k = object
masking of 0..k whole objects per sample) and every seed, a predictor is trained on the same
slots with that seed, and ``evaluate_clevrer`` trains and scores a QA reader per protocol on
its rollouts (the same seed). The summary gives mean ± std over seeds per question type, and
for each object masking its counterfactual per-question gain over no masking: the mean of
the per-seed differences (seed s against seed s) and their std. Runs that finished are not
repeated, so an interrupted ablation continues where it stopped.

Writes under ``out``: <slots>/<masking>/seed<s>/ (predictor run, qa/), ablation.json,
ablation.md and ablation.png (counterfactual per-question accuracy against masking, one
panel per slot set, one line per protocol, error bars = std over seeds). Protocol (b) started
at contact or with entries writes qa_contact/, qa_entries/ or qa_contact_entries/ and
ablation_contact.md and so on, beside the default's.

ablation.md also says how many validation questions each accuracy is over, and the sampling
error that count alone gives a counterfactual accuracy (binomial, at 50 %): 100 questions give
5 points, so a gain of a few points over 100 questions is not told apart from which questions
were drawn, whatever the spread over seeds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..data.questions import QUESTION_TYPES, load_questions, question_stats
from ..io import save_figure, write_json_atomic, write_text_atomic
from ..masking import MaskConfig
from ..models.predictor import PredictorConfig
from ..training.checkpoint import last_checkpoint
from ..training.loop import OptimConfig
from ..training.predictor import WindowConfig, train_predictor
from . import mean_std, plus_minus
from .clevrer_qa import QAConfig, evaluate_clevrer
from .qa import markdown_table

TARGET = "counterfactual_question"


def variant_suffix(qa: QAConfig) -> str:
    """ "" for protocol (b) from the first frames, else "_contact", "_entries" or
    "_contact_entries": what a run's QA directory and the ablation's files are named with, so the
    variants sit beside each other."""
    return ("_contact" if qa.counterfactual_start == "contact" else "") + (
        "_entries" if qa.counterfactual_entries else ""
    )


def qa_dir_name(qa: QAConfig) -> str:
    """A run's QA directory: "qa", "qa_contact", "qa_entries" or "qa_contact_entries"."""
    return "qa" + variant_suffix(qa)


def masking_name(k: int) -> str:
    return masking_config(k).name


def masking_config(k: int) -> MaskConfig:
    if k < 0:
        raise ValueError(f"max_masked entries must be >= 0 (0 = no masking), got {k}")
    return MaskConfig("none", 0, 0) if k == 0 else MaskConfig("object", 0, k)


def summarize(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """runs[masking][protocol] = per-seed metric dicts (in seed order) -> mean/std per metric, and
    the counterfactual per-question gain over "none" (paired by seed)."""
    out: dict = {}
    for mask, per_protocol in runs.items():
        for protocol, seeds in per_protocol.items():
            keys = [k for k in seeds[0] if all(k in s for s in seeds)]  # a type some seed lacks: left out
            stats = {k: mean_std([s[k] for s in seeds]) for k in keys}
            entry = {"seeds": len(seeds), "mean_std": stats}
            base = runs.get("none", {}).get(protocol)
            if mask != "none" and base is not None and len(base) == len(seeds):
                diff = np.array([s[TARGET] for s in seeds]) - np.array([b[TARGET] for b in base])
                mean, std = mean_std(diff)
                entry["counterfactual_gain"] = {"mean": mean, "std": std, "per_seed": diff.tolist()}
            out.setdefault(protocol, {})[mask] = entry
    return out


def plot_ablation(summary: dict[str, dict], masks: list[str], path: Path) -> Path:
    """summary[slots][protocol][mask] -> counterfactual per-question accuracy against masking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.6), squeeze=False)
    for ax, (slots, per_protocol) in zip(axes[0], summary.items(), strict=True):
        for protocol, entries in per_protocol.items():
            xs = [m for m in masks if m in entries]
            mean = [entries[m]["mean_std"][TARGET][0] for m in xs]
            std = [entries[m]["mean_std"][TARGET][1] for m in xs]
            yerr = None if None in std else std  # one seed: no error bars
            label = f"protocol ({protocol})"
            ax.errorbar(range(len(xs)), mean, yerr=yerr, marker="o", capsize=3, label=label)
            ax.set_xticks(range(len(xs)), [m.replace("object_", "obj ") for m in xs])
        ax.set_title(f"{slots} slots")
        ax.set_xlabel("masking (objects hidden per sample)")
        ax.set_ylabel("counterfactual accuracy per question (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def sampling_error(n: int, p: float = 0.5) -> float:
    """The binomial standard error, in points, of an accuracy p measured over n questions."""
    if n < 1:
        raise ValueError(f"sampling_error needs at least one question, got n={n}")
    return 100.0 * float(np.sqrt(p * (1 - p) / n))


def count_line(counts: dict[str, int]) -> str:
    """Validation question counts per type -> the sentence of ablation.md that says what each
    accuracy is over and the counterfactual one's sampling error."""
    n_cf = counts.get("counterfactual", 0)
    per_type = ", ".join(f"{counts.get(t, 0)} {t}" for t in QUESTION_TYPES)
    line = f"Scored on {sum(counts.values())} validation questions ({per_type})."
    if n_cf:
        line += (
            f" Over {n_cf} counterfactual questions, one reader's per-question accuracy near 50 % has "
            f"a sampling standard error of {sampling_error(n_cf):.1f} points from the questions alone, "
            "and the difference of two readers' accuracies up to √2 times that."
        )
    return line


def ablation_markdown(
    summary: dict[str, dict], masks: list[str], n_seeds: int, counts: dict[str, int] | None = None
) -> str:
    """summary[slots][protocol] (``summarize`` per slot set) -> ablation.md. With one seed
    ``summarize`` gives no spread, and none is written. ``counts``: validation questions per type
    (``count_line``)."""
    head = "1 seed: no spread" if n_seeds == 1 else f"{n_seeds} seeds: mean ± sample std over seeds"
    lines = [f"# Masking ablation ({head})", ""]
    if counts is not None:
        lines += [count_line(counts), ""]
    for name, per_protocol in summary.items():
        for protocol, entries in per_protocol.items():
            lines += [f"## {name} slots, protocol ({protocol})", ""]
            lines.append(markdown_table({m: entries[m]["mean_std"] for m in masks if m in entries}))
            gains = []
            for m, e in entries.items():
                if "counterfactual_gain" in e:
                    g = e["counterfactual_gain"]
                    per = ", ".join(f"{x:+.1f}" for x in g["per_seed"])
                    seeds = "one seed" if g["std"] is None else f"per seed {per}"
                    gains.append(f"- {m}: {plus_minus(g['mean'], g['std'], sign=True)} points ({seeds})")
            if gains:
                lines += ["", "Counterfactual per-question gain over no masking (paired by seed):", *gains]
            lines.append("")
    return "\n".join(lines)


def _check_run(ckpt: Path, masking: MaskConfig, windows: WindowConfig) -> None:
    """A finished run is reused only if it was trained with the masking and windows asked for."""
    from ..training.checkpoint import load_checkpoint

    extra = load_checkpoint(ckpt, "predictor")["extra"]
    if extra["masking"] != asdict(masking) or extra["windows"] != asdict(windows):
        raise ValueError(
            f"{ckpt} was trained with masking {extra['masking']} and windows {extra['windows']}, not "
            f"{asdict(masking)} and {asdict(windows)}; choose another out= or delete that run"
        )


def masking_ablation(
    data_root: str | os.PathLike,
    slot_sets: dict[str, Path],
    *,
    max_masked: list[int],
    seeds: list[int],
    predictor: PredictorConfig,
    predictor_optim: OptimConfig,
    windows: WindowConfig,
    qa: QAConfig,
    out: Path,
) -> dict:
    if 0 not in max_masked:
        raise ValueError(f"max_masked={max_masked} needs 0 (no masking): the gains are measured against it")
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    for name, d in slot_sets.items():
        if not (Path(d) / "train.h5").exists():
            raise FileNotFoundError(f"slots={name}: {Path(d) / 'train.h5'} does not exist")
    masks = [masking_name(k) for k in max_masked]
    questions = load_questions(Path(data_root) / "questions" / "validation.json")
    counts = question_stats(questions)["questions_per_type"]
    summary, raw = {}, {}
    for name, slot_dir in slot_sets.items():
        runs: dict[str, dict[str, list[dict]]] = {}
        for k, mask in zip(max_masked, masks, strict=True):
            for seed in seeds:
                run = out / name / mask / f"seed{seed}"
                ckpt = run / "predictor.pt"
                if ckpt.exists():
                    _check_run(ckpt, masking_config(k), windows)
                else:
                    print(f"ablation: training the predictor {name}/{mask}/seed{seed}")
                    train_predictor(
                        slot_dir, predictor, masking_config(k), predictor_optim, qa.trainer, windows, run,
                        seed=seed, resume=last_checkpoint(run),
                        extra={"slots": name, "ablation": True},
                    )  # fmt: skip
                print(f"ablation: QA on {name}/{mask}/seed{seed}")
                res = evaluate_clevrer(
                    data_root, slot_dir, ckpt, run / qa_dir_name(qa), replace(qa, seed=seed)
                )
                for protocol in qa.protocols:
                    runs.setdefault(mask, {}).setdefault(protocol, []).append(res["protocols"][protocol])
                raw.setdefault(name, {}).setdefault(mask, {})[f"seed{seed}"] = res
        summary[name] = summarize(runs)
    stem = "ablation" + variant_suffix(qa)  # ablation, ablation_contact_entries, ...
    md = write_text_atomic(out / f"{stem}.md", ablation_markdown(summary, masks, len(seeds), counts))
    record = {"summary": summary, "runs": raw, "masks": masks, "validation_questions": counts}
    js = write_json_atomic(out / f"{stem}.json", record)
    png = plot_ablation(summary, masks, out / f"{stem}.png")
    return {"summary": summary, "markdown": str(md), "json": str(js), "png": str(png)}
