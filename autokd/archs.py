"""Architectures as data: one pydantic model per model family, and the errors they give.

An architecture is a flat dict: a ``family`` plus that family's shape parameters. Missing
parameters take the family's defaults, so ``{"family": "mlp", "width": 64}`` is complete::

    >>> validate_arch({"family": "mlp", "width": 64})
    {'family': 'mlp', 'depth': 2, 'width': 64, 'activation': 'relu', 'dropout': 0.0}

The family models (`MlpArch`, `CnnArch`, `ResnetArch`) are the only statement of what each
family accepts: `Arch` is their union tagged by ``family``, `FAMILIES` their defaults, and
`autokd.zoo` builds torch modules from their validated dicts. This module imports no torch,
so checking a config costs milliseconds.

A student may also come from the user's own code (`CustomArch`, family ``custom``): a factory
named ``"module:function"`` that autokd imports and calls. Running it is opt-in only
(``--allow-code`` or ``AUTOKD_ALLOW_CODE=1``, see `check_code_allowed`); `StudentArch` is the
union a student may be, `Arch` (zoo only) what a teacher may be.

Every field's ``description`` says what it accepts; an error quotes it with the value given,
so the words are ours and do not change with pydantic's.
"""

from __future__ import annotations

import keyword
import os
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from autokd.errors import ConfigError

__all__ = ["ACTIVATION_NAMES", "ALLOW_CODE_ENV", "ARCH_ERROR", "ATTENTION_FAMILIES",
           "Arch", "ArchDict", "CUSTOM", "CnnArch", "CustomArch",
           "FAMILIES", "FAMILY_MODELS", "MlpArch", "ResnetArch", "StudentArch", "StudentArchDict", "allow_code",
           "check_code_allowed", "code_allowed", "describe_arch_error", "family_has", "resolve_code_path",
           "validate_arch"]

Activation = Literal["gelu", "relu", "silu", "tanh"]
ACTIVATION_NAMES: tuple[str, ...] = get_args(Activation)


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("even kernel")  # the words of the error are the field's description
    return value


_INT64_MAX = 2**63 - 1  # torch stops there
_Count = Annotated[int, Field(strict=True, ge=1, le=_INT64_MAX, description="an integer >= 1")]
_Switch = Annotated[bool, Field(strict=True, description="true or false")]


class _Family(BaseModel):
    """A family's shape parameters: unknown keys are errors, `bool`s are not integers, no float is inf or NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MlpArch(_Family):
    """flatten -> ``depth`` x [Linear(width) -> activation -> dropout] -> Linear(classes)."""

    family: Literal["mlp"] = "mlp"
    depth: _Count = 2
    width: _Count = 128
    activation: Activation = Field("relu", description=f"one of {sorted(ACTIVATION_NAMES)}")
    dropout: float = Field(0.0, strict=True, ge=0, lt=1, allow_inf_nan=False,
                           description="a number with 0 <= p < 1")


class CnnArch(_Family):
    """``stages`` x [conv -> batchnorm? -> relu -> maxpool 2], channels doubling, -> pool -> head."""

    family: Literal["cnn"] = "cnn"
    stages: _Count = 2
    channels: _Count = 16
    kernel: Annotated[int, Field(strict=True, ge=1, le=_INT64_MAX, description="an odd integer >= 1"),
                      AfterValidator(_odd)] = 3
    batch_norm: _Switch = True
    head_width: int = Field(64, strict=True, ge=0, le=_INT64_MAX,
                            description="an integer >= 0 (0: no hidden head layer)")


class ResnetArch(_Family):
    """stem conv -> ``blocks`` basic residual blocks (stride 2 after the first when ``downsample``) -> pool."""

    family: Literal["resnet"] = "resnet"
    blocks: _Count = 2
    channels: _Count = 16
    downsample: _Switch = True


def _plain_value(value: Any, depth: int = 0) -> bool:
    """A value YAML and JSON both hold as it is: null, bool, int, finite float, str, or lists/mappings of them."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if depth < 8 and isinstance(value, list):
        return all(_plain_value(item, depth + 1) for item in value)
    if depth < 8 and isinstance(value, dict):
        return all(isinstance(key, str) and _plain_value(item, depth + 1) for key, item in value.items())
    return False


_PASSED_BY_AUTOKD = ("input_shape", "num_classes")


def _factory_args(args: dict[str, Any]) -> dict[str, Any]:
    for name, value in args.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"argument names must be Python identifiers, got {_shown(name)}")
        if name in _PASSED_BY_AUTOKD:
            raise ValueError(f"{name!r} is passed by autokd: the factory is called as "
                             "factory(input_shape, num_classes, **args)")
        if not _plain_value(value):
            raise ValueError(f"{name!r} must be a plain value (number, string, boolean, null, or a list or "
                             f"mapping of them), got {_shown(value)}")
    return args


class CustomArch(_Family):
    """A student from the user's code: ``factory(input_shape, num_classes, **args)`` returns an nn.Module.

    ``input_shape`` is one sample's shape, channels first (``(1, 8, 8)`` for digits); the module maps
    a batch [B, *input_shape] to logits [B, num_classes]. ``path``: the folder searched first for the
    factory's module; a config file's loader makes it absolute, relative to the file's folder, and
    fills in that folder when none is given (`resolve_code_path`).
    """

    family: Literal["custom"] = "custom"
    factory: str = Field(strict=True, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
                         description="'module:function' (a module on the import path, dots for packages, and a "
                                     "callable in it), e.g. 'custom_student:make_student'")
    args: Annotated[dict[str, Any], AfterValidator(_factory_args)] = Field(
        default_factory=dict, description="a mapping of the factory's keyword arguments (identifiers, other than "
                                          "input_shape and num_classes) to plain values (numbers, strings, "
                                          "booleans, null, lists, mappings)")
    path: str | None = Field(None, strict=True, min_length=1,
                             description="a folder holding the factory's module (relative to the config file)")


Arch = Annotated[Union[CnnArch, MlpArch, ResnetArch], Field(discriminator="family")]
StudentArch = Annotated[Union[CnnArch, CustomArch, MlpArch, ResnetArch], Field(discriminator="family")]
FAMILY_MODELS: dict[str, type[_Family]] = {"cnn": CnnArch, "mlp": MlpArch, "resnet": ResnetArch}
CUSTOM = "custom"
# Families with convolutional stages, hence spatial attention maps (attention transfer, `distill.w_at`).
ATTENTION_FAMILIES = ("cnn", "resnet")
_STUDENT_MODELS: dict[str, type[_Family]] = {**FAMILY_MODELS, CUSTOM: CustomArch}
# {family: {parameter: default}}: what a search space may vary per family, and what a report leaves out.
# Zoo families only: `student.family` in a space chooses among these; a custom student varies `args.<name>`.
FAMILIES: dict[str, dict[str, Any]] = {
    name: {key: field.default for key, field in model.model_fields.items() if key != "family"}
    for name, model in FAMILY_MODELS.items()}


def family_has(family: str, key: str) -> bool:
    """Can a search space set `key` (a dotted key below ``student``) for a student of `family`?"""
    if family == CUSTOM:
        name = key.removeprefix("args.")
        return key.startswith("args.") and name.isidentifier() and name not in _PASSED_BY_AUTOKD
    return key in FAMILIES.get(family, {})


_ARCH = TypeAdapter(Arch)
_STUDENT_ARCH = TypeAdapter(StudentArch)
ARCH_ERROR = "arch"  # the pydantic error type of a refused architecture inside a config; ctx["key"]: the parameter


def describe_arch_error(error: ValidationError, models: dict[str, type[_Family]] | None = None) -> tuple[str, str]:
    """(parameter, what was expected, got X) for an `Arch` validation error; the parameter is '' for the whole arch.

    An unknown key is reported before a bad value: a misspelt key usually explains the rest.
    `models`: the families that were allowed (default: the zoo's and ``custom``).
    """
    first = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    return _describe(first, _STUDENT_MODELS if models is None else models)


def _describe(error: ErrorDetails, models: dict[str, type[_Family]]) -> tuple[str, str]:
    loc, kind, given = error["loc"], error["type"], error["input"]
    families = sorted(models)
    if kind == "union_tag_not_found":
        return "family", f"required key is missing (one of {families})"
    if kind == "union_tag_invalid":
        hint = (" (a teacher from your own code: give it as torchscript)"
                if given["family"] == CUSTOM and CUSTOM not in models else "")
        return "family", f"must be one of {families}, got {_shown(given['family'])}{hint}"
    if len(loc) < 2:  # not a mapping: the union found nothing to read a family from
        return "", f"must be a mapping with a 'family' key, got {_shown(given)}"
    family, key = str(loc[0]), str(loc[1])
    fields = models[family].model_fields
    if kind == "extra_forbidden":
        return _cut(key), f"unknown key for family {family!r}, allowed: {sorted(set(fields) - {'family'})}"
    if kind == "missing":
        return key, f"required key is missing for family {family!r}: {fields[key].description}"
    if kind == "value_error" and family == CUSTOM:  # worded by `_factory_args`
        return key, error["msg"].removeprefix("Value error, ")
    if kind == "less_than_equal":  # only the int64 bound is an upper bound of an integer here
        return key, f"must be an integer of at most 64 bits (|x| < 2**63), got {_shown(given)}"
    description = fields[key].description
    return key, (f"must be {description}, got {_shown(given)}" if description else error["msg"])


def _cut(text: str, limit: int = 80) -> str:
    """An error line never echoes a whole hostile input (`autokd.spec.cut`; spec imports this module)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _shown(value: Any) -> str:
    return _cut(repr(value))


def _validated(arch: Any, adapter: TypeAdapter = _STUDENT_ARCH) -> dict[str, Any]:
    return adapter.validate_python(arch).model_dump()


def validate_arch(arch: Any, where: str = "student", source: str = "<arch>") -> dict[str, Any]:
    """A new dict: `family` first, then every shape parameter (given or default). Any family, ``custom`` too.

    Raises `ConfigError` with one line naming ``<source>: <where>.<key>``.
    """
    try:
        return _validated(arch)
    except ValidationError as error:
        key, message = describe_arch_error(error)
        raise ConfigError(f"{source}: {'.'.join(filter(None, (where, key)))}: {message}") from None


def _field_validator(adapter: TypeAdapter, models: dict[str, type[_Family]]):
    def validate(arch: Any) -> dict[str, Any]:
        try:
            return _validated(arch, adapter)
        except ValidationError as error:
            key, message = describe_arch_error(error, models)
            raise PydanticCustomError(ARCH_ERROR, "{message}", {"key": key, "message": message}) from None
    return validate


# A config field holding an architecture: a plain dict (as written, stored and exported) validated
# through the family models. A refusal is one `ARCH_ERROR` whose ctx["key"] extends the field's loc.
# `ArchDict`: a zoo architecture (teachers); `StudentArchDict`: a zoo or a custom one (students).
ArchDict = Annotated[dict[str, Any], PlainValidator(_field_validator(_ARCH, FAMILY_MODELS),
                                                    json_schema_input_type=Arch)]
StudentArchDict = Annotated[dict[str, Any], PlainValidator(_field_validator(_STUDENT_ARCH, _STUDENT_MODELS),
                                                           json_schema_input_type=StudentArch)]


# --------------------------------------------------------------------------- code from the user

ALLOW_CODE_ENV = "AUTOKD_ALLOW_CODE"  # "1": custom students may run (what --allow-code sets)


def code_allowed() -> bool:
    """Has the user opted in to running their own code (``AUTOKD_ALLOW_CODE=1``, set by ``--allow-code``)?"""
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def allow_code() -> None:
    """Opt in for this process and the processes it starts (Ray's local workers inherit it): ``--allow-code``."""
    os.environ[ALLOW_CODE_ENV] = "1"


def check_code_allowed(arch: Any, where: str = "student", source: str = "<config>") -> None:
    """A one-line `ConfigError` when `arch` is a custom student and the user has not opted in; else nothing."""
    if isinstance(arch, dict) and arch.get("family") == CUSTOM and not code_allowed():
        raise ConfigError(f"{source}: {where}.factory: a custom student runs your code "
                          f"({_shown(arch.get('factory'))}); allow it with --allow-code or {ALLOW_CODE_ENV}=1")


def resolve_code_path(arch: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """`arch` with a custom student's ``path`` absolute: relative to `folder` (a config file's), or `folder` itself."""
    if arch.get("family") != CUSTOM:
        return arch
    path = os.path.expanduser(arch.get("path") or ".")
    return {**arch, "path": os.path.abspath(os.path.join(folder, path))}
