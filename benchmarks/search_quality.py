"""Search quality: hypervolume after N trials for the samplers (tpe, random, nsga2) and the two-level search.

For each dataset (digits, Fashion-MNIST) and each arm, `autokd.search.search` runs a study of
N trials with 3 sampler seeds, each in its own temporary SQLite storage. The space searches the
student (mlp or cnn with its shape), the teacher subset, the KD loss kind, temperature, w_ce,
w_kd and the learning rate; the constraint ``params <= 50000`` is checked before a trial trains,
so infeasible proposals cost nothing and do not count as trials. Arms:

- ``tpe`` (the default sampler), ``random``, ``nsga2``: the flat, one-level search
  (``search: {mode: flat}``): one draw of every parameter per trial, one seed;
- ``two_level``: the same space, budget and sampler (tpe) with ``search: {mode: two_level}``
  and its defaults: the first 40 % of the trials are architectures trained with CE only, then
  per chosen architecture CE-only and vanilla KD baselines and tuned distillation configs, each
  trained on 3 paired seeds (value: their mean). Same trial budget, so about 2.2x the epochs.

Hypervolume (HV) is autokd's own: (val accuracy, log10 params) against the fixed reference of
`autokd.results.hypervolume_reference` (accuracy 0, log10 of the params constraint), over
COMPLETE trials only. The HV-vs-trials curve takes the trained trials (COMPLETE or FAIL; not
the infeasible ones) in trial-number order; its value at k is the study's HV
(`autokd.results.study_hypervolume`) as it stood after its first k trained trials: for a flat
study, every COMPLETE trial among them; for a two-level study, each architecture's chosen
level-2 config (CE-only, vanilla KD or tuned; its mean over the paired seeds) among them, or,
before level 2 has any choice (no CE-only baseline finished yet), the COMPLETE level-1 trials.
Reported per dataset and arm: HV at N/2 and at N (mean +- std over seeds), the curve averaged
over seeds, the epochs trained, and the trials each arm needs for its mean curve to reach
random's final mean HV. Target: the default sampler (tpe, flat) reaches it in <= N/2 trials;
the two-level arm's HV at N/2 and N is reported beside random's and NSGA-II's (issue 12).

Cheap settings: digits at full size with short epochs; Fashion-MNIST on a stratified
`data.train_subset` of the training split (the validation split is the study's) with 2 epochs
per trial. A subset changes the data fingerprint and so the teacher cache key: the study's
three Fashion-MNIST teachers (studies/fashion_mnist.yaml architectures and schedules) are
trained once on that subset (a few minutes) and cached in the repo's cache, .cache/autokd;
later runs reuse them. Digits uses studies/digits.yaml's teachers from the same cache.

    python benchmarks/search_quality.py            # 40 digits / 30 Fashion-MNIST trials, 3 seeds (~55 min)
    python benchmarks/search_quality.py --quick    # 1 seed, 6 trials each (a smoke run)
    python benchmarks/search_quality.py --quick --datasets digits   # the smoke run without Fashion-MNIST
    python benchmarks/search_quality.py --datasets fashion_mnist    # one dataset: search_quality_fashion_mnist.json
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

from autokd.config_files import load_study  # noqa: E402
from autokd.data import load_data  # noqa: E402
from autokd.pairing import CE, TUNED, VANILLA_KD  # noqa: E402
from autokd.results import (INTERRUPTED, architecture_choices, hypervolume_reference, study_hypervolume,  # noqa: E402
                            trained_epochs, trials_frame)
from autokd.spec import SearchModeSpec, StudySpec  # noqa: E402
from autokd.study_store import nsga2_population  # noqa: E402
from autokd.teacher_outputs import teacher_outputs  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402

DEFAULT_SAMPLER = "tpe"
SAMPLERS = [DEFAULT_SAMPLER, "random", "nsga2"]  # flat searches
TWO_LEVEL = "two_level"  # the two-level search with the default sampler
ARMS = {**{sampler: (sampler, "flat") for sampler in SAMPLERS}, TWO_LEVEL: (DEFAULT_SAMPLER, "two_level")}
ROLES = (CE, VANILLA_KD, TUNED)  # what a two-level front point can be
TWO_LEVEL_DEFAULTS = SearchModeSpec()  # the two-level arm changes only the mode
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
               early_stopping: dict | None = None, compute_epochs: int | None = None,
               mode: str = "flat") -> StudySpec:
    """A study on `dataset` with its study file's split and teachers, the benchmark space and budget.

    `mode` is the study's `search.mode`: flat (one level, what the sampler arms and the
    early-stopping benchmarks measure) unless the two-level arm asks for `two_level`."""
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
        "search": {"mode": mode},
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
    teachers = prepare_teachers(spec.teachers, data, spec.cache_dir,
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


class StudyPrefix:
    """A finished study as it stood after trial `last`: its attrs and its trials 0..last, read-only.

    What `results.trials_frame` reads of an `optuna.Study`; for a two-level study it recomputes
    the architecture choices from the level-2 trials it sees, so a prefix ranks as the study did then."""

    def __init__(self, study: optuna.Study | StudyPrefix, last: int | None = None):
        self.user_attrs, self.directions = study.user_attrs, study.directions
        self._trials = [t for t in study.get_trials(deepcopy=False) if last is None or t.number <= last]

    def get_trials(self, deepcopy: bool = False, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]


def hv_by_trials(study: optuna.Study, spec: StudySpec) -> list[float]:
    """The study's HV after its first k trained trials (trial-number order), k = 1..N.

    Flat: the COMPLETE trials among them. Two-level: each architecture's choice that those
    trials make (CE-only, vanilla KD or tuned, at its paired-seed mean), or the COMPLETE
    level-1 trials while no choice is made yet: `study_hypervolume` of the prefix's frame."""
    whole = StudyPrefix(study)  # the storage is read once
    frame = trials_frame(whole).sort_values("trial")
    numbers = frame.loc[trained_mask(frame), "trial"].astype(int).tolist()
    return [study_hypervolume(trials_frame(StudyPrefix(whole, last)), spec) for last in numbers]


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


def run_arm(folder: Path, dataset: str, arm: str, seed: int, trials: int, epochs: int) -> dict:
    from autokd.search import search

    sampler, mode = ARMS[arm]
    name = f"sq-{dataset}-{arm}-s{seed}"
    spec = study_spec(folder, dataset, name, trials=trials, epochs=epochs, sampler=sampler, seed=seed, mode=mode)
    started = time.perf_counter()
    result = search(spec, progress=False, log=quiet)
    wall = time.perf_counter() - started
    if result.study.user_attrs.get("search_mode") != mode:  # the arm must measure what it is named for
        raise RuntimeError(f"{name}: ran as {result.study.user_attrs.get('search_mode')!r}, expected {mode!r}")
    curve = hv_by_trials(result.study, spec)
    if len(curve) < trials:
        raise RuntimeError(f"{name}: {len(curve)} trained trials, expected {trials}")
    failed = int((result.trials["state"] == "FAIL").sum())
    run = {"curve": curve, "wall_s": wall, "failed": failed, "epochs": trained_epochs(result.study)}
    if mode == "two_level":
        roles = [choice.role for choice in architecture_choices(result.study).values()]
        run["choices"] = {role: roles.count(role) for role in ROLES}
    half = max(1, trials // 2)
    print(f"  {name}: HV {curve[-1]:.4f} (at {half}: {curve[half - 1]:.4f}), front "
          f"{len(result.pareto)}, failed {failed}, {run['epochs']} epochs"
          + (f", choices {run['choices']}" if "choices" in run else "") + f", {wall:.0f} s", flush=True)
    return run


def dataset_figures(runs: dict[str, list[dict]], trials: int) -> dict:
    """HV at N/2 and N, mean curves, trials-to-reach-random and compute for one dataset."""
    half = max(1, trials // 2)
    finals = {a: [r["curve"][trials - 1] for r in rs] for a, rs in runs.items()}
    halves = {a: [r["curve"][half - 1] for r in rs] for a, rs in runs.items()}
    curves = {a: np.mean([r["curve"][:trials] for r in rs], axis=0).tolist() for a, rs in runs.items()}
    random_final = statistics.fmean(finals["random"])
    reach = {a: first_reaching(curves[a], random_final) for a in runs}
    figures = {"trials": trials, "half_trials": half,
               "final_hv": {a: mean_std(v) for a, v in finals.items()},
               "hv_at_half": {a: mean_std(v) for a, v in halves.items()},
               "hv_curve_mean": {a: [round(v, 4) for v in c] for a, c in curves.items()},
               "random_final_hv_mean": round(random_final, 4),
               "trials_to_reach_random_final": reach,
               "default_trials_to_reach_random": reach[DEFAULT_SAMPLER],
               "seeds_with_curve_identical_to_random": {
                   a: sum(r["curve"] == q["curve"] for r, q in zip(rs, runs["random"])) for a, rs in runs.items()},
               "epochs_trained_per_seed": {a: [r["epochs"] for r in rs] for a, rs in runs.items()},
               "failed_trials": {a: sum(r["failed"] for r in rs) for a, rs in runs.items()},
               "wall_s": round(sum(r["wall_s"] for rs in runs.values() for r in rs), 1)}
    if TWO_LEVEL in runs:
        def minus(hv: dict, other: str) -> float:
            return round(hv[TWO_LEVEL]["mean"] - hv[other]["mean"], 4)

        figures["two_level_minus"] = {
            "at_half": {s: minus(figures["hv_at_half"], s) for s in runs if s != TWO_LEVEL},
            "at_n": {s: minus(figures["final_hv"], s) for s in runs if s != TWO_LEVEL}}
        figures["two_level_choices_per_seed"] = [r["choices"] for r in runs[TWO_LEVEL]]
    return figures


def print_table(figures: dict) -> None:
    print(f"\n{'dataset':<14}{'arm':<10}{'HV at N/2 (mean ± std)':>24}{'HV at N (mean ± std)':>24}"
          f"{'trials to reach random':>24}{'epochs/seed':>13}")
    for dataset, f in figures.items():
        for arm, hv in f["final_hv"].items():
            half = f["hv_at_half"][arm]
            reach = f["trials_to_reach_random_final"][arm]
            epochs = statistics.fmean(f["epochs_trained_per_seed"][arm])
            print(f"{dataset:<14}{arm:<10}{half['mean']:>16.4f} ± {half['std']:.4f}{hv['mean']:>16.4f} ± "
                  f"{hv['std']:.4f}{(str(reach) if reach else 'never') + ' / ' + str(f['trials']):>24}{epochs:>13.0f}")


def two_level_note(dataset: str, f: dict) -> str:
    """The two-level arm's HV at N/2 and N beside the flat arms', and the compute it spent."""
    order = [arm for arm in (TWO_LEVEL, "random", "nsga2", DEFAULT_SAMPLER) if arm in f["final_hv"]]

    def at(key: str) -> str:
        return ", ".join(f"{arm} {f[key][arm]['mean']:.4f}" for arm in order)

    minus = ", ".join(f"{arm} {value:+.4f}" for arm, value in f["two_level_minus"]["at_n"].items())
    epochs = {arm: statistics.fmean(v) for arm, v in f["epochs_trained_per_seed"].items()}
    totals = {role: sum(c[role] for c in f["two_level_choices_per_seed"]) for role in ROLES}
    return (f"{dataset}: HV at N/2 = {f['half_trials']}: {at('hv_at_half')}; at N = {f['trials']}: {at('final_hv')} "
            f"(two_level minus {minus} at N). Epochs trained per seed: two_level {epochs[TWO_LEVEL]:.0f}, flat "
            f"{DEFAULT_SAMPLER} {epochs[DEFAULT_SAMPLER]:.0f}. Two-level front choices (all seeds): CE-only "
            f"{totals[CE]}, vanilla KD {totals[VANILLA_KD]}, tuned {totals[TUNED]}.")


def note_for(figures: dict, met: dict, reference: list[float], seeds: int, epochs: dict) -> str:
    populations = {d: nsga2_population(f["trials"]) for d, f in figures.items() if "nsga2" in f["final_hv"]}
    nsga2 = "; nsga2: population from the budget, " + ", ".join(f"{d} {n}" for d, n in populations.items())
    parts = [f"HV on (val accuracy, log10 params), reference {reference}; {seeds} seed(s) per "
             f"arm; samplers as autokd builds them (tpe: multivariate, group, constant_liar, its first 10 "
             f"trials random startup draws, the same as the random sampler's with the same seed"
             + (nsga2 if populations else "") + "); "
             f"concurrency {CONCURRENCY}. Epochs per trial: " + ", ".join(f"{d} {e}" for d, e in epochs.items()) + "."]
    if any(TWO_LEVEL in f["final_hv"] for f in figures.values()):
        parts.append(
            f"{TWO_LEVEL}: the same space, trial budget and sampler seed with search mode two_level (tpe, defaults: "
            f"{100 * TWO_LEVEL_DEFAULTS.level1_share:g} % of the trials level 1, up to "
            f"{TWO_LEVEL_DEFAULTS.architectures} architectures, {TWO_LEVEL_DEFAULTS.seeds} paired seeds, margin "
            f"{TWO_LEVEL_DEFAULTS.margin_se:g} SE). Its HV at k trials is "
            "the study's own (autokd.results.study_hypervolume) after its first k trained trials: one point per "
            "architecture that has a level-2 choice (CE-only, vanilla KD or tuned, placed at its mean val accuracy "
            "over the paired seeds); until the first CE-only baseline finishes, the COMPLETE level-1 trials "
            "(CE-only, one seed) instead. Once a choice exists no level-1 trial counts (architectures that level 2 "
            "did not pick, or has not reached yet, are absent), so the curve can drop when level 2 starts. The flat "
            "arms' points are the single-seed val accuracies of every COMPLETE trial. A level-2 trial trains "
            f"{TWO_LEVEL_DEFAULTS.seeds} seeds, so at equal trials the two-level arm spends more epochs (below).")
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
        if TWO_LEVEL in f["final_hv"]:
            parts.append(two_level_note(dataset, f))
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
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="the arms to run (random, the reference, and tpe, the target's, always run)")
    args = parser.parse_args()
    arms = [arm for arm in ARMS if arm in {"random", DEFAULT_SAMPLER, *args.arms}]
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
            runs = {arm: [run_arm(Path(tmp), dataset, arm, seed, trials[dataset], epochs[dataset])
                          for seed in range(seeds)] for arm in arms}
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
    note = note_for(figures, met, reference, seeds, {d: epochs[d] for d in figures})
    print(note)
    # A run over some of the datasets writes its own file: the full run's figures stay as they were.
    name = "search_quality" if set(args.datasets) == set(DATASETS) else "search_quality_" + "_".join(args.datasets)
    write_result(name, {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                    "note": note, "settings": {"seeds": seeds,
                                                               "arms": {a: {"sampler": ARMS[a][0],
                                                                            "search_mode": ARMS[a][1]} for a in arms},
                                                               "concurrency": CONCURRENCY, "cpus_per_trial": 1,
                                                               "constraints": [f"params <= {SIZE_LIMIT}"],
                                                               "space": SPACE["params"], "datasets": settings}})


if __name__ == "__main__":
    sys.exit(main())
