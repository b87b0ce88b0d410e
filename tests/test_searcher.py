"""The searcher's decisions, fast: which configs break a size constraint (never trained), and how a
finished trial ends in the study. The Ray-driven class around them is tested end to end (test_search.py)."""

from __future__ import annotations

import math

import optuna
import pytest

from autokd.searcher import broken_constraints, trial_outcome
from autokd.sizes import arch_size, model_size
from autokd.spec import StudySpec
from autokd.zoo import build_model

States = optuna.trial.TrialState
METRICS = ["val_accuracy", "params"]


def test_a_size_above_its_limit_breaks_it_and_one_at_or_below_does_not():
    limits = {"params": 1000, "bytes_fp32": 4000.0}
    assert broken_constraints({"params": 1001, "bytes_fp32": 4004}, limits) == ["params 1001 > 1000",
                                                                                "bytes_fp32 4004 > 4000"]
    assert broken_constraints({"params": 1000, "bytes_fp32": 4004}, limits) == ["bytes_fp32 4004 > 4000"]
    assert broken_constraints({"params": 999, "bytes_fp32": 4000}, limits) == []  # at the limit: feasible
    assert broken_constraints({"params": 10**9}, {}) == []  # no constraint, nothing broken


@pytest.mark.parametrize("width", [16, 64, 128])  # 1210, 4810, 9610 params
def test_the_constraint_decision_agrees_with_the_size_of_the_built_student(width):
    """The study's `params <= 4096` against the parameter count of the student actually built."""
    spec = StudySpec.model_validate({
        "name": "c", "data": {"name": "digits"}, "student": {"family": "mlp", "depth": 1, "width": width},
        "distill": {"w_ce": 1.0, "w_kd": 0.0},
        "search_space": {"params": {"schedule.lr": {"type": "float", "low": 0.001, "high": 0.01}}},
        "constraints": ["params <= 4096"]})
    arch = {"family": "mlp", "depth": 1, "width": width}
    built = model_size(build_model(arch, (64,), 10, seed=0), (64,)).params  # counted on the real module
    size = arch_size(arch, (64,), 10).as_dict()
    assert size["params"] == built
    broken = broken_constraints(size, spec.size_limits())
    assert bool(broken) == (built > 4096)
    assert broken == ([f"params {built} > 4096"] if built > 4096 else [])


def test_a_finished_trial_completes_with_its_objectives_as_floats():
    state, outcome = trial_outcome({"val_accuracy": 0.75, "params": 1234, "epoch": 3, "epochs": 3}, METRICS)
    assert state == States.COMPLETE
    assert outcome == {"values": [0.75, 1234.0]} and all(type(v) is float for v in outcome["values"])


def test_a_result_without_epochs_completes():
    state, outcome = trial_outcome({"val_accuracy": 0.5, "params": 10}, METRICS)
    assert (state, outcome) == (States.COMPLETE, {"values": [0.5, 10.0]})


def test_a_trial_stopped_before_its_last_epoch_is_pruned_with_where():
    state, outcome = trial_outcome({"val_accuracy": 0.5, "params": 10, "epoch": 2, "epochs": 5}, METRICS)
    assert (state, outcome) == (States.PRUNED, {"pruned_reason": "early-stopped at epoch 2 of 5"})


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_a_missing_or_non_finite_objective_fails_the_trial_naming_it(bad):
    result = {"val_accuracy": 0.5, "epoch": 3, "epochs": 3}
    if bad is not None:
        result["params"] = bad
    state, outcome = trial_outcome(result, METRICS)
    assert (state, outcome) == (States.FAIL,
                                {"failure_reason": "missing or non-finite metric(s) ['params'] in the last result"})


def test_failure_reasons_win_over_everything_else():
    result = {"val_accuracy": 0.5, "params": 10, "epoch": 1, "epochs": 3, "failure_reason": "ValueError: x"}
    assert trial_outcome(result, METRICS) == (States.FAIL, {"failure_reason": "ValueError: x"})
    assert trial_outcome({"val_accuracy": 0.5, "params": 10}, METRICS, error=True) == (
        States.FAIL, {"failure_reason": "the trial's worker process died or raised (see Ray logs)"})
    assert trial_outcome({}, METRICS, error=True)[1] == {
        "failure_reason": "the trial's worker process died or raised (see Ray logs)"}


def test_an_int8_objective_may_be_missing_only_when_the_trial_stopped_early():
    metrics = ["val_accuracy_int8", "bytes_int8"]
    stopped = {"val_accuracy": 0.5, "bytes_int8": 100, "epoch": 1, "epochs": 3}
    assert trial_outcome(stopped, metrics) == (States.PRUNED, {"pruned_reason": "early-stopped at epoch 1 of 3"})
    finished = {**stopped, "epoch": 3}
    assert trial_outcome(finished, metrics) == (
        States.FAIL, {"failure_reason": "missing or non-finite metric(s) ['val_accuracy_int8'] in the last result"})
    # a stopped trial still fails when another objective is missing
    assert trial_outcome({"val_accuracy": 0.5, "epoch": 1, "epochs": 3}, ["val_accuracy", "params"])[0] == States.FAIL


def test_the_driver_heartbeat_beats_on_every_loop_of_tune_and_is_pickled_without_the_searcher():
    import pickle
    from types import SimpleNamespace

    from autokd.searcher import DriverHeartbeat

    calls = []
    heartbeat = DriverHeartbeat(SimpleNamespace(beat_if_due=lambda: calls.append(1)))
    heartbeat.on_step_begin(0, [])
    heartbeat.on_step_begin(1, [])
    assert len(calls) == 2
    restored = pickle.loads(pickle.dumps(heartbeat))  # Tune pickles its callbacks; a lambda could not be
    restored.on_step_begin(2, [])
    assert restored.searcher is None and len(calls) == 2


def test_a_ctrl_c_a_finalizer_swallowed_is_raised_again_at_the_next_controller_step():
    import pickle

    import pytest

    from autokd.search import CTRL_C
    from autokd.searcher import ReraiseCtrlC

    callback = pickle.loads(pickle.dumps(ReraiseCtrlC()))  # Tune pickles its callbacks with the experiment
    callback.on_step_begin(0, [])  # no Ctrl-C: nothing happens
    CTRL_C.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            callback.on_step_begin(1, [])
    finally:
        CTRL_C.clear()
