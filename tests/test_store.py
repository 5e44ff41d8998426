"""The HDF5 video store: round trip, atomic writes, determinism, and each kind of bad file."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from causaljepa.data.stats import dataset_stats, observed_collision_answers
from causaljepa.data.store import SCHEMA_VERSION, StoreError, StoreLayout, VideoStore, VideoStoreWriter
from causaljepa.sim import generate as gen
from causaljepa.sim.clevrer_sim import STATE_FIELDS, SceneConfig
from causaljepa.sim.generate import GenerateConfig, generate_split

SMALL = GenerateConfig(
    videos={"train": 3, "validation": 2},
    scene=SceneConfig(observed_frames=20, future_frames=6, enter_frame_range=(2, 10)),
)


def _record(layout: StoreLayout, i: int) -> dict:
    T, H, W, O = layout.num_frames, layout.height, layout.width, layout.max_objects
    rng = np.random.default_rng(i)
    return {
        "frames": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        "video_ids": f"video_{i:05d}",
        "scene_index": i,
        "annotations": json.dumps({"scene_index": i}),
        "masks": rng.integers(0, O + 1, (T, H, W), dtype=np.uint8),
        "states": rng.normal(size=(T, O, len(STATE_FIELDS))).astype(np.float32),
        "present": rng.random((T, O)) < 0.5,
        "in_view": rng.random((T, O)) < 0.5,
        "object_properties": rng.integers(-1, 3, (O, 3), dtype=np.int8),
    }


LAYOUT = StoreLayout(num_videos=3, num_frames=10, height=8, width=12, max_objects=4, masks=True)


def _write(path: Path, layout: StoreLayout = LAYOUT) -> Path:
    with VideoStoreWriter(path, layout, {"source": "test", "fps": 25.0}, STATE_FIELDS) as w:
        for i in range(layout.num_videos):
            w.write(i, _record(layout, i))
    return path


def test_round_trip_and_windows(tmp_path):
    path = _write(tmp_path / "s.h5")
    with VideoStore(path) as s:
        assert (len(s), s.num_frames, s.height, s.width, s.max_objects) == (3, 10, 8, 12, 4)
        assert s.video_ids == ["video_00000", "video_00001", "video_00002"]
        assert s.state_fields == STATE_FIELDS and s.fps == 25.0 and s.source == "test"
        want = _record(LAYOUT, 1)
        np.testing.assert_array_equal(s.read("frames", 1), want["frames"])
        np.testing.assert_array_equal(s.read("frames", 1, 2, 9, 3), want["frames"][2:9:3])
        np.testing.assert_array_equal(s.read("states", 1, 4, 6), want["states"][4:6])
        np.testing.assert_array_equal(s.read("masks", 1, times=[0, 3, 9]), want["masks"][[0, 3, 9]])
        with pytest.raises(IndexError, match="must be increasing"):
            s.read("frames", 1, times=[3, 1])
        with pytest.raises(IndexError, match="must be increasing"):
            s.read("frames", 1, times=[2, 10])
        np.testing.assert_array_equal(s.read("object_properties", 1), want["object_properties"])
        assert s.annotation(2) == {"scene_index": 2}
        with pytest.raises(IndexError, match="out of range"):
            s.read("frames", 3)
        with pytest.raises(IndexError, match="frame range"):
            s.read("frames", 0, 5, 11)
        with pytest.raises(KeyError, match="cf_frames"):
            s.read("cf_frames", 0)
    # chunks are (1, t, H, W, 3): a window never reads a whole video
    with h5py.File(path) as f:
        assert f["frames"].chunks == (1, 8, 8, 12, 3)
        assert f["frames"].compression == "gzip"


def test_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoStoreWriter(path, LAYOUT, {"source": "test"}, STATE_FIELDS) as w:
            w.write(0, _record(LAYOUT, 0))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_store_is_discarded(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(StoreError, match=r"videos \[1, 2\]"):
        with VideoStoreWriter(path, LAYOUT, {"source": "test"}, STATE_FIELDS) as w:
            w.write(0, _record(LAYOUT, 0))
    assert list(tmp_path.iterdir()) == []


def test_record_with_wrong_shape_or_fields(tmp_path):
    w = VideoStoreWriter(tmp_path / "s.h5", LAYOUT, {"source": "test"}, STATE_FIELDS)
    try:
        bad = _record(LAYOUT, 0)
        bad["frames"] = bad["frames"][:5]
        with pytest.raises(
            StoreError, match=r"'frames' has shape \(5, 8, 12, 3\), expected \(10, 8, 12, 3\)"
        ):
            w.write(0, bad)
        bad = _record(LAYOUT, 0)
        del bad["masks"]
        with pytest.raises(StoreError, match="missing \\['masks'\\]"):
            w.write(0, bad)
    finally:
        w.abort()
    assert list(tmp_path.iterdir()) == []  # not even the partial file


# --- bad files: each names the file and the problem ------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cjepa data generate"):
        VideoStore(tmp_path / "nope.h5")


def test_truncated_file(tmp_path):
    path = _write(tmp_path / "s.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"s\.h5: not a readable HDF5 file \(truncated or corrupt\?\)"):
        VideoStore(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 20)
    with pytest.raises(StoreError, match=r"junk\.h5: not a readable HDF5 file"):
        VideoStore(path)


def test_wrong_schema_version(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=f"s.h5: schema_version is {SCHEMA_VERSION + 1}.*reads version"):
        VideoStore(path)


def test_not_a_store(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match=r"other\.h5: no 'schema_version' attribute"):
        VideoStore(path)


def test_missing_required_field(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        del f["annotations"]
    with pytest.raises(StoreError, match=r"s\.h5: required field 'annotations' is missing"):
        VideoStore(path)


def test_frame_counts_that_disagree(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        del f["masks"]
        f.create_dataset("masks", data=np.zeros((3, 9, 8, 12), np.uint8))
    with pytest.raises(
        StoreError, match=r"s.h5: field 'masks' has shape \(3, 9, 8, 12\), expected \(3, 10, 8, 12\)"
    ):
        VideoStore(path)


def test_wrong_dtype(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        del f["states"]
        f.create_dataset("states", data=np.zeros((3, 10, 4, 6), np.float64))
    with pytest.raises(StoreError, match="field 'states' has dtype float64, expected float32"):
        VideoStore(path)


def test_annotation_that_is_not_json(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        f["annotations"][1] = "{not json"
    with (
        VideoStore(path) as s,
        pytest.raises(StoreError, match="field 'annotations' of video 1 is not valid JSON"),
    ):
        s.annotation(1)


# --- generated stores ------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generation_is_byte_deterministic(tmp_path):
    a = generate_split(SMALL, "train", tmp_path / "a", workers=1)
    time.sleep(1.1)  # HDF5 timestamps have 1 s resolution: a store that kept them would now differ
    b = generate_split(SMALL, "train", tmp_path / "b", workers=2)  # worker count does not matter
    c = generate_split(replace(SMALL, seed=1), "train", tmp_path / "c", workers=1)
    assert _digest(a[0]) == _digest(b[0]) and _digest(a[1]) == _digest(b[1])
    assert _digest(a[0]) != _digest(c[0]) and _digest(a[1]) != _digest(c[1])


def test_interrupted_generation_leaves_no_store(tmp_path, monkeypatch):
    real = gen.make_video

    def failing(cfg, split, index):
        if index == 2:
            raise KeyboardInterrupt
        return real(cfg, split, index)

    monkeypatch.setattr(gen, "make_video", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_split(SMALL, "train", tmp_path, workers=1)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no store, no partial, no questions


def test_generated_store_contents(tmp_path):
    cfg = replace(SMALL, counterfactuals=True, videos={"validation": 2})
    store_path, qpath = generate_split(cfg, "validation", tmp_path)
    with VideoStore(store_path) as s:
        assert s.source == "clevrer_sim" and s.observed_frames == 20 and s.num_frames == 26
        assert json.loads(s.f.attrs["generator_config"])["seed"] == 0
        for i in range(len(s)):
            ann, truth = s.annotation(i), s.truth(i)
            n = len(ann["object_property"])
            props = s.read("object_properties", i)
            assert (props[:n] >= 0).all() and (props[n:] == -1).all()
            assert len(ann["motion_trajectory"]) == 20
            assert [c["object_ids"] for c in ann["collision"]] == [
                c[1:] for c in truth["collisions"] if c[0] < 20
            ]
            # masks hold exactly the ids of the objects in view (where they cover a pixel centre)
            masks, in_view = s.read("masks", i), s.read("in_view", i)
            ids = set(np.unique(masks[0]).tolist()) - {0}
            assert ids <= {o + 1 for o in np.flatnonzero(in_view[0])}
            # the world without object o: o is never present, the others are
            valid = s.read("cf_valid", i)
            assert valid[:n].all() and not valid[n:].any()
            cfp = s.read("cf_present", i)
            cf_masks = s.read("cf_masks", i)
            for o in range(n):
                assert not cfp[o, :, o].any()
                assert o + 1 not in np.unique(cf_masks[o])
                np.testing.assert_array_equal(
                    s.read("cf_masks", i, times=[0, 5, 25], removed=o), cf_masks[o][[0, 5, 25]]
                )
            assert sorted(truth["counterfactual_collisions"]) == [str(o) for o in range(n)]
            for o, events in truth["counterfactual_collisions"].items():
                assert all(int(o) not in e[1:] for e in events)
    stats = dataset_stats(store_path, qpath)
    assert stats["videos"] == 2 and sum(stats["objects_per_video"]["hist"].values()) == 2
    assert stats["questions"]["videos"] == 2
    ref = stats["questions"]["counterfactual_from_observed_collisions"]
    assert ref["questions"] == stats["questions"]["questions_per_type"]["counterfactual"]
    assert sum(stats["questions"]["questions_per_type"].values()) == sum(
        len(v["questions"]) for v in json.loads(qpath.read_text())
    )


def test_counterfactual_answers_from_observed_collisions():
    # red rubber cube, blue rubber sphere, red rubber sphere: (colour, shape, material) value ids
    objects = np.array([[1, 0, 0], [2, 1, 0], [1, 1, 0]])
    scenes = {5: (objects, {(0, 1)})}  # red cube and blue sphere collide while observed

    def choice(text, answer):
        return {"choice": text, "answer": answer}

    q = {
        "question_type": "counterfactual",
        "choices": [
            choice("The red cube collides with the blue sphere", "correct"),  # guessed correct: right
            choice("The blue sphere collides with the red sphere", "correct"),  # guessed wrong: wrong
            choice("The red object collides with the cube", "wrong"),  # "red object" is two: unresolved
        ],
    }
    other = {
        "question_type": "counterfactual",
        "choices": [choice("The cube collides with the blue sphere", "wrong")],
    }
    videos = [
        {"scene_index": 5, "questions": [q, other]},
        {"scene_index": 6, "questions": [q]},
    ]  # 6: no scene
    got = observed_collision_answers(videos, scenes)
    assert got == {"questions": 2, "option": 50.0, "question": 0.0, "unresolved": 1}
    assert observed_collision_answers(videos, {}) == {"questions": 0}


def test_failed_writer_setup_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="needs the names of its state columns"):
        VideoStoreWriter(tmp_path / "s.h5", LAYOUT, {"source": "test"})  # no state_fields
    with pytest.raises(TypeError):
        VideoStoreWriter(tmp_path / "t.h5", LAYOUT, {"source": None}, STATE_FIELDS)  # h5py cannot store None
    assert list(tmp_path.iterdir()) == []


def test_counterfactual_videos_without_states(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        for name in ("states", "present", "in_view", "object_properties", "masks"):
            del f[name]
        f.create_dataset("cf_frames", data=np.zeros((3, 1, 10, 8, 12, 3), np.uint8))
    with pytest.raises(StoreError, match=r"s\.h5: inconsistent set of fields: .*counterfactual"):
        VideoStore(path)


def test_observed_frames_beyond_the_video(tmp_path):
    path = _write(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        f.attrs["observed_frames"] = 11
    with pytest.raises(StoreError, match=r"s\.h5: attribute observed_frames=11 must be in 1\.\.10"):
        VideoStore(path)
