"""Tests for autokd/pareto.py: expected values are worked out by hand in the comments."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from autokd import pareto
from autokd.pareto import (
    first_dominators,
    hypervolume,
    knee_index,
    pareto_front_mask,
    pareto_ranks,
    select_index,
    useful_mask,
)

MAX_MIN = ["maximize", "minimize"]  # (accuracy, params): the study's usual directions


def test_docstring_examples_run():
    result = doctest.testmod(pareto)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------- pareto_ranks


def test_ranks_hand_drawn_max_min_mix():
    values = np.array(
        [
            [0.90, 100],  # A: front 0
            [0.80, 50],   # B: front 0 (fewest params)
            [0.85, 120],  # C: dominated by A only (0.90 > 0.85, 100 < 120)
            [0.70, 60],   # D: dominated by B only (0.80 > 0.70, 50 < 60)
            [0.60, 200],  # E: dominated by A, B, C, D -> one front below C and D
            [0.95, 300],  # F: front 0 (best accuracy)
        ]
    )
    # F does not dominate C or D (more params); A does not dominate D (100 > 60).
    assert pareto_ranks(values, MAX_MIN).tolist() == [0, 0, 1, 1, 2, 0]
    assert pareto_front_mask(values, MAX_MIN).tolist() == [True, True, False, False, False, True]


def test_ranks_flip_when_directions_flip():
    values = np.array([[0.90, 100], [0.80, 50], [0.85, 120], [0.70, 60], [0.60, 200], [0.95, 300]])
    # min/max is the mirror image: E (worst at max/min) is now unbeaten, and so on.
    # E (0.60, 200) dominates all but F (0.95 > 0.60 but 300 > 200 -> F is also unbeaten).
    # C (0.85,120) dominated by E only; A dominated by E, C; D (0.70,60) dominated by E;
    # B (0.80,50) dominated by E, D.
    assert pareto_ranks(values, ["minimize", "maximize"]).tolist() == [2, 2, 1, 1, 0, 0]


def test_ranks_ties_and_exact_duplicates():
    values = np.array(
        [
            [1.0, 1.0],  # P0 front 0
            [1.0, 1.0],  # P1 duplicate of P0: neither dominates the other -> also front 0
            [1.0, 2.0],  # P2 ties P0 on obj 0, worse on obj 1 -> dominated by P0, P1
            [0.0, 3.0],  # P3 best obj 0 -> front 0
            [1.0, 2.0],  # P4 duplicate of P2 -> same rank as P2
        ]
    )
    assert pareto_ranks(values, ["minimize", "minimize"]).tolist() == [0, 0, 1, 0, 1]


def test_ranks_one_point():
    assert pareto_ranks(np.array([[0.5, 10.0]]), MAX_MIN).tolist() == [0]


def test_ranks_three_objectives():
    directions = ["minimize", "minimize", "maximize"]
    values = np.array(
        [
            [1, 1, 1],  # Q0 front 0
            [2, 2, 1],  # Q1 dominated by Q0 -> 1
            [2, 2, 5],  # Q2 best in obj 2 -> 0
            [3, 3, 0],  # Q3 dominated by Q0, Q1 (2 < 3, 2 < 3, 1 > 0), Q2 -> 2
            [0, 5, 0],  # Q4 best in obj 0 -> 0
        ]
    )
    assert pareto_ranks(values, directions).tolist() == [0, 1, 0, 2, 0]


def test_ranks_all_equal_points():
    values = np.tile([0.5, 10.0], (4, 1))
    assert pareto_ranks(values, MAX_MIN).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("empty", [np.empty((0, 2)), [], np.array([])])
def test_ranks_empty_input(empty):
    ranks = pareto_ranks(empty, MAX_MIN)
    assert ranks.shape == (0,)
    assert pareto_front_mask(empty, MAX_MIN).shape == (0,)


def test_ranks_single_objective_is_sorted_unique_order():
    # One objective: rank = position among the distinct values.
    assert pareto_ranks([[3.0], [1.0], [2.0], [1.0]], ["minimize"]).tolist() == [2, 0, 1, 0]


@pytest.mark.parametrize(
    "directions, fragment",
    [
        (["maximize", "minimise"], "'minimise'"),
        (["max", "min"], "'max'"),
        ("maximize", "'maximize'"),
        ([], "at least one"),
    ],
)
def test_ranks_bad_directions_named(directions, fragment):
    with pytest.raises(ValueError, match="directions") as info:
        pareto_ranks(np.zeros((2, 2)), directions)
    assert fragment in str(info.value)
    if directions and not isinstance(directions, str):
        assert "('maximize', 'minimize')" in str(info.value)


@pytest.mark.parametrize("values", [np.zeros((3, 3)), np.zeros(3), np.zeros((2, 2, 2))])
def test_ranks_shape_mismatch(values):
    with pytest.raises(ValueError, match=r"values: must have shape \(n, 2\).*got shape"):
        pareto_ranks(values, MAX_MIN)


def test_ranks_reject_nan_rows():
    with pytest.raises(ValueError, match=r"NaN in rows \[1\]"):
        pareto_ranks([[0.9, 1.0], [np.nan, 2.0]], MAX_MIN)


@pytest.mark.parametrize("empty", [np.empty((0, 3)), np.empty((2, 0))], ids=["0x3", "2x0"])
def test_ranks_empty_input_of_the_wrong_shape_is_rejected(empty):
    # Only a 1-D empty input ([] or np.array([])) is read as "no rows"; an empty 2-D array must
    # still have one column per direction.
    with pytest.raises(ValueError, match=r"values: must have shape \(n, 2\).*got shape"):
        pareto_ranks(empty, MAX_MIN)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: pareto_ranks(np.zeros((2, 2)), "maximize"),
            "directions: must be a sequence of ('maximize', 'minimize'), got 'maximize'",
        ),
        (lambda: pareto_ranks(np.zeros((2, 2)), []), "directions: must name at least one objective, got []"),
        (
            # 12 NaN rows: only the first ten are listed
            lambda: pareto_ranks(np.full((12, 2), np.nan), MAX_MIN),
            "values: rows must not contain NaN (drop failed trials first), "
            "got NaN in rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
        ),
        (
            # None is read as a missing value, i.e. NaN
            lambda: pareto_ranks([[0.9, 1.0], [None, 2.0]], MAX_MIN),
            "values: rows must not contain NaN (drop failed trials first), got NaN in rows [1]",
        ),
        (
            lambda: hypervolume([[1, 2]], ["minimize", "minimize"], [3, None]),
            "reference_point: must be finite, got [3.0, nan]",
        ),
        (lambda: knee_index(np.empty((0, 2)), MAX_MIN), "values: need at least one row to find a knee, got 0 rows"),
        (
            lambda: select_index([0.9, 0.8], [1], [1, 2]),
            "accuracy, params, bytes_: must have the same length, got 2, 1, 2",
        ),
    ],
    ids=["directions-str", "directions-empty", "nan-first-ten", "none-is-nan", "reference-none", "knee-empty",
         "select-lengths"],
)
def test_error_messages_in_full(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_ranks_reject_directions_that_are_not_a_sequence():
    # an iterator has no length or order to match columns against
    with pytest.raises(ValueError, match="directions: must be a sequence"):
        pareto_ranks(np.zeros((2, 2)), iter(MAX_MIN))


def _dominates(a, b, directions) -> bool:
    """Brute-force reference: a dominates b."""
    better_or_equal = []
    strictly_better = []
    for x, y, d in zip(a, b, directions):
        better_or_equal.append(x >= y if d == "maximize" else x <= y)
        strictly_better.append(x > y if d == "maximize" else x < y)
    return all(better_or_equal) and any(strictly_better)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("m", [2, 3])
def test_ranks_property_fronts_are_consistent(seed, m):
    rng = np.random.default_rng(seed)
    # Rounded to one decimal so that ties and duplicates are common.
    values = np.round(rng.random((120, m)), 1)
    directions = list(rng.choice(["maximize", "minimize"], size=m))
    ranks = pareto_ranks(values, directions)
    for i in np.flatnonzero(ranks == 0):
        assert not any(_dominates(values[j], values[i], directions) for j in range(len(values)))
    for i in np.flatnonzero(ranks > 0):
        previous = np.flatnonzero(ranks == ranks[i] - 1)
        assert any(_dominates(values[j], values[i], directions) for j in previous)
        # ...and nothing of the same or a worse rank dominates it.
        same_or_worse = np.flatnonzero(ranks >= ranks[i])
        assert not any(_dominates(values[j], values[i], directions) for j in same_or_worse)


def test_first_dominators_by_hand():
    # (accuracy, params): b = (0.80, 50) beats c and d (more accurate and smaller); a = (0.90, 100)
    # beats neither (larger than both). e duplicates b: equal points never dominate each other.
    values = [[0.90, 100], [0.80, 50], [0.70, 80], [0.60, 90], [0.80, 50]]
    assert first_dominators(values, MAX_MIN).tolist() == [-1, -1, 1, 1, -1]  # duplicates never dominate


def test_first_dominators_agree_with_ranks():
    rng = np.random.default_rng(3)
    values = np.round(rng.random((60, 2)), 1)
    dominators = first_dominators(values, MAX_MIN)
    assert ((dominators < 0) == (pareto_ranks(values, MAX_MIN) == 0)).all()
    for i, j in enumerate(dominators):
        if j >= 0:
            assert _dominates(values[j], values[i], MAX_MIN)
            assert not any(_dominates(values[k], values[i], MAX_MIN) for k in range(j))  # the first one


# --------------------------------------------------------------------------- hypervolume


def test_hypervolume_2d_by_hand():
    # minimise both, reference (10, 10):
    #
    #  10 +--------------------------+
    #     |  a (2,6)                 |   strips, left to right:
    #   6 |  +-----------------------|     x 2..4  height 10-6 = 4  ->  8
    #     |  |    b (4,3)            |     x 4..7  height 10-3 = 7  -> 21
    #   3 |  |    +------------------|     x 7..10 height 10-1 = 9  -> 27
    #   1 |  |    |       c (7,1) ---|                         total 56
    #     +--2----4-------7---------10
    #
    # d (5,5) sits inside the union and adds nothing.
    values = np.array([[2, 6], [4, 3], [7, 1], [5, 5]], dtype=float)
    assert hypervolume(values, ["minimize", "minimize"], [10, 10]) == pytest.approx(56.0)
    assert hypervolume(values[:3], ["minimize", "minimize"], [10, 10]) == pytest.approx(56.0)


def test_hypervolume_3d_by_hand():
    # minimise all, reference (4, 4, 4). Boxes [p, ref]:
    #   a (0,0,2): 4*4*2 = 32     b (2,2,0): 2*2*4 = 16     c (1,3,1): 3*1*3 = 9
    #   a&b [2,4]x[2,4]x[2,4] = 8   a&c [1,4]x[3,4]x[2,4] = 6   b&c [2,4]x[3,4]x[1,4] = 6
    #   a&b&c [2,4]x[3,4]x[2,4] = 4
    # two boxes: 32 + 16 - 8 = 40; three: 32 + 16 + 9 - 8 - 6 - 6 + 4 = 41
    directions = ["minimize"] * 3
    a, b, c = [0, 0, 2], [2, 2, 0], [1, 3, 1]
    assert hypervolume([a, b], directions, [4, 4, 4]) == pytest.approx(40.0)
    assert hypervolume([a, b, c], directions, [4, 4, 4]) == pytest.approx(41.0)
    # a dominated point and a duplicate change nothing
    assert hypervolume([a, b, c, [3, 3, 3], b], directions, [4, 4, 4]) == pytest.approx(41.0)


def test_hypervolume_one_point():
    assert hypervolume([[1, 2]], ["minimize", "minimize"], [3, 5]) == pytest.approx(2 * 3)
    assert hypervolume([[1, 2, 3]], ["minimize"] * 3, [2, 4, 7]) == pytest.approx(1 * 2 * 4)


def test_hypervolume_points_not_beating_reference_contribute_nothing():
    directions = ["minimize", "minimize"]
    # (3, 1): equal to the reference in x -> zero width; (4, 0): beyond it in x.
    assert hypervolume([[3, 1], [4, 0]], directions, [3, 5]) == 0.0
    # alongside a good point (1, 2) only its own 2 x 3 box counts
    assert hypervolume([[3, 1], [4, 0], [1, 2]], directions, [3, 5]) == pytest.approx(6.0)
    assert hypervolume(np.empty((0, 2)), directions, [3, 5]) == 0.0


def test_hypervolume_max_min_mix_in_original_units():
    # accuracy (max) vs size (min), reference (0.5, 10): boxes [ref_acc, acc] x [size, ref_size]
    #   (0.9, 6): 0.4 * 4 = 1.6    (0.7, 2): 0.2 * 8 = 1.6    overlap [0.5,0.7]x[6,10] = 0.8
    #   union 1.6 + 1.6 - 0.8 = 2.4
    values = [[0.9, 6], [0.7, 2], [0.4, 1]]  # (0.4, 1) is below the accuracy reference
    assert hypervolume(values, MAX_MIN, [0.5, 10]) == pytest.approx(2.4)
    # the same picture mirrored: (size, accuracy) as (min, max) and both maximised
    mirrored = hypervolume([[6, 0.9], [2, 0.7]], ["minimize", "maximize"], [10, 0.5])
    both_max = hypervolume([[-6, 0.9], [-2, 0.7]], ["maximize", "maximize"], [-10, 0.5])
    assert mirrored == pytest.approx(2.4)
    assert both_max == pytest.approx(2.4)


def test_hypervolume_validates_reference_point():
    with pytest.raises(ValueError, match=r"reference_point: must have 2 entries.*got shape \(3,\)"):
        hypervolume([[1, 2]], ["minimize", "minimize"], [3, 4, 5])
    with pytest.raises(ValueError, match="reference_point: must be finite"):
        hypervolume([[1, 2]], ["minimize", "minimize"], [3, np.inf])


def test_hypervolume_one_objective_is_a_length():
    # minimise: reference 5 minus the best value 1 = 4
    assert hypervolume([[3], [1], [2]], ["minimize"], [5]) == pytest.approx(4.0)
    # maximise: best value 0.95 minus the reference 0.5 = 0.45
    assert hypervolume([[0.9], [0.7], [0.95]], ["maximize"], [0.5]) == pytest.approx(0.45)


def test_hypervolume_infinitely_good_point_counts_only_when_it_beats_the_reference():
    directions = ["minimize", "minimize"]
    # (-inf, 1) beats the reference (3, 5) in both: its box is unbounded
    assert hypervolume([[-np.inf, 1], [2, 2]], directions, [3, 5]) == np.inf
    assert hypervolume([[np.inf, 1]], MAX_MIN, [0.5, 5]) == np.inf
    # (-inf, 5) only ties the reference in y: a box of zero height, so nothing...
    assert hypervolume([[-np.inf, 5]], directions, [3, 5]) == 0.0
    # ...and next to (1, 2) only that point's 2 x 3 box counts
    assert hypervolume([[-np.inf, 5], [1, 2]], directions, [3, 5]) == pytest.approx(6.0)


def _random_front(rng, n, m, kind):
    if kind == "uniform":  # many dominated points
        return rng.random((n, m))
    # points on the unit sphere's positive orthant, as losses 1 - x: all non-dominated
    x = np.abs(rng.normal(size=(n, m)))
    return 1.0 - x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("kind", ["uniform", "sphere"])
def test_hypervolume_matches_optuna(seed, m, kind):
    rng = np.random.default_rng(seed)
    loss = _random_front(rng, int(rng.integers(1, 60)), m, kind)
    ref_loss = loss.max(axis=0) + rng.random(m)
    expected = compute_hypervolume(loss, ref_loss)  # Optuna: minimisation only
    # Express the same problem with a random mix of directions in original units.
    directions = list(rng.choice(["maximize", "minimize"], size=m))
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    got = hypervolume(loss * signs, directions, ref_loss * signs)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


# --------------------------------------------------------------------------- knee_index


def test_knee_obvious_convex_front():
    values = np.array(
        [
            [0.70, 800],   # 0: dominated by row 2
            [0.50, 10],    # 1: extreme (fewest params)
            [0.95, 100],   # 2: the knee
            [0.98, 500],   # 3
            [1.00, 1000],  # 4: extreme (best accuracy)
        ]
    )
    # normalised (best = 0): acc (1 - a) / 0.5, params (p - 10) / 990
    #   row 1 (1, 0)  row 2 (0.1, 0.091)  row 3 (0.04, 0.495)  row 4 (0, 1)
    #   1 - sum: 0, 0.809, 0.465, 0  -> row 2 is farthest below the line
    assert knee_index(values, MAX_MIN) == 2


def test_knee_three_objectives():
    # corners (1,0,0), (0,1,0), (0,0,1) and one point well below the plane sum = 1
    values = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.1, 0.1, 0.1]]
    assert knee_index(values, ["minimize"] * 3) == 3


def test_knee_one_point_front_falls_back():
    # row 1 dominates row 0 and is the whole front
    assert knee_index([[0.8, 20], [0.9, 10]], MAX_MIN) == 1
    assert knee_index([[0.8, 20]], MAX_MIN) == 0


def test_knee_two_point_front_falls_back_to_closest_to_ideal():
    # front = rows 1, 2 normalised to (1, 0) and (0, 1): equally far from the ideal point,
    # so the lower index wins; row 0 is dominated by row 1.
    values = [[0.4, 200], [0.5, 10], [0.9, 100]]
    assert knee_index(values, MAX_MIN) == 1


def test_knee_points_on_the_line_fall_back_to_closest_to_ideal():
    # normalised (0,1), (0.5,0.5), (1,0): nothing below x + y = 1; (0.5, 0.5) is nearest (0, 0)
    values = [[0, 10], [5, 5], [10, 0]]
    assert knee_index(values, ["minimize", "minimize"]) == 1


@pytest.mark.parametrize("offset", [0, 2, 1000])
def test_knee_two_point_front_does_not_depend_on_an_offset(offset):
    # (0, 10 + offset) and (10, offset) normalise to (0, 1) and (1, 0) for any offset:
    # equally near the ideal point, so the lower index wins
    assert knee_index([[0, 10 + offset], [10, offset]], ["minimize", "minimize"]) == 0


def test_knee_needs_a_point_more_than_1e_12_below_the_line():
    # (0, 1), (1, 0) span both axes, so the values are already normalised. Row 2 lies
    # (1 - 0.1 - (0.9 - d)) / sqrt(2) = d / sqrt(2) below x + y = 1; row 3 (0.5, 0.5) is on it
    # and nearest the ideal point (0.707 against 0.906 for row 2).
    def front(d):
        return [[0, 1], [1, 0], [0.1, 0.9 - d], [0.5, 0.5]]

    directions = ["minimize", "minimize"]
    assert knee_index(front(1e-12), directions) == 3  # 0.71e-12 below: counts as on the line
    assert knee_index(front(3e-12), directions) == 2  # 2.1e-12 below: the knee


def test_knee_ignores_an_objective_that_is_constant_on_the_front():
    # Columns x, y over 0..100 and a constant third one (normalised to 0). Normalised (x, y):
    #   (0, 1)  (1, 0)  (0.01, 0.55)  (0.35, 0.35)  -> 1 - sum: 0, 0, 0.44, 0.30 -> row 2,
    # although row 3 is nearer the ideal point (0.495 against 0.550).
    values = [[0, 100, 7], [100, 0, 7], [1, 55, 7], [35, 35, 7]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0 on the constant column
        assert knee_index(values, ["minimize"] * 3) == 2
        assert knee_index([row[:2] for row in values], ["minimize"] * 2) == 2


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_knee_ignores_a_constant_infinite_objective():
    # the third column is inf everywhere, constant like any other: (1, 0), (0, 1), (0.1, 0.1) remain
    # -> 1 - sum: 0, 0, 0.8 -> row 2
    values = [[1, 0, np.inf], [0, 1, np.inf], [0.1, 0.1, np.inf]]
    assert knee_index(values, ["minimize"] * 3) == 2


# The digits case of issue 13: a near-chance tiny student on the front. Columns: accuracy, log10 params.
DEGENERATE_FRONT = [
    [0.18, 1.7],   # 0: 52 params at 0.18, below half the best (0.49)
    [0.90, 2.6],   # 1
    [0.96, 3.0],   # 2: the obvious pick
    [0.98, 4.3],   # 3: extreme (best accuracy)
]


def test_knee_ignores_front_points_below_half_the_best_accuracy():
    # Floor 0.5 * 0.98 = 0.49 drops row 0. Over rows 1-3: accuracy loss (0.98 - a) / 0.08, size (s - 2.6) / 1.7
    #   row 1 (1, 0)  row 2 (0.25, 0.235)  row 3 (0, 1)  -> 1 - sum: 0, 0.515, 0  -> row 2
    assert knee_index(DEGENERATE_FRONT, MAX_MIN) == 2


def test_without_the_floor_the_degenerate_point_squeezes_the_knee_to_a_worse_student():
    # All four rows: accuracy loss (0.98 - a) / 0.80, size (s - 1.7) / 2.6
    #   row 0 (1, 0)  row 1 (0.1, 0.346)  row 2 (0.025, 0.5)  row 3 (0, 1)  -> 1 - sum: 0, 0.554, 0.475, 0 -> row 1
    assert knee_index(DEGENERATE_FRONT, MAX_MIN, useful_share=0.0) == 1


def test_knee_two_point_front_with_a_degenerate_point_is_the_other_point():
    # Without the floor both normalise to (1, 0) and (0, 1), equally near the ideal: the lower index (0.18) won.
    values = [[0.18, 52], [0.958, 1060]]
    assert knee_index(values, MAX_MIN, useful_share=0.0) == 0
    assert knee_index(values, MAX_MIN) == 1


def test_useful_mask_by_hand():
    values = [[0.18, 1.7], [0.49, 2.0], [0.4899, 2.1], [0.98, 4.3], [0.50, 9.0]]
    # floor 0.49, inclusive; row 4 is dominated but still useful: the mask is about accuracy only
    assert useful_mask(values, MAX_MIN).tolist() == [False, True, False, True, True]
    # a quarter of the best: 0.245
    assert useful_mask(values, MAX_MIN, share=0.25).tolist() == [False, True, True, True, True]
    assert useful_mask(values, MAX_MIN, share=0.0).all()


def test_useful_mask_and_knee_are_scale_free():
    percent = [[100 * a, s] for a, s in DEGENERATE_FRONT]
    assert useful_mask(percent, MAX_MIN).tolist() == useful_mask(DEGENERATE_FRONT, MAX_MIN).tolist()
    assert knee_index(percent, MAX_MIN) == 2
    sizes_in_kib = [[a, s - 3.0] for a, s in DEGENERATE_FRONT]  # log10 of a size unit 1000x larger
    assert knee_index(sizes_in_kib, MAX_MIN) == 2


def test_useful_mask_keeps_everything_without_a_positive_maximised_first_objective():
    assert useful_mask([[0.02, 10], [0.9, 1]], ["minimize", "minimize"]).all()  # an error rate first
    assert useful_mask([[0.0, 10], [0.0, 1]], MAX_MIN).all()  # best accuracy 0: no floor
    assert useful_mask(np.empty((0, 2)), MAX_MIN).tolist() == []
    with pytest.raises(ValueError, match=r"share: must be in \[0, 1\], got 1.5"):
        useful_mask([[0.9, 1]], MAX_MIN, share=1.5)


def test_useful_mask_share_one_keeps_only_the_best():
    # share 1 is allowed: the floor is the best accuracy itself, 0.95 (both rows that reach it)
    assert useful_mask([[0.9, 1], [0.95, 2], [0.95, 3]], MAX_MIN, share=1.0).tolist() == [False, True, True]


def test_useful_mask_keeps_negative_values_when_the_best_is_zero():
    # best 0 is not positive: no floor, so -0.5 stays although it is below 0.5 * 0
    assert useful_mask([[0.0, 10], [-0.5, 1]], MAX_MIN).tolist() == [True, True]


def test_knee_duplicates_and_errors():
    assert knee_index([[0.9, 10], [0.9, 10]], MAX_MIN) == 0
    with pytest.raises(ValueError, match="values: need at least one row"):
        knee_index(np.empty((0, 2)), MAX_MIN)


# --------------------------------------------------------------------------- select_index

ACC = [0.90, 0.95, 0.93, 0.95, 0.80]
PARAMS = [100, 500, 200, 300, 50]
BYTES = [400, 2000, 800, 1200, 200]


def test_select_no_constraint_best_accuracy_fewer_params_wins_tie():
    # rows 1 and 3 both 0.95; row 3 has fewer params
    assert select_index(ACC, PARAMS, BYTES) == 3


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"max_params": 250}, 2),      # rows 0, 2, 4 -> best 0.93
        ({"max_params": 300}, 3),      # inclusive: row 3 qualifies
        ({"max_bytes": 1000}, 2),      # rows 0, 2, 4
        ({"max_bytes": 400}, 0),       # rows 0, 4
        ({"min_accuracy": 0.94}, 3),   # rows 1, 3
        ({"min_accuracy": 0.95}, 3),   # inclusive
    ],
)
def test_select_each_constraint(kwargs, expected):
    assert select_index(ACC, PARAMS, BYTES, **kwargs) == expected


def test_select_combined_constraints():
    assert select_index(ACC, PARAMS, BYTES, max_params=250, min_accuracy=0.91) == 2
    assert select_index(ACC, PARAMS, BYTES, max_bytes=500, min_accuracy=0.85) == 0
    assert select_index(ACC, PARAMS, BYTES, max_params=400, max_bytes=1000, min_accuracy=0.8) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"max_params": 10}, {"min_accuracy": 0.99}, {"max_params": 100, "min_accuracy": 0.95}],
)
def test_select_impossible_returns_none(kwargs):
    assert select_index(ACC, PARAMS, BYTES, **kwargs) is None


def test_select_tie_breaking_and_edges():
    # same accuracy: fewer params first, then lower index
    assert select_index([0.9, 0.9, 0.9], [20, 10, 10], [1, 1, 1]) == 1
    assert select_index([], [], []) is None
    # NaN accuracy never qualifies
    assert select_index([np.nan, 0.5], [1, 2], [1, 2]) == 1
    with pytest.raises(ValueError, match="accuracy, params, bytes_: must have the same length"):
        select_index([0.9, 0.8], [1], [1, 2])


def test_select_flattens_column_vectors():
    # the same rows as ACC, PARAMS, BYTES as [n, 1] columns: params <= 250 and bytes <= 1000
    # leave rows 0, 2, 4, accuracy >= 0.85 rows 0, 2 -> 0.93 (row 2)
    def column(xs):
        return np.array(xs)[:, None]

    got = select_index(column(ACC), column(PARAMS), column(BYTES), max_params=250, max_bytes=1000, min_accuracy=0.85)
    assert got == 2


@pytest.mark.parametrize("constraint", [{"max_params": 10}, {"max_bytes": 10}])
def test_select_nan_accuracy_never_qualifies_under_a_size_constraint(constraint):
    # the only row meets the size limit but has no accuracy
    assert select_index([np.nan], [1], [1], **constraint) is None


def test_select_none_is_a_missing_value():
    # None reads as NaN: no accuracy never qualifies, an unknown size never meets a size limit
    assert select_index([None, 0.5], [1, 2], [1, 2]) == 1
    assert select_index([0.9, 0.8], [None, 2], [1, 2], max_params=10) == 1
    assert select_index([0.9, 0.8], [1, 2], [None, 2], max_bytes=10) == 1


def test_public_surface():
    assert sorted(pareto.__all__) == sorted(
        ["first_dominators", "hypervolume", "knee_index", "pareto_front_mask", "pareto_ranks", "select_index",
         "useful_mask"]
    )
    # numpy only: no heavy frameworks pulled in by the module itself
    source = open(pareto.__file__).read()
    for banned in ("import torch", "import ray", "import optuna", "open("):
        assert banned not in source
