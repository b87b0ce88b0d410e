"""Pareto-aware successive halving: which trials keep training at each rung.

Stock ASHA ranks trials by accuracy alone, so at every rung the widest students win and
small students never finish. Here a trial's size is known before it trains, so the
comparison at a rung is a Pareto one over (accuracy at this rung, size). A trial continues
past a rung when either holds:

- it is in the top 1/eta of its rung by non-dominated rank, ties within a front broken by
  crowding distance (NSGA-II's), so the smallest and the most accurate of a front go first
  and small students compete with small students;
- the full-fidelity front can still move because of it: no trial already on that front was
  at least as accurate at this same epoch with no more parameters.

It stops only when both say no. The rung rule alone spends epochs on trials the finished
front already beats; the front rule alone has no say before the first trial finishes.
benchmarks/stopping_replay.py measures each rule (and an oracle) on recorded curves,
benchmarks/early_stopping.py the real searches. Pure logic, no Ray:
`search.py` wraps it in a Ray Tune scheduler and seeds it from the study on resume.

    >>> rungs = ParetoRungs(grace_epochs=1, eta=2, max_epochs=4)
    >>> rungs.milestones
    [1, 2]
    >>> rungs.keep_training("a", epoch=1, accuracy=0.9, size=1000)   # too few at the rung yet
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autokd.pareto import pareto_ranks

_DIRECTIONS = ["maximize", "minimize"]


def crowding_distances(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of one front: extremes are infinite.

    Per objective, the rows are sorted and each inner row gets the gap between its two
    neighbours divided by the objective's range; the distance is the sum over objectives.
    """
    count = len(points)
    distances = np.zeros(count)
    if count <= 2:
        return np.full(count, np.inf)
    for column in points.T:
        order = np.argsort(column, kind="stable")
        spread = column[order[-1]] - column[order[0]]
        distances[order[[0, -1]]] = np.inf
        if spread > 0:
            distances[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / spread
    return distances


class ParetoRungs:
    def __init__(self, grace_epochs: int, eta: int, max_epochs: int):
        if grace_epochs < 1 or eta < 2:
            raise ValueError(f"grace_epochs must be >= 1 and eta >= 2, got {grace_epochs} and {eta}")
        self.eta, self.max_epochs = eta, max_epochs
        self.milestones = []
        milestone = grace_epochs
        while milestone < max_epochs:
            self.milestones.append(milestone)
            milestone *= eta
        self._recorded: dict[int, dict[str, tuple[float, float]]] = {m: {} for m in self.milestones}
        # The full-fidelity front: (accuracy curve, size) of its trials.
        self._front: list[tuple[list[float], float]] = []

    def keep_training(self, trial_id: str, epoch: int, accuracy: float, size: float) -> bool:
        """Record a result; False when the trial should stop at this rung."""
        if epoch not in self._recorded:
            return True
        self._recorded[epoch][trial_id] = (accuracy, size)
        return self._in_top_fraction(trial_id, epoch) or not self._front_beats(epoch, accuracy, size)

    def finished(self, trial_id: str, curve: Sequence[float], size: float) -> None:
        """Record a trial's accuracy curve when it ends (or when a resumed study replays it).

        Its rung results are recorded if they were not; a full-length curve joins the front.
        """
        for milestone in self.milestones:
            if milestone <= len(curve):
                self._recorded[milestone].setdefault(trial_id, (float(curve[milestone - 1]), float(size)))
        if len(curve) < self.max_epochs:
            return
        candidates = [*self._front, (list(curve), float(size))]
        points = np.array([(c[-1], s) for c, s in candidates], dtype=float)
        ranks = pareto_ranks(points, _DIRECTIONS)
        self._front = [candidate for candidate, rank in zip(candidates, ranks) if rank == 0]

    def _in_top_fraction(self, trial_id: str, epoch: int) -> bool:
        rung = self._recorded[epoch]
        if len(rung) < self.eta:  # asynchronous: too few peers yet to judge, let it go on
            return True
        ids = list(rung)
        points = np.array([rung[i] for i in ids], dtype=float)
        ranks = pareto_ranks(points, _DIRECTIONS)
        crowding = np.zeros(len(ids))
        for rank in np.unique(ranks):
            members = ranks == rank
            # log size: a student ten times smaller is as far away whatever its size
            crowding[members] = crowding_distances(np.column_stack([points[members, 0],
                                                                    np.log10(np.maximum(points[members, 1], 1.0))]))
        order = np.lexsort((-points[:, 0], -crowding, ranks))  # by front, the most isolated, the most accurate
        position = int(np.nonzero(np.array(ids)[order] == trial_id)[0][0])
        return position < math.ceil(len(ids) / self.eta)

    def _front_beats(self, epoch: int, accuracy: float, size: float) -> bool:
        """True when a front trial dominated (accuracy, size) at this same epoch."""
        for curve, front_size in self._front:
            then = curve[epoch - 1]
            if front_size <= size and then >= accuracy and (front_size < size or then > accuracy):
                return True
        return False
