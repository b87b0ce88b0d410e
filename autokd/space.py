"""Search spaces: a YAML grammar compiled to an Optuna define-by-run function.

A space maps dotted config keys to what may vary::

    params:
      distill.temperature: {type: float, low: 1, high: 20, log: true}
      distill.kind:        {type: categorical, choices: [kl, mse, dkd]}
      distill.dkd_beta:    {type: float, low: 1, high: 10, when: {distill.kind: [dkd]}}
      distill.teachers:    {type: teacher_subset}          # a non-empty subset of the study's teachers
      student.family:      {type: categorical, choices: [mlp, cnn]}
      student.width:       {type: int, low: 8, high: 256, log: true, when: {student.family: [mlp]}}
      schedule.epochs:     {type: fixed, value: 5}

A parameter with `when` is suggested only if every named earlier parameter took one of the
listed values. Optuna parameter names are the dotted keys, so a study reads well in
optuna-dashboard. A trial's config is the study's defaults with the sampled values applied.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import optuna
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from autokd.archs import FAMILIES, family_has
from autokd.config_files import config_error, describe_validation_error, read_yaml
from autokd.errors import ConfigError
from autokd.spec import (DistillSpec, ScheduleSpec, StudySpec, TeacherSpec, TrainConfig, attention_refusal, check_int64,
                         cut, shown)

SECTIONS = ("distill", "schedule", "student")
SUBSET_SEPARATOR = "+"


def _check_range(param):
    if param.low > param.high:
        raise ValueError(f"low must be <= high, got low={param.low}, high={param.high}")
    if param.log and param.low <= 0:
        raise ValueError(f"log scale needs low > 0, got low={param.low}")
    return param


class _Param(BaseModel):
    """No bound is infinite or NaN, no integer beyond int64 (as in the study's own models)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    when: dict[str, list[Any]] | None = None

    @field_validator("*")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        return check_int64(value)


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        return _check_range(self)


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self)
        if self.log and self.step != 1:  # Optuna refuses it: a log scale has no even steps
            raise ValueError(f"log: true cannot go with step {self.step} (a log scale has no even steps)")
        if (self.high - self.low) % self.step:
            raise ValueError(f"step {self.step} does not divide high - low = {self.high - self.low} "
                             f"(Optuna would never sample high={self.high})")
        return self

    def can_take(self, value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value)
                and self.low <= value <= self.high and (int(value) - self.low) % self.step == 0)


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _storable(cls, choices: list[Any]) -> list[Any]:
        for choice in choices:  # what Optuna's storage keeps; anything else it only warns about
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(f"each choice must be a string, number, boolean or null, got {shown(choice)}")
        return choices


class FixedParam(_Param):
    type: Literal["fixed"]
    value: Any


class TeacherSubsetParam(_Param):
    type: Literal["teacher_subset"]
    max_size: int | None = Field(None, gt=0)


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam, FixedParam, TeacherSubsetParam],
                  Field(discriminator="type")]
_PARAMS = TypeAdapter(dict[str, Param])


@dataclass
class SearchSpace:
    """A validated space; `suggest(trial)` samples it, `apply(params)` makes a trial's config."""

    params: dict[str, Any]
    teacher_names: list[str]
    source: str = "<space>"

    def subsets(self, param: TeacherSubsetParam) -> list[str]:
        largest = min(param.max_size or len(self.teacher_names), len(self.teacher_names))
        return [SUBSET_SEPARATOR.join(combo) for size in range(1, largest + 1)
                for combo in itertools.combinations(self.teacher_names, size)]

    def suggest(self, trial: optuna.Trial, sections: tuple[str, ...] = SECTIONS) -> None:
        """The define-by-run function: suggests every active parameter of `sections` under its dotted name."""
        for name, param in self.params.items():
            if name.partition(".")[0] not in sections:
                continue
            if param.when and any(trial.params.get(key, _ABSENT) not in allowed
                                  for key, allowed in param.when.items()):
                continue
            if isinstance(param, FloatParam):
                trial.suggest_float(name, param.low, param.high, log=param.log)
            elif isinstance(param, IntParam):
                trial.suggest_int(name, param.low, param.high, log=param.log, step=param.step)
            elif isinstance(param, CategoricalParam):
                trial.suggest_categorical(name, param.choices)
            elif isinstance(param, TeacherSubsetParam):
                trial.suggest_categorical(name, self.subsets(param))

    def varies(self, section: str) -> bool:
        """Does the space search any parameter of `section` (student, distill, schedule)?"""
        return any(name.partition(".")[0] == section and not isinstance(param, FixedParam)
                   for name, param in self.params.items())

    def fixed_values(self) -> dict[str, Any]:
        return {name: p.value for name, p in self.params.items() if isinstance(p, FixedParam)}

    def apply(self, base: TrainConfig, sampled: dict[str, Any]) -> TrainConfig:
        """`base` with the sampled (and fixed) values set; the student is rebuilt if its family changes."""
        document = base.model_dump()
        values = {**self.fixed_values(), **sampled}
        family = values.get("student.family", document["student"]["family"])
        if family != document["student"]["family"]:
            document["student"] = {"family": family}
        for name, value in values.items():
            section, key = name.split(".", 1)
            if name == "distill.teachers" and isinstance(value, str):
                value = value.split(SUBSET_SEPARATOR)
            if section == "student" and key.startswith("args."):  # a custom student's factory argument
                document[section]["args"] = {**document[section].get("args", {}), key.removeprefix("args."): value}
                continue
            document[section][key] = value
        return TrainConfig.model_validate(document)


_ABSENT = object()


def parse_space(document: dict[str, Any], source: str, study: StudySpec) -> SearchSpace:
    """Validate a space's mapping against the study it will search."""
    if set(document) - {"params", "description"}:
        extra = sorted(map(str, set(document) - {"params", "description"}))[0]
        raise ConfigError(f"{source}: {shown(extra)}: unknown key (allowed: params, description)")
    if not isinstance(document.get("params"), dict) or not document["params"]:
        raise ConfigError(f"{source}: params: expected a non-empty mapping of dotted keys to parameters")
    try:
        params = _PARAMS.validate_python(document["params"])
    except ValidationError as error:
        raise config_error(f"{source}: params", error) from None
    space = SearchSpace(params, [t.name for t in study.teachers], source)
    _check_names(space, study)
    _check_attention(space, study)
    _check_values(space, study)
    return space


def may_be_positive(space: SearchSpace, name: str, base_value: float) -> bool:
    """Can the numeric config key `name` (e.g. ``distill.w_at``) be > 0 in some trial of this space?"""
    param = space.params.get(name)
    if param is None or param.when:  # not searched, or not in every trial: the study's own value counts
        if base_value > 0:
            return True
    if isinstance(param, CategoricalParam):
        return any(_positive(v) for v in param.choices)
    if isinstance(param, FixedParam):
        return _positive(param.value)
    return param is not None and param.high > 0


_AS_FLOAT = TypeAdapter(float)


def _positive(value: Any) -> bool:
    """Is `value` > 0 once a float config key holds it? The config's rules, not Python's: `true` is 1.0 and
    "0.5" is 0.5 there, so a weight given that way turns the loss term on."""
    try:
        return _AS_FLOAT.validate_python(value) > 0
    except ValidationError:
        return False  # not a number: _check_values refuses it, naming the key


def attention_scope(space: SearchSpace, study: StudySpec) -> tuple[list[str], list[TeacherSpec]] | None:
    """(student families, teachers) that attention transfer may run with in this study; None when
    ``distill.w_at`` is 0 in every trial. A searched w_at goes with the families its ``when`` names."""
    if not may_be_positive(space, "distill.w_at", study.distill.w_at):
        return None
    param = space.params.get("distill.w_at")
    families = _student_families(param or FixedParam(type="fixed", value=0), space.params.get("student.family"),
                                 study)
    searched_teachers = "distill.teachers" in space.params
    return families, list(study.teachers) if searched_teachers else study.selected_teachers()


def _check_attention(space: SearchSpace, study: StudySpec) -> None:
    """Attention transfer (w_at > 0 possible) needs cnn/resnet students and teachers in every trial it runs in."""
    scope = attention_scope(space, study)
    if scope is None:
        return
    families, teachers = scope
    for family in families:
        reason = attention_refusal({"family": family}, teachers)
        if reason:
            key = "params.distill.w_at" if "distill.w_at" in space.params else "params.student.family"
            hint = (" (add when: {student.family: [cnn, resnet]} to distill.w_at)"
                    if "student.family" in space.params and key.endswith("w_at") else "")
            raise ConfigError(f"{space.source}: {key}: {reason}{hint}")


def _check_names(space: SearchSpace, study: StudySpec) -> None:
    seen: list[str] = []
    families = space.params.get("student.family")
    if isinstance(families, (CategoricalParam, FixedParam)):  # first: the checks below look families up
        label, given = (("choices", families.choices) if isinstance(families, CategoricalParam)
                        else ("value", [families.value]))
        unknown = [f for f in given if not isinstance(f, str) or f not in FAMILIES]
        if unknown:
            raise ConfigError(f"{space.source}: params.student.family.{label}: must be among "
                              f"{sorted(FAMILIES)}, got {shown(unknown[0])}")
    for name, param in space.params.items():
        where = f"{space.source}: params.{cut(name)}"
        section, _, key = name.partition(".")
        if section not in SECTIONS or not key:
            raise ConfigError(f"{where}: expected a dotted key starting with one of {list(SECTIONS)}")
        for condition, allowed in (param.when or {}).items():
            if condition not in seen:
                raise ConfigError(f"{where}: when: {shown(condition)} is not a parameter defined above this one")
            _check_condition(space, where, condition, allowed)
        if section == "distill" and key not in DistillSpec.model_fields:
            raise ConfigError(f"{where}: unknown key; allowed: {sorted(DistillSpec.model_fields)}")
        if section == "schedule" and key not in ScheduleSpec.model_fields:
            raise ConfigError(f"{where}: unknown key; allowed: {sorted(ScheduleSpec.model_fields)}")
        if isinstance(param, TeacherSubsetParam):
            if name != "distill.teachers":
                raise ConfigError(f"{where}: type teacher_subset is only for distill.teachers")
            if not study.teachers:
                raise ConfigError(f"{where}: the study has no teachers to choose a subset from")
        if section == "student" and key != "family":
            possible = _student_families(param, families, study)
            missing = [f for f in possible if not family_has(f, key)]
            if missing:
                hint = ("a custom student varies its factory's arguments as student.args.<name>"
                        if missing[0] == "custom" else
                        "add when: {student.family: [...]} with families that have it")
                raise ConfigError(f"{where}: family {missing[0]!r} has no parameter {key!r}; {hint}")
        seen.append(name)


def _check_condition(space: SearchSpace, where: str, condition: str, allowed: list[Any]) -> None:
    """Every value a `when` lists must be one its parameter can take (compared as `suggest` compares them)."""
    param = space.params[condition]
    if isinstance(param, FixedParam):
        raise ConfigError(f"{where}: when: {condition!r} is fixed, not sampled, so the condition never holds")
    if isinstance(param, FloatParam):
        raise ConfigError(f"{where}: when: {condition!r} is a float: it takes any given value with probability "
                          "zero (make it categorical)")
    if not allowed:
        raise ConfigError(f"{where}: when: {condition!r} lists no value, so the condition never holds")
    for value in allowed:
        if isinstance(param, IntParam):
            possible, takes = param.can_take(value), f"integers {param.low}..{param.high} in steps of {param.step}"
        else:
            choices = param.choices if isinstance(param, CategoricalParam) else space.subsets(param)
            possible, takes = any(value == choice for choice in choices), shown(choices, 120)
        if not possible:
            raise ConfigError(f"{where}: when: {condition!r} never takes {shown(value)}; it takes {takes}")


def _check_values(space: SearchSpace, study: StudySpec) -> None:
    """Every bound, choice and fixed value must be a valid value of its config key (e.g. temperature > 0)."""
    base = study.train_config()
    families = space.params.get("student.family")
    for name, param in space.params.items():
        if isinstance(param, TeacherSubsetParam):
            continue
        candidates = {"float": ["low", "high"], "int": ["low", "high"]}.get(param.type)
        labelled = ([(label, getattr(param, label)) for label in candidates] if candidates else
                    [("choices", c) for c in param.choices] if isinstance(param, CategoricalParam) else
                    [("value", param.value)])
        for label, value in labelled:
            # checked with every family the parameter meets in its trials, not the study's own alone
            # (student.family itself: each of its own values, the family key being the parameter)
            for family in _student_families(param, families, study):
                try:
                    space.apply(base, {name: value, "student.family": family})
                except ValidationError as error:
                    _, reason = describe_validation_error(error)
                    raise ConfigError(f"{space.source}: params.{name}.{label}: {reason}") from None


def _student_families(param, families, study: StudySpec) -> list[str]:
    if param.when and "student.family" in param.when:
        return list(param.when["student.family"])
    if isinstance(families, CategoricalParam):
        return list(families.choices)
    if isinstance(families, FixedParam):
        return [families.value]
    return [study.student["family"]]


def load_space(study: StudySpec) -> SearchSpace:
    """The study's search space: inline, or a YAML file relative to the study file."""
    if isinstance(study.search_space, dict):
        return parse_space(copy.deepcopy(study.search_space), f"{study.source}: search_space", study)
    path = study.resolve_path(study.search_space)
    if not Path(path).is_file():
        raise ConfigError(f"{study.source}: search_space: file not found: {path}")
    return parse_space(read_yaml(path), str(path), study)
