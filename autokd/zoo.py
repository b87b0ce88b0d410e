"""The built-in model families for students and teachers, built from a small dict; `build_model` builds any arch.

An architecture is a flat dict: a ``family`` plus that family's shape parameters, checked
and completed with defaults by `autokd.archs` (torch-free: configs are validated without torch)::

    >>> model = build_model({"family": "mlp", "depth": 1, "width": 32}, input_shape=(1, 8, 8), num_classes=10)
    >>> sum(p.numel() for p in model.parameters())      # 64*32 + 32 + 32*10 + 10
    2410

Families (inputs are channels first; cnn and resnet take one spatial dim, e.g. ``(1, 40)``,
or two, e.g. ``(1, 28, 28)``):

- ``mlp``: flatten -> ``depth`` x [Linear(width) -> activation -> dropout] -> Linear(classes).
- ``cnn``: ``stages`` x [conv -> batchnorm? -> relu -> maxpool 2], channels doubling from
  ``channels`` -> global average pool -> [Linear(head_width) -> relu]? -> Linear(classes).
- ``resnet``: stem conv -> ``blocks`` basic residual blocks (channels doubled and stride 2 at
  every block after the first when ``downsample``) -> global average pool -> Linear(classes).

Every model is a `ZooModel`: ``body`` (input -> penultimate features) and ``head`` (the final
Linear), so distillation can read features without knowing the family.

Stages (attention transfer, ``distill.w_at``): a cnn or resnet body is a sequence of stages, each
ending at a spatial activation [B, C, *spatial] that `ZooModel.forward_stages` returns. A cnn
stage ends after its ReLU, before its max-pool (so stage 1 is at the input's resolution); a
resnet's stages are the stem (after its ReLU) and every residual block. An mlp has none.

A ``custom`` arch (the user's own factory) is built by `autokd.custom_student`, which `build_model`
hands it to; what a model costs (params, bytes, MACs) is measured by `autokd.sizes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from autokd.archs import CUSTOM, validate_arch
from autokd.custom_student import CustomStudent, build_custom_student
from autokd.torch_state import seeded

__all__ = ["ACTIVATIONS", "ZooModel", "build_model"]

# One module per name in `archs.ACTIVATION_NAMES` (tests/test_zoo.py checks they agree).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ZooModel(nn.Module):
    """`body` maps inputs to penultimate features [B, feature_dim]; `head` maps those to logits.

        >>> model = build_model({"family": "cnn"}, input_shape=(1, 28, 28), num_classes=10)
        >>> logits, features = model.forward_features(torch.zeros(4, 1, 28, 28))
        >>> tuple(logits.shape), tuple(features.shape) == (4, model.feature_dim)
        ((4, 10), True)
    """

    def __init__(self, arch: dict, body: nn.Module, feature_dim: int, num_classes: int,
                 stage_ends: tuple[int, ...] = ()):
        super().__init__()
        self.arch = arch
        self.feature_dim = feature_dim
        self.stage_ends = stage_ends  # indices of the body layers whose outputs end a stage
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits, features, the output of every stage [B, C_j, *spatial_j], shallowest first).

        The same computation as `forward_features`, layer by layer; an mlp has no stages ([]).
        """
        stages = []
        for index, layer in enumerate(self.body):
            x = layer(x)
            if index in self.stage_ends:
                stages.append(x)
        return self.head(x), x, stages


def build_model(arch: dict, input_shape: tuple, num_classes: int, *, seed: int | None = None,
                where: str = "student", source: str = "<arch>") -> ZooModel | CustomStudent:
    """The validated `arch` as a `ZooModel` (a custom one: a `CustomStudent`) for samples of `input_shape`.

    With `seed`, the initial weights depend on the seed alone, not on the caller's RNG state
    (a reused Ray worker has consumed random numbers before; a trial must still replay exactly).
    """
    arch = validate_arch(arch, where=where, source=source)
    input_shape = tuple(int(d) for d in input_shape)
    if arch["family"] == CUSTOM:
        return build_custom_student(arch, input_shape, num_classes, seed=seed, where=where, source=source)
    with seeded(seed):
        body, feature_dim, stage_ends = _BUILDERS[arch["family"]](arch, input_shape)
        return ZooModel(arch, body, feature_dim, num_classes, stage_ends)


def _mlp_body(arch: dict, input_shape: tuple[int, ...]) -> tuple[nn.Sequential, int, tuple[int, ...]]:
    layers: list[nn.Module] = [nn.Flatten()]
    in_features = math.prod(input_shape)
    for _ in range(arch["depth"]):
        layers += [nn.Linear(in_features, arch["width"]), ACTIVATIONS[arch["activation"]]()]
        if arch["dropout"] > 0:
            layers.append(nn.Dropout(arch["dropout"]))
        in_features = arch["width"]
    return nn.Sequential(*layers), in_features, ()


def _cnn_body(arch: dict, input_shape: tuple[int, ...]) -> tuple[nn.Sequential, int, tuple[int, ...]]:
    ops = _spatial_ops(input_shape)
    in_channels, spatial = input_shape[0], list(input_shape[1:])
    layers: list[nn.Module] = []
    stage_ends = []
    for stage in range(arch["stages"]):
        out_channels = arch["channels"] * 2 ** stage
        # A conv followed by batchnorm needs no bias: batchnorm's shift replaces it.
        layers.append(ops.conv(in_channels, out_channels, arch["kernel"], padding=arch["kernel"] // 2,
                               bias=not arch["batch_norm"]))
        if arch["batch_norm"]:
            layers.append(ops.batch_norm(out_channels))
        layers.append(nn.ReLU())
        stage_ends.append(len(layers) - 1)  # the stage's activation, at its resolution before pooling
        if min(spatial) >= 2:  # max-pooling a size-1 map would fail
            layers.append(ops.max_pool(2))
            spatial = [size // 2 for size in spatial]
        in_channels = out_channels
    layers += [ops.global_pool(1), nn.Flatten()]
    if arch["head_width"] > 0:
        layers += [nn.Linear(in_channels, arch["head_width"]), nn.ReLU()]
        return nn.Sequential(*layers), arch["head_width"], tuple(stage_ends)
    return nn.Sequential(*layers), in_channels, tuple(stage_ends)


def _resnet_body(arch: dict, input_shape: tuple[int, ...]) -> tuple[nn.Sequential, int, tuple[int, ...]]:
    ops = _spatial_ops(input_shape)
    channels, spatial = arch["channels"], list(input_shape[1:])
    layers: list[nn.Module] = [ops.conv(input_shape[0], channels, 3, padding=1, bias=False),
                               ops.batch_norm(channels), nn.ReLU()]
    for block in range(arch["blocks"]):
        stride = 2 if block > 0 and arch["downsample"] and min(spatial) >= 2 else 1
        out_channels = channels * stride  # channels double whenever resolution halves
        layers.append(_BasicBlock(ops, channels, out_channels, stride))
        spatial = [(size + 1) // 2 for size in spatial] if stride == 2 else spatial
        channels = out_channels
    stage_ends = (2, *range(3, len(layers)))  # the stem's ReLU, then every block
    layers += [ops.global_pool(1), nn.Flatten()]
    return nn.Sequential(*layers), channels, stage_ends


class _BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut (identity, or 1x1 conv-bn when the shape changes), relu."""

    def __init__(self, ops: _SpatialOps, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            ops.conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            ops.batch_norm(out_channels), nn.ReLU(),
            ops.conv(out_channels, out_channels, 3, padding=1, bias=False), ops.batch_norm(out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(ops.conv(in_channels, out_channels, 1, stride=stride, bias=False),
                                          ops.batch_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


@dataclass(frozen=True)
class _SpatialOps:
    conv: type[nn.Module]
    batch_norm: type[nn.Module]
    max_pool: type[nn.Module]
    global_pool: type[nn.Module]


_OPS_BY_SPATIAL_DIMS = {
    1: _SpatialOps(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
    2: _SpatialOps(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
}


def _spatial_ops(input_shape: tuple[int, ...]) -> _SpatialOps:
    spatial_dims = len(input_shape) - 1
    if spatial_dims not in _OPS_BY_SPATIAL_DIMS:
        raise ValueError(f"input_shape: cnn and resnet need (channels, length) or (channels, height, width), "
                         f"got {input_shape}")
    return _OPS_BY_SPATIAL_DIMS[spatial_dims]


_BUILDERS: dict[str, Callable[[dict, tuple[int, ...]], tuple[nn.Sequential, int, tuple[int, ...]]]] = {
    "cnn": _cnn_body, "mlp": _mlp_body, "resnet": _resnet_body,
}
