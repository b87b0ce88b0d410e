"""Teachers checked and prepared: zoo teachers trained (or loaded) once, every teacher cached by content hash.

A teacher is a zoo architecture trained here, a zoo checkpoint, a TorchScript file, or a file of
precomputed outputs (`spec.TeacherSpec`; files are read by `autokd.teacher_files`). A teacher
trained here learns from the labeled training split only (with `data.unlabeled`, the unlabeled
inputs are its pool to label, never its data). Cache layout, one folder per teacher under
``<cache_dir>/teachers/``::

    <name>-<key12>/model.pt      state_dict (loads with weights_only=True); zoo teachers only
                   meta.json     architecture, schedule, accuracies, size, train seconds
                   outputs.pt, attention.pt: the teacher's outputs per sample (`autokd.teacher_outputs`)

The key hashes everything that determines the teacher's outputs: architecture, schedule, seed
(and the checkpoint's bytes for loaded teachers), or the bytes of a TorchScript or outputs file,
and the data's fingerprint (which covers the labeled split and the unlabeled inputs, so another
`keep_labels` subset or another unlabeled file is another teacher). Files are written to a
temporary name and renamed (`autokd.atomic`), so a crash never leaves a half-written entry that a
later run trusts. A teacher that cannot teach (a checkpoint with weights not finite, a file that
does not load, outputs of the wrong shape, rows not in the training split's order; for a search,
val accuracy at chance; with feature distillation, a teacher without features) is refused before
anything is written.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from autokd.atomic import torch_save, write_bytes
from autokd.data import Dataset
from autokd.distill import EpochResult, evaluate
from autokd.errors import CheckpointError, ConfigError
from autokd.runner import train_model
from autokd.sizes import model_size
from autokd.spec import DistillSpec, TeacherSpec, cut
from autokd.teacher_files import (TorchScriptTeacher, batched_logits, chance_accuracy, file_digest, load_state_dict,
                                  load_torchscript_teacher, logits_accuracy, read_outputs_file)
from autokd.zoo import ZooModel, build_model


CACHE_VERSION = 2  # 2: teacher init seeded by its own seed


@dataclass
class Teacher:
    name: str
    model: nn.Module | None  # a ZooModel, a TorchScriptTeacher, or None: precomputed outputs only
    meta: dict  # val_accuracy, test_accuracy (None when not known), params, bytes_fp32, macs, train_seconds, key
    folder: Path
    outputs_file: Path | None = None  # the .npz of an outputs-only teacher

    @property
    def feature_dim(self) -> int:
        """Width of its features; 0 when it gives none (feature distillation with it is refused)."""
        return int(self.model.feature_dim) if self.model is not None else int(self.meta["feature_dim"])


def teacher_key(spec: TeacherSpec, data_fingerprint: str, digest: str | None = None) -> str:
    """Content hash of everything that determines the teacher's outputs.

    `digest` is `file_digest` of the teacher's file (`spec.file`: a checkpoint, a TorchScript or an
    outputs file), None for a zoo teacher trained here.
    """
    if spec.kind in ("torchscript", "logits"):  # the file is the teacher: schedule and seed play no part
        identity = {"version": CACHE_VERSION, "kind": spec.kind, "inputs": spec.inputs, "file": digest,
                    "data": data_fingerprint}
    else:
        identity = {"version": CACHE_VERSION, "arch": spec.arch, "schedule": spec.schedule.model_dump(),
                    "seed": spec.seed, "data": data_fingerprint, "checkpoint": digest}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def check_teachers(specs: list[TeacherSpec], data: Dataset, source: str = "<study>", *, can_teach: bool = True,
                   features: bool = False) -> None:
    """Check every teacher that comes from a file; writes nothing.

    A checkpoint exists, reads as a state_dict, fits its architecture and has finite weights. A
    TorchScript file loads and maps a batch of training inputs to finite logits [batch, classes].
    An outputs file holds `OUTPUT_ARRAYS` only, each with a row per sample of its split and a
    column per class, finite, and its train_logits agree with the training labels above chance
    (rows in the training split's order). With `can_teach` (a search), val accuracy is above
    chance where it is known. With `features` (w_feat > 0) every teacher gives features.
    """
    chance, margin = chance_accuracy(data.y_val) if can_teach else (0.0, 0.0)
    for index, spec in enumerate(specs):
        if spec.kind == "zoo":  # trained here, and it has features
            continue
        where = f"{source}: teachers.{index}.{spec.file_key}"
        accuracy, feature_dim = None, 1  # val accuracy: None when not measured
        if spec.kind == "checkpoint":
            model = build_model(spec.arch, data.input_shape, data.num_classes, seed=spec.seed)
            load_state_dict(model, Path(spec.checkpoint), where)
            accuracy = evaluate(model.eval(), data.x_val, data.y_val) if can_teach else None
        elif spec.kind == "torchscript":
            teacher = load_torchscript_teacher(spec, Path(spec.torchscript), data, where)
            accuracy = logits_accuracy(batched_logits(teacher, data.x_val), data.y_val) if can_teach else None
            feature_dim = teacher.feature_dim
        else:
            outputs = read_outputs_file(Path(spec.logits), data, where)
            accuracy = (logits_accuracy(outputs["val_logits"], data.y_val) if can_teach and "val_logits" in outputs
                        else None)
            feature_dim = outputs["train_features"].shape[1]
        if accuracy is not None and accuracy <= chance + margin:
            raise CheckpointError(f"{where}: teacher {cut(spec.name)!r} is at chance level: val accuracy "
                                  f"{accuracy:.4f} vs {chance:.4f} by always answering the most common class; "
                                  "it has nothing to teach (untrained, or trained on other data?)")
        if features and not feature_dim:
            how = ("add train_features to its file" if spec.kind == "logits" else
                   "give its module a forward_features returning (logits, features)")
            raise ConfigError(f"{source}: distill.w_feat: feature distillation needs teacher features, but teacher "
                              f"{cut(spec.name)!r} ({spec.kind}) gives none; use w_feat 0, or {how}")


def prepare_teachers(specs: list[TeacherSpec], data: Dataset, cache_dir: str | Path, *, device: str = "auto",
                     log: Callable[[str], None] = lambda message: None, source: str = "<study>",
                     progress: bool = True, features: bool = False) -> list[Teacher]:
    """Each teacher from the cache, or trained/loaded now and cached. A second call trains nothing.

    All teacher files are checked (`check_teachers`; with `features`, every teacher must give
    features) before anything is trained or written. Training a teacher shows one progress bar on
    stderr when it is a terminal (and `progress`), else one line through `log`.
    """
    # A search has checked more, before its study.
    check_teachers(specs, data, source, can_teach=False, features=features)
    root = Path(cache_dir) / "teachers"
    entries = []
    for spec in specs:
        file = Path(spec.file) if spec.file else None
        key = teacher_key(spec, data.fingerprint(), file_digest(file) if file else None)
        entries.append((spec, file, key, root / f"{spec.name}-{key[:12]}"))
    to_train = sum(spec.kind == "zoo" and not (folder / "meta.json").is_file() for spec, _, _, folder in entries)
    if to_train:
        log(f"training {to_train} teacher{'s' if to_train > 1 else ''} once; "
            f"{'they are' if to_train > 1 else 'it is'} cached in {root} for later runs")
    bars = progress and sys.stderr.isatty()
    teachers = []
    for index, (spec, file, key, folder) in enumerate(entries):
        cached = (folder / "meta.json").is_file()
        if spec.kind in ("torchscript", "logits"):
            where = f"{source}: teachers.{index}.{spec.file_key}"
            model = load_torchscript_teacher(spec, file, data, where) if spec.kind == "torchscript" else None
            if cached:
                meta = json.loads((folder / "meta.json").read_text())
            else:
                meta = {**_outside_meta(spec, model, file, data, where, log), "key": key}
                write_bytes(folder / "meta.json", json.dumps(meta, indent=2).encode())
            teachers.append(Teacher(spec.name, model, meta, folder, file if spec.kind == "logits" else None))
            continue
        model = build_model(spec.arch, data.input_shape, data.num_classes, seed=spec.seed)
        if cached:
            load_state_dict(model, folder / "model.pt", f"cached teacher {spec.name!r}")
            meta = json.loads((folder / "meta.json").read_text())
        else:
            meta = _train_or_load(spec, index, model, file, data, device, log, bars)
            meta["key"] = key
            torch_save(model.state_dict(), folder / "model.pt")
            write_bytes(folder / "meta.json", json.dumps(meta, indent=2).encode())  # last: marks complete
        teachers.append(Teacher(spec.name, model.cpu().eval(), meta, folder))
    return teachers


def _outside_meta(spec: TeacherSpec, model: TorchScriptTeacher | None, file: Path, data: Dataset, where: str,
                  log: Callable[[str], None]) -> dict:
    """meta.json of a TorchScript or outputs-file teacher: accuracies where known, size where there is a model."""
    started = time.perf_counter()
    meta = {"name": spec.name, "kind": spec.kind, "arch": {"family": spec.kind, "file": file.name},
            spec.kind: str(file), "inputs": spec.inputs}
    if model is not None:
        accuracies = {split: logits_accuracy(batched_logits(model, getattr(data, f"x_{split}")),
                                             getattr(data, f"y_{split}"))
                      for split in ("val", "test")}
        size = {"params": None, "bytes_fp32": None, "bytes_fp16": None, "macs": None}
        try:
            size.update(model_size(model, data.input_shape).as_dict())
        except Exception:  # a module the FLOP counter cannot follow: sizes without MACs
            size.update(params=sum(p.numel() for p in model.parameters()), macs=None)
            stored = sum(t.numel() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
            size.update(bytes_fp32=4 * stored, bytes_fp16=2 * stored)
        meta.update(feature_dim=model.feature_dim, **size)
    else:
        outputs = read_outputs_file(file, data, where)
        accuracies = {split: logits_accuracy(outputs[f"{split}_logits"], getattr(data, f"y_{split}"))
                      if f"{split}_logits" in outputs else None for split in ("val", "test")}
        meta.update(feature_dim=outputs["train_features"].shape[1], params=None, bytes_fp32=None, bytes_fp16=None,
                    macs=None)
    meta.update(val_accuracy=accuracies["val"], test_accuracy=accuracies["test"],
                train_seconds=round(time.perf_counter() - started, 3))
    shown = "  ".join(f"{split} {value:.4f}" for split, value in accuracies.items() if value is not None)
    log(f"teacher {spec.name}: {'TorchScript' if model is not None else 'outputs'} from {file}"
        f"{', ' + shown if shown else ''}{'' if meta['feature_dim'] else ' (no features)'}")
    return meta


def _train_or_load(spec: TeacherSpec, index: int, model: ZooModel, checkpoint: Path | None,
                   data: Dataset, device: str, log: Callable[[str], None], bar: bool) -> dict:
    started = time.perf_counter()
    if checkpoint is not None:
        load_state_dict(model, checkpoint, f"teachers.{index}.checkpoint")
    else:
        with _epoch_bar(f"teacher {spec.name}", spec.schedule.epochs, bar) as on_epoch:
            train_model(model, data, None, DistillSpec(w_ce=1.0, w_kd=0.0), spec.schedule, seed=spec.seed,
                        device=device, on_epoch=on_epoch)
    model.cpu().eval()
    size = model_size(model, data.input_shape)
    meta = {"name": spec.name, "arch": spec.arch, "schedule": spec.schedule.model_dump(), "seed": spec.seed,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "val_accuracy": evaluate(model, data.x_val, data.y_val),
            "test_accuracy": evaluate(model, data.x_test, data.y_test),
            "train_seconds": round(time.perf_counter() - started, 3), **size.as_dict()}
    accuracy = f"val {meta['val_accuracy']:.4f} test {meta['test_accuracy']:.4f}"
    if checkpoint is not None:
        log(f"teacher {spec.name}: loaded {checkpoint}, {accuracy}")
    elif not bar:  # the bar, left on screen, already says it
        log(f"teacher {spec.name}: trained {spec.arch['family']} for {spec.schedule.epochs} epochs, {accuracy} "
            f"({meta['train_seconds']:.1f} s)")
    return meta


@contextmanager
def _epoch_bar(description: str, epochs: int, enabled: bool) -> Iterator[Callable[[EpochResult], None]]:
    """An `on_epoch` callback for `fit`: a rich bar on stderr (epochs, time, val accuracy), or nothing."""
    if not enabled:
        yield lambda epoch: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[val]}"),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=epochs, val="")

        def on_epoch(epoch: EpochResult) -> None:
            bar.update(task, completed=epoch.epoch, val=f"val {epoch.val_accuracy:.4f}")

        yield on_epoch
