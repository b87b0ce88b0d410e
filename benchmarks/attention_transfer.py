"""Attention transfer on/off for CNN students at equal epochs, paired on seeds.

For each dataset (digits; a Fashion-MNIST training subset unless ``--digits-only``) one cnn
teacher is trained by autokd and cached with its attention maps. Each cnn student is trained
with two base losses, ``ce`` (w_ce 1) and ``kd`` (KL at T = 2, w_ce 0.5, w_kd 0.5), each with
AT off (w_at 0) and on (w_at > 0), at the same epochs:

- w_at is chosen per (student, base) on validation from ``--weights`` with one selection seed
  (0), not used again;
- off and on are then trained on 3 fresh seeds; seed s gives both arms the same initial weights
  and the same batch order (`runner.run_config`), so the per-seed difference of test accuracy
  is a paired gain; reported as mean ± standard error of those differences, in points.

Every run goes through `runner.run_config` (the code a search trial runs), one thread per
process, two processes.

    python benchmarks/attention_transfer.py                  # digits + Fashion-MNIST 5,000 (~10 min, 2 cores)
    python benchmarks/attention_transfer.py --digits-only    # ~2 min
    python benchmarks/attention_transfer.py --quick          # smoke run: digits, 2 epochs, one student
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

from autokd.pairing import paired_gain  # noqa: E402
from autokd.spec import TrainConfig  # noqa: E402

CACHE_DIR = REPO / ".cache" / "autokd"
SELECTION_SEED = 0
SEEDS = (1_001, 1_002, 1_003)
BASES = {"ce": {"w_ce": 1.0, "w_kd": 0.0}, "kd": {"kind": "kl", "temperature": 2.0, "w_ce": 0.5, "w_kd": 0.5}}
DATASETS = {
    "digits": {
        "data": {"name": "digits"},
        "teacher": {"name": "cnn-at", "arch": {"family": "cnn", "stages": 2, "channels": 32, "head_width": 64},
                    "schedule": {"epochs": 30, "batch_size": 64, "lr": 0.003}},
        "students": [{"family": "cnn", "stages": 2, "channels": 4, "head_width": 0},
                     {"family": "cnn", "stages": 2, "channels": 8, "head_width": 32}],
        "schedule": {"epochs": 20, "batch_size": 64, "lr": 0.003},
    },
    "fashion_mnist_5k": {
        "data": {"name": "fashion-mnist", "train_subset": 5000},
        "teacher": {"name": "cnn-at", "arch": {"family": "cnn", "stages": 3, "channels": 32, "head_width": 128},
                    "schedule": {"epochs": 10, "batch_size": 128, "lr": 0.004, "lr_schedule": "onecycle"}},
        "students": [{"family": "cnn", "stages": 2, "channels": 4, "head_width": 0}],
        "schedule": {"epochs": 8, "batch_size": 128, "lr": 0.003},
    },
}


def config(dataset: dict, student: dict, base: str, w_at: float, epochs: int | None = None) -> TrainConfig:
    schedule = {**dataset["schedule"], **({"epochs": epochs} if epochs else {})}
    return TrainConfig.model_validate({
        "data": dataset["data"], "teachers": [dataset["teacher"]], "student": student,
        "distill": {**BASES[base], "w_at": w_at}, "schedule": schedule, "threads": 1, "device": "cpu",
        "cache_dir": str(CACHE_DIR)})


def prepare(dataset: dict) -> dict:
    """Train (or load) the teacher and cache its outputs and attention maps, once, before the workers start."""
    from autokd.data import load_data
    from autokd.torch_state import torch_threads
    from autokd.train import prepare_targets

    probe = config(dataset, dataset["students"][0], "kd", 1.0)
    data = load_data(probe.data)
    started = time.perf_counter()
    with torch_threads(1):  # on shared cores one thread beats contended ones
        teachers, _ = prepare_targets(probe, data, log=print)
    return {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test),
            "teacher_val_pct": round(100 * teachers[0].meta["val_accuracy"], 2),
            "teacher_test_pct": round(100 * teachers[0].meta["test_accuracy"], 2),
            "teacher_params": teachers[0].meta["params"], "prepare_s": round(time.perf_counter() - started, 1)}


_cache: dict = {}


def run(config_document: dict, seed: int) -> dict:
    """One run in a worker: (val, test accuracy, seconds). Data and targets are loaded once per worker."""
    import torch

    from autokd.data import load_data
    from autokd.distill import evaluate
    from autokd.runner import run_config
    from autokd.train import prepare_targets

    cfg = TrainConfig.model_validate(config_document)
    key = cfg.data.model_dump_json()
    if key not in _cache:
        data = load_data(cfg.data)
        with_maps = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"w_at": 1.0, "w_kd": 0.5})})
        _cache[key] = data, prepare_targets(with_maps, data, log=lambda message: None)[1]
    torch.set_num_threads(1)
    data, targets = _cache[key]
    student, result = run_config(cfg, data, targets, seed=seed)
    return {"val": result.val_accuracy, "test": evaluate(student, data.x_test, data.y_test),
            "seconds": result.train_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-only", action="store_true", help="skip the Fashion-MNIST subset")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                        help="w_at values to choose from on validation (default: 0.1 0.3 1.0)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: digits, one student, 2 epochs")
    args = parser.parse_args()
    names = ["digits"] if args.digits_only or args.quick else list(DATASETS)
    epochs = 2 if args.quick else None
    started = time.perf_counter()
    figures: dict = {}
    # spawn: a forked child of a process that has run torch's thread pool can hang in it
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name in names:
            dataset = DATASETS[name]
            students = dataset["students"][:1] if args.quick else dataset["students"]
            figures[name] = {"data": prepare(dataset), "epochs": epochs or dataset["schedule"]["epochs"]}
            combos = [(student, base) for student in students for base in BASES]
            # 1. w_at per (student, base), on validation, selection seed only
            selection = {(i, base, w): pool.submit(run, config(dataset, student, base, w, epochs).model_dump(),
                                                   SELECTION_SEED)
                         for i, (student, base) in enumerate(combos) for w in args.weights}
            chosen = {}
            for i, (student, base) in enumerate(combos):
                val = {w: selection[i, base, w].result()["val"] for w in args.weights}
                chosen[i] = max(args.weights, key=lambda w: (val[w], -w))  # ties: the smaller weight
            # 2. off vs on, paired on fresh seeds
            arms = {(i, w_at, seed): pool.submit(run, config(dataset, student, base, w_at, epochs).model_dump(), seed)
                    for i, (student, base) in enumerate(combos) for w_at in (0.0, chosen[i]) for seed in SEEDS}
            rows = []
            for i, (student, base) in enumerate(combos):
                off = [arms[i, 0.0, seed].result() for seed in SEEDS]
                on = [arms[i, chosen[i], seed].result() for seed in SEEDS]
                gain, se = paired_gain([r["test"] for r in on], [r["test"] for r in off])
                rows.append({
                    "student": f"cnn {student['stages']}x{student['channels']} head {student['head_width']}",
                    "base": base, "w_at": chosen[i],
                    "off_test_pct": round(100 * statistics.mean(r["test"] for r in off), 2),
                    "on_test_pct": round(100 * statistics.mean(r["test"] for r in on), 2),
                    "gain_pt": round(100 * gain, 2), "gain_se_pt": round(100 * se, 2),
                    "seconds_off": round(statistics.mean(r["seconds"] for r in off), 2),
                    "seconds_on": round(statistics.mean(r["seconds"] for r in on), 2),
                    "selection_val_pct": {str(w): round(100 * selection[i, base, w].result()["val"], 2)
                                          for w in args.weights},
                    "off_test_seeds": [round(100 * r["test"], 2) for r in off],
                    "on_test_seeds": [round(100 * r["test"], 2) for r in on]})
                print(f"{name} {rows[-1]['student']} {base}: off {rows[-1]['off_test_pct']} on (w_at {chosen[i]}) "
                      f"{rows[-1]['on_test_pct']}  gain {rows[-1]['gain_pt']:+.2f} ± {rows[-1]['gain_se_pt']:.2f} pt",
                      flush=True)
            figures[name]["rows"] = rows
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    write_result("attention_transfer", {
        "quick": args.quick, "figures": figures,
        "note": "AT = 1/2 sum over matched stages of the batch mean of ||q_s - q_t||_2 (the paper's term; w_at "
                "plays beta), q = the channel sum of squared activations, flattened and L2-normalised; stages "
                "matched by spatial size, the deepest of each. Gains: mean ± SE of per-seed test differences "
                f"on seeds {list(SEEDS)}; w_at chosen on validation with seed {SELECTION_SEED}."})


if __name__ == "__main__":
    main()
