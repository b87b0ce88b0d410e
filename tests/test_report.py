"""The report: built from a synthetic study written with search.py's conventions (no training)."""

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autokd import report, report_data, report_figures, report_summary
from autokd.export import choose_trial
from autokd.report import build_report
from autokd.results import front_frame, hypervolume_reference
from autokd.spec import StudySpec
from conftest import database_content

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
    numbers, curve = report_data.hypervolume_curve(trials, spec)
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
    table = re.search(r'<div class="scroll" id="front-table">(.*?)</div>', page).group(1)
    assert table.count("<tr") == len(pareto) + 1  # the header row, then one row per front trial
    commands = re.search(r'<pre class="cmd" id="export-commands">(.*?)</pre>', page, re.S).group(1)
    study = folder.parent / "study.yaml"
    assert commands.splitlines() == [f"autokd export {study} --trial {trial} -o trial-{trial}.yaml"
                                     for trial in pareto["trial"]]
    assert page.count('<img src="data:image/png;base64,') == 4  # pareto, hypervolume, importance, effects


def test_the_knee_block_gives_the_export_and_train_commands_of_the_knee(built):
    folder, _ = built
    page = (folder / "index.html").read_text()
    knee = json.loads((folder / "summary.json").read_text())["knee_trial"]
    assert f"<strong>Knee: trial {knee}</strong>" in page
    commands = re.search(r'<pre class="cmd" id="knee-commands">(.*?)</pre>', page, re.S).group(1)
    study = folder.parent / "study.yaml"
    assert commands.splitlines() == [f"autokd export {study} --trial {knee} -o trial-{knee}.yaml",
                                     f"autokd train trial-{knee}.yaml"]
    assert "at least 50% of the best val accuracy" in page  # the knee rule, stated


# ---------------------------------------------------------------------------------------------
# The knee a person would pick, and the plot that shows it (issue 13, item 11)

# The digits study of the issue: a 52-param student at 0.18 on the front; trial 13 (0.958 at 1,060) is the pick.
#   front 4 (0.18, 52), 7 (0.90, 400), 13 (0.958, 1,060), 21 (0.975, 20,000); floor 0.975 / 2 = 0.4875 drops 4.
#   On log10 params over 7, 13, 21: accuracy loss (0.975 - a) / 0.075 = 1, 0.227, 0; size (lg p - 2.602) / 1.699
#   = 0, 0.249, 1; 1 - sum: 0, 0.524, 0 -> 13. With 4 kept the knee was 7 (1 - sum 0.563 against 13's 0.472).
DIGITS_CASE = {4: (0.18, 52), 7: (0.90, 400), 13: (0.958, 1_060), 21: (0.975, 20_000),
               2: (0.12, 200), 5: (0.50, 3_000), 9: (0.93, 5_000)}  # 2, 5, 9 dominated; 2 below the band
# Two useful points that normalise to (1, 0) and (0, 1): a tie, which goes to the lower index. Export
# indexes complete trials by number (trial 0 wins); the front sorted by size would put trial 1 first.
TIE_CASE = {0: (0.90, 1_000), 1: (0.60, 10)}


def case_study(tmp_path: Path, points: dict[int, tuple[float, float]]) -> tuple[Path, StudySpec]:
    """A study whose COMPLETE trials are `points` {number: (val accuracy, params)}, numbers in order."""
    spec = study_spec(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, directions=spec.directions)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("study_spec", spec.model_dump(mode="json"))
    for number in range(max(points) + 1):
        if number in points:
            accuracy, params = points[number]
            study.add_trial(optuna.trial.create_trial(values=[accuracy, params], user_attrs={
                "params": params, "bytes_fp32": 4 * params, "macs": params, "node": "laptop"}))
        else:
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return path, spec


@pytest.mark.parametrize("points, knee", [(DIGITS_CASE, 13), (TIE_CASE, 0)], ids=["digits", "tie"])
def test_the_report_and_export_knee_name_the_same_trial(tmp_path, points, knee):
    path, spec = case_study(tmp_path, points)
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, baselines=False, log=lambda m: None)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["knee_trial"] == knee
    assert choose_trial(optuna.load_study(study_name=spec.name, storage=spec.storage), knee=True).number == knee
    assert f"<strong>Knee: trial {knee}</strong>" in (folder / "index.html").read_text()


def test_front_trials_below_the_useful_band_are_named_on_the_page(tmp_path):
    path, _ = case_study(tmp_path, DIGITS_CASE)
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, baselines=False, log=lambda m: None)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["useful_floor"] == pytest.approx(0.4875)
    assert [(row["trial"], row["useful"]) for row in summary["front"]] == [(4, False), (7, True), (13, True),
                                                                            (21, True)]
    page = (folder / "index.html").read_text()
    assert "no candidates for the knee: trial 4 (0.1800 at 52 params)" in page
    assert "<td>1 (below band)</td><td>4</td>" in page


def _texts(axes) -> dict[str, object]:
    return {text.get_text(): text for text in axes.texts}


def test_pareto_plot_shows_the_useful_band_trial_numbers_constraint_and_whole_labels(tmp_path):
    spec = study_spec(tmp_path)  # constraints: params <= 50000
    frame = pd.DataFrame([{"trial": n, "state": "COMPLETE", "val_accuracy": a, "params": p}
                          for n, (a, p) in DIGITS_CASE.items()]).sort_values("trial")
    frame["pareto_rank"] = np.where(frame["trial"].isin([4, 7, 13, 21]), 0, 1)
    front = front_frame(frame)
    teachers = [{"name": "resnet-wide-teacher", "params": 120_000, "val_accuracy": 0.985},
                {"name": "cnn-teacher", "params": 30_000, "val_accuracy": 0.10}]  # a teacher below the band too
    figure = report_figures.pareto_figure(frame, front, spec, teachers, knee=13)
    axes = figure.axes[0]
    bottom, top = axes.get_ylim()
    # The band: from just under the lowest useful front point (0.90) to just over the best teacher.
    assert 0.85 < bottom < 0.90 and 0.985 < top < 1.0
    texts = _texts(axes)
    # Every front trial is labelled; those below the band carry their accuracy.
    assert {"7", "13", "21", "4 (0.18)"} <= set(texts)
    assert texts["13"].get_fontweight() == "bold"  # the knee
    assert {"resnet-wide-teacher", "cnn-teacher (0.10)"} <= set(texts)
    # Points below the band sit on its bottom edge: front trial 4, trials 2 and 5, the weak teacher.
    edge = {round(float(x)) for collection in axes.collections for x, y in collection.get_offsets()
            if np.isclose(y, bottom)}
    assert edge == {52, 200, 3_000, 30_000}
    # The constraint as a vertical line at 50,000 params, inside the x range.
    assert any(list(line.get_xdata()) == [50_000, 50_000] for line in axes.lines)
    assert axes.get_xlim()[0] < 52 and axes.get_xlim()[1] > 120_000
    # Nothing is cut off at the figure's edges: every label, tick, title and legend entry is inside it.
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    box = figure.bbox
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    ticks = [label for label in axes.get_xticklabels() if x0 <= label.get_position()[0] <= x1] + \
            [label for label in axes.get_yticklabels() if y0 <= label.get_position()[1] <= y1]  # the ones drawn
    artists = [*axes.texts, axes.title, axes.xaxis.label, axes.yaxis.label, *axes.get_legend().get_texts(), *ticks]
    for artist in artists:
        if not artist.get_visible() or not artist.get_text():
            continue
        extent = artist.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
            f"{artist.get_text()!r} is cut off: {extent} outside {box}"
    # Teacher names stay inside the plotting area itself, even the one at the right edge.
    inside = axes.get_window_extent(renderer)
    for name in ("resnet-wide-teacher", "cnn-teacher (0.10)"):
        extent = texts[name].get_window_extent(renderer)
        assert inside.x0 <= extent.x0 and extent.x1 <= inside.x1, f"{name!r} leaves the axes: {extent}"


def test_the_device_row_shows_host_names_and_short_ray_node_ids():
    ray_id = "3f2a1b9c" + "0" * 48
    frame = pd.DataFrame({"node": [ray_id, ray_id, "worker-1", None, "a" * 55]})
    device = report_summary._device(frame)
    assert device["search_nodes"] == ["3f2a1b9c", "a" * 55, "worker-1"]  # 55 hex digits is no Ray id
    assert device["search_node_trials"] == {"3f2a1b9c": 2, "a" * 55: 1, "worker-1": 1}


def test_the_page_never_shows_a_full_ray_node_id(built):
    folder, _ = built
    page = (folder / "index.html").read_text()
    assert "search nodes: laptop (16 trials)" in page
    assert not re.search(r"[0-9a-f]{56}", page)


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
    before = database_content(database)
    build_report(str(path), out=tmp_path / "out", evaluate_test=False, log=lambda m: None)
    assert database_content(database) == before


def test_a_crash_leaves_the_previous_report_untouched(tmp_path, monkeypatch):
    path, _ = write_study(tmp_path, n_complete=6)
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, log=lambda m: None)
    before = (folder / "index.html").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "effects_figure", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(str(path), out=folder, evaluate_test=False, log=lambda m: None)
    assert (folder / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_a_flat_study_gets_no_temperature_curve_but_a_note(built):
    folder, _ = built  # FILES (test_all_files_written) has no temperature.png: the figure is skipped
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["temperature_curve"] == [] and not summary["two_level"]
    assert any(note.startswith("temperature curve skipped: a flat study") for note in summary["notes"])
    page = (folder / "index.html").read_text()
    assert "Temperature by student size" not in page and "val gain vs CE" not in page


# ---------------------------------------------------------------------------------------------
# Teachers that can teach: a teacher below the best CE-only student is flagged (issue 12, item 6)

TEACHERS = [{"name": "strong", "val_accuracy": 0.90}, {"name": "weak", "val_accuracy": 0.84},
            {"name": "equal", "val_accuracy": 0.85}]


def _two_level_study(level2_teachers: list[str] | None) -> optuna.Study:
    """Level 1: trials 0 (0.80) and 1 (0.85, the best CE-only student); level 2 allowed `level2_teachers`."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("search_mode", "two_level")
    for accuracy in (0.80, 0.85):
        study.add_trial(optuna.trial.create_trial(values=[accuracy, 100], user_attrs={"level": 1,
                                                                                      "role": "architecture"}))
    if level2_teachers is not None:
        # Its CE-only baseline beats every level-1 trial: the comparison is with level 1 all the same.
        for role, accuracy in (("ce", 0.95), ("vanilla_kd", 0.86)):
            study.add_trial(optuna.trial.create_trial(values=[accuracy, 100], user_attrs={
                "level": 2, "role": role, "arch": 1, "teachers_allowed": level2_teachers}))
    return study


def _verdicts(study: optuna.Study, spec: StudySpec) -> dict[str, str]:
    best = report_data.best_ce_only_student(study)
    return {t["name"]: t["can_teach"] for t in report_data.flag_weak_teachers(TEACHERS, study, spec, best)}


def test_two_level_teachers_below_the_best_level1_student_are_left_out_of_level_2(tmp_path):
    spec = study_spec(tmp_path)
    study = _two_level_study(["strong", "equal"])
    assert report_data.best_ce_only_student(study) == {"trial": 1, "val_accuracy": 0.85}
    assert _verdicts(study, spec) == {"strong": "yes", "equal": "yes",
                                      "weak": "weaker than the best CE-only student: left out of level 2"}
    # Before level 2 has a trial the plan's rule says the same.
    assert _verdicts(_two_level_study(None), spec)["weak"] == \
        "weaker than the best CE-only student: left out of level 2"
    # Kept on request: still flagged, and the page says why it was kept.
    keep = spec.model_copy(update={"search": spec.search.model_copy(update={"weak_teachers": "keep"})})
    assert _verdicts(_two_level_study(["strong", "weak", "equal"]), keep)["weak"] == \
        "weaker than the best CE-only student: kept in level 2 (search.weak_teachers: keep)"
    assert _verdicts(_two_level_study(None), keep)["weak"] == \
        "weaker than the best CE-only student: kept in level 2 (search.weak_teachers: keep)"


def _flat_study(distill_settings: list[tuple[float, dict]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, settings in distill_settings:
        study.add_trial(optuna.trial.create_trial(values=[accuracy, 100],
                                                  user_attrs={"config": {"distill": settings}}))
    return study


def test_flat_teachers_are_compared_with_the_best_trial_without_distillation(tmp_path):
    spec = study_spec(tmp_path)
    study = _flat_study([(0.99, {"w_ce": 0.5, "w_kd": 0.5}), (0.845, {"w_ce": 1.0, "w_kd": 0.0, "w_feat": 0.0}),
                         (0.97, {"w_ce": 1.0, "w_kd": 0.0, "w_feat": 0.5}), (0.80, {"w_ce": 1.0, "w_kd": 0.0})])
    assert report_data.best_ce_only_student(study) == {"trial": 1, "val_accuracy": 0.845}  # w_feat > 0 distils
    assert _verdicts(study, spec) == {"strong": "yes", "equal": "yes", "weak": "weaker than the best CE-only student"}
    # No CE-only trial at all: nothing to compare with, no flag.
    nothing = _flat_study([(0.99, {"w_ce": 0.5, "w_kd": 0.5})])
    assert report_data.best_ce_only_student(nothing) is None
    assert set(_verdicts(nothing, spec).values()) == {"yes"}


def test_the_teacher_table_shows_the_flag_and_the_student_it_compares_with(tmp_path, monkeypatch):
    path, spec = case_study(tmp_path, {0: (0.95, 1_000), 1: (0.60, 10)})
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    study.add_trial(optuna.trial.create_trial(values=[0.70, 50], user_attrs={
        "params": 50, "bytes_fp32": 200, "macs": 50, "config": {"distill": {"w_ce": 1.0, "w_kd": 0.0}}}))
    rows = [{**teacher, "arch": {"family": "mlp", "width": 8}, "test_accuracy": 0.5, "params": 1_000,
             "bytes_fp32": 4_000, "macs": 1_000} for teacher in TEACHERS[:2]]
    monkeypatch.setattr(report, "teacher_rows", lambda spec, notes, log: [dict(row) for row in rows])
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, baselines=False, log=lambda m: None)
    page = (folder / "index.html").read_text()
    table = re.search(r'<div class="scroll" id="teachers-table">(.*?)</div>', page).group(1)
    assert '<tr class="low"><td>weak</td>' not in table  # 0.84 is above the only CE-only student (0.70)
    assert "best CE-only student of the study (trial 2, val acc 0.7000" in page
    # A CE-only student above the weak teacher: now it is flagged.
    study.add_trial(optuna.trial.create_trial(values=[0.88, 60], user_attrs={
        "params": 60, "bytes_fp32": 240, "macs": 60, "config": {"distill": {"w_ce": 1.0, "w_kd": 0.0}}}))
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, baselines=False, log=lambda m: None)
    page = (folder / "index.html").read_text()
    table = re.search(r'<div class="scroll" id="teachers-table">(.*?)</div>', page).group(1)
    assert '<tr class="low"><td>weak</td>' in table and "<td>weaker than the best CE-only student</td>" in table
    assert "<td>strong</td>" in table and table.count("<td>yes</td>") == 1
    assert json.loads((folder / "summary.json").read_text())["best_ce_only_student"] == {"trial": 3,
                                                                                         "val_accuracy": 0.88}


def test_what_a_ce_only_place_turned_down_is_a_distilled_config_never_a_confirmation():
    """A confirmation's CE-only runs on other seeds (`levels`): however accurate, it is no distilled try, and
    pairing it with the baseline's seeds would mean nothing."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for role, seeds in (("ce", [0.80, 0.82]), ("tuned", [0.81, 0.82]), ("confirm_ce", [0.95, 0.95]),
                        ("confirm", [0.94, 0.96])):
        study.add_trial(optuna.trial.create_trial(values=[sum(seeds) / 2, 100], user_attrs={
            "level": 2, "role": role, "arch": 0, "val_accuracy_seeds": seeds}))
    best = report_summary._best_distilled(study)
    assert list(best) == [0] and best[0]["trial"] == 1
    assert (best[0]["gain_pt"], best[0]["se_pt"]) == (pytest.approx(0.5), pytest.approx(0.5))  # +1, 0 pt
