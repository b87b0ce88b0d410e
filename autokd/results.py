"""Reading a study back from its Optuna storage: trials as a DataFrame, ranked by Pareto front.

Search writes the storage; report, show and export read it through here, also while a
search is still writing (every read is a fresh query).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from autokd.config_files import load_study
from autokd.errors import StorageError
from autokd.pairing import CE, CONFIRM, CONFIRM_CE, Candidate, Choice, choose, confirm
from autokd.pareto import first_dominators, pareto_ranks
from autokd.paths import resolve_paths
from autokd.spec import StudySpec

SCHEMA_RACE_RETRIES = 5
INTERRUPTED = "interrupted: the search stopped before this trial finished (re-queued)"
TRIAL_ATTRS = ("seed", "params", "bytes_fp32", "bytes_fp16", "macs", "train_seconds", "epochs_trained",
               "node", "node_id", "device", "driver", "failure_reason", "pruned_reason", "level", "role", "arch",
               "confirms",
               # an int8 study's objectives are (val_accuracy_int8, bytes_int8); its fp32 accuracy is an attr
               "val_accuracy", "val_accuracy_int8", "bytes_int8")
# Columns of a two-level study's front choice (see `architecture_choices`).
CHOICE_COLUMNS = ("val_gain_vs_ce", "val_gain_se", "front_reason")


def open_storage(url: str, source: str = "--storage", *, fast_commits: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`, or a one-line StorageError.

    `fast_commits` (the searcher's, once the search has switched the file to write-ahead logging with
    `use_write_ahead_log`): SQLite connections commit without an fsync each (synchronous=NORMAL).

    A database that holds tables but none of Optuna's belongs to another program: it is refused
    before Optuna would add its own tables to it. An empty or new database is fine."""
    if "://" in url:
        holds_optuna_tables(url, source)  # refuses another program's database
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            if url.endswith((".log", ".journal")) and "://" not in url:
                backend = optuna.storages.journal.JournalFileBackend(url)
                return optuna.storages.JournalStorage(backend)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=None, engine_kwargs=_engine_kwargs(url))
            if fast_commits and url.startswith("sqlite"):
                _synchronous_normal(storage)
            return storage
        except Exception as error:  # SQLAlchemy raises many kinds for a bad URL or unreachable server
            if _lost_schema_race(error):
                # Two processes creating the schema of a new database at once (two drivers, a driver and a
                # reader): one loses the race; a moment later the schema is there and opening it succeeds.
                if attempt < SCHEMA_RACE_RETRIES:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise StorageError(f"{source}: cannot open storage {_shown_url(url)}: schema creation kept conflicting "
                                   "with another process") from None
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StorageError(f"{source}: cannot open storage {_shown_url(url)}: {message[:160]}") from None
    raise AssertionError("unreachable")


def _lost_schema_race(error) -> bool:
    """Did creating Optuna's tables collide with another process creating them? Every database says it its
    own way: a duplicate key (PostgreSQL's catalog, SQLite's alembic_version row), or a table that already
    exists (SQLite's OperationalError, PostgreSQL's DuplicateTable, MySQL's 1050)."""
    import sqlalchemy.exc

    return isinstance(error, sqlalchemy.exc.IntegrityError) or (
        isinstance(error, sqlalchemy.exc.DBAPIError) and "already exists" in str(error).lower())


# Tables every Optuna RDB storage has (any version); a database with other tables and none of these is not ours.
OPTUNA_TABLES = frozenset({"alembic_version", "studies", "trials", "version_info"})


def holds_optuna_tables(url: str, source: str) -> bool:
    """Does the database at `url` hold Optuna's tables? Reads only: opening a new database with Optuna
    creates its tables, and a check must write nothing. A database with tables but none of Optuna's
    belongs to another program: a one-line StorageError, before Optuna would add its own tables to it.
    True when the database cannot be read here (a server down, a bad URL): opening it says why."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").partition("?")[0])
        if not path.is_file() or path.stat().st_size == 0:
            return False  # new or empty: Optuna makes its tables
        try:
            tables = _sqlite_tables(path, immutable=True)
        except sqlite3.Error:
            try:  # an immutable read does not lock: a page another driver is writing can look malformed to it
                tables = _sqlite_tables(path, immutable=False)
            except sqlite3.Error as error:
                raise StorageError(f"{source}: cannot open storage {_shown_url(url)}: not an SQLite database "
                                   f"({str(error)[:80]})") from None
    else:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(url)
            try:
                tables = set(sqlalchemy.inspect(engine).get_table_names())
            finally:
                engine.dispose()
        except Exception:  # unreachable, bad URL, no driver: Optuna's own attempt says so in its words
            return True
    if tables and not tables & OPTUNA_TABLES:
        listed = ", ".join(sorted(tables)[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
        raise StorageError(f"{source}: {_shown_url(url)} is a database of another program (tables: {listed[:80]}), "
                           "not Optuna's; refused rather than adding Optuna's tables to it")
    return bool(tables & OPTUNA_TABLES)


def _sqlite_tables(path: Path, immutable: bool) -> set[str]:
    """The table names of an SQLite file, read only. `immutable` first: a write-ahead-log database read with
    locks gets -wal and -shm files from its reader, and a refused file must be left as it was; a database
    that another driver is writing needs the locking read (an error of the immutable one is confirmed by it)."""
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _shown_url(url: str) -> str:
    """`url` for an error line: its password masked, at most ~120 characters."""
    try:
        import sqlalchemy

        url = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (a journal file, or the very thing being refused)
        pass
    return repr(url) if len(url) <= 120 else repr(url[:120] + "...")


def _sqlite_file(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///").partition("?")[0]) if url.startswith("sqlite:///") else None


def use_write_ahead_log(url: str) -> None:
    """Switch an SQLite storage file to write-ahead logging (it stays with the file): with `fast_commits`
    a commit costs ~0.03 ms instead of an fsync (~4 ms here), and a trial makes dozens. A process killed at
    any point loses no committed transaction; only an OS crash or power loss may lose the last ones. A
    search calls it once its checks have passed, right before its first write; readers never do (reading
    must not change the file). No-op for other storages."""
    path = _sqlite_file(url)
    if path is not None and path.is_file():
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            db.execute("PRAGMA journal_mode=WAL")


def checkpoint(url: str) -> None:
    """Write an SQLite storage's log back into its file (and empty the log), as a search ends: a later
    reader then finds nothing to write back, so reading leaves the file's bytes as they are."""
    path = _sqlite_file(url)
    if path is not None and path.is_file():
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _synchronous_normal(storage: optuna.storages.RDBStorage) -> None:
    import sqlalchemy

    def on_connect(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")  # per connection; durable in WAL mode but for power loss
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while Optuna checked its tables get the setting too


def _engine_kwargs(url: str) -> dict:
    # SQLite: wait for a concurrent writer instead of failing with "database is locked".
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def study_and_spec(study: str, storage: str | None = None) -> tuple[optuna.Study, StudySpec | None]:
    """Open a study by its YAML file or by its name in `storage`.

    The spec comes from the file when one is given, else from the copy stored in the study.
    """
    spec = load_study(study) if Path(study).suffix in {".yaml", ".yml"} else None
    name = spec.name if spec else study
    url = storage or (spec.storage_url() if spec else None)
    if url is None:
        raise StorageError(f"{study}: no such study file; to open a study by name give --storage URL")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise StorageError(f"{study}: no study {name!r}: storage file {url.removeprefix('sqlite:///')} "
                           "does not exist (run `autokd search` first)")
    try:
        loaded = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise StorageError(f"{study}: no study named {name!r} in {url}") from None
    if spec is None and "study_spec" in loaded.user_attrs:
        # The stored paths are relative to the study file it came from: absolute from its folder.
        source = loaded.user_attrs.get("study_file", study)
        spec = StudySpec.model_validate({**loaded.user_attrs["study_spec"], "source": source})
        spec = resolve_paths(spec, spec.folder)
    return loaded, spec


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objectives, size, timing, reasons, sampled params (dotted), config."""
    objectives = study.user_attrs.get("objectives", ["val_accuracy", "params"])
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {"trial": trial.number, "state": trial.state.name}
        values = trial.values if trial.values is not None else [np.nan] * len(objectives)
        row.update(dict(zip(objectives, values)))
        row.update({k: trial.user_attrs.get(k) for k in TRIAL_ATTRS if k not in row})
        row.update(trial.params)
        row["config"] = json.dumps(trial.user_attrs.get("config")) if "config" in trial.user_attrs else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        columns = ["trial", "state", *objectives, *[a for a in TRIAL_ATTRS if a not in objectives], "config"]
        return pd.DataFrame(columns=[*columns, *CHOICE_COLUMNS, "pareto_rank"])
    for column in CHOICE_COLUMNS:
        frame[column] = np.nan if column != "front_reason" else None
    eligible = None
    choices = architecture_choices(study)
    if choices:  # two levels: per architecture, only its choice may stand on the front
        eligible = frame["trial"].isin([choice.trial for choice in choices.values()])
        for choice in choices.values():
            at = frame["trial"] == choice.trial
            frame.loc[at, "val_gain_vs_ce"] = choice.gain_vs_ce
            frame.loc[at, "val_gain_se"] = choice.gain_se
            frame.loc[at, "front_reason"] = choice.reason
    frame["pareto_rank"] = pareto_rank_column(frame, objectives, study.directions, eligible)
    return frame


def architecture_choices(study: optuna.Study) -> dict[int, Choice]:
    """Two-level studies: {level-1 architecture trial: its front choice among CE-only, vanilla KD and tuned}.

    Empty for a flat study, or before any level-2 baseline has finished. The margin is the
    study's `search.margin_se` (paired gains over CE-only on the shared seeds, `pairing.choose`);
    a choice confirmed on fresh seeds shows that gain, or gives the place back to CE-only (`pairing.confirm`).
    """
    if study.user_attrs.get("search_mode") != "two_level":
        return {}
    margin = float(((study.user_attrs.get("study_spec") or {}).get("search") or {}).get("margin_se", 2.0))
    candidates: dict[int, list[Candidate]] = {}
    confirmations: dict[tuple[int, str], tuple[float, ...]] = {}  # (confirmed trial, role): val per fresh seed
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if attrs.get("level") != 2 or not attrs.get("val_accuracy_seeds"):
            continue
        if attrs.get("role") in (CONFIRM, CONFIRM_CE):
            confirmations[(int(attrs["confirms"]), attrs["role"])] = tuple(attrs["val_accuracy_seeds"])
        else:
            candidates.setdefault(int(attrs["arch"]), []).append(
                Candidate(trial.number, attrs["role"], tuple(attrs["val_accuracy_seeds"])))
    choices = {}
    for arch, found in candidates.items():
        choice = choose(found, margin)
        if choice is not None:
            baseline = next(c for c in found if c.role == CE)
            choices[arch] = confirm(choice, baseline, confirmations.get((choice.trial, CONFIRM)),
                                    confirmations.get((choice.trial, CONFIRM_CE)))
    return choices


def pareto_rank_column(frame: pd.DataFrame, objectives: list[str], directions,
                       eligible: pd.Series | None = None) -> pd.Series:
    """Non-dominated rank of every COMPLETE (and `eligible`) trial (0 = front); NaN for the rest."""
    names = [d.name.lower() if hasattr(d, "name") else str(d) for d in directions]
    complete = frame["state"].eq("COMPLETE") & frame[objectives].notna().all(axis=1)
    if eligible is not None:
        complete &= eligible
    ranks = pd.Series(np.nan, index=frame.index)
    if complete.any():
        ranks[complete] = pareto_ranks(frame.loc[complete, objectives].to_numpy(float), names)
    return ranks


def front_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The first Pareto front, smallest student first."""
    front = frame[frame["pareto_rank"] == 0]
    size_column = next(c for c in ("params", "bytes_fp32", "macs") if c in front.columns)
    return front.sort_values([size_column, "trial"]).reset_index(drop=True)


def robust_frame(study: optuna.Study, frame: pd.DataFrame) -> pd.DataFrame:
    """The front configs re-run with several seeds (`robust.top_k`), ranked by mean val accuracy.

    Columns: trial, the size objectives, val_accuracy (the search's seed), the per-seed
    accuracies, mean, std, seeds, and `front_by_mean`: whether the config is still on the front
    of the re-run configs when each is placed at its mean. False means its place on the search's
    front rests on one lucky seed: by mean, another re-run config is at least as accurate and no
    larger. `beaten_by` names that config.
    """
    objectives = study.user_attrs.get("objectives", ["val_accuracy", "params"])
    rows = []
    for key, value in study.user_attrs.items():
        if not key.startswith("robust."):
            continue
        number = int(key.removeprefix("robust."))
        match = frame[frame["trial"] == number]
        if match.empty:
            continue
        trial = match.iloc[0]
        rows.append({"trial": number, **{name: trial[name] for name in objectives},
                     "val_accuracies": value["val_accuracies"], "seeds": len(value["seeds"]),
                     "mean": value["mean"], "std": value["std"]})
    columns = ["trial", *objectives, "val_accuracies", "seeds", "mean", "std", "front_by_mean", "beaten_by"]
    if not rows:
        return pd.DataFrame(columns=columns)
    robust = pd.DataFrame(rows)
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    dominators = first_dominators(robust[["mean", *objectives[1:]]].to_numpy(float), directions)
    robust["front_by_mean"] = dominators < 0
    robust["beaten_by"] = pd.Series([int(robust["trial"][d]) if d >= 0 else None for d in dominators], dtype=object)
    return robust.sort_values(["mean", "trial"], ascending=[False, True]).reset_index(drop=True)[columns]


# Hypervolume is measured on (val accuracy, log10 size) against a fixed, stated reference:
# accuracy 0 and, per size objective, the study's constraint or 10^7 when it has none.
# Fixed so that values are comparable across runs, samplers and report builds.
UNCONSTRAINED_SIZE_REFERENCE = 1e7


def hypervolume_reference(spec: StudySpec) -> list[float]:
    limits = spec.size_limits()
    return [0.0] + [float(np.log10(limits.get(name, UNCONSTRAINED_SIZE_REFERENCE))) for name in spec.objectives[1:]]


def log_sizes(values: np.ndarray) -> np.ndarray:
    """Rows of (accuracy, size, ...) with the sizes as log10: the space of the hypervolume, of
    the knee and of the report's size axis, where a student ten times smaller is one step away."""
    points = np.array(values, dtype=float)
    points[:, 1:] = np.log10(np.maximum(points[:, 1:], 1.0))
    return points


def hypervolume_points(frame: pd.DataFrame, spec: StudySpec) -> np.ndarray:
    """The ranked trials (COMPLETE; in a two-level study only each architecture's choice) in log size."""
    return log_sizes(frame.loc[frame["pareto_rank"].notna(), spec.objectives].to_numpy(float))


def study_hypervolume(frame: pd.DataFrame, spec: StudySpec) -> float:
    from autokd.pareto import hypervolume

    points = hypervolume_points(frame, spec)
    if len(points) == 0:
        return 0.0
    return float(hypervolume(points, spec.directions, hypervolume_reference(spec)))


def trained_epochs(study: optuna.Study) -> int:
    """Epochs trained by the study's finished trials: the compute `budget.epochs` counts."""
    return sum(int(t.user_attrs.get("epochs_trained") or 0) for t in study.get_trials(deepcopy=False)
               if t.state.is_finished())


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome; `done` is what the budget counts (infeasible and interrupted are not)."""
    tally = {"complete": 0, "failed": 0, "infeasible": 0, "stopped": 0, "interrupted": 0, "running": 0}
    for trial in study.get_trials(deepcopy=False):
        state = trial.state
        if state == optuna.trial.TrialState.COMPLETE:
            tally["complete"] += 1
        elif state == optuna.trial.TrialState.FAIL:
            tally["interrupted" if trial.user_attrs.get("failure_reason") == INTERRUPTED else "failed"] += 1
        elif state == optuna.trial.TrialState.PRUNED:
            infeasible = str(trial.user_attrs.get("pruned_reason", "")).startswith("infeasible")
            tally["infeasible" if infeasible else "stopped"] += 1
        else:
            tally["running"] += 1
    tally["done"] = tally["complete"] + tally["failed"] + tally["stopped"]
    return tally
