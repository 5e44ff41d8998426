"""Longer end-to-end runs (pytest -m slow): CLEVRER's real resolution and video length."""

from __future__ import annotations

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
