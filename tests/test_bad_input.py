"""Bad input is refused the way a user meets it: through the CLI, one line, exit code 2, nothing written.

One table, one test. Each case starts from a copy of a real study (made once per module by a
real tiny search) and breaks one thing: the YAML, the search space, the data, a teacher
checkpoint, the storage URL, a flag. For every case:

- the exit code is 2 and stderr is exactly one line, naming the file/key (or flag) and what
  was expected (the substrings listed per case), with no traceback;
- the case's folder is byte-identical afterwards: the SQLite storage (copied per case) is not
  touched, no cache, report, run or export file appears;
- no report or run folder appears in the repository (the CLI runs there, as a user would).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from conftest import REPO, run_cli, tiny_study

pytestmark = pytest.mark.slow  # ~30 subprocesses and one real search

NAME = "badinput"
DELETE = object()


@pytest.fixture(scope="module")
def made_study(tmp_path_factory):
    """A real finished study (2 trials) in SQLite, and its YAML document."""
    folder = tmp_path_factory.mktemp("badinput-study")
    path = tiny_study(folder, name=NAME, trials=2, epochs=1)
    run_cli("search", path, "--no-report", "--no-progress", check=True)
    return yaml.safe_load(path.read_text()), folder / f"{NAME}.db"


# ---------------------------------------------------------------------------------------------
# What the cases write into their folder before the CLI runs


def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _truncated_fashion(folder: Path) -> dict:
    rng = np.random.default_rng(0)
    data = folder / "fashion"
    data.mkdir()
    for split, n in (("train", 40), ("t10k", 10)):
        _idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), 2051)
        _idx(data / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    images = data / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # a download cut short
    return {("data",): {"name": "fashion-mnist", "data_dir": str(data)}}


def _npz(folder: Path, **arrays) -> dict:
    np.savez(folder / "mine.npz", **arrays)
    return {("data",): {"name": "file", "path": "mine.npz"}}


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)


def _negative_labels(folder: Path) -> dict:
    y = np.arange(60) % 5
    y[7] = -1
    return _npz(folder, x=_images(60), y=y)


def _test_label_out_of_range(folder: Path) -> dict:
    y_test = np.arange(20) % 5
    y_test[3] = 9  # a class the training labels (0..4) never have: the student has no logit trained for it
    return _npz(folder, x=_images(60), y=np.arange(60) % 5, x_test=_images(20), y_test=y_test)


def _checkpoint(folder: Path, payload: bytes | None = None, arch: dict | None = None) -> dict:
    path = folder / "teacher.pt"
    if payload is not None:
        path.write_bytes(payload)
    if arch is not None:
        import torch

        from autokd.zoo import build_model

        torch.save(build_model(arch, (1, 8, 8), 10).state_dict(), path)
    return {("teachers", 0, "checkpoint"): "teacher.pt"}


def _no_teachers(folder: Path) -> dict:
    return {("teachers",): [], ("distill",): {"w_ce": 1.0, "w_kd": 0.0},
            ("search_space", "params"): {
                "student.width": {"type": "int", "low": 4, "high": 32},
                "distill.teachers": {"type": "teacher_subset"}}}


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class Case:
    id: str
    args: list[str]  # "{yaml}", "{db}" (the storage URL) and "{dir}" are filled in per case
    expected: list[str]  # substrings of the one stderr line: the file/key or flag, and what was expected
    changes: dict = field(default_factory=dict)  # path tuple in the study document -> value (or DELETE)
    setup: Callable[[Path], dict] | None = None  # writes files, returns more changes
    text: str | None = None  # the study file's raw text instead of the changed document


SEARCH = ["search", "{yaml}", "--no-progress"]
RESUME = [*SEARCH, "--resume"]
NEW = {("name",): "fresh", ("budget", "trials"): 1}  # a new study: only the bad input itself can refuse it
P = ("search_space", "params")

CASES = [
    Case("malformed-yaml", SEARCH, ["study.yaml", "not valid YAML", "at line"],
         text="name: badinput\nbudget: {trials: 2\nsearch_space: x\n"),
    Case("python-object-tag", SEARCH, ["study.yaml", "not valid YAML", "python/object"],
         text="name: !!python/object/apply:os.system ['touch {dir}/pwned']\nsearch_space: x\n"),
    Case("unknown-key", SEARCH, ["study.yaml", "schedule.epoch", "unknown key"],
         changes={("schedule", "epoch"): 3}),
    Case("wrong-type", SEARCH, ["study.yaml", "budget.trials", "integer", "'many'"],
         changes={("budget", "trials"): "many"}),
    Case("zero-trials", SEARCH, ["study.yaml", "budget.trials", "> 0", "got 0"],
         changes={("budget", "trials"): 0}),
    Case("negative-trials", SEARCH, ["study.yaml", "budget.trials", "> 0", "got -3"],
         changes={("budget", "trials"): -3}),
    Case("temperature-zero", SEARCH, ["study.yaml", "distill.temperature", "> 0", "got 0"],
         changes={("distill", "temperature"): 0}),
    Case("unknown-sampler", SEARCH, ["study.yaml", "sampler.name", "'tpe'", "got 'cmaes'"],
         changes={("sampler", "name"): "cmaes"}),
    Case("space-low-above-high", SEARCH, ["study.yaml", "distill.temperature", "low must be <= high"],
         changes={**NEW, (*P, "distill.temperature"): {"type": "float", "low": 8.0, "high": 1.0}}),
    Case("space-empty-choices", SEARCH, ["study.yaml", "distill.kind", "choices", "at least 1"],
         changes={**NEW, (*P, "distill.kind"): {"type": "categorical", "choices": []}}),
    Case("space-temperature-not-positive", SEARCH, ["study.yaml", "distill.temperature", "> 0"],
         changes={**NEW, (*P, "distill.temperature"): {"type": "float", "low": -1.0, "high": 4.0}}),
    Case("space-when-unknown-parameter", SEARCH, ["study.yaml", "student.width", "when", "'student.depth'"],
         changes={**NEW, (*P, "student.width", "when"): {"student.depth": [1]}}),
    Case("space-subset-without-teachers", SEARCH, ["study.yaml", "distill.teachers", "no teachers"],
         changes=NEW, setup=_no_teachers),
    Case("empty-teacher-list", SEARCH, ["study.yaml", "distill.teachers", "at least one teacher"],
         changes={("distill", "teachers"): []}),
    Case("data-dir-missing", RESUME, ["study.yaml", "data.data_dir", "missing", "/nonexistent/fashion"],
         changes={("data",): {"name": "fashion-mnist", "data_dir": "/nonexistent/fashion"}}),
    Case("idx-truncated", RESUME, ["study.yaml", "data.data_dir", "train-images-idx3-ubyte", "truncated"],
         setup=_truncated_fashion),
    Case("npz-negative-labels", RESUME, ["study.yaml", "data.path", "mine.npz", "y", ">= 0"],
         setup=_negative_labels),
    Case("npz-test-label-out-of-range", RESUME, ["study.yaml", "data.path", "mine.npz", "y_test", "9"],
         setup=_test_label_out_of_range),
    Case("teacher-checkpoint-missing", RESUME, ["teachers.0.checkpoint", "teacher.pt", "not found"],
         changes={("teachers", 0, "checkpoint"): "teacher.pt"}),
    Case("teacher-checkpoint-random-bytes", RESUME, ["teachers.0.checkpoint", "teacher.pt", "cannot read"],
         setup=lambda folder: _checkpoint(folder, payload=np.random.default_rng(0).bytes(4096))),
    Case("teacher-checkpoint-other-arch", RESUME, ["teachers.0.checkpoint", "teacher.pt", "does not match"],
         setup=lambda folder: _checkpoint(folder, arch={"family": "mlp", "depth": 2, "width": 99})),
    Case("bad-storage-url", [*SEARCH, "--storage", "nosuchdb://x"], ["--storage", "nosuchdb://x"]),
    Case("resume-space-differs", RESUME, ["study.yaml", "search_space", "differs"],
         changes={(*P, "distill.temperature", "high"): 20.0}),
    Case("resume-objectives-differ", RESUME, ["study.yaml", "objectives", "macs"],
         changes={("objectives",): ["val_accuracy", "macs"]}),
    Case("export-impossible-constraint", ["export", "{yaml}", "--max-params", "1", "-o", "{dir}/best.yaml"],
         ["export", "--max-params 1", "params <= 1"]),
    Case("report-unknown-study", ["report", "nosuch", "--storage", "{db}", "--no-baselines"],
         ["nosuch", "no study"]),
    Case("show-unknown-study", ["show", "nosuch", "--storage", "{db}"], ["nosuch", "no study"]),
    Case("train-missing-file", ["train", "{dir}/missing.yaml"], ["missing.yaml", "not found"]),
    Case("train-augment-rotate", ["train", "{yaml}", "--augment", "rotate"], ["--augment", "'rotate'", "shift"]),
    Case("train-zero-epochs", ["train", "{yaml}", "--epochs", "0"], ["--epochs", "1"]),
]


def _apply(document: dict, changes: dict) -> dict:
    document = copy.deepcopy(document)
    for path, value in changes.items():
        node = document
        for key in path[:-1]:
            node = node[key] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return document


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256) and every folder (-> 'dir')."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_on_one_line_and_writes_nothing(case, made_study, tmp_path):
    document, storage = made_study
    shutil.copyfile(storage, tmp_path / "study.db")
    db = f"sqlite:///{tmp_path / 'study.db'}"
    changes = {("storage",): db, ("cache_dir",): str(tmp_path / "cache"), **case.changes}
    if case.setup is not None:
        changes.update(case.setup(tmp_path))
    study_file = tmp_path / "study.yaml"
    if case.text is not None:
        study_file.write_text(case.text.replace("{dir}", str(tmp_path)))
    else:
        study_file.write_text(yaml.safe_dump(_apply(document, changes), sort_keys=False))
    args = [a.replace("{yaml}", str(study_file)).replace("{db}", db).replace("{dir}", str(tmp_path))
            for a in case.args]
    repo_outputs = [REPO / "reports" / NAME, REPO / "reports" / "fresh", REPO / "runs" / f"{NAME}-default"]
    assert not any(p.exists() for p in repo_outputs), "leftovers from an earlier run; remove them first"
    before = _tree(tmp_path)

    try:
        completed = run_cli(*args, timeout=180)
        created = [str(p) for p in repo_outputs if p.exists()]
    finally:
        for path in repo_outputs:  # a case that was not refused must not leave files in the repository
            shutil.rmtree(path, ignore_errors=True)

    line = completed.stderr.strip()
    assert "Traceback" not in completed.stderr + completed.stdout, completed.stderr[-3000:]
    assert completed.returncode == 2, f"exit {completed.returncode}:\n{completed.stderr[-3000:]}"
    assert line and "\n" not in line, f"stderr is not one line:\n{completed.stderr}"
    missing = [s for s in case.expected if s not in line]
    assert not missing, f"{missing} not in: {line}"
    assert _tree(tmp_path) == before, "the command wrote into the study's folder (storage, cache or output)"
    assert not created, f"the command created {created}"
