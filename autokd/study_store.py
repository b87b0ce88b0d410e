"""The study in its Optuna storage: opened or created, its sampler, and which driver owns which trial.

Several drivers may add to one study (PostgreSQL); each marks its trials with `driver`
(host:pid) and beats a heartbeat in the study's attrs, so that a trial left RUNNING by a dead
driver is failed as interrupted and its parameters re-queued, while a live driver's are left
alone. Trial states are written through Optuna's storage API (the only public way to finish
a trial that another process asked for); `storage_of`, `trial_id_of` and `record_running` (a trial's
attrs in one transaction) keep that private access in one place, checked by `tests/test_private_apis.py`
against the installed Optuna.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
from datetime import datetime
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna
import sqlalchemy
from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialModel, TrialUserAttributeModel
from optuna.storages._rdb.storage import _create_scoped_session

from autokd.errors import StorageError
from autokd.paths import absolute_path, is_path_key, relative_paths
from autokd.results import INTERRUPTED, holds_optuna_tables, open_storage
from autokd.spec import StudySpec, cut, derived_seed

DRIVER = f"{socket.gethostname()}:{os.getpid()}"
# A driver on another host whose heartbeat is older than this is taken for dead.
DRIVER_STALE_S = 600.0
HEARTBEAT_EVERY_S = 30.0
# A RUNNING trial without a driver this young may be being asked by another live driver, not orphaned.
ASKING_GRACE_S = 120.0
# {driver: time of its last beat}, one study attr for all drivers; a driver removes itself when it ends.
HEARTBEATS = "heartbeats"


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The study's storage (Optuna has no public accessor)."""
    return study._storage


def trial_id_of(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The storage id of a trial (Optuna has no public accessor)."""
    return trial._trial_id


def record_running(study: optuna.Study, trial: optuna.Trial, user_attrs: dict[str, Any],
                   curve: Sequence[float] = ()) -> None:
    """A running trial's user attrs, and its per-epoch values as intermediate values from step 1 (curves in
    optuna-dashboard; `Trial.report` refuses multi-objective studies), in one transaction on a SQL storage.

    Optuna writes each attr in a transaction of its own and checks the trial again for each; on SQL this
    writes them in a few statements (`_write_running`); other storages are written one call at a time.
    The trial's own copy of its attrs is kept in step."""
    storage, trial_id = storage_of(study), trial_id_of(trial)
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in its _CachedStorage
    if isinstance(backend, optuna.storages.RDBStorage):
        with _create_scoped_session(backend.scoped_session, True) as session:  # as Optuna writes an attr
            _write_running(backend, session, trial_id, user_attrs, curve)
    else:
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in enumerate(curve, start=1):
            storage.set_trial_intermediate_value(trial_id, step, value)
    trial._cached_frozen_trial.user_attrs.update(user_attrs)  # what `Trial.set_user_attr` does after its write


def _write_running(backend: optuna.storages.RDBStorage, session, trial_id: int, user_attrs: dict[str, Any],
                   curve: Sequence[float]) -> None:
    """What `record_running` writes, as Optuna would write it, in 3-4 statements: the trial checked once,
    every attr in one upsert (SQLite, PostgreSQL; other databases an attr at a time, as Optuna does), the
    curve's steps replaced. Optuna's own calls take two or three statements an attr or step, and SQLite's
    cost to the driver is SQLAlchemy's per statement (`benchmarks/storage_writes.py`)."""
    backend.check_trial_is_updatable(trial_id, TrialModel.find_or_raise_by_id(trial_id, session).state)
    dialect = backend.engine.name
    if user_attrs and (dialect == "postgresql" or (dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24))):
        # the dialect's module when used (as Optuna imports them): PostgreSQL's takes ~70 ms to import
        insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(TrialUserAttributeModel)
        insert = insert.values([{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                                for key, value in user_attrs.items()])
        session.execute(insert.on_conflict_do_update(
            index_elements=[TrialUserAttributeModel.trial_id, TrialUserAttributeModel.key],
            set_={"value_json": insert.excluded.value_json}))
    else:
        for key, value in user_attrs.items():
            backend._set_trial_attr_without_commit(session, TrialUserAttributeModel, trial_id, key, value)
    if curve:
        steps = TrialIntermediateValueModel
        session.execute(sqlalchemy.delete(steps).where(steps.trial_id == trial_id, steps.step <= len(curve)))
        rows = []
        for step, value in enumerate(curve, start=1):
            stored, kind = steps.intermediate_value_to_stored_repr(value)
            rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                         "intermediate_value_type": kind})
        session.execute(sqlalchemy.insert(steps), rows)


def make_sampler(spec: StudySpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler. A resumed driver offsets the seed by the trials already in storage:
    a sampler restarted with its first seed would replay the first driver's random draws and
    train the same configs again."""
    seed = derived_seed(spec.sampler.seed, trials_so_far)
    if spec.sampler.name == "nsga2":
        # Optuna's default population (50) would make a 30-40 trial study one random generation.
        return PicklableNSGAIISampler(seed=seed, population_size=nsga2_population(spec.budget.trials))
    if spec.sampler.name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna, and much better here
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna 5.1's NSGA-II holds a thread lock, and Ray Tune pickles the searcher (and its sampler)
    with the experiment state: the lock is left out of the pickle and made anew when loaded."""

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_thread_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def nsga2_population(trials: int) -> int:
    """A quarter of the budget (4 to 50), so that NSGA-II runs several generations."""
    return max(4, min(50, trials // 4))


def driver_alive(driver: str | None, heartbeats: dict[str, float], now: float | None = None) -> bool:
    """Is the driver that started a trial still running? Same host: its PID; other hosts: its heartbeat."""
    if not driver:
        return False
    host, _, pid = driver.rpartition(":")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True
    last = heartbeats.get(driver)
    return last is not None and (now or time.time()) - last < DRIVER_STALE_S


def heartbeats(study: optuna.Study) -> dict[str, float]:
    """{driver: time of its last heartbeat} of the drivers that have not ended."""
    return dict(study.user_attrs.get(HEARTBEATS) or {})


def beat(study: optuna.Study) -> None:
    """Tell other drivers sharing the study that this one is alive.

    Read-modify-write of one attr: a beat lost to a concurrent writer is repeated within
    HEARTBEAT_EVERY_S, far inside DRIVER_STALE_S."""
    study.set_user_attr(HEARTBEATS, {**heartbeats(study), DRIVER: time.time()})


def clear_beat(study: optuna.Study) -> None:
    """Remove this driver's heartbeat when it ends, so that finished runs leave nothing in the study."""
    beats = heartbeats(study)
    if beats.pop(DRIVER, None) is not None:
        study.set_user_attr(HEARTBEATS, beats)


def recover_interrupted(study: optuna.Study, own_only: bool = False) -> int:
    """Fail orphan RUNNING trials (their driver died) and re-queue their parameters.

    Trials of other live drivers adding to the same study are left alone; with `own_only`,
    only this driver's open trials are recovered (e.g. trials cut by the time limit or Ctrl-C).
    """
    beats = heartbeats(study)
    orphans = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if (t.user_attrs.get("driver") == DRIVER if own_only
                   else not driver_alive(t.user_attrs.get("driver"), beats) and not _being_asked(t, beats))]
    storage = storage_of(study)
    for trial in orphans:
        storage.set_trial_user_attr(trial_id_of(trial), "failure_reason", INTERRUPTED)
        storage.set_trial_state_values(trial_id_of(trial), optuna.trial.TrialState.FAIL)
        # The re-run keeps the role and seeds of what it replaces (a baseline stays a baseline), and all the
        # parameters it was given: one cut while being asked has suggested only some of them so far.
        kept = {k: v for k, v in trial.user_attrs.items() if k in REQUEUED_ATTRS}
        study.enqueue_trial({**trial.system_attrs.get("fixed_params", {}), **trial.params},
                            user_attrs={**kept, "retry_of": trial.number})
    return len(orphans)


def _being_asked(trial: optuna.trial.FrozenTrial, beats: dict[str, float]) -> bool:
    """A RUNNING trial without a driver that started moments ago, while another driver is alive: that one
    may have just asked for it and be about to mark it as its own (`searcher.suggest`), so it is no orphan.

    With no other live driver it is one: a driver killed inside `ask()` (its sampler runs between
    the trial's creation and the mark) leaves it so, and a resume right after must recover it."""
    started = trial.datetime_start
    return (trial.user_attrs.get("driver") is None and started is not None
            and (datetime.now() - started).total_seconds() < ASKING_GRACE_S
            and any(driver_alive(driver, beats) for driver in beats if driver != DRIVER))


# Attributes an enqueued trial carries into its run (see `searcher`): what it is, not what happened.
REQUEUED_ATTRS = ("level", "role", "arch", "seeds", "teachers_allowed", "confirms", "confirms_role")


def storage_file(storage_url: str) -> Path | None:
    """The file of a SQLite or journal-file storage; None for a database server."""
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url.removeprefix("sqlite:///").partition("?")[0])
    if "://" not in storage_url and storage_url.endswith((".log", ".journal")):
        return Path(storage_url)
    return None


def check_outputs(spec: StudySpec, storage_url: str, storage_flag: bool = False) -> None:
    """The storage file and the cache folder can be written: else one line naming the path, before anything is.

    The folder of a storage given by ``--storage`` must exist (a typo makes no folders); the
    study's own storage folder, and the cache's, are made when missing."""
    from autokd.atomic import check_writable

    path = storage_file(storage_url)
    if path is not None and str(path) != ":memory:":
        what = "--storage" if storage_flag else f"{spec.source}: storage"
        check_writable(path, what, create_parents=not storage_flag)
    check_writable(Path(spec.cache_dir), f"{spec.source}: cache_dir", folder=True)


def existing_study(spec: StudySpec, storage_url: str) -> optuna.Study | None:
    """The study if the storage already holds it. Writes nothing: neither the storage file, nor Optuna's
    tables in a new database (opening one with Optuna makes them), nor the study."""
    path = storage_file(storage_url)
    if path is not None and not path.is_file():
        return None
    source = f"{spec.source}: storage" if storage_url == spec.storage_url() else "--storage"
    if "://" in storage_url and not holds_optuna_tables(storage_url, source):
        return None
    storage = open_storage(storage_url, source)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    return optuna.load_study(study_name=spec.name, storage=storage) if spec.name in names else None


# The parts of a study that its trials were sampled and trained from: a resume that changes one of
# them (or the search space) mixes two searches, and needs --accept-changes. The budget, resources,
# sampler, constraints, stopping, robust re-runs, storage and cache may change freely.
RESUME_COMPARED = ("data", "teachers", "student", "distill", "schedule", "seed", "augment", "search")


def check_resumable(spec: StudySpec, study: optuna.Study, storage_url: str, resume: bool) -> None:
    """Refuse to add to a stored study without --resume, or with other objectives; a one-line StorageError.
    Reads nothing but the storage: checked before the data loads (`check_unchanged` needs it checked first)."""
    if not resume and study.get_trials(deepcopy=False):
        raise StorageError(f"{spec.source}: name: study {spec.name!r} already has trials in {storage_url}; "
                           "use --resume to continue it (or give the study another name)")
    directions = [d.name.lower() for d in study.directions]
    if directions != spec.directions or study.user_attrs.get("objectives") not in (None, spec.objectives):
        raise StorageError(f"{spec.source}: objectives: study {spec.name!r} was run with "
                           f"{cut(str(study.user_attrs.get('objectives') or directions), 60)}, the file asks for "
                           f"{cut(str(spec.objectives), 60)}; its trials' values cannot change meaning")


def check_unchanged(spec: StudySpec, study: optuna.Study, space_signature: dict,
                    accept_changes: bool = False) -> list[str]:
    """Refuse to mix runs that would not be comparable; raises a one-line StorageError.

    A study with trials resumed from a file whose space, data, teachers or training defaults
    differ from the stored ones is refused, naming the changed keys; with `accept_changes`
    it goes on, and the changed keys are returned. Checked after the data and teachers: a
    broken data section is named as such, not as a change."""
    changes = resume_changes(spec, study, space_signature) if study.get_trials(deepcopy=False) else []
    if changes and not accept_changes:
        shown = ", ".join(cut(key, 50) for key in changes[:3]) + (f" (+{len(changes) - 3} more)"
                                                                   if len(changes) > 3 else "")
        raise StorageError(f"{spec.source}: {shown}: {'differs' if len(changes) == 1 else 'differ'} from stored "
                           f"study {cut(spec.name, 40)!r}; resuming would mix two searches (--accept-changes "
                           "resumes anyway)")
    return changes


def resume_changes(spec: StudySpec, study: optuna.Study, space_signature: dict) -> list[str]:
    """Dotted keys of the search space and of `RESUME_COMPARED` that differ from what `study` stored."""
    changes = []
    if study.user_attrs.get("space") is not None:
        changes += _differences(study.user_attrs["space"], space_signature, "search_space", one_sided=True)
    stored = study.user_attrs.get("study_spec")
    if isinstance(stored, dict):
        # Paths as the study stores them: relative to the study file, whatever the working directory.
        current = relative_paths(spec, spec.folder).model_dump(mode="json")
        resolved = spec.model_dump(mode="json")
        bases = _stored_path_bases(spec, study.user_attrs.get("study_file"))
        for key in RESUME_COMPARED:
            if key in stored and key in current:
                changes += [change for change in _differences(stored[key], current[key], key, one_sided=False)
                            if not (is_path_key(change) and _same_file(_at(stored, change), _at(resolved, change),
                                                                       bases))]
    return changes


def _differences(old: Any, new: Any, key: str, one_sided: bool) -> list[str]:
    """Dotted keys where `old` and `new` differ. A key only one side has counts when `one_sided` (else it is
    a field another autokd version added or removed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if one_sided or (k in old and k in new)]
        return [change for k in keys
                for change in (_differences(old.get(k), new.get(k), f"{key}.{k}", one_sided)
                               if k in old and k in new else [f"{key}.{k}"])]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [change for index, (a, b) in enumerate(zip(old, new))
                for change in _differences(a, b, f"{key}.{index}", one_sided)]
    return [] if old == new else [key]


def _stored_path_bases(spec: StudySpec, study_file: str | None) -> list[Path]:
    """What a stored relative path may be relative to: the folder of the study file that stored it (or this one's);
    for a study stored before paths were kept relative to its file, that driver's working directory (the study
    file's folder or one above it)."""
    stored_at = [Path(study_file).parent, *Path(study_file).parent.parents] if study_file else []
    return [*stored_at, spec.folder, Path.cwd()]


def _same_file(old: Any, new: Any, bases: list[Path]) -> bool:
    """Does a stored path (relative to one of `bases`) name the file that `new` (absolute) names?"""
    if not isinstance(old, str) or not isinstance(new, str):
        return old == new
    target = os.path.realpath(new)
    return any(os.path.realpath(absolute_path(old, base)) == target for base in bases)


def _at(document: Any, dotted: str) -> Any:
    """The value at `dotted` (``teachers.0.checkpoint``) in a dumped spec; None where there is none."""
    for part in dotted.split("."):
        if isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        elif isinstance(document, dict):
            document = document.get(part)
        else:
            return None
    return document


def open_or_create_study(spec: StudySpec, storage_url: str, resume: bool, space_signature: dict) -> optuna.Study:
    """The study in storage, created when new; refuses to mix runs that would not be comparable."""
    study = existing_study(spec, storage_url)
    if study is not None:
        check_resumable(spec, study, storage_url, resume)
        check_unchanged(spec, study, space_signature)
        return study
    storage = open_storage(storage_url)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions)
    except optuna.exceptions.DuplicatedStudyError:  # another driver created it a moment ago
        if not resume:
            raise StorageError(f"{spec.source}: name: study {spec.name!r} was just created in {storage_url} by "
                               "another driver; use --resume to add trials to it") from None
        return optuna.load_study(study_name=spec.name, storage=storage)
    return study
