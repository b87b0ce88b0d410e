"""Packed trials: K configs of one MLP student trained as one batched model, ending where K separate runs end.

Configs that share a student architecture (level 2 of a two-level search with its baselines, a
paired trial's seeds, the robust front's seeds) train together: the K students' parameters are
stacked (``[K, out, in]`` per Linear), one forward and one backward per step cover all of them,
and AdamW updates the stack with each config's own learning-rate schedule and weight decay::

    runs = fit_packed([tuned, ce_only, vanilla_kd], data, outputs, seeds=[3, 3, 3])
    runs[1].result.val_accuracy    # exactly run_config(ce_only, data, outputs, seed=3)[1].val_accuracy on CPU

Config k is the run `runner.run_config(config_k, data, targets, seed=seeds[k])`:

- initial weights: ``zoo.build_model(student, ..., seed=seeds[k])``'s, copied into the stack;
- batch order: config k's own, from its seed as in `distill.fit` (``batches`` with
  ``torch.Generator().manual_seed(seed)`` each epoch). Configs on one seed therefore see the same
  batches: a config and its CE-only baseline packed on one seed are exactly the paired runs the
  two-level search compares. A pack on one seed slices one batch for all its students; a pack of
  several seeds slices one per seed and gives each student its own;
- dropout masks: drawn as `nn.Dropout` draws them, from a generator seeded like the separate run's
  default generator (on CUDA the fused dropout kernel draws differently);
- loss: CE-only configs and the KD kinds ``kl`` and ``mse`` are computed vectorised over the pack
  (per-config temperature and weights as tensors; the formulas of `losses`); a config of another
  kind (``dkd``, ``lskd``, ``dist``) gets its own `DistillationLoss` call on its slice of the
  logits. Kinds, temperatures, weights, teacher subsets and aggregations may differ within a pack.
  The per-config losses are summed for one backward: the parameters are disjoint, so each config's
  gradient is its own;
- optimizer: torch's single-tensor AdamW arithmetic (decoupled weight decay) over the stack, with
  the lr (and beta1, which ``onecycle`` cycles) of every step read from torch's own scheduler.

On CPU every config's weights and validation accuracies equal its separate run's (tests/test_packing.py):
each Linear is one ``baddbmm``, which multiplies config by config with the BLAS call ``F.linear``
makes. On the Intel Xeon CPUs measured first that is bit for bit; on an AMD EPYC (AVX-512) the
batched and single products round differently in the last bits, and training grows that as it grows
any rounding: ~1e-7 in the weights after two epochs on digits, 0.12 (0.15 pt of val accuracy) after
one Fashion-MNIST epoch at 256 hidden units (benchmarks/packing.py). The reported ``train_loss`` is
reduced over the pack in another order (its gradients are not). On CUDA (bf16 autocast, other kernels)
the runs are the same training, not the same bits: +0.01 to +0.04 pt of val accuracy on average over
64 students after an epoch on an H200 (benchmarks/packing.py's GPU arm).
A pack shares the student architecture (family ``mlp``), ``schedule.epochs`` and
``schedule.batch_size`` (`pack_key`). Not packable:
``cnn`` and ``resnet`` students, ``w_feat > 0`` (a per-config regressor), ``augment``,
``optimizer: sgd``, and a config that learns from teachers with ``data.unlabeled`` (it batches over
the labeled + unlabeled pool, a CE-only config of the same pack over the labeled split: their
batches would differ; `runner.run_seeds` trains it unpacked). CE-only configs with unlabeled data
pack: they train on the labeled split alone, as `distill.fit` does.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autokd.data import Dataset, batches
from autokd.distill import EpochResult, FitResult, TeacherSource, optimizer_and_scheduler, resolve_device
from autokd.errors import NonFiniteLossError
from autokd.losses import DistillationLoss, ensemble_logits
from autokd.runner import config_targets
from autokd.spec import ScheduleSpec, TrainConfig
from autokd.torch_state import torch_threads
from autokd.zoo import ACTIVATIONS, ZooModel, build_model

__all__ = ["PackedRun", "fit_packed", "pack_key"]

PACKABLE_FAMILIES = ("mlp",)
VECTORISED_KINDS = ("kl", "mse")  # other kinds are computed by a DistillationLoss per config
_EVAL_BATCH = 2048  # distill.evaluate's chunk
# AdamW updates a parameter slice by slice from this many elements per config (64 KiB of float32):
# a stacked tensor of K large slices falls out of cache between the update's passes.
_SLICED_NUMEL = 16384
# torch's CPU bmm multiplies matrices of fewer multiply-adds than this with its own loop, which rounds
# differently from F.linear's BLAS call (aten/src/ATen/native/LinearAlgebra.cpp, bmm_out_or_baddbmm_).
_BMM_OWN_LOOP_BELOW = 400


@dataclass
class PackedRun:
    """One config of a pack: its student (eval mode, on the CPU) and result, or the error that ended it."""

    student: ZooModel
    result: FitResult | None
    error: Exception | None = None


def pack_key(config: TrainConfig) -> str | None:
    """What configs must share to train in one pack (equal keys pack together); None when `config` cannot pack."""
    if _unpackable(config) is not None:
        return None
    return json.dumps({"student": config.student, "epochs": config.schedule.epochs,
                       "batch_size": config.schedule.batch_size}, sort_keys=True)


def _unpackable(config: TrainConfig) -> str | None:
    """Why `config` cannot be packed (its key, what is allowed, what it has), or None."""
    family = config.student.get("family")
    if family not in PACKABLE_FAMILIES:
        return f"student.family: packing supports {list(PACKABLE_FAMILIES)}, got {family!r}"
    if config.schedule.optimizer != "adamw":
        return f"schedule.optimizer: packing supports 'adamw', got {config.schedule.optimizer!r}"
    if config.distill.w_feat > 0:
        return f"distill.w_feat: packing needs 0 (no feature regressor), got {config.distill.w_feat}"
    if config.distill.w_at > 0:  # a cnn/resnet-only term: the family check above refuses it first
        return f"distill.w_at: packing needs 0 (no attention transfer), got {config.distill.w_at}"
    if config.augment:
        return f"augment: packing needs none, got {config.augment}"
    if config.data.unlabeled is not None and config.distill.w_kd > 0:
        return "data.unlabeled: packing needs none for a config with w_kd > 0 (it trains on the unlabeled pool)"
    return None


def _check_pack(configs: Sequence[TrainConfig], seeds: Sequence[int]) -> None:
    if not configs:
        raise ValueError("configs: a pack needs at least one config, got none")
    if len(seeds) != len(configs):
        raise ValueError(f"seeds: need one per config ({len(configs)}), got {len(seeds)}")
    first = pack_key(configs[0])
    for index, config in enumerate(configs):
        reason = _unpackable(config)
        if reason is not None:
            raise ValueError(f"configs[{index}].{reason}")
        if pack_key(config) != first:
            raise ValueError(f"configs[{index}]: a pack shares student, schedule.epochs and schedule.batch_size; "
                             f"configs[0] has {first}, got {pack_key(config)}")


# --------------------------------------------------------------------------- the training loop


def fit_packed(configs: Sequence[TrainConfig], data: Dataset, targets: TeacherSource | None,
               seeds: Sequence[int] | None = None, *, device: str | torch.device | None = None,
               threads: int | None = None,
               on_epoch: Callable[[int, EpochResult], bool | None] | None = None) -> list[PackedRun]:
    """Train config k on seed ``seeds[k]`` (default: its own) for every k at once; one `PackedRun` per config.

    `targets` is the study's teacher outputs (each config's teacher subset is selected, as in
    `runner.run_config`); `device` and `threads` default to the first config's. `on_epoch(k, epoch)`
    is called for every config still training after every epoch; returning True stops config k (its
    weights are kept as they are then). A config whose loss becomes NaN or infinite ends with a
    `NonFiniteLossError` in its `PackedRun.error`; the others train on. ``EpochResult.seconds`` and
    ``FitResult.train_seconds`` are the pack's wall time, shared by its configs.
    """
    seeds = [config.seed for config in configs] if seeds is None else [int(seed) for seed in seeds]
    _check_pack(configs, seeds)
    if data.n_unlabeled and targets is not None and any(c.distill.w_kd > 0 for c in configs):
        raise ValueError("data: a pack trains on the labeled split only; configs with w_kd > 0 on data with "
                         "unlabeled inputs train one by one (runner.run_config)")
    device = resolve_device(configs[0].device if device is None else device)
    with torch_threads(configs[0].threads if threads is None else threads):
        return _fit(list(configs), data, targets, seeds, device, on_epoch)


def _fit(configs: list[TrainConfig], data: Dataset, targets: TeacherSource | None, seeds: list[int],
         device: torch.device, on_epoch: Callable[[int, EpochResult], bool | None] | None) -> list[PackedRun]:
    count = len(configs)
    schedule = configs[0].schedule  # epochs and batch_size are the pack's
    students = [build_model(c.student, data.input_shape, data.num_classes, seed=s) for c, s in zip(configs, seeds)]
    model = _PackedMlp(students, device)
    steps_per_epoch = math.ceil(len(data.y_train) / schedule.batch_size)
    optimizer = _PackedAdamW(model.parameters(), [c.schedule for c in configs], steps_per_epoch * schedule.epochs)
    # Configs on one seed share a batch order and dropout masks: one generator pair per distinct seed.
    distinct = sorted(set(seeds))
    groups = [distinct.index(s) for s in seeds]
    group_of = torch.tensor(groups, device=device)
    loss = _PackedLoss(configs, targets, device, groups)
    order_generators = [torch.Generator().manual_seed(s) for s in distinct]
    dropout_generators = [torch.Generator(device=device).manual_seed(s) for s in distinct]
    first_of_group = [groups.index(g) for g in range(len(distinct))]
    shared = len(distinct) == 1

    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    active = torch.ones(count, dtype=torch.bool, device=device)
    histories: list[list[EpochResult]] = [[] for _ in configs]
    errors: list[Exception | None] = [None] * count
    kept: dict[int, list[torch.Tensor]] = {}  # weights of configs stopped early, as they were then
    seconds = [0.0] * count
    started = time.perf_counter()
    for epoch in range(1, schedule.epochs + 1):
        epoch_started = time.perf_counter()
        loss_sum, loss_count = torch.zeros(count, device=device), 0
        orders = [batches(len(y_train), schedule.batch_size, g) for g in order_generators]
        for step, group_indices in enumerate(zip(*orders)):
            group_indices = [indices.to(device) for indices in group_indices]
            if shared:
                batch = x_train[group_indices[0]]
                inputs = [batch]
            else:  # one gather for all students, [K, B, ...]; a group's inputs are a view of its first student's
                batch = x_train[torch.stack(group_indices)[group_of]]
                inputs = [batch[k] for k in first_of_group]
            labels = [y_train[indices] for indices in group_indices]
            with autocast:
                logits = model(batch, shared=shared, generators=dropout_generators, group_of=group_of)
                losses = loss(logits.float(), labels, group_indices, inputs)
            finite = torch.isfinite(losses)
            if not bool((finite | ~active).all()):  # one sync per step, as fit's check
                for k in torch.nonzero(active & ~finite).flatten().tolist():
                    errors[k] = NonFiniteLossError(f"non-finite loss ({losses[k].item()}) at epoch {epoch}, "
                                                   f"step {step + 1}")
                    seconds[k] = time.perf_counter() - started
                active &= finite
                if not bool(active.any()):
                    break
            total = losses.where(active, 0.0).sum()  # configs stopped or failed get no gradient
            optimizer.step(torch.autograd.grad(total, model.parameters()))
            loss_sum += losses.detach()
            loss_count += 1
        if not bool(active.any()):
            break

        accuracies = model.accuracy(x_val, y_val)
        train_losses = (loss_sum / max(loss_count, 1)).tolist()
        elapsed = time.perf_counter() - epoch_started
        for k in torch.nonzero(active).flatten().tolist():
            result = EpochResult(epoch=epoch, val_accuracy=accuracies[k], train_loss=train_losses[k], seconds=elapsed)
            histories[k].append(result)
            seconds[k] = time.perf_counter() - started
            if on_epoch is not None and on_epoch(k, result):
                active[k] = False
                kept[k] = model.weights_of(k)
        if not bool(active.any()):
            break

    runs = []
    for k, student in enumerate(students):
        model.unpack_into(student, k, kept.get(k))
        result = None if errors[k] is not None else FitResult(
            val_accuracy=histories[k][-1].val_accuracy, epochs_trained=len(histories[k]),
            train_seconds=seconds[k], history=histories[k])
        runs.append(PackedRun(student.cpu().eval(), result, errors[k]))
    return runs


# --------------------------------------------------------------------------- the stacked students


def _linears(student: ZooModel) -> list[nn.Linear]:
    return [module for module in student.body if isinstance(module, nn.Linear)] + [student.head]


class _PackedMlp:
    """K MLPs of one architecture as stacked leaf tensors: per Linear a weight [K, out, in] and a bias [K, out]."""

    def __init__(self, students: list[ZooModel], device: torch.device):
        layers = list(zip(*(_linears(s) for s in students)))  # per layer, the K students' Linears
        self.weights = [torch.stack([m.weight.detach() for m in ms]).to(device).requires_grad_() for ms in layers]
        self.biases = [torch.stack([m.bias.detach() for m in ms]).to(device).requires_grad_() for ms in layers]
        arch = students[0].arch
        self.activation = ACTIVATIONS[arch["activation"]]()
        self.dropout = float(arch["dropout"])

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def __call__(self, x: torch.Tensor, *, shared: bool, generators: list[torch.Generator] | None = None,
                 group_of: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [K, B, C] of x: [B, ...] for every student (`shared`), or [K, B, ...] one batch per student.

        With `generators` (one per seed group, `group_of` maps students to groups) dropout is applied,
        with masks drawn as `nn.Dropout` draws them; without, this is eval mode.
        """
        count = len(self.weights[0])
        hidden = x.flatten(1).expand(count, -1, -1) if shared else x.flatten(2)
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            hidden = _linear(hidden, weight, bias)
            if layer < last:
                hidden = self.activation(hidden)
                if generators is not None and self.dropout > 0:
                    hidden = hidden * self._dropout_masks(hidden.shape[1:], hidden, generators, group_of)
        return hidden

    def _dropout_masks(self, shape: torch.Size, like: torch.Tensor, generators: list[torch.Generator],
                       group_of: torch.Tensor) -> torch.Tensor:
        # F.dropout: input * (bernoulli(1 - p) / (1 - p)), drawn from the default generator.
        keep = 1 - self.dropout
        masks = [torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep, generator=g).div_(keep)
                 for g in generators]
        return torch.stack(masks)[group_of]

    @torch.no_grad()
    def accuracy(self, inputs: torch.Tensor, labels: torch.Tensor) -> list[float]:
        """Every student's accuracy on in-memory tensors (eval mode), as `distill.evaluate` computes it."""
        correct = torch.zeros(len(self.weights[0]), dtype=torch.long, device=labels.device)
        for start in range(0, len(labels), _EVAL_BATCH):
            logits = self(inputs[start:start + _EVAL_BATCH], shared=True)
            correct += (logits.argmax(dim=-1) == labels[start:start + _EVAL_BATCH]).sum(dim=1)
        return [c / max(len(labels), 1) for c in correct.tolist()]

    def weights_of(self, k: int) -> list[torch.Tensor]:
        return [t[k].detach().clone() for t in self.parameters()]

    @torch.no_grad()
    def unpack_into(self, student: ZooModel, k: int, weights: list[torch.Tensor] | None = None) -> None:
        """Copy student k's weights (or `weights`, from `weights_of`) into `student`."""
        values = iter(weights if weights is not None else self.weights_of(k))
        for linear in _linears(student):
            linear.weight.copy_(next(values))
            linear.bias.copy_(next(values))


def _linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[K, B, in] -> [K, B, out] through each config's Linear: one baddbmm, which on CPU multiplies batch item
    by batch item with the BLAS call F.linear makes (so the same bits as a separate run); tiny products, which
    bmm would compute with its own loop, go through F.linear config by config."""
    if inputs.shape[1] * weight.shape[1] * weight.shape[2] < _BMM_OWN_LOOP_BELOW:
        return torch.stack([F.linear(x, w, b) for x, w, b in zip(inputs, weight, bias)])
    return torch.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2))


# --------------------------------------------------------------------------- the optimizer


class _PackedAdamW:
    """torch.optim.AdamW on stacked [K, ...] parameters, config k with its own lr schedule and weight decay.

    A step is torch's single-tensor AdamW (torch/optim/adam.py, decoupled weight decay): on a
    parameter whose per-config slice is large, the same calls slice by slice (each slice stays in
    cache); on a small one, the same arithmetic with the per-config scalars as [K, 1, ...] tensors (one
    call for all K). The lr and beta1 of every step come from torch's own scheduler, run once on a
    stand-in optimizer built the way `distill.fit` builds its own.
    """

    def __init__(self, params: list[torch.Tensor], schedules: list[ScheduleSpec], total_steps: int):
        self.params = params
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.steps = 0
        self.weight_decays = [s.weight_decay for s in schedules]
        planned = {}  # schedules that differ only in weight decay share their lr sequence
        for s in schedules:
            if (s.lr, s.lr_schedule) not in planned:
                planned[(s.lr, s.lr_schedule)] = _scheduled(s, total_steps)
        plans = [planned[(s.lr, s.lr_schedule)] for s in schedules]
        if len({plan[2:] for plan in plans}) != 1:
            raise ValueError(f"packed AdamW needs one beta2 and eps for all configs, got {[p[2:] for p in plans]}")
        self.beta2, self.eps = plans[0][2:]
        self.lrs = list(zip(*(plan[0] for plan in plans)))  # [step][config]
        self.beta1s = list(zip(*(plan[1] for plan in plans)))
        # The same scalars as float32 tensors [step, config], computed in double as torch computes them.
        device, dtype = params[0].device, params[0].dtype
        as_tensor = lambda rows: torch.tensor(rows, dtype=dtype, device=device)  # noqa: E731
        self.decays = as_tensor([[1 - lr * wd for lr, wd in zip(lrs, self.weight_decays)] for lrs in self.lrs])
        self.one_minus_beta1 = as_tensor([[1 - b1 for b1 in b1s] for b1s in self.beta1s])
        self.neg_step_sizes = as_tensor([[-(lr / (1 - b1 ** float(t + 1))) for lr, b1 in zip(lrs, b1s)]
                                         for t, (lrs, b1s) in enumerate(zip(self.lrs, self.beta1s))])
        self.constant_beta1 = len({b1 for b1s in self.beta1s for b1 in b1s}) == 1

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        t = self.steps
        self.steps += 1
        bias_correction2_sqrt = (1 - self.beta2 ** float(self.steps)) ** 0.5
        for param, grad, exp_avg, exp_avg_sq in zip(self.params, grads, self.exp_avgs, self.exp_avg_sqs):
            if param[0].numel() >= _SLICED_NUMEL:
                for k in range(len(param)):
                    self._slice_step(t, k, param[k], grad[k], exp_avg[k], exp_avg_sq[k], bias_correction2_sqrt)
                continue
            shape = (-1,) + (1,) * (param.dim() - 1)
            param.mul_(self.decays[t].view(shape))
            exp_avg.lerp_(grad, 1 - self.beta1s[t][0] if self.constant_beta1 else self.one_minus_beta1[t].view(shape))
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            param.add_(exp_avg * self.neg_step_sizes[t].view(shape) / denom)  # = addcdiv_(value=-step_size)

    def _slice_step(self, t: int, k: int, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                    exp_avg_sq: torch.Tensor, bias_correction2_sqrt: float) -> None:
        """torch's single-tensor AdamW step on config k's slice, call for call."""
        lr, beta1, weight_decay = self.lrs[t][k], self.beta1s[t][k], self.weight_decays[k]
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1 ** float(t + 1))))


def _scheduled(schedule: ScheduleSpec, total_steps: int) -> tuple[list[float], list[float], float, float]:
    """(lr per step, beta1 per step, beta2, eps) of `distill.fit`'s AdamW and lr scheduler for `schedule`."""
    optimizer, scheduler = optimizer_and_scheduler([torch.zeros(1, requires_grad=True)], schedule, total_steps)
    group = optimizer.param_groups[0]
    lrs, beta1s = [], []
    for _ in range(total_steps):
        lrs.append(float(group["lr"]))
        beta1s.append(float(group["betas"][0]))
        optimizer.step()  # no gradient: changes nothing, but a scheduler step must follow an optimizer step
        scheduler.step()
    return lrs, beta1s, float(group["betas"][1]), float(group["eps"])


# --------------------------------------------------------------------------- the loss


class _PackedLoss:
    """Per-config distillation losses [K] of stacked logits [K, B, C], each what its `DistillationLoss` gives."""

    def __init__(self, configs: list[TrainConfig], targets: TeacherSource | None, device: torch.device,
                 groups: list[int]):
        self.distill = [c.distill for c in configs]
        self.groups, self.group_of = groups, torch.tensor(groups, device=device)  # each config's seed group
        self.sources: dict[tuple[str, ...], TeacherSource] = {}  # teacher subset -> its targets on `device`
        self.teachers: list[tuple[str, ...] | None] = []
        for index, config in enumerate(configs):
            selected = config_targets(config, targets)
            needs = config.distill.w_kd > 0
            if needs and selected is None:
                raise ValueError(f"configs[{index}].distill.w_kd: > 0 needs teacher targets, got targets=None")
            names = tuple(t.name for t in config.selected_teachers()) if needs else None
            if names is not None and names not in self.sources:
                self.sources[names] = selected.to(device) if hasattr(selected, "to") else selected
            self.teachers.append(names)
        self.vectorised = [k for k, d in enumerate(self.distill) if d.w_kd == 0 or d.kind in VECTORISED_KINDS]
        self.own = {k: DistillationLoss.from_config(d).to(device) for k, d in enumerate(self.distill)
                    if k not in self.vectorised}
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
        picked = [self.distill[k] for k in self.vectorised]
        self.w_ce, self.w_kd = as_tensor([d.w_ce for d in picked]), as_tensor([d.w_kd for d in picked])
        self.by_kind = {kind: [j for j, d in enumerate(picked) if d.w_kd > 0 and d.kind == kind]
                        for kind in VECTORISED_KINDS}
        self.temperatures = as_tensor([d.temperature for d in picked])
        self.temperatures_squared = as_tensor([d.temperature ** 2 for d in picked])
        self.vectorised_index = torch.tensor(self.vectorised, device=device)
        self.everyone_vectorised = len(self.vectorised) == len(configs)

    def __call__(self, logits: torch.Tensor, labels: list[torch.Tensor], group_indices: list[torch.Tensor],
                 inputs: list[torch.Tensor]) -> torch.Tensor:
        """Losses [K] of logits [K, B, C]; `labels`, `group_indices` (sample indices), `inputs`: per seed group."""
        groups = self.groups
        raw: dict[tuple, torch.Tensor] = {}  # (group, teacher subset) -> teacher logits [T, B, C]

        def teacher_logits(k: int) -> torch.Tensor:
            key = (groups[k], self.teachers[k])
            if key not in raw:
                raw[key] = self.sources[self.teachers[k]].for_batch(group_indices[groups[k]], inputs[groups[k]],
                                                                    features=False)[0]
            return raw[key]

        labels_per_config = (torch.stack(labels)[self.group_of] if len(labels) > 1
                             else labels[0].expand(len(groups), -1))
        losses = [None] * len(groups)
        for k, loss_fn in self.own.items():  # kinds not vectorised: each config's own DistillationLoss
            losses[k] = loss_fn(logits[k], labels_per_config[k], teacher_logits(k))[0]
        if self.vectorised:
            if self.everyone_vectorised:
                return self._vectorised(logits, labels_per_config, teacher_logits, groups)
            vector = self._vectorised(logits[self.vectorised_index], labels_per_config[self.vectorised_index],
                                      teacher_logits, groups)
            for j, k in enumerate(self.vectorised):
                losses[k] = vector[j]
        return torch.stack(losses)

    def _vectorised(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Callable[[int], torch.Tensor],
                    groups: list[int]) -> torch.Tensor:
        """w_ce * CE + w_kd * KD for the vectorised configs, KD of kind kl or mse (terms of weight 0 left out)."""
        count, batch, classes = logits.shape
        ce = F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none").view(count, batch)
        total = torch.where(self.w_ce > 0, self.w_ce * ce.mean(dim=1), 0.0)
        kd = torch.zeros_like(total)
        ensembled: dict[tuple, torch.Tensor] = {}  # configs that combine the same teachers the same way share it
        for kind, members in self.by_kind.items():
            if not members:
                continue
            teachers = torch.stack([self._ensembled(teacher_logits, self.vectorised[j], labels[j], groups, ensembled)
                                    for j in members])
            students = logits[members]
            if kind == "kl":  # losses.kd_kl per config: batchmean KL at T, times T²
                temperature = self.temperatures[members].view(-1, 1, 1)
                kl = F.kl_div(F.log_softmax(students / temperature, dim=-1),
                              F.log_softmax(teachers / temperature, dim=-1), reduction="none", log_target=True)
                value = kl.sum(dim=(1, 2)) / batch * self.temperatures_squared[members]
            else:  # losses.kd_mse per config
                value = F.mse_loss(students, teachers, reduction="none").mean(dim=(1, 2))
            kd = kd.index_put((torch.tensor(members, device=kd.device),), value)
        return total + torch.where(self.w_kd > 0, self.w_kd * kd, 0.0)

    def _ensembled(self, teacher_logits: Callable[[int], torch.Tensor], k: int, labels: torch.Tensor,
                   groups: list[int], done: dict[tuple, torch.Tensor]) -> torch.Tensor:
        """Config k's teachers combined into one set of logits [B, C], as its DistillationLoss combines them."""
        d = self.distill[k]
        key = (groups[k], self.teachers[k], d.aggregation, None if d.aggregation == "mean_logits" else d.temperature)
        if key not in done:
            done[key] = ensemble_logits(teacher_logits(k).detach(), labels, d.aggregation, d.temperature)
        return done[key]
