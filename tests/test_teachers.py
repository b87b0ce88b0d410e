"""Teachers are trained once, cached by content hash, and their outputs are aligned by sample index."""

from __future__ import annotations

import json

import pytest
import torch

from autokd.data import load_data
from autokd.errors import CheckpointError
from autokd.spec import DataSpec, TeacherSpec
from autokd.teacher_outputs import OnlineTeachers, teacher_outputs
from autokd.teachers import prepare_teachers, teacher_key
from autokd.zoo import build_model

MLP = {"family": "mlp", "depth": 1, "width": 24}
CNN = {"family": "cnn", "stages": 1, "channels": 4, "head_width": 0}


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec(name="digits", val_fraction=0.15))


def _specs(epochs: int = 2) -> list[TeacherSpec]:
    return [TeacherSpec(name="mlp", arch=MLP, schedule={"epochs": epochs, "batch_size": 128}),
            TeacherSpec(name="cnn", arch=CNN, schedule={"epochs": epochs, "batch_size": 128}, seed=1)]


def test_cached_outputs_of_a_shuffled_batch_equal_a_fresh_teacher_forward(digits, tmp_path):
    teachers = prepare_teachers(_specs(), digits, tmp_path)
    cached = teacher_outputs(teachers, digits)
    indices = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(0))[:64]
    inputs = digits.x_train[indices]

    cached_logits, cached_features = cached.for_batch(indices, inputs)
    fresh_logits, fresh_features = OnlineTeachers([t.model for t in teachers]).for_batch(indices, inputs)
    assert cached_logits.shape == (2, 64, 10)
    torch.testing.assert_close(cached_logits, fresh_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached_features, fresh_features, rtol=1e-5, atol=1e-5)
    # A misaligned cache would pair a sample with another sample's targets: that must differ.
    assert not torch.allclose(cached.for_batch(indices.roll(1), inputs)[0], fresh_logits)
    assert cached.for_batch(indices, inputs, features=False)[1] is None  # no gather when no feature loss reads it


def test_second_call_trains_nothing_and_reads_the_outputs_from_disk(digits, tmp_path):
    first_log: list[str] = []
    first = prepare_teachers(_specs(), digits, tmp_path, log=first_log.append)
    teacher_outputs(first, digits)
    assert sum(": trained" in line for line in first_log) == 2  # one line per teacher trained (no terminal)

    second_log: list[str] = []
    second = prepare_teachers(_specs(), digits, tmp_path, log=second_log.append)
    assert second_log == []
    for old, new in zip(first, second):
        assert old.folder == new.folder and old.meta == new.meta
        for name, tensor in old.model.state_dict().items():
            assert torch.equal(tensor, new.model.state_dict()[name])
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("outputs.pt")}
    teacher_outputs(second, digits)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("outputs.pt")} == stamps


def test_the_key_changes_with_everything_that_determines_the_weights(digits):
    spec = _specs()[0]
    base = teacher_key(spec, digits.fingerprint())
    assert teacher_key(spec, digits.fingerprint()) == base
    changed = [spec.model_copy(update={"seed": 5}), spec.model_copy(update={"arch": {**MLP, "width": 25}}),
               spec.model_copy(update={"schedule": spec.schedule.model_copy(update={"epochs": 3})})]
    keys = {teacher_key(s, digits.fingerprint()) for s in changed}
    keys |= {teacher_key(spec, "other data"), teacher_key(spec, digits.fingerprint(), "checkpoint digest")}
    assert base not in keys and len(keys) == 5


def test_an_entry_without_its_meta_file_is_not_trusted(digits, tmp_path):
    (teacher,) = prepare_teachers(_specs()[:1], digits, tmp_path)
    meta = json.loads((teacher.folder / "meta.json").read_text())
    (teacher.folder / "meta.json").unlink()  # a crash between the two writes
    (teacher.folder / "model.pt").write_bytes(b"half a file")
    log: list[str] = []
    (again,) = prepare_teachers(_specs()[:1], digits, tmp_path, log=log.append)
    assert any("training" in line for line in log)
    assert again.meta["val_accuracy"] == meta["val_accuracy"]  # seeded: the same teacher again


def test_a_checkpoint_teacher_is_loaded_not_trained(digits, tmp_path):
    model = build_model(MLP, digits.input_shape, digits.num_classes, seed=3)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    spec = TeacherSpec(name="mine", arch=MLP, checkpoint=str(tmp_path / "mine.pt"))
    log: list[str] = []
    (teacher,) = prepare_teachers([spec], digits, tmp_path / "cache", log=log.append)
    assert not any("training" in line for line in log)
    inputs = digits.x_val[:16]
    torch.testing.assert_close(teacher.model(inputs), model.eval()(inputs))


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_is_written(digits, tmp_path):
    torch.save(build_model({**MLP, "width": 7}, digits.input_shape, 10).state_dict(), tmp_path / "other.pt")
    specs = [_specs()[0], TeacherSpec(name="other", arch=MLP, checkpoint=str(tmp_path / "other.pt"))]
    with pytest.raises(CheckpointError, match=r"^s\.yaml: teachers\.1\.checkpoint: .*does not match"):
        prepare_teachers(specs, digits, tmp_path / "cache", source="s.yaml")
    assert not (tmp_path / "cache").exists()  # teacher 0 was not trained first


def test_online_teachers_take_any_module_that_returns_logits(digits):
    zoo = build_model(MLP, digits.input_shape, digits.num_classes, seed=0)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # no forward_features, no feature_dim
    online = OnlineTeachers([zoo, plain], ["zoo", "plain"])
    inputs = digits.x_train[:5]
    logits, features = online.for_batch(torch.arange(5), inputs, features=False)
    assert features is None and online.feature_dim == zoo.feature_dim
    torch.testing.assert_close(logits, torch.stack([zoo.eval()(inputs), plain(inputs)]).detach())
    with pytest.raises(ValueError, match=r"teacher\(s\) \['plain'\] give none"):  # a feature loss would miss its part
        online.for_batch(torch.arange(5), inputs, features=True)
