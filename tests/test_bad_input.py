"""Bad input gets an error that names it: training configs, checkpoints that do not fit,
slot stores of another K or D, untrusted files (checkpoints, HDF5 attributes)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import oracle_world
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from causaljepa import cli
from causaljepa.config import config_dir, preset_overrides, register_configs, to_object
from causaljepa.data.slot_store import SlotStore
from causaljepa.data.store import StoreError, VideoStore
from causaljepa.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from causaljepa.training.predictor import check_same_encoder, load_predictor

REPO = Path(__file__).resolve().parents[1]


def _compose(name: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=preset_overrides(name, ["out=x", *overrides]))


@pytest.mark.parametrize(
    ("command", "override", "named", "reason"),
    [
        ("train", "predictor.depth=3", "depth", "Key 'depth' not in 'PredictorConfig'"),
        ("train", "train.steps=many", "steps", "'many' of type 'str' could not be converted to Integer"),
        ("train", "masking.max_objcts=2", "max_objcts", "Key 'max_objcts' not in 'MaskConfig'"),
        ("train", "windows.stride=1.5", "stride", "Value '1.5' of type 'float' could not be converted"),
        ("train_encoder", "encoder.num_slot=5", "num_slot", "Key 'num_slot' not in 'EncoderConfig'"),
        ("train_encoder", "train.lr=fast", "lr", "'fast' of type 'str' could not be converted to Float"),
        ("train_encoder", "trainer.compile=maybe", "compile", "Value 'maybe' is not a valid bool"),
    ],
)
def test_training_configs_reject_unknown_keys_and_wrong_types(command, override, named, reason):
    with pytest.raises(ConfigCompositionException, match=named) as e:
        _compose(command, [override])
    assert reason in str(e.value.__cause__)  # Hydra's message names the key, its cause says what is wrong


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("train", "trainer.precision=fp8", "trainer.precision must be one of"),
        ("train", "masking.strategy=random", "masking.strategy must be one of"),
        ("train", "train.batch_size=0", "train.batch_size must be >= 1"),
        ("train_encoder", "trainer.device=tpu", "trainer.device must be one of"),
        ("train_encoder", "clips.length=0", "clips.length must be >= 1"),
    ],
)
def test_training_configs_reject_bad_values(command, override, message):
    with pytest.raises(ValueError, match=message):
        to_object(_compose(command, [override]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Smoke data, oracle slots and a smoke predictor (<base>/run)."""
    base = tmp_path_factory.mktemp("bad")
    oracle_world(base)
    return base


def _slot_store_like(src: Path, dst: Path, K: int | None = None, D: int | None = None) -> Path:
    """A copy of a slot store with its slots cut to K slots of width D."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        slots = f["slots"][:]
        K, D = K or slots.shape[2], D or slots.shape[3]
        del f["slots"]
        f["slots"] = np.ascontiguousarray(slots[:, :, :K, :D])
        for name in ("slot_object", "cf_slots", "segments"):
            if name in f:
                del f[name]
    return dst


def test_a_slot_store_of_another_K_or_D_is_an_error(trained, tmp_path):
    _, ckpt = load_predictor(trained / "run" / "predictor.pt")
    good = trained / "ds" / "oracle_slots" / "validation.h5"
    with SlotStore(good) as s:
        K, D = s.num_slots, s.slot_dim
        check_same_encoder(s, ckpt)  # the store it was trained on the kind of: fine
    narrow = _slot_store_like(good, tmp_path / "narrow.h5", D=D - 1)
    with SlotStore(narrow) as s, pytest.raises(ValueError, match=rf"K={K} slots of width D={D - 1}.*D={D}"):
        check_same_encoder(s, ckpt)
    fewer = _slot_store_like(good, tmp_path / "fewer.h5", K=K - 1)
    with SlotStore(fewer) as s, pytest.raises(ValueError, match=rf"holds K={K - 1} slots.*trained on K={K}"):
        check_same_encoder(s, ckpt)


def _fails(argv: list[str], capsys) -> str:
    """Run a cjepa command that must fail; Hydra prints the error and exits with 1."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 1
    return capsys.readouterr().err


def test_the_rollout_command_refuses_a_slot_store_of_another_width(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other_slots"
    other.mkdir()
    _slot_store_like(trained / "ds" / "oracle_slots" / "validation.h5", other / "validation.h5", D=3)
    err = _fails(["rollout", f"checkpoint={trained / 'run' / 'predictor.pt'}", f"slots={other}"], capsys)
    assert re.search(r"validation\.h5 holds K=\d+ slots of width D=3; the predictor was trained on", err)


def test_a_checkpoint_whose_weights_do_not_fit_its_config(trained, tmp_path):
    ckpt = load_checkpoint(trained / "run" / "predictor.pt", "predictor")
    weights = dict(ckpt["model"])
    name = next(iter(weights))
    weights[name] = weights[name][..., :1].clone()  # a tensor of another shape
    bad = save_checkpoint(tmp_path / "bad.pt", **{**ckpt, "model": weights})
    with pytest.raises(CheckpointError, match=r"bad\.pt: its weights do not fit the predictor") as e:
        load_predictor(bad)
    assert f"size mismatch for {name}" in str(e.value)  # which tensor, and its shapes


def test_a_checkpoint_of_another_model_config_does_not_resume(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    last = trained / "run" / "checkpoints" / "last.pt"
    argv = ["train", "preset=smoke", "slots=oracle", f"data.root={trained / 'ds'}", f"out={tmp_path / 'r'}"]
    err = _fails([*argv, "predictor.dim=32", f"resume={last}"], capsys)
    assert "was trained with another model config; (checkpoint, now): {'dim': (16, 32)}" in err
    err = _fails(
        ["train-encoder", "preset=smoke", f"data.root={trained / 'ds'}", "out=e", f"resume={last}"], capsys
    )
    assert "holds a 'predictor' model, expected a 'encoder' checkpoint" in err


def test_hdf5_attributes_are_parsed_as_json_never_evaluated(trained, tmp_path):
    marker = tmp_path / "evaluated"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    slots = tmp_path / "slots.h5"
    shutil.copy(trained / "ds" / "oracle_slots" / "validation.h5", slots)
    with h5py.File(slots, "a") as f:
        f.attrs["encoder_config"] = code
    with pytest.raises(StoreError, match=r"slots\.h5: an attribute is not valid JSON"):
        SlotStore(slots)
    video = tmp_path / "video.h5"
    shutil.copy(trained / "ds" / "validation.h5", video)
    with h5py.File(video, "a") as f:
        f.attrs["generator_config"] = code
    with pytest.raises(StoreError, match=r"video\.h5: an attribute is not valid JSON"):
        VideoStore(video)
    assert not marker.exists()
    with h5py.File(slots, "a") as f:
        del f.attrs["encoder_hash"]
    with pytest.raises(StoreError, match=r"attributes \['encoder_hash'\] are missing"):
        SlotStore(slots)


def test_every_torch_load_is_weights_only_and_nothing_is_evaluated():
    """A static guard over the package, the scripts and the benchmarks: a checkpoint is data."""
    sources = [p for d in ("causaljepa", "eval", "benchmarks") for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 20
    for path in sources:
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), f"{path.name} calls eval or exec"
        assert not re.search(r"^\s*import pickle|pickle\.load", text, re.M), f"{path.name} unpickles"
