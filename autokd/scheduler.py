"""Tune schedulers for a study: no stopping, Pareto-aware successive halving, or stock ASHA.

The Pareto rule itself is pure and lives in `stopping.ParetoRungs`; this module feeds it
Tune's per-epoch results. Paired level-2 trials report once per seed at their last epoch and
are never stopped.
"""

from __future__ import annotations

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from autokd.spec import StudySpec
from autokd.stopping import ParetoRungs


class ParetoRungScheduler(FIFOScheduler):
    """Stops a trial at a rung only when `ParetoRungs` says so; a resumed study starts from its stored curves."""

    def __init__(self, spec: StudySpec, study: optuna.Study | None = None):
        super().__init__()
        stopping = spec.early_stopping
        self.rungs = ParetoRungs(stopping.grace_epochs, stopping.eta, spec.schedule.epochs)
        self.size_metric = spec.objectives[1]
        self._curves: dict[str, list[float]] = {}
        stored = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE,
                                                          optuna.trial.TrialState.PRUNED]) if study else []
        for trial in stored:
            curve, size = trial.user_attrs.get("val_accuracy_curve"), trial.user_attrs.get(self.size_metric)
            if curve and size is not None:
                self.rungs.finished(f"stored-{trial.number}", curve, size)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "val_accuracy" not in result or "val_accuracy_seeds" in result:
            return TrialScheduler.CONTINUE
        curve = self._curves.setdefault(trial.trial_id, [])
        if result["epoch"] > len(curve):  # once per epoch
            curve.append(float(result["val_accuracy"]))
        if result.get("epoch", 0) >= result.get("epochs", 0):
            return TrialScheduler.CONTINUE
        keep = self.rungs.keep_training(trial.trial_id, result["epoch"], result["val_accuracy"],
                                        result[self.size_metric])
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        curve = self._curves.pop(trial.trial_id, [])
        if curve and result and self.size_metric in result and "failure_reason" not in result:
            self.rungs.finished(trial.trial_id, curve, result[self.size_metric])

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._curves.pop(trial.trial_id, None)


def make_scheduler(spec: StudySpec, study: optuna.Study | None = None) -> TrialScheduler:
    stopping = spec.early_stopping
    if stopping.kind == "asha":
        return ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=spec.schedule.epochs,
                             grace_period=stopping.grace_epochs, reduction_factor=stopping.eta)
    if stopping.kind == "none":
        return FIFOScheduler()
    return ParetoRungScheduler(spec, study)
