"""The study in a real PostgreSQL server: a search, two drivers adding to one study at once,
and a report read while a search writes. The server is started by the `postgres_server` fixture."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pandas as pd
import pytest

from conftest import AUTOKD, REPO, run_cli, tiny_study

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
States = optuna.trial.TrialState


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _start_search(study_file, url: str) -> subprocess.Popen:
    return subprocess.Popen([*AUTOKD, "search", str(study_file), "--storage", url, "--resume", "--no-report",
                             "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_complete(url: str, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sum(t.state == States.COMPLETE for t in _trials(url)) >= count:
                return
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} complete trials after {timeout} s")


def test_search_writes_the_study_to_postgres_and_show_reads_it_by_name(tmp_path, postgres_url, ray_head):
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=4, epochs=2)
    run_cli("search", study_file, "--storage", postgres_url, "--no-report", "--no-progress", env=ray_head,
            check=True)

    trials = _trials(postgres_url)
    assert sum(t.state == States.COMPLETE for t in trials) == 4
    assert not (tmp_path / "tiny.db").exists(), "the default SQLite file must not be used with --storage"
    shown = run_cli("show", "tiny", "--storage", postgres_url, check=True)
    assert "Pareto front" in shown.stdout


def test_record_running_upserts_attrs_and_replaces_steps_on_postgres(postgres_url):
    """`study_store.record_running`'s PostgreSQL statements (SQLite's are tested in test_study_store)."""
    from autokd.results import open_storage
    from autokd.study_store import record_running

    study = optuna.create_study(storage=open_storage(postgres_url), directions=["maximize", "minimize"])
    trial = study.ask()
    record_running(study, trial, {"config": {"width": 8}, "seed": 3}, [0.25, 0.5, 0.75])
    record_running(study, trial, {"seed": 4, "node": "n"}, [0.3])
    stored = study.get_trials()[0]
    assert stored.user_attrs == {"config": {"width": 8}, "seed": 4, "node": "n"}
    assert stored.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.75}
    study.tell(trial, [0.9, 100])
    with pytest.raises(RuntimeError):  # a finished trial is refused, as by Optuna's own calls
        record_running(study, trial, {"late": 1})


def test_looking_for_a_study_in_a_new_database_makes_no_tables(tmp_path, postgres_url):
    """The resume checks run before the data loads: finding no study must not leave Optuna's tables behind
    (a search refused later, for its data, wrote nothing)."""
    import sqlalchemy

    from autokd.config_files import load_study
    from autokd.study_store import existing_study

    assert existing_study(load_study(tiny_study(tmp_path)), postgres_url) is None
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.serial  # both drivers must be training at once: beside another test, one may start too late
def test_two_drivers_add_to_one_study_at_the_same_time(tmp_path, postgres_url):
    budget = 4
    files = []
    for seed in (0, 1):
        folder = tmp_path / f"driver{seed}"
        folder.mkdir()
        files.append(tiny_study(folder, cached_teachers=True, trials=budget, epochs=2,
                                sampler={"name": "tpe", "seed": seed}))
    drivers = [_start_search(path, postgres_url) for path in files]
    outputs = [driver.communicate(timeout=400)[0] for driver in drivers]
    for output in outputs:
        print(output[-3000:])
    assert [d.returncode for d in drivers] == [0, 0]

    trials = _trials(postgres_url)
    assert not [t.number for t in trials if t.state in (States.RUNNING, States.WAITING)]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    by_driver = {}
    for trial in trials:
        if trial.state == States.COMPLETE:
            by_driver.setdefault(trial.user_attrs["driver"], []).append(trial.number)
    assert len(by_driver) == 2, f"complete trials came from {sorted(by_driver)}; expected both drivers"
    # Each driver counts the study's finished trials when it starts: together they ran at least the budget.
    assert sum(map(len, by_driver.values())) >= budget
    assert all(t.values is not None for t in trials if t.state == States.COMPLETE)


def test_report_reads_the_study_while_a_search_writes_it(tmp_path, postgres_url):
    # A budget far beyond what runs during the test: the search is still writing when the report reads.
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=500, epochs=8)
    driver = _start_search(study_file, postgres_url)
    try:
        _wait_for_complete(postgres_url, 2)
        report = run_cli("report", "tiny", "--storage", postgres_url, "--no-baselines", "--out", tmp_path / "report",
                         check=True)
        still_running = driver.poll() is None
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray processes
        driver.communicate(timeout=60)
    assert still_running, "the search stopped before the report was built: the test did not overlap them"
    assert "report:" in report.stdout
    front = pd.read_csv(tmp_path / "report" / "pareto.csv")
    assert len(front) >= 1, "the report must show the front as it was when read"
    complete = {t.number for t in _trials(postgres_url) if t.state == States.COMPLETE}
    assert set(front["trial"]) <= complete
