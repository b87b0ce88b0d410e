"""The report's data, read from a snapshot of the study: the front with its test evaluations, the teachers
and whether they can teach, the knee, parameter importance and the curves the figures draw.

Nothing here writes to the study. What cannot be had (teachers without their dataset, importance
with too few trials) leaves a note in `notes` and an empty value: the rest of the report still stands.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd

from autokd.errors import AutokdError
from autokd.evaluation import EVALUATION_COLUMNS, evaluate_front
from autokd.pairing import CE, TUNED, VANILLA_KD
from autokd.pareto import hypervolume, knee_index, pareto_front_mask
from autokd.report_format import to_points
from autokd.results import front_frame, hypervolume_points, hypervolume_reference, log_sizes
from autokd.spec import StudySpec

MIN_TRIALS_FOR_IMPORTANCE = 4
TEMPERATURE_KINDS = ("kl", "dkd", "lskd", "dist")  # the KD kinds that soften logits with T
WEAKER = "weaker than the best CE-only student"


def study_snapshot(study: optuna.Study) -> optuna.Study:
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


def is_two_level(study: optuna.Study) -> bool:
    """Whether the study searched architectures first, then each one's distillation (`levels`)."""
    return study.user_attrs.get("search_mode") == "two_level"


def best_ce_only_student(study: optuna.Study) -> dict[str, Any] | None:
    """{"trial", "val_accuracy"} of the study's most accurate CE-only student, or None.

    Two-level: the best level-1 trial (architectures train with cross-entropy only; what
    `levels.TwoLevelPlan.able_teachers` compares teachers with). Flat: the best trial whose config
    has w_kd == 0 and w_feat == 0, if any. Ties go to the lower trial number.
    """
    two_level = is_two_level(study)
    best = None
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if not trial.values:
            continue
        if two_level:
            ce_only = trial.user_attrs.get("level") == 1
        else:
            settings = (trial.user_attrs.get("config") or {}).get("distill") or {}
            ce_only = all(settings.get(key, default) == 0
                          for key, default in (("w_kd", 1.0), ("w_feat", 0.0), ("w_at", 0.0)))
        if ce_only and (best is None or trial.values[0] > best["val_accuracy"]):
            best = {"trial": trial.number, "val_accuracy": float(trial.values[0])}
    return best


def flag_weak_teachers(teachers: list[dict], study: optuna.Study, spec: StudySpec,
                       best: dict[str, Any] | None) -> list[dict]:
    """The teacher rows with `weaker` (val accuracy below `best`'s) and `can_teach` (the page's verdict).

    In a two-level study the verdict says what level 2 did with a weaker teacher: the level-2
    trials' `teachers_allowed` when there are any, else the plan's rule (left out unless
    `search.weak_teachers: keep`, or unless every teacher is weaker).
    """
    if not teachers:
        return teachers
    weaker = {t["name"]: best is not None and t["val_accuracy"] is not None and t["val_accuracy"] < best["val_accuracy"]
              for t in teachers}
    allowed = None
    if is_two_level(study):
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


def front_with_tests(frame: pd.DataFrame, snapshot: optuna.Study, spec: StudySpec, evaluate_test: bool,
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


def front_with_robust(front: pd.DataFrame, robust: pd.DataFrame) -> pd.DataFrame:
    """The front with each re-run config's mean, std, seeds and verdict joined on (`results.robust_frame`)."""
    if not len(robust):
        return front
    columns = {"mean": "robust_mean", "std": "robust_std", "seeds": "robust_seeds",
               "front_by_mean": "robust_front_by_mean"}
    return front.merge(robust[["trial", *columns]].rename(columns=columns), on="trial", how="left")


def teacher_rows(spec: StudySpec, notes: list[str], log: Callable[[str], None]) -> list[dict]:
    """Each teacher's size and val/test accuracy, from the teacher cache (the search filled it)."""
    if not spec.teachers:
        return []
    from autokd.data import load_data
    from autokd.teachers import prepare_teachers

    try:
        data = load_data(spec.data, spec.source)
        teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, log=log)
    except AutokdError as error:  # e.g. the dataset is not on this machine: the rest of the report still stands
        notes.append(f"teachers unavailable: {error}")
        return []
    return [{"name": t.name, "arch": t.meta["arch"], "val_accuracy": t.meta["val_accuracy"],
             "test_accuracy": t.meta["test_accuracy"], "params": t.meta["params"],
             "bytes_fp32": t.meta["bytes_fp32"], "macs": t.meta["macs"]} for t in teachers]


def knee_trial(front: pd.DataFrame, spec: StudySpec) -> int | None:
    """The knee of the front, its rows taken in trial order as `export.choose_trial(knee=True)` takes the
    complete trials: `knee_index` keeps only their front, so both see the same points in the same order
    and a tie falls the same way (the front sorted by size would give a tie to the smaller trial)."""
    if front.empty:
        return None
    rows = front.sort_values("trial")
    return int(rows["trial"].iloc[knee_index(log_sizes(rows[spec.objectives].to_numpy(float)), spec.directions)])


def parameter_importances(snapshot: optuna.Study, spec: StudySpec, notes: list[str]) -> dict[str, dict[str, float]]:
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


def hypervolume_curve(frame: pd.DataFrame, spec: StudySpec) -> tuple[np.ndarray, np.ndarray]:
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


def temperature_points(front: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
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
        distilled = row["role"] != CE and (w_kd > 0 or float(settings.get("w_feat", 0.0)) > 0
                                           or float(settings.get("w_at", 0.0)) > 0)
        kind = settings.get("kind") if distilled else None
        rows.append({"trial": int(row["trial"]), "role": row["role"], "size": float(row[size]),
                     "temperature": float(settings["temperature"]) if kind in TEMPERATURE_KINDS else math.nan,
                     "kd_share": w_kd / (w_ce + w_kd) if distilled and w_ce + w_kd > 0 else 0.0, "kind": kind,
                     "val_gain_pt": to_points(row.get("val_gain_vs_ce")),
                     "val_gain_se_pt": to_points(row.get("val_gain_se"))})
    points = pd.DataFrame(rows, columns=columns)
    return points.sort_values(["size", "trial"]).reset_index(drop=True)


