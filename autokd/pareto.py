"""Pareto fronts, hypervolume, knee and constrained selection over plain arrays.

Every function takes an ``[n, m]`` array of objective values in their original units plus one
direction per objective (``"maximize"`` or ``"minimize"``), so callers never flip signs
themselves. Internally everything is turned into "loss" form (minimise all) by negating the
maximised columns. Numpy only: no torch, Ray, Optuna or file I/O in here.

The knee is sought only among front points in the useful range: with accuracy first, points
below half the best accuracy are left out of it (`useful_mask`, `knee_index`), so a
near-chance tiny student cannot stretch the accuracy scale and become the knee.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "first_dominators",
    "hypervolume",
    "knee_index",
    "pareto_front_mask",
    "pareto_ranks",
    "select_index",
    "useful_mask",
]

USEFUL_SHARE = 0.5

_DIRECTIONS = ("maximize", "minimize")


# --------------------------------------------------------------------------- validation


def _direction_signs(directions: Sequence[str]) -> np.ndarray:
    """+1 for "minimize", -1 for "maximize": multiplying by it gives loss form."""
    if isinstance(directions, str) or not isinstance(directions, Sequence):
        raise ValueError(
            f"directions: must be a sequence of {_DIRECTIONS!r}, got {directions!r}"
        )
    if len(directions) == 0:
        raise ValueError("directions: must name at least one objective, got []")
    bad = [d for d in directions if d not in _DIRECTIONS]
    if bad:
        raise ValueError(
            f"directions: each must be one of {_DIRECTIONS!r}, got {list(directions)!r}"
        )
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def _loss_values(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Validated ``[n, m]`` float copy of ``values`` with every objective to be minimised."""
    signs = _direction_signs(directions)
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 and arr.ndim <= 1:
        arr = arr.reshape(0, len(signs))
    if arr.ndim != 2 or arr.shape[1] != len(signs):
        raise ValueError(
            f"values: must have shape (n, {len(signs)}) to match {len(signs)} directions, "
            f"got shape {arr.shape}"
        )
    nan_rows = np.flatnonzero(np.isnan(arr).any(axis=1))
    if nan_rows.size:
        raise ValueError(
            f"values: rows must not contain NaN (drop failed trials first), "
            f"got NaN in rows {nan_rows[:10].tolist()}"
        )
    return arr * signs


# --------------------------------------------------------------------------- ranks


def _dominated_by_matrix(loss: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True when point j dominates point i (all <=, at least one <)."""
    n = loss.shape[0]
    all_le = np.ones((n, n), dtype=bool)
    any_lt = np.zeros((n, n), dtype=bool)
    for col in loss.T:
        all_le &= col[None, :] <= col[:, None]
        any_lt |= col[None, :] < col[:, None]
    return all_le & any_lt


def _nondomination_ranks(loss: np.ndarray) -> np.ndarray:
    """Front index of every row of a loss array (0 = non-dominated)."""
    n = loss.shape[0]
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    dominated_by = _dominated_by_matrix(loss)
    # Peel fronts Kahn-style: a point joins the current front once no unassigned point
    # dominates it. Each column of the matrix is subtracted once, so peeling is O(n^2) overall.
    n_dominators = dominated_by.sum(axis=1)
    rank = 0
    while True:
        front = np.flatnonzero((n_dominators == 0) & (ranks < 0))
        if front.size == 0:
            break
        ranks[front] = rank
        n_dominators = n_dominators - dominated_by[:, front].sum(axis=1)
        rank += 1
    return ranks


def pareto_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-domination rank of every row: 0 = first Pareto front, 1 = second, ...

    A row dominates another when it is at least as good in every objective and strictly
    better in one. Equal rows never dominate each other, so duplicates share a rank.
    Rows with NaN are rejected; drop failed trials first.

    >>> pareto_ranks([[0.9, 100], [0.8, 50], [0.7, 80]], ["maximize", "minimize"]).tolist()
    [0, 0, 1]
    """
    return _nondomination_ranks(_loss_values(values, directions))


def pareto_front_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows on the first Pareto front (``pareto_ranks(...) == 0``).

    >>> pareto_front_mask([[0.9, 100], [0.8, 50], [0.7, 80]], ["maximize", "minimize"]).tolist()
    [True, True, False]
    """
    return pareto_ranks(values, directions) == 0


def first_dominators(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """For every row, the index of the first row that dominates it, or -1 when none does.

    >>> first_dominators([[0.9, 100], [0.8, 50], [0.7, 80], [0.6, 90]], ["maximize", "minimize"]).tolist()
    [-1, -1, 1, 1]
    """
    dominated_by = _dominated_by_matrix(_loss_values(values, directions))
    return np.where(dominated_by.any(axis=1), dominated_by.argmax(axis=1), -1)


# --------------------------------------------------------------------------- hypervolume


def _hypervolume_2d(loss: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by points that all strictly dominate ``ref`` (sort + sweep)."""
    order = np.lexsort((loss[:, 1], loss[:, 0]))
    x, y = loss[order, 0], loss[order, 1]
    best_y = np.minimum.accumulate(y)
    prev_best_y = np.concatenate(([ref[1]], best_y[:-1]))
    # Each point adds the strip between the previous best y and its own y (0 if not better).
    return float(np.sum((ref[0] - x) * (prev_best_y - best_y)))


def _hypervolume_loss(loss: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of one or more loss points that all strictly dominate ``ref``.

    One objective: a length. Two: a sweep. More: slice along the last objective and sum
    slab depth times the (m-1)-dimensional volume of the points already below the slab
    (never an empty set: `hypervolume` answers 0 for no point).
    """
    m = loss.shape[1]
    if m == 1:
        return float(ref[0] - loss[:, 0].min())
    if m == 2:
        return _hypervolume_2d(loss, ref)
    loss = loss[_nondomination_ranks(loss) == 0]
    loss = loss[np.argsort(loss[:, -1], kind="stable")]
    z = loss[:, -1]
    upper = np.append(z[1:], ref[-1])
    volume = 0.0
    for i in range(len(loss)):
        depth = upper[i] - z[i]
        if depth > 0:
            volume += depth * _hypervolume_loss(loss[: i + 1, :-1], ref[:-1])
    return float(volume)


def hypervolume(
    values: np.ndarray, directions: Sequence[str], reference_point: Sequence[float]
) -> float:
    """Volume of objective space dominated by ``values`` and bounded by ``reference_point``.

    Values and the reference point are in original units and directions (maximised
    objectives are flipped internally, reference point included). Points that do not
    strictly beat the reference point in every objective contribute nothing. Exact for any
    number of objectives; meant for fronts of up to a few hundred points with 2-3 objectives.

    >>> hypervolume([[0.75, 3.0], [0.5, 1.0]], ["maximize", "minimize"], [0.0, 4.0])
    1.75
    """
    loss = _loss_values(values, directions)
    ref = np.asarray(reference_point, dtype=float)
    if ref.shape != (loss.shape[1],):
        raise ValueError(
            f"reference_point: must have {loss.shape[1]} entries to match directions, "
            f"got shape {ref.shape}"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"reference_point: must be finite, got {ref.tolist()}")
    ref = ref * _direction_signs(directions)
    loss = loss[np.all(loss < ref, axis=1)]
    if loss.shape[0] == 0:
        return 0.0
    if not np.all(np.isfinite(loss)):
        return float("inf")  # an infinitely good coordinate dominates an unbounded box
    return _hypervolume_loss(loss, ref)


# --------------------------------------------------------------------------- knee


def useful_mask(values: np.ndarray, directions: Sequence[str], share: float = USEFUL_SHARE) -> np.ndarray:
    """Rows whose first objective is at least ``share`` of its best value: the useful range.

    The first objective is the quality one (validation accuracy). A student that gives up more
    than half the best accuracy (``share=0.5``) is no trade-off anyone picks, however small it
    is, and leaving it in would stretch the accuracy scale of the knee and of the plot. The rule
    is a ratio to the best, so it reads the same for accuracy as a fraction or a percentage and
    needs neither the number of classes nor the sizes; on ten classes (chance 0.1, best 0.97)
    the floor, 0.485, lies about halfway between chance and the best. Every row is kept when the
    first objective is minimised or its best value is not positive (no floor to take a share of).
    The best value of a column is always on the first front, so the floor is the front's own.

    >>> useful_mask([[0.97, 1000], [0.18, 52], [0.485, 200]], ["maximize", "minimize"]).tolist()
    [True, False, True]
    """
    loss = _loss_values(values, directions)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share: must be in [0, 1], got {share!r}")
    keep = np.ones(loss.shape[0], dtype=bool)
    if loss.shape[0] == 0 or directions[0] != "maximize":
        return keep
    first = -loss[:, 0]
    best = first.max()
    if best > 0:
        keep &= first >= share * best
    return keep


def knee_index(values: np.ndarray, directions: Sequence[str], *, useful_share: float = USEFUL_SHARE) -> int:
    """Index (into ``values``) of the knee of the first Pareto front, within its useful range.

    Rule: take the first front and drop the points below the useful range of the first
    objective (`useful_mask` with ``useful_share``: for accuracy, below half the best; they stay
    on the front, they are only no candidates for the knee). Normalise each objective over the
    remaining points to [0, 1] as a loss (best = 0, worst = 1; an objective that is constant
    there becomes 0). In 2-D the extreme points are then (0, 1) and (1, 0); in general the
    reference hyperplane is ``sum(x) = 1`` through the unit points. The knee is the point
    farthest *below* that line/hyperplane, i.e. with the largest ``(1 - sum(x)) / sqrt(m)``.
    If only 1 or 2 points remain, or none lies strictly below the line, fall back to the point
    closest (Euclidean) to the ideal point (0, ..., 0). Ties go to the lower index.

    >>> front = [[0.60, 1], [0.88, 3], [0.90, 20], [0.50, 0.5]]   # accuracy, size
    >>> knee_index(front, ["maximize", "minimize"])
    1
    >>> knee_index([[0.18, 52], [0.958, 1060]], ["maximize", "minimize"])   # 0.18 < 0.958 / 2
    1
    """
    loss = _loss_values(values, directions)
    if loss.shape[0] == 0:
        raise ValueError("values: need at least one row to find a knee, got 0 rows")
    front = np.flatnonzero((_nondomination_ranks(loss) == 0) & useful_mask(values, directions, useful_share))
    points = loss[front]
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    normed = np.where(hi > lo, (points - lo) / span, 0.0)
    m = loss.shape[1]
    if len(front) > 2 and m > 1:
        below = (1.0 - normed.sum(axis=1)) / np.sqrt(m)
        best = int(np.argmax(below))
        if below[best] > 1e-12:
            return int(front[best])
    return int(front[np.argmin(np.linalg.norm(normed, axis=1))])


# --------------------------------------------------------------------------- selection


def select_index(
    accuracy: Sequence[float],
    params: Sequence[float],
    bytes_: Sequence[float],
    *,
    max_params: float | None = None,
    max_bytes: float | None = None,
    min_accuracy: float | None = None,
) -> int | None:
    """Row with the best accuracy among rows meeting every given constraint, else None.

    Constraints are inclusive (``params <= max_params``, ``bytes_ <= max_bytes``,
    ``accuracy >= min_accuracy``); rows with NaN accuracy never qualify. Ties go to fewer
    params, then the lower index. Pass validation accuracy, never test accuracy.

    >>> select_index([0.9, 0.95, 0.95], [10, 30, 20], [40, 120, 80], max_params=15)
    0
    >>> select_index([0.9, 0.95, 0.95], [10, 30, 20], [40, 120, 80])
    2
    """
    acc = np.asarray(accuracy, dtype=float).reshape(-1)
    par = np.asarray(params, dtype=float).reshape(-1)
    size = np.asarray(bytes_, dtype=float).reshape(-1)
    if not (len(acc) == len(par) == len(size)):
        raise ValueError(
            "accuracy, params, bytes_: must have the same length, "
            f"got {len(acc)}, {len(par)}, {len(size)}"
        )
    ok = ~np.isnan(acc)
    if max_params is not None:
        ok &= par <= max_params
    if max_bytes is not None:
        ok &= size <= max_bytes
    if min_accuracy is not None:
        ok &= acc >= min_accuracy
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        return None
    # lexsort: last key is primary -> best accuracy, then fewest params, then lowest index.
    order = np.lexsort((candidates, par[candidates], -acc[candidates]))
    return int(candidates[order[0]])
