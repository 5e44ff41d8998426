"""The PHYRE layers above the simulator: generated rollouts, their oracle slots, the episode
world model and readout, AUCCESS / fidelity / VoE, and `cjepa eval phyre`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli

from causaljepa import cli
from causaljepa.data.phyre_slots import PHYRE_ORACLE_FIELDS, SCENE_ROLES, write_phyre_oracle_slots
from causaljepa.data.slot_store import SlotStore
from causaljepa.data.store import StoreError, StoreLayout, VideoStore
from causaljepa.data.windows import WindowSampler
from causaljepa.evaluation import phyre as ev
from causaljepa.evaluation.phyre import (
    VIOLATIONS,
    OutcomeCache,
    PhyreEvalConfig,
    RankingConfig,
    VoEConfig,
    auccess,
    fidelity,
    split_videos,
    violation_worlds,
)
from causaljepa.masking import MaskConfig
from causaljepa.models.predictor import CJEPAPredictor, PredictorConfig
from causaljepa.sim import phyre_sim as ps
from causaljepa.sim.phyre_generate import (
    BALL,
    ROLE_VOCAB,
    ROLLOUTS_FILE,
    TASKS_FILE,
    PhyreGenerateConfig,
    TaskIndex,
    generate,
)
from causaljepa.training.loop import OptimConfig, TrainerConfig
from causaljepa.training.phyre import (
    ClipWindows,
    EpisodeConfig,
    EpisodeSampler,
    PlausibilityConfig,
    ReadoutConfig,
    SuccessReadout,
    expected_frames,
    future_hidden,
    load_readout,
    observe_prefix,
    predict_episodes,
    score_actions,
    train_phyre_predictor,
    train_plausibility,
    train_readout,
    window_errors,
    window_frames,
)
from causaljepa.training.predictor import load_predictor

TPT, RPT = 2, 4  # tasks per template, rollouts per task (templates 0, 1, 2 of the smoke preset)
N_TASKS = 3 * TPT
K, D = ps.MAX_OBJECTS, len(PHYRE_ORACLE_FIELDS)
T = 41  # 8 s at 5 fps, frames 0..40
STRIDE, FUTURE = 10, 4
TIMES = np.arange(0, FUTURE * STRIDE + 1, STRIDE)
PCFG = PredictorConfig(slot_dim=D, dim=16, layers=1, heads=2, head_dim=8, mlp_hidden=16, dropout=0.0,
                       history=1, future=FUTURE, action_dim=3)  # fmt: skip
RCFG = ReadoutConfig(dim=8, hidden=16, frames=1 + FUTURE, slot_dim=D)
TINY_OPTIM = OptimConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1, val_every=0, ckpt_every=3)
CPU = TrainerConfig(device="cpu", precision="fp32", progress=False)
SMOKE_EVAL = ["preset=smoke", "trainer.progress=false"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """The models are tiny (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Smoke phyre_sim data (2 tasks per template) and its oracle slots, made by the commands."""
    base = tmp_path_factory.mktemp("phyre")
    root = base / "ds"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        run_cli(["data", "generate", "data=phyre_sim", "preset=smoke", f"data.root={root}", "workers=1",
                 f"data.generator.tasks_per_template={TPT}"])  # fmt: skip
        run_cli(["oracle-slots", "data=phyre_sim", f"data.root={root}"])
    return root


@pytest.fixture(scope="module")
def evaluated(world, tmp_path_factory) -> Path:
    """`cjepa eval phyre preset=smoke` on the world; returns its out directory."""
    base = tmp_path_factory.mktemp("phyre_eval")
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        run_cli(["eval", "phyre", *SMOKE_EVAL, f"data.root={world}", f"out={out}"])
    return out


def _oracle(world: Path) -> Path:
    return world / "oracle_slots" / ROLLOUTS_FILE


def _model(seed: int = 0) -> CJEPAPredictor:
    """A random predictor whose rollouts depend on the action (the output layer starts at zero)."""
    torch.manual_seed(seed)
    model = CJEPAPredictor(PCFG).eval()
    torch.nn.init.normal_(model.out.weight, std=0.2)
    return model


def _readout(seed: int = 0) -> SuccessReadout:
    torch.manual_seed(seed)
    return SuccessReadout(RCFG).eval()


# generation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"templates": [99]}, "templates"),
        ({"templates": [0, 0]}, "distinct"),
        ({"templates": []}, "templates"),
        ({"tasks_per_template": 0}, "tasks_per_template"),
        ({"tasks_per_template": 101}, "tasks_per_template"),
        ({"rollouts_per_task": 0}, "rollouts_per_task"),
        ({"rollouts_per_task": 8, "max_attempts": 4}, "max_attempts"),
        ({"fps": 7.0}, "fps=7.0"),
        ({"fps": 0.0}, "fps"),
        ({"height": 4}, "below 8x8"),
        ({"background": "grey"}, "background"),
    ],
)
def test_generate_config_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        PhyreGenerateConfig(**kw)


def test_generated_store_layout(world):
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        assert vs.source == "phyre_sim"
        assert (vs.num_videos, vs.num_frames, vs.max_objects) == (N_TASKS * RPT, T, BALL + 1)
        assert vs.f["actions"].shape == (N_TASKS * RPT, 3)
        assert vs.read("actions", 5).shape == (3,)
        assert vs.f["task"].dtype == np.int32 and vs.f["success"].dtype == bool
        np.testing.assert_array_equal(vs.f["task"][:], np.repeat(np.arange(N_TASKS), RPT))
        assert vs.vocab["ball"] == BALL
        col = {n: i for i, n in enumerate(vs.state_fields)}
        for i in range(vs.num_videos):
            present, masks = vs.read("present", i), vs.read("masks", i)
            states, props = vs.read("states", i), vs.read("object_properties", i)
            truth, action = vs.truth(i), vs.read("actions", i)
            # the ball: absent (no pixels) in frame 0, there from frame 1 on
            assert not present[0, BALL] and present[1:, BALL].all()
            assert not (masks[0] == BALL + 1).any() and (masks[1] == BALL + 1).any()
            assert truth["solved"] == bool(vs.f["success"][i])
            np.testing.assert_allclose(truth["action"], action, atol=1e-7)
            _, _, radius = ps.action_to_ball(action)
            np.testing.assert_allclose(states[1:, BALL, col["width"]], 2 * radius / ps.SCENE_SIZE, rtol=1e-5)
            assert tuple(props[BALL]) == (ROLE_VOCAB.index("ball"), 0, 1)
            assert (states[~present] == 0).all()


def test_generated_tasks_are_balanced(world):
    d = json.loads((world / TASKS_FILE).read_text())
    cfg = d["generator_config"]
    assert d["rollouts_per_task"] == RPT and len(d["tasks"]) == N_TASKS
    assert [t["task_id"] for t in d["tasks"]] == [t.task_id for t in ps.all_tasks([0, 1, 2], TPT)]
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        success, task = vs.f["success"][:], vs.f["task"][:]
    for ti, rec in enumerate(d["tasks"]):
        s = success[task == ti]
        assert int(s.sum()) == rec["solved"] and int((~s).sum()) == rec["failed"]
        assert rec["solved"] + rec["failed"] == RPT
        assert rec["tried"] <= cfg["max_attempts"]
        if rec["tried"] < cfg["max_attempts"]:  # the quotas were met before the attempts ran out
            assert (rec["solved"], rec["failed"]) == (RPT // 2, RPT - RPT // 2)
        # solved attempts first
        assert list(s) == sorted(s, reverse=True)
    assert sum(r["solved"] for r in d["tasks"]) > 0


def test_success_is_the_simulated_outcome(world):
    tasks = TaskIndex.load(world).tasks
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        for i in (0, 2, 5):
            task = tasks[int(vs.read("task", i))]
            assert ps.simulate(task, vs.read("actions", i), fps=None).solved == bool(vs.read("success", i))


def test_generate_is_deterministic_across_workers_and_tasks(world, tmp_path):
    """Template 0 alone, on two workers, gives the bytes of the smoke run's first tasks."""
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        cfg = PhyreGenerateConfig(**{**vs.generator_config, "templates": [0]})
        generate(cfg, tmp_path, workers=2, progress=False)
        with VideoStore(tmp_path / ROLLOUTS_FILE) as small:
            n = small.num_videos
            assert n == TPT * RPT
            for name in ("frames", "masks", "states", "present", "actions", "success", "task"):
                np.testing.assert_array_equal(small.f[name][:], vs.f[name][:n], err_msg=name)
            assert [small.truth(i) for i in range(n)] == [vs.truth(i) for i in range(n)]
    big = json.loads((world / TASKS_FILE).read_text())["tasks"][:TPT]
    assert json.loads((tmp_path / TASKS_FILE).read_text())["tasks"] == big


def test_task_index_rebuilds_and_checks(world, tmp_path):
    index = TaskIndex.load(world)
    assert [t.task_id for t in index.tasks] == [t.task_id for t in ps.all_tasks([0, 1, 2], TPT)]
    assert index.tasks[3] == ps.make_task(1, 1)
    assert sum(s["solved"] + s["failed"] for s in index.summaries) == N_TASKS * RPT
    with pytest.raises(FileNotFoundError, match=r"tasks\.json does not exist"):
        TaskIndex.load(tmp_path)
    d = json.loads((world / TASKS_FILE).read_text())
    d["tasks"][2]["bodies"][0]["x"] += 1.0
    (tmp_path / TASKS_FILE).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"task {d['tasks'][2]['task_id']} differs"):
        TaskIndex.load(tmp_path)


def test_one_shot_layout_needs_actions():
    with pytest.raises(ValueError, match="one_shot actions need actions > 0"):
        StoreLayout(num_videos=1, num_frames=2, height=8, width=8, one_shot=True)


# oracle slots -------------------------------------------------------------------------------
def test_oracle_slots_by_hand(world):
    roles = ("goal", "subject", "goal_static", "dynamic", "static")
    assert SCENE_ROLES == roles
    tasks = TaskIndex.load(world).tasks
    with VideoStore(world / ROLLOUTS_FILE) as vs, SlotStore(_oracle(world)) as ss:
        assert (ss.num_slots, ss.slot_dim) == (K, D)
        assert ss.encoder_hash == "oracle" and ss.one_shot and ss.action_dim == 3
        for name in ("actions", "task", "success"):
            np.testing.assert_array_equal(ss.f[name][:], vs.f[name][:], err_msg=name)
        col = {n: i for i, n in enumerate(vs.state_fields)}
        for v, t in ((0, 7), (9, 23), (21, 40)):
            task = tasks[int(vs.read("task", v))]
            slots, states = ss.read("slots", v)[t], vs.read("states", v)[t]
            props = vs.read("object_properties", v)
            n = len(task.bodies)
            for k, body in enumerate(task.bodies):
                s = states[k]
                ang = s[col["angle"]]
                want = [1.0, 2 * s[col["x"]] - 1, 2 * s[col["y"]] - 1, s[col["vx"]], s[col["vy"]],
                        math.cos(ang), math.sin(ang), s[col["angular_velocity"]] / 10, s[col["width"]],
                        s[col["height"]], float(len(body.shapes) == 1 and body.shapes[0].kind == "circle"),
                        *(float(body.role == r) for r in roles)]  # fmt: skip
                np.testing.assert_allclose(slots[k], want, atol=1e-6, err_msg=f"video {v} body {k}")
                assert vs.vocab["roles"][props[k, 0]] == body.role
            assert (ss.read("slots", v)[:, n:] == 0).all()  # absent slots are all zero, every frame
            obj = ss.read("slot_object", v)
            np.testing.assert_array_equal(obj[:, :n], np.broadcast_to(np.arange(n), (T, n)))
            assert (obj[:, n:] == -1).all()
        # the ball is no slot: frame 0 (before it) and every slot are the same for a task's attempts
        s0 = ss.f["slots"][:RPT]
        assert (s0[:, 0] == s0[0, 0]).all()


def test_oracle_slots_refuse_other_stores(world, tmp_path):
    bad = tmp_path / "other.h5"
    shutil.copy(world / ROLLOUTS_FILE, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["source"] = "clevrer_sim"
    with pytest.raises(StoreError, match="not a phyre_sim rollout store"):
        write_phyre_oracle_slots(bad, tmp_path / "slots.h5")
    assert not (tmp_path / "slots.h5").exists()


def test_window_sampler_refuses_one_shot_actions(world):
    with SlotStore(_oracle(world)) as ss:
        with pytest.raises(ValueError, match="one action per video"):
            WindowSampler(ss, 1, 2, 1)
        w = WindowSampler(ss, 1, 2, 1, actions=False)
        assert w.action_dim == 0


# episodes, the world model and the readout -------------------------------------------------------
def test_episode_sampler_reads_the_right_frames(world):
    with SlotStore(_oracle(world)) as ss:
        videos = [9, 2, 14, 3]
        s = EpisodeSampler(ss, videos, FUTURE, STRIDE)
        assert len(s) == 4 and list(s.videos) == [2, 3, 9, 14]
        b = s.sample(6, torch.Generator().manual_seed(0))
        assert b["slots"].shape == (6, 1 + FUTURE, K, D) and b["actions"].shape == (6, 3)
        assert b["success"].shape == (6,)
        got = s.batch(torch.tensor([2, 0]))
        for row, v in enumerate((9, 2)):
            np.testing.assert_array_equal(got["slots"][row].numpy(), ss.f["slots"][v][TIMES])
            np.testing.assert_array_equal(got["actions"][row].numpy(), ss.f["actions"][v])
            assert bool(got["success"][row]) == bool(ss.f["success"][v])
        s2 = EpisodeSampler(ss, [1], 2, 20)  # frames 0, 20, 40: the last frame is reachable
        np.testing.assert_array_equal(s2.slots[0].numpy(), ss.f["slots"][1][[0, 20, 40]])
        with pytest.raises(ValueError, match="reach frame 41"):
            EpisodeSampler(ss, videos, 1, 41)
        with pytest.raises(ValueError, match="reach frame 44"):
            EpisodeSampler(ss, videos, FUTURE, 11)
        with pytest.raises(ValueError, match="no attempts selected"):
            EpisodeSampler(ss, [], FUTURE, STRIDE)


def test_episode_sampler_needs_success_labels(world, tmp_path):
    path = tmp_path / ROLLOUTS_FILE
    shutil.copy(_oracle(world), path)
    with h5py.File(path, "r+") as f:
        del f["success"]
    with SlotStore(path) as ss, pytest.raises(ValueError, match="success labels"):
        EpisodeSampler(ss, [0, 1], FUTURE, STRIDE)


def test_future_hidden():
    h = future_hidden(2, 3, 4)
    assert h.shape == (2, 4, 4) and h.dtype == torch.bool
    assert not h[:, 0].any() and h[:, 1:].all()


def test_predict_episodes_keeps_the_scene(world):
    model = _model()
    with SlotStore(_oracle(world)) as ss:
        scene = torch.from_numpy(ss.f["slots"][[0, 4, 8], 0])
        actions = torch.from_numpy(ss.f["actions"][[0, 4, 8]])
    pred = predict_episodes(model, scene, actions)
    assert pred.shape == (3, 1 + FUTURE, K, D) and pred.dtype == torch.float32
    assert torch.equal(pred[:, 0], scene)
    assert torch.isfinite(pred).all()
    other = predict_episodes(model, scene, actions.flip(0))
    assert torch.equal(other[:, 0], scene) and not torch.allclose(other[:, 1:], pred[:, 1:])


def test_predict_episodes_from_a_seen_prefix(world):
    """Frames 1 .. j - 1 given are returned as given and are read: the later predictions change."""
    model = _model()
    with SlotStore(_oracle(world)) as ss:
        clip = torch.from_numpy(ss.f["slots"][[0, 4]][:, TIMES])  # (2, 1 + F, K, D)
        actions = torch.from_numpy(ss.f["actions"][[0, 4]])
    blind = predict_episodes(model, clip[:, 0], actions)
    seen = predict_episodes(model, clip[:, 0], actions, seen=clip[:, 1:3])
    assert torch.equal(seen[:, :3], clip[:, :3])
    assert not torch.allclose(seen[:, 3:], blind[:, 3:])
    # the same as the model run by hand with frames 0..2 visible
    hidden = future_hidden(2, FUTURE, K, seen=3)
    assert not hidden[:, :3].any() and hidden[:, 3:].all()
    inputs = clip.clone()
    inputs[:, 3:] = 0
    with torch.no_grad():
        manual, _ = model(inputs, hidden, actions)
    torch.testing.assert_close(seen[:, 3:], manual[:, 3:])


def test_observe_prefix():
    hidden = future_hidden(4000, FUTURE, K)
    out = observe_prefix(hidden, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(hidden, future_hidden(4000, FUTURE, K))  # not changed in place
    seen = (~out).all(dim=2)  # (B, T): every slot of a frame alike
    assert torch.equal(seen, ~out.any(dim=2))
    first_hidden = (~seen).float().argmax(dim=1)  # h, the first hidden frame
    # a prefix: frames < h visible, frames >= h hidden, frame 0 always visible, the last always hidden
    assert torch.equal(seen, torch.arange(1 + FUTURE)[None] < first_hidden[:, None])
    assert set(first_hidden.tolist()) == {1, 2, 3, 4}
    share = (first_hidden > 1).float().mean()
    assert abs(float(share) - 0.5) < 0.03
    counts = torch.bincount(first_hidden[first_hidden > 1])[2:].float()
    assert float(counts.max() / counts.min()) < 1.2  # h uniform over 2..F
    assert torch.equal(observe_prefix(hidden, 0.0, torch.Generator().manual_seed(0)), hidden)
    same = observe_prefix(hidden, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(same, out)


def test_surprise_by_hand(world):
    """step=False: every frame expected from frame 0 and the action; step=True: frame j expected
    from the clip's frames 0 .. j - 1. Both: the largest per-slot squared error."""
    model = _model()
    with SlotStore(_oracle(world)) as ss:
        clip = ss.f["slots"][[0, 4, 8]][:, TIMES]
        actions = ss.f["actions"][[0, 4, 8]]

    def surprise(step=True, scale=None):
        err = ev.expectation_errors(model, torch.from_numpy(clip), torch.from_numpy(actions), step=step)
        return ev.scaled_surprise(err, scale)

    blind = predict_episodes(model, torch.from_numpy(clip[:, 0]), torch.from_numpy(actions))
    s_scene = surprise(step=False)
    by_hand = (blind[:, 1:] - torch.from_numpy(clip[:, 1:])).pow(2).mean(-1).flatten(1).amax(1)
    np.testing.assert_allclose(s_scene, by_hand.numpy(), rtol=1e-6)
    step = surprise()
    assert not np.allclose(step, s_scene)
    # scaled: each feature's squared error over its scale (+ the floor), then the slot mean
    scale = torch.linspace(0.01, 1.0, D)
    err = ev.expectation_errors(model, torch.from_numpy(clip), torch.from_numpy(actions))
    assert err.shape == (3, FUTURE, K, D)
    want = (err / (scale + ev.SCALE_FLOOR)).mean(-1).flatten(1).amax(1).numpy()
    np.testing.assert_allclose(surprise(scale=scale), want, rtol=1e-6)
    np.testing.assert_allclose(step, err.mean(-1).flatten(1).amax(1).numpy(), rtol=1e-6)
    errs = []
    for j in range(1, FUTURE + 1):
        p = predict_episodes(model, torch.from_numpy(clip[:, 0]), torch.from_numpy(actions),
                             seen=torch.from_numpy(clip[:, 1:j]))  # fmt: skip
        errs.append((p[:, j] - torch.from_numpy(clip[:, j])).pow(2).mean(-1))
    np.testing.assert_allclose(step, torch.stack(errs, 1).flatten(1).amax(1).numpy(), rtol=1e-6)


def test_tail_surprise_by_hand():
    """Each feature against its own held-out errors: -log((1 + as large) / (1 + M)), growing with
    log(e / (largest + floor)) beyond the largest; the clip's largest over frames, slots, features."""
    err = torch.zeros(2, 3, 2, 2)  # (N, F, K, D) held-out errors
    err[..., 0] = torch.arange(12.0).reshape(2, 3, 2)  # feature 0: 0 .. 11, spread out
    err[..., 1] = 0.5  # feature 1: always 0.5
    expected = torch.ones(2, 3, 2, 2)
    expected[1, 2, 1, 0] = 0.0  # one absent slot (its errors, 11 and 0.5, are not held out)
    held = ev.held_out_errors(err, expected)
    assert held.shape == (2, 11) and held[0, -1] == 10.0 and (held[1] == 0.5).all()
    M = 11
    clip = torch.zeros(3, 1, 1, 1, 2)  # (B, F, K, D) with F = K = 1
    clip[0, ..., 0] = 7.0  # 4 held-out errors (7, 8, 9, 10) are as large
    clip[1, ..., 1] = 0.6  # beyond every feature-1 error: the floor share, and a little more
    clip[2, ..., 0] = 40.0  # beyond every feature-0 error, 4x the largest
    got = ev.tail_surprise(clip.reshape(3, 1, 1, 2), held)
    want = [
        np.log(1 + M) - np.log(1 + 4),
        np.log(1 + M) + np.log(0.6 / (0.5 + ev.SCALE_FLOOR)),
        np.log(1 + M) + np.log(40.0 / (10.0 + ev.SCALE_FLOOR)),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a small error of a tight feature outranks a larger one of a spread-out feature
    assert got[1] > got[0] and float(clip[1].max()) < float(clip[0].max())
    # the largest over the clip's frames and slots
    many = torch.zeros(1, 4, 3, 2)
    many[0, 2, 1, 0] = 7.0
    np.testing.assert_allclose(ev.tail_surprise(many, held), want[:1], rtol=1e-6)
    with pytest.raises(ValueError, match=r"held_out \(3, 11\) must be \(D=2, M\)"):
        ev.tail_surprise(many, np.zeros((3, 11)))
    with pytest.raises(ValueError, match="no present slot"):
        ev.held_out_errors(err, torch.zeros_like(expected))


def test_error_scale_over_present_slots(world):
    model = _model()
    with SlotStore(_oracle(world)) as ss:
        episodes = EpisodeSampler(ss, range(8), FUTURE, STRIDE)
    err = ev.expectation_errors(model, episodes.slots, episodes.actions)  # (N, F, K, D)
    scale = ev.error_scale(err, episodes.slots[:, 1:])
    present = episodes.slots[:, 1:, :, 0] > 0.5
    want = err[present].mean(dim=0)  # (D,): the mean over present slots only
    torch.testing.assert_close(scale, want)
    assert bool(present.sum() < present.numel()) and scale.shape == (D,)


def _episodes(ss, train, val):
    return EpisodeSampler(ss, train, FUTURE, STRIDE), EpisodeSampler(ss, val, FUTURE, STRIDE)


def test_train_phyre_predictor_refuses_history(world, tmp_path):
    args = (MaskConfig(strategy="none"), TINY_OPTIM, CPU, EpisodeConfig(stride=STRIDE), tmp_path / "run")
    with SlotStore(_oracle(world)) as ss:
        with pytest.raises(ValueError, match=r"predictor\.history=2"):
            train_phyre_predictor(*_episodes(ss, [0, 1], [2]), replace(PCFG, history=2), *args)
        with pytest.raises(ValueError, match="slot_dim=5"):
            train_phyre_predictor(*_episodes(ss, [0, 1], [2]), replace(PCFG, slot_dim=5), *args)
        with pytest.raises(ValueError, match=r"predictor\.future=2"):
            train_phyre_predictor(*_episodes(ss, [0, 1], [2]), replace(PCFG, future=2), *args)
    assert not (tmp_path / "run").exists()


def test_train_predictor_and_readout(world, tmp_path):
    with SlotStore(_oracle(world)) as ss:
        pt = train_phyre_predictor(*_episodes(ss, range(8), range(8, 12)),
                                   replace(PCFG, slot_dim=0, action_dim=0),
                                   MaskConfig(strategy="none"), TINY_OPTIM, CPU, EpisodeConfig(stride=STRIDE),
                                   tmp_path / "predictor")  # fmt: skip
        model, _ = load_predictor(pt)
        assert (model.cfg.slot_dim, model.cfg.action_dim, model.cfg.history) == (D, 3, 1)
        train = EpisodeSampler(ss, range(8), FUTURE, STRIDE)
        val = EpisodeSampler(ss, range(8, 12), FUTURE, STRIDE)
    rp = train_readout(
        model, train, val, ReadoutConfig(dim=8, hidden=16), TINY_OPTIM, CPU, tmp_path / "readout"
    )
    readout, _ = load_readout(rp)
    assert (readout.cfg.frames, readout.cfg.slot_dim) == (1 + FUTURE, D)
    assert readout(torch.zeros(2, 1 + FUTURE, K, D)).shape == (2,)


def test_readout_config_and_unset_readout():
    with pytest.raises(ValueError, match="dim"):
        ReadoutConfig(dim=0)
    with pytest.raises(ValueError, match="must be set"):
        SuccessReadout(ReadoutConfig())
    with pytest.raises(ValueError, match="stride"):
        EpisodeConfig(stride=0)


def test_readout_is_permutation_invariant():
    readout = _readout()
    x = torch.randn(5, 1 + FUTURE, K, D, generator=torch.Generator().manual_seed(0))
    logits = readout(x)
    assert logits.shape == (5,)
    for seed in range(3):
        perm = torch.randperm(K, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(readout(x[:, :, perm]), logits, atol=1e-5, rtol=0)
    # but not invariant to the order of the frames
    assert not torch.allclose(readout(x.flip(1)), logits, atol=1e-5)


def test_score_actions_matches_per_candidate_passes(world):
    model, readout = _model(), _readout()
    with SlotStore(_oracle(world)) as ss:
        scene = torch.from_numpy(ss.f["slots"][0, 0])
    cand = torch.from_numpy(ps.sample_actions(11, 3))
    full = score_actions(model, readout, scene, cand)
    assert full.shape == (11,)
    for bs in (1, 3, 4):
        torch.testing.assert_close(score_actions(model, readout, scene, cand, batch_size=bs), full,
                                   atol=1e-5, rtol=0)  # fmt: skip
    each = torch.cat([readout(predict_episodes(model, scene[None], a[None])) for a in cand])
    torch.testing.assert_close(each, full, atol=1e-5, rtol=0)
    assert score_actions(model, readout, scene, cand[:0]).shape == (0,)


# AUCCESS and outcomes --------------------------------------------------------------------------
def test_auccess_by_hand():
    k = np.arange(1, 101)
    w = np.log(k + 1) - np.log(k)
    assert auccess([1, 1, 1]) == pytest.approx(100.0)
    assert auccess([None, None]) == pytest.approx(0.0)
    assert auccess([1, None]) == pytest.approx(50.0)
    assert auccess([2]) == pytest.approx(100 * w[1:].sum() / w.sum())
    assert auccess([100]) == pytest.approx(100 * w[-1] / w.sum())
    assert auccess([101]) == pytest.approx(0.0)
    # 3 of 10: w_k = log((k + 1) / k), k = 1..10, the sum telescopes to log 11
    assert auccess([3], 10) == pytest.approx(100 * (math.log(11) - math.log(3)) / math.log(11))
    with pytest.raises(ValueError, match="no tasks"):
        auccess([])


def test_outcome_cache_first_solved(world):
    tasks = TaskIndex.load(world).tasks
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        videos = np.flatnonzero(vs.f["task"][:] == 0)
        cand, success = vs.f["actions"][:][videos], vs.f["success"][:][videos]
    assert list(success) == [True, True, False, False]
    cache = OutcomeCache(tasks[0], cand)
    assert cache.first_solved([2, 3, 0, 1], 100) == 3
    assert cache.simulated == 3
    assert cache.first_solved([3, 2], None) is None
    assert cache.simulated == 3  # 2 and 3 are known
    assert cache.first_solved([2, 3, 0], 2) is None  # the solving one is past the limit
    assert cache.first_solved(np.array([1, 0]), 1) == 1
    assert cache.simulated == 4
    assert cache.known == {0: True, 1: True, 2: False, 3: False}


# fidelity ---------------------------------------------------------------------------------------
def _scene(N=2, F=2, K=3):
    truth = torch.zeros(N, 1 + F, K, 16)
    truth[:, :, :2, 0] = 1.0  # objects 0 and 1 present, slot 2 absent
    truth[:, :, 0, 1], truth[:, :, 1, 1] = -0.5, 0.5  # apart in x
    return truth


def test_fidelity_perfect_and_copy():
    truth = _scene()
    truth[:, 2, 0, 2] = 0.4  # object 0 moves up in the last frame
    r = fidelity(truth.clone(), truth)
    assert r["mse_per_frame"] == [0.0, 0.0] and r["mse"] == 0.0
    assert r["copy_frame0_per_frame"] == pytest.approx([0.0, 0.32 / 96])
    assert r["copy_frame0"] == pytest.approx(0.16 / 96)
    assert (r["vanish"], r["appear"], r["duplicate"], r["rollouts"]) == (0.0, 0.0, 0.0, 2)


def test_fidelity_vanish():
    truth = _scene()
    pred = truth.clone()
    pred[0, 2, 0, 0] = 0.2  # rollout 0: object 0 predicted absent in frame 2
    r = fidelity(pred, truth)
    assert (r["vanish"], r["appear"], r["duplicate"]) == (0.5, 0.0, 0.0)
    assert r["mse_per_frame"] == pytest.approx([0.0, 0.64 / 96])
    assert r["mse"] == pytest.approx(0.32 / 96)


def test_fidelity_appear():
    truth = _scene()
    pred = truth.clone()
    pred[1, 1, 2, 0] = 0.9  # rollout 1: the absent slot predicted present
    pred[0, 1, 2, 0] = 0.4  # below 0.5: not an appearance
    r = fidelity(pred, truth)
    assert (r["vanish"], r["appear"], r["duplicate"]) == (0.0, 0.5, 0.0)
    assert r["mse_per_frame"] == pytest.approx([(0.81 + 0.16) / 96, 0.0])


def test_fidelity_duplicate():
    truth = _scene(N=4)
    truth[2, :, 1, 1] = -0.45  # rollout 2: close in the truth too (0.05 <= 0.1) -> no duplicate
    pred = truth.clone()
    pred[3, 2, :2, 1] = 0.0  # rollout 3: both objects predicted at x = 0
    pred[1, 1, 1, 1] = -0.5 + 0.05  # rollout 1: 0.05 apart, not on top of each other
    pred[2, 1, 1, 1] = -0.49
    r = fidelity(pred, truth)
    assert (r["vanish"], r["appear"], r["duplicate"]) == (0.0, 0.0, 0.25)
    n = 4 * 3 * 16
    assert r["mse_per_frame"] == pytest.approx([(0.95**2 + 0.04**2) / n, 0.5 / n])


# VoE clips --------------------------------------------------------------------------------------
def test_violation_clips(world):
    tasks = TaskIndex.load(world).tasks
    voe = VoEConfig()
    role_cols = slice(11, 11 + len(SCENE_ROLES))
    dynamic = [SCENE_ROLES.index(r) for r in ("goal", "subject", "dynamic")]
    seen_pass = 0
    with VideoStore(world / ROLLOUTS_FILE) as vs, SlotStore(_oracle(world)) as ss:
        for v, seed in ((0, 0), (3, 1), (6, 2), (13, 3), (22, 4)):
            worlds = violation_worlds(vs, tasks, v, voe, np.random.default_rng(seed), first=int(TIMES[1]))
            clips = {k: w.slots(vs, TIMES) for k, w in worlds.items()}
            plausible = clips["plausible"]
            assert plausible.shape == (len(TIMES), K, D)
            np.testing.assert_allclose(plausible, ss.f["slots"][v][TIMES], atol=1e-6)
            assert set(clips) <= {"plausible", *VIOLATIONS}
            assert {"teleport", "vanish", "colour"} <= set(clips)

            # teleport: one slot, from frame j on, only x and y, by 2 dist in [-1, 1] units
            diff = np.abs(clips["teleport"] - plausible) > 1e-7
            slots_changed = np.flatnonzero(diff.any(axis=(0, 2)))
            assert len(slots_changed) == 1
            o = int(slots_changed[0])
            frames = np.flatnonzero(diff[:, o].any(axis=1))
            j = int(frames[0])
            assert j >= 1 and list(frames) == list(range(j, len(TIMES)))
            assert set(np.flatnonzero(diff[:, o].any(axis=0))) <= {1, 2}
            step = clips["teleport"][j:, o, 1:3] - plausible[j:, o, 1:3]
            length = np.linalg.norm(step, axis=1)
            np.testing.assert_allclose(length, length[0], atol=1e-5)
            assert 2 * voe.teleport[0] - 1e-5 <= length[0] <= 2 * voe.teleport[1] + 1e-5
            assert plausible[0, o, role_cols][dynamic].sum() == 1.0  # a dynamic body

            # vanish: the same slot zeroed from the same frame on, nothing else changed
            van = clips["vanish"]
            assert (van[j:, o] == 0).all()
            np.testing.assert_array_equal(van[:j], plausible[:j])
            np.testing.assert_array_equal(np.delete(van, o, axis=1), np.delete(plausible, o, axis=1))

            # colour: only the role one-hot of that slot from j on, to another dynamic role
            col = clips["colour"]
            np.testing.assert_array_equal(col[:j], plausible[:j])
            np.testing.assert_array_equal(np.delete(col, o, axis=1), np.delete(plausible, o, axis=1))
            np.testing.assert_array_equal(col[j:, o, :11], plausible[j:, o, :11])
            roles = col[j:, o, role_cols]
            assert (roles.sum(axis=1) == 1).all() and (roles == roles[0]).all()
            new = int(np.argmax(roles[0]))
            assert new in dynamic and new != int(np.argmax(plausible[0, o, role_cols]))

            if "pass_through" in clips:
                seen_pass += 1
                pt = clips["pass_through"]
                np.testing.assert_allclose(pt[0], plausible[0], atol=1e-6)  # the scene before the ball
                assert np.abs(pt[:, :, 1:3] - plausible[:, :, 1:3]).max() > 2 * voe.min_effect
                w, real = worlds["pass_through"], worlds["plausible"]
                moved = np.abs(w.states[:, :BALL, :2] - real.states[:, :BALL, :2]).max()
                assert w.effect == pytest.approx(moved) and w.effect > voe.min_effect
            assert all(w.effect is None for k, w in worlds.items() if k != "pass_through")
    assert seen_pass >= 1


def test_violation_clips_gathers_by_type_and_pairs_each_pass_through_with_its_attempt(world):
    tasks = TaskIndex.load(world).tasks
    videos = np.arange(0, 24, 3)
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        c = ev.violation_clips(vs, tasks, videos, VoEConfig(), np.random.default_rng(0), int(TIMES[1]), TIMES,
                               progress=False)  # fmt: skip
        T = vs.num_frames
        assert c.counts()["plausible"] == len(videos) == c.counts()["teleport"]
        n = c.counts()["pass_through"]
        assert n >= 1 and len(c.effects) == len(c.pass_source) == n
        assert c.clips["plausible"].shape == (len(videos), len(TIMES), K, D)
        assert c.seen["plausible"].shape == (len(videos), T, K + 1, D)
        for i, v in enumerate(videos):  # the plausible clips are the attempts, in order
            np.testing.assert_array_equal(c.actions["plausible"][i].numpy(), vs.read("actions", int(v)))
    src = c.pass_source
    assert (np.diff(src) > 0).all()  # one pass-through per attempt at most, in the attempts' order
    torch.testing.assert_close(c.actions["pass_through"], c.actions["plausible"][src], rtol=0, atol=0)
    # the same scene and ball at frame 0, the real attempt's until the contact left out
    torch.testing.assert_close(c.seen["pass_through"][:, 0], c.seen["plausible"][src, 0], rtol=0, atol=1e-6)


def test_pass_through_auroc_by_effect_by_hand():
    plausible = np.array([0.0, 1.0, 2.0, 3.0])
    s = {"a": {"plausible": plausible, "pass_through": np.array([0.5, 5.0, 6.0])},
         "b": {"plausible": -plausible, "pass_through": np.array([9.0, -9.0, 0.5])}}  # fmt: skip
    bins = ev.auroc_by_effect(s, np.array([0.06, 0.15, 0.5]), 0.05)
    assert [b["effect"] for b in bins] == [[0.05, 0.1], [0.1, 0.2], [0.4, None]]  # 0.2-0.4: no clip
    assert [b["clips"] for b in bins] == [1, 1, 1]
    edge = ev.auroc_by_effect(s, np.array([0.06, 0.2, 0.4]), 0.05)  # an edge opens its bin
    assert [(b["effect"][0], b["clips"]) for b in edge] == [(0.05, 1), (0.2, 1), (0.4, 1)]
    assert [b["a"] for b in bins] == [0.25, 1.0, 1.0]
    assert [b["b"] for b in bins] == [1.0, 0.0, 1.0]
    above = ev.auroc_by_effect(s, np.array([0.16, 0.3, 0.5]), 0.15)  # edges at or below lo: none
    assert [b["effect"][0] for b in above] == [0.15, 0.2, 0.4]


def test_choose_surprise_by_its_worst_type():
    a = {name: {"teleport": 0.9, "vanish": 1.0, "colour": 1.0, "pass_through": 0.6} for name in ev.SELECTABLE}
    # plausibility: the best teleport, a worse worst
    a["plausibility"] = {"teleport": 0.99, "vanish": 1.0, "colour": 1.0, "pass_through": 0.55}
    a["combined_from_scene"] = {"teleport": 0.8, "vanish": 1.0, "colour": 1.0, "pass_through": 0.7}
    assert ev.choose_surprise(a) == "combined_from_scene"  # its worst (0.7) beats the others' (<= 0.6)
    a["world_model_tail"] = {"teleport": 0.9, "vanish": 1.0, "colour": 1.0, "pass_through": 0.7}
    assert ev.choose_surprise(a) == "world_model_tail"  # the same worst, a higher mean
    a["world_model_tail"] = dict(a["combined_from_scene"])
    assert ev.choose_surprise(a) == "combined_from_scene"  # a tie throughout: the earlier in SELECTABLE
    a["combined"] = {"teleport": 0.95, "vanish": 1.0, "colour": 1.0}  # no pass-through clip: worst of three
    assert ev.choose_surprise(a) == "combined"


def test_contact_preference_by_hand():
    real = torch.zeros(4, 6, 2, 3)
    violated = real.clone()
    violated[0, 3:, 1] = 1.0  # differs from frame 3 on
    violated[1, 4:, 0] = 1.0  # from frame 4
    violated[2, 1:, 0] = 1.0  # from frame 1: before the model's first expected frame (2)
    # pair 3: no frame differs
    err_real = torch.zeros(4, 4, 2, 3)  # frames 2..5
    err_viol = torch.zeros(4, 4, 2, 3)
    err_viol[0, 1, 1] = torch.tensor([1.0, 1.0, 0.0])  # frame 3: 2.0 on the violated clip ...
    err_real[0, 1, 0] = torch.tensor([0.5, 0.5, 0.5])  # ... against 1.5 on the real one: expects the contact
    err_real[1, 2, 1, 2] = 3.0  # frame 4: larger on the real clip; frame 3's (larger still) is not looked at
    err_viol[1, 1, 0, 0] = 9.0
    p = ev.contact_preference(real, violated, err_real, err_viol, first=2)
    assert p == {"share": 0.5, "pairs": 2, "unseen": 2}
    err_real[1, 2, 1, 2] = 0.0  # a tie counts half
    assert ev.contact_preference(real, violated, err_real, err_viol, first=2)["share"] == 0.75


def test_selection_split_by_task():
    task_of = np.array([7, 3, 3, 9, 7, 5, 3, 9])
    ref, sel, how = ev.selection_split(task_of)
    assert how == "tasks" and ref.dtype == bool and (ref ^ sel).all()
    assert set(task_of[ref]) == {3, 7} and set(task_of[sel]) == {5, 9}  # sorted 3 5 7 9: even, odd places
    ref, sel, how = ev.selection_split(np.array([4, 4, 4]))  # one task: its attempts in turn
    assert how == "attempts" and ref.tolist() == [True, False, True] and sel.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="at least 2 validation attempts"):
        ev.selection_split(np.array([4]))


def test_split_videos():
    task_of = np.repeat(np.arange(25), 2)
    test = [3, 11, 20]
    train = [t for t in range(25) if t not in test][::-1]  # any order
    s = split_videos(task_of, train, test)
    val_tasks = sorted(train)[::10]
    assert val_tasks == [0, 12, 23]
    assert set(task_of[s["val"]]) == set(val_tasks)
    assert set(task_of[s["test"]]) == set(test)
    assert set(task_of[s["train"]]) == set(train) - set(val_tasks)
    all_ = np.concatenate([s["train"], s["val"], s["test"]])
    assert len(all_) == len(set(all_)) == 50


# configs ----------------------------------------------------------------------------------------
def _eval_cfg(**kw) -> PhyreEvalConfig:
    return PhyreEvalConfig(predictor=PCFG, masking=MaskConfig(), predictor_train=OptimConfig(),
                           episodes=EpisodeConfig(), readout=ReadoutConfig(), readout_train=OptimConfig(),
                           trainer=TrainerConfig(), **kw)  # fmt: skip


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RankingConfig(candidates=0), "candidates"),
        (lambda: RankingConfig(max_attempts=0), "max_attempts"),
        (lambda: RankingConfig(tasks=-1), "tasks"),
        (lambda: RankingConfig(batch_size=0), "batch_size"),
        (lambda: RankingConfig(precision="fp16"), "precision"),
        (lambda: VoEConfig(attempts=-1), "attempts"),
        (lambda: VoEConfig(teleport=(0.3, 0.2)), "teleport"),
        (lambda: VoEConfig(teleport=(0.0, 0.2)), "teleport"),
        (lambda: VoEConfig(teleport=(0.1, 0.5)), "teleport"),
        (lambda: VoEConfig(min_effect=0.0), "min_effect"),
        (lambda: _eval_cfg(folds={"across": [0]}), "folds"),
        (lambda: _eval_cfg(folds={"within": [], "cross": []}), "at least one fold"),
        (lambda: _eval_cfg(folds={"within": [10]}), "0..9"),
        (lambda: _eval_cfg(folds={"cross": [1, 1]}), "distinct"),
    ],
)
def test_eval_configs_refuse(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_eval_config_accepts():
    cfg = _eval_cfg(folds={"within": [0, 9]})
    assert cfg.folds == {"within": [0, 9]}


# ranking ----------------------------------------------------------------------------------------
def test_rank_tasks(world, monkeypatch):
    tasks = TaskIndex.load(world).tasks
    model, readout = _model(), _readout()
    seen = []

    def spy(*args, **kw):
        seen.append(kw.get("precision", "fp32"))
        return score_actions(*args, **kw)

    monkeypatch.setattr(ev, "score_actions", spy)
    rc = RankingConfig(candidates=60, max_attempts=10, tasks=2, batch_size=16, precision="bf16")
    with SlotStore(_oracle(world)) as ss:
        task_of = ss.f["task"][:]
        r = ev.rank_tasks(tasks, [4, 0, 2], ss, task_of, model, readout, rc, seed=0, progress=False)
        scene = torch.from_numpy(ss.f["slots"][0, 0])
    # tasks=2 of the test tasks [0, 2, 4]: evenly spaced, the first and the last
    assert r["tasks"] == 2
    assert [p["task"] for p in r["per_task"]] == [tasks[0].task_id, tasks[4].task_id]
    assert r["no_valid_candidate"] == 0
    assert r["oracle_unsolved"] == sum(p["oracle"] is None for p in r["per_task"])
    cand = ps.sample_actions(60, ev.CANDIDATE_SEED)
    valid = ps.valid_mask(tasks[0], cand)
    assert r["per_task"][0]["valid"] == int(valid.sum())
    assert r["candidates_scored"] == sum(p["valid"] for p in r["per_task"])
    for key in ("model", "random", "oracle"):
        got = [p[key] for p in r["per_task"]]
        assert r["auccess"][key] == pytest.approx(auccess(got, rc.max_attempts))
        assert all(a is None or 1 <= a <= rc.max_attempts for a in got)
    for p in r["per_task"]:
        assert p["oracle"] in (1, None)
        if p["model"] is not None or p["random"] is not None:
            assert p["oracle"] == 1
    # the model's order on task 0 by hand
    cache = OutcomeCache(tasks[0], cand[valid])
    scores = score_actions(model, readout, scene, torch.from_numpy(cand[valid]), batch_size=16,
                           precision="bf16").numpy()  # fmt: skip
    want = cache.first_solved(np.argsort(-scores, kind="stable"), rc.max_attempts)
    assert r["per_task"][0]["model"] == want
    # ranking.precision is "of the scoring passes"
    assert seen and all(p == "bf16" for p in seen), f"score_actions ran with precision {seen}"


# the commands -----------------------------------------------------------------------------------
def test_eval_phyre_outputs(world, evaluated):
    res = json.loads((evaluated / "results.json").read_text())
    summary = res["summary"]
    assert set(summary) == {"within", "cross"}
    for kind in ("within", "cross"):
        s = summary[kind]
        assert s["folds"] == [0]
        for k in ("model", "random", "oracle"):
            assert 0.0 <= s["auccess"][k]["mean"] <= 100.0 and s["auccess"][k]["n"] == 1
            assert s["auccess"][k]["std"] is None  # one fold has no spread, not a spread of 0
        assert set(s["voe"]) == set(VIOLATIONS)
        for k in VIOLATIONS:
            m = s["voe"][k]["mean"]
            assert m != m or 0.0 <= m <= 1.0
    tasks = TaskIndex.load(world).tasks
    assert [(f["kind"], f["fold"]) for f in res["folds"]] == [("within", 0), ("cross", 0)]
    for fold in res["folds"]:
        train_t, test_t = ps.folds(tasks, 0, fold["kind"])
        assert (fold["train_tasks"], fold["test_tasks"]) == (len(train_t), len(test_t))
        assert sum(fold["attempts"].values()) == N_TASKS * RPT
        assert fold["attempts"]["test"] == len(test_t) * RPT
        rk = fold["ranking"]
        assert rk["tasks"] == min(2, len(test_t)) == len(rk["per_task"])
        spaced = sorted(test_t)[:: max(1, len(test_t) - 1)][:2]  # tasks=2: the first and the last
        assert [p["task"] for p in rk["per_task"]] == [tasks[t].task_id for t in spaced]
        for k in ("model", "random", "oracle"):
            assert rk["auccess"][k] == pytest.approx(auccess([p[k] for p in rk["per_task"]], 20))
        assert len(fold["fidelity"]["mse_per_frame"]) == 4
        assert fold["fidelity"]["rollouts"] == len(test_t) * RPT
        assert fold["voe"]["clips"]["plausible"] == 4
        assert summary[fold["kind"]]["auccess"]["model"]["mean"] == pytest.approx(rk["auccess"]["model"])
        on_disk = json.loads((evaluated / f"{fold['kind']}_0" / "results.json").read_text())
        assert on_disk == fold
        assert (evaluated / f"{fold['kind']}_0" / "readout" / "readout.pt").exists()
    md = (evaluated / "results.md").read_text()
    assert "AUCCESS" in md and "within-template" in md and "cross-template" in md
    assert "| **within, the figure** (surprise" in md and "| cross, plausibility_scaled |" in md
    assert not re.search(r"± \d", md)  # one fold per kind: means alone, no spread of 0.000
    per_task = res["folds"][0]["ranking"]["per_task"]
    # the picture shows a task solved at the 2nd to 4th attempt where there is one, else the first
    shown = next((t for t in per_task if t["model"] is not None and 2 <= t["model"] <= 4), per_task[0])
    png = evaluated / f"ranking_{shown['task'].replace(':', '_')}.png"
    assert [p.name for p in evaluated.glob("ranking_*.png")] == [png.name]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_phyre_rerun_keeps_finished_folds(world, evaluated, capsys):
    done = [evaluated / f"{k}_0" / "results.json" for k in ("within", "cross")]
    before = [os.stat(p).st_mtime_ns for p in done]
    capsys.readouterr()
    run_cli(["eval", "phyre", *SMOKE_EVAL, f"data.root={world}", f"out={evaluated}"])
    out = capsys.readouterr().out
    assert "within fold 0: kept" in out and "cross fold 0: kept" in out
    assert [os.stat(p).st_mtime_ns for p in done] == before


def test_eval_phyre_scores_again_a_fold_written_before_a_voe_surprise(world, evaluated, tmp_path, capsys):
    """A kept fold without a VoE variant this code reports (written by older code) is scored
    again from its trained models, not kept, and the summary has the variant."""
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    path = out / "within_0" / "results.json"
    old = json.loads(path.read_text())
    del old["voe"]["combined_from_scene"]
    path.write_text(json.dumps(old))
    capsys.readouterr()
    run_cli(["eval", "phyre", *SMOKE_EVAL, f"data.root={world}", f"out={out}"])
    printed = capsys.readouterr().out
    assert "within fold 0: " in printed and "scoring again" in printed and "cross fold 0: kept" in printed
    again = json.loads(path.read_text())
    assert (
        again["voe"]["combined_from_scene"]
        == json.loads((evaluated / "within_0" / "results.json").read_text())["voe"]["combined_from_scene"]
    )  # the same models, the same scores
    summary = json.loads((out / "results.json").read_text())["summary"]["within"]
    assert "voe_combined_from_scene" in summary


def _eval_error(world: Path, out: Path, extra: list[str], capsys) -> str:
    """The error `cjepa eval phyre` reports (Hydra prints it and exits 1)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "phyre", *SMOKE_EVAL, f"data.root={world}", f"out={out}", *extra])
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def test_eval_phyre_interrupted_fold_with_other_inputs_errors(world, evaluated, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    (out / "within_0" / "results.json").unlink()  # the fold did not finish
    err = _eval_error(world, out, ["predictor_train.steps=5"], capsys)
    assert "predictor was made with other inputs" in err and "differ in ['train']" in err


def test_eval_phyre_finished_folds_with_other_inputs_error(world, evaluated, tmp_path, capsys):
    """A rerun into the same out with another training budget must not keep the old folds."""
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    err = _eval_error(world, out, ["predictor_train.steps=5"], capsys)
    assert "other inputs" in err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["slots=learned"], "slots=learned"),
        (["data=clevrer_sim"], "needs data=phyre_sim"),
        (["folds={within:[12]}"], "0..9"),
    ],
)
def test_eval_phyre_refuses(world, tmp_path, extra, match, capsys):
    err = _eval_error(world, tmp_path / "out", extra, capsys)
    assert "ValueError" in err and match in err
    assert not (tmp_path / "out").exists()


# the encoder on phyre_sim ------------------------------------------------------------------
def test_encoder_on_phyre_rollouts(world, tmp_path):
    """train-encoder and extract-slots read rollouts.h5; the learned slot store carries the
    one-shot actions, task and success, so the PHYRE world model can train on it."""
    run = tmp_path / "enc"
    run_cli(["train-encoder", "data=phyre_sim", "preset=smoke", f"data.root={world}", f"out={run}",
             "trainer.progress=false"])  # fmt: skip
    val = json.loads((run / "val.json").read_text())
    assert 0.0 <= val["fg_ari"] <= 1.0 or math.isnan(val["fg_ari"])
    out = tmp_path / "slots"
    run_cli(["extract-slots", "data=phyre_sim", f"checkpoint={run / 'encoder.pt'}", f"data.root={world}",
             f"out={out}"])  # fmt: skip
    with SlotStore(out / ROLLOUTS_FILE) as ss, VideoStore(world / ROLLOUTS_FILE) as vs:
        assert ss.one_shot and ss.action_dim == 3 and ss.num_slots == 3
        assert ss.f["slots"].shape[:2] == (vs.num_videos, vs.num_frames)
        np.testing.assert_array_equal(ss.f["actions"][:], vs.f["actions"][:])
        np.testing.assert_array_equal(ss.f["task"][:], vs.f["task"][:])
        np.testing.assert_array_equal(ss.f["success"][:], vs.f["success"][:])
        sampler = EpisodeSampler(ss, range(4), FUTURE, STRIDE)
        assert sampler.slots.shape == (4, 1 + FUTURE, 3, ss.slot_dim)
    assert "rollouts" in json.loads((out / "metrics.json").read_text())
    png = tmp_path / "slots.png"
    run_cli(["show-slots", "data=phyre_sim", f"checkpoint={run / 'encoder.pt'}", f"data.root={world}",
             "video=1", f"out={png}"])  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# the plausibility model --------------------------------------------------------------------
def test_ball_slots_add_the_ball_as_the_last_slot(world):
    with VideoStore(world / ROLLOUTS_FILE) as vs:
        slots = ev.ball_slots(vs, [0, 1])
        states, present = vs.read("states", 1), vs.read("present", 1)
    with SlotStore(_oracle(world)) as ss:
        scene = ss.f["slots"][[0, 1]]
    assert slots.shape == (2, T, K + 1, D)
    np.testing.assert_array_equal(slots[:, :, :K].numpy(), scene)  # the scene slots are the oracle slots
    ball = slots[1, :, K].numpy()
    assert not ball[0].any()  # frame 0: the scene before the ball
    assert np.all(ball[1:, 0] == 1.0) and present[1:, BALL].all()
    col = {n: i for i, n in enumerate(PHYRE_ORACLE_FIELDS)}
    np.testing.assert_allclose(ball[1:, col["x"]], 2 * states[1:, BALL, 0] - 1, rtol=1e-6)
    assert np.all(ball[1:, col["circle"]] == 1.0)
    assert not ball[:, [col[f"role={r}"] for r in SCENE_ROLES]].any()  # the ball has no scene role


def test_clip_windows_and_window_errors():
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(3, 12, 4, 5, generator=gen)
    w = ClipWindows(clips, 3, 1, 2)
    batch = w.sample(50, torch.Generator().manual_seed(1))["slots"]
    assert batch.shape == (50, 4, 4, 5)
    # every sampled window is 4 frames of one clip at stride 2
    found = 0
    for b in batch:
        for v in range(3):
            for s in range(12 - 6):
                if torch.equal(b, clips[v, s : s + 7 : 2]):
                    found += 1
    assert found == 50
    with pytest.raises(ValueError, match="span 13 frames"):
        ClipWindows(clips, 6, 1, 2)
    cfg = PredictorConfig(slot_dim=5, dim=8, layers=1, heads=2, head_dim=4, mlp_hidden=8, dropout=0.0,
                          history=3, future=1)  # fmt: skip
    torch.manual_seed(0)
    model = CJEPAPredictor(cfg).eval()
    torch.nn.init.normal_(model.out.weight, std=0.2)
    err = window_errors(model, clips, stride=2, batch_size=3)
    assert err.shape == (3, 12 - 6, 4, 5)
    hidden = torch.zeros(1, 4, 4, dtype=torch.bool)
    hidden[:, 3] = True
    with torch.no_grad():
        pred, _ = model(clips[2:3, 1:8:2], hidden)  # frame 7 expected from frames 1, 3, 5
    torch.testing.assert_close(err[2, 1], (pred[0, 3] - clips[2, 7]).pow(2))
    assert expected_frames(12, 3, 2) == slice(6, 12)  # err[:, i] is frame 6 + i

    # one frame after: tokens are the two frames before, the one after, then the expected one
    assert window_frames(3, 1, 2, after=1).tolist() == [0, 2, 6, 4]
    w = ClipWindows(clips, 3, 1, 2, after=1)
    batch = w.sample(20, torch.Generator().manual_seed(1))["slots"]
    assert all(
        any(torch.equal(b, clips[v, [s, s + 2, s + 6, s + 4]]) for v in range(3) for s in range(12 - 6))
        for b in batch
    )
    err = window_errors(model, clips, stride=2, batch_size=3, after=1)
    assert err.shape == (3, 12 - 6, 4, 5)
    assert expected_frames(12, 3, 2, after=1) == slice(4, 10)  # err[:, i] is frame 4 + i
    with torch.no_grad():
        pred, _ = model(clips[2:3, [1, 3, 7, 5]], hidden)  # frame 5 expected from frames 1, 3 and 7
    torch.testing.assert_close(err[2, 1], (pred[0, 3] - clips[2, 5]).pow(2))
    with pytest.raises(ValueError, match="after=3"):
        window_frames(3, 1, 2, after=3)


def test_plausibility_model_trains_with_frames_after(tmp_path):
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(4, 10, 3, 6, generator=gen)
    pc = replace(PlausibilityConfig().predictor, dim=8, heads=2, head_dim=4, mlp_hidden=8, layers=1)
    cfg = PlausibilityConfig(predictor=pc, train=replace(TINY_OPTIM, val_every=3), val_windows=4, after=1)
    path = train_plausibility(clips, clips[:2], cfg, CPU, tmp_path / "plaus", seed=0)
    model, ckpt = load_predictor(path)
    assert ckpt["extra"]["after"] == 1 and ckpt["extra"]["stride"] == 1
    val = json.loads((tmp_path / "plaus" / "val.json").read_text())
    assert "mse_future" in val and not any(k.startswith(("copy_last", "linear")) for k in val)
    err = window_errors(model, clips, stride=1, after=1)
    assert err.shape == (4, 10 - 3, 3, 6) and torch.isfinite(err).all()


def test_plausibility_config_refuses():
    with pytest.raises(ValueError, match="action_dim=3"):
        PlausibilityConfig(predictor=replace(PlausibilityConfig().predictor, action_dim=3))
    with pytest.raises(ValueError, match="stride"):
        PlausibilityConfig(stride=0)
    with pytest.raises(ValueError, match=r"plausibility.after=3: it must be in \[0, predictor.history - 1\]"):
        PlausibilityConfig(after=3)


def test_eval_phyre_reports_both_models_voe(evaluated):
    r = json.loads((evaluated / "within_0" / "results.json").read_text())["voe"]
    for name in ev.VOE_VARIANTS:
        assert set(ev.VIOLATIONS) - {"pass_through"} <= set(r[name])
        assert all(0.0 <= r[name][k] <= 1.0 for k in ev.VIOLATIONS if k in r[name])
    # the figure is the surprise chosen on clips of validation tasks, by its worst type there
    sel = r["selected"]
    assert sel["surprise"] == ev.choose_surprise(sel["validation"])
    assert set(sel["validation"]) == set(ev.SELECTABLE)
    assert sel["split"] == "attempts"  # the smoke world's fold has one validation task
    assert sel["clips"]["plausible"] >= 1
    assert all(0.0 <= v <= 1.0 for a in sel["validation"].values() for v in a.values())
    assert all(r[k] == r[sel["surprise"]][k] for k in ev.VIOLATIONS if k in r[sel["surprise"]])
    assert set(r["combined"]) == set(r["plausibility"]) == set(r["world_model_tail"])
    assert len(r["error_scale"]["plausibility"]) == D and len(r["error_scale"]["world_model"]) == D
    assert (evaluated / "within_0" / "plausibility" / "predictor.pt").exists()
    assert r["clips"]["pass_through"] > 0  # the smoke world has some: the part below runs
    bins = r["pass_through_by_effect"]  # its AUROC by how far the pass-through moves a body
    assert sum(b["clips"] for b in bins) == r["clips"]["pass_through"]
    fingerprint = json.loads((evaluated / "within_0" / "results.json").read_text())["fingerprint"]
    lo = fingerprint["voe"]["min_effect"]
    assert {b["effect"][0] for b in bins} <= {lo, *(e for e in ev.EFFECT_EDGES if e > lo)}
    assert all(0.0 <= b[k] <= 1.0 for b in bins for k in ev.BY_EFFECT)
    pref = r["contact_preference"]
    assert set(pref) == {"plausibility", "world_model"}
    for v in pref.values():
        assert v["pairs"] + v["unseen"] == r["clips"]["pass_through"]
        assert v["share"] != v["share"] if not v["pairs"] else 0.0 <= v["share"] <= 1.0
    # every pass-through differs from its own attempt after frame 0, so the world model expects each
    assert pref["world_model"]["unseen"] == 0 and pref["plausibility"]["pairs"] >= 1
    assert "## Does a model expect the contact" in (evaluated / "results.md").read_text()
    assert "## Pass-through AUROC by how far it moves a body" in (evaluated / "results.md").read_text()


def test_eval_phyre_chooses_the_figure_on_validation_attempts_alone(world, tmp_path, monkeypatch):
    """The clips that choose the figure's surprise are made of validation attempts, none of a test task."""
    made = []
    real = ev.violation_clips

    def recording(vs, tasks, videos, *args, **kw):
        made.append((kw.get("desc", "VoE clips"), np.asarray(videos)))
        return real(vs, tasks, videos, *args, **kw)

    monkeypatch.setattr(ev, "violation_clips", recording)
    monkeypatch.chdir(tmp_path)
    within_0 = "folds={within: [0], cross: []}"
    run_cli(["eval", "phyre", *SMOKE_EVAL, f"data.root={world}", f"out={tmp_path / 'out'}", within_0])
    tasks = TaskIndex.load(world).tasks
    with SlotStore(_oracle(world)) as ss:
        task_of = ss.f["task"][:]
    videos = ev.split_videos(task_of, *ps.folds(tasks, 0, "within"))
    (test_desc, test_v), (sel_desc, sel_v) = made
    assert "selection" not in test_desc and "selection" in sel_desc
    assert set(test_v) <= set(videos["test"])
    assert len(sel_v) and set(sel_v) <= set(videos["val"]) and not set(sel_v) & set(videos["test"])


def test_per_template_auccess_at_the_ranking_budget(evaluated):
    """The smoke ranking allows 20 attempts: per-template AUCCESS is counted at that budget too."""
    res = json.loads((evaluated / "results.json").read_text())
    for kind, s in res["summary"].items():
        pooled = [t for f in res["folds"] if f["kind"] == kind for t in f["ranking"]["per_task"]]
        for template, v in s["per_template"].items():
            ts = [t for t in pooled if t["task"].split(":")[0] == template]
            assert v["tasks"] == len(ts)
            for k in ("model", "random"):
                assert v[k] == pytest.approx(auccess([t[k] for t in ts], 20))


def test_per_template_by_hand():
    per_task = [{"task": "00000:000", "model": 3, "random": None},
                {"task": "00000:001", "model": None, "random": 1},
                {"task": "00002:000", "model": 1, "random": 7}]  # fmt: skip
    out = ev.per_template(per_task, 20)
    assert set(out) == {"00000", "00002"} and out["00000"]["tasks"] == 2
    assert out["00000"]["model"] == pytest.approx(auccess([3, None], 20))
    assert out["00000"]["model"] != pytest.approx(auccess([3, None], 100))  # the budget matters
    assert out["00002"] == {"tasks": 1, "model": 100.0, "random": pytest.approx(auccess([7], 20))}
