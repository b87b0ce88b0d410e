"""Report build time for a 1,000-trial study (issue 4: `build_report` in <= 10 s).

A synthetic study is written to a temporary SQLite storage the way `autokd search` writes a
flat one (``search: {mode: flat}``): parameters sampled (random sampler) from the study's real
search space, the trial's config from `SearchSpace.apply`, its size from `sizes.arch_size`, the
user attributes the searcher sets (config, seed, params, bytes_fp32, bytes_fp16, macs,
val_accuracy_curve, epochs_trained, train_seconds, node), constraint values, and the study
attributes (objectives, space, study_spec, study_file, search_mode). Configs that break the
study's size constraint are PRUNED as infeasible (as the searcher does), a few trials FAIL with
a reason or are PRUNED as stopped early, the rest are COMPLETE. Accuracies and timings are
synthetic: nothing is trained.

The report is built once untimed (warm: teachers loaded from the cache, fonts cached), then
`repeats` timed builds of ``build_report(name, storage, out, evaluate_test=False, baselines=False)``;
the figure is their median. One more build runs under cProfile for the breakdown: the report's
stages (cumulative seconds) and the top functions by own time.

The study file gives the search space, teachers and data (default studies/digits.yaml, whose
space is the full kd_full space of the Fashion-MNIST study too; the dataset only changes the one
data load that the teacher rows need).

    python benchmarks/report_speed.py            # 1,000 trials, median of 3 timed builds (~3 min)
    python benchmarks/report_speed.py --quick    # 200 trials, 1 timed build (a smoke run)
    python benchmarks/report_speed.py --study studies/fashion_mnist.yaml   # waits for its cached teachers
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import logging
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.data import load_data  # noqa: E402
from autokd.report import build_report  # noqa: E402
from autokd.space import SearchSpace, load_space  # noqa: E402
from autokd.spec import StudySpec  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402
from autokd.sizes import arch_size  # noqa: E402
from trial_cost import wait_for_cached_teachers  # noqa: E402

TARGET_SECONDS = 10.0
CACHE_DIR = REPO / ".cache" / "autokd"
FAIL_FRACTION = 0.03
STOPPED_FRACTION = 0.03
NODE = "a3f9c1" * 9 + "e2"  # a Ray node id (56 hex digits)
REPORT_STAGES = ("_snapshot", "trials_frame", "_front_with_tests", "_teacher_rows", "_importances", "_plot_pareto",
                 "_plot_hypervolume", "_plot_importance", "_plot_effects", "_summary", "render_html", "to_csv")
States = optuna.trial.TrialState


def study_spec(study_file: Path, storage_url: str) -> StudySpec:
    """The repo's study with a temporary storage and the shared teacher cache."""
    original = load_study(study_file)
    return StudySpec.model_validate({**original.model_dump(), "search": {"mode": "flat"}, "storage": storage_url,
                                     "cache_dir": str(CACHE_DIR), "source": str(study_file)})


def synthetic_accuracy(params: int, rng: np.random.Generator) -> float:
    """Grows with log size, saturates, plus noise: a plausible accuracy-size cloud."""
    return round(float(np.clip(0.62 + 0.05 * np.log10(params) + rng.normal(0, 0.015), 0.1, 0.93)), 4)


def synthetic_curve(final: float, epochs: int, rng: np.random.Generator) -> list[float]:
    rising = final - 0.08 * np.exp(-np.arange(epochs)) + rng.normal(0, 0.003, epochs)
    return [round(float(v), 4) for v in np.minimum(rising, 1.0)]


def sampled_trials(spec: StudySpec, space: SearchSpace, input_shape, num_classes: int, count: int,
                   seed: int) -> list[optuna.trial.FrozenTrial]:
    """`count` trials as the searcher records them: real sampled params, configs and sizes."""
    rng = np.random.default_rng(seed)
    sampler_study = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    base = spec.train_config()
    limits = spec.size_limits()
    clock = [dt.datetime(2026, 1, 1, 9, 0, 0)] * spec.resources.concurrency  # when each worker is next free
    trials = []
    for number in range(count):
        ask = sampler_study.ask()
        space.suggest(ask)
        config = space.apply(base, ask.params)
        config.seed = base.seed + number
        size = arch_size(config.student, input_shape, num_classes).as_dict()
        attrs = {"config": config.model_dump(), "seed": config.seed, **size}
        constraints = {metric: size[metric] - limit for metric, limit in limits.items()}
        worker = int(np.argmin(clock))
        started = clock[worker]
        if any(value > 0 for value in constraints.values()):
            broken = ", ".join(f"{m} {size[m]} > {limits[m]:g}" for m, v in constraints.items() if v > 0)
            trial = optuna.trial.create_trial(state=States.PRUNED, params=ask.params,
                                              distributions=ask.distributions, constraints=constraints,
                                              user_attrs={**attrs, "pruned_reason": f"infeasible: {broken}"})
            finished = started
        else:
            trial, seconds = trained_trial(spec, ask, attrs, constraints, rng)
            finished = started + dt.timedelta(seconds=seconds)
            clock[worker] = finished
        trial.datetime_start, trial.datetime_complete = started, finished
        trials.append(trial)
    return trials


def trained_trial(spec: StudySpec, ask: optuna.Trial, attrs: dict, constraints: dict,
                  rng: np.random.Generator) -> tuple[optuna.trial.FrozenTrial, float]:
    """A trial that trained: COMPLETE mostly, sometimes FAIL (non-finite loss) or stopped early."""
    epochs = spec.schedule.epochs
    seconds = float(2.0 + attrs["macs"] / 2e5 * rng.lognormal(0, 0.2))
    accuracy = synthetic_accuracy(attrs["params"], rng)
    draw = rng.random()
    common = {"params": ask.params, "distributions": ask.distributions, "constraints": constraints}
    if draw < FAIL_FRACTION:
        step = int(rng.integers(1, 200))
        reason = f"NonFiniteLossError: non-finite loss (nan) at epoch 1, step {step}"
        run = {"val_accuracy_curve": [], "epochs_trained": 0, "train_seconds": seconds / epochs, "node": NODE}
        return optuna.trial.create_trial(state=States.FAIL, **common,
                                         user_attrs={**attrs, **run, "failure_reason": reason}), seconds / epochs
    if draw < FAIL_FRACTION + STOPPED_FRACTION:
        stopped = int(rng.integers(1, epochs))
        run = {"val_accuracy_curve": synthetic_curve(accuracy - 0.05, stopped, rng), "epochs_trained": stopped,
               "train_seconds": seconds * stopped / epochs, "node": NODE,
               "pruned_reason": f"early-stopped at epoch {stopped} of {epochs}"}
        return optuna.trial.create_trial(state=States.PRUNED, **common, user_attrs={**attrs, **run}), \
            seconds * stopped / epochs
    run = {"val_accuracy_curve": synthetic_curve(accuracy, epochs, rng), "epochs_trained": epochs,
           "train_seconds": seconds, "node": NODE}
    return optuna.trial.create_trial(state=States.COMPLETE, values=[accuracy, float(attrs[spec.objectives[1]])],
                                     **common, user_attrs={**attrs, **run}), seconds


def write_study(spec: StudySpec, space: SearchSpace, trials: list[optuna.trial.FrozenTrial]) -> None:
    """The study in its storage, with the study attributes `autokd search` sets."""
    study = optuna.create_study(study_name=spec.name, storage=spec.storage_url(), directions=spec.directions)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("space", {name: param.model_dump() for name, param in space.params.items()})
    study.set_user_attr("study_spec", spec.model_dump(mode="json"))
    study.set_user_attr("study_file", spec.source)
    study.set_user_attr("search_mode", "flat")
    study.add_trials(trials)


def timed_build(spec: StudySpec, out: Path) -> float:
    started = time.perf_counter()
    build_report(spec.name, storage=spec.storage_url(), out=out, evaluate_test=False, baselines=False, log=quiet)
    return time.perf_counter() - started


def profiled_build(spec: StudySpec, out: Path, top: int) -> dict:
    """One build under cProfile: seconds per report stage (cumulative) and the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    build_report(spec.name, storage=spec.storage_url(), out=out, evaluate_test=False, baselines=False, log=quiet)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    stages: dict[str, float] = {}
    for (path, _line, function), (_calls, _primitive, _own, cumulative, _callers) in stats.items():
        in_report = path.endswith(("autokd/report.py", "autokd/results.py"))
        if function in REPORT_STAGES and (in_report or function == "to_csv"):
            stages[function] = round(stages.get(function, 0.0) + cumulative, 3)
    by_own_time = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    total = sum(entry[2] for entry in stats.values())
    return {"profiled_total_s": round(total, 3),
            "stages_cumulative_s": dict(sorted(stages.items(), key=lambda item: -item[1])),
            "top_own_time": [{"function": f"{Path(path).name}:{line}:{function}", "calls": calls,
                              "own_s": round(own, 3), "cumulative_s": round(cumulative, 3)}
                             for (path, line, function), (_p, calls, own, cumulative, _c) in by_own_time]}


def quiet(_message: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 trials, 1 timed build: a smoke run")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--study", type=Path, default=None, help="study file whose space and teachers are used")
    args = parser.parse_args()
    trials = args.trials or (200 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    study_file = args.study or REPO / "studies" / "digits.yaml"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="autokd-report-speed-") as tmp:
        folder = Path(tmp)
        spec = study_spec(study_file, f"sqlite:///{folder / 'study.db'}")
        space = load_space(spec)
        data = load_data(spec.data, spec.source)
        if spec.data.name == "fashion-mnist":
            wait_for_cached_teachers(spec, data, timeout_s=3600)
        prepare_teachers(spec.teachers, data, spec.cache_dir, log=print)  # cached once
        started = time.perf_counter()
        synthetic = sampled_trials(spec, space, data.input_shape, data.num_classes, trials, seed=0)
        write_study(spec, space, synthetic)
        print(f"wrote {trials} trials in {time.perf_counter() - started:.1f} s", flush=True)
        warm_s = timed_build(spec, folder / "report")
        seconds = []
        for repeat in range(repeats):
            seconds.append(timed_build(spec, folder / "report"))
            print(f"build {repeat + 1}/{repeats}: {seconds[-1]:.2f} s", flush=True)
        breakdown = profiled_build(spec, folder / "report", top=15)

    states = {state.name: sum(t.state == state for t in synthetic) for state in (States.COMPLETE, States.FAIL,
                                                                                  States.PRUNED)}
    figures = {"build_s": round(statistics.median(seconds), 3), "warm_up_build_s": round(warm_s, 3),
               "builds_s": [round(s, 3) for s in seconds], "trials": trials, "states": states}
    targets = {"build_s": f"<= {TARGET_SECONDS}"}
    met = {"build_s": figures["build_s"] <= TARGET_SECONDS}
    note = (f"build_report(evaluate_test=False, baselines=False) on a synthetic {trials}-trial study "
            f"({states}) sampled from {study_file.name}'s search space, SQLite storage; median of {repeats} "
            f"timed builds after one warm-up build; {figures['build_s']} s vs target {TARGET_SECONDS} s "
            f"({'met' if met['build_s'] else 'MISSED'}, {figures['build_s'] / TARGET_SECONDS:.0%} of the budget). "
            "The breakdown comes from one extra build under cProfile (slower than an unprofiled build).")
    print(f"build_s: {figures['build_s']} (target <= {TARGET_SECONDS})")
    for stage, value in breakdown["stages_cumulative_s"].items():
        print(f"  {stage}: {value} s")
    write_result("report_speed", {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                  "note": note, "settings": {"trials": trials, "repeats": repeats,
                                                             "study": str(study_file),
                                                             "fail_fraction": FAIL_FRACTION,
                                                             "stopped_fraction": STOPPED_FRACTION},
                                  "breakdown": breakdown})


if __name__ == "__main__":
    sys.exit(main())
