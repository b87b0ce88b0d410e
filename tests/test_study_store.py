"""The study's storage side: samplers that survive Tune's pickling, heartbeats that end with their driver."""

from __future__ import annotations

import math
import pickle
import time

import optuna
import pytest

from autokd.config_files import load_study
from autokd.study_store import DRIVER, DRIVER_STALE_S, HEARTBEATS, beat, clear_beat, heartbeats, make_sampler
from conftest import tiny_study


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_survives_the_pickling_tune_does_and_still_proposes(tmp_path, name):
    # Ray Tune pickles the searcher, sampler included, with its experiment state; Optuna 5.1's
    # NSGA-II holds a thread lock that a plain pickle refuses.
    spec = load_study(tiny_study(tmp_path, sampler={"name": name, "seed": 3}))
    sampler = pickle.loads(pickle.dumps(make_sampler(spec)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)), n_trials=6)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6


def test_a_driver_removes_its_heartbeat_when_it_ends():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("heartbeats", {"other-host:1": 5.0})
    beat(study)
    assert set(heartbeats(study)) == {"other-host:1", DRIVER}
    clear_beat(study)
    assert heartbeats(study) == {"other-host:1": 5.0}


def test_derived_seeds_stay_in_the_range_the_libraries_take(tmp_path):
    from autokd.levels import paired_seeds
    from autokd.robust import robust_seeds
    from autokd.spec import SEED_MAX

    spec = load_study(tiny_study(tmp_path, seed=SEED_MAX, sampler={"name": "tpe", "seed": SEED_MAX},
                                 search={"mode": "two_level"}))
    assert all(0 <= seed <= SEED_MAX for seed in paired_seeds(spec) + robust_seeds(SEED_MAX, 3))
    make_sampler(spec, trials_so_far=10)  # numpy refuses seeds beyond 2**32 - 1


def test_a_trial_another_driver_is_asking_for_is_no_orphan():
    """ask() makes a trial RUNNING a moment before its driver marks it as its own: a second driver
    starting then (recovering orphans) must leave it alone; one of a dead driver is recovered."""
    from autokd.study_store import recover_interrupted

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(HEARTBEATS, {"other-host:1": time.time()})  # another driver, alive
    beat(study)
    asked = study.ask()
    dead = study.ask()
    dead.set_user_attr("driver", "this-host-never:1")  # another host, no heartbeat: dead
    assert recover_interrupted(study) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states[asked.number] == optuna.trial.TrialState.RUNNING
    assert states[dead.number] == optuna.trial.TrialState.FAIL


def test_a_trial_left_unmarked_by_a_driver_killed_inside_ask_is_recovered_at_once():
    """With no other live driver, nobody can be asking for a RUNNING trial without a driver: the one
    that asked died inside `ask()` (the sampler runs before the mark), and a resume a second later
    recovers it instead of leaving it RUNNING for ASKING_GRACE_S (a flaky fault test found this)."""
    from autokd.study_store import recover_interrupted

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(HEARTBEATS, {"this-host-never:1": time.time() - 3 * DRIVER_STALE_S})  # dead long ago
    beat(study)  # the resuming driver itself
    unmarked = study.ask()
    assert recover_interrupted(study) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states[unmarked.number] == optuna.trial.TrialState.FAIL
    assert [t.params for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))] == [unmarked.params]


def test_a_trial_cut_while_being_asked_is_requeued_with_all_it_was_given_and_what_it_drew():
    """Ctrl-C can land between two suggestions of `ask`: the retry of an enqueued trial (a baseline)
    gets all its fixed parameters back, not only those suggested so far, and keeps what was drawn."""
    from autokd.study_store import recover_interrupted

    study = optuna.create_study(directions=["maximize", "minimize"])
    beat(study)
    study.enqueue_trial({"a": 0.25, "b": 3}, user_attrs={"role": "ce_only"})
    fixed = study.ask()
    fixed.suggest_float("a", 0.0, 1.0)  # cut before "b"
    drawn = study.ask()
    drawn_a = drawn.suggest_float("a", 0.0, 1.0)  # a sampler's trial, cut before "b"
    for trial in (fixed, drawn):
        trial.set_user_attr("driver", DRIVER)
    assert recover_interrupted(study, own_only=True) == 2
    retries = sorted(study.get_trials(states=(optuna.trial.TrialState.WAITING,)),
                     key=lambda t: t.user_attrs["retry_of"])
    assert [t.system_attrs["fixed_params"] for t in retries] == [{"a": 0.25, "b": 3}, {"a": drawn_a}]
    assert [t.user_attrs for t in retries] == [{"role": "ce_only", "retry_of": fixed.number},
                                               {"retry_of": drawn.number}]


@pytest.mark.parametrize("storage", ["sqlite", "journal", "memory"])
def test_record_running_writes_attrs_and_curve_at_once_and_all_or_nothing_in_sql(tmp_path, storage):
    from autokd.results import open_storage
    from autokd.study_store import record_running

    url = {"sqlite": f"sqlite:///{tmp_path / 's.db'}", "journal": str(tmp_path / "s.log"), "memory": None}[storage]
    study = optuna.create_study(storage=open_storage(url) if url else None, directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("driver", "me")
    record_running(study, trial, {"config": {"student": {"width": 8}}, "seed": 3, "params": 1234}, [0.5, 0.75])
    stored = study.get_trials()[0]
    assert stored.user_attrs == {"driver": "me", "config": {"student": {"width": 8}}, "seed": 3, "params": 1234}
    assert trial.user_attrs == stored.user_attrs  # the trial's own copy, as Trial.set_user_attr keeps it
    assert stored.intermediate_values == {1: 0.5, 2: 0.75}
    record_running(study, trial, {"seed": 4}, [])  # overwrites, like set_user_attr
    assert study.get_trials()[0].user_attrs["seed"] == 4
    if storage == "sqlite":  # one transaction: a value that cannot be stored leaves the others unwritten too
        with pytest.raises(TypeError):
            record_running(study, trial, {"train_seconds": 1.5, "bad": object()}, [0.9])
        stored = study.get_trials()[0]
        assert "train_seconds" not in stored.user_attrs and stored.intermediate_values == {1: 0.5, 2: 0.75}
    study.tell(trial, [0.9, 1234])
    with pytest.raises(RuntimeError):  # a finished trial is refused, as by Optuna's own calls
        record_running(study, trial, {"late": 1})


def test_record_running_writes_a_trials_attrs_and_curve_in_a_few_statements_on_sqlite(tmp_path):
    """A trial's attrs and curve: the trial checked once, one upsert of the attrs, the curve's steps
    replaced; Optuna's own calls take two or three statements each (`benchmarks/storage_writes.py`)."""
    from sqlalchemy import event

    from autokd.results import open_storage
    from autokd.study_store import record_running

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    statements = []
    event.listen(storage.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    attrs = {f"attr{i}": {"value": i} for i in range(8)}
    record_running(study, trial, attrs, [0.1 * step for step in range(15)])
    assert len(statements) <= 4, statements
    record_running(study, trial, {"attr3": "again"}, [0.5, float("nan")])  # overwrites, keeps steps 3-15
    stored = study.get_trials()[0]
    assert stored.user_attrs == {**attrs, "attr3": "again"}
    assert stored.intermediate_values[1] == 0.5 and math.isnan(stored.intermediate_values[2])
    assert [stored.intermediate_values[step] for step in range(3, 16)] == [0.1 * step for step in range(2, 15)]


def test_looking_for_a_study_reads_the_storage_and_writes_nothing(tmp_path):
    """No file, an empty file (opening it with Optuna would make its tables), another program's database,
    an Optuna database without the study, and with it."""
    import sqlite3

    from autokd.errors import StorageError
    from autokd.study_store import existing_study

    spec = load_study(tiny_study(tmp_path))
    database = tmp_path / "tiny.db"
    url = f"sqlite:///{database}"
    assert existing_study(spec, url) is None and not database.exists()
    database.touch()
    assert existing_study(spec, url) is None and database.stat().st_size == 0
    with sqlite3.connect(database) as foreign:
        foreign.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StorageError, match=r"tiny.yaml: storage: .*tiny.db' is a database of another program "
                                           r"\(tables: invoices\)"):
        existing_study(spec, url)
    database.unlink()
    optuna.create_study(study_name="other", storage=url)
    assert existing_study(spec, url) is None
    optuna.create_study(study_name="tiny", storage=url, directions=spec.directions)
    assert existing_study(spec, url).study_name == "tiny"
