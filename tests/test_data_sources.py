"""Tests of autokd.data_sources: each dataset's reader, through load_data; bad files are one DataError line."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from autokd.data import Dataset, batches, load_data
from autokd.data_sources import DIGITS_FILE, FASHION_MNIST_DIR, READERS, make_mnist1d
from autokd.errors import DataError
from conftest import class_counts, data_spec as spec


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_data(spec("mnist1d"))


# --- digits -------------------------------------------------------------------------------


def test_digits_read_from_sklearns_file_are_what_load_digits_gives(monkeypatch):
    from sklearn.datasets import load_digits

    assert DIGITS_FILE.is_file()  # else every digits study pays sklearn's import (the fallback below)
    expected = load_digits()
    read = READERS["digits"](None, "study.yaml")
    assert read.x.shape == (1797, 1, 8, 8) and read.num_classes == 10
    assert np.array_equal(read.x.reshape(1797, 64), expected.data) and read.x.dtype == expected.data.dtype
    assert np.array_equal(read.y, expected.target) and read.y.dtype == expected.target.dtype

    monkeypatch.setattr("autokd.data_sources.DIGITS_FILE", Path("/nonexistent/digits.csv.gz"))
    fallback = READERS["digits"](None, "study.yaml")
    assert np.array_equal(fallback.x, read.x) and np.array_equal(fallback.y, read.y)


# --- Fashion-MNIST ------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write uint8 `array` as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())
    return path


def fake_fashion(folder: Path, n_train=50, n_test=20, gz=".gz") -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{gz}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{gz}", np.arange(n) % 10)
    return folder


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    data = load_data(spec("fashion-mnist"))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (54000, 6000, 10000)
    assert data.x_train.shape == (54000, 1, 28, 28)
    assert set(data.y_test.tolist()) == set(range(10))
    assert (class_counts(data.y_val) == 600).all()  # 6000 per class in train: exactly 10% each


@pytest.mark.parametrize("gz", [".gz", ""])
def test_fashion_mnist_reads_gzipped_and_plain_idx(tmp_path, gz):
    data = load_data(spec("fashion-mnist", data_dir=str(fake_fashion(tmp_path / "f", gz=gz)), val_fraction=0.2))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (40, 10, 20)
    assert data.x_test.shape == (20, 1, 28, 28)


def test_fashion_mnist_missing_folder_says_how_to_fix_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        load_data(spec("fashion-mnist", data_dir=str(missing)), source="studies/f.yaml")
    message = str(error.value)
    assert message.startswith("studies/f.yaml: data.data_dir: ") and "\n" not in message
    assert str(missing) in message
    assert "install Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)" in message


@pytest.mark.parametrize("gz", [".gz", ""])
def test_fashion_mnist_truncated_file_names_the_file_and_sizes(tmp_path, gz):
    folder = fake_fashion(tmp_path / "f", gz=gz)
    images = folder / f"train-images-idx3-ubyte{gz}"
    full = gzip.decompress(images.read_bytes()) if gz else images.read_bytes()
    (gzip.open if gz else open)(images, "wb").write(full[:-100])
    with pytest.raises(DataError, match=f"{images}.*header says {len(full)} bytes, file has {len(full) - 100}"):
        load_data(spec("fashion-mnist", data_dir=str(folder)))


def test_fashion_mnist_cut_gzip_stream_is_a_data_error(tmp_path):
    folder = fake_fashion(tmp_path / "f")
    images = folder / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(DataError, match=str(images)):
        load_data(spec("fashion-mnist", data_dir=str(folder)))


def test_fashion_mnist_label_count_must_match_images(tmp_path):
    folder = fake_fashion(tmp_path / "f")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(49))
    with pytest.raises(DataError, match="50 images but .* has 49 labels"):
        load_data(spec("fashion-mnist", data_dir=str(folder)))


def test_fashion_mnist_wrong_magic_number(tmp_path):
    folder = fake_fashion(tmp_path / "f")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros((50, 28, 28)))  # images where labels belong
    with pytest.raises(DataError, match="magic number 2049"):
        load_data(spec("fashion-mnist", data_dir=str(folder)))


# --- MNIST-1D -----------------------------------------------------------------------------


def test_mnist1d_shape_and_balance(mnist1d):
    assert mnist1d.input_shape == (1, 40) and mnist1d.num_classes == 10
    assert (len(mnist1d.y_train), len(mnist1d.y_val), len(mnist1d.y_test)) == (2880, 320, 800)
    assert (class_counts(mnist1d.y_test) == 80).all()


def test_mnist1d_is_deterministic_and_sized_by_spec():
    x1, y1 = make_mnist1d(500, seed=0)
    x2, y2 = make_mnist1d(500, seed=0)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, make_mnist1d(500, seed=1)[0])
    assert len(load_data(spec("mnist1d", mnist1d_samples=1000)).y_test) == 200


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_builtin_datasets_never_touch_the_network(monkeypatch, name):
    def refuse(*args, **kwargs):
        raise AssertionError("data loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(load_data(spec(name, mnist1d_samples=500)).y_train) > 0


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mnist1d_is_learnable(mnist1d, one_thread):
    # a tiny 1-D CNN reaches ~0.77 in 6 epochs (logistic regression ~0.32, MLP ~0.6: as in the paper)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(1, 32, 5, padding=2), torch.nn.ReLU(),
        torch.nn.Conv1d(32, 32, 5, padding=2, stride=2), torch.nn.ReLU(),
        torch.nn.Conv1d(32, 32, 5, padding=2, stride=2), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(320, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        for index in batches(len(mnist1d.y_train), 64, generator):
            loss = torch.nn.functional.cross_entropy(model(mnist1d.x_train[index]), mnist1d.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(mnist1d.x_val).argmax(1) == mnist1d.y_val).float().mean().item()
    assert accuracy > 0.6


# --- user files ---------------------------------------------------------------------------


def test_npz_round_trip_carves_a_fixed_test_split(tmp_path):
    x, y = np.random.default_rng(0).random((100, 5, 6)), np.arange(100) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(spec("file", path=str(tmp_path / "d.npz")))
    assert data.input_shape == (1, 5, 6) and data.num_classes == 4  # [N,H,W] gets a channel axis
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (72, 8, 20)
    assert sorted(torch.cat([data.y_train, data.y_val, data.y_test]).tolist()) == sorted(y.tolist())


def test_pt_round_trip_keeps_given_splits(tmp_path):
    x = torch.randn(40, 3, 4, 4)
    torch.save(
        {"x": x, "y": torch.arange(40) % 3, "x_val": x[:5], "y_val": torch.zeros(5, dtype=torch.long),
         "x_test": x[:7], "y_test": torch.full((7,), 2)},
        tmp_path / "d.pt",
    )
    data = load_data(spec("file", path=str(tmp_path / "d.pt")))
    assert data.input_shape == (3, 4, 4) and data.num_classes == 3  # max training label + 1
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (40, 5, 7)
    assert torch.allclose(data.x_train * x.std() + x.mean(), x, atol=1e-5)  # order kept, only normalised


def test_a_test_class_the_training_labels_never_have_is_refused(tmp_path):
    x = np.zeros((20, 4), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 3, x_test=x[:5], y_test=np.array([0, 1, 2, 3, 0]))
    with pytest.raises(DataError) as error:
        load_data(spec("file", path=str(tmp_path / "d.npz")), "s.yaml")
    assert str(error.value) == (f"s.yaml: data.path: {tmp_path / 'd.npz'}: y_test holds class 3, but the training "
                                "labels y only have classes 0..2")


def test_flat_features_and_whole_float_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((30, 7)), y=(np.arange(30) % 2).astype(float))
    data = load_data(spec("file", path=str(tmp_path / "d.npz")))
    assert data.input_shape == (7,) and data.y_train.dtype == torch.int64
    assert torch.isfinite(data.x_train).all()  # constant inputs: no division by a zero std


def test_missing_file_is_one_line(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(DataError) as error:
        load_data(spec("file", path=str(path)), source="s.yaml")
    assert str(error.value) == f"s.yaml: data.path: file not found: {path}"


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.ones((10, 3))}, "has no array 'y'"),
        ({"x": np.ones((10, 3)), "y": np.zeros(10), "x_test": np.ones((2, 3))}, "has no array 'y_test'"),
        ({"x": np.ones((10, 3)), "y": np.arange(10) - 1}, "y must hold integer class indices"),
        ({"x": np.ones((10, 3)), "y": np.full(10, 0.5)}, "y must hold integer class indices"),
        ({"x": np.ones((10, 3)), "y": np.zeros(9)}, "y must be 1-D class indices"),
        ({"x": np.ones(10), "y": np.zeros(10)}, "x must be a real array"),
        ({"x": np.full((10, 3), np.nan), "y": np.zeros(10)}, "NaN"),
    ],
)
def test_bad_user_files_are_data_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match) as error:
        load_data(spec("file", path=str(tmp_path / "d.npz")))
    assert str(tmp_path / "d.npz") in str(error.value)


def test_unsupported_or_unreadable_files(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"expected a \.npz or \.pt file"):
        load_data(spec("file", path=str(tmp_path / "d.csv")))
    (tmp_path / "d.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_data(spec("file", path=str(tmp_path / "d.pt")))
