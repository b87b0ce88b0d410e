"""A config's data and its teachers' outputs, for a training loop of your own (`autokd.teacher_targets`).

`teacher_targets` sets them up exactly as `autokd train` does, through `train.prepare_targets`: the
teachers trained or loaded once and cached, their outputs cached per sample, or run on the batch
itself when the config augments its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from autokd.config_files import load_train_config
from autokd.data import Dataset, load_data
from autokd.spec import TrainConfig
from autokd.teacher_outputs import CachedTeacherOutputs, OnlineTeachers
from autokd.teachers import Teacher
from autokd.train import prepare_targets


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
    if isinstance(config, TrainConfig):
        source = "<config>"
    else:
        source = str(config)
        config = load_train_config(config)
    data = load_data(config.data, source)
    teachers, outputs = prepare_targets(config, data, source, log)
    return TeacherTargets(config, data, teachers, outputs)
