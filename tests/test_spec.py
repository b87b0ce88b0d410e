"""Config validation: every error is one line naming the file and the dotted key."""

import typing

import pytest
import yaml
from pydantic import BaseModel

from autokd.config_files import load_study, load_train_config
from autokd.errors import ConfigError
from conftest import VALID_STUDY as VALID, write_config as write
from autokd.spec import SEED_MAX, StudySpec

def with_change(dotted, value):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[last] = value
    return document


def test_valid_study_loads_with_defaults(tmp_path):
    spec = load_study(write(tmp_path, VALID))
    assert spec.directions == ["maximize", "minimize"]
    assert spec.storage_url() == f"sqlite:///{tmp_path / 's.db'}"
    assert spec.student == {"family": "mlp", "depth": 1, "width": 8, "activation": "relu", "dropout": 0.0}
    config = spec.train_config()
    assert config.distill.temperature == 4.0 and config.teachers[0].name == "t1"


@pytest.mark.parametrize("budget, early_stopping, expected", [
    ({"trials": 5}, None, "none"),                                   # a trial budget buys full trainings
    ({"trials": 5, "epochs": 100}, None, "pareto"),                  # a compute budget stops early
    ({"trials": 5, "epochs": 100}, {"eta": 2}, "pareto"),            # ... keeping the given rung settings
    ({"trials": 5, "epochs": 100}, {"kind": "none"}, "none"),        # unless the study says otherwise
    ({"trials": 5}, {"kind": "asha"}, "asha"),
])
def test_early_stopping_kind_follows_the_budget_unless_given(tmp_path, budget, early_stopping, expected):
    document = {**VALID, "budget": budget, **({"early_stopping": early_stopping} if early_stopping else {})}
    spec = load_study(write(tmp_path, document))
    assert spec.early_stopping.kind == expected
    if early_stopping and "eta" in early_stopping:
        assert spec.early_stopping.eta == early_stopping["eta"]


@pytest.mark.parametrize("dotted, value, expected", [
    ("distill.temperature", -1, "distill.temperature: must be > 0, got -1"),
    ("distill.temperature", 0, "distill.temperature: must be > 0, got 0"),
    ("distill.kind", "kl2", "distill.kind: must be 'kl', 'mse', 'dkd', 'lskd' or 'dist', got 'kl2'"),
    ("distill.colour", 1, "distill.colour: unknown key"),
    ("schedule.epochs", "ten", "schedule.epochs: must be a valid integer"),
    ("budget.trials", 0, "budget.trials: must be > 0, got 0"),
    ("budget.trials", -3, "budget.trials: must be > 0, got -3"),
    ("budget.epochs", 0, "budget.epochs: must be > 0, got 0"),
    ("sampler.name", "cmaes", "sampler.name: must be 'tpe', 'nsga2', 'gp' or 'random', got 'cmaes'"),
    ("objectives", ["params"], "objectives: the first objective must be 'val_accuracy'"),
    ("constraints", ["params < 5"], "constraints: expected '<metric> <= <number>'"),
    ("student.width", -3, "student.width: must be an integer >= 1, got -3"),
    ("student.family", "vit", "student.family: must be one of"),
    ("student.widht", 8, "student.widht: unknown key for family 'mlp', allowed: ['activation', 'depth',"),
    ("student", [1], "student: must be a mapping with a 'family' key, got [1]"),
    ("teachers.0.arch.kernel", 3, "teachers.0.arch.kernel: unknown key for family 'mlp'"),
    ("teachers.0.arch", {"family": "cnn", "kernel": 4}, "teachers.0.arch.kernel: must be an odd integer >= 1, got 4"),
    ("distill.teachers", ["nope"], "unknown teacher(s) ['nope']"),
    ("distill.teachers", [], "must name at least one teacher"),
    ("data.val_fraction", 1.5, "data.val_fraction: must be < 1, got 1.5"),
])
def test_bad_values_name_file_and_key(tmp_path, dotted, value, expected):
    path = write(tmp_path, with_change(dotted, value))
    with pytest.raises(ConfigError) as error:
        load_study(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_train_config_from_study_file_is_its_default_student(tmp_path):
    config = load_train_config(write(tmp_path, VALID))
    assert config.name == "s-default" and config.student["width"] == 8


def test_kd_weight_without_teachers_is_refused(tmp_path):
    document = {"student": {"family": "mlp"}, "distill": {"w_kd": 0.5}}
    with pytest.raises(ConfigError, match="need at least one entry in teachers"):
        load_train_config(write(tmp_path, document, "train.yaml"))


def test_architectures_are_stored_as_plain_dicts_with_every_parameter(tmp_path):
    spec = load_study(write(tmp_path, with_change("teachers.0.arch", {"family": "cnn", "kernel": 5})))
    stored = spec.train_config().model_dump(mode="json")
    assert stored["teachers"][0]["arch"] == {"family": "cnn", "stages": 2, "channels": 16, "kernel": 5,
                                             "batch_norm": True, "head_width": 64}
    assert stored["student"] == spec.student and type(spec.student) is dict


# ---------------------------------------------------------------------------------------------
# Numbers the libraries below refuse, refused when the file is read (issue 14)


def _fields(model: type[BaseModel], kind: type, prefix: str = "") -> list[str]:
    """Dotted keys of every `kind` field (plain or optional) reachable from `model`; lists as their item 0."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0],
                                                                                                     BaseModel):
            keys += _fields(args[0], kind, f"{prefix}{name}.0.")
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _fields(annotation, kind, f"{prefix}{name}.")
        elif annotation is kind or (len(args) == 1 and args[0] is kind):
            keys.append(f"{prefix}{name}")
    return keys


FLOAT_KEYS = _fields(StudySpec, float)
INT_KEYS = [key for key in _fields(StudySpec, int) if not key.endswith("seed")]
SEED_KEYS = ["seed", "data.seed", "teachers.0.seed", "sampler.seed"]


def test_the_walk_finds_the_numbers():
    assert {"distill.temperature", "schedule.lr", "data.val_fraction", "teachers.0.schedule.lr",
            "budget.time_limit_s", "resources.cpus_per_trial"} <= set(FLOAT_KEYS)
    assert {"schedule.epochs", "budget.trials", "resources.concurrency"} <= set(INT_KEYS)
    assert set(SEED_KEYS) <= set(_fields(StudySpec, int))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_no_float_anywhere_may_be_infinite_or_nan(tmp_path, value):
    for key in FLOAT_KEYS:
        path = write(tmp_path, with_change(key, value))
        with pytest.raises(ConfigError, match=rf": {key}: must be a finite number, got {value}$"):
            load_study(path)
    with pytest.raises(ConfigError, match=rf": student.dropout: must be a number with 0 <= p < 1, got {value}$"):
        load_study(write(tmp_path, with_change("student.dropout", value)))


def test_no_integer_anywhere_may_exceed_int64(tmp_path):
    for key in [*INT_KEYS, "student.width", "teachers.0.arch.depth"]:
        path = write(tmp_path, with_change(key, 2**63))
        expected = r"(an integer of at most 64 bits \(\|x\| < 2\*\*63\)|<= \d+)"
        with pytest.raises(ConfigError, match=rf": {key}: must be {expected}, got 92233"):
            load_study(path)


@pytest.mark.parametrize("key", SEED_KEYS)
def test_seeds_are_0_to_2_to_the_32_minus_1(tmp_path, key):
    for value, expected in ((-1, "must be >= 0, got -1"), (SEED_MAX + 1, f"must be <= {SEED_MAX}, got {SEED_MAX + 1}"),
                            (2**80, f"must be <= {SEED_MAX}")):
        with pytest.raises(ConfigError, match=rf": {key}: {expected}"):
            load_study(write(tmp_path, with_change(key, value)))
    load_study(write(tmp_path, with_change(key, SEED_MAX)))


@pytest.mark.parametrize("constraint, expected", [
    ("params <= 1.2.3", "'1.2.3' is not a number"),
    ("params <= e", "'e' is not a number"),
    ("params <= 1e999", "finite number > 0"),
    ("macs <= 0", "finite number > 0"),
    ("weights <= 5", "expected '<metric> <= <number>'"),
])
def test_constraints_are_evaluated_when_the_study_is_read(tmp_path, constraint, expected):
    with pytest.raises(ConfigError, match=r": constraints: ") as error:
        load_study(write(tmp_path, with_change("constraints", ["params <= 5000", constraint])))
    assert expected in str(error.value)


def test_constraints_become_limits(tmp_path):
    spec = load_study(write(tmp_path, with_change("constraints", ["params <= 5e4", "params <= 60000", "macs <= 1e6"])))
    assert spec.size_limits() == {"params": 50_000.0, "macs": 1e6}
