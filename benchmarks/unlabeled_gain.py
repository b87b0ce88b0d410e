"""Unlabeled data on Fashion-MNIST: distilling through the unlabeled pool against CE on the labeled part alone.

For each label budget (1,000 and 5,000 labeled training samples, ``data.unlabeled.keep_labels``,
stratified; the other ~53,000 / 49,000 training samples are the unlabeled pool; validation and test
are the usual labeled splits):

- a teacher (``--teacher``: cnn-wide, 3 stages of 32 channels and a 128-wide head, 111k params; or
  cnn-small, 2 stages of 16 channels, 7.6k params) is trained on the labeled part only, by autokd,
  for ``--teacher-steps`` optimizer steps (batch 128), and labels the pool (its outputs are cached);
- a small flat autokd search (``--trials``, TPE) over the KD kind, temperature, w_kd and w_ce of an
  MLP student (1 x 64) with the pool, selected on validation;
- four arms, each trained on the same 3 fresh seeds (same initial weights; the KD arms share
  their batch order) and measured once on test:
  ``ce`` CE on the labeled part alone at the same epochs (an epoch is a pass over what a run learns
  from, so this arm takes ~pool/labeled times fewer steps than the KD arms); ``ce_equal_steps``
  the same with its epochs raised to the KD arms' optimizer steps; ``vanilla_kd`` (KL, T=4, w_kd
  0.9, w_ce 0.1) with the pool; ``searched``, the search's best config, with the pool.

Gains are paired (mean ± standard error of the per-seed differences, in points). The CE baseline
the target is measured against is the stronger of the two CE arms on validation.

Target (issue 15): the searched config >= +2 pt over CE on the labeled part at 1,000 labels.

    python benchmarks/unlabeled_gain.py          # 1,000 and 5,000 labels, 12 trials, 5 epochs (55 min on 2 busy cores)
    python benchmarks/unlabeled_gain.py --teacher cnn-small --teacher-steps 320   # the weaker teacher
    python benchmarks/unlabeled_gain.py --quick      # a smoke run: 4 one-epoch trials, 1,000 labels
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import optuna  # noqa: E402

from autokd.evaluation import _Runner, baseline_config  # noqa: E402
from autokd.pairing import paired_gain  # noqa: E402
from autokd.search import search  # noqa: E402
from autokd.spec import StudySpec, TrainConfig  # noqa: E402

BENCH_FOLDER = REPO / ".cache" / "autokd" / "bench"
CACHE_DIR = REPO / ".cache" / "autokd"
TEACHERS = {  # the teachers of studies/fashion_mnist.yaml; each is trained on the labeled part only
    "cnn-wide": {"family": "cnn", "stages": 3, "channels": 32, "kernel": 3, "head_width": 128},
    "cnn-small": {"family": "cnn", "stages": 2, "channels": 16, "kernel": 3, "head_width": 64},
}
TEACHER_BATCH = 128
TEACHER_STEPS = 800  # every teacher takes this many steps: 100 epochs of 1,000 labels, 20 of 5,000
STUDENT = {"family": "mlp", "depth": 1, "width": 64}
SEEDS = (1_001, 1_002, 1_003)  # fresh: none was used to select anything
BATCH_SIZE = 256
TARGET_PT = 2.0
SPACE = {"params": {
    "distill.kind": {"type": "categorical", "choices": ["kl", "lskd", "dkd", "dist"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
    "distill.w_kd": {"type": "float", "low": 0.2, "high": 1.0},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
}}


def teacher_epochs(labels: int, steps: int) -> int:
    return max(1, round(steps / math.ceil(labels / TEACHER_BATCH)))


def study_spec(labels: int, trials: int, epochs: int, teacher: str, teacher_steps: int, quick: bool) -> StudySpec:
    name = f"unlabeled_fm_{labels}_{teacher}_{teacher_steps}s_{trials}t_{epochs}e{'_quick' if quick else ''}"
    return StudySpec.model_validate({
        "name": name,
        "data": {"name": "fashion-mnist", "unlabeled": {"keep_labels": labels}},
        "teachers": [{"name": teacher, "arch": TEACHERS[teacher],
                      "schedule": {"batch_size": TEACHER_BATCH, "epochs": teacher_epochs(labels, teacher_steps)}}],
        "student": STUDENT,
        "distill": {"kind": "kl", "temperature": 4.0, "w_kd": 0.9, "w_ce": 0.1},
        "schedule": {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": 0.003},
        "search_space": SPACE,
        "objectives": ["val_accuracy", "params"],
        "budget": {"trials": trials},
        "sampler": {"name": "tpe", "seed": 0},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "search": {"mode": "flat"},
        "cache_dir": str(CACHE_DIR),
        "storage": f"sqlite:///{BENCH_FOLDER / (name + '.db')}",
        "source": str(BENCH_FOLDER / f"{name}.yaml"),
    })


def run_search(spec: StudySpec) -> tuple[dict, dict]:
    """(the best trial's config, figures of the search)."""
    import ray

    BENCH_FOLDER.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = search(spec, resume=True, progress=False, log=print)
    ray.shutdown()  # give the cores back before the production runs
    complete = result.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = max(complete, key=lambda trial: (trial.values[0], -trial.number))
    distill = best.user_attrs["config"]["distill"]
    return best.user_attrs["config"], {
        "wall_s_this_run": round(time.perf_counter() - started, 1), "trials": len(result.study.trials),
        "complete": len(complete), "best_trial": best.number, "best_val_pct": round(100 * best.values[0], 2),
        "best": {key: round(distill[key], 3) if isinstance(distill[key], float) else distill[key]
                 for key in ("kind", "temperature", "w_kd", "w_ce")}}


def teacher_figures(spec: StudySpec) -> dict:
    """The teacher's accuracies (it is cached by the search) and how often it is right on the unlabeled pool."""
    from autokd.data import load_data
    from autokd.teacher_outputs import teacher_outputs
    from autokd.teachers import prepare_teachers

    data = load_data(spec.data, spec.source)
    teacher = prepare_teachers(spec.teachers, data, spec.cache_dir)[0]
    outputs = teacher_outputs([teacher], data)
    pool_right = (outputs.train_logits[0, len(data.y_train):].argmax(dim=1) == data.y_unlabeled).float().mean()
    return {"labeled": len(data.y_train), "unlabeled": data.n_unlabeled, "val": len(data.y_val),
            "teacher_val_pct": round(100 * teacher.meta["val_accuracy"], 2),
            "teacher_test_pct": round(100 * teacher.meta["test_accuracy"], 2),
            "teacher_right_on_pool_pct": round(100 * float(pool_right), 2),
            "teacher_train_s": teacher.meta["train_seconds"], "params_teacher": teacher.meta["params"]}


# ---------------------------------------------------------------------------------------------
# The arms (worker processes, one thread each, cached by `evaluation._Runner`)

_runner: _Runner | None = None


def _start_worker(spec_document: dict, source: str) -> None:
    global _runner
    _runner = _Runner(StudySpec.model_validate({**spec_document, "source": source}), log=lambda message: None)


def _run(config_document: dict, kind: str) -> dict:
    result = _runner.run(TrainConfig.model_validate(config_document), kind, -1)
    return {"val": result["val_accuracy"], "test": result["test_accuracy"], "seconds": result["train_seconds"]}


def arms(spec: StudySpec, best: dict, labeled: int, pool: int) -> dict[str, TrainConfig]:
    searched = TrainConfig.model_validate(best)
    searched.threads = 1
    ce = baseline_config(searched, "ce")
    equal_steps = ce.model_copy(deep=True)
    steps_kd = math.ceil(pool / BATCH_SIZE) * searched.schedule.epochs
    equal_steps.schedule.epochs = max(1, round(steps_kd / math.ceil(labeled / BATCH_SIZE)))
    return {"ce": ce, "ce_equal_steps": equal_steps, "vanilla_kd": baseline_config(searched, "vanilla_kd"),
            "searched": searched}


def run_arms(spec: StudySpec, configs: dict[str, TrainConfig], workers: int) -> dict[str, list[dict]]:
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(spec.model_dump(mode="json"), spec.source)) as pool:
        futures = {kind: [pool.submit(_run, config.model_copy(update={"seed": seed}).model_dump(mode="json"), kind)
                          for seed in SEEDS] for kind, config in configs.items()}
        return {kind: [future.result() for future in jobs] for kind, jobs in futures.items()}


def summarise(runs: dict[str, list[dict]], configs: dict[str, TrainConfig]) -> dict:
    tests = {kind: [run["test"] for run in values] for kind, values in runs.items()}
    vals = {kind: statistics.fmean(run["val"] for run in values) for kind, values in runs.items()}
    ce_kind = max(("ce", "ce_equal_steps"), key=lambda kind: vals[kind])  # chosen on validation, never on test
    rows = []
    for kind in runs:
        row = {"arm": kind, "epochs": configs[kind].schedule.epochs,
               "val_mean_pct": round(100 * vals[kind], 2),
               "test_mean_pct": round(100 * statistics.fmean(tests[kind]), 2),
               "test_per_seed_pct": [round(100 * t, 2) for t in tests[kind]],
               "train_s_mean": round(statistics.fmean(run["seconds"] for run in runs[kind]), 1)}
        for baseline in ("ce", "ce_equal_steps"):
            gain, se = paired_gain(tests[kind], tests[baseline])
            row[f"gain_vs_{baseline}_pt"], row[f"gain_vs_{baseline}_se_pt"] = round(100 * gain, 2), round(100 * se, 2)
        rows.append(row)
    gain, se = paired_gain(tests["searched"], tests[ce_kind])
    vanilla, vanilla_se = paired_gain(tests["vanilla_kd"], tests[ce_kind])
    return {"arms": rows, "ce_baseline": ce_kind, "searched_gain_pt": round(100 * gain, 2),
            "searched_gain_se_pt": round(100 * se, 2), "vanilla_kd_gain_pt": round(100 * vanilla, 2),
            "vanilla_kd_gain_se_pt": round(100 * vanilla_se, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 one-epoch trials, 1,000 labels, a 24-step teacher")
    parser.add_argument("--labels", type=int, nargs="+", default=[1000, 5000], help="labeled training samples")
    parser.add_argument("--trials", type=int, default=12, help="search trials per label budget")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every trial and arm (passes over the pool)")
    parser.add_argument("--teacher", choices=list(TEACHERS), default="cnn-wide")
    parser.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS, help="optimizer steps of each teacher")
    parser.add_argument("--workers", type=int, default=2, help="training processes (1 thread each)")
    args = parser.parse_args()
    labels, trials, epochs, teacher_steps = (([1000], 4, 1, 24) if args.quick else
                                             (args.labels, args.trials, args.epochs, args.teacher_steps))
    started = time.perf_counter()
    figures, met = {}, {}
    for count in labels:
        spec = study_spec(count, trials, epochs, args.teacher, teacher_steps, args.quick)
        best, search_figures = run_search(spec)
        data_figures = teacher_figures(spec)
        configs = arms(spec, best, data_figures["labeled"], data_figures["labeled"] + data_figures["unlabeled"])
        summary = summarise(run_arms(spec, configs, args.workers), configs)
        figures[f"labels_{count}"] = {**data_figures, "search": search_figures, **summary}
        for row in summary["arms"]:
            print(f"{count:>5} labels {row['arm']:>15} ({row['epochs']:>4} epochs): test {row['test_mean_pct']:.2f} %, "
                  f"vs CE {row['gain_vs_ce_pt']:+.2f} ± {row['gain_vs_ce_se_pt']:.2f}, vs CE equal steps "
                  f"{row['gain_vs_ce_equal_steps_pt']:+.2f} ± {row['gain_vs_ce_equal_steps_se_pt']:.2f}")
    smallest = f"labels_{min(labels)}"
    figures[f"{smallest}_searched_gain_pt"] = figures[smallest]["searched_gain_pt"]
    met["searched_gain_at_smallest_pt"] = figures[smallest]["searched_gain_pt"] >= TARGET_PT
    targets = {f"{smallest}_searched_gain_pt": f">= +{TARGET_PT} pt over CE on the labeled part at {min(labels):,} "
                                               "labels (searched config, paired, 3 seeds)"}
    met = {f"{smallest}_searched_gain_pt": met.pop("searched_gain_at_smallest_pt")}
    note = " ".join(
        f"{f['labeled']:,} labeled + {f['unlabeled']:,} unlabeled: teacher (trained on the labeled part) test "
        f"{f['teacher_test_pct']} %, right on {f['teacher_right_on_pool_pct']} % of the pool; searched "
        f"{f['search']['best']} gains {f['searched_gain_pt']:+.2f} ± {f['searched_gain_se_pt']:.2f} pt, vanilla KD "
        f"{f['vanilla_kd_gain_pt']:+.2f} ± {f['vanilla_kd_gain_se_pt']:.2f} pt over CE ({f['ce_baseline']}, the "
        "CE arm chosen on val)." for f in (figures[f"labels_{count}"] for count in labels))
    note = (f"Fashion-MNIST, MLP student {STUDENT['depth']}x{STUDENT['width']}, {epochs} epochs, teacher "
            f"{args.teacher} ({teacher_steps} steps), seeds {list(SEEDS)}, test %. {note} Total wall "
            f"{time.perf_counter() - started:.0f} s.")
    print(note)
    suffix = "_quick" if args.quick else "" if (args.teacher, teacher_steps) == ("cnn-wide", TEACHER_STEPS) else \
        f"_{args.teacher}_{teacher_steps}s"
    write_result("unlabeled_gain" + suffix, {
        "quick": args.quick, "figures": figures, "targets": targets, "met": met, "note": note,
        "settings": {"labels": labels, "trials": trials, "epochs": epochs, "batch_size": BATCH_SIZE,
                     "teacher": {"name": args.teacher, "arch": TEACHERS[args.teacher], "batch_size": TEACHER_BATCH},
                     "teacher_steps": teacher_steps,
                     "student": STUDENT, "seeds": list(SEEDS), "space": SPACE["params"], "workers": args.workers,
                     "threads_per_run": 1}})


if __name__ == "__main__":
    sys.exit(main())
