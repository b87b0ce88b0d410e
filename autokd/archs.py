"""Architectures as data: one pydantic model per model family, and the errors they give.

An architecture is a flat dict: a ``family`` plus that family's shape parameters. Missing
parameters take the family's defaults, so ``{"family": "mlp", "width": 64}`` is complete::

    >>> validate_arch({"family": "mlp", "width": 64})
    {'family': 'mlp', 'depth': 2, 'width': 64, 'activation': 'relu', 'dropout': 0.0}

The family models (`MlpArch`, `CnnArch`, `ResnetArch`) are the only statement of what each
family accepts: `Arch` is their union tagged by ``family``, `FAMILIES` their defaults, and
`autokd.zoo` builds torch modules from their validated dicts. This module imports no torch,
so checking a config costs milliseconds.

Every field's ``description`` says what it accepts; an error quotes it with the value given,
so the words are ours and do not change with pydantic's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from autokd.errors import ConfigError

__all__ = ["ACTIVATION_NAMES", "ARCH_ERROR", "Arch", "ArchDict", "CnnArch", "FAMILIES", "FAMILY_MODELS", "MlpArch",
           "ResnetArch", "describe_arch_error", "validate_arch"]

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


Arch = Annotated[Union[CnnArch, MlpArch, ResnetArch], Field(discriminator="family")]
FAMILY_MODELS: dict[str, type[_Family]] = {"cnn": CnnArch, "mlp": MlpArch, "resnet": ResnetArch}
# {family: {parameter: default}}: what a search space may vary per family, and what a report leaves out.
FAMILIES: dict[str, dict[str, Any]] = {
    name: {key: field.default for key, field in model.model_fields.items() if key != "family"}
    for name, model in FAMILY_MODELS.items()}

_ARCH = TypeAdapter(Arch)
ARCH_ERROR = "arch"  # the pydantic error type of a refused architecture inside a config; ctx["key"]: the parameter


def describe_arch_error(error: ValidationError) -> tuple[str, str]:
    """(parameter, what was expected, got X) for an `Arch` validation error; the parameter is '' for the whole arch.

    An unknown key is reported before a bad value: a misspelt key usually explains the rest.
    """
    first = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    return _describe(first)


def _describe(error: ErrorDetails) -> tuple[str, str]:
    loc, kind, given = error["loc"], error["type"], error["input"]
    families = sorted(FAMILY_MODELS)
    if kind == "union_tag_not_found":
        return "family", f"required key is missing (one of {families})"
    if kind == "union_tag_invalid":
        return "family", f"must be one of {families}, got {_shown(given['family'])}"
    if len(loc) < 2:  # not a mapping: the union found nothing to read a family from
        return "", f"must be a mapping with a 'family' key, got {_shown(given)}"
    family, key = str(loc[0]), str(loc[1])
    if kind == "extra_forbidden":
        return _cut(key), f"unknown key for family {family!r}, allowed: {sorted(FAMILIES[family])}"
    if kind == "less_than_equal":  # only the int64 bound is an upper bound of an integer here
        return key, f"must be an integer of at most 64 bits (|x| < 2**63), got {_shown(given)}"
    description = FAMILY_MODELS[family].model_fields[key].description
    return key, (f"must be {description}, got {_shown(given)}" if description else error["msg"])


def _cut(text: str, limit: int = 80) -> str:
    """An error line never echoes a whole hostile input (`autokd.spec.cut`; spec imports this module)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _shown(value: Any) -> str:
    return _cut(repr(value))


def _validated(arch: Any) -> dict[str, Any]:
    return _ARCH.validate_python(arch).model_dump()


def validate_arch(arch: Any, where: str = "student", source: str = "<arch>") -> dict[str, Any]:
    """A new dict: `family` first, then every shape parameter (given or default).

    Raises `ConfigError` with one line naming ``<source>: <where>.<key>``.
    """
    try:
        return _validated(arch)
    except ValidationError as error:
        key, message = describe_arch_error(error)
        raise ConfigError(f"{source}: {'.'.join(filter(None, (where, key)))}: {message}") from None


def _config_field(arch: Any) -> dict[str, Any]:
    try:
        return _validated(arch)
    except ValidationError as error:
        key, message = describe_arch_error(error)
        raise PydanticCustomError(ARCH_ERROR, "{message}", {"key": key, "message": message}) from None


# A config field holding an architecture: a plain dict (as written, stored and exported) validated
# through the family models. A refusal is one `ARCH_ERROR` whose ctx["key"] extends the field's loc.
ArchDict = Annotated[dict[str, Any], PlainValidator(_config_field, json_schema_input_type=Arch)]
