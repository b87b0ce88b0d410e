"""The searcher: Optuna proposes, autokd checks, Tune runs; every outcome lands in the Optuna study.

`AutokdSearcher` extends Ray's `OptunaSearch` where it records results. Fixes to stock
OptunaSearch: a size constraint is checked before a trial trains (infeasible configs never
reach Ray); a NaN, an exception or a missing metric ends the trial FAIL with its reason (stock
leaves NaN trials RUNNING and aborts on a missing metric); a trial stopped before its last
epoch is PRUNED, never COMPLETE. With a two-level plan (`levels.TwoLevelPlan`) the next trial
is planned (level, role, architecture, paired seeds) before the sampler fills the rest.

OptunaSearch keeps its study and open trials in private fields (`_ot_study`, `_ot_trials`,
`_space`, `_suggest_from_define_by_run_func`); `tests/test_private_apis.py` fails loudly if an
upgrade renames them.

The searcher's decisions are small pure functions above the class (`broken_constraints`,
`trial_outcome`), tested fast in `tests/test_searcher.py` and mutation-tested (`make mutation`);
the class around them is driven by Ray and tested end to end.
"""

from __future__ import annotations

import math
import time

import optuna
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from autokd.archs import code_allowed
from autokd.errors import AutokdError
from autokd.levels import (ALL_SECTIONS, FINISHED, WAIT, Proposal, TwoLevelPlan, config_role, sampled_sections,
                           trial_config)
from autokd.paths import relative_paths
from autokd.results import open_storage, trained_epochs
from autokd.sizes import arch_size
from autokd.space import SearchSpace
from autokd.spec import INT8_ACCURACY_METRIC, StudySpec, TrainConfig, derived_seed
from autokd.study_store import DRIVER, HEARTBEAT_EVERY_S, beat, make_sampler, record_running

# Stop after this many infeasible proposals in a row: the space and the constraints disagree.
MAX_INFEASIBLE_IN_A_ROW = 200
States = optuna.trial.TrialState


def broken_constraints(size: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The size constraints a config breaks, as "<metric> <size> > <limit>"; [] when it is feasible.

    A size equal to its limit is within it (the constraint is an upper bound, inclusive).

        >>> broken_constraints({"params": 5000, "macs": 10}, {"params": 4096})
        ['params 5000 > 4096']
    """
    return [f"{metric} {size[metric]} > {limit:g}" for metric, limit in limits.items() if size[metric] > limit]


def trial_outcome(result: dict, metrics: list[str], error: bool = False) -> tuple[optuna.trial.TrialState, dict]:
    """How a trial that Tune reports finished ends in the study: (state, what `Study.tell` and the attrs get).

    FAIL with `failure_reason` (the worker's reason, a dead worker, or a missing/non-finite objective);
    PRUNED with `pruned_reason` when it stopped before its last epoch; else COMPLETE with `values`.
    """
    values = [result.get(m) for m in metrics]
    stopped = result.get("epoch", 0) < result.get("epochs", 0)
    # val_accuracy_int8 is measured after the last epoch only: a trial stopped early has none
    missing = [m for m, v in zip(metrics, values) if (v is None or not math.isfinite(float(v)))
               and not (stopped and m == INT8_ACCURACY_METRIC)]
    if result.get("failure_reason") or error:
        return States.FAIL, {"failure_reason": result.get("failure_reason")
                             or "the trial's worker process died or raised (see Ray logs)"}
    if missing:
        return States.FAIL, {"failure_reason": f"missing or non-finite metric(s) {missing} in the last result"}
    if stopped:
        return States.PRUNED, {"pruned_reason": f"early-stopped at epoch {result['epoch']} of {result['epochs']}"}
    return States.COMPLETE, {"values": [float(v) for v in values]}


# The class is Ray's and is tested end to end (slow); mutation testing covers the decisions above.
# pragma: no mutate block
class AutokdSearcher(OptunaSearch):
    def __init__(self, space: SearchSpace, spec: StudySpec, base: TrainConfig, input_shape, num_classes,
                 storage_url: str, trials_so_far: int, plan: TwoLevelPlan | None = None):
        self.space, self.spec, self.base, self.plan = space, spec, base, plan
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.metrics = list(spec.objectives)
        self.sections = ALL_SECTIONS  # what the sampler fills for the trial being asked
        super().__init__(space=self.suggest_params, metric=self.metrics,
                         mode=["max"] + ["min"] * (len(self.metrics) - 1),
                         sampler=make_sampler(spec, trials_so_far), study_name=spec.name,
                         storage=open_storage(storage_url, fast_commits=True))
        self._curves: dict[str, list[float]] = {}
        self._epochs_seen: dict[str, int] = {}
        self._last_beat = time.monotonic()
        self._epochs_trained = trained_epochs(self._ot_study)
        self._asking: optuna.Trial | None = None

    def suggest_params(self, trial: optuna.Trial) -> None:
        self.space.suggest(trial, self.sections)

    def suggest(self, trial_id: str) -> dict | None:
        if self.spec.budget.epochs is not None and self._epochs_trained >= self.spec.budget.epochs:
            return self.FINISHED
        for _ in range(MAX_INFEASIBLE_IN_A_ROW):
            planned = self._plan()
            if planned in (WAIT, FINISHED):
                return None if planned == WAIT else self.FINISHED
            ot_trial = self._ot_study.ask()
            self._asking = ot_trial  # RUNNING from here on: Ctrl-C must find it (`claim_asked_trial`)
            attrs = ot_trial.user_attrs or planned.attrs  # an enqueued trial brings its own (a re-queued one too)
            # Ours at once: another driver starting now must not take it for an orphan (study_store).
            ot_trial.set_user_attr("driver", DRIVER)
            self.sections = sampled_sections(config_role(attrs))
            params = self._suggest_from_define_by_run_func(self._space, ot_trial)
            try:
                config = trial_config(self.space, self.base, attrs, params, self.spec.search.level2_epochs)
                size = arch_size(config.student, self.input_shape, self.num_classes).as_dict()
            except (AutokdError, ValueError) as error:
                self._finish(ot_trial, States.FAIL, failure_reason=f"invalid config: {error}", **attrs)
                continue
            seeds = list(attrs.get("seeds") or [derived_seed(self.base.seed, ot_trial.number)])
            config.seed = seeds[0]
            # `driver` tells apart the trials of several drivers adding to one shared study. The stored config's
            # paths are relative to the study file; the worker gets them absolute.
            stored = relative_paths(config, self.spec.folder).model_dump()
            record_running(self._ot_study, ot_trial, {**attrs, "config": stored, "seed": config.seed, **size})
            limits = self.spec.size_limits()
            broken = broken_constraints(size, limits)
            for metric, limit in limits.items():
                ot_trial.set_constraint(metric, size[metric] - limit)
            if broken:  # known before training: never trained, never on the front
                self._finish(ot_trial, States.PRUNED, pruned_reason="infeasible: " + ", ".join(broken))
                continue
            self._ot_trials[trial_id] = ot_trial
            self._asking = None
            return {"config": config.model_dump(), "trial_number": ot_trial.number, "size": size, "seeds": seeds,
                    "pack": self.spec.search.pack_seeds, "allow_code": code_allowed(),
                    "report_every_epoch": self.spec.early_stopping.kind != "none"}
        raise AutokdError(f"{self.spec.source}: constraints: {MAX_INFEASIBLE_IN_A_ROW} proposals in a row broke "
                          f"{self.spec.constraints}; widen the constraints or shrink the search space")

    def claim_asked_trial(self) -> None:
        """Mark the trial being asked (RUNNING, not yet handed to Tune) as this driver's, so that
        `study_store.recover_interrupted(own_only=True)` re-queues it after Ctrl-C."""
        if self._asking is not None and self._asking.user_attrs.get("driver") != DRIVER:
            self._asking.set_user_attr("driver", DRIVER)

    def _plan(self) -> Proposal | str:
        """The next proposal; enqueued first when it fixes parameters (a waiting trial always goes first:
        `ask` takes it). A flat search has no plan and reads nothing here."""
        if self.plan is None or self._ot_study.get_trials(deepcopy=False, states=(States.WAITING,)):
            return Proposal({})
        planned = self.plan.next_proposal(self._ot_study)
        if isinstance(planned, Proposal) and planned.params is not None:
            self._ot_study.enqueue_trial(planned.params, user_attrs=planned.attrs)
        return planned

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._count_epochs(trial_id, result)
        if "val_accuracy" in result and "val_accuracy_seeds" not in result:
            curve = self._curves.setdefault(trial_id, [])
            if result.get("epoch", len(curve) + 1) > len(curve):  # once per epoch
                curve.append(float(result["val_accuracy"]))
        self.beat_if_due()

    def _count_epochs(self, trial_id: str, result: dict) -> None:
        trained = int(result.get("epochs_trained", 0))
        self._epochs_trained += max(0, trained - self._epochs_seen.get(trial_id, 0))
        self._epochs_seen[trial_id] = max(trained, self._epochs_seen.get(trial_id, 0))

    def beat_if_due(self) -> None:
        if time.monotonic() - self._last_beat > HEARTBEAT_EVERY_S:
            beat(self._ot_study)
            self._last_beat = time.monotonic()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.pop(trial_id, None)
        if ot_trial is None:
            return
        result = result or {}
        # Tune skips on_trial_result for the result a scheduler stops the trial on.
        if "val_accuracy" in result and result.get("epoch", 0) > len(self._curves.get(trial_id, [])):
            self.on_trial_result(trial_id, result)
        self._count_epochs(trial_id, result)
        curve = self._curves.pop(trial_id, [])
        curve = result.get("val_accuracy_curve") or curve  # a trial that reports only at its end sends it whole
        trained = self._epochs_seen.pop(trial_id, 0)
        attrs = {"val_accuracy_curve": curve, "epochs_trained": trained,
                 "train_seconds": result.get("train_seconds"), "node": result.get("node"),
                 "node_id": result.get("node_id"),
                 "device": result.get("device"), "val_accuracy_seeds": result.get("val_accuracy_seeds"),
                 "visible_devices": result.get("visible_devices"),
                 # quantize.int8: the int8 accuracy, and the fp32 one beside it (the objective may be either)
                 "val_accuracy_int8": result.get("val_accuracy_int8"),
                 "val_accuracy": result.get("val_accuracy") if "val_accuracy_int8" in result else None}
        state, outcome = trial_outcome(result, self.metrics, error)
        self._finish(ot_trial, state, **outcome, **attrs)

    def _finish(self, ot_trial, state, values=None, **attrs) -> None:
        # The curve as intermediate values (curves in optuna-dashboard), for completed trials only: TPE
        # scores a PRUNED trial by its last intermediate value through `study.direction`, which a
        # multi-objective study refuses (Optuna 5.1) - stopped trials keep theirs in val_accuracy_curve.
        # One transaction, then the state: a driver killed while it records a trial leaves it RUNNING
        # (re-queued on resume), with all of its results or none.
        curve = (attrs.get("val_accuracy_curve") or []) if state == States.COMPLETE else []
        record_running(self._ot_study, ot_trial, {key: value for key, value in attrs.items() if value is not None},
                       curve)
        self._ot_study.tell(ot_trial, values, state=state)
        if ot_trial is self._asking:
            self._asking = None
        self.beat_if_due()


class ReraiseCtrlC(Callback):
    """Raises KeyboardInterrupt at the next step of Tune's controller once Ctrl-C was typed. Python raises
    it at whatever bytecode the main thread runs next, and when that is a finalizer (an ObjectRef's
    `__del__`, freed all the time in Tune's loop) the exception is printed as ignored and lost: the search
    then went on to its whole budget (tests/test_terminal.py's Ctrl-C tests, about 1 run in 3)."""

    def on_step_begin(self, iteration, trials, **info) -> None:
        from autokd.search import CTRL_C  # the search records Ctrl-C; it imports this module, not the reverse

        if CTRL_C.is_set():
            raise KeyboardInterrupt


class DriverHeartbeat(Callback):
    """Beats on every loop of Tune's controller, results or not: without early stopping a trial reports only
    at its end and may run longer than `study_store.DRIVER_STALE_S`, after which another driver would take
    this one's trials for orphans."""

    def __init__(self, searcher: AutokdSearcher):
        self.searcher: AutokdSearcher | None = searcher

    def __getstate__(self) -> dict:
        return {"searcher": None}  # pickled with Tune's experiment state; the study's storage is not

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.searcher is not None:
            self.searcher.beat_if_due()
