"""The search end to end, through the CLI as a user types it: real digits, real Ray, real SQLite."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import yaml

from conftest import VALID_STUDY, load_tiny, run_cli, tiny_study, with_faults, write_config

States = optuna.trial.TrialState


def load(path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path.parent / (name + '.db')}")


@pytest.mark.slow
def test_search_writes_a_real_optuna_study(study_file, ray_head):
    completed = run_cli("search", study_file, "--no-report", env=ray_head, check=True)
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
        # Optuna's own channels: the curve as intermediate values, readable by any Optuna tool.
        assert list(trial.intermediate_values.values()) == trial.user_attrs["val_accuracy_curve"]
    assert study.metric_names == ["val_accuracy", "params"]
    assert not study.user_attrs.get("heartbeats"), "a driver that ended leaves no heartbeat behind"


@pytest.mark.slow
def test_the_readme_optuna_dashboard_recipe_shows_metric_names_and_curves(study_file, ray_head):
    """`optuna-dashboard sqlite:///studies/x.db` (README): its API serves what autokd wrote."""
    import io
    import json
    import sys

    from optuna_dashboard import wsgi

    run_cli("search", study_file, "--no-report", "--no-progress", "--trials", "2", env=ray_head, check=True)
    app = wsgi(f"sqlite:///{study_file.parent / 'tiny.db'}")

    def get(path: str) -> dict:
        status = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8080", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
                   "wsgi.errors": sys.stderr}
        body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    summary = next(s for s in get("/api/studies")["study_summaries"] if s["study_name"] == "tiny")
    study = get(f"/api/studies/{summary['study_id']}")
    assert study["objective_names"] == ["val_accuracy", "params"]  # not "Objective 0"
    assert study["has_intermediate_values"]
    curves = [[point["value"] for point in trial["intermediate_values"]] for trial in study["trials"]]
    assert all(len(curve) == 2 for curve in curves), curves  # one value per epoch


@pytest.mark.slow
def test_a_study_in_a_journal_file_searches_resumes_shows_reports_and_exports(tmp_path, ray_head):
    """`storage: tiny.log`, an Optuna journal file beside the study (the driver's bookkeeping of a trial costs
    less there than in SQLite: benchmarks/storage_writes.py), through the whole CLI path."""
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=3, epochs=1, storage="tiny.log")
    run_cli("search", study_file, "--no-report", "--no-progress", env=ray_head, check=True)
    run_cli("search", study_file, "--resume", "--trials", 4, "--no-report", "--no-progress", env=ray_head,
            check=True)
    assert (tmp_path / "tiny.log").is_file() and not (tmp_path / "tiny.db").exists()
    trials = load_tiny(tmp_path).get_trials()
    assert [t.state for t in trials] == [States.COMPLETE] * 4
    assert "Pareto front" in run_cli("show", study_file, check=True).stdout
    run_cli("report", study_file, "--no-baselines", "--out", tmp_path / "report", check=True)
    assert (tmp_path / "report" / "index.html").is_file()
    run_cli("export", study_file, "--knee", "-o", tmp_path / "best.yaml", check=True)
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["student"]


@pytest.mark.slow
def test_infeasible_configs_are_never_trained(tmp_path, ray_head):
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=4, constraints=["params <= 900"])
    run_cli("search", study_file, "--no-report", env=ray_head, check=True)
    trials = load(study_file).get_trials()
    infeasible = [t for t in trials if t.state == States.PRUNED]
    assert infeasible, "the space has students far above 900 params; some proposals must be infeasible"
    for trial in infeasible:
        assert trial.user_attrs["pruned_reason"].startswith("infeasible: params")
        assert "train_seconds" not in trial.user_attrs  # never reached a worker
    assert all(t.user_attrs["params"] <= 900 for t in trials if t.state == States.COMPLETE)


@pytest.mark.slow
def test_existing_study_needs_resume_and_nothing_is_written(study_file, ray_head):
    run_cli("search", study_file, "--no-report", env=ray_head, check=True)
    storage = study_file.parent / "tiny.db"
    before = storage.read_bytes()
    again = run_cli("search", study_file, "--no-report")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0, again.stderr
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    assert storage.read_bytes() == before
    assert _refusal_and_torch(study_file) == ["StorageError", "False"]  # refused before torch and the data load


def _refusal_and_torch(study_file) -> list[str]:
    """What `autokd.search(study_file)` raises in a fresh Python, and whether torch had loaded by then."""
    probe = ("import sys\nfrom autokd.search import search\ntry:\n    search(sys.argv[1])\n"
             "except Exception as error:\n    print(type(error).__name__, 'torch' in sys.modules)\n")
    completed = subprocess.run([sys.executable, "-c", probe, str(study_file)], capture_output=True, text=True,
                               timeout=120)
    return completed.stdout.split() or [completed.stderr[-2000:]]


@pytest.mark.slow
@pytest.mark.serial  # two actors must start at once on 1-CPU nodes: beside another test, one started too late
def test_search_runs_on_a_two_node_cluster(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    import autokd

    # Trials 0 and 1 wait for each other: two actors at once, one CPU per node, so both nodes train
    # (on a loaded machine a second actor used to start only after the short trials had all finished).
    for name, value in {**with_faults("0:overlap,1:overlap"), "AUTOKD_FAULT_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        study_file = tiny_study(tmp_path, cached_teachers=True, trials=4, epochs=2)
        result = autokd.search(study_file, address=cluster.address, progress=False, log=lambda message: None)
        nodes = {t.user_attrs["node_id"] for t in result.study.get_trials() if t.state == States.COMPLETE}
        assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s)"
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_trial_is_orphaned_only_when_its_driver_is_gone():
    import os
    import socket
    import subprocess
    import sys

    from autokd.study_store import DRIVER_STALE_S, driver_alive

    here = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    assert driver_alive(f"{here}:{os.getpid()}", {})
    assert not driver_alive(f"{here}:{dead_pid}", {})
    assert not driver_alive(None, {}) and not driver_alive("", {})
    remote = "other-host:123"
    assert driver_alive(remote, {remote: 1000.0}, now=1000.0 + DRIVER_STALE_S - 1)
    assert not driver_alive(remote, {remote: 1000.0}, now=1000.0 + DRIVER_STALE_S + 1)
    assert not driver_alive(remote, {}, now=1000.0)


def test_nsga2_runs_several_generations_within_the_budget():
    from autokd.study_store import nsga2_population

    assert [nsga2_population(n) for n in (8, 30, 40, 400, 1000)] == [4, 7, 10, 50, 50]


def test_the_public_search_is_the_function_even_after_its_module_is_imported():
    import autokd.search  # noqa: F401 - binds the submodule on the package, as any `from autokd.search import` does
    import autokd

    assert callable(autokd.search) and callable(autokd.train)


def test_a_bad_space_is_refused_before_torch_loads(tmp_path):
    """The study file and the space are checked before torch, Ray and the data load: under a second, not four."""
    study = write_config(tmp_path, {**VALID_STUDY, "search_space": {"params": {
        "distill.temperature": {"type": "float", "low": 4, "high": 1}}}})
    assert _refusal_and_torch(study) == ["ConfigError", "False"]


@pytest.mark.slow
def test_a_compute_budget_stops_new_trials_and_resume_adds_none(tmp_path, ray_head):
    """budget.epochs: no trial starts once that many epochs were trained; running ones finish.

    The epochs of early-stopped trials count too (Tune does not pass a scheduler's stopping
    result to the searcher's on_trial_result: it must be counted at completion).
    """
    from autokd.results import trained_epochs

    epochs, budget, concurrency = 4, 24, 2
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=60, epochs=epochs,
                            budget={"trials": 60, "epochs": budget},
                            resources={"concurrency": concurrency},
                            early_stopping={"kind": "pareto", "grace_epochs": 1, "eta": 2})
    run_cli("search", study_file, "--no-report", "--no-progress", env=ray_head, check=True, timeout=600)
    study = load(study_file)
    trained = [t for t in study.get_trials() if t.state in (States.COMPLETE, States.FAIL)
               or t.user_attrs.get("epochs_trained")]
    spent = trained_epochs(study)
    # At least the budget; at most what the trials running when it was reached could add.
    assert budget <= spent < budget + concurrency * epochs, spent
    assert len(trained) < 60
    assert any(t.state == States.PRUNED for t in trained), "no trial was stopped: the test proves nothing"
    assert any(t.state == States.COMPLETE for t in trained)
    assert sum(len(t.user_attrs["val_accuracy_curve"]) for t in trained) == spent

    run_cli("search", study_file, "--resume", "--no-report", "--no-progress", env=ray_head, check=True,
            timeout=600)
    assert len(load(study_file).get_trials()) == len(study.get_trials())


@pytest.mark.slow
def test_robust_front_reruns_the_top_front_configs_and_the_report_ranks_them(tmp_path, ray_head):
    import json

    import pandas as pd

    from autokd.report import build_report

    study_file = tiny_study(tmp_path, cached_teachers=True, trials=6, robust={"top_k": 2, "seeds": 2})
    run_cli("search", study_file, "--no-report", "--no-progress", env=ray_head, check=True, timeout=600)
    study = load(study_file)
    reruns = {int(k.removeprefix("robust.")): v for k, v in study.user_attrs.items() if k.startswith("robust.")}
    complete = {t.number: t for t in study.get_trials() if t.state == States.COMPLETE}
    assert 1 <= len(reruns) <= 2
    for number, rerun in reruns.items():
        trial = complete[number]
        assert rerun["seeds"][0] == trial.user_attrs["seed"] and len(set(rerun["seeds"])) == 2
        assert rerun["val_accuracies"][0] == trial.values[0]      # the search's own run is the first seed
        assert rerun["mean"] == pytest.approx(sum(rerun["val_accuracies"]) / 2)

    run_cli("search", study_file, "--resume", "--no-report", "--no-progress", env=ray_head, check=True,
            timeout=600)
    assert {k: v for k, v in load(study_file).user_attrs.items() if k.startswith("robust.")} == \
        {f"robust.{n}": v for n, v in reruns.items()}              # resume re-runs nothing

    folder = build_report(study_file, out=tmp_path / "report", baselines=False, evaluate_test=False,
                          log=lambda message: None)
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(row["trial"] for row in summary["robust"]) == sorted(reruns)
    means = [row["mean"] for row in summary["robust"]]
    assert means == sorted(means, reverse=True)
    assert "Robust front" in (folder / "index.html").read_text()
    pareto = pd.read_csv(folder / "pareto.csv")
    rerun_rows = pareto[pareto["trial"].isin(reruns)]
    assert rerun_rows["robust_seeds"].eq(2).all() and rerun_rows["robust_mean"].notna().all()


@pytest.mark.slow
def test_the_driver_beats_while_trials_run_without_reporting(tmp_path, monkeypatch):
    """Without early stopping a trial reports once, at its end; the heartbeat must not wait for it
    (a trial longer than DRIVER_STALE_S would otherwise look orphaned to a second driver)."""
    import ray

    import autokd
    from autokd import searcher

    beats = []
    monkeypatch.setattr(searcher, "HEARTBEAT_EVERY_S", 0.0)
    monkeypatch.setattr(searcher, "beat", lambda study: beats.append(study))
    try:
        study_file = tiny_study(tmp_path, cached_teachers=True, trials=2, epochs=4)
        result = autokd.search(study_file, progress=False, log=lambda message: None)
    finally:
        ray.shutdown()
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [States.COMPLETE] * 2
    assert all(len(t.user_attrs["val_accuracy_curve"]) == 4 for t in trials)
    # 2 results and 2 completions could beat 4 times; Tune's controller loop beats far more often
    assert len(beats) > 20, f"{len(beats)} beats"
