"""Teachers: trained (or loaded) once, cached by content hash, their outputs cached per sample.

Cache layout, one folder per teacher under ``<cache_dir>/teachers/``::

    <name>-<key12>/model.pt      state_dict (loads with weights_only=True)
                   meta.json     architecture, schedule, accuracies, size, train seconds
                   outputs.pt    {"train_logits": [N, C], "train_features": [N, D]}, indexed like data.x_train

The key hashes everything that determines the teacher: architecture, schedule, seed, the
data's fingerprint (and the checkpoint's bytes for loaded teachers). Files are written to a
temporary name and renamed (`autokd.atomic`), so a crash never leaves a half-written entry that
a later run trusts. A checkpoint that cannot teach (weights not finite; for a search, val
accuracy at chance) is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from autokd.atomic import torch_save, write_bytes
from autokd.data import Dataset
from autokd.distill import EpochResult, evaluate
from autokd.errors import CheckpointError
from autokd.runner import train_model
from autokd.spec import DistillSpec, TeacherSpec, cut
from autokd.zoo import ZooModel, build_model, model_size

CACHE_VERSION = 2  # 2: teacher init seeded by its own seed


@dataclass
class Teacher:
    name: str
    model: ZooModel
    meta: dict  # val_accuracy, test_accuracy, params, bytes_fp32, macs, train_seconds, key
    folder: Path


@dataclass
class CachedTeacherOutputs:
    """Teacher logits/features for every training sample, sliced by the batch's indices."""

    names: list[str]
    train_logits: torch.Tensor  # [T, N, C]
    train_features: list[torch.Tensor]  # T tensors of [N, D_t]

    @property
    def feature_dim(self) -> int:
        return sum(f.shape[1] for f in self.train_features)

    def select(self, names: list[str]) -> CachedTeacherOutputs:
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise KeyError(f"no cached outputs for teacher(s) {unknown}; have {self.names}")
        positions = [self.names.index(n) for n in names]
        return CachedTeacherOutputs(list(names), self.train_logits[positions],
                                    [self.train_features[p] for p in positions])

    def to(self, device: torch.device | str) -> CachedTeacherOutputs:
        return CachedTeacherOutputs(self.names, self.train_logits.to(device),
                                    [f.to(device) for f in self.train_features])

    def for_batch(self, indices: torch.Tensor, inputs: torch.Tensor,
                  features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        indices = indices.to(self.train_logits.device)
        # Gathering random feature rows is a cache miss per sample: only when a feature loss reads them.
        gathered = torch.cat([f[indices] for f in self.train_features], dim=1) if features else None
        return self.train_logits[:, indices], gathered


class OnlineTeachers:
    """Teachers run on the batch itself: needed when augmentation changes the inputs."""

    def __init__(self, models: list[nn.Module]):
        self.models = [m.eval() for m in models]
        self.feature_dim = sum(m.feature_dim for m in models)

    @torch.no_grad()
    def for_batch(self, indices: torch.Tensor, inputs: torch.Tensor,
                  features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs = [m.to(inputs.device).forward_features(inputs) for m in self.models]
        gathered = torch.cat([f for _, f in outputs], dim=1) if features else None
        return torch.stack([logits for logits, _ in outputs]), gathered


def teacher_key(spec: TeacherSpec, data_fingerprint: str, checkpoint_digest: str | None = None) -> str:
    """Content hash of everything that determines the teacher's weights."""
    identity = {"version": CACHE_VERSION, "arch": spec.arch, "schedule": spec.schedule.model_dump(),
                "seed": spec.seed, "data": data_fingerprint, "checkpoint": checkpoint_digest}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_state_dict(model: nn.Module, path: Path, what: str) -> None:
    """Load weights into `model`, or a one-line CheckpointError naming `what` and the file."""
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a corrupted or foreign file
        raise CheckpointError(f"{what}: cannot read checkpoint {path}: not a PyTorch state_dict "
                              "(corrupted, truncated, or contains pickled objects)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{what}: {path} holds a {type(state).__name__}, expected a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise CheckpointError(f"{what}: {path} does not match the architecture ({model.arch['family']}): "
                              f"{cut(first, 120)}") from None
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"{what}: {path} has NaN or infinite weights (in {broken[0]!r}"
                              f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''})")


def chance_accuracy(y: torch.Tensor) -> tuple[float, float]:
    """(accuracy of always answering the most common class of `y`, and above it the margin that
    still counts as chance: two binomial standard errors)."""
    counts = torch.bincount(y)
    chance = float(counts.max()) / len(y)
    return chance, 2 * math.sqrt(chance * (1 - chance) / len(y))


def check_teachers(specs: list[TeacherSpec], data: Dataset, resolve_path: Callable[[str], Path] = Path,
                   source: str = "<study>", *, can_teach: bool = True) -> None:
    """Every checkpoint teacher exists, reads as a state_dict, fits its architecture and has finite
    weights; with `can_teach` (a search), its val accuracy is also above chance. Writes nothing."""
    chance, margin = chance_accuracy(data.y_val) if can_teach else (0.0, 0.0)
    for index, spec in enumerate(specs):
        if spec.checkpoint:
            model = build_model(spec.arch, data.input_shape, data.num_classes, seed=spec.seed)
            where = f"{source}: teachers.{index}.checkpoint"
            load_state_dict(model, resolve_path(spec.checkpoint), where)
            accuracy = evaluate(model.eval(), data.x_val, data.y_val) if can_teach else 1.0
            if accuracy <= chance + margin:
                raise CheckpointError(f"{where}: teacher {cut(spec.name)!r} is at chance level: val accuracy "
                                      f"{accuracy:.4f} vs {chance:.4f} by always answering the most common class; "
                                      "it has nothing to teach (untrained, or trained on other data?)")


def prepare_teachers(specs: list[TeacherSpec], data: Dataset, cache_dir: str | Path,
                     resolve_path: Callable[[str], Path] = Path, device: str = "auto",
                     log: Callable[[str], None] = lambda message: None, source: str = "<study>",
                     progress: bool = True) -> list[Teacher]:
    """Each teacher from the cache, or trained/loaded now and cached. A second call trains nothing.

    All checkpoints are checked before anything is trained or written. Training a teacher shows
    one progress bar on stderr when it is a terminal (and `progress`), else one line through `log`.
    """
    check_teachers(specs, data, resolve_path, source, can_teach=False)  # a search has checked more, before its study
    root = Path(cache_dir) / "teachers"
    entries = []
    for spec in specs:
        checkpoint = resolve_path(spec.checkpoint) if spec.checkpoint else None
        key = teacher_key(spec, data.fingerprint(), file_digest(checkpoint) if checkpoint else None)
        entries.append((spec, checkpoint, key, root / f"{spec.name}-{key[:12]}"))
    to_train = sum(checkpoint is None and not (folder / "meta.json").is_file() for _, checkpoint, _, folder in entries)
    if to_train:
        log(f"training {to_train} teacher{'s' if to_train > 1 else ''} once; "
            f"{'they are' if to_train > 1 else 'it is'} cached in {root} for later runs")
    bars = progress and sys.stderr.isatty()
    teachers = []
    for index, (spec, checkpoint, key, folder) in enumerate(entries):
        model = build_model(spec.arch, data.input_shape, data.num_classes, seed=spec.seed)
        if (folder / "meta.json").is_file():
            load_state_dict(model, folder / "model.pt", f"cached teacher {spec.name!r}")
            meta = json.loads((folder / "meta.json").read_text())
        else:
            meta = _train_or_load(spec, index, model, checkpoint, data, device, log, bars)
            meta["key"] = key
            torch_save(model.state_dict(), folder / "model.pt")
            write_bytes(folder / "meta.json", json.dumps(meta, indent=2).encode())  # last: marks complete
        teachers.append(Teacher(spec.name, model.cpu().eval(), meta, folder))
    return teachers


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


@torch.no_grad()
def teacher_outputs(teachers: list[Teacher], data: Dataset, batch_size: int = 2048) -> CachedTeacherOutputs:
    """Logits and penultimate features of every teacher on every training sample (cached on disk)."""
    all_logits, all_features = [], []
    for teacher in teachers:
        path = teacher.folder / "outputs.pt"
        cached = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        if cached is None or cached["train_logits"].shape[0] != len(data.y_train):
            pieces = [teacher.model.forward_features(data.x_train[i:i + batch_size])
                      for i in range(0, len(data.y_train), batch_size)]
            cached = {"train_logits": torch.cat([logits for logits, _ in pieces]),
                      "train_features": torch.cat([features for _, features in pieces])}
            torch_save(cached, path)
        all_logits.append(cached["train_logits"])
        all_features.append(cached["train_features"])
    return CachedTeacherOutputs([t.name for t in teachers], torch.stack(all_logits), all_features)


# ---------------------------------------------------------------------------------------------
# For your own training loop


@dataclass
class TeacherTargets:
    """A config's data and its teachers' outputs, for a training loop of your own.

    `for_batch(indices, inputs)` gives what `autokd train` feeds `distill.fit` for the training
    samples `indices`: (teacher_logits [teachers, batch, classes], teacher_features [batch, D]),
    or (None, None) when the config learns from no teacher (w_kd = w_feat = 0).
    """

    config: object  # the TrainConfig
    data: Dataset  # normalised tensors, split as the search split them
    teachers: list[Teacher]
    outputs: CachedTeacherOutputs | OnlineTeachers | None

    @property
    def feature_dim(self) -> int | None:
        """Width of the teachers' concatenated features (DistillationLoss's teacher_feature_dim)."""
        return self.outputs.feature_dim if self.outputs is not None else None

    def for_batch(self, indices: torch.Tensor, inputs: torch.Tensor,
                  features: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.outputs is None:
            return None, None
        return self.outputs.for_batch(indices, inputs, features)


def teacher_targets(config, *, log: Callable[[str], None] = print) -> TeacherTargets:
    """The data and teacher outputs of a training config or a study (its default student), as `autokd train` uses them.

    `config` is a file (an exported config, or a study) or a TrainConfig. The teachers the
    config learns from are trained or loaded once and cached in its ``cache_dir``, as
    `autokd train` does; outputs are cached per training sample, or computed on the batch
    itself when the config augments its inputs. Relative checkpoint paths are read from the
    file's folder (from the working directory for a TrainConfig).

    Example::

        targets = autokd.teacher_targets("best.yaml")
        indices = torch.arange(64)
        teacher_logits, teacher_features = targets.for_batch(indices, targets.data.x_train[indices])
    """
    from autokd.data import load_data
    from autokd.spec import TrainConfig, load_train_config

    if isinstance(config, TrainConfig):
        source, base = "<config>", Path(".")
    else:
        source, base = str(config), Path(config).parent
        config = load_train_config(config)
    data = load_data(config.data, source)
    uses_teachers = config.distill.w_kd > 0 or config.distill.w_feat > 0
    teachers = prepare_teachers(config.selected_teachers() if uses_teachers else [], data, config.cache_dir,
                                lambda path: Path(path) if Path(path).is_absolute() else base / path,
                                log=log, source=source)
    if not teachers:
        outputs = None
    elif config.augment:
        outputs = OnlineTeachers([t.model for t in teachers])
    else:
        outputs = teacher_outputs(teachers, data)
    return TeacherTargets(config, data, teachers, outputs)
