"""Unlabeled data (`data.unlabeled`): KD and feature terms learn from the labeled + unlabeled pool, CE never
from an unlabeled sample; teachers trained here see the labeled split only; bad files are one line, exit 2."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from autokd import distill as distill_module
from autokd import levels, packing
from autokd.config_files import train_config_from_dict
from autokd.data import load_data
from autokd.errors import CheckpointError, DataError
from autokd.evaluation import baseline_config
from autokd.runner import run_config, run_seeds
from autokd.spec import DataSpec, TrainConfig
from autokd.teacher_files import read_outputs_file
from autokd.teacher_outputs import CachedTeacherOutputs, teacher_outputs
from autokd.teachers import Teacher, prepare_teachers, teacher_key
from conftest import cache_teachers, load_tiny, run_cli

KEEP = 300
TEACHERS = [{"name": "a", "arch": {"family": "mlp", "depth": 1, "width": 32}},
            {"name": "b", "arch": {"family": "mlp", "depth": 1, "width": 24}}]


@pytest.fixture(scope="module")
def data():
    return load_data(DataSpec(name="digits", unlabeled={"keep_labels": KEEP}))


@pytest.fixture(scope="module")
def outputs(data):
    """Two fixed, imperfect teachers on every pool sample: the hidden labels' one-hot, blurred by noise."""
    labels = torch.cat([data.y_train, data.y_unlabeled])
    generator = torch.Generator().manual_seed(0)
    logits = [3.0 * torch.nn.functional.one_hot(labels, 10) + 1.5 * torch.randn(len(labels), 10, generator=generator)
              for _ in TEACHERS]
    return CachedTeacherOutputs([t["name"] for t in TEACHERS], torch.stack(logits), [torch.zeros(len(labels), 0)] * 2)


def config(**distill) -> TrainConfig:
    return train_config_from_dict({
        "data": {"name": "digits", "unlabeled": {"keep_labels": KEEP}}, "teachers": TEACHERS,
        "student": {"family": "mlp", "depth": 1, "width": 16}, "schedule": {"epochs": 2, "batch_size": 64},
        "device": "cpu", "threads": 1, "distill": {"w_ce": 0.5, "w_kd": 0.5, **distill}})


def weights(student) -> list[torch.Tensor]:
    return [t.detach().clone() for t in student.state_dict().values()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def labeled_rows(outputs: CachedTeacherOutputs) -> CachedTeacherOutputs:
    """The outputs of the labeled part only (the first KEEP pool rows)."""
    features = [f[:KEEP] for f in outputs.train_features]
    return CachedTeacherOutputs(outputs.names, outputs.train_logits[:, :KEEP], features)


def test_keep_labels_splits_the_training_split_stratified_and_validation_stays_as_without(data):
    plain = load_data(DataSpec(name="digits"))
    assert len(data.y_train) == KEEP and data.n_unlabeled == len(plain.y_train) - KEEP
    assert torch.equal(data.y_val, plain.y_val) and torch.equal(data.y_test, plain.y_test)  # same rows, labeled
    counts = torch.bincount(data.y_train, minlength=10)
    assert counts.max() - counts.min() <= 2  # stratified: digits' classes are about equal in size
    # the labeled and the unlabeled part are the training split, each sample once
    raw, plain_raw = (load_data(spec, normalize=False) for spec in (
        DataSpec(name="digits", unlabeled={"keep_labels": KEEP}), DataSpec(name="digits")))
    rows = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
    assert rows(raw.pool_inputs()) == rows(plain_raw.x_train)
    again = load_data(DataSpec(name="digits", unlabeled={"keep_labels": KEEP}))
    assert torch.equal(again.x_train, data.x_train)  # seeded by data.seed
    other = load_data(DataSpec(name="digits", seed=1, unlabeled={"keep_labels": KEEP}))
    assert not torch.equal(other.y_train, data.y_train)


@pytest.mark.parametrize("distill", [{}, {"kind": "dkd"}, {"aggregation": "confidence"}],
                         ids=["kl", "dkd", "confidence"])
def test_unlabeled_samples_never_enter_ce(data, outputs, distill, monkeypatch):
    """Garbage labels on the unlabeled rows (all class 0, or random) train exactly the weights the true ones do."""
    true_run = weights(run_config(config(**distill), data, outputs)[0])
    garbage = {"zeros": torch.zeros_like(data.y_unlabeled),
               "random": torch.randint(0, 10, data.y_unlabeled.shape, generator=torch.Generator().manual_seed(1))}
    for labels in garbage.values():
        assert (labels != data.y_unlabeled).float().mean() > 0.5
        run = weights(run_config(config(**distill), dataclasses.replace(data, y_unlabeled=labels), outputs)[0])
        assert same(run, true_run)

    # The test can tell: a loss that took every row as labeled would train other weights on garbage.
    forward = distill_module.DistillationLoss.forward
    monkeypatch.setattr(distill_module.DistillationLoss, "forward",
                        lambda self, *args, labeled=None, **kwargs: forward(self, *args, **kwargs))
    leaky = weights(run_config(config(**distill), dataclasses.replace(data, y_unlabeled=garbage["zeros"]), outputs)[0])
    assert not same(leaky, true_run)


def test_kd_learns_from_the_unlabeled_pool_and_ce_only_ignores_it(data, outputs):
    labeled_only = dataclasses.replace(data, x_unlabeled=None, y_unlabeled=None)
    first = labeled_rows(outputs)
    kd_pool = weights(run_config(config(), data, outputs)[0])
    kd_labeled = weights(run_config(config(), labeled_only, first)[0])
    assert not same(kd_pool, kd_labeled)
    ce = config(w_ce=1.0, w_kd=0.0)
    alone = weights(run_config(ce, labeled_only, None)[0])
    assert same(weights(run_config(ce, data, outputs)[0]), alone)
    # the CE-only baselines of the search and of the report's test runs are that run: the labeled part alone
    roles = [levels.role_config(role, config(), None) for role in (levels.CE, levels.ARCHITECTURE)]
    for baseline in (*roles, baseline_config(config(), "ce")):
        assert same(weights(run_config(baseline, data, outputs)[0]), alone)


def test_cached_outputs_shorter_than_the_pool_are_refused(data, outputs):
    first = labeled_rows(outputs)
    with pytest.raises(ValueError, match="pool"):
        run_config(config(), data, first)


def test_teachers_train_on_the_labeled_split_and_label_the_pool(data, tmp_path):
    spec = train_config_from_dict({"data": {"name": "digits", "unlabeled": {"keep_labels": KEEP}},
                                   "teachers": [{**TEACHERS[0], "schedule": {"epochs": 2}}]}).teachers
    teacher = prepare_teachers(spec, data, tmp_path)[0]
    labeled_only = dataclasses.replace(data, x_unlabeled=None, y_unlabeled=None)
    alone = prepare_teachers(spec, labeled_only, tmp_path / "alone")[0]
    assert same(weights(teacher.model), weights(alone.model))  # the unlabeled inputs never trained it
    cached = teacher_outputs([teacher], data)
    assert cached.train_logits.shape[1] == KEEP + data.n_unlabeled
    pool = data.pool_inputs()
    batch = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:64]
    logits, _ = cached.for_batch(batch, pool[batch], features=False)
    assert torch.allclose(logits[0], teacher.model(pool[batch]), atol=1e-5)
    # another labeled subset is another teacher
    other = load_data(DataSpec(name="digits", unlabeled={"keep_labels": KEEP + 1}))
    assert teacher_key(spec[0], other.fingerprint()) != teacher_key(spec[0], data.fingerprint())
    assert teacher_key(spec[0], labeled_only.fingerprint()) != teacher_key(spec[0], data.fingerprint())


def test_an_outputs_file_needs_rows_for_the_unlabeled_inputs(data, outputs, tmp_path):
    logits = outputs.train_logits[0].numpy()
    path = tmp_path / "outputs.npz"
    np.savez(path, train_logits=logits[:KEEP])
    with pytest.raises(CheckpointError, match="no unlabeled_logits"):
        read_outputs_file(path, data, "teachers.0.logits")
    features = np.arange(2 * len(logits), dtype=np.float32).reshape(-1, 2)
    np.savez(path, train_logits=logits[:KEEP], unlabeled_logits=logits[KEEP:], train_features=features[:KEEP])
    with pytest.raises(CheckpointError, match="no unlabeled_features"):
        read_outputs_file(path, data, "teachers.0.logits")
    np.savez(path, train_logits=logits[:KEEP], unlabeled_logits=logits[KEEP:], train_features=features[:KEEP],
             unlabeled_features=features[KEEP:])
    cached = teacher_outputs([Teacher("t", None, {"feature_dim": 2}, tmp_path, path)], data)
    assert torch.equal(cached.train_logits[0], outputs.train_logits[0])  # pool order: labeled, then unlabeled
    assert torch.equal(cached.train_features[0], torch.from_numpy(features))


def test_a_kd_config_with_unlabeled_data_trains_unpacked_and_ce_only_still_packs(data, outputs, monkeypatch):
    kd, ce = config(), config(w_ce=1.0, w_kd=0.0)
    assert packing.pack_key(kd) is None and packing.pack_key(ce) is not None
    separate = [weights(run_config(kd, data, outputs, seed=s)[0]) for s in (1, 2)]
    fitted = run_seeds(kd, data, outputs, [1, 2], pack=True)  # falls back to one run per seed
    assert [r.val_accuracy for r in fitted] == [run_config(kd, data, outputs, seed=s)[1].val_accuracy for s in (1, 2)]
    assert not same(*separate)
    with pytest.raises(ValueError, match="unlabeled"):
        packing.fit_packed([kd.model_copy(update={"data": DataSpec(name="digits")})] * 2, data, outputs, [1, 2])
    # CE-only packs, on the labeled split alone: the same pack as on data without the unlabeled inputs
    labeled_only = dataclasses.replace(data, x_unlabeled=None, y_unlabeled=None)
    runs, alone = (packing.fit_packed([ce, ce], d, outputs, [1, 2]) for d in (data, labeled_only))
    assert all(same(weights(a.student), weights(b.student)) for a, b in zip(runs, alone))


def test_keep_labels_out_of_range_or_both_forms_are_one_line():
    with pytest.raises(DataError, match=r"^<d>: data.unlabeled.keep_labels: must be < 1294 .*got 1294$"):
        load_data(DataSpec(name="digits", unlabeled={"keep_labels": 1294}), "<d>")
    for bad, expected in [({"keep_labels": 0}, "data.unlabeled.keep_labels: must be > 0"),
                          ({"keep_labels": 5, "file": "u.npz"}, "data.unlabeled: give exactly one of file"),
                          ({}, "got none"), ({"files": "u.npz"}, "data.unlabeled.files: unknown key")]:
        with pytest.raises(Exception, match=expected) as error:
            train_config_from_dict({"data": {"unlabeled": bad}})
        assert "\n" not in str(error.value)


def _train_config(folder, unlabeled) -> str:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "digits", "unlabeled": unlabeled},
                                    "student": {"family": "mlp", "depth": 1, "width": 8},
                                    "distill": {"w_ce": 1.0, "w_kd": 0.0},
                                    "schedule": {"epochs": 1}, "cache_dir": str(folder / "cache")}))
    return str(path)


BAD_FILES = {  # name -> (what to write, what the line says)
    "wrong shape": (lambda p: np.savez(p, x=np.zeros((5, 1, 7, 8))), "x has per-sample shape [1, 7, 8], the data's "
                                                                      "inputs are [1, 8, 8]"),
    "missing x": (lambda p: np.savez(p, inputs=np.zeros((5, 1, 8, 8))), "has no array 'x' (keys: ['inputs'])"),
    "not npz": (lambda p: p.write_bytes(b"not a zip file"), "cannot read as a .npz"),
    "not found": (None, "file not found"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_unlabeled_file_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    write, expected = BAD_FILES[case]
    if write is not None:
        write(tmp_path / "pool.npz")
    completed = run_cli("train", _train_config(tmp_path, {"file": "pool.npz"}), "--out", tmp_path / "run")
    line = completed.stderr.strip()
    assert completed.returncode == 2 and "\n" not in line and "Traceback" not in line, completed.stderr[-2000:]
    assert line.startswith(f"error: {tmp_path / 'config.yaml'}: data.unlabeled.file: {tmp_path / 'pool.npz'}")
    assert expected in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_keep_labels_out_of_range_through_the_cli(tmp_path):
    completed = run_cli("train", _train_config(tmp_path, {"keep_labels": 5000}), "--out", tmp_path / "run")
    assert completed.returncode == 2
    assert completed.stderr.strip() == (f"error: {tmp_path / 'config.yaml'}: data.unlabeled.keep_labels: must be "
                                        "< 1294 (the training split's samples, after val_fraction and train_subset), "
                                        "got 5000")


def test_an_unlabeled_file_trains_through_the_cli(tmp_path):
    plain = load_data(DataSpec(name="digits"), normalize=False)
    np.savez(tmp_path / "pool.npz", x=plain.x_test[:100, 0].numpy())  # [N, H, W]: a channel axis is added
    data = load_data(DataSpec(name="digits", unlabeled={"file": str(tmp_path / "pool.npz")}))
    assert data.n_unlabeled == 100 and data.y_unlabeled is None
    assert torch.allclose(data.x_unlabeled, plain.normalization.apply(plain.x_test[:100]))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"name": "digits", "unlabeled": {"file": "pool.npz"}}, "teachers": [{**TEACHERS[0],
                                                                                    "schedule": {"epochs": 1}}],
        "student": {"family": "mlp", "depth": 1, "width": 8}, "schedule": {"epochs": 1},
        "cache_dir": str(tmp_path / "cache")}))
    run_cli("train", path, "--out", tmp_path / "run", check=True)
    assert (tmp_path / "run" / "student.pt").is_file()


@pytest.mark.slow
def test_a_search_with_unlabeled_data_runs_end_to_end_through_the_cli(tmp_path, ray_head):
    document = {
        "name": "unlabeled", "data": {"name": "digits", "val_fraction": 0.15, "unlabeled": {"keep_labels": 200}},
        "teachers": [{**TEACHERS[0], "schedule": {"epochs": 3}}],
        "student": {"family": "mlp", "depth": 1, "width": 16}, "schedule": {"epochs": 2, "batch_size": 64},
        "search_space": {"params": {"distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
                                    "distill.w_kd": {"type": "float", "low": 0.0, "high": 1.0},
                                    "distill.w_ce": {"type": "float", "low": 0.1, "high": 1.0},
                                    "distill.kind": {"type": "categorical", "choices": ["kl", "dkd"]}}},
        "budget": {"trials": 3}, "cache_dir": str(tmp_path / "cache"), "resources": {"concurrency": 1}}
    study_file = tmp_path / "unlabeled.yaml"
    study_file.write_text(yaml.safe_dump(document, sort_keys=False))
    cache_teachers(study_file)
    run_cli("search", study_file, "--no-progress", "--no-report", env=ray_head, check=True, timeout=600)
    trials = load_tiny(tmp_path, "unlabeled").get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    run_cli("report", study_file, "--out", tmp_path / "report", check=True, timeout=600)  # test runs, baselines
    assert (tmp_path / "report" / "index.html").is_file()
    run_cli("export", study_file, "--knee", "-o", tmp_path / "best.yaml", check=True)
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["data"]["unlabeled"] == {"file": None, "keep_labels": 200}
    # production training of the export, with the teacher run online on augmented pool batches
    run_cli("train", tmp_path / "best.yaml", "--out", tmp_path / "run", "--augment", "shift", check=True)
    assert (tmp_path / "run" / "student.pt").is_file()
