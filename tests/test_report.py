"""The report: built from a synthetic study written with search.py's conventions (no training)."""

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autokd import report
from autokd.report import build_report
from autokd.results import hypervolume_reference
from autokd.spec import StudySpec

HOSTILE = "<script>alert(1)</script>"
FILES = ("index.html", "pareto.png", "pareto.svg", "hypervolume.png", "importance.png", "effects.png",
         "trials.csv", "pareto.csv", "summary.json")
DISTRIBUTIONS = {
    "student.width": IntDistribution(4, 256, log=True),
    "student.activation": CategoricalDistribution(["relu", HOSTILE]),
    "distill.kind": CategoricalDistribution(["kl", "mse"]),
    "distill.temperature": FloatDistribution(1.0, 16.0, log=True),
    "distill.w_kd": FloatDistribution(0.05, 1.0),
}
SPACE = {"params": {
    "student.width": {"type": "int", "low": 4, "high": 256, "log": True},
    "student.activation": {"type": "categorical", "choices": ["relu", HOSTILE]},
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 16.0, "log": True, "when": {"distill.kind": ["kl"]}},
    "distill.w_kd": {"type": "float", "low": 0.05, "high": 1.0},
}}


def study_spec(tmp_path: Path, name: str = "synthetic") -> StudySpec:
    return StudySpec.model_validate({
        "name": name,
        "data": {"name": "digits", "val_fraction": 0.15},
        "teachers": [{"name": "tiny", "arch": {"family": "mlp", "depth": 1, "width": 16},
                      "schedule": {"epochs": 1, "batch_size": 256}}],
        "student": {"family": "mlp", "depth": 1, "width": 8},
        "schedule": {"epochs": 2},
        "search_space": SPACE,
        "constraints": ["params <= 50000"],
        "cache_dir": str(tmp_path / "cache"),
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
    })


def synthetic_trials(spec: StudySpec, n_complete: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials (with exact ties, so the front has duplicates), plus FAIL and PRUNED ones."""
    rng = np.random.default_rng(seed)
    base = spec.train_config().model_dump(mode="json")
    trials = []
    for number in range(n_complete):
        params = {"student.width": int(rng.integers(4, 257)), "student.activation": ["relu", HOSTILE][number % 2],
                  "distill.kind": ["kl", "mse"][number % 3 == 0], "distill.w_kd": float(rng.uniform(0.05, 1.0))}
        if params["distill.kind"] == "kl":
            params["distill.temperature"] = float(rng.uniform(1.0, 16.0))
        size = 64 * params["student.width"] + params["student.width"] + 10 * params["student.width"] + 10
        accuracy = round(float(np.clip(0.55 + 0.1 * np.log10(size) + rng.normal(0, 0.04), 0, 1)), 4)
        if number % 7 == 6:  # an exact copy of the previous trial's objectives: a tie on the front or off it
            accuracy, size = trials[-1].values
        config = {**base, "seed": number,
                  "student": {**base["student"], "width": params["student.width"],
                              "activation": params["student.activation"]},
                  "distill": {**base["distill"], "kind": params["distill.kind"], "w_kd": params["distill.w_kd"],
                              "temperature": params.get("distill.temperature", 4.0)}}
        trials.append(optuna.trial.create_trial(
            params=params, distributions={k: DISTRIBUTIONS[k] for k in params}, values=[accuracy, float(size)],
            user_attrs={"config": config, "seed": number, "params": int(size), "bytes_fp32": 4 * int(size),
                        "bytes_fp16": 2 * int(size), "macs": int(size) - 10, "train_seconds": 1.5,
                        "epochs_trained": 2, "val_accuracy_curve": [accuracy - 0.1, accuracy], "node": "laptop"}))
    trials += [
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                  user_attrs={"failure_reason": "RuntimeError: <b>boom</b>"}),
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                  user_attrs={"failure_reason": "RuntimeError: <b>boom</b>"}),
        optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                  user_attrs={"pruned_reason": "infeasible: params 60000 > 50000"}),
        optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                  user_attrs={"pruned_reason": "early-stopped at epoch 1"}),
    ]
    return trials


def write_study(tmp_path: Path, n_complete: int = 16, study_name: str | None = None) -> tuple[Path, StudySpec]:
    """A study YAML plus its SQLite storage, as `autokd search` would leave them."""
    spec = study_spec(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    study = optuna.create_study(study_name=study_name or spec.name, storage=spec.storage,
                                directions=spec.directions)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("study_spec", spec.model_dump(mode="json"))
    study.set_user_attr("space", SPACE["params"])
    study.add_trials(synthetic_trials(spec, n_complete))
    return path, spec


def non_dominated(rows: pd.DataFrame) -> set[int]:
    """Brute force: trials no other complete trial beats on both accuracy (max) and params (min)."""
    points = list(zip(rows["trial"], rows["val_accuracy"], rows["params"]))
    return {t for t, acc, size in points
            if not any(a >= acc and s <= size and (a > acc or s < size) for _, a, s in points)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    path, spec = write_study(tmp_path)
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, baselines=False, log=lambda m: None)
    return folder, spec


def test_all_files_written(built):
    folder, _ = built
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert all((folder / name).stat().st_size > 0 for name in FILES)
    assert not list(folder.parent.glob(".out.*")), "the staging folder must be gone"


def test_pareto_csv_is_exactly_the_non_dominated_complete_rows(built):
    folder, _ = built
    trials = pd.read_csv(folder / "trials.csv")
    pareto = pd.read_csv(folder / "pareto.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert set(pareto["trial"]) == non_dominated(complete)
    assert set(pareto["state"]) == {"COMPLETE"}
    assert not set(pareto["trial"]) & set(trials.loc[trials["state"] != "COMPLETE", "trial"])
    # Same rows, cell for cell as written in trials.csv; only the test columns are added.
    trials_text = pd.read_csv(folder / "trials.csv", dtype=str, keep_default_na=False).set_index("trial")
    pareto_text = pd.read_csv(folder / "pareto.csv", dtype=str, keep_default_na=False).set_index("trial")
    pd.testing.assert_frame_equal(pareto_text[trials_text.columns], trials_text.loc[pareto_text.index])
    assert {"test_accuracy", "gain_vs_ce", "gain_vs_vanilla_kd"} <= set(pareto.columns) - set(trials.columns)
    assert pareto["params"].is_monotonic_increasing


def test_summary_json_has_counts_hypervolume_and_reference(built):
    folder, spec = built
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials"]["complete"] == 16
    assert (summary["trials"]["failed"], summary["trials"]["infeasible"], summary["trials"]["stopped"]) == (2, 1, 1)
    assert {"state": "FAIL", "reason": "RuntimeError: <b>boom</b>", "count": 2} in summary["failure_reasons"]
    assert summary["hypervolume_reference"] == pytest.approx(hypervolume_reference(spec))
    assert summary["hypervolume_reference"][1] == pytest.approx(np.log10(50000))  # the constraint bounds it
    assert summary["hypervolume"] > 0
    assert summary["knee_trial"] in {row["trial"] for row in summary["front"]}
    assert [t["name"] for t in summary["teachers"]] == ["tiny"]
    assert set(summary["importance"]) == {"val_accuracy", "params"}
    assert set(summary["versions"]) >= {"autokd", "torch", "optuna", "ray"}


def test_hypervolume_curve_ends_at_the_study_hypervolume(built, tmp_path):
    folder, spec = built
    trials = pd.read_csv(folder / "trials.csv")
    numbers, curve = report._hypervolume_curve(trials, spec)
    assert list(numbers) == sorted(trials.loc[trials["state"] == "COMPLETE", "trial"])
    assert np.all(np.diff(curve) >= 0)
    assert curve[-1] == pytest.approx(json.loads((folder / "summary.json").read_text())["hypervolume"])


def test_user_strings_are_escaped(tmp_path):
    _, spec = write_study(tmp_path, n_complete=8, study_name=f"evil{HOSTILE}")
    folder = build_report(f"evil{HOSTILE}", storage=spec.storage, out=tmp_path / "out", evaluate_test=False,
                          baselines=False, log=lambda m: None)
    page = (folder / "index.html").read_text()
    assert "<script" not in page
    assert f"evil{HOSTILE}".replace("<", "&lt;").replace(">", "&gt;") in page  # the study name, as text
    assert "mlp depth=1 width=" in page and "activation=&lt;script&gt;" in page  # a parameter value
    assert "RuntimeError: &lt;b&gt;boom&lt;/b&gt;" in page  # a failure reason
    assert "<b>" not in page
    assert 'href="http' not in page and 'src="http' not in page  # nothing external


def test_front_table_has_one_row_per_front_trial_with_export_commands(built):
    folder, _ = built
    page = (folder / "index.html").read_text()
    pareto = pd.read_csv(folder / "pareto.csv")
    for trial in pareto["trial"]:
        assert f"autokd export {folder.parent / 'study.yaml'} --trial {trial} -o trial-{trial}.yaml" in page
    assert page.count('<img src="data:image/png;base64,') == 4  # pareto, hypervolume, importance, effects


def test_empty_study_gives_a_valid_page(tmp_path):
    spec = study_spec(tmp_path)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, directions=spec.directions)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("study_spec", spec.model_dump(mode="json"))
    folder = build_report(spec.name, storage=spec.storage, out=tmp_path / "out", log=lambda m: None)
    page = (folder / "index.html").read_text()
    assert "No complete trials yet" in page and page.rstrip().endswith("</html>")
    assert len(pd.read_csv(folder / "pareto.csv")) == 0
    assert json.loads((folder / "summary.json").read_text())["front"] == []


def test_report_never_writes_to_the_storage(tmp_path):
    path, spec = write_study(tmp_path, n_complete=6)
    database = Path(spec.storage.removeprefix("sqlite:///"))
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    build_report(str(path), out=tmp_path / "out", evaluate_test=False, log=lambda m: None)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_a_crash_leaves_the_previous_report_untouched(tmp_path, monkeypatch):
    path, _ = write_study(tmp_path, n_complete=6)
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, log=lambda m: None)
    before = (folder / "index.html").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "_plot_effects", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(str(path), out=folder, evaluate_test=False, log=lambda m: None)
    assert (folder / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


CHROMIUM = "/usr/bin/chromium"


def chromium(*flags: str, page: Path, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", *flags, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_page_renders_in_headless_chromium(built, tmp_path):
    import matplotlib.image

    folder, _ = built
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,2000", page=folder / "index.html",
             profile=tmp_path / "profile-shot")
    dom = chromium("--dump-dom", page=folder / "index.html", profile=tmp_path / "profile-dom").stdout
    front_size = len(pd.read_csv(folder / "pareto.csv"))
    assert dom.count("autokd export") == front_size
    assert '<img src="data:image/png;base64,' in dom
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 1000 and pixels[..., :3].std() > 0.05  # not blank, not one colour
