"""The `cjepa` command: parses the subcommand, runs it as a Hydra app over configs/.

    cjepa data generate          [key=value ...]   clevrer_sim -> HDF5 stores + question files
    cjepa data prepare-clevrer   source=DIR [...]  real CLEVRER layout -> HDF5 stores
    cjepa data stats             [...]             dataset statistics against CLEVRER's
    cjepa data show              [...]             PNG strip of frames with masks
    cjepa train-encoder          [preset=quick ...] the slot-attention video encoder
    cjepa extract-slots          checkpoint=PT [...]  slot stores of every split (+ FG-ARI, mBO)
    cjepa show-slots             checkpoint=PT [...]  PNG of frames, reconstructions, per-slot masks
    cjepa oracle-slots           [...]             slot stores from the simulator's object states
    cjepa train                  [slots=learned|oracle masking=object|none|token|tube ...]  the predictor
    cjepa rollout                checkpoint=PT [...]  predicted slots past the observed frames (+ errors)
    cjepa intervene              checkpoint=PT [...]  latent interventions against counterfactual truth
    cjepa eval clevrer           checkpoint=PT [...]  CLEVRER QA reader, protocols (a) and (b)
    cjepa main                   [out=runs/main ...]  the whole pipeline -> <out>/report.md
    cjepa eval ablation          [...]             masking x seeds x slots: predictors, readers, tables
    cjepa eval influence         checkpoints=[PT,...] [...]  influence graphs, scored against the truth
    cjepa eval cf-geometry       [checkpoints=[PT,...]] [...]  counterfactual questions by geometry (oracle)
    cjepa eval phyre             [folds=... preset=...]  PHYRE: AUCCESS, violation of expectation, fidelity

Everything after the subcommand is Hydra's: overrides (``data.generator.height=128``),
``--cfg job`` to print the composed config, ``--help``. Each handler here only turns the
config into dataclasses and calls the library.

Training on several processes or machines: ``torchrun --nproc_per_node N -m causaljepa train
...`` (or ``train-encoder``); every process takes rank 0's run directory, rank 0 writes it
(causaljepa/training/distributed.py). Training stopped by SIGINT or SIGTERM saves its state
and exits with 128 + the signal's number; a non-finite loss saves the last good state and
exits with 1.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import (
    ClevrerSimData,
    PhyreSimData,
    check_split,
    config_dir,
    preset_overrides,
    register_configs,
    to_object,
)
from .io import check_figure_path, write_text_atomic
from .training import distributed


def _require_sim(data, command: str) -> ClevrerSimData:
    if not isinstance(data, ClevrerSimData):
        raise ValueError(
            f"'cjepa {command}' needs data=clevrer_sim (the simulated world), got data={data.name}"
        )
    return data


def _rollouts(data) -> str | None:
    """phyre_sim keeps every task's attempts in one store without splits: its split name
    ("rollouts", the file rollouts.h5); None for the worlds with train/validation/test splits."""
    if not isinstance(data, PhyreSimData):
        return None
    from .sim.phyre_generate import ROLLOUTS_FILE

    return Path(ROLLOUTS_FILE).stem


def cmd_generate(cfg) -> None:
    if isinstance(cfg.data, PhyreSimData):
        from .sim.phyre_generate import generate as generate_phyre

        if cfg.layout != "store":
            raise ValueError(f"layout={cfg.layout!r}: phyre_sim writes only the store layout (layout=store)")
        store = generate_phyre(cfg.data.generator, Path(cfg.data.root), workers=cfg.workers)
        print(f"rollouts: {store}  tasks: {store.parent / 'tasks.json'}")
        print(f"next: cjepa oracle-slots data=phyre_sim data.root={cfg.data.root}")
        return
    data = _require_sim(cfg.data, "data generate")
    root = Path(data.root)
    if cfg.layout == "store":
        from .sim.generate import generate

        out = generate(data.generator, root, workers=cfg.workers)
        for split, (store, questions) in out.items():
            print(f"{split}: {store}  {questions}")
        where = "" if root == Path(ClevrerSimData.root) else f" data.root={root}"
        print(f"summary: cjepa data stats{where} split={next(iter(out))}")
    elif cfg.layout == "clevrer":
        from .data.clevrer_layout import write_clevrer_layout

        write_clevrer_layout(data.generator, root / "clevrer_layout", workers=cfg.workers)
        print(f"CLEVRER layout written under {root / 'clevrer_layout'}")
    else:
        raise ValueError(f"layout={cfg.layout!r} is not known; use layout=store or layout=clevrer")


def cmd_prepare_clevrer(cfg) -> None:
    from .data.clevrer_layout import prepare_clevrer

    for split in cfg.splits:
        out = prepare_clevrer(
            Path(cfg.source),
            Path(cfg.data.root) / f"{check_split(split)}.h5",
            split,
            cfg.height,
            cfg.width,
            require_annotations=cfg.require_annotations,
            limit=cfg.limit,
        )
        print(f"{split}: {out}")


def cmd_stats(cfg) -> None:
    from .data.stats import dataset_stats, format_stats, plot_stats

    root, split = Path(cfg.data.root), check_split(cfg.split)
    qpath = root / "questions" / f"{split}.json"
    stats = dataset_stats(root / f"{split}.h5", qpath if qpath.exists() else None)
    out = Path(cfg.out) if cfg.out else root / "stats"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{split}.json", json.dumps(stats, indent=1))
    png = plot_stats(stats, out / f"{split}.png")
    print(format_stats(stats))
    print(f"written: {out / f'{split}.json'}  {png}")


def cmd_show(cfg) -> None:
    from .viz import show_video

    root, split = Path(cfg.data.root), check_split(cfg.split)
    out = Path(cfg.out) if cfg.out else root / "show" / f"{split}_{cfg.video:05d}.png"
    show_video(root / f"{split}.h5", cfg.video, out, num_frames=cfg.frames, counterfactual=cfg.counterfactual)
    print(f"written: {out}")


def _resume(out: Path, resume: str | None) -> Path | None:
    """resume=auto continues the run in ``out`` if there is one; a run there is never overwritten."""
    from .training.checkpoint import checkpoint_path, last_checkpoint

    if resume == "auto":
        return last_checkpoint(out)
    last = checkpoint_path(out)
    if resume is None and last.exists():
        raise ValueError(
            f"{out} already holds a run; continue it with resume=auto (or resume={last}) "
            "or choose another out="
        )
    return None if resume is None else Path(resume)


def cmd_train_encoder(cfg) -> None:
    from .training.encoder import train_encoder

    out = Path(cfg.out)
    resume = _resume(out, cfg.resume)
    rollouts = _rollouts(cfg.data)
    files = {"train_file": f"{rollouts}.h5", "val_file": f"{rollouts}.h5"} if rollouts else {}
    path = train_encoder(
        cfg.data.root,
        cfg.encoder,
        cfg.train,
        cfg.trainer,
        cfg.clips,
        out,
        seed=cfg.seed,
        resume=resume,
        extra={"data": cfg.data.name},
        **files,
    )
    if not distributed.from_env().is_main:
        return
    val = json.loads((out / "val.json").read_text())
    print(f"encoder: {path}")
    if val:
        print("validation: " + "  ".join(f"{k}={v:.4f}" for k, v in val.items()))
    print(f"next: cjepa extract-slots checkpoint={path}")


def cmd_extract_slots(cfg) -> None:
    from .data.slot_store import extract_slots
    from .training.checkpoint import file_hash
    from .training.encoder import load_encoder

    model, _ = load_encoder(cfg.checkpoint, cfg.device)
    digest = file_hash(cfg.checkpoint)
    root = Path(cfg.data.root)
    out = Path(cfg.out) if cfg.out else root / "slots"
    report = {}
    rollouts = _rollouts(cfg.data)
    splits = [rollouts] if rollouts else _splits(root, cfg.splits)
    for split in splits:
        metrics = extract_slots(
            model,
            root / f"{split}.h5",
            out / f"{split}.h5",
            encoder_hash=digest,
            device=cfg.device,
            precision=cfg.precision,
            batch_size=cfg.batch_size,
            chunk=cfg.chunk,
            seed=cfg.seed + 1234,
            counterfactuals=cfg.counterfactuals,
        )
        report[split] = metrics
        shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"{split}: {out / f'{split}.h5'}  {shown or '(no masks: no metrics)'}")
    write_text_atomic(
        out / "metrics.json",
        json.dumps({"encoder": str(cfg.checkpoint), "sha256": digest, **report}, indent=1),
    )
    print(f"written: {out / 'metrics.json'}")


def cmd_show_slots(cfg) -> None:
    from .training.encoder import load_encoder
    from .viz import show_slots

    if cfg.out:
        check_figure_path(cfg.out)  # before the encoder runs over the whole video
    model, _ = load_encoder(cfg.checkpoint)
    split = _rollouts(cfg.data) or check_split(cfg.split)
    out = (
        Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / f"show_slots_{split}_{cfg.video:05d}.png"
    )
    show_slots(
        model,
        Path(cfg.data.root) / f"{split}.h5",
        cfg.video,
        out,
        num_frames=cfg.frames,
        seed=cfg.seed + 1234,
    )
    print(f"written: {out}")


def _splits(root: Path, splits) -> list[str]:
    """The splits, each checked to have a video store under ``root``."""
    for split in splits:
        if not (root / f"{check_split(split)}.h5").exists():
            raise FileNotFoundError(
                f"{root / f'{split}.h5'} does not exist; splits={list(splits)} names a split with no store"
            )
    return list(splits)


def cmd_oracle_slots(cfg) -> None:
    from .data.oracle import write_oracle_slots

    root = Path(cfg.data.root)
    out = Path(cfg.out) if cfg.out else root / "oracle_slots"
    rollouts = _rollouts(cfg.data)
    if rollouts:
        from .data.phyre_slots import write_phyre_oracle_slots

        print(f"{rollouts}: {write_phyre_oracle_slots(root / f'{rollouts}.h5', out / f'{rollouts}.h5')}")
        return
    for split in _splits(root, cfg.splits):
        print(f"{split}: {write_oracle_slots(root / f'{split}.h5', out / f'{split}.h5')}")


def cmd_train(cfg) -> None:
    from .training.predictor import resolve_slots, train_predictor

    out = Path(cfg.out)
    slot_dir = resolve_slots(cfg.data.root, cfg.slots)
    if not (slot_dir / "train.h5").exists():
        make = {
            "learned": "cjepa extract-slots checkpoint=<encoder.pt>",
            "oracle": "cjepa oracle-slots",
        }.get(cfg.slots, "a slot store directory")
        raise FileNotFoundError(
            f"{slot_dir / 'train.h5'} does not exist (slots={cfg.slots}); make it with {make}"
        )
    path = train_predictor(
        slot_dir,
        cfg.predictor,
        cfg.masking,
        cfg.train,
        cfg.trainer,
        cfg.windows,
        out,
        seed=cfg.seed,
        resume=_resume(out, cfg.resume),
        extra={"data": cfg.data.name, "slots": cfg.slots},
    )
    if not distributed.from_env().is_main:
        return
    val = json.loads((out / "val.json").read_text())
    print(f"predictor: {path}")
    if val:
        print("validation: " + "  ".join(f"{k}={v:.4g}" for k, v in val.items()))
    print(f"next: cjepa rollout checkpoint={path}")


def _predictor_and_store(cfg):
    """The predictor, its window stride, and the slot store of cfg.split it is to run on."""
    from .data.slot_store import SlotStore
    from .training.predictor import check_same_encoder, load_predictor, resolve_slots

    model, ckpt = load_predictor(cfg.checkpoint, cfg.device)
    slot_dir = resolve_slots(cfg.data.root, cfg.slots) if cfg.slots else Path(ckpt["extra"]["slot_dir"])
    store = SlotStore(slot_dir / f"{check_split(cfg.split)}.h5")
    check_same_encoder(store, ckpt)
    return model, int(ckpt["extra"]["windows"]["stride"]), store


def cmd_rollout(cfg) -> None:
    from .evaluation.dynamics import rollout_store
    from .io import write_json_atomic
    from .viz import plot_curves

    model, stride, store = _predictor_and_store(cfg)
    tag = "" if cfg.actions else "_no_actions"
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / f"rollout_{cfg.split}{tag}.h5"
    with store:
        result = rollout_store(
            model, store, out, stride=stride, end=cfg.end, batch_size=cfg.batch_size, commit=cfg.commit,
            use_actions=cfg.actions,
        )  # fmt: skip
    result = {"checkpoint": str(cfg.checkpoint), "slots": str(store.path), **result}
    write_json_atomic(out.with_suffix(".json"), result)
    print(f"rollout: {out}  ({result['steps']} steps of {stride} frames)")
    if "horizon_mse" in result:
        per = result["horizon_mse"]
        png = plot_curves(
            per, result["frame_index"], out.with_suffix(".png"), xlabel="video frame", ylabel="slot MSE",
            title=f"rollout error, {cfg.split} ({Path(cfg.checkpoint).parent.name})",
        )  # fmt: skip
        print("horizon  " + "  ".join(f"{k:>10}" for k in per))
        for h in range(result["steps"]):
            print(f"{h + 1:>7}  " + "  ".join(f"{per[k][h]:10.4g}" for k in per))
        print(f"beats copy-last and linear at every horizon >= 2: {result['beats_baselines_from_h2']}")
        print(f"written: {out.with_suffix('.json')}  {png}")


def cmd_intervene(cfg) -> None:
    from .evaluation.dynamics import intervention_errors, store_onsets
    from .io import write_json_atomic
    from .viz import plot_curves

    model, stride, store = _predictor_and_store(cfg)
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / f"interventions_{cfg.split}.json"
    with store:
        onsets = store_onsets(store, cfg.video_store)
        result = intervention_errors(
            model, store, stride=stride, steps=cfg.steps, onsets=onsets, batch_size=cfg.batch_size,
            commit=cfg.commit,
        )  # fmt: skip
    write_json_atomic(out, {"checkpoint": str(cfg.checkpoint), "slots": str(store.path), **result})

    def line(part: str, r: dict) -> str:
        return (
            f"{part:>18}: {r['cases']} cases  intervened MSE {r['intervened_mse']:.4g}  factual MSE "
            f"{r['factual_mse']:.4g}  (intervened lower in {100 * r['intervened_lower_fraction']:.0f} %; "
            f"truth gap {r['truth_gap_mse']:.4g}; factual vs its own world {r['factual_own_mse']:.4g})"
        )

    print("from the first frame:")
    for part in ("all", "most_affected_half"):
        print(line(part, result[part]))
    onset = result["at_onset"]
    if onset is None:
        print(
            "at onset: not run; it needs the video store the slots were made from, with counterfactual "
            "states (video_store=PATH)"
        )
    else:
        print(f"  history affected: {100 * result['history_affected_fraction']:.0f} % of the cases")
        excluded = ", ".join(f"{k} {v}" for k, v in onset["excluded"].items())
        if onset["cases"]:
            print(f"from the frame before the worlds part (excluded: {excluded}):")
            print(line("at onset", onset))
            names = {
                "intervened": "intervened vs world without o",
                "factual": "factual vs world without o",
                "factual_own": "factual vs factual world",
                "truth_gap": "factual world vs world without o",
            }
            curves = {names[k]: v for k, v in onset["horizon_mse"].items()}
            png = plot_curves(
                curves, list(range(1, result["steps"] + 1)), out.with_suffix(".png"),
                xlabel="steps after the last frame where the worlds agree", ylabel="slot MSE",
                title=f"interventions at onset, {cfg.split} ({Path(cfg.checkpoint).parent.name})",
            )  # fmt: skip
            print(f"written: {png}")
        else:
            print(f"at onset: no case fits (excluded: {excluded})")
    print(f"written: {out}")


def _qa_config(cfg, seed: int, counterfactuals: str = "rollout"):
    from .evaluation.clevrer_qa import QAConfig

    return QAConfig(
        reader=cfg.reader,
        optim=cfg.train,
        trainer=cfg.trainer,
        protocols=tuple(cfg.protocols),
        commit=cfg.commit,
        batch_size=cfg.batch_size,
        seed=seed,
        counterfactuals=counterfactuals,
        counterfactual_start=cfg.counterfactual_start,
        counterfactual_entries=cfg.counterfactual_entries,
    )


def cmd_eval_clevrer(cfg) -> None:
    from .evaluation.clevrer_qa import evaluate_clevrer
    from .training.checkpoint import load_checkpoint
    from .training.predictor import resolve_slots

    ckpt = load_checkpoint(cfg.checkpoint, "predictor")
    slot_dir = resolve_slots(cfg.data.root, cfg.slots) if cfg.slots else Path(ckpt["extra"]["slot_dir"])
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / "qa"
    result = evaluate_clevrer(
        cfg.data.root, slot_dir, cfg.checkpoint, out, _qa_config(cfg, cfg.seed, cfg.counterfactuals)
    )
    print((out / "results.md").read_text())
    grounding = result.get("grounding", {})
    if "readout_validation_accuracy" in grounding:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in grounding["readout_validation_accuracy"].items())
        print(f"attribute readout accuracy (validation slots): {acc}")
    if "questions" in grounding:
        print(f"grounding of the removed object (validation): {grounding['questions']}")
    print(f"written: {out / 'results.json'}  {out / 'results.md'}")


def cmd_eval_ablation(cfg) -> None:
    from .evaluation.ablation import masking_ablation
    from .training.predictor import resolve_slots

    slot_sets = {name: resolve_slots(cfg.data.root, name) for name in cfg.slots}
    result = masking_ablation(
        cfg.data.root,
        slot_sets,
        max_masked=list(cfg.max_masked),
        seeds=list(cfg.seeds),
        predictor=cfg.predictor,
        predictor_optim=cfg.predictor_train,
        windows=cfg.windows,
        qa=_qa_config(cfg, 0),
        out=Path(cfg.out),
    )
    print(Path(result["markdown"]).read_text())
    print(f"written: {result['markdown']}  {result['json']}  {result['png']}")


def cmd_eval_influence(cfg) -> None:
    from .evaluation.influence_graphs import RunOptions, evaluate_influence

    opts = RunOptions(weight=cfg.weight, pictures=cfg.pictures, seed=cfg.seed, device=cfg.device)
    result = evaluate_influence(
        cfg.checkpoints, cfg.data.root, check_split(cfg.split), cfg.slots, cfg.out, cfg.probe, opts
    )
    print(Path(result["markdown"]).read_text())
    for r in result["results"]:
        print(f"{r['name']}: {r['graphs']} graphs under {Path(cfg.out) / r['name'] / 'graphs'}")
    print(f"written: {result['markdown']}  {result['json']}  {result['png']}")


def cmd_eval_cf_geometry(cfg) -> None:
    from .evaluation.cf_geometry import CfGeometryOptions, evaluate_cf_geometry
    from .training.predictor import resolve_slots

    if cfg.slots == "learned":
        raise ValueError(
            "slots=learned: the geometric reading needs positions in the slot, so it runs on oracle slots; "
            "give slots=oracle (made by 'cjepa oracle-slots') or a directory of them"
        )
    opts = CfGeometryOptions(
        split=check_split(cfg.split),
        calibration_split=check_split(cfg.calibration_split),
        stride=cfg.stride,
        history=cfg.history,
        starts=tuple(cfg.starts),
        entries=tuple(bool(e) for e in cfg.entries),
        factual_rollouts=cfg.factual_rollouts,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=cfg.progress,
    )
    root = Path(cfg.data.root)
    result = evaluate_cf_geometry(
        list(cfg.checkpoints), root, resolve_slots(root, cfg.slots), cfg.out, opts, cfg.truth
    )
    print(Path(result["markdown"]).read_text())
    print(f"written: {result['markdown']}  {Path(cfg.out) / 'results.json'}  {result['png']}")


def cmd_eval_phyre(cfg) -> None:
    from .evaluation.phyre import PhyreEvalConfig, evaluate_phyre
    from .training.predictor import resolve_slots

    if not isinstance(cfg.data, PhyreSimData):
        raise ValueError(f"'cjepa eval phyre' needs data=phyre_sim, got data={cfg.data.name}")
    if cfg.slots == "learned":
        raise ValueError(
            "slots=learned: the PHYRE evaluation runs on oracle slots (its implausible clips are made "
            "from object states); use slots=oracle or a directory of oracle-format slots"
        )
    job = PhyreEvalConfig(
        predictor=cfg.predictor,
        masking=cfg.masking,
        predictor_train=cfg.predictor_train,
        episodes=cfg.episodes,
        readout=cfg.readout,
        readout_train=cfg.readout_train,
        trainer=cfg.trainer,
        ranking=cfg.ranking,
        voe=cfg.voe,
        plausibility=cfg.plausibility,
        folds={k: list(v) for k, v in cfg.folds.items()},
        seed=cfg.seed,
    )
    root = Path(cfg.data.root)
    evaluate_phyre(root, resolve_slots(root, cfg.slots), job, Path(cfg.out), progress=cfg.trainer.progress)


def cmd_main(cfg) -> None:
    from .pipeline import MainConfig, main_job

    sim = _require_sim(cfg.data, "main")
    job = MainConfig(
        generator=sim.generator,
        encoder=cfg.encoder,
        encoder_train=cfg.encoder_train,
        clips=cfg.clips,
        predictor=cfg.predictor,
        predictor_train=cfg.predictor_train,
        windows=cfg.windows,
        reader=cfg.reader,
        reader_train=cfg.reader_train,
        trainer=cfg.trainer,
        max_masked=cfg.max_masked,
        cf_videos=cfg.cf_videos,
        extract_precision=cfg.extract_precision,
        seed=cfg.seed,
        workers=cfg.workers,
        parallel=cfg.parallel,
    )
    main_job(job, Path(cfg.out))


# (words on the command line) -> (primary config, handler)
COMMANDS: dict[tuple[str, ...], tuple[str, Callable]] = {
    ("data", "generate"): ("data_generate", cmd_generate),
    ("data", "prepare-clevrer"): ("data_prepare_clevrer", cmd_prepare_clevrer),
    ("data", "stats"): ("data_stats", cmd_stats),
    ("data", "show"): ("data_show", cmd_show),
    ("train-encoder",): ("train_encoder", cmd_train_encoder),
    ("extract-slots",): ("extract_slots", cmd_extract_slots),
    ("show-slots",): ("show_slots", cmd_show_slots),
    ("oracle-slots",): ("oracle_slots", cmd_oracle_slots),
    ("train",): ("train", cmd_train),
    ("rollout",): ("rollout", cmd_rollout),
    ("intervene",): ("intervene", cmd_intervene),
    ("eval", "clevrer"): ("eval_clevrer", cmd_eval_clevrer),
    ("eval", "ablation"): ("eval_ablation", cmd_eval_ablation),
    ("eval", "influence"): ("eval_influence", cmd_eval_influence),
    ("eval", "cf-geometry"): ("eval_cf_geometry", cmd_eval_cf_geometry),
    ("eval", "phyre"): ("eval_phyre", cmd_eval_phyre),
    ("main",): ("main", cmd_main),
}


# commands that run under torchrun: several processes train one model
DISTRIBUTED = {("train-encoder",), ("train",)}


def usage() -> str:
    lines = ["usage: cjepa <command> [hydra overrides ...]", "", "commands:"]
    lines += [f"  cjepa {' '.join(words)}" for words in COMMANDS]
    lines += ["", "Overrides are Hydra's (key=value); add --cfg job to print the composed config."]
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, argv[n:]
    raise SystemExit(f"cjepa: unknown command {' '.join(argv[:2])!r}\n\n{usage()}")


def run(words: tuple[str, ...], overrides: list[str]) -> None:
    config_name, handler = COMMANDS[words]
    register_configs()
    d = distributed.from_env()
    if d.active and words not in DISTRIBUTED:
        raise SystemExit(
            f"cjepa {' '.join(words)} runs in one process, but WORLD_SIZE={d.world_size} (torchrun); "
            f"under torchrun run {' or '.join('cjepa ' + ' '.join(w) for w in sorted(DISTRIBUTED))}"
        )
    if d.rank > 0:  # rank 0's Hydra writes the run directory; the others write nothing of their own
        overrides = [*overrides, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]

    @hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        obj = to_object(cfg)
        if d.active:
            distributed.setup(obj.trainer.device)
            obj.out = distributed.broadcast(str(obj.out), d)  # rank 0's run directory for every process
        try:
            handler(obj)
        finally:
            distributed.shutdown()

    argv0 = sys.argv[0]
    sys.argv = [f"cjepa {' '.join(words)}", *preset_overrides(config_name, overrides)]
    try:
        app()
    finally:
        sys.argv[0] = argv0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    words, overrides = resolve(argv)
    from .training.loop import TrainingInterrupted

    try:
        run(words, overrides)
    except TrainingInterrupted as e:  # the state is saved (or, after a second signal, not: said so)
        sys.exit(128 + int(e.signum or signal.SIGINT))


if __name__ == "__main__":
    main()
