"""autokd.trial: what a trial on a Ray worker reports to Tune, with Tune's report and context stood in for.

A Tune result is a round trip through the driver, so a trial reports every epoch only when a
scheduler reads them (early stopping on); otherwise once, at its end, with the whole curve.
"""

from types import SimpleNamespace

import pytest
import ray
from ray import tune

from autokd.config_files import load_study
from autokd.data import load_data
from autokd.trial import run_trial
from conftest import tiny_study

EPOCHS = 3


@pytest.fixture
def ce_trial(tmp_path):
    """A one-seed CE-only trial of the tiny study (no teacher to train), as the searcher sends it."""
    spec = load_study(tiny_study(tmp_path, epochs=EPOCHS))
    config = spec.train_config()
    config.distill.w_kd, config.distill.w_ce = 0.0, 1.0
    trial = {"config": config.model_dump(), "trial_number": 0, "size": {"params": 1}, "seeds": [4]}
    return trial, load_data(spec.data, spec.source)


def reports(monkeypatch, trial, data) -> list[dict]:
    sent = []
    monkeypatch.setattr(tune, "report", sent.append)
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(
        get_trial_resources=lambda: SimpleNamespace(required_resources={"CPU": 1})))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    run_trial(trial, data, None)
    return sent


def test_a_trial_reports_once_at_its_end_with_the_whole_curve_unless_asked_for_every_epoch(monkeypatch, ce_trial):
    trial, data = ce_trial
    every = reports(monkeypatch, {**trial, "report_every_epoch": True}, data)
    once = reports(monkeypatch, {**trial, "report_every_epoch": False}, data)

    assert [r["epoch"] for r in every] == [1, 2, 3]
    assert ["val_accuracy_curve" in r for r in every] == [False, False, True]  # the curve comes with the last
    assert len(once) == 1 and once[0]["epoch"] == once[0]["epochs_trained"] == EPOCHS
    # the same seed trains the same student either way: the one report is the last of the per-epoch ones
    assert once[0]["val_accuracy_curve"] == [r["val_accuracy"] for r in every]
    assert once[0]["val_accuracy"] == every[-1]["val_accuracy"] == once[0]["val_accuracy_curve"][-1]
    assert len(set(once[0]["val_accuracy_curve"])) > 1  # a real curve, not one value repeated
    assert reports(monkeypatch, trial, data)[0]["epoch"] == 1  # a dict without the key: every epoch, as before


def test_a_failing_trial_reports_its_reason_and_the_curve_so_far(monkeypatch, ce_trial):
    from autokd import runner

    trained = runner.run_config

    def failing_in_epoch_2(*args, on_epoch, **kwargs):
        def then_fail(epoch):
            on_epoch(epoch)
            if epoch.epoch == 2:
                raise OSError("disk full\nmore detail")
        return trained(*args, on_epoch=then_fail, **kwargs)

    monkeypatch.setattr(runner, "run_config", failing_in_epoch_2)
    trial, data = ce_trial
    sent = reports(monkeypatch, {**trial, "report_every_epoch": False}, data)
    assert len(sent) == 1
    assert sent[0]["failure_reason"] == "OSError: disk full"
    assert len(sent[0]["val_accuracy_curve"]) == sent[0]["epochs_trained"] == 2


def test_a_worker_fetches_the_study_arrays_once_not_per_trial(monkeypatch, ce_trial):
    """run_stored_trial: the object store is read once per worker process and study, not once per trial."""
    from autokd import trial as trial_module

    class Ref:  # stands in for ray.ObjectRef: an id and what ray.get returns for it
        def __init__(self, object_id, value):
            self.object_id, self.value = object_id, value

        def hex(self):
            return self.object_id

    fetched, ran = [], []
    monkeypatch.setattr(ray, "get", lambda refs: fetched.append([r.object_id for r in refs]) or [r.value for r in refs])
    monkeypatch.setattr(trial_module, "run_trial", lambda trial, data, outputs: ran.append((data, outputs)))
    monkeypatch.setattr(trial_module, "_fetched", {})
    trial, data = ce_trial
    study_refs = (Ref("data-1", data), Ref("outputs-1", None))
    trial_module.run_stored_trial(trial, study_refs)
    trial_module.run_stored_trial(trial, study_refs)
    assert fetched == [["data-1", "outputs-1"]]
    assert len(ran) == 2 and all(d is data and o is None for d, o in ran)  # the same objects, not copies

    trial_module.run_stored_trial(trial, (Ref("data-2", data), Ref("outputs-2", None)))  # the next study
    assert fetched[-1] == ["data-2", "outputs-2"]
    assert list(trial_module._fetched) == [("data-2", "outputs-2")]  # the old study's arrays are let go
