"""Where the search driver's time goes per trial: a cProfile of `autokd.search` on short trials (issue 17.1).

The driver (Optuna sampler, autokd's searcher, Tune's controller, the storage) runs in one
process; the trials train in Ray workers. This script runs trials like the orchestration benchmark's short
workload but shorter (digits, a fixed CNN student, 2 epochs a trial, concurrency 2, flat TPE search) with
the driver under cProfile, after the same warm-up (teachers cached, Ray and the workers'
imports warm). Every function's own time (cProfile's tottime) is put in one bucket by the file
it lives in, so the buckets add up to the profiled total:

- ``waiting``: the driver blocked on its workers (`ray.wait`/`ray.get`, selectors, locks, sleep):
  time it has nothing to do, not overhead;
- ``storage``: SQLAlchemy, sqlite3 and Optuna's storages (every trial's state and attributes);
- ``sampler``: Optuna's samplers (TPE fitting and sampling) and the rest of Optuna's study code;
- ``ray_tune``: Ray and Tune's own Python (the controller loop, callbacks, serialisation);
- ``autokd``: autokd's modules (searcher, progress, scheduler, sizes);
- ``other``: the standard library and everything else.

Figures: each bucket in ms per trial, the driver's busy time per trial (total - waiting), the
wall time per trial, and the top functions by cumulative time (what calls the cost). A profiled
driver runs slower than a plain one; the shares, not the absolute figures, are the result. The
machine's load average is recorded: on a busy machine every bucket grows.

    python benchmarks/orchestration_profile.py              # 100 trials of 2 epochs (~3 min)
    python benchmarks/orchestration_profile.py --quick      # 8 trials (a smoke run)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import tempfile
import time
from pathlib import Path

from common import write_result  # noqa: E402  (common puts the repo on sys.path)
from orchestration import quiet, study_spec, warm_up  # noqa: E402

EPOCHS = 2  # the short workload's trials (~0.3 s each on digits)
TOP = 25

# (bucket, pattern searched in a profiled function's `file:line(name)`); the first match wins, in this order.
# ray.wait/ray.get block inside Cython that cProfile books to the Python wrapper's own time.
BUCKETS = [
    ("waiting", re.compile(r"ray/_private/worker\.py:\d+\((wait|get)\)|method 'acquire'|time\.sleep"
                           r"|method 'poll'|method 'select'|selectors\.py")),
    ("storage", re.compile(r"sqlalchemy|sqlite3|optuna/storages")),
    ("sampler", re.compile(r"optuna/")),
    ("ray_tune", re.compile(r"ray/")),
    ("autokd", re.compile(r"autokd/")),
]


def bucket_of(location: str) -> str:
    """The bucket of a function given as cProfile's `file:line(name)` or `<built-in ...>` text."""
    for bucket, pattern in BUCKETS:
        if pattern.search(location):
            return bucket
    return "other"


def location(function: tuple[str, int, str]) -> str:
    file, line, name = function
    return name if file == "~" else f"{file}:{line}({name})"


def profiled_search(trials: int, seed: int, folder: Path) -> tuple[pstats.Stats, float]:
    import ray

    from autokd.ray_cluster import init_ray
    from autokd.search import search

    spec = study_spec(folder, "profiled", trials=trials, epochs=EPOCHS, seed=seed)
    if ray.is_initialized():
        ray.shutdown()
    init_ray(None, spec)  # not profiled: Ray start-up is measured by orchestration.py on its own
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    result = search(spec, progress=False, log=quiet)
    profiler.disable()
    wall = time.perf_counter() - started
    ray.shutdown()
    done = len(result.study.get_trials(deepcopy=False))
    if done != trials:
        raise RuntimeError(f"expected {trials} trials, the study has {done}")
    return pstats.Stats(profiler), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="8 trials (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.trials = 8

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="autokd-profile-") as tmp:
        warm_up(Path(tmp), EPOCHS)
        stats, wall = profiled_search(args.trials, args.seed, Path(tmp))
    per_trial_ms = 1000.0 / args.trials
    buckets: dict[str, float] = {name: 0.0 for name, _ in BUCKETS} | {"other": 0.0}
    for function, (_calls, _primitive, own, _cumulative, _callers) in stats.stats.items():
        buckets[bucket_of(location(function))] += own
    total = sum(buckets.values())
    top = sorted(stats.stats.items(), key=lambda item: item[1][3], reverse=True)[:TOP]
    figures = {
        "trials": args.trials, "epochs_per_trial": EPOCHS,
        "wall_ms_per_trial": round(wall * per_trial_ms, 1),
        "profiled_ms_per_trial": round(total * per_trial_ms, 1),
        "busy_ms_per_trial": round((total - buckets["waiting"]) * per_trial_ms, 1),
        "ms_per_trial": {name: round(seconds * per_trial_ms, 1) for name, seconds in buckets.items()},
        "busy_share_percent": {name: round(100 * seconds / (total - buckets["waiting"]), 1)
                               for name, seconds in buckets.items() if name != "waiting"},
        "top_cumulative_ms_per_trial": {location(function)[-110:]: round(values[3] * per_trial_ms, 1)
                                        for function, values in top},
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    busiest = max(figures["busy_share_percent"], key=figures["busy_share_percent"].get)
    write_result("orchestration_profile", {
        "note": (f"cProfile of the search driver, {args.trials} trials of {EPOCHS} epochs (digits, concurrency 2); "
                 f"own time per function, bucketed by file. Busy (not waiting on workers): "
                 f"{figures['busy_ms_per_trial']} ms a trial, most in {busiest} "
                 f"({figures['busy_share_percent'][busiest]} %). Load average {figures['load_average']}: "
                 "a profiled driver is slower than a plain one; read the shares."),
        "figures": figures,
    })
    print(f"busy {figures['busy_ms_per_trial']} ms/trial of wall {figures['wall_ms_per_trial']} ms/trial; "
          f"ms/trial: {figures['ms_per_trial']}")


if __name__ == "__main__":
    main()
