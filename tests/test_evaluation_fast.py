"""Test re-evaluation, fast: the front's test accuracy is measured on the test split (the only code
that touches it), with the trial's own retrained student; the CE-only and vanilla-KD baselines of
flat trials (per architecture, at its first trial's seed; none without teachers); level-2 trials of a
two-level study on their paired seeds (means, paired gains and their standard error, against their
architecture's baseline trials or rebuilt baselines); the evaluation cache and its key. Every field is
checked against trainings done here with `runner.run_config` and measured with numpy. What the runner
chooses to train (threads, data, teacher targets, baselines) is checked with a stand-in for
`runner.run_config` that records it and trains nothing; a stored config's relative paths are taken
from the study file's folder, and errors name that file.
tests/test_evaluation.py (slow) does the same on real data.

The data make the splits disagree on purpose (test labels shifted), so a student measured on the
wrong split gets a very different accuracy.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autokd import evaluation
from autokd.data import load_data
from autokd.distill import FitResult
from autokd.errors import ConfigError, DataError
from autokd.evaluation import EVALUATION_COLUMNS, baseline_config, cache_key, evaluate_front
from autokd.runner import run_config
from autokd.spec import DistillSpec, Resources, StudySpec, TrainConfig
from autokd.train import prepare_targets


def _blobs(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four classes, told apart by the mean of 16 noisy features."""
    y = np.arange(count) % 4
    return (rng.normal(0, 0.1, (count, 16)) + y[:, None]).astype(np.float32), y.astype(np.int64)


def _spec(tmp_path) -> StudySpec:
    rng = np.random.default_rng(0)
    x, y = _blobs(160, rng)
    x_val, y_val = _blobs(40, rng)
    np.savez(tmp_path / "blobs.npz", x=x, y=y, x_val=x_val, y_val=y_val, x_test=x_val, y_test=(y_val + 1) % 4)
    return StudySpec.model_validate({
        "name": "split", "data": {"name": "file", "path": str(tmp_path / "blobs.npz")},
        "student": {"family": "mlp", "depth": 1, "width": 16},
        "distill": {"w_ce": 1.0, "w_kd": 0.0},
        "schedule": {"epochs": 8, "batch_size": 32, "lr": 0.03},
        "search_space": {"params": {"schedule.lr": {"type": "float", "low": 0.001, "high": 0.1}}},
        "cache_dir": str(tmp_path / "cache"), "seed": 3})


def _hand_accuracy(model, inputs, labels) -> float:
    with torch.no_grad():
        return (model(inputs).argmax(dim=1) == labels).float().mean().item()


def test_the_front_test_accuracy_is_measured_on_the_test_split(tmp_path):
    spec = _spec(tmp_path)
    config = spec.train_config()
    data = load_data(config.data)
    student, fitted = run_config(config, data, None, threads=1, device="cpu")  # what the trial trained
    on_test, on_val = _hand_accuracy(student, data.x_test, data.y_test), _hand_accuracy(student, data.x_val, data.y_val)
    assert on_val > on_test + 0.3  # the splits tell apart
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(optuna.trial.create_trial(values=[fitted.val_accuracy, 100.0],
                                              user_attrs={"config": config.model_dump()}))
    logged = []
    frame = evaluate_front(study, spec, [0], baselines=False, log=logged.append)
    row = frame.iloc[0]
    assert row["val_accuracy_retrained"] == fitted.val_accuracy == on_val
    assert row["test_accuracy"] == on_test
    assert row["test_seeds"] == 1 and not any("warning" in line for line in logged)


def test_baselines_replace_the_distillation_and_keep_the_rest():
    config = StudySpec.model_validate({
        "name": "b", "data": {"name": "digits"}, "student": {"family": "mlp", "width": 8},
        "teachers": [{"name": "t", "arch": {"family": "mlp", "width": 16}}],
        "distill": {"w_ce": 0.2, "w_kd": 0.8, "kind": "mse", "temperature": 2.0, "teachers": ["t"]},
        "search_space": {"params": {"schedule.lr": {"type": "float", "low": 0.001, "high": 0.1}}},
        "seed": 5}).train_config()
    ce, vanilla = baseline_config(config, "ce"), baseline_config(config, "vanilla_kd")
    assert (ce.distill.w_ce, ce.distill.w_kd, ce.distill.w_feat) == (1.0, 0.0, 0.0)
    assert (vanilla.distill.kind, vanilla.distill.temperature, vanilla.distill.w_kd, vanilla.distill.w_ce,
            vanilla.distill.aggregation, vanilla.distill.teachers) == ("kl", 4.0, 0.9, 0.1, "mean_logits", ["t"])
    for baseline in (ce, vanilla):
        assert (baseline.student, baseline.schedule, baseline.seed) == (config.student, config.schedule, config.seed)
    keys = {cache_key(config, "trial"), cache_key(config, "ce"), cache_key(ce, "ce"),
            cache_key(config.model_copy(update={"seed": 6}), "trial")}
    assert len(keys) == 4 and cache_key(config, "trial") == cache_key(config.model_copy(), "trial")


# ---------------------------------------------------------------------------------------------
# Baselines, paired seeds and the cache, fast: a harder synthetic problem (accuracy varies with the seed,
# val and test are different samples, half the test labels shifted) and two outputs-file teachers that
# teach differently (t1 the true labels, t2 half of them shifted), so every field tells its source apart.

SEEDS = [11, 12, 13]
CE = {"w_ce": 1.0, "w_kd": 0.0, "w_feat": 0.0}  # the CE-only and vanilla-KD baselines, as the docs define them
VANILLA = {"kind": "kl", "temperature": 4.0, "w_kd": 0.9, "w_ce": 0.1, "w_feat": 0.0, "aggregation": "mean_logits"}
TIMED = re.compile(r" \(\d+\.\d s\)$")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaluation_files")
    rng = np.random.default_rng(0)

    def noisy(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(count) % 4
        return (rng.normal(0, 1.0, (count, 16)) + 0.5 * y[:, None]).astype(np.float32), y.astype(np.int64)

    # 420 test samples: a gain of k/420 in points has more decimals than the 6 it is rounded to
    (x, y), (x_val, y_val), (x_test, y_test) = noisy(160), noisy(200), noisy(420)
    np.savez(folder / "noisy.npz", x=x, y=y, x_val=x_val, y_val=y_val, x_test=x_test,
             y_test=np.where(np.arange(420) % 2, y_test, (y_test + 1) % 4))
    one_hot = 3.0 * np.eye(4, dtype=np.float32)
    np.savez(folder / "t1.npz", train_logits=one_hot[y])
    np.savez(folder / "t2.npz", train_logits=one_hot[np.where(np.arange(160) % 2, (y + 1) % 4, y)])
    return folder


def _noisy_spec(files: Path, cache: Path, teachers: bool = True) -> StudySpec:
    return StudySpec.model_validate({
        "name": "noisy", "data": {"name": "file", "path": str(files / "noisy.npz")},
        "teachers": [{"name": name, "logits": str(files / f"{name}.npz")} for name in ("t1", "t2")] if teachers else [],
        "student": {"family": "mlp", "depth": 1, "width": 16},
        "distill": {"w_ce": 1.0, "w_kd": 0.0},
        "schedule": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "search_space": {"params": {"schedule.lr": {"type": "float", "low": 0.001, "high": 0.1}}},
        "cache_dir": str(cache), "device": "cpu", "seed": 3})


def _variant(spec: StudySpec, distill: dict, *, lr: float = 0.05, width: int = 16, seed: int = 0,
             optimizer: str = "adamw") -> TrainConfig:
    dumped = spec.train_config().model_dump()
    dumped.update(distill=distill, seed=seed, student={**dumped["student"], "width": width},
                  schedule={**dumped["schedule"], "lr": lr, "optimizer": optimizer})
    return TrainConfig.model_validate(dumped)


def _replaced(config: TrainConfig, distill: dict) -> TrainConfig:
    return TrainConfig.model_validate({**config.model_dump(), "distill": distill})


def _reference(config: TrainConfig, seed: int) -> tuple[float, float]:
    """(val accuracy, test accuracy) of `config` trained at `seed` as a search trial does, measured here with numpy."""
    data = load_data(config.data)
    _, targets = prepare_targets(config, data, log=lambda message: None)
    student, fitted = run_config(config, data, targets, seed=seed, threads=1, device="cpu")
    with torch.no_grad():
        predicted = student(data.x_test).argmax(dim=1).numpy()
    return fitted.val_accuracy, int((predicted == data.y_test.numpy()).sum()) / len(predicted)


def _on(config: TrainConfig, seeds: list[int]) -> tuple[list[float], list[float]]:
    vals, tests = zip(*(_reference(config, seed) for seed in seeds))
    return list(vals), list(tests)


def _lines(trial: int, kind: str, vals: list[float], tests: list[float]) -> list[str]:
    return [f"test evaluation: trial {trial} ({kind}): val {val:.4f} test {test:.4f}" for val, test in zip(vals, tests)]


def _untimed(logged: list[str]) -> list[str]:
    """The evaluations and warnings logged (not the teachers' lines), without their training times."""
    assert all(TIMED.search(line) for line in logged if line.startswith("test evaluation"))
    return [TIMED.sub("", line) for line in logged if not line.startswith("teacher ")]


def _drift(trial: int, retrained: float, recorded: float) -> str:
    return (f"warning: trial {trial} retrained to val accuracy {retrained:.4f}, recorded {recorded:.4f} "
            "(not reproducible on this machine)")


def _paired_by_hand(tests: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean and standard error (n - 1 in the variance) of the per-seed differences, in points."""
    differences = [a - b for a, b in zip(tests, baseline)]
    mean = sum(differences) / len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    return 100 * mean, 100 * math.sqrt(variance / len(differences))


def _level2(role: str, arch: int, config: TrainConfig, recorded: float, *, seeds=SEEDS, allowed=None,
            state=optuna.trial.TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    attrs = {"level": 2, "role": role, "arch": arch, "seeds": seeds, "teachers_allowed": allowed,
             "config": config.model_dump()}
    values = [recorded, 1234.0] if state == optuna.trial.TrialState.COMPLETE else None
    return optuna.trial.create_trial(state=state, values=values, user_attrs=attrs)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _assert_row(row, expected: dict) -> None:
    for column, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(row[column]), column
        else:
            assert row[column] == pytest.approx(value, rel=0, abs=1e-9), column


def _no_baselines() -> dict:
    return dict.fromkeys(("ce_test_accuracy", "vanilla_kd_test_accuracy", "gain_vs_ce", "gain_vs_vanilla_kd",
                          "baseline_trial", "gain_vs_ce_se", "gain_vs_vanilla_kd_se"), math.nan)


@pytest.fixture(scope="module")
def two_level(files, tmp_path_factory):
    """A two-level study: a failed and a finished CE-only baseline, a tuned trial (arch 7; no vanilla-KD trial)
    and a vanilla-KD trial (arch 8; no CE-only trial), each config with its measurements on the paired seeds."""
    spec = _noisy_spec(files, tmp_path_factory.mktemp("teacher_cache"))
    configs = {
        "failed": _variant(spec, CE, lr=0.02, seed=98),
        "ce": _variant(spec, CE, lr=0.08, seed=99),  # not what a rebuilt CE-only baseline of "tuned" would be
        "tuned": _variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "temperature": 2.0, "teachers": ["t1"]}, seed=5),
        "vanilla8": _variant(spec, {**VANILLA, "teachers": ["t1", "t2"]}, width=8, seed=7)}
    configs.update(tuned_vanilla=_replaced(configs["tuned"], {**VANILLA, "teachers": ["t2"]}),  # teachers_allowed
                   ce_vanilla=_replaced(configs["ce"], {**VANILLA, "teachers": ["t1"]}),
                   ce8=_replaced(configs["vanilla8"], CE))
    measured = {name: _on(config, SEEDS) for name, config in configs.items() if name != "failed"}
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(_level2("ce", 7, configs["failed"], 0.0, state=optuna.trial.TrialState.FAIL))
    study.add_trial(_level2("ce", 7, configs["ce"], _mean(measured["ce"][0]), allowed=["t1"]))
    study.add_trial(_level2("tuned", 7, configs["tuned"], _mean(measured["tuned"][0]) + 0.01, allowed=["t2"]))
    study.add_trial(_level2("vanilla_kd", 8, configs["vanilla8"], _mean(measured["vanilla8"][0]),
                            allowed=["t1", "t2"]))
    return spec, study, measured


def test_a_level2_trial_is_measured_on_its_paired_seeds_against_its_architectures_baselines(two_level, tmp_path):
    spec, study, measured = two_level
    spec = spec.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    # The data tell every source apart: seeds, splits, baselines and the teachers vanilla KD learns from.
    assert len(set(measured["tuned"][1])) == len(SEEDS) and measured["tuned"][0] != measured["tuned"][1]
    tests = {name: _mean(test) for name, (_, test) in measured.items()}
    assert len(set(tests.values())) == len(tests)
    logged = []
    frame = evaluate_front(study, spec, [2, 1, 3], log=logged.append)
    assert frame["trial"].tolist() == [2, 1, 3]
    rows = frame.set_index("trial", drop=False)
    (tuned_val, tuned_test), (ce_val, ce_test) = measured["tuned"], measured["ce"]
    vanilla_test = measured["tuned_vanilla"][1]
    gain_ce, se_ce = _paired_by_hand(tuned_test, ce_test)
    gain_vanilla, se_vanilla = _paired_by_hand(tuned_test, vanilla_test)
    assert se_ce > 0 and se_vanilla > 0  # the per-seed differences differ: n - 1 or n tells apart
    _assert_row(rows.loc[2], {
        "val_accuracy": _mean(tuned_val) + 0.01, "val_accuracy_retrained": _mean(tuned_val),
        "test_accuracy": _mean(tuned_test), "test_seeds": 3, "baseline_trial": 1,
        "ce_test_accuracy": _mean(ce_test), "vanilla_kd_test_accuracy": _mean(vanilla_test),
        "gain_vs_ce": round(gain_ce, 6), "gain_vs_ce_se": round(se_ce, 6),
        "gain_vs_vanilla_kd": round(gain_vanilla, 6), "gain_vs_vanilla_kd_se": round(se_vanilla, 6)})
    assert rows.loc[2, "gain_vs_ce_se"] == pytest.approx(
        100 * np.std(np.subtract(tuned_test, ce_test), ddof=1) / np.sqrt(3), abs=1e-6)
    # A baseline trial is its own baseline: its runs (not trained again) and a zero gain over them.
    ce_vanilla_test = measured["ce_vanilla"][1]
    gain, se = _paired_by_hand(ce_test, ce_vanilla_test)
    _assert_row(rows.loc[1], {
        "val_accuracy": _mean(ce_val), "val_accuracy_retrained": _mean(ce_val), "test_accuracy": _mean(ce_test),
        "test_seeds": 3, "baseline_trial": 1, "ce_test_accuracy": _mean(ce_test), "gain_vs_ce": 0.0,
        "gain_vs_ce_se": 0.0, "vanilla_kd_test_accuracy": _mean(ce_vanilla_test),
        "gain_vs_vanilla_kd": round(gain, 6), "gain_vs_vanilla_kd_se": round(se, 6)})
    (vanilla8_val, vanilla8_test), ce8_test = measured["vanilla8"], measured["ce8"][1]
    gain, se = _paired_by_hand(vanilla8_test, ce8_test)
    _assert_row(rows.loc[3], {  # no CE-only trial of arch 8: rebuilt from the trial's config, named by the trial
        "val_accuracy": _mean(vanilla8_val), "val_accuracy_retrained": _mean(vanilla8_val),
        "test_accuracy": _mean(vanilla8_test), "test_seeds": 3, "baseline_trial": 3,
        "ce_test_accuracy": _mean(ce8_test), "gain_vs_ce": round(gain, 6), "gain_vs_ce_se": round(se, 6),
        "vanilla_kd_test_accuracy": _mean(vanilla8_test), "gain_vs_vanilla_kd": 0.0, "gain_vs_vanilla_kd_se": 0.0})
    # Each run once, on each paired seed, under the trial or baseline whose config it is.
    assert _untimed(logged) == [
        *_lines(2, "trial", *measured["tuned"]), _drift(2, _mean(tuned_val), _mean(tuned_val) + 0.01),
        *_lines(1, "ce", *measured["ce"]), *_lines(2, "vanilla_kd", *measured["tuned_vanilla"]),
        *_lines(1, "vanilla_kd", *measured["ce_vanilla"]),
        *_lines(3, "vanilla_kd", *measured["vanilla8"]), *_lines(3, "ce", *measured["ce8"])]
    cached = [json.loads(path.read_text()) for path in (tmp_path / "cache" / "evaluations" / "noisy").glob("*.json")]
    assert sorted((entry["trial"], entry["kind"], entry["seed"]) for entry in cached) == sorted(
        (trial, kind, seed) for trial, kind in ((2, "trial"), (1, "ce"), (2, "vanilla_kd"), (1, "vanilla_kd"),
                                                (3, "vanilla_kd"), (3, "ce")) for seed in SEEDS)


def test_a_level2_trial_without_baselines_runs_only_its_own_seeds(two_level, tmp_path):
    spec, study, measured = two_level
    spec = spec.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    logged = []
    frame = evaluate_front(study, spec, [2], baselines=False, log=logged.append)
    (val, test) = measured["tuned"]
    assert frame["trial"].tolist() == [2]
    _assert_row(frame.iloc[0], {"val_accuracy": _mean(val) + 0.01, "val_accuracy_retrained": _mean(val),
                                "test_accuracy": _mean(test), "test_seeds": 3, **_no_baselines()})
    assert _untimed(logged) == [*_lines(2, "trial", val, test), _drift(2, _mean(val), _mean(val) + 0.01)]


def test_a_level2_trial_of_a_study_without_teachers_has_no_vanilla_kd_baseline(files, tmp_path):
    spec = _noisy_spec(files, tmp_path / "cache", teachers=False)
    seeds = [21, 22]
    ce, tuned = _variant(spec, CE, lr=0.08, seed=1), _variant(spec, CE, lr=0.03, seed=2)
    (ce_val, ce_test), (val, test) = _on(ce, seeds), _on(tuned, seeds)
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(_level2("ce", 0, ce, _mean(ce_val), seeds=seeds))
    study.add_trial(_level2("tuned", 0, tuned, _mean(val), seeds=seeds))
    logged = []
    frame = evaluate_front(study, spec, [1], log=logged.append)
    gain, se = _paired_by_hand(test, ce_test)
    assert se > 0
    _assert_row(frame.iloc[0], {
        "trial": 1, "val_accuracy": _mean(val), "val_accuracy_retrained": _mean(val), "test_accuracy": _mean(test),
        "test_seeds": 2, "baseline_trial": 0, "ce_test_accuracy": _mean(ce_test), "gain_vs_ce": round(gain, 6),
        "gain_vs_ce_se": round(se, 6), "vanilla_kd_test_accuracy": math.nan, "gain_vs_vanilla_kd": math.nan,
        "gain_vs_vanilla_kd_se": math.nan})
    assert _untimed(logged) == [*_lines(1, "trial", val, test), *_lines(0, "ce", ce_val, ce_test)]


def test_level2_baselines_are_the_first_complete_paired_ce_and_vanilla_trials_per_architecture():
    config = {"name": "c"}
    study = optuna.create_study()

    def add(state=optuna.trial.TrialState.COMPLETE, **attrs) -> int:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.5 if state == optuna.trial.TrialState.COMPLETE else None, user_attrs=attrs))
        return len(study.trials) - 1

    paired = {"level": 2, "seeds": SEEDS, "config": config}
    add(state=optuna.trial.TrialState.FAIL, **paired, role="ce", arch=7)
    add(state=optuna.trial.TrialState.RUNNING, **paired, role="ce", arch=7)
    add(**{**paired, "level": 1}, role="ce", arch=7)
    add(**{**paired, "seeds": []}, role="ce", arch=7)
    add(**paired, role="tuned", arch=7)
    add(level=2, seeds=SEEDS, role="ce", arch=7)  # no config
    ce7 = add(**paired, role="ce", arch=7)
    add(**paired, role="ce", arch=7)  # a second one: the first stays
    vanilla7 = add(**paired, role="vanilla_kd", arch=7)
    ce8 = add(**paired, role="ce", arch="8")
    found = evaluation._level2_baselines(study)
    assert {key: trial.number for key, trial in found.items()} == {(7, "ce"): ce7, (7, "vanilla_kd"): vanilla7,
                                                                   (8, "ce"): ce8}


def test_flat_trials_get_their_architectures_baselines_at_the_first_trials_seed(files, tmp_path):
    spec = _noisy_spec(files, tmp_path / "cache")
    first = _variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "temperature": 2.0, "teachers": ["t1"]}, seed=5)
    second = _variant(spec, {"kind": "mse", "w_ce": 0.3, "w_kd": 0.7, "teachers": ["t2"]}, seed=6)
    small = _variant(spec, {"w_ce": 0.4, "w_kd": 0.6, "teachers": None}, width=8, seed=7)
    runs = {name: _reference(config, config.seed) for name, config in
            (("first", first), ("second", second), ("small", small), ("first_ce", _replaced(first, CE)),
             ("first_vanilla", _replaced(first, {**VANILLA, "teachers": ["t1"]})),
             ("small_ce", _replaced(small, CE)), ("small_vanilla", _replaced(small, {**VANILLA, "teachers": None})))}
    assert len({test for _, test in runs.values()}) >= 6 and all(val != test for val, test in runs.values())
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(optuna.trial.create_trial(values=[runs["first"][0], 1234.0],
                                              user_attrs={"config": first.model_dump()}))
    # Not level-2 trials on paired seeds (one is level 1, one has no seeds): each on its own seed.
    study.add_trial(optuna.trial.create_trial(values=[runs["second"][0] + 0.05, 1234.0], user_attrs={
        "config": second.model_dump(), "level": 1, "seeds": SEEDS, "role": "tuned", "arch": 0}))
    study.add_trial(optuna.trial.create_trial(values=[0.25, 600.0], user_attrs={  # an int8 study: fp32 in an attr
        "config": small.model_dump(), "level": 2, "seeds": [], "val_accuracy": runs["small"][0]}))
    logged = []
    frame = evaluate_front(study, spec, [0, 1, 2], log=logged.append)
    assert frame.columns.tolist() == ["trial", "val_accuracy", *EVALUATION_COLUMNS]
    baselines = {"first": ("first_ce", "first_vanilla", 0), "second": ("first_ce", "first_vanilla", 0),
                 "small": ("small_ce", "small_vanilla", 2)}
    recorded = {"first": runs["first"][0], "second": runs["second"][0] + 0.05, "small": runs["small"][0]}
    for row, name in zip(frame.to_dict("records"), ("first", "second", "small")):
        ce, vanilla, baseline_trial = baselines[name]
        (val, test), ce_test, vanilla_test = runs[name], runs[ce][1], runs[vanilla][1]
        _assert_row(row, {"val_accuracy": recorded[name], "val_accuracy_retrained": val, "test_accuracy": test,
                          "test_seeds": 1, "baseline_trial": baseline_trial, "ce_test_accuracy": ce_test,
                          "vanilla_kd_test_accuracy": vanilla_test, "gain_vs_ce": round(100 * (test - ce_test), 6),
                          "gain_vs_vanilla_kd": round(100 * (test - vanilla_test), 6),
                          "gain_vs_ce_se": math.nan, "gain_vs_vanilla_kd_se": math.nan})
    assert frame["trial"].tolist() == [0, 1, 2]

    def line(trial: int, kind: str, name: str) -> str:
        return _lines(trial, kind, [runs[name][0]], [runs[name][1]])[0]

    assert _untimed(logged) == [
        line(0, "trial", "first"), line(0, "ce", "first_ce"), line(0, "vanilla_kd", "first_vanilla"),
        line(1, "trial", "second"), _drift(1, runs["second"][0], runs["second"][0] + 0.05),
        line(2, "trial", "small"), line(2, "ce", "small_ce"), line(2, "vanilla_kd", "small_vanilla")]


def test_a_flat_study_without_teachers_has_no_vanilla_kd_baseline_and_a_second_call_reuses_the_trial(files, tmp_path):
    spec = _noisy_spec(files, tmp_path / "cache", teachers=False)
    config = _variant(spec, {"w_ce": 0.5, "w_kd": 0.0}, lr=0.1, seed=4, optimizer="sgd")  # half CE's step
    (val, test), (ce_val, ce_test) = _reference(config, 4), _reference(_replaced(config, CE), 4)
    assert test != ce_test
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(optuna.trial.create_trial(values=[val, 100.0], user_attrs={"config": config.model_dump()}))
    logged = []
    frame = evaluate_front(study, spec, [0], baselines=False, log=logged.append)
    _assert_row(frame.iloc[0], {"trial": 0, "val_accuracy": val, "val_accuracy_retrained": val,
                                "test_accuracy": test, "test_seeds": 1, **_no_baselines()})
    assert _untimed(logged) == _lines(0, "trial", [val], [test])
    logged.clear()
    frame = evaluate_front(study, spec, [0], log=logged.append)
    _assert_row(frame.iloc[0], {
        "trial": 0, "val_accuracy": val, "val_accuracy_retrained": val, "test_accuracy": test, "test_seeds": 1,
        "baseline_trial": 0, "ce_test_accuracy": ce_test, "gain_vs_ce": round(100 * (test - ce_test), 6),
        "vanilla_kd_test_accuracy": math.nan, "gain_vs_vanilla_kd": math.nan, "gain_vs_ce_se": math.nan,
        "gain_vs_vanilla_kd_se": math.nan})
    assert _untimed(logged) == _lines(0, "ce", [ce_val], [ce_test])  # the trial came from the cache


def test_the_runner_caches_each_config_seed_and_kind_once(files, tmp_path, monkeypatch):
    spec = _noisy_spec(files, tmp_path / "cache")
    config = _variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "teachers": ["t2"]}, seed=8)
    val, test = _reference(config, 8)
    logged = []
    result = evaluation._Runner(spec, logged.append).run(config, "vanilla_kd", 4)
    assert {key: result[key] for key in ("trial", "kind", "seed", "val_accuracy", "test_accuracy", "config")} == {
        "trial": 4, "kind": "vanilla_kd", "seed": 8, "val_accuracy": val, "test_accuracy": test,
        "config": config.model_dump(mode="json")}
    assert 0 <= result["train_seconds"] == round(result["train_seconds"], 3)
    assert _untimed(logged) == _lines(4, "vanilla_kd", [val], [test])
    path = tmp_path / "cache" / "evaluations" / "noisy" / f"{cache_key(config, 'vanilla_kd')}.json"
    assert json.loads(path.read_text()) == result

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the evaluation was cached")

    monkeypatch.setattr(evaluation, "run_config", no_training)
    logged.clear()
    again = evaluation._Runner(spec, logged.append)
    assert again.run(config, "vanilla_kd", 4) == result and again.run(config, "vanilla_kd", 4) == result
    assert logged == []
    for other, kind in ((config, "ce"), (config.model_copy(update={"seed": 9}), "vanilla_kd")):
        with pytest.raises(AssertionError, match="trained although"):
            again.run(other, kind, 4)


def test_only_complete_trials_with_a_config_can_be_evaluated(tmp_path):
    spec = _spec(tmp_path)
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"config": spec.train_config().model_dump()}))
    study.add_trial(optuna.trial.create_trial(values=[0.5, 10.0]))
    for number, state in ((0, "FAIL"), (1, "COMPLETE"), (2, "missing")):
        with pytest.raises(ValueError, match=f"^trial_numbers: trial {number} must be a COMPLETE trial with a "
                                             f"recorded config, got {state}$"):
            evaluate_front(study, spec, [number], log=lambda message: None)


def test_baseline_config_refuses_a_kind_that_is_no_baseline():
    config = TrainConfig.model_validate({"distill": CE})
    with pytest.raises(ValueError, match=r"^kind: must be 'ce' or 'vanilla_kd', got 'kd'$"):
        baseline_config(config, "kd")


# ---------------------------------------------------------------------------------------------
# The cache key: what an evaluation depends on changes it, nothing else does, and it is the key earlier
# versions wrote (their cached evaluations are found).

KEYED = {"name": "run", "data": {"name": "file", "path": "data/a.npz"},
         "teachers": [{"name": "t1", "logits": "t1.npz"}, {"name": "t2", "logits": "t2.npz"}],
         "student": {"family": "mlp", "depth": 1, "width": 16},
         "distill": {"w_ce": 0.5, "w_kd": 0.5, "teachers": ["t1"]}, "schedule": {"epochs": 2}, "seed": 5}


def _keyed(**changes) -> TrainConfig:
    return TrainConfig.model_validate({**KEYED, **changes})


def test_the_cache_key_is_the_one_earlier_versions_wrote():
    # The key autokd computed for this config at commit c93a5fd (2026-12-02) and at each later commit that changed
    # spec.py (new settings are left out of the dump at their defaults): a report finds what those versions cached.
    config = TrainConfig.model_validate({"name": "run", "data": {"name": "digits"},
                                         "student": {"family": "mlp", "depth": 1, "width": 16},
                                         "distill": {"w_ce": 1.0, "w_kd": 0.0}, "schedule": {"epochs": 2}, "seed": 5})
    assert cache_key(config, "ce") == "f87e70d4c74a039741704ff3fd7d4568b445f41c52a76fc570f9fea959dcd5d9"


def test_the_cache_key_changes_with_everything_the_evaluation_depends_on_and_nothing_else():
    base = _keyed()
    changed = [_keyed(data={"name": "file", "path": "data/b.npz"}), _keyed(data={**KEYED["data"], "seed": 1}),
               _keyed(teachers=[{"name": "t1", "logits": "t1b.npz"}, KEYED["teachers"][1]]),
               _keyed(distill={**KEYED["distill"], "teachers": ["t2"]}),
               _keyed(distill={**KEYED["distill"], "w_kd": 0.6}),
               _keyed(student={**KEYED["student"], "width": 17}), _keyed(schedule={"epochs": 3}),
               _keyed(augment=["flip"]), _keyed(threads=2), _keyed(seed=6)]
    keys = [cache_key(config, "trial") for config in [base, *changed]] + [cache_key(base, "ce")]
    assert len(set(keys)) == len(keys)
    # The same content written otherwise: keys in another order, a path as a Path object.
    same = [(_keyed(provenance={"study": "s", "trial": 3}), _keyed(provenance={"trial": 3, "study": "s"})),
            (_keyed(provenance={"storage": Path("studies/s.db")}), _keyed(provenance={"storage": "studies/s.db"})),
            (_keyed(distill=CE, student={"family": "custom", "factory": "m:f", "args": {"a": 1, "b": [2, 3]}}),
             _keyed(distill=CE, student={"family": "custom", "factory": "m:f", "args": {"b": [2, 3], "a": 1}}))]
    for first, second in same:
        assert first.model_dump() != _keyed().model_dump()  # it differs from the base config: not a no-op
        assert cache_key(first, "trial") == cache_key(second, "trial")


# ---------------------------------------------------------------------------------------------
# What the runner trains: a stand-in for `runner.run_config` records what it is asked to train (the config, data,
# teacher targets and keywords) and trains nothing, so these tests check the runner's choices, not training.


class _ClassOne(torch.nn.Module):
    """A student answering class 1 to every input: its test accuracy is the share of class 1 in y_test."""

    def __init__(self, classes: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.eye(classes)[1])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


@pytest.fixture
def untrained(monkeypatch) -> list[dict]:
    """Each training the runner asks for: {"config", "data", "targets", **keywords}. The stand-in returns a
    `_ClassOne` student, a val accuracy of 0.5 and 1.23456 s of training."""
    calls = []

    def stand_in(config, data, targets, **keywords):
        calls.append({"config": config, "data": data, "targets": targets, **keywords})
        return _ClassOne(data.num_classes), FitResult(val_accuracy=0.5, epochs_trained=1, train_seconds=1.23456)

    monkeypatch.setattr(evaluation, "run_config", stand_in)
    return calls


# The stand-in student's test accuracy on the noisy data: its test labels are 1 and 3, half each (the even rows'
# 0 and 2 shifted by one); on the val split it would score 0.25.
CLASS_ONE_ON_TEST = 0.5


def test_a_retrained_val_accuracy_within_1e_9_of_the_recorded_one_is_no_drift(files, tmp_path, untrained):
    spec = _noisy_spec(files, tmp_path / "cache")
    study = optuna.create_study(directions=spec.directions)
    for seed, recorded in ((1, 0.5 + 5e-10), (2, 0.5 + 2e-9)):  # the stand-in retrains to 0.5
        config = _variant(spec, CE, seed=seed)
        study.add_trial(optuna.trial.create_trial(values=[recorded, 100.0], user_attrs={"config": config.model_dump()}))
    logged = []
    evaluate_front(study, spec, [0, 1], baselines=False, log=logged.append)
    share = CLASS_ONE_ON_TEST
    assert _untimed(logged) == [*_lines(0, "trial", [0.5], [share]), *_lines(1, "trial", [0.5], [share]),
                                _drift(1, 0.5, 0.5 + 2e-9)]


def test_a_level2_trial_without_an_architecture_gets_baselines_rebuilt_from_its_config(files, tmp_path, untrained):
    spec = _noisy_spec(files, tmp_path / "cache")
    config = _variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "temperature": 2.0, "teachers": ["t1"]}, seed=5)
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1234.0], user_attrs={  # no "arch"
        "level": 2, "role": "tuned", "seeds": [21, 22], "teachers_allowed": ["t2"], "config": config.model_dump()}))
    frame = evaluate_front(study, spec, [0], log=lambda message: None)
    # The trial, CE only, and vanilla KD from its allowed teacher, each on both seeds; all else the trial's.
    runs = (config.distill, DistillSpec(**CE), DistillSpec(**VANILLA, teachers=["t2"]))
    expected = [(seed, distill) for distill in runs for seed in (21, 22)]
    assert [(call["config"].seed, call["config"].distill) for call in untrained] == expected
    assert all((call["config"].student, call["config"].schedule) == (config.student, config.schedule)
               for call in untrained)
    share = CLASS_ONE_ON_TEST  # every run's test accuracy: the gains are zero
    _assert_row(frame.iloc[0], {"trial": 0, "test_seeds": 2, "baseline_trial": 0, "test_accuracy": share,
                                "ce_test_accuracy": share, "vanilla_kd_test_accuracy": share, "gain_vs_ce": 0.0,
                                "gain_vs_ce_se": 0.0, "gain_vs_vanilla_kd": 0.0, "gain_vs_vanilla_kd_se": 0.0})


def test_custom_students_whose_args_differ_only_in_order_are_one_architecture(files, tmp_path, untrained):
    spec = _noisy_spec(files, tmp_path / "cache")
    study = optuna.create_study(directions=spec.directions)
    for seed, args in ((5, {"width": 8, "depth": 1}), (6, {"depth": 1, "width": 8})):
        dumped = {**_variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "teachers": ["t1"]}, seed=seed).model_dump(),
                  "student": {"family": "custom", "factory": "students:mlp", "args": args}}
        study.add_trial(optuna.trial.create_trial(values=[0.5, 100.0], user_attrs={"config": dumped}))
    frame = evaluate_front(study, spec, [0, 1], log=lambda message: None)
    # one pair of baselines, at the first trial's seed: trial 0, its CE-only and vanilla-KD runs, then trial 1
    assert [call["config"].seed for call in untrained] == [5, 5, 5, 6]
    assert frame["baseline_trial"].tolist() == [0, 0]


def test_the_runner_trains_with_the_trials_thread_count(files, tmp_path, untrained):
    # (cpus_per_trial, the config's threads) -> threads: the config's own, else the whole cpus of a trial, at least 1
    cases = [((1.0, None), 1), ((2.7, None), 2), ((0.5, None), 1), ((1.0, 3), 3)]
    for index, ((cpus, threads), _) in enumerate(cases):
        spec = _noisy_spec(files, tmp_path / f"cache{index}").model_copy(
            update={"resources": Resources(cpus_per_trial=cpus)})
        config = _variant(spec, CE).model_copy(update={"threads": threads})
        evaluation._Runner(spec, lambda message: None).run(config, "trial", 0)
    assert [call["threads"] for call in untrained] == [expected for _, expected in cases]


def test_the_runner_loads_each_distinct_data_once(files, tmp_path, untrained):
    spec = _noisy_spec(files, tmp_path / "cache")
    whole = _variant(spec, CE)
    half = whole.model_copy(update={"data": whole.data.model_copy(update={"train_subset": 80})})
    runner = evaluation._Runner(spec, lambda message: None)
    for config in (whole, half, whole.model_copy(update={"seed": 9})):
        runner.run(config, "trial", 0)
    assert [len(call["data"].y_train) for call in untrained] == [160, 80, 160]  # the file's 160, or a subset of 80
    assert untrained[2]["data"] is untrained[0]["data"]


def test_attention_transfer_gets_teacher_targets_with_attention_maps(tmp_path, untrained):
    rng = np.random.default_rng(0)
    (x, y), (x_val, y_val) = _blobs(160, rng), _blobs(40, rng)
    np.savez(tmp_path / "images.npz", x=x.reshape(-1, 4, 4), y=y, x_val=x_val.reshape(-1, 4, 4), y_val=y_val)
    cnn = {"family": "cnn", "stages": 1, "channels": 2, "head_width": 0}
    document = {"name": "at", "data": {"name": "file", "path": str(tmp_path / "images.npz")},
                "teachers": [{"name": "t", "arch": {**cnn, "channels": 4}, "schedule": {"epochs": 1}}],
                "student": cnn, "schedule": {"epochs": 1}, "cache_dir": str(tmp_path / "cache"), "device": "cpu",
                "search_space": {"params": {"schedule.lr": {"type": "float", "low": 0.001, "high": 0.1}}}}
    spec = StudySpec.model_validate(document)
    runner = evaluation._Runner(spec, lambda message: None)
    for w_at in (0.0, 0.5):  # the same teacher: without, then with attention transfer
        runner.run(TrainConfig.model_validate({**spec.train_config().model_dump(),
                                               "distill": {"w_ce": 0.5, "w_kd": 0.5, "w_at": w_at}}), "trial", 0)
    assert [call["targets"].attention is not None for call in untrained] == [False, True]


def test_the_cache_file_holds_the_result_as_indented_json(files, tmp_path, untrained):
    spec = _noisy_spec(files, tmp_path / "cache")
    config = _variant(spec, CE, seed=8).model_copy(  # not plain JSON values: stored as their JSON form
        update={"provenance": {"made_from": Path("runs/a.yaml"), "shape": (1, 8, 8)}})
    logged = []
    result = evaluation._Runner(spec, logged.append).run(config, "trial", 4)
    assert result["test_accuracy"] == CLASS_ONE_ON_TEST
    assert result["train_seconds"] == 1.235  # the stand-in's 1.23456 s, to the millisecond
    assert logged[0].endswith(" (1.2 s)")
    assert result["config"]["provenance"] == {"made_from": "runs/a.yaml", "shape": [1, 8, 8]}
    text = (tmp_path / "cache" / "evaluations" / "noisy" / f"{cache_key(config, 'trial')}.json").read_text()
    assert text.startswith('{\n  "trial": 4,\n  "kind": "trial",\n  "seed": 8,\n  "val_accuracy": 0.5,\n')
    assert json.loads(text) == result == evaluation._Runner(spec, logged.append).run(config, "trial", 4)


# ---------------------------------------------------------------------------------------------
# A stored config's paths are relative to the study file, and what the runner says names that file.


def _study_file_spec(files: Path, cache: Path) -> StudySpec:
    """The noisy study as read from files/noisy.yaml: its stored configs' relative paths are relative to `files`."""
    return _noisy_spec(files, cache).model_copy(update={"source": str(files / "noisy.yaml")})


def _relative(config: TrainConfig) -> TrainConfig:
    """`config` as a study stores it: the data and teacher files relative to the study file's folder."""
    dumped = config.model_dump()
    dumped["data"]["path"] = "noisy.npz"
    for teacher in dumped["teachers"]:
        teacher["logits"] = f"{teacher['name']}.npz"
    return TrainConfig.model_validate(dumped)


def test_a_stored_config_is_trained_from_the_study_files_folder_and_its_teachers_are_logged(files, tmp_path,
                                                                                           capsys):
    spec = _study_file_spec(files, tmp_path / "cache")
    config = _variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "teachers": ["t1"]}, seed=8)
    stored = _relative(config)
    logged = []
    result = evaluation._Runner(spec, logged.append).run(stored, "trial", 0)
    val, test = _reference(config.model_copy(update={"cache_dir": str(tmp_path / "reference")}), 8)
    assert (result["val_accuracy"], result["test_accuracy"]) == (val, test)
    assert result["config"] == stored.model_dump(mode="json")  # as stored: relative, no machine path
    assert _untimed(logged) == _lines(0, "trial", [val], [test])
    assert logged[0] == f"teacher t1: outputs from {files / 't1.npz'} (no features)"  # through the log, not print
    assert capsys.readouterr().out == ""


def test_errors_in_a_stored_config_name_the_study_file(files, tmp_path):
    spec = _study_file_spec(files, tmp_path / "cache")
    config = _relative(_variant(spec, {"w_ce": 0.5, "w_kd": 0.5, "teachers": ["t1"]}))
    runner = evaluation._Runner(spec, lambda message: None)
    source = re.escape(str(files / "noisy.yaml"))
    missing = config.model_copy(update={"data": config.data.model_copy(update={"path": "missing.npz"})})
    with pytest.raises(DataError, match=f"^{source}: data.path: file not found: {re.escape(str(files))}/missing.npz$"):
        runner.run(missing, "trial", 0)
    with pytest.raises(ConfigError, match=f"^{source}: augment: shift needs teachers run on every augmented batch, "
                                          "but teacher 't1' is precomputed outputs"):
        runner.run(config.model_copy(update={"augment": ["shift"]}), "trial", 0)


def test_a_confirmed_level2_trial_is_measured_on_its_confirmations_fresh_seeds(files, tmp_path):
    """The seeds that chose a config flatter it on test too: a trial confirmed on fresh seeds (`levels`)
    is measured there, it and its CE-only baseline, and its val is the confirmation's."""
    spec = _noisy_spec(files, tmp_path / "cache", teachers=False)
    seeds, fresh = [21, 22], [31, 32]
    ce, tuned = _variant(spec, CE, lr=0.08, seed=21), _variant(spec, CE, lr=0.03, seed=21)
    (val, _), ((fresh_val, fresh_test), (_, fresh_ce_test)) = _on(tuned, seeds), (_on(tuned, fresh), _on(ce, fresh))
    assert fresh_test != _on(tuned, seeds)[1]
    study = optuna.create_study(directions=spec.directions)
    study.add_trial(_level2("ce", 0, ce, 0.5, seeds=seeds))
    study.add_trial(_level2("tuned", 0, tuned, _mean(val), seeds=seeds))
    confirmation = _level2("confirm", 0, tuned.model_copy(update={"seed": fresh[0]}), _mean(fresh_val), seeds=fresh)
    confirmation.user_attrs.update(confirms=1, confirms_role="tuned")
    study.add_trial(confirmation)
    logged = []
    frame = evaluate_front(study, spec, [1], log=logged.append)
    gain, se = _paired_by_hand(fresh_test, fresh_ce_test)
    _assert_row(frame.iloc[0], {
        "trial": 1, "val_accuracy": _mean(fresh_val), "val_accuracy_retrained": _mean(fresh_val),
        "test_accuracy": _mean(fresh_test), "test_seeds": 2, "baseline_trial": 0,
        "ce_test_accuracy": _mean(fresh_ce_test), "gain_vs_ce": round(gain, 6), "gain_vs_ce_se": round(se, 6)})
    assert _untimed(logged) == [*_lines(1, "trial", fresh_val, fresh_test), *_lines(0, "ce", *_on(ce, fresh))]
