"""What students learn from: every teacher's logits, features and attention maps per pool sample, cached.

The pool is the training split, then the unlabeled inputs (`Dataset.pool_inputs`). `teacher_outputs`
runs a model teacher (zoo or TorchScript) over it once, or reads an outputs-only teacher's file
(`autokd.teacher_files`), and caches the result in the teacher's folder (`autokd.teachers`)::

    <name>-<key12>/outputs.pt    {"train_logits": [N, C], "train_features": [N, D]}, indexed like the pool:
                                 data.x_train, then data.x_unlabeled when the data has unlabeled inputs
                   attention.pt  {"sizes": [[H, W], ...], "maps": [[N, H*W] float16, ...]}: the spatial attention
                                 maps (`losses.attention_map`) of the deepest stage of each size, same rows;
                                 cnn/resnet teachers only, written the first time attention transfer needs them

`CachedTeacherOutputs` slices them by a batch's sample indices; `OnlineTeachers` runs the teachers
on the batch itself (augmented inputs). Features are [N, 0] for a teacher that gives none, and
feature distillation with it is refused; `check_attention` says whether attention transfer can
run at all. Files are written to a temporary name and renamed (`autokd.atomic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autokd.atomic import torch_save
from autokd.data import Dataset
from autokd.errors import ConfigError
from autokd.losses import attention_map, matched_stages
from autokd.sizes import stage_sizes
from autokd.spec import TeacherSpec, attention_refusal, cut
from autokd.teacher_files import read_outputs_file
from autokd.teachers import Teacher
from autokd.zoo import ZooModel


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
                             "outputs with teacher_outputs.teacher_outputs(..., attention=True)")
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
