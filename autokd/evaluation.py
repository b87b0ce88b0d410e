"""Test re-evaluation of chosen trials: the only code that touches the test split.

The search ranks and selects on validation accuracy only. For the report, each given trial
is retrained from its recorded config with its own seed (deterministic on CPU, so its val
accuracy comes out as recorded) and measured once on the test split. Baselines show what
distillation bought: per distinct student architecture the same student is also trained with
cross-entropy only and with vanilla KD, at the same schedule and seed.

A level-2 trial of a two-level study (trial attrs `seeds`, `arch`, `role`) is evaluated on its
paired seeds instead (on its confirmation's fresh seeds when it has one, `levels`): the trial's
config, its architecture's CE-only and vanilla-KD baselines
(the level-2 baseline trials' configs; vanilla KD learns from the trial's `teachers_allowed`),
each on every seed. Test accuracy is then the mean over the seeds, and the gains are paired
(`pairing.paired_gain`, per seed) with their standard error. A trial that is itself a baseline
is run once, under that baseline's kind: a CE-only front point and its CE-only baseline are the
same runs.

Every evaluation is cached as JSON under ``<cache_dir>/evaluations/<study>/<sha256>.json``
(hash of the config, seed and kind), so a second report retrains nothing. Nothing here writes
to the Optuna study, and test accuracy never feeds back into any choice.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import optuna
import pandas as pd

from autokd import data as data_module
from autokd import distill
from autokd import pairing
from autokd.paths import resolve_paths
from autokd.spec import DistillSpec, StudySpec, TrainConfig
from autokd.atomic import write_bytes
from autokd.runner import run_config
from autokd.train import prepare_targets

# What a baseline replaces in the trial's distillation settings (teacher subset kept for KD).
CE_ONLY = {"w_ce": 1.0, "w_kd": 0.0, "w_feat": 0.0}
VANILLA_KD = {"kind": "kl", "temperature": 4.0, "w_kd": 0.9, "w_ce": 0.1, "w_feat": 0.0,
              "aggregation": "mean_logits"}

# Columns of `evaluate_front` besides "trial" and the recorded "val_accuracy"; gains are in
# test-accuracy percentage points (trial minus baseline). Over paired seeds, accuracies are means
# and gains paired means with their standard error (`*_se`; NaN for one seed); `test_seeds` counts them.
EVALUATION_COLUMNS = ("val_accuracy_retrained", "test_accuracy", "ce_test_accuracy", "vanilla_kd_test_accuracy",
                      "gain_vs_ce", "gain_vs_vanilla_kd", "baseline_trial", "gain_vs_ce_se", "gain_vs_vanilla_kd_se",
                      "test_seeds")


def evaluate_front(study: optuna.Study, spec: StudySpec, trial_numbers: Sequence[int], *, baselines: bool = True,
                   log: Callable[[str], None] = print) -> pd.DataFrame:
    """Retrain the given COMPLETE trials and measure them (and, optionally, baselines) on the test split.

    Returns one row per trial: its recorded and retrained val accuracy, test accuracy, the test
    accuracy of its architecture's CE-only and vanilla-KD baselines, and the gains over them.
    A level-2 trial of a two-level study is measured on its paired seeds (means, paired gains ± SE).

    Example::

        study, spec = results.study_and_spec("studies/digits.yaml")
        front = results.front_frame(results.trials_frame(study))
        print(evaluate_front(study, spec, front["trial"].tolist())[["trial", "test_accuracy", "gain_vs_ce"]])
    """
    runner = _Runner(spec, log)
    siblings, confirmations = _level2_baselines(study), _confirmations(study)
    baselines_by_arch: dict[str, tuple[int, dict[str, float]]] = {}
    rows = []
    for trial in _complete_trials(study, trial_numbers):
        if _paired(trial):
            rows.append(_evaluate_paired(runner, trial, siblings, baselines, log, confirmations.get(trial.number)))
            continue
        config = TrainConfig.model_validate(trial.user_attrs["config"])
        result = runner.run(config, "trial", trial.number)
        # the fp32 val accuracy (an int8 study's first objective is its quantised accuracy; the fp32 one is an attr)
        recorded = trial.user_attrs.get("val_accuracy", trial.values[0])
        _warn_if_drifted(trial.number, result["val_accuracy"], recorded, log)
        row = {"trial": trial.number, "val_accuracy": recorded, "val_accuracy_retrained": result["val_accuracy"],
               "test_accuracy": result["test_accuracy"], "test_seeds": 1}
        if baselines:
            # One pair of baselines per architecture, at the schedule and seed of its first trial.
            arch = json.dumps(config.student, sort_keys=True)
            if arch not in baselines_by_arch:
                baselines_by_arch[arch] = (trial.number, _run_baselines(runner, config, trial.number))
            baseline_trial, accuracies = baselines_by_arch[arch]
            row.update(baseline_trial=baseline_trial, **accuracies,
                       gain_vs_ce=_gain(result["test_accuracy"], accuracies["ce_test_accuracy"]),
                       gain_vs_vanilla_kd=_gain(result["test_accuracy"], accuracies["vanilla_kd_test_accuracy"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial", "val_accuracy", *EVALUATION_COLUMNS])


def _warn_if_drifted(number: int, retrained: float, recorded: float, log: Callable[[str], None]) -> None:
    if not math.isclose(retrained, recorded, rel_tol=0, abs_tol=1e-9):
        log(f"warning: trial {number} retrained to val accuracy {retrained:.4f}, "
            f"recorded {recorded:.4f} (not reproducible on this machine)")


# ---------------------------------------------------------------------------------------------
# Two-level studies: a level-2 trial on its paired seeds


def _paired(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.user_attrs.get("level") == 2 and bool(trial.user_attrs.get("seeds"))


def _level2_baselines(study: optuna.Study) -> dict[tuple[int, str], optuna.trial.FrozenTrial]:
    """{(architecture, "ce" or "vanilla_kd"): its COMPLETE level-2 baseline trial} (the first, should there be two)."""
    found: dict[tuple[int, str], optuna.trial.FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if _paired(trial) and attrs.get("role") in (pairing.CE, pairing.VANILLA_KD) and "config" in attrs:
            found.setdefault((int(attrs["arch"]), attrs["role"]), trial)
    return found


def _confirmations(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    """{level-2 trial: its COMPLETE confirmation on fresh seeds (`levels`, role "confirm")}."""
    return {int(t.user_attrs["confirms"]): t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("role") == pairing.CONFIRM and t.user_attrs.get("seeds")}


def _evaluate_paired(runner: _Runner, trial: optuna.trial.FrozenTrial,
                     siblings: dict[tuple[int, str], optuna.trial.FrozenTrial], baselines: bool,
                     log: Callable[[str], None], confirmation: optuna.trial.FrozenTrial | None = None) -> dict:
    """The trial, its CE-only and its vanilla-KD baseline on each of the trial's paired seeds; on the fresh
    seeds of its confirmation when it has one: the seeds that chose it would flatter it on test too."""
    attrs = trial.user_attrs
    measured = confirmation if confirmation is not None else trial
    seeds = [int(seed) for seed in measured.user_attrs["seeds"]]
    config = TrainConfig.model_validate(attrs["config"])
    role, arch = attrs.get("role"), attrs.get("arch")
    # A baseline trial runs under its baseline's kind, so that baseline is never trained a second time.
    kind = role if role in (pairing.CE, pairing.VANILLA_KD) else "trial"
    runs = _on_seeds(runner, config, kind, trial.number, seeds)
    retrained = sum(run["val_accuracy"] for run in runs) / len(runs)  # as the trial averaged its seeds
    recorded = measured.values[0]
    _warn_if_drifted(measured.number, retrained, recorded, log)
    tests = [run["test_accuracy"] for run in runs]
    row = {"trial": trial.number, "val_accuracy": recorded, "val_accuracy_retrained": retrained,
           "test_accuracy": sum(tests) / len(tests), "test_seeds": len(seeds)}
    if not baselines:
        return row
    ce_trial = siblings.get((int(arch), pairing.CE)) if arch is not None else None
    row["baseline_trial"] = ce_trial.number if ce_trial is not None else trial.number
    for baseline in (pairing.CE, pairing.VANILLA_KD):
        if kind == baseline:
            baseline_runs = runs
        else:
            sibling = siblings.get((int(arch), baseline)) if arch is not None else None
            other = _paired_baseline_config(config, baseline, sibling, attrs.get("teachers_allowed"))
            if other is None:  # vanilla KD without a teacher: the study has none
                row.update({f"{baseline}_test_accuracy": math.nan, f"gain_vs_{baseline}": math.nan,
                            f"gain_vs_{baseline}_se": math.nan})
                continue
            baseline_runs = _on_seeds(runner, other, baseline, sibling.number if sibling else trial.number, seeds)
        baseline_tests = [run["test_accuracy"] for run in baseline_runs]
        gain, standard_error = pairing.paired_gain(tests, baseline_tests)
        row.update({f"{baseline}_test_accuracy": sum(baseline_tests) / len(baseline_tests),
                    f"gain_vs_{baseline}": round(100.0 * gain, 6),
                    f"gain_vs_{baseline}_se": round(100.0 * standard_error, 6)})
    return row


def _paired_baseline_config(config: TrainConfig, kind: str, sibling: optuna.trial.FrozenTrial | None,
                            teachers_allowed: list[str] | None) -> TrainConfig | None:
    """The baseline the search trained for this architecture; rebuilt from `config` when it has none."""
    if sibling is not None:
        return TrainConfig.model_validate(sibling.user_attrs["config"])
    if kind == pairing.VANILLA_KD:
        if not config.teachers:
            return None
        if teachers_allowed:
            config = config.model_copy(update={"distill": config.distill.model_copy(
                update={"teachers": list(teachers_allowed)})})
    return baseline_config(config, kind)


def _on_seeds(runner: _Runner, config: TrainConfig, kind: str, trial_number: int, seeds: list[int]) -> list[dict]:
    return [runner.run(config.model_copy(update={"seed": seed}), kind, trial_number) for seed in seeds]


def baseline_config(config: TrainConfig, kind: str) -> TrainConfig:
    """`config` with its distillation replaced by the "ce" or "vanilla_kd" baseline (same student, schedule, seed)."""
    if kind == "ce":
        distill_settings = DistillSpec(**CE_ONLY)
    elif kind == "vanilla_kd":
        distill_settings = DistillSpec(teachers=config.distill.teachers, **VANILLA_KD)
    else:
        raise ValueError(f"kind: must be 'ce' or 'vanilla_kd', got {kind!r}")
    return TrainConfig.model_validate({**config.model_dump(), "distill": distill_settings.model_dump()})


def cache_key(config: TrainConfig, kind: str) -> str:
    """sha256 of what determines an evaluation: the full config (data, teachers, student, ...), seed, kind."""
    identity = {"config": config.model_dump(mode="json"), "seed": config.seed, "kind": kind}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _complete_trials(study: optuna.Study, trial_numbers: Sequence[int]) -> list[optuna.trial.FrozenTrial]:
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen = []
    for number in trial_numbers:
        trial = by_number.get(int(number))
        if trial is None or trial.state != optuna.trial.TrialState.COMPLETE or "config" not in trial.user_attrs:
            state = trial.state.name if trial is not None else "missing"
            raise ValueError(f"trial_numbers: trial {number} must be a COMPLETE trial with a recorded config, "
                             f"got {state}")
        chosen.append(trial)
    return chosen


def _run_baselines(runner: _Runner, config: TrainConfig, trial_number: int) -> dict[str, float]:
    accuracies = {"ce_test_accuracy": runner.run(baseline_config(config, "ce"), "ce", trial_number)["test_accuracy"]}
    # Vanilla KD needs a teacher; a study without teachers has no such baseline.
    has_teachers = bool(config.teachers)
    accuracies["vanilla_kd_test_accuracy"] = (
        runner.run(baseline_config(config, "vanilla_kd"), "vanilla_kd", trial_number)["test_accuracy"]
        if has_teachers else math.nan)
    return accuracies


def _gain(accuracy: float, baseline: float) -> float:
    return round(100.0 * (accuracy - baseline), 6)  # percentage points; rounding hides float noise only


class _Runner:
    """Trains configs on demand, reusing one dataset and teacher targets, behind the JSON cache."""

    def __init__(self, spec: StudySpec, log: Callable[[str], None]):
        self.folder = Path(spec.cache_dir) / "evaluations" / spec.name
        self.source = spec.source
        # A stored config's paths are relative to the study file; its teachers are in the study's cache.
        self.study_folder, self.cache_dir = spec.folder, spec.cache_dir
        self.log = log
        # A trial trained with this many threads; the same count keeps CPU results bit-identical.
        self.threads = max(1, int(spec.resources.cpus_per_trial))
        self._datasets: dict[str, data_module.Dataset] = {}
        self._targets: dict[str, object] = {}

    def run(self, config: TrainConfig, kind: str, trial_number: int) -> dict:
        path = self.folder / f"{cache_key(config, kind)}.json"  # of the config as stored: no machine path in it
        if path.is_file():
            return json.loads(path.read_text())
        stored, config = config, resolve_paths(config, self.study_folder)
        config.cache_dir = self.cache_dir
        data = self._dataset(config)
        targets = self._targets_for(config, data)
        student, fitted = run_config(config, data, targets, threads=config.threads or self.threads)
        result = {"trial": trial_number, "kind": kind, "seed": config.seed,
                  "val_accuracy": fitted.val_accuracy,
                  "test_accuracy": distill.evaluate(student, data.x_test, data.y_test),
                  "train_seconds": round(fitted.train_seconds, 3), "config": stored.model_dump(mode="json")}
        write_bytes(path, json.dumps(result, indent=2).encode())  # atomic: a crash never leaves half a file
        self.log(f"test evaluation: trial {trial_number} ({kind}): val {result['val_accuracy']:.4f} "
                 f"test {result['test_accuracy']:.4f} ({fitted.train_seconds:.1f} s)")
        return result

    def _dataset(self, config: TrainConfig) -> data_module.Dataset:
        key = config.data.model_dump_json()  # every trial of a study shares it: loaded once
        if key not in self._datasets:
            self._datasets[key] = data_module.load_data(config.data, self.source)
        return self._datasets[key]

    def _targets_for(self, config: TrainConfig, data: data_module.Dataset):
        chosen = [t.model_dump(mode="json") for t in config.selected_teachers()] if config.distill.uses_teachers else []
        key = json.dumps({"teachers": chosen, "augment": config.augment, "data": config.data.model_dump(),
                          "attention": config.distill.w_at > 0}, sort_keys=True)
        if key not in self._targets:
            _, self._targets[key] = prepare_targets(config, data, self.source, self.log)
        return self._targets[key]
