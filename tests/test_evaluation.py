"""Test re-evaluation on real digits data with tiny models: reproduces trials, caches, trains baselines."""

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from autokd import evaluation
from autokd.data import load_data
from autokd.evaluation import evaluate_front
from autokd.report import build_report
from autokd.runner import run_config
from autokd.sizes import model_size
from autokd.spec import StudySpec
from autokd.teacher_outputs import teacher_outputs
from autokd.teachers import prepare_teachers

pytestmark = pytest.mark.slow


def tiny_spec(tmp_path) -> StudySpec:
    teacher = {"arch": {"family": "mlp", "depth": 1, "width": 32}, "schedule": {"epochs": 2, "batch_size": 64}}
    return StudySpec.model_validate({
        "name": "tiny",
        "data": {"name": "digits", "val_fraction": 0.15},
        "teachers": [{"name": "t1", **teacher}, {"name": "t2", **teacher, "seed": 1}],
        "student": {"family": "mlp", "depth": 1, "width": 16},
        "schedule": {"epochs": 2, "batch_size": 64},
        "search_space": {"params": {"distill.temperature": {"type": "float", "low": 1, "high": 8}}},
        "cache_dir": str(tmp_path / "cache"),
        "storage": f"sqlite:///{tmp_path / 'tiny.db'}",
    })


def train_like_a_search_trial(config, data, outputs) -> tuple[float, int]:
    """What a search trial does: `runner.run_config` at the trial's thread count (one) and seed."""
    student, result = run_config(config, data, outputs, seed=config.seed, threads=1, device="cpu")
    return result.val_accuracy, model_size(student, data.input_shape).params


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A two-trial study (same student architecture, different distillation) plus a failed trial."""
    tmp_path = tmp_path_factory.mktemp("evaluation")
    spec = tiny_spec(tmp_path)
    data = load_data(spec.data)
    outputs = teacher_outputs(prepare_teachers(spec.teachers, data, spec.cache_dir), data)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, directions=spec.directions)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("study_spec", spec.model_dump(mode="json"))
    distill_settings = [{"kind": "kl", "temperature": 3.0, "w_ce": 0.3, "w_kd": 0.7, "teachers": ["t2"]},
                        {"kind": "mse", "w_ce": 0.5, "w_kd": 0.5, "teachers": None}]
    for number, settings in enumerate(distill_settings):
        config = spec.train_config().model_copy(deep=True)
        config.distill = config.distill.model_copy(update=settings)
        config.seed = 100 + number
        accuracy, params = train_like_a_search_trial(config, data, outputs)
        study.add_trial(optuna.trial.create_trial(
            values=[accuracy, params], user_attrs={"config": config.model_dump(), "seed": config.seed,
                                                   "params": params}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"failure_reason": "RuntimeError: boom"}))
    first = evaluate_front(study, spec, [0, 1], log=lambda m: None)
    return study, spec, first


def test_retraining_reproduces_the_recorded_val_accuracy(searched):
    study, _, frame = searched
    recorded = {t.number: t.values[0] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert frame["val_accuracy_retrained"].tolist() == [recorded[0], recorded[1]]  # exactly: CPU is deterministic
    assert frame["val_accuracy"].tolist() == [recorded[0], recorded[1]]
    assert frame["test_accuracy"].between(0, 1).all()


def test_baselines_are_trained_once_per_architecture_with_gains(searched):
    _, spec, frame = searched
    assert frame["baseline_trial"].tolist() == [0, 0]  # both trials share the architecture
    assert frame["ce_test_accuracy"].notna().all() and frame["vanilla_kd_test_accuracy"].notna().all()
    for row in frame.itertuples():
        assert row.gain_vs_ce == pytest.approx(100 * (row.test_accuracy - row.ce_test_accuracy))
        assert row.gain_vs_vanilla_kd == pytest.approx(100 * (row.test_accuracy - row.vanilla_kd_test_accuracy))
    # One seed per flat trial: no standard error to give.
    assert frame["test_seeds"].tolist() == [1, 1]
    assert frame[["gain_vs_ce_se", "gain_vs_vanilla_kd_se"]].isna().all().all()
    folder = Path(spec.cache_dir) / "evaluations" / spec.name
    cached = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    assert sorted(entry["kind"] for entry in cached) == ["ce", "trial", "trial", "vanilla_kd"]
    ce = next(entry for entry in cached if entry["kind"] == "ce")
    vanilla = next(entry for entry in cached if entry["kind"] == "vanilla_kd")
    assert (ce["config"]["distill"]["w_ce"], ce["config"]["distill"]["w_kd"], ce["config"]["distill"]["w_feat"]) \
        == (1.0, 0.0, 0.0)
    assert vanilla["config"]["distill"].items() >= {"kind": "kl", "temperature": 4.0, "w_kd": 0.9, "w_ce": 0.1,
                                                     "w_feat": 0.0, "aggregation": "mean_logits",
                                                     "teachers": ["t2"]}.items()
    assert ce["seed"] == vanilla["seed"] == 100 and ce["config"]["schedule"] == vanilla["config"]["schedule"]


def test_second_call_hits_the_cache_and_trains_nothing(searched, monkeypatch):
    study, spec, first = searched

    def no_training(*args, **kwargs):
        raise AssertionError("evaluate_front trained a model although every evaluation was cached")

    monkeypatch.setattr(evaluation, "run_config", no_training)
    pd.testing.assert_frame_equal(evaluate_front(study, spec, [0, 1], log=lambda m: None), first)


def test_test_accuracy_never_reaches_the_study(searched):
    study, _, _ = searched
    stored = optuna.load_study(study_name=study.study_name, storage=study._storage)
    attrs = [t.user_attrs for t in stored.get_trials()] + [stored.user_attrs]
    assert not any("test" in key for attr in attrs for key in attr)


def test_only_complete_trials_can_be_evaluated(searched):
    study, spec, _ = searched
    with pytest.raises(ValueError, match="trial 2 must be a COMPLETE trial"):
        evaluate_front(study, spec, [2], log=lambda m: None)


def test_report_with_test_evaluation_shows_test_accuracy_and_gains(searched, tmp_path):
    study, spec, first = searched
    folder = build_report(spec.name, storage=spec.storage, out=tmp_path / "report", log=lambda m: None)
    pareto = pd.read_csv(folder / "pareto.csv").set_index("trial")
    for row in first.itertuples():
        if row.trial in pareto.index:  # the front: one or both trials
            assert pareto.loc[row.trial, "test_accuracy"] == row.test_accuracy
            assert math.isclose(pareto.loc[row.trial, "gain_vs_ce"], row.gain_vs_ce)
    page = (folder / "index.html").read_text()
    assert " pp</td>" in page and "test accuracy not evaluated" not in page
