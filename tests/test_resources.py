"""Fractional resources on CPU: a custom Ray resource stands in for a GPU shared by trials.

`resources: {custom: {fake_gpu: 0.5}, concurrency: 2}` makes `ray_cluster.init_ray` create
0.5 x 2 = 1 `fake_gpu` on the private cluster; two trials each holding half of it must then
really train at the same time, and each trial must record that it ran on the CPU (its `device`
user attr, the device its worker resolved).

When a trial really ran: from its completion time back by its `train_seconds` (measured in the
worker). Optuna's own `datetime_start` is set when the driver *proposes* the trial, which can be
long before Ray has the resources to start it, so overlapping [datetime_start, datetime_complete]
alone would not prove concurrency.
"""

from __future__ import annotations

import datetime as dt

import optuna
import pytest

from conftest import tiny_study

States = optuna.trial.TrialState
FAKE_GPU = "fake_gpu"


def run_interval(trial: optuna.trial.FrozenTrial) -> tuple[dt.datetime, dt.datetime]:
    """When the trial trained: its completion time minus the training time its worker measured."""
    seconds = trial.user_attrs["train_seconds"]
    return trial.datetime_complete - dt.timedelta(seconds=seconds), trial.datetime_complete


def overlap_seconds(a: tuple[dt.datetime, dt.datetime], b: tuple[dt.datetime, dt.datetime]) -> float:
    return max(0.0, (min(a[1], b[1]) - max(a[0], b[0])).total_seconds())


@pytest.mark.slow
@pytest.mark.serial  # two actors must train at once: beside another test, one may start too late
def test_two_trials_share_one_fake_gpu_and_train_at_the_same_time(tmp_path):
    import ray

    import autokd

    study_file = tiny_study(tmp_path, cached_teachers=True, trials=2, epochs=25,
                            teachers=[{"name": "t-mlp", "arch": {"family": "mlp", "depth": 1, "width": 32},
                                       "schedule": {"epochs": 2}}],
                            student={"family": "mlp", "depth": 1, "width": 16},
                            search_space={"params": {"distill.w_kd": {"type": "float", "low": 0.1, "high": 1.0}}},
                            resources={"cpus_per_trial": 1, "concurrency": 2, "custom": {FAKE_GPU: 0.5}})
    if ray.is_initialized():  # init_ray creates the custom resource only when it starts Ray itself
        ray.shutdown()
    try:
        result = autokd.search(study_file, progress=False, log=lambda message: None)
        assert ray.cluster_resources().get(FAKE_GPU) == pytest.approx(1.0)
        complete = [t for t in result.study.get_trials() if t.state == States.COMPLETE]
        assert len(complete) == 2, [(t.number, t.state.name, t.user_attrs.get("failure_reason")) for t in
                                    result.study.get_trials()]

        first, second = complete
        proposed_together = overlap_seconds((first.datetime_start, first.datetime_complete),
                                            (second.datetime_start, second.datetime_complete))
        trained_together = overlap_seconds(run_interval(first), run_interval(second))
        shorter = min(first.user_attrs["train_seconds"], second.user_attrs["train_seconds"])
        assert proposed_together > 0
        assert trained_together >= 0.5 * shorter, (
            f"trials 0 and 1 trained together for {trained_together:.2f} s of {shorter:.2f} s: "
            "the fractional fake_gpu did not let them run at the same time")

        devices = {trial.number: trial.user_attrs.get("device") for trial in complete}
        assert all(device == "cpu" for device in devices.values()), f"device per trial: {devices}"
    finally:
        ray.shutdown()
