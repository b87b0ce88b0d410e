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

The work is split by job, and data flows one way: `report_data` reads the study into frames,
`report_figures` draws them, `report_summary` turns them into the plain data the page shows and
`report_html` renders that page; this module runs the four in order and writes the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autokd.atomic import replace_folder
from autokd.errors import StorageError
from autokd.report_data import (best_ce_only_student, flag_weak_teachers, front_with_robust, front_with_tests,
                                hypervolume_curve, is_two_level, knee_trial, parameter_importances, study_snapshot,
                                teacher_rows, temperature_points)
from autokd.report_figures import (EFFECT_PARAMS, effects_figure, hypervolume_figure, importance_figure,
                                   pareto_figure, save, temperature_figure)
from autokd.report_html import render_html
from autokd.report_summary import build_summary
from autokd.results import hypervolume_reference, robust_frame, study_and_spec, trials_frame


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
    snapshot = study_snapshot(optuna_study)
    frame = trials_frame(snapshot)
    notes: list[str] = []
    robust = robust_frame(snapshot, frame)
    front = front_with_robust(front_with_tests(frame, snapshot, spec, evaluate_test, baselines, notes, log), robust)
    best_ce_only = best_ce_only_student(snapshot)
    teachers = flag_weak_teachers(teacher_rows(spec, notes, log), snapshot, spec, best_ce_only)
    folder = Path(out) if out is not None else Path("reports") / spec.name

    with replace_folder(folder) as staging:
        importances = parameter_importances(snapshot, spec, notes)
        knee = knee_trial(front, spec)
        save(pareto_figure(frame, front, spec, teachers, knee), staging, "pareto", svg=True)
        save(hypervolume_figure(*hypervolume_curve(frame, spec), hypervolume_reference(spec), spec.objectives[1:]),
             staging, "hypervolume")
        save(importance_figure(importances), staging, "importance")
        effects = effects_figure(frame, spec)
        if effects is None:
            notes.append(f"effects plot skipped: no complete trial has {' or '.join(EFFECT_PARAMS)}")
        save(effects, staging, "effects")
        curve = temperature_points(front, spec) if is_two_level(snapshot) else None
        if curve is None:
            notes.append("temperature curve skipped: a flat study has no per-architecture choice to plot "
                         "(two-level studies only)")
        elif curve.empty:
            notes.append("temperature curve skipped: no architecture has its level-2 choice yet")
        else:
            save(temperature_figure(curve, spec), staging, "temperature", svg=True)
        summary = build_summary(str(study), storage, spec, snapshot, frame, front, teachers, importances, knee, notes,
                                robust=robust, best_ce_only=best_ce_only, temperature_curve=curve)
        frame.to_csv(staging / "trials.csv", index=False)
        front.to_csv(staging / "pareto.csv", index=False)
        (staging / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
        (staging / "index.html").write_text(render_html(summary, staging))
    return folder


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
