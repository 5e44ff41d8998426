"""phyre_sim: a PHYRE-protocol physics world on Box2D, with templates of our own design.

The protocol is PHYRE's ball tier (Bakhtin et al. 2019): a task is a 2-D scene of bodies; an
action ``(x, y, r)`` in [0, 1]^3 places one red ball in it; the task is solved if the two goal
bodies ``task.goal`` touch continuously for 3 s (``GOAL_STEPS`` = 180 physics steps) at some time
within ``task.max_seconds``. Templates, scenes and code are ours, written from scratch.

Units and conventions
---------------------
- The scene is ``SCENE_SIZE`` x ``SCENE_SIZE`` = 256 x 256 scene pixels (px), y up, origin at the
  bottom-left corner. Box2D works in world units, 1 unit = ``PX_PER_UNIT`` = 25.6 px (the scene is
  10 x 10 units); gravity is (0, -9.8) units/s^2; ``STEPS_PER_SECOND`` = 60 physics steps a second.
- Invisible static boundaries (not objects, never rendered): the floor y = 0 and walls at x = 0 and
  x = 256. The top is open.
- Action -> ball (``action_to_ball``): centre (x * 256, y * 256) px, radius 2 + 30 * r px. The ball
  is dynamic with ``BALL_DENSITY``, ``BALL_FRICTION``, ``BALL_RESTITUTION``. Scene bodies default
  to the same material (``BodySpec``). Every dynamic body has angular damping
  ``ANGULAR_DAMPING`` (a rolling resistance, so that balls come to rest instead of rolling for ever).
- An action is valid (``is_valid``, ``valid_mask``) when every coordinate is in [0, 1], the ball
  lies inside the scene (centre +- radius within [0, 256] in x and y) and it does not overlap any
  scene body's shape (exact circle-circle and circle-oriented-box distances; touching is allowed).
  Invalid actions are never simulated.
- Roles (``ROLES``) and colours (``ROLE_RGB``) follow PHYRE's colour code: "goal" green (dynamic),
  "subject" blue (dynamic), "goal_static" purple (static), "dynamic" gray, "static" black; the
  action ball is red ("ball", not a scene object), the background white.
- Recorded states (``Rollout.states``): columns ``STATE_FIELDS`` = x, y, angle, vx, vy, angular
  velocity; x, y are the body origin and vx, vy the centre-of-mass velocity, both in scene
  fractions (px / 256, per second); angle in rad, angular velocity in rad/s. Column O of the
  object axis (the last, O = len(task.bodies)) is the ball.
- Frame timing: frames are recorded at t = 0, 1/fps, ..., max_seconds. Frame 0 is the scene
  *before* the ball is placed: the ball is absent at frame 0 and created at t = 0 right after
  frame 0 is recorded, so it is present from frame 1 on. Frame 0 is therefore the same for every
  action of a task, and one encoded first frame serves every candidate action.

Templates (``TEMPLATES``, in a fixed order; ``TEMPLATE_NAMES``) are small functions of a
``np.random.Generator`` returning (bodies, goal). ``make_task(template_id, index)`` seeds one with
``[template_id, index]`` and redraws from it (so deterministically) any variation that is solved
without a ball or in which a body moves by more than ``REST_TOLERANCE`` px without a ball: every
task's scene is at rest until the ball arrives.

Public API: ``Shape``, ``BodySpec``, ``Task``, ``Rollout``; ``action_to_ball``, ``is_valid``,
``valid_mask``, ``sample_actions``; ``simulate``, ``solve_rate``; ``render``; ``TEMPLATES``,
``TEMPLATE_NAMES``, ``make_task``, ``all_tasks``, ``folds``; the constants above.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from Box2D import b2CircleShape, b2FixtureDef, b2PolygonShape, b2World

SCENE_SIZE = 256.0  # scene px
PX_PER_UNIT = 25.6  # scene px per Box2D world unit
STEPS_PER_SECOND = 60
VELOCITY_ITERATIONS = 10
POSITION_ITERATIONS = 10
GRAVITY = (0.0, -9.8)  # world units / s^2
GOAL_SECONDS = 3.0
GOAL_STEPS = 180  # = GOAL_SECONDS * STEPS_PER_SECOND consecutive touching steps
DEFAULT_MAX_SECONDS = 8.0
BALL_DENSITY = 1.0
BALL_FRICTION = 0.5
BALL_RESTITUTION = 0.2
ANGULAR_DAMPING = 0.5  # 1/s, every dynamic body (rolling resistance)
MAX_OBJECTS = 5  # the most scene bodies any template makes (the ball not counted)

ROLES = ("goal", "subject", "goal_static", "dynamic", "static")
DYNAMIC_ROLES = frozenset({"goal", "subject", "dynamic"})
ROLE_RGB: dict[str, tuple[int, int, int]] = {
    "background": (255, 255, 255),
    "ball": (230, 40, 40),
    "goal": (40, 170, 60),
    "subject": (40, 90, 220),
    "goal_static": (140, 60, 190),
    "dynamic": (150, 150, 150),
    "static": (0, 0, 0),
}
STATE_FIELDS = ("x", "y", "angle", "vx", "vy", "angular_velocity")
SHAPE_KINDS = ("circle", "box")
FOLD_KINDS = ("within", "cross")

_BOUNDARY_BIT = 1 << 15  # collision category of the invisible floor and walls
_MAX_BODIES = 14  # category bits 0..14 hold the scene bodies and the ball


@dataclass(frozen=True)
class Shape:
    """One fixture in its body's frame, scene px. A circle uses ``radius``; a box uses the half
    extents ``half_w``, ``half_h`` and is turned by ``angle`` (rad) within the body. ``dx``, ``dy``
    place the shape's centre relative to the body origin (in the body's frame)."""

    kind: str
    radius: float = 0.0
    half_w: float = 0.0
    half_h: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f"Shape: kind {self.kind!r} is unknown; use one of {SHAPE_KINDS}")
        if self.kind == "circle" and not self.radius > 0:
            raise ValueError(f"Shape: a circle needs radius > 0 (scene px), got {self.radius}")
        if self.kind == "box" and not (self.half_w > 0 and self.half_h > 0):
            raise ValueError(
                f"Shape: a box needs half_w > 0 and half_h > 0 (scene px), got {self.half_w}, {self.half_h}"
            )


@dataclass(frozen=True)
class BodySpec:
    """One scene body: its role (one of ``ROLES``, which fixes dynamic vs static), its shapes (a
    jar is several boxes on one body), its origin ``x``, ``y`` (scene px) and angle (rad), and its
    material."""

    role: str
    shapes: tuple[Shape, ...]
    x: float
    y: float
    angle: float = 0.0
    density: float = 1.0
    friction: float = 0.5
    restitution: float = 0.2

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"BodySpec: role {self.role!r} is unknown; use one of {ROLES}")
        if not self.shapes or not all(isinstance(s, Shape) for s in self.shapes):
            raise ValueError(f"BodySpec: shapes must be a non-empty tuple of Shape, got {self.shapes!r}")
        if not self.density > 0 or self.friction < 0 or self.restitution < 0:
            raise ValueError(
                f"BodySpec: need density > 0, friction >= 0, restitution >= 0; got density={self.density}, "
                f"friction={self.friction}, restitution={self.restitution}"
            )

    @property
    def dynamic(self) -> bool:
        return self.role in DYNAMIC_ROLES


@dataclass(frozen=True)
class Task:
    """One task: scene bodies, the goal pair (indices into ``bodies``, at least one dynamic) and
    the time limit."""

    template: str
    template_id: int
    index: int
    bodies: tuple[BodySpec, ...]
    goal: tuple[int, int]
    max_seconds: float = DEFAULT_MAX_SECONDS

    def __post_init__(self) -> None:
        n = len(self.bodies)
        if not 1 <= n <= _MAX_BODIES:
            raise ValueError(f"Task: needs 1..{_MAX_BODIES} bodies, got {n}")
        i, j = self.goal
        if not (0 <= i < n and 0 <= j < n and i != j):
            raise ValueError(f"Task: goal {self.goal} must be two distinct indices into the {n} bodies")
        if not (self.bodies[i].dynamic or self.bodies[j].dynamic):
            raise ValueError(f"Task: goal {self.goal} names two static bodies; at least one must be dynamic")
        steps = self.max_seconds * STEPS_PER_SECOND
        if not (self.max_seconds > 0 and abs(steps - round(steps)) < 1e-9):
            raise ValueError(
                f"Task: max_seconds ({self.max_seconds}) must be > 0 and a whole number of physics steps "
                f"(a multiple of 1/{STEPS_PER_SECOND} s)"
            )

    @property
    def task_id(self) -> str:
        return f"{self.template_id:05d}:{self.index:03d}"


@dataclass
class Rollout:
    """Result of one simulation.

    states:    (T, O + 1, 6) float32, columns STATE_FIELDS (scene fractions, rad); zeros where
               not present; None when simulated without recording (fps=None)
    present:   (T, O + 1) bool; the ball (column O) is absent at frame 0 and when action is None
    solved:    the goal bodies touched for GOAL_STEPS consecutive steps within max_seconds
    solved_at: seconds when those 3 s of contact were complete, -1.0 if not solved
    fps:       frames per second of the recording (0.0 when not recorded)
    """

    states: np.ndarray | None
    present: np.ndarray | None
    solved: bool
    solved_at: float
    fps: float


# ----------------------------------------------------------------------------- actions, validity


def action_to_ball(action) -> tuple[float, float, float]:
    """(x, y, r) in [0, 1]^3 -> (cx, cy, radius) in scene px: (x * 256, y * 256, 2 + 30 * r)."""
    x, y, r = _action_tuple(action)
    return x * SCENE_SIZE, y * SCENE_SIZE, 2.0 + 30.0 * r


def _action_tuple(action) -> tuple[float, float, float]:
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (3,):
        raise ValueError(f"action must be 3 numbers (x, y, r) in [0, 1], got shape {a.shape}: {action!r}")
    return float(a[0]), float(a[1]), float(a[2])


@dataclass(frozen=True)
class _SceneGeometry:
    """Every scene shape in scene px, world frame. circles: (Nc, 3) cx, cy, r; boxes: (Nb, 6)
    cx, cy, cos, sin, half_w, half_h."""

    circles: np.ndarray
    boxes: np.ndarray


def _shape_pose(body: BodySpec, shape: Shape) -> tuple[float, float, float]:
    c, s = math.cos(body.angle), math.sin(body.angle)
    return (
        body.x + c * shape.dx - s * shape.dy,
        body.y + s * shape.dx + c * shape.dy,
        body.angle + shape.angle,
    )


def _geometry(task: Task) -> _SceneGeometry:
    circles, boxes = [], []
    for body in task.bodies:
        for shape in body.shapes:
            cx, cy, a = _shape_pose(body, shape)
            if shape.kind == "circle":
                circles.append((cx, cy, shape.radius))
            else:
                boxes.append((cx, cy, math.cos(a), math.sin(a), shape.half_w, shape.half_h))
    return _SceneGeometry(
        np.array(circles, np.float64).reshape(-1, 3), np.array(boxes, np.float64).reshape(-1, 6)
    )


def is_valid(task: Task, action) -> bool:
    """Whether ``action`` may be simulated in ``task`` (see the module docstring). Computed with
    scalar arithmetic in the same order as ``valid_mask``, so the two agree exactly."""
    x, y, r = _action_tuple(action)
    if not all(0.0 <= v <= 1.0 for v in (x, y, r)):  # also rejects NaN
        return False
    cx, cy, rad = x * SCENE_SIZE, y * SCENE_SIZE, 2.0 + 30.0 * r
    if cx - rad < 0.0 or cx + rad > SCENE_SIZE or cy - rad < 0.0 or cy + rad > SCENE_SIZE:
        return False
    geo = _geometry(task)
    for ox, oy, orad in geo.circles.tolist():
        dx, dy, rr = cx - ox, cy - oy, rad + orad
        if dx * dx + dy * dy < rr * rr:
            return False
    for bx, by, c, s, hw, hh in geo.boxes.tolist():
        dx, dy = cx - bx, cy - by
        qx = max(abs(c * dx + s * dy) - hw, 0.0)
        qy = max(abs(-s * dx + c * dy) - hh, 0.0)
        if qx * qx + qy * qy < rad * rad:
            return False
    return True


def valid_mask(task: Task, actions: np.ndarray) -> np.ndarray:
    """actions (N, 3) -> (N,) bool, ``is_valid`` of each row, vectorised."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"valid_mask: actions must have shape (N, 3), got {a.shape}")
    ok = np.all((a >= 0.0) & (a <= 1.0), axis=1)
    cx, cy, rad = a[:, 0] * SCENE_SIZE, a[:, 1] * SCENE_SIZE, 2.0 + 30.0 * a[:, 2]
    ok &= (cx - rad >= 0.0) & (cx + rad <= SCENE_SIZE) & (cy - rad >= 0.0) & (cy + rad <= SCENE_SIZE)
    geo = _geometry(task)
    for ox, oy, orad in geo.circles.tolist():
        dx, dy, rr = cx - ox, cy - oy, rad + orad
        ok &= ~(dx * dx + dy * dy < rr * rr)
    for bx, by, c, s, hw, hh in geo.boxes.tolist():
        dx, dy = cx - bx, cy - by
        qx = np.maximum(np.abs(c * dx + s * dy) - hw, 0.0)
        qy = np.maximum(np.abs(-s * dx + c * dy) - hh, 0.0)
        ok &= ~(qx * qx + qy * qy < rad * rad)
    return ok


def sample_actions(n: int, seed: int) -> np.ndarray:
    """(n, 3) float32 actions uniform in [0, 1]^3 from ``np.random.default_rng(seed)``."""
    if n < 0:
        raise ValueError(f"sample_actions: n must be >= 0, got {n}")
    return np.random.default_rng(seed).random((n, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- simulation


def _fixture(shape: Shape, density: float, friction: float, restitution: float, cat: int, mask: int):
    u = PX_PER_UNIT
    if shape.kind == "circle":
        geom = b2CircleShape(radius=shape.radius / u, pos=(shape.dx / u, shape.dy / u))
    else:
        geom = b2PolygonShape(
            box=(shape.half_w / u, shape.half_h / u, (shape.dx / u, shape.dy / u), shape.angle)
        )
    fd = b2FixtureDef(shape=geom, density=density, friction=friction, restitution=restitution)
    fd.filter.categoryBits = cat
    fd.filter.maskBits = mask
    return fd


def _masks(n_bodies: int, no_collide: tuple[int, int] | None) -> list[int]:
    masks = [0xFFFF] * (n_bodies + 1)
    if no_collide is not None:
        i, j = no_collide
        masks[i] &= ~(1 << j)
        masks[j] &= ~(1 << i)
    return masks


def _build_world(task: Task, masks: list[int]):
    world = b2World(gravity=GRAVITY, doSleep=True)
    bound = world.CreateStaticBody(position=(0, 0), userData=-1)
    size = SCENE_SIZE / PX_PER_UNIT
    for hw, hh, cx, cy in (
        (size, 1.0, size / 2, -1.0),
        (1.0, 4 * size, -1.0, 2 * size),
        (1.0, 4 * size, size + 1.0, 2 * size),
    ):
        fd = b2FixtureDef(shape=b2PolygonShape(box=(hw, hh, (cx, cy), 0.0)), friction=0.5, restitution=0.2)
        fd.filter.categoryBits = _BOUNDARY_BIT
        bound.CreateFixture(fd)
    bodies = []
    for k, spec in enumerate(task.bodies):
        kw = {"position": (spec.x / PX_PER_UNIT, spec.y / PX_PER_UNIT), "angle": spec.angle, "userData": k}
        if spec.dynamic:
            body = world.CreateDynamicBody(angularDamping=ANGULAR_DAMPING, **kw)
        else:
            body = world.CreateStaticBody(**kw)
        for shape in spec.shapes:
            body.CreateFixture(
                _fixture(shape, spec.density, spec.friction, spec.restitution, 1 << k, masks[k])
            )
        bodies.append(body)
    return world, bodies


def _touching(body_a, index_b: int) -> bool:
    for edge in body_a.contacts:
        if edge.contact.touching and edge.other.userData == index_b:
            return True
    return False


def simulate(
    task: Task,
    action=None,
    *,
    fps: float | None = 5.0,
    no_collide: tuple[int, int] | None = None,
) -> Rollout:
    """Run ``task`` with the ball of ``action`` (None: no ball) for ``task.max_seconds``.

    fps:        frames per second to record (60 / fps must be a whole number of steps); the full
                max_seconds are simulated, T = round(max_seconds * fps) + 1 frames. None: record
                nothing and only return the outcome; the run then stops early once solved or once
                every dynamic body sleeps (nothing can change after that), which never changes it.
    no_collide: (i, j), indices into task.bodies or O = len(task.bodies) for the ball: these two
                pass through each other; everything else is unchanged.

    Deterministic: the same task and action give identical arrays. Raises ValueError for an
    invalid action (see ``is_valid``), a bad fps or a bad no_collide pair.
    """
    return _run(task, action, fps, no_collide)[0]


def _run(task: Task, action, fps: float | None, no_collide: tuple[int, int] | None):
    """``simulate``, also returning the Box2D bodies (scene bodies, then the ball) as they are at the end."""
    n = len(task.bodies)
    if action is not None and not is_valid(task, action):
        raise ValueError(
            f"simulate: action {tuple(float(v) for v in np.asarray(action).ravel())} is invalid for task "
            f"{task.task_id}: it must lie in [0, 1]^3, keep the ball inside the scene and overlap no body"
        )
    if no_collide is not None:
        i, j = (int(v) for v in no_collide)
        if not (0 <= i <= n and 0 <= j <= n and i != j):
            raise ValueError(
                f"simulate: no_collide {no_collide} must be two distinct indices in 0..{n} ({n} = the ball)"
            )
        no_collide = (i, j)
    total_steps = round(task.max_seconds * STEPS_PER_SECOND)
    record = fps is not None
    if record:
        per = STEPS_PER_SECOND / fps if fps > 0 else math.inf
        frames = task.max_seconds * fps
        if not (fps > 0 and abs(per - round(per)) < 1e-9 and abs(frames - round(frames)) < 1e-9):
            raise ValueError(
                f"simulate: fps {fps} must divide {STEPS_PER_SECOND} steps/s exactly (60 / fps whole, "
                f"e.g. 5, 10, 15, 30, 60) and give a whole number of frames in max_seconds={task.max_seconds}"
            )
        per = round(per)
        T = round(frames) + 1
        states = np.zeros((T, n + 1, len(STATE_FIELDS)), np.float32)
        present = np.zeros((T, n + 1), bool)
        present[:, :n] = True
    masks = _masks(n, no_collide)
    world, bodies = _build_world(task, masks)

    def snapshot(frame: int) -> None:
        s = 1.0 / SCENE_SIZE * PX_PER_UNIT
        for k, body in enumerate(bodies):
            p, v = body.position, body.linearVelocity
            states[frame, k] = (p[0] * s, p[1] * s, body.angle, v[0] * s, v[1] * s, body.angularVelocity)

    if record:
        snapshot(0)
    if action is not None:
        cx, cy, rad = action_to_ball(action)
        ball = world.CreateDynamicBody(
            position=(cx / PX_PER_UNIT, cy / PX_PER_UNIT), angularDamping=ANGULAR_DAMPING, userData=n
        )
        ball.CreateFixture(
            _fixture(
                Shape("circle", radius=rad), BALL_DENSITY, BALL_FRICTION, BALL_RESTITUTION, 1 << n, masks[n]
            )
        )
        bodies.append(ball)
        if record:
            present[1:, n] = True
    ga, gb = task.goal
    if not task.bodies[ga].dynamic:
        ga, gb = gb, ga  # query the contacts of a dynamic goal body
    goal_body = bodies[ga]
    dynamic = [b for k, b in enumerate(bodies) if k == n or task.bodies[k].dynamic]
    dt = 1.0 / STEPS_PER_SECOND
    run, solved_step = 0, -1
    for step in range(1, total_steps + 1):
        world.Step(dt, VELOCITY_ITERATIONS, POSITION_ITERATIONS)
        touching = _touching(goal_body, gb)
        run = run + 1 if touching else 0
        if solved_step < 0 and run >= GOAL_STEPS:
            solved_step = step
        if record:
            if step % per == 0:
                snapshot(step // per)
        elif solved_step >= 0:
            break
        elif not any(b.awake for b in dynamic):
            # frozen from here on: the contact state stays as it is to the end
            if touching and run + (total_steps - step) >= GOAL_STEPS:
                solved_step = step + GOAL_STEPS - run
            break
    solved = solved_step >= 0
    solved_at = solved_step / STEPS_PER_SECOND if solved else -1.0
    if record:
        states[~present] = 0.0
        return Rollout(states, present, solved, solved_at, float(fps)), bodies
    return Rollout(None, None, solved, solved_at, 0.0), bodies


def solve_rate(task: Task, n: int = 200, seed: int = 0) -> tuple[float, float]:
    """(fraction of the valid ones among ``sample_actions(n, seed)`` that solve ``task``, fraction
    of those actions that are valid). The solve rate is 0.0 when none is valid."""
    actions = sample_actions(n, seed)
    ok = valid_mask(task, actions)
    if not ok.any():
        return 0.0, 0.0
    wins = sum(simulate(task, a, fps=None).solved for a in actions[ok])
    return wins / int(ok.sum()), float(ok.mean())


# ----------------------------------------------------------------------------- rendering


def render(
    task: Task,
    states: np.ndarray,
    present: np.ndarray,
    ball_radius: float | None,
    height: int = 64,
    width: int = 64,
    background: str = "white",
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise frames of ``task`` at the poses in ``states``.

    states:      (T, K, >=3) x, y (scene fractions), angle (rad) per body; K = O, or O + 1 with the
                 ball last (needed when ball_radius is given)
    present:     (T, K) bool; absent bodies are not drawn
    ball_radius: the ball's radius in scene px (``action_to_ball(action)[2]``), None: no ball
    background:  "white" (PHYRE's look) or "black"; on black, "static" (black) bodies are drawn white

    Returns frames (T, H, W, 3) uint8 and masks (T, H, W) uint8: 0 background, o + 1 body o, O + 1
    the ball. Each pixel is sampled at its centre; later-listed bodies (and then the ball) are on top.
    Circles are drawn plain, as PHYRE draws them.
    """
    if background not in ("white", "black"):
        raise ValueError(f"render: background must be 'white' or 'black', got {background!r}")
    if height < 1 or width < 1:
        raise ValueError(f"render: height and width must be >= 1, got {height} x {width}")
    states = np.asarray(states)
    present = np.asarray(present, bool)
    n = len(task.bodies)
    need = n + 1 if ball_radius is not None else n
    if states.ndim != 3 or states.shape[1] < need or states.shape[2] < 3 or present.shape != states.shape[:2]:
        raise ValueError(
            f"render: states must be (T, {need} or more, >=3) and present (T, K) to match, got states "
            f"{states.shape} and present {present.shape} (ball_radius={ball_radius})"
        )
    T = states.shape[0]
    xs = ((np.arange(width) + 0.5) * (SCENE_SIZE / width)).astype(np.float32)  # (W,)
    ys = (SCENE_SIZE - (np.arange(height) + 0.5) * (SCENE_SIZE / height)).astype(np.float32)  # (H,)
    bg = (0, 0, 0) if background == "black" else ROLE_RGB["background"]
    frames = np.empty((T, height, width, 3), np.uint8)
    frames[:] = np.array(bg, np.uint8)
    masks = np.zeros((T, height, width), np.uint8)
    items = [(k, task.bodies[k].role, task.bodies[k].shapes) for k in range(n)]
    if ball_radius is not None:
        items.append((n, "ball", (Shape("circle", radius=float(ball_radius)),)))
    for k, role, shapes in items:
        rgb = ROLE_RGB[role]
        if background == "black" and role == "static":
            rgb = (255, 255, 255)
        px = states[:, k, 0].astype(np.float64) * SCENE_SIZE
        py = states[:, k, 1].astype(np.float64) * SCENE_SIZE
        ang = states[:, k, 2].astype(np.float64)
        c, s = np.cos(ang), np.sin(ang)
        inside = np.zeros((T, height, width), bool)
        for shape in shapes:
            cx = (px + c * shape.dx - s * shape.dy).astype(np.float32)[:, None, None]
            cy = (py + s * shape.dx + c * shape.dy).astype(np.float32)[:, None, None]
            gx = xs[None, None, :] - cx  # (T, 1, W)
            gy = ys[None, :, None] - cy  # (T, H, 1)
            if shape.kind == "circle":
                inside |= gx * gx + gy * gy <= np.float32(shape.radius**2)
            else:
                sc = np.cos(ang + shape.angle).astype(np.float32)[:, None, None]
                ss = np.sin(ang + shape.angle).astype(np.float32)[:, None, None]
                u = sc * gx + ss * gy
                v = sc * gy - ss * gx
                inside |= (np.abs(u) <= shape.half_w) & (np.abs(v) <= shape.half_h)
        inside &= present[:, k, None, None]
        frames[inside] = rgb
        masks[inside] = k + 1
    return frames, masks


# ----------------------------------------------------------------------------- templates

# Template helpers work in scene px. Thickness of bars, pads and jar walls (>= 6 px so they show at 64 x 64).
_T = 8.0


def _ball(role: str, x: float, y: float, r: float, **kw) -> BodySpec:
    return BodySpec(role, (Shape("circle", radius=r),), x, y, **kw)


def _bar(role: str, x: float, y: float, w: float, h: float, angle: float = 0.0, **kw) -> BodySpec:
    """A box of full width w and height h centred at (x, y), turned by angle."""
    return BodySpec(role, (Shape("box", half_w=w / 2, half_h=h / 2),), x, y, angle, **kw)


def _jar(role: str, x: float, y: float, inner_w: float, wall_h: float, t: float = _T) -> BodySpec:
    """An open-topped U of three boxes on one body; origin (x, y) at the middle of its bottom edge.
    inner_w: the free width inside; wall_h: the walls' height from the bottom edge."""
    half = inner_w / 2 + t
    return BodySpec(
        role,
        (
            Shape("box", half_w=half, half_h=t / 2, dy=t / 2),
            Shape("box", half_w=t / 2, half_h=wall_h / 2, dx=-(inner_w / 2 + t / 2), dy=wall_h / 2),
            Shape("box", half_w=t / 2, half_h=wall_h / 2, dx=inner_w / 2 + t / 2, dy=wall_h / 2),
        ),
        x,
        y,
    )


def _ramp(x0: float, y0: float, length: float, ang: float, t: float = _T) -> BodySpec:
    """A static black bar running down to the right at ``ang`` (rad) whose upper surface starts at
    its upper-left corner (x0, y0): a shelf with its top at y0 ending at x0 joins it without a step."""
    c, s = math.cos(ang), math.sin(ang)
    cx = x0 + length / 2 * c - t / 2 * s
    cy = y0 - length / 2 * s - t / 2 * c
    return _bar("static", cx, cy, length, t, -ang)


def _chute(x_end: float, y_end: float, length: float, ang: float) -> BodySpec:
    """A static black bar rising to the left at ``ang`` (rad) from the lower end (x_end, y_end) of
    its upper surface; a ball dropped on it rolls down and leaves it there, heading right.
    ``length`` is shortened so that the chute stays inside the scene."""
    length = min(length, (x_end - 4 - _T) / math.cos(ang), (SCENE_SIZE - 4 - y_end) / math.sin(ang))
    return _ramp(x_end - length * math.cos(ang), y_end + length * math.sin(ang), length, ang)


def _mirror(bodies: tuple[BodySpec, ...]) -> tuple[BodySpec, ...]:
    """The scene reflected about x = 128."""
    out = []
    for b in bodies:
        shapes = tuple(Shape(s.kind, s.radius, s.half_w, s.half_h, -s.dx, s.dy, -s.angle) for s in b.shapes)
        out.append(
            BodySpec(b.role, shapes, SCENE_SIZE - b.x, b.y, -b.angle, b.density, b.friction, b.restitution)
        )
    return tuple(out)


TemplateScene = tuple[tuple[BodySpec, ...], tuple[int, int]]


def _maybe_mirror(rng: np.random.Generator, scene: TemplateScene) -> TemplateScene:
    bodies, goal = scene
    return (_mirror(bodies) if rng.random() < 0.5 else bodies), goal


def _ledge_to_jar(rng: np.random.Generator) -> TemplateScene:
    """A green ball rests at the end of a short floating black platform above a wide purple jar on
    the floor; a black chute above leads down onto the platform. The ball must knock the green
    ball off the platform (from above, or rolling down the chute) so it drops into the jar."""
    pw = rng.uniform(30, 60)
    px = rng.uniform(110, 190)
    hy = rng.uniform(70, 130)
    rg = rng.uniform(10, 15)
    inner = pw + rng.uniform(50, 80)
    bodies = (
        _ball("goal", px + pw / 2 - rng.uniform(1, 5), hy + _T / 2 + rg, rg),
        _bar("static", px, hy, pw, _T),
        _jar(
            "goal_static",
            min(px + rng.uniform(10, 30), SCENE_SIZE - inner / 2 - _T),
            0.0,
            inner,
            rng.uniform(24, 40),
        ),
        _chute(
            px - pw / 2 + rng.uniform(0, 8),
            hy + _T / 2 + rng.uniform(2, 8),
            rng.uniform(50, 110),
            math.radians(rng.uniform(20, 35)),
        ),
    )
    return _maybe_mirror(rng, (bodies, (0, 2)))


def _pedestal_to_jar(rng: np.random.Generator) -> TemplateScene:
    """A blue ball sits on a tall black pedestal, a black chute ending beside it; a green ball lies
    in a black jar on the floor beyond. The ball must knock the blue ball off the pedestal (from
    above, or rolling down the chute) into the jar, onto the green ball."""
    ph = rng.uniform(80, 140)
    pw = rng.uniform(10, 18)
    px = rng.uniform(80, 130)
    rb = rng.uniform(12, 18)
    rg = rng.uniform(10, 15)
    inner = 2 * rg + rng.uniform(1.3, 1.8) * rb
    jx = px + pw / 2 + _T + inner / 2 + rng.uniform(0, 20)
    bodies = (
        _ball("subject", px, ph + rb, rb),
        _ball("goal", jx, _T + rg, rg),
        _bar("static", px, ph / 2, pw, ph),
        _jar("static", jx, 0.0, inner, rg + rng.uniform(16, 26)),
        _chute(
            px - pw / 2 - rng.uniform(2, 8),
            ph + rng.uniform(4, 12),
            rng.uniform(50, 100),
            math.radians(rng.uniform(20, 35)),
        ),
    )
    return _maybe_mirror(rng, (bodies, (0, 1)))


def _hammer(x: float, post_w: float, post_h: float, top_w: float) -> BodySpec:
    """A blue T: a post of post_w x post_h standing on the floor at x with a crossbar of width
    top_w on top. Weight put on the crossbar beyond the post's foot topples it."""
    return BodySpec(
        "subject",
        (
            Shape("box", half_w=post_w / 2, half_h=post_h / 2),
            Shape("box", half_w=top_w / 2, half_h=_T / 2, dy=post_h / 2 + _T / 2),
        ),
        x,
        post_h / 2,
    )


def _topple_onto_pad(rng: np.random.Generator) -> TemplateScene:
    """A tall blue T stands on the floor; a purple pad lies on the floor to its right, where the
    T's crossbar lands if it falls that way. The ball must topple the T to the right onto the pad."""
    h = rng.uniform(90, 140)
    top_w = rng.uniform(50, 90)
    bx = top_w / 2 + rng.uniform(4, 20)
    pad_x = bx + rng.uniform(0.8, 0.95) * h
    pad_w = min(rng.uniform(30, 60), SCENE_SIZE - pad_x)
    bodies = (
        _hammer(bx, rng.uniform(8, 12), h, top_w),
        _bar("goal_static", pad_x + pad_w / 2, _T / 2, pad_w, _T),
    )
    return _maybe_mirror(rng, (bodies, (0, 1)))


def _topple_onto_ball(rng: np.random.Generator) -> TemplateScene:
    """A tall blue T stands on the floor; a green ball lies in a low black notch to its right.
    The ball must topple the T to the right onto the green ball."""
    h = rng.uniform(90, 140)
    top_w = rng.uniform(50, 90)
    bx = top_w / 2 + rng.uniform(4, 40)
    rg = rng.uniform(10, 16)
    inner = 2 * rg + rng.uniform(2, 10)
    gx = min(bx + rng.uniform(0.45, 0.85) * h, SCENE_SIZE - inner / 2 - _T - 2)
    bodies = (
        _hammer(bx, rng.uniform(8, 12), h, top_w),
        _ball("goal", gx, _T + rg, rg),
        _jar("static", gx, 0.0, inner, rg * rng.uniform(0.7, 1.0) + _T),
    )
    return _maybe_mirror(rng, (bodies, (0, 1)))


def _ramp_to_jar(rng: np.random.Generator) -> TemplateScene:
    """A green ball rests on a short black flat between a black slope coming down from the left
    and a black ramp running down to a purple jar against the far wall. The ball must push the
    green ball off the flat down the ramp (from above, or rolling down the slope into it)."""
    ang = math.radians(rng.uniform(20, 30))
    top = rng.uniform(120, 160)
    rg = rng.uniform(10, 14)
    x0 = rng.uniform(120, 145)  # the ramp's top end = the flat's right end
    flat = 2 * rg + rng.uniform(4, 12)
    slope = math.radians(rng.uniform(25, 40))
    inner = 2 * rg + rng.uniform(40, 60)
    # the ramp ends above the jar, which stands against the far wall
    length = (SCENE_SIZE - _T - rng.uniform(0.5, 0.9) * inner - x0) / math.cos(ang)
    bodies = (
        _ball("goal", x0 - rng.uniform(1, 5) - rg, top + _T / 2 + rg, rg),
        _ramp(x0, top + _T / 2, length, ang),
        _bar("static", x0 - flat / 2, top, flat, _T),
        _jar("goal_static", SCENE_SIZE - inner / 2 - _T, 0.0, inner, rng.uniform(24, 36)),
        _chute(x0 - flat, top + _T / 2, rng.uniform(60, 110), slope),
    )
    return _maybe_mirror(rng, (bodies, (0, 3)))


def _tower_to_pad(rng: np.random.Generator) -> TemplateScene:
    """A green ball sits on a tower of two or three gray boxes; a purple pad lines the floor up to
    the far wall. The ball must bring the green ball down and over onto the pad."""
    n = int(rng.integers(2, 4))
    bw = rng.uniform(24, 36)
    bh = rng.uniform(18, 28)
    tx = rng.uniform(50, 110)
    rg = rng.uniform(9, 14)
    pad_x = tx + bw / 2 + rng.uniform(10, 50)
    boxes = tuple(_bar("dynamic", tx, bh * (k + 0.5), bw, bh) for k in range(n))
    pad = _bar("goal_static", (pad_x + SCENE_SIZE) / 2, _T / 2, SCENE_SIZE - pad_x, _T)
    bodies = (_ball("goal", tx + bw / 2 - rng.uniform(1, 5), n * bh + rg, rg), pad, *boxes)
    return _maybe_mirror(rng, (bodies, (0, 1)))


def _floor_to_pad(rng: np.random.Generator) -> TemplateScene:
    """A green ball rests on the floor beside a black block; a purple pad lines the floor from a
    gap beyond it up to the far wall. The ball must push the green ball onto the pad."""
    rg = rng.uniform(10, 16)
    gx = rng.uniform(60, 140)
    pad_x = gx + rg + rng.uniform(5, 35)
    bw, bh = rng.uniform(14, 30), rng.uniform(20, 60)
    bodies = (
        _ball("goal", gx, rg, rg),
        _bar("goal_static", (pad_x + SCENE_SIZE) / 2, _T / 2, SCENE_SIZE - pad_x, _T),
        _bar("static", max(gx - rg - bw / 2 - rng.uniform(15, 50), bw / 2 + 2), bh / 2, bw, bh),
    )
    return _maybe_mirror(rng, (bodies, (0, 1)))


def _slide_box(rng: np.random.Generator) -> TemplateScene:
    """A green box rests at the edge of a black shelf above a steep black ramp that runs down onto
    a purple floor pad. The ball must tip the box off the shelf so it slides down to rest on the pad."""
    ang = math.radians(rng.uniform(34, 42))
    top = rng.uniform(80, 110)
    x0 = rng.uniform(30, 60)  # the shelf's far end = the ramp's top end
    run = (top + _T / 2 - _T) / math.tan(ang)  # of the ramp's upper surface, down to the pad's top
    length = math.hypot(run, top + _T / 2 - _T)
    bw, bh = rng.uniform(18, 28), rng.uniform(14, 22)
    foot = x0 + run
    pad_w = min(rng.uniform(40, 80), SCENE_SIZE - foot)
    bodies = (
        _bar("goal", x0 - rng.uniform(1, 6), top + _T / 2 + bh / 2, bw, bh),
        _ramp(x0, top + _T / 2, length, ang),
        _bar("static", x0 / 2, top, x0, _T),
        _bar("goal_static", foot + pad_w / 2, _T / 2, pad_w, _T),
    )
    return _maybe_mirror(rng, (bodies, (0, 3)))


def _ledge_to_shelf_jar(rng: np.random.Generator) -> TemplateScene:
    """A green ball rests at the end of a high black ledge running from the wall, a gray ball
    behind it, and a black chute leads down onto the ledge; a purple jar hangs lower in mid air
    beyond the ledge's end. The ball must knock the green ball off the ledge into the jar,
    directly or through the gray ball."""
    lw = rng.uniform(110, 150)
    hy = rng.uniform(130, 170)
    rg = rng.uniform(12, 16)
    gx = lw - rng.uniform(1, 5)
    rd = rng.uniform(10, 14)
    dx = gx - rg - rd - rng.uniform(4, 16)
    inner = 2 * rg + rng.uniform(30, 50)
    jx = lw + rng.uniform(10, 35)
    bodies = (
        _ball("goal", gx, hy + _T / 2 + rg, rg),
        _bar("static", lw / 2, hy, lw, _T),
        _jar("goal_static", jx, rng.uniform(30, 70), inner, rng.uniform(20, 32)),
        _ball("dynamic", dx, hy + _T / 2 + rd, rd),
        _chute(
            dx - rd - rng.uniform(4, 12),
            hy + _T / 2 + rng.uniform(2, 6),
            rng.uniform(50, 90),
            math.radians(rng.uniform(25, 40)),
        ),
    )
    return _maybe_mirror(rng, (bodies, (0, 2)))


def _catapult(rng: np.random.Generator) -> TemplateScene:
    """A gray plank with a lip at its low end lies across a black pivot, its low end on the floor;
    a green ball rests in the lip. A purple pad lies on the floor beyond the pivot. The ball must
    hit the plank's raised end so the green ball is flung over the pivot onto the pad."""
    ph = rng.uniform(24, 40)
    length = rng.uniform(130, 170)
    x0 = rng.uniform(15, 35)  # the plank's low end on the floor
    px = x0 + rng.uniform(0.45, 0.6) * length
    ang = math.asin((ph + _T / 2) / (px - x0))
    rg = rng.uniform(9, 13)
    cx = x0 + length / 2 * math.cos(ang)
    cy = _T / 2 + length / 2 * math.sin(ang)
    # lip at the plank's low end, in the plank's frame
    lip = Shape("box", half_w=_T / 2, half_h=rg * 0.6, dx=-length / 2 + _T / 2, dy=_T / 2 + rg * 0.6)
    plank = BodySpec(
        "dynamic", (Shape("box", half_w=length / 2, half_h=_T / 2), lip), cx, cy, ang, density=0.5
    )
    ux, uy = math.cos(ang), math.sin(ang)
    along = _T + rg + 1
    gx = x0 + along * ux - (_T / 2 + rg) * uy
    gy = _T / 2 + along * uy + (_T / 2 + rg) * ux
    pad_x = px + rng.uniform(30, 80)
    bodies = (
        _ball("goal", gx, gy, rg),
        plank,
        _bar("static", px, ph / 2, 14, ph),
        _bar("goal_static", (pad_x + SCENE_SIZE) / 2, _T / 2, SCENE_SIZE - pad_x, _T),
    )
    return _maybe_mirror(rng, (bodies, (0, 3)))


TEMPLATES: dict[str, Callable[[np.random.Generator], TemplateScene]] = {
    "ledge_to_jar": _ledge_to_jar,
    "pedestal_to_jar": _pedestal_to_jar,
    "topple_onto_pad": _topple_onto_pad,
    "topple_onto_ball": _topple_onto_ball,
    "ramp_to_jar": _ramp_to_jar,
    "tower_to_pad": _tower_to_pad,
    "floor_to_pad": _floor_to_pad,
    "slide_box": _slide_box,
    "ledge_to_shelf_jar": _ledge_to_shelf_jar,
    "catapult": _catapult,
}
TEMPLATE_NAMES = tuple(TEMPLATES)
_MAX_REDRAWS = 100
REST_TOLERANCE = 3.0  # scene px a template's body may settle by without a ball


def make_task(template_id: int, index: int) -> Task:
    """Task ``index`` of template ``template_id`` (an index into ``TEMPLATE_NAMES``), drawn from
    ``np.random.default_rng([template_id, index])``. A variation that would be solved without a
    ball is redrawn from the same generator, so the result is deterministic."""
    if isinstance(template_id, bool) or not 0 <= int(template_id) < len(TEMPLATES):
        raise ValueError(f"make_task: template_id {template_id} is out of range 0..{len(TEMPLATES) - 1}")
    if int(index) < 0:
        raise ValueError(f"make_task: index must be >= 0, got {index}")
    return _make_task(int(template_id), int(index))


@functools.lru_cache(maxsize=4096)
def _make_task(template_id: int, index: int) -> Task:
    name = TEMPLATE_NAMES[template_id]
    rng = np.random.default_rng([template_id, index])
    for _ in range(_MAX_REDRAWS):
        bodies, goal = TEMPLATES[name](rng)
        task = Task(name, template_id, index, bodies, goal)
        if _at_rest_unsolved(task):
            return task
    raise RuntimeError(
        f"make_task: template {name!r} drew {_MAX_REDRAWS} variations that move or are solved without a ball"
    )


def _at_rest_unsolved(task: Task, tolerance: float = REST_TOLERANCE) -> bool:
    """Whether ``task`` without a ball stays unsolved and no dynamic body moves more than
    ``tolerance`` scene px from where it starts (a template's scene must wait for the ball)."""
    rollout, bodies = _run(task, None, None, None)
    if rollout.solved:
        return False
    for spec, body in zip(task.bodies, bodies, strict=True):
        p = body.position
        if spec.dynamic and math.hypot(p[0] * PX_PER_UNIT - spec.x, p[1] * PX_PER_UNIT - spec.y) > tolerance:
            return False
    return True


def all_tasks(templates: Sequence[int] | None = None, tasks_per_template: int = 100) -> list[Task]:
    """Tasks 0..tasks_per_template-1 of each template id in ``templates`` (default: all), in order."""
    ids = range(len(TEMPLATES)) if templates is None else templates
    return [make_task(t, i) for t in ids for i in range(tasks_per_template)]


# ----------------------------------------------------------------------------- folds


def folds(tasks: Sequence[Task], seed: int, kind: str) -> tuple[list[int], list[int]]:
    """(train, test) indices into ``tasks`` for fold ``seed`` (PHYRE uses seeds 0..9).

    kind "within": for each template, a seed-dependent 20 % of its tasks (rounded, at least one)
    are test, the rest train. kind "cross": a seed-dependent 20 % of the templates present (rounded,
    at least one) have all their tasks in test, the rest train. Both lists are sorted.
    """
    if kind not in FOLD_KINDS:
        raise ValueError(f"folds: kind {kind!r} is unknown; use one of {FOLD_KINDS}")
    by_template: dict[int, list[int]] = {}
    for k, task in enumerate(tasks):
        by_template.setdefault(task.template_id, []).append(k)
    test: list[int] = []
    if kind == "within":
        for tid in sorted(by_template):
            members = by_template[tid]
            rng = np.random.default_rng([seed, tid])
            n_test = max(1, round(0.2 * len(members)))
            test.extend(members[i] for i in rng.permutation(len(members))[:n_test])
    else:
        tids = sorted(by_template)
        rng = np.random.default_rng([seed, 7919])
        n_test = max(1, round(0.2 * len(tids)))
        for i in rng.permutation(len(tids))[:n_test]:
            test.extend(by_template[tids[i]])
    test_set = set(test)
    return [k for k in range(len(tasks)) if k not in test_set], sorted(test_set)
