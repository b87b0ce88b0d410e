"""What a trial pays to receive the study's data and teacher outputs from Ray's object store.

A search puts the study's `Dataset` and cached teacher outputs in Ray's object store once; every
trial needs them on its worker. Tune's ``with_parameters(trainable, data=..., outputs=...)`` does a
``ray.get`` of each for every trial: it deserialises a fresh copy of the tensors, even when the
worker process is reused (``reuse_actors=True``). autokd passes the references instead
(`trial.run_stored_trial`) and fetches them once per worker process and study.

One Ray actor stands for a reused trial worker (1 CPU). Per trial it either does what
``with_parameters`` does (``ray.get`` of the two objects) or calls `autokd.trial.run_stored_trial`
with the training stood in for by nothing, so only the fetch is timed. Figures: the median ms per
trial of each path over ``--trials`` trials (the first, which both pay in full, listed apart),
and what the once-per-process fetch saves per trial, measured in one run on one Ray instance.

Workloads: Fashion-MNIST (54,000 x 784 training images) with the cached logits and features of its
strongest teacher (cnn-wide), and digits with its study's teachers.

    python benchmarks/study_fetch.py            # 30 trials per path (~1 min after Ray starts)
    python benchmarks/study_fetch.py --quick    # 5 trials per path
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import ray  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.data import load_data  # noqa: E402
from autokd.ray_cluster import init_ray  # noqa: E402
from autokd.teacher_outputs import teacher_outputs  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402

WORKLOADS = {"fashion-mnist": ("fashion_mnist.yaml", ("cnn-wide",)), "digits": ("digits.yaml", None)}


@ray.remote(num_cpus=1)
class TrialWorker:
    """One reused trial process: times each path's fetch of the study's objects, per trial."""

    def __init__(self):
        from autokd import trial

        trial.run_trial = lambda trial_dict, data, outputs: None  # the fetch alone is timed
        self.trial = trial

    def with_parameters_path(self, refs: list, trials: int) -> list[float]:
        seconds = []
        for _ in range(trials):
            started = time.perf_counter()
            data, outputs = ray.get(refs[0]), ray.get(refs[1])  # tune's _ParameterRegistry.get, per kwarg
            seconds.append(time.perf_counter() - started)
            del data, outputs
        return seconds

    def autokd_path(self, refs: list, trials: int) -> list[float]:
        seconds = []
        for _ in range(trials):
            started = time.perf_counter()
            self.trial.run_stored_trial({}, tuple(refs))
            seconds.append(time.perf_counter() - started)
        return seconds


def study_objects(study_file: str, teacher_names: tuple[str, ...] | None):
    spec = load_study(REPO / "studies" / study_file)
    teachers_specs = [t for t in spec.teachers if teacher_names is None or t.name in teacher_names]
    data = load_data(spec.data, spec.source)
    teachers = prepare_teachers(teachers_specs, data, spec.cache_dir, log=print, source=spec.source)
    return spec, data, teacher_outputs(teachers, data)


def measure(spec, data, outputs, trials: int) -> dict:
    refs = [ray.put(data), ray.put(outputs)]  # inside a list: the actor receives the references themselves
    seconds = {}
    for path in ("with_parameters_path", "autokd_path"):
        worker = TrialWorker.remote()  # a fresh process per path: the autokd path's first fetch is a real one
        seconds[path] = ray.get(getattr(worker, path).remote(refs, trials))
        ray.kill(worker)
    size_mb = (sum(t.numel() * t.element_size() for t in (data.x_train, data.x_val, data.x_test))
               + outputs.train_logits.numel() * 4 + sum(f.numel() * 4 for f in outputs.train_features)) / 1e6
    old, new = (1000 * statistics.median(seconds[p][1:]) for p in ("with_parameters_path", "autokd_path"))
    return {"objects_mb": round(size_mb, 1), "trials": trials,
            "first_trial_ms": {p.removesuffix("_path"): round(1000 * s[0], 2) for p, s in seconds.items()},
            "later_trial_ms_with_parameters": round(old, 3), "later_trial_ms_autokd": round(new, 3),
            "ms_saved_per_trial": round(old - new, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 trials per path")
    parser.add_argument("--trials", type=int, default=30, help="trials per path (one reused worker each)")
    args = parser.parse_args()
    trials = 5 if args.quick else args.trials
    figures = {}
    for name, (study_file, teacher_names) in WORKLOADS.items():
        spec, data, outputs = study_objects(study_file, teacher_names)
        init_ray(None, spec)
        figures[name] = measure(spec, data, outputs, trials)
        print(name, figures[name], flush=True)
    ray.shutdown()
    fashion = figures["fashion-mnist"]
    note = (f"Per trial on a reused worker, Fashion-MNIST ({fashion['objects_mb']} MB of data and teacher outputs): "
            f"{fashion['later_trial_ms_with_parameters']} ms through tune.with_parameters' per-trial ray.get, "
            f"{fashion['later_trial_ms_autokd']} ms through autokd's once-per-process fetch (the first trial pays "
            f"{fashion['first_trial_ms']['autokd']} ms). Medians of {trials - 1} trials after the first.")
    print(note)
    write_result("study_fetch" + ("_quick" if args.quick else ""), {
        "quick": args.quick, "figures": figures, "note": note,
        "targets": {}, "met": {}, "settings": {"trials": trials, "workloads": {k: v[0] for k, v in WORKLOADS.items()}}})


if __name__ == "__main__":
    sys.exit(main())
