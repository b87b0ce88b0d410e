"""Datasets as in-memory tensors with deterministic train/val/test splits.

Every dataset fits in memory, so it is kept as float32/int64 tensors and sliced by index
(`batches`) instead of going through a per-sample DataLoader. Nothing is downloaded:
digits ships with scikit-learn, Fashion-MNIST is read from IDX files on disk, MNIST-1D is
generated here, and "file" reads the user's own .npz/.pt tensors.

Splits: the test split is fixed per dataset (official test set, or a 20% split with a
fixed seed), so it never moves when `data.seed` changes; validation is carved from the
rest with `data.seed`; `data.train_subset` then thins the training split. All splits are
stratified. Inputs are normalised with one scalar mean/std taken from the final training
split only; the Dataset records them (`Dataset.normalization`), together with what the raw
inputs are, so that a trained model can be shipped with its normalisation (`RawInputModel`).

Unlabeled inputs (`data.unlabeled`) are `Dataset.x_unlabeled`, normalised like the rest: the
``x`` of a .npz file, or, with ``keep_labels: N``, the training split less N samples that keep
their labels (stratified, seeded by `data.seed`; taken after the validation split and
`train_subset`, so validation stays labeled and is carved as without it). `x_train`/`y_train`
are then the labeled part only: whatever trains on them (CE, a teacher trained here) never sees
an unlabeled sample. The "pool" is x_train followed by x_unlabeled (`Dataset.pool_inputs`).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import nn

from autokd.errors import ConfigError, DataError
from autokd.spec import cut

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {  # role -> (IDX base name, magic number)
    "x_train": ("train-images-idx3-ubyte", 2051),
    "y_train": ("train-labels-idx1-ubyte", 2049),
    "x_test": ("t10k-images-idx3-ubyte", 2051),
    "y_test": ("t10k-labels-idx1-ubyte", 2049),
}
TEST_FRACTION = 0.2  # for datasets without an official test set
TEST_SEED = 0  # fixed, so the test split never depends on data.seed
MNIST1D_SEED = 0  # fixed, so mnist1d is the same data for every study


RAW_INPUTS = {  # dataset name -> what its raw (unnormalised) inputs are
    "digits": "pixel values 0..16 as sklearn.datasets.load_digits gives them, float32 [N, 1, 8, 8]",
    "fashion-mnist": "pixel bytes 0..255 as stored in the IDX files, float32 [N, 1, 28, 28]",
    "mnist1d": "signals as autokd.data.make_mnist1d generates them, float32 [N, 1, 40]",
    "file": "the x arrays of data.path as stored, float32 ([N, H, W] gets a channel axis: [N, 1, H, W])",
}


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


@dataclass
class _Arrays:
    """What a loader returns: numpy inputs [N, *input_shape] and integer labels [N]."""

    x: np.ndarray  # the pool that train and validation are carved from
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    x_val: np.ndarray | None = None  # only when the source ships its own validation split
    y_val: np.ndarray | None = None


def load_data(spec: Any, source: str = "<data>", *, normalize: bool = True) -> Dataset:
    """Load the dataset named by `spec` (a DataSpec); errors name `source` and the key.

    Inputs are normalised with the training split's mean/std (`Dataset.normalization`); with
    ``normalize=False`` they are left raw (what the exported models take), and
    ``normalization`` still says how training normalised them.
    """
    loaders = {"digits": _load_digits, "fashion-mnist": _load_fashion_mnist, "mnist1d": _load_mnist1d,
               "file": _load_file}
    if spec.name not in loaders:
        raise ConfigError(f"{source}: data.name: expected one of {', '.join(loaders)}, got {spec.name!r}")
    arrays = loaders[spec.name](spec, source)

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
    return _read_unlabeled_file(Path(unlabeled.file).expanduser(), source), None, x_train, y_train


def _read_unlabeled_file(path: Path, source: str) -> np.ndarray:
    """The `x` of an unlabeled-inputs .npz (no pickles), [N, H, W] given a channel axis; one-line DataError."""
    where = f"{source}: data.unlabeled.file: {path}"
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    if path.suffix != ".npz":
        raise DataError(f"{where}: expected a .npz file with an array x")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise DataError(f"{where}: has no array 'x' (keys: {cut(str(sorted(npz.files)), 80)})")
            x = npz["x"]
    except DataError:
        raise
    except Exception as error:  # not a zip, a pickled array, a plain .npy: all unreadable here
        raise DataError(f"{where}: cannot read as a .npz of arrays: {cut(str(error).splitlines()[0], 100)}") from None
    if x.ndim not in (2, 3, 4) or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or not len(x):
        raise DataError(f"{where}: x must be a non-empty real array [N,F], [N,H,W] or [N,C,H,W], "
                        f"got {x.dtype} {list(x.shape)}")
    if not np.isfinite(x).all():
        raise DataError(f"{where}: x holds NaN or infinite values")
    return x[:, None] if x.ndim == 3 else x


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


def _with_test_split(x: np.ndarray, y: np.ndarray, num_classes: int) -> _Arrays:
    """Carve a fixed, seeded 20% test split off a dataset that has none."""
    test, rest = stratified_split(y, round(TEST_FRACTION * len(y)), TEST_SEED)
    return _Arrays(x=x[rest], y=y[rest], x_test=x[test], y_test=y[test], num_classes=num_classes)


# --- digits -------------------------------------------------------------------------------


def _load_digits(spec: Any, source: str) -> _Arrays:
    from sklearn.datasets import load_digits  # embedded in scikit-learn: no download

    digits = load_digits()
    return _with_test_split(digits.data.reshape(-1, 1, 8, 8), digits.target, num_classes=10)


# --- Fashion-MNIST ------------------------------------------------------------------------


def _load_fashion_mnist(spec: Any, source: str) -> _Arrays:
    folder = Path(spec.data_dir or FASHION_MNIST_DIR).expanduser()
    paths, missing = {}, []
    for role, (name, _) in FASHION_MNIST_FILES.items():
        found = [folder / f for f in (f"{name}.gz", name) if (folder / f).is_file()]
        if found:
            paths[role] = found[0]
        else:
            missing.append(name)
    if missing:
        which = "" if len(missing) == len(FASHION_MNIST_FILES) else f": {', '.join(missing)} (.gz or plain)"
        raise DataError(
            f"{source}: data.data_dir: Fashion-MNIST IDX files missing in {folder}{which}; "
            "install Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) "
            "or set data.data_dir"
        )
    arrays = {role: _read_idx(paths[role], FASHION_MNIST_FILES[role][1], source) for role in FASHION_MNIST_FILES}
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_images != n_labels:
            raise DataError(
                f"{source}: data.data_dir: {paths[f'x_{split}']} has {n_images} images "
                f"but {paths[f'y_{split}']} has {n_labels} labels"
            )
    return _Arrays(
        x=arrays["x_train"][:, None],  # add the channel axis: (1, 28, 28)
        y=arrays["y_train"],
        x_test=arrays["x_test"][:, None],
        y_test=arrays["y_test"],
        num_classes=10,
    )


def _read_idx(path: Path, magic: int, source: str) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic, then one uint32 per dimension; uint8 data)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:  # EOFError: truncated .gz
        raise DataError(f"{source}: data.data_dir: {path}: cannot read IDX file: {error}") from None
    ndim = magic & 0xFF  # 2049 -> 1 dim (labels), 2051 -> 3 dims (images)
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{source}: data.data_dir: {path}: not an IDX file with magic number {magic}")
    dims = [int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{source}: data.data_dir: {path}: truncated or corrupt IDX file, "
            f"header says {expected} bytes, file has {len(raw)}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# --- MNIST-1D -----------------------------------------------------------------------------

# Ten 1-D "digit" strokes of the MNIST-1D benchmark (Greydanus 2020), one row per class.
_MNIST1D_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def _load_mnist1d(spec: Any, source: str) -> _Arrays:
    x, y = make_mnist1d(spec.mnist1d_samples, MNIST1D_SEED)
    return _with_test_split(x, y, num_classes=10)


def make_mnist1d(n: int, seed: int, length: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Generate `n` MNIST-1D samples [n, 1, length] with balanced labels, deterministically.

    Each sample is its class template, padded with 36..60 zeros and stretched onto a canvas
    (so the digit gets a random width), scaled, circularly shifted by up to 48 steps, put on
    smooth (correlated) background noise plus white noise, sheared by a random linear trend,
    and resampled to `length` points. Same parameters as the original generator.
    """
    rng = np.random.default_rng(seed)
    templates = _MNIST1D_TEMPLATES - _MNIST1D_TEMPLATES.mean(1, keepdims=True)
    templates /= templates.std(1, keepdims=True)
    templates = (templates - templates[:, :1]) / 6  # every stroke starts and ends at 0
    template_len, max_pad, canvas = 12, 60, 72
    y = np.arange(n) % 10

    pad = rng.integers(36, max_pad + 1, n)
    where = np.linspace(0, 1, canvas) * (template_len - 1 + pad)[:, None]  # position in template + zeros
    on_digit = where < template_len
    x = np.where(on_digit, _interpolate(templates[y], np.minimum(where, template_len - 1)), 0.0)
    x *= 1 + 0.4 * (rng.random((n, 1)) - 0.5)

    shifted = (np.arange(canvas) - rng.integers(0, 48, n)[:, None]) % canvas
    x, on_digit = np.take_along_axis(x, shifted, 1), np.take_along_axis(on_digit, shifted, 1)

    background = gaussian_filter1d(0.25 * rng.standard_normal((n, canvas)), sigma=2, axis=1)
    x = np.where(on_digit, x, background) + 0.02 * rng.standard_normal((n, canvas))
    x -= 0.75 * (rng.random((n, 1)) - 0.5) * np.linspace(-0.5, 0.5, canvas)
    x = _interpolate(x, np.broadcast_to(np.linspace(0, canvas - 1, length), (n, length)))
    return x[:, None].astype(np.float32), y


def _interpolate(rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row of `rows` at fractional `positions` (same row count)."""
    left = np.clip(np.floor(positions).astype(int), 0, rows.shape[1] - 2)
    weight = positions - left
    return (1 - weight) * np.take_along_axis(rows, left, 1) + weight * np.take_along_axis(rows, left + 1, 1)


# --- user file ----------------------------------------------------------------------------


def _load_file(spec: Any, source: str) -> _Arrays:
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise DataError(f"{source}: data.path: file not found: {path}")
    contents = _read_tensor_file(path, source)
    splits = {}  # split name -> (x, y)
    for split in ("", "_val", "_test"):
        keys = (f"x{split}", f"y{split}")
        if split and not any(key in contents for key in keys):
            continue  # validation and test arrays are optional, but come in pairs
        for key in keys:
            if key not in contents:
                raise DataError(f"{source}: data.path: {path} has no array {key!r} (keys: {sorted(contents)})")
        splits[split] = _checked_split(contents[keys[0]], contents[keys[1]], keys, path, source)

    shapes = {split: x.shape[1:] for split, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{source}: data.path: {path}: x arrays differ in per-sample shape: {shapes}")
    # Classes are what training shows; a val/test label beyond them has no logit trained for it.
    num_classes = int(splits[""][1].max(initial=0)) + 1
    for split, (_, y) in splits.items():
        if split and len(y) and y.max() >= num_classes:
            raise DataError(f"{source}: data.path: {path}: y{split} holds class {int(y.max())}, but the training "
                            f"labels y only have classes 0..{num_classes - 1}")

    x, y = splits[""]
    arrays = (
        _Arrays(x=x, y=y, x_test=splits["_test"][0], y_test=splits["_test"][1], num_classes=num_classes)
        if "_test" in splits
        else _with_test_split(x, y, num_classes)
    )
    if "_val" in splits:
        arrays.x_val, arrays.y_val = splits["_val"]
    return arrays


def _read_tensor_file(path: Path, source: str) -> dict[str, np.ndarray]:
    """Arrays of a .npz (no pickles) or a .pt dict (weights_only), as numpy."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        if path.suffix == ".pt":
            contents = torch.load(path, weights_only=True, map_location="cpu")
            if not isinstance(contents, dict):
                raise DataError(f"{source}: data.path: {path}: expected a dict of tensors, "
                                f"got {type(contents).__name__}")
            return {key: np.asarray(value) for key, value in contents.items()}
    except DataError:
        raise
    except Exception as error:  # corrupt zip, pickled objects, unsafe .pt: all mean "unreadable file"
        raise DataError(f"{source}: data.path: {path}: cannot read: {str(error).splitlines()[0]}") from None
    raise DataError(f"{source}: data.path: expected a .npz or .pt file, got {path}")


def _checked_split(x: np.ndarray, y: np.ndarray, keys: tuple[str, str], path: Path, source: str):
    """Validate one (x, y) pair from a user file; labels become int64 in [0, num_classes)."""
    where = f"{source}: data.path: {path}"
    if x.ndim not in (2, 3, 4) or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"{where}: {keys[0]} must be a real array [N,F], [N,H,W] or [N,C,H,W], got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{where}: {keys[0]} contains NaN or infinite values")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: {keys[1]} must be 1-D class indices, one per row of {keys[0]} ({len(x)}), "
                        f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0) or (y < 0).any():
        raise DataError(f"{where}: {keys[1]} must hold integer class indices >= 0")
    x = x[:, None] if x.ndim == 3 else x  # [N,H,W] -> one channel
    return x, y.astype(np.int64)
