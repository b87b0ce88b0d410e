"""The search end to end, through the CLI as a user types it: real digits, real Ray, real SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest

from conftest import AUTOKD, REPO, run_cli, tiny_study

States = optuna.trial.TrialState


def load(path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path.parent / (name + '.db')}")


@pytest.mark.slow
def test_search_writes_a_real_optuna_study(study_file):
    completed = run_cli("search", study_file, "--no-report", check=True)
    assert "Pareto front" in completed.stdout

    study = load(study_file)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert sum(t.state == States.COMPLETE for t in trials) == 6
    assert not [t for t in trials if t.state == States.RUNNING]
    complete = [t for t in trials if t.state == States.COMPLETE]
    names = set().union(*(t.params for t in complete))
    assert {"student.family", "distill.kind", "distill.temperature", "distill.teachers"} <= names
    for trial in complete:
        assert 0.0 <= trial.values[0] <= 1.0 and trial.values[1] == trial.user_attrs["params"]
        assert {"config", "seed", "bytes_fp32", "macs", "train_seconds", "node"} <= set(trial.user_attrs)
        assert len(trial.user_attrs["val_accuracy_curve"]) == trial.user_attrs["config"]["schedule"]["epochs"]


@pytest.mark.slow
def test_failing_trials_end_failed_with_reason_and_the_search_goes_on(study_file):
    faults = {"AUTOKD_INJECT_FAULT": "1:nan,2:raise,3:oom"}
    run_cli("search", study_file, "--no-report", env=faults, check=True)

    trials = load(study_file).get_trials()
    reasons = {t.number: t.user_attrs.get("failure_reason", "") for t in trials if t.state == States.FAIL}
    assert "NonFiniteLossError" in reasons[1] and "non-finite loss" in reasons[1]
    assert "injected fault" in reasons[2]
    assert "out of memory" in reasons[3]
    assert sum(t.state == States.COMPLETE for t in trials) == 3  # the budget counts failed trials as done
    assert not [t for t in trials if t.state == States.RUNNING]


@pytest.mark.slow
def test_infeasible_configs_are_never_trained(tmp_path):
    study_file = tiny_study(tmp_path, trials=4, constraints=["params <= 900"])
    run_cli("search", study_file, "--no-report", check=True)
    trials = load(study_file).get_trials()
    infeasible = [t for t in trials if t.state == States.PRUNED]
    assert infeasible, "the space has students far above 900 params; some proposals must be infeasible"
    for trial in infeasible:
        assert trial.user_attrs["pruned_reason"].startswith("infeasible: params")
        assert "train_seconds" not in trial.user_attrs  # never reached a worker
    assert all(t.user_attrs["params"] <= 900 for t in trials if t.state == States.COMPLETE)


@pytest.mark.slow
def test_existing_study_needs_resume_and_nothing_is_written(study_file):
    run_cli("search", study_file, "--no-report", check=True)
    storage = study_file.parent / "tiny.db"
    before = storage.read_bytes()
    again = run_cli("search", study_file, "--no-report")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0, again.stderr
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    assert storage.read_bytes() == before


def _wait_for_complete(storage_path, count, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if storage_path.exists():
            try:
                study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{storage_path}")
                done = [t for t in study.get_trials(deepcopy=False) if t.state == States.COMPLETE]
                if len(done) >= count:
                    return {t.number: t.values for t in done}
            except Exception:  # the driver may be creating the schema right now
                pass
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} trials completed in {timeout} s")


@pytest.mark.slow
def test_sigkill_then_resume_loses_nothing_and_trains_nothing_twice(tmp_path):
    study_file = tiny_study(tmp_path, trials=12, epochs=6)
    driver = subprocess.Popen([*AUTOKD, "search", str(study_file), "--no-report", "--no-progress"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        finished_before = _wait_for_complete(tmp_path / "tiny.db", 3, timeout=240)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        driver.wait()

    run_cli("search", study_file, "--resume", "--no-report", check=True)
    trials = load(study_file).get_trials()
    complete = {t.number: t.values for t in trials if t.state == States.COMPLETE}
    lost = [n for n, values in finished_before.items() if complete.get(n) != values]
    running = [t.number for t in trials if t.state == States.RUNNING]
    trained = [tuple(sorted(t.params.items())) for t in trials
               if t.state in (States.COMPLETE, States.FAIL) and "train_seconds" in t.user_attrs]
    duplicates = len(trained) - len(set(trained))
    print(f"lost {len(lost)}, retrained {duplicates}, running {len(running)}")
    assert (len(lost), duplicates, len(running)) == (0, 0, 0)
    done = sum(t.state == States.COMPLETE for t in trials)
    assert done == 12, f"budget of 12 not completed: {done}"


@pytest.mark.slow
def test_search_runs_on_a_two_node_cluster(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    import autokd

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        # Trials of a few seconds: the two concurrent trials overlap, so both nodes get an actor.
        study_file = tiny_study(tmp_path, trials=6, epochs=10)
        result = autokd.search(study_file, address=cluster.address, progress=False, log=lambda message: None)
        nodes = {t.user_attrs["node"] for t in result.study.get_trials() if t.state == States.COMPLETE}
        assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s)"
    finally:
        ray.shutdown()
        cluster.shutdown()
