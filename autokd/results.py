"""Reading a study back from its Optuna storage: trials as a DataFrame, ranked by Pareto front.

Search writes the storage; report, show and export read it through here, also while a
search is still writing (every read is a fresh query).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from autokd.errors import StorageError
from autokd.pareto import pareto_ranks
from autokd.spec import StudySpec, load_study

SCHEMA_RACE_RETRIES = 5
INTERRUPTED = "interrupted: the search stopped before this trial finished (re-queued)"
TRIAL_ATTRS = ("seed", "params", "bytes_fp32", "bytes_fp16", "macs", "train_seconds", "epochs_trained",
               "node", "device", "driver", "failure_reason", "pruned_reason")


def open_storage(url: str, source: str = "--storage") -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`, or a one-line StorageError."""
    import sqlalchemy.exc

    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            if url.endswith((".log", ".journal")) and "://" not in url:
                backend = optuna.storages.journal.JournalFileBackend(url)
                return optuna.storages.JournalStorage(backend)
            return optuna.storages.RDBStorage(url, heartbeat_interval=None, engine_kwargs=_engine_kwargs(url))
        except sqlalchemy.exc.IntegrityError:
            # Two drivers creating the schema of a new database at once: one loses the race on
            # PostgreSQL's catalog; a moment later the schema is there and opening it succeeds.
            if attempt == SCHEMA_RACE_RETRIES:
                raise StorageError(f"{source}: cannot open storage {url!r}: schema creation kept conflicting "
                                   "with another process") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as error:  # SQLAlchemy raises many kinds for a bad URL or unreachable server
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StorageError(f"{source}: cannot open storage {url!r}: {message}") from None
    raise AssertionError("unreachable")


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
        # Relative paths in the spec stay relative to the study file it came from.
        source = loaded.user_attrs.get("study_file", study)
        spec = StudySpec.model_validate({**loaded.user_attrs["study_spec"], "source": source})
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
        return pd.DataFrame(columns=[*columns, "pareto_rank"])
    frame["pareto_rank"] = pareto_rank_column(frame, objectives, study.directions)
    return frame


def pareto_rank_column(frame: pd.DataFrame, objectives: list[str], directions) -> pd.Series:
    """Non-dominated rank of every COMPLETE trial (0 = front); NaN for the rest."""
    names = [d.name.lower() if hasattr(d, "name") else str(d) for d in directions]
    complete = frame["state"].eq("COMPLETE") & frame[objectives].notna().all(axis=1)
    ranks = pd.Series(np.nan, index=frame.index)
    if complete.any():
        ranks[complete] = pareto_ranks(frame.loc[complete, objectives].to_numpy(float), names)
    return ranks


def front_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The first Pareto front, smallest student first."""
    front = frame[frame["pareto_rank"] == 0]
    size_column = next(c for c in ("params", "bytes_fp32", "macs") if c in front.columns)
    return front.sort_values([size_column, "trial"]).reset_index(drop=True)


# Hypervolume is measured on (val accuracy, log10 size) against a fixed, stated reference:
# accuracy 0 and, per size objective, the study's constraint or 10^7 when it has none.
# Fixed so that values are comparable across runs, samplers and report builds.
UNCONSTRAINED_SIZE_REFERENCE = 1e7


def hypervolume_reference(spec: StudySpec) -> list[float]:
    limits = spec.size_limits()
    return [0.0] + [float(np.log10(limits.get(name, UNCONSTRAINED_SIZE_REFERENCE))) for name in spec.objectives[1:]]


def hypervolume_points(frame: pd.DataFrame, spec: StudySpec) -> np.ndarray:
    complete = frame[frame["state"] == "COMPLETE"]
    points = complete[spec.objectives].to_numpy(float, copy=True)
    points[:, 1:] = np.log10(np.maximum(points[:, 1:], 1.0))
    return points


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
