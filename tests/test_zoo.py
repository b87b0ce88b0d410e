"""Model zoo: every family on every input shape, and the arch validation build_model runs first."""

import json

import pytest
import torch

from autokd.archs import ACTIVATION_NAMES, FAMILIES, validate_arch
from autokd.errors import ConfigError
from autokd.sizes import arch_size
from autokd.zoo import ACTIVATIONS, build_model

INPUT_SHAPES = [(1, 8, 8), (1, 28, 28), (1, 40)]


# --------------------------------------------------------------------------- families and shapes


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("input_shape", INPUT_SHAPES)
def test_every_family_builds_and_returns_features(family, input_shape):
    model = build_model({"family": family}, input_shape, num_classes=7)
    inputs = torch.randn(5, *input_shape)
    logits, features = model.forward_features(inputs)
    assert logits.shape == (5, 7)
    assert features.shape == (5, model.feature_dim)
    assert torch.equal(model(inputs), logits)
    assert arch_size({"family": family}, input_shape, 7).params == sum(p.numel() for p in model.parameters())


def test_one_dimensional_inputs_use_1d_layers():
    model = build_model({"family": "cnn"}, (1, 40), 10)
    assert any(isinstance(m, torch.nn.Conv1d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("arch", [
    {"family": "cnn", "stages": 5},  # 8 -> 4 -> 2 -> 1, then the pool is skipped
    {"family": "resnet", "blocks": 5},  # 8 -> 4 -> 2 -> 1, then no more downsampling
])
def test_deep_models_never_pool_below_size_one(arch):
    model = build_model(arch, (1, 8, 8), 10)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_doubles_channels_at_each_downsample():
    assert build_model({"family": "resnet", "blocks": 3, "channels": 8}, (1, 28, 28), 10).feature_dim == 32
    assert build_model({"family": "resnet", "blocks": 3, "channels": 8, "downsample": False},
                       (1, 28, 28), 10).feature_dim == 8
    assert build_model({"family": "resnet", "blocks": 5, "channels": 8}, (1, 8, 8), 10).feature_dim == 64


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_is_deterministic_in_eval_mode(family):
    arch = {"family": family, "dropout": 0.5} if family == "mlp" else {"family": family}
    model = build_model(arch, (1, 8, 8), 10).eval()
    inputs = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(inputs), model(inputs))


def test_cnn_rejects_inputs_without_spatial_dims():
    with pytest.raises(ValueError, match="input_shape"):
        build_model({"family": "cnn"}, (64,), 10)


# --------------------------------------------------------------------------- validation


def test_validate_fills_defaults_and_is_idempotent():
    arch = validate_arch({"family": "mlp", "width": 64}, where="student", source="s.yaml")
    assert arch == {"family": "mlp", "depth": 2, "width": 64, "activation": "relu", "dropout": 0.0}
    assert validate_arch(arch, where="student", source="s.yaml") == arch
    assert json.loads(json.dumps(arch)) == arch  # stored in Optuna user attrs as JSON


def test_validate_does_not_modify_its_argument():
    given = {"family": "cnn"}
    validate_arch(given, where="student", source="s.yaml")
    assert given == {"family": "cnn"}


@pytest.mark.parametrize(("arch", "message"), [
    ({"family": "mlp", "width": -3}, "s.yaml: student.width: must be an integer >= 1, got -3"),
    ({"family": "mlp", "width": "abc"}, "s.yaml: student.width: must be an integer >= 1, got 'abc'"),
    ({"family": "mlp", "width": True}, "s.yaml: student.width: must be an integer >= 1, got True"),
    ({"family": "mlp", "width": 32.0}, "s.yaml: student.width: must be an integer >= 1, got 32.0"),
    ({"family": "vit"}, "s.yaml: student.family: must be one of ['cnn', 'custom', 'mlp', 'resnet'], got 'vit'"),
    ({"family": "cnn", "kernel": 4}, "s.yaml: student.kernel: must be an odd integer >= 1, got 4"),
    ({"family": "mlp", "dropout": 1.0}, "s.yaml: student.dropout: must be a number with 0 <= p < 1, got 1.0"),
    ({"family": "cnn", "batch_norm": "yes"}, "s.yaml: student.batch_norm: must be true or false, got 'yes'"),
    ({"family": "mlp", "activation": "swish"},
     "s.yaml: student.activation: must be one of ['gelu', 'relu', 'silu', 'tanh'], got 'swish'"),
    ({"family": "mlp", "channels": 8},
     "s.yaml: student.channels: unknown key for family 'mlp', allowed: ['activation', 'depth', 'dropout', 'width']"),
    ({"width": 8}, "s.yaml: student.family: required key is missing (one of ['cnn', 'custom', 'mlp', 'resnet'])"),
    ({"family": 3}, "s.yaml: student.family: must be one of ['cnn', 'custom', 'mlp', 'resnet'], got 3"),
    (5, "s.yaml: student: must be a mapping with a 'family' key, got 5"),
    ({"family": "mlp", "dropout": float("nan")}, "s.yaml: student.dropout: must be a number with 0 <= p < 1, got nan"),
    ({"family": "cnn", "head_width": -1},
     "s.yaml: student.head_width: must be an integer >= 0 (0: no hidden head layer), got -1"),
    # an unknown key is named before a bad value: the misspelling usually explains the rest
    ({"family": "mlp", "width": -1, "widht": 8},
     "s.yaml: student.widht: unknown key for family 'mlp', allowed: ['activation', 'depth', 'dropout', 'width']"),
])
def test_validation_errors_name_the_key(arch, message):
    with pytest.raises(ConfigError) as error:
        validate_arch(arch, where="student", source="s.yaml")
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_every_activation_name_has_a_module():
    assert sorted(ACTIVATIONS) == sorted(ACTIVATION_NAMES)
    for name in ACTIVATION_NAMES:
        build_model({"family": "mlp", "activation": name}, (1, 8, 8), 10)


def test_build_model_validates_first():
    with pytest.raises(ConfigError, match=r"teachers\.arch\.stages: must be an integer >= 1, got 0"):
        build_model({"family": "cnn", "stages": 0}, (1, 8, 8), 10, where="teachers.arch", source="t.yaml")
