"""Packed trials (issue 17 item 2): K = 8 configs of one MLP student trained as one batched model vs one by one.

Arm "separate" trains each config through ``runner.run_config(config, data, targets, seed, threads=1)``, one
after the other; arm "packed" trains the same configs on the same seeds with one ``packing.fit_packed`` call.
Both arms build the students from the seeds, train one epoch and evaluate on the validation split. The
workload is MLP 784-H-10 (Fashion-MNIST when /usr/share/datasets/fashion-mnist exists, else digits 64-H-10),
H = 16, 64 and 256, one torch thread. Two packs:

- ``one_seed``: 8 level-2 configs of one architecture on one seed, so on the same batches (the pairing of the
  two-level search): CE-only, vanilla KD (kl, T = 4), four tuned kl configs (their own T, weights and lr), one
  mse and one dkd config (dkd is not vectorised: it gets its own DistillationLoss call per step);
- ``eight_seeds``: one kl config on 8 seeds (a paired trial's or the robust front's seeds): 8 batch orders.

Teacher logits are a fixed random tensor (cached outputs of one "teacher"): the time of a step does not
depend on their values. ``ratio`` = separate / packed, medians of the repeats, on this thread's CPU time
(one torch thread: the epoch's cost, whatever else runs on the shared cores); ``ratio_wall`` on wall time.
The arms alternate and swap order every repeat. ``same_weights``: the packed students' final weights equal
the separate runs' bit for bit (``max_abs_diff`` otherwise). GPU arm: the same on CUDA when present (wall
time, synchronised), else reported as not measured.

    python benchmarks/packing.py              # Fashion-MNIST, all 54,000 training samples, 3 repeats
    python benchmarks/packing.py --quick      # 6,000 samples, 1 repeat
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import write_result  # noqa: E402  (common puts the repo on sys.path)

import torch  # noqa: E402

from autokd.data import Dataset, load_data  # noqa: E402
from autokd.data_sources import FASHION_MNIST_DIR  # noqa: E402
from autokd.packing import fit_packed  # noqa: E402
from autokd.runner import run_config  # noqa: E402
from autokd.spec import DataSpec, TrainConfig  # noqa: E402
from autokd.teacher_outputs import CachedTeacherOutputs  # noqa: E402

WIDTHS = (16, 64, 256)
PACK = 8
WARM_UP_SAMPLES = 1024
SEED = 0
TEACHER = {"name": "t", "arch": {"family": "mlp", "depth": 1, "width": 256}}
# Level 2 of a two-level search for one architecture: baselines, then tuned configs.
LEVEL2_DISTILL = [
    ({"w_ce": 1.0, "w_kd": 0.0}, {}),
    ({"kind": "kl", "temperature": 4.0, "w_ce": 0.1, "w_kd": 0.9}, {}),
    ({"kind": "kl", "temperature": 2.0, "w_ce": 0.5, "w_kd": 0.5}, {"lr": 0.01}),
    ({"kind": "kl", "temperature": 6.0, "w_ce": 0.2, "w_kd": 1.0}, {"lr": 0.001}),
    ({"kind": "kl", "temperature": 1.5, "w_ce": 0.0, "w_kd": 1.0}, {"lr": 0.005}),
    ({"kind": "kl", "temperature": 3.0, "w_ce": 0.3, "w_kd": 0.4}, {"lr": 0.002}),
    ({"kind": "mse", "w_ce": 0.5, "w_kd": 0.5}, {}),
    ({"kind": "dkd", "temperature": 4.0, "w_ce": 1.0, "w_kd": 1.0}, {}),
]


def workload(train_samples: int | None) -> tuple[Dataset, CachedTeacherOutputs]:
    name = "fashion-mnist" if Path(FASHION_MNIST_DIR).is_dir() else "digits"
    data = load_data(DataSpec(name=name))
    logits = torch.randn(1, len(data.y_train), data.num_classes, generator=torch.Generator().manual_seed(SEED)) * 3
    return first_samples(data, CachedTeacherOutputs(["t"], logits, [torch.zeros(len(data.y_train), 1)]), train_samples)


def first_samples(data: Dataset, outputs: CachedTeacherOutputs, count: int | None):
    if count is None or count >= len(data.y_train):
        return data, outputs
    return (replace(data, x_train=data.x_train[:count], y_train=data.y_train[:count]),
            CachedTeacherOutputs(outputs.names, outputs.train_logits[:, :count],
                                 [f[:count] for f in outputs.train_features]))


def config(width: int, distill: dict, schedule: dict, device: str) -> TrainConfig:
    return TrainConfig(teachers=[TEACHER], student={"family": "mlp", "depth": 1, "width": width},
                       distill=distill, schedule={"epochs": 1, "batch_size": 128, **schedule}, threads=1,
                       device=device)


def packs(width: int, device: str) -> dict[str, tuple[list[TrainConfig], list[int]]]:
    level2 = [config(width, distill, schedule, device) for distill, schedule in LEVEL2_DISTILL]
    seeds = [config(width, LEVEL2_DISTILL[1][0], {}, device)] * PACK
    return {"one_seed": (level2, [SEED] * PACK), "eight_seeds": (seeds, [SEED + k for k in range(PACK)])}


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def separate(configs, seeds, data, outputs, device):
    synchronise(device)
    started = clocks()
    students = [run_config(c, data, outputs, seed=s, threads=1, device=device)[0] for c, s in zip(configs, seeds)]
    synchronise(device)
    return started, students


def packed(configs, seeds, data, outputs, device):
    synchronise(device)
    started = clocks()
    students = [run.student for run in fit_packed(configs, data, outputs, seeds, device=device, threads=1)]
    synchronise(device)
    return started, students


def max_abs_diff(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for sa, sb in zip(a, b)
               for x, y in zip(sa.state_dict().values(), sb.state_dict().values()))


def measure(configs, seeds, data, outputs, device: str, repeats: int) -> dict:
    arms = {"separate": separate, "packed": packed}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    students = {}
    warm_data, warm_outputs = first_samples(data, outputs, WARM_UP_SAMPLES)
    for arm in arms.values():  # untimed warm-up on a few batches: first calls pay for lazy initialisation
        arm(configs, seeds, warm_data, warm_outputs, device)
    names = list(arms)
    for repeat in range(repeats):
        for name in names[repeat % 2:] + names[:repeat % 2]:
            started, students[name] = arms[name](configs, seeds, data, outputs, device)
            wall, cpu = clocks()
            times[name].append((wall - started[0], cpu - started[1]))
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    diff = max_abs_diff(students["separate"], students["packed"])
    samples = len(data.y_train) * len(configs)  # one epoch of every config
    row = {"separate_wall_s": round(wall["separate"], 3), "packed_wall_s": round(wall["packed"], 3),
           "ratio_wall": round(wall["separate"] / wall["packed"], 2),
           "packed_samples_per_s": round(samples / wall["packed"]),
           "separate_samples_per_s": round(samples / wall["separate"]),
           "same_weights": diff == 0.0, "max_abs_diff": diff,
           "all_wall_s": {name: [round(w, 3) for w, _ in runs] for name, runs in times.items()}}
    if device == "cpu":
        row = {"separate_cpu_s": round(cpu["separate"], 3), "packed_cpu_s": round(cpu["packed"], 3),
               "ratio": round(cpu["separate"] / cpu["packed"], 2), **row}
    return row


def arm(device: str, data, outputs, repeats: int) -> dict:
    rows = {}
    for width in WIDTHS:
        for pack, (configs, seeds) in packs(width, device).items():
            row = measure(configs, seeds, data, outputs, device, repeats)
            rows[f"H{width}/{pack}"] = row
            shown = {k: v for k, v in row.items() if k != "all_wall_s"}
            print(f"{device} H={width} {pack}: " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6,000 training samples, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-samples", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    train_samples = args.train_samples or (6000 if args.quick else None)
    torch.set_num_threads(1)
    data, outputs = workload(train_samples)
    cpu_rows = arm("cpu", data, outputs, repeats)
    gpu_rows = arm("cuda", data, outputs, repeats) if torch.cuda.is_available() else None

    figures = {"ratios": {key: row["ratio"] for key, row in cpu_rows.items()},
               "ratios_wall": {key: row["ratio_wall"] for key, row in cpu_rows.items()},
               "same_weights": all(row["same_weights"] for row in cpu_rows.values()),
               "gpu_ratios_wall": ({key: row["ratio_wall"] for key, row in gpu_rows.items()} if gpu_rows
                                   else "not measured: no CUDA device on this machine")}
    one_seed = [cpu_rows[f"H{w}/one_seed"]["ratio"] for w in WIDTHS]
    note = (f"{data.name}, MLP {data.x_train[0].numel()}-H-10, {len(data.y_train)} training samples, 1 epoch, "
            f"pack of {PACK}, 1 torch thread, medians of {repeats} repeat(s). Packed over separate, CPU time: "
            + ", ".join(f"H={w} {r}x" for w, r in zip(WIDTHS, one_seed)) + " (8 level-2 configs on one seed); "
            + ", ".join(f"H={w} {cpu_rows[f'H{w}/eight_seeds']['ratio']}x" for w in WIDTHS)
            + " (one config on 8 seeds). Final weights equal the separate runs' bit for bit: "
            + ("yes" if figures["same_weights"] else "NO") + ". GPU: "
            + ("see gpu_ratios_wall" if gpu_rows else "not measured (no CUDA device on this machine)") + ".")
    print(note)
    write_result("packing", {"quick": args.quick, "figures": figures, "note": note,
                             "settings": {"data": data.name, "train_samples": len(data.y_train), "epochs": 1,
                                          "batch_size": 128, "pack": PACK, "widths": list(WIDTHS),
                                          "repeats": repeats, "torch_threads": 1,
                                          "level2_configs": [{"distill": d, "schedule": s}
                                                             for d, s in LEVEL2_DISTILL]},
                             "cpu": cpu_rows, "gpu": gpu_rows})


if __name__ == "__main__":
    sys.exit(main())
