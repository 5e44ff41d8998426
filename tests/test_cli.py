"""The `cjepa` command end to end on tiny data, and every primary config composing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from causaljepa import cli
from causaljepa.config import (
    COMMAND_SCHEMAS,
    ClevrerSimData,
    config_dir,
    preset_overrides,
    register_configs,
    to_object,
)
from causaljepa.data.questions import load_questions
from causaljepa.data.store import VideoStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Hydra writes its run folder under ./runs


def _compose(name: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=preset_overrides(name, overrides))


@pytest.mark.parametrize("name", sorted(COMMAND_SCHEMAS))
def test_every_primary_config_composes(name):
    required = {  # keys without a default (??? in the YAML), and Hydra's run dir outside a run
        "data_prepare_clevrer": ["source=somewhere"],
        "train_encoder": ["out=somewhere"],
        "extract_slots": ["checkpoint=somewhere"],
        "show_slots": ["checkpoint=somewhere"],
        "train": ["out=somewhere"],
        "rollout": ["checkpoint=somewhere"],
        "intervene": ["checkpoint=somewhere"],
        "eval_clevrer": ["checkpoint=somewhere"],
        "eval_ablation": ["out=somewhere"],
        "eval_influence": ["checkpoints=[somewhere]"],
    }
    cfg = to_object(_compose(name, required.get(name, [])))
    assert isinstance(cfg, COMMAND_SCHEMAS[name])


@pytest.mark.parametrize("preset", ["smoke", "quick", "full"])
def test_presets(preset):
    cfg = to_object(_compose("data_generate", [f"preset={preset}"]))
    assert isinstance(cfg.data, ClevrerSimData)
    want = {"smoke": 4, "quick": 200, "full": 5000}[preset]
    assert cfg.data.generator.videos["train"] == want


def test_seed_reaches_the_generator():
    cfg = to_object(_compose("data_generate", ["seed=7"]))
    assert cfg.data.generator.seed == 7


def test_misspelt_key_is_an_error():
    with pytest.raises(ConfigCompositionException, match="heigth"):
        _compose("data_generate", ["data.generator.heigth=32"])
    with pytest.raises(ConfigCompositionException, match="min_objcts"):
        _compose("data_generate", ["data.generator.scene.min_objcts=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigCompositionException, match="height"):
        _compose("data_generate", ["data.generator.height=tall"])


def test_invalid_value_is_an_error():
    with pytest.raises(ValueError, match="min_objects"):
        to_object(_compose("data_generate", ["data.generator.scene.min_objects=9"]))


def test_unknown_command():
    with pytest.raises(SystemExit, match="unknown command 'data generat'"):
        cli.main(["data", "generat"])


def test_help_lists_commands(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for words in cli.COMMANDS:
        assert "cjepa " + " ".join(words) in out


def test_generate_stats_show(tmp_path, capsys):
    root = tmp_path / "ds"
    cli.main(["data", "generate", "preset=smoke", f"data.root={root}", "data.generator.counterfactuals=true"])
    out = capsys.readouterr().out
    assert f"train: {root / 'train.h5'}" in out and "cjepa data stats" in out
    for split, n in (("train", 4), ("validation", 2), ("test", 2)):
        with VideoStore(root / f"{split}.h5") as s:
            assert len(s) == n and s.num_frames == 32 and s.has("cf_frames")
        assert len(load_questions(root / "questions" / f"{split}.json")) == n
    assert list(Path("runs/data_generate").iterdir()), "Hydra's run folder records the composed config"

    cli.main(["data", "stats", f"data.root={root}", "split=validation"])
    out = capsys.readouterr().out
    assert "| collisions |" in out and "| counterfactual |" in out
    stats = json.loads((root / "stats" / "validation.json").read_text())
    assert stats["videos"] == 2 and stats["questions"]["videos"] == 2
    assert (root / "stats" / "validation.png").read_bytes()[:8] == PNG_MAGIC

    cli.main(["data", "show", f"data.root={root}", "video=1", "frames=4", "counterfactual=0"])
    png = root / "show" / "train_00001.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


def test_show_without_counterfactual_videos_fails(tmp_path, capsys):
    root = tmp_path / "ds"
    cli.main(["data", "generate", "preset=smoke", f"data.root={root}", "data.generator.videos={train: 1}"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # Hydra reports the error and exits 1
        cli.main(["data", "show", f"data.root={root}", "counterfactual=0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "train.h5: no counterfactual videos in this store" in err
    assert "counterfactuals=true" in err


def test_clevrer_layout_then_prepare(tmp_path):
    root = tmp_path / "sim"
    cli.main(
        [
            "data",
            "generate",
            "preset=smoke",
            f"data.root={root}",
            "layout=clevrer",
            "data.generator.videos={train: 2, validation: 1, test: 1}",
        ]
    )
    layout = root / "clevrer_layout"
    assert sorted(p.name for p in layout.rglob("*.mp4")) == [
        "video_00000.mp4",
        "video_00001.mp4",
        "video_10000.mp4",
        "video_15000.mp4",
    ]
    out = tmp_path / "real"
    cli.main(["data", "prepare-clevrer", f"source={layout}", f"data.root={out}", "height=32", "width=48"])
    with VideoStore(out / "train.h5") as s:
        assert (len(s), s.height, s.width, s.num_frames, s.source) == (2, 32, 48, 24, "clevrer")
    cli.main(
        [
            "data",
            "prepare-clevrer",
            f"source={layout}",
            f"data.root={out}",
            "splits=[test]",
            "require_annotations=false",
        ]
    )
    with VideoStore(out / "test.h5") as s:
        assert len(s) == 1 and not s.has("states")
