"""Paths: read once, relative to the file that holds them; stored and written without machine paths.

A relative path in a study or training config is relative to the file's folder, whatever the
working directory; `~` and absolute paths are taken as given. What a study stores (its spec,
every trial's config) holds them relative to the study file, and what `autokd export` and
`autokd train` write holds them relative to the written file, so a study resumes, reports and
exports from any working directory, and a config file can move with what it names.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from autokd.config_files import load_study, load_train_config
from autokd.evaluation import cache_key
from autokd.paths import STUDY_PATH_KEYS, relative_path, relative_paths, resolve_paths
from autokd.search import study_attrs
from autokd.study_store import resume_changes
from autokd.teacher_files import file_digest
from autokd.teachers import teacher_key
from autokd.zoo import build_model
from conftest import AUTOKD, REPO, TINY_SPACE, strings_in, tiny_study

TEACHER_ARCH = {"family": "mlp", "depth": 1, "width": 8}
TRAINING = re.compile(r"training \d+ teachers? once")  # what a teacher cache miss logs


def _project(root: Path, **study) -> Path:
    """root/studies/s.yaml naming files around it by relative paths: data, a checkpoint, a space, a storage."""
    (root / "studies" / "ckpt").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "spaces").mkdir()
    document = {"name": "s", "data": {"name": "file", "path": "../data/d.npz"},
                "teachers": [{"name": "loaded", "arch": TEACHER_ARCH, "checkpoint": "ckpt/t.pt"}],
                "search_space": "../spaces/space.yaml", **study}
    path = root / "studies" / "s.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _absolute(document) -> list[str]:
    return [s for s in strings_in(document) if Path(s).is_absolute() or s.startswith(("~", "sqlite:////"))]


def test_a_study_reads_its_paths_from_its_own_folder_whatever_the_working_directory(tmp_path, monkeypatch):
    study = _project(tmp_path / "proj", storage="sqlite:///db/s.db")
    studies = tmp_path / "proj" / "studies"
    for cwd in (tmp_path, studies / "ckpt"):
        monkeypatch.chdir(cwd)
        spec = load_study(os.path.relpath(study, cwd))  # the file as a user in `cwd` types it
        assert spec.folder == studies
        assert spec.data.path == str(tmp_path / "proj" / "data" / "d.npz")
        assert spec.teachers[0].checkpoint == str(studies / "ckpt" / "t.pt")
        assert spec.search_space == str(tmp_path / "proj" / "spaces" / "space.yaml")
        assert spec.cache_dir == str(studies / ".cache" / "autokd")  # the default, beside the study file
        assert spec.storage == spec.storage_url() == f"sqlite:///{studies / 'db' / 's.db'}"
        assert spec.resolve_path("x.pt") == studies / "x.pt"
    # Its default student, as `autokd train study.yaml` trains it, reads the same files.
    assert load_train_config(study).model_dump(exclude={"name"}) == spec.train_config().model_dump(exclude={"name"})


def test_absolute_and_home_paths_are_taken_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    study = _project(tmp_path / "proj", cache_dir="~/cache", data={"name": "fashion-mnist", "data_dir": "/srv/fm"})
    spec = load_study(study)
    assert spec.cache_dir == str(tmp_path / "home" / "cache")
    assert spec.data.data_dir == "/srv/fm"
    assert load_study(_project(tmp_path / "other")).storage_url() == \
        f"sqlite:///{tmp_path / 'other' / 'studies' / 's.db'}"  # no storage given: beside the study file


def test_a_training_config_reads_its_paths_from_its_own_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "best.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "file", "path": "d.npz"},
                                    "teachers": [{"name": "t", "arch": TEACHER_ARCH, "checkpoint": "../t.pt"}]}))
    monkeypatch.chdir(tmp_path)
    config = load_train_config("configs/best.yaml")
    assert config.data.path == str(tmp_path / "configs" / "d.npz")
    assert config.teachers[0].checkpoint == str(tmp_path / "t.pt")
    assert config.cache_dir == str(tmp_path / "configs" / ".cache" / "autokd")


def test_stored_paths_are_relative_to_the_study_file_and_resolve_back(tmp_path):
    spec = load_study(_project(tmp_path / "proj", storage="sqlite:///db/s.db",
                               data={"name": "fashion-mnist", "data_dir": "/usr/share/datasets/fashion-mnist"}))
    stored = relative_paths(spec, spec.folder)
    dumped = stored.model_dump(mode="json")
    assert dumped["teachers"][0]["checkpoint"] == "ckpt/t.pt"
    assert (dumped["search_space"], dumped["cache_dir"], dumped["storage"]) == \
        ("../spaces/space.yaml", ".cache/autokd", "sqlite:///db/s.db")
    # a path that shares nothing but the root with the study file stays absolute: `..` up to / is no more portable
    assert dumped["data"]["data_dir"] == "/usr/share/datasets/fashion-mnist"
    assert relative_paths(stored, spec.folder).model_dump() == stored.model_dump()  # relative ones stay
    assert resolve_paths(stored, spec.folder).model_dump() == spec.model_dump()
    assert resolve_paths(spec, tmp_path).model_dump() == spec.model_dump()  # absolute ones stay
    assert relative_path(str(tmp_path / "a" / "b"), tmp_path / "c") == "../a/b"
    assert {"data.path", "teachers.*.checkpoint", "cache_dir", "search_space", "storage"} <= set(STUDY_PATH_KEYS)


def test_what_a_study_stores_is_the_same_from_any_working_directory(tmp_path, monkeypatch):
    study = _project(tmp_path / "proj")
    attrs, configs = [], []
    for cwd in (tmp_path, tmp_path / "proj" / "data"):
        monkeypatch.chdir(cwd)
        spec = load_study(os.path.relpath(study, cwd))
        attrs.append(study_attrs(spec, {}, two_level=False))
        configs.append(relative_paths(spec.train_config(), spec.folder))  # as the searcher stores a trial's
    assert attrs[0] == attrs[1] and configs[0].model_dump() == configs[1].model_dump()
    assert attrs[0]["study_file"] == str(study)
    assert not _absolute(attrs[0]["study_spec"]) and not _absolute(configs[0].model_dump(mode="json"))
    assert cache_key(configs[0], "trial") == cache_key(configs[1], "trial")  # test evaluations cached once


def _stored_study(spec, attrs: dict) -> optuna.Study:
    study = optuna.create_study(directions=spec.directions)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def test_resume_from_another_working_directory_sees_no_change_but_another_file_is_one(tmp_path, monkeypatch):
    study = _project(tmp_path / "proj")
    monkeypatch.chdir(tmp_path)
    first = load_study("proj/studies/s.yaml")
    stored = _stored_study(first, study_attrs(first, {}, two_level=False))
    monkeypatch.chdir(tmp_path / "proj" / "studies")
    assert resume_changes(load_study("s.yaml"), stored, {}) == []
    # The same file written another way is the same file; another file is a change.
    document = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**document, "data": {"name": "file", "path": "./../data/../data/d.npz"}}))
    assert resume_changes(load_study("s.yaml"), stored, {}) == []
    study.write_text(yaml.safe_dump({**document, "data": {"name": "file", "path": "../data/other.npz"}}))
    assert resume_changes(load_study("s.yaml"), stored, {}) == ["data.path"]


def test_a_study_stored_before_paths_were_relative_to_its_file_still_resumes(tmp_path, monkeypatch):
    """Earlier autokd stored the data path joined to the study's folder as typed (relative to the
    working directory) and teacher files as written."""
    study = _project(tmp_path / "proj")
    monkeypatch.chdir(tmp_path / "proj")
    spec = load_study("studies/s.yaml")
    old = spec.model_dump(mode="json")
    old["data"]["path"] = "studies/../data/d.npz"
    old["teachers"][0]["checkpoint"] = "ckpt/t.pt"
    stored = _stored_study(spec, {"study_spec": old, "study_file": str(study)})
    monkeypatch.chdir(tmp_path)
    assert resume_changes(load_study("proj/studies/s.yaml"), stored, {}) == []


def test_a_teachers_cache_key_does_not_depend_on_where_its_file_is(tmp_path):
    weights = build_model(TEACHER_ARCH, (1, 8, 8), 10).state_dict()
    keys = set()
    for folder in ("a", "b/c"):
        study = _project(tmp_path / folder)
        torch.save(weights, study.parent / "ckpt" / "t.pt")
        teacher = load_study(study).teachers[0]
        keys.add(teacher_key(teacher, "data-fingerprint", file_digest(Path(teacher.checkpoint))))
    assert len(keys) == 1


# ---------------------------------------------------------------------------------------------
# End to end, the way a user types it, from three working directories


def _autokd(cwd: Path, *args) -> subprocess.CompletedProcess:
    completed = subprocess.run([*AUTOKD, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, f"autokd {' '.join(map(str, args))} in {cwd}:\n{completed.stdout}\n" \
                                      f"{completed.stderr[-4000:]}"
    return completed


@pytest.mark.slow
def test_a_study_run_resumed_reported_exported_and_trained_from_other_folders(tmp_path):
    from sklearn.datasets import load_digits

    proj, elsewhere, third = tmp_path / "proj", tmp_path / "elsewhere", tmp_path / "third"
    for folder in (proj / "data", proj / "spaces", proj / "studies", elsewhere, third):
        folder.mkdir(parents=True)
    digits = load_digits()
    np.savez(proj / "data" / "digits.npz", x=digits.images, y=digits.target)
    (proj / "spaces" / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))  # "when" after its key
    study = tiny_study(proj / "studies", trials=2, epochs=1, data={"name": "file", "path": "../data/digits.npz"},
                       search_space="../spaces/tiny.yaml", resources={"concurrency": 1})
    document = yaml.safe_load(study.read_text())
    del document["cache_dir"]  # the default: .cache/autokd beside the study file
    study.write_text(yaml.safe_dump(document, sort_keys=False))
    studies = proj / "studies"

    _autokd(elsewhere, "search", "../proj/studies/tiny.yaml", "--no-progress", "--no-report")
    assert (studies / "tiny.db").is_file() and list((studies / ".cache" / "autokd" / "teachers").iterdir())
    assert not list(elsewhere.iterdir()), "the search wrote into the working directory"

    resumed = _autokd(proj, "search", "studies/tiny.yaml", "--resume", "--trials", 3, "--no-progress", "--no-report")
    assert "differ" not in resumed.stdout and not TRAINING.search(resumed.stdout)  # same study; teachers cached
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{studies / 'tiny.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in stored.trials) == 3
    configs = [t.user_attrs["config"] for t in stored.trials]
    assert {c["data"]["path"] for c in configs} == {"../data/digits.npz"}
    assert not _absolute(configs) and not _absolute(stored.user_attrs["study_spec"])
    assert str(tmp_path) not in json.dumps([configs, stored.user_attrs["study_spec"]])

    # The report retrains front trials from their stored configs: found from the study file's folder.
    _autokd(third, "report", "../proj/studies/tiny.yaml", "--no-baselines")
    assert (third / "reports" / "tiny" / "index.html").is_file()  # a command's own output: the working directory
    assert list((studies / ".cache" / "autokd" / "evaluations" / "tiny").glob("*.json"))
    _autokd(third, "report", "tiny", "--storage", "sqlite:///../proj/studies/tiny.db", "--no-baselines",
            "-o", "by-name")  # by name: the stored paths resolve from where the study file was
    assert (third / "by-name" / "index.html").is_file()

    _autokd(proj, "export", "studies/tiny.yaml", "--knee", "-o", "best.yaml")
    exported = yaml.safe_load((proj / "best.yaml").read_text())
    assert not _absolute({k: v for k, v in exported.items() if k != "provenance"})
    assert exported["data"]["path"] == "data/digits.npz"
    assert exported["cache_dir"] == "studies/.cache/autokd"  # inside the file's folder: the study's cache

    trained = _autokd(elsewhere, "train", "../proj/best.yaml", "--epochs", 1)
    assert not TRAINING.search(trained.stdout)  # its teachers came from the study's cache
    run = next((elsewhere / "runs").iterdir())
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert not _absolute({k: v for k, v in written.items() if k != "provenance"})
    assert load_train_config(run / "config.yaml").data.path == str(proj / "data" / "digits.npz")
