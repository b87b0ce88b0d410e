"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): maps, the loss, the teachers' cache, training, refusals.

Numbers in the first tests are worked out by hand in the comments beside them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from autokd.config_files import train_config_from_dict
from autokd.data import load_data
from autokd.distill import fit
from autokd.errors import ConfigError
from autokd.runner import run_config
from autokd.torch_state import torch_threads
from autokd.losses import attention_map
from autokd.sizes import stage_sizes
from autokd.spec import DataSpec, DistillSpec, ScheduleSpec, TeacherSpec
from autokd.teacher_outputs import OnlineTeachers, attention_maps, check_attention, teacher_outputs
from autokd.teachers import prepare_teachers
from autokd.zoo import build_model
from conftest import load_tiny, run_cli

DATA = {"name": "digits", "val_fraction": 0.15}
CNN_TEACHER = {"family": "cnn", "stages": 2, "channels": 8, "head_width": 0}
RESNET_TEACHER = {"family": "resnet", "blocks": 2, "channels": 8}
STUDENT = {"family": "cnn", "stages": 2, "channels": 4, "head_width": 0}
SCHEDULE = ScheduleSpec(epochs=3, batch_size=64, lr=0.01)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on shared cores: one thread is several times faster than contended threads."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec(**DATA))


@pytest.fixture(scope="module")
def teachers(digits, tmp_path_factory):
    specs = [TeacherSpec(name="cnn", arch=CNN_TEACHER, schedule={"epochs": 6, "batch_size": 64, "lr": 0.01}),
             TeacherSpec(name="resnet", arch=RESNET_TEACHER, schedule={"epochs": 1, "batch_size": 64})]
    with torch_threads(1):
        return prepare_teachers(specs, digits, tmp_path_factory.mktemp("at-cache"))


# --------------------------------------------------------------------------- maps and loss by hand


def test_stage_sizes_of_cnn_and_resnet_are_where_attention_maps_are_taken():
    # a cnn stage ends before its max-pool: stage 1 has the input's resolution; resnet: stem, then each block
    assert stage_sizes(STUDENT, (1, 8, 8)) == [(8, 8), (4, 4)]
    assert stage_sizes(RESNET_TEACHER, (1, 8, 8)) == [(8, 8), (8, 8), (4, 4)]
    assert stage_sizes({"family": "mlp"}, (1, 8, 8)) == []


def test_forward_stages_computes_what_forward_features_computes():
    model = build_model(RESNET_TEACHER, (1, 8, 8), 10, seed=0).eval()
    x = torch.randn(5, 1, 8, 8)
    logits, features, stages = model.forward_stages(x)
    reference_logits, reference_features = model.forward_features(x)
    assert torch.equal(logits, reference_logits) and torch.equal(features, reference_features)
    assert [tuple(s.shape) for s in stages] == [(5, 8, 8, 8), (5, 8, 8, 8), (5, 16, 4, 4)]


# --------------------------------------------------------------------------- the teachers' cache


def test_cached_teacher_maps_equal_maps_computed_online_on_a_shuffled_batch(teachers, digits):
    cached = teacher_outputs(teachers, digits, attention=True)
    indices = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(0))[:50]
    inputs = digits.x_train[indices]
    from_cache = cached.attention_for_batch(indices, inputs)
    online = OnlineTeachers([t.model for t in teachers], [t.name for t in teachers]).attention_for_batch(indices,
                                                                                                       inputs)
    # cnn teacher: one map per stage; resnet teacher: the deepest 8x8 stage (block 1, not the stem) and the 4x4
    assert [sorted(maps) for maps in from_cache] == [[(4, 4), (8, 8)], [(4, 4), (8, 8)]]
    for teacher, cached_maps, online_maps in zip(teachers, from_cache, online):
        with torch.no_grad():
            _, _, stages = teacher.model.forward_stages(inputs)
        exact = {tuple(s.shape[2:]): attention_map(s) for s in stages}  # the deepest of each size wins
        for size, maps in cached_maps.items():
            assert maps.shape == (50, math.prod(size)) and maps.dtype == torch.float32
            assert torch.allclose(maps, online_maps[size], atol=1e-3)  # batch-size-dependent kernels, then fp16
            assert torch.allclose(maps, exact[size], atol=1e-3, rtol=1e-3)  # float16 storage: ~3 decimal digits
    # stored on disk once, read back unchanged; select and to keep the maps
    again = teacher_outputs(teachers, digits, attention=True)
    assert all((t.folder / "attention.pt").is_file() for t in teachers)
    assert all(torch.equal(a[size], b[size]) for a, b in zip(again.attention, cached.attention) for size in a)
    chosen = cached.select(["resnet"]).to("cpu")
    assert chosen.attention_for_batch(indices, inputs)[0].keys() == from_cache[1].keys()
    assert teacher_outputs(teachers, digits).attention is None  # only when asked for


def test_cached_maps_are_float16_at_each_stage_size(teachers, digits):
    maps = attention_maps(teachers[0].model, digits.x_train[:3])
    assert {size: (m.dtype, tuple(m.shape)) for size, m in maps.items()} == {
        (8, 8): (torch.float16, (3, 64)), (4, 4): (torch.float16, (3, 16))}


# --------------------------------------------------------------------------- training


def _train(digits, outputs, seed=0, **distill):
    student = build_model(STUDENT, digits.input_shape, digits.num_classes, seed=seed)
    result = fit(student, digits, outputs, DistillSpec(**{"w_ce": 0.5, "w_kd": 0.5, **distill}), SCHEDULE, seed=seed,
                 device="cpu")
    return student, result


def test_w_at_zero_trains_bit_identically_to_the_loop_without_attention(teachers, digits, monkeypatch):
    with_maps = teacher_outputs(teachers, digits, attention=True)
    without = teacher_outputs(teachers, digits)
    reference, _ = _train(digits, without)
    # w_at = 0 with the maps at hand: the loop never asks for stages or maps, and the weights are the same bits
    monkeypatch.setattr(type(reference), "forward_stages", lambda *a: pytest.fail("forward_stages called"))
    monkeypatch.setattr(type(with_maps), "attention_for_batch", lambda *a: pytest.fail("maps read"))
    student, _ = _train(digits, with_maps, w_at=0.0)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), student.state_dict().values()))
    # and a config without attention dumps exactly as before w_at existed
    assert "w_at" not in DistillSpec().model_dump() and DistillSpec(w_at=0.5).model_dump()["w_at"] == 0.5


def test_a_cnn_student_learns_with_w_at_and_the_term_changes_its_weights(teachers, digits):
    outputs = teacher_outputs(teachers, digits, attention=True)
    without, plain = _train(digits, outputs)
    with_at, result = _train(digits, outputs, w_at=0.3)
    assert math.isfinite(result.history[-1].train_loss) and result.val_accuracy > 0.3  # chance: 0.1
    assert not torch.equal(without.body[0].weight, with_at.body[0].weight)
    # AT alone (no CE, no KD) still moves the first stage towards the teachers' maps
    only_at, _ = _train(digits, outputs.select(["cnn"]), w_ce=0.0, w_kd=0.0, w_at=1.0)
    initial = build_model(STUDENT, digits.input_shape, digits.num_classes, seed=0)
    assert not torch.equal(initial.body[0].weight, only_at.body[0].weight)


def test_a_config_with_w_at_trains_through_the_runner(teachers, digits, tmp_path):
    config = train_config_from_dict({
        "data": DATA, "student": STUDENT, "teachers": [{"name": "cnn", "arch": CNN_TEACHER,
                                                        "schedule": {"epochs": 2, "batch_size": 64}}],
        "distill": {"w_ce": 0.5, "w_kd": 0.5, "w_at": 2.0}, "schedule": SCHEDULE.model_dump(),
        "cache_dir": str(tmp_path)})
    from autokd.train import prepare_targets

    _, targets = prepare_targets(config, digits, log=lambda message: None)
    student, result = run_config(config, digits, targets, device="cpu")
    assert result.val_accuracy > 0.2 and targets.attention is not None


# --------------------------------------------------------------------------- refusals


def test_an_mlp_student_or_teacher_with_w_at_is_refused_in_one_line():
    cnn_teacher = [{"name": "cnn", "arch": CNN_TEACHER}]
    with pytest.raises(ConfigError, match=r"^s\.yaml: distill\.w_at: attention transfer \(w_at > 0\) needs a cnn or "
                                          r"resnet student .*got family 'mlp'; use w_at 0$"):
        train_config_from_dict({"teachers": cnn_teacher, "distill": {"w_at": 1.0}}, "s.yaml")
    with pytest.raises(ConfigError, match=r"^s\.yaml: distill\.w_at: .* teacher 'm' is 'mlp'"):
        train_config_from_dict({"teachers": [{"name": "m", "arch": {"family": "mlp"}}], "student": STUDENT,
                                "distill": {"w_at": 1.0}}, "s.yaml")
    # a teacher left out of distill.teachers does not matter
    train_config_from_dict({"teachers": [*cnn_teacher, {"name": "m", "arch": {"family": "mlp"}}], "student": STUDENT,
                            "distill": {"w_at": 1.0, "teachers": ["cnn"]}}, "s.yaml")


def test_no_matching_stage_is_refused_in_one_line():
    teacher = [TeacherSpec(name="cnn", arch=CNN_TEACHER)]
    check_attention(STUDENT, teacher, (1, 8, 8), "s.yaml")  # stage 1 of both is 8x8
    with pytest.raises(ConfigError, match=r"^s\.yaml: distill\.w_at: no stage of the student \(spatial sizes "
                                          r"\[\(1, 1\), \(1, 1\)\]\) has the spatial size of a stage of teacher 'cnn'"):
        check_attention(STUDENT, teacher, (4, 1, 1), "s.yaml")


def _write(path, document):
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_bad_attention_configs_exit_2_through_the_cli_and_write_nothing(tmp_path):
    teacher = {"name": "cnn", "arch": CNN_TEACHER, "schedule": {"epochs": 1}}
    cache = tmp_path / "cache"
    mlp = _write(tmp_path / "mlp.yaml", {"data": DATA, "teachers": [teacher], "student": {"family": "mlp"},
                                         "distill": {"w_at": 1.0}, "cache_dir": str(cache)})
    completed = run_cli("train", mlp, "--out", tmp_path / "run")
    assert completed.returncode == 2 and completed.stderr.count("\n") == 1
    assert "distill.w_at: attention transfer (w_at > 0) needs a cnn or resnet student" in completed.stderr
    # no stage of more than one position: inputs of 4 channels at 1 x 1
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "dots.npz", x=rng.normal(size=(200, 4, 1, 1)).astype(np.float32), y=rng.integers(0, 2, 200))
    dots = _write(tmp_path / "dots.yaml", {"data": {"name": "file", "path": "dots.npz"}, "teachers": [teacher],
                                           "student": STUDENT, "distill": {"w_at": 1.0}, "cache_dir": str(cache)})
    completed = run_cli("train", dots, "--out", tmp_path / "run")
    assert completed.returncode == 2 and completed.stderr.count("\n") == 1
    assert "distill.w_at: no stage of the student" in completed.stderr
    # a search whose space may give an mlp student w_at > 0
    study = _write(tmp_path / "s.yaml", {
        "name": "s", "data": DATA, "teachers": [teacher], "student": STUDENT, "cache_dir": str(cache),
        "search_space": {"params": {"student.family": {"type": "categorical", "choices": ["cnn", "mlp"]},
                                    "distill.w_at": {"type": "categorical", "choices": [0.0, 1.0]}}}})
    completed = run_cli("search", study, "--no-progress")
    assert completed.returncode == 2 and completed.stderr.count("\n") == 1
    assert ("params.distill.w_at: attention transfer (w_at > 0) needs a cnn or resnet student" in completed.stderr
            and "when: {student.family: [cnn, resnet]}" in completed.stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.db").exists() and not cache.exists()


def test_a_space_with_w_at_only_for_cnn_students_is_accepted():
    from autokd.space import attention_scope, parse_space
    from autokd.spec import StudySpec

    study = StudySpec.model_validate({"name": "s", "teachers": [{"name": "cnn", "arch": CNN_TEACHER}],
                                      "student": {"family": "mlp"}, "search_space": {"params": {}}})
    space = parse_space({"params": {"student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
                                    "distill.w_at": {"type": "categorical", "choices": [0.0, 1.0],
                                                     "when": {"student.family": ["cnn"]}}}}, "space.yaml", study)
    assert attention_scope(space, study)[0] == ["cnn"]
    config = space.apply(study.train_config(), {"student.family": "cnn", "distill.w_at": 1.0})
    assert config.distill.w_at == 1.0 and config.student["family"] == "cnn"


@pytest.mark.slow
def test_a_tiny_search_with_w_at_in_the_space(tmp_path, ray_head):
    study = _write(tmp_path / "at.yaml", {
        "name": "at", "data": DATA, "cache_dir": str(tmp_path / "cache"),
        "teachers": [{"name": "cnn", "arch": CNN_TEACHER, "schedule": {"epochs": 2, "batch_size": 64}}],
        "student": STUDENT, "schedule": {"epochs": 1, "batch_size": 64},
        "search_space": {"params": {"distill.w_at": {"type": "categorical", "choices": [0.0, 1.0]},
                                    "distill.w_kd": {"type": "float", "low": 0.0, "high": 1.0}}},
        "budget": {"trials": 4}, "search": {"mode": "flat"}, "resources": {"concurrency": 1},
        "sampler": {"name": "random", "seed": 1}})
    run_cli("search", study, "--no-progress", "--no-report", env=ray_head, check=True, timeout=600)
    trials = load_tiny(tmp_path, "at").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    w_at = [t.user_attrs["config"]["distill"].get("w_at", 0.0) for t in trials]
    assert {t.params["distill.w_at"] for t in trials} == set(w_at) == {0.0, 1.0}  # both sides sampled (seed 1)
    assert list((tmp_path / "cache" / "teachers").glob("cnn-*/attention.pt"))
