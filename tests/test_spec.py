"""Config validation: every error is one line naming the file and the dotted key."""

import subprocess
import sys

import pytest
import yaml

from autokd.errors import ConfigError
from autokd.spec import load_study, load_train_config

VALID = {
    "name": "s",
    "data": {"name": "digits"},
    "teachers": [{"name": "t1", "arch": {"family": "mlp", "width": 32}, "schedule": {"epochs": 1}}],
    "student": {"family": "mlp", "depth": 1, "width": 8},
    "search_space": {"params": {"distill.temperature": {"type": "float", "low": 1, "high": 4}}},
}


def write(tmp_path, document, name="study.yaml"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


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


def test_malformed_yaml_names_line(tmp_path):
    path = write(tmp_path, "name: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_study(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_study(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_study(write(tmp_path, "- a\n- b\n"))


def test_yaml_is_safe_loaded(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(path)


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


def test_validating_a_config_imports_no_torch(tmp_path):
    # A bad config must answer at once: torch takes seconds to import; architectures are checked without it.
    good, bad = write(tmp_path, VALID, "good.yaml"), write(tmp_path, with_change("student.width", -1), "bad.yaml")
    code = ("import sys, autokd.spec\n"
            f"autokd.spec.load_study({str(good)!r})\n"
            f"try: autokd.spec.load_study({str(bad)!r})\n"
            "except autokd.spec.ConfigError as error: print(error)\n"
            "print('torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.splitlines() == [f"{bad}: student.width: must be an integer >= 1, got -1", "False"], \
        completed.stdout + completed.stderr
