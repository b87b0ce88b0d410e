"""Running one training config: the only caller of `distill.fit`.

A search trial, a baseline, a robust re-run of another seed, the report's test evaluation,
production training and a teacher all train through `train_model`; a config goes through
`run_config`. So "seed s" means the same run everywhere: the same initial weights (the seed
builds the model), the same batch order (the seed drives `fit`'s generator) and the same
thread count (CPU kernels give bit-identical results only at the same count).

    run_config(config, data, targets, seed=3, threads=1)  ->  (student in eval mode, FitResult)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from autokd.data import Dataset
from autokd.distill import EpochResult, FitResult, TeacherSource, fit, resolve_device
from autokd.spec import TrainConfig
from autokd.torch_state import torch_threads
from autokd.zoo import ZooModel, build_model


def train_model(model: nn.Module, data: Dataset, targets: TeacherSource | None, distill, schedule, *, seed: int,
                device: str | torch.device = "auto", threads: int | None = None,
                on_epoch: Callable[[EpochResult], bool | None] | None = None,
                augment: Sequence[str] = ()) -> FitResult:
    """Train an already built `model` with `distill.fit` at `threads` threads."""
    with torch_threads(threads):
        return fit(model, data, targets, distill, schedule, seed=seed, device=device, on_epoch=on_epoch,
                   augment=augment)


def config_targets(config: TrainConfig, targets: TeacherSource | None):
    """The part of a study's teacher outputs this config learns from (None when it uses no teacher)."""
    if targets is None or not config.distill.uses_teachers:
        return None
    select = getattr(targets, "select", None)  # cached outputs hold every teacher; online ones are already chosen
    return select([t.name for t in config.selected_teachers()]) if select else targets


def run_config(config: TrainConfig, data: Dataset, targets: TeacherSource | None, *, seed: int | None = None,
               threads: int | None = None, device: str | torch.device | None = None,
               on_epoch: Callable[[EpochResult], bool | None] | None = None) -> tuple[ZooModel, FitResult]:
    """Build the config's student from `seed` (default: the config's) and train it; (student in eval mode, result).

    `threads` defaults to the config's own (a search trial's count). `targets` may hold more
    teachers than the config uses (a study's cached outputs): the config's teacher subset is
    selected here.
    """
    seed = config.seed if seed is None else seed
    device = resolve_device(config.device if device is None else device)
    selected = config_targets(config, targets)
    if selected is not None and hasattr(selected, "to"):  # cached outputs go where the batches are sliced
        selected = selected.to(device)
    student = build_model(config.student, data.input_shape, data.num_classes, seed=seed)
    result = train_model(student, data, selected, config.distill, config.schedule, seed=seed, device=device,
                         threads=config.threads if threads is None else threads, on_epoch=on_epoch,
                         augment=config.augment)
    return student.cpu().eval(), result


def run_seeds(config: TrainConfig, data: Dataset, targets: TeacherSource | None, seeds: list[int], *,
              threads: int | None = None, device: str | torch.device | None = None,
              pack: bool = True) -> list[FitResult]:
    """The config trained once per seed: packed into one batched model when it can be (`packing`), else
    one run after another. Either way run k equals `run_config(config, ..., seed=seeds[k])` (on CPU bit
    for bit, or in the last float bits on some CPUs: `packing`), so packing changes the speed only."""
    from autokd import packing  # packing builds on this module

    # pack_key is None for what packing cannot train, e.g. a KD config with data.unlabeled (its batches come
    # from the labeled + unlabeled pool): those run one by one below.
    if pack and len(seeds) > 1 and packing.pack_key(config) is not None:
        runs = packing.fit_packed([config] * len(seeds), data, targets, seeds, device=device, threads=threads)
        failed = next((run.error for run in runs if run.error is not None), None)
        if failed is not None:
            raise failed
        return [run.result for run in runs]
    return [run_config(config, data, targets, seed=seed, threads=threads, device=device)[1] for seed in seeds]

