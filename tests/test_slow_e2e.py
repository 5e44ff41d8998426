"""Longer end-to-end runs (pytest -m slow): CLEVRER's real resolution and video length."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from causaljepa import cli
from causaljepa.data.store import VideoStore


@pytest.mark.slow
def test_full_size_layout_round_trip(tmp_path, monkeypatch):
    """480x320, 128 + 32 frames, with counterfactual videos: store, mp4 layout, prepare back."""
    monkeypatch.chdir(tmp_path)
    sim = tmp_path / "sim"
    common = [
        f"data.root={sim}",
        "data.generator.height=320",
        "data.generator.width=480",
        "data.generator.videos={train: 2, validation: 1, test: 1}",
    ]
    cli.main(["data", "generate", *common, "data.generator.counterfactuals=true"])
    cli.main(["data", "generate", *common, "layout=clevrer"])
    real = tmp_path / "real"
    cli.main(
        [
            "data",
            "prepare-clevrer",
            f"source={sim / 'clevrer_layout'}",
            f"data.root={real}",
            "height=320",
            "width=480",
            "splits=[train]",
        ]
    )
    with VideoStore(sim / "train.h5") as s, VideoStore(real / "train.h5") as r:
        assert s.read("frames", 0).shape == (160, 320, 480, 3)
        assert s.read("cf_frames", 0).shape == (6, 160, 320, 480, 3)
        assert r.num_frames == 128 and (r.height, r.width) == (320, 480)
        for i in range(2):
            sim_frames = s.read("frames", i, 0, 128).astype(np.int16)
            err = np.abs(r.read("frames", i).astype(np.int16) - sim_frames).mean()
            assert err < 3.0, f"video {i}: mp4 round trip differs by {err:.2f} grey levels"
            np.testing.assert_array_equal(r.read("in_view", i), s.read("in_view", i, 0, 128))


@pytest.mark.slow
def test_main_job_end_to_end_and_rerun(tmp_path, monkeypatch, capsys):
    """cjepa main at a tiny budget: every stage runs, report.md holds every table and names PNGs
    that exist, and a rerun finds every stage done."""
    import json
    import re

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "main"
    argv = [
        "main",
        f"out={out}",
        "data.generator.videos={train: 4, validation: 3}",
        "cf_videos=1",
        "encoder_train.steps=2",
        "encoder_train.warmup_steps=1",
        "encoder_train.val_every=2",
        "clips.val_videos=1",
        "predictor_train.steps=2",
        "reader_train.steps=2",
        "trainer.progress=false",
        "trainer.threads=2",  # the predictors, then the QA stages, at once with 1 thread each
    ]
    cli.main(argv)
    report = (out / "report.md").read_text()
    for heading in ("## Encoder", "## Question answering (validation)", "## Latent interventions"):
        assert heading in report
    assert "object masking, protocol (b)" in report and "no masking, protocol (a)" in report
    for png in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (out / png).stat().st_size > 1000, png
    times = json.loads((out / "timings.json").read_text())
    stages = {"data", "encoder", "slots", "predictor_object", "predictor_none", "qa_object", "qa_none",
              "interventions"}  # fmt: skip
    assert set(times) == stages | {"predictors (parallel)", "qa (parallel)"}
    assert "predictor_object and predictor_none at once" in report
    capsys.readouterr()
    cli.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == len(stages)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler")
def test_compiled_training_step_gives_the_eager_losses(tmp_path, monkeypatch):
    """trainer.compile=true (torch.compile of the training step): the same losses as eager."""
    monkeypatch.chdir(tmp_path)
    cli.main(["data", "generate", "preset=smoke", "data.root=ds"])
    cli.main(["oracle-slots", "data.root=ds"])
    common = ["train", "preset=smoke", "slots=oracle", "data.root=ds", "trainer.precision=fp32"]
    cli.main([*common, "out=compiled", "trainer.compile=true", "trainer.progress=false"])
    cli.main([*common, "out=eager", "trainer.progress=false"])

    def losses(run: str) -> list[float]:
        with open(tmp_path / run / "metrics.csv", newline="") as f:
            return [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/loss"]

    assert len(losses("eager")) == 4
    np.testing.assert_allclose(losses("compiled"), losses("eager"), rtol=1e-5)
