"""Distillation gain on Fashion-MNIST: searched configs against CE-only and vanilla KD, on test.

The search (`fashion_study.py`: the teachers of studies/fashion_mnist.yaml, MLP and small-CNN
students, ``params <= 100000``, 5 epochs) ranks trials on validation only. Then, for each
architecture on the validation front (at most ``--front-cap`` points, spread evenly over
sizes), three students are trained with 3 seeds each (the trial's seed first) at the trial's
schedule and epochs and measured once on the test split:

- ``searched``: the trial's config (seed 1 must reproduce the trial's recorded val accuracy);
- ``ce``: the same student and schedule, cross-entropy only;
- ``vanilla_kd``: the same, KL with T=4, w_kd=0.9, w_ce=0.1 on the trial's teachers (mean logits).

The runs go through `autokd.evaluation`'s runner (cached under
``.cache/autokd/evaluations/<study>/``, 1 thread each, like a trial), two processes at a time.
Also recorded: the teachers' val/test accuracy and size, and the published Fashion-MNIST results
for MLPs and small CNNs without preprocessing from the dataset package's documentation.

Targets: searched >= both baselines (3-seed means) at every front point, and searched >= CE-only
+ 0.3 pt on at least half of them.

    python benchmarks/distillation_gain.py            # 48-trial search (~15 min) + 6 x 3 x 3 runs (~50 min in all)
    python benchmarks/distillation_gain.py --trials 32 --time-limit 900 --front-cap 5   # smaller (~30 min)
    python benchmarks/distillation_gain.py --quick    # 4 one-epoch trials, 2 front points, 2 seeds (a smoke run)
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from common import write_result  # noqa: E402  (common puts the repo on sys.path)
from fashion_study import FULL, MAX_PARAMS, QUICK, mean_std, run_search, study_spec  # noqa: E402

import pandas as pd  # noqa: E402

from autokd.data import load_data  # noqa: E402
from autokd.evaluation import VANILLA_KD, _Runner, baseline_config  # noqa: E402
from autokd.results import front_frame, trials_frame  # noqa: E402
from autokd.search import robust_seeds  # noqa: E402
from autokd.spec import StudySpec, TrainConfig  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402

KINDS = ("trial", "ce", "vanilla_kd")  # the evaluation cache's names for searched, CE-only, vanilla KD
GAIN_OVER_CE_PT = 0.3
PUBLISHED_DIR = Path("/usr/share/doc/dataset-fashion-mnist")
# Published rows comparable in kind with the students searched here: MLPs and 2-conv CNNs, no preprocessing.
COMPARABLE_PUBLISHED = {"mlp": re.compile(r"^MLP\b"), "cnn": re.compile(r"^2 Conv\b")}


# ---------------------------------------------------------------------------------------------
# Training the seeds (worker processes)

_runner: _Runner | None = None


def _start_worker(spec_document: dict, source: str) -> None:
    global _runner
    _runner = _Runner(StudySpec.model_validate({**spec_document, "source": source}), log=print)


def _test_accuracy(config_document: dict, kind: str, trial_number: int) -> dict:
    result = _runner.run(TrainConfig.model_validate(config_document), kind, trial_number)
    return {"val_accuracy": result["val_accuracy"], "test_accuracy": result["test_accuracy"]}


def seeded_runs(config: TrainConfig, seeds: list[int]) -> dict[str, list[TrainConfig]]:
    """For each kind, the config (searched or baseline) once per seed."""
    variants = {"trial": config, "ce": baseline_config(config, "ce"),
                "vanilla_kd": baseline_config(config, "vanilla_kd")}
    return {kind: [variant.model_copy(update={"seed": seed}) for seed in seeds] for kind, variant in variants.items()}


def train_all(spec: StudySpec, chosen: pd.DataFrame, seed_count: int, workers: int) -> dict[int, dict]:
    """{trial: {kind: [results per seed]}}; the slowest trials' runs are submitted first."""
    jobs = []
    for row in chosen.sort_values("train_seconds", ascending=False).itertuples():
        config = TrainConfig.model_validate(json.loads(row.config))
        for kind, configs in seeded_runs(config, robust_seeds(config.seed, seed_count)).items():
            jobs += [(int(row.trial), kind, c) for c in configs]
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(spec.model_dump(mode="json"), spec.source)) as pool:
        futures = [(trial, kind, pool.submit(_test_accuracy, c.model_dump(mode="json"), kind, trial))
                   for trial, kind, c in jobs]
        results: dict[int, dict] = {}
        for trial, kind, future in futures:  # submitted in seed order, so the lists are in seed order
            results.setdefault(trial, {}).setdefault(kind, []).append(future.result())
    return results


# ---------------------------------------------------------------------------------------------
# What is compared


def spread_over_sizes(front: pd.DataFrame, cap: int) -> pd.DataFrame:
    """At most `cap` front points (sorted by size), evenly spaced by rank, both ends kept."""
    if len(front) <= cap:
        return front
    positions = sorted({round(i * (len(front) - 1) / (cap - 1)) for i in range(cap)})
    return front.iloc[positions].reset_index(drop=True)


def describe_arch(student: dict) -> str:
    if student["family"] == "mlp":
        return f"mlp {student['depth']}x{student['width']} {student['activation']}"
    return f"cnn {student['stages']} stage(s) {student['channels']} ch head {student['head_width']}"


def describe_distill(config: TrainConfig) -> dict:
    settings = config.distill
    return {"kind": settings.kind, "temperature": round(settings.temperature, 3), "w_ce": round(settings.w_ce, 3),
            "w_kd": round(settings.w_kd, 3), "w_feat": settings.w_feat, "aggregation": settings.aggregation,
            "teachers": [t.name for t in config.selected_teachers()], "lr": round(config.schedule.lr, 5),
            "batch_size": config.schedule.batch_size, "epochs": config.schedule.epochs}


def architecture_counts(trials: pd.DataFrame) -> Counter:
    """How many COMPLETE trials trained each student architecture (its distillation settings were tuned
    only as far as several trials share it)."""
    complete = trials[trials["state"] == "COMPLETE"]
    return Counter(describe_arch(json.loads(config)["student"]) for config in complete["config"])


def front_row(trial: pd.Series, runs: dict[str, list[dict]], arch_counts: Counter) -> dict:
    config = TrainConfig.model_validate(json.loads(trial["config"]))
    tests = {kind: [r["test_accuracy"] for r in runs[kind]] for kind in KINDS}
    summary = {kind: mean_std(values) for kind, values in tests.items()}
    gain_ce = round(summary["trial"]["mean"] - summary["ce"]["mean"], 3)
    gain_kd = round(summary["trial"]["mean"] - summary["vanilla_kd"]["mean"], 3)
    return {"trial": int(trial["trial"]), "family": config.student["family"], "arch": describe_arch(config.student),
            "params": int(trial["params"]), "trials_with_this_arch": arch_counts[describe_arch(config.student)],
            "val_accuracy_search": round(100 * trial["val_accuracy"], 3),
            "val_reproduced": runs["trial"][0]["val_accuracy"] == trial["val_accuracy"],
            "searched": summary["trial"], "ce": summary["ce"], "vanilla_kd": summary["vanilla_kd"],
            "gain_vs_ce_pt": gain_ce, "gain_vs_vanilla_kd_pt": gain_kd,
            "beats_both_baselines": gain_ce >= 0 and gain_kd >= 0, "beats_ce_by_0_3pt": gain_ce >= GAIN_OVER_CE_PT,
            "searched_distill": describe_distill(config),
            "test_accuracy_per_seed": {kind: [round(100 * v, 2) for v in values] for kind, values in tests.items()}}


def teacher_table(spec: StudySpec) -> list[dict]:
    """The study's teachers (cached; trained only if missing) with val/test accuracy and size."""
    data = load_data(spec.data, spec.source)
    teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, spec.resolve_path, log=print, source=spec.source)
    return [{"name": teacher.name, "arch": teacher_spec.arch, "params": teacher.meta["params"],
             "val_accuracy": round(100 * teacher.meta["val_accuracy"], 2),
             "test_accuracy": round(100 * teacher.meta["test_accuracy"], 2)}
            for teacher_spec, teacher in zip(spec.teachers, teachers)]


def published_baselines() -> dict:
    """Comparable published Fashion-MNIST results, read from the dataset package's documentation.

    benchmark/baselines.json holds the scikit-learn benchmark's classifiers and parameter grids but
    no accuracies; the accuracies are in README.md.gz's table of submitted benchmarks.
    """
    grids = json.loads((PUBLISHED_DIR / "benchmark" / "baselines.json").read_text())["classifiers"]
    readme = gzip.decompress((PUBLISHED_DIR / "README.md.gz").read_bytes()).decode()
    entries = []
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not re.fullmatch(r"0\.\d+", cells[2]) or cells[1] != "None":
            continue
        kind = next((k for k, pattern in COMPARABLE_PUBLISHED.items() if pattern.search(cells[0])), None)
        if kind:
            entries.append({"name": cells[0], "kind": kind, "preprocessing": cells[1],
                            "test_accuracy": round(100 * float(cells[2]), 2),
                            "submitter": re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", cells[4])})
    return {"source": str(PUBLISHED_DIR / "README.md.gz"), "entries": entries,
            "baselines_json": {"path": str(PUBLISHED_DIR / "benchmark" / "baselines.json"),
                               "MLPClassifier_grid": grids.get("MLPClassifier"),
                               "note": "classifier names and parameter grids only; no accuracies in this file"}}


# ---------------------------------------------------------------------------------------------
# Report


def targets_and_met(rows: list[dict]) -> tuple[dict, dict, str]:
    both = [r["trial"] for r in rows if not r["beats_both_baselines"]]
    over_ce = sum(r["beats_ce_by_0_3pt"] for r in rows)
    targets = {"searched_ge_both_baselines": "at every front point (3-seed test means)",
               "searched_ge_ce_plus_0_3pt": f">= {GAIN_OVER_CE_PT} pt over CE-only on at least half the front points"}
    met = {"searched_ge_both_baselines": not both, "searched_ge_ce_plus_0_3pt": 2 * over_ce >= len(rows)}
    shortfalls = []
    for row in rows:
        if not row["beats_both_baselines"]:
            shortfalls.append(f"trial {row['trial']} ({row['arch']}): {row['gain_vs_ce_pt']:+.2f} pt vs CE, "
                              f"{row['gain_vs_vanilla_kd_pt']:+.2f} pt vs vanilla KD")
    summary = (f"searched >= both baselines at {len(rows) - len(both)}/{len(rows)} front points; "
               f">= CE + {GAIN_OVER_CE_PT} pt at {over_ce}/{len(rows)}.")
    if shortfalls:
        summary += " Below a baseline: " + "; ".join(shortfalls) + "."
    return targets, met, summary


def print_table(rows: list[dict]) -> None:
    print(f"{'trial':>5} {'arch':<34} {'params':>7} {'val':>6} {'searched':>13} {'CE only':>13} {'vanilla KD':>13}")
    for r in rows:
        cells = [f"{r[k]['mean']:.2f}±{r[k]['std']:.2f}" for k in ("searched", "ce", "vanilla_kd")]
        print(f"{r['trial']:>5} {r['arch']:<34} {r['params']:>7} {r['val_accuracy_search']:>6.2f} "
              + " ".join(f"{c:>13}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 one-epoch trials, 2 front points, 2 seeds")
    parser.add_argument("--front-cap", type=int, default=None, help="most front points evaluated (default 6)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per student and kind (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="training processes (1 thread each)")
    parser.add_argument("--trials", type=int, default=None, help="search budget (default 48; a rerun resumes)")
    parser.add_argument("--time-limit", type=float, default=None, help="search time limit in s (default 1200)")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    size = replace(size, trials=args.trials or size.trials, time_limit_s=args.time_limit or size.time_limit_s)
    cap = args.front_cap or (2 if args.quick else 6)
    seeds = args.seeds or (2 if args.quick else 3)

    spec = study_spec(size)
    study, search_figures = run_search(spec)
    trials = trials_frame(study)
    front = front_frame(trials)
    chosen = spread_over_sizes(front, cap)
    arch_counts = architecture_counts(trials)
    teachers = teacher_table(spec)
    runs = train_all(spec, chosen, seeds, args.workers)
    rows = [front_row(trial, runs[int(trial["trial"])], arch_counts) for _, trial in chosen.iterrows()]
    print_table(rows)

    targets, met, summary = targets_and_met(rows)
    figures = {"front": rows, "teachers": teachers, "published_baselines": published_baselines(),
               "search": {**search_figures, "distinct_architectures": len(arch_counts)}, "front_size": len(front),
               "front_points_evaluated": len(rows)}
    capped = f" (front has {len(front)} points; {len(rows)} evaluated, spread over sizes)" if len(front) > cap else ""
    note = (f"Validation front of study {spec.name!r}{capped}; per point, test accuracy (%) of the searched config, "
            f"CE-only and vanilla KD ({VANILLA_KD['kind']} T={VANILLA_KD['temperature']}, w_kd={VANILLA_KD['w_kd']}, "
            f"w_ce={VANILLA_KD['w_ce']}, the trial's teachers) with the trial's schedule ({size.epochs} epochs), "
            f"{seeds} seeds each (mean ± std). " + summary
            + f" The {search_figures['complete_trials']} complete trials trained {len(arch_counts)} distinct "
            f"architectures; trials per evaluated front architecture: {[r['trials_with_this_arch'] for r in rows]}.")
    print(note)
    write_result("distillation_gain", {
        "quick": args.quick, "figures": figures, "targets": targets, "met": met, "note": note,
        "settings": {"study": spec.name, "storage": spec.storage, "trials": size.trials, "epochs": size.epochs,
                     "time_limit_s": size.time_limit_s, "constraint": f"params <= {MAX_PARAMS}",
                     "front_cap": cap, "seeds": seeds, "workers": args.workers, "threads_per_run": 1,
                     "space": spec.search_space["params"]}})


if __name__ == "__main__":
    sys.exit(main())
