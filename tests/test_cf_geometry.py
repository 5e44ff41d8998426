"""The geometric reading of counterfactual questions: distances, starts, worlds, scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from causaljepa.data.oracle import ORACLE_FIELDS
from causaljepa.evaluation.cf_geometry import (
    Item,
    answer,
    changed,
    checkpoint_names,
    constant_velocity,
    entry_mask,
    first_contact,
    group_of,
    pair_distance,
    position_errors,
    positions,
    predictor_worlds,
    score,
    simulate_without,
    start_row,
    summarize_groups,
)
from causaljepa.models.predictor import CJEPAPredictor, PredictorConfig
from causaljepa.rollout import rollout

D = len(ORACLE_FIELDS)
P, X, Y, VX, VY = (ORACLE_FIELDS.index(k) for k in ("present", "x", "y", "vx", "vy"))


def _slots(tracks: dict[int, list[tuple[float, float] | None]], K: int = 3) -> np.ndarray:
    """(T, K, D) oracle slots from world positions per object (None: absent at that frame)."""
    T = len(next(iter(tracks.values())))
    s = np.zeros((T, K, D), np.float32)
    for k, track in tracks.items():
        for t, xy in enumerate(track):
            if xy is not None:
                s[t, k, P] = 1.0
                s[t, k, X], s[t, k, Y] = xy[0] / 3.0, xy[1] / 2.0
    return s


def test_positions_distances_and_first_contact():
    s = _slots({0: [(0.0, 0.0)] * 4, 1: [(3.0, 0.0), (2.0, 0.0), (0.5, 0.0), (0.5, 0.0)], 2: [None] * 4})
    xy, present = positions(s)
    np.testing.assert_allclose(xy[1, 1], [2.0, 0.0], atol=1e-6)  # back in world units
    assert present[:, :2].all() and not present[:, 2].any()
    assert pair_distance(xy, present, 0, 1) == pytest.approx(0.5)
    assert pair_distance(xy, present, 0, 2) == math.inf  # never both present
    assert first_contact(xy, present, 0, 0.9) == 2
    assert first_contact(xy, present, 0, 0.4) is None
    assert first_contact(xy, present, 2, 5.0) is None  # an absent object touches nothing
    # the simulation starts at the last row (stride 2) before the contact, not before the history
    video = _slots({0: [(0.0, 0.0)] * 12, 1: [(3.0 - 0.3 * t, 0.5) for t in range(12)]})
    assert first_contact(*positions(video), 0, 0.9) == 8
    assert start_row(video, 0, "contact", history=2, stride=2, distance=0.9) == 3  # frame 6 < 8
    assert start_row(video, 0, "contact", history=5, stride=2, distance=0.9) == 4  # not before the history
    assert start_row(video, 0, "first", history=2, stride=2, distance=0.9) == 1
    assert start_row(video, 0, "contact", history=2, stride=2, distance=0.1) is None


def test_constant_velocity_and_entries():
    R, dt = 6, 0.1
    w = np.zeros((R, 3, D), np.float32)
    w[:, 0, P] = 1.0
    w[:, 0, VX], w[:, 0, VY] = 0.3, -0.6  # normalised as the oracle: / 3
    w[:2, 0, X] = [0.0, 0.01]
    w[3:, 1, P] = 1.0  # object 1 enters at row 3
    w[3:, 1, X] = np.arange(3) * 0.05
    w[3:, 1, VX] = 0.6
    given = entry_mask(w, 1, removed=2, history=2)
    assert given[:, 1].tolist() == [False, False, False, True, True, False] and not given[:, [0, 2]].any()
    assert not entry_mask(w, 1, removed=1, history=2).any()  # the removed object never re-enters
    cv = constant_velocity(w, 1, given, dt)
    # object 0 from row 1: x_norm += vx_norm dt per row, y_norm += vy_norm * 3 / 2 dt per row
    np.testing.assert_allclose(cv[2:, 0, X], 0.01 + 0.3 * dt * np.arange(1, 5), atol=1e-6)
    np.testing.assert_allclose(cv[2:, 0, Y], -0.6 * 1.5 * dt * np.arange(1, 5), atol=1e-6)
    np.testing.assert_allclose(cv[:2], w[:2])  # rows up to the start are the observation
    # object 1: absent until given, given rows as observed, then on from the last given row
    assert not cv[2, 1].any()
    np.testing.assert_allclose(cv[3:5, 1], w[3:5, 1])
    assert cv[5, 1, X] == pytest.approx(w[4, 1, X] + 0.6 * dt)
    # without entries the entering object stays out of the world
    assert not constant_velocity(w, 1, np.zeros((R, 3), bool), dt)[2:, 1].any()


def test_answers_and_scores_by_kind():
    world = _slots({0: [(0.0, 0.0), (0.5, 0.0)], 1: [(1.0, 0.0), (1.0, 0.0)], 2: [(5.0, 0.0), None]})
    assert answer(world, [(0, 1), (0, 2), None], 0.9) == [True, False, False]
    items = [Item(0, 2, [(0, 1), (0, 2)], [True, False]), Item(0, 1, [(0, 1), (1, 2)], [False, True])]
    factual = [[True, False], [True, False]]  # kinds: kept, never | lost, new
    s = score([[True, False], [True, True]], items, factual)
    assert s["option"] == 75.0 and s["question"] == 50.0
    assert s["kinds"] == {"kept": 100.0, "new": 100.0, "lost": 0.0, "never": 100.0}
    assert s["kind_counts"] == {"kept": 1, "new": 1, "lost": 1, "never": 1}
    # the observed world answers kept and never right, new and lost wrong, by construction
    assert score(factual, items, factual)["kinds"] == {"kept": 100.0, "new": 0.0, "lost": 0.0, "never": 100.0}


def test_names_and_groups(tmp_path):
    names = checkpoint_names(
        [str(tmp_path / "abl" / m / f"seed{s}" / "predictor.pt") for m in "ab" for s in (0, 1)]
    )
    assert names == ["a/seed0", "a/seed1", "b/seed0", "b/seed1"]
    assert checkpoint_names([str(tmp_path / "one" / "predictor.pt")]) == ["one"]
    with pytest.raises(ValueError, match="have the same name"):
        checkpoint_names([str(tmp_path / "x" / "predictor.pt")] * 2)
    assert group_of("a/seed1") == "a" and group_of("seed3") == "all" and group_of("none") is None
    rows = {f"a/seed{s}, from first": {"question": q} for s, q in ((0, 50.0), (1, 60.0))}
    rows["factual"] = {"question": 40.0}
    g = summarize_groups(rows)
    assert list(g) == ["a, from first"] and g["a, from first"]["seeds"] == 2
    assert g["a, from first"]["question"][0] == pytest.approx(55.0)
    assert g["a, from first"]["question"][1] == pytest.approx(np.std([50.0, 60.0], ddof=1))


def test_position_errors_per_horizon():
    truth = _slots({0: [(float(t), 0.0) for t in range(6)], 1: [(0.0, 3.0)] * 6})
    world = truth.copy()
    world[3:, 0, X] += 0.5 / 3.0  # object 0 is 0.5 world units off from row 3 on
    err = position_errors([world, None], [1, 2], [truth, truth])
    # from row 1: h=1 is row 2 (no error), h=2 row 3 (0.5 for one object of two), h=4 row 5
    assert (
        err["1"] == pytest.approx(0.0) and err["2"] == pytest.approx(0.25) and err["4"] == pytest.approx(0.25)
    )
    assert err["8"] is None and err["32"] is None  # no item reaches past row 5


def test_changed_counts_turned_answers_of_named_pairs():
    items = [Item(0, 2, [(0, 1), None, (1, 3)], [True, False, False]), Item(1, 0, [(1, 2)], [True])]
    a = [[True, False, True], [False]]
    b = [[True, True, False], [True]]  # the unnamed choice (None) differs too: not counted
    assert changed(a, b, items) == pytest.approx(100.0 * 2 / 3)
    assert changed(a, a, items) == 0.0
    assert math.isnan(changed([[False]], [[True]], [Item(0, 1, [None], [False])]))


def test_simulate_without_and_the_factual_rollout():
    """removed slots are zero throughout; removed=None is the plain rollout of the same
    rows, every object kept, and an object entering after the start is given in both."""
    torch.manual_seed(0)
    cfg = PredictorConfig(
        slot_dim=D, dim=32, layers=1, heads=2, head_dim=16, mlp_hidden=32, history=3, future=2
    )
    model = CJEPAPredictor(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(model.out.weight, std=0.1)  # zero at init: every prediction its anchor
    R, e = 9, 3
    rows = np.zeros((2, R, 3, D), np.float32)
    rows[:, :, :2, P] = 1.0
    rows[:, :, :2, X] = np.linspace(-0.5, 0.5, R)[None, :, None]
    rows[:, 5:, 2, P], rows[:, 5:, 2, Y] = 1.0, 0.3  # object 2 enters at row 5
    removed = np.array([0, 1])
    gone = simulate_without(model, rows, removed, e, entries=True)
    own = simulate_without(model, rows, None, e, entries=True)
    assert gone.shape == own.shape == rows.shape
    assert not gone[0, :, 0].any() and not gone[1, :, 1].any()  # removed: zero rows throughout
    np.testing.assert_array_equal(own[:, : e + 1], rows[:, : e + 1])  # observed up to the start, all kept
    assert own[0, e + 1 :, 0].any() and own[1, e + 1 :, 1].any()
    # the entering object's first history rows are given in both worlds
    np.testing.assert_array_equal(gone[:, 5:8, 2], rows[:, 5:8, 2])
    np.testing.assert_array_equal(own[:, 5:8, 2], rows[:, 5:8, 2])
    # remove=False is rollout() with the same given rows
    given = np.zeros((2, R, 3), bool)
    given[:, 5:8, 2] = True
    H = cfg.history
    expect = rollout(
        model, torch.from_numpy(rows[:, e + 1 - H : e + 1]), R - 1 - e,
        given=(torch.from_numpy(rows[:, e + 1 - H :]), torch.from_numpy(given[:, e + 1 - H :])),
    ).numpy()  # fmt: skip
    np.testing.assert_allclose(own[:, e + 1 :], expect, rtol=0, atol=1e-6)
    assert not np.allclose(gone[0, e + 1 :, 1], own[0, e + 1 :, 1])  # the removal reaches the others


def test_predictor_worlds_simulates_each_world_once_and_gives_it_to_every_item_of_it():
    """Items of one video and start share the factual world (nothing removed); each removal is its
    own world; every world equals simulate_without of its video alone; no start: no world."""
    torch.manual_seed(0)
    cfg = PredictorConfig(
        slot_dim=D, dim=32, layers=1, heads=2, head_dim=16, mlp_hidden=32, history=3, future=2
    )
    model = CJEPAPredictor(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(model.out.weight, std=0.1)
    R = 9
    observed = np.zeros((2, R, 3, D), np.float32)
    observed[:, :, :, P] = 1.0
    observed[0, :, :, X] = np.linspace(-0.5, 0.5, R)[:, None] * np.array([1.0, -1.0, 0.5])
    observed[1, :, :, Y] = np.linspace(0.4, -0.4, R)[:, None] * np.array([0.5, 1.0, -1.0])
    items = [
        Item(video=v, removed=r, pairs=[(0, 1)], labels=[True]) for v, r in [(0, 0), (0, 1), (1, 2), (1, 0)]
    ]
    starts = [3, 3, 4, None]
    own = predictor_worlds(model, observed, items, starts, entries=False, batch_size=1, remove=False)
    gone = predictor_worlds(model, observed, items, starts, entries=False, batch_size=2)
    assert own[3] is None and gone[3] is None
    assert own[0] is own[1]  # one video, one start: one factual world
    assert gone[0] is not gone[1]
    for m in range(3):
        one = observed[items[m].video][None]
        np.testing.assert_allclose(
            own[m], simulate_without(model, one, None, starts[m], entries=False)[0], atol=1e-6
        )
        alone = simulate_without(model, one, np.array([items[m].removed]), starts[m], entries=False)[0]
        np.testing.assert_allclose(gone[m], alone, atol=1e-6)
    assert not np.allclose(gone[0], gone[1])
