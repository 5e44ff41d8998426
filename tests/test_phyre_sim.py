"""Tests of phyre_sim: the PHYRE-protocol world (validity, simulation, rendering, folds, templates)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from causaljepa.sim import phyre_sim as ps
from causaljepa.sim.phyre_sim import BodySpec, Shape, Task


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return ps.all_tasks()


def _box(role: str, x: float, y: float, hw: float, hh: float, angle: float = 0.0) -> BodySpec:
    return BodySpec(role, (Shape("box", half_w=hw, half_h=hh),), x, y, angle)


def _circle(role: str, x: float, y: float, r: float) -> BodySpec:
    return BodySpec(role, (Shape("circle", radius=r),), x, y)


def _hand_task(bodies: tuple[BodySpec, ...], goal: tuple[int, int]) -> Task:
    return Task("hand", 99, 0, bodies, goal)


def _pixel(x: float, y: float, size: int = 64) -> tuple[int, int]:
    """(row, col) of the pixel holding scene point (x, y) in a size x size render."""
    return int((ps.SCENE_SIZE - y) / ps.SCENE_SIZE * size), int(x / ps.SCENE_SIZE * size)


# ----------------------------------------------------------------------------- actions and validity


def test_action_to_ball_mapping():
    assert ps.action_to_ball((0.5, 0.25, 0.0)) == (128.0, 64.0, 2.0)
    assert ps.action_to_ball(np.array([1.0, 1.0, 1.0], np.float32)) == (256.0, 256.0, 32.0)
    cx, cy, r = ps.action_to_ball((0.1, 0.2, 0.5))
    assert cx == pytest.approx(25.6) and cy == pytest.approx(51.2) and r == pytest.approx(17.0)
    with pytest.raises(ValueError, match="3 numbers"):
        ps.action_to_ball((0.1, 0.2))


def test_sample_actions_uniform_and_deterministic():
    a = ps.sample_actions(1000, 3)
    assert a.shape == (1000, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, ps.sample_actions(1000, 3))
    assert not np.array_equal(a, ps.sample_actions(1000, 4))


def test_valid_mask_agrees_with_is_valid(tasks):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.05, 1.05, (10_000, 3))
    for t in (0, 4, 7):
        task = tasks[t * 100 + 3]
        mask = ps.valid_mask(task, actions)
        assert mask.shape == (10_000,) and mask.dtype == bool
        scalar = np.array([ps.is_valid(task, a) for a in actions])
        np.testing.assert_array_equal(mask, scalar)
        assert 0.2 < mask.mean() < 0.9  # both valid and invalid actions occur


def test_validity_hand_cases():
    # a static bar: top edge at y = 105, x in [88, 168]; a tilted box around (200, 200)
    bar = _box("static", 128, 100, 40, 5)
    tilted = _box("static", 200, 200, 20, 4, math.pi / 4)
    task = _hand_task((bar, _circle("goal", 30, 10, 10), tilted), (1, 0))
    r = 2 + 30 * 0.5  # 17 px
    on_top = (128 / 256, (105 + r) / 256, 0.5)  # exactly touching the top edge: allowed
    assert ps.is_valid(task, on_top)
    assert not ps.is_valid(task, (128 / 256, (105 + r - 0.5) / 256, 0.5))  # overlaps the top edge
    # near the bar's corner (168, 105): inside the bounding square, outside the rounded corner
    d = (r + 1) / math.sqrt(2)
    assert ps.is_valid(task, ((168 + d) / 256, (105 + d) / 256, 0.5))
    assert not ps.is_valid(task, ((168 + d - 2) / 256, (105 + d - 2) / 256, 0.5))
    # the tilted box: a point on its diagonal axis beyond its short side is free, one on its long axis is not
    n = (-math.sin(math.pi / 4), math.cos(math.pi / 4))  # the box's local +y in the scene
    far = 4 + r + 0.5
    assert ps.is_valid(task, ((200 + far * n[0]) / 256, (200 + far * n[1]) / 256, 0.5))
    assert not ps.is_valid(task, ((200 + (far - 1) * n[0]) / 256, (200 + (far - 1) * n[1]) / 256, 0.5))
    # the circle body
    assert not ps.is_valid(task, (30 / 256, 25 / 256, 0.2))  # 15 px from its centre, radii 8 + 10
    # leaving the scene, or coordinates outside [0, 1]
    assert not ps.is_valid(task, (0.0, 0.5, 0.1))
    assert not ps.is_valid(task, (0.5, 1.0, 0.1))
    assert not ps.is_valid(task, (0.5, 0.5, 1.01))
    assert not ps.is_valid(task, (-0.01, 0.5, 0.0))
    assert not ps.is_valid(task, (0.5, float("nan"), 0.0))
    assert ps.is_valid(task, (0.5, 0.7, 0.0))
    cases = np.array([on_top, (0.0, 0.5, 0.1), (0.5, 0.7, 0.0)])
    np.testing.assert_array_equal(ps.valid_mask(task, cases), [True, False, True])
    with pytest.raises(ValueError, match="shape"):
        ps.valid_mask(task, np.zeros((4, 2)))


def test_invalid_action_is_not_simulated(tasks):
    with pytest.raises(ValueError, match=r"invalid.*00000:000"):
        ps.simulate(tasks[0], (1.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="invalid"):
        ps.simulate(tasks[0], (0.5, 0.99, 0.9), fps=None)  # leaves the scene at the top


# ----------------------------------------------------------------------------- simulation


def _valid_actions(task: Task, n: int, seed: int) -> np.ndarray:
    a = ps.sample_actions(4 * n, seed)
    return a[ps.valid_mask(task, a)][:n]


def test_rollout_shapes_and_ball_timing(tasks):
    task = tasks[5 * 100 + 1]
    n = len(task.bodies)
    action = _valid_actions(task, 1, 0)[0]
    ro = ps.simulate(task, action)
    assert ro.fps == 5.0
    assert ro.states.shape == (41, n + 1, 6) and ro.states.dtype == np.float32
    assert ro.present.shape == (41, n + 1) and ro.present.dtype == bool
    assert ro.present[:, :n].all()
    assert not ro.present[0, n] and ro.present[1:, n].all()  # frame 0 is the scene before the ball
    np.testing.assert_array_equal(ro.states[0, n], 0.0)
    cx, cy, _ = ps.action_to_ball(action)
    # frame 0 is the task's initial scene, whatever the action
    for k, body in enumerate(task.bodies):
        assert ro.states[0, k, 0] == pytest.approx(body.x / 256, abs=1e-6)
        assert ro.states[0, k, 1] == pytest.approx(body.y / 256, abs=1e-6)
    assert ro.states[1, n, 0] == pytest.approx(cx / 256, abs=0.02)
    assert ro.states[1, n, 1] < cy / 256 + 1e-6  # it has started to fall
    assert ps.simulate(task, action, fps=10).states.shape == (81, n + 1, 6)
    no_ball = ps.simulate(task, None)
    assert not no_ball.present[:, n].any()
    np.testing.assert_array_equal(no_ball.states[0], ro.states[0])


def test_simulate_is_deterministic(tasks):
    task = tasks[9 * 100 + 2]
    action = _valid_actions(task, 1, 1)[0]
    a, b = ps.simulate(task, action), ps.simulate(task, action)
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.present, b.present)
    assert (a.solved, a.solved_at) == (b.solved, b.solved_at)
    assert ps.make_task(9, 2) == task


def test_record_and_fast_path_agree(tasks):
    n_solved = 0
    for task in (tasks[0], tasks[100 + 4], tasks[600 + 2], tasks[900 + 5]):
        for action in _valid_actions(task, 50, 7):
            rec = ps.simulate(task, action, fps=5)
            fast = ps.simulate(task, action, fps=None)
            assert fast.states is None and fast.present is None
            assert rec.solved == fast.solved
            assert rec.solved_at == pytest.approx(fast.solved_at)
            n_solved += rec.solved
    assert n_solved > 0  # the agreement is checked on solved actions too


def test_no_ball_never_solves(tasks):
    assert len(tasks) == 100 * len(ps.TEMPLATES)
    for task in tasks:
        assert not ps.simulate(task, None, fps=None).solved, task.task_id


def test_goal_contact_for_three_seconds():
    pad = _box("goal_static", 128, 4, 60, 4)
    block = _box("goal", 128, 8 + 10, 10, 10)  # resting on the pad from the start
    ro = ps.simulate(_hand_task((pad, block), (1, 0)), None)
    assert ro.solved and ro.solved_at == pytest.approx(3.0, abs=2 / 60)
    fast = ps.simulate(_hand_task((pad, block), (0, 1)), None, fps=None)
    assert fast.solved and fast.solved_at == pytest.approx(ro.solved_at)
    apart = (_circle("goal", 40, 10, 10), _circle("subject", 200, 10, 10))
    for fps in (5.0, None):
        ro = ps.simulate(_hand_task(apart, (0, 1)), None, fps=fps)
        assert not ro.solved and ro.solved_at == -1.0
    short = Task("hand", 99, 0, (pad, block), (1, 0), max_seconds=2.5)
    assert not ps.simulate(short, None, fps=None).solved  # 3 s of contact do not fit in 2.5 s


def test_no_collide_lets_the_ball_pass_through():
    bar = _box("static", 128, 120, 60, 5)
    bodies = (bar, _circle("goal", 30, 10, 10), _box("goal_static", 220, 4, 20, 4))
    task = _hand_task(bodies, (1, 2))
    action = (0.5, 0.8, 0.3)  # radius 11 px, above the bar
    r = ps.action_to_ball(action)[2]
    stopped = ps.simulate(task, action)
    assert stopped.states[-1, 3, 1] * 256 == pytest.approx(125 + r, abs=1.0)
    through = ps.simulate(task, action, no_collide=(0, 3))
    assert through.states[-1, 3, 1] * 256 == pytest.approx(r, abs=1.0)  # on the floor
    np.testing.assert_array_equal(through.states[:, :3], stopped.states[:, :3])
    with pytest.raises(ValueError, match="no_collide"):
        ps.simulate(task, action, no_collide=(0, 4))
    with pytest.raises(ValueError, match="no_collide"):
        ps.simulate(task, action, no_collide=(2, 2))


# ----------------------------------------------------------------------------- rendering


def test_render_ids_and_colours():
    bar = _box("static", 128, 120, 60, 6)
    goal = _circle("goal", 40, 12, 12)
    pad = _box("goal_static", 220, 4, 20, 4)
    task = _hand_task((bar, goal, pad), (1, 2))
    action = (0.5, 0.8, 0.3)
    ro = ps.simulate(task, action)
    r = ps.action_to_ball(action)[2]
    frames, masks = ps.render(task, ro.states, ro.present, r)
    assert frames.shape == (41, 64, 64, 3) and frames.dtype == np.uint8
    assert masks.shape == (41, 64, 64) and masks.dtype == np.uint8
    for k, body, role in ((0, bar, "static"), (1, goal, "goal")):
        row, col = _pixel(body.x, body.y)
        assert masks[0, row, col] == k + 1
        np.testing.assert_array_equal(frames[0, row, col], ps.ROLE_RGB[role])
    row, col = _pixel(220, 4)
    assert masks[0, row, col] == 3
    np.testing.assert_array_equal(frames[0, row, col], ps.ROLE_RGB["goal_static"])
    assert masks[0, 2, 2] == 0 and tuple(frames[0, 2, 2]) == ps.ROLE_RGB["background"]
    assert not (masks[0] == 4).any()  # no ball before it is placed
    bx, by = ro.states[1, 3, 0] * 256, ro.states[1, 3, 1] * 256
    row, col = _pixel(bx, by)
    assert masks[1, row, col] == 4
    np.testing.assert_array_equal(frames[1, row, col], ps.ROLE_RGB["ball"])
    assert set(np.unique(masks)) == {0, 1, 2, 3, 4}
    black, _ = ps.render(task, ro.states, ro.present, r, background="black")
    assert tuple(black[0, 2, 2]) == (0, 0, 0)
    row, col = _pixel(bar.x, bar.y)
    assert tuple(black[0, row, col]) == (255, 255, 255)  # static black bodies are drawn white on black
    no_ball, no_ball_masks = ps.render(task, ro.states, ro.present, None, height=32, width=48)
    assert no_ball.shape == (41, 32, 48, 3) and not (no_ball_masks == 4).any()
    with pytest.raises(ValueError, match="background"):
        ps.render(task, ro.states, ro.present, r, background="grey")


def test_later_bodies_drawn_on_top():
    under = _box("static", 128, 100, 30, 10)
    over = _box("dynamic", 128, 100, 10, 10)  # overlapping, listed later
    task = _hand_task((under, over, _circle("goal", 30, 10, 10)), (2, 0))
    states = np.zeros((1, 3, 6), np.float32)
    for k, b in enumerate(task.bodies):
        states[0, k, :3] = (b.x / 256, b.y / 256, b.angle)
    _, masks = ps.render(task, states, np.ones((1, 3), bool), None)
    row, col = _pixel(128, 100)
    assert masks[0, row, col] == 2
    assert masks[0, row, _pixel(150, 100)[1]] == 1


def test_every_template_body_is_visible_at_64(tasks):
    for t in range(len(ps.TEMPLATES)):
        for task in tasks[t * 100 : t * 100 + 5]:
            ro = ps.simulate(task, None, fps=5)
            _, masks = ps.render(task, ro.states[:1], ro.present[:1], None)
            assert set(np.unique(masks[0])) == set(range(len(task.bodies) + 1)), task.task_id


# ----------------------------------------------------------------------------- tasks, templates, folds


def test_templates_and_tasks(tasks):
    assert len(ps.TEMPLATES) >= 10 and ps.TEMPLATE_NAMES == tuple(ps.TEMPLATES)
    assert max(len(t.bodies) for t in tasks) == ps.MAX_OBJECTS <= 7
    assert tasks[307].task_id == "00003:007" and tasks[307].template == ps.TEMPLATE_NAMES[3]
    for t in range(len(ps.TEMPLATES)):
        group = tasks[t * 100 : (t + 1) * 100]
        assert len({(g.bodies, g.goal) for g in group}) == 100  # 100 distinct variations
        for task in group:
            i, j = task.goal
            assert task.bodies[i].dynamic or task.bodies[j].dynamic
    assert ps.all_tasks([2], tasks_per_template=3) == tasks[200:203]


def test_folds(tasks):
    n_templates = len(ps.TEMPLATES)
    for seed in range(3):
        train, test = ps.folds(tasks, seed, "within")
        assert not set(train) & set(test) and sorted(train + test) == list(range(len(tasks)))
        for t in range(n_templates):
            assert sum(tasks[k].template_id == t for k in test) == 20
        assert (train, test) == ps.folds(tasks, seed, "within")
        train, test = ps.folds(tasks, seed, "cross")
        assert sorted(train + test) == list(range(len(tasks)))
        test_templates = {tasks[k].template_id for k in test}
        assert len(test_templates) == max(1, round(0.2 * n_templates))
        assert not test_templates & {tasks[k].template_id for k in train}
        assert (train, test) == ps.folds(tasks, seed, "cross")
    assert ps.folds(tasks, 0, "within") != ps.folds(tasks, 1, "within")
    crosses = {tuple(ps.folds(tasks, s, "cross")[1]) for s in range(10)}
    assert len(crosses) > 1
    few = [ps.make_task(0, i) for i in range(3)]
    assert len(ps.folds(few, 0, "within")[1]) == 1  # at least one test task per template
    with pytest.raises(ValueError, match="kind"):
        ps.folds(tasks, 0, "sideways")


def test_bad_inputs_raise():
    task = ps.make_task(0, 0)
    with pytest.raises(ValueError, match="fps"):
        ps.simulate(task, None, fps=7.0)
    with pytest.raises(ValueError, match="fps"):
        ps.simulate(task, None, fps=0.0)
    with pytest.raises(ValueError, match="role"):
        BodySpec("wizard", (Shape("circle", radius=5),), 10, 10)
    with pytest.raises(ValueError, match="kind"):
        Shape("triangle", radius=5)
    with pytest.raises(ValueError, match="radius"):
        Shape("circle")
    with pytest.raises(ValueError, match="half_w"):
        Shape("box", half_w=3)
    with pytest.raises(ValueError, match="template_id"):
        ps.make_task(len(ps.TEMPLATES), 0)
    with pytest.raises(ValueError, match="template_id"):
        ps.make_task(-1, 0)
    with pytest.raises(ValueError, match="static"):
        _hand_task((_box("static", 50, 50, 5, 5), _box("goal_static", 100, 50, 5, 5)), (0, 1))
    with pytest.raises(ValueError, match="goal"):
        _hand_task((_box("static", 50, 50, 5, 5), _circle("goal", 100, 50, 5)), (1, 1))
    assert BodySpec("goal", (Shape("circle", radius=5),), 0, 0).dynamic
    assert not BodySpec("goal_static", (Shape("circle", radius=5),), 0, 0).dynamic


def _shape_points(body: BodySpec, shape: Shape) -> np.ndarray:
    """Extreme points of one shape in the scene: a box's corners, a circle's four axis points."""
    c, s = math.cos(body.angle), math.sin(body.angle)
    cx = body.x + c * shape.dx - s * shape.dy
    cy = body.y + s * shape.dx + c * shape.dy
    if shape.kind == "circle":
        r = shape.radius
        return np.array([(cx - r, cy), (cx + r, cy), (cx, cy - r), (cx, cy + r)])
    a = body.angle + shape.angle
    u, v = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    return np.array(
        [(cx, cy) + sx * shape.half_w * u + sy * shape.half_h * v for sx in (-1, 1) for sy in (-1, 1)]
    )


def test_template_bodies_inside_scene(tasks):
    for task in tasks:
        for body in task.bodies:
            for shape in body.shapes:
                p = _shape_points(body, shape)
                assert p.min() >= -0.5 and p[:, 0].max() <= 256.5 and p[:, 1].max() <= 256.5, task.task_id
                thickness = (
                    2 * shape.radius if shape.kind == "circle" else 2 * min(shape.half_w, shape.half_h)
                )
                assert thickness >= 6.0, task.task_id
