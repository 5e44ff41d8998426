"""Influence probes, their truths and scores, the graph export and `cjepa eval influence`."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import oracle_world

from causaljepa import cli
from causaljepa.data.slot_store import SlotStore
from causaljepa.data.store import VideoStore
from causaljepa.evaluation.influence import (
    BASELINES,
    MEASURES,
    ProbeConfig,
    VideoTruth,
    auroc,
    average_precision,
    bootstrap_difference,
    neighbourhood,
    probe_store,
    probe_windows,
    top_k,
    window_plan,
    window_results,
)
from causaljepa.evaluation.influence_graphs import load_pyg, to_pyg
from causaljepa.models.predictor import CJEPAPredictor, PredictorConfig
from causaljepa.rollout import token_mask

CFG = PredictorConfig(
    slot_dim=6, dim=16, layers=2, heads=2, head_dim=8, mlp_hidden=24, dropout=0.0, history=3, future=2,
    residual=False,
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """The models are tiny (see conftest.one_thread)."""


def _model(cfg: PredictorConfig = CFG, seed: int = 0) -> CJEPAPredictor:
    torch.manual_seed(seed)
    return CJEPAPredictor(cfg).eval()


def _slots(B: int, K: int, cfg: PredictorConfig = CFG, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, cfg.window, K, cfg.slot_dim, generator=torch.Generator().manual_seed(seed))


# scores ------------------------------------------------------------------------------------
def test_auroc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert auroc(np.array([0.9, 0.5, 0.4, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half: (1 + 0.5) / 2
    assert auroc(np.array([0.7, 0.7, 0.2]), np.array([1, 0, 0])) == pytest.approx(0.75)
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1])) == 0.0
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_average_precision_by_hand():
    # ranked 0.9 (pos), 0.5 (neg), 0.4 (pos): precisions at the positives 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.5, 0.4, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    # a tie is one threshold: both tied items are counted together, precision 1/2 for the positive
    assert average_precision(np.array([0.7, 0.7]), np.array([1, 0])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.3]), np.array([0])))


def test_bootstrap_difference():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    video = np.repeat(np.arange(20), 10)
    noise = rng.random(200)
    a = {"counterfactual.label": y, "counterfactual.video": video, "counterfactual.gradient": noise}
    d = bootstrap_difference(a, a, "counterfactual", "gradient", n=50)
    assert d["difference"] == 0 and d["low"] == 0 and d["high"] == 0
    b = {**a, "counterfactual.gradient": y + 0.1 * noise}  # a perfect ranking
    d = bootstrap_difference(a, b, "counterfactual", "gradient", n=200)
    assert d["difference"] == pytest.approx(1 - auroc(noise, y))
    assert 0 < d["low"] <= d["difference"] <= d["high"]
    other = {**b, "counterfactual.label": ~y}
    assert bootstrap_difference(a, other, "counterfactual", "gradient") is None  # not the same pairs


def test_neighbourhood_and_top_k():
    inc = np.array([0.1, 0.5, 0.0, 0.4])
    # 0.5 alone is 50 %; with 0.4 it is 90 % >= 80 %
    assert neighbourhood(inc, 0.8).tolist() == [False, True, False, True]
    assert neighbourhood(inc, 0.95).tolist() == [True, True, False, True]
    assert neighbourhood(inc, 0.5).tolist() == [False, True, False, False]  # exactly the share
    assert neighbourhood(np.zeros(3), 0.8).tolist() == [False] * 3
    assert neighbourhood(np.array([0.3, 0.3, 0.3]), 0.5).tolist() == [True, True, False]  # ties: lower index
    assert top_k(inc, 2).tolist() == [False, True, False, True]
    assert top_k(np.array([0.2, 0.0, 0.0]), 2).tolist() == [True, False, False]  # never a zero
    with pytest.raises(ValueError, match="finite and >= 0"):
        neighbourhood(np.array([0.2, -0.1]), 0.8)


def test_probe_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"probe\.share"):
        ProbeConfig(share=0.0)
    with pytest.raises(ValueError, match=r"probe\.agree"):
        ProbeConfig(agree=0.2, threshold=0.1)
    with pytest.raises(ValueError, match=r"probe\.every"):
        ProbeConfig(every=0)


# probes ------------------------------------------------------------------------------------
def _identity_nodes(B: int, K: int) -> torch.Tensor:
    return torch.eye(K).expand(B, K, K).clone()


def test_probe_shapes_and_diagonal():
    model, B, K = _model(), 2, 4
    out = probe_windows(
        model, _slots(B, K), _identity_nodes(B, K), None, ProbeConfig(), torch.Generator().manual_seed(0)
    )
    for k in MEASURES:
        assert out[k].shape == (B, K, K), k
        assert torch.all(out[k].diagonal(dim1=1, dim2=2) == 0), k
        assert torch.all(out[k] >= 0) and torch.isfinite(out[k]).all(), k
        assert out[k].sum() > 0, k
    assert out["heads"].shape == (B, CFG.layers, CFG.heads, K, K)
    assert not any(k.startswith("action_") for k in out)


def test_attention_measure_by_hand():
    model, B, K = _model(), 1, 3
    slots = _slots(B, K)
    out = probe_windows(model, slots, _identity_nodes(B, K), None, ProbeConfig(), torch.Generator())
    hidden = torch.zeros(B, CFG.window, K, dtype=torch.bool)
    hidden[:, CFG.history :] = True
    with torch.no_grad():
        _, weights = model(slots, hidden, None, None, need_weights=True)
    W = torch.stack(weights, 1).mean(dim=(1, 2))[0]  # (N, N), N = T K; node t K + k
    H, T = CFG.history, CFG.window
    j, i = 2, 0  # target 2, source 0
    rows = [t * K + j for t in range(H, T)]
    cols = [t * K + i for t in range(T)]
    want = W[rows][:, cols].sum(dim=1).mean()
    assert out["attention"][0, j, i] == pytest.approx(float(want), rel=1e-5)
    # the last layer alone, heads averaged
    WL = weights[-1].mean(dim=1)[0]
    assert out["attention_last"][0, j, i] == pytest.approx(
        float(WL[rows][:, cols].sum(dim=1).mean()), rel=1e-5
    )


def test_intervention_measure_by_hand():
    model, B, K = _model(), 1, 3
    slots = _slots(B, K)
    out = probe_windows(model, slots, _identity_nodes(B, K), None, ProbeConfig(), torch.Generator())
    H, T = CFG.history, CFG.window
    hidden = torch.zeros(B, T, K, dtype=torch.bool)
    hidden[:, H:] = True
    with torch.no_grad():
        base, _ = model(slots, hidden)
        absent = torch.zeros(B, T, K, dtype=torch.bool)
        absent[:, :, 1] = True  # remove object 1
        removed, _ = model(slots, hidden, None, token_mask(absent, 0))
        masked_hidden = hidden.clone()
        masked_hidden[:, 1:H, 1] = True  # object 1's history after its anchor frame is hidden
        masked, _ = model(slots, masked_hidden)
    for name, pred in (("intervention_remove", removed), ("intervention_mask", masked)):
        for j in (0, 2):
            want = (pred[0, H:, j] - base[0, H:, j]).pow(2).mean()
            assert out[name][0, j, 1] == pytest.approx(float(want), rel=1e-4), (name, j)


def test_gradient_measure_estimates_the_jacobian_norm():
    model, B, K = _model(), 1, 3
    slots = _slots(B, K)
    H = CFG.history
    hidden = torch.zeros(B, CFG.window, K, dtype=torch.bool)
    hidden[:, H:] = True

    def f(x):
        return model(x, hidden)[0][0, H:]  # (F, K, D)

    J = torch.autograd.functional.jacobian(f, slots)[:, :, :, 0]  # (F, K, D, T, K, D)
    exact = J[:, 2, :, :H, 0, :].pow(2).sum().sqrt()  # target 2, source 0, history inputs
    out = probe_windows(
        model, slots, _identity_nodes(B, K), None, ProbeConfig(probes=4000, max_sequences=4096),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out["gradient"][0, 2, 0] == pytest.approx(float(exact), rel=0.05)


def test_probes_are_permutation_equivariant():
    model, B, K = _model(), 2, 4
    slots = _slots(B, K)
    perm = torch.tensor([2, 0, 3, 1])
    cfg = ProbeConfig(probes=2)
    a = probe_windows(model, slots, _identity_nodes(B, K), None, cfg, torch.Generator().manual_seed(0))
    b = probe_windows(
        model, slots[:, :, perm], _identity_nodes(B, K), None, cfg, torch.Generator().manual_seed(0)
    )
    for k in ("attention", "attention_rollout", "intervention_remove", "intervention_mask"):
        torch.testing.assert_close(b[k], a[k][:, perm][:, :, perm], rtol=1e-4, atol=1e-6)


def test_nodes_with_several_slots_and_padding():
    """Node 0 owns slots 0 and 2, node 1 slot 1; slot 3 belongs to no node; node 2 is padding."""
    model, K = _model(), 4
    slots = _slots(1, K)
    G = torch.zeros(1, K, 3)
    G[0, [0, 2], 0] = 1
    G[0, 1, 1] = 1
    out = probe_windows(model, slots, G, None, ProbeConfig(), torch.Generator())
    per_slot = probe_windows(model, slots, _identity_nodes(1, K), None, ProbeConfig(), torch.Generator())
    a = per_slot["attention"][0]
    # source node 0 = slots 0 + 2 (summed); target node 1 = slot 1
    assert out["attention"][0, 1, 0] == pytest.approx(float(a[1, 0] + a[1, 2]), rel=1e-5)
    # target node 0 = the mean of slots 0 and 2 as targets, source slot 1
    assert out["attention"][0, 0, 1] == pytest.approx(float((a[0, 1] + a[2, 1]) / 2), rel=1e-5)
    for k in MEASURES:
        assert torch.all(out[k][0, 2] == 0) and torch.all(out[k][0, :, 2] == 0), k


def test_action_node_influences():
    cfg = PredictorConfig(**{**CFG.to_dict(), "action_dim": 3})
    model, B, K = _model(cfg), 2, 3
    actions = torch.randn(B, cfg.window, 3, generator=torch.Generator().manual_seed(5))
    out = probe_windows(
        model, _slots(B, K, cfg), _identity_nodes(B, K), actions, ProbeConfig(), torch.Generator()
    )
    for k in MEASURES:
        assert out["action_" + k].shape == (B, K) and torch.all(out["action_" + k] >= 0), k
    assert out["action_intervention_remove"].sum() > 0 and out["action_gradient"].sum() > 0


# truth -------------------------------------------------------------------------------------
def _truth(T: int = 12) -> VideoTruth:
    """Three objects at rest; object 0 exists from frame 0, objects 1, 2 too. In the world
    without object 0, object 1 moves away from frame 8 on; in the world without object 2,
    object 1 differs already at frame 2 (an earlier effect)."""
    pos = np.zeros((T, 3, 2), np.float32)
    pos[:, 1] = [1.0, 0.0]
    pos[:, 2] = [2.0, 0.0]
    vel = np.zeros_like(pos)
    present = np.ones((T, 3), bool)
    cf_pos = np.repeat(pos[None], 3, axis=0)  # (O, T, O, 2)
    cf_present = np.repeat(present[None], 3, axis=0)
    for o in range(3):
        cf_present[o, :, o] = False
    cf_pos[0, 8:, 1, 0] += 0.5
    cf_pos[2, 2:, 1, 0] += 0.5
    return VideoTruth(
        contacts=[(9, 0, 1), (3, 1, 2)],
        pushes=[(7, 2)],
        present=present,
        position=pos,
        velocity=vel,
        cf_present=cf_present,
        cf_position=cf_pos,
        cf_velocity=np.zeros_like(cf_pos),
        cf_valid=np.ones(3, bool),
        fps=25.0,
    )


def test_counterfactual_truth():
    tr, cfg = _truth(), ProbeConfig(threshold=0.1, agree=0.02)
    cf = tr.counterfactual([0, 1, 2], t_h=5, t1=10, cfg=cfg)  # [target, source]
    assert cf[1, 0] == 1  # object 1 diverges at frame 8 without object 0
    assert cf[2, 0] == 0 and cf[0, 1] == 0 and cf[2, 1] == 0 and cf[0, 2] == 0
    assert cf[1, 2] == -1  # already different at t_h = 5: undetermined
    assert (np.diag(cf) == -1).all()
    assert tr.counterfactual([0, 1, 2], t_h=5, t1=7, cfg=cfg)[1, 0] == 0  # before the divergence
    video = tr.video_counterfactual([0, 1, 2], cfg)
    assert video[1, 0] == 1 and video[1, 2] == 1 and video[0, 1] == 0


def test_contact_and_push_truth_and_baselines():
    tr = _truth()
    c = tr.contact([0, 1, 2], 5, 10)
    assert c.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]  # only the contact at frame 9
    assert tr.contact([1, 2], 0, 10).tolist() == [[0, 1], [1, 0]]
    assert tr.pushed([0, 1, 2], 5, 10).tolist() == [0, 0, 1]
    assert tr.pushed([0, 1, 2], 8, 10).tolist() == [0, 0, 0]
    b = tr.baselines([0, 1, 2], 5, 10)
    assert set(b) == set(BASELINES)
    assert b["proximity"][0, 1] == pytest.approx(-1.0) and b["proximity"][2, 0] == pytest.approx(-2.0)
    assert b["extrapolated_proximity"][0, 1] == pytest.approx(-1.0)  # at rest: the distance stays


# the store-level run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Smoke data with pushes and counterfactual videos, oracle slots, two smoke predictors."""
    base = tmp_path_factory.mktemp("influence")
    root = oracle_world(
        base,
        ("data.generator.counterfactuals=true", "data.generator.scene.pushes=2"),
        {m: (f"masking={m}",) for m in ("none", "object")},
    )
    return {"base": base, "root": root}


def test_window_plan_and_probe_store(world):
    from causaljepa.training.predictor import load_predictor

    model, _ = load_predictor(world["base"] / "object" / "predictor.pt")
    H, Fu = model.cfg.history, model.cfg.future
    cfg = ProbeConfig(every=4)
    with (
        SlotStore(world["root"] / "oracle_slots" / "validation.h5") as st,
        VideoStore(world["root"] / "validation.h5") as vs,
    ):
        plan = window_plan(st, 0, H, Fu, 2, cfg.every)
        span = (H + Fu - 1) * 2
        assert [w.start for w in plan] == [
            a for a in range(0, st.num_frames - span, 4) if len(plan_objects(st, a + (H - 1) * 2)) >= 2
        ]
        for w in plan:
            assert w.end == w.start + span and w.last_visible == w.start + (H - 1) * 2
            assert w.slots_of == [[o] for o in w.objects]  # oracle: slot k is object k
        with pytest.raises(ValueError, match="spans"):
            window_plan(st, 0, 40, 10, 2, 4)
        videos = probe_store(model, st, vs, stride=2, cfg=cfg, seed=0, progress=False)
        results = window_results(videos)
        assert [v.video for v in videos] == sorted({r.window.video for r in results})
        assert len(results) == sum(len(window_plan(st, v, H, Fu, 2, 4)) for v in range(st.num_videos))
        r = results[0]
        M = len(r.window.objects)
        assert set(r.measures) == set(MEASURES) | set(BASELINES)
        assert all(v.shape == (M, M) for v in r.measures.values())
        assert r.action is not None and r.pushed is not None  # the world has pushes
        truth = VideoTruth.read(vs, r.window.video)
        np.testing.assert_array_equal(
            r.contact, truth.contact(r.window.objects, r.window.last_visible, r.window.end)
        )
        again = window_results(probe_store(model, st, vs, stride=2, cfg=cfg, seed=0, progress=False))
        for k in MEASURES:  # the same seed gives the same numbers
            np.testing.assert_array_equal(again[3].measures[k], results[3].measures[k])


def plan_objects(st: SlotStore, t: int) -> set[int]:
    return {int(o) for o in st.read("slot_object", 0)[t] if o >= 0}


def test_eval_influence_command(world, capsys):
    out = world["base"] / "influence"
    ckpts = (
        f"checkpoints=[{world['base'] / 'none' / 'predictor.pt'},{world['base'] / 'object' / 'predictor.pt'}]"
    )
    args = ["eval", "influence", ckpts, f"data.root={world['root']}", f"out={out}", "probe.every=4",
            "pictures=1"]  # fmt: skip
    cli.main(args)
    text = capsys.readouterr().out
    assert "| oracle_none | intervention_remove" in text and "| oracle_object_0-4 |" in text
    scores = json.loads((out / "scores.json").read_text())
    assert [r["name"] for r in scores["results"]] == ["oracle_none", "oracle_object_0-4"]
    w = scores["results"][0]["scores"]["windows"]
    assert w["contact"]["positives"] + w["contact"]["negatives"] > 0
    for k in MEASURES:
        a = w["counterfactual"]["measures"][k]["auroc"]
        assert np.isnan(a) or 0 <= a <= 1
    assert "action" in w  # the world has pushes
    md = (out / "scores.md").read_text()
    assert md.startswith("# Influence probes") and "## does masking make the influence more causal?" in md
    effect = scores["masking_effect"]
    assert len(effect) == len(MEASURES) * 2 * 2  # every measure against both truths, per window and per video
    assert {e["level"] for e in effect} == {"windows", "videos"}
    for e in effect:  # the difference is that of the two runs' own AUROCs at that level
        own = [
            r["scores"][e["level"]][e["truth"]]["measures"][e["measure"]]["auroc"] for r in scores["results"]
        ]
        assert e["difference"] == pytest.approx(own[1] - own[0], nan_ok=True)
    assert all(e["base"] == "oracle_none" and e["other"] == "oracle_object_0-4" for e in effect)
    with np.load(out / "oracle_none" / "pairs.npz") as f:
        n = int(w["counterfactual"]["positives"] + w["counterfactual"]["negatives"])
        assert f["windows.counterfactual.label"].shape == (n,)
        assert f["windows.counterfactual.gradient"].shape == (n,)
        assert auroc(f["windows.contact.gradient"], f["windows.contact.label"]) == pytest.approx(
            w["contact"]["measures"]["gradient"]["auroc"], nan_ok=True
        )
    assert (out / "scores.png").stat().st_size > 0
    run = out / "oracle_object_0-4"
    pngs = sorted(run.glob("influence_*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000
    with VideoStore(world["root"] / "validation.h5") as vs:
        vid = vs.video_ids[0]
    folder = run / "graphs" / vid
    windows = sorted(folder.glob("window_*.graphml"))
    assert windows
    G = nx.read_graphml(windows[0])
    assert G.graph["video_id"] == vid and G.graph["weight_measure"] == "intervention_remove"
    assert "action" in G.nodes and G.nodes["action"]["kind"] == "action"
    objects = [n for n in G.nodes if n != "action"]
    assert len(G.edges) == len(objects) * (len(objects) - 1) + len(objects)  # complete + action edges
    _, _, e = next(iter(G.edges(data=True)))
    for key in ("weight", "in_neighbourhood", "in_top_k", "contact", "counterfactual", "time", *MEASURES):
        assert key in e, key
    assert e["weight"] == e["intervention_remove"] and e["time"] == G.graph["last_visible"]
    L, nh = G.graph["layers"], G.graph["heads"]
    heads = np.array([[e[f"attention_l{a}_h{b}"] for b in range(nh)] for a in range(L)])
    assert e["attention"] == pytest.approx(heads.mean(), rel=1e-5)  # the mean over layers and heads
    # every target's neighbourhood carries at least the share of its incoming weight
    for t in objects:
        inc = {s: d["weight"] for s, _, d in G.in_edges(t, data=True)}
        hood = sum(d["weight"] for s, _, d in G.in_edges(t, data=True) if d["in_neighbourhood"])
        assert hood >= 0.8 * sum(inc.values()) - 1e-9
    V = nx.read_graphml(folder / "video.graphml")
    assert set(V.nodes) >= set(G.nodes) and all("peak_time" in d for *_, d in V.edges(data=True))
    pyg = load_pyg(folder / "pyg.pt")
    assert len(pyg["windows"]) == len(windows) and len(pyg["video"]) == 1
    d0 = pyg["windows"][0]
    assert d0.edge_index.shape == (2, len(G.edges)) and d0.num_nodes == len(G.nodes)
    assert d0.edge_attr.shape[0] == len(G.edges) and d0.video_id == vid
    assert d0.edge_heads.shape == (len(G.edges), L, nh)
    assert not hasattr(pyg["video"][0], "edge_heads") or pyg["video"][0].edge_heads is None
    want = to_pyg(G, tuple(d0.edge_fields))
    torch.testing.assert_close(torch.sort(d0.edge_weight).values, torch.sort(want.edge_weight).values)
    # a second run with the same settings reads the finished runs back
    stamp = (run / "scores.json").stat().st_mtime_ns
    cli.main(args)
    assert (run / "scores.json").stat().st_mtime_ns == stamp


def test_eval_influence_bad_input(world, capsys):
    ckpt = world["base"] / "object" / "predictor.pt"
    with pytest.raises(SystemExit):
        cli.main(["eval", "influence", f"checkpoints=[{ckpt}]", f"data.root={world['root']}",
                  "weight=attention_typo", f"out={world['base'] / 'bad'}"])  # fmt: skip
    assert "weight='attention_typo' is not a measure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "influence", f"checkpoints=[{ckpt}]", f"data.root={world['base']}",
                  f"out={world['base'] / 'bad'}"])  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "influence", f"checkpoints=[{ckpt}]", f"data.root={world['root']}",
                  "probe.share=1.5", f"out={world['base'] / 'bad'}"])  # fmt: skip
    assert "probe.share must be in (0, 1]" in capsys.readouterr().err
