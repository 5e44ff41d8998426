"""Oracle slot stores of phyre_sim: one slot per scene body, from the simulator's states.

Slot k is scene body k of the video store (K = ``phyre_sim.MAX_OBJECTS``); the ball is not a
slot: it is the action node (one-shot, at t = 0), so frame 0's slots are the scene before
the ball is placed and serve every candidate action of a task. D = len(PHYRE_ORACLE_FIELDS):

    present                 1 where the body exists, else the whole slot is 0
    x, y                    position, scene fractions mapped to [-1, 1]
    vx, vy                  velocity, scene fractions per second
    cos, sin (angle)        orientation
    angular_velocity / 10
    width, height           bounding box in the body's frame, scene fractions
    circle                  1 for a single circle
    role one-hot            goal, subject, goal_static, dynamic, static (PHYRE's colours)

The file has the slot store's schema (``SlotStore``) with ``encoder_hash="oracle"``, the
one-shot ``actions`` (N, 3), ``task`` and ``success`` copied from the video store, and
``slot_object`` = k where body k is present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..io import atomic_output
from .slot_store import SLOT_SCHEMA_VERSION
from .store import STR, StoreError, VideoStore

SCENE_ROLES = ("goal", "subject", "goal_static", "dynamic", "static")
PHYRE_ORACLE_FIELDS = (
    "present", "x", "y", "vx", "vy", "cos_angle", "sin_angle", "angular_velocity", "width", "height",
    "circle", *(f"role={r}" for r in SCENE_ROLES),
)  # fmt: skip
_NEEDED = ("x", "y", "angle", "vx", "vy", "angular_velocity", "width", "height")


def phyre_oracle_features(
    states: np.ndarray, present: np.ndarray, props: np.ndarray, fields, roles, shapes, *, ball: bool = False
) -> np.ndarray:
    """states (..., T, O, F), present (..., T, O), props (O, 3) (role, shape, dynamic) of the
    K = O - 1 scene bodies and the ball (the last object) -> slots (..., T, K, D) float32.
    ``ball``: the ball is a slot too, the last (K = O), a circle with no scene role: the slots of
    a whole observed clip, where the ball is seen (the plausibility model's)."""
    col = {name: i for i, name in enumerate(fields)}
    if not ball:  # the ball (last) is not a slot
        states, present, props = states[..., :-1, :], present[..., :-1], props[:-1]
    s = {name: states[..., col[name]] for name in _NEEDED}
    kin = np.stack(
        [
            np.ones_like(s["x"]),
            2 * s["x"] - 1,
            2 * s["y"] - 1,
            s["vx"],
            s["vy"],
            np.cos(s["angle"]),
            np.sin(s["angle"]),
            s["angular_velocity"] / 10.0,
            s["width"],
            s["height"],
        ],
        axis=-1,
    )  # (..., T, K, 10)
    K = props.shape[0]
    static = np.zeros((K, 1 + len(SCENE_ROLES)), np.float32)
    for k in range(K):
        if props[k, 0] < 0:
            continue
        static[k, 0] = float(shapes[props[k, 1]] == "circle")
        if roles[props[k, 0]] in SCENE_ROLES:  # the ball has none
            static[k, 1 + SCENE_ROLES.index(roles[props[k, 0]])] = 1.0
    static = np.broadcast_to(static, (*kin.shape[:-1], static.shape[1]))
    out = np.concatenate([kin, static], axis=-1).astype(np.float32)
    return out * present[..., None]


def write_phyre_oracle_slots(video_store: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The oracle slot store of a phyre_sim video store (``rollouts.h5``)."""
    from tqdm import tqdm

    out = Path(out)
    with VideoStore(video_store) as vs:
        missing = [f for f in _NEEDED if f not in vs.state_fields]
        if vs.source != "phyre_sim" or missing or not vs.has("success"):
            raise StoreError(
                f"{vs.path}: not a phyre_sim rollout store (source={vs.source!r}, missing state columns "
                f"{missing}); make it with 'cjepa data generate data=phyre_sim'"
            )
        roles, shapes = vs.vocab["roles"], vs.vocab["shapes"]
        N, T, K, D = vs.num_videos, vs.num_frames, vs.max_objects - 1, len(PHYRE_ORACLE_FIELDS)
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
            kw = {"track_times": False}
            slots = f.create_dataset("slots", (N, T, K, D), np.float32, chunks=(1, T, K, D), **kw)
            obj = f.create_dataset("slot_object", (N, T, K), np.int8, **kw)
            f.create_dataset("video_ids", data=np.array(vs.video_ids, dtype=object), dtype=STR, **kw)
            for name in ("actions", "task", "success"):
                f.create_dataset(name, data=vs.f[name][:], **kw)
            f.attrs["action_fields"] = json.dumps(list(vs.action_fields))
            for i in tqdm(range(N), desc=f"oracle slots {Path(video_store).stem}", unit="video"):
                present = vs.read("present", i)  # (T, O)
                slots[i] = phyre_oracle_features(
                    vs.read("states", i),
                    present,
                    vs.read("object_properties", i),
                    vs.state_fields,
                    roles,
                    shapes,
                )
                obj[i] = np.where(present[:, :-1], np.arange(K, dtype=np.int8), -1)
            f.attrs.update(
                {
                    "schema_version": SLOT_SCHEMA_VERSION,
                    "kind": "slots",
                    "video_store": Path(video_store).name,
                    "encoder_hash": "oracle",
                    "encoder_config": json.dumps(
                        {"kind": "phyre_oracle", "fields": list(PHYRE_ORACLE_FIELDS)}
                    ),
                    "num_frames": T,
                    "observed_frames": T,
                    "fps": vs.fps,
                    "metrics": "{}",
                }
            )
    return out
