"""Datasets as in-memory tensors with deterministic train/val/test splits.

Every dataset fits in memory, so it is kept as float32/int64 tensors and sliced by index
(`batches`) instead of going through a per-sample DataLoader. `load_data` turns what a reader of
`autokd.data_sources` returns (digits, Fashion-MNIST, MNIST-1D, the user's own .npz/.pt tensors;
nothing is downloaded) into a `Dataset`: it carves the splits and normalises.

Splits: the test split is fixed per dataset (official test set, or a 20% split with a
fixed seed), so it never moves when `data.seed` changes; validation is carved from the
rest with `data.seed`; `data.train_subset` then thins the training split. All splits are
stratified. Inputs are normalised with one scalar mean/std taken from the final training
split only; the Dataset records them (`Dataset.normalization`), together with what the raw
inputs are, so that a trained model can be shipped with its normalisation (`RawInputModel`).

Unlabeled inputs (`data.unlabeled`) are `Dataset.x_unlabeled`, normalised like the rest: the
``x`` of a .npz file (`data_sources.read_unlabeled_file`), or, with ``keep_labels: N``, the
training split less N samples that keep their labels (stratified, seeded by `data.seed`; taken
after the validation split and `train_subset`, so validation stays labeled and is carved as
without it). `x_train`/`y_train` are then the labeled part only: whatever trains on them (CE, a
teacher trained here) never sees an unlabeled sample. The "pool" is x_train followed by
x_unlabeled (`Dataset.pool_inputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autokd.data_sources import RAW_INPUTS, READERS, SourceArrays, read_unlabeled_file
from autokd.errors import ConfigError, DataError

TEST_FRACTION = 0.2  # for datasets without an official test set
TEST_SEED = 0  # fixed, so the test split never depends on data.seed


@dataclass(frozen=True)
class Normalization:
    """normalised = (raw - mean) / std, one scalar each, taken from the raw training split.

    Example::

        norm = load_data(spec).normalization       # digits: mean 4.876, std 6.012, raw "pixel values 0..16 ..."
        model = norm.wrap(student)                 # takes raw inputs, as the exported files do
    """

    mean: float = 0.0
    std: float = 1.0
    raw: str = "inputs as given"  # what the raw inputs are, in words (RAW_INPUTS)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs to normalised ones, in float32 exactly as `load_data` computes them."""
        return (x.float() - torch.tensor(self.mean, dtype=torch.float32)) / torch.tensor(self.std, dtype=torch.float32)

    def wrap(self, model: nn.Module) -> RawInputModel:
        return RawInputModel(model, self)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "raw": self.raw}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalization:
        return cls(mean=float(values["mean"]), std=float(values["std"]), raw=str(values.get("raw", "")))


class RawInputModel(nn.Module):
    """`model` behind its input normalisation: takes raw inputs, normalises them, calls `model`.

    This is what the exported TorchScript and ONNX files hold. `mean`/`std` are float32
    buffers, so the result equals `model(normalization.apply(x))` bit for bit.
    """

    def __init__(self, model: nn.Module, normalization: Normalization):
        super().__init__()
        self.model = model
        self.normalization = normalization
        self.register_buffer("mean", torch.tensor(normalization.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(normalization.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.to(self.mean.dtype) - self.mean) / self.std)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_features((x.to(self.mean.dtype) - self.mean) / self.std)


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    normalization: Normalization = field(default_factory=Normalization)  # how the x tensors were normalised
    x_unlabeled: torch.Tensor | None = None  # inputs without labels (data.unlabeled), normalised like x_train
    # The labels keep_labels hid, for measuring only (e.g. a teacher on the pool); None for a file. Training
    # never learns from them: `distill.fit` masks the unlabeled rows out of CE (tests/test_unlabeled.py
    # sets them to garbage and gets the same weights).
    y_unlabeled: torch.Tensor | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def n_unlabeled(self) -> int:
        return 0 if self.x_unlabeled is None else len(self.x_unlabeled)

    def pool_inputs(self) -> torch.Tensor:
        """x_train then x_unlabeled: what the KD and feature terms learn from (pool index = row here)."""
        return torch.cat([self.x_train, self.x_unlabeled]) if self.n_unlabeled else self.x_train

    def fingerprint(self) -> str:
        """sha256 over the name and every split (shape, dtype, bytes), unlabeled inputs included; computed once."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            splits = (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)
            # without unlabeled inputs the fingerprint is what it was before they existed (caches stay valid)
            for tensor in splits + ((self.x_unlabeled,) if self.n_unlabeled else ()):
                # the shape is hashed too: moving a sample from one split to the next changes it
                digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().numpy())
            object.__setattr__(self, "_fingerprint", digest.hexdigest())  # frozen: bypass once
        return self._fingerprint


def load_data(spec: Any, source: str = "<data>", *, normalize: bool = True) -> Dataset:
    """Load the dataset named by `spec` (a DataSpec); errors name `source` and the key.

    Inputs are normalised with the training split's mean/std (`Dataset.normalization`); with
    ``normalize=False`` they are left raw (what the exported models take), and
    ``normalization`` still says how training normalised them.
    """
    if spec.name not in READERS:
        raise ConfigError(f"{source}: data.name: expected one of {', '.join(READERS)}, got {spec.name!r}")
    arrays = READERS[spec.name](spec, source)
    if arrays.x_test is None:
        arrays = _with_test_split(arrays)

    if arrays.x_val is None:
        n_val = round(spec.val_fraction * len(arrays.y))
        if not 0 < n_val < len(arrays.y):
            raise DataError(
                f"{source}: data.val_fraction: {spec.val_fraction} of {len(arrays.y)} samples leaves an empty split"
            )
        val, train = stratified_split(arrays.y, n_val, spec.seed)
        x_val, y_val = arrays.x[val], arrays.y[val]
        x_train, y_train = arrays.x[train], arrays.y[train]
    else:
        x_val, y_val, x_train, y_train = arrays.x_val, arrays.y_val, arrays.x, arrays.y
    if spec.train_subset is not None and spec.train_subset < len(y_train):
        keep, _ = stratified_split(y_train, spec.train_subset, spec.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    x_unlabeled, y_unlabeled, x_train, y_train = _unlabeled(getattr(spec, "unlabeled", None), x_train, y_train,
                                                            spec.seed, source)
    classes = np.unique(y_train)
    if len(classes) < 2:  # nothing to tell apart: every student (and teacher) is trivially "right"
        key = "data.train_subset" if spec.train_subset is not None else "data.path" if spec.name == "file" else "data"
        key = "data.unlabeled.keep_labels" if x_unlabeled is not None and spec.unlabeled.keep_labels else key
        raise DataError(f"{source}: {key}: the training split has a single class ({int(classes[0])}) in "
                        f"{len(y_train)} sample(s); a classifier needs at least two")

    x_train_t, x_val_t, x_test_t = (torch.from_numpy(x.astype(np.float32)) for x in (x_train, x_val, arrays.x_test))
    for x in (x_train_t, x_val_t, x_test_t):
        if not torch.isfinite(x).all():  # finite in float64, but beyond float32
            raise DataError(f"{source}: data.path: inputs beyond float32's range (|x| > 3.4e38)")
    x_unlabeled_t = None
    if x_unlabeled is not None:
        if x_unlabeled.shape[1:] != x_train.shape[1:]:
            raise DataError(f"{source}: data.unlabeled.file: {spec.unlabeled.file}: x has per-sample shape "
                            f"{list(x_unlabeled.shape[1:])}, the data's inputs are {list(x_train.shape[1:])}")
        x_unlabeled_t = torch.from_numpy(x_unlabeled.astype(np.float32))
        if not torch.isfinite(x_unlabeled_t).all():
            raise DataError(f"{source}: data.unlabeled.file: {spec.unlabeled.file}: x holds NaN or infinite "
                            "values (or beyond float32)")
    std, mean = torch.std_mean(x_train_t)  # training split only: val/test must not leak into it
    if not (torch.isfinite(std) and torch.isfinite(mean)):
        raise DataError(f"{source}: data.path: inputs too large to normalise in float32 (their std overflows)")
    std = std if std > 0 else torch.tensor(1.0)  # constant inputs: centre only
    normalization = Normalization(mean=float(mean), std=float(std), raw=RAW_INPUTS[spec.name])
    if normalize:
        for x in (x_train_t, x_val_t, x_test_t, *([x_unlabeled_t] if x_unlabeled_t is not None else [])):
            x.sub_(mean).div_(std)  # in place: astype above already made private copies

    return Dataset(
        name=spec.name,
        x_train=x_train_t,
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_val=x_val_t,
        y_val=torch.from_numpy(y_val.astype(np.int64)),
        x_test=x_test_t,
        y_test=torch.from_numpy(arrays.y_test.astype(np.int64)),
        num_classes=arrays.num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        normalization=normalization,
        x_unlabeled=x_unlabeled_t,
        y_unlabeled=torch.from_numpy(y_unlabeled.astype(np.int64)) if y_unlabeled is not None else None,
    )


def _unlabeled(unlabeled: Any, x_train: np.ndarray, y_train: np.ndarray, seed: int,
               source: str) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    """(unlabeled inputs or None, their hidden labels or None, labeled x_train, y_train) for `data.unlabeled`."""
    if unlabeled is None:
        return None, None, x_train, y_train
    if unlabeled.keep_labels is not None:
        if unlabeled.keep_labels >= len(y_train):
            raise DataError(f"{source}: data.unlabeled.keep_labels: must be < {len(y_train)} (the training split's "
                            f"samples, after val_fraction and train_subset), got {unlabeled.keep_labels}")
        keep, rest = stratified_split(y_train, unlabeled.keep_labels, seed)
        return x_train[rest], y_train[rest], x_train[keep], y_train[keep]
    return read_unlabeled_file(Path(unlabeled.file).expanduser(), source), None, x_train, y_train


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index tensors covering range(n) once; shuffled when `generator` is given; last batch may be short."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def stratified_split(y: np.ndarray, n_take: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of `y` into (taken, rest), exactly `n_take` taken, each class in proportion.

    Samples are shuffled, then ranked by their relative position inside their own class
    (k-th of n_c -> (k + 0.5) / n_c); taking the lowest ranks takes the same fraction of every
    class, and works for any class sizes. Both index arrays come back sorted.
    """
    perm = np.random.default_rng(seed).permutation(len(y))
    labels = y[perm]
    by_class = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    first_of_class = np.cumsum(counts) - counts
    rank_in_class = np.arange(len(y)) - first_of_class[labels[by_class]]
    position = (rank_in_class + 0.5) / counts[labels[by_class]]
    order = perm[by_class[np.argsort(position, kind="stable")]]
    return np.sort(order[:n_take]), np.sort(order[n_take:])


def _with_test_split(arrays: SourceArrays) -> SourceArrays:
    """Carve a fixed, seeded 20% test split off a dataset that has none."""
    test, rest = stratified_split(arrays.y, round(TEST_FRACTION * len(arrays.y)), TEST_SEED)
    return replace(arrays, x=arrays.x[rest], y=arrays.y[rest], x_test=arrays.x[test], y_test=arrays.y[test])
