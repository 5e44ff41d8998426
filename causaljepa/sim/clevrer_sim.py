"""clevrer_sim: a CLEVRER-format world on Box2D, seen from above.

Objects (sphere, cube, cylinder; CLEVRER's 8 colours; rubber or metal) slide on a table
with friction (linear damping) and collide elastically. Some start still, some moving,
some enter from the edges later; objects may leave the view. The physics is planar, which
is exactly what CLEVRER's table-top motion is.

Everything a question needs is answered by simulation, never by a heuristic:

- the factual world (``simulate(scene)``),
- the world in which one object was never there (``simulate(scene, removed=o)``),
- the world in which one pair of objects passes through each other instead of colliding
  (``simulate(scene, prevented=(a, b))``), which is how a collision is tested as the cause
  of a later one.

Optionally the world has actions: external pushes (``Push``), linear impulses given to one
object at one frame. ``SceneConfig.pushes`` sets how many a sampled video gets (default 0:
none, and then the sampler draws exactly what it drew before pushes existed, so existing
seeds give the same scenes and bytes). ``actions_array`` turns a scene's pushes into the
per-frame action rows of the store's ``actions`` field.

World units: the camera sees x in [-3, 3], y in [-2, 2] (CLEVRER's 3:2 aspect), y up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from Box2D import b2CircleShape, b2ContactListener, b2FixtureDef, b2PolygonShape, b2World

from ..data.questions import COLORS, MATERIALS, SHAPES  # CLEVRER's vocabulary, one definition

# RGB of CLEVR's colours (the values CLEVR's renderer uses), 0-255.
COLOR_RGB = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}

VIEW_HALF_W = 3.0
VIEW_HALF_H = 2.0
OBJECT_HEIGHT = 0.35  # z of an object's centre in the annotations' 3-D locations

# Per-frame object state columns in the store's `states` array.
STATE_FIELDS = ("x", "y", "vx", "vy", "angle", "angular_velocity")
# Per-frame action columns in the store's `actions` array (see actions_array): push is 1 at
# a frame with a push, x, y the pushed object's position then, ix, iy the impulse.
ACTION_FIELDS = ("push", "x", "y", "ix", "iy")


@dataclass(frozen=True)
class PhysicsConfig:
    """Physical constants of the world. Metal is denser than rubber, so material matters."""

    fps: float = 25.0
    substeps: int = 4  # physics steps per rendered frame
    object_size: float = 0.35  # sphere/cylinder radius, cube half-side (world units)
    density_rubber: float = 1.0
    density_metal: float = 3.0
    restitution: float = 0.7
    friction: float = 0.3
    # linear damping per shape: spheres roll far, cubes slide and stop sooner
    damping_sphere: float = 0.05
    damping_cylinder: float = 0.15
    damping_cube: float = 0.3
    angular_damping: float = 1.5

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.substeps < 1 or self.object_size <= 0:
            raise ValueError(
                f"PhysicsConfig: fps ({self.fps}) and object_size ({self.object_size}) must be > 0 "
                f"and substeps ({self.substeps}) >= 1"
            )


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are sampled."""

    min_objects: int = 4
    max_objects: int = 6
    observed_frames: int = 128
    future_frames: int = 32
    p_moving: float = 0.5  # chance that an object present at the start is moving
    p_entering: float = 0.35  # chance that an object enters from an edge later
    p_aim: float = 0.8  # chance that a moving object is aimed at another object
    min_speed: float = 1.5
    max_speed: float = 3.0
    enter_frame_range: tuple[int, int] = (5, 125)
    # accepted collision counts in the observed frames (CLEVRER: typically 2-3)
    min_collisions: int = 1
    max_collisions: int = 5
    max_tries: int = 200
    # external pushes (actions) per video, at distinct frames in [1, observed_frames - 1]
    pushes: int = 0
    # range of a push's impulse magnitude (N*s). A rubber sphere has mass 0.38, a rubber cube
    # 0.49, metal ones three times that, so 0.4..1.2 changes a rubber object's velocity by
    # about 0.8..3.1 units/s (a metal one's by 0.3..1.0), like the sampled speeds (1.5..3).
    push_strength: tuple[float, float] = (0.4, 1.2)

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise ValueError(
                f"SceneConfig: need 1 <= min_objects ({self.min_objects}) <= max_objects "
                f"({self.max_objects}) <= 10"
            )
        if self.observed_frames < 2 or self.future_frames < 0:
            raise ValueError(
                f"SceneConfig: observed_frames ({self.observed_frames}) must be >= 2 and "
                f"future_frames ({self.future_frames}) >= 0"
            )
        if not 0 <= self.min_collisions <= self.max_collisions:
            raise ValueError(
                f"SceneConfig: need 0 <= min_collisions ({self.min_collisions}) <= "
                f"max_collisions ({self.max_collisions})"
            )
        lo, hi = self.enter_frame_range
        if not 0 <= lo <= hi < self.observed_frames:
            raise ValueError(
                f"SceneConfig: enter_frame_range {self.enter_frame_range} must lie in "
                f"[0, observed_frames={self.observed_frames})"
            )
        if isinstance(self.pushes, bool) or not isinstance(self.pushes, int | np.integer):
            raise ValueError(f"SceneConfig: pushes must be an integer, got {self.pushes!r}")
        if not 0 <= self.pushes <= self.observed_frames - 1:
            raise ValueError(
                f"SceneConfig: pushes ({self.pushes}) must be in 0..{self.observed_frames - 1}: at most "
                f"one push per frame, at frames 1..observed_frames-1 (observed_frames={self.observed_frames})"
            )
        try:
            plo, phi = (float(v) for v in self.push_strength)
        except (TypeError, ValueError):
            raise ValueError(
                f"SceneConfig: push_strength must be a pair (min, max) of impulse magnitudes, "
                f"got {self.push_strength!r}"
            ) from None
        if not (math.isfinite(plo) and math.isfinite(phi) and 0 < plo <= phi):
            raise ValueError(
                f"SceneConfig: push_strength {tuple(self.push_strength)} must be finite with "
                "0 < min <= max (impulse magnitudes in N*s, e.g. (0.4, 1.2))"
            )

    @property
    def total_frames(self) -> int:
        return self.observed_frames + self.future_frames


@dataclass(frozen=True)
class ObjectSpec:
    """One object's identity and initial conditions."""

    object_id: int
    color: str
    shape: str
    material: str
    position: tuple[float, float]
    velocity: tuple[float, float]
    angle: float
    enter_frame: int = 0  # > 0: the object enters the scene from an edge at this frame

    @property
    def entering(self) -> bool:
        return self.enter_frame > 0

    def describe(self) -> dict:
        return {
            "object_id": self.object_id,
            "color": self.color,
            "material": self.material,
            "shape": self.shape,
        }


@dataclass(frozen=True)
class Push:
    """An external push: a linear impulse (world units, N*s) given at the centre of object
    ``object_id``'s body at frame ``frame``.

    Timing: the push acts at the instant of frame ``frame``, after that frame's state is
    recorded and before the physics substeps that lead to frame ``frame + 1``. So
    ``states[frame]`` shows no effect yet and ``states[frame + 1]`` is the first to show it:
    there the object's velocity has changed by impulse / mass (less the linear damping of
    one frame, and any contact within it). A push on an object that is not present at that
    frame (not entered yet, or removed in a counterfactual world) does nothing.
    """

    frame: int
    object_id: int
    impulse: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """Objects and their initial conditions, the physics, the length, and the pushes
    (at most one per frame, ordered by frame)."""

    objects: tuple[ObjectSpec, ...]
    physics: PhysicsConfig
    num_frames: int
    pushes: tuple[Push, ...] = ()

    def __post_init__(self) -> None:
        ids = {o.object_id for o in self.objects}
        frames = [p.frame for p in self.pushes]
        for p in self.pushes:
            if p.object_id not in ids or not 0 <= p.frame < self.num_frames:
                raise ValueError(
                    f"Scene: push {p} must name one of the scene's objects {sorted(ids)} at a frame "
                    f"in [0, num_frames={self.num_frames})"
                )
        if len(set(frames)) != len(frames):
            raise ValueError(f"Scene: pushes at frames {frames}; at most one push per frame is allowed")


@dataclass(frozen=True)
class Collision:
    frame: int
    a: int  # object ids, a < b
    b: int
    location: tuple[float, float]


@dataclass
class Trajectory:
    """Result of one simulation.

    states:   (T, O, 6) float32, columns STATE_FIELDS; zeros where not present
    present:  (T, O) bool, the object exists in the world (entered and not removed)
    in_view:  (T, O) bool, some part of the object is inside the camera view
    """

    states: np.ndarray
    present: np.ndarray
    in_view: np.ndarray
    collisions: list[Collision] = field(default_factory=list)  # seen: both objects in view
    offscreen_collisions: list[Collision] = field(default_factory=list)  # the camera does not see these

    def collisions_before(self, frame: int) -> list[Collision]:
        return [c for c in self.collisions if c.frame < frame]

    def pair_count(self, a: int, b: int, before: int) -> int:
        a, b = min(a, b), max(a, b)
        return sum(1 for c in self.collisions if c.a == a and c.b == b and c.frame < before)

    def exits(self, start: int, stop: int) -> list[tuple[int, int]]:
        """(frame, object) where an object goes from in view to out of view in [start, stop)."""
        out = []
        for t in range(max(start, 1), stop):
            for o in np.flatnonzero(self.in_view[t - 1] & ~self.in_view[t]):
                out.append((t, int(o)))
        return out

    def entries(self, start: int, stop: int) -> list[tuple[int, int]]:
        """(frame, object) where an object comes into view in [start, stop), frame 0 excluded."""
        out = []
        for t in range(max(start, 1), stop):
            for o in np.flatnonzero(~self.in_view[t - 1] & self.in_view[t]):
                out.append((t, int(o)))
        return out


class _ContactRecorder(b2ContactListener):
    """Records the frame at which two object bodies start touching."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = 0
        self.touching: dict[tuple[int, int], int] = {}
        self.events: list[tuple[int, int, int, float, float]] = []

    def BeginContact(self, contact):
        a = contact.fixtureA.body.userData
        b = contact.fixtureB.body.userData
        key = (min(a, b), max(a, b))
        n = self.touching.get(key, 0)
        self.touching[key] = n + 1
        if n == 0:
            pa, pb = contact.fixtureA.body.position, contact.fixtureB.body.position
            self.events.append((self.frame, key[0], key[1], 0.5 * (pa[0] + pb[0]), 0.5 * (pa[1] + pb[1])))

    def EndContact(self, contact):
        a = contact.fixtureA.body.userData
        b = contact.fixtureB.body.userData
        key = (min(a, b), max(a, b))
        self.touching[key] = max(0, self.touching.get(key, 0) - 1)


# Two contacts of the same pair closer than this many frames are one collision (a bounce
# that re-touches while separating, or a resting contact that flickers).
MERGE_FRAMES = 3


def simulate(
    scene: Scene, removed: int | None = None, prevented: tuple[int, int] | None = None
) -> Trajectory:
    """Run the world for ``scene.num_frames`` frames.

    removed:   an object id that is never there (the counterfactual world without it)
    prevented: a pair of object ids that pass through each other instead of colliding

    The scene's pushes act in every world; see ``Push`` for their timing. A push on an
    object that is not present (removed, or not entered yet) does nothing.
    """
    phys = scene.physics
    n_obj = len(scene.objects)
    world = b2World(gravity=(0, 0), doSleep=True)
    rec = _ContactRecorder()
    world.contactListener = rec
    bodies: dict[int, object] = {}
    dt = 1.0 / (phys.fps * phys.substeps)
    pending = sorted(
        (o for o in scene.objects if o.object_id != removed), key=lambda o: (o.enter_frame, o.object_id)
    )

    def create(o: ObjectSpec):
        damping = {
            "sphere": phys.damping_sphere,
            "cylinder": phys.damping_cylinder,
            "cube": phys.damping_cube,
        }
        body = world.CreateDynamicBody(
            position=o.position,
            angle=o.angle,
            linearDamping=damping[o.shape],
            angularDamping=phys.angular_damping,
            userData=o.object_id,
            bullet=True,
        )
        s = phys.object_size
        shape = b2PolygonShape(box=(s, s)) if o.shape == "cube" else b2CircleShape(radius=s)
        fd = b2FixtureDef(
            shape=shape,
            density=phys.density_metal if o.material == "metal" else phys.density_rubber,
            friction=phys.friction,
            restitution=phys.restitution,
        )
        fd.filter.categoryBits = 1 << o.object_id
        mask = 0xFFFF
        if prevented is not None and o.object_id in prevented:
            other = prevented[1] if o.object_id == prevented[0] else prevented[0]
            mask &= ~(1 << other)
        fd.filter.maskBits = mask
        body.CreateFixture(fd)
        body.linearVelocity = o.velocity
        bodies[o.object_id] = body

    T = scene.num_frames
    pushes = {p.frame: p for p in scene.pushes}
    states = np.zeros((T, n_obj, len(STATE_FIELDS)), np.float32)  # (T, O, F)
    present = np.zeros((T, n_obj), bool)
    for t in range(T):
        while pending and pending[0].enter_frame <= t:
            create(pending.pop(0))
        if t > 0:
            rec.frame = t
            for _ in range(phys.substeps):
                world.Step(dt, 10, 8)
        for oid, body in bodies.items():
            p, v = body.position, body.linearVelocity
            states[t, oid] = (p[0], p[1], v[0], v[1], body.angle, body.angularVelocity)
            present[t, oid] = True
        push = pushes.get(t)
        if push is not None and push.object_id in bodies:  # after frame t's state, before t -> t+1
            body = bodies[push.object_id]
            body.ApplyLinearImpulse(push.impulse, body.worldCenter, True)
    cube = np.zeros(n_obj, bool)
    for o in scene.objects:
        cube[o.object_id] = o.shape == "cube"
    in_view = present & _overlaps_view(states[..., 0], states[..., 1], states[..., 4], cube, phys.object_size)

    # a collision is an event of the video only where the camera sees both objects
    collisions: list[Collision] = []
    offscreen: list[Collision] = []
    last: dict[tuple[int, int], int] = {}
    for frame, a, b, lx, ly in rec.events:
        if frame - last.get((a, b), -(10**9)) > MERGE_FRAMES:
            seen = collisions if in_view[frame, a] and in_view[frame, b] else offscreen
            seen.append(Collision(frame, a, b, (float(lx), float(ly))))
        last[(a, b)] = frame
    return Trajectory(states, present, in_view, collisions, offscreen)


def _overlaps_view(x, y, angle, cube, s):
    """Whether some part of each object lies inside the view: a disc of radius s, or (where
    ``cube``) a square of half-side s turned by ``angle``. x, y, angle: (T, O); cube: (O,)."""
    dx = np.maximum(np.abs(x) - VIEW_HALF_W, 0.0)
    dy = np.maximum(np.abs(y) - VIEW_HALF_H, 0.0)
    disc = dx * dx + dy * dy < s * s  # the disc's centre is nearer than s to the view
    # square: no separating axis among the view's and the square's edge normals
    c, sn = np.cos(angle), np.sin(angle)
    ac, asn = np.abs(c), np.abs(sn)
    square = (
        (np.abs(x) < VIEW_HALF_W + s * (ac + asn))
        & (np.abs(y) < VIEW_HALF_H + s * (ac + asn))
        & (np.abs(c * x + sn * y) < s + VIEW_HALF_W * ac + VIEW_HALF_H * asn)
        & (np.abs(-sn * x + c * y) < s + VIEW_HALF_W * asn + VIEW_HALF_H * ac)
    )
    return np.where(cube[None, :], square, disc)


def _sample_attributes(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """n distinct (color, shape, material) triples, so every object has a unique description."""
    triples: list[tuple[str, str, str]] = []
    while len(triples) < n:
        t = (
            COLORS[rng.integers(len(COLORS))],
            SHAPES[rng.integers(len(SHAPES))],
            MATERIALS[rng.integers(len(MATERIALS))],
        )
        if t not in triples:
            triples.append(t)
    return triples


def sample_scene(rng: np.random.Generator, cfg: SceneConfig, phys: PhysicsConfig) -> Scene:
    """Draw one scene's objects and initial conditions (no simulation)."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    attrs = _sample_attributes(rng, n)
    s = phys.object_size
    entering = [bool(rng.random() < cfg.p_entering) for _ in range(n)]
    if all(entering):  # at least one object is on the table from the start
        entering[0] = False
    # place the objects that start on the table, apart from each other
    starts: dict[int, np.ndarray] = {}
    for i in range(n):
        if entering[i]:
            continue
        for _ in range(1000):
            p = rng.uniform(
                (-VIEW_HALF_W + 1.2 * s, -VIEW_HALF_H + 1.2 * s),
                (VIEW_HALF_W - 1.2 * s, VIEW_HALF_H - 1.2 * s),
            )
            if all(np.linalg.norm(p - q) > 3.2 * s for q in starts.values()):
                starts[i] = p
                break
        else:
            entering[i] = True  # the table is full: this one comes in later instead
    objects = []
    lo, hi = cfg.enter_frame_range
    for i in range(n):
        color, shape, material = attrs[i]
        angle = float(rng.uniform(0, math.pi / 2)) if shape == "cube" else 0.0
        speed = float(rng.uniform(cfg.min_speed, cfg.max_speed))
        others = [starts[j] for j in starts if j != i]
        if entering[i]:
            # enter from a random edge, heading into the view (towards an object if aimed)
            edge = int(rng.integers(4))
            u = float(rng.uniform(-0.8, 0.8))
            if edge < 2:
                pos = np.array([(1 if edge == 0 else -1) * (VIEW_HALF_W + 2 * s), u * VIEW_HALF_H])
            else:
                pos = np.array([u * VIEW_HALF_W, (1 if edge == 2 else -1) * (VIEW_HALF_H + 2 * s)])
            if others and rng.random() < cfg.p_aim:
                target = others[int(rng.integers(len(others)))]
            else:
                target = rng.uniform((-VIEW_HALF_W / 2, -VIEW_HALF_H / 2), (VIEW_HALF_W / 2, VIEW_HALF_H / 2))
            d = target - pos
            vel = speed * d / np.linalg.norm(d)
            enter = max(int(rng.integers(lo, hi + 1)), 1)
        else:
            pos, vel, enter = starts[i], _start_velocity(rng, cfg, starts[i], others, speed), 0
        start, velocity = (float(pos[0]), float(pos[1])), (float(vel[0]), float(vel[1]))
        objects.append(ObjectSpec(i, color, shape, material, start, velocity, angle, enter))
    # drawn last, and only if asked for: with pushes == 0 the generator's draws are unchanged
    pushes = _sample_pushes(rng, cfg, objects) if cfg.pushes else ()
    return Scene(objects=tuple(objects), physics=phys, num_frames=cfg.total_frames, pushes=pushes)


def _sample_pushes(rng: np.random.Generator, cfg: SceneConfig, objects: list[ObjectSpec]) -> tuple[Push, ...]:
    """``cfg.pushes`` pushes at distinct frames (a frame already taken is drawn again), each:
    frame uniform in [1, observed_frames - 1], object uniform among those present then
    (enter_frame <= frame), direction uniform, magnitude uniform in ``cfg.push_strength``."""
    out: dict[int, Push] = {}
    lo, hi = cfg.push_strength
    while len(out) < cfg.pushes:
        frame = int(rng.integers(1, cfg.observed_frames))
        if frame in out:
            continue
        there = [o.object_id for o in objects if o.enter_frame <= frame]  # never empty: one starts at 0
        oid = there[int(rng.integers(len(there)))]
        a = float(rng.uniform(0, 2 * math.pi))
        m = float(rng.uniform(lo, hi))
        out[frame] = Push(frame, oid, (m * math.cos(a), m * math.sin(a)))
    return tuple(out[f] for f in sorted(out))


def actions_array(scene: Scene, trajectory: Trajectory) -> np.ndarray:
    """The scene's pushes as per-frame action rows: (T, A) float32, columns ACTION_FIELDS.

    Row t is (1, x, y, ix, iy) where a push acts at frame t (there is at most one per frame):
    x, y the pushed object's position at frame t (``trajectory.states``), ix, iy the impulse;
    zeros at frames without a push, and where the pushed object is not present in
    ``trajectory`` at frame t (the push does nothing there). T = the trajectory's length.
    """
    T = trajectory.states.shape[0]
    out = np.zeros((T, len(ACTION_FIELDS)), np.float32)  # (T, A)
    for p in scene.pushes:
        if p.frame < T and trajectory.present[p.frame, p.object_id]:
            x, y = trajectory.states[p.frame, p.object_id, :2]
            out[p.frame] = (1.0, x, y, p.impulse[0], p.impulse[1])
    return out


def _start_velocity(rng: np.random.Generator, cfg: SceneConfig, pos: np.ndarray, others: list, speed: float):
    """Still, or moving: mostly aimed at another object (with a little jitter), else any direction."""
    if rng.random() < cfg.p_moving:
        if others and rng.random() < cfg.p_aim:
            d = others[int(rng.integers(len(others)))] - pos
            d = d / np.linalg.norm(d)
            jitter = float(rng.normal(0, 0.15))
            c, sn = math.cos(jitter), math.sin(jitter)
            d = np.array([c * d[0] - sn * d[1], sn * d[0] + c * d[1]])
        else:
            a = float(rng.uniform(0, 2 * math.pi))
            d = np.array([math.cos(a), math.sin(a)])
        return speed * d
    return np.zeros(2)


def sample_accepted_scene(
    rng: np.random.Generator, cfg: SceneConfig, phys: PhysicsConfig
) -> tuple[Scene, Trajectory]:
    """Sample scenes until one has an accepted number of observed collisions (as CLEVRER did)."""
    for _ in range(cfg.max_tries):
        scene = sample_scene(rng, cfg, phys)
        traj = simulate(scene)
        n = len(traj.collisions_before(cfg.observed_frames))
        if cfg.min_collisions <= n <= cfg.max_collisions:
            return scene, traj
    raise RuntimeError(
        f"clevrer_sim: no scene with {cfg.min_collisions}..{cfg.max_collisions} collisions in "
        f"{cfg.max_tries} tries; widen the collision range or raise p_moving / p_aim"
    )
