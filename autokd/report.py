"""The Pareto report a person reads: one self-contained HTML page, plots, CSV and JSON.

``build_report("studies/digits.yaml")`` writes ``reports/<study>/``::

    index.html        summary, Pareto plot, the front as a table with its export commands, teachers,
                      failures, search space and the other plots; opens offline (images inlined)
    pareto.png/.svg   val accuracy vs size (log x) over the useful band: all trials faint, the front as
                      a step line labelled with trial numbers, teachers as reference markers, the
                      knee marked, the size constraint as a vertical line; points below the band
                      are drawn at its bottom edge (▼) with their accuracy
    hypervolume.png   front hypervolume after each trial, against the stated reference point
    importance.png    Optuna parameter importance for each objective
    effects.png       temperature and KD weight against val accuracy, coloured by size
    temperature.png/.svg  two-level studies: each front architecture's chosen temperature and KD share
                      against its size, labelled with the paired val gain over CE-only (CE-only points
                      hollow at the bottom); skipped with a note in a flat study
    trials.csv        every trial (`results.trials_frame`)
    pareto.csv        the rank-0 rows of trials.csv, plus test accuracy and gains over baselines
    summary.json      what the page shows, machine-readable

The study is only read, once: its trials are copied into memory, so a search that is still
writing cannot change them mid-build and every table and plot describes the same trials. The
folder is built beside its target and renamed into place, so a crash never leaves half a report.
Test accuracy comes from `evaluation.evaluate_front`; it is shown, never used to select anything.

A two-level study's front holds one choice per architecture (`results.architecture_choices`): the
table says which role stands there and why, with its paired gain over CE-only ± SE on val (from
the search) and on test (the same seeds, retrained). Teachers less accurate than the best CE-only
student are flagged: they cannot teach it much, and a two-level search leaves them out of level 2.

The knee is `pareto.knee_index` over the front in trial order on log size, the points and order
`autokd export --knee` sees, so the two name the same trial. Front trials below half
the best val accuracy (`pareto.useful_mask`) are no candidates for it and sit below the plot's band.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import tempfile
import uuid
import warnings
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import optuna
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from autokd.errors import AutokdError, StorageError
from autokd.evaluation import EVALUATION_COLUMNS, evaluate_front
from autokd.pairing import CE, TUNED, VANILLA_KD, paired_gain
from autokd.pareto import USEFUL_SHARE, hypervolume, knee_index, pareto_front_mask, useful_mask
from autokd.results import (front_frame, hypervolume_points, hypervolume_reference, log_sizes, robust_frame,
                            study_and_spec, study_hypervolume, trials_frame)
from autokd.spec import StudySpec

MIN_TRIALS_FOR_IMPORTANCE = 4
EFFECT_PARAMS = ("distill.temperature", "distill.w_kd")
FAINT, FRONT, KNEE, TEACHER, LIMIT = "#8a96a3", "#c0392b", "#f1c40f", "#222222", "#2c6fbb"
KNEE_RULE = ("farthest below the line joining the ends of the front on log size, among front trials with at least "
             f"{USEFUL_SHARE:.0%} of the best val accuracy")
RAY_NODE_ID = re.compile(r"[0-9a-f]{56}")
TEMPERATURE_KINDS = ("kl", "dkd", "lskd", "dist")  # the KD kinds that soften logits with T
ROLE_LABELS = {CE: "CE-only", VANILLA_KD: "vanilla KD", TUNED: "tuned KD", "architecture": "architecture (level 1)"}
WEAKER = "weaker than the best CE-only student"
HINTON_T = (2.5, 4.0)  # Hinton et al. 2015: the best T for 30-unit MNIST students
TEMPERATURE_CAPTION = ("the study's own answer to which T for which student (Hinton et al. 2015 found 30-unit "
                       "MNIST students best at T 2.5-4)")


def build_report(study: str | Path, storage: str | None = None, out: str | Path | None = None,
                 baselines: bool = True, *, evaluate_test: bool = True,
                 log: Callable[[str], None] = print) -> Path:
    """Write the study's report folder (default ``reports/<study name>``) and return its path.

    `study` is the study YAML file, or the study's name with `storage`. `evaluate_test=False`
    skips test re-evaluation (test columns stay empty); `baselines=False` skips the CE-only
    and vanilla-KD baselines. Teachers come from their cache (trained only if missing).

    Example::

        folder = build_report("studies/digits.yaml", baselines=False)
        print(folder / "index.html")
    """
    optuna_study, spec = study_and_spec(str(study), storage)
    if spec is None:
        raise StorageError(f"{study}: study {optuna_study.study_name!r} has no stored study spec "
                           "(not written by `autokd search`); give its study YAML file")
    snapshot = _snapshot(optuna_study)
    frame = trials_frame(snapshot)
    notes: list[str] = []
    front = _front_with_tests(frame, snapshot, spec, evaluate_test, baselines, notes, log)
    robust = robust_frame(snapshot, frame)
    if len(robust):
        columns = {"mean": "robust_mean", "std": "robust_std", "seeds": "robust_seeds",
                   "front_by_mean": "robust_front_by_mean"}
        front = front.merge(robust[["trial", *columns]].rename(columns=columns), on="trial", how="left")
    teachers = _teacher_rows(spec, notes, log)
    best_ce_only = _best_ce_only_student(snapshot)
    teachers = _flag_weak_teachers(teachers, snapshot, spec, best_ce_only)
    folder = Path(out) if out is not None else Path("reports") / spec.name

    with _staging(folder) as staging:
        importances = _importances(snapshot, spec, notes)
        knee = _knee_trial(front, spec)
        _plot_pareto(staging, frame, front, spec, teachers, knee)
        _plot_hypervolume(staging, frame, spec)
        if importances:
            _plot_importance(staging / "importance.png", importances)
        if not _plot_effects(staging / "effects.png", frame, spec):
            notes.append(f"effects plot skipped: no complete trial has {' or '.join(EFFECT_PARAMS)}")
        curve = _temperature_points(front, spec) if _two_level(snapshot) else None
        if curve is None:
            notes.append("temperature curve skipped: a flat study has no per-architecture choice to plot "
                         "(two-level studies only)")
        elif curve.empty:
            notes.append("temperature curve skipped: no architecture has its level-2 choice yet")
        else:
            _plot_temperature(staging, curve, spec)
        summary = _summary(str(study), storage, spec, snapshot, frame, front, teachers, importances, knee, notes)
        summary["robust"] = robust.to_dict("records")
        summary["best_ce_only_student"] = best_ce_only
        summary["temperature_curve"] = [] if curve is None else curve.to_dict("records")
        frame.to_csv(staging / "trials.csv", index=False)
        front.to_csv(staging / "pareto.csv", index=False)
        (staging / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
        (staging / "index.html").write_text(render_html(summary, staging))
    return folder


# ---------------------------------------------------------------------------------------------
# Reading the study


def _snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study as it is now (one read of the storage)."""
    storage = optuna.storages.InMemoryStorage()
    quiet = logging.getLogger("optuna.storages._in_memory")  # "A new study created in memory" is noise here
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        copy = optuna.create_study(storage=storage, study_name=study.study_name, directions=study.directions)
    finally:
        quiet.setLevel(level)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials(study.get_trials(deepcopy=False))
    return copy


def _two_level(study: optuna.Study) -> bool:
    return study.user_attrs.get("search_mode") == "two_level"


def _best_ce_only_student(study: optuna.Study) -> dict[str, Any] | None:
    """{"trial", "val_accuracy"} of the study's most accurate CE-only student, or None.

    Two-level: the best level-1 trial (architectures train with cross-entropy only; what
    `levels.TwoLevelPlan.able_teachers` compares teachers with). Flat: the best trial whose config
    has w_kd == 0 and w_feat == 0, if any. Ties go to the lower trial number.
    """
    two_level = _two_level(study)
    best = None
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if not trial.values:
            continue
        if two_level:
            ce_only = trial.user_attrs.get("level") == 1
        else:
            settings = (trial.user_attrs.get("config") or {}).get("distill") or {}
            ce_only = settings.get("w_kd", 1.0) == 0 and settings.get("w_feat", 0.0) == 0
        if ce_only and (best is None or trial.values[0] > best["val_accuracy"]):
            best = {"trial": trial.number, "val_accuracy": float(trial.values[0])}
    return best


def _flag_weak_teachers(teachers: list[dict], study: optuna.Study, spec: StudySpec,
                       best: dict[str, Any] | None) -> list[dict]:
    """The teacher rows with `weaker` (val accuracy below `best`'s) and `can_teach` (the page's verdict).

    In a two-level study the verdict says what level 2 did with a weaker teacher: the level-2
    trials' `teachers_allowed` when there are any, else the plan's rule (left out unless
    `search.weak_teachers: keep`, or unless every teacher is weaker).
    """
    if not teachers:
        return teachers
    weaker = {t["name"]: best is not None and t["val_accuracy"] < best["val_accuracy"] for t in teachers}
    allowed = None
    if _two_level(study):
        lists = [t.user_attrs["teachers_allowed"] for t in study.get_trials(deepcopy=False)
                 if t.user_attrs.get("level") == 2 and t.user_attrs.get("teachers_allowed") is not None]
        if lists:
            allowed = {name for names in lists for name in names}
        elif spec.search.weak_teachers == "keep" or all(weaker.values()):
            allowed = set(weaker)
        else:
            allowed = {name for name, weak in weaker.items() if not weak}
    rows = []
    for teacher in teachers:
        name = teacher["name"]
        if not weaker[name]:
            verdict = "yes"
        elif allowed is None:
            verdict = WEAKER
        elif name not in allowed:
            verdict = f"{WEAKER}: left out of level 2"
        else:
            why = ("search.weak_teachers: keep" if spec.search.weak_teachers == "keep"
                   else "no teacher is stronger")
            verdict = f"{WEAKER}: kept in level 2 ({why})"
        rows.append({**teacher, "weaker": weaker[name], "can_teach": verdict})
    return rows


def _best_distilled(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Per architecture of a two-level study: the most accurate distilled level-2 config (vanilla KD or
    tuned, by mean val) and its paired gain over CE-only, in points. What a CE-only place turned down."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("level") == 2 and t.user_attrs.get("val_accuracy_seeds")]
    baselines = {t.user_attrs.get("arch"): t for t in complete if t.user_attrs.get("role") == CE}
    best: dict[int, dict[str, Any]] = {}
    for trial in sorted(complete, key=lambda t: (-t.values[0], t.number)):
        arch, role = trial.user_attrs.get("arch"), trial.user_attrs.get("role")
        baseline = baselines.get(arch)
        if role == CE or baseline is None or arch in best:
            continue
        seeds, baseline_seeds = trial.user_attrs["val_accuracy_seeds"], baseline.user_attrs["val_accuracy_seeds"]
        if len(seeds) != len(baseline_seeds):
            continue
        gain, standard_error = paired_gain(seeds, baseline_seeds)
        best[int(arch)] = {"trial": trial.number, "gain_pt": 100 * gain, "se_pt": 100 * standard_error}
    return best


def _front_with_tests(frame: pd.DataFrame, snapshot: optuna.Study, spec: StudySpec, evaluate_test: bool,
                      baselines: bool, notes: list[str], log: Callable[[str], None]) -> pd.DataFrame:
    """Exactly the rank-0 rows of `frame` (smallest first), with the test columns joined on."""
    front = front_frame(frame)
    if evaluate_test and len(front):
        tests = evaluate_front(snapshot, spec, front["trial"].tolist(), baselines=baselines, log=log)
        front = front.merge(tests[["trial", *EVALUATION_COLUMNS]], on="trial", how="left")
        drifted = front.loc[front["val_accuracy_retrained"] != front["val_accuracy"], "trial"].tolist()
        if drifted:
            notes.append(f"retraining did not reproduce the recorded val accuracy of trial(s) {drifted} "
                         "(different hardware or library versions?); their test accuracy is of the retrained model")
    else:
        front = front.assign(**{column: np.nan for column in EVALUATION_COLUMNS})
        if not evaluate_test:
            notes.append("test accuracy not evaluated for this build (evaluate_test=False)")
    if evaluate_test and len(front) and not baselines:
        notes.append("baselines not trained (--no-baselines): gains are empty")
    if evaluate_test and (front["test_seeds"] > 1).any():
        notes.append("two-level front points are measured on their paired seeds: test accuracy is the mean over "
                     "them, test gains are paired (per seed) means ± standard error, the same runs as on val")
    return front


def _teacher_rows(spec: StudySpec, notes: list[str], log: Callable[[str], None]) -> list[dict]:
    """Each teacher's size and val/test accuracy, from the teacher cache (the search filled it)."""
    if not spec.teachers:
        return []
    from autokd.data import load_data
    from autokd.teachers import prepare_teachers

    try:
        data = load_data(spec.data, spec.source)
        teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, spec.resolve_path, log=log)
    except AutokdError as error:  # e.g. the dataset is not on this machine: the rest of the report still stands
        notes.append(f"teachers unavailable: {error}")
        return []
    return [{"name": t.name, "arch": t.meta["arch"], "val_accuracy": t.meta["val_accuracy"],
             "test_accuracy": t.meta["test_accuracy"], "params": t.meta["params"],
             "bytes_fp32": t.meta["bytes_fp32"], "macs": t.meta["macs"]} for t in teachers]


def _knee_trial(front: pd.DataFrame, spec: StudySpec) -> int | None:
    """The knee of the front, its rows taken in trial order as `export.choose_trial(knee=True)` takes the
    complete trials: `knee_index` keeps only their front, so both see the same points in the same order
    and a tie falls the same way (the front sorted by size would give a tie to the smaller trial)."""
    if front.empty:
        return None
    rows = front.sort_values("trial")
    return int(rows["trial"].iloc[knee_index(log_sizes(rows[spec.objectives].to_numpy(float)), spec.directions)])


def _importances(snapshot: optuna.Study, spec: StudySpec, notes: list[str]) -> dict[str, dict[str, float]]:
    """Optuna parameter importance (PED-ANOVA by default) per objective; {} with a note when not possible."""
    complete = len(snapshot.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if complete < MIN_TRIALS_FOR_IMPORTANCE:
        notes.append(f"parameter importance skipped: needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials, "
                     f"got {complete}")
        return {}
    importances = {}
    for index, (objective, direction) in enumerate(zip(spec.objectives, spec.directions)):
        # PED-ANOVA rates parameters by how they reach LOW target values: flip maximised objectives.
        sign = -1.0 if direction == "maximize" else 1.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances[objective] = optuna.importance.get_param_importances(
                    snapshot, target=lambda trial, i=index, s=sign: s * trial.values[i])
        except Exception as error:  # importance is a nicety: never let it sink the report
            notes.append(f"parameter importance skipped: {type(error).__name__}: {error}")
            return {}
    if not any(importances.values()):
        notes.append("parameter importance skipped: the study has no sampled parameters")
        return {}
    return importances


def _hypervolume_curve(frame: pd.DataFrame, spec: StudySpec) -> tuple[np.ndarray, np.ndarray]:
    """(trial numbers, front hypervolume after each complete trial), in trial order."""
    points = hypervolume_points(frame, spec)
    numbers = frame.loc[frame["pareto_rank"].notna(), "trial"].to_numpy()  # the rows hypervolume_points takes
    reference = hypervolume_reference(spec)
    current = np.empty((0, points.shape[1]))
    volume, curve = 0.0, []
    for point in points:
        candidates = np.vstack([current, point])
        keep = pareto_front_mask(candidates, spec.directions)
        if keep[-1]:  # a dominated point changes neither the front nor its volume
            current = candidates[keep]
            volume = hypervolume(current, spec.directions, reference)
        curve.append(volume)
    return numbers, np.array(curve)


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's Agg canvas, no pyplot: no global state, no display needed)


def _figure(width: float, height: float, columns: int = 1, **margins: float) -> tuple[Figure, list]:
    # Fixed margins: constrained layout measures every label and took half the build time.
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(**{"left": 0.09, "right": 0.98, "bottom": 0.13, "top": 0.9, "wspace": 0.3, **margins})
    return figure, list(figure.subplots(1, columns, squeeze=False)[0])


def _log_axis(axis) -> None:
    """Log scale labelled 1,000 / 2,000 / 5,000: readable, and no mathtext to typeset."""
    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.6g}"))
    axis.set_minor_locator(NullLocator())


def _plot_pareto(folder: Path, frame: pd.DataFrame, front: pd.DataFrame, spec: StudySpec, teachers: list[dict],
                 knee: int | None) -> None:
    figure = _pareto_figure(frame, front, spec, teachers, knee)
    if figure is not None:
        figure.savefig(folder / "pareto.png", dpi=110)
        figure.savefig(folder / "pareto.svg")


def _useful_band(front: pd.DataFrame, spec: StudySpec, teachers: list[dict], top: float) -> tuple[float, float]:
    """(bottom, top) of the plot's accuracy axis: the front's useful points and the teachers, padded."""
    useful = front.loc[useful_mask(front[spec.objectives].to_numpy(float), spec.directions), "val_accuracy"]
    lowest = float(useful.min())
    low = min([lowest, *(t["val_accuracy"] for t in teachers if t["val_accuracy"] >= lowest)])
    pad = max(0.07 * (top - low), 0.005)
    return low - pad, top + pad


def _pareto_figure(frame: pd.DataFrame, front: pd.DataFrame, spec: StudySpec, teachers: list[dict],
                   knee: int | None) -> Figure | None:
    """Val accuracy vs log size over the useful band; what lies below it is drawn at its bottom edge."""
    complete = frame[frame["state"] == "COMPLETE"]
    if complete.empty or front.empty:
        return None
    size = spec.objectives[1]
    limit = spec.size_limits().get(size)
    teachers = [t for t in teachers if t.get(size) is not None]  # teacher rows carry params, bytes_fp32, macs
    figure, (axes,) = _figure(10.5, 5.2, left=0.07, right=0.75, top=0.92)  # the legend goes right of the axes
    top = max([*complete["val_accuracy"], *(t["val_accuracy"] for t in teachers)])
    bottom, ceiling = _useful_band(front, spec, teachers, top)
    axes.set_ylim(bottom, ceiling)
    _log_axis(axes.xaxis)
    sizes = np.log10(np.maximum([*complete[size], *(t[size] for t in teachers),
                                 *([limit] if limit is not None else [])], 1.0))
    margin = max(0.05 * (sizes.max() - sizes.min()), 0.1)
    left, right = sizes.min() - margin, sizes.max() + margin
    axes.set_xlim(10 ** left, 10 ** right)

    def place(x: float) -> float:  # where x lies across the axis, 0 (left) to 1 (right)
        return (np.log10(max(x, 1.0)) - left) / (right - left)

    def shown(accuracy: np.ndarray) -> np.ndarray:
        return np.maximum(accuracy, bottom)

    x, y = complete[size].to_numpy(float), complete["val_accuracy"].to_numpy(float)
    axes.scatter(x[y >= bottom], y[y >= bottom], s=12, color=FAINT, alpha=0.45, linewidths=0,
                 label=f"complete trials ({len(complete)})")
    if (y < bottom).any():
        axes.scatter(x[y < bottom], shown(y[y < bottom]), s=22, marker="v", color=FAINT, alpha=0.7, linewidths=0,
                     clip_on=False, label="trials below the band (at its edge)")
    # The step line is the 2-D attainment curve of the plotted pair, sorted by size.
    pair = front[["val_accuracy", size]].to_numpy(float)
    line = front[pareto_front_mask(pair, ["maximize", "minimize"])]
    axes.step(line[size], shown(line["val_accuracy"].to_numpy(float)), where="post", color=FRONT, linewidth=1.8)
    fx, fy = front[size].to_numpy(float), front["val_accuracy"].to_numpy(float)
    axes.scatter(fx[fy >= bottom], fy[fy >= bottom], s=30, color=FRONT, zorder=3,
                 label=f"Pareto front ({len(front)}), by trial number")
    if (fy < bottom).any():
        axes.scatter(fx[fy < bottom], shown(fy[fy < bottom]), s=60, marker="v", color=FRONT, zorder=3,
                     clip_on=False, label=f"front below {USEFUL_SHARE:.0%} of the best (acc)")
    for (px, py), trials in front.groupby([size, "val_accuracy"], sort=False)["trial"]:  # exact ties: one label
        low, is_knee = py < bottom, knee in set(trials)
        text = ", ".join(map(str, trials)) + (f" ({py:.2f})" if low else "")
        to_left, step = place(px) > 0.1, 9 if is_knee else 4
        axes.annotate(text, (px, max(py, bottom)), textcoords="offset points",
                      xytext=(-step if to_left else step, 7 if low else step - 1), ha="right" if to_left else "left",
                      va="bottom", fontsize=7.5, color=FRONT, annotation_clip=False,
                      fontweight="bold" if is_knee else "normal")
    if knee is not None:
        row = front[front["trial"] == knee].iloc[0]
        axes.scatter([row[size]], [row["val_accuracy"]], s=260, marker="*", color=KNEE, edgecolors="black",
                     zorder=4, label=f"knee (trial {knee})")
    if teachers:
        tx = np.array([t[size] for t in teachers], dtype=float)
        ty = np.array([t["val_accuracy"] for t in teachers], dtype=float)
        axes.scatter(tx[ty >= bottom], ty[ty >= bottom], s=60, marker="^", color=TEACHER, zorder=3, label="teachers")
        if (ty < bottom).any():
            axes.scatter(tx[ty < bottom], shown(ty[ty < bottom]), s=60, marker="v", color=TEACHER, zorder=3,
                         clip_on=False, label=None if (ty >= bottom).any() else "teachers")
        for teacher, px, py in zip(teachers, tx, ty):
            text = teacher["name"] + (f" ({py:.2f})" if py < bottom else "")
            to_left = place(px) > 0.6  # names run away from the right edge, so they are never cut off
            low = py < bottom  # at the bottom edge the name goes above the marker, clear of the tick labels
            axes.annotate(text, (px, max(py, bottom)), textcoords="offset points",
                          xytext=(-7 if to_left else 7, 5 if low else -4), ha="right" if to_left else "left",
                          va="bottom" if low else "top", fontsize=8, annotation_clip=False)
    if limit is not None:
        axes.axvline(limit, color=LIMIT, linestyle="--", linewidth=1.2, label=f"constraint: {size} <= {limit:,.0f}")
    axes.set_xlabel(f"{size} (log scale)")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"{spec.name}: validation accuracy vs {size}")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    return figure


def _plot_hypervolume(folder: Path, frame: pd.DataFrame, spec: StudySpec) -> None:
    numbers, curve = _hypervolume_curve(frame, spec)
    if len(numbers) == 0:
        return
    reference = hypervolume_reference(spec)
    figure, (axes,) = _figure(8, 3.6, left=0.12, bottom=0.15, top=0.9)
    axes.step(numbers, curve, where="post", color=FRONT)
    axes.set_xlabel("trial number")
    sizes = ", ".join(f"{name} {10 ** value:,.0f}" for name, value in zip(spec.objectives[1:], reference[1:]))
    axes.set_ylabel(f"hypervolume of (val acc, log10 size)\nreference: acc {reference[0]:g}, {sizes}", fontsize=9)
    axes.set_title("Pareto-front hypervolume after each trial", fontsize=10)
    axes.grid(True, alpha=0.25)
    figure.savefig(folder / "hypervolume.png", dpi=110)


def _plot_importance(path: Path, importances: dict[str, dict[str, float]], top: int = 12) -> None:
    rows = min(top, max(map(len, importances.values())))
    figure, axes_list = _figure(5.5 * len(importances), 1.2 + 0.3 * rows, columns=len(importances), left=0.2,
                                wspace=0.75, bottom=0.5 / (1.2 + 0.3 * rows) + 0.08, top=0.85)
    for axes, (objective, values) in zip(axes_list, importances.items()):
        shown = list(values.items())[:top][::-1]  # most important on top
        axes.barh([name for name, _ in shown], [value for _, value in shown], color=FRONT)
        axes.set_title(f"importance for {objective}", fontsize=10)
        axes.set_xlabel("importance (PED-ANOVA, normalised)")
        axes.tick_params(axis="y", labelsize=8)
    figure.savefig(path, dpi=110)


def _plot_effects(path: Path, frame: pd.DataFrame, spec: StudySpec) -> bool:
    complete = frame[frame["state"] == "COMPLETE"]
    present = [p for p in EFFECT_PARAMS if p in complete.columns and complete[p].notna().any()]
    if not present:
        return False
    size = spec.objectives[1]
    figure, axes_list = _figure(5.5 * len(present), 4, columns=len(present), right=0.9)
    for axes, param in zip(axes_list, present):
        rows = complete[complete[param].notna()]
        points = axes.scatter(rows[param].astype(float), rows["val_accuracy"], s=16,
                              c=np.log10(np.maximum(rows[size].to_numpy(float), 1.0)), cmap="viridis")
        if param == "distill.temperature":
            _log_axis(axes.xaxis)
        axes.set_xlabel(param)
        axes.set_ylabel("validation accuracy")
        axes.grid(True, alpha=0.25)
    figure.colorbar(points, ax=axes_list, label=f"log10 {size}")
    figure.savefig(path, dpi=110)
    return True


def _temperature_points(front: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """One row per level-2 choice on the front: trial, role, size, the chosen temperature (NaN where T does
    not apply: CE-only, or a KD kind without T), the KD share w_kd / (w_ce + w_kd) and the paired val gain
    over CE-only ± SE in points. Smallest student first."""
    size = spec.objectives[1]
    columns = ["trial", "role", "size", "temperature", "kd_share", "kind", "val_gain_pt", "val_gain_se_pt"]
    rows = []
    for row in front.to_dict("records") if "role" in front.columns else []:
        if row.get("role") not in (CE, VANILLA_KD, TUNED):
            continue
        settings = (json.loads(row["config"]) if isinstance(row.get("config"), str) else {}).get("distill", {})
        w_ce, w_kd = float(settings.get("w_ce", 0.0)), float(settings.get("w_kd", 0.0))
        distilled = row["role"] != CE and (w_kd > 0 or float(settings.get("w_feat", 0.0)) > 0)
        kind = settings.get("kind") if distilled else None
        rows.append({"trial": int(row["trial"]), "role": row["role"], "size": float(row[size]),
                     "temperature": float(settings["temperature"]) if kind in TEMPERATURE_KINDS else math.nan,
                     "kd_share": w_kd / (w_ce + w_kd) if distilled and w_ce + w_kd > 0 else 0.0, "kind": kind,
                     "val_gain_pt": _points(row.get("val_gain_vs_ce")),
                     "val_gain_se_pt": _points(row.get("val_gain_se"))})
    points = pd.DataFrame(rows, columns=columns)
    return points.sort_values(["size", "trial"]).reset_index(drop=True)


def _plot_temperature(folder: Path, points: pd.DataFrame, spec: StudySpec) -> None:
    figure = _temperature_figure(points, spec)
    figure.savefig(folder / "temperature.png", dpi=110)
    figure.savefig(folder / "temperature.svg")


def _temperature_figure(points: pd.DataFrame, spec: StudySpec) -> Figure:
    """Chosen T (left) and KD share (right) against log size; where T does not apply the point sits hollow
    (CE-only) or as x (a KD kind without T) on the bottom edge. Each point carries its paired val gain."""
    size = spec.objectives[1]
    figure, (t_axes, share_axes) = _figure(11, 4.4, columns=2, left=0.07, right=0.98, bottom=0.14, top=0.84,
                                           wspace=0.22)
    figure.suptitle(f"{spec.name}: the distillation chosen per front architecture "
                    "(labels: paired val gain over CE-only, pt)", fontsize=10)
    sizes = np.log10(np.maximum(points["size"].to_numpy(float), 1.0))
    margin = max(0.12 * (sizes.max() - sizes.min()), 0.3)
    left, right = sizes.min() - margin, sizes.max() + margin
    temperatures = points["temperature"].dropna()
    t_top = max(8.0, 1.25 * float(temperatures.max())) if len(temperatures) else 8.0
    t_axes.axhspan(*HINTON_T, color=KNEE, alpha=0.25, linewidth=0, label="Hinton et al. 2015: T 2.5-4")
    ce = points["role"] == CE
    has_t = points["temperature"].notna()
    no_t = ~ce & ~has_t
    for axes, column, bottom, top in ((t_axes, "temperature", 0.0, t_top), (share_axes, "kd_share", 0.0, 1.05)):
        _log_axis(axes.xaxis)
        axes.set_xlim(10 ** left, 10 ** right)
        axes.set_ylim(bottom, top)
        values = points[column].fillna(bottom) if column == "temperature" else points[column]
        line = points[~ce & has_t] if column == "temperature" else points[~ce]  # the curve over the distilled
        axes.plot(line["size"], line[column], color=FRONT, linewidth=1.2, linestyle="--", alpha=0.7)
        axes.scatter(points.loc[~ce & ~no_t, "size"], values[~ce & ~no_t], s=46, color=FRONT, zorder=3,
                     clip_on=False, label="distilled choice")
        if no_t.any():
            axes.scatter(points.loc[no_t, "size"], values[no_t], s=46, marker="x", color=FRONT, zorder=3,
                         clip_on=False, label="distilled, kind without T (at the bottom)" if column == "temperature"
                         else "distilled, kind without T")
        if ce.any():
            axes.scatter(points.loc[ce, "size"], values[ce], s=52, facecolors="none", edgecolors=TEACHER,
                         linewidths=1.3, zorder=3, clip_on=False,
                         label="CE-only: T n/a (at the bottom)" if column == "temperature" else "CE-only: share 0")
        for (_, row), y in zip(points.iterrows(), values):
            text = "CE-only" if row["role"] == CE else _gain_text(row["val_gain_pt"], row["val_gain_se_pt"])
            to_left = (np.log10(max(row["size"], 1.0)) - left) / (right - left) > 0.75
            axes.annotate(text, (row["size"], y), textcoords="offset points", xytext=(-6 if to_left else 6, 6),
                          ha="right" if to_left else "left", va="bottom", fontsize=7.5, annotation_clip=False,
                          color=TEACHER if row["role"] == CE else FRONT)
        axes.set_xlabel(f"{size} (log scale)")
        axes.grid(True, which="both", alpha=0.25)
    t_axes.set_ylabel("chosen temperature T")
    t_axes.set_title("temperature", fontsize=10)
    share_axes.set_ylabel("w_kd / (w_ce + w_kd)")
    share_axes.set_title("KD share of the loss", fontsize=10)
    t_axes.legend(loc="upper left", fontsize=7.5)
    return figure


def _points(fraction: Any) -> float:
    """A fraction of accuracy in percentage points; NaN when missing."""
    return math.nan if _missing(fraction) else 100.0 * float(fraction)


def _gain_text(gain_pt: float, se_pt: float) -> str:
    """`+0.42 ± 0.10 pt`; without a standard error (one seed) just the gain."""
    if _missing(gain_pt):
        return "—"
    return f"{gain_pt:+.2f} pt" if _missing(se_pt) else f"{gain_pt:+.2f} ± {se_pt:.2f} pt"


# ---------------------------------------------------------------------------------------------
# The summary: everything the page shows, as plain data (summary.json is this dict)


def _summary(study_arg: str, storage: str | None, spec: StudySpec, snapshot: optuna.Study, frame: pd.DataFrame,
             front: pd.DataFrame, teachers: list[dict], importances: dict, knee: int | None,
             notes: list[str]) -> dict[str, Any]:
    from autokd.results import counts, trained_epochs

    trials = snapshot.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    all_teachers = [t.name for t in spec.teachers]
    two_level = _two_level(snapshot)
    turned_down = _best_distilled(snapshot) if two_level else {}
    useful = (useful_mask(front[spec.objectives].to_numpy(float), spec.directions) if len(front)
              else np.ones(0, dtype=bool))
    return {
        "study": snapshot.study_name,  # may differ from spec.name when opened by name; escaped on the page
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "storage": _public_url(storage or spec.storage_url()),
        "objectives": spec.objectives,
        "directions": spec.directions,
        "constraints": spec.constraints,
        "data": spec.data.model_dump(mode="json"),
        "teachers": teachers,
        "two_level": two_level,
        "search_space": snapshot.user_attrs.get("space") or spec.search_space,
        "sampler": spec.sampler.model_dump(mode="json"),
        "budget": spec.budget.model_dump(mode="json"),
        "trials": {"total": len(frame), **counts(snapshot)},
        "failure_reasons": _failure_reasons(frame),
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "train_seconds": float(frame["train_seconds"].astype(float).sum()) if len(frame) else 0.0,
        "epochs_trained": trained_epochs(snapshot),
        "early_stopping": spec.early_stopping.model_dump(mode="json"),
        "versions": _versions(snapshot),
        "device": _device(frame),
        "hypervolume": study_hypervolume(frame, spec),
        "hypervolume_reference": hypervolume_reference(spec),
        "hypervolume_space": ["val_accuracy", *(f"log10 {name}" for name in spec.objectives[1:])],
        "knee_trial": knee,
        "knee_rule": KNEE_RULE,
        "knee_commands": _knee_commands(study_arg, storage, knee),
        "useful_floor": USEFUL_SHARE * float(front["val_accuracy"].max()) if len(front) else None,
        "front": [{**_front_row(row, position, knee, spec, all_teachers,
                                _export_command(study_arg, storage, row["trial"]), turned_down), "useful": bool(ok)}
                  for position, (row, ok) in enumerate(zip(front.to_dict("records"), useful), start=1)],
        "importance": importances,
        "notes": notes,
    }


def _front_row(values: dict[str, Any], position: int, knee: int | None, spec: StudySpec, all_teachers: list[str],
               export_command: str, turned_down: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    config = json.loads(values["config"]) if isinstance(values.get("config"), str) else {}
    settings = config.get("distill", {})
    uses_teachers = settings.get("w_kd", 0) > 0 or settings.get("w_feat", 0) > 0
    kind = settings.get("kind")
    role = values.get("role") if isinstance(values.get("role"), str) else None
    return {
        "position": position, "trial": int(values["trial"]), "knee": bool(values["trial"] == knee),
        **{name: values.get(name) for name in (*spec.objectives, "params", "bytes_fp32", "macs")},
        "temperature": settings.get("temperature") if uses_teachers and kind in TEMPERATURE_KINDS else None,
        "w_ce": settings.get("w_ce"), "w_kd": settings.get("w_kd"), "w_feat": settings.get("w_feat"),
        "kd_kind": kind if uses_teachers else None, "aggregation": settings.get("aggregation"),
        "student": config.get("student", {}),
        "teachers_used": (settings.get("teachers") or all_teachers) if uses_teachers else [],
        **{column: values.get(column) for column in EVALUATION_COLUMNS},
        "role": role, "choice": _choice_text(values, role, (turned_down or {}).get(values.get("arch"))),
        "val_gain_vs_ce_pt": _points(values.get("val_gain_vs_ce")),
        "val_gain_se_pt": _points(values.get("val_gain_se")),
        "export_command": export_command,
    }


def _choice_text(values: dict[str, Any], role: str | None, turned_down: dict[str, Any] | None) -> str | None:
    """`CE-only — distillation did not help at this size (best distilled: trial 7, +0.10 ± 0.20 pt)`."""
    if role is None:
        return None
    reason = values.get("front_reason")
    text = ROLE_LABELS.get(role, role) + ("" if _missing(reason) else f" — {reason}")
    if role == CE and turned_down is not None:
        text += (f" (best distilled: trial {turned_down['trial']}, "
                 f"{_gain_text(turned_down['gain_pt'], turned_down['se_pt'])})")
    return text


def _export_command(study_arg: str, storage: str | None, trial: int) -> str:
    storage_flag = f" --storage {shlex.quote(_public_url(storage))}" if storage else ""
    return f"autokd export {shlex.quote(study_arg)}{storage_flag} --trial {trial} -o trial-{trial}.yaml"


def _knee_commands(study_arg: str, storage: str | None, knee: int | None) -> list[str]:
    """Export the knee, then train it: what to type to get the student the report recommends."""
    if knee is None:
        return []
    return [_export_command(study_arg, storage, knee), f"autokd train trial-{knee}.yaml"]


def _public_url(url: str) -> str:
    """The storage URL with any password masked: the report may be shared."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show only its scheme
        return url.split("://", 1)[0] + "://..."


def _failure_reasons(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """How often each reason ended a FAIL or PRUNED trial, most frequent first."""
    tally: Counter = Counter()
    for state, column in (("FAIL", "failure_reason"), ("PRUNED", "pruned_reason")):
        reasons = frame.loc[frame["state"] == state, column].fillna("(no reason recorded)")
        tally.update((state, str(reason)) for reason in reasons)
    return [{"state": state, "reason": reason, "count": count} for (state, reason), count in tally.most_common()]


def _versions(snapshot: optuna.Study) -> dict[str, str]:
    versions = {}
    for package in ("autokd", "torch", "optuna", "ray"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    if "autokd_version" in snapshot.user_attrs:
        versions["autokd (search)"] = str(snapshot.user_attrs["autokd_version"])
    return versions


def _device(frame: pd.DataFrame) -> dict[str, Any]:
    import torch

    trials = Counter(_node_name(node) for node in frame["node"].dropna())
    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    return {"report_machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
                              f"accelerator: {accelerator}",
            "search_nodes": sorted(trials), "search_node_trials": dict(sorted(trials.items()))}


def _node_name(node: Any) -> str:
    """A host name as it is; a Ray node id (56 hex digits) cut to its first 8 characters."""
    text = str(node)
    return text[:8] if RAY_NODE_ID.fullmatch(text) else text


def _jsonable(value: Any) -> Any:
    """Plain JSON: NaN becomes null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# The page. Every value passes through `_e` (html.escape) on its way in: names, parameter values,
# failure reasons and teacher names are user-controlled.


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, float) and not float(value).is_integer():
        return f"{value:.4g}"
    return f"{int(value):,}"


def _accuracy(value: Any) -> str:
    return "—" if _missing(value) else f"{value:.4f}"


def _gain(value: Any) -> str:
    return "—" if _missing(value) else f"{value:+.2f} pp"


def _table(headers: list[str] | None, rows: list[list[Any]], row_classes: list[str] | None = None,
           table_id: str | None = None) -> str:
    head = f'<thead><tr>{"".join(f"<th>{_e(h)}</th>" for h in headers)}</tr></thead>' if headers else ""
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f"<td>{_e(cell)}</td>" for cell in row)
        css = f' class="{_e(row_classes[index])}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    container = f' id="{_e(table_id)}"' if table_id else ""
    return f'<div class="scroll"{container}><table>{head}<tbody>{"".join(body)}</tbody></table></div>'


def _image(folder: Path, name: str, alt: str) -> str:
    path = folder / name
    if not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(alt)}"></figure>'


def _arch_text(arch: dict) -> str:
    """`mlp depth=1 width=22`: the family and the shape values that differ from its defaults."""
    from autokd.zoo import FAMILIES

    defaults = FAMILIES.get(arch.get("family"), {})
    rest = " ".join(f"{k}={v}" for k, v in arch.items() if k != "family" and defaults.get(k, object()) != v)
    return f"{arch.get('family', '?')} {rest}".strip()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _overview_rows(summary: dict) -> list[list[Any]]:
    trials = summary["trials"]
    data = ", ".join(f"{k}={v}" for k, v in summary["data"].items() if v is not None)
    reference = ", ".join(f"{name} {value:.3g}" for name, value in
                          zip(summary["hypervolume_space"], summary["hypervolume_reference"]))
    return [
        ["data", data],
        ["objectives", ", ".join(f"{o} ({d})" for o, d in zip(summary["objectives"], summary["directions"]))],
        ["constraints", ", ".join(summary["constraints"]) or "none"],
        ["sampler", ", ".join(f"{k}={v}" for k, v in summary["sampler"].items())],
        ["budget", ", ".join(f"{k}={v}" for k, v in summary["budget"].items() if v is not None)],
        ["trials", f"{trials['total']} in storage: {trials['complete']} complete, {trials['failed']} failed, "
                   f"{trials['infeasible']} infeasible, {trials['stopped']} stopped early, "
                   f"{trials['interrupted']} interrupted, {trials['running']} running or waiting"],
        ["wall time", f"{_duration(summary['wall_seconds'])} (first trial start to last trial end); "
                      f"{summary['train_seconds']:.0f} s of training in all"],
        ["compute", f"{summary['epochs_trained']} epochs trained in all; early stopping: "
                    + ", ".join(f"{k}={v}" for k, v in summary["early_stopping"].items())],
        ["hypervolume", f"{summary['hypervolume']:.4f} of ({', '.join(summary['hypervolume_space'])}) "
                        f"against reference point ({reference})"],
        ["knee", "—" if summary["knee_trial"] is None else
                 f"trial {summary['knee_trial']} ({summary['knee_rule']}; the trial autokd export --knee picks)"],
        ["storage", summary["storage"]],
        ["versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())],
        ["device", summary["device"]["report_machine"] + "; search nodes: "
                   + (", ".join(f"{name} ({count} trials)" for name, count in
                                summary["device"]["search_node_trials"].items()) or "—")],
        ["generated", summary["generated_at"]],
    ]


def _front_table(summary: dict) -> str:
    size = summary["objectives"][1]
    two_level = summary.get("two_level", False)
    headers = ["#", "trial", "params", "bytes (fp32)", "MACs", "val acc", "test acc", "T",
               "weights ce / kd / feat", "KD kind", "student", "teachers", "gain vs CE", "gain vs vanilla KD"]
    if two_level:
        headers[-2:] = ["choice", "val gain vs CE", "test gain vs CE", "test gain vs vanilla KD"]
    if size not in ("params", "bytes_fp32", "macs"):
        headers.insert(5, size)
    rows, classes = [], []
    for row in summary["front"]:
        mark = " (knee)" if row["knee"] else "" if row["useful"] else " (below band)"
        cells = [f"{row['position']}{mark}", row["trial"], _number(row["params"]),
                 _number(row["bytes_fp32"]), _number(row["macs"]), _accuracy(row["val_accuracy"]),
                 _accuracy(row["test_accuracy"]), _number(row["temperature"]),
                 " / ".join(_number(row[k]) for k in ("w_ce", "w_kd", "w_feat")), row["kd_kind"] or "none (CE)",
                 _arch_text(row["student"]), ", ".join(row["teachers_used"]) or "—", _gain(row["gain_vs_ce"]),
                 _gain(row["gain_vs_vanilla_kd"])]
        if two_level:
            cells[-2:] = [row["choice"] or "—", _gain_text(row["val_gain_vs_ce_pt"], row["val_gain_se_pt"]),
                          _gain_text(row["gain_vs_ce"], row["gain_vs_ce_se"]),
                          _gain_text(row["gain_vs_vanilla_kd"], row["gain_vs_vanilla_kd_se"])]
        if size not in ("params", "bytes_fp32", "macs"):
            cells.insert(5, _number(row[size]))
        rows.append(cells)
        classes.append("knee" if row["knee"] else "" if row["useful"] else "low")
    commands = "\n".join(row["export_command"] for row in summary["front"])
    return (_table(headers, rows, row_classes=classes, table_id="front-table")
            + f'<p>Export any front trial:</p><pre class="cmd" id="export-commands">{_e(commands)}</pre>')


def _knee_block(summary: dict) -> str:
    """The recommended student in one sentence, its commands in a block that wraps instead of scrolling."""
    size = summary["objectives"][1]
    row = next(r for r in summary["front"] if r["knee"])
    below = [r for r in summary["front"] if not r["useful"]]
    parts = [f'<p class="pick"><strong>Knee: trial {_e(row["trial"])}</strong>, val acc '
             f'{_e(_accuracy(row["val_accuracy"]))} at {_e(_number(row[size]))} {_e(size)} '
             f'({_e(summary["knee_rule"])}; <code>autokd export --knee</code> picks the same trial). '
             "Export it and train it:</p>",
             f'<pre class="cmd" id="knee-commands">{_e(chr(10).join(summary["knee_commands"]))}</pre>',
             "<p>Add <code>--epochs N</code> to train longer than the trial did, <code>--seeds S</code> for a "
             "mean ± std over seeds; any other front trial exports the same way with its <code>--trial</code>.</p>"]
    if below:
        listed = ", ".join(f"trial {r['trial']} ({_accuracy(r['val_accuracy'])} at {_number(r[size])} {size})"
                           for r in below)
        parts.append(f'<p class="band">The plot\'s accuracy axis shows the useful band. Front trials below '
                     f'{USEFUL_SHARE:.0%} of the best val accuracy (&lt; {_e(_accuracy(summary["useful_floor"]))}) are '
                     f"drawn ▼ at its bottom edge with their accuracy, stay in the table, and are no candidates "
                     f"for the knee: {_e(listed)}.</p>")
    return "".join(parts)


def _two_level_gains_text(summary: dict) -> str:
    seeds = sorted({int(row["test_seeds"]) for row in summary["front"] if not _missing(row.get("test_seeds"))})
    counted = " or ".join(map(str, seeds)) or "its"
    return ("Each architecture holds one front place: CE-only unless a distilled config's paired val gain "
            "beats the margin (choice). Val and test accuracy are means over the architecture's "
            f"{_e(counted)} paired seeds; gains are percentage points over the same student trained with "
            "cross-entropy only (and with vanilla KD: KL, T=4, w_kd 0.9, w_ce 0.1) on the same seeds, the mean of "
            "the per-seed differences ± its standard error.")


def _teachers_block(summary: dict) -> str:
    """The teachers, each with whether it can teach: one less accurate than the best CE-only student cannot."""
    best = summary.get("best_ce_only_student")
    if best is None:
        intro = "<p>No CE-only student in the study to compare the teachers with.</p>"
    else:
        source = ("the best level-1 architecture" if summary.get("two_level") else
                  "the best trial trained with cross-entropy only")
        intro = (f"<p>Teachers that can teach: a teacher less accurate (val) than the best CE-only student of the "
                 f"study (trial {_e(best['trial'])}, val acc {_e(_accuracy(best['val_accuracy']))}, {source}) has "
                 "little to teach it. A two-level search leaves such teachers out of level 2 unless "
                 "<code>search.weak_teachers: keep</code>.</p>")
    rows = [[t["name"], _arch_text(t["arch"]), _number(t["params"]), _accuracy(t["val_accuracy"]),
             _accuracy(t["test_accuracy"]), t.get("can_teach", "—")] for t in summary["teachers"]]
    classes = ["low" if t.get("weaker") else "" for t in summary["teachers"]]
    return intro + _table(["name", "architecture", "params", "val acc", "test acc", "can teach"], rows,
                          row_classes=classes, table_id="teachers-table")


def _robust_table(summary: dict) -> str:
    """The re-run front configs by mean val accuracy; those that need their lucky seed are marked."""
    size = summary["objectives"][1]
    rows = []
    for rank, row in enumerate(summary["robust"], start=1):
        verdict = ("on the front by mean" if row["front_by_mean"] else
                   f"off the front by mean (trial {row['beaten_by']} is as accurate and no larger): "
                   "its place rests on one seed")
        rows.append([rank, row["trial"], _number(row[size]), _accuracy(row["val_accuracy"]),
                     f"{_accuracy(row['mean'])} ± {_accuracy(row['std'])}",
                     ", ".join(_accuracy(a) for a in row["val_accuracies"]), verdict])
    seeds = summary["robust"][0]["seeds"]
    return (f"<p>The top front configs by val accuracy, re-run with {_e(seeds)} seeds (the search's seed first) "
            "and ranked by mean; ± is the standard deviation over the seeds.</p>"
            + _table(["#", "trial", size, "val acc (search)", "mean ± std", "per seed", "verdict"], rows))


def _space_rows(space: Any) -> list[list[Any]]:
    if not isinstance(space, dict):
        return [[str(space), "file", "", ""]]
    params = space.get("params", space)  # the stored signature, or an inline space document
    return [[name, param.get("type", ""), _range_text(param),
             ", ".join(f"{k} in {v}" for k, v in (param.get("when") or {}).items())]
            for name, param in params.items() if isinstance(param, dict)]


def _range_text(param: dict) -> str:
    kind = param.get("type")
    if kind in ("float", "int"):
        step = f", step {param['step']}" if param.get("step", 1) != 1 else ""
        return f"{param.get('low')} to {param.get('high')}{' (log)' if param.get('log') else ''}{step}"
    if kind == "categorical":
        return ", ".join(map(str, param.get("choices", [])))
    if kind == "fixed":
        return str(param.get("value"))
    if kind == "teacher_subset":
        return "any non-empty subset of the teachers" + (f" (at most {param['max_size']})"
                                                          if param.get("max_size") else "")
    return json.dumps(param)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;margin:0;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.sub{color:#5b6573;margin:0 0 16px}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 8px;border-bottom:1px solid #e6e8eb;
text-align:left;vertical-align:top}th{background:#f0f2f5}tbody tr:nth-child(even){background:#fafbfc}
tr.knee{background:#fff6d6 !important;font-weight:600}tr.low{color:#7b8490}code{font-size:12px}
pre.cmd{white-space:pre-wrap;overflow-wrap:anywhere;background:#f0f2f5;border:1px solid #e0e3e8;padding:8px 12px;
font-size:13px;margin:6px 0}.pick{margin:12px 0 4px}p code{white-space:nowrap}.band{color:#5b6573}
figure{margin:8px 0}img{max-width:100%;height:auto;border:1px solid #eceef1}
.notes{background:#fff8e6;border-left:4px solid #f0b429;padding:8px 14px}.empty{color:#8a4b00;font-weight:600}
"""


def render_html(summary: dict, folder: Path) -> str:
    """The self-contained page for `summary`; images are read from `folder` and inlined."""
    name = summary["study"]
    complete = summary["trials"]["complete"]
    parts = [f"<h1>autokd report: {_e(name)}</h1>",
             f'<p class="sub">Pareto front of validation accuracy vs {_e(summary["objectives"][1])}. '
             "Test accuracy is measured only for the front, after the search, and never used to choose.</p>"]
    if complete == 0:
        parts.append('<p class="empty">No complete trials yet: there is no front to show. '
                     f'{_e(summary["trials"]["total"])} trial(s) in storage.</p>')
    if summary["notes"]:
        parts.append('<div class="notes"><ul>' + "".join(f"<li>{_e(n)}</li>" for n in summary["notes"])
                     + "</ul></div>")
    parts += ["<h2>Study</h2>", _table(None, _overview_rows(summary))]
    if complete:
        parts += ["<h2>Pareto front</h2>", _image(folder, "pareto.png", f"{name}: validation accuracy vs size"),
                  _knee_block(summary),
                  '<p>Also as <a href="pareto.svg">SVG</a>; all rows in <a href="pareto.csv">pareto.csv</a>, '
                  'every trial in <a href="trials.csv">trials.csv</a>. '
                  + (_two_level_gains_text(summary) if summary.get("two_level") else
                     "Gains are test-accuracy percentage points over the same student trained with cross-entropy "
                     "only and with vanilla KD (KL, T=4, w_kd 0.9, w_ce 0.1), same schedule and seed.") + "</p>",
                  _front_table(summary)]
    if summary["robust"]:
        parts += ["<h2>Robust front</h2>", _robust_table(summary)]
    if summary["teachers"]:
        parts += ["<h2>Teachers</h2>", _teachers_block(summary)]
    if summary["failure_reasons"]:
        parts += ["<h2>Trials that did not complete</h2>",
                  _table(["state", "reason", "count"],
                         [[r["state"], r["reason"], r["count"]] for r in summary["failure_reasons"]])]
    if complete:
        parts += ["<h2>Search progress</h2>", _image(folder, "hypervolume.png", "front hypervolume by trial"),
                  "<h2>Parameter importance</h2>", _image(folder, "importance.png", "parameter importance"),
                  "<h2>Temperature and KD weight</h2>", _image(folder, "effects.png", "parameter effects")]
        if summary.get("temperature_curve"):
            parts += ["<h2>Temperature by student size</h2>",
                      _image(folder, "temperature.png", "chosen temperature and KD share by student size"),
                      f'<p class="caption" id="temperature-caption">The temperature curve: {_e(TEMPERATURE_CAPTION)}. '
                      "Filled: the distilled config that took the architecture's front place, labelled with its "
                      "paired val gain over CE-only; hollow at the bottom: CE-only (T does not apply); the shaded "
                      'band is T 2.5-4. Also as <a href="temperature.svg">SVG</a>.</p>']
    parts += ["<h2>Search space</h2>", _table(["parameter", "type", "range / choices", "only when"],
                                              _space_rows(summary["search_space"]))]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>autokd report: {_e(name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


# ---------------------------------------------------------------------------------------------
# Atomic folder replacement


@contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder`; on success it replaces `folder`, on error it is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.building-"))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a report is meant to be read
    try:
        yield staging
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        if folder.exists():
            folder.rename(old)  # directories cannot be replaced in one rename; this keeps the gap to two renames
        staging.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
