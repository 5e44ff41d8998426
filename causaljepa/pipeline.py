"""The main job (`cjepa main`, `make demo`): the whole pipeline on the built-in world.

Stages, each skipped where its output already exists (so rerunning continues an
interrupted run; the trainers resume from their last checkpoint):

1. ``data``: clevrer_sim videos and questions into <out>/data, and a few validation videos
   with their counterfactual worlds into <out>/data_cf (for the intervention errors);
2. ``encoder``: the slot-attention video encoder, <out>/encoder;
3. ``slots``: its slots of the train and validation splits, <out>/data/slots (+ data_cf/slots);
4. ``predictors``: C-JEPA predictors with object masking and without, <out>/predictor_<m>;
5. ``qa``: the QA reader on each predictor's rollouts, protocols (a) and (b), <out>/predictor_<m>/qa;
6. ``interventions``: latent interventions against the counterfactual truth;
7. ``report``: <out>/report.md with the tables, and PNGs next to it.

Wall time per stage goes into <out>/timings.json and the report.

With ``parallel`` (the default), the two predictors train at once, then the two QA stages run at
once, each in a process of its own with half the threads (``Timer.run_parallel``): on 2 cores a
pair's small matrices do not keep both cores busy from one process, so the pair finishes sooner
than its stages one after the other. Each process's numbers are deterministic for its thread
count. Ctrl-C in a terminal reaches every process (each stage saves its state and stops, as
alone); SIGTERM to the job is passed on to its stages.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from .evaluation.ablation import masking_config
from .evaluation.qa import ReaderConfig, markdown_table
from .io import save_figure, write_json_atomic, write_text_atomic
from .models.predictor import PredictorConfig
from .models.savi import EncoderConfig
from .training.encoder import ClipConfig
from .training.loop import OptimConfig, TrainerConfig
from .training.predictor import WindowConfig


@dataclass(frozen=True)
class MainConfig:
    """Plain values for ``main_job`` (the command's config turned into dataclasses)."""

    generator: object  # sim.generate.GenerateConfig
    encoder: EncoderConfig
    encoder_train: OptimConfig
    clips: ClipConfig
    predictor: PredictorConfig
    predictor_train: OptimConfig
    windows: WindowConfig
    reader: ReaderConfig
    reader_train: OptimConfig
    trainer: TrainerConfig
    max_masked: int = 4
    cf_videos: int = 4
    extract_precision: str = "auto"
    seed: int = 0
    workers: int = 2
    parallel: bool = True  # the two predictors, then the two QA stages, at once (module docstring)


# the job's two predictors (object masking of 0..max_masked objects, and none), in stage order
MASKING_LABELS = {"object": "object masking", "none": "no masking"}  # in the report's tables and plots
MASKINGS = tuple(MASKING_LABELS)
# the stages that run at once under MainConfig.parallel, named as main_job names them; timings.json
# keeps each stage's own time and, under "<group> (parallel)", the wall time of the group
PARALLEL_GROUPS = {
    "predictors": tuple(f"predictor_{m}" for m in MASKINGS),
    "qa": tuple(f"qa_{m}" for m in MASKINGS),
}


def _stage_process(conn, fn, threads: int) -> None:
    """A stage in a process of its own (``Timer.run_parallel``): ``fn()`` with ``threads`` torch
    threads; sends back ("ok", None, seconds) or ("error", the exception, seconds)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        fn()
    except BaseException as e:  # every failure, interrupts included, goes to the parent
        from .training.loop import TrainingInterrupted

        if not isinstance(e, TrainingInterrupted):
            traceback.print_exc()  # where it failed, in this process's stderr
        seconds = time.perf_counter() - t0
        try:
            conn.send(("error", e, seconds))
        except Exception:  # an exception that does not pickle: its name and message
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}"), seconds))
    else:
        conn.send(("ok", None, time.perf_counter() - t0))
    finally:
        conn.close()


class Timer:
    """Wall time per stage, kept in <out>/timings.json across reruns."""

    def __init__(self, path: Path):
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, fn, done: bool):
        if done:
            print(f"[main] {name}: done before, skipped")
            return None
        print(f"[main] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:  # an interrupted stage's time counts too: a rerun adds the rest
            self._add(name, time.perf_counter() - t0)

    def _add(self, name: str, seconds: float) -> None:
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 1)
        write_json_atomic(self.path, self.times)
        print(f"[main] {name}: {self.times[name]:.0f} s", flush=True)

    def run_parallel(self, group: str, stages: list[tuple[str, object, bool]], threads: int) -> None:
        """Run the stages ``(name, fn, done)`` not done at once, each ``fn`` (picklable, e.g. a
        ``functools.partial`` of a module-level function) in a spawned process with ``threads``
        torch threads; one stage left, or ``threads`` < 1, runs here (``run``). Each stage's own
        time goes to its name, the group's wall time to "<group> (parallel)". Raises the first
        stage's error after every stage has ended (an interrupt first: the job stops as it would
        have with one stage)."""
        import multiprocessing as mp

        todo = []
        for name, fn, done in stages:
            if done:
                print(f"[main] {name}: done before, skipped")
            else:
                todo.append((name, fn))
        if len(todo) < 2 or threads < 1:
            for name, fn in todo:
                self.run(name, fn, False)
            return
        ctx = mp.get_context("spawn")  # a fresh interpreter: no state of this process is shared
        names = ", ".join(n for n, _ in todo)
        print(f"[main] {names} at once, {threads} thread(s) each ...", flush=True)
        t0 = time.perf_counter()
        procs = []
        for name, fn in todo:
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_stage_process, args=(send, fn, threads), name=f"cjepa-{name}")
            p.start()
            send.close()
            procs.append((name, p, recv))

        def pass_on(signum, frame):  # SIGTERM to the job: each stage saves its state and stops
            for _, p, _ in procs:
                if p.is_alive():
                    os.kill(p.pid, signum)

        # Ctrl-C in a terminal reaches the stages themselves: passing it on would be their second
        old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
               signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on)}  # fmt: skip
        errors = []
        try:
            for name, p, recv in procs:
                try:
                    status, err, seconds = recv.recv()
                except EOFError:  # the process died without a word (killed, out of memory)
                    p.join()
                    status, seconds = "error", time.perf_counter() - t0
                    err = RuntimeError(
                        f"stage {name}: its process ended (exit code {p.exitcode}) without a result"
                    )
                except Exception as e:  # an error that pickled but does not unpickle here
                    status, seconds = "error", time.perf_counter() - t0
                    err = RuntimeError(f"stage {name} failed (its traceback is above); its error: {e!r}")
                p.join()
                self._add(name, seconds)
                if status != "ok":
                    errors.append(err)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            for _, p, _ in procs:
                p.join()
            self._add(f"{group} (parallel)", time.perf_counter() - t0)
        if errors:
            from .training.loop import TrainingInterrupted

            raise next((e for e in errors if isinstance(e, TrainingInterrupted)), errors[0])


def main_job(cfg: MainConfig, out: Path) -> Path:
    import torch

    from .data.slot_store import extract_slots
    from .evaluation.clevrer_qa import PROTOCOLS, QAConfig, evaluate_clevrer
    from .evaluation.dynamics import intervention_errors, store_onsets
    from .sim.generate import generate
    from .training.checkpoint import file_hash, last_checkpoint
    from .training.encoder import load_encoder, train_encoder
    from .training.predictor import load_predictor, train_predictor
    from .viz import show_slots, show_video

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, data_cf = out / "data", out / "data_cf"
    timer = Timer(out / "timings.json")
    t_start = time.perf_counter()

    def make_data():
        generate(replace(cfg.generator, videos={"train": cfg.generator.videos["train"],
                                                "validation": cfg.generator.videos["validation"]}),
                 data, workers=cfg.workers)  # fmt: skip
        generate(replace(cfg.generator, videos={"validation": cfg.cf_videos}, counterfactuals=True,
                         seed=cfg.generator.seed + 7919), data_cf, workers=cfg.workers)  # fmt: skip
        show_video(data / "train.h5", 0, out / "data_train_00000.png", num_frames=8)

    timer.run("data", make_data, (out / "data_train_00000.png").exists())
    enc_dir = out / "encoder"
    timer.run(
        "encoder",
        lambda: train_encoder(
            data,
            cfg.encoder,
            cfg.encoder_train,
            cfg.trainer,
            cfg.clips,
            enc_dir,
            seed=cfg.seed,
            resume=last_checkpoint(enc_dir),
            extra={"data": "clevrer_sim", "main_job": True},
        ),
        (enc_dir / "encoder.pt").exists(),
    )

    def make_slots():
        model, _ = load_encoder(enc_dir / "encoder.pt")
        digest = file_hash(enc_dir / "encoder.pt")
        metrics = {}
        for root, splits, cf in ((data, ("train", "validation"), False), (data_cf, ("validation",), True)):
            for split in splits:
                metrics[f"{root.name}/{split}"] = extract_slots(
                    model, root / f"{split}.h5", root / "slots" / f"{split}.h5", encoder_hash=digest,
                    precision=cfg.extract_precision, seed=cfg.seed + 1234, counterfactuals=cf,
                )  # fmt: skip
        write_json_atomic(out / "slots_metrics.json", metrics)
        show_slots(model, data / "validation.h5", 0, out / "slots_validation_00000.png", seed=cfg.seed + 1234)

    timer.run("slots", make_slots, (out / "slots_validation_00000.png").exists())

    maskings = {m: masking_config(cfg.max_masked if m == "object" else 0) for m in MASKINGS}
    # at once (module docstring): half the threads each, and no progress bars (two would garble
    # each other's line); the sequential way keeps the trainer as configured
    threads = (cfg.trainer.threads or torch.get_num_threads()) // 2 if cfg.parallel else 0
    trainer = replace(cfg.trainer, threads=threads, progress=False) if threads else cfg.trainer
    stages = []
    for name, masking in maskings.items():
        run = out / f"predictor_{name}"
        fn = partial(
            train_predictor, data / "slots", cfg.predictor, masking, cfg.predictor_train, trainer,
            cfg.windows, run, seed=cfg.seed, resume=last_checkpoint(run), extra={"slots": "learned"},
        )  # fmt: skip
        stages.append((f"predictor_{name}", fn, (run / "predictor.pt").exists()))
    timer.run_parallel("predictors", stages, threads)
    qa_cfg = QAConfig(cfg.reader, cfg.reader_train, trainer, seed=cfg.seed)
    stages = []
    for name in maskings:
        run = out / f"predictor_{name}"
        results = run / "qa" / "results.json"
        done = results.exists() and set(PROTOCOLS) <= set(
            json.loads(results.read_text()).get("protocols", {})
        )
        fn = partial(evaluate_clevrer, data, data / "slots", run / "predictor.pt", run / "qa", qa_cfg)
        stages.append((f"qa_{name}", fn, done))
    timer.run_parallel("qa", stages, threads)
    qa = {m: json.loads((out / f"predictor_{m}" / "qa" / "results.json").read_text()) for m in maskings}

    def interventions():
        from .data.slot_store import SlotStore

        res = {}
        with SlotStore(data_cf / "slots" / "validation.h5") as store:
            onsets = store_onsets(store)  # a property of the simulation: the same for every predictor
            for name in maskings:
                model, ckpt = load_predictor(out / f"predictor_{name}" / "predictor.pt")
                res[name] = intervention_errors(
                    model, store, stride=int(ckpt["extra"]["windows"]["stride"]), steps=16, onsets=onsets,
                    progress=False,
                )  # fmt: skip
        write_json_atomic(out / "interventions.json", res)

    timer.run("interventions", interventions, (out / "interventions.json").exists())
    elapsed = time.perf_counter() - t_start
    report = write_report(out, cfg, qa, timer.times, elapsed)
    print(f"[main] report: {report}")
    return report


def _protocol_rows(qa: dict[str, dict]) -> dict[str, dict]:
    """Each predictor's QA metrics under each protocol, by their label in the report and its plot."""
    return {
        f"{MASKING_LABELS[m]}, protocol ({p})": r["protocols"][p] for m, r in qa.items() for p in ("a", "b")
    }


def _qa_bars(qa: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [
        ("descriptive", "descr."),
        ("explanatory_question", "expl. q"),
        ("predictive_question", "pred. q"),
        ("counterfactual_option", "cf opt"),
        ("counterfactual_question", "cf q"),
        ("all_question", "all q"),
    ]
    bars = list(_protocol_rows(qa).items())
    fig, ax = plt.subplots(figsize=(9, 3.6))
    w = 0.8 / len(bars)
    for j, (label, metrics) in enumerate(bars):
        ax.bar(np.arange(len(keys)) + j * w, [metrics.get(k, 0.0) for k, _ in keys], w, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - w / 2, [t for _, t in keys])
    ax.set_ylabel("accuracy on validation (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("CLEVRER-format QA: object masking vs none, protocols (a) and (b)")
    fig.tight_layout()
    return save_figure(fig, path)


def _times_line(times: dict[str, float]) -> str:
    """timings.json as a sentence: each stage's time, a group that ran at once with its wall time,
    and the total, which counts such a group once (its wall time)."""
    walls = {k.removesuffix(" (parallel)"): v for k, v in times.items() if k.endswith(" (parallel)")}
    members = {g: [n for n in PARALLEL_GROUPS.get(g, ()) if n in times] for g in walls}
    after = {ms[-1]: (g, ms) for g, ms in members.items() if ms}  # a group's note follows its last stage
    grouped = {n for ms in members.values() for n in ms}
    parts, total = [], sum(walls.values())
    for k, v in times.items():
        if k.endswith(" (parallel)"):
            continue
        parts.append(f"{k} {v:.0f}")
        total += 0.0 if k in grouped else v
        if k in after:
            g, ms = after[k]
            parts[-1] += f" ({' and '.join(ms)} at once: {walls[g]:.0f})"
    return (
        "stage times (s, from their own runs): " + ", ".join(parts)
        + f"; total of stages {total / 60:.1f} min (stages run at once counted once)."
    )  # fmt: skip


def write_report(
    out: Path, cfg: MainConfig, qa: dict[str, dict], times: dict[str, float], elapsed: float
) -> Path:
    from .viz import plot_curves

    slots_metrics = json.loads((out / "slots_metrics.json").read_text())
    interventions = json.loads((out / "interventions.json").read_text())
    val = slots_metrics["data/validation"]
    rollouts = {
        m: json.loads((out / f"predictor_{m}" / "qa" / "rollout_validation.json").read_text()) for m in qa
    }
    curves = {f"predictor ({MASKING_LABELS[m]})": r["horizon_mse"]["predictor"] for m, r in rollouts.items()}
    r = next(iter(rollouts.values()))  # the baselines do not depend on the predictor
    curves["copy last frame"], curves["linear extrapolation"] = (
        r["horizon_mse"]["copy_last"],
        r["horizon_mse"]["linear"],
    )
    frames = r["frame_index"]
    title = "rollout error past the observed frames (validation)"
    plot_curves(
        curves, frames, out / "rollout_error.png", title=title, xlabel="video frame", ylabel="slot MSE"
    )
    _qa_bars(qa, out / "qa.png")
    rows = _protocol_rows(qa)
    gen = cfg.generator
    cf = {m: {p: r["protocols"][p].get("counterfactual_question") for p in ("a", "b")} for m, r in qa.items()}

    def gain(p: str) -> str:  # n/a where validation has no counterfactual question
        a, b = cf["object"][p], cf["none"][p]
        return f"protocol ({p}) " + ("n/a" if a is None or b is None else f"{a - b:+.1f} points")

    lines = [
        "# causaljepa main job",
        "",
        f"Wall time {elapsed / 60:.1f} min this invocation; " + _times_line(times),
        "",
        f"Data: clevrer_sim, {gen.videos['train']} training and {gen.videos['validation']} validation "
        f"videos of {gen.scene.observed_frames} + {gen.scene.future_frames} frames at "
        f"{gen.height}x{gen.width}; {cfg.cf_videos} more validation videos with every object's "
        "counterfactual world.",
        "",
        "![a training video with its instance masks](data_train_00000.png)",
        "",
        "## Encoder",
        "",
        f"{cfg.encoder_train.steps} steps. Validation, whole videos: FG-ARI {val['fg_ari']:.3f}, "
        f"mBO {val['mbo']:.3f}, temporal consistency {val['temporal_consistency']:.3f}.",
        "",
        "![slots of validation video 0](slots_validation_00000.png)",
        "",
        "## Predictors: rollout past the observed frames",
        "",
        f"Object masking (0..{cfg.max_masked} objects hidden per sample) and none, "
        f"{cfg.predictor_train.steps} steps each, on the encoder's slots.",
        "",
        "![rollout error](rollout_error.png)",
        "",
        "## Question answering (validation)",
        "",
        "Protocol (a) is the published one (only predictive questions see the predictor's output); in "
        "protocol (b) a counterfactual question also reads the latent-intervention rollout of the world "
        "without the object it names. Accuracies in percent.",
        "",
        markdown_table(rows),
        "",
        "Counterfactual per-question accuracy, object masking minus none: "
        + ", ".join(gain(p) for p in ("a", "b"))
        + " (one seed; `cjepa eval ablation` gives the spread over seeds).",
        "",
        "![QA accuracies](qa.png)",
        "",
        "## Latent interventions (the do-operator) against the counterfactual truth",
        "",
        "| masking | cases | intervened MSE | factual MSE | intervened lower "
        "| most-affected half: intervened / factual | at onset: cases, intervened / factual "
        "(factual vs its own world) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, r in interventions.items():
        a, h, o = r["all"], r["most_affected_half"], r.get("at_onset")
        at = (
            f"{o['cases']}, {o['intervened_mse']:.4f} / {o['factual_mse']:.4f} ({o['factual_own_mse']:.4f})"
            if o and o["cases"]
            else "no case fits"
            if o
            else "not run (no counterfactual states)"
        )
        lines.append(
            f"| {m} | {a['cases']} | {a['intervened_mse']:.4f} | {a['factual_mse']:.4f} | "
            f"{100 * a['intervened_lower_fraction']:.0f} % | "
            f"{h['intervened_mse']:.4f} / {h['factual_mse']:.4f} | {at} |"
        )
    g = qa["object"].get("grounding", {})
    if "readout_validation_accuracy" in g:
        acc = ", ".join(f"{k} {100 * v:.1f} %" for k, v in g["readout_validation_accuracy"].items())
        lines += ["", f"Attribute readout on validation slots (marks the named objects' slots): {acc}."]
    q = g.get("questions")
    if q and q["questions"]:
        lines += [
            "",
            f"Grounding of the removed object: on {100 * q['accuracy']:.1f} % of {q['questions']} validation "
            "counterfactual questions, the slot chosen for the named object covers it.",
        ]
    lines += [
        "",
        "Configuration: " + json.dumps({"reader": asdict(cfg.reader), "predictor": asdict(cfg.predictor)}),
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
