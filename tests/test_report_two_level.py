"""The report and `autokd show` of a two-level study (issue 12 items 3, 4, 6, the reading side).

One real tiny two-level search (module fixture) and its report: each front point says which role
stands there and why, with its paired gain over CE-only ± SE on val (the search's seeds) and on
test (the same paired seeds, retrained through the evaluation cache, nothing trained twice); the
temperature curve is drawn. The figure's drawing rules are checked on a synthetic front.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autokd import evaluation, report_data, report_figures, report_html
from autokd.config_files import load_study
from autokd.levels import paired_seeds
from autokd.pairing import CE, TUNED, VANILLA_KD, paired_gain
from autokd.report import build_report
from autokd.results import architecture_choices
from autokd.spec import StudySpec
from conftest import run_cli, tiny_study

# Without confirmation, so that 10 trials tune two architectures (a confirmed point is measured on its
# fresh seeds: tests/test_evaluation_fast.py; the confirmation trials: tests/test_levels.py).
SETTINGS = {"mode": "two_level", "level1_share": 0.4, "architectures": 2, "seeds": 2, "confirm": False}
LABELS = {CE: "CE-only", VANILLA_KD: "vanilla KD", TUNED: "tuned KD"}


@pytest.fixture(scope="module")
def two_level(tmp_path_factory):
    """(study file, spec, study, report folder) of a 10-trial two-level search, reported once."""
    from autokd.search import search

    folder = tmp_path_factory.mktemp("two_level")
    study_file = tiny_study(folder, cached_teachers=True, trials=10, epochs=2, search=SETTINGS)
    spec = load_study(study_file)
    result = search(spec, progress=False, log=lambda message: None)
    built = build_report(str(study_file), out=folder / "report", log=lambda message: None)
    return study_file, spec, result.study, built


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _table_rows(page: str, table_id: str) -> list[list[str]]:
    table = re.search(rf'<div class="scroll" id="{table_id}">(.*?)</div>', page).group(1)
    return [[html.unescape(cell) for cell in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)]


@pytest.mark.slow
def test_each_front_point_says_its_role_why_and_its_val_gain(two_level):
    _, _, study, folder = two_level
    choices = {choice.trial: choice for choice in architecture_choices(study).values()}
    front = _summary(folder)["front"]
    assert front and {row["trial"] for row in front} == set(choices)
    header, *body = _table_rows((folder / "index.html").read_text(), "front-table")
    rows = {int(cells[1]): dict(zip(header, cells)) for cells in body}
    for row in front:
        choice = choices[row["trial"]]
        assert row["role"] == choice.role
        assert row["choice"].startswith(f"{LABELS[choice.role]} — {choice.reason}")
        assert row["val_gain_vs_ce_pt"] == pytest.approx(100 * choice.gain_vs_ce)
        assert row["val_gain_se_pt"] == pytest.approx(100 * choice.gain_se)
        cells = rows[row["trial"]]
        assert cells["choice"] == row["choice"]
        assert cells["val gain vs CE"] == f"{100 * choice.gain_vs_ce:+.2f} ± {100 * choice.gain_se:.2f} pt"
        assert re.fullmatch(r"[+-]\d+\.\d\d ± \d+\.\d\d pt", cells["test gain vs CE"]), cells
        assert re.fullmatch(r"[+-]\d+\.\d\d ± \d+\.\d\d pt", cells["test gain vs vanilla KD"]), cells
    ce_rows = [row for row in front if row["role"] == CE]
    for row in ce_rows:  # why CE-only: distillation's best try at this size, and it is not enough
        assert row["choice"].startswith("CE-only — distillation did not help at this size (best distilled: trial ")


@pytest.mark.slow
def test_test_gains_are_paired_over_the_paired_seeds_and_nothing_is_trained_twice(two_level):
    _, spec, study, folder = two_level
    seeds = paired_seeds(spec)
    trials = {t.number: t for t in study.get_trials()}
    pareto = pd.read_csv(folder / "pareto.csv").set_index("trial")
    evaluations = Path(spec.cache_dir) / "evaluations" / spec.name
    cached = [json.loads(path.read_text()) for path in evaluations.glob("*.json")]
    # A tuned or vanilla choice: itself, CE-only and vanilla KD on each seed (vanilla's own runs are its
    # baseline's); a CE-only choice: its own runs are the CE-only baseline, plus vanilla KD.
    expected = sum((3 if row.role == TUNED else 2) * len(seeds) for row in pareto.itertuples())
    assert len(cached) == expected, sorted((entry["kind"], entry["seed"]) for entry in cached)
    assert {entry["seed"] for entry in cached} == set(seeds)

    def architecture(config: dict) -> str:
        return json.dumps([config["student"], config["schedule"]], sort_keys=True)

    for number, row in pareto.iterrows():
        trial = trials[number]
        mine = [entry for entry in cached if architecture(entry["config"]) == architecture(trial.user_attrs["config"])]
        own_kind = {TUNED: "trial"}.get(row["role"], row["role"])
        by_kind = {kind: {entry["seed"]: entry for entry in mine if entry["kind"] == kind}
                   for kind in ("trial", CE, VANILLA_KD)}
        assert {kind for kind, runs in by_kind.items() if runs} == {own_kind, CE, VANILLA_KD}
        assert all(sorted(runs) == sorted(seeds) for runs in by_kind.values() if runs)
        own = [by_kind[own_kind][seed] for seed in seeds]
        # The same runs as the search's: retrained val per seed is what the trial recorded.
        assert [entry["val_accuracy"] for entry in own] == trial.user_attrs["val_accuracy_seeds"]
        assert row["val_accuracy_retrained"] == row["val_accuracy"] and row["test_seeds"] == len(seeds)
        vanilla_teachers = by_kind[VANILLA_KD][seeds[0]]["config"]["distill"]["teachers"]
        assert vanilla_teachers == trial.user_attrs["teachers_allowed"]
        tests = [entry["test_accuracy"] for entry in own]
        assert row["test_accuracy"] == pytest.approx(np.mean(tests))
        for baseline in (CE, VANILLA_KD):
            gain, standard_error = paired_gain(tests, [by_kind[baseline][seed]["test_accuracy"] for seed in seeds])
            assert row[f"gain_vs_{baseline}"] == pytest.approx(100 * gain, abs=1e-6)
            assert row[f"gain_vs_{baseline}_se"] == pytest.approx(100 * standard_error, abs=1e-6)


@pytest.mark.slow
def test_a_second_report_trains_nothing(two_level, tmp_path, monkeypatch):
    study_file, _, _, folder = two_level

    def no_training(*args, **kwargs):
        raise AssertionError("the second report trained a model although every evaluation was cached")

    monkeypatch.setattr(evaluation, "run_config", no_training)
    again = build_report(str(study_file), out=tmp_path / "again", log=lambda message: None)
    columns = ["trial", *evaluation.EVALUATION_COLUMNS]
    pd.testing.assert_frame_equal(pd.read_csv(again / "pareto.csv")[columns],
                                  pd.read_csv(folder / "pareto.csv")[columns])


@pytest.mark.slow
def test_the_temperature_curve_is_drawn_over_the_front(two_level):
    _, _, _, folder = two_level
    assert (folder / "temperature.png").stat().st_size > 0 and (folder / "temperature.svg").stat().st_size > 0
    summary = _summary(folder)
    curve = {point["trial"]: point for point in summary["temperature_curve"]}
    assert set(curve) == {row["trial"] for row in summary["front"]}
    for row in summary["front"]:
        point = curve[row["trial"]]
        if row["role"] == CE:
            assert point["temperature"] is None and point["kd_share"] == 0
        else:
            assert point["kd_share"] == pytest.approx(row["w_kd"] / (row["w_ce"] + row["w_kd"]))
            assert point["temperature"] == row["temperature"]
    page = (folder / "index.html").read_text()
    assert html.escape(report_html.TEMPERATURE_CAPTION, quote=True) in page
    assert page.count('<img src="data:image/png;base64,') == 5  # pareto, hypervolume, importance, effects, T
    assert not any("temperature curve skipped" in note for note in summary["notes"])


@pytest.mark.slow
def test_the_teacher_table_flags_teachers_weaker_than_the_best_ce_only_student(two_level):
    _, _, study, folder = two_level
    summary = _summary(folder)
    level1 = [t for t in study.get_trials() if t.user_attrs.get("level") == 1 and t.values]
    best = max(level1, key=lambda t: (t.values[0], -t.number))
    assert summary["best_ce_only_student"] == {"trial": best.number, "val_accuracy": best.values[0]}
    allowed = {name for t in study.get_trials() if t.user_attrs.get("level") == 2
               for name in t.user_attrs["teachers_allowed"]}
    rows = {cells[0]: cells[-1] for cells in _table_rows((folder / "index.html").read_text(), "teachers-table")[1:]}
    assert set(rows) == {t["name"] for t in summary["teachers"]}
    for teacher in summary["teachers"]:
        weaker = teacher["val_accuracy"] < best.values[0]
        expected = ("yes" if not weaker else "weaker than the best CE-only student: left out of level 2"
                    if teacher["name"] not in allowed else
                    "weaker than the best CE-only student: kept in level 2 (no teacher is stronger)")
        assert rows[teacher["name"]] == teacher["can_teach"] == expected


@pytest.mark.slow
def test_show_prints_the_val_gain_and_the_reason_of_every_front_point(two_level):
    study_file, _, study, _ = two_level
    shown = run_cli("show", study_file, env={"COLUMNS": "200"}, check=True).stdout
    assert "val_gain_pt" in shown and "choice" in shown, shown
    lines = {int(line.split("│")[1]): line for line in shown.splitlines() if line.startswith("│")}
    choices = {choice.trial: choice for choice in architecture_choices(study).values()}
    assert set(lines) == set(choices)
    for number, choice in choices.items():
        assert f"{100 * choice.gain_vs_ce:+.2f}±{100 * choice.gain_se:.2f}" in lines[number], lines[number]
        assert LABELS[choice.role] in lines[number]
        assert f"trial {number}: {choice.reason}" in shown.splitlines()  # why it stands there


# ---------------------------------------------------------------------------------------------
# The temperature figure on a synthetic front (no training)


def _front_row(trial: int, role: str, params: int, distill: dict, gain: float, se: float) -> dict:
    config = {"distill": {"w_ce": 1.0, "w_kd": 0.0, "w_feat": 0.0, "kind": "kl", "temperature": 4.0, **distill}}
    return {"trial": trial, "role": role, "params": params, "config": json.dumps(config), "val_gain_vs_ce": gain,
            "val_gain_se": se}


SPEC = StudySpec.model_validate({"name": "synthetic", "distill": {"w_ce": 1.0, "w_kd": 0.0},
                                 "search_space": {"params": {}}})
SYNTHETIC_FRONT = pd.DataFrame([
    _front_row(3, TUNED, 100, {"w_ce": 0.25, "w_kd": 0.75, "temperature": 3.0}, 0.0042, 0.0010),
    _front_row(5, CE, 1_000, {}, 0.0, 0.0),
    _front_row(7, VANILLA_KD, 10_000, {"w_ce": 0.1, "w_kd": 0.9, "temperature": 4.0}, 0.0031, 0.0012),
    _front_row(9, TUNED, 30_000, {"w_ce": 0.5, "w_kd": 0.5, "kind": "mse"}, 0.0020, 0.0008),
])


def test_temperature_points_give_t_where_it_applies_and_the_kd_share():
    points = report_data.temperature_points(SYNTHETIC_FRONT.sample(frac=1, random_state=0), SPEC)
    assert points["trial"].tolist() == [3, 5, 7, 9]  # smallest student first
    assert points["temperature"].tolist()[0] == 3.0 and points["temperature"].tolist()[2] == 4.0
    assert points["temperature"].isna().tolist() == [False, True, False, True]  # CE-only, and mse has no T
    assert points["kd_share"].tolist() == pytest.approx([0.75, 0.0, 0.9, 0.5])
    assert points["val_gain_pt"].tolist() == pytest.approx([0.42, 0.0, 0.31, 0.20])


def test_temperature_figure_draws_ce_only_hollow_at_the_bottom_and_labels_the_gains():
    figure = report_figures.temperature_figure(report_data.temperature_points(SYNTHETIC_FRONT, SPEC), SPEC)
    t_axes, share_axes = figure.axes[:2]
    assert t_axes.get_xscale() == "log" and share_axes.get_xscale() == "log"
    for axes in (t_axes, share_axes):
        texts = {text.get_text() for text in axes.texts}
        assert {"+0.42 ± 0.10 pt", "CE-only", "+0.31 ± 0.12 pt", "+0.20 ± 0.08 pt"} <= texts
        bottom = axes.get_ylim()[0]
        hollow = [c for c in axes.collections if len(c.get_offsets()) and c.get_edgecolors().size
                  and (c.get_facecolors().size == 0 or np.all(c.get_facecolors()[:, 3] == 0))]
        assert [tuple(offset) for c in hollow for offset in c.get_offsets()] == [(1_000, bottom)]
    # The filled T points are the distilled choices with a T; the mse one sits on the bottom edge as x.
    filled = {tuple(offset) for c in t_axes.collections if c.get_facecolors().size
              and np.all(c.get_facecolors()[:, 3] > 0) for offset in c.get_offsets()}
    assert {(100, 3.0), (10_000, 4.0), (30_000, t_axes.get_ylim()[0])} <= filled
    spans = [patch.get_path().transformed(patch.get_patch_transform()).vertices[:, 1] for patch in t_axes.patches]
    band = [ys for ys in spans if np.allclose([ys.min(), ys.max()], [2.5, 4.0])]
    assert band, "the T 2.5-4 band of Hinton et al. 2015"
