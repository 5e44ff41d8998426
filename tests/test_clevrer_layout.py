"""CLEVRER's directory layout: writing clevrer_sim in it, and preparing a store from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from causaljepa.data.clevrer_layout import prepare_clevrer, write_clevrer_layout, write_mp4
from causaljepa.data.questions import QuestionFileError, load_questions
from causaljepa.data.store import StoreError, VideoStore
from causaljepa.sim.clevrer_sim import SceneConfig
from causaljepa.sim.generate import GenerateConfig, generate_split
from causaljepa.sim.questions import QuestionConfig

OBSERVED = 16
CFG = GenerateConfig(
    videos={"train": 3, "validation": 2, "test": 2},
    height=64,
    width=96,
    scene=SceneConfig(observed_frames=OBSERVED, future_frames=4, enter_frame_range=(1, 8)),
    questions=QuestionConfig(descriptive=4, explanatory=1, counterfactual=1, predictive=1),
)
SCENES = {"train": [0, 1, 2], "validation": [10000, 10001], "test": [15000, 15001]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The layout (``root``) and the generated stores of the same config (``gen``)."""
    base = tmp_path_factory.mktemp("clevrer")
    root, gen = base / "root", base / "gen"
    written = write_clevrer_layout(CFG, root)
    for split in SCENES:
        generate_split(CFG, split, gen)
    return {"root": root, "gen": gen, "written": written, "base": base}


@pytest.fixture
def copy(data, tmp_path):
    """A private copy of the layout, for tests that break it."""
    root = tmp_path / "root"
    shutil.copytree(data["root"], root)
    return root


def _keys(x) -> set[str]:
    if isinstance(x, dict):
        return set(x) | set().union(*(_keys(v) for v in x.values()))
    if isinstance(x, list):
        return set().union(*(_keys(v) for v in x))
    return set()


def _ann(root: Path, idx: int) -> Path:
    a = idx // 1000 * 1000
    return root / "annotation_train" / f"annotation_{a:05d}-{a + 1000:05d}" / f"annotation_{idx:05d}.json"


def _mp4(root: Path, idx: int) -> Path:
    return root / "video_train" / "video_00000-01000" / f"video_{idx:05d}.mp4"


# --- writing ----------------------------------------------------------------------------
def test_layout_has_exactly_clevrers_files(data):
    root = data["root"]
    expected = {"questions/train.json", "questions/validation.json", "questions/test.json"}
    for split, scenes in SCENES.items():
        for idx in scenes:
            bucket = f"{idx // 1000 * 1000:05d}-{idx // 1000 * 1000 + 1000:05d}"
            expected.add(f"video_{split}/video_{bucket}/video_{idx:05d}.mp4")
            if split != "test":
                expected.add(f"annotation_{split}/annotation_{bucket}/annotation_{idx:05d}.json")
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert found == expected
    assert data["written"]["test"]["annotations"] == []
    assert [p.name for p in data["written"]["train"]["videos"]] == [
        "video_00000.mp4",
        "video_00001.mp4",
        "video_00002.mp4",
    ]


def test_mp4s_show_the_observed_frames_at_the_simulation_fps(data):
    mp4 = data["root"] / "video_validation" / "video_10000-11000" / "video_10001.mp4"
    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height, s.pix_fmt) == ("h264", 96, 64, "yuv420p")
        assert float(s.average_rate) == CFG.physics.fps
        assert sum(1 for _ in c.decode(s)) == OBSERVED


def test_question_files(data):
    root, gen = data["root"], data["gen"]
    for split in ("train", "validation"):
        written = json.loads((root / "questions" / f"{split}.json").read_text())
        assert written == json.loads((gen / "questions" / f"{split}.json").read_text())
        assert [v["scene_index"] for v in written] == SCENES[split]
    test = load_questions(root / "questions" / "test.json")
    assert not {"answer", "program"} & _keys(test)
    generated = json.loads((gen / "questions" / "test.json").read_text())
    assert {"answer", "program"} <= _keys(generated)  # the stripping did something
    assert [v["scene_index"] for v in test] == SCENES["test"]
    for t, g in zip(test, generated, strict=True):
        assert [q["question"] for q in t["questions"]] == [q["question"] for q in g["questions"]]
        assert [[c["choice"] for c in q.get("choices", [])] for q in t["questions"]] == [
            [c["choice"] for c in q.get("choices", [])] for q in g["questions"]
        ]


def test_odd_resolution_is_refused(tmp_path):
    cfg = GenerateConfig(videos={"train": 1}, height=64, width=95, scene=CFG.scene)
    with pytest.raises(ValueError, match="95x64"):
        write_clevrer_layout(cfg, tmp_path)
    with pytest.raises(ValueError, match=r"x\.mp4.*95x64"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 64, 95, 3), np.uint8), 25.0)
    assert list(tmp_path.iterdir()) == []


# --- preparing --------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "validation"])
def test_prepare_matches_the_generated_store(data, tmp_path, split):
    out = prepare_clevrer(data["root"], tmp_path / f"{split}.h5", split, 64, 96)
    with VideoStore(out) as p, VideoStore(data["gen"] / f"{split}.h5") as g:
        n = len(SCENES[split])
        assert (p.num_videos, p.num_frames, p.height, p.width, p.max_objects) == (n, OBSERVED, 64, 96, 6)
        assert p.source == "clevrer" and p.fps == CFG.physics.fps and p.observed_frames == OBSERVED
        assert p.f.attrs["split"] == split and p.state_fields == g.state_fields
        assert p.vocab == g.vocab
        config = json.loads(p.f.attrs["generator_config"])
        assert config["root"] == "root" and (config["height"], config["width"]) == (64, 96)
        assert str(data["base"]) not in p.f.attrs["generator_config"]
        assert not p.has("masks") and not p.has("truth")
        assert p.video_ids == g.video_ids == [f"video_{i:05d}" for i in SCENES[split]]
        assert p.f["scene_index"][:].tolist() == SCENES[split]

        frames = p.f["frames"][:].astype(np.int16)
        err = np.abs(frames - g.f["frames"][:, :OBSERVED])
        assert err.mean() < 4, err.mean()

        gp = g.f["present"][:, :OBSERVED]  # (N, T, O)
        np.testing.assert_array_equal(p.f["in_view"][:], g.f["in_view"][:, :OBSERVED])
        np.testing.assert_array_equal(p.f["object_properties"][:], g.f["object_properties"][:])
        states, gstates = p.f["states"][:], g.f["states"][:, :OBSERVED]
        np.testing.assert_allclose(states[gp], gstates[gp], rtol=0, atol=1e-6)
        # the annotation lists every object of the video in every frame (as CLEVRER does);
        # one that has not entered yet waits outside the view, still
        exists = (g.f["object_properties"][:, :, 0] >= 0)[:, None, :].repeat(OBSERVED, 1)
        np.testing.assert_array_equal(p.f["present"][:], exists)
        waiting = exists & ~gp
        assert waiting.any()  # the config has objects entering later
        assert not p.f["in_view"][:][waiting].any()
        assert not states[waiting][:, 2:].any()  # velocity, angle and spin zero
        assert not states[~exists].any()

        for i in range(n):
            assert p.annotation(i) == g.annotation(i)
            assert len(p.annotation(i)["motion_trajectory"]) == OBSERVED


def test_prepare_resizes(data, tmp_path):
    out = prepare_clevrer(data["root"], tmp_path / "small.h5", "train", 32, 48)
    with VideoStore(out) as p, VideoStore(data["gen"] / "train.h5") as g:
        assert p.f["frames"].shape == (3, OBSERVED, 32, 48, 3)
        assert p.f["frames"].dtype == np.uint8
        src = g.f["frames"][:, :OBSERVED].astype(np.float64)
        pooled = src.reshape(3, OBSERVED, 32, 2, 48, 2, 3).mean(axis=(3, 5))  # area resampling by 2
        assert np.abs(p.f["frames"][:] - pooled).mean() < 4
        assert p.f["states"].shape == (3, OBSERVED, 6, 6)


def test_prepare_finds_a_deeper_layout(data, tmp_path):
    deep = tmp_path / "downloads"
    shutil.copytree(data["root"], deep / "CLEVRER")
    out = prepare_clevrer(deep, tmp_path / "deep.h5", "train", 64, 96)
    ref = prepare_clevrer(data["root"], tmp_path / "ref.h5", "train", 64, 96)
    with VideoStore(out) as p, VideoStore(ref) as r:
        assert p.video_ids == r.video_ids
        for name in ("frames", "states", "present", "in_view", "object_properties"):
            np.testing.assert_array_equal(p.f[name][:], r.f[name][:])
        assert json.loads(p.f.attrs["generator_config"])["root"] == "downloads"


def test_prepare_without_question_file_uses_the_video_folder(copy, tmp_path):
    (copy / "questions" / "train.json").unlink()
    out = prepare_clevrer(copy, tmp_path / "t.h5", "train", 64, 96, limit=2)
    with VideoStore(out) as p:
        assert p.video_ids == ["video_00000", "video_00001"]


def test_prepare_test_split_without_annotations(data, tmp_path):
    out = prepare_clevrer(data["root"], tmp_path / "test.h5", "test", 64, 96, require_annotations=False)
    with VideoStore(out) as p, VideoStore(data["gen"] / "test.h5") as g:
        assert p.f["frames"].shape == (2, OBSERVED, 64, 96, 3)
        assert p.max_objects == 0 and not p.has("states") and not p.has("present")
        assert p.video_ids == ["video_15000", "video_15001"]
        assert [p.annotation(i) for i in range(2)] == [{}, {}]
        assert np.abs(p.f["frames"][:].astype(np.int16) - g.f["frames"][:, :OBSERVED]).mean() < 4
    with pytest.raises(FileNotFoundError, match=r"video_15000\.mp4.*annotation_15000\.json"):
        prepare_clevrer(data["root"], tmp_path / "test2.h5", "test", 64, 96)
    assert not (tmp_path / "test2.h5").exists()


def test_missing_split_names_root_and_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        prepare_clevrer(tmp_path, tmp_path / "x.h5", "train", 64, 96)
    assert str(tmp_path) in str(e.value) and "train.json" in str(e.value) and "video_train" in str(e.value)


# --- bad input --------------------------------------------------------------------------
def test_video_without_annotation(copy, tmp_path):
    _ann(copy, 1).unlink()
    with pytest.raises(FileNotFoundError) as e:
        prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96)
    assert str(_mp4(copy, 1)) in str(e.value) and "annotation_00001.json" in str(e.value)
    assert not (tmp_path / "x.h5").exists()


def test_unknown_attribute_value_in_annotation(copy, tmp_path):
    path = _ann(copy, 1)
    ann = json.loads(path.read_text())
    ann["object_property"][2]["color"] = "pink"
    path.write_text(json.dumps(ann))
    with pytest.raises(ValueError) as e:
        prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96)
    msg = str(e.value)
    assert str(path) in msg and "object 2" in msg and "'pink'" in msg and "yellow" in msg


def test_trajectory_length_disagrees_with_video(copy, tmp_path):
    path = _ann(copy, 2)
    ann = json.loads(path.read_text())
    ann["motion_trajectory"] = ann["motion_trajectory"][:-3]
    path.write_text(json.dumps(ann))
    with pytest.raises(ValueError) as e:
        prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96)
    msg = str(e.value)
    assert str(path) in msg and str(_mp4(copy, 2)) in msg
    assert f"{OBSERVED - 3} frames" in msg and f"has {OBSERVED}" in msg
    assert not (tmp_path / "x.h5").exists()


def test_video_frame_count_differs(copy, tmp_path):
    short = _mp4(copy, 2)
    write_mp4(short, np.full((OBSERVED - 4, 64, 96, 3), 128, np.uint8), 25.0)
    with pytest.raises(StoreError) as e:
        prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96)
    msg = str(e.value)
    assert str(short) in msg and f"has {OBSERVED - 4} frames" in msg and f"expected {OBSERVED}" in msg
    # an explicit frame count is checked against every video, the first one included
    with pytest.raises(StoreError, match=r"video_00000\.mp4: has 16 frames, expected 20"):
        prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96, num_frames=20)


def test_unknown_attribute_value_in_question_file(copy, tmp_path):
    path = copy / "questions" / "train.json"
    videos = json.loads(path.read_text())
    q = next(q for q in videos[1]["questions"] if q["question_type"] == "descriptive")
    q.update(program=["objects", "pink", "filter_color", "count"], question_subtype="count", answer="1")
    path.write_text(json.dumps(videos))
    with pytest.raises(QuestionFileError) as e:
        load_questions(path)
    msg = str(e.value)
    assert str(path) in msg and "'pink'" in msg and f"question_id {q['question_id']}" in msg
    with pytest.raises(QuestionFileError, match="pink"):
        prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96)


def test_partly_annotated_split_without_required_annotations(copy, data, tmp_path):
    _ann(copy, 1).unlink()
    out = prepare_clevrer(copy, tmp_path / "x.h5", "train", 64, 96, require_annotations=False)
    full = prepare_clevrer(data["root"], tmp_path / "full.h5", "train", 64, 96)
    with VideoStore(out) as p, VideoStore(full) as f:
        assert p.annotation(1) == {} and p.annotation(0) == f.annotation(0)
        assert not p.f["present"][1].any() and (p.f["object_properties"][1] == -1).all()
        for i in (0, 2):
            np.testing.assert_array_equal(p.f["states"][i], f.f["states"][i])
            np.testing.assert_array_equal(p.f["object_properties"][i], f.f["object_properties"][i])
