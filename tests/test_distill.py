"""The one training loop: it learns, it is deterministic, it reports every epoch, it stops on request,
and a non-finite loss is an error with the epoch and step; which teacher calls each loss config makes,
the shuffled batches, the unlabeled pool, the device; the optimizers and lr schedules stepped by hand."""

from __future__ import annotations

import pytest
import torch

from autokd.data import Dataset, batches, load_data
from autokd.distill import augment_batch, evaluate, fit, optimizer_and_scheduler, resolve_device
from autokd.errors import NonFiniteLossError
from autokd.losses import DistillationLoss
from autokd.spec import DataSpec, DistillSpec, ScheduleSpec
from autokd.teacher_outputs import OnlineTeachers
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
        with pytest.raises(ValueError, match=rf"^teacher_outputs: cached outputs cover {rows} samples, the training "
                                             rf"pool \(labeled \+ unlabeled\) has {pool}: compute them with "
                                             r"teacher_outputs.teacher_outputs on this data$"):
            fit(_student(data), data, Cached(rows), kd, ScheduleSpec(epochs=1), seed=0, device="cpu")
    result = fit(_student(data), data, Cached(pool), kd, ScheduleSpec(epochs=1), seed=0, device="cpu")
    assert len(result.history) == 1
    # without unlabeled data the same check: fewer rows used to fail mid-epoch (IndexError), more trained silently
    labeled = load_data(DataSpec(name="digits", val_fraction=0.15, train_subset=200))
    for rows in (199, 201):
        with pytest.raises(ValueError, match=rf"^teacher_outputs: cached outputs cover {rows} samples, the training "
                                             r"pool \(labeled \+ unlabeled\) has 200: "):
            fit(_student(labeled), labeled, Cached(rows), kd, ScheduleSpec(epochs=1), seed=0, device="cpu")
    assert len(fit(_student(labeled), labeled, Cached(200), kd, ScheduleSpec(epochs=1), seed=0,
                   device="cpu").history) == 1

    class Live:  # teachers run on the batch (no train_logits): always cover it
        feature_dim = 0

        def for_batch(self, indices, inputs, features=True):
            return torch.zeros(1, len(inputs), 10), None

    assert len(fit(_student(data), data, Live(), kd, ScheduleSpec(epochs=1), seed=0, device="cpu").history) == 1


# ---------------------------------------------------------------------------------------------
# Exactly half of the uniform draws flip (mutation testing: `<= 0.5` went unnoticed)


def test_a_uniform_draw_of_exactly_one_half_does_not_flip():
    """torch.rand's float32 draws are the 2**24 multiples k / 2**24 in [0, 1); those below 0.5 are exactly
    half of them, so 0.5 itself must not flip. Seed 38's 654,622nd draw is 0.5 (found by a search)."""
    skip = 654_621
    probe = torch.Generator().manual_seed(38)
    torch.rand(skip, generator=probe)
    assert torch.rand(1, generator=probe).item() == 0.5  # the precondition: torch still draws this stream
    inputs = torch.arange(6.0).view(1, 1, 2, 3)
    generator = torch.Generator().manual_seed(38)
    torch.rand(skip, generator=generator)
    assert torch.equal(augment_batch(inputs, ["flip"], generator), inputs)
    assert torch.equal(augment_batch(inputs, ["flip"], generator), inputs.flip(-1))  # the next draw, 0.339, flips


# ---------------------------------------------------------------------------------------------
# The device: "auto" is CUDA when there is one, anything else goes to torch.device as it is


def test_auto_is_cuda_when_available_and_the_cpu_otherwise(monkeypatch):
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert resolve_device() == resolve_device("auto") == torch.device(expected)


def test_other_devices_pass_through_and_unknown_names_are_refused_by_torch():
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # only a name: no GPU needed to make it
    assert resolve_device(torch.device("meta")) == torch.device("meta")
    for name in ("gpu", "AUTO"):  # "auto" is lower case only
        with pytest.raises(RuntimeError, match=rf"^Expected one of cpu, cuda, .* device string: {name}$"):
            resolve_device(name)


# ---------------------------------------------------------------------------------------------
# fit on a tiny image set: which teacher calls a loss config makes, the batches, the unlabeled pool, the device

TINY_CNN = {"family": "cnn", "stages": 1, "channels": 4, "head_width": 0}
TINY_SCHEDULE = ScheduleSpec(epochs=2, batch_size=16, lr=0.01)


def _tiny_data(n_unlabeled: int = 0, hidden_labels: bool = True) -> Dataset:
    """48 labeled blobs (3 batches of 16), then `n_unlabeled` more inputs, their labels kept or not (a file)."""
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = _blobs(48, generator)
    x_val, y_val = _blobs(16, generator)
    x_unlabeled, y_unlabeled = _blobs(n_unlabeled, generator) if n_unlabeled else (None, None)
    return Dataset("blobs", x_train, y_train, x_val, y_val, x_val, y_val, num_classes=4, input_shape=(1, 8, 8),
                   x_unlabeled=x_unlabeled, y_unlabeled=y_unlabeled if hidden_labels else None)


def _tiny_student(seed: int = 0):
    return build_model(TINY_CNN, (1, 8, 8), 4, seed=seed)


def _run(result) -> list[tuple[float, float]]:
    return [(epoch.train_loss, epoch.val_accuracy) for epoch in result.history]


class _RecordingTeachers(OnlineTeachers):
    """A live cnn teacher that records the batch indices and `features` flag of every call."""

    def __init__(self):
        super().__init__([_tiny_student(seed=7)])
        self.calls: list[tuple[list[int], bool]] = []
        self.attention_calls: list[list[int]] = []

    def for_batch(self, indices, inputs, features=True):
        self.calls.append((indices.tolist(), features))
        return super().for_batch(indices, inputs, features)

    def attention_for_batch(self, indices, inputs):
        self.attention_calls.append(indices.tolist())
        return super().attention_for_batch(indices, inputs)


@pytest.mark.parametrize("weights, features, attention", [
    ({"w_kd": 0.5}, False, False),
    ({"w_kd": 0.0, "w_feat": 0.5}, True, False),  # a feature term alone still needs the teachers
    ({"w_kd": 0.0, "w_at": 0.5}, False, True),  # and so does attention transfer alone
], ids=["kd", "feat-only", "at-only"])
def test_each_teacher_term_alone_asks_the_teachers_for_every_batch(weights, features, attention):
    """Any positive weight (0.5 here: not only weights above 1) calls the teachers once a batch, 2 epochs of
    3 batches: 6 calls, their features only for FEAT, their attention maps only for AT; and the term changes
    the training loss from the CE-only run's."""
    data, teachers = _tiny_data(), _RecordingTeachers()
    result = fit(_tiny_student(), data, teachers, DistillSpec(w_ce=0.5, **weights), TINY_SCHEDULE, seed=0,
                 device="cpu")
    assert len(teachers.calls) == 6 and {flag for _, flag in teachers.calls} == {features}
    assert teachers.attention_calls == ([indices for indices, _ in teachers.calls] if attention else [])
    ce_only = fit(_tiny_student(), data, None, DistillSpec(w_ce=0.5, w_kd=0.0), TINY_SCHEDULE, seed=0, device="cpu")
    assert result.history[0].train_loss != ce_only.history[0].train_loss


def test_a_ce_only_run_never_asks_the_teachers_it_is_given():
    """All teacher weights 0: the teachers are not called and the run is the one without teachers; and a
    KD weight without teachers is the loss's error."""
    data, teachers = _tiny_data(), _RecordingTeachers()
    given = fit(_tiny_student(), data, teachers, CE_ONLY, TINY_SCHEDULE, seed=0, device="cpu")
    assert teachers.calls == [] and teachers.attention_calls == []
    assert _run(given) == _run(fit(_tiny_student(), data, None, CE_ONLY, TINY_SCHEDULE, seed=0, device="cpu"))
    with pytest.raises(ValueError, match=r"^teacher_logits is required when its loss weight is > 0, got None$"):
        fit(_tiny_student(), data, None, DistillSpec(w_ce=0.5, w_kd=0.5), TINY_SCHEDULE, seed=0, device="cpu")


def test_every_epoch_is_a_new_shuffle_of_the_training_rows_drawn_from_the_seed():
    def epochs(seed):
        teachers = _RecordingTeachers()
        fit(_tiny_student(), _tiny_data(), teachers, DistillSpec(w_ce=0.5, w_kd=0.5), TINY_SCHEDULE, seed=seed,
            device="cpu")
        order = [i for indices, _ in teachers.calls for i in indices]
        assert [len(indices) for indices, _ in teachers.calls] == [16] * 6
        return order[:48], order[48:]

    first, second = epochs(seed=0)
    assert sorted(first) == sorted(second) == list(range(48))  # each epoch sees every row once
    assert first != list(range(48)) and second != first  # shuffled, and shuffled again
    assert epochs(seed=0) == (first, second) and epochs(seed=1) != (first, second)


@pytest.mark.parametrize("n_unlabeled", [1, 5])
def test_with_teachers_the_unlabeled_rows_join_the_batches_their_labels_known_or_not(n_unlabeled):
    """Pool rows 48.. are the unlabeled ones, even a single one; inputs from a file (no hidden labels) train
    exactly like inputs whose labels were hidden: CE never reads an unlabeled row's label."""
    runs = []
    for hidden_labels in (True, False):
        teachers = _RecordingTeachers()
        result = fit(_tiny_student(), _tiny_data(n_unlabeled, hidden_labels), teachers,
                     DistillSpec(w_ce=0.5, w_kd=0.5), TINY_SCHEDULE, seed=0, device="cpu")
        order = [i for indices, _ in teachers.calls for i in indices]
        pool = 48 + n_unlabeled
        assert sorted(order[:pool]) == sorted(order[pool:]) == list(range(pool))
        runs.append(_run(result))
    assert runs[0] == runs[1]


def test_a_ce_only_run_ignores_unlabeled_inputs():
    """Without teachers the unlabeled inputs play no part: the same run as on the labeled rows alone."""
    with_unlabeled = fit(_tiny_student(), _tiny_data(n_unlabeled=8), None, CE_ONLY, TINY_SCHEDULE, seed=0,
                         device="cpu")
    assert _run(with_unlabeled) == _run(fit(_tiny_student(), _tiny_data(), None, CE_ONLY, TINY_SCHEDULE, seed=0,
                                            device="cpu"))


def test_fit_without_a_device_trains_on_the_auto_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" is then the CPU
    runs = [fit(_tiny_student(), _tiny_data(), None, CE_ONLY, TINY_SCHEDULE, seed=0, **device)
            for device in ({}, {"device": "cpu"})]
    assert _run(runs[0]) == _run(runs[1])


def test_fit_moves_the_student_the_loss_and_the_data_to_the_resolved_device(monkeypatch):
    """On a CPU-only machine every tensor is on the CPU already, so the `.to(...)` calls fit makes are what
    tells (on a GPU a missed move is a device-mismatch error): each gets torch.device("cpu"), made from "cpu"."""
    moved: dict[str, list] = {}

    def spy(name, to):
        def recording_to(device):
            moved.setdefault(name, []).append(device)
            return to(device)
        return recording_to

    data, student = _tiny_data(), _tiny_student()
    for split in ("x_train", "y_train", "x_val", "y_val"):
        tensor = getattr(data, split)
        tensor.to = spy(split, tensor.to)  # an instance attribute: this tensor's calls only
    student.to = spy("student", student.to)
    # The loss module is made inside fit: spy on its class.
    monkeypatch.setattr(DistillationLoss, "to",
                        lambda loss, device: spy("loss", super(DistillationLoss, loss).to)(device))
    fit(student, data, _RecordingTeachers(), DistillSpec(w_ce=0.5, w_kd=0.5, w_feat=0.5), TINY_SCHEDULE, seed=0,
        device="cpu")
    assert moved == {name: [torch.device("cpu")]
                     for name in ("student", "loss", "x_train", "y_train", "x_val", "y_val")}


# ---------------------------------------------------------------------------------------------
# The optimizer and its per-step learning rate, stepped by hand on one scalar parameter


def _constant_gradient_steps(schedule, steps: int, start: float = 1.0) -> tuple[list[float], torch.optim.Optimizer]:
    """The parameter after each optimizer step on loss = 3 * p (gradient 3 everywhere), constant lr."""
    parameter = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer, _ = optimizer_and_scheduler([parameter], schedule, total_steps=steps)
    values = []
    for _ in range(steps):
        optimizer.zero_grad()
        (3 * parameter).backward()
        optimizer.step()
        values.append(parameter.item())
    return values, optimizer


def test_sgd_is_nesterov_momentum_with_the_schedules_lr_momentum_and_weight_decay():
    schedule = ScheduleSpec(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.1, lr_schedule="constant")
    values, optimizer = _constant_gradient_steps(schedule, steps=2)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.5, 0.1, True)
    assert (group["dampening"], group["maximize"]) == (0, False)
    # By hand, d = 3 + 0.1 p, buffer b = 0.5 b + d, p -= 0.1 (d + 0.5 b) (Nesterov); from p = 1:
    # d1 = 3.1, b1 = 3.1, p1 = 1 - 0.1 * 4.65 = 0.535; d2 = 3.0535, b2 = 4.6035, p2 = 0.535 - 0.1 * 5.35525
    # (plain momentum would give p1 = 0.69, no weight decay p1 = 0.55, torch's default lr 1e-3 p1 = 0.99535)
    assert values == pytest.approx([0.535, -0.000525], abs=1e-12)


def test_adamw_has_the_schedules_lr_and_decoupled_weight_decay_and_torchs_betas():
    schedule = ScheduleSpec(optimizer="adamw", lr=0.1, weight_decay=0.25, lr_schedule="constant")
    values, optimizer = _constant_gradient_steps(schedule, steps=2, start=2.0)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.AdamW
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (0.1, 0.25, (0.9, 0.999), 1e-8)
    assert not group["amsgrad"]
    # By hand: with a constant gradient Adam's bias-corrected step is lr * g / (|g| + eps) = 0.1 every step,
    # and the decay multiplies p by 1 - lr * wd = 0.975 first: p1 = 2 * 0.975 - 0.1 = 1.85,
    # p2 = 1.85 * 0.975 - 0.1 = 1.70375 (torch's default decay 0.01 would give p1 = 1.898).
    assert values == pytest.approx([1.85, 1.70375], abs=1e-8)


def _learning_rates(schedule, total_steps: int) -> list[float]:
    """The lr of steps 0..total_steps (the scheduler stepped after each optimizer step, as fit does)."""
    parameter = torch.nn.Parameter(torch.zeros(()))
    optimizer, lr_scheduler = optimizer_and_scheduler([parameter], schedule, total_steps)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(total_steps):
        optimizer.step()
        lr_scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_constant_schedule_keeps_the_lr(optimizer):
    assert _learning_rates(ScheduleSpec(optimizer=optimizer, lr=0.1, lr_schedule="constant"), 6) == [0.1] * 7


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_cosine_schedule_anneals_from_the_lr_to_zero_over_the_steps(optimizer):
    rates = _learning_rates(ScheduleSpec(optimizer=optimizer, lr=0.1, lr_schedule="cosine"), 8)
    # By hand, lr_k = 0.1 * (1 + cos(pi k / 8)) / 2: cos(pi/4) = 0.7071067811865476
    expected = {0: 0.1, 2: 0.05 * 1.7071067811865476, 4: 0.05, 6: 0.05 * 0.2928932188134524, 8: 0.0}
    assert {k: rates[k] for k in expected} == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_onecycle_schedule_warms_up_to_the_lr_over_30_percent_then_anneals_far_below(optimizer):
    rates = _learning_rates(ScheduleSpec(optimizer=optimizer, lr=0.1, lr_schedule="onecycle"), 20)
    # By hand, torch's one-cycle defaults: start at lr / 25 = 0.004, cosine up to 0.1 at step 0.3 * 20 - 1 = 5,
    # cosine down to 0.004 / 1e4 = 4e-7 at the last step, 19. Step 1: 0.1 - 0.096 * (1 + cos(pi / 5)) / 2,
    # cos(pi / 5) = 0.8090169943749475; step 12, half way down: (0.1 + 4e-7) / 2.
    expected = {0: 0.004, 1: 0.1 - 0.048 * 1.8090169943749475, 5: 0.1, 12: 0.0500002, 19: 4e-7}
    assert {k: rates[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert max(rates[:20]) == rates[5]


# ---------------------------------------------------------------------------------------------
# What each epoch reports, the error's position, augmentation and the schedule's length inside fit


def _recording_loss_values(monkeypatch) -> list[float]:
    """Every training loss DistillationLoss returns, in call order (the original forward, recorded)."""
    values: list[float] = []
    original = DistillationLoss.forward

    def recording_forward(self, *args, **kwargs):
        loss, terms = original(self, *args, **kwargs)
        values.append(loss.item())
        return loss, terms

    monkeypatch.setattr(DistillationLoss, "forward", recording_forward)
    return values


@pytest.mark.parametrize("batch_size, batches_per_epoch", [(16, 3), (20, 3), (64, 1)])
def test_the_train_loss_of_an_epoch_is_the_mean_of_its_batch_losses(monkeypatch, batch_size, batches_per_epoch):
    """48 rows: 3 batches of 16, 20 + 20 + 8, or a single one; each epoch's train_loss is the plain mean of
    the losses of its own batches (a single batch: that batch's loss)."""
    values = _recording_loss_values(monkeypatch)
    result = fit(_tiny_student(), _tiny_data(), None, CE_ONLY,
                 ScheduleSpec(epochs=2, batch_size=batch_size, lr=0.01), seed=0, device="cpu")
    assert len(values) == 2 * batches_per_epoch
    per_epoch = [values[:batches_per_epoch], values[batches_per_epoch:]]
    expected = [sum(losses) / len(losses) for losses in per_epoch]
    assert [epoch.train_loss for epoch in result.history] == pytest.approx(expected, rel=1e-6)


def test_epoch_and_run_seconds_are_the_wall_time_they_took():
    import time

    before = time.perf_counter()
    result = fit(_tiny_student(), _tiny_data(), None, CE_ONLY, TINY_SCHEDULE, seed=0, device="cpu")
    wall = time.perf_counter() - before
    seconds = [epoch.seconds for epoch in result.history]
    assert all(isinstance(s, float) and 0 < s <= wall for s in seconds)
    assert sum(seconds) <= result.train_seconds <= wall


def test_a_non_finite_loss_names_the_epoch_and_the_step_within_it(monkeypatch):
    """The 5th loss of a run with 3 batches an epoch is epoch 2's 2nd step; it is NaN here."""
    original = DistillationLoss.forward
    calls = []

    def nan_on_the_fifth_call(self, *args, **kwargs):
        loss, terms = original(self, *args, **kwargs)
        calls.append(None)
        return (loss * float("nan") if len(calls) == 5 else loss), terms

    monkeypatch.setattr(DistillationLoss, "forward", nan_on_the_fifth_call)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss \(nan\) at epoch 2, step 2$"):
        fit(_tiny_student(), _tiny_data(), None, CE_ONLY, TINY_SCHEDULE, seed=0, device="cpu")


def _recording_student_inputs(student) -> list[torch.Tensor]:
    """The inputs of every training forward (fit calls forward_features; evaluation calls forward)."""
    seen: list[torch.Tensor] = []
    original = student.forward_features

    def recording(inputs):
        seen.append(inputs.detach().clone())
        return original(inputs)

    student.forward_features = recording
    return seen


def test_fit_with_flip_trains_on_the_batches_flipped_by_draws_from_the_seed():
    """Replayed by hand from a generator seeded like fit's: per epoch a permutation of the 48 rows, then per
    batch of 16 one uniform per sample, flipped left to right below 0.5."""
    data, student = _tiny_data(), _tiny_student()
    seen = _recording_student_inputs(student)
    fit(student, data, None, CE_ONLY, TINY_SCHEDULE, seed=3, device="cpu", augment=("flip",))

    generator = torch.Generator().manual_seed(3)
    expected, flips = [], 0
    for _ in range(2):
        order = torch.randperm(48, generator=generator)
        for start in range(0, 48, 16):
            rows = order[start:start + 16].tolist()
            draws = torch.rand(16, generator=generator).tolist()
            flips += sum(draw < 0.5 for draw in draws)
            expected.append(torch.stack([data.x_train[row].flip(-1) if draw < 0.5 else data.x_train[row]
                                         for row, draw in zip(rows, draws)]))
    assert len(seen) == 6
    for got, want in zip(seen, expected):
        assert torch.equal(got, want)
    assert 0 < flips < 96  # some samples flipped, some not: the comparison tells the two apart


def test_the_lr_schedule_spans_every_step_of_every_epoch():
    """48 rows in batches of 20 are 3 steps an epoch (the last one short), 2 epochs 6 steps: the cosine
    schedule reaches 0 exactly after the run's last step."""
    import autokd.distill as distill

    made = []

    def recording(parameters, schedule, total_steps):
        optimizer, lr_scheduler = optimizer_and_scheduler(parameters, schedule, total_steps)
        made.append(optimizer)
        return optimizer, lr_scheduler

    schedule = ScheduleSpec(epochs=2, batch_size=20, lr=0.01, lr_schedule="cosine")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distill, "optimizer_and_scheduler", recording)
        fit(_tiny_student(), _tiny_data(), None, CE_ONLY, schedule, seed=0, device="cpu")
    assert made[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_cpu_run_does_not_ask_for_cuda_autocast():
    """bf16 autocast is for CUDA runs only: on the CPU fit never switches it on (torch warns when it is asked
    to on a machine without CUDA, and here every warning is an error)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(_tiny_student(), _tiny_data(), None, CE_ONLY, TINY_SCHEDULE, seed=0, device="cpu")


def test_the_first_unlabeled_row_is_unlabeled_too():
    """Pool row 48, the first unlabeled one, has hidden label 1 here (not 0, the stand-in label of inputs
    from a file): CE must not read it, so both runs are the same."""
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = _blobs(48, generator)
    x_val, y_val = _blobs(16, generator)
    x_unlabeled, _ = _blobs(4, generator)
    runs = []
    for y_unlabeled in (torch.tensor([1, 2, 3, 1]), None):
        data = Dataset("blobs", x_train, y_train, x_val, y_val, x_val, y_val, num_classes=4, input_shape=(1, 8, 8),
                       x_unlabeled=x_unlabeled, y_unlabeled=y_unlabeled)
        runs.append(_run(fit(_tiny_student(), data, _RecordingTeachers(), DistillSpec(w_ce=0.5, w_kd=0.5),
                             TINY_SCHEDULE, seed=0, device="cpu")))
    assert runs[0] == runs[1]


class _ExtraInFirstStepOnly(torch.nn.Module):
    """A linear student with a parameter `extra` that only its first training forward uses."""

    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 4)
        self.extra = torch.nn.Parameter(torch.ones(4))
        self.extra_before_step: list[torch.Tensor] = []

    def forward(self, x):
        return self.linear(x.flatten(1))

    def forward_features(self, x):
        self.extra_before_step.append(self.extra.detach().clone())
        logits = self.forward(x)
        if len(self.extra_before_step) == 1:
            logits = logits + self.extra
        return logits, logits


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_parameter_outside_a_steps_loss_is_left_alone_by_that_step(optimizer):
    """Step 1 moves `extra`; steps 2..6 have no gradient for it, so neither momentum nor weight decay moves it
    again: it ends where step 1 left it."""
    student = _ExtraInFirstStepOnly()
    fit(student, _tiny_data(), None, CE_ONLY, ScheduleSpec(epochs=2, batch_size=16, lr=0.01, optimizer=optimizer,
                                                            weight_decay=0.1), seed=0, device="cpu")
    first, after_step_1 = student.extra_before_step[:2]
    assert not torch.equal(after_step_1, first)
    assert torch.equal(student.extra.detach(), after_step_1)


def test_fit_moves_the_pool_inputs_every_batchs_indices_and_the_augmented_inputs_to_the_device(monkeypatch):
    """Like the student and the splits (see above), the tensors fit makes along the way go to the resolved
    device: the pool's inputs (labeled then unlabeled), each batch's indices, each augmented batch."""
    import autokd.distill as distill

    moved: dict[str, list] = {}

    def spied(name, tensor):
        to = tensor.to

        def recording_to(device):
            moved.setdefault(name, []).append(device)
            return to(device)
        tensor.to = recording_to  # an instance attribute: this tensor's calls only
        return tensor

    pool_inputs = Dataset.pool_inputs
    monkeypatch.setattr(Dataset, "pool_inputs", lambda data: spied("pool", pool_inputs(data)))
    monkeypatch.setattr(distill, "batches", lambda *args: (spied("indices", i) for i in batches(*args)))
    monkeypatch.setattr(distill, "augment_batch", lambda *args: spied("augmented", augment_batch(*args)))
    fit(_tiny_student(), _tiny_data(n_unlabeled=4), _RecordingTeachers(), DistillSpec(w_ce=0.5, w_kd=0.5),
        TINY_SCHEDULE, seed=0, device="cpu", augment=("flip",))
    # 52 pool rows in batches of 16: 4 batches an epoch, 2 epochs
    assert moved == {"pool": [torch.device("cpu")], "indices": [torch.device("cpu")] * 8,
                     "augmented": [torch.device("cpu")] * 8}
