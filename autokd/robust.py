"""The robust front: the top-K front configs re-run with more seeds after the search (Ray tasks).

Each re-run goes through `runner.run_config` with the trial's own thread count, so seed 1
reproduces the trial itself. Results are study attrs `robust.<trial>` (a resume re-runs
nothing twice); `results.robust_frame` reads them back.
"""

from __future__ import annotations

from typing import Callable

import optuna

from autokd import runner
from autokd.archs import ALLOW_CODE_ENV, code_allowed
from autokd.paths import resolve_paths
from autokd.results import trials_frame
from autokd.spec import StudySpec, TrainConfig, derived_seed


def robust_seeds(trial_seed: int, count: int) -> list[int]:
    """The trial's own seed first, then count-1 fresh ones far from other trials' seeds."""
    return [trial_seed] + [derived_seed(trial_seed, 100_003 * k) for k in range(1, count)]


def val_accuracy_with_seed(config_dict: dict, seed: int, data, outputs) -> float:
    """One re-run of a trial's config with another seed (a Ray task)."""
    config = TrainConfig.model_validate(config_dict)
    return runner.run_config(config, data, outputs, seed=seed)[1].val_accuracy


def rerun_front_with_seeds(spec: StudySpec, study: optuna.Study, data, outputs, log: Callable[[str], None]) -> None:
    """Re-run the top-K front configs with S seeds; stored as study attrs `robust.<trial>` (resumable).

    Ray must be initialised (`ray_cluster.init_ray`)."""
    import ray

    frame = trials_frame(study)
    front = frame[frame["pareto_rank"] == 0].sort_values("val_accuracy", ascending=False).head(spec.robust.top_k)
    todo = [int(n) for n in front["trial"] if f"robust.{int(n)}" not in study.user_attrs]
    if not todo:
        return
    log(f"robust front: re-running {len(todo)} front config(s) with {spec.robust.seeds} seeds")
    # A custom student's opt-in reaches the task's worker, whenever Ray was started.
    env = {"env_vars": {ALLOW_CODE_ENV: "1"}} if code_allowed() else None
    task = ray.remote(num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial,
                      runtime_env=env)(val_accuracy_with_seed)
    data_ref, outputs_ref = ray.put(data), ray.put(outputs)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    pending = {}
    for number in todo:
        trial = trials[number]
        seeds = robust_seeds(trial.user_attrs["seed"], spec.robust.seeds)
        # The stored config's paths are relative to the study file: absolute for the worker.
        config = resolve_paths(TrainConfig.model_validate(trial.user_attrs["config"]), spec.folder).model_dump()
        pending[number] = (seeds, [trial.values[0]] + [task.remote(config, seed, data_ref, outputs_ref)
                                                       for seed in seeds[1:]])
    for number, (seeds, results) in pending.items():
        accuracies = [results[0]] + ray.get(results[1:])
        mean = sum(accuracies) / len(accuracies)
        std = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5
        study.set_user_attr(f"robust.{number}", {"seeds": seeds, "val_accuracies": accuracies,
                                                 "mean": mean, "std": std})
