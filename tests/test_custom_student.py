"""Students from the user's code (`student: {family: custom, factory: "module:function"}`), opt-in only.

Without --allow-code (or AUTOKD_ALLOW_CODE=1) such a config is refused in one line and nothing is
written; with it a custom student trains, searches (in Ray's workers), exports and rebuilds with the
same initial weights, and every kind of bad factory is one line before anything trains.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil

import pytest
import torch
import yaml

from autokd.archs import ALLOW_CODE_ENV, validate_arch
from autokd.config_files import load_study, load_train_config
from autokd.custom_student import CustomStudent, check_student
from autokd.errors import ConfigError
from autokd.sizes import arch_size, model_size
from autokd.zoo import build_model
from conftest import REPO, cache_teachers, run_cli

DIGITS = (1, 8, 8)
FACTORY = (REPO / "studies" / "custom_student.py").read_text()
BAD_FACTORIES = '''
import torch
from torch import nn

NOT_CALLABLE = 3


def returns_a_tensor(input_shape, num_classes):
    return torch.zeros(num_classes)


def wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1))


def raises(input_shape, num_classes, width=4):
    raise RuntimeError("no student today")


def logits_only(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
'''
_names = itertools.count()


def without_opt_in() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != ALLOW_CODE_ENV}


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv(ALLOW_CODE_ENV, "1")


@pytest.fixture
def module(tmp_path):
    """A fresh module name (imports are cached per name) holding the example factory and the bad ones."""
    name = f"user_student_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(FACTORY + BAD_FACTORIES)
    return name


def custom(module: str, function: str = "make_student", **args) -> dict:
    return {"family": "custom", "factory": f"{module}:{function}", "args": args}


def write_config(folder, student: dict, **changes):
    document = {"name": "custom", "data": {"name": "digits", "val_fraction": 0.15}, "student": student,
                "distill": {"w_ce": 1.0, "w_kd": 0.0}, "schedule": {"epochs": 1, "batch_size": 64},
                "cache_dir": str(folder / "cache"), **changes}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def shipped_study(folder, trials: int = 3, epochs: int = 1):
    """studies/digits_custom_student.yaml and its factory, copied to `folder`, made tiny."""
    shutil.copy(REPO / "studies" / "custom_student.py", folder / "custom_student.py")
    document = yaml.safe_load((REPO / "studies" / "digits_custom_student.yaml").read_text())
    document["teachers"][0].update(arch={"family": "cnn", "stages": 1, "channels": 8, "head_width": 0},
                                   schedule={"epochs": 3, "batch_size": 64})
    document.update(schedule={**document["schedule"], "epochs": epochs}, budget={"trials": trials},
                    cache_dir=str(folder / "cache"), search={"mode": "flat"})
    path = folder / "digits_custom_student.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def load_study_attrs(folder) -> dict:
    import optuna

    return optuna.load_study(study_name="digits_custom_student",
                             storage=f"sqlite:///{folder / 'digits_custom_student.db'}").user_attrs


# --------------------------------------------------------------------------- the opt-in


def test_a_custom_student_without_the_opt_in_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    study = shipped_study(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (["search", study, "--no-progress"], ["train", study, "-o", tmp_path / "run"]):
        completed = run_cli(*command, env=without_opt_in())
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr == (f"error: {study}: student.factory: a custom student runs your code "
                                    f"('custom_student:make_student'); allow it with --allow-code or "
                                    f"{ALLOW_CODE_ENV}=1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no storage, no cache, no run folder


def test_the_library_refuses_it_too_and_validating_runs_no_code(tmp_path, module, monkeypatch):
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)
    config = load_train_config(write_config(tmp_path, custom(module)))  # validating imports nothing
    assert config.student["path"] == str(tmp_path.resolve())  # the config file's folder, absolute
    assert module not in __import__("sys").modules
    from autokd.train import build_student

    with pytest.raises(ConfigError, match=f"student.factory: a custom student runs your code .*{ALLOW_CODE_ENV}=1"):
        build_student(config, input_shape=DIGITS, num_classes=10)
    with pytest.raises(ConfigError, match="allow it with --allow-code"):
        build_model(config.student, DIGITS, 10)


# --------------------------------------------------------------------------- building, sizes, features


def test_a_custom_student_builds_from_its_seed_and_is_measured_like_a_zoo_model(allowed, tmp_path, module):
    arch = validate_arch({**custom(module, channels=4, hidden=16), "path": str(tmp_path)})
    first, again, other = (build_model(arch, DIGITS, 10, seed=seed) for seed in (3, 3, 4))
    assert isinstance(first, CustomStudent) and first.feature_dim == 16
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    assert next(iter(first.state_dict())).startswith("net.")  # the factory's module is `net`
    size = arch_size(arch, DIGITS, 10)
    assert size == model_size(first, DIGITS)
    # conv 1->4 (3x3) + conv 4->8 (3x3) + Linear 8->16 + Linear 16->10, as counted by hand
    assert size.params == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (8 * 16 + 16) + (16 * 10 + 10)
    assert size.macs == 8 * 8 * 4 * 9 + 4 * 4 * 8 * 4 * 9 + 8 * 16 + 16 * 10  # convolutions at 8x8 and 4x4
    logits, features = first.forward_features(torch.zeros(5, *DIGITS))
    assert logits.shape == (5, 10) and features.shape == (5, 16)

    plain = build_model({**custom(module, "logits_only"), "path": str(tmp_path)}, DIGITS, 10, seed=0)
    logits, features = plain.forward_features(torch.zeros(5, *DIGITS))
    assert plain.feature_dim == 0 and features.shape == (5, 0)


def test_a_module_is_looked_up_in_the_config_folder_first(allowed, tmp_path, module):
    (tmp_path / "models").mkdir()
    shutil.move(tmp_path / f"{module}.py", tmp_path / "models" / f"{module}.py")
    config = load_train_config(write_config(tmp_path, {**custom(module), "path": "models"}))
    assert config.student["path"] == str((tmp_path / "models").resolve())
    check_student(config.student, DIGITS, 10, source="config.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml: student.path: folder not found: "):
        check_student({**custom(module), "path": str(tmp_path / "nowhere")}, DIGITS, 10, source="c.yaml")


@pytest.mark.parametrize(("student", "message"), [
    ({"factory": "no_colon"}, "student.factory: must be 'module:function' (a module on the import path, dots for "
                              "packages, and a callable in it), e.g. 'custom_student:make_student', got 'no_colon'"),
    ({"factory": "no_such_module_xyz:make"},
     "student.factory: no module named 'no_such_module_xyz' (looked in {folder} and the import path)"),
    ({"factory": "{module}:no_such_function"},
     "student.factory: '{module}' ({folder}/{module}.py) has no attribute 'no_such_function'"),
    ({"factory": "{module}:NOT_CALLABLE"},
     "student.factory: '{module}:NOT_CALLABLE' is not callable (its type is int)"),
    ({"factory": "{module}:returns_a_tensor"},
     "student.factory: {module}:returns_a_tensor returned a Tensor, expected a torch.nn.Module"),
    ({"factory": "{module}:wrong_output"},
     "student.factory: its module must map a batch [2, 1, 8, 8] to logits [2, 10], got shape [2, 11]"),
    ({"factory": "{module}:raises", "args": {"width": 3}},
     "student.factory: {module}:raises((1, 8, 8), 10, width=3) raised RuntimeError: no student today"),
    ({"factory": "{module}:make_student", "args": {"num_classes": 3}},
     "student.args: 'num_classes' is passed by autokd: the factory is called as factory(input_shape, num_classes, "
     "**args)"),
    ({"factory": "{module}:make_student", "args": {"depth": 3}},
     "student.factory: {module}:make_student((1, 8, 8), 10, depth=3) raised TypeError: make_student() got an "
     "unexpected keyword argument 'depth'"),
], ids=["no-colon", "missing-module", "missing-attribute", "not-callable", "not-a-module", "wrong-shape",
        "raises", "reserved-arg", "unknown-arg"])
def test_a_bad_factory_is_one_line_naming_the_file_and_key(allowed, tmp_path, module, student, message):
    student = {"family": "custom", **{k: v.format(module=module) if isinstance(v, str) else v
                                      for k, v in student.items()}}
    path = write_config(tmp_path, student)
    expected = f"{path}: " + message.format(module=module, folder=tmp_path.resolve())
    from autokd.train import train

    with pytest.raises(ConfigError) as error:
        train(path, tmp_path / "run")
    assert str(error.value) == expected and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # refused before anything


def test_feature_distillation_needs_the_hook_and_int8_is_refused(allowed, tmp_path, module):
    arch = {**custom(module, "logits_only"), "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^s.yaml: distill.w_feat: feature distillation .* needs features from the "
                                          r"custom student: give the module .* forward_features\(x\)"):
        check_student(arch, DIGITS, 10, source="s.yaml", features=True)
    check_student({**arch, "factory": f"{module}:make_student"}, DIGITS, 10, source="s.yaml", features=True)
    with pytest.raises(ConfigError, match=r"^s.yaml: quantize.int8: int8 quantisation supports the zoo families"):
        check_student(arch, DIGITS, 10, source="s.yaml", int8=True)


def test_a_teacher_cannot_be_custom():
    from autokd.config_files import train_config_from_dict

    with pytest.raises(ConfigError, match=r"^c.yaml: teachers.0.arch.family: must be one of \['cnn', 'mlp', "
                                          r"'resnet'\], got 'custom' \(a teacher from your own code: give it as "
                                          r"torchscript\)$"):
        train_config_from_dict({"teachers": [{"name": "t", "arch": custom("m")}]}, "c.yaml")


# --------------------------------------------------------------------------- search spaces


def test_a_search_space_varies_the_factory_arguments(tmp_path):
    from autokd.space import load_space

    spec = load_study(shipped_study(tmp_path))
    space = load_space(spec)
    config = space.apply(spec.train_config(), {"student.args.channels": 5, "student.args.hidden": 64})
    assert config.student["args"] == {"channels": 5, "hidden": 64}
    assert config.student["factory"] == "custom_student:make_student" and config.student["path"] == spec.student["path"]
    assert spec.student["args"] == {"channels": 8, "hidden": 32}  # the study's own is untouched

    document = yaml.safe_load(spec.model_dump_json())
    document["search_space"] = {"params": {"student.width": {"type": "int", "low": 2, "high": 8}}}
    (tmp_path / "zoo_key.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"params.student.width: family 'custom' has no parameter 'width'; a custom "
                                          r"student varies its factory's arguments as student.args.<name>"):
        load_space(load_study(tmp_path / "zoo_key.yaml"))


def test_a_searched_argument_the_factory_does_not_take_is_refused_before_the_storage(allowed, tmp_path):
    from autokd.search import search

    study = shipped_study(tmp_path)
    document = yaml.safe_load(study.read_text())
    document["search_space"]["params"]["student.args.widht"] = {"type": "int", "low": 2, "high": 8}
    study.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(ConfigError, match=r"params.student.args.widht: custom_student:make_student takes no argument "
                                          r"'widht' \(it takes \['channels', 'hidden'\]\)"):
        search(study, progress=False, log=lambda line: None)
    assert not (tmp_path / "digits_custom_student.db").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- training, end to end


def test_train_and_build_student_rebuild_the_same_student(allowed, tmp_path, module):
    from autokd.train import build_student, load_student, train

    path = write_config(tmp_path, custom(module, channels=4, hidden=16), seed=7,
                        schedule={"epochs": 6, "batch_size": 32, "lr": 0.01})
    run = train(path, tmp_path / "run", log=lambda line: None)
    assert run.metrics["val_accuracy"] > 0.15 and run.metrics["params"] == arch_size(
        load_train_config(path).student, DIGITS, 10).params
    fresh = build_student(path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 build_model(load_train_config(path).student, DIGITS, 10,
                                                             seed=7).state_dict().values()))
    loaded = load_student(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), run.student.state_dict().values()))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["exports"]["torchscript"] == \
        "student.torchscript.pt"


@pytest.mark.slow
def test_search_export_and_train_through_the_cli(tmp_path, ray_head):
    """The shipped example as a user runs it: a tiny search in Ray's workers, export, production training."""
    study = shipped_study(tmp_path, trials=3)
    document = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**document, "robust": {"top_k": 1, "seeds": 2}}, sort_keys=False))
    cache_teachers(study)
    searched = run_cli("search", study, "--no-progress", "--no-report", "--allow-code",
                       env={**without_opt_in(), **ray_head}, check=True)
    assert "3 complete" in searched.stdout, searched.stdout
    robust = [value for key, value in load_study_attrs(tmp_path).items() if key.startswith("robust.")]
    assert len(robust) == 1 and len(robust[0]["val_accuracies"]) == 2  # a Ray task re-ran it on another seed

    refused = run_cli("report", study, "--no-baselines", "-o", tmp_path / "reports", env=without_opt_in())
    assert refused.returncode == 2 and "--allow-code" in refused.stderr and not (tmp_path / "reports").exists()
    run_cli("report", study, "--no-baselines", "-o", tmp_path / "reports", "--allow-code", env=without_opt_in(),
            check=True)
    assert "custom factory=custom_student:make_student" in (tmp_path / "reports" / "index.html").read_text()

    (tmp_path / "elsewhere").mkdir()
    best = tmp_path / "elsewhere" / "best.yaml"
    run_cli("export", study, "--knee", "-o", best, env=without_opt_in(), check=True)  # export builds nothing
    exported = yaml.safe_load(best.read_text())
    assert exported["student"]["family"] == "custom" and exported["student"]["path"] == ".."  # portable
    config = load_train_config(best)
    trial = config.provenance["trial"]

    refused = run_cli("train", best, "-o", tmp_path / "run", env=without_opt_in())
    assert refused.returncode == 2 and "--allow-code" in refused.stderr and not (tmp_path / "run").exists()
    run_cli("train", best, "-o", tmp_path / "run", env={**without_opt_in(), ALLOW_CODE_ENV: "1"}, check=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # the same seed, threads and student as the trial: the same run, so the same val accuracy
    assert metrics["val_accuracy"] == config.provenance["val_accuracy"], (trial, metrics["val_accuracy"])
    assert metrics["params"] == config.provenance["params"]

    built = run_cli("train", study, "-o", tmp_path / "default", "--epochs", "1", "--allow-code", env=without_opt_in(),
                    check=True)
    assert "test accuracy" in built.stdout

