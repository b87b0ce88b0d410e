"""Faults that really happen to long searches, caused for real.

- The driver is killed with SIGKILL (its whole process group: the driver and the Ray processes
  it started) at five moments, resuming in between; at the end 0 finished trials are lost,
  0 are trained twice and 0 are left RUNNING. On the default SQLite file and on a journal file.
- A trial's worker process dies mid-trial; a node leaves a two-node cluster mid-search;
  trials raise, go non-finite, run out of memory or fail to build. Each ends FAILED with its
  reason and the search completes its budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest

from autokd.config_files import load_study
from autokd.results import INTERRUPTED
from conftest import AUTOKD, load_tiny, run_cli, tiny_study, trials_or_empty, with_faults

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # kills timed against a running search
States = optuna.trial.TrialState
BUDGET = 8


class Driver:
    """`autokd search` in its own process group, its output read line by line."""

    def __init__(self, study_file: Path, *args: str):
        self.lines: list[str] = []
        self.process = subprocess.Popen([*AUTOKD, "search", str(study_file), "--no-progress", *args],
                                        cwd=study_file.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def wait(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill_when(self, moment: Callable[[Driver], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not moment(self):
            if self.process.poll() is not None:
                raise AssertionError("the driver exited before the moment to kill it:\n" + "".join(self.lines[-40:]))
            if time.monotonic() > deadline:
                raise AssertionError(f"moment not reached in {timeout} s:\n" + "".join(self.lines[-40:]))
            time.sleep(0.05)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _printed(text: str) -> Callable[[Driver], bool]:
    return lambda driver: any(text in line for line in driver.lines)


def _finished_at_least(count: int, folder: Path, also_running: bool = False) -> Callable[[Driver], bool]:
    def moment(_driver: Driver) -> bool:
        trials = trials_or_empty(folder)
        finished = sum(t.state in (States.COMPLETE, States.FAIL, States.PRUNED) for t in trials)
        running = any(t.state == States.RUNNING for t in trials)
        return finished >= count and (running or not also_running or finished >= BUDGET)
    return moment


# The default SQLite file, and the journal file README recommends for many short trials.
@pytest.mark.parametrize("storage", [None, "tiny.log"], ids=["sqlite", "journal"])
def test_sigkill_at_five_moments_then_resume_loses_nothing_and_trains_nothing_twice(tmp_path, storage):
    slow_teacher = {"name": "t-cnn", "arch": {"family": "cnn", "stages": 1, "channels": 8, "head_width": 0},
                    "schedule": {"epochs": 40}}
    study_file = tiny_study(tmp_path, trials=BUDGET, epochs=8, teachers=[
        {"name": "t-mlp", "arch": {"family": "mlp", "depth": 1, "width": 48}, "schedule": {"epochs": 4}},
        slow_teacher], **({"storage": storage} if storage else {}))
    moments = [
        ("teacher caching", _printed("teacher t-mlp: trained")),  # t-cnn (40 epochs) starts now
        ("first trial", _finished_at_least(0, tmp_path, also_running=True)),
        ("mid-search", _finished_at_least(BUDGET // 2, tmp_path)),
        ("last trial", _finished_at_least(BUDGET - 1, tmp_path)),
        ("report", _printed("test evaluation")),
    ]
    finished_before_kills: dict[int, tuple] = {}
    for index, (name, moment) in enumerate(moments):
        driver = Driver(study_file, *(["--resume"] if index else []))
        driver.kill_when(moment)
        for trial in trials_or_empty(tmp_path):
            if trial.state == States.COMPLETE:
                finished_before_kills.setdefault(trial.number, tuple(trial.values))
        if name == "teacher caching":  # the kill landed while t-cnn trained: its cache entry is not there
            assert not list((tmp_path / "cache" / "teachers").glob("t-cnn-*/meta.json"))

    final = Driver(study_file, "--resume")
    assert final.wait() == 0, "".join(final.lines[-40:])
    trials = load_tiny(tmp_path).get_trials()
    complete = {t.number: tuple(t.values) for t in trials if t.state == States.COMPLETE}
    lost = [n for n, values in finished_before_kills.items() if complete.get(n) != values]
    # Trained and recorded as finished. A kill in the few ms while a finished trial's attributes are
    # written leaves it RUNNING: resumed as interrupted and trained again, as it must be (not durable).
    trained = [tuple(sorted(t.params.items())) for t in trials
               if t.state in (States.COMPLETE, States.FAIL) and "train_seconds" in t.user_attrs
               and t.user_attrs.get("failure_reason") != INTERRUPTED]
    retrained = len(trained) - len(set(trained))
    running = [t.number for t in trials if t.state in (States.RUNNING, States.WAITING)]
    print(f"lost {len(lost)}, retrained {retrained}, running {len(running)}")
    assert (len(lost), retrained, len(running)) == (0, 0, 0)
    assert len(complete) == BUDGET, f"the budget of {BUDGET} was not completed: {len(complete)}"
    assert finished_before_kills, "no trial finished before the kills: the test exercised nothing"
    assert (tmp_path / "reports" / "tiny" / "index.html").is_file()  # the drivers ran in the study's folder
    assert (tmp_path / "tiny.log").is_file() == bool(storage)  # the study was where the test meant it to be


def test_sigkill_in_the_middle_of_level_2_then_resume_loses_nothing_and_trains_nothing_twice(tmp_path):
    """A two-level search killed while a level-2 trial trains (its paired seeds packed into one batched
    model: MLP students) and another has finished: the resume keeps what finished, trains it not again,
    re-runs the cut trial from its start and completes the budget with every baseline once."""
    from autokd.levels import CE, VANILLA_KD

    settings = {"mode": "two_level", "level1_share": 0.5, "architectures": 2, "seeds": 2, "level2_epochs": 6,
                "confirm": False}
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=8, epochs=2, search=settings)
    assert load_study(study_file).search.pack_seeds  # on by default: the cut trial was a packed one

    def mid_level2(_driver: Driver) -> bool:
        level2 = [t for t in trials_or_empty(tmp_path) if t.user_attrs.get("level") == 2]
        return any(t.state == States.COMPLETE for t in level2) and any(t.state == States.RUNNING for t in level2)

    Driver(study_file, "--no-report").kill_when(mid_level2)
    finished_before = {t.number: tuple(t.values) for t in trials_or_empty(tmp_path) if t.state == States.COMPLETE}
    final = Driver(study_file, "--resume", "--no-report")
    assert final.wait() == 0, "".join(final.lines[-40:])
    trials = load_tiny(tmp_path).get_trials()
    complete = [t for t in trials if t.state == States.COMPLETE]
    assert {n: v for n, v in ((t.number, tuple(t.values)) for t in complete) if n in finished_before} == \
        finished_before  # nothing lost
    trained = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in complete]
    assert len(trained) == len(set(trained)), "a config was trained twice"
    cut = [t for t in trials if t.state == States.FAIL]
    assert cut and {(t.user_attrs.get("failure_reason"), t.user_attrs.get("level")) for t in cut} == \
        {(INTERRUPTED, 2)}  # the one or two level-2 trials running at the kill
    assert len(complete) == 8 and not [t for t in trials if t.state in (States.RUNNING, States.WAITING)]
    for arch in {t.user_attrs["arch"] for t in complete if t.user_attrs.get("level") == 2}:
        roles = [t.user_attrs["role"] for t in complete if t.user_attrs.get("arch") == arch]
        assert (roles.count(CE), roles.count(VANILLA_KD)) == (1, 1), roles


def test_a_worker_process_dying_mid_trial_fails_that_trial_with_a_reason(tmp_path):
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=4, epochs=4)
    run_cli("search", study_file, "--no-report", "--no-progress", env=with_faults("1:exit"), check=True)
    trials = load_tiny(tmp_path).get_trials()
    failed = {t.number: t.user_attrs.get("failure_reason", "") for t in trials if t.state == States.FAIL}
    assert list(failed) == [1] and "worker process died" in failed[1]
    assert sum(t.state == States.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state == States.RUNNING]


def test_trial_faults_end_failed_with_readable_reasons_and_the_report_counts_them(tmp_path):
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=6, epochs=2)
    faults = with_faults("0:build,1:nan,2:raise,3:oom")
    run_cli("search", study_file, "--no-progress", "--no-report", env=faults, check=True)
    trials = load_tiny(tmp_path).get_trials()
    reasons = {t.number: t.user_attrs.get("failure_reason", "") for t in trials if t.state == States.FAIL}
    assert sorted(reasons) == [0, 1, 2, 3]
    assert reasons[0].startswith("ConfigError") and "width" in reasons[0]
    assert "NonFiniteLossError" in reasons[1] and "non-finite loss" in reasons[1]
    assert "injected fault" in reasons[2]
    assert "OutOfMemoryError" in reasons[3] and "out of memory" in reasons[3]
    assert sum(t.state == States.COMPLETE for t in trials) == 2  # failed trials count against the budget

    run_cli("report", study_file, "--no-baselines", "--out", tmp_path / "report", check=True)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["trials"]["failed"] == 4, summary["trials"]


def test_search_completes_when_a_node_leaves_the_cluster(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    import autokd

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=10, epochs=10)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = autokd.search(study_file, address=cluster.address, progress=False,
                                              log=lambda message: None)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = error

    search_thread = threading.Thread(target=run, daemon=True)
    try:
        search_thread.start()
        deadline = time.monotonic() + 300
        while not any(t.user_attrs.get("node_id") == worker.node_id for t in trials_or_empty(tmp_path)
                      if t.state == States.COMPLETE):
            assert time.monotonic() < deadline and search_thread.is_alive(), \
                f"no trial finished on the worker node; search outcome: {outcome!r}"
            time.sleep(0.2)
        removed_at = time.time()
        cluster.remove_node(worker)
        search_thread.join(timeout=400)
        assert not search_thread.is_alive(), "the search hung after the node left"
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "error" not in outcome, repr(outcome.get("error"))
    trials = load_tiny(tmp_path).get_trials()
    assert not [t for t in trials if t.state == States.RUNNING]
    finished = [t for t in trials if t.state in (States.COMPLETE, States.FAIL)]
    assert len(finished) == 10, [t.state.name for t in trials]
    after = [t for t in trials if t.state == States.COMPLETE and t.datetime_start.timestamp() > removed_at]
    assert after and all(t.user_attrs["node_id"] != worker.node_id for t in after)
