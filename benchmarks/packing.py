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

Teacher logits are cached outputs of a made-up teacher that knows the labels: ``6 * one_hot(label) + 2 * noise``
(right on about 90 % of the training samples; ``teacher_train_accuracy`` in the settings). The time of a step does
not depend on their values, but the accuracy gaps do: KD configs fitting a random teacher (this benchmark's first
GPU run) stay near chance, where any last-bit difference grows into another run.
``ratio`` = separate / packed, medians of the repeats, on this thread's CPU time (one torch thread: the epoch's
cost, whatever else runs on the shared cores); ``ratio_wall`` on wall time. The arms alternate and swap order
every repeat. ``same_weights``: the packed students' final weights equal the separate runs' bit for bit
(``max_abs_diff`` otherwise); ``val_accuracy_gap_pt``: per student, packed minus separate val accuracy, and
``max_val_accuracy_gap_pt`` the largest of them in size.

GPU arm (CUDA present, or ``--devices cuda``): the same packs on the GPU under bf16 autocast (wall time,
synchronised; the same training, not the same bits), plus ``level2_8x8``: the 8 level-2 configs on 8 seeds
each, 64 students in one pack (a level-2 architecture's whole paired workload). Each arm's GPU utilisation
(`nvidia-smi`, sampled every 0.2 s over its timed repeats) and config-epochs per hour (one config trained
for one epoch = 1) are reported. It writes ``packing_gpu.json``; the CPU arm writes ``packing.json``.
On the GPU the weights are not the same bits (cuBLAS's batched and single products round differently in
bf16): ``val_accuracy_gap_pt`` gives, per student, packed minus separate val accuracy, which bounds what packing
changes in a trial's result. The packed loop's casts match `distill.fit`'s (tests/test_packing.py emulates bf16
autocast on the CPU: the same bits).

    python benchmarks/packing.py                  # Fashion-MNIST, all 54,000 training samples, 3 repeats
    python benchmarks/packing.py --quick          # 6,000 samples, 1 repeat
    python benchmarks/packing.py --devices cuda   # the GPU arm alone (on a lent GPU machine)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from common import UtilisationSampler, write_result  # noqa: E402  (common puts the repo on sys.path)

import torch  # noqa: E402

from autokd.data import Dataset, load_data  # noqa: E402
from autokd.distill import evaluate  # noqa: E402
from autokd.data_sources import FASHION_MNIST_DIR  # noqa: E402
from autokd.packing import fit_packed  # noqa: E402
from autokd.runner import run_config  # noqa: E402
from autokd.spec import DataSpec, TrainConfig  # noqa: E402
from autokd.teacher_outputs import CachedTeacherOutputs  # noqa: E402

WIDTHS = (16, 64, 256)
PACK = 8
GPU_SEEDS = 8  # level2_8x8: every level-2 config on this many seeds
UTILISATION_INTERVAL_S = 0.2
WARM_UP_SAMPLES = 1024
SEED = 0
TEACHER = {"name": "t", "arch": {"family": "mlp", "depth": 1, "width": 256}}
TEACHER_MARGIN, TEACHER_NOISE = 6.0, 2.0  # the made-up teacher's logits: margin * one_hot(label) + noise * N(0, 1)
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
    return first_samples(data, teacher_knowing_the_labels(data), train_samples)


def teacher_knowing_the_labels(data: Dataset) -> CachedTeacherOutputs:
    noise = torch.randn(1, len(data.y_train), data.num_classes, generator=torch.Generator().manual_seed(SEED))
    logits = TEACHER_MARGIN * torch.nn.functional.one_hot(data.y_train, data.num_classes) + TEACHER_NOISE * noise
    return CachedTeacherOutputs(["t"], logits, [torch.zeros(len(data.y_train), 1)])


def teacher_train_accuracy(outputs: CachedTeacherOutputs, data: Dataset) -> float:
    return round((outputs.train_logits[0].argmax(1) == data.y_train).float().mean().item(), 4)


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
    chosen = {"one_seed": (level2, [SEED] * PACK), "eight_seeds": (seeds, [SEED + k for k in range(PACK)])}
    if device == "cuda":  # a GPU has room for far more than 8 tiny students at once
        chosen["level2_8x8"] = (level2 * GPU_SEEDS, [SEED + k for k in range(GPU_SEEDS) for _ in level2])
    return chosen


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
    utilisation: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(repeats):
        for name in names[repeat % 2:] + names[:repeat % 2]:
            with UtilisationSampler(UTILISATION_INTERVAL_S) if device == "cuda" else nullcontext() as sampler:
                started, students[name] = arms[name](configs, seeds, data, outputs, device)
                wall, cpu = clocks()
            times[name].append((wall - started[0], cpu - started[1]))
            if sampler is not None:
                utilisation[name] += [value for _, value in sampler.samples]
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    diff = max_abs_diff(students["separate"], students["packed"])
    gaps = [round(100 * (evaluate(p, data.x_val, data.y_val) - evaluate(s, data.x_val, data.y_val)), 2)
            for s, p in zip(students["separate"], students["packed"])]
    samples = len(data.y_train) * len(configs)  # one epoch of every config
    row = {"separate_wall_s": round(wall["separate"], 3), "packed_wall_s": round(wall["packed"], 3),
           "ratio_wall": round(wall["separate"] / wall["packed"], 2),
           "packed_samples_per_s": round(samples / wall["packed"]),
           "separate_samples_per_s": round(samples / wall["separate"]),
           "same_weights": diff == 0.0, "max_abs_diff": diff,
           "max_val_accuracy_gap_pt": max(map(abs, gaps)), "val_accuracy_gap_pt": gaps,
           "all_wall_s": {name: [round(w, 3) for w, _ in runs] for name, runs in times.items()}}
    if device == "cuda":
        row.update({f"{name}_config_epochs_per_hour": round(len(configs) * 3600 / wall[name]) for name in arms})
        row.update({f"{name}_gpu_utilisation_pct": round(statistics.fmean(values), 1) if values else None
                    for name, values in utilisation.items()})
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
            shown = {k: v for k, v in row.items() if k not in ("all_wall_s", "val_accuracy_gap_pt")}
            print(f"{device} H={width} {pack}: " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    return rows


def settings(data: Dataset, outputs: CachedTeacherOutputs, repeats: int) -> dict:
    return {"data": data.name, "train_samples": len(data.y_train), "epochs": 1, "batch_size": 128, "pack": PACK,
            "widths": list(WIDTHS), "repeats": repeats, "torch_threads": 1,
            "teacher_logits": f"{TEACHER_MARGIN} * one_hot(label) + {TEACHER_NOISE} * N(0, 1)",
            "teacher_train_accuracy": teacher_train_accuracy(outputs, data),
            "level2_configs": [{"distill": d, "schedule": s} for d, s in LEVEL2_DISTILL]}


def workload_note(data: Dataset, repeats: int) -> str:
    return (f"{data.name}, MLP {data.x_train[0].numel()}-H-10, {len(data.y_train)} training samples, 1 epoch, "
            f"medians of {repeats} repeat(s)")


def write_cpu(rows: dict, data: Dataset, outputs: CachedTeacherOutputs, repeats: int, quick: bool) -> None:
    figures = {"ratios": {key: row["ratio"] for key, row in rows.items()},
               "ratios_wall": {key: row["ratio_wall"] for key, row in rows.items()},
               "same_weights": all(row["same_weights"] for row in rows.values())}
    note = (f"{workload_note(data, repeats)}, pack of {PACK}, 1 torch thread. Packed over separate, CPU time: "
            + ", ".join(f"H={w} {rows[f'H{w}/one_seed']['ratio']}x" for w in WIDTHS)
            + " (8 level-2 configs on one seed); "
            + ", ".join(f"H={w} {rows[f'H{w}/eight_seeds']['ratio']}x" for w in WIDTHS)
            + " (one config on 8 seeds). Final weights equal the separate runs' bit for bit: "
            + ("yes" if figures["same_weights"] else "NO") + "; largest val accuracy gap of one student: "
            + f"{max(row['max_val_accuracy_gap_pt'] for row in rows.values())} pt. GPU: packing_gpu.json.")
    print(note)
    write_result("packing", {"quick": quick, "figures": figures, "note": note,
                             "settings": settings(data, outputs, repeats), "cpu": rows})


def write_gpu(rows: dict, data: Dataset, outputs: CachedTeacherOutputs, repeats: int, quick: bool) -> None:
    def per_key(field: str) -> dict:
        return {key: row[field] for key, row in rows.items()}

    figures = {"ratios_wall": per_key("ratio_wall"),
               "gpu_utilisation_pct_packed": per_key("packed_gpu_utilisation_pct"),
               "gpu_utilisation_pct_separate": per_key("separate_gpu_utilisation_pct"),
               "config_epochs_per_hour_packed": per_key("packed_config_epochs_per_hour"),
               "config_epochs_per_hour_separate": per_key("separate_config_epochs_per_hour"),
               "max_abs_weight_diff": max(row["max_abs_diff"] for row in rows.values()),
               "max_val_accuracy_gap_pt": max(row["max_val_accuracy_gap_pt"] for row in rows.values()),
               "mean_val_accuracy_gap_pt": {key: round(statistics.fmean(row["val_accuracy_gap_pt"]), 3)
                                            for key, row in rows.items()}}
    note = (f"{workload_note(data, repeats)}, bf16 autocast on {torch.cuda.get_device_name(0)}. Packed over "
            "separate, wall time: "
            + "; ".join(f"H={w} " + ", ".join(f"{pack} {rows[f'H{w}/{pack}']['ratio_wall']}x"
                                              for pack in ("one_seed", "eight_seeds", "level2_8x8"))
                        for w in WIDTHS)
            + " (level2_8x8: 64 students, the 8 level-2 configs on 8 seeds). GPU utilisation packed / separate: "
            + ", ".join(f"H={w} {rows[f'H{w}/level2_8x8']['packed_gpu_utilisation_pct']} / "
                        f"{rows[f'H{w}/level2_8x8']['separate_gpu_utilisation_pct']} %" for w in WIDTHS)
            + " (level2_8x8). Val accuracy, packed minus separate, mean over the 64 students of level2_8x8: "
            + ", ".join(f"H={w} {figures['mean_val_accuracy_gap_pt'][f'H{w}/level2_8x8']:+} pt" for w in WIDTHS)
            + f"; largest gap of one student, any pack: {figures['max_val_accuracy_gap_pt']} pt.")
    print(note)
    write_result("packing_gpu", {"quick": quick, "figures": figures, "note": note,
                                 "settings": {**settings(data, outputs, repeats), "gpu_seeds": GPU_SEEDS,
                                              "utilisation_interval_s": UTILISATION_INTERVAL_S},
                                 "gpu": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6,000 training samples, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="arms to run (default: cpu, and cuda when a CUDA device is present)")
    args = parser.parse_args()
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device on this machine")
    repeats = args.repeats or (1 if args.quick else 3)
    train_samples = args.train_samples or (6000 if args.quick else None)
    torch.set_num_threads(1)
    data, outputs = workload(train_samples)
    writers = {"cpu": write_cpu, "cuda": write_gpu}
    for device in devices:
        writers[device](arm(device, data, outputs, repeats), data, outputs, repeats, args.quick)


if __name__ == "__main__":
    sys.exit(main())
