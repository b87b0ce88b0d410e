"""Distillation gain on Fashion-MNIST: the two-level search against the flat one, both against CE-only and vanilla KD.

Two arms search the same space (MLP students, the KD kinds kl / lskd / dist / dkd, T, the KD
share with CE-only reachable, teacher subset and aggregation, learning rate) with the teachers of
studies/fashion_mnist.yaml (the strongest, cnn-wide, and cnn-small), ``params <= 100000``,
5 epochs per trial (``--level2-epochs``: level-2 trials of the two-level arm train that many):

- ``two_level``: autokd's default for such a space (level 1: architectures with CE only; level
  2: per front architecture CE-only and vanilla KD as trials and tuned configs, 3 paired seeds;
  a front point is the best of the three by paired gain, `autokd.pairing.choose`);
- ``flat``: the old design, one random-then-TPE draw per trial and one seed, at the same compute
  (its `budget.epochs` is the epochs the two-level arm trained).

Search on validation. Then, for each front point of each arm, three students are trained at
production length (``--epochs``, default 15) on the same 3 fresh seeds (same initial weights and
batch order per seed) and measured once on the test split: the front point's config, CE-only
and vanilla KD (KL, T=4, w_kd 0.9, w_ce 0.1, the able teachers) with the same student and
schedule. Gains are paired: mean ± standard error of the per-seed differences, in points.

Targets (issue 12): two-level front >= CE-only (paired mean, within 0.1 pt) and >= vanilla KD at
every front point; >= +0.3 pt over CE-only at half of the front points or more.

    python benchmarks/distillation_gain.py              # 60 two-level trials (30 % level 1), flat at equal compute
    python benchmarks/distillation_gain.py --trials 30 --level1-share 0.4   # the smaller run (~15 min on 2 cores)
    python benchmarks/distillation_gain.py --trials 40 --level1-share 0.3 --level2-epochs 15  # level 2 at 15
    python benchmarks/distillation_gain.py --level2-epochs 30 --epochs 30   # the patient schedule (~40 min)
    python benchmarks/distillation_gain.py --quick      # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import optuna  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.evaluation import _Runner, baseline_config  # noqa: E402
from autokd.levels import VANILLA  # noqa: E402
from autokd.pairing import paired_gain  # noqa: E402
from autokd.results import architecture_choices, front_frame, study_hypervolume, trials_frame  # noqa: E402
from autokd.search import search  # noqa: E402
from autokd.spec import StudySpec, TrainConfig  # noqa: E402

BENCH_FOLDER = REPO / ".cache" / "autokd" / "bench"
CACHE_DIR = REPO / ".cache" / "autokd"
SOURCE_STUDY = REPO / "studies" / "fashion_mnist.yaml"
TEACHERS = ("cnn-wide", "cnn-small")  # the strongest teacher and a cheap one (teacher training costs minutes here)
MAX_PARAMS = 100_000
GAIN_OVER_CE_PT = 0.3
WITHIN_PT = 0.1
PRODUCTION_SEEDS = (1_001, 1_002, 1_003)  # fresh: none was used to select anything

SPACE = {"params": {
    "student.depth": {"type": "int", "low": 1, "high": 2},
    "student.width": {"type": "int", "low": 8, "high": 128, "log": True},
    "student.activation": {"type": "categorical", "choices": ["relu", "gelu"]},
    "distill.teachers": {"type": "teacher_subset"},
    "distill.aggregation": {"type": "categorical", "choices": ["mean_logits", "mean_probs"]},
    "distill.kind": {"type": "categorical", "choices": ["kl", "lskd", "dist", "dkd"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_feat": {"type": "categorical", "choices": [0.0, 0.1]},
    "schedule.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
}}


def study_spec(name: str, mode: str, trials: int, epochs: int, compute: int | None = None,
               level1_share: float = 0.4, level2_epochs: int | None = None, confirm: bool = True) -> StudySpec:
    source = load_study(SOURCE_STUDY)
    return StudySpec.model_validate({
        "name": name,
        "data": source.data.model_dump(),
        "teachers": [t.model_dump() for t in source.teachers if t.name in TEACHERS],
        "student": {"family": "mlp", "depth": 1, "width": 64},
        "distill": source.distill.model_dump(),
        "schedule": {"epochs": epochs, "batch_size": 256, "lr": 0.003},
        "search_space": SPACE,
        "objectives": ["val_accuracy", "params"],
        "constraints": [f"params <= {MAX_PARAMS}"],
        "budget": {"trials": trials, "epochs": compute},
        "early_stopping": {"kind": "none"},
        "sampler": {"name": "tpe", "seed": 0},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "search": {"mode": mode, "architectures": 3, "seeds": 3, "level1_share": level1_share,
                   "level2_epochs": level2_epochs, "confirm": confirm},
        "cache_dir": str(CACHE_DIR),
        "storage": f"sqlite:///{BENCH_FOLDER / (name + '.db')}",
        "source": str(BENCH_FOLDER / f"{name}.yaml"),
    })


def run_arm(spec: StudySpec) -> tuple[optuna.Study, dict]:
    import ray

    BENCH_FOLDER.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = search(spec, resume=True, progress=False, log=print)
    ray.shutdown()  # give the cores back before the production runs
    frame = trials_frame(result.study)
    epochs = int(sum(t.user_attrs.get("epochs_trained") or 0 for t in result.study.get_trials(deepcopy=False)))
    return result.study, {"wall_s_this_run": round(time.perf_counter() - started, 1), "trials": len(frame),
                          "complete": int((frame["state"] == "COMPLETE").sum()), "epochs_trained": epochs,
                          "front_size": int((frame["pareto_rank"] == 0).sum()),
                          "hypervolume_val": round(study_hypervolume(frame, spec), 4)}


# ---------------------------------------------------------------------------------------------
# Production runs (worker processes, one thread each, cached by `evaluation._Runner`)

_runner: _Runner | None = None


def _start_worker(spec_document: dict, source: str) -> None:
    global _runner
    _runner = _Runner(StudySpec.model_validate({**spec_document, "source": source}), log=lambda message: None)


def _test_accuracy(config_document: dict, kind: str, trial_number: int) -> float:
    return _runner.run(TrainConfig.model_validate(config_document), kind, trial_number)["test_accuracy"]


def production_runs(spec: StudySpec, points: list[dict], epochs: int, workers: int) -> None:
    """Adds {kind: [test accuracy per production seed]} to each point (kinds: chosen, ce, vanilla_kd)."""
    jobs = []
    for point in points:
        config = TrainConfig.model_validate(point["config"])
        config.schedule.epochs = epochs
        config.threads = 1
        able = point.get("teachers_allowed") or [t.name for t in config.teachers]
        variants = {"chosen": config, "ce": baseline_config(config, "ce"),
                    "vanilla_kd": TrainConfig.model_validate({**config.model_dump(), "distill": {
                        **config.distill.model_dump(), **VANILLA, "teachers": able}})}
        for kind, variant in variants.items():
            jobs += [(point, kind, variant.model_copy(update={"seed": seed})) for seed in PRODUCTION_SEEDS]
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(spec.model_dump(mode="json"), spec.source)) as pool:
        futures = [(point, kind, pool.submit(_test_accuracy, config.model_dump(mode="json"), kind,
                                             point["trial"])) for point, kind, config in jobs]
        for point, kind, future in futures:  # submitted in seed order
            point.setdefault("test", {}).setdefault(kind, []).append(future.result())


def summarise(point: dict) -> dict:
    tests = point["test"]
    gain_ce, se_ce = paired_gain(tests["chosen"], tests["ce"])
    gain_kd, se_kd = paired_gain(tests["chosen"], tests["vanilla_kd"])
    mean = {kind: round(100 * statistics.fmean(values), 2) for kind, values in tests.items()}
    return {**{k: v for k, v in point.items() if k not in ("config", "test")},
            "test_mean_pct": mean, "test_per_seed_pct": {k: [round(100 * v, 2) for v in values]
                                                        for k, values in tests.items()},
            "gain_vs_ce_pt": round(100 * gain_ce, 2), "gain_vs_ce_se_pt": round(100 * se_ce, 2),
            "gain_vs_vanilla_kd_pt": round(100 * gain_kd, 2), "gain_vs_vanilla_kd_se_pt": round(100 * se_kd, 2),
            "ge_ce_within_0_1pt": 100 * gain_ce >= -WITHIN_PT, "ge_vanilla_kd": 100 * gain_kd >= -WITHIN_PT,
            "ge_ce_plus_0_3pt": 100 * gain_ce >= GAIN_OVER_CE_PT}


def front_points(study: optuna.Study, cap: int) -> list[dict]:
    """The front's points (at most `cap`, spread evenly over sizes, both ends kept) with their configs;
    two-level points say which role stands there and why."""
    frame = trials_frame(study)
    choices = {choice.trial: choice for choice in architecture_choices(study).values()}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    front = front_frame(frame)
    if len(front) > cap:
        front = front.iloc[sorted({round(i * (len(front) - 1) / (cap - 1)) for i in range(cap)})]
    points = []
    for row in front.itertuples():
        trial = trials[int(row.trial)]
        config = trial.user_attrs["config"]
        choice = choices.get(trial.number)
        points.append({"trial": trial.number, "params": int(row.params), "val_accuracy_search": round(
            100 * row.val_accuracy, 2), "role": trial.user_attrs.get("role", "flat"),
            "student": config["student"], "distill": {k: config["distill"][k] for k in (
                "kind", "temperature", "w_ce", "w_kd", "w_feat", "aggregation", "teachers")},
            "val_gain_vs_ce_pt": round(100 * choice.gain_vs_ce, 2) if choice else None,
            "val_gain_se_pt": round(100 * choice.gain_se, 2) if choice else None,
            "reason": choice.reason if choice else None,
            "teachers_allowed": trial.user_attrs.get("teachers_allowed"), "config": config})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 one-epoch trials, production at 2 epochs")
    parser.add_argument("--trials", type=int, default=60, help="two-level trials (the flat arm: equal compute)")
    parser.add_argument("--level1-share", type=float, default=0.3, help="share of the trials spent on level 1")
    parser.add_argument("--epochs", type=int, default=15, help="production epochs of the test runs")
    parser.add_argument("--level2-epochs", type=int, default=None,
                        help="epochs of a level-2 trial (default: the search's 5; production's --epochs: chosen "
                             "at the length it is trained for)")
    parser.add_argument("--no-confirm", action="store_true",
                        help="no confirmation of the choices on fresh seeds (search.confirm: false)")
    parser.add_argument("--workers", type=int, default=2, help="training processes (1 thread each)")
    parser.add_argument("--front-cap", type=int, default=5, help="most front points evaluated per arm")
    args = parser.parse_args()
    trials, search_epochs, production_epochs = (8, 1, 2) if args.quick else (args.trials, 5, args.epochs)
    level2_epochs = args.level2_epochs
    defaults = (args.trials, args.level1_share, args.level2_epochs) == tuple(
        parser.get_default(name) for name in ("trials", "level1_share", "level2_epochs"))
    confirm = not args.no_confirm
    # Runs before confirmation existed were unconfirmed: their names (and results) stay theirs.
    suffix = "_quick" if args.quick else "" if defaults and not confirm else f"_{trials}t_l1_{args.level1_share:g}" + (
        f"_l2e{level2_epochs}" if level2_epochs else "") + ("_confirm" if confirm else "") + (
        f"_e{production_epochs}" if production_epochs != parser.get_default("epochs") and not args.quick else "")

    arms = {}
    unconfirmed = (f"fm_two_level_{trials}t_l1_{args.level1_share:g}{'_quick' if args.quick else ''}"
                   + (f"_l2e{level2_epochs}" if level2_epochs else ""))
    two_level = study_spec(unconfirmed + ("_confirm" if confirm else ""), "two_level", trials, search_epochs,
                           level1_share=args.level1_share, level2_epochs=level2_epochs, confirm=confirm)
    study, figures = run_arm(two_level)
    arms["two_level"] = (two_level, study, figures)
    # The flat arm has nothing to confirm: the same study either way (resumed to the two-level arm's compute).
    # Enough trials that the compute, not the trial count, ends the flat arm.
    flat = study_spec(unconfirmed.replace("two_level", "flat"), "flat",
                      max(10 * trials, figures["epochs_trained"] // search_epochs + 1), search_epochs,
                      compute=figures["epochs_trained"])
    arms["flat"] = (flat, *run_arm(flat))

    results = {}
    for name, (spec, study, figures) in arms.items():
        points = front_points(study, args.front_cap)
        production_runs(spec, points, production_epochs, args.workers)
        rows = [summarise(point) for point in points]
        results[name] = {"search": figures, "front": rows}
        for row in rows:
            print(f"{name:>9} trial {row['trial']:>3} {row['role']:>10} params {row['params']:>6} "
                  f"test {row['test_mean_pct']} gain vs CE {row['gain_vs_ce_pt']:+.2f} ± {row['gain_vs_ce_se_pt']:.2f}"
                  f" vs vanilla {row['gain_vs_vanilla_kd_pt']:+.2f}")

    rows = results["two_level"]["front"]
    met = {"ge_ce_and_vanilla_at_every_point": all(r["ge_ce_within_0_1pt"] and r["ge_vanilla_kd"] for r in rows),
           "ge_ce_plus_0_3pt_at_half": 2 * sum(r["ge_ce_plus_0_3pt"] for r in rows) >= len(rows)}
    targets = {"ge_ce_and_vanilla_at_every_point": f"two-level test >= CE-only (paired mean, within {WITHIN_PT} pt) "
                                                   "and >= vanilla KD at every front point",
               "ge_ce_plus_0_3pt_at_half": f">= +{GAIN_OVER_CE_PT} pt over CE-only at half of the front points"}
    misses = [f"trial {r['trial']} ({r['params']} params, {r['role']}): {r['gain_vs_ce_pt']:+.2f} ± "
              f"{r['gain_vs_ce_se_pt']:.2f} pt vs CE, {r['gain_vs_vanilla_kd_pt']:+.2f} vs vanilla KD"
              for r in rows if not r["ge_ce_plus_0_3pt"]]
    flat_rows = results["flat"]["front"]
    note = (f"Fashion-MNIST, MLP students, teachers {list(TEACHERS)}, {search_epochs} epochs per trial"
            f"{f' (two-level arm: {level2_epochs} per level-2 trial)' if level2_epochs else ''}; production "
            f"{production_epochs} epochs, seeds {list(PRODUCTION_SEEDS)}, test %. Two-level: {len(rows)} front points, "
            f"{sum(r['ge_ce_within_0_1pt'] and r['ge_vanilla_kd'] for r in rows)} >= both baselines, "
            f"{sum(r['ge_ce_plus_0_3pt'] for r in rows)} >= CE + {GAIN_OVER_CE_PT} pt; val HV "
            f"{results['two_level']['search']['hypervolume_val']} in {results['two_level']['search']['epochs_trained']}"
            f" epochs. Flat at equal compute: {len(flat_rows)} front points, "
            f"{sum(r['ge_ce_within_0_1pt'] and r['ge_vanilla_kd'] for r in flat_rows)} >= both baselines, "
            f"{sum(r['ge_ce_plus_0_3pt'] for r in flat_rows)} >= CE + {GAIN_OVER_CE_PT} pt; val HV "
            f"{results['flat']['search']['hypervolume_val']} in {results['flat']['search']['epochs_trained']} epochs "
            "(the flat HV counts single-seed values, the two-level one 3-seed means of chosen configs). "
            + ("Below +0.3 pt: " + "; ".join(misses) + "." if misses else ""))
    print(note)
    write_result("distillation_gain" + suffix, {
        "quick": args.quick, "figures": results, "targets": targets, "met": met, "note": note,
        "settings": {"trials_two_level": trials, "level1_share": args.level1_share, "search_epochs": search_epochs,
                     "level2_epochs": level2_epochs, "confirm": confirm,
                     "production_epochs": production_epochs, "production_seeds": list(PRODUCTION_SEEDS),
                     "teachers": list(TEACHERS), "constraint": f"params <= {MAX_PARAMS}", "space": SPACE["params"],
                     "workers": args.workers, "threads_per_run": 1, "front_cap": args.front_cap}})


if __name__ == "__main__":
    sys.exit(main())
