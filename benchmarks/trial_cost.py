"""Trial cost against the floor (issue 6 item 2): one student epoch in `distill.fit` vs a bare loop.

Arm "fit" is one epoch as a trial runs it: ``distill.fit(student, data, cached_outputs, distill,
schedule(epochs=1), seed)`` with the study's first teacher's cached logits, `DistillationLoss`
(KL at T plus CE), index-sliced batches and the per-epoch validation accuracy. Arm "floor" is a
hand-written PyTorch loop over the same in-memory tensors: same student (same seed, so the same
initial weights), same batch order (``randperm`` with the same seeded generator), same AdamW and
cosine schedule, the same CE + T^2-scaled KL loss on the same cached teacher logits, then one
validation forward. Both arms train exactly the same thing, so their final weights must be
equal; ``same_weights`` checks it. ``ratio`` = median(fit) / median(floor) of the epoch's CPU time
(this thread's: with one torch thread it is the epoch's cost, unaffected by whatever else runs on
the shared cores); ``ratio_wall`` is the same for wall-clock time. Target: ratio <= 1.1.
``extras_us_per_step`` times, alone on a real batch, each thing `fit` does per step that the floor
does not, to say where a gap comes from.

Workloads: Fashion-MNIST with an MLP 784-128-10 and a small CNN, digits with the study's MLP and
a small CNN. One torch thread (as a trial has). The arms alternate within every repeat and swap
order from one repeat to the next, so background load hits both; figures are medians.

Cache vs online (Fashion-MNIST, MLP student): the same `fit` epoch with teacher outputs from
`CachedTeacherOutputs` or from `OnlineTeachers` running the teachers on every batch, for the
first teacher and for all three; ``online_over_cached`` is what the cache saves (x times).

The Fashion-MNIST teachers are read from the shared cache (.cache/autokd); this script never
trains one (`autokd teachers studies/fashion_mnist.yaml` does): it waits for the first teacher,
and the all-teachers row of cache vs online is reported as not measured until all are cached.

    python benchmarks/trial_cost.py            # all workloads, 15 repeats (3 for the CNN and online arms)
    python benchmarks/trial_cost.py --quick    # 1 repeat, Fashion-MNIST cut to 6,000 training samples
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.data import Dataset, load_data  # noqa: E402
from autokd.distill import fit  # noqa: E402
from autokd.losses import DistillationLoss  # noqa: E402
from autokd.spec import DistillSpec, ScheduleSpec, StudySpec  # noqa: E402
from autokd.teacher_outputs import CachedTeacherOutputs, OnlineTeachers, teacher_outputs  # noqa: E402
from autokd.teachers import prepare_teachers, teacher_key  # noqa: E402
from autokd.zoo import build_model  # noqa: E402

RATIO_TARGET = 1.1
CACHE_DIR = REPO / ".cache" / "autokd"
SEED = 0
DISTILL = DistillSpec(kind="kl", temperature=4.0, w_ce=0.5, w_kd=0.5)
WORKLOADS = [  # (study, student, slow): slow workloads get fewer repeats
    ("fashion_mnist", {"family": "mlp", "depth": 1, "width": 128}, False),
    ("fashion_mnist", {"family": "cnn", "stages": 2, "channels": 8, "head_width": 32}, True),
    ("digits", {"family": "mlp", "depth": 1, "width": 64}, False),
    ("digits", {"family": "cnn", "stages": 2, "channels": 8, "head_width": 32}, False),
]


# ---------------------------------------------------------------------------------------------
# Study, data and teachers


def study_spec(name: str) -> StudySpec:
    original = load_study(REPO / "studies" / f"{name}.yaml")
    return StudySpec.model_validate({**original.model_dump(), "search": {"mode": "flat"},
                                     "cache_dir": str(CACHE_DIR), "source": original.source})


def cached_teacher_names(spec: StudySpec, data: Dataset) -> list[str]:
    """The study's teachers already in the cache (their meta.json is written last)."""
    root = Path(spec.cache_dir) / "teachers"
    return [t.name for t in spec.teachers
            if (root / f"{t.name}-{teacher_key(t, data.fingerprint())[:12]}" / "meta.json").is_file()]


def wait_for_cached_teachers(spec: StudySpec, data: Dataset, timeout_s: float, names: list[str] | None = None,
                             poll_s: float = 30.0) -> None:
    """Block until the teachers `names` (default: all) of `spec` are cached, or exit. For studies whose
    teachers take long to train (Fashion-MNIST): a benchmark must not train them on the side while
    `autokd teachers` does."""
    wanted = names or [t.name for t in spec.teachers]
    deadline = time.monotonic() + timeout_s
    while missing := sorted(set(wanted) - set(cached_teacher_names(spec, data))):
        if time.monotonic() > deadline:
            raise SystemExit(f"teachers not cached after {timeout_s:.0f} s: {missing}; run "
                             f"`autokd teachers {spec.source}` first")
        print(f"waiting for cached teachers {missing} of {spec.name} ...", flush=True)
        time.sleep(poll_s)


def first_samples(data: Dataset, outputs: CachedTeacherOutputs, count: int | None):
    """The first `count` training samples and their cached outputs (index-aligned), or everything."""
    if count is None or count >= len(data.y_train):
        return data, outputs
    cut = replace(data, x_train=data.x_train[:count], y_train=data.y_train[:count])
    return cut, CachedTeacherOutputs(outputs.names, outputs.train_logits[:, :count],
                                     [f[:count] for f in outputs.train_features])


def study_inputs(name: str, train_samples: int | None, wait_s: float):
    """(spec, data, cached outputs, teacher models) of a repo study, for the teachers cached now.
    Fashion-MNIST: waits for the first teacher (fit vs floor needs it) and never trains one."""
    spec = study_spec(name)
    data = load_data(spec.data, spec.source)
    ready = spec.teachers
    if spec.data.name == "fashion-mnist":
        wait_for_cached_teachers(spec, data, wait_s, names=[spec.teachers[0].name])
        ready = [t for t in spec.teachers if t.name in cached_teacher_names(spec, data)]
    teachers = prepare_teachers(ready, data, spec.cache_dir, log=print)
    data, outputs = first_samples(data, teacher_outputs(teachers, data), train_samples)
    return spec, data, outputs, [t.model for t in teachers]


# ---------------------------------------------------------------------------------------------
# The arms


def clocks() -> tuple[float, float]:
    """(wall, this thread's CPU time). With one torch thread every op of an epoch runs on this thread,
    so its CPU time is what the epoch cost, whatever else the shared cores were running."""
    return time.perf_counter(), time.thread_time()


def since(started: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - started[0], cpu - started[1]


def fit_epoch(data: Dataset, source, arch: dict, schedule: ScheduleSpec) -> tuple[tuple[float, float], torch.nn.Module]:
    """Arm "fit": one epoch through `distill.fit`, as a trial calls it (through `runner.train_model`)."""
    student = build_model(arch, data.input_shape, data.num_classes, seed=SEED)
    started = clocks()
    fit(student, data, source, DISTILL, schedule, seed=SEED, device="cpu")
    return since(started), student


def floor_epoch(data: Dataset, teacher_logits: torch.Tensor, arch: dict,
                schedule: ScheduleSpec) -> tuple[tuple[float, float], torch.nn.Module]:
    """Arm "floor": the same epoch written by hand (same init, batches, optimizer, schedule, loss)."""
    student = build_model(arch, data.input_shape, data.num_classes, seed=SEED)
    started = clocks()
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(student.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    order = torch.randperm(len(data.y_train), generator=generator).split(schedule.batch_size)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(order))
    temperature = DISTILL.temperature
    student.train()
    for indices in order:
        logits = student(data.x_train[indices])
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                        F.log_softmax(teacher_logits[indices] / temperature, dim=-1),
                        reduction="batchmean", log_target=True) * temperature ** 2
        loss = DISTILL.w_ce * F.cross_entropy(logits, data.y_train[indices]) + DISTILL.w_kd * soft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
    student.eval()
    with torch.no_grad():
        (student(data.x_val).argmax(dim=1) == data.y_val).float().mean().item()
    return since(started), student


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def interleaved(arms: dict[str, Callable[[], tuple[tuple[float, float], torch.nn.Module]]], repeats: int) -> dict:
    """Per arm over `repeats` rounds (the arm order rotates each round): median wall and CPU seconds,
    every wall time, and the last model trained."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    models: dict[str, torch.nn.Module] = {}
    names = list(arms)
    for arm in arms.values():  # untimed: first calls pay for lazy initialisation
        arm()
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            elapsed, models[name] = arms[name]()
            seconds[name].append(elapsed)
    return {"wall": {name: statistics.median(w for w, _ in runs) for name, runs in seconds.items()},
            "cpu": {name: statistics.median(c for _, c in runs) for name, runs in seconds.items()},
            "all_wall": {name: [round(w, 4) for w, _ in runs] for name, runs in seconds.items()},
            "models": models}


def schedule_for(spec: StudySpec) -> ScheduleSpec:
    """The study's trial schedule, cut to one epoch (cosine over that epoch, as a 1-epoch trial has)."""
    return ScheduleSpec(**{**spec.schedule.model_dump(), "epochs": 1, "optimizer": "adamw",
                           "lr_schedule": "cosine"})


def fit_vs_floor(spec: StudySpec, data: Dataset, outputs: CachedTeacherOutputs, arch: dict, repeats: int) -> dict:
    schedule = schedule_for(spec)
    teacher = outputs.select(outputs.names[:1])
    run = interleaved({"fit": lambda: fit_epoch(data, teacher, arch, schedule),
                       "floor": lambda: floor_epoch(data, teacher.train_logits[0], arch, schedule)}, repeats)
    (fit_cpu, floor_cpu), (fit_wall, floor_wall) = ((run[clock]["fit"], run[clock]["floor"])
                                                    for clock in ("cpu", "wall"))
    steps = math.ceil(len(data.y_train) / schedule.batch_size)
    extras = fit_extras_per_step(data, outputs, arch, schedule.batch_size, iterations=200)
    return {"study": spec.name, "student": arch, "teacher": teacher.names[0], "train_samples": len(data.y_train),
            "batch_size": schedule.batch_size, "steps": steps, "repeats": repeats,
            "fit_cpu_s": round(fit_cpu, 4), "floor_cpu_s": round(floor_cpu, 4), "ratio": round(fit_cpu / floor_cpu, 3),
            "fit_wall_s": round(fit_wall, 4), "floor_wall_s": round(floor_wall, 4),
            "ratio_wall": round(fit_wall / floor_wall, 3),
            "same_weights": same_weights(run["models"]["fit"], run["models"]["floor"]),
            "gap_cpu_s": round(fit_cpu - floor_cpu, 4), "extras_us_per_step": extras,
            "extras_s_per_epoch": round(sum(extras.values()) * steps / 1e6, 4), "all_wall_s": run["all_wall"]}


def cpu_seconds_per_call(call: Callable[[], object], iterations: int, rounds: int = 5) -> float:
    timings = []
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(iterations):
            call()
        timings.append((time.thread_time() - started) / iterations)
    return statistics.median(timings)


def fit_extras_per_step(data: Dataset, outputs: CachedTeacherOutputs, arch: dict, batch_size: int,
                        iterations: int) -> dict[str, float]:
    """CPU microseconds per training step of each thing `fit` does that the floor does not, timed alone on a
    real batch: DistillationLoss (module call, checks, a `.item()` per term) over the same loss written
    inline, the per-step finiteness check, entering the (disabled on CPU) autocast context, and the running
    loss sum."""
    student = build_model(arch, data.input_shape, data.num_classes, seed=SEED)
    teacher = outputs.select(outputs.names[:1])
    indices = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(SEED))[:batch_size]
    logits, targets, teacher_logits = student(data.x_train[indices]), data.y_train[indices], \
        teacher.train_logits[:, indices]
    loss_fn = DistillationLoss.from_config(DISTILL, student_feature_dim=student.feature_dim)
    temperature = DISTILL.temperature

    def inline_loss() -> torch.Tensor:
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                        F.log_softmax(teacher_logits[0] / temperature, dim=-1),
                        reduction="batchmean", log_target=True) * temperature ** 2
        return DISTILL.w_ce * F.cross_entropy(logits, targets) + DISTILL.w_kd * soft

    loss, running = inline_loss(), torch.zeros(())
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=False)

    def enter_autocast() -> None:
        with autocast:
            pass

    timed = {"loss_module": lambda: loss_fn(logits, targets, teacher_logits),
             "loss_inline": inline_loss,
             "finite_check": lambda: bool(torch.isfinite(loss)),
             "autocast_context": enter_autocast,
             "loss_sum": lambda: running.add_(loss.detach())}
    micros = {name: cpu_seconds_per_call(call, iterations) * 1e6 for name, call in timed.items()}
    micros["loss_module_over_inline"] = micros.pop("loss_module") - micros.pop("loss_inline")
    return {name: round(value, 1) for name, value in micros.items()}


def cached_vs_online(spec: StudySpec, data: Dataset, outputs: CachedTeacherOutputs, models: list, arch: dict,
                     repeats: int) -> dict:
    """One `fit` epoch with cached teacher outputs vs the same teachers run online, for 1 and all teachers
    (a teacher count whose teachers are not all cached yet is reported as not measured)."""
    schedule = schedule_for(spec)
    rows = {}
    for count in (1, len(spec.teachers)):
        key = f"{count}_teacher{'s' if count > 1 else ''}"
        if count > len(models):
            missing = [t.name for t in spec.teachers if t.name not in outputs.names]
            rows[key] = {"not_measured": f"teachers {missing} were not cached yet (still being trained by "
                                         "`autokd teachers`); rerun this script once they are"}
            print(f"  {count} teachers: not measured ({missing} not cached)", flush=True)
            continue
        arms = {"cached": lambda c=count: fit_epoch(data, outputs.select(outputs.names[:c]), arch, schedule),
                "online": lambda c=count: fit_epoch(data, OnlineTeachers(models[:c]), arch, schedule)}
        run = interleaved(arms, repeats)
        cached_s, online_s = run["cpu"]["cached"], run["cpu"]["online"]
        rows[key] = {"teachers": outputs.names[:count], "cached_cpu_s": round(cached_s, 4),
                     "online_cpu_s": round(online_s, 4), "online_over_cached": round(online_s / cached_s, 1),
                     "cached_wall_s": round(run["wall"]["cached"], 4), "online_wall_s": round(run["wall"]["online"], 4)}
        print(f"  {count} teacher(s): cached {cached_s:.3f} s, online {online_s:.3f} s CPU "
              f"({online_s / cached_s:.1f}x)", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, Fashion-MNIST cut to 6,000 samples")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the fast workloads")
    parser.add_argument("--slow-repeats", type=int, default=None, help="repeats of the CNN and online arms")
    parser.add_argument("--wait-teachers-s", type=float, default=3600.0)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 15)
    slow_repeats = args.slow_repeats or (1 if args.quick else 3)
    fashion_samples = 6000 if args.quick else None
    torch.set_num_threads(1)

    inputs = {name: study_inputs(name, fashion_samples if name == "fashion_mnist" else None, args.wait_teachers_s)
              for name in ("digits", "fashion_mnist")}
    rows = []
    for name, arch, slow in WORKLOADS:
        spec, data, outputs, _models = inputs[name]
        rows.append(fit_vs_floor(spec, data, outputs, arch, slow_repeats if slow else repeats))
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items() if k != "all_wall_s"), flush=True)
    spec, data, outputs, models = inputs["fashion_mnist"]
    print("cached vs online teacher outputs (Fashion-MNIST, MLP student):", flush=True)
    online = cached_vs_online(spec, data, outputs, models, WORKLOADS[0][1], slow_repeats)

    worst = max(rows, key=lambda row: row["ratio"])
    figures = {"ratio_worst": worst["ratio"],
               "ratios": {f"{r['study']}/{r['student']['family']}": r["ratio"] for r in rows},
               "ratios_wall": {f"{r['study']}/{r['student']['family']}": r["ratio_wall"] for r in rows},
               "cache_saving": {key: value.get("online_over_cached") for key, value in online.items()}}
    targets = {"ratio_worst": f"<= {RATIO_TARGET}"}
    met = {"ratio_worst": worst["ratio"] <= RATIO_TARGET}
    note = (f"fit/floor ratio of the CPU time of one student epoch (1 torch thread, so the thread's CPU time is "
            "the epoch's cost on shared cores; wall-clock ratios are in ratios_wall), medians of interleaved "
            "repeats, worst "
            f"{worst['ratio']} on {worst['study']}/{worst['student']['family']} (target <= {RATIO_TARGET}: "
            f"{'met' if met['ratio_worst'] else 'MISSED'}). fit and floor ended with identical weights in "
            f"{sum(r['same_weights'] for r in rows)}/{len(rows)} workloads. "
            "Cached vs online teachers: "
            + ", ".join(f"{k.replace('_', ' ')} " + (f"{v['online_over_cached']}x" if "online_over_cached" in v
                                                       else "not measured: " + v["not_measured"])
                        for k, v in online.items()) + ".")
    for key, value in figures.items():
        print(f"{key}: {value}")
    write_result("trial_cost", {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                "note": note, "settings": {"repeats": repeats, "slow_repeats": slow_repeats,
                                                           "fashion_mnist_train_samples": fashion_samples or "all",
                                                           "torch_threads": 1, "distill": DISTILL.model_dump(),
                                                           "seed": SEED},
                                "workloads": rows, "cached_vs_online": online})


if __name__ == "__main__":
    sys.exit(main())
