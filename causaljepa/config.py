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

from .sim.generate import SPLITS, GenerateConfig


@dataclass(frozen=True)
class ClevrerSimData:
    """data=clevrer_sim: the built-in CLEVRER-format world."""

    name: str = "clevrer_sim"
    root: str = "datasets/clevrer_sim"
    generator: GenerateConfig = field(default_factory=GenerateConfig)


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


COMMAND_SCHEMAS = {
    "data_generate": DataGenerateCommand,
    "data_prepare_clevrer": DataPrepareClevrerCommand,
    "data_stats": DataStatsCommand,
    "data_show": DataShowCommand,
}
DATA_SCHEMAS = {"clevrer_sim": ClevrerSimData, "clevrer": ClevrerData}


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
        cs.store(name=f"{name}_schema", node=schema)
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


def to_object(cfg: DictConfig):
    """The composed config as dataclasses (validation in their __post_init__ runs here)."""
    return OmegaConf.to_object(cfg)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    return split
