"""Teachers: trained (or loaded) once, cached by content hash, their outputs cached per sample.

A teacher is a zoo architecture trained here, a zoo checkpoint, a TorchScript file, or a file of
precomputed outputs (`spec.TeacherSpec`). A teacher trained here learns from the labeled training
split only (with `data.unlabeled`, the unlabeled inputs are its pool to label, never its data).
Cache layout, one folder per teacher under ``<cache_dir>/teachers/``::

    <name>-<key12>/model.pt      state_dict (loads with weights_only=True); zoo teachers only
                   meta.json     architecture, schedule, accuracies, size, train seconds
                   outputs.pt    {"train_logits": [N, C], "train_features": [N, D]}, indexed like the pool:
                                 data.x_train, then data.x_unlabeled when the data has unlabeled inputs
                   attention.pt  {"sizes": [[H, W], ...], "maps": [[N, H*W] float16, ...]}: the spatial attention
                                 maps (`losses.attention_map`) of the deepest stage of each size, same rows;
                                 cnn/resnet teachers only, written the first time attention transfer needs them

The key hashes everything that determines the teacher's outputs: architecture, schedule, seed
(and the checkpoint's bytes for loaded teachers), or the bytes of a TorchScript or outputs file,
and the data's fingerprint (which covers the labeled split and the unlabeled inputs, so another
`keep_labels` subset or another unlabeled file is another teacher). A TorchScript teacher is run
once over the pool to fill outputs.pt; one without a ``forward_features`` returning (logits, features) has no features
(D = 0), as has an outputs file without ``train_features``: feature distillation with such a
teacher is refused. Files are written to a temporary name and renamed (`autokd.atomic`), so a
crash never leaves a half-written entry that a later run trusts. A teacher that cannot teach (a
checkpoint with weights not finite, a file that does not load, outputs of the wrong shape, rows
not in the training split's order; for a search, val accuracy at chance) is refused before
anything is written.
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

import numpy as np
import torch
from torch import nn

from autokd.atomic import torch_save, write_bytes
from autokd.data import Dataset, Normalization
from autokd.distill import EpochResult, evaluate
from autokd.errors import CheckpointError, ConfigError
from autokd.losses import attention_map, matched_stages
from autokd.runner import train_model
from autokd.spec import DistillSpec, TeacherSpec, attention_refusal, cut
from autokd.zoo import ZooModel, build_model, model_size, stage_sizes

CACHE_VERSION = 2  # 2: teacher init seeded by its own seed


OUTPUT_ARRAYS = ("train_logits", "train_features", "val_logits", "test_logits",  # of a `logits:` file
                 "unlabeled_logits", "unlabeled_features")  # the unlabeled ones: rows of data.x_unlabeled
PROBE_SAMPLES = 8  # a TorchScript teacher is checked on this many training samples before anything is written


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


class TorchScriptTeacher(nn.Module):
    """A TorchScript module run as a teacher: `forward_features(x)` -> (logits [B, C], features [B, D]).

    The module's own `forward_features` gives the pair when it has one (`feature_dim` > 0); else
    the features are empty ([B, 0]). With `raw` (``inputs: raw``) the module gets raw inputs: the
    normalised batch mapped back with the training split's mean and std.

    Example::

        teacher = load_torchscript_teacher(spec, Path("teacher.pt"), data, "teachers.0.torchscript")
        logits, features = teacher.forward_features(data.x_train[:4])
    """

    def __init__(self, module: nn.Module, feature_dim: int, raw: Normalization | None = None):
        super().__init__()
        self.module = module
        self.feature_dim = feature_dim
        self.raw = raw

    def module_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.raw is None else x * self.raw.std + self.raw.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.module_inputs(x)
        if self.feature_dim:
            logits, features = self.module.forward_features(x)
            return logits.float(), features.float()
        logits = self.module(x).float()
        return logits, logits.new_zeros(len(logits), 0)


@dataclass
class CachedTeacherOutputs:
    """Teacher logits/features for every pool sample (training split, then unlabeled inputs), sliced by the
    batch's indices."""

    names: list[str]
    train_logits: torch.Tensor  # [T, N, C]
    train_features: list[torch.Tensor]  # T tensors of [N, D_t]
    # Per teacher {spatial size: attention maps [N, P] float16}; None unless computed (attention transfer).
    attention: list[dict[tuple[int, ...], torch.Tensor]] | None = None

    @property
    def feature_dim(self) -> int:
        return sum(f.shape[1] for f in self.train_features)

    @property
    def without_features(self) -> list[str]:
        """The teachers that give no features (an outputs file without them, a TorchScript module without
        `forward_features`)."""
        return [name for name, f in zip(self.names, self.train_features) if f.shape[1] == 0]

    def select(self, names: list[str]) -> CachedTeacherOutputs:
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise KeyError(f"no cached outputs for teacher(s) {unknown}; have {self.names}")
        positions = [self.names.index(n) for n in names]
        return CachedTeacherOutputs(list(names), self.train_logits[positions],
                                    [self.train_features[p] for p in positions],
                                    None if self.attention is None else [self.attention[p] for p in positions])

    def to(self, device: torch.device | str) -> CachedTeacherOutputs:
        attention = None if self.attention is None else [{size: m.to(device) for size, m in maps.items()}
                                                         for maps in self.attention]
        return CachedTeacherOutputs(self.names, self.train_logits.to(device),
                                    [f.to(device) for f in self.train_features], attention)

    def attention_for_batch(self, indices: torch.Tensor,
                            inputs: torch.Tensor) -> list[dict[tuple[int, ...], torch.Tensor]]:
        """Per teacher {spatial size: attention maps [B, P] float32} of the training samples `indices`."""
        if self.attention is None:
            raise ValueError("attention transfer (w_at > 0) needs the teachers' attention maps: compute the "
                             "outputs with teachers.teacher_outputs(..., attention=True)")
        indices = indices.to(self.train_logits.device)
        return [{size: m[indices].float() for size, m in maps.items()} for maps in self.attention]

    def for_batch(self, indices: torch.Tensor, inputs: torch.Tensor,
                  features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        indices = indices.to(self.train_logits.device)
        if features:
            _refuse_missing_features(self.without_features)
        # Gathering random feature rows is a cache miss per sample: only when a feature loss reads them.
        gathered = torch.cat([f[indices] for f in self.train_features], dim=1) if features else None
        return self.train_logits[:, indices], gathered


class OnlineTeachers:
    """Teachers run on the batch itself: needed when augmentation changes the inputs.

    Any module that maps a batch to logits [B, classes] will do; one with `forward_features` and
    `feature_dim` (a zoo model, a `TorchScriptTeacher`) gives its features too.
    """

    def __init__(self, models: list[nn.Module], names: list[str] | None = None):
        self.models = [m.eval() for m in models]
        self.names = list(names) if names is not None else [f"teacher {i}" for i in range(len(models))]
        self.feature_dims = [int(getattr(m, "feature_dim", 0)) if hasattr(m, "forward_features") else 0
                             for m in models]
        self.feature_dim = sum(self.feature_dims)

    @property
    def without_features(self) -> list[str]:
        return [name for name, dim in zip(self.names, self.feature_dims) if dim == 0]

    @torch.no_grad()
    def for_batch(self, indices: torch.Tensor, inputs: torch.Tensor,
                  features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if features:
            _refuse_missing_features(self.without_features)
        outputs = [m.to(inputs.device).forward_features(inputs) if dim else (m.to(inputs.device)(inputs).float(), None)
                   for m, dim in zip(self.models, self.feature_dims)]
        gathered = torch.cat([f for _, f in outputs], dim=1) if features else None
        return torch.stack([logits for logits, _ in outputs]), gathered

    @torch.no_grad()
    def attention_for_batch(self, indices: torch.Tensor,
                            inputs: torch.Tensor) -> list[dict[tuple[int, ...], torch.Tensor]]:
        """Per teacher {spatial size: attention maps [B, P]} of the batch itself (a second forward pass;
        rounded through float16 like the cached maps)."""
        return [{size: m.float() for size, m in attention_maps(model.to(inputs.device), inputs).items()}
                for model in self.models]


@torch.no_grad()
def attention_maps(model: nn.Module, inputs: torch.Tensor) -> dict[tuple[int, ...], torch.Tensor]:
    """{spatial size: `losses.attention_map` [B, P] float16} of a zoo cnn/resnet model's deepest stage of each
    spatial size (the teacher side of `losses.matched_stages`; sizes of one position left out)."""
    model.eval()
    _, _, stages = model.forward_stages(inputs)
    sizes = [tuple(stage.shape[2:]) for stage in stages]
    # Matched against itself, the rule pairs each size's deepest stage with itself: one map per size.
    return {sizes[t]: attention_map(stages[t].float()).half() for _, t in matched_stages(sizes, sizes)}


def check_attention(student: dict, specs: list[TeacherSpec], input_shape: tuple, source: str = "<config>") -> None:
    """Can attention transfer (w_at > 0) run: a cnn/resnet student, cnn/resnet teachers (zoo or checkpoint),
    and for every teacher a student stage of the same spatial size (`losses.matched_stages`)? One
    `ConfigError` line naming ``distill.w_at`` if not; builds nothing but a dummy forward per architecture."""
    reason = attention_refusal(student, specs)
    if reason:
        raise ConfigError(f"{source}: distill.w_at: {reason}")
    student_sizes = stage_sizes(student, input_shape)
    for spec in specs:
        teacher_sizes = stage_sizes(spec.arch, input_shape)
        if not matched_stages(student_sizes, teacher_sizes):
            raise ConfigError(f"{source}: distill.w_at: no stage of the student (spatial sizes {student_sizes}) has "
                              f"the spatial size of a stage of teacher {cut(spec.name)!r} ({teacher_sizes}), "
                              "sizes of one position excluded; attention maps are not interpolated: use w_at 0")


def _refuse_missing_features(names: list[str]) -> None:
    if names:
        raise ValueError(f"feature distillation (w_feat > 0) needs teacher features; teacher(s) {names} give none "
                         "(an outputs file without train_features, or a TorchScript module without "
                         "forward_features): use w_feat 0 with them")


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
            accuracy = _accuracy(_logits(teacher, data.x_val), data.y_val) if can_teach else None
            feature_dim = teacher.feature_dim
        else:
            outputs = read_outputs_file(Path(spec.logits), data, where)
            accuracy = _accuracy(outputs["val_logits"], data.y_val) if can_teach and "val_logits" in outputs else None
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


def load_torchscript_teacher(spec: TeacherSpec, path: Path, data: Dataset, where: str) -> TorchScriptTeacher:
    """The TorchScript file at `path` as a teacher, checked on a batch of training inputs; or a one-line
    CheckpointError naming `where` (the file's key) and the file."""
    if not path.is_file():
        raise CheckpointError(f"{where}: file not found: {path}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # torch raises RuntimeError, ValueError, ... for a file that is not TorchScript
        raise CheckpointError(f"{where}: {path} is not TorchScript (expected a file of torch.jit.save, "
                              "of a scripted or traced module)") from None
    teacher = TorchScriptTeacher(module.eval(), 0, data.normalization if spec.inputs == "raw" else None)
    batch = data.x_train[:PROBE_SAMPLES]
    given = list(batch.shape)
    expected = [len(batch), data.num_classes]
    try:
        with torch.no_grad():
            logits = module(teacher.module_inputs(batch))
    except Exception as error:
        raise CheckpointError(f"{where}: {path} fails on a batch of inputs {given}: {_last_line(error)}") from None
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and list(logits.shape) == expected):
        got = (f"{str(logits.dtype).removeprefix('torch.')} {list(logits.shape)}" if isinstance(logits, torch.Tensor)
               else type(logits).__name__)
        raise CheckpointError(f"{where}: {path} returns {got} for inputs {given}; expected logits {expected} "
                              "(floating point, one per class)")
    if not torch.isfinite(logits).all():
        raise CheckpointError(f"{where}: {path} returns NaN or infinite logits for a batch of training inputs")
    teacher.feature_dim = _probe_features(module, teacher.module_inputs(batch), expected)
    return teacher


def _probe_features(module: nn.Module, batch: torch.Tensor, logits_shape: list[int]) -> int:
    """Width of the features the module's `forward_features` gives with its logits; 0 when it has no such method."""
    if not hasattr(module, "forward_features"):
        return 0
    try:
        with torch.no_grad():
            pair = module.forward_features(batch)
    except Exception:  # another kind of forward_features (e.g. unpooled maps): logits only
        return 0
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
        return 0
    logits, features = pair
    if list(logits.shape) != logits_shape or features.dim() != 2 or len(features) != logits_shape[0] \
            or not features.is_floating_point() or not torch.isfinite(features).all():
        return 0
    return int(features.shape[1])


def read_outputs_file(path: Path, data: Dataset, where: str) -> dict[str, torch.Tensor]:
    """The arrays of an outputs file (`OUTPUT_ARRAYS`) as float32 tensors, checked against `data`
    (train_features [N_train, 0] when the file has none); or a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{where}: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as error:  # not a zip, a pickled array, a plain .npy (no .files): all unreadable here
        raise CheckpointError(f"{where}: {path}: cannot read as a .npz of arrays: {_last_line(error)}") from None
    unknown = sorted(set(arrays) - set(OUTPUT_ARRAYS))
    if unknown or "train_logits" not in arrays:
        what = f"unknown array {cut(unknown[0], 40)!r}" if unknown else "no train_logits"
        raise CheckpointError(f"{where}: {path} has {what}; expected train_logits and optionally "
                              "train_features, val_logits, test_logits (and unlabeled_logits, unlabeled_features "
                              "with data.unlabeled)")
    if "unlabeled_features" in arrays and "train_features" not in arrays:
        raise CheckpointError(f"{where}: {path} has unlabeled_features but no train_features: give both or neither")
    if data.n_unlabeled:
        for key in ("unlabeled_logits", "unlabeled_features")[:1 + ("train_features" in arrays)]:
            if key not in arrays:
                raise CheckpointError(f"{where}: {path} has no {key}: with data.unlabeled the outputs file needs "
                                      f"a row per unlabeled sample ({data.n_unlabeled}, in data.x_unlabeled's order)")
    splits = {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test),
              "unlabeled": data.n_unlabeled}
    outputs = {}
    for key, array in arrays.items():
        split, kind = key.split("_")
        columns = data.num_classes if kind == "logits" else None
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array) \
                or (columns is not None and array.shape[1] != columns) or array.shape[1] == 0:
            want = f"[{splits[split]}, {columns}] (a row per sample, a column per class)" if columns else \
                f"[{splits[split]}, D] (a row per sample)"
            raise CheckpointError(f"{where}: {path}: {key} is {array.dtype} {list(array.shape)}, expected {want}")
        if len(array) != splits[split]:
            raise CheckpointError(f"{where}: {path}: {key} has {len(array)} rows, the {split} split has "
                                  f"{splits[split]}: a row per sample, in the split's order")
        tensor = torch.from_numpy(array.astype(np.float32))
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: {path}: {key} holds NaN or infinite values (or beyond float32)")
        outputs[key] = tensor
    outputs.setdefault("train_features", torch.zeros(splits["train"], 0))
    outputs.setdefault("unlabeled_features", torch.zeros(splits["unlabeled"], 0))
    chance, margin = chance_accuracy(data.y_train)
    agree = _accuracy(outputs["train_logits"], data.y_train)
    if agree <= chance + margin:
        raise CheckpointError(f"{where}: {path}: train_logits agree with the training labels at chance level "
                              f"({agree:.4f} vs {chance:.4f}): are its rows the training split's, in order?")
    return outputs


def _logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item() if len(labels) else 0.0


def _last_line(error: BaseException) -> str:
    """The last non-empty line of an error (TorchScript puts its own traceback first), cut short."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return cut(lines[-1] if lines else type(error).__name__, 100)


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
        accuracies = {split: _accuracy(_logits(model, getattr(data, f"x_{split}")), getattr(data, f"y_{split}"))
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
        accuracies = {split: _accuracy(outputs[f"{split}_logits"], getattr(data, f"y_{split}"))
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


@torch.no_grad()
def teacher_outputs(teachers: list[Teacher], data: Dataset, batch_size: int = 2048, *,
                    attention: bool = False) -> CachedTeacherOutputs:
    """Logits and penultimate features of every teacher on every pool sample (cached on disk).

    The pool is the training split, then the unlabeled inputs (`Dataset.pool_inputs`). A model
    teacher (zoo or TorchScript) is run over it once; an outputs-only teacher's are its file's
    (``train_*`` then ``unlabeled_*``). Features are [N, 0] for a teacher that gives none.
    With `attention` (attention transfer), also every teacher's `attention_maps` (cnn/resnet
    zoo teachers only), cached in attention.pt: float16, at each stage's own spatial size.
    """
    pool = data.pool_inputs()
    all_logits, all_features = [], []
    for teacher in teachers:
        path = teacher.folder / "outputs.pt"
        cached = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        if cached is None or cached["train_logits"].shape[0] != len(pool):
            if teacher.model is None:
                arrays = read_outputs_file(teacher.outputs_file, data, f"teacher {teacher.name!r}: logits")
                splits = ("train", "unlabeled") if data.n_unlabeled else ("train",)
                cached = {f"train_{kind}": torch.cat([arrays[f"{split}_{kind}"] for split in splits])
                          for kind in ("logits", "features")}
            else:
                pieces = [teacher.model.forward_features(pool[i:i + batch_size])
                          for i in range(0, len(pool), batch_size)]
                cached = {"train_logits": torch.cat([logits for logits, _ in pieces]),
                          "train_features": torch.cat([features for _, features in pieces])}
            torch_save(cached, path)
        all_logits.append(cached["train_logits"])
        all_features.append(cached["train_features"])
    maps = [_cached_attention(teacher, pool, batch_size) for teacher in teachers] if attention else None
    return CachedTeacherOutputs([t.name for t in teachers], torch.stack(all_logits), all_features, maps)


def _cached_attention(teacher: Teacher, pool: torch.Tensor, batch_size: int) -> dict[tuple[int, ...], torch.Tensor]:
    if not isinstance(teacher.model, ZooModel) or not teacher.model.stage_ends:
        raise ValueError(f"attention transfer: teacher {teacher.name!r} has no convolutional stages "
                         "(a cnn or resnet zoo teacher is needed)")
    path = teacher.folder / "attention.pt"
    cached = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if cached is None or any(len(m) != len(pool) for m in cached["maps"]):
        pieces = [attention_maps(teacher.model, pool[i:i + batch_size]) for i in range(0, len(pool), batch_size)]
        cached = {"sizes": [list(size) for size in pieces[0]],
                  "maps": [torch.cat([piece[size] for piece in pieces]) for size in pieces[0]]}
        torch_save(cached, path)
    return {tuple(size): m for size, m in zip(cached["sizes"], cached["maps"])}


# ---------------------------------------------------------------------------------------------
# For your own training loop


@dataclass
class TeacherTargets:
    """A config's data and its teachers' outputs, for a training loop of your own.

    `for_batch(indices, inputs)` gives what `autokd train` feeds `distill.fit` for the training
    samples `indices`: (teacher_logits [teachers, batch, classes], teacher_features [batch, D]),
    or (None, None) when the config learns from no teacher (w_kd = w_feat = w_at = 0).
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

    def attention_for_batch(self, indices: torch.Tensor,
                            inputs: torch.Tensor) -> list[dict[tuple[int, ...], torch.Tensor]] | None:
        """Per teacher {spatial size: attention maps [batch, positions]} (w_at > 0), else None."""
        return None if self.outputs is None else self.outputs.attention_for_batch(indices, inputs)


def teacher_targets(config, *, log: Callable[[str], None] = print) -> TeacherTargets:
    """The data and teacher outputs of a training config or a study (its default student), as `autokd train` uses them.

    `config` is a file (an exported config, or a study) or a TrainConfig. The teachers the
    config learns from are trained or loaded once and cached in its ``cache_dir``, as
    `autokd train` does; outputs are cached per training sample, or computed on the batch
    itself when the config augments its inputs. Relative teacher files (checkpoint, torchscript,
    logits) are read from the file's folder (from the working directory for a TrainConfig).

    Example::

        targets = autokd.teacher_targets("best.yaml")
        indices = torch.arange(64)
        teacher_logits, teacher_features = targets.for_batch(indices, targets.data.x_train[indices])
    """
    from autokd.data import load_data
    from autokd.spec import TrainConfig, load_train_config
    from autokd.train import prepare_targets  # train builds on this module

    if isinstance(config, TrainConfig):
        source = "<config>"
    else:
        source = str(config)
        config = load_train_config(config)
    data = load_data(config.data, source)
    teachers, outputs = prepare_targets(config, data, source, log)
    return TeacherTargets(config, data, teachers, outputs)
