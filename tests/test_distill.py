"""The one training loop: it learns, it is deterministic, it reports every epoch, it stops on request,
and a non-finite loss is an error with the epoch and step."""

from __future__ import annotations

import pytest
import torch

from autokd.data import Dataset, load_data
from autokd.distill import evaluate, fit
from autokd.errors import NonFiniteLossError
from autokd.spec import DataSpec, DistillSpec, ScheduleSpec
from autokd.zoo import build_model

MLP = {"family": "mlp", "depth": 1, "width": 32}


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec(name="digits", val_fraction=0.15))


def _student(digits, seed=0):
    return build_model(MLP, digits.input_shape, digits.num_classes, seed=seed)


CE_ONLY = DistillSpec(w_ce=1.0, w_kd=0.0)


def test_fit_learns_digits_and_reports_every_epoch(digits):
    epochs = []
    result = fit(_student(digits), digits, None, CE_ONLY, ScheduleSpec(epochs=4, batch_size=64, lr=0.01), seed=0,
                 device="cpu", on_epoch=epochs.append)
    assert [e.epoch for e in epochs] == [1, 2, 3, 4] == [e.epoch for e in result.history]
    assert result.epochs_trained == 4 and result.val_accuracy == epochs[-1].val_accuracy
    assert result.val_accuracy > 0.85  # chance is 0.1
    assert epochs[-1].train_loss < epochs[0].train_loss


def test_returning_true_from_on_epoch_stops_training(digits):
    result = fit(_student(digits), digits, None, CE_ONLY, ScheduleSpec(epochs=5), seed=0, device="cpu",
                 on_epoch=lambda epoch: epoch.epoch == 2)
    assert result.epochs_trained == 2


def test_same_seed_same_accuracy_other_seed_other_run(digits):
    schedule = ScheduleSpec(epochs=2, batch_size=64)
    runs = [fit(_student(digits, seed), digits, None, CE_ONLY, schedule, seed=seed, device="cpu")
            for seed in (0, 0, 1)]
    assert runs[0].history[0].train_loss == runs[1].history[0].train_loss
    assert runs[0].history[0].train_loss != runs[2].history[0].train_loss


def test_a_non_finite_loss_raises_with_where_it_happened(digits):
    # lr 1e30 (an infinite one is refused by the spec) sends the weights, then the loss, to inf/NaN.
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at epoch 1, step \d+"):
        fit(_student(digits), digits, None, CE_ONLY, ScheduleSpec(epochs=2, lr=1e30), seed=0, device="cpu")


def test_distilling_from_cached_teacher_logits_moves_the_student_towards_them(digits):
    """With w_ce = 0 the student learns only from the teacher: it must agree with it far above chance."""
    teacher = build_model({"family": "mlp", "depth": 1, "width": 64}, digits.input_shape, 10, seed=1)
    fit(teacher, digits, None, CE_ONLY, ScheduleSpec(epochs=4, lr=0.01), seed=1, device="cpu")

    class Cached:
        feature_dim = teacher.feature_dim
        logits, features = teacher.eval().forward_features(digits.x_train)

        def for_batch(self, indices, inputs, features=True):
            return self.logits.detach()[indices].unsqueeze(0), self.features.detach()[indices] if features else None

    student = _student(digits)
    fit(student, digits, Cached(), DistillSpec(w_ce=0.0, w_kd=1.0, temperature=2.0),
        ScheduleSpec(epochs=4, lr=0.01), seed=0, device="cpu")
    with torch.no_grad():
        agreement = (student(digits.x_val).argmax(1) == teacher(digits.x_val).argmax(1)).float().mean().item()
    assert agreement > 0.8


# ---------------------------------------------------------------------------------------------
# Validation is measured in eval mode, on the validation split (mutation testing found both untested)


def _blobs(n: int, generator: torch.Generator, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 1, 8, 8] noisy images whose class is their brightness: separable in a few epochs (pooling keeps it)."""
    y = torch.arange(n) % classes
    return torch.randn(n, 1, 8, 8, generator=generator) * 0.3 + y.view(-1, 1, 1, 1).float(), y


def _hand_accuracy(model, inputs, labels) -> float:
    with torch.no_grad():
        return (model(inputs).argmax(dim=1) == labels).float().mean().item()


def test_evaluate_runs_in_eval_mode_leaves_batch_norm_statistics_alone_and_restores_the_mode():
    generator = torch.Generator().manual_seed(0)
    x, y = _blobs(64, generator)
    model = build_model({"family": "cnn", "stages": 1, "channels": 4, "batch_norm": True, "head_width": 0},
                        (1, 8, 8), 4, seed=0)
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_mean.fill_(0.7)  # running statistics far from this batch's: eval and train mode disagree
    norm.running_var.fill_(3.0)
    before = (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked))
    model.train()
    accuracy = evaluate(model, x, y, batch_size=16)
    assert model.training  # the caller's mode is restored
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert int(norm.num_batches_tracked) == before[2]
    assert accuracy == _hand_accuracy(model.eval(), x, y)
    assert evaluate(model, x, y) == accuracy and not model.training  # eval mode stays eval mode
    dropped = build_model({"family": "mlp", "depth": 1, "width": 64, "dropout": 0.9}, (1, 8, 8), 4, seed=0).train()
    assert evaluate(dropped, x, y) == _hand_accuracy(dropped.eval(), x, y)  # no dropout while measuring


def test_fit_measures_the_validation_split_not_the_training_split():
    """Val inputs are training inputs with other labels: accuracy on them must be the val one."""
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = _blobs(128, generator)
    x_test, y_test = _blobs(32, generator)
    x_val, y_val = x_train[:48], (y_train[:48] + 1) % 4
    data = Dataset("blobs", x_train, y_train, x_val, y_val, x_test, y_test, num_classes=4, input_shape=(1, 8, 8))
    student = build_model({"family": "cnn", "stages": 1, "channels": 4, "batch_norm": True, "head_width": 0},
                          (1, 8, 8), 4, seed=0)
    result = fit(student, data, None, CE_ONLY, ScheduleSpec(epochs=6, batch_size=16, lr=0.03), seed=0, device="cpu")
    assert not student.training
    on_val, on_train = _hand_accuracy(student, x_val, y_val), _hand_accuracy(student, x_train, y_train)
    assert on_train > on_val + 0.3  # the two splits tell apart
    assert result.val_accuracy == result.history[-1].val_accuracy == on_val
