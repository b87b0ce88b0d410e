"""Shared fixtures: tiny real studies on digits that search in seconds."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
AUTOKD = [sys.executable, "-m", "autokd.cli"]
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin"

# A private Ray temp dir for the whole test session (and the CLIs it starts): a plain `ray.init`
# elsewhere on this machine, or another job's cluster, never meets ours. Short: Ray's socket paths are limited.
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rk", dir="/tmp"))


def with_faults(faults: str) -> dict[str, str]:
    """Environment for a CLI run whose trials fail on purpose (see fault_plugin/sitecustomize.py)."""
    return {"AUTOKD_INJECT_FAULT": faults,
            "PYTHONPATH": os.pathsep.join(p for p in (str(FAULT_PLUGIN), os.environ.get("PYTHONPATH")) if p)}

TINY_SPACE = {"params": {
    "student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "student.width": {"type": "int", "low": 4, "high": 64, "log": True, "when": {"student.family": ["mlp"]}},
    "student.channels": {"type": "int", "low": 2, "high": 8, "when": {"student.family": ["cnn"]}},
    "distill.teachers": {"type": "teacher_subset"},
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse", "dkd"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.1, "high": 1.0},
    "schedule.lr": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
}}


# A minimal valid study document (test_spec, test_config_files) and how those tests write one.
VALID_STUDY = {
    "name": "s",
    "data": {"name": "digits"},
    "teachers": [{"name": "t1", "arch": {"family": "mlp", "width": 32}, "schedule": {"epochs": 1}}],
    "student": {"family": "mlp", "depth": 1, "width": 8},
    "search_space": {"params": {"distill.temperature": {"type": "float", "low": 1, "high": 4}}},
}


def write_config(tmp_path: Path, document, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def data_spec(name: str = "digits", **overrides):
    """A stand-in for spec.DataSpec: load_data only reads these attributes."""
    from types import SimpleNamespace

    fields = dict(name=name, data_dir=None, path=None, val_fraction=0.1, seed=0, train_subset=None,
                  mnist1d_samples=4000)
    return SimpleNamespace(**(fields | overrides))


def class_counts(labels):
    """Samples per class of a label tensor (10 classes)."""
    import numpy as np

    return np.bincount(labels.numpy(), minlength=10)


def tiny_study(folder: Path, name: str = "tiny", trials: int = 6, epochs: int = 2, cached_teachers: bool = False,
               **overrides) -> Path:
    """A real study: digits, two tiny teachers, a small space; each trial takes well under a second.

    `cached_teachers`: its teachers are in its cache already (`cache_teachers`), as after a first search."""
    document = {
        "name": name,
        "data": {"name": "digits", "val_fraction": 0.15},
        "teachers": [
            {"name": "t-mlp", "arch": {"family": "mlp", "depth": 1, "width": 48}, "schedule": {"epochs": 4}},
            {"name": "t-cnn", "arch": {"family": "cnn", "stages": 1, "channels": 8, "head_width": 0},
             "schedule": {"epochs": 4}},
        ],
        "student": {"family": "mlp", "depth": 1, "width": 16},
        "schedule": {"epochs": epochs, "batch_size": 64},
        "search_space": TINY_SPACE,
        "budget": {"trials": trials},
        "cache_dir": str(folder / "cache"),
        # The tests of the search machinery run flat; the two-level plan has its own (tests/test_levels.py).
        "search": {"mode": "flat"},
        **overrides,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    if cached_teachers:
        cache_teachers(path)
    return path


_SESSION_TEACHERS: list[Path] = []


def cache_teachers(study_file: Path) -> None:
    """Put the study's teachers into its cache, each trained once per test session (in this process), for
    the searches whose test is not about training teachers: the search finds them cached, as a user's
    second search does, and its driver saves the training and loading torch's compiler (~3 s)."""
    from autokd.config_files import load_study
    from autokd.data import load_data
    from autokd.teachers import prepare_teachers

    if not _SESSION_TEACHERS:
        _SESSION_TEACHERS.append(Path(tempfile.mkdtemp(prefix="autokd-teachers-")))
        atexit.register(shutil.rmtree, _SESSION_TEACHERS[0], ignore_errors=True)
    spec = load_study(study_file)
    teachers = prepare_teachers(spec.teachers, load_data(spec.data, spec.source), _SESSION_TEACHERS[0],
                                progress=False)
    for teacher in teachers:
        shutil.copytree(teacher.folder, Path(spec.cache_dir) / "teachers" / teacher.folder.name, dirs_exist_ok=True)


def run_cli(*args, env: dict | None = None, timeout: float = 300, check: bool = False, cwd: Path = REPO):
    """Run `autokd ARGS` the way a user types it (in the repository unless `cwd`); returns the CompletedProcess."""
    completed = subprocess.run([*AUTOKD, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})}, cwd=cwd)
    if check and completed.returncode != 0:
        raise AssertionError(f"autokd {' '.join(map(str, args))} failed ({completed.returncode}):\n"
                             f"{completed.stdout}\n{completed.stderr}")
    return completed


def _tiny_storage(folder: Path, name: str = "tiny"):
    """The storage of a `tiny_study(folder)`: its journal file (`storage: <name>.log`) when there is one, else its
    SQLite file beside the study file; None while neither exists."""
    import optuna

    journal, database = folder / f"{name}.log", folder / f"{name}.db"
    if journal.is_file():
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.storages.RDBStorage(f"sqlite:///{database}") if database.is_file() else None


def load_tiny(folder: Path, name: str = "tiny"):
    """The study a `tiny_study(folder)` search wrote."""
    import optuna

    return optuna.load_study(study_name=name, storage=_tiny_storage(folder, name))


_POLLED_STORAGES: dict[Path, object] = {}


def trials_or_empty(folder: Path) -> list:
    """The tiny study's trials as they are now; none while there is no storage or study yet.

    Tests poll this every 50 ms while a driver runs: one storage per folder, opened once the driver has
    made it (opening one costs ~40 ms of CPU, which the driver and its workers lost on 2 cores)."""
    import optuna

    try:
        if folder not in _POLLED_STORAGES:
            storage = _tiny_storage(folder)
            if storage is None:
                return []
            _POLLED_STORAGES[folder] = storage
        return optuna.load_study(study_name="tiny", storage=_POLLED_STORAGES[folder]).get_trials(deepcopy=False)
    except Exception:  # no study yet, or the driver is creating the schema
        return []


def database_content(path: Path) -> str:
    """An SQLite file's rows, as SQL: what "writes nothing" compares. Not the file's bytes: in write-ahead-log
    mode any connection may write committed pages back from the -wal file into the main file, which changes
    no row."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return "\n".join(db.iterdump())


def strings_in(node) -> list[str]:
    """Every string in a YAML/JSON document (nested dicts and lists): where tests look for machine paths."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings_in(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings_in(value)]
    return [node] if isinstance(node, str) else []


@pytest.fixture
def study_file(tmp_path):
    return tiny_study(tmp_path)


@pytest.fixture(scope="session")
def ray_head():
    """One Ray head for the session: the environment that points `autokd search` at it (`--address`'s
    RAY_ADDRESS). A CLI search that starts its own Ray pays ~7 s to start and stop it; the searches
    whose test is not about that (how Ray starts or dies, Ctrl-C, kills, custom resources, GPU
    visibility, faults injected into the workers' environment, paths seen from a worker's folder)
    share this one. It is started as a user starts a cluster (`ray start --head`, in its own temp dir,
    with the environment `ray_cluster.init_ray` gives a Ray it starts itself), and its whole process
    group is killed after the session."""
    from autokd.ray_cluster import RAY_ENVIRONMENT

    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are limited
    env = {**os.environ, **RAY_ENVIRONMENT, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port=0",
                             f"--num-cpus={max(2, os.cpu_count() or 1)}", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address_file = Path(temp_dir) / "ray_current_cluster"
    try:
        for _ in range(1200):  # up to 120 s on a busy machine
            if address_file.is_file() and address_file.read_text().strip():
                break
            if head.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited {head.returncode}")
            time.sleep(0.1)
        else:
            raise RuntimeError("`ray start --head` wrote no address in 120 s")
        yield {"RAY_ADDRESS": address_file.read_text().strip(), "RAY_AUTH_MODE": "disabled"}
    finally:  # nothing of it is needed after the session: SIGKILL ends every process of its group at once
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# A real PostgreSQL server for the storage tests (Debian's `postgresql`, installed by .ci/run)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(*command: str) -> None:
    """Run a PostgreSQL binary; as root through the `postgres` user (the server refuses root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster on a free loopback port; yields its base URL."""
    import glob

    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL is not installed (`.ci/run` installs Debian's postgresql)")
    bin_dir = Path(initdb[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="autokd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    _as_postgres(str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--no-sync")
    _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w",
                 "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield {"url": f"postgresql+psycopg2://postgres@127.0.0.1:{port}", "bin_dir": bin_dir, "port": port}
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the test server, one per test."""
    name = "autokd_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    _as_postgres(str(postgres_server["bin_dir"] / "createdb"), "-h", "127.0.0.1", "-p",
                 str(postgres_server["port"]), "-U", "postgres", name)
    return f"{postgres_server['url']}/{name}"
