"""The one training loop: it learns, it is deterministic, it reports every epoch, it stops on request,
and a non-finite loss is an error with the epoch and step."""

from __future__ import annotations

import pytest
import torch

from autokd.data import Dataset, load_data
from autokd.distill import augment_batch, evaluate, fit
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


# ---------------------------------------------------------------------------------------------
# Augmentation: each sample shifted (zero pad 2, crop back) and/or flipped, the draws from the generator


def _hand_augment(inputs, offsets, flips):
    """Each sample cropped from a zero border of 2 at `offsets` (one list per spatial axis), then flipped
    along its last axis where `flips` says so: an explicit per-sample loop, no F.pad, no fancy indexing."""
    spatial = inputs.shape[2:]
    padded = torch.zeros(*inputs.shape[:2], *[size + 4 for size in spatial], dtype=inputs.dtype)
    padded[(slice(None), slice(None), *[slice(2, 2 + size) for size in spatial])] = inputs
    samples = []
    for i in range(len(inputs)):
        sample = padded[i]
        for axis, size in enumerate(spatial):
            sample = sample.narrow(axis + 1, int(offsets[axis][i]), size)
        samples.append(sample.flip(-1) if flips[i] else sample)
    return torch.stack(samples)


def _replayed_draws(n, spatial_axes, kinds, seed):
    """The generator's draws in the order augment_batch makes them: one offset in 0..4 per sample and
    spatial axis (shift), then one uniform per sample, flipped below 0.5 (flip)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = [[2] * n for _ in range(spatial_axes)]  # no shift: the crop of the input itself
    flips = [False] * n
    if "shift" in kinds:
        offsets = [torch.randint(0, 5, (n,), generator=generator).tolist() for _ in range(spatial_axes)]
    if "flip" in kinds:
        flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    return offsets, flips


@pytest.mark.parametrize("shape", [(40, 3, 5, 7), (40, 2, 9)], ids=["image", "signal"])
@pytest.mark.parametrize("kinds", [["shift"], ["flip"], ["shift", "flip"], ("flip", "shift")],
                         ids=["shift", "flip", "both", "both-reversed"])
def test_augment_batch_equals_a_per_sample_crop_of_the_zero_padded_input_then_flip(shape, kinds):
    """Images [N, C, H, W] (H != W, C > 1) and signals [N, C, L]: the output is exactly the hand crop
    and flip with the offsets and flips the same seed draws; shifts come before flips, whatever the order
    of `kinds`."""
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) + 1.0  # no zeros: borders show
    before = inputs.clone()
    out = augment_batch(inputs, kinds, torch.Generator().manual_seed(3))
    offsets, flips = _replayed_draws(len(inputs), len(shape) - 2, kinds, seed=3)
    expected = _hand_augment(inputs, offsets, flips)
    assert out.shape == inputs.shape and out.dtype == inputs.dtype and out.is_contiguous()
    assert torch.equal(out, expected)
    assert torch.equal(inputs, before)  # the caller's batch is not changed in place
    if "shift" in kinds:  # every offset 0..4 is drawn on each axis: a narrower or wider range would not match
        assert all(set(axis) == {0, 1, 2, 3, 4} for axis in offsets)
        assert (out == 0).any()  # some crops reach into the zero border
    else:
        assert torch.equal(torch.where(torch.tensor(flips).view(-1, *[1] * (len(shape) - 1)), out.flip(-1), out),
                           inputs)
    if "flip" in kinds:
        assert 0.3 * len(inputs) < sum(flips) < 0.7 * len(inputs)  # about half the samples
    else:
        assert not any(flips)


def test_augment_batch_flips_about_half_the_samples_left_to_right_only():
    """A flip reverses the last (width) axis of a sample and nothing else; about half the samples are."""
    inputs = torch.arange(200 * 2 * 3 * 4, dtype=torch.float32).view(200, 2, 3, 4)
    out = augment_batch(inputs, ["flip"], torch.Generator().manual_seed(0))
    flipped = [not torch.equal(o, i) for o, i in zip(out, inputs)]
    assert 80 < sum(flipped) < 120
    for o, i, was_flipped in zip(out, inputs, flipped):
        assert torch.equal(o, i[:, :, [3, 2, 1, 0]] if was_flipped else i)


def test_augment_batch_shifts_by_at_most_two_positions_each_way():
    """A shifted sample is the input moved by -2..2 on each axis with zeros coming in; all 25 moves occur."""
    inputs = torch.arange(1, 1 + 300 * 6 * 5, dtype=torch.float64).view(300, 1, 6, 5)  # every value distinct, > 0
    out = augment_batch(inputs, ["shift"], torch.Generator().manual_seed(1))
    moves = set()
    for o, i in zip(out, inputs):
        corner = next((y, x) for y in range(6) for x in range(5) if o[0, y, x] != 0)
        source = (i[0] == o[0, corner[0], corner[1]]).nonzero()[0].tolist()  # where that value was in the input
        dy, dx = corner[0] - source[0], corner[1] - source[1]
        moved = torch.zeros_like(i)
        moved[0, max(dy, 0):6 + min(dy, 0), max(dx, 0):5 + min(dx, 0)] = i[0, max(-dy, 0):6 - max(dy, 0),
                                                                              max(-dx, 0):5 - max(dx, 0)]
        assert torch.equal(o, moved)
        moves.add((dy, dx))
    assert moves == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_augment_batch_without_kinds_is_the_identity_and_draws_nothing():
    """No kinds: the batch comes back as it is, and the generator is not advanced (runs without
    augmentation keep their random stream)."""
    inputs = torch.randn(4, 3, 5, 7)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert torch.equal(augment_batch(inputs, [], generator), inputs)
    assert torch.equal(generator.get_state(), state)


def test_augment_batch_draws_from_the_generator_it_is_given():
    """Same seed, same batch; another seed, another batch; the global torch seed plays no part."""
    inputs = torch.randn(16, 2, 6, 6)
    runs = []
    for seed, global_seed in [(0, 0), (0, 1), (1, 0)]:
        torch.manual_seed(global_seed)
        runs.append(augment_batch(inputs, ["shift", "flip"], torch.Generator().manual_seed(seed)))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    generator = torch.Generator().manual_seed(0)  # a second batch continues the stream: other draws
    assert not torch.equal(augment_batch(inputs, ["shift", "flip"], generator),
                           augment_batch(inputs, ["shift", "flip"], generator))


# ---------------------------------------------------------------------------------------------
# Unlabeled data: cached teacher outputs must cover the whole pool (labeled rows, then unlabeled)


def test_cached_outputs_that_do_not_cover_the_pool_are_refused_with_both_counts():
    data = load_data(DataSpec(name="digits", val_fraction=0.15, unlabeled={"keep_labels": 200}))
    pool = len(data.y_train) + data.n_unlabeled
    assert data.n_unlabeled > 0 and len(data.y_train) == 200

    class Cached:
        feature_dim = 0

        def __init__(self, rows):
            self.train_logits = torch.zeros(1, rows, 10)

        def for_batch(self, indices, inputs, features=True):
            return self.train_logits[:, indices], None

    kd = DistillSpec(w_ce=0.5, w_kd=0.5, temperature=2.0)
    for rows in (len(data.y_train), pool - 1, pool + 1):
        with pytest.raises(ValueError, match=rf"^teacher_outputs: cached outputs cover {rows} samples, the pool "
                                             rf"\(labeled \+ unlabeled\) has {pool}: compute them with "):
            fit(_student(data), data, Cached(rows), kd, ScheduleSpec(epochs=1), seed=0, device="cpu")
    result = fit(_student(data), data, Cached(pool), kd, ScheduleSpec(epochs=1), seed=0, device="cpu")
    assert len(result.history) == 1

    class Live:  # teachers run on the batch (no train_logits): always cover it
        feature_dim = 0

        def for_batch(self, indices, inputs, features=True):
            return torch.zeros(1, len(inputs), 10), None

    assert len(fit(_student(data), data, Live(), kd, ScheduleSpec(epochs=1), seed=0, device="cpu").history) == 1
