"""The Fashion-MNIST bench search that `production_train.py` exports from and retrains.

A cheaper variant of ``studies/fashion_mnist.yaml``: the same data split and the same three
teachers (so their cached checkpoints and outputs are reused), small students only (MLPs, and
CNNs of at most 2 stages and 8 channels) under ``params <= 100000``, 5 epochs per trial, the
flat one-level search (``search: {mode: flat}``: one trial, one config, one seed, as the study
was first run). The study lives in ``.cache/autokd/bench/<name>.db``; running it again resumes
it, so a finished study trains nothing. `production_train.py` runs it when it is missing.

    python benchmarks/fashion_study.py            # 48 trials, 5 epochs each (~15 min)
    python benchmarks/fashion_study.py --quick    # 4 one-epoch trials (a smoke run)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import REPO  # noqa: E402  (common puts the repo on sys.path)

import optuna  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.search import search  # noqa: E402
from autokd.spec import StudySpec  # noqa: E402

BENCH_FOLDER = REPO / ".cache" / "autokd" / "bench"
CACHE_DIR = REPO / ".cache" / "autokd"
SOURCE_STUDY = REPO / "studies" / "fashion_mnist.yaml"
MAX_PARAMS = 100_000

SPACE = {"params": {
    "student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "student.depth": {"type": "int", "low": 1, "high": 2, "when": {"student.family": ["mlp"]}},
    "student.width": {"type": "int", "low": 16, "high": 128, "log": True, "when": {"student.family": ["mlp"]}},
    "student.activation": {"type": "categorical", "choices": ["relu", "gelu"], "when": {"student.family": ["mlp"]}},
    "student.stages": {"type": "int", "low": 1, "high": 2, "when": {"student.family": ["cnn"]}},
    "student.channels": {"type": "int", "low": 4, "high": 8, "log": True, "when": {"student.family": ["cnn"]}},
    "student.head_width": {"type": "categorical", "choices": [0, 32], "when": {"student.family": ["cnn"]}},
    "distill.teachers": {"type": "teacher_subset"},
    "distill.aggregation": {"type": "categorical", "choices": ["mean_logits", "mean_probs", "confidence"]},
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse", "dkd"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 16.0, "log": True,
                            "when": {"distill.kind": ["kl", "dkd"]}},
    "distill.dkd_alpha": {"type": "float", "low": 0.25, "high": 2.0, "when": {"distill.kind": ["dkd"]}},
    "distill.dkd_beta": {"type": "float", "low": 1.0, "high": 10.0, "log": True, "when": {"distill.kind": ["dkd"]}},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.05, "high": 1.0},
    "distill.w_feat": {"type": "categorical", "choices": [0.0, 0.1, 0.5]},
    "schedule.lr": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
    "schedule.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "schedule.batch_size": {"type": "categorical", "choices": [128, 256]},
}}


@dataclass(frozen=True)
class SearchSize:
    """How big the search is: the full benchmark or the `--quick` smoke run."""

    name: str
    trials: int
    epochs: int
    time_limit_s: float


FULL = SearchSize("fm_gain", trials=48, epochs=5, time_limit_s=1200)
QUICK = SearchSize("fm_gain_quick", trials=4, epochs=1, time_limit_s=300)


def storage_url(name: str) -> str:
    return f"sqlite:///{BENCH_FOLDER / (name + '.db')}"


def study_spec(size: SearchSize) -> StudySpec:
    """The bench study: data and teachers of studies/fashion_mnist.yaml, small students, `size` budget."""
    source = load_study(SOURCE_STUDY)
    return StudySpec.model_validate({
        "name": size.name,
        "data": source.data.model_dump(),
        "teachers": [t.model_dump() for t in source.teachers],
        "student": {"family": "mlp", "depth": 1, "width": 64},
        "distill": source.distill.model_dump(),
        "schedule": {"epochs": size.epochs, "batch_size": 256, "lr": 0.003},
        "search_space": SPACE,
        "objectives": ["val_accuracy", "params"],
        "constraints": [f"params <= {MAX_PARAMS}"],
        "budget": {"trials": size.trials, "time_limit_s": size.time_limit_s},
        "sampler": {"name": "tpe", "seed": 0},
        "search": {"mode": "flat"},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "cache_dir": str(CACHE_DIR),
        "storage": storage_url(size.name),
        "source": str(BENCH_FOLDER / f"{size.name}.yaml"),
    })


def run_search(spec: StudySpec, log: Callable[[str], None] = print) -> tuple[optuna.Study, dict]:
    """Run the study, or resume it (a finished study trains nothing); returns it and what this call did."""
    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)
    before = _complete_count(spec)
    started = time.perf_counter()
    result = search(spec, resume=True, progress=True, log=log)
    wall = time.perf_counter() - started
    ray.shutdown()  # give the cores back before the evaluation trains anything
    complete = result.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    span = max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)
    return result.study, {"wall_s_this_run": round(wall, 1), "trials_trained_this_run": len(complete) - before,
                          "complete_trials": len(complete), "front_size": len(result.pareto),
                          "study_wall_s": round(span.total_seconds(), 1),  # first trial start to last end
                          "trial_train_seconds_sum": round(sum(t.user_attrs["train_seconds"] for t in complete), 1)}


def _complete_count(spec: StudySpec) -> int:
    path = Path(spec.storage.removeprefix("sqlite:///"))
    if not path.is_file():
        return 0
    try:
        study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def mean_std(values: list[float]) -> dict[str, float]:
    """Accuracies (fractions) as mean and sample std in percent, rounded for the report."""
    percent = [100.0 * v for v in values]
    return {"mean": round(statistics.fmean(percent), 3),
            "std": round(statistics.stdev(percent), 3) if len(percent) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 one-epoch trials: a smoke run")
    args = parser.parse_args()
    spec = study_spec(QUICK if args.quick else FULL)
    _, figures = run_search(spec)
    print(f"{spec.name} in {spec.storage}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))


if __name__ == "__main__":
    sys.exit(main())
