"""Model zoo: sizes against counts done by hand, every family on every input shape, validation."""

import json

import pytest
import torch

from autokd.archs import ACTIVATION_NAMES
from autokd.errors import ConfigError
from autokd.zoo import ACTIVATIONS, FAMILIES, ModelSize, arch_size, build_model, model_size, validate_arch

INPUT_SHAPES = [(1, 8, 8), (1, 28, 28), (1, 40)]


def _expected_size(params: int, float_buffers: int, macs: int, bytes_int8: int) -> ModelSize:
    return ModelSize(params=params, bytes_fp32=4 * (params + float_buffers),
                     bytes_fp16=2 * (params + float_buffers), bytes_int8=bytes_int8, macs=macs)


def _int8(weights: int, channels: int, biases: int) -> int:
    """bytes_int8 of quantised layers: 1 byte per weight, 8 per output channel (scale, zero point), 4 per bias."""
    return weights + 8 * channels + 4 * biases


# --------------------------------------------------------------------------- sizes by hand


def test_mlp_size_by_hand():
    # 8x8 image flattened to 64 -> Linear(64, 32) -> relu -> Linear(32, 10)
    params = (64 * 32 + 32) + (32 * 10 + 10)  # = 2410
    macs = 64 * 32 + 32 * 10  # = 2368; biases and relu are not multiply-accumulates
    # int8: both Linears quantised: 2368 weights at 1 byte, 32 + 10 output channels at 8 bytes
    # (fp32 scale + int32 zero point), 32 + 10 biases at 4 bytes: 2368 + 336 + 168 = 2872
    bytes_int8 = _int8(weights=64 * 32 + 32 * 10, channels=32 + 10, biases=32 + 10)
    expected = _expected_size(params, float_buffers=0, macs=macs, bytes_int8=bytes_int8)
    arch = {"family": "mlp", "depth": 1, "width": 32}
    assert model_size(build_model(arch, (1, 8, 8), 10), (1, 8, 8)) == expected
    assert arch_size(arch, (1, 8, 8), 10) == expected
    assert expected.as_dict() == {"params": 2410, "bytes_fp32": 9640, "bytes_fp16": 4820, "bytes_int8": 2872,
                                  "macs": 2368}


def test_cnn_with_batchnorm_size_by_hand():
    # (1, 8, 8) -> conv 3x3 1->4 (no bias: batchnorm follows) -> BN(4) -> relu -> maxpool -> (4, 4, 4)
    # -> global avg pool -> Linear(4, 8) -> relu -> Linear(8, 10)
    conv = 1 * 4 * 3 * 3  # 36
    batch_norm = 4 + 4  # weight + bias
    batch_norm_buffers = 4 + 4  # running mean + running var (num_batches_tracked is an int: not counted)
    hidden = 4 * 8 + 8  # 40
    head = 8 * 10 + 10  # 90
    params = conv + batch_norm + hidden + head  # 174
    macs = (4 * 8 * 8) * (1 * 3 * 3) + 4 * 8 + 8 * 10  # conv: every output value costs in_ch*k*k; = 2416
    # int8: the batchnorm folds into the conv: its shift is the conv's fp32 bias (4 channels), nothing else
    # of it is stored; the conv and both Linears are quantised: 36 + 32 + 80 weights, 4 + 8 + 10 channels
    bytes_int8 = _int8(weights=36 + 32 + 80, channels=4 + 8 + 10, biases=4 + 8 + 10)  # 148 + 176 + 88 = 412
    arch = {"family": "cnn", "stages": 1, "channels": 4, "kernel": 3, "batch_norm": True, "head_width": 8}
    assert arch_size(arch, (1, 8, 8), 10) == _expected_size(params, batch_norm_buffers, macs, bytes_int8)
    assert bytes_int8 == 412


def test_cnn_two_stages_without_batchnorm_size_by_hand():
    # (1, 8, 8) -> conv 1->4 (+bias) -> relu -> pool -> (4, 4, 4) -> conv 4->8 (+bias) -> relu -> pool
    # -> (8, 2, 2) -> global avg pool -> Linear(8, 10)   (head_width 0: no hidden layer)
    params = (1 * 4 * 9 + 4) + (4 * 8 * 9 + 8) + (8 * 10 + 10)  # 40 + 296 + 90 = 426
    macs = (4 * 8 * 8) * (1 * 9) + (8 * 4 * 4) * (4 * 9) + 8 * 10  # 2304 + 4608 + 80 = 6992
    bytes_int8 = _int8(weights=36 + 288 + 80, channels=4 + 8 + 10, biases=4 + 8 + 10)  # convs keep their biases
    arch = {"family": "cnn", "stages": 2, "channels": 4, "batch_norm": False, "head_width": 0}
    assert arch_size(arch, (1, 8, 8), 10) == _expected_size(params, 0, macs, bytes_int8)
    assert build_model(arch, (1, 8, 8), 10).feature_dim == 8  # channels double each stage


def test_resnet_one_block_size_by_hand():
    # stem conv 1->4 + BN, then one block (conv 4->4 + BN, conv 4->4 + BN, identity), pool, Linear(4, 10)
    params = (1 * 4 * 9) + 8 + (4 * 4 * 9) + 8 + (4 * 4 * 9) + 8 + (4 * 10 + 10)  # 398
    buffers = 3 * (4 + 4)  # three batchnorms' running mean and var
    macs = (4 * 64) * 9 + 2 * (4 * 64) * (4 * 9) + 4 * 10  # 2304 + 18432 + 40 = 20776
    # int8: three convs, each with its batchnorm folded in (an fp32 bias of 4), and the head
    bytes_int8 = _int8(weights=36 + 144 + 144 + 40, channels=3 * 4 + 10, biases=3 * 4 + 10)
    arch = {"family": "resnet", "blocks": 1, "channels": 4}
    assert arch_size(arch, (1, 8, 8), 10) == _expected_size(params, buffers, macs, bytes_int8)


def test_bytes_int8_keeps_what_is_not_quantised_at_fp32():
    # Linear(4, 3) quantised: 12 weights + 3 channels x 8 + 3 biases x 4; LayerNorm(3) stays fp32: 6 x 4
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    assert model_size(model, (4,)).bytes_int8 == 12 + 24 + 12 + 24


def test_arch_size_is_cached_on_the_validated_arch_and_leaves_torch_threads_alone():
    threads = torch.get_num_threads()
    explicit = arch_size({"family": "mlp", "depth": 2, "width": 128}, (1, 8, 8), 10)
    assert arch_size({"family": "mlp"}, (1, 8, 8), 10) is explicit  # defaults filled before the cache key
    assert torch.get_num_threads() == threads


def test_model_size_restores_training_mode():
    model = build_model({"family": "cnn"}, (1, 8, 8), 10).train()
    model_size(model, (1, 8, 8))
    assert model.training
    assert all(m.training for m in model.modules())


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
