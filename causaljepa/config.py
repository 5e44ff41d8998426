"""Structured configs: the schemas behind `configs/` (Hydra's ConfigStore).

Each command has one primary config whose schema is a dataclass here; each option of the
``data`` group has a schema of its own, so a misspelt key or a wrong type is an error at
start-up, naming the key. The library never sees Hydra: commands turn the composed config
into these dataclasses once (``OmegaConf.to_object``) and pass plain typed values on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .evaluation.influence import ProbeConfig
from .evaluation.phyre import RankingConfig, VoEConfig
from .evaluation.qa import ReaderConfig
from .masking import MaskConfig
from .models.predictor import PredictorConfig
from .models.savi import EncoderConfig
from .sim.generate import SPLITS, GenerateConfig
from .sim.phyre_generate import PhyreGenerateConfig
from .training.encoder import ClipConfig
from .training.loop import OptimConfig, TrainerConfig
from .training.phyre import EpisodeConfig, PlausibilityConfig, ReadoutConfig
from .training.predictor import WindowConfig


@dataclass(frozen=True)
class ClevrerSimData:
    """data=clevrer_sim: the built-in CLEVRER-format world."""

    name: str = "clevrer_sim"
    root: str = "datasets/clevrer_sim"
    generator: GenerateConfig = field(default_factory=GenerateConfig)


@dataclass(frozen=True)
class PhyreSimData:
    """data=phyre_sim: the built-in PHYRE-protocol world (ball tier, templates of our own design)."""

    name: str = "phyre_sim"
    root: str = "datasets/phyre_sim"
    generator: PhyreGenerateConfig = field(default_factory=PhyreGenerateConfig)


@dataclass(frozen=True)
class ClevrerData:
    """data=clevrer: stores converted from the real CLEVRER download."""

    name: str = "clevrer"
    root: str = "datasets/clevrer"


@dataclass
class DataGenerateCommand:
    """cjepa data generate"""

    data: Any = MISSING
    seed: int = 0
    workers: int = 2
    layout: str = "store"  # "store": HDF5 + question JSON; "clevrer": the real CLEVRER layout (mp4 + JSON)


@dataclass
class DataPrepareClevrerCommand:
    """cjepa data prepare-clevrer"""

    data: Any = MISSING
    seed: int = 0
    source: str = MISSING  # where the real CLEVRER download was unpacked
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    height: int = 64
    width: int = 64
    require_annotations: bool = True
    limit: int | None = None  # first n videos of each split (None: all)


@dataclass
class DataStatsCommand:
    """cjepa data stats"""

    data: Any = MISSING
    seed: int = 0
    split: str = "train"
    out: str | None = None  # default: <data.root>/stats


@dataclass
class DataShowCommand:
    """cjepa data show"""

    data: Any = MISSING
    seed: int = 0
    split: str = "train"
    video: int = 0
    frames: int = 8  # evenly spaced frames in the strip
    counterfactual: int | None = (
        None  # also show the world without this object (needs --counterfactuals data)
    )
    out: str | None = None  # default: <data.root>/show/<split>_<video>.png


@dataclass
class TrainEncoderCommand:
    """cjepa train-encoder"""

    data: Any = MISSING
    seed: int = 0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    out: str = MISSING  # the run directory (default: Hydra's run dir)
    resume: str | None = (
        None  # a checkpoint to continue from, or "auto": <out>/checkpoints/last.pt if it exists
    )


@dataclass
class ExtractSlotsCommand:
    """cjepa extract-slots"""

    data: Any = MISSING
    seed: int = 0
    checkpoint: str = MISSING  # encoder.pt from cjepa train-encoder
    splits: list[str] = field(default_factory=lambda: ["train", "validation", "test"])
    out: str | None = None  # default: <data.root>/slots
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the device computes it natively)
    batch_size: int = 16  # videos encoded together
    chunk: int = 32  # frames per forward pass; slots are carried across chunks
    counterfactuals: bool = False  # also encode the counterfactual videos (cf_slots; O x the work)


@dataclass
class ShowSlotsCommand:
    """cjepa show-slots"""

    data: Any = MISSING
    seed: int = 0
    checkpoint: str = MISSING  # encoder.pt from cjepa train-encoder
    split: str = "validation"
    video: int = 0
    frames: int = 8  # evenly spaced over the video
    out: str | None = None  # default: next to the encoder, show_slots_<split>_<video>.png


@dataclass
class OracleSlotsCommand:
    """cjepa oracle-slots"""

    data: Any = MISSING
    seed: int = 0
    splits: list[str] = field(default_factory=lambda: ["train", "validation", "test"])
    out: str | None = None  # default: <data.root>/oracle_slots


@dataclass
class TrainCommand:
    """cjepa train (the C-JEPA predictor)"""

    data: Any = MISSING
    seed: int = 0
    slots: str = "learned"  # learned (<root>/slots) | oracle (<root>/oracle_slots) | a directory
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    masking: MaskConfig = field(default_factory=MaskConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    out: str = MISSING
    resume: str | None = None  # a checkpoint, or "auto": <out>/checkpoints/last.pt if it exists


@dataclass
class PredictorEvalCommand:
    """What the commands that run a trained predictor over a slot store share."""

    data: Any = MISSING
    seed: int = 0
    checkpoint: str = MISSING  # predictor.pt from cjepa train
    split: str = "validation"
    slots: str | None = None  # learned | oracle | a directory; default: the one the predictor trained on
    commit: int | None = None  # predicted frames that join the rollout chain per forward pass; null: all
    batch_size: int = 64
    device: str = "cpu"
    out: str | None = None  # default: next to the checkpoint


@dataclass
class RolloutCommand(PredictorEvalCommand):
    """cjepa rollout: writes rollout_<split>.h5 (+ .json, .png where the truth exists)"""

    end: int | None = None  # the last history frame; default: the store's last observed frame
    actions: bool = True  # False: roll out with every action zeroed (does the action matter?)


@dataclass
class InterveneCommand(PredictorEvalCommand):
    """cjepa intervene: writes interventions_<split>.json; slots= must hold cf_slots"""

    steps: int = 16  # rollout steps after the first window's history
    # the video store the slots were made from, for the at-onset protocol (its simulated states
    # tell where the worlds part); default: <the slot directory's parent>/<split>.h5 if it fits
    video_store: str | None = None


@dataclass
class EvalClevrerCommand:
    """cjepa eval clevrer: the QA reader on a predictor's rollouts, protocols (a) and (b)"""

    data: Any = MISSING
    seed: int = 0  # the reader's (and the grounding readout's) seed
    checkpoint: str = MISSING  # predictor.pt from cjepa train
    slots: str | None = None  # learned | oracle | a directory; default: the predictor's own slots
    protocols: list[str] = field(default_factory=lambda: ["a", "b"])
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    commit: int | None = None  # rollouts: predicted frames that join the chain per pass; null: all
    batch_size: int = 64  # rollouts
    counterfactuals: str = "rollout"  # protocol (b) reads the rollout, or (diagnostic) "truth": cf_slots
    counterfactual_start: str = "first"  # or "contact" (oracle slots): observed until the object touches
    counterfactual_entries: bool = False  # objects that enter later join protocol (b)'s rollout
    out: str | None = None  # default: <checkpoint's run>/qa


@dataclass
class EvalAblationCommand:
    """cjepa eval ablation: masking x seeds x slots, predictor and reader trained for each"""

    data: Any = MISSING
    seed: int = 0  # unused: the runs take their seeds from ``seeds``
    slots: list[str] = field(default_factory=lambda: ["learned", "oracle"])
    max_masked: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # 0 = no masking
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    protocols: list[str] = field(default_factory=lambda: ["a", "b"])
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    predictor_train: OptimConfig = field(default_factory=OptimConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    train: OptimConfig = field(default_factory=OptimConfig)  # the reader's
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    commit: int | None = None  # rollouts: as EvalClevrerCommand.commit
    batch_size: int = 64
    counterfactual_start: str = "first"  # as EvalClevrerCommand's
    counterfactual_entries: bool = False
    out: str = MISSING


@dataclass
class EvalInfluenceCommand:
    """cjepa eval influence: influence graphs of predictors, scored against the simulator's truth"""

    data: Any = MISSING  # the video store <data.root>/<split>.h5 gives frames and truth
    seed: int = 0  # the gradient probe's random projections
    checkpoints: list[str] = MISSING  # predictor.pt files, e.g. one per masking
    split: str = "validation"
    slots: str | None = None  # learned | oracle | a directory; default: the kind each predictor trained on
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    weight: str = "intervention_remove"  # the measure that sets edge weights, neighbourhoods and pictures
    pictures: int = 4  # videos drawn as PNG per predictor
    device: str = "cpu"
    out: str = "runs/influence"


@dataclass
class EvalCfGeometryCommand:
    """cjepa eval cf-geometry: counterfactual questions answered by geometry on oracle slots"""

    data: Any = MISSING  # <data.root>/<split>.h5, questions/<split>.json and the calibration split
    seed: int = 0  # unused by the scoring; the data config's generator seed refers to it
    checkpoints: list[str] = field(default_factory=list)  # predictor.pt files; none: the references only
    split: str = "validation"
    calibration_split: str = "train"  # the split whose annotated collisions set the contact distance
    slots: str = "oracle"  # oracle (<root>/oracle_slots) or a directory of oracle slot stores
    truth: str | None = None  # a directory of oracle slot stores with cf_slots; null: the slots' own
    stride: int = 2  # frames per step: the predictors' windows.stride
    history: int = 6  # the constant-velocity reference starts where a predictor of this history does
    starts: list[str] = field(default_factory=lambda: ["first", "contact"])
    entries: list[bool] = field(default_factory=lambda: [False, True])
    factual_rollouts: bool = False  # also each predictor's rollout with nothing removed, and "changed"
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True
    out: str = "runs/cf_geometry"


@dataclass
class EvalPhyreCommand:
    """cjepa eval phyre: per fold, the world model and readout trained, then AUCCESS, VoE, fidelity"""

    data: Any = MISSING  # data=phyre_sim: <data.root>/rollouts.h5 and tasks.json
    seed: int = 0
    slots: str = "oracle"  # oracle (<root>/oracle_slots) | a directory holding rollouts.h5
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    masking: MaskConfig = field(default_factory=MaskConfig)
    predictor_train: OptimConfig = field(default_factory=OptimConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    readout_train: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    voe: VoEConfig = field(default_factory=VoEConfig)
    plausibility: PlausibilityConfig = field(default_factory=PlausibilityConfig)
    folds: dict[str, list[int]] = field(default_factory=lambda: {"within": [0, 1, 2], "cross": [0]})
    out: str = "runs/phyre"


@dataclass
class MainCommand:
    """cjepa main: the whole pipeline on the built-in world (causaljepa/pipeline.py)"""

    data: Any = MISSING  # data=clevrer_sim; its generator makes <out>/data
    seed: int = 0
    out: str = "runs/main"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    encoder_train: OptimConfig = field(default_factory=OptimConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    predictor_train: OptimConfig = field(default_factory=OptimConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    reader_train: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    max_masked: int = 4  # object masking hides 0..max_masked objects per sample
    cf_videos: int = 4  # validation videos with counterfactual worlds, for the intervention errors
    extract_precision: str = "auto"
    workers: int = 2
    parallel: bool = True  # the two predictors, then the two QA stages, as two processes at once


COMMAND_SCHEMAS = {
    "data_generate": DataGenerateCommand,
    "data_prepare_clevrer": DataPrepareClevrerCommand,
    "data_stats": DataStatsCommand,
    "data_show": DataShowCommand,
    "train_encoder": TrainEncoderCommand,
    "extract_slots": ExtractSlotsCommand,
    "show_slots": ShowSlotsCommand,
    "oracle_slots": OracleSlotsCommand,
    "train": TrainCommand,
    "rollout": RolloutCommand,
    "intervene": InterveneCommand,
    "eval_clevrer": EvalClevrerCommand,
    "eval_ablation": EvalAblationCommand,
    "eval_influence": EvalInfluenceCommand,
    "eval_cf_geometry": EvalCfGeometryCommand,
    "eval_phyre": EvalPhyreCommand,
    "main": MainCommand,
}
DATA_SCHEMAS = {"clevrer_sim": ClevrerSimData, "clevrer": ClevrerData, "phyre_sim": PhyreSimData}


def _writable(node):
    """Frozen dataclasses become read-only nodes; Hydra must be able to merge overrides into them."""
    OmegaConf.set_readonly(node, None)
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig):
                _writable(child)
    return node


def register_configs() -> None:
    cs = ConfigStore.instance()
    for name, schema in COMMAND_SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=_writable(OmegaConf.structured(schema)))
    for name, schema in DATA_SCHEMAS.items():
        cs.store(group="data", name=f"{name}_schema", node=_writable(OmegaConf.structured(schema)))


def config_dir() -> Path:
    """The repository's configs/ folder (the package is installed in editable mode from the repo)."""
    here = Path(__file__).resolve().parents[1] / "configs"
    if not here.is_dir():
        raise FileNotFoundError(
            f"configs/ not found next to the causaljepa package (looked in {here.parent}); install the "
            "package from a clone with 'pip install -e .' so the commands find their configs"
        )
    return here


def preset_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """``preset=NAME`` selects configs/preset/<command>/NAME.yaml: one word for every command.

    Each command has presets of its own (the data generator's sizes, a training budget), kept
    in a group per command so that a preset only sets keys its command has. ``data generate``
    with ``data=phyre_sim`` takes the phyre_sim generator's presets: preset=NAME picks
    phyre_NAME.yaml (default phyre_quick).
    """
    out = []
    phyre = "data=phyre_sim" in overrides
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key == "preset" and phyre and config_name == "data_generate":
            value = f"phyre_{value}"  # the phyre_sim generator's presets
        if sep and key == "preset":
            group = config_dir() / "preset" / config_name
            if not group.is_dir():
                raise ValueError(f"preset={value}: this command ({config_name}) has no presets")
            o = f"preset/{config_name}={value}"
        out.append(o)
    if phyre and config_name == "data_generate" and not any(o.startswith("preset=") for o in overrides):
        out.append(f"preset/{config_name}=phyre_quick")  # the default preset is clevrer_sim's
    return out


def to_object(cfg: DictConfig):
    """The composed config as dataclasses (validation in their __post_init__ runs here)."""
    return OmegaConf.to_object(cfg)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    return split
