"""Production training: the run folder, its exports, reloading, reproducibility, broken checkpoints."""

import json
import os
import statistics

import pytest
import torch
import yaml

from autokd.data import load_data
from autokd.errors import CheckpointError
from autokd.losses import DistillationLoss
from autokd.spec import train_config_from_dict
from autokd.teachers import OnlineTeachers
from autokd.train import build_student, load_student, prepare_targets, train
from autokd.zoo import build_model

STUDENT = {"family": "mlp", "depth": 1, "width": 16}
RUN_FILES = {"student.pt", "student.torchscript.pt", "student.onnx", "config.yaml", "metrics.json"}


def tiny_config(cache_dir, **changes):
    """Digits, a 16-wide MLP student, one small MLP teacher trained for 3 epochs (about a second)."""
    document = {
        "name": "tiny",
        "data": {"name": "digits", "val_fraction": 0.15},
        "teachers": [{"name": "teacher", "arch": {"family": "mlp", "depth": 1, "width": 64},
                      "schedule": {"epochs": 3, "batch_size": 64}}],
        "student": STUDENT,
        "distill": {"kind": "kl", "temperature": 4.0, "w_ce": 0.5, "w_kd": 0.5},
        "schedule": {"epochs": 3, "batch_size": 64, "lr": 0.005},
        "seed": 7,
        "device": "cpu",
        "cache_dir": str(cache_dir),
        **changes,
    }
    return train_config_from_dict(document)


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def digits():
    return load_data(tiny_config("unused").data)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    return train(tiny_config(cache_dir), tmp_path_factory.mktemp("runs") / "tiny", log=quiet)


def _write_untrained_run(folder, config, digits):
    """A run folder as `write_run` lays it out, without training or exporting (fast)."""
    folder.mkdir()
    torch.save(build_student(config, input_shape=digits.input_shape, num_classes=10).state_dict(),
               folder / "student.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    (folder / "metrics.json").write_text(json.dumps({"input_shape": list(digits.input_shape), "num_classes": 10}))
    return folder


# --------------------------------------------------------------------------- build_student


def test_build_student_is_seeded_and_leaves_the_callers_rng_alone(tmp_path, digits):
    config = tiny_config(tmp_path)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = build_student(config, input_shape=digits.input_shape, num_classes=10)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.randn(1000)  # whatever ran before must not change the student's initial weights
    second = build_student(config, input_shape=digits.input_shape, num_classes=10)
    other = build_student(config, input_shape=digits.input_shape, num_classes=10, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.body[1].weight, other.body[1].weight)


def test_build_student_from_a_yaml_file_finds_shape_and_classes(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path).model_dump(mode="json")))
    student = build_student(path)
    assert student.training and student(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_readme_example_one_distillation_step(tmp_path):
    config = tiny_config(tmp_path)
    student = build_student(config, input_shape=(1, 8, 8), num_classes=10)
    loss_fn = DistillationLoss.from_config(config, student_feature_dim=student.feature_dim)
    x, y, teacher_logits = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), torch.randn(1, 4, 10)
    loss, parts = loss_fn(student(x), y, teacher_logits)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) >= {"ce", "kd"}


# --------------------------------------------------------------------------- broken checkpoints


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(os.urandom(4096)), "cannot read checkpoint"),
    (lambda path: torch.save(build_model({"family": "mlp", "depth": 2, "width": 64}, (1, 8, 8), 10).state_dict(),
                             path), "does not match the architecture"),
    (lambda path: path.unlink(), "checkpoint not found"),
    (lambda path: torch.save([1, 2, 3], path), "holds a list, expected a state_dict"),
])
def test_broken_student_checkpoint_is_one_line_checkpoint_error(tmp_path, digits, damage, message):
    folder = _write_untrained_run(tmp_path / "run", tiny_config(tmp_path), digits)
    damage(folder / "student.pt")
    with pytest.raises(CheckpointError) as error:
        load_student(folder)
    assert message in str(error.value) and str(folder) in str(error.value) and "\n" not in str(error.value)


def test_folder_that_is_not_a_run_is_one_line_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"not an autokd run folder \(no config.yaml\)$"):
        load_student(tmp_path)


def test_untrained_run_folder_loads_in_eval_mode(tmp_path, digits):
    folder = _write_untrained_run(tmp_path / "run", tiny_config(tmp_path), digits)
    assert not load_student(folder).training


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_run_folder_holds_checkpoint_exports_config_and_metrics(run):
    assert {p.name for p in run.folder.iterdir()} == RUN_FILES
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert metrics["exports"] == {"torchscript": "student.torchscript.pt", "onnx": "student.onnx"}
    assert metrics["input_shape"] == [1, 8, 8] and metrics["num_classes"] == 10
    assert metrics["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert 0.5 < metrics["val_accuracy"] <= 1 and "teacher" in metrics["teachers"]


@pytest.mark.slow
def test_load_student_predicts_like_the_trained_model(run, digits):
    loaded = load_student(run.folder)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), run.student(digits.x_test))


@pytest.mark.slow
def test_checkpoint_and_torchscript_load_in_plain_pytorch(run, digits):
    state = torch.load(run.folder / "student.pt", weights_only=True)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    plain.load_state_dict({"1.weight": state["body.1.weight"], "1.bias": state["body.1.bias"],
                           "3.weight": state["head.weight"], "3.bias": state["head.bias"]})
    scripted = torch.jit.load(str(run.folder / "student.torchscript.pt"))
    with torch.no_grad():
        expected = run.student(digits.x_test).argmax(dim=1)
        assert torch.equal(plain(digits.x_test).argmax(dim=1), expected)
        assert torch.equal(scripted(digits.x_test).argmax(dim=1), expected)


@pytest.mark.slow
def test_onnx_export_predicts_like_pytorch_on_the_whole_test_split(run, digits):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(run.folder / "student.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic
    logits = ReferenceEvaluator(model).run(None, {"input": digits.x_test.numpy()})[0]
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(logits).argmax(dim=1), run.student(digits.x_test).argmax(dim=1))


@pytest.mark.slow
def test_same_config_and_seed_train_to_identical_weights(run, tmp_path, cache_dir):
    torch.randn(1000)  # the global RNG state before training must not matter
    again = train(tiny_config(cache_dir), tmp_path / "again", log=quiet)
    assert again.metrics["val_accuracy"] == run.metrics["val_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(again.student.state_dict().values(),
                                                 run.student.state_dict().values()))


@pytest.mark.slow
def test_two_seeds_report_mean_and_std(tmp_path, cache_dir):
    metrics = train(tiny_config(cache_dir), tmp_path / "two", seeds=2, log=quiet).metrics
    values = [row["test_accuracy"] for row in metrics["seeds"]]
    assert [row["seed"] for row in metrics["seeds"]] == [7, 8]
    assert metrics["test_accuracy_mean"] == pytest.approx(statistics.fmean(values))
    assert metrics["test_accuracy_std"] == pytest.approx(statistics.stdev(values))
    assert metrics["val_accuracy_std"] >= 0


@pytest.mark.slow
def test_augmentation_runs_the_teachers_online(tmp_path, cache_dir, digits):
    _, targets = prepare_targets(tiny_config(cache_dir, augment=["shift"]), digits, log=quiet)
    assert isinstance(targets, OnlineTeachers)  # cached outputs would not match the shifted inputs
    run = train(tiny_config(cache_dir), tmp_path / "shift", augment=["shift"], log=quiet)
    assert yaml.safe_load((run.folder / "config.yaml").read_text())["augment"] == ["shift"]
    assert 0 < run.metrics["val_accuracy"] <= 1


@pytest.mark.slow
def test_a_teacher_other_than_the_exported_one_is_reported(tmp_path, cache_dir):
    lines = []
    config = tiny_config(cache_dir, provenance={"trial": 4, "teacher_keys": {"teacher": "0" * 64}})
    train(config, tmp_path / "changed", log=lines.append)
    assert any(line.startswith("warning: teacher 'teacher'") and "trial 4" in line for line in lines)


@pytest.mark.slow
def test_failed_export_is_recorded_not_raised(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("onnx")  # without it the export is "skipped", not attempted

    def broken_exporter(*args, **kwargs):
        raise RuntimeError("unsupported operator\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken_exporter)
    run = train(tiny_config(cache_dir), tmp_path / "noonnx", log=quiet)
    exports = json.loads((run.folder / "metrics.json").read_text())["exports"]
    assert exports["onnx"] == "failed: RuntimeError: unsupported operator"
    assert not (run.folder / "student.onnx").exists() and (run.folder / "student.pt").is_file()
