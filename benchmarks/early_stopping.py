"""Pareto-aware early stopping: hypervolume at equal compute for no stopping, Pareto SH and stock ASHA.

Three arms search the same space (search_quality.SPACE: mlp/cnn students with their shapes,
teacher subset, KD kind, temperature, w_ce, w_kd, lr; ``params <= 50000``) with the default
sampler (tpe) and the flat, one-level search (``search: {mode: flat}``), 3 seeds each, on
digits and Fashion-MNIST:

- ``none``: ``early_stopping: {kind: none}``, N trials of E epochs each;
- ``pareto``: ``{kind: pareto, grace_epochs: 1, eta: 3}``, autokd's Pareto-aware successive halving;
- ``asha``: ``{kind: asha, grace_epochs: 1, eta: 3}``, stock ASHA on accuracy alone.

Compute is the sum of the ``epochs_trained`` user attr over the trials that trained. The none
arm spends C = N x E epochs. The stopping arms get the study key ``budget.epochs: C`` (no trial
starts once C epochs were trained; running ones finish) and up to 10 N trials; every arm is
then compared at compute C. HV is autokd's (val
accuracy, log10 params, the fixed reference of `results.hypervolume_reference`) over COMPLETE
trials only: an early-stopped trial is PRUNED and never counts. An arm's HV-vs-compute curve
takes its trained trials in completion order; at compute c it is the HV of the COMPLETE trials
finished when c epochs had been spent.

Reported per dataset: the curves (mean over seeds), HV at compute C, the compute at which the
pareto (and asha) mean curve first reaches the none arm's final mean HV as a fraction of C
(target <= 1/2), the front's span in size decades log10(max params / min params) at compute C
(target: pareto >= none), and the number of early-stopped (PRUNED) trials per arm. Stock
Ray + OptunaSearch would record every one of asha's early-stopped trials COMPLETE with its
last (partial) accuracy; autokd records them PRUNED.

Cheap settings as in search_quality.py (Fashion-MNIST on a stratified 8000-sample
`data.train_subset`, the subset's teachers trained once and cached in .cache/autokd).

    python benchmarks/early_stopping.py    # digits 9 epochs x 40 trials, Fashion 6 x 18, 3 seeds (~35 min, 2 cores)
    python benchmarks/early_stopping.py --quick    # 1 seed, 3 full-fidelity trials' worth (a smoke run)
    python benchmarks/early_stopping.py --digits-trials 40 --fashion-trials 18 --seeds 3
    python benchmarks/early_stopping.py --datasets fashion_mnist --fashion-trials 36 --result early_stopping_fashion_36
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import write_result  # noqa: E402  (common puts the repo on sys.path)

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from autokd.pareto import pareto_ranks  # noqa: E402
from autokd.results import hypervolume_reference, study_hypervolume, trials_frame  # noqa: E402
from autokd.spec import StudySpec  # noqa: E402
from search_quality import (CONCURRENCY, DATASETS, DEFAULT_SAMPLER, SIZE_LIMIT, SPACE, first_reaching,  # noqa: E402
                            mean_std, prepare_dataset, quiet, study_spec, trained_mask)

ARMS = ["none", "pareto", "asha"]
GRACE_EPOCHS, ETA = 1, 3
FRACTION_TARGET = 0.5
CURVE_POINTS = 24


def arm_trials(arm: str, trials: int) -> int:
    """The none arm's N; the stopping arms stop at the compute budget C long before 10 N trials."""
    return trials if arm == "none" else 10 * trials


def completion_frame(study: optuna.Study) -> pd.DataFrame:
    """Trained trials in completion order with their cumulative compute (epochs)."""
    frame = trials_frame(study)
    finished = {t.number: t.datetime_complete for t in study.get_trials(deepcopy=False)}
    frame["completed"] = frame["trial"].map(finished)
    trained = frame[trained_mask(frame)].sort_values(["completed", "trial"]).reset_index(drop=True)
    trained["cumulative_epochs"] = trained["epochs_trained"].fillna(0).astype(float).cumsum()
    return trained


def hv_at(trained: pd.DataFrame, spec: StudySpec, compute: float) -> float:
    return study_hypervolume(trained[trained["cumulative_epochs"] <= compute], spec)


def front_span_decades(trained: pd.DataFrame, compute: float) -> float:
    """log10(max params / min params) over the Pareto front of the COMPLETE trials within `compute`."""
    done = trained[(trained["cumulative_epochs"] <= compute) & (trained["state"] == "COMPLETE")]
    if done.empty:
        return 0.0
    points = done[["val_accuracy", "params"]].to_numpy(float)
    front = points[pareto_ranks(points, ["maximize", "minimize"]) == 0]
    return float(np.log10(front[:, 1].max() / front[:, 1].min()))


def run_arm(folder: Path, dataset: str, arm: str, seed: int, trials: int, epochs: int, budget: float) -> dict:
    from autokd.search import search

    name = f"es-{dataset}-{arm}-s{seed}"
    stopping = {"kind": arm, "grace_epochs": GRACE_EPOCHS, "eta": ETA}
    spec = study_spec(folder, dataset, name, trials=arm_trials(arm, trials), epochs=epochs,
                      sampler=DEFAULT_SAMPLER, seed=seed, early_stopping=stopping, compute_epochs=trials * epochs,
                      mode="flat")
    started = time.perf_counter()
    result = search(spec, progress=False, log=quiet)
    wall = time.perf_counter() - started
    trained = completion_frame(result.study)
    states = trained["state"].value_counts().to_dict()
    run = {"spec": spec, "trained": trained, "wall_s": wall, "compute": float(trained["cumulative_epochs"].max()),
           "complete": states.get("COMPLETE", 0), "stopped": states.get("PRUNED", 0), "failed": states.get("FAIL", 0)}
    print(f"  {name}: {len(trained)} trials ({run['stopped']} stopped), {run['compute']:.0f} epochs, "
          f"HV at {budget:.0f} epochs {hv_at(trained, spec, budget):.4f}, {wall:.0f} s", flush=True)
    return run


def mean_curve(runs: list[dict], computes: list[float]) -> list[float]:
    return np.mean([[hv_at(r["trained"], r["spec"], c) for c in computes] for r in runs], axis=0).tolist()


def dataset_figures(runs: dict[str, list[dict]], trials: int, epochs: int) -> dict:
    budget = float(trials * epochs)
    fine = [float(c) for c in range(1, int(budget) + 1)]
    fine_curves = {arm: mean_curve(rs, fine) for arm, rs in runs.items()}
    none_final = fine_curves["none"][-1]
    reach = {arm: first_reaching(fine_curves[arm], none_final, fine) for arm in ("pareto", "asha")}
    grid = [round(budget * i / CURVE_POINTS, 1) for i in range(1, CURVE_POINTS + 1)]
    return {
        "epochs_per_trial": epochs,
        "compute_budget_epochs": budget,
        "trials_trained_per_seed": {arm: [len(r["trained"]) for r in rs] for arm, rs in runs.items()},
        "hv_at_budget": {arm: mean_std([hv_at(r["trained"], r["spec"], budget) for r in rs])
                         for arm, rs in runs.items()},
        "none_final_hv_mean": round(none_final, 4),
        "fraction_of_none_compute_to_reach_none_final": {
            arm: round(c / budget, 4) if c is not None else None for arm, c in reach.items()},
        "front_span_decades_at_budget": {arm: mean_std([front_span_decades(r["trained"], budget) for r in rs])
                                         for arm, rs in runs.items()},
        "stopped_pruned_per_seed": {arm: [r["stopped"] for r in rs] for arm, rs in runs.items()},
        "complete_per_seed": {arm: [r["complete"] for r in rs] for arm, rs in runs.items()},
        "failed_per_seed": {arm: [r["failed"] for r in rs] for arm, rs in runs.items()},
        "compute_spent_epochs_per_seed": {arm: [r["compute"] for r in rs] for arm, rs in runs.items()},
        "asha_stopped_that_stock_optunasearch_would_record_complete": sum(r["stopped"] for r in runs["asha"]),
        "hv_curve_mean": {"epochs": grid, **{arm: [round(v, 4) for v in mean_curve(rs, grid)]
                                             for arm, rs in runs.items()}},
        "wall_s": round(sum(r["wall_s"] for rs in runs.values() for r in rs), 1),
    }


def dataset_met(f: dict) -> dict:
    fraction = f["fraction_of_none_compute_to_reach_none_final"]["pareto"]
    spans = f["front_span_decades_at_budget"]
    return {"pareto_fraction_to_reach_none_hv": fraction is not None and fraction <= FRACTION_TARGET,
            "pareto_front_span": spans["pareto"]["mean"] >= spans["none"]["mean"]}


def print_table(figures: dict) -> None:
    print(f"\n{'dataset':<14}{'arm':<8}{'HV at C (mean ± std)':>22}{'reach none HV':>15}{'span dec':>10}"
          f"{'stopped/seed':>14}{'epochs/seed':>13}")
    for dataset, f in figures.items():
        for arm in ARMS:
            hv = f["hv_at_budget"][arm]
            fraction = f["fraction_of_none_compute_to_reach_none_final"].get(arm, 1.0 if arm == "none" else None)
            reach = f"{fraction:.2f} C" if fraction is not None else "not by C"
            stopped = statistics.fmean(f["stopped_pruned_per_seed"][arm])
            spent = statistics.fmean(f["compute_spent_epochs_per_seed"][arm])
            print(f"{dataset:<14}{arm:<8}{hv['mean']:>14.4f} ± {hv['std']:.4f}{reach:>15}"
                  f"{f['front_span_decades_at_budget'][arm]['mean']:>10.2f}{stopped:>14.1f}{spent:>13.0f}")


def dataset_note(dataset: str, f: dict, met: dict) -> str:
    fraction = f["fraction_of_none_compute_to_reach_none_final"]["pareto"]
    spans = {arm: f["front_span_decades_at_budget"][arm]["mean"] for arm in ARMS}
    hv = {arm: f["hv_at_budget"][arm]["mean"] for arm in ARMS}
    spent = {arm: statistics.fmean(f["compute_spent_epochs_per_seed"][arm]) for arm in ARMS}
    trained = {arm: statistics.fmean(f["trials_trained_per_seed"][arm]) for arm in ARMS}
    text = (f"{dataset}: C = {f['compute_budget_epochs']:.0f} epochs ({trained['none']:.0f} trials x "
            f"{f['epochs_per_trial']}); pareto and asha trained {trained['pareto']:.0f} and {trained['asha']:.0f} "
            f"trials and spent "
            f"{spent['pareto']:.0f} and {spent['asha']:.0f} epochs per seed (curves cut at C). HV at C none "
            f"{hv['none']}, pareto {hv['pareto']}, asha {hv['asha']}. ")
    if met["pareto_fraction_to_reach_none_hv"]:
        text += f"Pareto reaches none's final HV at {fraction:.2f} C (target <= {FRACTION_TARGET}). "
    elif fraction is None:
        text += (f"MISSED: pareto's mean curve does not reach none's final HV {f['none_final_hv_mean']} within C "
                 f"({hv['pareto'] - hv['none']:+.4f} at C). ")
    else:
        text += f"MISSED by {fraction - FRACTION_TARGET:.2f} C: pareto needs {fraction:.2f} C. "
    relation = ">=" if met["pareto_front_span"] else "<, MISSED:"
    text += (f"Front span pareto {spans['pareto']:.2f} {relation} none {spans['none']:.2f} decades "
             f"(asha {spans['asha']:.2f}).")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 full-fidelity trials' worth: a smoke run")
    parser.add_argument("--digits-trials", type=int, default=None, help="trials of the none arm on digits")
    parser.add_argument("--fashion-trials", type=int, default=None, help="trials of the none arm on Fashion-MNIST")
    parser.add_argument("--digits-epochs", type=int, default=9)
    parser.add_argument("--fashion-epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--result", default="early_stopping",
                        help="result file stem in benchmarks/results (another budget keeps its own file)")
    args = parser.parse_args()
    trials = {"digits": args.digits_trials or (3 if args.quick else 40),
              "fashion_mnist": args.fashion_trials or (3 if args.quick else 18)}
    epochs = {"digits": args.digits_epochs, "fashion_mnist": args.fashion_epochs}
    seeds = args.seeds or (1 if args.quick else 3)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)

    figures, settings, reference = {}, {}, None
    with tempfile.TemporaryDirectory(prefix="autokd-early-stopping-") as tmp:
        for dataset in args.datasets:
            budget = trials[dataset] * epochs[dataset]
            spec = study_spec(Path(tmp), dataset, "prepare", trials=1, epochs=epochs[dataset], sampler="random", seed=0)
            reference = [round(r, 4) for r in hypervolume_reference(spec)]
            print(f"{dataset}: preparing teachers", flush=True)
            settings[dataset] = {"study": DATASETS[dataset]["study"], "train_subset": DATASETS[dataset]["train_subset"],
                                 "epochs": epochs[dataset], "batch_size": DATASETS[dataset]["batch_size"],
                                 "none_trials": trials[dataset], **prepare_dataset(spec)}
            runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
            for seed in range(seeds):  # arms interleaved per seed: background load hits all of them alike
                for arm in ARMS:
                    runs[arm].append(run_arm(Path(tmp), dataset, arm, seed, trials[dataset], epochs[dataset], budget))
            figures[dataset] = dataset_figures(runs, trials[dataset], epochs[dataset])
    import ray

    ray.shutdown()
    print_table(figures)
    met = {dataset: dataset_met(f) for dataset, f in figures.items()}
    targets = {"pareto_fraction_to_reach_none_hv": f"<= {FRACTION_TARGET} of the none arm's compute",
               "pareto_front_span": "pareto's mean front span (decades) >= none's"}
    note = (f"Compute = sum of epochs_trained; arms compared at the none arm's compute C = trials x epochs; "
            f"HV on (val accuracy, log10 params), reference {reference}, COMPLETE trials only; sampler "
            f"{DEFAULT_SAMPLER}, {seeds} seed(s), concurrency {CONCURRENCY}, grace {GRACE_EPOCHS}, eta {ETA}. "
            + " ".join(dataset_note(d, f, met[d]) for d, f in figures.items()))
    for dataset, ok in met.items():
        print(f"{dataset}: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in ok.items()))
    print(note)
    write_result(args.result, {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                    "note": note, "settings": {"seeds": seeds, "arms": ARMS, "sampler": DEFAULT_SAMPLER,
                                                               "grace_epochs": GRACE_EPOCHS, "eta": ETA,
                                                               "concurrency": CONCURRENCY, "cpus_per_trial": 1,
                                                               "constraints": [f"params <= {SIZE_LIMIT}"],
                                                               "space": SPACE["params"], "datasets": settings}})


if __name__ == "__main__":
    sys.exit(main())
