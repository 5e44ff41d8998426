"""The real CLEVRER directory layout, both directions.

CLEVRER as distributed (any of it may sit deeper under the root a user gives; files are
found by searching the root recursively)::

    video_train/video_00000-01000/video_00000.mp4           480x320, 128 frames, 25 fps, H.264
    video_validation/video_10000-11000/video_10000.mp4
    video_test/video_15000-16000/video_15000.mp4
    annotation_train/annotation_00000-01000/annotation_00000.json    (train and validation only)
    annotation_validation/annotation_10000-11000/annotation_10000.json
    questions/train.json, questions/validation.json, questions/test.json  (test: no answers, no programs)

An annotation file holds ``scene_index``, ``video_filename``, ``object_property``
[{object_id, color, material, shape}], ``motion_trajectory`` [{frame_id, objects:
[{object_id, location[3], orientation[3], velocity[3], angular_velocity[3],
inside_camera_view}]}] (one entry per frame) and ``collision`` [{object_ids[2], frame_id,
location[3]}]. Scene indices: train 0-9999, validation 10000-14999, test 15000-19999.

- ``write_clevrer_layout`` writes clevrer_sim videos in this layout (the observed frames
  only, as mp4), so everything that reads real CLEVRER can be tested on simulated data;
- ``prepare_clevrer`` converts the layout (real or simulated) into a video store
  (``store.py``): frames (N, T, H, W, 3) resized to the requested resolution and, from the
  annotations, states (N, T, O, 6), present / in_view (N, T, O) and object_properties (N, O, 3).

An object listed in a frame of ``motion_trajectory`` is ``present`` in that frame. Real
CLEVRER lists every object of the video in every frame (objects that enter later wait
outside the view, ``inside_camera_view`` false), and so does clevrer_sim's annotation
(an object that has not entered yet is listed at its entry position with zero velocity),
so a prepared store has ``present`` true for all of a video's objects; ``in_view`` is what
tells whether an object can be seen.
"""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from ..io import atomic_output, write_json_atomic, write_text_atomic
from ..sim.clevrer_sim import STATE_FIELDS
from ..sim.generate import SPLIT_OFFSET, SPLITS, GenerateConfig, iter_videos, video_filename, video_id
from .questions import VOCAB, load_questions, property_ids
from .store import StoreError, StoreLayout, VideoStoreWriter

VIDEO_RE = re.compile(r"^video_(\d{5})\.mp4$")
ANNOTATION_RE = re.compile(r"^annotation_(\d{5})\.json$")
CRF = 18  # H.264 quality of written videos: visually lossless, decodes close to the source


# --- paths ------------------------------------------------------------------------------
def _bucket(scene_index: int) -> str:
    """The folder of 1000 a scene index lies in, e.g. 10000-11000."""
    a = scene_index // 1000 * 1000
    return f"{a:05d}-{a + 1000:05d}"


def video_relpath(split: str, scene_index: int) -> Path:
    """``video_<split>/video_<a>-<a+1000>/video_<idx>.mp4`` as in CLEVRER."""
    return Path(f"video_{split}") / f"video_{_bucket(scene_index)}" / video_filename(scene_index)


def annotation_filename(scene_index: int) -> str:
    return f"annotation_{scene_index:05d}.json"


def annotation_relpath(split: str, scene_index: int) -> Path:
    """``annotation_<split>/annotation_<a>-<a+1000>/annotation_<idx>.json`` as in CLEVRER."""
    folder = Path(f"annotation_{split}") / f"annotation_{_bucket(scene_index)}"
    return folder / annotation_filename(scene_index)


def question_relpath(split: str) -> Path:
    return Path("questions") / f"{split}.json"


# --- mp4 --------------------------------------------------------------------------------
def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = CRF) -> Path:
    """Encode ``frames`` uint8 (T, H, W, 3) RGB as H.264 (libx264, yuv420p) mp4 at ``fps``.

    The file is written under ``<name>.partial.mp4`` and renamed when complete. yuv420p halves
    the chroma resolution, so H and W must be even.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"{path}: frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}"
        )
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(
            f"{path}: resolution {W}x{H} (width x height) cannot be encoded as H.264 yuv420p; "
            "width and height must both be even"
        )
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(T):
            frame = av.VideoFrame.from_ndarray(frames[t], format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def read_mp4(path: str | os.PathLike, height: int, width: int) -> tuple[np.ndarray, float]:
    """Decode an mp4 into uint8 (T, height, width, 3) RGB frames (area-resampled) and its fps."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream; expected a CLEVRER mp4")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            frames = [
                f.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
                for f in container.decode(stream)
            ]
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: cannot decode the video (truncated or not an mp4?): {e}") from e
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames), fps


# --- writing the layout -----------------------------------------------------------------
def strip_answers(videos: list[dict]) -> list[dict]:
    """A copy of a question file without any ``answer`` or ``program`` key, like CLEVRER's test.json."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("answer", "program")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return [{**v, "questions": strip(v["questions"])} for v in videos]


def write_clevrer_layout(cfg: GenerateConfig, root: Path, workers: int = 1) -> dict:
    """Generate clevrer_sim videos and write them under ``root`` in CLEVRER's layout.

    For every split with videos in ``cfg.videos``: one mp4 per video with the observed
    frames (``cfg.scene.observed_frames``, at ``cfg.physics.fps``; the simulated future
    frames are not shown, as in CLEVRER), the annotation JSON (train and validation only)
    and ``questions/<split>.json`` (test: answers and programs removed).

    Returns ``{split: {"videos": [mp4 paths], "annotations": [json paths], "questions": path}}``.
    """
    root = Path(root)
    if cfg.height % 2 or cfg.width % 2:
        raise ValueError(
            f"write_clevrer_layout: resolution {cfg.width}x{cfg.height} (width x height) cannot "
            "be encoded as H.264 yuv420p; choose an even width and height"
        )
    splits = [s for s in SPLITS if cfg.videos.get(s, 0) > 0]
    if not splits:
        raise ValueError(f"write_clevrer_layout: the config has no videos to write (videos={cfg.videos})")
    observed = cfg.scene.observed_frames
    written: dict[str, dict] = {}
    for split in splits:
        videos, annotations, questions = [], [], []
        for _, video in iter_videos(cfg, split, workers, desc=f"clevrer layout {split}"):
            rec = video["record"]
            idx = int(rec["scene_index"])
            frames = rec["frames"][:observed]  # (observed, H, W, 3)
            videos.append(write_mp4(root / video_relpath(split, idx), frames, cfg.physics.fps))
            if split != "test":
                apath = root / annotation_relpath(split, idx)
                annotations.append(write_text_atomic(apath, rec["annotations"]))
            questions.append(video["questions"])
        if split == "test":
            questions = strip_answers(questions)
        qpath = write_json_atomic(root / question_relpath(split), questions)
        written[split] = {"videos": videos, "annotations": annotations, "questions": qpath}
    return written


# --- finding the layout -----------------------------------------------------------------
class _Found:
    """Every CLEVRER video, annotation and question file under a root, by scene index."""

    def __init__(self, root: Path):
        self.root = root
        self.videos: dict[int, list[Path]] = {}
        self.annotations: dict[int, list[Path]] = {}
        self.question_files: dict[str, list[Path]] = {}
        seen: set[str] = set()  # real paths walked: linked folders are followed, a link cycle is not
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames.clear()
                continue
            seen.add(real)
            dirnames.sort()
            d = Path(dirpath)
            for name in sorted(filenames):
                if m := VIDEO_RE.match(name):
                    self.videos.setdefault(int(m.group(1)), []).append(d / name)
                elif m := ANNOTATION_RE.match(name):
                    self.annotations.setdefault(int(m.group(1)), []).append(d / name)
                elif name.endswith(".json") and "question" in d.name.lower():
                    self.question_files.setdefault(name[:-5], []).append(d / name)

    def _under(self, path: Path, folder: str) -> bool:
        """Whether a folder between the root and ``path`` has ``folder`` in its name."""
        return any(folder in part for part in path.relative_to(self.root).parts[:-1])

    def _pick(self, candidates: list[Path], folder: str, what: str) -> Path | None:
        if len(candidates) > 1:
            preferred = [p for p in candidates if self._under(p, folder)]
            candidates = preferred or candidates
        if len(candidates) > 1:
            raise ValueError(
                f"{self.root}: {what} exists more than once: {[str(p) for p in candidates]}; keep one copy"
            )
        return candidates[0] if candidates else None

    def question_file(self, split: str) -> Path | None:
        return self._pick(self.question_files.get(split, []), "question", f"the question file {split}.json")

    def video(self, idx: int, split: str) -> Path | None:
        return self._pick(self.videos.get(idx, []), f"video_{split}", video_filename(idx))

    def annotation(self, idx: int, split: str) -> Path | None:
        return self._pick(self.annotations.get(idx, []), f"annotation_{split}", annotation_filename(idx))

    def split_videos(self, split: str) -> dict[int, Path]:
        out = {}
        for idx, paths in self.videos.items():
            inside = [p for p in paths if self._under(p, f"video_{split}")]
            if inside:
                out[idx] = self._pick(inside, f"video_{split}", video_filename(idx))
        return out


def _select_videos(found: _Found, split: str) -> list[tuple[int, Path]]:
    """(scene_index, mp4) of the split, sorted by scene index."""
    qfile = found.question_file(split)
    if qfile is not None:
        entries = load_questions(qfile)
        out = []
        for idx in sorted({int(e["scene_index"]) for e in entries}):
            mp4 = found.video(idx, split)
            if mp4 is None:
                raise FileNotFoundError(
                    f"{qfile} lists scene_index {idx}, but {video_filename(idx)} was "
                    f"not found under {found.root}; expected e.g. "
                    f"{video_relpath(split, idx)}"
                )
            out.append((idx, mp4))
        return out
    videos = found.split_videos(split)
    if not videos:
        raise FileNotFoundError(
            f"{found.root}: found neither the question file {question_relpath(split)} nor any "
            f"video_NNNNN.mp4 under a folder named like video_{split} (e.g. "
            f"{video_relpath(split, SPLIT_OFFSET.get(split, 0))}); is this the CLEVRER root?"
        )
    return sorted(videos.items())


# --- annotations ------------------------------------------------------------------------
def _read_annotation(path: Path) -> dict:
    try:
        with open(path) as fh:
            ann = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected a CLEVRER annotation object") from e
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: top level is {type(ann).__name__}, expected a CLEVRER annotation object")
    for key in ("object_property", "motion_trajectory"):
        if not isinstance(ann.get(key), list):
            raise ValueError(f"{path}: '{key}' is missing or not a list; expected a CLEVRER annotation")
    return ann


def _object_properties(ann: dict, path: Path) -> dict[int, tuple[int, int, int]]:
    """object_id -> (colour, shape, material) indices into COLORS, SHAPES, MATERIALS."""
    props = {}
    for obj in ann["object_property"]:
        oid = obj.get("object_id") if isinstance(obj, dict) else None
        if not isinstance(oid, int) or oid < 0:
            raise ValueError(
                f"{path}: object_property entry {obj!r} needs a non-negative integer 'object_id'"
            )
        props[oid] = property_ids(obj, str(path))
    return props


def _num_objects(ann: dict, path: Path) -> int:
    """O a store needs for this annotation: the largest object id + 1."""
    props = _object_properties(ann, path)
    return max(props) + 1 if props else 0


def _annotation_arrays(ann: dict, path: Path, mp4: Path, num_frames: int, O: int) -> dict[str, np.ndarray]:
    """states (T, O, 6), present (T, O), in_view (T, O), object_properties (O, 3) of one annotation."""
    motion = ann["motion_trajectory"]
    if len(motion) != num_frames:
        raise ValueError(
            f"{path}: motion_trajectory has {len(motion)} frames, but its video {mp4} has "
            f"{num_frames}; the annotation must describe every frame of the video"
        )
    props = _object_properties(ann, path)
    object_properties = np.full((O, 3), -1, np.int8)
    for oid, ids in props.items():
        object_properties[oid] = ids
    states = np.zeros((num_frames, O, len(STATE_FIELDS)), np.float32)  # (T, O, F)
    present = np.zeros((num_frames, O), bool)
    in_view = np.zeros((num_frames, O), bool)
    for t, frame in enumerate(motion):
        if not (
            isinstance(frame, dict)
            and frame.get("frame_id", t) == t
            and isinstance(frame.get("objects"), list)
        ):
            raise ValueError(
                f"{path}: motion_trajectory entry {t} must be "
                f"{{'frame_id': {t}, 'objects': [...]}}, got {str(frame)[:200]}"
            )
        for obj in frame["objects"]:
            oid = obj.get("object_id")
            if oid not in props:
                raise ValueError(
                    f"{path}: frame {t} lists object_id {oid!r}, which is not in "
                    f"object_property (ids {sorted(props)})"
                )
            try:
                keys = ("location", "orientation", "velocity", "angular_velocity")
                loc, ori, vel, ang = (obj[k] for k in keys)
                states[t, oid] = (loc[0], loc[1], vel[0], vel[1], ori[2], ang[2])  # STATE_FIELDS order
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{path}: frame {t}, object {oid}: needs location, orientation, velocity "
                    f"and angular_velocity as 3 numbers each ({e!r})"
                ) from e
            present[t, oid] = True
            in_view[t, oid] = bool(obj.get("inside_camera_view", False))
    return {"states": states, "present": present, "in_view": in_view, "object_properties": object_properties}


def _no_objects(num_frames: int, O: int) -> dict[str, np.ndarray]:
    """Object fields of a video without annotation: nothing present, properties -1."""
    return {
        "states": np.zeros((num_frames, O, len(STATE_FIELDS)), np.float32),
        "present": np.zeros((num_frames, O), bool),
        "in_view": np.zeros((num_frames, O), bool),
        "object_properties": np.full((O, 3), -1, np.int8),
    }


# --- preparing a store ------------------------------------------------------------------
def prepare_clevrer(
    root: Path,
    out: Path,
    split: str,
    height: int,
    width: int,
    require_annotations: bool = True,
    num_frames: int | None = None,
    limit: int | None = None,
) -> Path:
    """Convert CLEVRER's layout under ``root`` into the video store ``out`` (e.g. train.h5).

    The split's videos are the scene indices of ``questions/<split>.json`` (validated with
    ``load_questions``) or, without a question file, every ``video_NNNNN.mp4`` under a
    folder named like ``video_<split>``; sorted by scene index, the first ``limit`` kept.
    Frames: uint8 (N, T, height, width, 3), area-resampled; every video must have T frames
    (the first video's count, or ``num_frames``). With annotations (required unless
    ``require_annotations`` is false, as for the test split): states (N, T, O, 6) from
    location[0:2], velocity[0:2], orientation[2], angular_velocity[2]; present, in_view
    (N, T, O); object_properties int8 (N, O, 3); O = the most objects of any video. Without
    any annotation the store has no object fields and empty ``annotations``; with
    ``require_annotations=False`` and only some annotated, the others get ``annotations``
    "", nothing present and properties -1. No masks and no truth: real data has neither.
    """
    root, out = Path(root), Path(out)
    if height < 1 or width < 1:
        raise ValueError(
            f"prepare_clevrer: resolution {width}x{height} (width x height) must be at least 1x1"
        )
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"prepare_clevrer: num_frames must be >= 1 or None, got {num_frames}")
    if limit is not None and limit < 1:
        raise ValueError(f"prepare_clevrer: limit must be >= 1 or None, got {limit}")
    if not root.is_dir():
        raise FileNotFoundError(f"CLEVRER root {root} is not a directory")
    found = _Found(root)
    videos = _select_videos(found, split)[:limit]

    # annotations first, so a missing or malformed one fails before hours of decoding
    ann_paths: list[Path | None] = []
    O = 0
    for idx, mp4 in videos:
        apath = found.annotation(idx, split)
        if apath is None and require_annotations:
            raise FileNotFoundError(
                f"{mp4}: no annotation file {annotation_filename(idx)} under {root} (expected e.g. "
                f"{annotation_relpath(split, idx)}); CLEVRER's test split has none: pass "
                "require_annotations=False to prepare frames only"
            )
        ann_paths.append(apath)
    annotated = any(p is not None for p in ann_paths)
    if annotated:
        present_paths = [p for p in ann_paths if p is not None]
        bar = tqdm(present_paths, desc=f"clevrer annotations {split}", unit="file", dynamic_ncols=True)
        for apath in bar:
            O = max(O, _num_objects(_read_annotation(apath), apath))
        O = max(O, 1)

    first, fps = read_mp4(videos[0][1], height, width)
    T = num_frames if num_frames is not None else len(first)
    layout = StoreLayout(len(videos), T, height, width, max_objects=O if annotated else 0)
    config = {
        "root": root.resolve().name,
        "split": split,
        "height": height,
        "width": width,
        "require_annotations": require_annotations,
        "num_frames": num_frames,
        "limit": limit,
    }
    attrs = {
        "source": "clevrer",
        "generator_config": json.dumps(config, sort_keys=True),
        "seed": 0,
        "fps": fps,
        "split": split,
        "observed_frames": T,
        "vocab": VOCAB,
    }
    with VideoStoreWriter(out, layout, attrs, STATE_FIELDS) as w:
        bar = tqdm(total=len(videos), desc=f"clevrer {split}", unit="video", dynamic_ncols=True)
        try:
            for i, ((idx, mp4), apath) in enumerate(zip(videos, ann_paths, strict=True)):
                frames = first if i == 0 else read_mp4(mp4, height, width)[0]
                if len(frames) != T:
                    source = "num_frames" if num_frames is not None else f"the first video {videos[0][1]}"
                    raise StoreError(
                        f"{mp4}: has {len(frames)} frames, expected {T} (from {source}); all "
                        "videos of a store must have the same number of frames"
                    )
                record = {
                    "frames": frames,
                    "video_ids": video_id(idx),
                    "scene_index": idx,
                    "annotations": "",
                }
                if apath is not None:
                    ann = _read_annotation(apath)
                    record.update(_annotation_arrays(ann, apath, mp4, len(frames), O))
                    record["annotations"] = json.dumps(ann)
                elif annotated:  # require_annotations=False and only some videos have one
                    record.update(_no_objects(T, O))
                w.write(i, record)
                bar.update()
        finally:
            bar.close()
    return out
