"""Config files read: bounded, safe YAML; a bad file is one line naming it, answered without torch."""

import subprocess
import sys
import time
import tracemalloc

import pytest
import yaml

from autokd.config_files import load_study
from autokd.errors import ConfigError
from conftest import VALID_STUDY as VALID, write_config as write

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


def test_validating_a_config_imports_no_torch(tmp_path):
    # A bad config must answer at once: torch takes seconds to import; architectures are checked without it.
    bad_student = {"family": "mlp", "depth": 1, "width": -1}
    good, bad = write(tmp_path, VALID, "good.yaml"), write(tmp_path, {**VALID, "student": bad_student}, "bad.yaml")
    code = ("import sys, autokd.config_files\n"
            f"autokd.config_files.load_study({str(good)!r})\n"
            f"try: autokd.config_files.load_study({str(bad)!r})\n"
            "except autokd.errors.ConfigError as error: print(error)\n"
            "print('torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.splitlines() == [f"{bad}: student.width: must be an integer >= 1, got -1", "False"], \
        completed.stdout + completed.stderr


# ---------------------------------------------------------------------------------------------
# Hostile YAML


def _bomb(levels: int) -> str:
    """The billion laughs: `levels` levels of 9 aliases to the level below (9**levels strings expanded)."""
    lines = ["name: s", "search_space: x", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_in_little_memory(tmp_path):
    path = write(tmp_path, _bomb(12))  # 2.8e11 strings once expanded
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+: aliases expand to more "
                                              r"than 100,000 values"):
            load_study(path)
        seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 0.25 and peak < 5_000_000, (seconds, peak)


def test_aliases_that_expand_modestly_still_load(tmp_path):
    document = {key: value for key, value in VALID.items() if key != "teachers"}
    text = ("teachers:\n  - &t {name: t1, arch: {family: mlp, width: 32}, schedule: {epochs: 1, batch_size: 32}}\n"
            + yaml.safe_dump(document) + "schedule: {<<: *t, epochs: 3}\n")
    text = text.replace("schedule: {<<: *t,", "schedule: {<<: *s,").replace("schedule: {epochs: 1, batch_size: 32}",
                                                                        "schedule: &s {epochs: 1, batch_size: 32}")
    spec = load_study(write(tmp_path, text))
    assert (spec.schedule.epochs, spec.schedule.batch_size) == (3, 32)  # a merge key then an override is fine


@pytest.mark.parametrize("text, expected", [
    ("name: a\nname: b\n", "at line 2, column 1: duplicate key 'name'"),
    ("name: a\nschedule: {epochs: 1, epochs: 2}\n", "duplicate key 'epochs'"),
    ("a: &a [*a]\n", "an alias refers to its own anchor"),
    ("a: &a {b: *a}\n", "an alias refers to its own anchor"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than 50 levels"),
])
def test_hostile_yaml_is_refused(tmp_path, text, expected):
    with pytest.raises(ConfigError, match="not valid YAML") as error:
        load_study(write(tmp_path, text))
    assert expected in str(error.value)


@pytest.mark.parametrize("text", [
    yaml.safe_dump({**VALID, "k" * 50_000: 1}),
    yaml.safe_dump({**VALID, "sampler": {"name": "v" * 50_000}}),
    yaml.safe_dump({**VALID, "objectives": ["val_accuracy", "p" * 50_000]}),
    yaml.safe_dump({**VALID, "student": {"family": "f" * 50_000}}),
    yaml.safe_dump({**VALID, "student": {"family": "mlp", "w" * 50_000: 1}}),
    yaml.safe_dump({**VALID, "constraints": ["params <= " + "9" * 50_000]}),
    "name: !!python/object/apply:os.system" + "x" * 50_000 + " ['true']\n",
    "name: [" + "x" * 50_000 + "\n",
], ids=["key", "value", "objective", "family", "arch-key", "constraint", "tag", "unclosed"])
def test_an_error_line_echoes_at_most_a_few_hundred_characters(tmp_path, text):
    with pytest.raises(ConfigError) as error:
        load_study(write(tmp_path, text))
    message = str(error.value).removeprefix(str(tmp_path))
    assert len(message) <= 250 and "\n" not in message, message
