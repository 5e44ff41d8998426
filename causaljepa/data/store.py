"""The video store: one HDF5 file per split (DESIGN.md §4).

Fields (N videos, T frames, H x W pixels, O = max objects, F state columns, A action columns):

    frames             uint8   (N, T, H, W, 3)  chunked (1, t, H, W, 3), compressed
    video_ids          str     (N,)             e.g. "video_00012"
    scene_index        int64   (N,)             CLEVRER's scene_index
    annotations        str     (N,)             CLEVRER annotation JSON per video ("" if none)
    masks              uint8   (N, T, H, W)     instance ids, 0 = background       [simulated]
    states             float32 (N, T, O, F)     columns in attrs["state_fields"]     [annotated]
    present            bool    (N, T, O)        object exists in the world            [annotated]
    in_view            bool    (N, T, O)        object (partly) inside the view       [annotated]
    object_properties  int8    (N, O, 3)        colour, shape, material ids, -1 = none  [annotated]
    truth              str     (N,)             JSON: events, counterfactual events    [simulated]
    actions            float32 (N, T, A)        per-frame actions, columns in
                                                attrs["action_fields"]        [actions=A > 0]
                       float32 (N, A)           or one action per video, taken at t = 0 (a
                                                PHYRE ball)                 [one_shot=true]
    task               int32   (N,)             the task a video is an attempt at   [episodes]
    success            bool    (N,)             whether the attempt solved it       [episodes]
    cf_frames          uint8   (N, O, T, H, W, 3)  the video without object o   [counterfactuals=true]
    cf_masks           uint8   (N, O, T, H, W)
    cf_states          float32 (N, O, T, O, F)
    cf_present         bool    (N, O, T, O)
    cf_valid           bool    (N, O)           False where object o does not exist

Root attributes: schema_version, source, generator_config (JSON), seed, fps, split,
observed_frames, state_fields (JSON), vocab (JSON: colours, shapes, materials), and
action_fields (JSON) only in a store with actions.

Writers write ``<name>.partial.h5`` and rename on success, so an interrupted run never leaves
a file that looks complete. Datasets are written without timestamps, so the same inputs
give the same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..io import partial_path

SCHEMA_VERSION = 1
STR = h5py.string_dtype(encoding="utf-8")


class StoreError(ValueError):
    """A store file is unreadable or does not match the schema."""


@dataclass(frozen=True)
class StoreLayout:
    """Sizes and optional field groups of a store."""

    num_videos: int
    num_frames: int
    height: int
    width: int
    max_objects: int = 0  # 0: no object fields
    masks: bool = False
    truth: bool = False
    counterfactuals: bool = False
    actions: int = 0  # A, the action columns of the `actions` field; 0: no actions
    one_shot: bool = False  # actions (N, A): one action per video at t = 0, not one per frame
    episodes: bool = False  # attempts at tasks: `task` and `success` per video (phyre_sim)
    frame_chunk: int = 8
    compression_level: int = 1

    def __post_init__(self) -> None:
        for name in ("num_videos", "num_frames", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"StoreLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.counterfactuals and not (self.masks and self.max_objects):
            raise ValueError("StoreLayout: counterfactual videos need masks and object fields")
        if self.actions < 0:
            raise ValueError(f"StoreLayout.actions must be >= 0 (0: no actions field), got {self.actions}")
        if self.one_shot and not self.actions:
            raise ValueError("StoreLayout: one_shot actions need actions > 0 (the action columns)")

    def fields(self, num_state_fields: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        N, T, H, W, O, F = (
            self.num_videos,
            self.num_frames,
            self.height,
            self.width,
            self.max_objects,
            num_state_fields,
        )
        f: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
            "frames": (np.dtype(np.uint8), (N, T, H, W, 3)),
            "video_ids": (STR, (N,)),
            "scene_index": (np.dtype(np.int64), (N,)),
            "annotations": (STR, (N,)),
        }
        if self.masks:
            f["masks"] = (np.dtype(np.uint8), (N, T, H, W))
        if O:
            f["states"] = (np.dtype(np.float32), (N, T, O, F))
            f["present"] = (np.dtype(bool), (N, T, O))
            f["in_view"] = (np.dtype(bool), (N, T, O))
            f["object_properties"] = (np.dtype(np.int8), (N, O, 3))
        if self.truth:
            f["truth"] = (STR, (N,))
        if self.actions:
            f["actions"] = (
                np.dtype(np.float32),
                (N, self.actions) if self.one_shot else (N, T, self.actions),
            )
        if self.episodes:
            f["task"] = (np.dtype(np.int32), (N,))
            f["success"] = (np.dtype(bool), (N,))
        if self.counterfactuals:
            f["cf_frames"] = (np.dtype(np.uint8), (N, O, T, H, W, 3))
            f["cf_masks"] = (np.dtype(np.uint8), (N, O, T, H, W))
            f["cf_states"] = (np.dtype(np.float32), (N, O, T, O, F))
            f["cf_present"] = (np.dtype(bool), (N, O, T, O))
            f["cf_valid"] = (np.dtype(bool), (N, O))
        return f


def _chunks(name: str, shape: tuple[int, ...], t_chunk: int) -> tuple[int, ...] | None:
    """Frames and masks are chunked by (1, t, H, W[, 3]) so a window is a few chunk reads."""
    t = min(t_chunk, shape[1]) if len(shape) > 1 else 1
    if name in ("frames", "masks"):
        return (1, t, *shape[2:])
    if name in ("cf_frames", "cf_masks"):
        return (1, 1, min(t_chunk, shape[2]), *shape[3:])
    if name in ("states", "present", "in_view") or (name == "actions" and len(shape) == 3):
        return (1, shape[1], *shape[2:])
    return None


class VideoStoreWriter:
    """Writes a store video by video; the file appears under its name only on ``close()``.

    Use as a context manager: an exception inside the block removes the partial file.
    """

    def __init__(
        self, path: str | os.PathLike, layout: StoreLayout, attrs: dict, state_fields=(), action_fields=()
    ):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.layout = layout
        if layout.max_objects and not state_fields:
            raise ValueError(
                f"{self.path}: a store with object fields (max_objects={layout.max_objects}) "
                "needs the names of its state columns (state_fields)"
            )
        if len(action_fields) != layout.actions:
            raise ValueError(
                f"{self.path}: the layout has {layout.actions} action columns but {len(action_fields)} "
                f"action_fields were named ({list(action_fields)}); name one per column, none without actions"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.partial, "w", libver=("earliest", "v110"))
        try:
            self._create(attrs, state_fields, action_fields)
        except BaseException:
            self.abort()
            raise
        self.written = np.zeros(layout.num_videos, bool)

    def _create(self, attrs: dict, state_fields, action_fields) -> None:
        layout = self.layout
        root = dict(attrs)
        root["schema_version"] = SCHEMA_VERSION
        root["state_fields"] = json.dumps(list(state_fields))
        if layout.actions:  # only then: a store without actions keeps its bytes
            root["action_fields"] = json.dumps(list(action_fields))
        for k in sorted(root):
            v = root[k]
            self.f.attrs[k] = json.dumps(v) if isinstance(v, dict | list) else v
        self.specs = layout.fields(len(state_fields))
        self.ds = {}
        for name, (dtype, shape) in self.specs.items():
            chunks = _chunks(name, shape, layout.frame_chunk)
            kw = {"compression": "gzip", "compression_opts": layout.compression_level} if chunks else {}
            self.ds[name] = self.f.create_dataset(
                name, shape=shape, dtype=dtype, chunks=chunks, track_times=False, **kw
            )

    def write(self, i: int, record: dict) -> None:
        """Write video ``i``; ``record`` maps field names to arrays without the leading N."""
        missing = [k for k in self.specs if k not in record]
        extra = [k for k in record if k not in self.specs]
        if missing or extra:
            raise StoreError(
                f"{self.path}: video {i}: record is missing {missing} / has unknown fields {extra}"
            )
        for name, value in record.items():
            want = self.specs[name][1][1:]
            if not isinstance(value, str) and tuple(np.shape(value)) != want:
                raise StoreError(
                    f"{self.path}: video {i}: field '{name}' has shape {np.shape(value)}, expected {want}"
                )
            self.ds[name][i] = value
        self.written[i] = True

    def close(self) -> Path:
        if not self.written.all():
            missing = np.flatnonzero(~self.written)[:10].tolist()
            self.abort()
            raise StoreError(f"{self.path}: videos {missing}... were never written; store discarded")
        self.f.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> VideoStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class H5Reader:
    """What every read-only store shares: its open HDF5 file ``f``, ``has``, closing, and the
    per-video basics (``num_videos`` is set by the subclass's validation)."""

    f: h5py.File
    path: Path
    num_videos: int

    def _open(self, path, missing: str, validate, **h5_options) -> None:
        """Open ``path`` read-only and run ``validate``; every failure names the file."""
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} does not exist; {missing}")
        try:
            self.f = h5py.File(self.path, "r", **h5_options)
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {e}") from e
        try:
            validate()
        except Exception:
            self.f.close()
            raise

    def has(self, name: str) -> bool:
        return name in self.f

    def __len__(self) -> int:
        return self.num_videos

    @property
    def video_ids(self) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else v for v in self.f["video_ids"][:]]

    def _check_index(self, i: int) -> int:
        if not -self.num_videos <= i < self.num_videos:
            raise IndexError(f"{self.path}: video index {i} out of range [0, {self.num_videos})")
        return i % self.num_videos

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoStore(H5Reader):
    """Read access to a video store, validated on open.

    Every problem is reported with the file name, the field and what was expected.
    """

    REQUIRED = ("frames", "video_ids", "scene_index", "annotations")

    def __init__(self, path: str | os.PathLike):
        self._open(
            path,
            "generate the video store with 'cjepa data generate' or 'cjepa data prepare-clevrer'",
            self._validate,
            # a larger chunk cache than h5py's 1 MiB default: one frame chunk of a 480x320 video is 3.7 MB
            rdcc_nbytes=64 * 2**20,
        )

    def _err(self, msg: str) -> StoreError:
        return StoreError(f"{self.path}: {msg}")

    def _validate(self) -> None:
        a = self.f.attrs
        if "schema_version" not in a:
            raise self._err("no 'schema_version' attribute; this is not a causaljepa video store")
        if int(a["schema_version"]) != SCHEMA_VERSION:
            raise self._err(
                f"schema_version is {int(a['schema_version'])}, this causaljepa reads version "
                f"{SCHEMA_VERSION}; regenerate the store with this version"
            )
        for name in self.REQUIRED:
            if name not in self.f:
                raise self._err(f"required field '{name}' is missing")
        try:
            self.state_fields = tuple(json.loads(a.get("state_fields", "[]")))
            self.action_fields = tuple(json.loads(a.get("action_fields", "[]")))
            self.generator_config = json.loads(a.get("generator_config", "{}"))
            self.vocab = json.loads(a.get("vocab", "{}"))
        except json.JSONDecodeError as e:
            raise self._err(f"an attribute is not valid JSON: {e}") from e
        fr = self.f["frames"]
        if fr.ndim != 5 or fr.shape[-1] != 3:
            raise self._err(f"field 'frames' has shape {fr.shape}, expected (N, T, H, W, 3)")
        N, T, H, W, _ = fr.shape
        O = self.f["states"].shape[2] if "states" in self.f else 0
        if "actions" in self.f and not self.action_fields:
            raise self._err(
                "field 'actions' is present but the 'action_fields' attribute (a JSON list naming "
                "its A columns) is missing or empty"
            )
        A = len(self.action_fields) if "actions" in self.f else 0
        try:
            layout = StoreLayout(
                N,
                T,
                H,
                W,
                max_objects=O,
                masks="masks" in self.f,
                truth="truth" in self.f,
                counterfactuals="cf_frames" in self.f,
                actions=A,
                one_shot=A > 0 and self.f["actions"].ndim == 2,
                episodes="success" in self.f,
            )
        except ValueError as e:  # e.g. counterfactual videos without masks or states
            raise self._err(f"inconsistent set of fields: {e}") from e
        for name, (dtype, shape) in layout.fields(len(self.state_fields)).items():
            if name not in self.f:
                raise self._err(f"field '{name}' is missing (expected with the other fields present)")
            ds = self.f[name]
            if ds.shape != shape:
                if name == "actions":  # two forms: per frame, or one per video (one-shot)
                    raise self._err(
                        f"field 'actions' has shape {ds.shape}, expected {(N, T, A)} (per frame) or "
                        f"{(N, A)} (one per video), A = the {A} action_fields"
                    )
                raise self._err(f"field '{name}' has shape {ds.shape}, expected {shape}")
            if dtype == STR:
                ok = h5py.check_string_dtype(ds.dtype) is not None
            else:
                ok = ds.dtype == dtype
            if not ok:
                raise self._err(f"field '{name}' has dtype {ds.dtype}, expected {dtype}")
        self.layout = layout
        self.num_videos, self.num_frames, self.height, self.width, self.max_objects = N, T, H, W, O
        self.fps = float(a.get("fps", 0.0))
        self.source = str(a.get("source", ""))
        self.observed_frames = int(a.get("observed_frames", T))
        if not 1 <= self.observed_frames <= T:
            raise self._err(
                f"attribute observed_frames={self.observed_frames} must be in 1..{T} (the frame count)"
            )

    # access --------------------------------------------------------------------------------
    def read(
        self,
        name: str,
        i: int,
        t0: int = 0,
        t1: int | None = None,
        stride: int = 1,
        *,
        times=None,
        removed: int | None = None,
    ) -> np.ndarray:
        """Frames t0:t1:stride of field ``name`` for video ``i``; only those chunks are read.

        times:   explicit increasing frame indices instead of t0:t1:stride
        removed: for the cf_* fields, only the world without this object (default: all of them)
        """
        if name not in self.f:
            raise KeyError(f"{self.path}: field '{name}' is not in this store (fields: {sorted(self.f)})")
        i = self._check_index(i)
        ds = self.f[name]
        if (
            ds.ndim == 1
            or name in ("object_properties", "cf_valid")
            or (name == "actions" and self.layout.one_shot)
        ):  # no time axis
            return ds[i]
        if times is not None:
            sel = [int(t) for t in times]
            if not sel or sel != sorted(set(sel)) or not 0 <= sel[0] <= sel[-1] < self.num_frames:
                raise IndexError(
                    f"{self.path}: frames {sel} must be increasing, within [0, {self.num_frames})"
                )
        else:
            t1 = self.num_frames if t1 is None else t1
            if not 0 <= t0 < t1 <= self.num_frames or stride < 1:
                raise IndexError(
                    f"{self.path}: frame range {t0}:{t1}:{stride} is outside [0, {self.num_frames})"
                )
            sel = slice(t0, t1, stride)
        if name.startswith("cf_"):
            if removed is not None and not 0 <= removed < self.max_objects:
                raise IndexError(f"{self.path}: removed object {removed} is outside [0, {self.max_objects})")
            return ds[i, slice(None) if removed is None else removed, sel]
        return ds[i, sel]

    def _json(self, name: str, i: int) -> dict:
        raw = self.read(name, i)
        raw = raw.decode() if isinstance(raw, bytes) else raw
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise self._err(f"field '{name}' of video {i} is not valid JSON: {e}") from e

    def annotation(self, i: int) -> dict:
        """The video's CLEVRER annotation ({} where the source had none)."""
        return self._json("annotations", i)

    def truth(self, i: int) -> dict:
        return self._json("truth", i)
