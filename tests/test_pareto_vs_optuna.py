"""autokd.pareto against Optuna's own non-dominated sort, Pareto front and hypervolume.

We keep our implementations: they take values in original units with one direction per
objective (accuracy maximised, log10 size minimised: the study's hypervolume space) and need no
study or trials; Optuna's work on losses only. These tests hold both to the same answers on
random point sets with many ties and duplicate rows, 2 and 3 objectives, mixed directions.

Optuna's functions used: `Study.best_trials` (public), and the private
`optuna.study._multi_objective._fast_non_domination_rank` and `optuna._hypervolume.compute_hypervolume`
(the functions its samplers and `plot_hypervolume_history` use; optuna is pinned to 5.x).
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _fast_non_domination_rank

from autokd.pareto import hypervolume, pareto_front_mask, pareto_ranks
from autokd.results import log_sizes

SEEDS = range(8)


def _signs(directions: list[str]) -> np.ndarray:
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def _random_points(rng: np.random.Generator, m: int, kind: str) -> tuple[np.ndarray, list[str]]:
    """Points in original units and a random mix of directions.

    "ties": integers 0..4, so most points share coordinates with others and many rows repeat.
    "continuous": uniform floats with a few rows copied, so exact duplicates still occur.
    """
    n = int(rng.integers(1, 80))
    if kind == "ties":
        points = rng.integers(0, 5, size=(n, m)).astype(float)
    else:
        points = rng.random((n, m))
        copies = rng.integers(0, n, size=n // 5)
        points = np.vstack([points, points[copies]])
        points = points[rng.permutation(len(points))]
    directions = [str(d) for d in rng.choice(["maximize", "minimize"], size=m)]
    return points, directions


def _study_points(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """Trial-like rows: accuracy (rounded to a 200-sample validation split, so ties) then sizes in params."""
    params = np.round(10 ** rng.uniform(1.5, 5.5, size=n))
    accuracy = np.round(np.clip(0.5 + 0.08 * np.log10(params) + rng.normal(0, 0.05, n), 0, 1) * 200) / 200
    columns = [accuracy, params] + ([np.round(params * rng.uniform(2, 4, size=n))] if m == 3 else [])
    return np.column_stack(columns)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_ranks_match_optunas_fast_non_domination_rank(seed, m, kind):
    points, directions = _random_points(np.random.default_rng(seed), m, kind)
    expected = _fast_non_domination_rank(points * _signs(directions))  # Optuna: losses, 0 = first front
    np.testing.assert_array_equal(pareto_ranks(points, directions), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_front_matches_optunas_best_trials(seed, m, kind):
    points, directions = _random_points(np.random.default_rng(seed), m, kind)
    study = optuna.create_study(directions=directions)
    study.add_trials([optuna.trial.create_trial(values=row.tolist()) for row in points])
    on_optunas_front = sorted(t.number for t in study.best_trials)  # duplicates of a front point are all on it
    assert np.flatnonzero(pareto_front_mask(points, directions)).tolist() == on_optunas_front


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_hypervolume_matches_optuna_with_ties_and_points_beyond_the_reference(seed, m, kind):
    rng = np.random.default_rng(seed)
    points, directions = _random_points(rng, m, kind)
    signs = _signs(directions)
    loss = points * signs
    # A reference point inside the cloud: some points lie beyond it in one objective or more,
    # and some sit exactly on it (integer ties): none of those bound any volume.
    reference_loss = np.quantile(loss, 0.8, axis=0) if kind == "continuous" else np.where(signs > 0, 3.0, -1.0)
    inside = np.all(loss <= reference_loss, axis=1)
    expected = compute_hypervolume(loss[inside], reference_loss)  # Optuna needs every point within the reference
    got = hypervolume(points, directions, reference_loss * signs)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [2, 3])
def test_study_shaped_hypervolume_in_log_size_matches_optuna(seed, m):
    """The study's case: accuracy maximised, sizes minimised on a log10 axis, reference (0, log10 limit)."""
    rng = np.random.default_rng(seed)
    points = log_sizes(_study_points(rng, m, n=int(rng.integers(5, 120))))
    directions = ["maximize"] + ["minimize"] * (m - 1)
    reference = np.array([0.0] + [np.log10(50_000.0) + 0.6 * k for k in range(m - 1)])  # some trials break the limit
    signs = _signs(directions)
    loss, reference_loss = points * signs, reference * signs
    inside = np.all(loss <= reference_loss, axis=1)
    assert 0 < inside.sum() < len(points), "the reference point should cut the cloud: the test proves less"
    np.testing.assert_array_equal(pareto_ranks(points, directions), _fast_non_domination_rank(loss))
    assert hypervolume(points, directions, reference) == pytest.approx(
        compute_hypervolume(loss[inside], reference_loss), rel=1e-12, abs=1e-12)
