"""GPU sharing: k students on one GPU through fractional resources (issue 6 item 5).

For k in 1, 2, 4, 8 a flat search (``search: {mode: flat}``) runs with ``concurrency = k`` and
each trial asking 1/k of one device, with a fixed student and a space over the distillation
settings only (so trials cost about the same). Ray is started once, before any timing, with
autokd's environment (`ray_cluster.RAY_ENVIRONMENT`), and every level reuses it
(`ray_cluster.init_ray` leaves a running Ray alone); a 1-trial search warms it up first.

- With CUDA: the Fashion-MNIST study (its teachers cached, or trained on the GPU first), a small
  CNN student, ``gpus_per_trial = 1/k`` and ``device: cuda``; `distill.fit` then keeps the data
  and the teacher outputs on the GPU and trains under bf16 autocast. ``nvidia-smi --query-gpu=
  utilization.gpu`` is sampled every 0.5 s in a background thread during each search.
  Figures per k: trials/hour and mean GPU utilisation. Target: >= 4 students at >= 70 %.
- Without CUDA (this machine): the same code path on CPU, on digits (its teachers train in a
  minute; the Fashion-MNIST ones take about an hour on 2 cores) with an MLP student. Ray is
  started with one whole custom resource ``fake_gpu: 1`` standing in for the GPU, and each trial
  asks ``resources.custom: {fake_gpu: 1/k}``. (Ray must be started here: when `ray_cluster.init_ray`
  starts Ray itself it creates per-trial amount x concurrency, which always admits `concurrency`
  trials and so would not show that the resource gates anything.) Ray gets ``max(cores, 8)``
  logical CPUs so that only ``fake_gpu`` limits how many trials run. Figures per k: the most
  trials seen training at once (each trial trained from its completion time back by its
  worker-measured ``train_seconds``; Optuna's datetime_start is when the trial was proposed),
  the mean concurrency and trials/hour on 2 shared cores. A gating check runs k=2 with
  concurrency 4: half a device per trial must still cap it at 2 at once. The GPU row is null,
  with a note saying it was not measured.

The other way to fill a GPU with small students, packing K of them into one batched model (issue 17.2),
is measured by `benchmarks/packing.py`'s GPU arm (config-epochs per hour and utilisation, one student
vs 8 and 64 packed); it needs torch alone, no Ray or Optuna.

    python benchmarks/gpu_sharing.py            # k = 1, 2, 4, 8 (~5 min on 2 CPU cores)
    python benchmarks/gpu_sharing.py --quick    # k = 1, 2 on digits, short trials (a smoke run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, UtilisationSampler, write_result  # noqa: E402  (common puts the repo on sys.path)

import optuna  # noqa: E402
import torch  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.data import load_data  # noqa: E402
from autokd.spec import StudySpec  # noqa: E402
from autokd.teacher_outputs import teacher_outputs  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402

CONCURRENT_TARGET = 4
UTILISATION_TARGET = 70.0
FAKE_GPU = "fake_gpu"
GATING_K, GATING_CONCURRENCY = 2, 4  # half a device per trial must cap 4 allowed trials at 2
SAMPLE_INTERVAL_S = 0.5
CACHE_DIR = REPO / ".cache" / "autokd"
SPACE = {"params": {
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True, "when": {"distill.kind": ["kl"]}},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.1, "high": 1.0},
    "schedule.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
}}
STUDENTS = {"mlp": {"family": "mlp", "depth": 1, "width": 128},
            "cnn": {"family": "cnn", "stages": 2, "channels": 16, "head_width": 64}}
States = optuna.trial.TrialState


def study_spec(study_file: Path, folder: Path, name: str, k: int, concurrency: int, trials: int, epochs: int,
               student: dict, on_gpu: bool) -> StudySpec:
    """The repo's study with a fixed student and 1/k of the (real or stand-in) device per trial."""
    original = load_study(study_file)
    share = 1.0 / k
    resources = ({"cpus_per_trial": 1, "gpus_per_trial": share, "concurrency": concurrency} if on_gpu else
                 {"cpus_per_trial": 1, "concurrency": concurrency, "custom": {FAKE_GPU: share}})
    return StudySpec.model_validate({
        **original.model_dump(), "name": name, "student": student, "search_space": SPACE,
        "schedule": {**original.schedule.model_dump(), "epochs": epochs}, "constraints": [],
        "budget": {"trials": trials}, "sampler": {"name": "random", "seed": k}, "search": {"mode": "flat"},
        "resources": resources,
        "device": "cuda" if on_gpu else "auto", "cache_dir": str(CACHE_DIR),
        "storage": f"sqlite:///{folder / (name + '.db')}", "source": str(study_file)})


def start_ray(on_gpu: bool, logical_cpus: int) -> None:
    """Ray started once for every level: the GPU as Ray detects it, or one whole fake_gpu on CPU."""
    import ray

    from autokd.ray_cluster import RAY_ENVIRONMENT

    os.environ.update(RAY_ENVIRONMENT)  # before Ray starts: its processes inherit it, as with init_ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # address="local": a private instance, never a cluster that Ray's temp dir happens to name.
    kwargs = {"address": "local", "include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if on_gpu:
        ray.init(**kwargs)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, logical_cpus), resources={FAKE_GPU: 1}, **kwargs)


def run_intervals(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[dt.datetime, dt.datetime]]:
    """When each trial trained: completion time minus the training time its worker measured.
    (Optuna's datetime_start is when the driver proposed the trial, possibly long before it could run.)"""
    return [(t.datetime_complete - dt.timedelta(seconds=t.user_attrs["train_seconds"]), t.datetime_complete)
            for t in trials]


def max_concurrency(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """Most intervals open at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def mean_concurrency(intervals: list[tuple[dt.datetime, dt.datetime]]) -> float:
    """Training seconds summed over the span from the first start to the last end."""
    span = (max(end for _, end in intervals) - min(start for start, _ in intervals)).total_seconds()
    return sum((end - start).total_seconds() for start, end in intervals) / span


def run_level(spec: StudySpec, k: int, on_gpu: bool) -> dict:
    """One search at 1/k device per trial; trials/hour, concurrency and (GPU) utilisation."""
    from autokd.search import search

    started = time.perf_counter()
    if on_gpu:
        with UtilisationSampler(SAMPLE_INTERVAL_S) as sampler:
            result = search(spec, progress=False, log=quiet)
    else:
        result = search(spec, progress=False, log=quiet)
    wall = time.perf_counter() - started
    trials = result.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == States.COMPLETE]
    if len(complete) != len(trials):
        reasons = [(t.number, t.state.name, t.user_attrs.get("failure_reason")) for t in trials
                   if t.state != States.COMPLETE]
        raise RuntimeError(f"k={k}: every trial must complete, got {reasons}")
    intervals = run_intervals(complete)
    row = {"k": k, "concurrency": spec.resources.concurrency, "device_share": round(1.0 / k, 4),
           "trials": len(complete), "wall_s": round(wall, 2), "trials_per_hour": round(len(complete) / wall * 3600, 1),
           "max_concurrent": max_concurrency(intervals), "mean_concurrent": round(mean_concurrency(intervals), 2),
           "trial_train_s_median": round(statistics.median(t.user_attrs["train_seconds"] for t in complete), 2),
           "val_accuracy_median": round(statistics.median(t.values[0] for t in complete), 4)}
    if on_gpu:
        values = [value for _, value in sampler.samples]
        row["gpu_utilisation_mean"] = round(statistics.fmean(values), 1) if values else None
        row["gpu_samples"] = len(values)
    return row


def quiet(_message: str) -> None:
    pass


def figures_targets_met(rows: list[dict], gating: dict, on_gpu: bool) -> tuple[dict, dict, dict]:
    """Concurrency per k and the gating check in both modes; GPU throughput and utilisation with CUDA only."""
    figures = {"gpu": None,
               "concurrency": {f"k{r['k']}": {"max_concurrent": r["max_concurrent"],
                                              "mean_concurrent": r["mean_concurrent"],
                                              "trials_per_hour": r["trials_per_hour"]} for r in rows},
               "gating_check": {key: gating[key] for key in ("k", "concurrency", "max_concurrent")}}
    targets = {"concurrent_students": f">= {CONCURRENT_TARGET}", "gpu_utilisation": f">= {UTILISATION_TARGET} %",
               "max_concurrent": "== k for every k", "gating_check": f"max_concurrent <= {GATING_K}"}
    met = {"concurrent_students": None, "gpu_utilisation": None,
           "max_concurrent": all(r["max_concurrent"] == r["k"] for r in rows),
           "gating_check": gating["max_concurrent"] <= GATING_K}
    if on_gpu:
        shared = [r for r in rows if r["max_concurrent"] >= CONCURRENT_TARGET]
        best = max(shared, key=lambda r: r["gpu_utilisation_mean"] or 0.0, default=None)
        figures["gpu"] = {f"k{r['k']}": {"trials_per_hour": r["trials_per_hour"],
                                         "gpu_utilisation_mean": r["gpu_utilisation_mean"]} for r in rows}
        met["concurrent_students"] = best is not None
        met["gpu_utilisation"] = best is not None and (best["gpu_utilisation_mean"] or 0.0) >= UTILISATION_TARGET
    return figures, targets, met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="k = 1, 2 on digits with short trials: a smoke run")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="the k values (default 1 2 4 8)")
    parser.add_argument("--rounds", type=int, default=None, help="trials per level = rounds x k")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--student", choices=sorted(STUDENTS), default=None,
                        help="default: cnn on a GPU, mlp on CPU")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    levels = args.levels or ([1, 2] if args.quick else [1, 2, 4, 8])
    rounds = args.rounds or (2 if args.quick or not on_gpu else 4)
    epochs = args.epochs or (3 if args.quick else (5 if on_gpu else 20))
    student_name = args.student or ("cnn" if on_gpu else "mlp")
    study_file = REPO / "studies" / ("fashion_mnist.yaml" if on_gpu and not args.quick else "digits.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)

    def spec_for(folder: Path, name: str, k: int, concurrency: int, trials: int) -> StudySpec:
        return study_spec(study_file, folder, name, k, concurrency, trials, epochs, STUDENTS[student_name], on_gpu)

    with tempfile.TemporaryDirectory(prefix="autokd-gpu-sharing-") as tmp:
        folder = Path(tmp)
        warm = spec_for(folder, "warmup", 1, 1, trials=1)
        data = load_data(warm.data, warm.source)
        teacher_outputs(prepare_teachers(warm.teachers, data, warm.cache_dir, log=print), data)
        start_ray(on_gpu, logical_cpus=max(*levels, GATING_CONCURRENCY))
        run_level(warm, 1, on_gpu)  # imports, object store and actor start-up warmed before timing
        rows = []
        for k in levels:
            rows.append(run_level(spec_for(folder, f"share{k}", k, k, trials=rounds * k), k, on_gpu))
            print(" ".join(f"{key}={value}" for key, value in rows[-1].items()), flush=True)
        gating = run_level(spec_for(folder, "gating", GATING_K, GATING_CONCURRENCY,
                                    trials=rounds * GATING_CONCURRENCY), GATING_K, on_gpu)
        print("gating check: " + " ".join(f"{key}={value}" for key, value in gating.items()), flush=True)

    figures, targets, met = figures_targets_met(rows, gating, on_gpu)
    settings = {"levels": levels, "rounds": rounds, "epochs": epochs, "student": STUDENTS[student_name],
                "study": study_file.name, "space": SPACE["params"], "cpus_per_trial": 1,
                "resource": "gpu" if on_gpu else f"custom {FAKE_GPU} (Ray started with {FAKE_GPU}: 1)"}
    if on_gpu:
        note = (f"{len(levels)} levels, trials per level = {rounds} x k, {epochs} epochs of a fixed {student_name} "
                "student, data and teacher outputs on the GPU, bf16 autocast; nvidia-smi sampled every "
                f"{SAMPLE_INTERVAL_S} s during each search.")
    else:
        concurrency = ", ".join(f"k={r['k']}: {r['max_concurrent']}" for r in rows)
        note = ("GPU row not measured: no GPU was available in this session (torch.cuda.is_available() is False); "
                "gpu is null and the GPU targets are unchecked (met: null). What was measured instead is the same "
                f"code path on CPU with a custom Ray resource '{FAKE_GPU}' standing in for one GPU (Ray started "
                f"with {FAKE_GPU}: 1, each trial asking 1/k): most trials seen training at once {concurrency}; "
                f"gating check k={GATING_K} at concurrency {GATING_CONCURRENCY}: {gating['max_concurrent']} at once. "
                "Trials/hour here are on "
                f"2 shared CPU cores ({epochs} epoch(s) of a fixed {student_name} student) and say nothing about "
                "GPU throughput.")
    write_result("gpu_sharing", {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                 "note": note, "settings": settings, "levels": rows, "gating_check": gating})


if __name__ == "__main__":
    sys.exit(main())
