"""clevrer_sim: physics, interventions, entering/exiting objects, determinism, rendering,
simulated question answers (checked against independent re-simulation) and config checks."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import replace

import h5py
import numpy as np
import pytest

from causaljepa.data.questions import COLORS, MATERIALS, SHAPES, validate_question
from causaljepa.data.store import StoreError, StoreLayout, VideoStore, VideoStoreWriter
from causaljepa.sim import clevrer_sim
from causaljepa.sim.clevrer_sim import (
    ACTION_FIELDS,
    VIEW_HALF_H,
    VIEW_HALF_W,
    ObjectSpec,
    PhysicsConfig,
    Push,
    Scene,
    SceneConfig,
    actions_array,
    sample_accepted_scene,
    sample_scene,
    simulate,
)
from causaljepa.sim.generate import GenerateConfig, generate_split, make_video, video_seed
from causaljepa.sim.questions import QuestionConfig
from causaljepa.sim.render import Renderer

PHYS = PhysicsConfig()
S = PHYS.object_size
SCENE_CFG = SceneConfig(observed_frames=40, future_frames=10, enter_frame_range=(2, 30))
T = SCENE_CFG.total_frames
OBSERVED = SCENE_CFG.observed_frames


def obj(i, x, y, vx=0.0, vy=0.0, *, shape="sphere", material="rubber", color=None, angle=0.0, enter=0):
    return ObjectSpec(i, color or COLORS[i], shape, material, (x, y), (vx, vy), angle, enter)


def make_scene(*objects, frames=T):
    return Scene(objects=tuple(objects), physics=PHYS, num_frames=frames)


def pairs(traj, before=None):
    return [(c.a, c.b) for c in traj.collisions if before is None or c.frame < before]


def head_on(speed=2.0, x0=1.5):
    """Two rubber spheres on y=0 moving towards each other, plus a still sphere far away."""
    return make_scene(
        obj(0, -x0, 0.0, speed, 0.0),
        obj(1, x0, 0.0, -speed, 0.0),
        obj(2, -2.4, 1.5),
    )


# --- physics ---------------------------------------------------------------------------


def test_head_on_collision_frame_matches_geometry():
    speed, x0 = 2.0, 1.5
    traj = simulate(head_on(speed, x0))
    assert pairs(traj) == [(0, 1)]
    # the surfaces close a gap of 2 * x0 - 2 * S at 2 * speed, slowed by linear damping:
    # gap = 2 * speed * (1 - exp(-c t)) / c
    c, gap = PHYS.damping_sphere, 2 * x0 - 2 * S
    t_hit = -math.log(1 - gap * c / (2 * speed)) / c
    expected = t_hit * PHYS.fps
    assert abs(traj.collisions[0].frame - expected) <= 2, (traj.collisions[0].frame, expected)
    assert np.allclose(traj.collisions[0].location, (0.0, 0.0), atol=0.1)
    # before: approaching; after: both rebound, symmetrically
    f = traj.collisions[0].frame
    assert traj.states[f - 2, 0, 2] > 1.8 and traj.states[f - 2, 1, 2] < -1.8
    assert traj.states[f + 2, 0, 2] < -1.0 and traj.states[f + 2, 1, 2] > 1.0
    np.testing.assert_allclose(traj.states[-1, 0, :2], -traj.states[-1, 1, :2], atol=1e-4)
    # the still sphere far away is untouched
    assert traj.states[:, 2, :2] == pytest.approx(np.tile([-2.4, 1.5], (T, 1)), abs=1e-6)
    assert np.all(traj.states[:, 2, 2:4] == 0)


@pytest.mark.parametrize("speed, x0", [(1.5, 1.2), (3.0, 2.0)])
def test_collision_frame_scales_with_distance_and_speed(speed, x0):
    traj = simulate(head_on(speed, x0))
    assert pairs(traj) == [(0, 1)]
    c, gap = PHYS.damping_sphere, 2 * x0 - 2 * S
    expected = -math.log(1 - gap * c / (2 * speed)) / c * PHYS.fps
    assert abs(traj.collisions[0].frame - expected) <= 2


def _shoot(material_b: str):
    """A rubber sphere moving at 2 into a still sphere of ``material_b``."""
    traj = simulate(make_scene(obj(0, -1.5, 0.0, 2.0, 0.0), obj(1, 0.5, 0.0, material=material_b)))
    assert pairs(traj) == [(0, 1)]
    f = traj.collisions[0].frame
    return traj.states[f - 1, 0, 2], traj.states[f + 3, :, 2]  # impact speed, (vA, vB) after


def test_rubber_rebounds_off_metal_more_than_off_rubber():
    e = PHYS.restitution
    u, (va_rr, vb_rr) = _shoot("rubber")
    u2, (va_rm, vb_rm) = _shoot("metal")
    assert u == pytest.approx(u2)
    # equal masses: A keeps (1 - e) / 2 of its speed forward
    assert va_rr == pytest.approx((1 - e) / 2 * u, rel=0.1)
    assert vb_rr == pytest.approx((1 + e) / 2 * u, rel=0.05)
    # B three times as heavy: A bounces back
    ratio = PHYS.density_metal / PHYS.density_rubber
    assert va_rm == pytest.approx((1 - e * ratio) / (1 + ratio) * u, rel=0.1)
    assert vb_rm == pytest.approx((1 + e) / (1 + ratio) * u, rel=0.05)
    assert va_rm < 0 < va_rr
    assert va_rr - va_rm > 0.4 * u
    # momentum is conserved in both
    assert va_rr + vb_rr == pytest.approx(u, rel=0.02)
    assert va_rm + ratio * vb_rm == pytest.approx(u, rel=0.02)


# --- interventions -----------------------------------------------------------------------


def test_removed_object_hand_built():
    scene = make_scene(
        obj(0, -1.5, 0.0, 2.0, 0.0),
        obj(1, 1.5, 0.0, -2.0, 0.0),
        obj(2, -2.4, 1.5),
        obj(3, 2.3, -1.4, 0.0, 0.3, shape="cube"),  # moving, alone
    )
    fact = simulate(scene)
    assert pairs(fact) == [(0, 1)]
    cf = simulate(scene, removed=0)
    assert not cf.present[:, 0].any() and not cf.in_view[:, 0].any()
    assert np.all(cf.states[:, 0] == 0)
    assert cf.collisions == []
    # without its partner, object 1 keeps moving left, through where the collision was
    assert cf.states[-1, 1, 0] < -2.0 and cf.states[-1, 1, 2] < -1.5
    for o in (2, 3):
        assert np.array_equal(cf.states[:, o], fact.states[:, o])
        assert np.array_equal(cf.present[:, o], fact.present[:, o])


@pytest.mark.parametrize("seed", range(6))
def test_removed_object_sampled(seed):
    scene, fact = sample_accepted_scene(np.random.default_rng(seed), SCENE_CFG, PHYS)
    for o in range(len(scene.objects)):
        cf = simulate(scene, removed=o)
        assert not cf.present[:, o].any() and not cf.in_view[:, o].any()
        assert all(o not in p for p in pairs(cf))
        lonely = {c.a for c in fact.collisions + cf.collisions} | {
            c.b for c in fact.collisions + cf.collisions
        }
        for p in range(len(scene.objects)):
            if p != o and p not in lonely:
                assert np.array_equal(cf.states[:, p], fact.states[:, p]), (o, p)
                assert np.array_equal(cf.present[:, p], fact.present[:, p])
                assert np.array_equal(cf.in_view[:, p], fact.in_view[:, p])


def test_prevented_pair_passes_through():
    scene = make_scene(
        obj(0, -1.5, 0.0, 2.0, 0.0),
        obj(1, 1.5, 0.0, -2.0, 0.0),
        obj(2, 2.5, 0.0, color="yellow"),  # on the right, in line
    )
    fact = simulate(scene)
    assert (0, 1) in pairs(fact)
    # factual: 1 bounces back off 0 and then hits 2
    assert (1, 2) in pairs(fact) and (0, 2) not in pairs(fact)
    cf = simulate(scene, prevented=(0, 1))
    assert (0, 1) not in pairs(cf)
    # 0 and 1 pass through each other: 0 runs on into 2, 1 goes left
    assert (0, 2) in pairs(cf) and (1, 2) not in pairs(cf)
    assert cf.states[30, 1, 0] < -0.5 and cf.states[30, 1, 2] < 0
    cf2 = simulate(scene, prevented=(1, 0))
    assert np.array_equal(cf.states, cf2.states) and cf.collisions == cf2.collisions


# --- entering and exiting ----------------------------------------------------------------


def test_entering_object():
    k, speed = 10, 2.0
    x_start = VIEW_HALF_W + 2 * S
    scene = make_scene(obj(0, -1.0, -1.5), obj(1, x_start, 0.5, -speed, 0.0, enter=k))
    traj = simulate(scene)
    assert not traj.present[:k, 1].any() and traj.present[k:, 1].all()
    assert not traj.in_view[:k, 1].any()
    assert np.all(traj.states[:k, 1] == 0)
    entries = traj.entries(0, T)
    assert [o for _, o in entries] == [1]
    e = entries[0][0]
    # comes into view once its leading edge crosses x = VIEW_HALF_W
    expected = k + (x_start - S - VIEW_HALF_W) / (speed / PHYS.fps)
    assert k < e and abs(e - expected) <= 2, (e, expected)
    assert not traj.in_view[e - 1, 1] and traj.in_view[e:, 1].all()
    assert traj.exits(0, T) == []
    assert traj.present[:, 0].all() and traj.in_view[:, 0].all()


def test_exiting_object():
    speed = 2.5
    scene = make_scene(obj(0, -1.0, -1.5), obj(1, 2.0, -1.0, speed, 0.0))
    traj = simulate(scene)
    exits = traj.exits(0, T)
    assert [o for _, o in exits] == [1]
    e = exits[0][0]
    expected = (VIEW_HALF_W + S - 2.0) / (speed / PHYS.fps)
    assert abs(e - expected) <= 2, (e, expected)
    assert traj.in_view[:e, 1].all() and not traj.in_view[e:, 1].any()
    assert traj.present[:, 1].all()  # left the view, still in the world
    assert traj.states[-1, 1, 0] > VIEW_HALF_W + S
    assert traj.entries(0, T) == []


def _inside_depth(shape: str, x: float, y: float, angle: float) -> float:
    """How far (world units) the object reaches into the view past its nearest edge (> 0: partly in)."""
    if shape == "cube":
        ext = S * (abs(math.cos(angle)) + abs(math.sin(angle)))  # half-width of its bounding box
        return min(VIEW_HALF_W + ext - abs(x), VIEW_HALF_H + ext - abs(y))
    return min(VIEW_HALF_W + S - abs(x), VIEW_HALF_H + S - abs(y))


def test_in_view_means_partly_inside_the_view():
    """A cube turned by 45 degrees reaches S * sqrt(2) from its centre: one whose corner pokes into
    the view is (partly) in view and is drawn; in_view must say so."""
    scene = make_scene(
        obj(0, 0.0, 0.0),
        obj(1, VIEW_HALF_W + 0.42, 0.0, shape="cube", angle=math.pi / 4),
        obj(2, 0.0, -(VIEW_HALF_H + 0.42), shape="cube", angle=math.pi / 4),
        obj(3, VIEW_HALF_W + 0.42, 1.0, shape="sphere"),  # a sphere that far out is not in view
        # off a corner of the view: their bounding boxes overlap the view, the objects do not
        obj(4, VIEW_HALF_W + 0.3, VIEW_HALF_H + 0.3, shape="cube", angle=math.pi / 4),
        obj(5, -(VIEW_HALF_W + 0.3), -(VIEW_HALF_H + 0.3), shape="sphere"),
        frames=2,
    )
    traj = simulate(scene)
    assert _inside_depth("cube", VIEW_HALF_W + 0.42, 0.0, math.pi / 4) > 0.05
    _, masks = Renderer(128, 192, S).render(scene.objects, traj.states, traj.present)
    assert set(np.unique(masks[0]).tolist()) == {0, 1, 2, 3}
    assert traj.in_view[0].tolist() == [True, True, True, False, False, False]


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_world(seed):
    s1, t1 = sample_accepted_scene(np.random.default_rng(seed), SCENE_CFG, PHYS)
    s2, t2 = sample_accepted_scene(np.random.default_rng(seed), SCENE_CFG, PHYS)
    assert s1 == s2
    for name in ("states", "present", "in_view"):
        assert np.array_equal(getattr(t1, name), getattr(t2, name))
    assert t1.collisions == t2.collisions
    t3 = simulate(s1)
    assert np.array_equal(t1.states, t3.states) and t1.collisions == t3.collisions
    s4, t4 = sample_accepted_scene(np.random.default_rng(seed + 1), SCENE_CFG, PHYS)
    assert s4 != s1
    assert t4.states.shape != t1.states.shape or not np.array_equal(t4.states, t1.states)


# --- renderer ----------------------------------------------------------------------------


def _pixel(x: float, y: float, h: int, w: int) -> tuple[float, float]:
    """(row, col) of a world point; pixel centres at integers."""
    col = (x + VIEW_HALF_W) / (2 * VIEW_HALF_W) * w - 0.5
    row = (VIEW_HALF_H - y) / (2 * VIEW_HALF_H) * h - 0.5
    return row, col


RENDER_SCENE = make_scene(
    obj(0, -1.6, 0.9, shape="sphere", material="metal"),
    obj(1, 0.3, -0.8, shape="cube", angle=0.5, color="gray"),
    obj(2, 1.9, 1.0, shape="cylinder", material="metal", color="yellow"),
    obj(3, VIEW_HALF_W + 1.5, 0.0),  # present, out of view
    obj(4, 0.0, 0.8, enter=5),  # not there yet
    frames=3,
)


@pytest.mark.parametrize("h, w", [(64, 64), (128, 128), (320, 480)])
def test_render_masks_and_centroids(h, w):
    traj = simulate(RENDER_SCENE)
    assert traj.present[0].tolist() == [True, True, True, True, False]
    assert traj.in_view[0].tolist() == [True, True, True, False, False]
    r = Renderer(h, w, S)
    frames, masks = r.render(RENDER_SCENE.objects, traj.states, traj.present)
    assert frames.shape == (3, h, w, 3) and frames.dtype == np.uint8
    assert masks.shape == (3, h, w) and masks.dtype == np.uint8
    for t in range(3):
        ids = set(np.unique(masks[t]).tolist()) - {0}
        assert ids == {int(o) + 1 for o in np.flatnonzero(traj.in_view[t])}
        for o in ids:
            rows, cols = np.nonzero(masks[t] == o)
            row, col = _pixel(*traj.states[t, o - 1, :2], h, w)
            assert abs(rows.mean() - row) <= 1.5 and abs(cols.mean() - col) <= 1.5, (o, t)
    background = np.clip(r.background + 0.5, 0, 255).astype(np.uint8)
    drawn = masks > 0
    assert np.any(frames != background[None], axis=-1)[drawn].all()
    # far from every object the table is untouched
    assert np.array_equal(frames[0, -2:, : w // 4], background[-2:, : w // 4])


def test_render_empty_scene_is_background():
    traj = simulate(RENDER_SCENE)
    r = Renderer(64, 96, S)
    frames, masks = r.render(RENDER_SCENE.objects, traj.states, np.zeros_like(traj.present))
    assert not masks.any()
    assert np.array_equal(
        frames, np.broadcast_to(np.clip(r.background + 0.5, 0, 255).astype(np.uint8), frames.shape)
    )


@pytest.mark.parametrize("h, w, seeds", [(64, 96, 4), (320, 480, 2)])
def test_render_video_masks_follow_the_simulation(h, w, seeds):
    """Over sampled videos: drawn ids are in view, centroids track states, objects not drawn
    while 'in view' reach less than a pixel into it."""
    r = Renderer(h, w, S)
    pix = max(2 * VIEW_HALF_W / w, 2 * VIEW_HALF_H / h)
    checked = 0
    for seed in range(seeds):
        scene, traj = sample_accepted_scene(np.random.default_rng(100 + seed), SCENE_CFG, PHYS)
        _, masks = r.render(scene.objects, traj.states, traj.present)
        for t in range(T):
            ids = set(np.unique(masks[t]).tolist()) - {0}
            view = {int(o) + 1 for o in np.flatnonzero(traj.in_view[t])}
            assert ids <= view, (seed, t, ids, view)
            for o in view - ids:
                spec = scene.objects[o - 1]
                x, y, _, _, ang, _ = traj.states[t, o - 1]
                assert _inside_depth(spec.shape, x, y, ang) < pix, (seed, t, o)
            pos = traj.states[t, :, :2]
            for o in ids:
                x, y = pos[o - 1]
                if abs(x) > VIEW_HALF_W - 0.6 or abs(y) > VIEW_HALF_H - 0.6:
                    continue  # partly cut off by the view's edge
                others = [p for p in range(len(scene.objects)) if p != o - 1 and traj.present[t, p]]
                if any(np.linalg.norm(pos[p] - pos[o - 1]) < 1.1 for p in others):
                    continue  # touching another object, which may cover part of it
                rows, cols = np.nonzero(masks[t] == o)
                row, col = _pixel(x, y, h, w)
                assert abs(rows.mean() - row) <= 1.5 and abs(cols.mean() - col) <= 1.5
                checked += 1
    assert checked > 30 * seeds


def test_metal_sphere_has_specular_highlight():
    r = Renderer(64, 64, S)
    for color in COLORS:
        peak = {}
        for material in MATERIALS:
            scene = make_scene(obj(0, 0.0, 0.0, color=color, material=material), frames=1)
            traj = simulate(scene)
            frames, masks = r.render(scene.objects, traj.states, traj.present)
            peak[material] = frames[0][masks[0] == 1].astype(int).sum(-1).max()
        assert peak["metal"] > peak["rubber"] + 60, (color, peak)


def test_renderer_rejects_tiny_resolution():
    with pytest.raises(ValueError, match="4x4"):
        Renderer(4, 4, S)


# --- questions -----------------------------------------------------------------------------

QCFG = GenerateConfig(
    seed=3,
    videos={"train": 24},
    height=64,
    width=64,
    scene=SCENE_CFG,
    questions=QuestionConfig(descriptive=11, explanatory=3, counterfactual=3, predictive=1),
)
VIDEOS = range(24)
VOCAB = {**{c: "color" for c in COLORS}, **{m: "material" for m in MATERIALS}, **{s: "shape" for s in SHAPES}}


def resolve(text: str, props: list[dict]) -> int:
    """Object id of 'the red metal sphere' / 'the cube' / 'the gray object' (must be unique)."""
    words = text.strip().split()
    assert words[0].lower() == "the", text
    attrs = {VOCAB[wd]: wd for wd in words[1:] if wd != "object"}
    assert len(attrs) == len(words) - 1 - words[1:].count("object"), text
    match = [p["object_id"] for p in props if all(p[k] == v for k, v in attrs.items())]
    assert len(match) == 1, (text, match)
    return match[0]


def _pair(a: int, b: int) -> tuple[int, int]:
    return min(a, b), max(a, b)


@pytest.fixture(scope="module")
def videos():
    out = []
    for i in VIDEOS:
        v = make_video(QCFG, "train", i)
        rng = np.random.default_rng(video_seed(QCFG.seed, "train", i))
        scene, traj = sample_accepted_scene(rng, QCFG.scene, QCFG.physics)
        out.append((v, scene, traj))
    return out


def test_question_videos_rebuild(videos):
    for v, scene, traj in videos:
        ann = json.loads(v["record"]["annotations"])
        assert ann["object_property"] == [o.describe() for o in scene.objects]
        assert [(c["frame_id"], *c["object_ids"]) for c in ann["collision"]] == [
            (c.frame, c.a, c.b) for c in traj.collisions_before(OBSERVED)
        ]
        assert np.array_equal(v["record"]["states"][:, : len(scene.objects)], traj.states)
        # every object has a unique (color, material, shape)
        triples = {(p["color"], p["material"], p["shape"]) for p in ann["object_property"]}
        assert len(triples) == len(ann["object_property"])


def test_questions_follow_schema(videos):
    seen = set()
    for v, _, _ in videos:
        for q in v["questions"]["questions"]:
            validate_question(q, "test")
            seen.add(q["question_type"])
            if q["question_type"] != "descriptive":
                assert 2 <= len(q["choices"]) <= QCFG.questions.max_choices
    assert seen == {"descriptive", "explanatory", "predictive", "counterfactual"}


def test_descriptive_answers(videos):
    counted = queried = 0
    for v, _, traj in videos:
        ann = json.loads(v["record"]["annotations"])
        props = ann["object_property"]
        for q in v["questions"]["questions"]:
            if q["question"] == "How many collisions happen?":
                assert q["answer"] == str(len(ann["collision"])) == str(len(traj.collisions_before(OBSERVED)))
                counted += 1
            sub = q.get("question_subtype", "")
            if sub.startswith("query_"):
                attr = sub[len("query_") :]
                assert q["answer"] in {p[attr] for p in props}
                queried += 1
    assert counted >= 5 and queried >= 5


def test_counterfactual_answers_by_resimulation(videos):
    asked = correct = wrong = 0
    for v, scene, _ in videos:
        props = [o.describe() for o in scene.objects]
        for q in v["questions"]["questions"]:
            if q["question_type"] != "counterfactual":
                continue
            m = re.fullmatch(r"Which event will happen if (the .+) is removed\?", q["question"])
            assert m, q["question"]
            o = resolve(m.group(1), props)
            cf = simulate(scene, removed=o)
            happen = {(c.a, c.b) for c in cf.collisions if c.frame < OBSERVED}
            for ch in q["choices"]:
                mc = re.fullmatch(r"(The .+) collides with (the .+)", ch["choice"])
                assert mc, ch["choice"]
                x, y = resolve(mc.group(1), props), resolve(mc.group(2), props)
                assert o not in (x, y)
                ok = _pair(x, y) in happen
                assert ch["answer"] == ("correct" if ok else "wrong"), (q["question"], ch["choice"])
                correct += ok
                wrong += not ok
            asked += 1
    assert asked >= 20 and correct >= 5 and wrong >= 5


def test_explanatory_answers_by_resimulation(videos):
    asked = 0
    for v, scene, traj in videos:
        props = [o.describe() for o in scene.objects]
        for q in v["questions"]["questions"]:
            if q["question_type"] != "explanatory":
                continue
            m = re.fullmatch(
                r"Which of the following is responsible for the collision between (the .+) and (the .+)\?",
                q["question"],
            )
            assert m, q["question"]
            a, b = _pair(resolve(m.group(1), props), resolve(m.group(2), props))
            assert pairs(traj, OBSERVED).count((a, b)) == 1  # the question names one event
            assert 2 <= len(q["choices"]) <= 4
            assert any(ch["answer"] == "correct" for ch in q["choices"])
            for ch in q["choices"]:
                text = ch["choice"]
                if mc := re.fullmatch(r"The presence of (the .+)", text):
                    world = simulate(scene, removed=resolve(mc.group(1), props))
                elif mc := re.fullmatch(r"(The .+)'s entering the scene", text):
                    o = resolve(mc.group(1), props)
                    assert scene.objects[o].enter_frame > 0
                    world = simulate(scene, removed=o)
                elif mc := re.fullmatch(r"The collision between (the .+) and (the .+)", text):
                    x, y = _pair(resolve(mc.group(1), props), resolve(mc.group(2), props))
                    assert (x, y) in pairs(traj, OBSERVED) and (x, y) != (a, b)
                    world = simulate(scene, prevented=(x, y))
                else:
                    raise AssertionError(f"unexpected choice {text!r}")
                still = (a, b) in pairs(world, OBSERVED)
                assert ch["answer"] == ("wrong" if still else "correct"), (q["question"], text)
            asked += 1
    assert asked >= 10


def test_predictive_answers_by_simulation(videos):
    asked = 0
    for v, scene, traj in videos:
        props = [o.describe() for o in scene.objects]
        future = {(c.a, c.b) for c in traj.collisions if c.frame >= OBSERVED}
        leaving = {
            o
            for t in range(OBSERVED, T)
            for o in range(len(scene.objects))
            if traj.in_view[t - 1, o] and not traj.in_view[t, o]
        }
        for q in v["questions"]["questions"]:
            if q["question_type"] != "predictive":
                continue
            assert q["question"] == "What will happen next?"
            assert any(ch["answer"] == "correct" for ch in q["choices"])
            for ch in q["choices"]:
                if mc := re.fullmatch(r"(The .+) collides with (the .+)", ch["choice"]):
                    ok = _pair(resolve(mc.group(1), props), resolve(mc.group(2), props)) in future
                elif mc := re.fullmatch(r"(The .+) exits the scene", ch["choice"]):
                    o = resolve(mc.group(1), props)
                    assert traj.in_view[OBSERVED - 1, o]
                    ok = o in leaving
                else:
                    raise AssertionError(f"unexpected choice {ch['choice']!r}")
                assert ch["answer"] == ("correct" if ok else "wrong"), ch["choice"]
            asked += 1
    assert asked >= 3


# --- config validation and scene acceptance -------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: SceneConfig(min_objects=5, max_objects=3), "min_objects"),
        (lambda: PhysicsConfig(fps=0), "fps"),
        (lambda: QuestionConfig(predictive=2), "predictive"),
        (lambda: GenerateConfig(videos={"bogus": 1}), "videos"),
    ],
)
def test_config_validation(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.parametrize("lo, hi", [(2, 3), (0, 0)])
def test_accepted_scenes_respect_collision_range(lo, hi):
    cfg = SceneConfig(
        observed_frames=40, future_frames=10, enter_frame_range=(2, 30), min_collisions=lo, max_collisions=hi
    )
    for seed in range(20):
        _, traj = sample_accepted_scene(np.random.default_rng(seed), cfg, PHYS)
        assert lo <= len(traj.collisions_before(cfg.observed_frames)) <= hi


def test_impossible_collision_range_raises():
    cfg = SceneConfig(
        observed_frames=40,
        future_frames=10,
        enter_frame_range=(2, 30),
        min_collisions=50,
        max_collisions=60,
        max_tries=3,
    )
    with pytest.raises(RuntimeError, match=r"50\.\.60 collisions in 3 tries"):
        sample_accepted_scene(np.random.default_rng(0), cfg, PHYS)


# --- what a question may say: only what the video shows, in no telling order -------------------

_ATTR = "|".join([*COLORS, *MATERIALS])
_PHRASE = re.compile(rf"\b[Tt]he ((?:(?:{_ATTR}) )*(?:object|cube|sphere|cylinder))\b")


def _texts(q: dict) -> list[str]:
    return [q["question"], *(c["choice"] for c in q.get("choices", []))]


@pytest.fixture(scope="module")
def late_entry_videos():
    """Objects enter up to the last observed frame, so some are never seen."""
    cfg = replace(QCFG, scene=replace(SCENE_CFG, p_entering=0.5, enter_frame_range=(25, 39)))
    out = []
    for i in range(24):
        rng = np.random.default_rng(video_seed(cfg.seed, "train", i))
        scene, traj = sample_accepted_scene(rng, cfg.scene, cfg.physics)
        out.append((make_video(cfg, "train", i), scene, traj))
    return out


def test_questions_name_only_objects_the_video_shows(late_entry_videos):
    named = unseen = 0
    for v, scene, traj in late_entry_videos:
        props = json.loads(v["record"]["annotations"])["object_property"]
        seen = {o for o in range(len(scene.objects)) if traj.in_view[:OBSERVED, o].any()}
        unseen += len(scene.objects) - len(seen)
        for q in v["questions"]["questions"]:
            for text in _texts(q):
                for phrase in _PHRASE.findall(text):
                    try:
                        oid = resolve("the " + phrase, props)
                    except AssertionError:
                        continue  # not a unique reference ("the object that collides with ...")
                    named += 1
                    assert oid in seen, (text, oid)
    assert named > 100 and unseen > 5  # the case this test is about does occur


def test_collisions_are_events_the_camera_sees(videos):
    n = 0
    for v, _, traj in videos:
        ann = json.loads(v["record"]["annotations"])
        for c in ann["collision"]:
            frame = ann["motion_trajectory"][c["frame_id"]]["objects"]
            assert all(frame[o]["inside_camera_view"] for o in c["object_ids"]), c
            n += 1
        for c in traj.offscreen_collisions:
            assert not (traj.in_view[c.frame, c.a] and traj.in_view[c.frame, c.b])
    assert n > 20


def test_choice_position_does_not_give_the_answer_away(videos):
    first_correct = first_wrong = 0
    for v, _, _ in videos:
        for q in v["questions"]["questions"]:
            answers = [c["answer"] for c in q.get("choices", [])]
            if "correct" in answers and "wrong" in answers:
                first_correct += answers[0] == "correct"
                first_wrong += answers[0] == "wrong"
    assert first_correct > 5 and first_wrong > 5, (first_correct, first_wrong)


def test_explanatory_choices_are_distinct_single_events(videos):
    for v, _, traj in videos:
        props = json.loads(v["record"]["annotations"])["object_property"]
        counts = Counter(_pair(c.a, c.b) for c in traj.collisions_before(OBSERVED))
        for q in v["questions"]["questions"]:
            if q["question_type"] != "explanatory":
                continue
            texts = [c["choice"] for c in q["choices"]]
            assert len(set(texts)) == len(texts), texts
            for t in texts:
                m = re.fullmatch(r"The collision between (the [a-z ]+?) and (the [a-z ]+)", t)
                if m:
                    a, b = resolve(m.group(1), props), resolve(m.group(2), props)
                    assert counts[_pair(a, b)] == 1, (t, counts)


# --- external pushes (actions) ----------------------------------------------------------------


def _mass(shape: str, material: str) -> float:
    density = PHYS.density_metal if material == "metal" else PHYS.density_rubber
    return density * (4 * S * S if shape == "cube" else math.pi * S * S)


@pytest.mark.parametrize("shape, material", [("sphere", "rubber"), ("cube", "metal")])
def test_push_changes_velocity_by_impulse_over_mass_from_the_next_frame(shape, material):
    f, impulse = 10, (0.3, -0.6)
    base = make_scene(obj(0, 0.0, 0.0, 0.5, 0.0, shape=shape, material=material), obj(1, -2.4, 1.5))
    plain, pushed = simulate(base), simulate(replace(base, pushes=(Push(f, 0, impulse),)))
    # frames 0..f show no effect; frame f + 1 is the first that does
    np.testing.assert_array_equal(pushed.states[: f + 1], plain.states[: f + 1])
    # a free body: the velocity change is impulse / mass, then one frame of linear damping
    damping = {"sphere": PHYS.damping_sphere, "cube": PHYS.damping_cube}[shape]
    h = 1.0 / (PHYS.fps * PHYS.substeps)
    kept = (1.0 + h * damping) ** -PHYS.substeps
    dv = pushed.states[f + 1, 0, 2:4] - plain.states[f + 1, 0, 2:4]
    np.testing.assert_allclose(dv, np.array(impulse) / _mass(shape, material) * kept, rtol=1e-4)
    assert not np.allclose(pushed.states[-1, 0, :2], plain.states[-1, 0, :2], atol=0.1)
    np.testing.assert_array_equal(pushed.states[:, 1], plain.states[:, 1])  # the other is untouched


def test_push_on_an_object_not_there_does_nothing():
    # object 1 enters at frame 20: a push at frame 5 finds no body
    base = make_scene(obj(0, -1.5, 0.0, 1.0, 0.0), obj(1, 2.0, 1.2, -1.0, 0.0, enter=20))
    traj = simulate(replace(base, pushes=(Push(5, 1, (1.0, 0.0)),)))
    np.testing.assert_array_equal(traj.states, simulate(base).states)
    assert not actions_array(replace(base, pushes=(Push(5, 1, (1.0, 0.0)),)), traj).any()


def test_push_can_cause_a_collision():
    base = make_scene(obj(0, -1.0, 0.0), obj(1, 1.0, 0.0), obj(2, -2.4, 1.5))
    assert pairs(simulate(base)) == []
    traj = simulate(replace(base, pushes=(Push(3, 0, (1.0, 0.0)),)))  # ~2.6 units/s towards 1
    assert pairs(traj) == [(0, 1)]
    assert traj.states[-1, 1, 0] > 1.5  # and object 1 was knocked on


def test_counterfactual_without_the_pushed_object_has_no_push():
    # 0 is pushed towards 1; in the world without 0 the push does nothing and 1 never moves
    base = make_scene(obj(0, -1.0, 0.0), obj(1, 1.0, 0.0), obj(2, -2.0, -1.4, 0.0, 1.0))
    scene = replace(base, pushes=(Push(3, 0, (1.0, 0.0)),))
    assert pairs(simulate(scene)) == [(0, 1)]
    without = simulate(scene, removed=0)
    np.testing.assert_array_equal(without.states, simulate(base, removed=0).states)
    assert without.collisions == [] and np.all(without.states[:, 1, 2:4] == 0)
    assert not actions_array(scene, without).any()
    # a push on an object that stays apart from the others does not change them either
    apart = replace(base, pushes=(Push(3, 2, (0.0, -0.3)),))
    np.testing.assert_array_equal(simulate(apart).states[:, :2], simulate(base).states[:, :2])
    # the push acts in the prevented world too
    prevented = simulate(scene, prevented=(0, 1))
    assert prevented.collisions == [] and prevented.states[-1, 0, 0] > 1.0


def test_actions_array_rows():
    scene = replace(
        make_scene(obj(0, -1.5, 0.0, 1.0, 0.0), obj(1, 2.0, 1.2)),
        pushes=(Push(4, 0, (0.2, 0.1)), Push(7, 1, (-0.3, 0.0))),
    )
    traj = simulate(scene)
    a = actions_array(scene, traj)
    assert a.shape == (T, len(ACTION_FIELDS)) and a.dtype == np.float32
    assert np.flatnonzero(a[:, 0]).tolist() == [4, 7]
    np.testing.assert_array_equal(a[4], np.float32([1.0, *traj.states[4, 0, :2], 0.2, 0.1]))
    np.testing.assert_array_equal(a[7], np.float32([1.0, *traj.states[7, 1, :2], -0.3, 0.0]))
    assert not np.delete(a, [4, 7], axis=0).any()


def test_scene_rejects_bad_pushes():
    with pytest.raises(ValueError, match="at most one push per frame"):
        Scene(
            objects=(obj(0, 0.0, 0.0), obj(1, 1.0, 1.0)),
            physics=PHYS,
            num_frames=T,
            pushes=(Push(3, 0, (1.0, 0.0)), Push(3, 1, (1.0, 0.0))),
        )
    with pytest.raises(ValueError, match="must name one of the scene's objects"):
        replace(make_scene(obj(0, 0.0, 0.0)), pushes=(Push(3, 5, (1.0, 0.0)),))


def test_sampled_pushes():
    cfg = replace(SCENE_CFG, pushes=12, p_entering=0.5, push_strength=(0.5, 0.8))
    for seed in range(10):
        scene = sample_scene(np.random.default_rng(seed), cfg, PHYS)
        frames = [p.frame for p in scene.pushes]
        assert len(frames) == 12 and frames == sorted(set(frames))
        assert all(1 <= f <= OBSERVED - 1 for f in frames)
        for p in scene.pushes:
            assert scene.objects[p.object_id].enter_frame <= p.frame  # present then
            assert 0.5 <= math.hypot(*p.impulse) <= 0.8
        # pushes are drawn after everything else: the objects are those of the push-free scene
        plain = sample_scene(np.random.default_rng(seed), replace(cfg, pushes=0), PHYS)
        assert scene.objects == plain.objects and plain.pushes == ()


def test_no_pushes_draws_nothing_extra(monkeypatch):
    """pushes=0 must leave existing seeds' scenes, stores and questions byte-identical."""

    def never(*args):
        raise AssertionError("pushes=0 sampled pushes")

    monkeypatch.setattr(clevrer_sim, "_sample_pushes", never)
    other = replace(SCENE_CFG, push_strength=(5.0, 9.0))
    for seed in range(4):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        a, ta = sample_accepted_scene(rng_a, SCENE_CFG, PHYS)
        b, tb = sample_accepted_scene(rng_b, other, PHYS)
        assert a.pushes == () and a == b and np.array_equal(ta.states, tb.states)
        assert rng_a.bit_generator.state == rng_b.bit_generator.state
    # nothing about pushes reaches the stored bytes: no actions, no truth key, no config keys
    cfg = replace(QCFG, scene=other)
    v = make_video(cfg, "train", 0)["record"]
    assert "actions" not in v and "pushes" not in json.loads(v["truth"])
    assert "push" not in cfg.to_json()
    assert "push" in replace(cfg, scene=replace(other, pushes=1)).to_json()


def test_generated_store_with_pushes(tmp_path):
    scene = SceneConfig(observed_frames=20, future_frames=6, enter_frame_range=(2, 10), pushes=3)
    cfg = GenerateConfig(videos={"validation": 2}, height=16, width=16, scene=scene)
    store_path, qpath = generate_split(cfg, "validation", tmp_path)
    with VideoStore(store_path) as s:
        assert s.has("actions") and s.action_fields == ACTION_FIELDS
        assert s.f["actions"].shape == (2, 26, 5) and s.f["actions"].dtype == np.float32
        for i in range(len(s)):
            a, states, truth = s.read("actions", i), s.read("states", i), s.truth(i)
            rows = np.flatnonzero(np.any(a != 0, axis=1))
            assert len(rows) == 3 and np.all(a[rows, 0] == 1)
            assert rows.tolist() == [p["frame"] for p in truth["pushes"]]
            for p in truth["pushes"]:
                t, o = p["frame"], p["object_id"]
                np.testing.assert_array_equal(a[t, 1:3], states[t, o, :2])
                np.testing.assert_allclose(a[t, 3:], p["impulse"], rtol=1e-6)
            np.testing.assert_array_equal(s.read("actions", i, 2, 20, 3), a[2:20:3])
    assert all(v["questions"] for v in json.loads(qpath.read_text()))  # the questions were made


def _actions_store(path, actions=5):
    layout = StoreLayout(num_videos=2, num_frames=6, height=4, width=4, actions=actions)
    names = ACTION_FIELDS[:actions]
    with VideoStoreWriter(path, layout, {"source": "test"}, action_fields=names) as w:
        for i in range(2):
            w.write(
                i,
                {
                    "frames": np.zeros((6, 4, 4, 3), np.uint8),
                    "video_ids": f"video_{i:05d}",
                    "scene_index": i,
                    "annotations": "",
                    "actions": np.full((6, actions), i, np.float32),
                },
            )
    return path


def test_store_actions_round_trip_and_bad_files(tmp_path):
    path = _actions_store(tmp_path / "s.h5")
    with VideoStore(path) as s:
        assert s.has("actions") and s.action_fields == ACTION_FIELDS
        np.testing.assert_array_equal(s.read("actions", 1, 0, 6, 2), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"5 action columns but 0 action_fields"):
        VideoStoreWriter(tmp_path / "t.h5", StoreLayout(2, 6, 4, 4, actions=5), {"source": "test"})
    for bad, msg in [
        (np.zeros((2, 6, 5), np.float64), r"field 'actions' has dtype float64, expected float32"),
        (np.zeros((2, 6, 4), np.float32), r"field 'actions' has shape \(2, 6, 4\), expected \(2, 6, 5\)"),
        (
            np.zeros((2, 6), np.float32),
            r"field 'actions' has shape \(2, 6\), expected \(2, 6, 5\) \(per frame\) or \(2, 5\) "
            r"\(one per video\)",
        ),
    ]:
        path = _actions_store(tmp_path / "bad.h5")
        with h5py.File(path, "a") as f:
            del f["actions"]
            f.create_dataset("actions", data=bad)
        with pytest.raises(StoreError, match=r"bad\.h5: " + msg):
            VideoStore(path)
    path = _actions_store(tmp_path / "noattr.h5")
    with h5py.File(path, "a") as f:
        del f.attrs["action_fields"]
    with pytest.raises(StoreError, match=r"noattr\.h5: field 'actions' is present but the 'action_fields'"):
        VideoStore(path)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"pushes": -1}, r"pushes \(-1\) must be in 0\.\.39"),
        ({"pushes": 40}, r"pushes \(40\) must be in 0\.\.39"),
        ({"pushes": 1.5}, r"pushes must be an integer, got 1\.5"),
        ({"push_strength": (0.0, 1.0)}, r"push_strength \(0\.0, 1\.0\) must be finite with 0 < min <= max"),
        ({"push_strength": (2.0, 1.0)}, r"push_strength \(2\.0, 1\.0\) must be"),
        ({"push_strength": (1.0,)}, r"push_strength must be a pair"),
        ({"push_strength": (1.0, math.inf)}, r"push_strength .* must be finite"),
    ],
)
def test_push_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        replace(SCENE_CFG, **kw)
