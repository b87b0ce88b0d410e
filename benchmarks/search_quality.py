"""Search quality: hypervolume after N trials for the default sampler (tpe), random and nsga2.

For each dataset (digits, Fashion-MNIST) and each sampler, `autokd.search.search` runs a study
of N trials with 3 sampler seeds, each in its own temporary SQLite storage. The space searches
the student (mlp or cnn with its shape), the teacher subset, the KD loss kind, temperature,
w_ce, w_kd and the learning rate; the constraint ``params <= 50000`` is checked before a trial
trains, so infeasible proposals cost nothing and do not count as trials.

Hypervolume (HV) is autokd's own: (val accuracy, log10 params) against the fixed reference of
`autokd.results.hypervolume_reference` (accuracy 0, log10 of the params constraint), over
COMPLETE trials only. The HV-vs-trials curve takes the trained trials (COMPLETE or FAIL; not
the infeasible ones) in trial-number order; its value at k is the HV of the COMPLETE trials
among the first k. Reported per dataset and sampler: final HV mean +- std over seeds, the
curve averaged over seeds, and the trials each sampler needs for its mean curve to reach
random's final mean HV. Target: the default reaches it in <= N/2 trials.

Cheap settings: digits at full size with short epochs; Fashion-MNIST on a stratified
`data.train_subset` of the training split (the validation split is the study's) with 2 epochs
per trial. A subset changes the data fingerprint and so the teacher cache key: the study's
three Fashion-MNIST teachers (studies/fashion_mnist.yaml architectures and schedules) are
trained once on that subset (a few minutes) and cached in the repo's cache, .cache/autokd;
later runs reuse them. Digits uses studies/digits.yaml's teachers from the same cache.

    python benchmarks/search_quality.py            # 40 digits / 30 Fashion-MNIST trials, 3 seeds (~30 min)
    python benchmarks/search_quality.py --quick    # 1 seed, 6 trials each (a smoke run)
    python benchmarks/search_quality.py --digits-trials 40 --fashion-trials 30 --seeds 3
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from autokd.data import load_data  # noqa: E402
from autokd.results import INTERRUPTED, hypervolume_reference, study_hypervolume, trials_frame  # noqa: E402
from autokd.search import nsga2_population  # noqa: E402
from autokd.spec import StudySpec, load_study  # noqa: E402
from autokd.teachers import prepare_teachers, teacher_outputs  # noqa: E402

DEFAULT_SAMPLER = "tpe"
SAMPLERS = [DEFAULT_SAMPLER, "random", "nsga2"]
SIZE_LIMIT = 50_000
CONCURRENCY = 2
CACHE_DIR = REPO / ".cache" / "autokd"

# kd_full.yaml's student, teacher and KD choices, less the rarely decisive knobs (aggregation,
# DKD's alpha/beta, feature hints, weight decay, batch size); CNN channels capped at 16 so
# that a Fashion-MNIST trial stays a few seconds.
SPACE = {"params": {
    "student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "student.depth": {"type": "int", "low": 1, "high": 3, "when": {"student.family": ["mlp"]}},
    "student.width": {"type": "int", "low": 4, "high": 256, "log": True, "when": {"student.family": ["mlp"]}},
    "student.stages": {"type": "int", "low": 1, "high": 3, "when": {"student.family": ["cnn"]}},
    "student.channels": {"type": "int", "low": 2, "high": 16, "log": True, "when": {"student.family": ["cnn"]}},
    "student.head_width": {"type": "categorical", "choices": [0, 32, 64], "when": {"student.family": ["cnn"]}},
    "distill.teachers": {"type": "teacher_subset"},
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse", "dkd"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 16.0, "log": True,
                            "when": {"distill.kind": ["kl", "dkd"]}},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.05, "high": 1.0},
    "schedule.lr": {"type": "float", "low": 0.0005, "high": 0.02, "log": True},
}}

# Per dataset: the study whose data split and teachers are used, and the cheap settings.
DATASETS = {
    "digits": {"study": "studies/digits.yaml", "train_subset": None, "batch_size": 64},
    "fashion_mnist": {"study": "studies/fashion_mnist.yaml", "train_subset": 8000, "batch_size": 128},
}


def study_spec(folder: Path, dataset: str, name: str, *, trials: int, epochs: int, sampler: str, seed: int,
               early_stopping: dict | None = None, compute_epochs: int | None = None) -> StudySpec:
    """A study on `dataset` with its study file's split and teachers, the benchmark space and budget."""
    settings = DATASETS[dataset]
    study = load_study(REPO / settings["study"])
    data = study.data.model_dump()
    if settings["train_subset"]:
        data["train_subset"] = settings["train_subset"]
    return StudySpec.model_validate({
        "name": name,
        "data": data,
        "teachers": [t.model_dump() for t in study.teachers],
        "student": {"family": "mlp", "depth": 1, "width": 32},
        "schedule": {"epochs": epochs, "batch_size": settings["batch_size"], "lr": 0.003},
        "search_space": SPACE,
        "objectives": ["val_accuracy", "params"],
        "constraints": [f"params <= {SIZE_LIMIT}"],
        "budget": {"trials": trials, "epochs": compute_epochs},
        "sampler": {"name": sampler, "seed": seed},
        "resources": {"cpus_per_trial": 1, "concurrency": CONCURRENCY},
        "early_stopping": early_stopping or {"kind": "none"},
        "cache_dir": str(CACHE_DIR),
        "storage": f"sqlite:///{folder / (name + '.db')}",
        "source": str(folder / f"{name}.yaml"),
    })


def quiet(_message: str) -> None:
    pass


def prepare_dataset(spec: StudySpec) -> dict:
    """Teachers trained (once, cached) and their outputs cached; returns what the JSON states about them."""
    data = load_data(spec.data, spec.source)
    started = time.perf_counter()
    teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, spec.resolve_path,
                                log=lambda message: print(f"  {message}", flush=True))
    teacher_outputs(teachers, data)
    return {"train_samples": len(data.y_train), "val_samples": len(data.y_val),
            "teacher_prepare_s": round(time.perf_counter() - started, 1),
            "teachers": {t.name: {"val_accuracy": round(t.meta["val_accuracy"], 4), "params": t.meta["params"],
                                  "cache_folder": t.folder.name} for t in teachers}}


def trained_mask(frame: pd.DataFrame) -> pd.Series:
    """Trials that trained (COMPLETE, FAIL, early-stopped): not infeasible, not interrupted."""
    pruned = frame["state"].eq("PRUNED")
    infeasible = pruned & frame["pruned_reason"].fillna("").str.startswith("infeasible")
    interrupted = frame["state"].eq("FAIL") & frame["failure_reason"].eq(INTERRUPTED)
    return frame["state"].isin(["COMPLETE", "FAIL", "PRUNED"]) & ~infeasible & ~interrupted


def hv_by_trials(study: optuna.Study, spec: StudySpec) -> list[float]:
    """HV of the COMPLETE trials among the first k trained trials (trial-number order), k = 1..N."""
    frame = trials_frame(study).sort_values("trial")
    trained = frame[trained_mask(frame)]
    return [study_hypervolume(trained.iloc[:k], spec) for k in range(1, len(trained) + 1)]


def first_reaching(curve: list[float], target: float, xs: list[float] | None = None) -> float | None:
    """The first x (1-based trial count, or xs[i]) at which the curve reaches target; None if never."""
    for index, value in enumerate(curve):
        if value >= target - 1e-12:
            return xs[index] if xs is not None else index + 1
    return None


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 4) for v in values]}


def run_sampler(folder: Path, dataset: str, sampler: str, seed: int, trials: int, epochs: int) -> dict:
    from autokd.search import search

    name = f"sq-{dataset}-{sampler}-s{seed}"
    spec = study_spec(folder, dataset, name, trials=trials, epochs=epochs, sampler=sampler, seed=seed)
    started = time.perf_counter()
    result = search(spec, progress=False, log=quiet)
    wall = time.perf_counter() - started
    curve = hv_by_trials(result.study, spec)
    if len(curve) < trials:
        raise RuntimeError(f"{name}: {len(curve)} trained trials, expected {trials}")
    failed = int((result.trials["state"] == "FAIL").sum())
    print(f"  {name}: HV {curve[-1]:.4f}, front {len(result.pareto)}, failed {failed}, {wall:.0f} s", flush=True)
    return {"curve": curve, "wall_s": wall, "failed": failed}


def dataset_figures(runs: dict[str, list[dict]], trials: int) -> dict:
    """Final HV, mean curves and trials-to-reach-random for one dataset."""
    finals = {s: [r["curve"][trials - 1] for r in rs] for s, rs in runs.items()}
    curves = {s: np.mean([r["curve"][:trials] for r in rs], axis=0).tolist() for s, rs in runs.items()}
    random_final = statistics.fmean(finals["random"])
    reach = {s: first_reaching(curves[s], random_final) for s in runs}
    return {"trials": trials,
            "final_hv": {s: mean_std(v) for s, v in finals.items()},
            "hv_curve_mean": {s: [round(v, 4) for v in c] for s, c in curves.items()},
            "random_final_hv_mean": round(random_final, 4),
            "trials_to_reach_random_final": reach,
            "default_trials_to_reach_random": reach[DEFAULT_SAMPLER],
            "seeds_with_curve_identical_to_random": {
                s: sum(r["curve"] == q["curve"] for r, q in zip(rs, runs["random"])) for s, rs in runs.items()},
            "failed_trials": {s: sum(r["failed"] for r in rs) for s, rs in runs.items()},
            "wall_s": round(sum(r["wall_s"] for rs in runs.values() for r in rs), 1)}


def print_table(figures: dict) -> None:
    print(f"\n{'dataset':<14}{'sampler':<8}{'final HV (mean ± std)':>24}{'trials to reach random':>26}")
    for dataset, f in figures.items():
        for sampler, hv in f["final_hv"].items():
            reach = f["trials_to_reach_random_final"][sampler]
            print(f"{dataset:<14}{sampler:<8}{hv['mean']:>16.4f} ± {hv['std']:.4f}"
                  f"{(str(reach) if reach else 'never') + ' / ' + str(f['trials']):>26}")


def note_for(figures: dict, met: dict, reference: list[float], seeds: int, epochs: dict) -> str:
    parts = [f"HV on (val accuracy, log10 params), reference {reference}; {seeds} seed(s) per "
             f"sampler; samplers as autokd builds them (tpe: multivariate, group, constant_liar, its first 10 "
             f"trials random startup draws, the same as the random sampler's with the same seed; nsga2: population "
             f"from the budget, " + ", ".join(f"{d} {nsga2_population(figures[d]['trials'])}" for d in figures)
             + "); "
             f"concurrency {CONCURRENCY}. Epochs per trial: " + ", ".join(f"{d} {e}" for d, e in epochs.items()) + "."]
    for dataset, ok in met.items():
        f = figures[dataset]
        identical = {s: n for s, n in f["seeds_with_curve_identical_to_random"].items() if s != "random" and n}
        if identical:
            parts.append(f"{dataset}: curves identical to random's (same sampler seed) for "
                         + ", ".join(f"{s} in {n} of {seeds} seed(s)" for s, n in identical.items()) + ".")
        reach, budget = f["default_trials_to_reach_random"], f["trials"] / 2
        if ok:
            parts.append(f"{dataset}: {DEFAULT_SAMPLER} reaches random's final mean HV "
                         f"{f['random_final_hv_mean']} after {reach} of {f['trials']} trials (target <= {budget:g}).")
        elif reach is None:
            parts.append(f"{dataset}: missed, {DEFAULT_SAMPLER}'s mean curve never reaches random's final mean HV "
                         f"{f['random_final_hv_mean']} within {f['trials']} trials (final "
                         f"{f['final_hv'][DEFAULT_SAMPLER]['mean']}, "
                         f"{f['final_hv'][DEFAULT_SAMPLER]['mean'] - f['random_final_hv_mean']:+.4f}).")
        else:
            parts.append(f"{dataset}: missed by {reach - budget:g} trials: {DEFAULT_SAMPLER} needs {reach} of "
                         f"{f['trials']} trials (target <= {budget:g}).")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 trials per search: a smoke run")
    parser.add_argument("--digits-trials", type=int, default=None)
    parser.add_argument("--fashion-trials", type=int, default=None)
    parser.add_argument("--digits-epochs", type=int, default=10)
    parser.add_argument("--fashion-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    args = parser.parse_args()
    trials = {"digits": args.digits_trials or (6 if args.quick else 40),
              "fashion_mnist": args.fashion_trials or (6 if args.quick else 30)}
    epochs = {"digits": args.digits_epochs, "fashion_mnist": args.fashion_epochs}
    seeds = args.seeds or (1 if args.quick else 3)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)

    figures, settings = {}, {}
    with tempfile.TemporaryDirectory(prefix="autokd-search-quality-") as tmp:
        for dataset in args.datasets:
            spec = study_spec(Path(tmp), dataset, "prepare", trials=1, epochs=epochs[dataset], sampler="random", seed=0)
            print(f"{dataset}: preparing teachers", flush=True)
            settings[dataset] = {"study": DATASETS[dataset]["study"], "train_subset": DATASETS[dataset]["train_subset"],
                                 "epochs": epochs[dataset], "batch_size": DATASETS[dataset]["batch_size"],
                                 "trials": trials[dataset], **prepare_dataset(spec)}
            runs = {s: [run_sampler(Path(tmp), dataset, s, seed, trials[dataset], epochs[dataset])
                        for seed in range(seeds)] for s in SAMPLERS}
            figures[dataset] = {**dataset_figures(runs, trials[dataset]),
                                "reference": hypervolume_reference(spec)}
    import ray

    ray.shutdown()
    print_table(figures)
    targets = {d: f"{DEFAULT_SAMPLER} reaches random's final mean HV in <= {math.floor(f['trials'] / 2)} trials"
               for d, f in figures.items()}
    met = {d: f["default_trials_to_reach_random"] is not None and f["default_trials_to_reach_random"] <= f["trials"] / 2
           for d, f in figures.items()}
    for dataset, ok in met.items():
        print(f"target {dataset}: {targets[dataset]}: {'met' if ok else 'MISSED'}")
    reference = [round(r, 4) for r in next(iter(figures.values()))["reference"]]
    note = note_for(figures, met, reference, seeds, epochs)
    print(note)
    write_result("search_quality", {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                    "note": note, "settings": {"seeds": seeds, "samplers": SAMPLERS,
                                                               "concurrency": CONCURRENCY, "cpus_per_trial": 1,
                                                               "constraints": [f"params <= {SIZE_LIMIT}"],
                                                               "space": SPACE["params"], "datasets": settings}})


if __name__ == "__main__":
    sys.exit(main())
