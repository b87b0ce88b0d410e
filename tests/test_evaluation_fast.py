"""Test re-evaluation, fast: the front's test accuracy is measured on the test split (the only code
that touches it), with the trial's own retrained student. tests/test_evaluation.py (slow) covers
baselines, caching and two-level studies on real data.

The data makes the splits disagree on purpose: the test inputs are the validation inputs with other
labels, so a student measured on the wrong split gets a very different accuracy.
"""

from __future__ import annotations

import numpy as np
import optuna
import torch

from autokd.data import load_data
from autokd.evaluation import baseline_config, cache_key, evaluate_front
from autokd.runner import run_config
from autokd.spec import StudySpec


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
