"""Export: each rule picks the right COMPLETE trial; impossible asks fail on one line; output round-trips
and is portable (no machine paths, only the data keys its dataset reads).

The studies are synthetic, stored the way search.py writes them (directions, "objectives",
"study_spec", per-trial "config"/"seed"/sizes), so no search happens here.
"""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

import optuna
import pytest
import torch
import yaml

from autokd.config_files import load_study, load_train_config
from autokd.data import load_data
from autokd.errors import AutokdError
from autokd.export import export_config
from autokd.paths import relative_paths
from autokd.sizes import arch_size
from autokd.teachers import prepare_teachers
from autokd.zoo import build_model
from conftest import AUTOKD, REPO, run_cli, strings_in

TEACHER_ARCH = {"family": "mlp", "depth": 1, "width": 16}
COMPLETE, FAIL, PRUNED, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                   optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)

# number: (state, student width, val accuracy, attrs). MLP 64-w-10 has 75w + 10 params.
# Front: 0 (610, .80), 1 (1210, .88), 6 (1810, .91), 3 (2410, .95), 5 (4810, .955); its knee is 3.
TRIALS = {
    0: (COMPLETE, 8, 0.80, {}),
    1: (COMPLETE, 16, 0.88, {}),
    2: (FAIL, 4, None, {"failure_reason": "RuntimeError: boom"}),
    3: (COMPLETE, 32, 0.95, {}),
    4: (PRUNED, 128, None, {"pruned_reason": "infeasible: params 9610 > 5000"}),
    5: (COMPLETE, 64, 0.955, {}),
    6: (COMPLETE, 24, 0.91, {}),
    7: (PRUNED, 5, None, {"pruned_reason": "early-stopped at epoch 1 of 3"}),
    8: (RUNNING, 6, None, {}),
}


def _study_file(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "ckpt" / "loaded.pt"
    checkpoint.parent.mkdir()
    torch.save(build_model(TEACHER_ARCH, (1, 8, 8), 10).state_dict(), checkpoint)
    document = {
        "name": "synthetic",
        "data": {"name": "digits", "val_fraction": 0.15},
        "teachers": [{"name": "tiny", "arch": TEACHER_ARCH, "schedule": {"epochs": 1}},
                     {"name": "loaded", "arch": TEACHER_ARCH, "checkpoint": "ckpt/loaded.pt"}],
        "student": {"family": "mlp", "depth": 1, "width": 8},
        "schedule": {"epochs": 3, "batch_size": 64},
        "cache_dir": str(tmp_path / "cache"),
        "search_space": {"params": {"student.width": {"type": "int", "low": 4, "high": 128}}},
    }
    path = tmp_path / "synthetic.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _trial_config(spec, number: int, width: int) -> dict:
    """What search.py stores: the study's defaults with the sampled values applied, paths relative to the study file."""
    config = relative_paths(spec.train_config(), spec.folder)
    config.student = {**config.student, "width": width}
    config.seed = spec.seed + number
    if number == 0:  # a CE-only trial: it needs no teacher
        config.distill = config.distill.model_copy(update={"w_ce": 1.0, "w_kd": 0.0})
    elif number % 2:  # odd trials learn from the loaded teacher only
        config.distill.teachers = ["loaded"]
    return config.model_dump()


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    path = _study_file(tmp_path_factory.mktemp("export"))
    spec = load_study(path)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage_url(), directions=spec.directions)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("study_spec", relative_paths(spec, spec.folder).model_dump(mode="json"))
    for number, (state, width, accuracy, extra) in TRIALS.items():
        size = arch_size({"family": "mlp", "depth": 1, "width": width}, (1, 8, 8), 10).as_dict()
        attrs = {"config": _trial_config(spec, number, width), "seed": spec.seed + number, **size, **extra}
        study.add_trial(optuna.trial.create_trial(
            state=state, values=[accuracy, size["params"]] if state == COMPLETE else None,
            params={"student.width": width},
            distributions={"student.width": optuna.distributions.IntDistribution(4, 128)}, user_attrs=attrs))
    return path


@pytest.mark.parametrize("rule, expected", [
    ({"trial": 5}, 5),
    ({"max_params": 1500}, 1),
    ({"max_params": 5000}, 5),
    ({"max_params": 1000}, 0),
    ({"max_bytes": 4 * 2410}, 3),
    ({"max_params": 5000, "max_bytes": 4 * 1810}, 6),
    ({"min_accuracy": 0.5}, 0),
    ({"min_accuracy": 0.9}, 6),
    ({"min_accuracy": 0.95}, 3),
    ({"knee": True}, 3),
])
def test_each_rule_picks_the_trial_chosen_by_hand(study_file, tmp_path, rule, expected):
    path, chosen = export_config(str(study_file), tmp_path / "best.yaml", **rule)
    assert chosen == expected
    assert load_train_config(path).provenance["trial"] == expected


def test_exported_config_is_standalone_and_round_trips(study_file, tmp_path):
    path, _ = export_config(str(study_file), tmp_path / "out" / "best.yaml", trial=3)
    config = load_train_config(path)
    stored = optuna.load_study(study_name="synthetic", storage=load_study(study_file).storage_url()).trials[3]

    assert config.seed == stored.user_attrs["seed"] == 3
    assert config.student == stored.user_attrs["config"]["student"]
    assert config.schedule.model_dump() == stored.user_attrs["config"]["schedule"]
    assert [t.name for t in config.teachers] == ["loaded"]  # only the teacher the trial learnt from
    written = yaml.safe_load(path.read_text())
    checkpoint = Path(written["teachers"][0]["checkpoint"])  # relative to the exported file, as `autokd train` reads it
    assert not checkpoint.is_absolute()
    assert (path.parent / checkpoint).resolve() == (study_file.parent / "ckpt" / "loaded.pt").resolve()
    assert Path(config.teachers[0].checkpoint) == (study_file.parent / "ckpt" / "loaded.pt")  # as the loader reads it
    assert written["cache_dir"] == ".cache/autokd"  # the study's cache is outside the file's folder: the default
    provenance = config.provenance
    assert provenance["study"] == "synthetic" and provenance["trial"] == 3
    assert provenance["val_accuracy"] == 0.95
    assert (provenance["params"], provenance["bytes_fp32"]) == (2410, 4 * 2410)
    assert {"storage", "macs", "exported_at"} <= set(provenance)
    assert provenance["normalization"] == load_data(config.data).normalization.as_dict()
    assert not any("test" in key for key in provenance)
    assert not list(path.parent.glob(".*.tmp"))  # the temp file was renamed, not left behind


def test_teacher_keys_match_the_cache_that_training_uses(study_file, tmp_path):
    path, _ = export_config(str(study_file), tmp_path / "best.yaml", trial=1)
    config = load_train_config(path)
    data = load_data(config.data)
    # "loaded": no training, just a load; its checkpoint read from the exported file's folder, as train does
    cached = prepare_teachers(config.teachers, data, load_study(study_file).cache_dir)
    assert config.provenance["teacher_keys"] == {t.name: t.meta["key"] for t in cached}


def test_ce_only_trial_exports_without_teachers(study_file, tmp_path):
    path, chosen = export_config(str(study_file), tmp_path / "best.yaml", max_params=1000)
    config = load_train_config(path)
    assert chosen == 0 and config.teachers == [] and config.distill.teachers is None
    assert config.provenance["teacher_keys"] == {}


def test_study_opens_by_name_with_storage(study_file, tmp_path):
    url = load_study(study_file).storage_url()
    path, chosen = export_config("synthetic", tmp_path / "best.yaml", storage=url, max_params=1000)
    recorded = load_train_config(path).provenance["storage"]  # the SQLite file, relative to the exported file
    assert chosen == 0 and not Path(recorded.removeprefix("sqlite:///")).is_absolute()
    assert (tmp_path / recorded.removeprefix("sqlite:///")).resolve() == Path(url.removeprefix("sqlite:///")).resolve()


def test_relative_checkpoint_unresolvable_by_name_fails_on_one_line(study_file, tmp_path):
    # Opened by name, and the study records no study file: the stored relative path cannot resolve.
    url = load_study(study_file).storage_url()
    with pytest.raises(AutokdError, match=r"^export: study 'synthetic' trial 3: teacher checkpoint not found: "
                                          r".*ckpt/loaded.pt \(open the study by its YAML file"):
        export_config("synthetic", tmp_path / "best.yaml", storage=url, trial=3)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("rule, message", [
    ({"max_params": 500}, "export: --max-params 500: no complete trial has params <= 500 (smallest: 610)"),
    ({"max_bytes": 100}, "export: --max-bytes 100: no complete trial has bytes_fp32 <= 100 (smallest: 2,440)"),
    ({"max_params": 10, "max_bytes": 100}, "export: --max-params 10 --max-bytes 100: no complete trial has "
                                           "params <= 10 and bytes_fp32 <= 100 (smallest: params 610, "
                                           "bytes_fp32 2,440)"),
    ({"min_accuracy": 0.99}, "export: --min-accuracy 0.99: no complete trial has val_accuracy >= 0.99 "
                             "(best: 0.9550)"),
    ({"trial": 2}, "export: --trial 2: trial 2 is FAIL (RuntimeError: boom); only COMPLETE trials can be exported"),
    ({"trial": 4}, "export: --trial 4: trial 4 is PRUNED (infeasible: params 9610 > 5000); only COMPLETE"),
    ({"trial": 7}, "trial 7 is PRUNED (early-stopped at epoch 1 of 3)"),
    ({"trial": 8}, "export: --trial 8: trial 8 is RUNNING (still running); only COMPLETE"),
    ({"trial": 42}, "export: --trial 42: study 'synthetic' has no trial 42 (trials 0-8)"),
    ({}, "export: give exactly one selection rule of --trial, --max-params/--max-bytes, --min-accuracy, "
         "--knee; got none"),
    ({"trial": 1, "knee": True}, "got --trial and --knee"),
    ({"min_accuracy": 0.9, "max_params": 10}, "got --max-params/--max-bytes and --min-accuracy"),
])
def test_impossible_or_ambiguous_requests_fail_on_one_line_and_write_nothing(study_file, tmp_path, rule, message):
    with pytest.raises(AutokdError) as error:
        export_config(str(study_file), tmp_path / "best.yaml", **rule)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())


def test_failed_and_pruned_trials_are_never_candidates(study_file, tmp_path):
    # Trials 2, 4, 7 and 8 are smaller or bigger than every complete trial; no rule may reach them.
    picks = {export_config(str(study_file), tmp_path / "best.yaml", **rule)[1]
             for rule in ({"max_params": 10_000}, {"min_accuracy": 0.0}, {"knee": True},
                          {"max_params": 700}, {"max_bytes": 40_000})}
    assert picks.isdisjoint({2, 4, 7, 8})


def test_output_that_is_a_folder_is_refused(study_file, tmp_path):
    with pytest.raises(AutokdError, match=r"--output .*: is a folder; give a file name such as .*best.yaml$"):
        export_config(str(study_file), tmp_path, knee=True)
    assert not list(tmp_path.iterdir())


def test_study_without_complete_trials_says_so(tmp_path):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(study_name="empty", storage=storage, directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(state=FAIL, user_attrs={"failure_reason": "x"}))
    with pytest.raises(AutokdError, match=r"study 'empty' has no complete trial yet \(1 FAIL\)"):
        export_config("empty", tmp_path / "best.yaml", storage=storage, knee=True)


def test_no_complete_trial_counts_the_trials_of_each_state_word_for_word():
    from autokd.export import choose_trial

    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"])
    with pytest.raises(AutokdError) as error:
        choose_trial(study, knee=True)
    assert str(error.value) == "export: study 's' has no complete trial yet (no trials)"
    for state in (PRUNED, FAIL, PRUNED):
        study.add_trial(optuna.trial.create_trial(state=state))
    study.ask()  # one still running
    with pytest.raises(AutokdError) as error:
        choose_trial(study, knee=True)
    assert str(error.value) == "export: study 's' has no complete trial yet (1 FAIL, 2 PRUNED, 1 RUNNING)"


def test_a_numbered_trial_that_is_missing_or_not_complete_is_refused_word_for_word():
    from autokd.export import choose_trial

    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"])
    with pytest.raises(AutokdError) as error:
        choose_trial(study, trial=0)
    assert str(error.value) == "export: --trial 0: study 's' has no trial 0 (no trials yet)"
    study.add_trial(optuna.trial.create_trial(state=FAIL))  # a failure without a recorded reason
    with pytest.raises(AutokdError) as error:
        choose_trial(study, trial=0)
    assert str(error.value) == ("export: --trial 0: trial 0 is FAIL (no reason recorded); "
                                "only COMPLETE trials can be exported")
    with pytest.raises(AutokdError) as error:
        choose_trial(study, trial=1)
    assert str(error.value) == "export: --trial 1: study 's' has no trial 1 (trials 0-0)"


def test_min_accuracy_takes_the_fewest_params_then_the_better_accuracy_then_the_earlier_trial():
    from autokd.export import choose_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, params in [(0.99, 5_000), (0.90, 1_000), (0.95, 1_000), (0.95, 1_000), (0.80, 500)]:
        study.add_trial(optuna.trial.create_trial(state=COMPLETE, values=[accuracy, params],
                                                  user_attrs={"params": params}))
    assert choose_trial(study, min_accuracy=0.9).number == 2  # 1,000 params: .95 before .90, trial 2 before 3
    assert choose_trial(study, min_accuracy=0.96).number == 0
    assert choose_trial(study, min_accuracy=0.5).number == 4


def test_a_two_level_study_exports_only_an_architectures_choice():
    """Level 1 trained architecture 0 (.99 with a short schedule); at level 2 its CE-only baseline (trial 1) beat
    the tuned config (trial 2), so trial 1 stands for it, whatever the rule."""
    from autokd.export import choose_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("search_mode", "two_level")
    for accuracy, attrs in [(0.99, {"level": 1}),
                            (0.81, {"level": 2, "arch": 0, "role": "ce", "val_accuracy_seeds": [0.80, 0.82]}),
                            (0.71, {"level": 2, "arch": 0, "role": "tuned", "val_accuracy_seeds": [0.70, 0.72]})]:
        study.add_trial(optuna.trial.create_trial(state=COMPLETE, values=[accuracy, 100],
                                                  user_attrs={"params": 100, **attrs}))
    for rule in ({"max_params": 1000}, {"min_accuracy": 0.5}, {"knee": True}):
        assert choose_trial(study, **rule).number == 1, rule


def test_an_exported_file_is_written_only_once_it_reads_back_as_the_config(tmp_path):
    from autokd.export import _write_checked, _yaml

    config = load_train_config(_one_trial_study(tmp_path, {"name": "digits"}))
    other = config.model_copy(update={"seed": 1})
    path = tmp_path / "best.yaml"
    with pytest.raises(RuntimeError) as error:
        _write_checked(path, _yaml(config), other)
    assert str(error.value) == f"exported config does not round-trip through load_train_config: {path}"
    assert not path.exists() and not list(tmp_path.glob(".*.tmp"))
    _write_checked(path, _yaml(config), config)
    assert load_train_config(path) == config


def test_the_knee_is_taken_on_log_size_as_the_plot_and_the_hypervolume_are():
    """Sizes 100 .. 100,000 with accuracy .50, .80, .90, .95: on log size (normalised 0, 1/3, 2/3, 1;
    accuracy loss 1, 1/3, 1/9, 0) the point farthest below the line is 1,000 params (sum 2/3); on
    linear size (0, .009, .099, 1) it would be 10,000 params (sum .21)."""
    from autokd.export import choose_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, params in [(0.50, 100), (0.80, 1_000), (0.90, 10_000), (0.95, 100_000)]:
        study.add_trial(optuna.trial.create_trial(state=COMPLETE, values=[accuracy, params]))
    assert choose_trial(study, knee=True).values == [0.80, 1_000]


# ---------------------------------------------------------------------------------------------
# Portability: no machine paths, only the data keys the dataset reads


def _one_trial_study(folder: Path, data: dict, **changes) -> Path:
    """A study with one COMPLETE trial (its default student, seed 0), stored the way search.py stores it."""
    document = {"name": "portable", "data": data, "student": {"family": "mlp", "depth": 1, "width": 8},
                "distill": {"w_ce": 1.0, "w_kd": 0.0}, "schedule": {"epochs": 1, "batch_size": 64},
                "cache_dir": str(folder / "cache"),
                "search_space": {"params": {"schedule.lr": {"type": "float", "low": 0.001, "high": 0.01}}},
                **changes}
    path = folder / "portable.yaml"
    path.write_text(yaml.safe_dump(document))
    spec = load_study(path)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage_url(), directions=spec.directions)
    study.set_user_attr("study_spec", relative_paths(spec, spec.folder).model_dump(mode="json"))
    config = relative_paths(spec.train_config(), spec.folder)
    study.add_trial(optuna.trial.create_trial(
        state=COMPLETE, values=[0.9, 610], params={"schedule.lr": 0.003},
        distributions={"schedule.lr": optuna.distributions.FloatDistribution(0.001, 0.01)},
        user_attrs={"config": config.model_dump(), "seed": 0, "params": 610, "bytes_fp32": 2440, "macs": 600}))
    return path


def test_an_exported_file_is_its_header_then_the_config_name_first_in_the_configs_own_order(tmp_path):
    from datetime import datetime, timedelta, timezone

    study = _one_trial_study(tmp_path, {"name": "digits"})
    path, _ = export_config(str(study), tmp_path / "out" / "best.yaml", trial=0)
    text = path.read_text()
    assert text.splitlines()[:2] == [
        "# Exported by `autokd export` from study 'portable', trial 0 (val accuracy 0.9000, 610 params).",
        "# Train it at production length: autokd train best.yaml --epochs E [--seeds K]"]
    document = yaml.safe_load(text)
    assert list(document) == ["name", "data", "teachers", "student", "distill", "schedule", "seed", "device",
                              "augment", "cache_dir", "threads", "provenance"]  # not sorted: the name is a title
    assert document["cache_dir"] == ".cache/autokd"  # the study's cache lies outside the file's folder
    assert document["provenance"]["storage"] == "sqlite:///../portable.db"
    exported_at = datetime.fromisoformat(document["provenance"]["exported_at"])
    assert exported_at.utcoffset() == timedelta(0)  # UTC, to the second
    assert abs(datetime.now(timezone.utc) - exported_at) < timedelta(minutes=5)


def test_the_header_gives_the_size_only_when_the_trial_recorded_an_integer_count():
    from autokd.export import _header

    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"])
    for attrs in ({"params": 1_210}, {}, {"params": None}):
        study.add_trial(optuna.trial.create_trial(state=COMPLETE, values=[0.88, 1_210], user_attrs=attrs))
    train = "# Train it at production length: autokd train best.yaml --epochs E [--seeds K]\n"
    assert _header(study, study.trials[0], Path("out/best.yaml")) == (
        "# Exported by `autokd export` from study 's', trial 0 (val accuracy 0.8800, 1,210 params).\n" + train)
    for trial in study.trials[1:]:
        assert _header(study, trial, Path("best.yaml")) == (
            f"# Exported by `autokd export` from study 's', trial {trial.number} (val accuracy 0.8800).\n" + train)


def test_the_cache_dir_is_kept_only_inside_the_files_folder():
    from autokd.export import DEFAULT_CACHE_DIR, _portable_cache_dir

    assert DEFAULT_CACHE_DIR == ".cache/autokd"
    assert _portable_cache_dir("cache/teachers") == "cache/teachers"
    assert _portable_cache_dir("/abs/cache") == DEFAULT_CACHE_DIR
    assert _portable_cache_dir("../cache") == DEFAULT_CACHE_DIR
    assert _portable_cache_dir("cache/../../up") == DEFAULT_CACHE_DIR


def test_the_storage_is_recorded_without_a_password_or_a_machine_path(tmp_path):
    from sqlalchemy.engine import make_url

    from autokd.export import _portable_storage

    assert _portable_storage(f"sqlite:///{tmp_path / 'studies' / 's.db'}", tmp_path / "out") == \
        "sqlite:///../studies/s.db"
    assert _portable_storage("postgresql://user:secret@host/db", tmp_path) == "postgresql://user:***@host/db"
    assert _portable_storage("sqlite:///:memory:", tmp_path) == make_url("sqlite:///:memory:").render_as_string()
    # not an SQLAlchemy URL (a port that is no number): its scheme only, whatever follows
    assert _portable_storage("redis://user:secret@host:port/0?next=http://x", tmp_path) == "redis://..."


def test_an_exported_config_has_the_trials_seed_and_teachers_or_names_the_trial_it_cannot_export(tmp_path):
    from autokd.export import exported_config

    teachers = [{"name": n, "arch": TEACHER_ARCH, "schedule": {"epochs": 1}} for n in ("t1", "t2")]
    spec = load_study(_one_trial_study(tmp_path, {"name": "digits"}, teachers=teachers))
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url())
    defaults = relative_paths(spec.train_config(), spec.folder).model_dump()

    def exported(config: dict | None, **attrs):
        """A new COMPLETE trial, the study's defaults with `config`'s sections updated, exported."""
        if config is not None:
            attrs["config"] = {**defaults, **{key: {**defaults[key], **value} if isinstance(value, dict) else value
                                              for key, value in config.items()}}
        study.add_trial(optuna.trial.create_trial(state=COMPLETE, values=[0.9, 610],
                                                  user_attrs={"params": 610, **attrs}))
        return exported_config(study, study.trials[-1], spec, spec.storage_url(), tmp_path / "out")

    distilled = exported({"distill": {"w_ce": 0.5, "w_kd": 0.5, "teachers": ["t2"]}}, seed=7)  # trial 1
    assert distilled.seed == 7  # the trial's seed attr
    assert [t.name for t in distilled.teachers] == ["t2"] and distilled.distill.teachers == ["t2"]
    ce_only = exported({"distill": {"w_kd": 0.0, "teachers": ["t2"]}, "seed": 3})  # 2: no seed attr
    assert ce_only.seed == 3  # the config's
    assert ce_only.teachers == [] and ce_only.distill.teachers is None  # it learnt from no teacher
    with pytest.raises(AutokdError) as error:
        exported(None)  # 3
    assert str(error.value) == ("export: study 'portable' trial 3 has no stored config (user attr 'config'); "
                                "was it run by autokd search?")
    for number, config, attrs, key in ((4, {"schedule": {"epochs": 0}}, {}, "schedule.epochs"),  # no longer valid
                                       (5, {}, {"seed": -1}, "seed"),  # a seed attr no config takes
                                       (6, {"data": {"name": "file", "path": "missing.npz"}}, {}, "data.path")):
        with pytest.raises(AutokdError) as error:  # a ConfigError or a DataError, naming the trial
            exported(config, **attrs)
        assert str(error.value).startswith(f"study 'portable' trial {number}: {key}: "), str(error.value)


def test_exported_config_by_default_gives_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    """The API without a study file (spec None) or a folder: stored paths from, and written relative to, the cwd."""
    from autokd.export import exported_config

    url = load_study(_one_trial_study(tmp_path, {"name": "file", "path": "mine.npz"})).storage_url()
    np.savez(tmp_path / "mine.npz", x=np.random.default_rng(0).random((50, 8, 8)), y=np.arange(50) % 5)
    monkeypatch.chdir(tmp_path)
    study = optuna.load_study(study_name="portable", storage=url)
    config = exported_config(study, study.trials[0], None, url)
    assert config.data.path == "mine.npz" and config.provenance["storage"] == "sqlite:///portable.db"


def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_fashion(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, 2049)


@pytest.mark.parametrize("data, written", [
    ({"name": "digits", "mnist1d_samples": 500, "data_dir": "ignored", "path": "ignored.npz"}, {}),
    ({"name": "mnist1d", "mnist1d_samples": 500}, {"mnist1d_samples": 500}),
    ({"name": "fashion-mnist", "data_dir": "fashion"}, {"data_dir": "../fashion"}),
    ({"name": "file", "path": "mine.npz"}, {"path": "../mine.npz"}),
])
def test_exported_data_holds_only_what_its_dataset_reads_relative_to_the_file(tmp_path, data, written):
    _fake_fashion(tmp_path / "fashion")
    np.savez(tmp_path / "mine.npz", x=np.random.default_rng(0).random((50, 8, 8)), y=np.arange(50) % 5)
    study = _one_trial_study(tmp_path, {**data, "val_fraction": 0.2})
    path, _ = export_config(str(study), tmp_path / "out" / "best.yaml", trial=0)

    document = yaml.safe_load(path.read_text())
    assert document["data"] == {"name": data["name"], "val_fraction": 0.2, "seed": 0, **written}
    assert not any(Path(s).is_absolute() for s in strings_in(document)), path.read_text()
    assert str(tmp_path) not in path.read_text()
    # `autokd train` reads the relative paths from the file's folder and finds the same data.
    exported, original = load_train_config(path), load_study(study)
    assert load_data(exported.data).fingerprint() == load_data(original.data).fingerprint()


def test_fashion_mnist_without_a_data_dir_exports_none(tmp_path, monkeypatch):
    _fake_fashion(tmp_path / "fashion")
    monkeypatch.setattr("autokd.data_sources.FASHION_MNIST_DIR", str(tmp_path / "fashion"))  # "the installed package"
    study = _one_trial_study(tmp_path, {"name": "fashion-mnist"})
    path, _ = export_config(str(study), tmp_path / "best.yaml", trial=0)
    assert "data_dir" not in yaml.safe_load(path.read_text())["data"]


@pytest.mark.slow
def test_an_exported_config_copied_to_another_folder_trains_there(tmp_path):
    """`autokd export`, then the file alone copied elsewhere: no path of this machine in it, and it trains."""
    (tmp_path / "made").mkdir()
    study = _one_trial_study(tmp_path / "made", {"name": "digits", "val_fraction": 0.15, "mnist1d_samples": 500},
                             teachers=[{"name": "tiny", "arch": TEACHER_ARCH, "schedule": {"epochs": 1}}],
                             distill={"w_ce": 0.5, "w_kd": 0.5})
    exported = tmp_path / "made" / "out" / "best.yaml"
    run_cli("export", study, "--trial", "0", "-o", exported, check=True)
    text = exported.read_text()
    machine = {str(tmp_path), str(REPO), str(Path.home()), os.path.realpath(tmp_path)}
    assert not [part for part in machine if part in text], text
    assert not any(Path(s).is_absolute() or s.startswith("~") for s in strings_in(yaml.safe_load(text))), text
    assert "mnist1d_samples" not in text and "data_dir" not in text

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(exported, elsewhere / "best.yaml")
    completed = subprocess.run([*AUTOKD, "train", "best.yaml"], cwd=elsewhere, capture_output=True, text=True,
                               timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (elsewhere / "runs" / "portable-trial0" / "metrics.json").is_file()
    assert list((elsewhere / ".cache" / "autokd" / "teachers").iterdir())  # the teacher rebuilt there, once
    assert "warning" not in completed.stdout + completed.stderr  # under the very cache key the trial used
