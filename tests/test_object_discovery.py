"""Object-discovery metrics against brute-force references and hand-computed cases."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from itertools import combinations

import pytest
import torch

from causaljepa.evaluation.object_discovery import (
    adjusted_rand_index,
    fg_ari,
    mean_best_overlap,
    object_classes,
    object_errors,
    slot_switches,
    summarize,
    temporal_consistency,
)


def reference_ari(true: list[int], pred: list[int]) -> float:
    """ARI from its pair-counting definition, exact in rationals (scikit-learn's conventions)."""
    n = len(true)
    if n < 2:
        return math.nan
    tp = fn = fp = tn = 0
    for i, j in combinations(range(n), 2):
        same_true, same_pred = true[i] == true[j], pred[i] == pred[j]
        tp += same_true and same_pred
        fn += same_true and not same_pred
        fp += same_pred and not same_true
        tn += not same_true and not same_pred
    if fn == 0 and fp == 0:
        return 1.0
    total = tp + fn + fp + tn
    expected = Fraction((tp + fn) * (tp + fp), total)
    maximum = Fraction((tp + fn) + (tp + fp), 2)
    return float((tp - expected) / (maximum - expected))


@pytest.mark.parametrize("seed", range(6))
def test_ari_matches_pair_counting_reference(seed):
    g = torch.Generator().manual_seed(seed)
    b, p = 5, 40
    kt, kp = 2 + seed % 4, 1 + seed % 5
    true = torch.randint(0, kt, (b, p), generator=g)
    pred = torch.randint(0, kp, (b, p), generator=g)
    # Some rows with sparse, large ids; some equal to a relabelled truth.
    true[0] = true[0] * 37 + 5
    pred[1] = (true[1] + 3) % kt
    valid = torch.rand(b, p, generator=g) > 0.3
    valid[2, :2], valid[2, 2:] = True, False  # two valid pixels only: one pair
    got_all = adjusted_rand_index(true, pred)
    got_valid = adjusted_rand_index(true, pred, valid)
    assert got_all.dtype == torch.float64 and got_all.shape == (b,)
    for r in range(b):
        t, q, v = true[r].tolist(), pred[r].tolist(), valid[r].tolist()
        assert got_all[r].item() == pytest.approx(reference_ari(t, q), abs=1e-9)
        t_v = [x for x, keep in zip(t, v, strict=True) if keep]
        q_v = [x for x, keep in zip(q, v, strict=True) if keep]
        assert got_valid[r].item() == pytest.approx(reference_ari(t_v, q_v), abs=1e-9)


def test_ari_hand_computed():
    true = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 2], [5, 5, 7, 7]])
    # Row 0: index 1, sum_a 2, sum_b 1, C(4,2)=6 -> (1 - 1/3) / (3/2 - 1/3) = 4/7
    got = adjusted_rand_index(true, pred)
    assert got[0].item() == pytest.approx(4 / 7, abs=1e-12)
    assert got[1].item() == 1.0
    true = torch.tensor([[0, 0, 0, 1, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 1, 2, 2]])
    # index 2, sum_a 6, sum_b 3, C(6,2)=15 -> (2 - 1.2) / (4.5 - 1.2) = 8/33
    assert adjusted_rand_index(true, pred).item() == pytest.approx(8 / 33, abs=1e-12)


def test_ari_trivial_partitions_and_undefined_rows():
    p = 10
    ones = torch.zeros(1, p, dtype=torch.long)
    singletons = torch.arange(p).unsqueeze(0)
    assert adjusted_rand_index(ones, ones + 3).item() == 1.0
    assert adjusted_rand_index(singletons, singletons.flip(1)).item() == 1.0
    assert adjusted_rand_index(ones, singletons).item() == 0.0
    assert adjusted_rand_index(ones, (singletons >= 5).long()).item() == pytest.approx(0.0, abs=1e-12)
    valid = torch.zeros(2, p, dtype=torch.bool)
    valid[1, 3] = True  # row 0: no valid pixel, row 1: one
    assert torch.isnan(adjusted_rand_index(singletons.repeat(2, 1), ones.repeat(2, 1), valid)).all()


def test_ari_explicit_table_sizes():
    g = torch.Generator().manual_seed(3)
    true = torch.randint(0, 4, (3, 50), generator=g)
    pred = torch.randint(0, 6, (3, 50), generator=g)
    auto = adjusted_rand_index(true, pred)
    assert torch.equal(adjusted_rand_index(true, pred, num_true=9, num_pred=11), auto)
    with pytest.raises(ValueError, match="num_pred"):
        adjusted_rand_index(true, pred, num_pred=int(pred.max()))


def test_perfect_segmentation_is_one_under_any_permutation():
    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 6, (4, 8, 8), generator=g)
    perm = torch.randperm(11, generator=g)
    pred = perm[true]
    assert torch.equal(fg_ari(true, pred), torch.ones(4, dtype=torch.float64))
    assert torch.equal(
        adjusted_rand_index(true.flatten(1), pred.flatten(1)), torch.ones(4, dtype=torch.float64)
    )
    assert torch.allclose(mean_best_overlap(true, pred), torch.ones(4, dtype=torch.float64))


def test_fg_ari_ignores_background():
    g = torch.Generator().manual_seed(1)
    true = torch.randint(0, 4, (3, 6, 6), generator=g)
    pred = torch.randint(0, 5, (3, 6, 6), generator=g)
    base = fg_ari(true, pred)
    scrambled = torch.where(true == 0, torch.randint(0, 7, true.shape, generator=g), pred)
    assert not torch.equal(scrambled, pred)
    assert torch.equal(fg_ari(true, scrambled), base)
    for r in range(3):
        fg = true[r] > 0
        want = reference_ari(true[r][fg].tolist(), pred[r][fg].tolist())
        assert base[r].item() == pytest.approx(want, abs=1e-9)


def test_fg_ari_video_and_per_frame_shapes():
    g = torch.Generator().manual_seed(2)
    b, t = 2, 3
    true = torch.randint(0, 3, (b, t, 4, 4), generator=g)
    pred = torch.randint(0, 4, (b, t, 4, 4), generator=g)
    video = fg_ari(true, pred)
    assert video.shape == (b,)
    assert torch.equal(
        video, adjusted_rand_index(true.flatten(1), pred.flatten(1), valid=true.flatten(1) > 0)
    )
    frames = fg_ari(true.flatten(0, 1), pred.flatten(0, 1))
    assert frames.shape == (b * t,)
    assert torch.equal(frames, fg_ari(true.reshape(b * t, -1), pred.reshape(b * t, -1)))
    # slot ids that swap between two frames: each frame alone is perfect, the video is not
    truth = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2]]])  # (1 video, 2 frames, 4 pixels)
    swapped = torch.tensor([[[5, 5, 6, 6], [6, 6, 5, 5]]])
    assert fg_ari(truth.flatten(0, 1), swapped.flatten(0, 1)).tolist() == [1.0, 1.0]
    assert fg_ari(truth, swapped).item() < 0.5


def test_random_labelling_ari_near_zero():
    g = torch.Generator().manual_seed(4)
    true = torch.randint(0, 5, (8, 4000), generator=g)
    pred = torch.randint(0, 7, (8, 4000), generator=g)
    ari = adjusted_rand_index(true, pred)
    assert ari.abs().max().item() < 0.01
    assert abs(summarize(fg_ari(true, pred))) < 0.01


def test_mean_best_overlap_hand_computed():
    true = torch.tensor(
        [
            [1, 1, 0, 0, 2, 2, 2, 2],
            [1, 1, 1, 1, 3, 3, 3, 3],  # object 2 absent: not averaged in
            [0, 0, 0, 0, 0, 0, 0, 0],  # no object
        ]
    )
    pred = torch.tensor(
        [
            [1, 1, 1, 1, 2, 2, 2, 0],  # obj 1: 2/4 with slot 1; obj 2: 3/4 with slot 2
            [0, 0, 0, 0, 0, 0, 0, 0],  # each object 4/8 with slot 0
            [0, 1, 2, 3, 0, 1, 2, 3],
        ]
    )
    mbo = mean_best_overlap(true, pred)
    assert mbo[0].item() == pytest.approx((0.5 + 0.75) / 2, abs=1e-12)
    assert mbo[1].item() == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(mbo[2].item())
    assert summarize(mbo) == pytest.approx((0.625 + 0.5) / 2, abs=1e-12)
    # Same per-row result with trailing spatial dims.
    assert torch.allclose(mean_best_overlap(true.view(3, 2, 4), pred.view(3, 2, 4)), mbo, equal_nan=True)


def test_temporal_consistency_hand_made():
    # 4 pixels per frame, 4 frames.
    switch = torch.tensor([[1, 1, 0, 0]] * 4)  # object 1 in every frame
    switch_pred = torch.tensor([[2, 2, 0, 0], [2, 2, 0, 0], [3, 3, 0, 0], [3, 3, 0, 0]])
    assert temporal_consistency(switch[None], switch_pred[None]) == (0, 1)

    steady = torch.tensor([[1, 1, 2, 2]] * 4)
    steady_pred = torch.tensor([[4, 4, 0, 0]] * 4)  # permuted ids, constant over time
    assert temporal_consistency(steady[None], steady_pred[None]) == (2, 2)

    # Object 1 absent in frames 1 and 3 (pred there does not matter); object 2 never present.
    absent = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    absent_pred = torch.tensor([[1, 1, 0, 0], [1, 1, 2, 2], [1, 3, 0, 0], [2, 2, 2, 2]])
    assert temporal_consistency(absent[None], absent_pred[None]) == (1, 1)

    # Batched: counts add up over videos; object 2 of video 2 is counted only there.
    true = torch.stack([switch, steady, absent])
    pred = torch.stack([switch_pred, steady_pred, absent_pred])
    assert temporal_consistency(true, pred) == (3, 4)
    # Trailing spatial dims are flattened.
    assert temporal_consistency(true.view(3, 4, 2, 2), pred.view(3, 4, 2, 2)) == (3, 4)


def test_temporal_consistency_min_pixels_and_ties():
    true = torch.tensor([[[1, 1, 1, 0], [1, 0, 0, 0]]])  # object 1: 3 pixels, then 1 pixel
    pred = torch.tensor([[[5, 5, 5, 0], [2, 0, 0, 0]]])
    assert temporal_consistency(true, pred) == (0, 1)
    assert temporal_consistency(true, pred, min_pixels=2) == (1, 1)
    assert temporal_consistency(true, pred, min_pixels=4) == (0, 0)
    with pytest.raises(ValueError, match="min_pixels"):
        temporal_consistency(true, pred, min_pixels=0)
    # A tie goes to the lowest id: slot 1 in both frames.
    true = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0]]])
    pred = torch.tensor([[[3, 1, 0, 0], [1, 1, 3, 3]]])
    assert temporal_consistency(true, pred) == (1, 1)


def test_validation():
    true = torch.zeros(2, 3, dtype=torch.long)
    pred = torch.zeros(2, 4, dtype=torch.long)
    both = re.escape("(2, 3)") + ".*" + re.escape("(2, 4)")
    for fn in (fg_ari, mean_best_overlap, temporal_consistency, adjusted_rand_index):
        with pytest.raises(ValueError, match=both):
            fn(true, pred)
    with pytest.raises(ValueError, match="negative"):
        fg_ari(torch.tensor([[0, -1, 1]]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="negative"):
        mean_best_overlap(torch.tensor([[0, 1, 1]]), torch.tensor([[0, -2, 1]]))
    with pytest.raises(TypeError):
        fg_ari(torch.zeros(1, 3), torch.zeros(1, 3))


def test_uint8_masks_accepted():
    g = torch.Generator().manual_seed(5)
    true = torch.randint(0, 4, (2, 5, 5), generator=g)
    pred = torch.randint(0, 6, (2, 5, 5), generator=g)
    u8_true, u8_pred = true.to(torch.uint8), pred.to(torch.uint8)
    assert torch.equal(fg_ari(u8_true, u8_pred), fg_ari(true, pred))
    assert torch.equal(mean_best_overlap(u8_true, u8_pred), mean_best_overlap(true, pred))
    assert temporal_consistency(u8_true, u8_pred) == temporal_consistency(true, pred)


def test_no_foreground_rows_are_nan_and_skipped():
    true = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1], [3, 3, 0, 0]])
    ari = fg_ari(true, pred)
    assert torch.isnan(ari[:2]).all()
    assert ari[2].item() == 1.0
    assert summarize(ari) == 1.0
    assert math.isnan(summarize(ari[:2]))
    assert math.isnan(summarize(torch.empty(0)))
    assert isinstance(summarize(ari), float)


def reference_switches(true: torch.Tensor, pred: torch.Tensor, min_pixels: int) -> dict:
    """(video, object) -> (switches, returns) by walking the frames one by one."""
    out = {}
    for b in range(true.shape[0]):
        for o in range(1, int(true.max()) + 1):
            seq = []
            for t in range(true.shape[1]):
                obj = true[b, t].flatten() == o
                if int(obj.sum()) < min_pixels:
                    continue
                counts = torch.bincount(pred[b, t].flatten()[obj], minlength=int(pred.max()) + 1)
                seq.append(int(counts.argmax()))
            switches = returns = 0
            for i in range(1, len(seq)):
                if seq[i] != seq[i - 1]:
                    switches += 1
                    returns += seq[i] in seq[:i]
            if seq:
                out[b, o] = (switches, returns)
    return out


def test_slot_switches_hand_made():
    # one pixel, one object, 7 frames: slots 0, 0, 1, 0, (absent), 2, 1
    true = torch.tensor([1, 1, 1, 1, 0, 1, 1]).view(1, 7, 1)
    pred = torch.tensor([0, 0, 1, 0, 3, 2, 1]).view(1, 7, 1)
    switches, returns, seen = slot_switches(true, pred)
    # 0->1 new, 1->0 back, 0->2 new (the absent frame is skipped), 2->1 back
    assert switches.tolist() == [[4]] and returns.tolist() == [[2]] and seen.tolist() == [[True]]
    assert temporal_consistency(true, pred) == (0, 1)
    # an object that keeps its slot, and one never seen (id 2 appears in video 2 only)
    steady = torch.tensor([[[1, 0], [1, 0], [1, 0]], [[2, 0], [2, 0], [2, 0]]]).view(2, 3, 2)
    steady_pred = torch.tensor([[[4, 0], [4, 0], [4, 0]], [[1, 0], [3, 0], [3, 0]]]).view(2, 3, 2)
    switches, returns, seen = slot_switches(steady, steady_pred)
    assert switches.tolist() == [[0, 0], [0, 1]] and returns.tolist() == [[0, 0], [0, 0]]
    assert seen.tolist() == [[True, False], [False, True]]
    with pytest.raises(ValueError, match="min_pixels"):
        slot_switches(true, pred, min_pixels=0)


@pytest.mark.parametrize("min_pixels", [1, 3])
def test_slot_switches_match_a_frame_by_frame_walk(min_pixels):
    g = torch.Generator().manual_seed(7)
    true = torch.randint(0, 4, (3, 12, 3, 3), generator=g)
    pred = torch.randint(0, 5, (3, 12, 3, 3), generator=g)
    switches, returns, seen = slot_switches(true, pred, min_pixels=min_pixels)
    ref = reference_switches(true, pred, min_pixels)
    assert sorted(ref) == [(b, o + 1) for b, o in seen.nonzero().tolist()]
    assert len(ref) >= 6 and sum(s for s, _ in ref.values()) > 10  # the walk has something to count
    for (b, o), (s, r) in ref.items():
        assert (int(switches[b, o - 1]), int(returns[b, o - 1])) == (s, r), (b, o)
    c, n = temporal_consistency(true, pred, min_pixels=min_pixels)
    assert (c, n) == (int((seen & (switches == 0)).sum()), int(seen.sum()))


def test_object_errors_hand_made():
    """Frames of 10 pixels (one row): background in pixels 0-3, objects in the rest."""
    T = 4
    true = torch.zeros(2, T, 10, dtype=torch.long)
    pred = torch.zeros(2, T, 10, dtype=torch.long)  # slot 0: the background's in both videos
    # video 0: object 1 whole in slot 1; object 2 half in slot 2, half in slot 3, every frame
    true[0, :, 4:6], pred[0, :, 4:6] = 1, 1
    true[0, :, 6:10], pred[0, :, 6:8], pred[0, :, 8:10] = 2, 2, 3
    # video 1: object 1 in slot 1 for three frames, slot 2 in the last (changed slot); object 2
    # in slot 1 all along (shares it with object 1); object 3 painted as background
    true[1, :, 4:6], pred[1, :3, 4:6], pred[1, 3, 4:6] = 1, 1, 2
    true[1, :, 6:8], pred[1, :, 6:8] = 2, 1
    true[1, :, 8:10] = 3
    got = object_errors(true, pred, min_pixels=2, share=0.2)
    assert got == {"objects": 5, "split_in_frames": 1, "split_over_time": 1, "merged": 2,
                   "in_background": 1, "whole": 1}  # fmt: skip
    per = object_classes(true, pred, min_pixels=2, share=0.2)  # the same, per object
    assert per["best"].tolist() == [[1, 2, 0], [1, 1, 0]]  # video 0 has no object 3: argmax of zeros
    assert per["first"].tolist() == [[0, 0, -1], [0, 0, 0]]
    assert per["merged"].tolist() == [[False, False, False], [True, True, False]]
    assert per["in_background"].tolist() == [[False, False, False], [False, False, True]]
    # objects with fewer than min_pixels in every frame are not seen
    assert object_errors(true, pred, min_pixels=3)["objects"] == 1  # only video 0's object 2
    for bad, match in (({"min_pixels": 0}, "min_pixels must be >= 1"), ({"share": 1.0}, "share must be in")):
        with pytest.raises(ValueError, match=match):
            object_errors(true, pred, **bad)
