"""Teachers from outside autokd: a TorchScript file, or a .npz of precomputed outputs.

Each is made here from a trained zoo teacher, and must give the very outputs that zoo teacher
gives: the cache a search, a report and `autokd train` read is the same whatever the teacher's source.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import yaml

from autokd.config_files import load_train_config, train_config_from_dict
from autokd.data import load_data
from autokd.errors import CheckpointError, ConfigError
from autokd.export import export_config
from autokd.report import build_report
from autokd.spec import DataSpec, TeacherSpec
from autokd.teacher_files import file_digest
from autokd.teacher_outputs import OnlineTeachers, teacher_outputs
from autokd.teachers import check_teachers, prepare_teachers, teacher_key
from autokd.train import prepare_targets, train
from conftest import run_cli, tiny_study

MLP = {"family": "mlp", "depth": 1, "width": 32}
DATA = {"name": "digits", "val_fraction": 0.15}  # conftest.tiny_study's data: the rows of the files below fit it


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec(**DATA))


@pytest.fixture(scope="module")
def zoo(digits, tmp_path_factory):
    """A trained zoo teacher and its cached outputs."""
    spec = TeacherSpec(name="zoo", arch=MLP, schedule={"epochs": 3, "batch_size": 64, "lr": 0.01})  # val ~0.93
    (teacher,) = prepare_teachers([spec], digits, tmp_path_factory.mktemp("zoo-cache"))
    return teacher, teacher_outputs([teacher], digits)


def _script(model: torch.nn.Module, path, features: bool = True):
    """`model` traced (with its forward_features when `features`) and saved as TorchScript at `path`."""
    example = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        methods = {"forward": example, **({"forward_features": example} if features else {})}
        torch.jit.save(torch.jit.trace_module(model.eval(), methods), str(path))
    return path


def _outputs_file(zoo, digits, path, **changes):
    """The zoo teacher's outputs as a logits file (`changes` replace or, when None, drop arrays)."""
    teacher, cached = zoo
    with torch.no_grad():
        arrays = {"train_logits": cached.train_logits[0].numpy(), "train_features": cached.train_features[0].numpy(),
                  "val_logits": teacher.model(digits.x_val).numpy()}
    arrays.update(changes)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_a_torchscript_teacher_gives_the_outputs_of_the_zoo_teacher_it_was_made_from(zoo, digits, tmp_path):
    teacher, cached = zoo
    spec = TeacherSpec(name="ts", torchscript=str(_script(teacher.model, tmp_path / "teacher.pt")))
    log: list[str] = []
    (scripted,) = prepare_teachers([spec], digits, tmp_path / "cache", log=log.append)
    outputs = teacher_outputs([scripted], digits)

    torch.testing.assert_close(outputs.train_logits, cached.train_logits)
    torch.testing.assert_close(outputs.train_features[0], cached.train_features[0])
    assert not any("training" in line for line in log)
    for key in ("val_accuracy", "test_accuracy", "params", "bytes_fp32", "macs"):
        assert scripted.meta[key] == pytest.approx(teacher.meta[key]), key
    assert scripted.meta["arch"] == {"family": "torchscript", "file": "teacher.pt"}
    # Run online (augmented batches) it gives the same as its cache.
    indices = torch.arange(40, 72)
    online = OnlineTeachers([scripted.model], ["ts"]).for_batch(indices, digits.x_train[indices])
    for fresh, stored in zip(online, outputs.for_batch(indices, digits.x_train[indices])):
        torch.testing.assert_close(fresh, stored)
    # A second run reads the cache: the same entry, nothing recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.*")}
    (again,) = prepare_teachers([spec], digits, tmp_path / "cache")
    teacher_outputs([again], digits)
    assert again.folder == scripted.folder and again.meta == scripted.meta
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.*")} == stamps


def test_a_logits_file_gives_the_outputs_of_the_zoo_teacher_it_was_saved_from(zoo, digits, tmp_path):
    teacher, cached = zoo
    spec = TeacherSpec(name="offline", logits=str(_outputs_file(zoo, digits, tmp_path / "outputs.npz")))
    (offline,) = prepare_teachers([spec], digits, tmp_path / "cache")
    outputs = teacher_outputs([offline], digits)

    assert torch.equal(outputs.train_logits, cached.train_logits)
    assert torch.equal(outputs.train_features[0], cached.train_features[0])
    assert offline.model is None and offline.feature_dim == teacher.model.feature_dim
    assert offline.meta["val_accuracy"] == pytest.approx(teacher.meta["val_accuracy"])
    assert offline.meta["test_accuracy"] is None and offline.meta["params"] is None  # no test_logits, no model


def test_an_outside_teachers_key_hashes_its_file_and_the_data_only(zoo, digits, tmp_path):
    path = _script(zoo[0].model, tmp_path / "a.pt")
    spec = TeacherSpec(name="ts", torchscript=str(path))
    key = teacher_key(spec, digits.fingerprint(), file_digest(path))
    (tmp_path / "b.pt").write_bytes(path.read_bytes())
    same = [teacher_key(spec.model_copy(update={"torchscript": "b.pt", "seed": 3}), digits.fingerprint(),
                        file_digest(tmp_path / "b.pt"))]  # another path, the same bytes; seed and schedule play no part
    other = [teacher_key(spec, "other data", file_digest(path)),
             teacher_key(spec, digits.fingerprint(), file_digest(_script(zoo[0].model, tmp_path / "c.pt", False))),
             teacher_key(spec.model_copy(update={"inputs": "raw"}), digits.fingerprint(), file_digest(path)),
             teacher_key(TeacherSpec(name="ts", logits="x.npz"), digits.fingerprint(), file_digest(path))]
    assert same == [key] and key not in other and len(set(other)) == len(other)


def test_a_torchscript_teacher_without_forward_features_gives_logits_only(zoo, digits, tmp_path):
    teacher, cached = zoo
    spec = TeacherSpec(name="ts", torchscript=str(_script(teacher.model, tmp_path / "plain.pt", features=False)))
    (scripted,) = prepare_teachers([spec], digits, tmp_path / "cache")
    outputs = teacher_outputs([scripted], digits)
    torch.testing.assert_close(outputs.train_logits, cached.train_logits)
    assert scripted.feature_dim == 0 and outputs.train_features[0].shape == (len(digits.y_train), 0)
    indices = torch.arange(8)
    with pytest.raises(ValueError, match=r"teacher\(s\) \['ts'\] give none"):
        outputs.for_batch(indices, digits.x_train[indices], features=True)
    with pytest.raises(ConfigError, match=r"^s\.yaml: distill\.w_feat: .*'ts' \(torchscript\) gives none"):
        prepare_teachers([spec], digits, tmp_path / "cache2", source="s.yaml", features=True)
    assert not (tmp_path / "cache2").exists()


def test_a_torchscript_teacher_may_take_raw_inputs(zoo, digits, tmp_path):
    teacher, cached = zoo
    path = _script(digits.normalization.wrap(teacher.model), tmp_path / "raw.pt", features=False)
    (scripted,) = prepare_teachers([TeacherSpec(name="raw", torchscript=str(path), inputs="raw")], digits,
                                   tmp_path / "cache")
    torch.testing.assert_close(teacher_outputs([scripted], digits).train_logits, cached.train_logits,
                               rtol=1e-4, atol=1e-4)  # raw = normalised * std + mean, rounded in float32


@pytest.mark.parametrize("teacher, message", [
    ({"name": "t"}, "teachers.0: give exactly one of arch .* got none"),
    ({"name": "t", "arch": MLP, "logits": "o.npz"}, "teachers.0: give exactly one .* got arch and logits$"),
    ({"name": "t", "torchscript": "t.pt", "logits": "o.npz"}, "teachers.0: .* got torchscript and logits$"),
    ({"name": "t", "arch": MLP, "checkpoint": "c.pt", "torchscript": "t.pt"},
     "teachers.0: .* got checkpoint \\(with arch\\) and torchscript$"),
    ({"name": "t", "checkpoint": "c.pt"}, "teachers.0: checkpoint needs arch"),
    ({"name": "t", "logits": "o.npz", "inputs": "raw"}, "teachers.0: inputs: raw is for a torchscript teacher"),
])
def test_a_teacher_has_exactly_one_source(teacher, message):
    with pytest.raises(ConfigError, match=f"^c.yaml: {message}"):
        train_config_from_dict({"teachers": [teacher]}, "c.yaml")


def test_bad_teacher_files_are_refused_naming_the_file_and_key(zoo, digits, tmp_path):
    teacher, _ = zoo
    n, n_val = len(digits.y_train), len(digits.y_val)
    torch.save(teacher.model.state_dict(), tmp_path / "state.pt")
    _script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)), tmp_path / "five.pt", False)  # 5 classes
    rows = np.random.default_rng(0).permutation(n)
    cached = _outputs_file(zoo, digits, tmp_path / "in-order.npz")
    with np.load(cached) as arrays:  # the training rows out of their order
        np.savez(tmp_path / "shuffled.npz", **{k: v[rows] if k.startswith("train") else v for k, v in arrays.items()})
    files = {"rows.npz": {"train_logits": np.zeros((n - 1, 10))}, "cols.npz": {"train_logits": np.zeros((n, 7))},
             "feat.npz": {"train_features": np.zeros((3, 4))}, "val.npz": {"val_logits": np.zeros((5, 10))},
             "extra.npz": {"logits": np.zeros((n, 10))}, "nan.npz": {"val_logits": np.full((n_val, 10), np.nan)}}
    for name, changes in files.items():
        _outputs_file(zoo, digits, tmp_path / name, **changes)
    cases = [("torchscript", "missing.pt", "file not found"),
             ("torchscript", "state.pt", "is not TorchScript"),
             ("torchscript", "five.pt", r"returns float32 \[8, 5\] for inputs \[8, 1, 8, 8\]; expected .*\[8, 10\]"),
             ("logits", "rows.npz", f"train_logits has {n - 1} rows, the train split has {n}"),
             ("logits", "cols.npz", rf"train_logits is float64 \[{n}, 7\], expected \[{n}, 10\]"),
             ("logits", "feat.npz", "train_features has 3 rows"),
             ("logits", "val.npz", "val_logits has 5 rows, the val split has"),
             ("logits", "extra.npz", "unknown array 'logits'"),
             ("logits", "nan.npz", "val_logits holds NaN"),
             ("logits", "shuffled.npz", "agree with the training labels at chance level")]
    for key, name, message in cases:
        with pytest.raises(CheckpointError, match=rf"^s\.yaml: teachers\.0\.{key}: .*{message}") as error:
            prepare_teachers([TeacherSpec(name="t", **{key: str(tmp_path / name)})], digits, tmp_path / "cache",
                             source="s.yaml")
        assert name in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists()
    # A search asks more: val_logits that always answer one class are at chance.
    _outputs_file(zoo, digits, tmp_path / "v.npz", val_logits=np.eye(10)[np.zeros(n_val, int)])
    with pytest.raises(CheckpointError, match=r"teachers\.0\.logits: teacher 't' is at chance level"):
        check_teachers([TeacherSpec(name="t", logits=str(tmp_path / "v.npz"))], digits, "s.yaml")


def _config(tmp_path, teacher: dict, **fields):
    document = {"data": DATA, "teachers": [teacher], "cache_dir": str(tmp_path / "cache"), **fields}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_train_config(path), str(path)  # its teacher files read from its folder, as `autokd train` reads them


def test_augment_needs_an_online_teacher(zoo, digits, tmp_path):
    teacher, cached = zoo
    _outputs_file(zoo, digits, tmp_path / "outputs.npz")
    config, source = _config(tmp_path, {"name": "offline", "logits": "outputs.npz"}, augment=["shift"])
    with pytest.raises(ConfigError, match=r"config\.yaml: augment: shift needs teachers run on every augmented batch, "
                                          r"but teacher 'offline' is precomputed outputs \(teachers\.0\.logits\)"):
        prepare_targets(config, digits, source)
    assert not (tmp_path / "cache").exists()

    _script(teacher.model, tmp_path / "teacher.pt")
    config, source = _config(tmp_path, {"name": "ts", "torchscript": "teacher.pt"}, augment=["shift"])
    _, online = prepare_targets(config, digits, source, log=lambda line: None)
    assert isinstance(online, OnlineTeachers)
    indices = torch.arange(16)
    for fresh, stored in zip(online.for_batch(indices, digits.x_train[indices]), cached.for_batch(indices, None)):
        torch.testing.assert_close(fresh, stored)


def test_a_search_with_outside_teachers_completes_and_reports_exports_and_trains(zoo, digits, tmp_path,
                                                                                   ray_head):
    """A TorchScript and a logits-file teacher through a tiny flat search (the CLI as a user types it),
    then the report (test evaluations), export and production training of a trial."""
    _script(zoo[0].model, tmp_path / "teacher.pt")
    _outputs_file(zoo, digits, tmp_path / "outputs.npz")
    study = tiny_study(tmp_path, trials=2, epochs=1, teachers=[{"name": "ts", "torchscript": "teacher.pt"},
                                                               {"name": "offline", "logits": "outputs.npz"}])
    searched = run_cli("search", study, "--no-report", "--no-progress", env=ray_head, check=True)
    assert "teacher ts: TorchScript from" in searched.stdout and "teachers once" not in searched.stdout

    summary = json.loads((build_report(study, out=tmp_path / "report", baselines=False, log=lambda line: None)
                          / "summary.json").read_text())
    assert [t["name"] for t in summary["teachers"]] == ["ts", "offline"]
    assert summary["teachers"][1]["params"] is None and summary["teachers"][1]["val_accuracy"] > 0.5
    (tmp_path / "elsewhere").mkdir()  # the exported file names the teacher files relative to itself
    path, trial = export_config(study, tmp_path / "elsewhere" / "best.yaml", knee=True)
    log: list[str] = []
    run = train(path, tmp_path / "run", epochs=1, log=log.append)
    assert set(run.metrics["teachers"]) == set(load_train_config(path).distill.teachers or ["ts", "offline"])
    assert not any("warning" in line for line in log), log  # the teachers' cache keys are the ones the trial used
