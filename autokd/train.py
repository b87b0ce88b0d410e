"""Production training: one config, the same `distill.fit` as the search, a run folder out.

A run folder holds::

    student.pt                state_dict; loads with torch.load(..., weights_only=True)
    student.torchscript.pt    the student traced in eval mode behind its input normalisation:
                              takes RAW inputs (torch.jit.load, no autokd needed)
    student.onnx              the same with a dynamic batch axis, when `onnx` is installed
    config.yaml               what was trained, replayable with `autokd train`
    metrics.json              val/test accuracy per seed, mean and std, size, input shape,
                              classes, train seconds, the input normalisation (``normalization``:
                              mean, std and what raw inputs are) and what each export wrote (or why not)

It is written to a temporary folder and renamed, so a crash never leaves a half-written run
that looks complete. `load_student(folder)` rebuilds the trained student from it; the state_dict
and that student expect normalised inputs, `load_student(folder, raw_inputs=True)` raw ones.
"""

from __future__ import annotations

import json
import logging
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml

from autokd.archs import check_code_allowed
from autokd.atomic import check_writable, replace_folder
from autokd.config_files import load_train_config
from autokd.custom_student import check_student
from autokd.data import load_data
from autokd.distill import evaluate
from autokd.errors import CheckpointError, ConfigError
from autokd.paths import relative_paths, resolve_paths
from autokd.runner import run_config
from autokd.sizes import model_size
from autokd.spec import TrainConfig
from autokd.teacher_files import load_state_dict
from autokd.teacher_outputs import OnlineTeachers, check_attention, teacher_outputs
from autokd.teachers import Teacher, prepare_teachers
from autokd.zoo import ZooModel, build_model

STUDENT_FILE = "student.pt"
TORCHSCRIPT_FILE = "student.torchscript.pt"
ONNX_FILE = "student.onnx"
INT8_FILE = "student.int8.pt"


@dataclass
class TrainRun:
    folder: Path
    student: ZooModel
    metrics: dict


def train(config: TrainConfig | str | Path, out_dir: str | Path | None = None, *, epochs: int | None = None,
          seeds: int = 1, augment: Sequence[str] | None = None, source: str | None = None,
          log: Callable[[str], None] = print) -> TrainRun:
    """Train the config's student (K seeds) and write a run folder; returns the first seed's model.

    Example::

        run = autokd.train("best.yaml", "runs/best", epochs=30)
        print(run.metrics["test_accuracy_mean"])
    """
    config, source = _as_config(config, source)
    check_code_allowed(config.student, "student", source)  # running the user's code is opt-in
    config = resolve_paths(config, Path.cwd())  # a copy; a TrainConfig built in Python: paths from the cwd
    if epochs is not None:
        config.schedule.epochs = epochs
    if augment is not None:
        config.augment = list(augment)
    folder = Path(out_dir) if out_dir else Path("runs") / config.name
    check_writable(folder, "--out" if out_dir else f"{source}: run folder", folder=True)  # before hours of training

    data = load_data(config.data, source)
    check_student(config.student, data.input_shape, data.num_classes, source=source,  # before teachers are cached
                  features=config.distill.w_feat > 0, int8=config.quantize.int8)
    if config.distill.w_at > 0:
        check_attention(config.student, config.selected_teachers(), data.input_shape, source)
    teachers, targets = prepare_targets(config, data, source, log)
    _check_teachers_match_export(config, teachers, log)
    per_seed, students = [], []
    for offset in range(seeds):
        student, result = run_config(config, data, targets, seed=config.seed + offset)
        per_seed.append({"seed": config.seed + offset, "val_accuracy": result.val_accuracy,
                         "test_accuracy": evaluate(student, data.x_test, data.y_test),
                         "train_seconds": round(result.train_seconds, 3), "epochs": result.epochs_trained})
        students.append(student)
        log(f"seed {config.seed + offset}: val {per_seed[-1]['val_accuracy']:.4f} "
            f"test {per_seed[-1]['test_accuracy']:.4f} ({result.train_seconds:.1f} s)")

    metrics = {**_summary(per_seed), **model_size(students[0], data.input_shape).as_dict(),
               "input_shape": list(data.input_shape), "num_classes": data.num_classes,
               "normalization": data.normalization.as_dict(), "seeds": per_seed,
               "teachers": {t.name: {"val_accuracy": t.meta["val_accuracy"], "test_accuracy": t.meta["test_accuracy"],
                                     "params": t.meta["params"]} for t in teachers}}
    metrics["exports"] = write_run(folder, students[0], config, metrics)
    for kind, outcome in metrics["exports"].items():
        if outcome not in (TORCHSCRIPT_FILE, ONNX_FILE):
            log(f"{kind} export: {outcome}")
    return TrainRun(folder, students[0], metrics)


def _as_config(config: TrainConfig | str | Path, source: str | None) -> tuple[TrainConfig, str]:
    """(the config, the file name its errors and relative paths refer to)."""
    if isinstance(config, TrainConfig):
        return config, source or "<config>"
    return load_train_config(config), source or str(config)


def _check_teachers_match_export(config: TrainConfig, teachers: list[Teacher], log: Callable[[str], None]) -> None:
    """Warn when a teacher differs from the one the exported trial learnt from: the trial won't reproduce."""
    expected = (config.provenance or {}).get("teacher_keys", {})
    for teacher in teachers:
        key = teacher.meta.get("key")
        if teacher.name in expected and key != expected[teacher.name]:
            log(f"warning: teacher {teacher.name!r} (cache key {str(key)[:12]}) is not the one trial "
                f"{config.provenance.get('trial')} learnt from ({expected[teacher.name][:12]}); "
                "accuracy may differ from the search")


def prepare_targets(config: TrainConfig, data, source: str = "<config>", log: Callable[[str], None] = print):
    """The config's teachers (trained/loaded once, cached) and where the student's targets come from.

    Cached outputs are per sample index; augmented inputs need the teachers run on the batch itself,
    so augmenting with an outputs-only teacher (a `logits` file) is refused, as is feature
    distillation with a teacher that gives no features; both before anything is written. With
    w_at > 0 the cached outputs carry the teachers' attention maps (attention transfer).
    """
    chosen = config.selected_teachers() if config.distill.uses_teachers else []
    offline = [t for t in chosen if t.kind == "logits"]
    if config.augment and offline:
        raise ConfigError(f"{source}: augment: {'+'.join(config.augment)} needs teachers run on every augmented "
                          f"batch, but teacher {offline[0].name!r} is precomputed outputs "
                          f"(teachers.{config.teachers.index(offline[0])}.logits); train without augment, "
                          "or use a torchscript or zoo teacher")
    # A config file's paths were made absolute by its loader (a TrainConfig built in Python's: from the cwd).
    teachers = prepare_teachers(chosen, data, config.cache_dir, log=log, source=source,
                                features=config.distill.w_feat > 0)
    if not teachers:
        return teachers, None
    if config.augment:
        return teachers, OnlineTeachers([t.model for t in teachers], [t.name for t in teachers])
    return teachers, teacher_outputs(teachers, data, attention=config.distill.w_at > 0)


def build_student(config: TrainConfig | str | Path, *, input_shape: Sequence[int] | None = None,
                  num_classes: int | None = None, seed: int | None = None) -> ZooModel:
    """The config's student, freshly initialised from `seed` (default: the config's), for your own loop.

    Without `input_shape`/`num_classes` the config's dataset is loaded to find them. The
    initial weights depend on the seed only (`zoo.build_model(seed=)`), so the search and
    `autokd train` start from the same student for the same seed. A custom student
    (``family: custom``) is a `custom_student.CustomStudent` around your factory's module, and
    needs the opt-in (``AUTOKD_ALLOW_CODE=1``, or ``autokd.archs.allow_code()``).

    Example::

        student = autokd.build_student("best.yaml")                 # train mode, untrained
        logits, features = student.forward_features(torch.zeros(4, 1, 8, 8))
    """
    config, source = _as_config(config, None)
    check_code_allowed(config.student, "student", source)
    if input_shape is None or num_classes is None:
        data = load_data(config.data, source)
        input_shape, num_classes = input_shape or data.input_shape, num_classes or data.num_classes
    return build_model(config.student, tuple(input_shape), num_classes, seed=config.seed if seed is None else seed,
                       source=source)


def load_student(run_dir: str | Path, *, raw_inputs: bool = False) -> ZooModel:
    """The trained student of a run folder, in eval mode; a one-line CheckpointError if it is unusable.

    The student expects *normalised* inputs, as `load_data` returns them and as it was trained.
    With ``raw_inputs=True`` it comes behind its normalisation (a `data.RawInputModel`) and takes
    raw inputs, like student.torchscript.pt and student.onnx; metrics.json's ``normalization``
    says what raw means for the dataset (digits: pixel values 0..16; Fashion-MNIST: bytes 0..255).

    Example::

        student = autokd.load_student("runs/best")
        predictions = student(load_data(config.data).x_test).argmax(dim=1)
        model = autokd.load_student("runs/best", raw_inputs=True)
        predictions = model(load_data(config.data, normalize=False).x_test).argmax(dim=1)   # the same
    """
    folder = Path(run_dir)
    missing = [name for name in ("config.yaml", "metrics.json") if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: not an autokd run folder (no {missing[0]})")
    config = load_train_config(folder / "config.yaml")
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        input_shape, num_classes = tuple(metrics["input_shape"]), int(metrics["num_classes"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / 'metrics.json'}: unreadable or without input_shape/num_classes: "
                              f"{type(error).__name__}") from None
    student = build_model(config.student, input_shape, num_classes, source=str(folder / "config.yaml"))
    load_state_dict(student, folder / STUDENT_FILE, f"run {folder}")
    if not raw_inputs:
        return student.eval()
    from autokd.data import Normalization

    try:
        normalization = Normalization.from_dict(metrics["normalization"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{folder / 'metrics.json'}: raw_inputs=True: no usable 'normalization' recorded "
                              "(a run written before autokd recorded it); load it without raw_inputs and "
                              "normalise with load_data(config.data).normalization") from None
    return normalization.wrap(student).eval()


def _summary(per_seed: list[dict]) -> dict:
    summary = {}
    for key in ("val_accuracy", "test_accuracy", "train_seconds"):
        values = [row[key] for row in per_seed]
        summary[key] = values[0]
        summary[f"{key}_mean"] = statistics.fmean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def write_run(folder: Path, student: ZooModel, config: TrainConfig, metrics: dict, data=None) -> dict[str, str]:
    """Write the run folder atomically (a temp folder renamed into place); returns what each export wrote.

    `metrics` must hold ``input_shape`` and ``num_classes`` (`load_student` rebuilds the model from
    them) and ``normalization`` (built into the TorchScript and ONNX files, which take raw inputs).
    A previous run in `folder` is removed only once the new one is in place.

    With ``quantize.int8`` in `config` the student is quantised (`autokd.quantize`, calibrated on
    `data`'s training split; `data` is loaded from the config when not given), written as
    student.int8.pt, and its ``val_accuracy_int8`` and ``test_accuracy_int8`` are added to `metrics`.
    """
    from autokd.data import Normalization

    normalization = Normalization.from_dict(metrics["normalization"])
    quantized = _quantized(student, config, data, metrics) if config.quantize.int8 else None
    with replace_folder(folder) as staging:  # the previous run stays until the new one is in place
        torch.save(student.state_dict(), staging / STUDENT_FILE)
        written = relative_paths(config, folder)  # relative to the run folder, as `load_train_config` reads them
        (staging / "config.yaml").write_text(yaml.safe_dump(written.model_dump(mode="json"), sort_keys=False))
        exports = export_student(student, tuple(metrics["input_shape"]), staging, normalization, quantized)
        (staging / "metrics.json").write_text(json.dumps({**metrics, "exports": exports}, indent=2))
    return exports


def _quantized(student: ZooModel, config: TrainConfig, data, metrics: dict):
    """The int8 student, its accuracies added to `metrics`; or the reason it failed (a string)."""
    from autokd.quantize import evaluate_int8, quantize_student

    try:
        data = data if data is not None else load_data(config.data)
        model = quantize_student(student, data.x_train[:config.quantize.calibration_samples])
        metrics["val_accuracy_int8"] = evaluate_int8(model, data.x_val, data.y_val)
        metrics["test_accuracy_int8"] = evaluate_int8(model, data.x_test, data.y_test)
        return model
    except Exception as error:  # like an exporter's: recorded, never raised (the fp32 run is fine)
        return f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def export_student(student: ZooModel, input_shape: tuple[int, ...], folder: Path,
                   normalization=None, quantized: torch.nn.Module | str | None = None) -> dict[str, str]:
    """Write TorchScript and ONNX copies of `student` into `folder`; {kind: file written, or why not}.

    With `normalization` (a `data.Normalization`) the files hold the student behind it, so they
    take raw inputs (`data.RawInputModel`); without it they take what `student` takes.
    With `quantized` (the student quantised by `autokd.quantize.quantize_student`) its TorchScript,
    behind the same normalisation, goes to student.int8.pt (kind ``int8``); a string there is why
    quantising failed, recorded as the outcome.
    An exporter failure is recorded, never raised: the state_dict is the checkpoint that matters.

    Example::

        export_student(student, (1, 8, 8), Path("runs/best"), load_data(config.data).normalization)
        # {"torchscript": "student.torchscript.pt", "onnx": "student.onnx"}
    """
    model = student.cpu().eval() if normalization is None else normalization.wrap(student.cpu()).eval()
    example = torch.zeros(2, *input_shape)  # batch 2: torch.export specialises a batch of 1 to a constant
    outcomes = {}
    files = [("torchscript", TORCHSCRIPT_FILE, _write_torchscript, model), ("onnx", ONNX_FILE, _write_onnx, model)]
    if isinstance(quantized, str):
        outcomes["int8"] = quantized
    elif quantized is not None:
        int8 = quantized.eval() if normalization is None else normalization.wrap(quantized).eval()
        files.append(("int8", INT8_FILE, _write_torchscript, int8))
    for kind, file, write, exported in files:
        try:
            write(exported, example, folder / file)
            outcomes[kind] = file
        except ImportError as error:
            outcomes[kind] = f"skipped: {error.name or 'a module'} is not installed"
        except Exception as error:  # exporters raise many types; the run itself is fine
            outcomes[kind] = f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
    return outcomes


def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the one format C++ loads
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), str(path))


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import onnx  # noqa: F401  (the exporter needs it; without it the export is skipped, not failed)

    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # the exporter warns about optional torchvision ops
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                              external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)
