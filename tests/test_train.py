"""Production training: the run folder, its exports, reloading, reproducibility, broken checkpoints."""

import json
import os
import statistics

import pytest
import torch
import yaml

from autokd.config_files import train_config_from_dict
from autokd.data import Normalization, RawInputModel, load_data
from autokd.errors import CheckpointError
from autokd.losses import DistillationLoss
from autokd.teacher_outputs import OnlineTeachers
from autokd.train import build_student, export_student, load_student, prepare_targets, train
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
def raw_digits():
    """The same splits, inputs as scikit-learn gives them (pixel values 0..16), not normalised."""
    return load_data(tiny_config("unused").data, normalize=False)


def predict_onnx(path, x: torch.Tensor) -> torch.Tensor:
    """Logits of an ONNX file: onnxruntime when installed, else onnx's reference evaluator, else a skip."""
    try:
        import onnxruntime
    except ImportError:
        onnx = pytest.importorskip("onnx", reason="neither onnxruntime nor onnx is installed")
        from onnx.reference import ReferenceEvaluator

        return torch.from_numpy(ReferenceEvaluator(onnx.load(str(path))).run(None, {"input": x.numpy()})[0])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


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


# --------------------------------------------------------------------------- input normalisation


def test_dataset_records_its_normalisation_and_what_raw_inputs_are(digits, raw_digits):
    norm = digits.normalization
    assert norm == raw_digits.normalization and "0..16" in norm.raw and "load_digits" in norm.raw
    assert raw_digits.x_train.min() == 0 and raw_digits.x_train.max() == 16
    std, mean = torch.std_mean(raw_digits.x_train)
    assert (norm.mean, norm.std) == (mean.item(), std.item())  # the training split's, as float32 gives them
    for split in ("x_train", "x_val", "x_test"):  # the same arithmetic as load_data: bit-identical
        assert torch.equal(norm.apply(getattr(raw_digits, split)), getattr(digits, split))
    assert Normalization.from_dict(norm.as_dict()) == norm


def test_exports_of_an_untrained_student_take_raw_inputs(tmp_path, digits, raw_digits):
    student = build_student(tiny_config(tmp_path), input_shape=digits.input_shape, num_classes=10).eval()
    exports = export_student(student, digits.input_shape, tmp_path, digits.normalization)
    assert exports["torchscript"] == "student.torchscript.pt"
    assert exports["onnx"] in ("student.onnx", "skipped: onnx is not installed")
    with torch.no_grad():
        expected = student(digits.x_test)
        assert torch.equal(torch.jit.load(str(tmp_path / "student.torchscript.pt"))(raw_digits.x_test), expected)
        assert not torch.equal(student(raw_digits.x_test).argmax(1), expected.argmax(1))  # raw != normalised
    if exports["onnx"] == "student.onnx":
        assert torch.allclose(predict_onnx(tmp_path / "student.onnx", raw_digits.x_test), expected, atol=1e-4)


def test_raw_inputs_need_a_recorded_normalisation(tmp_path, digits):
    folder = _write_untrained_run(tmp_path / "run", tiny_config(tmp_path), digits)  # metrics without one
    with pytest.raises(CheckpointError, match=r"metrics.json: raw_inputs=True: no usable 'normalization' recorded"):
        load_student(folder, raw_inputs=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "normalization": digits.normalization.as_dict()}))
    model = load_student(folder, raw_inputs=True)
    assert isinstance(model, RawInputModel) and not model.training
    assert model.normalization == digits.normalization


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
    assert metrics["normalization"] == load_data(tiny_config("unused").data).normalization.as_dict()


@pytest.mark.slow
def test_load_student_predicts_like_the_trained_model(run, digits):
    loaded = load_student(run.folder)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), run.student(digits.x_test))


@pytest.mark.slow
def test_checkpoint_and_torchscript_load_in_plain_pytorch(run, digits, raw_digits):
    state = torch.load(run.folder / "student.pt", weights_only=True)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    plain.load_state_dict({"1.weight": state["body.1.weight"], "1.bias": state["body.1.bias"],
                           "3.weight": state["head.weight"], "3.bias": state["head.bias"]})
    scripted = torch.jit.load(str(run.folder / "student.torchscript.pt"))
    with torch.no_grad():
        expected = run.student(digits.x_test).argmax(dim=1)
        assert torch.equal(plain(digits.x_test).argmax(dim=1), expected)  # the state_dict: normalised inputs
        assert torch.equal(scripted(raw_digits.x_test).argmax(dim=1), expected)  # TorchScript: raw inputs


@pytest.mark.slow
def test_exports_on_raw_inputs_predict_like_load_student_on_normalised_ones(run, digits, raw_digits):
    """The TorchScript and ONNX files carry the normalisation: raw digits in, the same predictions and accuracy."""
    student, model = load_student(run.folder), load_student(run.folder, raw_inputs=True)
    scripted = torch.jit.load(str(run.folder / "student.torchscript.pt"))
    with torch.no_grad():
        expected = student(digits.x_test)
        assert torch.equal(model(raw_digits.x_test), expected)
        assert torch.equal(scripted(raw_digits.x_test), expected)
        # What the issue saw: the plain student on raw inputs is far less accurate.
        assert evaluate_argmax(student(raw_digits.x_test), digits.y_test) < evaluate_argmax(expected, digits.y_test)
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: no student.onnx to check")
    assert onnx.load(str(run.folder / "student.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    logits = predict_onnx(run.folder / "student.onnx", raw_digits.x_test)  # the batch axis is dynamic
    assert torch.equal(logits.argmax(dim=1), expected.argmax(dim=1))
    assert evaluate_argmax(logits, digits.y_test) == pytest.approx(run.metrics["test_accuracy"])


def evaluate_argmax(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


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
