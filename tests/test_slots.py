"""Clips, the slot store, slot extraction, and the train-encoder / extract-slots / show-slots commands."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli
from hydra import compose, initialize_config_dir

from causaljepa import cli
from causaljepa.config import (
    ExtractSlotsCommand,
    ShowSlotsCommand,
    TrainEncoderCommand,
    config_dir,
    preset_overrides,
    register_configs,
    to_object,
)
from causaljepa.data.clips import ClipSampler
from causaljepa.data.slot_store import SlotStore, _frame_noise, extract_slots, match_slots_to_objects
from causaljepa.data.store import StoreError, StoreLayout, VideoStore, VideoStoreWriter
from causaljepa.models.savi import EncoderConfig, SAVi
from causaljepa.training.checkpoint import load_checkpoint
from causaljepa.training.encoder import load_encoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLITS = {"train": 4, "validation": 2, "test": 2}  # the smoke dataset: 32 frames at 64x64
SMOKE_ENCODER = {"resolution": 16, "num_slots": 3, "slot_dim": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """The models are tiny (see conftest.one_thread)."""


def _write_store(path: Path, videos: int = 2, frames: int = 6, size: int = 24, masks=None) -> Path:
    """A small video store: random frames, and instance masks if ``masks`` (N, T, H, W) is given."""
    layout = StoreLayout(
        num_videos=videos, num_frames=frames, height=size, width=size, masks=masks is not None
    )
    rng = np.random.default_rng(0)
    attrs = {"source": "test", "fps": 25.0, "observed_frames": frames - 2}
    with VideoStoreWriter(path, layout, attrs) as w:
        for i in range(videos):
            record = {
                "frames": rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
                "video_ids": f"video_{i:05d}",
                "scene_index": i,
                "annotations": "",
            }
            if masks is not None:
                record["masks"] = masks[i]
            w.write(i, record)
    return path


def _tiny_model() -> SAVi:
    """The smoke preset's encoder, untrained."""
    torch.manual_seed(0)
    sizes = {"cnn_channels": 8, "cnn_layers": 2, "mlp_hidden": 16, "predictor_heads": 2}
    return SAVi(EncoderConfig(**SMOKE_ENCODER, **sizes, predictor_hidden=16, decoder_hidden=16))


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, Path]:
    """Data, a smoke-trained encoder and its slot stores, made once through the CLI."""
    base = tmp_path_factory.mktemp("slots")
    root, run = base / "ds", base / "run"
    commands = [
        ["data", "generate", "preset=smoke", f"data.root={root}"],
        ["train-encoder", "preset=smoke", f"data.root={root}", f"out={run}", "trainer.progress=false"],
        ["extract-slots", f"checkpoint={run / 'encoder.pt'}", f"data.root={root}"],
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)  # Hydra's run folders go under ./runs
        for argv in commands:
            run_cli(argv)
    return {"base": base, "root": root, "run": run, "encoder": run / "encoder.pt", "slots": root / "slots"}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# clips -----------------------------------------------------------------------------------------


def test_clip_sampler(smoke):
    with VideoStore(smoke["root"] / "train.h5") as store:
        sampler = ClipSampler(store, length=3, stride=2, with_masks=True)
        assert sampler.span == 5
        frames, masks = sampler.sample(5, torch.Generator().manual_seed(0))
        assert frames.shape == (5, 3, 64, 64, 3) and frames.dtype == torch.uint8
        assert masks.shape == (5, 3, 64, 64) and masks.dtype == torch.uint8
        # every clip is a window of one video, frames and masks from the same place
        windows = {
            (v, s): sampler.read(v, s) for v in range(store.num_videos) for s in range(store.num_frames - 4)
        }
        for f, m in zip(frames, masks, strict=True):
            hits = [k for k, (wf, _) in windows.items() if torch.equal(wf, f)]
            assert len(hits) == 1, "a clip is not a window of the store"
            assert torch.equal(windows[hits[0]][1], m)
        again = sampler.sample(5, torch.Generator().manual_seed(0))
        assert torch.equal(again[0], frames) and torch.equal(again[1], masks)
        other = sampler.sample(5, torch.Generator().manual_seed(1))
        assert not torch.equal(other[0], frames)
        # a generator that goes on draws other clips
        g = torch.Generator().manual_seed(0)
        first, second = sampler.sample(5, g)[0], sampler.sample(5, g)[0]
        assert torch.equal(first, frames) and not torch.equal(second, frames)
        no_masks = ClipSampler(store, length=32).sample(2, torch.Generator().manual_seed(0))
        assert no_masks[0].shape == (2, 32, 64, 64, 3) and no_masks[1] is None  # the whole video fits


def test_clip_sampler_errors(smoke, tmp_path):
    with VideoStore(smoke["root"] / "train.h5") as store:
        with pytest.raises(ValueError, match=r"train\.h5: clips of 33 frames at stride 1 span 33 frames"):
            ClipSampler(store, length=33)
        with pytest.raises(ValueError, match="clips of 12 frames at stride 3 span 34 frames, longer"):
            ClipSampler(store, length=12, stride=3)
        with pytest.raises(ValueError, match=r"clip length \(0\) and stride \(1\) must be >= 1"):
            ClipSampler(store, length=0)
        with pytest.raises(ValueError, match=r"clip length \(2\) and stride \(0\) must be >= 1"):
            ClipSampler(store, length=2, stride=0)
    plain = _write_store(tmp_path / "plain.h5")
    with VideoStore(plain) as store:
        with pytest.raises(ValueError, match=r"plain\.h5: has no instance masks"):
            ClipSampler(store, length=2, with_masks=True)
        frames, masks = ClipSampler(store, length=2).sample(3, torch.Generator().manual_seed(0))
        assert frames.shape == (3, 2, 24, 24, 3) and masks is None


# slot-object matching ------------------------------------------------------------------------------


def test_match_slots_to_objects():
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    masks[0, :, :2, :2] = 2  # object id 2 (store index 1) top left
    masks[0, :, 2:, 2:] = 1  # object id 1 (store index 0) bottom right
    seg = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    # frame 0: slot 0 = object 2 plus background, slot 1 = background only,
    #          slot 2 = 3 pixels of object 1 and 1 of object 2, slot 3 = nothing
    seg[0, 0] = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 1], [0, 0, 2, 2], [1, 1, 2, 0]])
    # frame 1: slot 3 takes object 2, slot 0 object 1, slots 1 and 2 the background
    seg[0, 1] = torch.tensor([[3, 3, 1, 1], [3, 3, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    got = match_slots_to_objects(seg, masks, num_slots=4)
    assert got.dtype == torch.int8 and got.shape == (1, 2, 4)
    assert got.tolist() == [[[1, -1, 0, -1], [0, -1, -1, 1]]]
    # a second video in the batch is matched on its own
    both = match_slots_to_objects(torch.cat([seg, seg.flip(1)]), torch.cat([masks, masks]), num_slots=4)
    assert both[1].tolist() == [[0, -1, -1, 1], [1, -1, 0, -1]]


def test_match_slots_without_objects():
    """Frames where no object is visible: every slot covers no object (-1)."""
    seg = torch.tensor([[[[0, 1], [2, 2]]]])
    masks = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    assert match_slots_to_objects(seg, masks, num_slots=3).tolist() == [[[-1, -1, -1]]]


# the CLI end to end ----------------------------------------------------------------------------------


def test_train_encoder_command(smoke):
    run = smoke["run"]
    for name in ("encoder.pt", "checkpoints/last.pt", "metrics.csv", "val.json"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "encoder.pt", "encoder")
    assert ckpt["step"] == 4
    assert {k: ckpt["model_config"][k] for k in SMOKE_ENCODER} == SMOKE_ENCODER
    rows = _rows(run)
    assert sorted(int(r["step"]) for r in rows if r["name"] == "train/loss") == [1, 2, 3, 4]
    assert sorted(int(r["step"]) for r in rows if r["name"] == "val/fg_ari") == [2, 4]
    assert all(math.isfinite(float(r["value"])) for r in rows if r["name"] == "train/loss")
    val = json.loads((run / "val.json").read_text())
    assert set(val) == {"fg_ari", "frame_fg_ari", "mbo", "mse"} and val == ckpt["extra"]["val"]
    assert -1 <= val["fg_ari"] <= 1 and 0 <= val["mbo"] <= 1 and val["mse"] > 0
    last_val = [float(r["value"]) for r in rows if r["name"] == "val/fg_ari" and r["step"] == "4"]
    assert last_val == [pytest.approx(val["fg_ari"])]


def test_train_encoder_refuses_to_overwrite_a_run(smoke, in_tmp, capsys):
    run = smoke["run"]
    before = _sha256(run / "encoder.pt")
    with pytest.raises(SystemExit) as exit_info:  # Hydra reports the error and exits 1
        cli.main(["train-encoder", "preset=smoke", f"data.root={smoke['root']}", f"out={run}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{run} already holds a run" in err and "resume=" in err
    assert _sha256(run / "encoder.pt") == before


def test_train_encoder_command_resumes(smoke, in_tmp, capsys):
    run = in_tmp / "run"
    shutil.copytree(smoke["run"], run)
    last = run / "checkpoints" / "last.pt"
    cli.main(
        [
            *("train-encoder", "preset=smoke", f"data.root={smoke['root']}", f"out={run}"),
            *(f"resume={last}", "train.steps=6", "trainer.progress=false"),
        ]
    )
    assert f"resumed from {last} at step 4" in capsys.readouterr().out
    assert load_checkpoint(run / "encoder.pt", "encoder")["step"] == 6
    rows = _rows(run)
    keys = Counter((r["step"], r["name"]) for r in rows)
    assert max(keys.values()) == 1
    assert sorted(int(r["step"]) for r in rows if r["name"] == "train/loss") == [1, 2, 3, 4, 5, 6]
    # the first four steps are those of the original run
    old = {(r["step"], r["name"]): r["value"] for r in _rows(smoke["run"]) if r["name"] == "train/loss"}
    assert all(dict(((r["step"], r["name"]), r["value"]) for r in rows)[k] == v for k, v in old.items())


def test_extract_slots_command(smoke):
    slots, digest = smoke["slots"], _sha256(smoke["encoder"])
    model_config = load_checkpoint(smoke["encoder"], "encoder")["model_config"]
    K, D, R = model_config["num_slots"], model_config["slot_dim"], model_config["resolution"]
    report = json.loads((slots / "metrics.json").read_text())
    assert report["sha256"] == digest and report["encoder"] == str(smoke["encoder"])
    assert set(report) == {"encoder", "sha256", *SPLITS}
    for split, n in SPLITS.items():
        with SlotStore(slots / f"{split}.h5") as s, VideoStore(smoke["root"] / f"{split}.h5") as vs:
            assert len(s) == n
            assert (s.num_videos, s.num_frames, s.num_slots, s.slot_dim) == (n, 32, K, D)
            assert s.f["slots"].shape == (n, 32, K, D) and s.f["slots"].dtype == np.float32
            assert s.f["segments"].shape == (n, 32, R, R) and s.f["segments"][:].max() < K
            assert s.f["slot_object"].shape == (n, 32, K) and s.f["slot_object"].dtype == np.int8
            obj = s.f["slot_object"][:]
            assert obj.min() >= -1 and obj.max() < vs.max_objects and (obj >= 0).any()
            assert s.encoder_hash == digest and s.encoder_config == model_config
            assert s.video_ids == vs.video_ids
            assert (s.observed_frames, s.fps) == (vs.observed_frames, vs.fps) == (24, 25.0)
            assert s.f.attrs["video_store"] == f"{split}.h5"
            assert np.isfinite(s.f["slots"][:]).all()
            np.testing.assert_array_equal(s.read("slots", 1, 2, 9, 3), s.f["slots"][1, 2:9:3])
            assert s.metrics == report[split]
    val = report["validation"]
    for name in ("fg_ari", "frame_fg_ari"):  # ARI is below 0 for a worse-than-chance split
        assert -1 <= val[name] <= 1, (name, val[name])
    for name in ("mbo", "temporal_consistency"):
        assert 0 <= val[name] <= 1, (name, val[name])
    assert val["videos"] == 2 and val["frames_per_video"] == 32 and val["objects_counted"] > 0


def test_consistency_diagnostic_counts_the_stores_slot_changes(smoke):
    """eval/encoder_diagnostics.py consistency on a real slot store: its consistency (derived
    from the slot changes) is temporal_consistency's, and its change counts slot_switches'."""
    import subprocess
    import sys

    import torch.nn.functional as F

    from causaljepa.evaluation.object_discovery import slot_switches, temporal_consistency

    slots, store = smoke["slots"] / "validation.h5", smoke["root"] / "validation.h5"
    script = Path(__file__).resolve().parents[1] / "eval" / "encoder_diagnostics.py"
    cmd = [sys.executable, str(script), "consistency", "--slots", str(slots), "--store", str(store),
           "--min-pixels", "1", "3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [(x["diagnostic"], x["min_pixels"]) for x in lines] == [
        ("temporal_consistency", 1), ("slot_switches", 1), ("temporal_consistency", 3), ("slot_switches", 3)
    ]  # fmt: skip
    with h5py.File(slots, "r") as f:
        seg = torch.from_numpy(f["segments"][:]).long()
    with VideoStore(store) as vs:
        masks = torch.stack([torch.from_numpy(vs.read("masks", i, 0, vs.num_frames)) for i in range(len(vs))])
    seg = F.interpolate(seg.float(), size=masks.shape[-2:], mode="nearest").long()
    for tc, sw in (lines[:2], lines[2:]):
        c, n = temporal_consistency(masks.long(), seg, min_pixels=tc["min_pixels"])
        assert (tc["consistent"], tc["objects"]) == (c, n) and n > 0
        switches, returns, _ = slot_switches(masks.long(), seg, min_pixels=sw["min_pixels"])
        assert sw["objects"] == n and sw["switches"] == int(switches.sum())
        assert sw["per_object"] == pytest.approx(int(switches.sum()) / n)
        if sw["switches"]:
            assert sw["returning"] == pytest.approx(int(returns.sum()) / int(switches.sum()))
        else:
            assert math.isnan(sw["returning"])
    # errors --slots: object_errors of the same segments
    from causaljepa.evaluation.object_discovery import object_errors

    cmd = [
        sys.executable,
        str(script),
        "errors",
        "--slots",
        str(slots),
        "--store",
        str(store),
        "--min-pixels",
        "2",
    ]
    line = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    want = object_errors(masks.long(), seg, min_pixels=2)
    assert want["objects"] > 0 and {k: line[k] for k in want} == want
    bad = subprocess.run([sys.executable, str(script), "errors"], capture_output=True, text=True)
    assert bad.returncode != 0 and "one of the arguments --checkpoint --slots is required" in bad.stderr


def test_extracted_slots_are_the_encoders(smoke):
    """The store holds what the encoder gives over each whole video from the fixed initial slots."""
    model, _ = load_encoder(smoke["encoder"])
    with VideoStore(smoke["root"] / "validation.h5") as vs:
        frames = torch.stack([torch.from_numpy(vs.read("frames", i)) for i in range(2)])
    init = model.corrector.init_slots(2, model.cfg.num_slots, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        out = model(frames, initial_slots=init)
    with SlotStore(smoke["slots"] / "validation.h5") as s:
        np.testing.assert_allclose(s.f["slots"][:], out.slots.numpy(), atol=1e-5, rtol=0)
        same = s.f["segments"][:] == out.alpha.argmax(dim=2).numpy()
        assert same.mean() > 0.999


def test_show_slots_command(smoke, in_tmp, capsys):
    cli.main(["show-slots", f"checkpoint={smoke['encoder']}", f"data.root={smoke['root']}"])
    png = smoke["run"] / "show_slots_validation_00000.png"
    assert f"written: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000
    out = in_tmp / "pictures" / "s.png"
    cli.main(
        [
            *("show-slots", f"checkpoint={smoke['encoder']}", f"data.root={smoke['root']}"),
            *("split=test", "video=1", "frames=3", f"out={out}"),
        ]
    )
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.png"]


def test_show_slots_errors(smoke, in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["show-slots", f"checkpoint={smoke['encoder']}", f"data.root={smoke['root']}", "video=2"])
    assert exit_info.value.code == 1
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["show-slots", f"checkpoint={in_tmp / 'none.pt'}", f"data.root={smoke['root']}"])
    assert exit_info.value.code == 1
    assert f"checkpoint {in_tmp / 'none.pt'} does not exist" in capsys.readouterr().err
    # a picture needs a name whose suffix is a format (matplotlib reads the format from it)
    args = ["show-slots", f"checkpoint={smoke['encoder']}", f"data.root={smoke['root']}"]
    for out, said in ((in_tmp / "pictures", "a name without a suffix"), (in_tmp / "s.h5", "'.h5'")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*args, f"out={out}"])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert f"out={out}: a figure is written to a file whose name ends in one of .png" in err
        assert said in err
        assert not out.exists() and not list(in_tmp.glob("*.partial*"))


def test_extract_slots_command_errors(smoke, in_tmp, capsys):
    root = in_tmp / "ds"
    root.mkdir()
    shutil.copy(smoke["root"] / "validation.h5", root / "validation.h5")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["extract-slots", f"checkpoint={smoke['encoder']}", f"data.root={root}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{root / 'train.h5'} does not exist" in err and "names a split with no store" in err
    assert not (root / "slots").exists(), "nothing is written when a split is missing"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["extract-slots", f"checkpoint={smoke['encoder']}", f"data.root={root}", "splits=[valid]"])
    assert exit_info.value.code == 1
    assert "split 'valid' is not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["extract-slots", f"checkpoint={smoke['run'] / 'metrics.csv'}", f"data.root={root}"])
    assert exit_info.value.code == 1
    assert "metrics.csv: not a readable checkpoint" in capsys.readouterr().err


def test_extract_slots_command_without_masks(smoke, in_tmp, capsys):
    root = in_tmp / "plain"
    _write_store(root / "train.h5")
    out = in_tmp / "slots_out"
    cli.main(
        [
            "extract-slots",
            f"checkpoint={smoke['encoder']}",
            f"data.root={root}",
            "splits=[train]",
            f"out={out}",
        ]
    )
    assert "(no masks: no metrics)" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["train"] == {}
    with SlotStore(out / "train.h5") as s:
        assert s.f["slots"].shape == (2, 6, 3, 16) and s.metrics == {} and not s.has("slot_object")


# extraction (the library) ----------------------------------------------------------------------------


def test_extraction_is_deterministic(smoke, tmp_path):
    model, _ = load_encoder(smoke["encoder"])
    store = smoke["root"] / "validation.h5"
    a = extract_slots(model, store, tmp_path / "a.h5", encoder_hash="h", seed=1234, progress=False)
    b = extract_slots(model, store, tmp_path / "b.h5", encoder_hash="h", seed=1234, progress=False)
    assert a == b
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        for name in ("slots", "segments", "slot_object"):
            np.testing.assert_array_equal(fa[name][:], fb[name][:])
    # and the same as the command's (seed 0 + 1234)
    with SlotStore(smoke["slots"] / "validation.h5") as s, h5py.File(tmp_path / "a.h5") as fa:
        np.testing.assert_array_equal(s.f["slots"][:], fa["slots"][:])
        assert s.metrics == a
    other = extract_slots(model, store, tmp_path / "c.h5", encoder_hash="h", seed=99, progress=False)
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "c.h5") as fc:
        assert not np.array_equal(fa["slots"][:], fc["slots"][:]), "the seed draws the initial slots"
    assert set(other) == set(a)


@pytest.mark.parametrize("slot_noise", [0.0, 0.1])
def test_extraction_chunks_and_batches_do_not_change_the_slots(smoke, tmp_path, slot_noise):
    """With slot_noise, the frames' noise too is the same whatever the batch and the chunks."""
    model, _ = load_encoder(smoke["encoder"])
    model.cfg = replace(model.cfg, slot_noise=slot_noise)
    store = smoke["root"] / "validation.h5"
    whole = extract_slots(model, store, tmp_path / "whole.h5", encoder_hash="h", progress=False)
    parts = extract_slots(
        model, store, tmp_path / "parts.h5", encoder_hash="h", chunk=5, batch_size=1, progress=False
    )
    with h5py.File(tmp_path / "whole.h5") as fw, h5py.File(tmp_path / "parts.h5") as fp:
        np.testing.assert_allclose(fp["slots"][:], fw["slots"][:], atol=1e-5, rtol=0)
        same = fp["segments"][:] == fw["segments"][:]
    # A segment is the argmax of the alpha masks, and a smoke-trained encoder has near-empty
    # slots that are copies of one another (README, Encoder): between them the argmax is a tie
    # that the last bits of the products break, and those differ with the batch's size. Where
    # the argmax is decided, chunks and batches must not change it.
    with VideoStore(store) as vs:
        frames = torch.stack([torch.from_numpy(vs.read("frames", i)) for i in range(vs.num_videos)])
    init = model.corrector.init_slots(len(frames), model.cfg.num_slots, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        noise = _frame_noise(1234, list(range(len(frames))), (frames.shape[1], *init.shape[1:]))
        out = model(frames, initial_slots=init, refresh_noise=noise if slot_noise else None)
        top = out.alpha.float().topk(2, dim=2).values  # (B, T, 2, R, R)
    decided = (top[:, :, 0] - top[:, :, 1] > 1e-4).numpy()
    assert decided.mean() > 0.3, decided.mean()  # enough pixels for the test to mean something
    assert same[decided].mean() > 0.999, same[decided].mean()
    for name in ("fg_ari", "mbo", "temporal_consistency"):
        assert parts[name] == pytest.approx(whole[name], abs=0.01)


def test_extraction_errors_leave_no_file(smoke, tmp_path):
    model, _ = load_encoder(smoke["encoder"])
    out = tmp_path / "s.h5"
    with pytest.raises(ValueError, match=r"batch_size \(16\) and chunk \(0\) must be >= 1"):
        extract_slots(model, smoke["root"] / "test.h5", out, encoder_hash="h", chunk=0)
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        extract_slots(model, tmp_path / "nope.h5", out, encoder_hash="h", progress=False)
    # raised inside the writer, after the datasets were created: the partial file goes too
    with pytest.raises(StoreError, match="has no counterfactual videos"):
        extract_slots(
            model, smoke["root"] / "test.h5", out, encoder_hash="h", progress=False, counterfactuals=True
        )
    assert list(tmp_path.iterdir()) == []


def test_extraction_without_masks(tmp_path):
    store = _write_store(tmp_path / "plain.h5", videos=3, frames=5)
    model = _tiny_model()
    metrics = extract_slots(model, store, tmp_path / "slots.h5", encoder_hash="abc", chunk=2, progress=False)
    assert metrics == {}
    with SlotStore(tmp_path / "slots.h5") as s:
        assert s.f["slots"].shape == (3, 5, 3, 16) and s.f["segments"].shape == (3, 5, 16, 16)
        assert not s.has("slot_object") and s.metrics == {}
        assert s.encoder_hash == "abc" and s.observed_frames == 3 and s.fps == 25.0
        assert s.video_ids == ["video_00000", "video_00001", "video_00002"]
        assert np.isfinite(s.f["slots"][:]).all() and np.abs(s.f["slots"][:]).sum() > 0


def test_extraction_with_frames_without_objects(tmp_path):
    """A store with masks whose first frames show no object (objects not yet entered)."""
    masks = np.zeros((2, 6, 24, 24), np.uint8)
    masks[:, 3:, 4:10, 4:10] = 1
    masks[:, 4:, 14:20, 12:18] = 2
    store = _write_store(tmp_path / "late.h5", masks=masks)
    model = _tiny_model()
    metrics = extract_slots(model, store, tmp_path / "slots.h5", encoder_hash="abc", chunk=3, progress=False)
    assert metrics["videos"] == 2 and metrics["objects_counted"] == 4
    with SlotStore(tmp_path / "slots.h5") as s:
        obj = s.f["slot_object"][:]
        assert (obj[:, :3] == -1).all() and (obj[:, 3:] >= 0).any()


# the slot store's checks -----------------------------------------------------------------------------


def test_slot_store_rejects_other_files(smoke, tmp_path):
    video_store = smoke["root"] / "train.h5"
    with pytest.raises(StoreError, match=re.escape(f"{video_store}: not a slot store (attribute kind=None")):
        SlotStore(video_store)
    with pytest.raises(
        FileNotFoundError, match=r"missing\.h5 does not exist; write it with 'cjepa extract-slots'"
    ):
        SlotStore(tmp_path / "missing.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(StoreError, match=r"garbage\.h5: not a readable HDF5 file"):
        SlotStore(garbage)

    good = smoke["slots"] / "test.h5"
    old = tmp_path / "old.h5"
    shutil.copy(good, old)
    with h5py.File(old, "a") as f:
        f.attrs["schema_version"] = 7
    with pytest.raises(StoreError, match=r"old\.h5: schema_version 7, this causaljepa reads 1"):
        SlotStore(old)
    partial = tmp_path / "partial.h5"
    shutil.copy(good, partial)
    with h5py.File(partial, "a") as f:
        del f["video_ids"]
    with pytest.raises(StoreError, match=r"partial\.h5: required field 'video_ids' is missing"):
        SlotStore(partial)
    wrong = tmp_path / "wrong.h5"
    shutil.copy(good, wrong)
    with h5py.File(wrong, "a") as f:
        data = f["slots"][:]
        del f["slots"]
        f["slots"] = data.astype(np.float64)
    with pytest.raises(StoreError, match=r"wrong\.h5: field 'slots' is float64"):
        SlotStore(wrong)
    with SlotStore(good) as s, pytest.raises(IndexError, match=r"video index 2 out of range \[0, 2\)"):
        s.read("slots", 2)


# configs ----------------------------------------------------------------------------------------------


def _compose(name: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return to_object(compose(config_name=name, overrides=preset_overrides(name, overrides)))


@pytest.mark.parametrize(("preset", "resolution"), [("smoke", 16), ("quick", 32), ("full", 64)])
def test_train_encoder_presets_compose(preset, resolution):
    cfg = _compose("train_encoder", [f"preset={preset}", "out=somewhere"])
    assert isinstance(cfg, TrainEncoderCommand) and isinstance(cfg.encoder, EncoderConfig)
    assert cfg.encoder.resolution == resolution and cfg.resume is None
    if preset == "smoke":
        assert (cfg.train.steps, cfg.clips.length) == (4, 3)


def test_slot_commands_compose():
    cfg = _compose("extract_slots", ["checkpoint=e.pt"])
    assert isinstance(cfg, ExtractSlotsCommand) and cfg.splits == ["train", "validation", "test"]
    cfg = _compose("show_slots", ["checkpoint=e.pt", "video=3"])
    assert isinstance(cfg, ShowSlotsCommand) and cfg.video == 3
    with pytest.raises(ValueError, match="this command \\(show_slots\\) has no presets"):
        _compose("show_slots", ["checkpoint=e.pt", "preset=smoke"])


def test_extract_slots_benchmark_times_each_store_and_the_total(smoke):
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "extract_slots.py"
    store = smoke["root"] / "validation.h5"
    cmd = [sys.executable, str(script), "--checkpoint", str(smoke["encoder"]), "--store", str(store),
           "--store", str(store), "--precision", "fp32", "--threads", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [r["store"] for r in lines] == [str(store), str(store), "total"]
    frames = SPLITS["validation"] * 32
    assert [r["frames"] for r in lines] == [frames, frames, 2 * frames]
    assert all(r["seconds"] > 0 and r["frames_per_s"] > 0 for r in lines)
    assert lines[0]["fg_ari"] == lines[1]["fg_ari"] and 0 <= lines[0]["fg_ari"] <= 1  # the same slots
    assert lines[0]["config"]["precision"] == "fp32" and lines[0]["machine"]["fp32_matmul_gflops"] > 0
    missing = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(smoke["encoder"]), "--store", "nowhere.h5"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode != 0 and "nowhere.h5: no such video store" in missing.stderr
    # a store without counterfactual videos, asked to encode them: extract_slots' error, no file left
    no_cf = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(smoke["encoder"]), "--cf-store", str(store)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert no_cf.returncode != 0 and "has no counterfactual videos" in no_cf.stderr
