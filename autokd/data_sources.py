"""Where each dataset's arrays come from: sklearn's digits, Fashion-MNIST's IDX files, the MNIST-1D
generator, the user's .npz/.pt tensor files and unlabeled-input files, read into numpy, checked, never split.

Nothing is downloaded. `READERS` maps each ``data.name`` to its reader, which returns `SourceArrays`:
the inputs [N, *input_shape] and integer labels, with the source's own test (and validation) split
when it ships one; `autokd.data.load_data` carves the missing splits and normalises. Every problem
with a file is one `DataError` line naming the ``data.*`` key and the file.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from autokd.errors import DataError
from autokd.spec import cut

__all__ = ["FASHION_MNIST_DIR", "MNIST1D_SEED", "RAW_INPUTS", "READERS", "SourceArrays", "make_mnist1d",
           "read_unlabeled_file"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Embedded in scikit-learn (no download); found without importing sklearn.
DIGITS_FILE = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
FASHION_MNIST_FILES = {  # role -> (IDX base name, magic number)
    "x_train": ("train-images-idx3-ubyte", 2051),
    "y_train": ("train-labels-idx1-ubyte", 2049),
    "x_test": ("t10k-images-idx3-ubyte", 2051),
    "y_test": ("t10k-labels-idx1-ubyte", 2049),
}
MNIST1D_SEED = 0  # fixed, so mnist1d is the same data for every study


RAW_INPUTS = {  # dataset name -> what its raw (unnormalised) inputs are
    "digits": "pixel values 0..16 as sklearn.datasets.load_digits gives them, float32 [N, 1, 8, 8]",
    "fashion-mnist": "pixel bytes 0..255 as stored in the IDX files, float32 [N, 1, 28, 28]",
    "mnist1d": "signals as autokd.data_sources.make_mnist1d generates them, float32 [N, 1, 40]",
    "file": "the x arrays of data.path as stored, float32 ([N, H, W] gets a channel axis: [N, 1, H, W])",
}


@dataclass
class SourceArrays:
    """What a reader returns: numpy inputs [N, *input_shape] and integer labels [N]."""

    x: np.ndarray  # the pool that train and validation (and, without x_test, test) are carved from
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None  # only when the source ships its own test split
    y_test: np.ndarray | None = None
    x_val: np.ndarray | None = None  # only when the source ships its own validation split
    y_val: np.ndarray | None = None


# --- digits -------------------------------------------------------------------------------


def _read_digits(spec: Any, source: str) -> SourceArrays:
    """scikit-learn's digits, read from the file it ships as `load_digits` reads it: importing sklearn takes
    1.3 s, longer than a tiny search's training (tests/test_data_sources.py checks both give the same arrays)."""
    if DIGITS_FILE.is_file():
        table = np.loadtxt(DIGITS_FILE, delimiter=",")
        x, y = table[:, :-1], table[:, -1].astype(int)
    else:  # another layout of scikit-learn: its own loader
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
    return SourceArrays(x=x.reshape(-1, 1, 8, 8), y=y, num_classes=10)


# --- Fashion-MNIST ------------------------------------------------------------------------


def _read_fashion_mnist(spec: Any, source: str) -> SourceArrays:
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
    return SourceArrays(
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


def _read_mnist1d(spec: Any, source: str) -> SourceArrays:
    x, y = make_mnist1d(spec.mnist1d_samples, MNIST1D_SEED)
    return SourceArrays(x=x, y=y, num_classes=10)


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

    from scipy.ndimage import gaussian_filter1d  # MNIST-1D only: scipy costs every other dataset 0.25 s

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


def _read_file(spec: Any, source: str) -> SourceArrays:
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
    x_test, y_test = splits.get("_test", (None, None))  # none: load_data carves a fixed test split
    x_val, y_val = splits.get("_val", (None, None))
    return SourceArrays(x=x, y=y, num_classes=num_classes, x_test=x_test, y_test=y_test, x_val=x_val, y_val=y_val)


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


# --- unlabeled inputs (data.unlabeled.file) -----------------------------------------------


def read_unlabeled_file(path: Path, source: str) -> np.ndarray:
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


READERS: dict[str, Callable[[Any, str], SourceArrays]] = {  # data.name -> reader(spec: DataSpec, source)
    "digits": _read_digits, "fashion-mnist": _read_fashion_mnist, "mnist1d": _read_mnist1d, "file": _read_file,
}
