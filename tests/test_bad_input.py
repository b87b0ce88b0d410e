"""Bad input is refused the way a user meets it: through the CLI, one line, exit code 2, nothing written.

One table, one test. Each case starts from a copy of a real study (made once per module by a
real tiny search) and breaks one thing: the YAML, the search space, the data, a teacher
checkpoint, the storage URL, a flag. Beyond single cases, whole classes (issue 14), each with
several cases in the table:

- numbers the libraries below refuse: seeds outside 0..2**32-1, inf/NaN floats, ints beyond int64;
- expressions that parse but do not evaluate: constraints, and space rules (log with step, a
  step that does not divide the range, a `when` that can never hold);
- paths that cannot be written (storage, cache, run folder, export): a file as folder, missing, read-only;
- a database that is not ours (another program's SQLite file, or not SQLite at all);
- a changed study on --resume (space, data, teachers, training defaults; objectives never);
- hostile YAML: alias bombs, recursive aliases, deep nesting, duplicate keys, huge keys and values;
- data and teachers that cannot teach: a single class, non-finite weights, a teacher at chance.
- teachers from outside: an outputs file of the wrong shape or row count, a file that is not
  TorchScript or returns another shape, --augment with an outputs-only teacher.

For every case:

- the exit code is 2 and stderr is exactly one line of at most 300 characters, naming the
  file/key (or flag) and what was expected (the substrings listed per case), with no traceback;
- the case's folder is byte-identical afterwards: the SQLite storage (copied per case) is not
  touched, no cache, report, run or export file appears;
- the CLI's working folder (empty, the case's own: where a user's `reports/` and `runs/` would go)
  stays empty. The cases share nothing and run two at a time (`refusals`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from conftest import run_cli, tiny_study

pytestmark = pytest.mark.slow  # ~80 subprocesses and one real search

NAME = "badinput"
DELETE = object()


@pytest.fixture(scope="module")
def made_study(tmp_path_factory, ray_head):
    """A real finished study (2 trials) in SQLite, and its YAML document."""
    folder = tmp_path_factory.mktemp("badinput-study")
    path = tiny_study(folder, cached_teachers=True, name=NAME, trials=2, epochs=1)
    run_cli("search", path, "--no-report", "--no-progress", env=ray_head, check=True)
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


def _checkpoint(folder: Path, payload: bytes | None = None, arch: dict | None = None,
                damage: Callable | None = None) -> dict:
    path = folder / "teacher.pt"
    if payload is not None:
        path.write_bytes(payload)
    if arch is not None:
        import torch

        from autokd.zoo import build_model

        state = build_model(arch, (1, 8, 8), 10).state_dict()
        for tensor in state.values():
            if damage is not None:
                damage(tensor)
        torch.save(state, path)
    return {("teachers", 0, "checkpoint"): "teacher.pt"}


TEACHER_ARCH = {"family": "mlp", "depth": 1, "width": 48}  # teachers.0 of the made study (conftest.tiny_study)


def _nan_weight(tensor) -> None:
    if tensor.dim() == 2:
        tensor[0, 0] = float("nan")


def _afile(folder: Path) -> dict:
    (folder / "afile").write_text("not a folder\n")
    return {}


def _read_only_folder(folder: Path) -> dict:
    """A folder nobody may write; for root (who may write anything) a pseudo file system's."""
    if os.geteuid() == 0:
        return {("storage",): "sqlite:////sys/badinput.db"}
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o555)
    return {("storage",): f"sqlite:///{folder / 'ro' / 'badinput.db'}"}


def _foreign_sqlite(folder: Path) -> dict:
    with sqlite3.connect(folder / "other.db") as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers (name) VALUES ('ada')")
    return {}


def _junk_database(folder: Path) -> dict:
    (folder / "junk.db").write_bytes(np.random.default_rng(1).bytes(8192))
    return {}


def _space_file(text: str) -> Callable[[Path], dict]:
    def setup(folder: Path) -> dict:
        (folder / "space.yaml").write_text(text)
        return {("search_space",): "space.yaml"}
    return setup


# An alias bomb: 10 levels of 9 aliases to the level below, 9**10 (3.5e9) strings once expanded.
ALIAS_BOMB = ("name: badinput\nsearch_space: x\nlol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
              + "".join(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 11)))


def _outputs_file(folder: Path, drop_rows: int = 0, classes: int = 10) -> dict:
    """Teacher 0 as precomputed outputs: logits that know the training labels, less `drop_rows` rows and
    with `classes` columns."""
    from autokd.data import load_data
    from autokd.spec import DataSpec

    y_train = load_data(DataSpec(name="digits", val_fraction=0.15)).y_train.numpy()  # the made study's data
    logits = 5 * np.eye(10)[y_train][:len(y_train) - drop_rows, :classes]
    np.savez(folder / "outputs.npz", train_logits=logits)
    return {("teachers", 0): {"name": "t-mlp", "logits": "outputs.npz"}}


def _torchscript(folder: Path, payload: bytes | None = None, classes: int = 10) -> dict:
    """Teacher 0 as a TorchScript file: `payload` as its bytes, or a traced linear model with `classes` outputs."""
    if payload is not None:
        (folder / "teacher.pt").write_bytes(payload)
    else:
        import torch

        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))
        torch.jit.save(torch.jit.trace(model, torch.zeros(2, 1, 8, 8)), str(folder / "teacher.pt"))
    return {("teachers", 0): {"name": "t-mlp", "torchscript": "teacher.pt"}}


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
INF, NAN = float("inf"), float("nan")

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
    Case("resume-space-differs", RESUME,
         ["study.yaml", "search_space.distill.temperature.high", "differs", "--accept-changes"],
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

    # 1. Numbers the libraries below refuse: seeds outside 0..2**32-1, inf/NaN, integers beyond int64
    Case("seed-negative", SEARCH, ["study.yaml", "seed", ">= 0", "got -1"], changes={("seed",): -1}),
    Case("sampler-seed-beyond-32-bits", SEARCH, ["study.yaml", "sampler.seed", "<= 4294967295", "4294967296"],
         changes={("sampler", "seed"): 2**32}),
    Case("data-seed-beyond-64-bits", RESUME, ["study.yaml", "data.seed", "<= 4294967295"],
         changes={("data", "seed"): 2**64}),
    Case("teacher-seed-negative", RESUME, ["study.yaml", "teachers.0.seed", ">= 0", "got -7"],
         changes={("teachers", 0, "seed"): -7}),
    Case("temperature-infinite", RESUME, ["study.yaml", "distill.temperature", "finite", "inf"],
         changes={("distill", "temperature"): INF}),
    Case("lr-nan", RESUME, ["study.yaml", "schedule.lr", "finite", "nan"], changes={("schedule", "lr"): NAN}),
    Case("val-fraction-nan", RESUME, ["study.yaml", "data.val_fraction", "finite"],
         changes={("data", "val_fraction"): NAN}),
    Case("resource-infinite", RESUME, ["study.yaml", "resources.cpus_per_trial", "finite"],
         changes={("resources", "cpus_per_trial"): INF}),
    Case("space-bound-infinite", SEARCH, ["study.yaml", "distill.temperature", "high", "finite", "inf"],
         changes={**NEW, (*P, "distill.temperature", "high"): INF}),
    Case("space-choice-nan", SEARCH, ["study.yaml", "distill.w_ce", "choices", "finite"],
         changes={**NEW, (*P, "distill.w_ce"): {"type": "categorical", "choices": [0.5, NAN]}}),
    Case("epochs-beyond-int64", RESUME, ["study.yaml", "schedule.epochs", "64 bits", "1180591620717411303424"],
         changes={("schedule", "epochs"): 2**70}),
    Case("width-beyond-int64", RESUME, ["study.yaml", "student.width", "64 bits"],
         changes={("student", "width"): 2**64}),
    Case("space-bound-beyond-int64", SEARCH, ["study.yaml", "student.width", "high", "64 bits"],
         changes={**NEW, (*P, "student.width", "high"): 2**64}),

    # 2. Expressions that parse but do not evaluate: checked when the study is read
    Case("constraint-not-a-number", SEARCH, ["study.yaml", "constraints", "'1.2.3' is not a number"],
         changes={("constraints",): ["params <= 1.2.3"]}),
    Case("constraint-infinite", SEARCH, ["study.yaml", "constraints", "finite number > 0", "1e999"],
         changes={("constraints",): ["params <= 1e999"]}),
    Case("constraint-zero", SEARCH, ["study.yaml", "constraints", "finite number > 0", "params <= 0"],
         changes={("constraints",): ["params <= 5000", "params <= 0"]}),
    Case("space-log-with-step", SEARCH, ["study.yaml", "student.width", "log", "step 4"],
         changes={**NEW, (*P, "student.width", "step"): 4}),
    Case("space-step-does-not-divide", SEARCH, ["study.yaml", "student.channels", "step 4", "does not divide"],
         changes={**NEW, (*P, "student.channels", "step"): 4}),
    Case("space-when-impossible-value", SEARCH, ["study.yaml", "student.width", "when", "'cnnn'", "never takes"],
         changes={**NEW, (*P, "student.width", "when"): {"student.family": ["mlp", "cnnn"]}}),
    Case("space-when-out-of-range", SEARCH, ["study.yaml", "distill.w_kd", "when", "never takes 9"],
         changes={**NEW, (*P, "distill.w_kd", "when"): {"student.channels": [2, 9]}}),
    Case("space-when-on-fixed", SEARCH, ["study.yaml", "distill.w_kd", "fixed", "never holds"],
         changes={**NEW, (*P, "distill.kind"): {"type": "fixed", "value": "kl"},
                  (*P, "distill.w_kd", "when"): {"distill.kind": ["kl"]}}),

    # 3/4. Paths that cannot be written, refused before the study (or anything) is created
    Case("storage-folder-is-a-file", [*SEARCH, "--storage", "sqlite:///{dir}/afile/x.db"],
         ["--storage", "afile/x.db", "is a file, not a folder"], setup=_afile),
    Case("storage-folder-missing", [*SEARCH, "--storage", "sqlite:///{dir}/missing/x.db"],
         ["--storage", "missing/x.db", "does not exist"]),
    Case("storage-folder-read-only", SEARCH, ["study.yaml", "storage", "badinput.db", "cannot write"],
         setup=_read_only_folder),
    Case("study-storage-folder-is-a-file", SEARCH, ["study.yaml", "storage", "is a file, not a folder"],
         setup=lambda folder: {**_afile(folder), ("storage",): f"sqlite:///{folder / 'afile' / 'x.db'}"}),
    Case("cache-dir-under-a-file", RESUME, ["study.yaml", "cache_dir", "afile", "is a file, not a folder"],
         setup=lambda folder: {**_afile(folder), ("cache_dir",): str(folder / "afile" / "cache")}),
    Case("train-out-under-a-file", ["train", "{yaml}", "-o", "{dir}/afile/run"],
         ["--out", "afile/run", "is a file, not a folder"], setup=_afile),
    Case("export-output-under-a-file", ["export", "{yaml}", "--trial", "0", "-o", "{dir}/afile/best.yaml"],
         ["afile", "is a file, not a folder"], setup=_afile),

    # 5. A database that is not ours is refused, not migrated
    Case("foreign-sqlite-database", [*SEARCH, "--storage", "sqlite:///{dir}/other.db"],
         ["--storage", "other.db", "another program", "customers"], setup=_foreign_sqlite),
    Case("foreign-sqlite-in-study-file", SEARCH, ["other.db", "another program", "customers"],
         setup=lambda folder: {**_foreign_sqlite(folder), ("storage",): f"sqlite:///{folder / 'other.db'}"}),
    Case("show-foreign-database", ["show", "badinput", "--storage", "sqlite:///{dir}/other.db"],
         ["--storage", "other.db", "another program"], setup=_foreign_sqlite),
    Case("not-a-database", [*SEARCH, "--storage", "sqlite:///{dir}/junk.db"],
         ["--storage", "junk.db", "not an SQLite database"], setup=_junk_database),

    # 6. A changed study on --resume: refused with the changed keys named (objectives never accepted)
    Case("resume-data-differs", RESUME, ["study.yaml", "data.seed", "differs", "--accept-changes"],
         changes={("data", "seed"): 5}),
    Case("resume-teacher-differs", RESUME, ["study.yaml", "teachers.0.schedule.epochs", "differs"],
         changes={("teachers", 0, "schedule", "epochs"): 5}),
    Case("resume-training-defaults-differ", RESUME, ["study.yaml", "distill.kind, schedule.lr: differ from"],
         changes={("schedule", "lr"): 0.0123, ("distill", "kind"): "mse"}),
    Case("resume-space-param-added", RESUME, ["study.yaml", "search_space.schedule.batch_size", "differs"],
         changes={(*P, "schedule.batch_size"): {"type": "categorical", "choices": [32, 64]}}),
    Case("resume-objectives-differ-accepted", [*RESUME, "--accept-changes"], ["study.yaml", "objectives", "macs"],
         changes={("objectives",): ["val_accuracy", "macs"]}),

    # 7. Hostile YAML
    Case("yaml-alias-bomb", SEARCH, ["study.yaml", "not valid YAML", "alias bomb"], text=ALIAS_BOMB),
    Case("yaml-recursive-alias", SEARCH, ["study.yaml", "not valid YAML", "its own anchor"],
         text="name: badinput\nsearch_space: &s {params: *s}\n"),
    Case("yaml-deep-nesting", SEARCH, ["study.yaml", "not valid YAML", "nested deeper"],
         text="name: badinput\nsearch_space: " + "[" * 5000 + "]" * 5000 + "\n"),
    Case("yaml-duplicate-key", SEARCH, ["study.yaml", "not valid YAML", "line 3", "duplicate key 'name'"],
         text="name: badinput\nsearch_space: x\nname: other\n"),
    Case("yaml-duplicate-nested-key", RESUME, ["space.yaml", "duplicate key 'distill.kind'"],
         setup=_space_file("params:\n  distill.kind: {type: categorical, choices: [kl]}\n"
                           "  distill.kind: {type: categorical, choices: [mse]}\n")),
    Case("yaml-huge-unknown-key", SEARCH, ["study.yaml", "unknown key", "chars)"],
         changes={("k" * 20_000,): 1}),
    Case("yaml-huge-value", SEARCH, ["study.yaml", "sampler.name", "chars)"],
         changes={("sampler", "name"): "v" * 100_000}),
    Case("yaml-huge-tag", SEARCH, ["study.yaml", "not valid YAML", "python/object", "chars)"],
         text="name: !!python/object/apply:os.system" + "x" * 20_000 + " ['true']\nsearch_space: x\n"),

    # 8. Data and teachers that cannot teach
    Case("npz-single-class", SEARCH, ["study.yaml", "data.path", "single class"],
         changes=NEW, setup=lambda folder: _npz(folder, x=_images(60), y=np.full(60, 3))),
    Case("train-subset-single-class", RESUME, ["study.yaml", "data.train_subset", "single class"],
         changes={("data", "train_subset"): 1}),
    Case("teacher-checkpoint-nan-weights", RESUME, ["teachers.0.checkpoint", "teacher.pt", "NaN or infinite"],
         setup=lambda folder: _checkpoint(folder, arch=TEACHER_ARCH, damage=_nan_weight)),
    Case("teacher-checkpoint-at-chance", RESUME, ["teachers.0.checkpoint", "'t-mlp'", "chance level"],
         setup=lambda folder: _checkpoint(folder, arch=TEACHER_ARCH, damage=lambda tensor: tensor.zero_())),
    Case("new-study-teacher-at-chance", SEARCH, ["teachers.0.checkpoint", "'t-mlp'", "chance level"],
         changes=NEW, setup=lambda folder: _checkpoint(folder, arch=TEACHER_ARCH, damage=lambda t: t.zero_())),

    # 9. Teachers from outside: a TorchScript file, precomputed outputs (issue 15)
    Case("teacher-logits-wrong-row-count", SEARCH, ["study.yaml", "teachers.0.logits", "outputs.npz", "train_logits",
                                                    "rows, the train split has"],
         changes=NEW, setup=lambda folder: _outputs_file(folder, drop_rows=5)),
    Case("teacher-logits-wrong-shape", SEARCH, ["study.yaml", "teachers.0.logits", "outputs.npz", "train_logits",
                                                ", 7], expected [", ", 10]"],
         changes=NEW, setup=lambda folder: _outputs_file(folder, classes=7)),
    Case("teacher-torchscript-not-torchscript", SEARCH, ["teachers.0.torchscript", "teacher.pt", "not TorchScript"],
         changes=NEW, setup=lambda folder: _torchscript(folder, payload=np.random.default_rng(0).bytes(4096))),
    Case("teacher-torchscript-wrong-output", SEARCH, ["teachers.0.torchscript", "teacher.pt", "[8, 5]",
                                                      "expected logits [8, 10]"],
         changes=NEW, setup=lambda folder: _torchscript(folder, classes=5)),
    Case("train-augment-outputs-only-teacher", ["train", "{yaml}", "--augment", "shift"],
         ["study.yaml", "augment", "'t-mlp'", "precomputed outputs", "teachers.0.logits"], setup=_outputs_file),
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


@dataclass
class Refusal:
    """What one case's CLI run did: its process, and its two folders' trees before and after."""
    completed: subprocess.CompletedProcess | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    workdir_after: dict = field(default_factory=dict)
    error: BaseException | None = None  # the case's setup or run raised: its test raises it


def _prepare(case: Case, document: dict, storage: Path, folder: Path) -> tuple[list[str], Refusal]:
    """The case's folder (a copy of the made study's storage, the broken study file, its setup's files)
    and its command line."""
    shutil.copyfile(storage, folder / "study.db")
    db = f"sqlite:///{folder / 'study.db'}"
    changes = {("storage",): db, ("cache_dir",): str(folder / "cache"), **case.changes}
    if case.setup is not None:
        changes.update(case.setup(folder))
    study_file = folder / "study.yaml"
    if case.text is not None:
        study_file.write_text(case.text.replace("{dir}", str(folder)))
    else:
        study_file.write_text(yaml.safe_dump(_apply(document, changes), sort_keys=False))
    args = [a.replace("{yaml}", str(study_file)).replace("{db}", db).replace("{dir}", str(folder))
            for a in case.args]
    return args, Refusal(before=_tree(folder))


@pytest.fixture(scope="module")
def refusals(request, made_study, tmp_path_factory) -> dict[str, Refusal]:
    """Every selected case run through the CLI, two at a time: each CLI process spends most of its
    ~2-6 s importing torch and loading data on one core, and the cases share nothing. Each runs in a
    working folder of its own, the folder a user runs autokd from (where `reports/` and `runs/` would
    go); it must stay empty, so whatever a case leaves is the case's."""
    document, storage = made_study
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input_is_refused_on_one_line_and_writes_nothing"]
    runs: dict[str, tuple[list[str], Path, Path]] = {}
    results: dict[str, Refusal] = {}
    for case in selected:
        # short names: the paths show in the refusals, whose line is limited to 300 characters
        folder, workdir = tmp_path_factory.mktemp("case"), tmp_path_factory.mktemp("cwd")
        try:
            args, results[case.id] = _prepare(case, document, storage, folder)
            runs[case.id] = (args, folder, workdir)
        except Exception as error:  # this case's test fails with it; the others still run
            results[case.id] = Refusal(error=error)

    def run(case_id: str) -> None:
        args, folder, workdir = runs[case_id]
        refusal = results[case_id]
        try:
            refusal.completed = run_cli(*args, timeout=180, cwd=workdir)
            refusal.after, refusal.workdir_after = _tree(folder), _tree(workdir)
        except Exception as error:
            refusal.error = error

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run, runs))
    return results


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_on_one_line_and_writes_nothing(case, refusals):
    refusal = refusals[case.id]
    if refusal.error is not None:
        raise refusal.error
    completed = refusal.completed
    line = completed.stderr.strip()
    print(line)  # pytest -rP shows every refusal as a user reads it
    assert "Traceback" not in completed.stderr + completed.stdout, completed.stderr[-3000:]
    assert completed.returncode == 2, f"exit {completed.returncode}:\n{completed.stderr[-3000:]}"
    assert line and "\n" not in line, f"stderr is not one line:\n{completed.stderr[-3000:]}"
    assert len(line) <= 300, f"the line has {len(line)} characters:\n{line[:3000]}"
    missing = [s for s in case.expected if s not in line]
    assert not missing, f"{missing} not in: {line}"
    assert refusal.after == refusal.before, "the command wrote into the study's folder (storage, cache or output)"
    assert not refusal.workdir_after, f"the command wrote into its working folder: {sorted(refusal.workdir_after)}"


# ---------------------------------------------------------------------------------------------
# What the classes above must not catch


def test_an_empty_or_new_database_is_fine(tmp_path):
    """Only a database with tables and none of Optuna's is refused: an empty file, an SQLite file
    without tables and a new path are storages Optuna sets up."""
    import optuna

    from autokd.results import open_storage

    (tmp_path / "empty.db").write_bytes(b"")
    sqlite3.connect(tmp_path / "no-tables.db").close()
    with sqlite3.connect(tmp_path / "no-tables.db") as db:
        db.execute("VACUUM")
    for name in ("empty.db", "no-tables.db", "new.db"):
        storage = open_storage(f"sqlite:///{tmp_path / name}")
        optuna.create_study(study_name="s", storage=storage)
        assert [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)] == ["s"]


def test_resume_takes_budget_changes_as_they_are_and_other_changes_with_accept_changes(made_study, tmp_path):
    """--resume with another budget or resources needs no flag; a changed training default needs
    --accept-changes, says so, and is then the study's (the next resume needs no flag)."""
    document, storage = made_study
    shutil.copyfile(storage, tmp_path / "study.db")
    study_file = tmp_path / "study.yaml"
    base = {("storage",): f"sqlite:///{tmp_path / 'study.db'}"}  # the made study's cache: teachers are cached

    def resume(changes: dict, *flags: str):
        study_file.write_text(yaml.safe_dump(_apply(document, {**base, **changes}), sort_keys=False))
        return run_cli("search", study_file, "--resume", "--no-report", "--no-progress", *flags, timeout=300)

    budget = {("resources", "concurrency"): 1, ("budget", "time_limit_s"): 30.0, ("sampler", "name"): "random"}
    completed = resume(budget)  # the budget is spent (2 of 2 trials): nothing is trained, Ray is not started
    assert completed.returncode == 0, completed.stderr[-3000:]
    changed = {**budget, ("schedule", "lr"): 0.0123}
    refused = resume(changed)
    assert refused.returncode == 2 and "schedule.lr" in refused.stderr and "--accept-changes" in refused.stderr
    accepted = resume(changed, "--accept-changes")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "resume: --accept-changes: schedule.lr differ" in accepted.stdout
    again = resume(changed)
    assert again.returncode == 0, again.stderr[-3000:]
