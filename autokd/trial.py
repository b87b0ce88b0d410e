"""A trial on a Ray worker: train its config on its seeds and report to Tune.

A one-seed trial (flat search, level 1) reports every epoch, so schedulers can stop it early.
A paired trial (level 2: seeds shared with its architecture's baselines) trains its seeds, packed
into one batched model when the student allows (`runner.run_seeds`), and reports once: the mean
and the per-seed accuracies; it is never stopped early. Any exception becomes the trial's
`failure_reason`: the search records it and goes on.
"""

from __future__ import annotations

import os
import socket
import time

from autokd import runner
from autokd.distill import resolve_device
from autokd.spec import TrainConfig


def run_trial(trial: dict, data, outputs) -> None:
    """`trial`: {"config", "trial_number", "size", "seeds"}; `data`, `outputs`: the study's (Ray object store)."""
    import ray
    from ray import tune

    config = TrainConfig.model_validate(trial["config"])
    seeds = trial.get("seeds") or [config.seed]
    epochs = config.schedule.epochs
    # What Ray left visible to this trial: "" when it reserved no GPU (see ray_cluster.py).
    # node: the host's name for people; node_id: Ray's (two nodes of one host share a name).
    report = {**trial["size"], "epochs": epochs, "node": socket.gethostname(),
              "node_id": ray.get_runtime_context().get_node_id(),
              "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    started = time.perf_counter()
    trained = {"epochs": 0}
    try:
        device = resolve_device(config.device)
        report["device"] = str(device)
        threads = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))

        def on_epoch(epoch) -> None:
            trained["epochs"] = epoch.epoch
            tune.report({**report, "val_accuracy": epoch.val_accuracy, "epoch": epoch.epoch,
                         "epochs_trained": epoch.epoch, "train_loss": epoch.train_loss,
                         "train_seconds": time.perf_counter() - started})

        if len(seeds) == 1:
            runner.run_config(config, data, outputs, seed=seeds[0], threads=threads, device=device,
                              on_epoch=on_epoch)
        else:
            fitted = runner.run_seeds(config, data, outputs, seeds, threads=threads, device=device,
                                      pack=trial.get("pack", True))
            accuracies = [result.val_accuracy for result in fitted]
            tune.report({**report, "val_accuracy": sum(accuracies) / len(accuracies),
                         "val_accuracy_seeds": accuracies, "epoch": epochs, "epochs_trained": len(seeds) * epochs,
                         "train_seconds": time.perf_counter() - started})
    except Exception as error:  # the reason goes to the study; the search goes on
        message = str(error).splitlines()[0] if str(error) else ""
        tune.report({**report, "failure_reason": f"{type(error).__name__}: {message}"[:500],
                     "epochs_trained": trained["epochs"],
                     "train_seconds": time.perf_counter() - started})
