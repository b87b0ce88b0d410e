"""What a model costs to store and run, measured on the built model or known from its arch before training.

`model_size` measures any nn.Module (a zoo model, a `CustomStudent`, a teacher): parameters, stored
bytes at fp32/fp16/int8 and multiply-accumulates per sample; `arch_size` and `stage_sizes` build the
model an arch describes (`autokd.zoo.build_model`) and cache what they measure on it::

    >>> arch_size({"family": "mlp", "depth": 1, "width": 32}, (1, 8, 8), 10).params   # 64*32 + 32 + 32*10 + 10
    2410

MACs are those torch's FlopCounterMode sees (matmuls, convolutions, attention; a custom op or
extension kernel it does not know counts nothing). A zoo model's are counted without it, layer by
layer, by the same rule (tested equal): FlopCounterMode's dispatch imports torch._dynamo on first use,
~1.2 s of a search driver's first proposal here, on the path of its first trials.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autokd.archs import CUSTOM, validate_arch
from autokd.torch_state import torch_threads
from autokd.zoo import ZooModel, build_model

__all__ = ["ModelSize", "arch_size", "model_size", "stage_sizes"]


@dataclass(frozen=True)
class ModelSize:
    """What a model costs to store and run.

    ``params``: trainable parameters. ``bytes_fp32``/``bytes_fp16``: the stored floating
    tensors (parameters plus float buffers such as batchnorm running stats; integer
    counters excluded). ``macs``: multiply-accumulates of matmuls and convolutions for one
    sample in eval mode, as counted by `torch.utils.flop_counter` (elementwise ops are free;
    quantising changes none of them).

    ``bytes_int8``: the model as `autokd.quantize` stores it, by this rule:

    - every Linear and convolution is quantised: its weight at 1 byte per value, plus 8 bytes
      per output channel for its weight scale and zero point (fp32 + int32, per channel), and
      its bias, if any, at 4 bytes per value (fp32);
    - a batchnorm is folded into the convolution before it (every zoo batchnorm follows a
      convolution without bias): its scale goes into the int8 weights, its shift becomes that
      convolution's fp32 bias, 4 bytes per channel; its running stats are not stored;
    - every other float parameter and buffer stays fp32 (4 bytes per value).

    The scales and zero points of static quantisation's activations (one pair per layer
    output, fixed at calibration; cnn and resnet) are not counted: a few dozen bytes.
    """

    params: int
    bytes_fp32: int
    bytes_fp16: int
    bytes_int8: int
    macs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def model_size(model: nn.Module, input_shape: tuple) -> ModelSize:
    """Size of `model` for one sample of `input_shape` (channels first, no batch dim)."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stored = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    return ModelSize(params=params, bytes_fp32=4 * stored, bytes_fp16=2 * stored, bytes_int8=_bytes_int8(model),
                     macs=_macs_per_sample(model, tuple(input_shape)))


_INT8_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)  # quantised: int8 weights, per-channel scales
_FOLDED_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # folded into the convolution before them


def _bytes_int8(model: nn.Module) -> int:
    """`ModelSize.bytes_int8`: the rule stated there, module by module (each counts its own tensors)."""
    total = 0
    for module in model.modules():
        if isinstance(module, _INT8_LAYERS):
            weight, bias = module.weight, module.bias
            total += weight.numel() + 8 * weight.shape[0] + (4 * bias.numel() if bias is not None else 0)
        elif isinstance(module, _FOLDED_NORMS):
            total += 4 * module.num_features
        else:
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            total += 4 * sum(tensor.numel() for tensor in own if tensor.is_floating_point())
    return total


# The layers of a zoo model that multiply-accumulate; everything else in it (norms, pooling, activations)
# FlopCounterMode counts as nothing too.
_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _zoo_macs(model: ZooModel, sample: torch.Tensor) -> int:
    """MACs of `model(sample)` summed over its `_MAC_LAYERS` calls by FlopCounterMode's mm and convolution rules
    (bias aside): a Linear's output elements times its inputs, a convolution's times its kernel's weights a channel."""
    macs = []

    def count(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        per_output = layer.in_features if isinstance(layer, nn.Linear) else \
            layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        macs.append(output.numel() * per_output)

    hooks = [layer.register_forward_hook(count) for layer in model.modules() if isinstance(layer, _MAC_LAYERS)]
    try:
        model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(macs)


def _macs_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    reference = next(model.parameters(), torch.zeros(()))  # the sample must match the model's dtype and device
    sample = torch.zeros((1, *input_shape), dtype=reference.dtype, device=reference.device)
    modes = {module: module.training for module in model.modules()}
    model.eval()  # eval mode: dropout off, batchnorm uses running stats, as in deployment
    try:
        with torch.no_grad():
            if isinstance(model, ZooModel):
                return _zoo_macs(model, sample)
            with FlopCounterMode(display=False) as counter:
                model(sample)
    finally:
        for module, training in modes.items():  # per module: a caller may have frozen some parts
            module.training = training
    return counter.get_total_flops() // 2  # the counter reports 2 flops per multiply-accumulate


def arch_size(arch: dict, input_shape: tuple, num_classes: int) -> ModelSize:
    """Size of the model `arch` would build, without training it (checked before every trial)."""
    arch = validate_arch(arch)
    return _cached_arch_size(json.dumps(arch, sort_keys=True), tuple(int(d) for d in input_shape), num_classes)


@functools.lru_cache(maxsize=1024)
def _cached_arch_size(arch_json: str, input_shape: tuple[int, ...], num_classes: int) -> ModelSize:
    with torch_threads(1):
        return model_size(build_model(json.loads(arch_json), input_shape, num_classes), input_shape)


def stage_sizes(arch: dict, input_shape: tuple) -> list[tuple[int, ...]]:
    """The spatial size of each stage's output (`ZooModel.forward_stages`), shallowest first; [] for an
    mlp or a custom student. Known before training, like the model's size."""
    arch = validate_arch(arch)
    if arch["family"] == CUSTOM:
        return []
    return list(_cached_stage_sizes(json.dumps(arch, sort_keys=True), tuple(int(d) for d in input_shape)))


@functools.lru_cache(maxsize=1024)
def _cached_stage_sizes(arch_json: str, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    model = build_model(json.loads(arch_json), input_shape, 2).eval()
    with torch.no_grad(), torch_threads(1):
        _, _, stages = model.forward_stages(torch.zeros(1, *input_shape))
    return tuple(tuple(stage.shape[2:]) for stage in stages)
