"""The int8 front against the fp32 front (issue 15 item 5): what post-training quantisation costs and saves.

One digits search (studies/digits.yaml's teachers and kd_full space: mlp, cnn and resnet students,
the distillation settings; flat, `quantize: {int8: true}`) records for every trial its fp32 val
accuracy and the accuracy of the same trained student quantised to int8 (`autokd.quantize`: mlp
dynamic, cnn/resnet static with calibration). Two fronts come from the same trials:

- fp32: (val_accuracy, bytes_fp32);
- int8: (val_accuracy_int8, bytes_int8).

Search on validation: the fronts are chosen on val. Each front point's config is then trained again
with its trial's seed (bit-identical on CPU), and its test accuracy measured in fp32 and in int8.
Figures: each front's points (bytes, val and test accuracy in both precisions), the hypervolume of
each front in (accuracy, log10 bytes) against the reference (0, log10 of the fp32 bytes constraint),
on val and on test, and the smallest student of each front whose test accuracy is within 1 pt of the
best fp32 test accuracy (its bytes: how much smaller int8 gets for the same accuracy).

    python benchmarks/int8_front.py            # 40 trials (~5 min on 2 cores)
    python benchmarks/int8_front.py --quick    # 8 trials, a smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from common import REPO, write_result  # noqa: E402  (common puts the repo on sys.path)

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from autokd.config_files import load_study  # noqa: E402
from autokd.data import load_data  # noqa: E402
from autokd.distill import evaluate  # noqa: E402
from autokd.pareto import hypervolume, pareto_front_mask  # noqa: E402
from autokd.paths import resolve_paths  # noqa: E402
from autokd.quantize import evaluate_int8, quantize_student  # noqa: E402
from autokd.results import trials_frame  # noqa: E402
from autokd.runner import run_config  # noqa: E402
from autokd.search import search  # noqa: E402
from autokd.spec import StudySpec, TrainConfig  # noqa: E402
from autokd.teacher_outputs import teacher_outputs  # noqa: E402
from autokd.teachers import prepare_teachers  # noqa: E402

BYTES_LIMIT = 200_000  # fp32 bytes: 50,000 parameters, studies/digits.yaml's constraint
WITHIN_PT = 1.0
FRONTS = {"fp32": ("val_accuracy", "bytes_fp32"), "int8": ("val_accuracy_int8", "bytes_int8")}


def study_spec(folder: Path, trials: int, epochs: int) -> StudySpec:
    digits = load_study(REPO / "studies" / "digits.yaml")
    document = digits.model_dump(mode="json")
    document.update({
        "name": "int8_front", "objectives": ["val_accuracy", "bytes_fp32"],
        "constraints": [f"bytes_fp32 <= {BYTES_LIMIT}"],
        "budget": {"trials": trials}, "search": {"mode": "flat"}, "quantize": {"int8": True},
        "schedule": {**document["schedule"], "epochs": epochs},
        "storage": f"sqlite:///{folder / 'int8_front.db'}", "source": str(folder / "int8_front.yaml")})
    return StudySpec.model_validate(document)


def front_rows(frame, accuracy: str, size: str) -> list[dict]:
    complete = frame[(frame["state"] == "COMPLETE") & frame[accuracy].notna() & frame[size].notna()]
    values = complete[[accuracy, size]].to_numpy(float)
    on_front = complete[pareto_front_mask(values, ["maximize", "minimize"])].sort_values(size)
    return [{"trial": int(row.trial), "bytes": int(getattr(row, size)), "val_accuracy": float(getattr(row, accuracy))}
            for row in on_front.itertuples()]


def test_accuracies(spec: StudySpec, study: optuna.Study, numbers: set[int]) -> dict[int, dict]:
    """Each trial's config trained again on its seed; test accuracy in fp32 and int8."""
    data = load_data(spec.data, spec.source)
    outputs = teacher_outputs(prepare_teachers(spec.teachers, data, spec.cache_dir, log=print), data)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    measured = {}
    for number in sorted(numbers):
        config = resolve_paths(TrainConfig.model_validate(trials[number].user_attrs["config"]), spec.folder)
        student, result = run_config(config, data, outputs, seed=config.seed, threads=1)
        quantized = quantize_student(student, data.x_train[:config.quantize.calibration_samples])
        measured[number] = {"val_fp32_rerun": result.val_accuracy,
                            "test_fp32": evaluate(student, data.x_test, data.y_test),
                            "test_int8": evaluate_int8(quantized, data.x_test, data.y_test)}
    return measured


def front_hypervolume(points: list[tuple[float, int]]) -> float:
    if not points:
        return 0.0
    values = np.array([[accuracy, np.log10(max(size, 1))] for accuracy, size in points])
    return round(float(hypervolume(values, ["maximize", "minimize"], [0.0, np.log10(BYTES_LIMIT)])), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 trials of 5 epochs: a smoke run")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    trials, epochs = (8, 5) if args.quick else (args.trials, args.epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="autokd-int8-front-") as tmp:
        spec = study_spec(Path(tmp), trials, epochs)
        result = search(spec, progress=False, log=lambda message: None)
        import ray

        ray.shutdown()
        frame = trials_frame(result.study)
        fronts = {name: front_rows(frame, *columns) for name, columns in FRONTS.items()}
        tests = test_accuracies(spec, result.study, {p["trial"] for rows in fronts.values() for p in rows})

    figures = {"trials": int(len(frame)), "complete": int((frame["state"] == "COMPLETE").sum())}
    reproduced = all(measured["val_fp32_rerun"] == frame.loc[frame["trial"] == number, "val_accuracy"].item()
                     for number, measured in tests.items())
    precision = {"fp32": "test_fp32", "int8": "test_int8"}
    best_fp32_test = max(tests[p["trial"]]["test_fp32"] for p in fronts["fp32"])
    for name, rows in fronts.items():
        for row in rows:
            row.update({k: round(v, 4) for k, v in tests[row["trial"]].items()})
            row["test_accuracy"] = row[precision[name]]
        within = [r for r in rows if 100 * (best_fp32_test - r["test_accuracy"]) <= WITHIN_PT]
        figures[name] = {
            "front_size": len(rows), "front": rows,
            "hypervolume_val": front_hypervolume([(r["val_accuracy"], r["bytes"]) for r in rows]),
            "hypervolume_test": front_hypervolume([(r["test_accuracy"], r["bytes"]) for r in rows]),
            "smallest_within_1pt_of_best_fp32_test": min(within, key=lambda r: r["bytes"]) if within else None}
    small = {name: figures[name]["smallest_within_1pt_of_best_fp32_test"] for name in FRONTS}
    ratio = small["fp32"]["bytes"] / small["int8"]["bytes"] if small["fp32"] and small["int8"] else None
    figures["bytes_ratio_fp32_over_int8_within_1pt"] = round(ratio, 2) if ratio else None
    drops = [100 * (r["test_fp32"] - r["test_int8"]) for r in figures["fp32"]["front"]]
    figures["fp32_front_int8_drop_pt_max"] = round(max(drops), 2)
    note = (f"digits, {trials} trials x {epochs} epochs (flat, kd_full space, bytes_fp32 <= {BYTES_LIMIT}); "
            f"fp32 front {figures['fp32']['front_size']} points, HV test {figures['fp32']['hypervolume_test']}; "
            f"int8 front {figures['int8']['front_size']} points, HV test {figures['int8']['hypervolume_test']}. "
            f"Smallest within {WITHIN_PT} pt of the best fp32 test accuracy ({100 * best_fp32_test:.2f} %): fp32 "
            f"{small['fp32']['bytes'] if small['fp32'] else '—'} bytes, int8 "
            f"{small['int8']['bytes'] if small['int8'] else '—'} bytes. Quantising the fp32 front loses at most "
            f"{figures['fp32_front_int8_drop_pt_max']:.2f} pt of test accuracy. Re-runs reproduced the search's "
            f"val accuracy: {'every point' if reproduced else 'NOT every point'}.")
    print(note)
    write_result("int8_front" + ("_quick" if args.quick else ""), {
        "quick": args.quick, "figures": figures, "note": note, "reproduced_val": reproduced,
        "settings": {"trials": trials, "epochs": epochs, "constraint": f"bytes_fp32 <= {BYTES_LIMIT}",
                     "within_pt": WITHIN_PT, "space": "search_spaces/kd_full.yaml"}})


if __name__ == "__main__":
    sys.exit(main())
