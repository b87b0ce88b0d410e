"""Packed trials: K configs trained as one batched model end where K separate `run_config` runs end.

Within float tolerance: bit for bit on the Intel Xeon CPUs of the earlier runs, but on an AMD EPYC
(AVX-512) the batched and the single matrix products round differently in the last bits (weights
differ by ~1e-7 after two epochs; the val accuracies were equal).
"""

from __future__ import annotations

import pytest
import torch

from autokd.data import load_data
from autokd.errors import NonFiniteLossError
from autokd.packing import fit_packed, pack_key
from autokd.runner import run_config
from autokd.spec import DataSpec, TrainConfig
from autokd.teacher_outputs import CachedTeacherOutputs

TEACHERS = [{"name": "a", "arch": {"family": "mlp"}}, {"name": "b", "arch": {"family": "mlp"}}]
STUDENT = {"family": "mlp", "depth": 2, "width": 24}


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec(name="digits", val_fraction=0.15))


@pytest.fixture(scope="module")
def outputs(digits):
    """Cached outputs of two 'teachers': fixed random logits (a step's arithmetic does not depend on their values)."""
    n, classes = len(digits.y_train), digits.num_classes
    logits = torch.randn(2, n, classes, generator=torch.Generator().manual_seed(0)) * 3
    return CachedTeacherOutputs(["a", "b"], logits, [torch.zeros(n, 2), torch.zeros(n, 3)])


def config(student=STUDENT, epochs=2, batch_size=64, **distill) -> TrainConfig:
    schedule = {"epochs": epochs, "batch_size": batch_size, **distill.pop("schedule", {})}
    return TrainConfig(teachers=TEACHERS, student=student, distill=distill, schedule=schedule, threads=1,
                       device="cpu")


# A level-2 pack: baselines and tuned configs of every kind, with their own lrs, schedules and weight decays.
MIXED = [
    {"w_ce": 1.0, "w_kd": 0.0},
    {"kind": "kl", "temperature": 2.0, "w_ce": 0.3, "w_kd": 0.7, "schedule": {"lr": 0.01}},
    {"kind": "mse", "w_ce": 0.0, "w_kd": 1.0, "teachers": ["b"], "schedule": {"lr_schedule": "onecycle"}},
    {"kind": "dkd", "temperature": 3.0, "aggregation": "mean_probs", "schedule": {"weight_decay": 0.01}},
    {"kind": "kl", "temperature": 5.0, "aggregation": "confidence", "schedule": {"lr_schedule": "constant"}},
    {"kind": "lskd"},
    {"kind": "dist", "schedule": {"lr": 0.001}},
]


def separate_runs(configs, seeds, digits, outputs):
    return [run_config(c, digits, outputs, seed=s, threads=1, device="cpu") for c, s in zip(configs, seeds)]


def assert_same_runs(packed, separate):
    for k, (run, (student, result)) in enumerate(zip(packed, separate)):
        assert run.error is None, k
        for name, tensor in student.state_dict().items():
            torch.testing.assert_close(run.student.state_dict()[name], tensor, rtol=1e-4, atol=1e-5,
                                       msg=lambda message: f"config {k}, {name}: {message}")
        # A last-bit difference may move a val sample across the decision boundary: at most one sample.
        one_sample = 1 / 216 + 1e-12  # digits' val split (val_fraction 0.15) has 216 samples
        assert [e.val_accuracy for e in run.result.history] == pytest.approx(
            [e.val_accuracy for e in result.history], abs=one_sample), k
        assert run.result.epochs_trained == result.epochs_trained
        # The loss values are reduced over the pack in another order (their gradients are not): last bits only.
        assert [e.train_loss for e in run.result.history] == pytest.approx([e.train_loss for e in result.history],
                                                                             rel=1e-5), k


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_pack_of_mixed_configs_on_one_seed_equals_their_separate_runs(digits, outputs, dropout):
    student = {**STUDENT, "dropout": dropout}
    configs = [config(student, **dict(d)) for d in MIXED]
    seeds = [3] * len(configs)
    assert_same_runs(fit_packed(configs, digits, outputs, seeds), separate_runs(configs, seeds, digits, outputs))


def test_under_bf16_autocast_a_pack_equals_its_separate_runs(digits, outputs, monkeypatch):
    """The CUDA path's arithmetic (bf16 autocast around the forward, losses in float32), emulated on the CPU:
    both loops open `torch.autocast` for "cuda" only, so it is pointed at the CPU here. Equal runs say the
    packed loop casts where `distill.fit` casts; on a GPU the kernels differ (`benchmarks/packing.py`)."""
    configs = [config(**dict(d)) for d in MIXED]
    seeds = [3] * len(configs)
    float32_student, _ = separate_runs(configs[:1], seeds, digits, outputs)[0]
    cpu_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, dtype, enabled: cpu_autocast("cpu", dtype=dtype))
    packed, separate = fit_packed(configs, digits, outputs, seeds), separate_runs(configs, seeds, digits, outputs)
    assert_same_runs(packed, separate)
    bf16_weights, float32_weights = (m.state_dict() for m in (separate[0][0], float32_student))
    assert any(not torch.equal(bf16_weights[name], float32_weights[name]) for name in bf16_weights)  # it did cast


def test_a_pack_of_several_seeds_gives_each_config_its_own_batch_order(digits, outputs):
    """Paired design: a tuned config and its CE-only baseline on the same two seeds, four students in one pack."""
    tuned, baseline = config(**MIXED[1]), config(**MIXED[0])
    configs, seeds = [tuned, baseline, tuned, baseline], [0, 0, 7, 7]
    packed = fit_packed(configs, digits, outputs, seeds)
    assert_same_runs(packed, separate_runs(configs, seeds, digits, outputs))
    assert packed[0].result.history != packed[2].result.history  # another seed: another run


@pytest.mark.parametrize("student, batch_size", [
    ({"family": "mlp", "depth": 1, "width": 300}, 128),  # 64 x 300 weights: AdamW updates them slice by slice
    ({"family": "mlp", "depth": 2, "width": 3, "activation": "tanh"}, 100),  # last batch of 22: tiny products
])
def test_large_and_tiny_layers_also_match(digits, outputs, student, batch_size):
    configs = [config(student, batch_size=batch_size, **dict(d)) for d in MIXED[:3]]
    for seeds in ([1, 1, 1], [1, 2, 3]):
        assert_same_runs(fit_packed(configs, digits, outputs, seeds), separate_runs(configs, seeds, digits, outputs))


def test_on_epoch_stops_one_config_and_keeps_its_weights_of_then(digits, outputs):
    configs = [config(epochs=3, **dict(d)) for d in MIXED[:3]]
    calls = []

    def on_epoch(k, epoch):
        calls.append((k, epoch.epoch))
        return k == 1 and epoch.epoch == 1

    packed = fit_packed(configs, digits, outputs, [5, 5, 5], on_epoch=on_epoch)
    assert calls == [(0, 1), (1, 1), (2, 1), (0, 2), (2, 2), (0, 3), (2, 3)]
    separate = [run_config(c, digits, outputs, seed=5, threads=1, device="cpu",
                           on_epoch=(lambda epoch: True) if k == 1 else None) for k, c in enumerate(configs)]
    assert [run.result.epochs_trained for run in packed] == [3, 1, 3]
    assert_same_runs(packed, separate)


def test_a_non_finite_loss_ends_that_config_only(digits, outputs):
    broken = config(**{**MIXED[1], "schedule": {"lr": 1e30}})  # diverges in its first steps
    configs = [config(**MIXED[0]), broken, config(**MIXED[2])]
    packed = fit_packed(configs, digits, outputs, [0, 0, 0])
    with pytest.raises(NonFiniteLossError) as separate_error:
        run_config(broken, digits, outputs, seed=0, threads=1, device="cpu")
    assert isinstance(packed[1].error, NonFiniteLossError) and packed[1].result is None
    assert str(packed[1].error) == str(separate_error.value)  # same epoch and step
    others = [configs[0], configs[2]]
    assert_same_runs([packed[0], packed[2]], separate_runs(others, [0, 0], digits, outputs))


def test_what_cannot_pack_is_refused_naming_the_config_and_key(digits, outputs):
    assert pack_key(config()) == pack_key(config(kind="dkd", schedule={"lr": 0.1})) is not None
    assert pack_key(config()) != pack_key(config(epochs=3))
    refused = {
        "student.family": config({"family": "cnn", "stages": 1, "channels": 2}),
        "schedule.optimizer": config(schedule={"optimizer": "sgd"}),
        "distill.w_feat": config(w_feat=0.5),
    }
    for key, bad in refused.items():
        assert pack_key(bad) is None
        with pytest.raises(ValueError, match=rf"configs\[1\]\.{key}: packing"):
            fit_packed([config(), bad], digits, outputs, [0, 0])
    augmented = TrainConfig(student=STUDENT, distill={"w_ce": 1.0, "w_kd": 0.0}, augment=["flip"])
    assert pack_key(augmented) is None
    with pytest.raises(ValueError, match=r"configs\[1\]: a pack shares student"):
        fit_packed([config(), config({**STUDENT, "width": 8})], digits, outputs, [0, 0])
    with pytest.raises(ValueError, match=r"seeds: need one per config \(2\), got 1"):
        fit_packed([config(), config()], digits, outputs, [0])
