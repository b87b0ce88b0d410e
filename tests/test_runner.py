"""One runner trains every config: a search trial and `autokd train` of its export are the same run."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from autokd.config_files import load_study
from autokd.data import load_data
from autokd.runner import config_targets, run_config, run_seeds
from autokd.spec import TrainConfig
from autokd.teacher_outputs import teacher_outputs
from autokd.teachers import prepare_teachers
from conftest import run_cli, tiny_study


def test_a_config_without_distillation_gets_no_teacher_targets(tmp_path):
    spec = load_study(tiny_study(tmp_path))
    config = spec.train_config()
    config.distill.w_kd, config.distill.w_ce = 0.0, 1.0
    assert config_targets(config, object()) is None


def test_paired_seeds_train_packed_or_one_by_one_to_the_same_accuracies(tmp_path):
    spec = load_study(tiny_study(tmp_path, epochs=2))
    data = load_data(spec.data, spec.source)
    outputs = teacher_outputs(prepare_teachers(spec.teachers, data, spec.cache_dir,
                                               progress=False), data)
    config = spec.train_config()
    config.threads = 1
    packed = run_seeds(config, data, outputs, [5, 6, 7], pack=True)
    one_by_one = run_seeds(config, data, outputs, [5, 6, 7], pack=False)
    assert [r.val_accuracy for r in packed] == [r.val_accuracy for r in one_by_one]
    assert len({r.val_accuracy for r in one_by_one}) > 1  # the seeds really differ


def test_configs_trained_in_threads_at_once_equal_the_same_trained_one_by_one(tmp_path):
    """In-process Optuna with `n_jobs=2` runs trials in threads that share torch's RNG: the student's initial
    weights and the loss's feature projection must still come from each config's seed alone."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    spec = load_study(tiny_study(tmp_path, epochs=1))
    data = load_data(spec.data, spec.source)
    outputs = teacher_outputs(prepare_teachers(spec.teachers, data, spec.cache_dir, progress=False), data)
    config = spec.train_config()
    config.threads = 1
    config.distill.w_feat = 0.5  # the loss gets parameters of its own, drawn in `fit`
    seeds = list(range(8))

    def weights(seed: int) -> dict:
        student, result = run_config(config, data, outputs, seed=seed)
        return {"val_accuracy": result.val_accuracy, **student.state_dict()}

    one_by_one = [weights(seed) for seed in seeds]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can, so that a race shows
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            at_once = list(pool.map(weights, seeds))
    finally:
        sys.setswitchinterval(interval)
    assert [w["val_accuracy"] for w in at_once] == [w["val_accuracy"] for w in one_by_one]
    for threaded, serial in zip(at_once, one_by_one):
        assert all(torch.equal(threaded[key], serial[key]) for key in serial if key != "val_accuracy")


@pytest.mark.slow
def test_a_search_trial_and_autokd_train_of_its_export_are_bit_identical(tmp_path, ray_head):
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=2, epochs=2)
    run_cli("search", study_file, "--no-report", "--no-progress", env=ray_head, check=True)
    spec = load_study(study_file)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url())
    trial = study.trials[0]
    run_cli("export", study_file, "--trial", "0", "-o", tmp_path / "best.yaml", check=True)
    run_cli("train", tmp_path / "best.yaml", "--out", tmp_path / "run", check=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["seeds"][0]["seed"] == trial.user_attrs["seed"]
    assert metrics["val_accuracy"] == trial.values[0]  # exactly: same seed, threads, batches, targets

    # The weights too: the trial's config re-run through the runner (as the trial ran it) equals the run folder.
    config = TrainConfig.model_validate(trial.user_attrs["config"])
    assert config.threads == 1
    data = load_data(spec.data, spec.source)
    outputs = teacher_outputs(prepare_teachers(spec.teachers, data, spec.cache_dir,
                                               progress=False), data)
    student, _ = run_config(config, data, outputs, seed=config.seed)
    saved = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
