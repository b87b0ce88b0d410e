"""A trial on a Ray worker: train its config on its seeds and report to Tune.

A one-seed trial (flat search, level 1) reports every epoch when the study stops trials early
(a scheduler reads each epoch), else once at its end with the whole curve: each result is a round
trip through Tune's driver, which shares the cores with the trials.
A paired trial (level 2: seeds shared with its architecture's baselines) trains its seeds, packed
into one batched model when the student allows (`runner.run_seeds`), and reports once: the mean
and the per-seed accuracies; it is never stopped early. When the config asks (`quantize.int8`), the
trained student is quantised and `val_accuracy_int8` joins the last report (a paired trial: the mean
over its seeds, trained one by one to keep their students). Any exception becomes the trial's
`failure_reason`: the search records it and goes on.

The study's data and teacher outputs reach a worker through Ray's object store as references
(`run_stored_trial`), fetched once per worker process: Tune's `with_parameters` alone would
`ray.get` them, i.e. deserialise a fresh copy, for every trial (175 ms a trial for Fashion-MNIST:
`benchmarks/study_fetch.py`). Trials only read them.
"""

from __future__ import annotations

import os
import socket
import time

from autokd import quantize, runner
from autokd.archs import allow_code
from autokd.distill import resolve_device
from autokd.spec import TrainConfig
from autokd.torch_state import torch_threads


_fetched: dict[tuple[str, ...], tuple] = {}  # {object ids: objects}: the latest study's, one per process


def run_stored_trial(trial: dict, study_refs: tuple) -> None:
    """The Tune trainable: `run_trial` on the study's (data, outputs), given as Ray object references."""
    import ray

    key = tuple(ref.hex() for ref in study_refs)
    if key not in _fetched:
        _fetched.clear()  # a reused worker process keeps one study's arrays, not every study's
        _fetched[key] = tuple(ray.get(list(study_refs)))
    run_trial(trial, *_fetched[key])


def run_trial(trial: dict, data, outputs) -> None:
    """`trial`: {"config", "trial_number", "size", "seeds", "pack", "allow_code", "report_every_epoch"};
    `data`, `outputs`: the study's (Ray object store)."""
    import ray
    from ray import tune

    if trial.get("allow_code"):  # the driver's opt-in (--allow-code) reaches a worker Ray started before it
        allow_code()
    config = TrainConfig.model_validate(trial["config"])
    seeds = trial.get("seeds") or [config.seed]
    epochs = config.schedule.epochs
    int8 = config.quantize.int8
    # What Ray left visible to this trial: "" when it reserved no GPU (see ray_cluster.py).
    # node: the host's name for people; node_id: Ray's (two nodes of one host share a name).
    report = {**trial["size"], "epochs": epochs, "node": socket.gethostname(),
              "node_id": ray.get_runtime_context().get_node_id(),
              "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    started = time.perf_counter()
    trained = {"epochs": 0}
    last: dict = {}  # the latest epoch's report
    curve: list[float] = []
    every_epoch = trial.get("report_every_epoch", True)
    try:
        device = resolve_device(config.device)
        report["device"] = str(device)
        threads = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))

        def on_epoch(epoch) -> None:
            trained["epochs"] = epoch.epoch
            curve.append(epoch.val_accuracy)
            last.update({**report, "val_accuracy": epoch.val_accuracy, "epoch": epoch.epoch,
                         "epochs_trained": epoch.epoch, "train_loss": epoch.train_loss,
                         "train_seconds": time.perf_counter() - started})
            if epoch.epoch == epochs:
                last["val_accuracy_curve"] = list(curve)
                if not int8:  # the last epoch's report waits for the int8 accuracy
                    tune.report(dict(last))
            elif every_epoch:
                tune.report(dict(last))

        def int8_accuracy(students) -> dict:
            with torch_threads(threads):
                accuracies = [quantize.int8_val_accuracy(student, data, config.quantize.calibration_samples)
                              for student in students]
            return {"val_accuracy_int8": sum(accuracies) / len(accuracies)}

        if len(seeds) == 1:
            student, _ = runner.run_config(config, data, outputs, seed=seeds[0], threads=threads, device=device,
                                           on_epoch=on_epoch)
            if int8:
                tune.report({**last, **int8_accuracy([student]), "train_seconds": time.perf_counter() - started})
        else:
            students = []
            if int8:  # one run per seed, the same runs as packed ones (`packing`), to keep the students
                students, fitted = zip(*(runner.run_config(config, data, outputs, seed=seed, threads=threads,
                                                           device=device) for seed in seeds))
            else:
                fitted = runner.run_seeds(config, data, outputs, seeds, threads=threads, device=device,
                                          pack=trial.get("pack", True))
            accuracies = [result.val_accuracy for result in fitted]
            tune.report({**report, "val_accuracy": sum(accuracies) / len(accuracies),
                         "val_accuracy_seeds": accuracies, "epoch": epochs, "epochs_trained": len(seeds) * epochs,
                         **(int8_accuracy(students) if int8 else {}),
                         "train_seconds": time.perf_counter() - started})
    except Exception as error:  # the reason goes to the study; the search goes on
        message = str(error).splitlines()[0] if str(error) else ""
        tune.report({**report, "failure_reason": f"{type(error).__name__}: {message}"[:500],
                     "epochs_trained": trained["epochs"], "val_accuracy_curve": list(curve),
                     "train_seconds": time.perf_counter() - started})
