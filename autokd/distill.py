"""The one training loop. Search trials, teachers and production runs all call `fit`.

A search trial and a production run differ only in the schedule they pass (and, in
production, optional augmentation with the teachers run online on the augmented batch).
Data is in memory and sliced by index; teacher outputs come either from the per-index
cache (`teacher_outputs.CachedTeacherOutputs`) or from live teachers (`teacher_outputs.OnlineTeachers`).

Unlabeled inputs (`Dataset.x_unlabeled`): a run that learns from teachers (w_kd or w_feat > 0)
takes its batches from the pool, x_train then x_unlabeled, shuffled together (so a batch holds
labeled and unlabeled rows in about the pool's proportion, and an epoch is one pass over the
pool); CE is the mean over the batch's labeled rows only, KD and FEAT use every row. A run
without teachers (CE-only, a teacher trained here) sees the labeled rows only, exactly as if
there were no unlabeled data.

Attention transfer (w_at > 0, cnn/resnet students): the student's forward also returns its stage
outputs (`ZooModel.forward_stages`), and the teachers' attention maps of the batch come from
`teacher_outputs.attention_for_batch`. With w_at = 0 the loop runs exactly as without it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autokd.data import Dataset, batches
from autokd.errors import NonFiniteLossError
from autokd.losses import DistillationLoss
from autokd.torch_state import seeding


class TeacherSource(Protocol):
    """Where a batch's teacher targets come from (cache by sample index, or live teachers)."""

    feature_dim: int

    def for_batch(self, indices: torch.Tensor, inputs: torch.Tensor,
                  features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(teacher_logits [T, B, C], teacher_features [B, D] or None) for the training samples `indices`."""
        ...

    # Needed only with w_at > 0: per teacher {spatial size: attention maps [B, P]} of those samples.
    # def attention_for_batch(self, indices, inputs) -> list[dict[tuple[int, ...], torch.Tensor]]


@dataclass
class EpochResult:
    epoch: int
    val_accuracy: float
    train_loss: float
    seconds: float  # wall time of this epoch, evaluation included


@dataclass
class FitResult:
    val_accuracy: float
    epochs_trained: int
    train_seconds: float
    history: list[EpochResult] = field(default_factory=list)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 2048) -> float:
    """Accuracy of `model` on in-memory tensors (eval mode; the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(inputs[start:start + batch_size].to(device))
        correct += (logits.argmax(dim=1).cpu() == labels[start:start + batch_size].cpu()).sum().item()
    model.train(was_training)
    return correct / max(len(labels), 1)


def augment_batch(inputs: torch.Tensor, kinds: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """Random shifts (pad 2, crop back) and horizontal flips, per sample, on a batch."""
    if "shift" in kinds:
        pad = 2
        spatial = inputs.shape[2:]
        padded = F.pad(inputs, (pad, pad) * len(spatial))
        batch = torch.arange(len(inputs)).view(-1, *[1] * len(spatial))
        offsets = [torch.randint(0, 2 * pad + 1, (len(inputs),), generator=generator) for _ in spatial]
        index = []
        for axis, (size, offset) in enumerate(zip(spatial, offsets)):
            shape = [1] * (len(spatial) + 1)
            shape[axis + 1] = size
            index.append((offset.view(-1, *[1] * len(spatial)) + torch.arange(size).view(shape)))
        # Advanced indexing puts the channel axis last; move it back to channels-first.
        inputs = padded.movedim(1, -1)[(batch, *index)].movedim(-1, 1).contiguous()
    if "flip" in kinds:
        flip = torch.rand(len(inputs), generator=generator) < 0.5
        inputs = torch.where(flip.view(-1, *[1] * (inputs.dim() - 1)), inputs.flip(-1), inputs)
    return inputs


def optimizer_and_scheduler(parameters, schedule, total_steps: int):
    """The schedule's optimizer over `parameters` and its per-step lr scheduler (packing replays it too)."""
    if schedule.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=schedule.lr, momentum=schedule.momentum,
                                    weight_decay=schedule.weight_decay, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=schedule.lr, weight_decay=schedule.weight_decay)
    if schedule.lr_schedule == "onecycle":
        lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=schedule.lr, total_steps=total_steps)
    elif schedule.lr_schedule == "cosine":
        lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, lr_scheduler


def fit(
    student: nn.Module,
    data: Dataset,
    teacher_outputs: TeacherSource | None,
    loss_config,
    schedule,
    seed: int,
    device: str | torch.device = "auto",
    on_epoch: Callable[[EpochResult], bool | None] | None = None,
    augment: Sequence[str] = (),
) -> FitResult:
    """Train `student` by distillation; return its final validation accuracy.

    `loss_config` has the DistillSpec fields (w_ce, w_kd, w_feat, w_at, kind, temperature, ...);
    `schedule` has the ScheduleSpec fields (epochs, batch_size, lr, optimizer, ...).
    `on_epoch` is called after every epoch; returning True stops training early.
    Raises `NonFiniteLossError` when the loss becomes NaN or infinite.
    Deterministic on CPU for a fixed seed, in concurrent threads of one process too unless the student has
    dropout (its masks come from torch's process-wide RNG, which the threads share).
    """
    generator = torch.Generator().manual_seed(seed)
    device = resolve_device(device)
    use_teachers = teacher_outputs is not None and (loss_config.w_kd > 0 or loss_config.w_feat > 0
                                                    or loss_config.w_at > 0)
    use_attention = use_teachers and loss_config.w_at > 0

    student.to(device)
    with seeding(seed):  # the loss's own parameters (feature projections) come from the seed; dropout after it
        loss_fn = DistillationLoss.from_config(
            loss_config,
            student_feature_dim=student.feature_dim,
            teacher_feature_dim=teacher_outputs.feature_dim if use_teachers else None,
        ).to(device)
    trainable = [p for p in list(student.parameters()) + list(loss_fn.parameters()) if p.requires_grad]

    # Tensors move to the device once; every batch is an index slice of them. With unlabeled data and
    # teachers, rows from n_labeled on are unlabeled: their y (hidden labels, or 0) is masked out of CE.
    pool = use_teachers and data.n_unlabeled > 0
    n_labeled = len(data.y_train)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    if use_teachers:
        _check_covers_pool(teacher_outputs, n_labeled + data.n_unlabeled)
    if pool:
        hidden = data.y_unlabeled if data.y_unlabeled is not None else torch.zeros(data.n_unlabeled, dtype=torch.long)
        x_train, y_train = data.pool_inputs().to(device), torch.cat([data.y_train, hidden]).to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)

    steps_per_epoch = math.ceil(len(y_train) / schedule.batch_size)
    optimizer, lr_scheduler = optimizer_and_scheduler(trainable, schedule, steps_per_epoch * schedule.epochs)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    history: list[EpochResult] = []
    started = time.perf_counter()
    for epoch in range(1, schedule.epochs + 1):
        epoch_started = time.perf_counter()
        student.train()
        loss_sum, loss_count = torch.zeros((), device=device), 0
        for step, indices in enumerate(batches(len(y_train), schedule.batch_size, generator)):
            indices = indices.to(device)
            inputs, targets = x_train[indices], y_train[indices]
            labeled = indices < n_labeled if pool else None
            if augment:
                inputs = augment_batch(inputs.cpu(), augment, generator).to(device)
            teacher_logits = teacher_features = teacher_maps = stages = None
            if use_teachers:
                teacher_logits, teacher_features = teacher_outputs.for_batch(indices, inputs,
                                                                             features=loss_config.w_feat > 0)
            if use_attention:
                teacher_maps = teacher_outputs.attention_for_batch(indices, inputs)
            with autocast:
                if use_attention:
                    logits, features, stages = student.forward_stages(inputs)
                else:
                    logits, features = student.forward_features(inputs)
                loss, _ = loss_fn(logits.float(), targets, teacher_logits,
                                  features.float() if loss_config.w_feat > 0 else None, teacher_features,
                                  labeled=labeled, student_stages=stages, teacher_maps=teacher_maps)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            loss_sum += loss.detach()
            loss_count += 1

        result = EpochResult(epoch=epoch, val_accuracy=evaluate(student, x_val, y_val),
                             train_loss=(loss_sum / max(loss_count, 1)).item(),
                             seconds=time.perf_counter() - epoch_started)
        history.append(result)
        if on_epoch is not None and on_epoch(result):
            break

    student.eval()
    return FitResult(val_accuracy=history[-1].val_accuracy, epochs_trained=len(history),
                     train_seconds=time.perf_counter() - started, history=history)


def _check_covers_pool(teacher_outputs: TeacherSource, rows: int) -> None:
    """Cached outputs must have a row per training sample (labeled, then unlabeled if any): fewer would fail
    mid-epoch, more would mean outputs of other data; live teachers always cover the batch."""
    cached = getattr(teacher_outputs, "train_logits", None)
    if cached is not None and cached.shape[1] != rows:
        raise ValueError(f"teacher_outputs: cached outputs cover {cached.shape[1]} samples, the training pool "
                         f"(labeled + unlabeled) has {rows}: compute them with teacher_outputs.teacher_outputs on "
                         "this data")
