"""Oracle slot stores: one slot per object, made from the simulator's states, not from pixels.

An analysis mode (``cjepa oracle-slots``, then ``cjepa train slots=oracle``): a predictor
trained on these slots is judged without the encoder's errors, which separates predictor
quality from encoder quality. Slot k is object k of the video store (K = the store's
max_objects), with D = len(ORACLE_FIELDS) features:

    present                 1 where the object exists, else the whole slot is 0
    x / 3, y / 2            position, the view spans [-1, 1]
    vx / 3, vy / 3          velocity
    cos, sin (angle)        orientation
    angular_velocity / 5
    colour, shape, material one-hot (CLEVRER's 8 + 3 + 2 values)

The file has the slot store's schema (``SlotStore`` reads it) with ``encoder_hash="oracle"``,
no ``segments`` (there is no pixel decoder), ``slot_object`` = k where object k is present,
and, where the video store has counterfactual videos, ``cf_slots`` (N, O, T, K, D): the
oracle slots of the world without object o, the truth for latent interventions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..io import atomic_output
from .questions import PROPERTY_VOCAB
from .slot_store import SLOT_SCHEMA_VERSION
from .store import STR, StoreError, VideoStore

KINEMATIC = ("present", "x", "y", "vx", "vy", "cos_angle", "sin_angle", "angular_velocity")
ORACLE_FIELDS = KINEMATIC + tuple(f"{key}={v}" for key, vocab in PROPERTY_VOCAB for v in vocab)
_NEEDED_STATES = ("x", "y", "vx", "vy", "angle", "angular_velocity")


def _one_hot(props: np.ndarray) -> np.ndarray:
    """object_properties (O, 3) int, -1 = none -> (O, 8 + 3 + 2) float32."""
    parts = []
    for col, (_, vocab) in enumerate(PROPERTY_VOCAB):
        ids = props[:, col].astype(np.int64)
        oh = np.zeros((len(ids), len(vocab)), np.float32)
        ok = ids >= 0
        oh[np.flatnonzero(ok), ids[ok]] = 1.0
        parts.append(oh)
    return np.concatenate(parts, axis=1)


def oracle_features(states: np.ndarray, present: np.ndarray, props: np.ndarray, fields) -> np.ndarray:
    """states (..., T, O, F), present (..., T, O), props (O, 3) -> slots (..., T, O, D) float32."""
    col = {name: i for i, name in enumerate(fields)}
    s = {name: states[..., col[name]] for name in _NEEDED_STATES}
    kin = np.stack(
        [
            np.ones_like(s["x"]),
            s["x"] / 3.0,
            s["y"] / 2.0,
            s["vx"] / 3.0,
            s["vy"] / 3.0,
            np.cos(s["angle"]),
            np.sin(s["angle"]),
            s["angular_velocity"] / 5.0,
        ],
        axis=-1,
    )  # (..., T, O, 8)
    attrs = np.broadcast_to(_one_hot(props), (*kin.shape[:-1], len(ORACLE_FIELDS) - len(KINEMATIC)))
    out = np.concatenate([kin, attrs], axis=-1).astype(np.float32)
    return out * present[..., None]  # an absent object's slot is all zeros


def write_oracle_slots(video_store: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The oracle slot store of ``video_store`` (which must have object states)."""
    from tqdm import tqdm

    out = Path(out)
    with VideoStore(video_store) as vs:
        missing = [f for f in _NEEDED_STATES if f not in vs.state_fields]
        if not vs.has("states") or missing:
            raise StoreError(
                f"{vs.path}: oracle slots need object states with columns {list(_NEEDED_STATES)}; "
                f"this store has {list(vs.state_fields) or 'no states'}"
            )
        N, T, O, D = vs.num_videos, vs.num_frames, vs.max_objects, len(ORACLE_FIELDS)
        cf = vs.has("cf_states")
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
            kw = {"track_times": False}
            slots = f.create_dataset("slots", (N, T, O, D), np.float32, chunks=(1, min(T, 32), O, D), **kw)
            obj = f.create_dataset("slot_object", (N, T, O), np.int8, **kw)
            f.create_dataset("video_ids", data=np.array(vs.video_ids, dtype=object), dtype=STR, **kw)
            if vs.has("actions"):
                f.create_dataset("actions", data=vs.f["actions"][:], **kw)
                f.attrs["action_fields"] = json.dumps(list(vs.action_fields))
            if cf:
                cf_slots = f.create_dataset(
                    "cf_slots", (N, O, T, O, D), np.float32, chunks=(1, 1, min(T, 32), O, D), **kw
                )
                f.create_dataset("cf_valid", data=vs.f["cf_valid"][:], **kw)
            for i in tqdm(range(N), desc=f"oracle slots {Path(video_store).stem}", unit="video"):
                props = vs.read("object_properties", i)
                present = vs.read("present", i)  # (T, O)
                slots[i] = oracle_features(vs.read("states", i), present, props, vs.state_fields)
                obj[i] = np.where(present, np.arange(O, dtype=np.int8), -1)
                if cf:
                    cf_slots[i] = oracle_features(
                        vs.read("cf_states", i), vs.read("cf_present", i), props, vs.state_fields
                    )
            f.attrs.update(
                {
                    "schema_version": SLOT_SCHEMA_VERSION,
                    "kind": "slots",
                    "video_store": Path(video_store).name,
                    "encoder_hash": "oracle",
                    "encoder_config": json.dumps({"kind": "oracle", "fields": list(ORACLE_FIELDS)}),
                    "num_frames": T,
                    "observed_frames": vs.observed_frames,
                    "fps": vs.fps,
                    "metrics": "{}",
                }
            )
    return out
