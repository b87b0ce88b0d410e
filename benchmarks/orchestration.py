"""Orchestration overhead: the same trials through `autokd.search` (Ray Tune) and plain in-process Optuna.

Arm (a) runs a digits study through `autokd.search.search` (OptunaSearch in the driver, Ray
Tune workers, concurrency 2, 1 CPU each). Arm (b) trains the very configs that (a) sampled,
enqueued into an in-memory Optuna study and run by ``study.optimize(objective, n_jobs=2)`` in
threads with ``torch.set_num_threads(1)``, through `runner.run_config` at 1 thread (what a trial
calls). Both arms run the flat, one-level search (``search: {mode: flat}``).
Training is deterministic on CPU for a fixed seed, in (b)'s threads too (they share torch's RNG, but
every seeding holds a lock, and this student has no dropout), so (b) must reproduce (a)'s val accuracy
for every trial: that check proves both arms trained the same configs.

Figures (medians over repeats; the arms alternate a, b, a, b, ... so background load hits both):
- ``wall_ratio``: wall(a) / wall(b), Ray start-up excluded (it is measured on its own);
  ``wall_ratio_with_startup`` counts it in (a).
- ``efficiency``: sum of the trials' ``train_seconds`` / (wall(a) x concurrency), from (a) alone,
  Ray start-up excluded; ``efficiency_with_startup`` includes it.
- ``ray_startup_s``: `ray_cluster.init_ray` on a fresh (shut down) Ray.
- ``fixed_cost_ms_a`` / ``fixed_cost_ms_b``: what each arm spends per trial beyond training,
  (wall x concurrency - sum of train_seconds) / trials, in ms: autokd's orchestration against
  in-process Optuna's.
- ``first_trials_overhead_s`` / ``later_trials_overhead_ms``: in (a), a trial's time from the driver's
  ask to its tell (Optuna's ``datetime_start``/``datetime_complete``) less its ``train_seconds``,
  median over each worker's first trial (the worker process starts then: Tune's actor imports torch
  and Ray Tune) and over the later trials. What ``fixed_cost_ms_a`` has beyond these is spent
  between a trial's tell and the next ask.
- ``*_after_worker_start``: the same figures with each worker's start (its first trial's time beyond
  training) taken out of (a), as Ray's start-up is: what the search costs per trial once its workers
  run. A worker's start is paid once per search and worker, never per trial: Tune gives each trial
  actor a runtime env (``PL_DISABLE_FORK``), so Ray starts a fresh process for it rather than hand it
  one of the idle workers Ray starts with the cluster, and that process imports Ray Tune and torch
  (~2 s here) before its first trial, whose training then imports torch._dynamo (~1.2 s, on the
  first torch optimizer of a process: counted in that trial's ``train_seconds``, as arm (b) counts
  it once in its first trial).

Two workloads: ``standard`` (20 trials x 15 epochs, ~0.7-2.5 s a trial by machine load) and
``short`` (200 trials x 5 epochs, ~0.3 s a trial), where the fixed cost per trial dominates.
Arm (a)'s study is an SQLite file, as by default, or with ``--storage journal`` an Optuna journal
file (``storage: study.log``): the driver's bookkeeping of a trial costs less there
(`benchmarks/storage_writes.py`).

Teachers are trained/cached and Ray is warmed up (a 2-trial search) before anything is timed.

    python benchmarks/orchestration.py            # 20 trials of ~1-3 s, 3 repeats (~4 min)
    python benchmarks/orchestration.py --workload short   # 200 trials of ~0.3 s, 3 repeats (~8 min)
    python benchmarks/orchestration.py --workload short --storage journal   # the study in a journal file
    python benchmarks/orchestration.py --trials 120   # the standard trials, 6x as many: a row of its own
    python benchmarks/orchestration.py --quick    # 4 short trials, 1 repeat (a smoke run)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import optuna  # noqa: E402
import torch  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.data import load_data  # noqa: E402
from autokd.paths import relative_paths  # noqa: E402
from autokd.runner import run_config  # noqa: E402
from autokd.space import load_space  # noqa: E402
from autokd.spec import StudySpec  # noqa: E402
from autokd.teacher_outputs import teacher_outputs  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402

WALL_RATIO_TARGET = 1.10
WORKLOADS = {"standard": (20, 15), "short": (200, 5)}  # trials, epochs
EFFICIENCY_TARGET = 0.85
CONCURRENCY = 2
THREADS = 1  # per trial: cpus_per_trial

# The student is fixed so that every trial costs about the same (~3 s at 1 thread on digits);
# the distillation settings, the teachers and the learning rate vary.
SPACE = {"params": {
    "distill.teachers": {"type": "teacher_subset"},
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse", "dkd"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True,
                            "when": {"distill.kind": ["kl", "dkd"]}},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.1, "high": 1.0},
    "schedule.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
}}
STUDENT = {"family": "cnn", "stages": 2, "channels": 8, "head_width": 32}


def study_spec(folder: Path, name: str, trials: int, epochs: int, seed: int, storage: str = "sqlite") -> StudySpec:
    """A digits study with the repo's digits teachers (cached in the repo's default cache), stored in an SQLite
    file or an Optuna journal file (`storage`: "sqlite" or "journal")."""
    digits = load_study(REPO / "studies" / "digits.yaml")
    return StudySpec.model_validate({
        "name": name,
        "data": digits.data.model_dump(),
        "teachers": [t.model_dump() for t in digits.teachers],
        "student": STUDENT,
        "schedule": {"epochs": epochs, "batch_size": 64, "lr": 0.003},
        "search_space": SPACE,
        "budget": {"trials": trials},
        "sampler": {"name": "tpe", "seed": seed},
        "search": {"mode": "flat"},
        "resources": {"cpus_per_trial": THREADS, "concurrency": CONCURRENCY},
        "cache_dir": str(REPO / ".cache" / "autokd"),
        "storage": f"sqlite:///{folder / (name + '.db')}" if storage == "sqlite" else str(folder / f"{name}.log"),
        "source": str(folder / f"{name}.yaml"),
    })


def quiet(_message: str) -> None:
    pass


def warm_up(folder: Path, epochs: int) -> None:
    """Teachers trained and their outputs cached; Ray, Tune and the workers' imports warmed, and this process's
    for arm (b): one config trained here (a process's first torch optimizer imports torch._dynamo, ~1.2 s)."""
    import ray

    from autokd.search import search

    spec = study_spec(folder, "warmup", trials=2, epochs=min(epochs, 2), seed=99)
    data = load_data(spec.data, spec.source)
    outputs = teacher_outputs(prepare_teachers(spec.teachers, data, spec.cache_dir, log=print), data)
    run_config(spec.train_config(), data, outputs, seed=0, threads=THREADS)
    search(spec, progress=False, log=quiet)
    ray.shutdown()


def run_search_arm(spec: StudySpec) -> dict:
    """Arm (a): Ray start-up timed on its own, then `autokd.search` timed."""
    import ray

    from autokd.ray_cluster import init_ray
    from autokd.search import search

    if ray.is_initialized():
        ray.shutdown()
    started = time.perf_counter()
    init_ray(None, spec)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    result = search(spec, progress=False, log=quiet)
    wall = time.perf_counter() - started
    ray.shutdown()
    trials = result.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) != len(trials):
        states = [t.state.name for t in trials]
        raise RuntimeError(f"arm (a): every trial must complete, got {states}")
    train_seconds = sum(t.user_attrs["train_seconds"] for t in complete)
    # Beyond training between the driver's ask and tell of a trial (Optuna's datetime_start/_complete): the
    # first trial of each worker also starts its process (Tune's actor imports torch and Ray Tune).
    beyond = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["train_seconds"]
              for t in sorted(complete, key=lambda t: t.number)]
    return {"wall_s": wall, "ray_startup_s": startup, "train_seconds_sum": train_seconds,
            "first_trials_overhead_s": statistics.median(beyond[:CONCURRENCY]),
            "first_trials_overhead_sum_s": sum(beyond[:CONCURRENCY]),
            "later_trials_overhead_ms": 1000 * statistics.median(beyond[CONCURRENCY:] or [float("nan")]),
            "trial_seconds_median": statistics.median(t.user_attrs["train_seconds"] for t in complete),
            "efficiency": train_seconds / (wall * CONCURRENCY),
            "efficiency_with_startup": train_seconds / ((wall + startup) * CONCURRENCY),
            "trials": [{"number": t.number, "params": t.params, "seed": t.user_attrs["seed"],
                        "config": t.user_attrs["config"], "val_accuracy": t.values[0]} for t in complete]}


def run_inprocess_arm(spec: StudySpec, sampled: list[dict]) -> dict:
    """Arm (b): the same configs, enqueued into plain Optuna and run with n_jobs=2 threads."""
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    data = load_data(spec.data, spec.source)
    teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, log=quiet)
    outputs = teacher_outputs(teachers, data)
    space = load_space(spec)
    base = spec.train_config()
    base.threads = THREADS  # as the search records it in a trial's config
    study = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    for trial in sampled:
        study.enqueue_trial(trial["params"], user_attrs={"a_number": trial["number"], "seed": trial["seed"]})
    mismatched: list[int] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        space.suggest(trial)
        config = space.apply(base, trial.params)
        config.seed = trial.user_attrs["seed"]
        reference = next(t for t in sampled if t["number"] == trial.user_attrs["a_number"])
        if relative_paths(config, spec.folder).model_dump() != reference["config"]:  # stored as the study stores it
            mismatched.append(reference["number"])
        trial_started = time.perf_counter()
        student, result = run_config(config, data, outputs, seed=config.seed, threads=THREADS)
        trial.set_user_attr("train_seconds", time.perf_counter() - trial_started)
        return result.val_accuracy, float(sum(p.numel() for p in student.parameters()))

    study.optimize(objective, n_trials=len(sampled), n_jobs=CONCURRENCY)
    wall = time.perf_counter() - started
    trials = study.get_trials(deepcopy=False)
    if any(t.state != optuna.trial.TrialState.COMPLETE for t in trials):
        raise RuntimeError(f"arm (b): every trial must complete, got {[t.state.name for t in trials]}")
    accuracy = {t.user_attrs["a_number"]: t.values[0] for t in trials}
    same = sum(accuracy[s["number"]] == s["val_accuracy"] for s in sampled)
    return {"wall_s": wall, "train_seconds_sum": sum(t.user_attrs["train_seconds"] for t in trials),
            "configs_mismatched": mismatched, "same_val_accuracy": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 short trials, 1 repeat: a smoke run")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (15 ~ 3 s on digits)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--workload", choices=list(WORKLOADS), default="standard",
                        help="standard: 20 trials x 15 epochs; short: 200 trials x 5 epochs (~0.3 s each)")
    parser.add_argument("--storage", choices=["sqlite", "journal"], default="sqlite",
                        help="arm (a)'s study: an SQLite file (the default's) or an Optuna journal file")
    args = parser.parse_args()
    trials = args.trials or (4 if args.quick else WORKLOADS[args.workload][0])
    epochs = args.epochs or (3 if args.quick else WORKLOADS[args.workload][1])
    repeats = args.repeats or (1 if args.quick else 3)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="autokd-orchestration-") as tmp:
        folder = Path(tmp)
        warm_up(folder, epochs)
        rows = []
        for repeat in range(repeats):
            spec = study_spec(folder, f"orch{repeat}", trials, epochs, seed=repeat, storage=args.storage)
            a = run_search_arm(spec)
            time.sleep(1.0)  # let Ray's processes exit before the next arm
            b = run_inprocess_arm(spec, a["trials"])
            row = {"repeat": repeat, "wall_a_s": a["wall_s"], "wall_b_s": b["wall_s"],
                   "ray_startup_s": a["ray_startup_s"], "wall_ratio": a["wall_s"] / b["wall_s"],
                   "wall_ratio_with_startup": (a["wall_s"] + a["ray_startup_s"]) / b["wall_s"],
                   "efficiency": a["efficiency"], "efficiency_with_startup": a["efficiency_with_startup"],
                   "train_seconds_sum_a": a["train_seconds_sum"], "train_seconds_sum_b": b["train_seconds_sum"],
                   "fixed_cost_ms_a": 1000 * (a["wall_s"] * CONCURRENCY - a["train_seconds_sum"]) / trials,
                   "fixed_cost_ms_b": 1000 * (b["wall_s"] * CONCURRENCY - b["train_seconds_sum"]) / trials,
                   "trial_seconds_median_a": a["trial_seconds_median"],
                   "first_trials_overhead_s": a["first_trials_overhead_s"],
                   # What the search costs once its workers run: each worker's start (its first trial's time beyond
                   # training) taken out of the slots' time, as Ray's start-up is.
                   "efficiency_after_worker_start": a["train_seconds_sum"]
                   / (a["wall_s"] * CONCURRENCY - a["first_trials_overhead_sum_s"]),
                   "fixed_cost_ms_a_after_worker_start": 1000 * (a["wall_s"] * CONCURRENCY - a["train_seconds_sum"]
                                                                 - a["first_trials_overhead_sum_s"]) / trials,
                   "wall_ratio_after_worker_start": (a["wall_s"] - a["first_trials_overhead_s"]) / b["wall_s"],
                   "later_trials_overhead_ms": a["later_trials_overhead_ms"],
                   "same_val_accuracy": f"{b['same_val_accuracy']}/{len(a['trials'])}",
                   "configs_mismatched": b["configs_mismatched"]}
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 4)

    figures = {"wall_ratio": median("wall_ratio"), "efficiency": median("efficiency"),
               "ray_startup_s": median("ray_startup_s"), "wall_ratio_with_startup": median("wall_ratio_with_startup"),
               "efficiency_with_startup": median("efficiency_with_startup"), "wall_a_s": median("wall_a_s"),
               "wall_b_s": median("wall_b_s"), "trial_seconds_median": median("trial_seconds_median_a"),
               "fixed_cost_ms_a": round(median("fixed_cost_ms_a"), 1),
               "fixed_cost_ms_b": round(median("fixed_cost_ms_b"), 1),
               "first_trials_overhead_s": round(median("first_trials_overhead_s"), 2),
               "later_trials_overhead_ms": round(median("later_trials_overhead_ms"), 1),
               "wall_ratio_after_worker_start": median("wall_ratio_after_worker_start"),
               "efficiency_after_worker_start": median("efficiency_after_worker_start"),
               "fixed_cost_ms_a_after_worker_start": round(median("fixed_cost_ms_a_after_worker_start"), 1),
               "load_average_1m": round(os.getloadavg()[0], 2)}  # this machine's load as the run ends
    targets = {"wall_ratio": f"<= {WALL_RATIO_TARGET}", "efficiency": f">= {EFFICIENCY_TARGET}"}
    met = {"wall_ratio": figures["wall_ratio"] <= WALL_RATIO_TARGET,
           "efficiency": figures["efficiency"] >= EFFICIENCY_TARGET}
    reproduced = all(r["same_val_accuracy"].split("/")[0] == r["same_val_accuracy"].split("/")[1]
                     and not r["configs_mismatched"] for r in rows)
    note = (f"Workload {args.workload}, arm (a) stored in {'an SQLite' if args.storage == 'sqlite' else 'a journal'} "
            f"file: {trials} trials x {epochs} epochs of a fixed {STUDENT['family']} student "
            f"on digits, concurrency "
            f"{CONCURRENCY} x 1 CPU, {repeats} repeat(s), arms alternated (a then b) per repeat; medians. "
            "wall_ratio and efficiency exclude Ray start-up (ray_startup_s, measured on its own); the "
            "*_with_startup figures include it. Arm (b) reproduced arm (a)'s val accuracy for "
            + ("every trial (same configs, same seeds)." if reproduced else "NOT every trial: see repeats.")
            + f" Fixed cost per trial beyond training: autokd {figures['fixed_cost_ms_a']:.0f} ms, in-process Optuna "
            f"{figures['fixed_cost_ms_b']:.0f} ms. Of autokd's, between a trial's ask and tell beyond its training: "
            f"{figures['first_trials_overhead_s']:.2f} s for each worker's first trial (its process starts: Tune's "
            f"actor imports torch and Ray Tune), {figures['later_trials_overhead_ms']:.0f} ms for the later ones. "
            f"With each worker's start taken out as Ray's is (the *_after_worker_start figures): wall ratio "
            f"{figures['wall_ratio_after_worker_start']:.3f}, efficiency "
            f"{figures['efficiency_after_worker_start']:.3f}, fixed cost "
            f"{figures['fixed_cost_ms_a_after_worker_start']:.0f} ms a trial. Per repeat: " + ", ".join(
                f"{key} {min(r[key] for r in rows):.3f}-{max(r[key] for r in rows):.3f}"
                for key in ("wall_ratio", "efficiency")) + ". "
            f"1-minute load average at the end: {figures['load_average_1m']}.")
    if not all(met.values()):
        missed = [f"{k} {figures[k]} (target {targets[k]})" for k, ok in met.items() if not ok]
        note += " Missed: " + ", ".join(missed) + "."
    for key, value in figures.items():
        print(f"{key}: {value}")
    name = "_".join(["orchestration"] + [args.workload] * (args.workload != "standard")
                    + [args.storage] * (args.storage != "sqlite")
                    # another number of trials is another row: how the workers' start amortises
                    + [f"{trials}trials"] * (not args.quick and trials != WORKLOADS[args.workload][0]))
    write_result(name, {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                   "note": note, "settings": {"workload": args.workload, "storage": args.storage,
                                                              "trials": trials,
                                                              "epochs": epochs,
                                                              "repeats": repeats, "concurrency": CONCURRENCY,
                                                              "cpus_per_trial": 1, "student": STUDENT,
                                                              "space": SPACE["params"]},
                                   "repeats": rows})


if __name__ == "__main__":
    sys.exit(main())
