"""Reading a study back: the robust front (front configs re-run with several seeds), by hand; opening storages."""

from __future__ import annotations

import optuna
import pytest

from autokd.results import robust_frame, trials_frame

States = optuna.trial.TrialState


def study_with(trials: list[tuple[float, int]], robust: dict[int, list[float]]) -> optuna.Study:
    """COMPLETE trials with (val accuracy, params), and `robust.<n>` attrs as the search writes them."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["val_accuracy", "params"])
    for accuracy, params in trials:
        study.add_trial(optuna.trial.create_trial(state=States.COMPLETE, values=[accuracy, params],
                                                  user_attrs={"params": params}))
    for number, accuracies in robust.items():
        mean = sum(accuracies) / len(accuracies)
        std = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5
        study.set_user_attr(f"robust.{number}", {"seeds": list(range(len(accuracies))), "val_accuracies": accuracies,
                                                 "mean": mean, "std": std})
    return study


def test_robust_front_is_ranked_by_mean_and_flags_the_lucky_seed():
    # Three front trials. Trial 1 (0.90 at 2,000 params) is on the search's front by one lucky
    # seed: its other seeds give 0.80 and 0.82, so by mean (0.84) trial 0 (0.85 at 1,000 params,
    # steady) is as accurate and smaller.
    study = study_with([(0.85, 1_000), (0.90, 2_000), (0.95, 9_000)],
                       robust={0: [0.85, 0.84, 0.86], 1: [0.90, 0.80, 0.82], 2: [0.95, 0.94, 0.93]})
    robust = robust_frame(study, trials_frame(study))
    assert robust["trial"].tolist() == [2, 0, 1]                         # by mean: 0.94, 0.85, 0.84
    assert robust["mean"].tolist() == pytest.approx([0.94, 0.85, 0.84])
    assert robust["std"].tolist() == pytest.approx([0.01, 0.01, (0.0056 / 2) ** 0.5])  # by hand
    assert robust["seeds"].tolist() == [3, 3, 3]
    assert robust["val_accuracy"].tolist() == [0.95, 0.85, 0.90]         # the search's seed
    assert robust["front_by_mean"].tolist() == [True, True, False]
    assert robust["beaten_by"].tolist() == [None, None, 0]


def test_no_rerun_means_an_empty_robust_frame():
    study = study_with([(0.85, 1_000)], robust={})
    robust = robust_frame(study, trials_frame(study))
    assert robust.empty and {"trial", "mean", "std", "front_by_mean"} <= set(robust.columns)


def test_an_optuna_database_another_driver_is_writing_is_not_taken_for_a_broken_file(tmp_path, monkeypatch):
    """An immutable read takes no lock, so a page another driver is writing can look malformed to it (seen
    about once in 20,000 checks during a live search); the locking read decides. A real non-database still fails."""
    import sqlite3

    from autokd import results
    from autokd.errors import StorageError

    url = f"sqlite:///{tmp_path / 'live.db'}"
    optuna.create_study(study_name="live", storage=url)
    results.use_write_ahead_log(url)
    connect = sqlite3.connect

    def torn_while_immutable(database, *args, **kwargs):
        if "immutable=1" in str(database):
            raise sqlite3.DatabaseError("database disk image is malformed")
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", torn_while_immutable)
    assert results.holds_optuna_tables(url, "study.yaml: storage")  # an Optuna database: accepted
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 10)
    with pytest.raises(StorageError, match=r"^study.yaml: storage: cannot open storage .*junk.db': not an SQLite "
                                           r"database \(file is not a database\)$"):
        results.holds_optuna_tables(f"sqlite:///{tmp_path / 'junk.db'}", "study.yaml: storage")
    assert [p.name for p in tmp_path.glob("junk.db*")] == ["junk.db"]  # the refused file got no -wal/-shm beside it


def _open_new_database(url: str) -> str:
    from autokd.results import open_storage

    try:
        open_storage(url)
        return "opened"
    except Exception as error:  # noqa: BLE001 - the assertion shows it
        return str(error)


def test_processes_opening_one_new_database_at_once_all_get_it(tmp_path):
    """Drivers started together on a new shared database (or a reader polling it as a driver starts) all create
    Optuna's schema; the losers see "table ... already exists" or a duplicate key. Reproduced with plain Optuna:
    10 failures in 5 rounds of 6 processes."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        for round_ in range(5):
            url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
            assert pool.map(_open_new_database, [url] * 6) == ["opened"] * 6


@pytest.mark.parametrize("message", ["(sqlite3.OperationalError) table studies already exists",
                                     '(psycopg2.errors.DuplicateTable) relation "alembic_version" already exists'])
def test_a_lost_schema_race_is_retried_and_other_database_errors_are_one_line(tmp_path, monkeypatch, message):
    import sqlalchemy.exc

    from autokd import results
    from autokd.errors import StorageError

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception(message))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(results, "SCHEMA_RACE_RETRIES", 1)
    url = f"sqlite:///{tmp_path / 'race.db'}"
    assert isinstance(results.open_storage(url), real) and len(calls) == 2

    def locked(url, **kwargs):
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", locked)
    with pytest.raises(StorageError, match=r"^--storage: cannot open storage .*: \(builtins.Exception\) database "
                                           r"is locked$"):
        results.open_storage(url)
