"""A student from your own code: the factory that studies/digits_custom_student.yaml names.

    student: {family: custom, factory: "custom_student:make_student", args: {channels: 8, hidden: 32}}

autokd imports this module (the study file's folder is searched first, then the normal import
path), calls ``make_student(input_shape, num_classes, **args)`` under the trial's seed and trains
what it returns like a zoo student. Running it needs the opt-in::

    autokd search studies/digits_custom_student.yaml --allow-code      # or AUTOKD_ALLOW_CODE=1

The contract: ``input_shape`` is one sample's shape, channels first ((1, 8, 8) for digits); the
module maps a batch [B, *input_shape] to logits [B, num_classes]. ``args`` are plain values from
the config, and a search space varies them as ``student.args.<name>``. The optional
``forward_features`` (with an integer ``feature_dim``) lets feature distillation (``w_feat > 0``)
read the penultimate features, as it does for zoo students.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCnn(nn.Module):
    """conv(channels) -> relu -> maxpool 2 -> conv(2 * channels) -> relu -> global pool -> Linear(hidden) -> logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int, hidden: int):
        super().__init__()
        in_channels = input_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * channels, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden  # what forward_features returns beside the logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def make_student(input_shape: tuple[int, ...], num_classes: int, channels: int = 8, hidden: int = 32) -> nn.Module:
    """The factory: a small CNN for images shaped (channels, height, width)."""
    if len(input_shape) != 3:
        raise ValueError(f"make_student needs image inputs (channels, height, width), got {input_shape}")
    return SmallCnn(tuple(input_shape), num_classes, channels=int(channels), hidden=int(hidden))
