"""Students from the user's code: the factory imported, called, wrapped and checked before anything trains.

A ``custom`` student comes from the user's code (opt-in: ``--allow-code`` or ``AUTOKD_ALLOW_CODE=1``)::

    student: {family: custom, factory: "custom_student:make_student", args: {width: 16}}

`build_custom_student` (what `autokd.zoo.build_model` does for such an arch) imports the module (the
arch's ``path`` folder first, then the normal import path), calls ``make_student(input_shape,
num_classes, **args)`` under the seed and wraps the nn.Module it returns in a `CustomStudent`.
`check_student` builds it once on a dummy batch before anything trains, so a bad factory is one line.
Its size is measured like any model's (`autokd.sizes`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autokd.archs import CUSTOM, check_code_allowed, validate_arch
from autokd.errors import ConfigError
from autokd.torch_state import seeded, torch_threads

__all__ = ["CustomStudent", "build_custom_student", "check_student"]


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


def build_custom_student(arch: dict, input_shape: tuple, num_classes: int, *, seed: int | None = None,
                         where: str = "student", source: str = "<arch>") -> CustomStudent:
    """The validated custom `arch` as a `CustomStudent`: its factory imported, then called under `seed`.

    With `seed`, the initial weights depend on the seed alone, not on the caller's RNG state.
    """
    input_shape = tuple(int(d) for d in input_shape)
    factory = _load_factory(arch, where, source)
    with seeded(seed):
        return CustomStudent(arch, _call_factory(factory, arch, input_shape, num_classes, where, source))


def _load_factory(arch: dict, where: str, source: str) -> Callable[..., nn.Module]:
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

    Builds it once (`build_custom_student`, seed 0) and runs a dummy batch [2, *input_shape] in eval
    mode: the output must be logits [2, num_classes]. With `features` (``w_feat > 0`` is possible) its
    module must have ``forward_features`` returning (logits, features [2, feature_dim]) and an integer
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
    factory = _load_factory(arch, where, source)
    _check_argument_names(factory, arch, searched_args, space_source)
    model = build_custom_student(arch, input_shape, num_classes, seed=0, where=where, source=source)
    sample = torch.zeros(2, *(int(d) for d in input_shape))
    expected = (2, int(num_classes))
    model.eval()
    try:
        with torch.no_grad(), torch_threads(1):
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
