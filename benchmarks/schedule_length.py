"""Does distillation's gain over CE-only grow with the schedule? Fixed KD configs at 15 and 30 epochs, paired seeds.

Fashion-MNIST, the three MLP students the distillation_gain fronts hold (1x8 relu, 6,370 params;
2x22 gelu, 18,006; 2x68 gelu, 58,762), teacher cnn-wide (its cached outputs), AdamW lr 0.003 with
the cosine schedule, batch 256. Per student and length: CE-only and three low-temperature KD
configs of the kinds the searches chose (DIST T=1.5, w_ce 0.5, w_kd 0.9; KL T=2, w_ce 0.5,
w_kd 0.5; LSKD T=1.3, w_ce 0.7, w_kd 0.6), each on the same 4 seeds (same initial weights and
batch order per seed; the seeds' runs packed, bit for bit the runs one by one). Validation
accuracy only: this chooses a setting (the length level 2 and production train for), so the
test split stays out of it. Gains are paired: mean ± standard error of the per-seed differences.

    python benchmarks/schedule_length.py            # 3 students x 2 lengths x 4 configs x 4 seeds (~10 min, 2 cores)
    python benchmarks/schedule_length.py --quick    # 1 and 2 epochs, 2 seeds
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

from autokd.pairing import paired_gain  # noqa: E402

STUDY = REPO / "studies" / "fashion_mnist.yaml"
TEACHER = "cnn-wide"
SEEDS = (2_001, 2_002, 2_003, 2_004)  # none of distillation_gain's production seeds
STUDENTS = {"mlp_1x8": {"depth": 1, "width": 8, "activation": "relu"},
            "mlp_2x22": {"depth": 2, "width": 22, "activation": "gelu"},
            "mlp_2x68": {"depth": 2, "width": 68, "activation": "gelu"}}
CONFIGS = {"ce": {"w_ce": 1.0, "w_kd": 0.0},
           "dist_T1.5": {"kind": "dist", "temperature": 1.5, "w_ce": 0.5, "w_kd": 0.9},
           "kl_T2": {"kind": "kl", "temperature": 2.0, "w_ce": 0.5, "w_kd": 0.5},
           "lskd_T1.3": {"kind": "lskd", "temperature": 1.3, "w_ce": 0.7, "w_kd": 0.6}}


def val_accuracies(student: str, config: str, epochs: int, seeds: tuple[int, ...]) -> list[float]:
    """The student trained with one config for `epochs` on each seed (one thread); val accuracy per seed."""
    import torch

    from autokd.config_files import load_study
    from autokd.data import load_data
    from autokd.runner import run_seeds
    from autokd.spec import TrainConfig
    from autokd.train import prepare_targets

    torch.set_num_threads(1)
    spec = load_study(STUDY)
    document = spec.train_config().model_dump()
    document["teachers"] = [t for t in document["teachers"] if t["name"] == TEACHER]
    document["student"] = {"family": "mlp", **STUDENTS[student]}
    document["distill"] = {**document["distill"], "teachers": [TEACHER], **CONFIGS[config]}
    document["schedule"] = {**document["schedule"], "epochs": epochs, "batch_size": 256, "lr": 0.003,
                            "lr_schedule": "cosine"}
    train_config = TrainConfig.model_validate(document)
    data = load_data(train_config.data, spec.source)
    targets = prepare_targets(train_config, data, spec.source, log=lambda message: None)[1] \
        if train_config.distill.uses_teachers else None
    return [result.val_accuracy for result in run_seeds(train_config, data, targets, list(seeds), threads=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 epochs, 2 seeds")
    parser.add_argument("--workers", type=int, default=2, help="training processes (1 thread each)")
    args = parser.parse_args()
    lengths, seeds = ((1, 2), SEEDS[:2]) if args.quick else ((15, 30), SEEDS)
    jobs = list(itertools.product(STUDENTS, CONFIGS, lengths))
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        accuracies = dict(zip(jobs, pool.map(val_accuracies, *zip(*jobs), itertools.repeat(seeds))))

    rows, gains = [], {}
    for student, epochs in itertools.product(STUDENTS, lengths):
        ce = accuracies[(student, "ce", epochs)]
        for config in CONFIGS:
            if config == "ce":
                continue
            gain, se = paired_gain(accuracies[(student, config, epochs)], ce)
            gains[(student, config, epochs)] = 100 * gain
            rows.append({"student": student, "epochs": epochs, "config": config,
                         "ce_val_pct": round(100 * statistics.fmean(ce), 2),
                         "kd_val_pct": round(100 * statistics.fmean(accuracies[(student, config, epochs)]), 2),
                         "gain_pt": round(100 * gain, 2), "gain_se_pt": round(100 * se, 2)})
            print(rows[-1], flush=True)
    short, long = lengths
    mean_gain = {epochs: round(statistics.fmean(g for (_, _, e), g in gains.items() if e == epochs), 2)
                 for epochs in lengths}
    best = {epochs: {student: round(max(g for (s, _, e), g in gains.items() if s == student and e == epochs), 2)
                     for student in STUDENTS} for epochs in lengths}
    note = (f"Mean paired val gain over CE-only of the {len(CONFIGS) - 1} KD configs x {len(STUDENTS)} students: "
            f"{mean_gain[short]:+.2f} pt at {short} epochs, {mean_gain[long]:+.2f} pt at {long} epochs "
            f"({len(seeds)} seeds). Best config per student: {best[short]} at {short}, {best[long]} at {long}.")
    print(note)
    write_result("schedule_length" + ("_quick" if args.quick else ""), {
        "quick": args.quick, "figures": {"rows": rows, "mean_gain_pt": {str(k): v for k, v in mean_gain.items()},
                                         "best_gain_pt": {str(k): v for k, v in best.items()}},
        "note": note, "targets": {}, "met": {},
        "settings": {"teacher": TEACHER, "seeds": list(seeds), "lengths": list(lengths), "students": STUDENTS,
                     "configs": CONFIGS, "workers": args.workers, "threads_per_run": 1}})


if __name__ == "__main__":
    sys.exit(main())
