"""Export one trial of a study as a standalone training config (`autokd export`).

The search stores every trial's full `TrainConfig` (user attr ``config``). Export picks one
COMPLETE trial by a rule, then writes that config as YAML with everything a later
`autokd train` needs to retrain exactly the trial's student: the trial's seed, only the teachers
it learnt from, and a ``provenance`` block naming the study, the trial, its validation accuracy
and size, the cache key of every teacher it learnt from and the input normalisation its data
had (``normalization``: mean, std, what raw inputs are).

The file is portable: it holds no path of the exporting machine. Data files, a Fashion-MNIST
``data_dir`` (only when the study gave one), teacher files (checkpoint, torchscript, logits)
and a custom student's ``path`` (the folder of its factory's module) are written relative to the
exported file, as `autokd train` reads them (absolute only when they share no folder but the root
with it); ``cache_dir`` is the study's cache when that lies inside the
exported file's folder (relative to it), else the default ``.cache/autokd`` beside the file
(teachers are rebuilt there once, under the same keys: a copied file never makes folders outside
its own); a SQLite storage in the provenance is relative to the exported file, any
password masked.
Data keys that the dataset does not read (``mnist1d_samples`` for digits, ...) are left out.

Selection reads validation accuracy only; test accuracy is never stored in a study.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import yaml

from autokd.atomic import write_text
from autokd.config_files import load_train_config, read_yaml, train_config_from_dict
from autokd.errors import AutokdError
from autokd.pareto import knee_index, select_index
from autokd.paths import relative_path, relative_paths, resolve_paths
from autokd.results import architecture_choices, log_sizes, study_and_spec
from autokd.spec import DataSpec, StudySpec, TrainConfig

if TYPE_CHECKING:
    from autokd.data import Dataset

RULE_FLAGS = "--trial, --max-params/--max-bytes, --min-accuracy, --knee"
DATASET_KEYS = {"data_dir": "fashion-mnist", "path": "file", "mnist1d_samples": "mnist1d"}  # key -> the one reader
DEFAULT_CACHE_DIR = TrainConfig.model_fields["cache_dir"].default
COMPLETE = optuna.trial.TrialState.COMPLETE


def export_config(study: str, output: str | Path, *, storage: str | None = None, trial: int | None = None,
                  max_params: float | None = None, max_bytes: float | None = None,
                  min_accuracy: float | None = None, knee: bool = False) -> tuple[Path, int]:
    """Write the trial chosen by exactly one rule as a training config; returns (path, trial number).

    Rules: ``trial`` (that trial), ``max_params``/``max_bytes`` (best val accuracy within the
    size), ``min_accuracy`` (fewest params with val accuracy >= A), ``knee`` (knee of the front).

    Example::

        path, number = export_config("studies/digits.yaml", "best.yaml", max_params=50_000)
        # then: autokd train best.yaml --epochs 60
    """
    output = Path(output)
    if output.is_dir():
        raise AutokdError(f"export: --output {output}: is a folder; give a file name such as {output / 'best.yaml'}")
    optuna_study, spec = study_and_spec(study, storage)
    chosen = choose_trial(optuna_study, trial=trial, max_params=max_params, max_bytes=max_bytes,
                          min_accuracy=min_accuracy, knee=knee)
    storage_url = storage or spec.storage_url()  # study_and_spec needs one of the two
    config = exported_config(optuna_study, chosen, spec, storage_url, folder=output.parent)
    _write_checked(output, _header(optuna_study, chosen, output) + _yaml(config), config)
    return output, chosen.number


def _check_one_rule(trial, max_params, max_bytes, min_accuracy, knee) -> None:
    given = [flag for flag, on in (("--trial", trial is not None),
                                   ("--max-params/--max-bytes", max_params is not None or max_bytes is not None),
                                   ("--min-accuracy", min_accuracy is not None), ("--knee", knee)) if on]
    if len(given) != 1:
        got = "none" if not given else " and ".join(given)
        raise AutokdError(f"export: give exactly one selection rule of {RULE_FLAGS}; got {got}")


# ---------------------------------------------------------------------------------------------
# Choosing the trial


def choose_trial(study: optuna.Study, *, trial: int | None = None, max_params: float | None = None,
                 max_bytes: float | None = None, min_accuracy: float | None = None,
                 knee: bool = False) -> optuna.trial.FrozenTrial:
    """The COMPLETE trial that the (single) given rule picks, or a one-line AutokdError.

    Example::

        chosen = choose_trial(optuna.load_study(study_name="digits", storage=url), knee=True)
    """
    _check_one_rule(trial, max_params, max_bytes, min_accuracy, knee)
    if trial is not None:
        return _numbered_trial(study, trial)
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    choices = architecture_choices(study)
    if choices:  # two levels: only an architecture's choice stands for it (never a config below its baselines)
        chosen = {choice.trial for choice in choices.values()}
        complete = [t for t in complete if t.number in chosen]
    if not complete:
        raise AutokdError(f"export: study {study.study_name!r} has no complete trial yet "
                          f"({_state_counts(study)})")
    if knee:
        directions = [d.name.lower() for d in study.directions]
        return complete[knee_index(log_sizes(np.array([t.values for t in complete], dtype=float)), directions)]
    accuracy = np.array([t.values[0] for t in complete], dtype=float)
    if min_accuracy is not None:
        return complete[_smallest_accurate_index(accuracy, _attr(complete, "params"), min_accuracy)]
    return complete[_best_within_size_index(accuracy, complete, max_params, max_bytes)]


def _numbered_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        known = f"trials 0-{len(trials) - 1}" if trials else "no trials yet"
        raise AutokdError(f"export: --trial {number}: study {study.study_name!r} has no trial {number} ({known})")
    chosen = found[0]
    if chosen.state != COMPLETE:
        reason = (chosen.user_attrs.get("failure_reason") or chosen.user_attrs.get("pruned_reason")
                  or ("still running" if chosen.state == optuna.trial.TrialState.RUNNING else "no reason recorded"))
        raise AutokdError(f"export: --trial {number}: trial {number} is {chosen.state.name} "
                          f"({str(reason).splitlines()[0]}); only COMPLETE trials can be exported")
    return chosen


def _best_within_size_index(accuracy: np.ndarray, complete: list, max_params, max_bytes) -> int:
    params, bytes_fp32 = _attr(complete, "params"), _attr(complete, "bytes_fp32")
    index = select_index(accuracy, params, bytes_fp32, max_params=max_params, max_bytes=max_bytes)
    if index is not None:
        return index
    given = [(name, flag, limit, values) for name, flag, limit, values in
             (("params", "--max-params", max_params, params), ("bytes_fp32", "--max-bytes", max_bytes, bytes_fp32))
             if limit is not None]
    flags = " ".join(f"{flag} {limit}" for _, flag, limit, _ in given)
    condition = " and ".join(f"{name} <= {limit}" for name, _, limit, _ in given)
    smallest = [(name, f"{np.nanmin(values):,.0f}") for name, _, _, values in given]
    shown = smallest[0][1] if len(smallest) == 1 else ", ".join(f"{name} {value}" for name, value in smallest)
    raise AutokdError(f"export: {flags}: no complete trial has {condition} (smallest: {shown})")


def _smallest_accurate_index(accuracy: np.ndarray, params: np.ndarray, min_accuracy: float) -> int:
    """Fewest params among rows with accuracy >= min_accuracy; ties: better accuracy, then lower index."""
    candidates = np.flatnonzero(accuracy >= min_accuracy)
    if candidates.size == 0:
        raise AutokdError(f"export: --min-accuracy {min_accuracy}: no complete trial has val_accuracy >= "
                          f"{min_accuracy} (best: {np.nanmax(accuracy):.4f})")
    order = np.lexsort((candidates, -accuracy[candidates], params[candidates]))
    return int(candidates[order[0]])


def _attr(trials: list, name: str) -> np.ndarray:
    # A trial without the attribute (an older study) never qualifies: NaN fails every comparison.
    return np.array([trial.user_attrs.get(name, np.nan) for trial in trials], dtype=float)


def _state_counts(study: optuna.Study) -> str:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"


# ---------------------------------------------------------------------------------------------
# Building the config


def exported_config(study: optuna.Study, trial: optuna.trial.FrozenTrial, spec: StudySpec | None,
                    storage_url: str, folder: str | Path = ".") -> TrainConfig:
    """The trial's TrainConfig, made standalone and portable, for a file in `folder`.

    Its seed, only the teachers it used, only the data keys its dataset reads, paths relative
    to `folder` (see the module docstring), and a provenance with the teachers' cache keys and
    the data's input normalisation.

    Example::

        config = exported_config(study, study.trials[7], spec, "sqlite:///studies/digits.db")
        assert config.seed == study.trials[7].user_attrs["seed"]
    """
    where = f"study {study.study_name!r} trial {trial.number}"
    if "config" not in trial.user_attrs:
        raise AutokdError(f"export: {where} has no stored config (user attr 'config'); was it run by autokd search?")
    # Stored paths are relative to the study file: absolute from its folder here, relative to `folder` at the end.
    stored = resolve_paths(train_config_from_dict(trial.user_attrs["config"], where),
                           spec.folder if spec is not None else Path.cwd())
    uses_teachers = stored.distill.uses_teachers
    teachers = stored.selected_teachers() if uses_teachers else []
    data_spec = _dataset_data(stored.data)
    from autokd.data import load_data  # torch: once a trial is chosen (a bad choice is refused without it)

    data = load_data(data_spec, where)
    keys = _teacher_keys(teachers, data, where)  # from the absolute files, before they become relative
    folder = Path(folder)
    document = {
        **stored.model_dump(mode="json"),
        "name": f"{study.study_name}-trial{trial.number}",
        "seed": int(trial.user_attrs.get("seed", stored.seed)),
        "data": data_spec.model_dump(mode="json"),
        "teachers": [t.model_dump(mode="json") for t in teachers],
        "distill": {**stored.distill.model_dump(mode="json"), **({} if uses_teachers else {"teachers": None})},
    }
    config = relative_paths(train_config_from_dict(document, where), folder)
    config.cache_dir = _portable_cache_dir(config.cache_dir)
    config.provenance = _provenance(study, trial, _portable_storage(storage_url, folder), keys, data)
    return config


def _dataset_data(data: DataSpec) -> DataSpec:
    """`data` with the keys its dataset does not read back at their defaults."""
    updates = {key: DataSpec.model_fields[key].default for key, reader in DATASET_KEYS.items() if reader != data.name}
    return data.model_copy(update=updates)


def _portable_path(path: Path, folder: Path) -> str:
    """`path` (from the working directory) relative to `folder`, so that the exported file and what it names can
    move together; absolute only when the two share no folder but the filesystem root (`paths.relative_path`)."""
    return relative_path(os.path.abspath(Path(path).expanduser()), folder)


def _portable_cache_dir(cache_dir: str) -> str:
    """The teacher cache of an exported config, given relative to the file's folder: kept when it lies inside that
    folder, else the default beside the file (teachers are rebuilt there once, under the same cache keys), so that
    a file copied elsewhere never makes folders outside its own."""
    path = Path(cache_dir)
    return cache_dir if not path.is_absolute() and ".." not in path.parts else DEFAULT_CACHE_DIR


def _portable_storage(url: str, folder: Path) -> str:
    """The storage URL with any password masked; a SQLite file relative to `folder`."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return "sqlite:///" + _portable_path(Path(url.removeprefix("sqlite:///")), folder)
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: its scheme only
        return url.split("://", 1)[0] + "://..."


def _teacher_keys(teachers: list, data: Dataset, where: str) -> dict[str, str]:
    """Each teacher's cache key, as `teachers.prepare_teachers` computes it (train checks them)."""
    if not teachers:
        return {}
    missing = [t for t in teachers if t.file and not Path(t.file).is_file()]
    if missing:
        raise AutokdError(f"export: {where}: teacher {missing[0].file_key} not found: {missing[0].file} (open the "
                          "study by its YAML file so that relative teacher paths resolve)")
    from autokd.teacher_files import file_digest
    from autokd.teachers import teacher_key

    fingerprint = data.fingerprint()
    return {t.name: teacher_key(t, fingerprint, file_digest(Path(t.file)) if t.file else None) for t in teachers}


def _provenance(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage: str,
                teacher_keys: dict[str, str], data: Dataset) -> dict[str, Any]:
    sizes = {name: trial.user_attrs.get(name) for name in ("params", "bytes_fp32", "macs")}
    return {"study": study.study_name, "storage": storage, "trial": trial.number,
            "val_accuracy": float(trial.values[0]), **sizes,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "teacher_keys": teacher_keys, "normalization": data.normalization.as_dict()}


# ---------------------------------------------------------------------------------------------
# Writing


def _yaml(config: TrainConfig) -> str:
    document = config.model_dump(mode="json")
    name = document["data"]["name"]
    document["data"] = {key: value for key, value in document["data"].items()
                        if value is not None and DATASET_KEYS.get(key, name) == name}  # only what the dataset reads
    return yaml.safe_dump({"name": document.pop("name"), **document}, sort_keys=False)  # name first: a title


def _header(study: optuna.Study, trial: optuna.trial.FrozenTrial, output: Path) -> str:
    params = trial.user_attrs.get("params")
    size = f", {params:,} params" if isinstance(params, int) else ""
    return (f"# Exported by `autokd export` from study {study.study_name!r}, trial {trial.number} "
            f"(val accuracy {trial.values[0]:.4f}{size}).\n"
            f"# Train it at production length: autokd train {output.name} --epochs E [--seeds K]\n")


def _write_checked(path: Path, text: str, expected: TrainConfig) -> None:
    """Write `text` atomically, once it reads back as `expected` (`autokd.atomic.write_text`'s check).

    Read back as written (relative paths unresolved), and once more as `autokd train` reads it.
    """
    def reads_back(temporary: Path) -> None:
        load_train_config(temporary)
        if train_config_from_dict(read_yaml(temporary), str(path)).model_dump() != expected.model_dump():
            raise RuntimeError(f"exported config does not round-trip through load_train_config: {path}")

    write_text(path, text, check=reads_back)
