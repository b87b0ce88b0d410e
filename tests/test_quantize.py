"""int8 students: post-training quantisation, its size rule, the int8 objective in a search, the int8 export."""

import json
import os
import subprocess

import optuna
import pytest
import torch

import autokd
from autokd.config_files import _validate, train_config_from_dict
from autokd.data import load_data
from autokd.distill import evaluate
from autokd.errors import ConfigError
from autokd.quantize import evaluate_int8, int8_val_accuracy, quantize_student
from autokd.runner import run_config
from autokd.sizes import model_size
from autokd.spec import StudySpec, TrainConfig
from autokd.train import INT8_FILE, export_student, train
from autokd.zoo import ZooModel, build_model

from conftest import AUTOKD, REPO, tiny_study

MLP = {"family": "mlp", "depth": 1, "width": 64}


def ce_config(student: dict, epochs: int, **changes) -> TrainConfig:
    """Digits, cross-entropy only (no teacher to train), one thread: a few epochs take about a second."""
    return train_config_from_dict({"name": "int8", "data": {"name": "digits", "val_fraction": 0.15},
                                   "student": student, "distill": {"w_ce": 1.0, "w_kd": 0.0},
                                   "schedule": {"epochs": epochs, "batch_size": 64, "lr": 0.005},
                                   "device": "cpu", "threads": 1, **changes})


@pytest.fixture(scope="module")
def digits():
    return load_data(ce_config(MLP, 1).data)


@pytest.fixture(scope="module")
def raw_digits():
    """The same splits, inputs as scikit-learn gives them (what the exported files take)."""
    return load_data(ce_config(MLP, 1).data, normalize=False)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    student, _ = run_config(ce_config(MLP, 6), digits, None)
    return student


def _stored_int8_bytes(quantised: torch.nn.Module) -> int:
    """What the quantised model holds, counted from its tensors: int8 weights, their per-channel scales and
    zero points (counted at 8 bytes a pair, as the rule says), fp32 biases and any fp32 parameter left."""
    total = 0
    for module in quantised.modules():
        if callable(getattr(module, "weight", None)) and callable(getattr(module, "bias", None)):  # quantised
            weight, bias = module.weight(), module.bias()
            assert weight.dtype == torch.qint8 and weight.qscheme() in (torch.per_channel_affine,
                                                                         torch.per_channel_symmetric)
            total += weight.numel() + 8 * weight.q_per_channel_scales().numel()
            total += 4 * bias.numel() if bias is not None else 0
        else:
            total += 4 * sum(p.numel() for p in module.parameters(recurse=False))
    return total


# --------------------------------------------------------------------------- quantising


def test_an_int8_mlp_is_within_one_point_of_fp32_on_digits(digits, trained_mlp):
    int8 = quantize_student(trained_mlp)  # dynamic: no calibration
    for x, y in ((digits.x_val, digits.y_val), (digits.x_test, digits.y_test)):
        fp32 = evaluate(trained_mlp, x, y)
        assert fp32 > 0.9
        assert abs(evaluate_int8(int8, x, y) - fp32) <= 0.01
    assert int8_val_accuracy(trained_mlp, digits, 1024) == evaluate_int8(int8, digits.x_val, digits.y_val)


def test_quantising_leaves_the_student_as_it_was(trained_mlp):
    before = {name: tensor.clone() for name, tensor in trained_mlp.state_dict().items()}
    int8 = quantize_student(trained_mlp)
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.modules())  # every Linear is int8
    assert all(torch.equal(before[name], tensor) for name, tensor in trained_mlp.state_dict().items())
    assert isinstance(trained_mlp.head, torch.nn.Linear)


@pytest.mark.parametrize("arch", [MLP, {"family": "mlp", "depth": 2, "width": 16, "activation": "gelu"},
                                  {"family": "cnn", "stages": 2, "channels": 4, "head_width": 8},
                                  {"family": "cnn", "stages": 1, "channels": 4, "batch_norm": False},
                                  {"family": "resnet", "blocks": 2, "channels": 4}])
def test_bytes_int8_is_what_the_quantised_model_stores(digits, arch):
    student = build_model(arch, digits.input_shape, digits.num_classes, seed=0).eval()
    int8 = quantize_student(student, digits.x_train[:256])
    assert _stored_int8_bytes(int8) == model_size(student, digits.input_shape).bytes_int8


@pytest.mark.parametrize("arch", [{"family": "cnn", "stages": 2, "channels": 8},
                                  {"family": "resnet", "blocks": 2, "channels": 8}])
def test_convolutional_students_quantise_statically_after_calibration(digits, arch):
    student, _ = run_config(ce_config(arch, 2), digits, None)
    int8 = quantize_student(student, digits.x_train[:512])
    assert any(module.__class__.__module__.startswith("torch.ao.nn.quantized") for module in int8.modules())
    agree = (int8(digits.x_val).argmax(1) == student(digits.x_val).argmax(1)).float().mean().item()
    assert agree >= 0.95
    with pytest.raises(ValueError, match=f"a {arch['family']} student needs calibration inputs"):
        quantize_student(student)


def test_a_family_without_an_int8_path_is_refused_by_name():
    other = ZooModel({"family": "custom"}, torch.nn.Flatten(), 64, 10)
    with pytest.raises(ValueError, match=r"quantize.int8: student family 'custom' is not supported; int8 "
                                         r"students are \['mlp', 'cnn', 'resnet'\]"):
        quantize_student(other)


# --------------------------------------------------------------------------- the study file


def _study(**fields) -> StudySpec:
    return _validate(StudySpec, {"name": "s", "search_space": {}, "distill": {"w_ce": 1.0, "w_kd": 0.0}, **fields},
                     "s.yaml")


def test_the_int8_objective_turns_quantisation_on_and_searches_flat():
    spec = _study(objectives=["val_accuracy_int8", "bytes_int8"], constraints=["bytes_int8 <= 4000"])
    assert spec.quantize.int8 and spec.search.mode == "flat" and spec.directions == ["maximize", "minimize"]
    assert spec.size_limits() == {"bytes_int8": 4000.0}
    assert spec.train_config().quantize.int8  # every trial's config asks, and an exported one too
    assert not _study(objectives=["val_accuracy", "bytes_int8"]).quantize.int8


@pytest.mark.parametrize(("fields", "message"), [
    ({"objectives": ["val_accuracy_int8", "bytes_int8"], "quantize": {"int8": False}},
     "s.yaml: <top level>: quantize.int8: must be true when the first objective is 'val_accuracy_int8', got false"),
    ({"objectives": ["val_accuracy_int8", "params"], "search": {"mode": "two_level"}},
     "s.yaml: <top level>: search.mode: a study whose first objective is 'val_accuracy_int8' searches flat (the "
     "two-level front choice pairs fp32 accuracies); use flat or auto, got 'two_level'"),
    ({"objectives": ["bytes_int8", "params"]},
     "s.yaml: objectives: the first objective must be 'val_accuracy' or 'val_accuracy_int8', "
     "got ['bytes_int8', 'params']"),
    ({"objectives": ["val_accuracy_int8", "val_accuracy"]},
     "s.yaml: objectives: after 'val_accuracy_int8' give one or two of ['params', 'bytes_fp32', 'bytes_fp16', "
     "'bytes_int8', 'macs'], got ['val_accuracy']"),
    ({"quantize": {"int8": True, "calibration_samples": 0}},
     "s.yaml: quantize.calibration_samples: must be > 0, got 0"),
])
def test_int8_settings_that_cannot_work_are_one_line_naming_the_key(fields, message):
    with pytest.raises(ConfigError) as error:
        _study(**fields)
    assert str(error.value) == message


def test_a_config_that_does_not_quantise_dumps_as_before():
    # Cache keys of earlier evaluations hash the dump: a config without int8 must not change it.
    assert "quantize" not in ce_config(MLP, 1).model_dump()
    assert "quantize" not in _study().model_dump(mode="json")
    asked = ce_config(MLP, 1, quantize={"int8": True})
    assert asked.model_dump(mode="json")["quantize"] == {"int8": True, "calibration_samples": 1024}
    assert TrainConfig.model_validate(asked.model_dump()) == asked


# --------------------------------------------------------------------------- a search on int8 accuracy


@pytest.mark.slow
def test_a_flat_search_on_int8_accuracy_and_bytes_stores_the_int8_accuracy(tmp_path):
    space = {"params": {"student.width": {"type": "int", "low": 8, "high": 64, "log": True},
                        "schedule.lr": {"type": "float", "low": 0.003, "high": 0.02, "log": True}}}
    path = tiny_study(tmp_path, name="int8", trials=2, epochs=2, teachers=[], search_space=space,
                      distill={"w_ce": 1.0, "w_kd": 0.0}, objectives=["val_accuracy_int8", "bytes_int8"],
                      resources={"cpus_per_trial": 1, "concurrency": 1})
    result = autokd.search(path, progress=False, log=lambda message: None)
    trials = result.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.values == [attrs["val_accuracy_int8"], attrs["bytes_int8"]]
        assert 0.5 < attrs["val_accuracy_int8"] <= 1 and abs(attrs["val_accuracy_int8"] - attrs["val_accuracy"]) < 0.05
        assert attrs["val_accuracy_curve"][-1] == attrs["val_accuracy"]  # one curve point per epoch, fp32
        assert len(attrs["val_accuracy_curve"]) == 2
        assert attrs["config"]["quantize"]["int8"] is True
    assert list(result.pareto.columns[:4]) == ["trial", "state", "val_accuracy_int8", "bytes_int8"]


# --------------------------------------------------------------------------- the run folder


def test_train_writes_an_int8_torchscript_that_predicts_like_the_quantised_model(tmp_path, digits, raw_digits):
    run = train(ce_config(MLP, 3, quantize={"int8": True}), tmp_path / "run", log=lambda message: None)
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert metrics["exports"]["int8"] == INT8_FILE
    int8 = quantize_student(run.student)
    assert metrics["test_accuracy_int8"] == run.metrics["test_accuracy_int8"] == evaluate_int8(
        int8, digits.x_test, digits.y_test)
    assert metrics["val_accuracy_int8"] == evaluate_int8(int8, digits.x_val, digits.y_val)
    assert abs(metrics["test_accuracy_int8"] - metrics["test_accuracy"]) <= 0.01
    assert metrics["bytes_int8"] == model_size(run.student, digits.input_shape).bytes_int8
    loaded = torch.jit.load(str(run.folder / INT8_FILE))
    assert torch.equal(loaded(raw_digits.x_test), int8(digits.x_test))  # raw inputs, like student.torchscript.pt


def test_a_run_without_int8_writes_no_int8_file(tmp_path):
    run = train(ce_config(MLP, 1), tmp_path / "run", log=lambda message: None)
    assert not (run.folder / INT8_FILE).exists()
    assert "int8" not in run.metrics["exports"] and "test_accuracy_int8" not in run.metrics


def test_a_quantised_cnn_exports_to_torchscript_too(tmp_path, digits, raw_digits):
    student = build_model({"family": "cnn", "stages": 2, "channels": 4}, digits.input_shape, 10, seed=0).eval()
    int8 = quantize_student(student, digits.x_train[:256])
    exports = export_student(student, digits.input_shape, tmp_path, digits.normalization, int8)
    assert exports["int8"] == INT8_FILE
    loaded = torch.jit.load(str(tmp_path / INT8_FILE))
    assert torch.equal(loaded(raw_digits.x_val), int8(digits.x_val))


@pytest.mark.slow
def test_an_int8_study_searches_and_reports_through_the_cli(tmp_path):
    """As a user types it: progress, the front and the report read the fp32 accuracy from its attr."""
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=2, epochs=1,
                            objectives=["val_accuracy_int8", "bytes_int8"],
                            search_space={"params": {"student.width": {"type": "int", "low": 8, "high": 32}}})
    completed = subprocess.run([*AUTOKD, "search", study_file.name], cwd=tmp_path, capture_output=True, text=True,
                               timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0 and "Traceback" not in completed.stderr, completed.stderr[-2000:]
    summary = json.loads((tmp_path / "reports" / "tiny" / "summary.json").read_text())
    assert all(row["val_accuracy"] is not None and row["val_accuracy_int8"] is not None for row in summary["front"])
