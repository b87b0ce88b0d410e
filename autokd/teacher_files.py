"""Teachers from outside files: checkpoints, TorchScript modules and files of precomputed outputs, read and checked.

Each reader checks its file against the data before anything is written and answers a file that
cannot teach with one `CheckpointError` line naming the config key and the file: a checkpoint
missing, not a state_dict, of another architecture or with weights not finite; a TorchScript file
that does not load or does not map a batch of training inputs to finite logits [batch, classes];
an outputs file (`OUTPUT_ARRAYS`) of the wrong shape, not finite, or with rows not in the training
split's order. A TorchScript teacher without a ``forward_features`` returning (logits, features)
has no features (D = 0), as has an outputs file without ``train_features``. `file_digest` is the
content hash of a file that keys its teacher in the cache (`teachers.teacher_key`).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autokd.data import Dataset, Normalization
from autokd.errors import CheckpointError
from autokd.spec import TeacherSpec, cut


OUTPUT_ARRAYS = ("train_logits", "train_features", "val_logits", "test_logits",  # of a `logits:` file
                 "unlabeled_logits", "unlabeled_features")  # the unlabeled ones: rows of data.x_unlabeled
PROBE_SAMPLES = 8  # a TorchScript teacher is checked on this many training samples before anything is written


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
    agree = logits_accuracy(outputs["train_logits"], data.y_train)
    if agree <= chance + margin:
        raise CheckpointError(f"{where}: {path}: train_logits agree with the training labels at chance level "
                              f"({agree:.4f} vs {chance:.4f}): are its rows the training split's, in order?")
    return outputs


def batched_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def logits_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item() if len(labels) else 0.0


def _last_line(error: BaseException) -> str:
    """The last non-empty line of an error (TorchScript puts its own traceback first), cut short."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return cut(lines[-1] if lines else type(error).__name__, 100)
