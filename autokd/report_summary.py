"""The report's summary: everything the page shows, as plain data (summary.json is this dict).

`build_summary` turns the report's data (`autokd.report_data`) into rows a person reads: each front
point with its role, the commands that export it, why a CE-only place turned distillation down;
plus the study's budget, trial counts, failures, versions and machines. The storage URL is shown
with its password masked, since the report may be shared.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autokd.evaluation import EVALUATION_COLUMNS
from autokd.pairing import CE, TUNED, VANILLA_KD, paired_gain
from autokd.pareto import USEFUL_SHARE, useful_mask
from autokd.report_data import TEMPERATURE_KINDS, is_two_level
from autokd.report_format import gain_text, missing, to_points
from autokd.results import counts, hypervolume_reference, study_hypervolume, trained_epochs
from autokd.spec import StudySpec

KNEE_RULE = ("farthest below the line joining the ends of the front on log size, among front trials with at least "
             f"{USEFUL_SHARE:.0%} of the best val accuracy")
ROLE_LABELS = {CE: "CE-only", VANILLA_KD: "vanilla KD", TUNED: "tuned KD", "architecture": "architecture (level 1)"}
RAY_NODE_ID = re.compile(r"[0-9a-f]{56}")


def build_summary(study_arg: str, storage: str | None, spec: StudySpec, snapshot: optuna.Study,
                  frame: pd.DataFrame, front: pd.DataFrame, teachers: list[dict], importances: dict,
                  knee: int | None, notes: list[str], *, robust: pd.DataFrame, best_ce_only: dict[str, Any] | None,
                  temperature_curve: pd.DataFrame | None) -> dict[str, Any]:
    """Everything the page shows, from the report's data; `study_arg` and `storage` are what the user gave
    (the export commands repeat them). `temperature_curve` is None in a flat study."""
    trials = snapshot.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    all_teachers = [t.name for t in spec.teachers]
    two_level = is_two_level(snapshot)
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
        "robust": robust.to_dict("records"),
        "best_ce_only_student": best_ce_only,
        "temperature_curve": [] if temperature_curve is None else temperature_curve.to_dict("records"),
    }


def _front_row(values: dict[str, Any], position: int, knee: int | None, spec: StudySpec, all_teachers: list[str],
               export_command: str, turned_down: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    config = json.loads(values["config"]) if isinstance(values.get("config"), str) else {}
    settings = config.get("distill", {})
    uses_teachers = settings.get("w_kd", 0) > 0 or settings.get("w_feat", 0) > 0 or settings.get("w_at", 0) > 0
    kind = settings.get("kind")
    role = values.get("role") if isinstance(values.get("role"), str) else None
    return {
        "position": position, "trial": int(values["trial"]), "knee": bool(values["trial"] == knee),
        # val_accuracy: the fp32 accuracy also when the first objective is the int8 one
        **{name: values.get(name) for name in dict.fromkeys((*spec.objectives, "val_accuracy", "params",
                                                             "bytes_fp32", "macs"))},
        "temperature": settings.get("temperature") if uses_teachers and kind in TEMPERATURE_KINDS else None,
        "w_ce": settings.get("w_ce"), "w_kd": settings.get("w_kd"), "w_feat": settings.get("w_feat"),
        "kd_kind": kind if uses_teachers else None, "aggregation": settings.get("aggregation"),
        "student": config.get("student", {}),
        "teachers_used": (settings.get("teachers") or all_teachers) if uses_teachers else [],
        **{column: values.get(column) for column in EVALUATION_COLUMNS},
        "role": role, "choice": _choice_text(values, role, (turned_down or {}).get(values.get("arch"))),
        "val_gain_vs_ce_pt": to_points(values.get("val_gain_vs_ce")),
        "val_gain_se_pt": to_points(values.get("val_gain_se")),
        "export_command": export_command,
    }


def _choice_text(values: dict[str, Any], role: str | None, turned_down: dict[str, Any] | None) -> str | None:
    """`CE-only — distillation did not help at this size (best distilled: trial 7, +0.10 ± 0.20 pt)`."""
    if role is None:
        return None
    reason = values.get("front_reason")
    text = ROLE_LABELS.get(role, role) + ("" if missing(reason) else f" — {reason}")
    if role == CE and turned_down is not None:
        text += (f" (best distilled: trial {turned_down['trial']}, "
                 f"{gain_text(turned_down['gain_pt'], turned_down['se_pt'])})")
    return text


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
        if role not in (VANILLA_KD, TUNED) or baseline is None or arch in best:  # confirmations: other seeds
            continue
        seeds, baseline_seeds = trial.user_attrs["val_accuracy_seeds"], baseline.user_attrs["val_accuracy_seeds"]
        if len(seeds) != len(baseline_seeds):
            continue
        gain, standard_error = paired_gain(seeds, baseline_seeds)
        best[int(arch)] = {"trial": trial.number, "gain_pt": 100 * gain, "se_pt": 100 * standard_error}
    return best


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


