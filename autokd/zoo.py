"""Model families for students and teachers, built from a small dict, and their size.

An architecture is a flat dict: a ``family`` plus that family's shape parameters, checked
and completed with defaults by `autokd.archs` (torch-free: configs are validated without torch)::

    >>> model = build_model({"family": "mlp", "depth": 1, "width": 32}, input_shape=(1, 8, 8), num_classes=10)
    >>> model_size(model, (1, 8, 8)).params      # 64*32 + 32 + 32*10 + 10
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

A ``custom`` student comes from the user's code (opt-in: ``--allow-code`` or ``AUTOKD_ALLOW_CODE=1``)::

    student: {family: custom, factory: "custom_student:make_student", args: {width: 16}}

`build_model` imports the module (the arch's ``path`` folder first, then the normal import path),
calls ``make_student(input_shape, num_classes, **args)`` under the seed and wraps the nn.Module it
returns in a `CustomStudent`. `check_student` builds it once on a dummy batch before anything
trains, so a bad factory is one line. Its size is measured like any model's: `model_size` walks
whatever modules it holds, and MACs are those torch's FlopCounterMode sees (matmuls, convolutions,
attention; a custom op or extension kernel it does not know counts nothing).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autokd.archs import CUSTOM, FAMILIES, check_code_allowed, validate_arch
from autokd.errors import ConfigError

__all__ = ["FAMILIES", "CustomStudent", "ModelSize", "ZooModel", "arch_size", "build_model", "check_student",
           "model_size", "stage_sizes", "validate_arch"]

# One module per name in `archs.ACTIVATION_NAMES` (tests/test_zoo.py checks they agree).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


# --------------------------------------------------------------------------- models


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
                where: str = "student", source: str = "<arch>") -> ZooModel:
    """The validated `arch` as a `ZooModel` for samples of `input_shape` (channels first).

    With `seed`, the initial weights depend on the seed alone, not on the caller's RNG state
    (a reused Ray worker has consumed random numbers before; a trial must still replay exactly).
    """
    arch = validate_arch(arch, where=where, source=source)
    input_shape = tuple(int(d) for d in input_shape)
    factory = _factory(arch, where, source) if arch["family"] == CUSTOM else None
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if factory is not None:
            return CustomStudent(arch, _call_factory(factory, arch, input_shape, num_classes, where, source))
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


# --------------------------------------------------------------------------- students from user code


class CustomStudent(nn.Module):
    """A student from the user's factory: ``net`` is the module it returned (state_dict keys ``net.*``).

    ``forward`` is ``net``'s. Feature distillation (``w_feat > 0``) needs ``net`` to offer the same
    hook as a zoo model: ``forward_features(x) -> (logits, features [B, feature_dim])`` and an
    integer ``feature_dim``; without them ``feature_dim`` is 0 and features are empty.
    """

    def __init__(self, arch: dict, net: nn.Module):
        super().__init__()
        self.arch = arch
        self.net = net
        self.feature_dim = _feature_dim(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.feature_dim:
            return self.net.forward_features(x)
        logits = self.net(x)
        return logits, logits.new_zeros(logits.shape[0], 0)


def _feature_dim(net: nn.Module) -> int:
    dim = getattr(net, "feature_dim", 0) if callable(getattr(net, "forward_features", None)) else 0
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else 0


def _factory(arch: dict, where: str, source: str) -> Callable[..., nn.Module]:
    """The callable `arch["factory"]` names, imported from `arch["path"]` first, then the import path.

    One-line `ConfigError` when running code was not allowed, the module cannot be imported (or
    raises while importing), the attribute is missing or is not callable."""
    check_code_allowed(arch, where, source)
    module_name, _, attribute = arch["factory"].partition(":")
    key = f"{source}: {where}.factory"
    folder = arch.get("path")
    if folder is not None:
        if not Path(folder).is_dir():
            raise ConfigError(f"{source}: {where}.path: folder not found: {_cut_text(folder)}")
        if folder not in sys.path:
            sys.path.insert(0, folder)  # first: the study's own module wins over a same-named installed one
    looked_in = f"{folder} and the import path" if folder else "the import path"
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(f"{key}: no module named {error.name!r} (looked in {looked_in})") from None
        raise ConfigError(f"{key}: importing {module_name!r} failed: {_first_line(error)}") from None
    except Exception as error:  # the user's module raised while it was imported
        raise ConfigError(f"{key}: importing {module_name!r} failed: {_first_line(error)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            where_found = getattr(target, "__file__", None) or module_name
            raise ConfigError(f"{key}: {module_name!r} ({where_found}) has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{key}: {arch['factory']!r} is not callable (its type is {type(target).__name__})")
    return target


def _call_factory(factory: Callable[..., nn.Module], arch: dict, input_shape: tuple[int, ...], num_classes: int,
                  where: str, source: str) -> nn.Module:
    try:
        net = factory(input_shape, num_classes, **arch["args"])
    except Exception as error:
        raise ConfigError(f"{source}: {where}.factory: {arch['factory']}{_call_text(input_shape, num_classes, arch)} "
                          f"raised {_first_line(error)}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{source}: {where}.factory: {arch['factory']} returned a {type(net).__name__}, "
                          "expected a torch.nn.Module")
    return net


def _call_text(input_shape: tuple[int, ...], num_classes: int, arch: dict) -> str:
    args = ", ".join([repr(input_shape), repr(num_classes), *(f"{k}={v!r}" for k, v in arch["args"].items())])
    return f"({_cut_text(args)})"


def _cut_text(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _first_line(error: BaseException) -> str:
    text = (str(error).splitlines() or [""])[0]
    return _cut_text(f"{type(error).__name__}: {text}" if text else type(error).__name__, 200)


def check_student(arch: dict, input_shape: tuple, num_classes: int, *, where: str = "student",
                  source: str = "<config>", features: bool = False, int8: bool = False,
                  searched_args: tuple[str, ...] = (), space_source: str = "<space>") -> None:
    """Check a custom student before anything trains or is written; zoo students pass untouched.

    Builds it once (`build_model`) and runs a dummy batch [2, *input_shape] in eval mode: the
    output must be logits [2, num_classes]. With `features` (``w_feat > 0`` is possible) its module
    must have ``forward_features`` returning (logits, features [2, feature_dim]) and an integer
    ``feature_dim``. `int8` (``quantize.int8``) is refused: `autokd.quantize` knows only zoo families.
    Every name in `searched_args` (``student.args.<name>`` of the search space read from `space_source`)
    must be one the factory takes. Each failure is one `ConfigError` line.
    """
    arch = validate_arch(arch, where=where, source=source)
    if arch["family"] != CUSTOM:
        return
    key = f"{source}: {where}.factory"
    if int8:
        raise ConfigError(f"{source}: quantize.int8: int8 quantisation supports the zoo families mlp, cnn and "
                          f"resnet, not a custom student ({arch['factory']})")
    factory = _factory(arch, where, source)
    _check_argument_names(factory, arch, searched_args, space_source)
    model = build_model(arch, input_shape, num_classes, seed=0, where=where, source=source)
    sample = torch.zeros(2, *(int(d) for d in input_shape))
    expected = (2, int(num_classes))
    model.eval()
    try:
        with torch.no_grad(), _one_thread():
            logits = model.net(sample)
            pair = model.net.forward_features(sample) if model.feature_dim else None
    except Exception as error:
        raise ConfigError(f"{key}: the module it returned fails on a batch of shape {[2, *input_shape]}: "
                          f"{_first_line(error)}") from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected or not logits.is_floating_point():
        got = f"shape {list(logits.shape)}" if isinstance(logits, torch.Tensor) else f"a {type(logits).__name__}"
        raise ConfigError(f"{key}: its module must map a batch {[2, *input_shape]} to logits {list(expected)}, "
                          f"got {got}")
    if not features:
        return
    if not model.feature_dim:
        raise ConfigError(f"{source}: distill.w_feat: feature distillation (w_feat > 0, in the config or its "
                          f"search space) needs features from the custom student: give the module that "
                          f"{arch['factory']} returns a forward_features(x) -> (logits, features) and an integer "
                          "feature_dim, or keep w_feat at 0")
    ok = (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)
          and tuple(pair[0].shape) == expected and tuple(pair[1].shape) == (2, model.feature_dim))
    if not ok:
        raise ConfigError(f"{key}: forward_features must return (logits {list(expected)}, features "
                          f"[2, feature_dim={model.feature_dim}]) for a batch of 2")


def _check_argument_names(factory: Callable, arch: dict, names: tuple[str, ...], source: str) -> None:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin, some C callables): the build will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    taken = [p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY)][2:]
    for name in names:
        if name not in taken:
            raise ConfigError(f"{source}: params.student.args.{name}: {arch['factory']} takes no "
                              f"argument {name!r} (it takes {taken})")


# --------------------------------------------------------------------------- size


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


def _macs_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    reference = next(model.parameters(), torch.zeros(()))  # the sample must match the model's dtype and device
    sample = torch.zeros((1, *input_shape), dtype=reference.dtype, device=reference.device)
    modes = {module: module.training for module in model.modules()}
    model.eval()  # eval mode: dropout off, batchnorm uses running stats, as in deployment
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
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
    with _one_thread():
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
    with torch.no_grad(), _one_thread():
        _, _, stages = model.forward_stages(torch.zeros(1, *input_shape))
    return tuple(tuple(stage.shape[2:]) for stage in stages)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded for a moment, then restore the caller's thread count.

    A one-sample forward gains nothing from threads, and while trials keep the cores busy
    the threads wait on each other: measured on 2 busy cores, the default cnn's size took
    172 ms with 2 threads and 14 ms with 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
