"""Production training through the CLI (issue 5): exported trials reproduce, the knee gains from longer training.

(a) Reproduction: for a few front trials of the Fashion-MNIST bench study (the knee, the
    smallest and the most accurate student, then others from the front), run the real CLI::

        autokd export <study> --storage <url> --trial N -o trialN.yaml
        autokd train trialN.yaml -o runs/trialN          # the trial's epochs and seed

    and compare the run's val accuracy with the trial's recorded one. Target: |difference|
    <= 0.5 pt for every trial. `autokd train` runs with torch's default thread count, not the
    trial's single thread, so bit-identical results are not expected.
(b) Longer training of the knee::

        autokd export <study> --storage <url> --knee -o knee.yaml
        autokd train knee.yaml --epochs 3E --seeds S -o runs/knee-3x

    against the trial's test accuracy: the knee trial's run of (a) (trained with ``--seeds S``
    at the search's E epochs; its first seed is the trial's). Target: test accuracy at 3E with the
    trial's seed > the trial's test accuracy; the S-seed means are recorded beside it.

The study is the flat Fashion-MNIST bench study of `fashion_study.py` (searched here first when
its storage does not exist yet: ~15 min, or ~1 min with ``--quick``), or any other given as
``--study NAME --storage URL``.

    python benchmarks/production_train.py             # 3 trials + the knee at 3x epochs, 3 seeds (~25 min)
    python benchmarks/production_train.py --quick     # the quick study, 2 trials, 1 seed (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)
from fashion_study import BENCH_FOLDER, FULL, QUICK, mean_std, run_search, study_spec  # noqa: E402

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from autokd.config_files import load_train_config  # noqa: E402
from autokd.results import front_frame, open_storage, trials_frame  # noqa: E402

REPRODUCTION_TOLERANCE_PT = 0.5
EPOCH_FACTOR = 3
AUTOKD = Path(sys.executable).parent / "autokd"


def autokd(*arguments: str) -> float:
    """Run the CLI from the repo root; returns its wall time, or raises with its output."""
    started = time.perf_counter()
    completed = subprocess.run([str(AUTOKD), *arguments], cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"autokd {' '.join(arguments)} exited {completed.returncode}:\n"
                           f"{completed.stdout}{completed.stderr}")
    print(completed.stdout.strip().splitlines()[-1], flush=True)
    return time.perf_counter() - started


def export(study: str, storage: str, output: Path, *rule: str) -> int:
    """`autokd export` with one selection rule; returns the exported trial's number."""
    autokd("export", study, "--storage", storage, *rule, "-o", str(output))
    return int(load_train_config(output).provenance["trial"])


def train(config: Path, run_folder: Path, *options: str) -> dict:
    """`autokd train`; returns the run's metrics.json plus the command's wall time."""
    wall = autokd("train", str(config), "-o", str(run_folder), *options)
    return {**json.loads((run_folder / "metrics.json").read_text()), "wall_s": round(wall, 1)}


def trials_to_reproduce(front: pd.DataFrame, knee: int, count: int) -> list[int]:
    """The knee, the smallest and the most accurate front trial, then the rest of the front by size."""
    ordered = [knee, int(front.iloc[0]["trial"]), int(front.loc[front["val_accuracy"].idxmax(), "trial"]),
               *front["trial"].astype(int)]
    return list(dict.fromkeys(ordered))[:count]


def reproduction_row(study: optuna.Study, number: int, metrics: dict, config_path: Path) -> dict:
    trial = study.trials[number]
    config = load_train_config(config_path)
    difference = round(100 * (metrics["seeds"][0]["val_accuracy"] - trial.values[0]), 3)
    return {"trial": number, "params": trial.user_attrs["params"], "student": config.student,
            "seed": config.seed, "epochs": config.schedule.epochs,
            "seed_and_epochs_match_trial": (config.seed == trial.user_attrs["seed"]
                                            and config.schedule.epochs == trial.user_attrs["epochs_trained"]),
            "val_accuracy_trial": round(100 * trial.values[0], 3),
            "val_accuracy_train": round(100 * metrics["seeds"][0]["val_accuracy"], 3),
            "difference_pt": difference, "within_tolerance": abs(difference) <= REPRODUCTION_TOLERANCE_PT,
            "test_accuracy_train": round(100 * metrics["seeds"][0]["test_accuracy"], 3),
            "train_wall_s": metrics["wall_s"]}


def same_training(first: Path, second: Path) -> bool:
    """Two exported configs train the same student the same way (names and export times aside)."""
    documents = [load_train_config(path).model_dump(exclude={"name", "provenance"}) for path in (first, second)]
    return documents[0] == documents[1]


def knee_figures(trial_run: dict, longer_run: dict, epochs: int) -> dict:
    tests = {label: [s["test_accuracy"] for s in run["seeds"]]
             for label, run in (("trial", trial_run), ("longer", longer_run))}
    return {"epochs_search": epochs, "epochs_production": epochs * EPOCH_FACTOR,
            "seeds": [s["seed"] for s in longer_run["seeds"]],
            "test_accuracy_trial": round(100 * tests["trial"][0], 3),
            "test_accuracy_production": round(100 * tests["longer"][0], 3),
            "gain_pt": round(100 * (tests["longer"][0] - tests["trial"][0]), 3),
            "test_accuracy_trial_seeds": mean_std(tests["trial"]),
            "test_accuracy_production_seeds": mean_std(tests["longer"]),
            "val_accuracy_production": round(100 * longer_run["seeds"][0]["val_accuracy"], 3),
            "production_train_wall_s": longer_run["wall_s"]}


def resolve_study(args: argparse.Namespace) -> tuple[str, str]:
    """(study name, storage URL): the given study, or the bench study (searched now if it does not exist)."""
    if args.storage:
        return args.study, args.storage
    spec = study_spec(QUICK if args.quick else FULL)
    if not Path(spec.storage.removeprefix("sqlite:///")).is_file():
        print(f"no study {spec.name!r} yet: searching it (benchmarks/fashion_study.py"
              f"{' --quick' if args.quick else ''})", flush=True)
        run_search(spec)
    return spec.name, spec.storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick bench study, 2 trials, 1 seed")
    parser.add_argument("--study", help="a study name (with --storage) instead of the bench study")
    parser.add_argument("--storage", help="the study's storage URL (with --study)")
    parser.add_argument("--trials", type=int, default=None, help="trials to reproduce (default 3)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for the knee runs (default 3)")
    args = parser.parse_args()
    if bool(args.study) != bool(args.storage):
        parser.error("--study and --storage go together")
    trial_count = args.trials or (2 if args.quick else 3)
    seeds = args.seeds or (1 if args.quick else 3)

    name, storage = resolve_study(args)
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    folder = BENCH_FOLDER / "production_train" / name
    knee_config = folder / "knee.yaml"
    knee = export(name, storage, knee_config, "--knee")
    front = front_frame(trials_frame(study))

    reproduced, knee_trial_run = [], None
    for number in trials_to_reproduce(front, knee, trial_count):
        config = folder / f"trial{number}.yaml"
        export(name, storage, config, "--trial", str(number))
        options = ("--seeds", str(seeds)) if number == knee else ()
        metrics = train(config, folder / "runs" / f"trial{number}", *options)
        reproduced.append(reproduction_row(study, number, metrics, config))
        knee_trial_run = metrics if number == knee else knee_trial_run
    epochs = load_train_config(knee_config).schedule.epochs
    longer_run = train(knee_config, folder / "runs" / f"knee-{EPOCH_FACTOR}x", "--epochs",
                       str(epochs * EPOCH_FACTOR), "--seeds", str(seeds))
    knee_result = {"trial": knee, "same_config_as_trial_export": same_training(knee_config,
                                                                                folder / f"trial{knee}.yaml"),
                   **knee_figures(knee_trial_run, longer_run, epochs)}

    worst = max(abs(row["difference_pt"]) for row in reproduced)
    figures = {"reproduction": reproduced, "max_abs_val_difference_pt": worst, "knee": knee_result}
    targets = {"reproduction": f"|val(train) - val(trial)| <= {REPRODUCTION_TOLERANCE_PT} pt for every trial",
               "knee_longer_training": f"test accuracy at {EPOCH_FACTOR}x epochs (trial's seed) > the trial's"}
    met = {"reproduction": worst <= REPRODUCTION_TOLERANCE_PT, "knee_longer_training": knee_result["gain_pt"] > 0}
    note = (f"Study {name!r}: {len(reproduced)} trials exported and retrained with `autokd train` (the trial's "
            f"epochs and seed, {torch.get_num_threads()} torch threads instead of the trial's 1): largest val "
            f"difference {worst:.2f} pt. Knee trial {knee} ({knee_result['epochs_search']} -> "
            f"{knee_result['epochs_production']} epochs): test {knee_result['test_accuracy_trial']:.2f} -> "
            f"{knee_result['test_accuracy_production']:.2f} % with the trial's seed "
            f"({knee_result['gain_pt']:+.2f} pt); "
            f"{seeds}-seed means {knee_result['test_accuracy_trial_seeds']['mean']:.2f} -> "
            f"{knee_result['test_accuracy_production_seeds']['mean']:.2f} %.")
    print(note)
    write_result("production_train", {
        "quick": args.quick, "figures": figures, "targets": targets, "met": met, "note": note,
        "settings": {"study": name, "storage": storage, "trials_reproduced": trial_count, "knee_seeds": seeds,
                     "epoch_factor": EPOCH_FACTOR, "torch_threads": torch.get_num_threads(),
                     "output_folder": str(folder)}})


if __name__ == "__main__":
    sys.exit(main())
