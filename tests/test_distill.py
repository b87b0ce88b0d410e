"""The one training loop: it learns, it is deterministic, it reports every epoch, it stops on request,
and a non-finite loss is an error with the epoch and step."""

from __future__ import annotations

import pytest
import torch

from autokd.data import load_data
from autokd.distill import fit
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
