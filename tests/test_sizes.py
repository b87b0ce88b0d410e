"""Model sizes against counts done by hand: params, stored bytes (fp32, fp16, int8) and MACs."""

import subprocess
import sys

import pytest
import torch

from autokd.sizes import ModelSize, arch_size, model_size
from autokd.zoo import build_model


def _expected_size(params: int, float_buffers: int, macs: int, bytes_int8: int) -> ModelSize:
    return ModelSize(params=params, bytes_fp32=4 * (params + float_buffers),
                     bytes_fp16=2 * (params + float_buffers), bytes_int8=bytes_int8, macs=macs)


def _int8(weights: int, channels: int, biases: int) -> int:
    """bytes_int8 of quantised layers: 1 byte per weight, 8 per output channel (scale, zero point), 4 per bias."""
    return weights + 8 * channels + 4 * biases


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


def _flop_counter_macs(model: torch.nn.Module, input_shape: tuple) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros((1, *input_shape)))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("arch", [
    {"family": "mlp", "depth": 1, "width": 7}, {"family": "mlp", "depth": 3, "width": 64, "activation": "gelu",
                                                 "dropout": 0.3},
    {"family": "cnn", "stages": 1, "channels": 5, "kernel": 1, "head_width": 0},
    {"family": "cnn", "stages": 3, "channels": 16, "kernel": 5, "batch_norm": False, "head_width": 32},
    {"family": "resnet", "blocks": 1, "channels": 8}, {"family": "resnet", "blocks": 4, "channels": 16,
                                                        "downsample": False},
])
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32), (2, 40)], ids=["8x8", "rgb32", "1d"])
def test_zoo_macs_are_those_flop_counter_mode_counts(arch, input_shape):
    model = build_model(arch, input_shape, 10)
    assert model_size(model, input_shape).macs == _flop_counter_macs(model, input_shape) > 0


def test_a_zoo_models_size_does_not_import_torch_dynamo():
    # FlopCounterMode's dispatch imports torch._dynamo (~1.2 s), on the path of a search's first trials
    code = ("import sys; from autokd.sizes import arch_size; "
            "arch_size({'family': 'resnet', 'blocks': 2}, (1, 8, 8), 10); "
            "print('torch._dynamo' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip() == "False", completed.stdout + completed.stderr
