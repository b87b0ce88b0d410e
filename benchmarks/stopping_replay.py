"""Early-stopping rules replayed on recorded learning curves, with an oracle for a bound.

A real search (benchmarks/early_stopping.py) mixes the stopping rule with the sampler, Ray's
timing and seeds. This replay isolates the rule: one random-sampler study per dataset (flat,
``search: {mode: flat}``) trains a pool of configs to full length and records their accuracy
curves (the benchmark space of search_quality.py); then many random orders of that pool are
replayed through each rule with 2 concurrent workers (epoch durations as measured), and HV at
compute is read as in early_stopping.py (COMPLETE = full-length trials only; compute = epochs trained).

Rules, all at the rungs of grace 1, eta 3:

- ``none``: every trial trains to the end;
- ``autokd``: `stopping.ParetoRungs` as the search uses it (rung rule OR front rule);
- ``rung_only``: only the top 1/eta of a rung by (rank, crowding) goes on;
- ``front_only``: only trials the full-fidelity front has not beaten at that epoch go on;
- ``oracle``: stops a trial at the first rung exactly when its *final* result would be dominated
  by the front at that moment: no rule deciding at a rung can do better in this order, so its
  curve bounds what early stopping can save here.

Reported per dataset and budget N (C = N x E epochs): HV at C/2 and C, the fraction of C at
which each rule's mean curve reaches none's final HV, and the front span in decades.

    python benchmarks/stopping_replay.py           # pools: digits 150 x 9 epochs, Fashion 45 x 6 (~10 min)
    python benchmarks/stopping_replay.py --quick   # pools of 20, 5 orders
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import sys
import tempfile
from pathlib import Path

from common import write_result  # noqa: E402  (common puts the repo on sys.path)

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from autokd.pareto import hypervolume, pareto_ranks  # noqa: E402
from autokd.stopping import ParetoRungs  # noqa: E402
from search_quality import SIZE_LIMIT, prepare_dataset, quiet, study_spec  # noqa: E402

GRACE_EPOCHS, ETA, CONCURRENCY = 1, 3, 2
RULES = ["none", "autokd", "rung_only", "front_only", "oracle"]
DIRECTIONS = ["maximize", "minimize"]
REFERENCE = [0.0, math.log10(SIZE_LIMIT)]
POOLS = {"digits": (150, 9, [18, 30, 40]), "fashion_mnist": (45, 6, [9, 15])}  # pool trials, epochs, budgets N


def record_pool(folder: Path, dataset: str, trials: int, epochs: int) -> list[dict]:
    """Train `trials` random configs to full length; their accuracy curves, sizes and epoch times."""
    from autokd.search import search

    spec = study_spec(folder, dataset, f"pool-{dataset}", trials=trials, epochs=epochs, sampler="random", seed=123,
                      mode="flat")
    prepare_dataset(spec)
    study = search(spec, progress=False, log=quiet).study
    return [{"params": t.user_attrs["params"], "curve": t.user_attrs["val_accuracy_curve"],
             "epoch_s": t.user_attrs["train_seconds"] / len(t.user_attrs["val_accuracy_curve"])}
            for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


class Oracle:
    """Knows each trial's final accuracy: trains a trial past the first rung only if it will join the front."""

    def __init__(self, pool: list[dict]):
        self.pool, self.front = pool, []

    def keep_training(self, trial_id, epoch, accuracy, size) -> bool:
        final = self.pool[trial_id[1]]["curve"][-1]
        return epoch > GRACE_EPOCHS or not any(s <= size and a >= final and (s < size or a > final)
                                               for a, s in self.front)

    def finished(self, trial_id, curve, size) -> None:
        if len(curve) == len(self.pool[trial_id[1]]["curve"]):
            self.front.append((curve[-1], size))


def make_rule(name: str, pool: list[dict], epochs: int):
    if name == "oracle":
        return Oracle(pool)
    rungs = ParetoRungs(GRACE_EPOCHS, ETA, epochs if name != "none" else 1)  # epochs 1: no rungs
    if name == "rung_only":
        rungs._front_beats = lambda epoch, accuracy, size: True
    if name == "front_only":
        rungs._in_top_fraction = lambda trial_id, epoch: False
    return rungs


def replay(pool: list[dict], order: np.ndarray, rule, epochs: int, budget: int) -> list[tuple[int, float, float]]:
    """(compute at completion, accuracy, log10 params) of each full-length trial, in completion order."""
    events, started, spent, complete = [], 0, 0, []

    def start(now: float) -> None:
        nonlocal started
        if started < len(order):
            index = int(order[started])
            heapq.heappush(events, (now + pool[index]["epoch_s"], (started, index), 1))
            started += 1

    for _ in range(CONCURRENCY):
        start(0.0)
    while events and spent < budget:
        now, trial_id, epoch = heapq.heappop(events)
        trial = pool[trial_id[1]]
        spent += 1
        accuracy = trial["curve"][epoch - 1]
        if epoch == epochs:
            rule.finished(trial_id, trial["curve"], trial["params"])
            complete.append((spent, accuracy, math.log10(trial["params"])))
        elif rule.keep_training(trial_id, epoch, accuracy, trial["params"]):
            heapq.heappush(events, (now + trial["epoch_s"], trial_id, epoch + 1))
            continue
        else:
            rule.finished(trial_id, trial["curve"][:epoch], trial["params"])
        start(now)
    return complete


def hv_at(complete, compute: float) -> float:
    points = np.array([(a, s) for c, a, s in complete if c <= compute])
    return float(hypervolume(points, DIRECTIONS, REFERENCE)) if len(points) else 0.0


def span_at(complete, compute: float) -> float:
    points = np.array([(a, s) for c, a, s in complete if c <= compute])
    if not len(points):
        return 0.0
    front = points[pareto_ranks(points, DIRECTIONS) == 0]
    return float(front[:, 1].max() - front[:, 1].min())


def budget_figures(pool: list[dict], epochs: int, trials: int, orders: list[np.ndarray]) -> dict:
    budget = trials * epochs
    grid = list(range(1, budget + 1))
    runs = {name: [replay(pool, order, make_rule(name, pool, epochs), epochs, budget) for order in orders]
            for name in RULES}
    curves = {name: np.mean([[hv_at(r, c) for c in grid] for r in rs], axis=0) for name, rs in runs.items()}
    target = curves["none"][-1]
    reach = {name: next((c / budget for c, v in zip(grid, curve) if v >= target - 1e-12), None)
             for name, curve in curves.items()}
    return {"trials": trials, "compute_epochs": budget, "none_final_hv": round(float(target), 4),
            "hv_at_half": {n: round(float(c[budget // 2 - 1]), 4) for n, c in curves.items()},
            "hv_at_budget": {n: round(float(c[-1]), 4) for n, c in curves.items()},
            "fraction_to_reach_none_hv": {n: round(r, 3) if r is not None else None for n, r in reach.items()},
            "front_span_decades": {n: round(float(np.mean([span_at(r, budget) for r in rs])), 3)
                                   for n, rs in runs.items()},
            "complete_trials": {n: round(float(np.mean([len(r) for r in rs])), 1) for n, rs in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pools of 20 trials, 5 orders: a smoke run")
    parser.add_argument("--orders", type=int, default=40, help="random orders of the pool replayed per rule")
    parser.add_argument("--datasets", nargs="+", choices=list(POOLS), default=list(POOLS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)
    orders_count = 5 if args.quick else args.orders

    figures = {}
    with tempfile.TemporaryDirectory(prefix="autokd-replay-") as tmp:
        for dataset in args.datasets:
            pool_size, epochs, budgets = POOLS[dataset]
            if args.quick:
                pool_size, budgets = 20, [4]
            print(f"{dataset}: recording {pool_size} curves of {epochs} epochs", flush=True)
            pool = record_pool(Path(tmp), dataset, pool_size, epochs)
            rng = np.random.default_rng(0)
            orders = [rng.permutation(len(pool)) for _ in range(orders_count)]
            figures[dataset] = {"pool_trials": len(pool), "epochs": epochs, "orders": orders_count,
                                "budgets": {f"N{n}": budget_figures(pool, epochs, n, orders) for n in budgets}}
            for f in figures[dataset]["budgets"].values():
                print(f"  N={f['trials']} C={f['compute_epochs']}: none HV {f['none_final_hv']}")
                for name in RULES:
                    reach = f["fraction_to_reach_none_hv"][name]
                    print(f"    {name:<11} HV@C/2 {f['hv_at_half'][name]:.4f}  HV@C {f['hv_at_budget'][name]:.4f}  "
                          f"reach {f'{reach:.2f} C' if reach is not None else 'not by C':>9}  "
                          f"span {f['front_span_decades'][name]:.2f}  complete {f['complete_trials'][name]}")
    import ray

    ray.shutdown()
    note = ("Replays of recorded learning curves (random-sampler pools), 2 workers, grace 1, eta 3; "
            "reach = fraction of the none rule's compute C at which a rule's mean HV curve reaches none's final HV. "
            "The oracle knows each trial's final accuracy and bounds what any rule deciding at the first rung "
            "can save in the same order.")
    write_result("stopping_replay", {"quick": args.quick, "figures": figures, "note": note,
                                     "settings": {"grace_epochs": GRACE_EPOCHS, "eta": ETA, "concurrency": CONCURRENCY,
                                                  "rules": RULES, "pools": POOLS}})


if __name__ == "__main__":
    sys.exit(main())
