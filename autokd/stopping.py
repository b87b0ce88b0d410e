"""Pareto-aware successive halving: which trials keep training at each rung.

Stock ASHA ranks trials by accuracy alone, so at every rung the widest students win and
small students never finish. Here a trial's size is known before it trains, so the
comparison at a rung is a Pareto one over (accuracy at this rung, size): a trial continues
when it is in the top 1/eta of its rung by non-dominated rank, and small students compete
with small students. Pure logic, no Ray: `search.py` wraps it in a Ray Tune scheduler.

    >>> rungs = ParetoRungs(grace_epochs=1, eta=2, max_epochs=4)
    >>> rungs.milestones
    [1, 2]
    >>> rungs.keep_training("a", epoch=1, accuracy=0.9, size=1000)   # too few at the rung yet
    True
"""

from __future__ import annotations

import math

import numpy as np

from autokd.pareto import pareto_ranks


class ParetoRungs:
    def __init__(self, grace_epochs: int, eta: int, max_epochs: int):
        if grace_epochs < 1 or eta < 2:
            raise ValueError(f"grace_epochs must be >= 1 and eta >= 2, got {grace_epochs} and {eta}")
        self.eta = eta
        self.milestones = []
        milestone = grace_epochs
        while milestone < max_epochs:
            self.milestones.append(milestone)
            milestone *= eta
        self._recorded: dict[int, dict[str, tuple[float, float]]] = {m: {} for m in self.milestones}

    def keep_training(self, trial_id: str, epoch: int, accuracy: float, size: float) -> bool:
        """Record a result; False when the trial should stop at this rung."""
        if epoch not in self._recorded:
            return True
        rung = self._recorded[epoch]
        rung[trial_id] = (accuracy, size)
        if len(rung) < self.eta:  # asynchronous: too few peers yet to judge, let it go on
            return True
        ids = list(rung)
        points = np.array([rung[i] for i in ids], dtype=float)
        ranks = pareto_ranks(points, ["maximize", "minimize"])
        order = np.lexsort((-points[:, 0], ranks))  # by front, then by accuracy within a front
        position = int(np.nonzero(np.array(ids)[order] == trial_id)[0][0])
        return position < math.ceil(len(ids) / self.eta)
