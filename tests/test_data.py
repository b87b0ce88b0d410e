"""Tests of autokd.data: splits, normalisation, loaders, batching, fingerprints."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autokd.data import FASHION_MNIST_DIR, Dataset, batches, load_data, make_mnist1d, stratified_split
from autokd.errors import ConfigError, DataError


def spec(name="digits", **overrides):
    """A stand-in for spec.DataSpec: load_data only reads these attributes."""
    fields = dict(name=name, data_dir=None, path=None, val_fraction=0.1, seed=0, train_subset=None,
                  mnist1d_samples=4000)
    return SimpleNamespace(**(fields | overrides))


def class_counts(y: torch.Tensor) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=10)


def rows(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.flatten(1).numpy()}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_data(spec("digits"))


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_data(spec("mnist1d"))


# --- splits -------------------------------------------------------------------------------


def test_stratified_split_is_an_exact_disjoint_partition():
    y = np.repeat(np.arange(5), [50, 30, 10, 7, 3])
    taken, rest = stratified_split(y, 20, seed=3)
    assert len(taken) == 20 and len(rest) == len(y) - 20
    assert np.array_equal(np.sort(np.concatenate([taken, rest])), np.arange(len(y)))
    # every class gives about its share: 50/100 * 20 = 10, 30 -> 6, 10 -> 2, ...
    assert np.abs(np.bincount(y[taken], minlength=5) - np.array([10, 6, 2, 1.4, 0.6])).max() <= 1


def test_stratified_split_is_seeded():
    y = np.arange(200) % 4
    assert all(np.array_equal(a, b) for a, b in zip(stratified_split(y, 30, 1), stratified_split(y, 30, 1)))
    assert not np.array_equal(stratified_split(y, 30, 1)[0], stratified_split(y, 30, 2)[0])


def test_digits_shapes_sizes_and_classes(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert (len(digits.y_train), len(digits.y_val), len(digits.y_test)) == (1294, 144, 359)  # 1797 = 80/20, then 90/10
    assert digits.x_train.shape == (1294, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    for y in (digits.y_train, digits.y_val, digits.y_test):
        assert set(y.tolist()) == set(range(10))


def test_splits_are_stratified(digits):
    for y, size in ((digits.y_train, 1294), (digits.y_val, 144), (digits.y_test, 359)):
        # digits classes hold 174..183 samples, so every split holds ~10% of itself per class
        assert np.abs(class_counts(y) - size / 10).max() <= 0.03 * size + 1


def test_splits_do_not_overlap(mnist1d):
    # mnist1d rows are continuous noise, so equal rows would mean the same sample twice
    train, val, test = rows(mnist1d.x_train), rows(mnist1d.x_val), rows(mnist1d.x_test)
    assert len(train) + len(val) + len(test) == 4000
    assert not (train & val) and not (train & test) and not (val & test)


def test_loading_twice_gives_identical_data(digits):
    again = load_data(spec("digits"))
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(digits, split), getattr(again, split))


def raw_digits(data: Dataset, x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: digits pixels are integers 0..16 and train holds both ends."""
    low, high = data.x_train.min(), data.x_train.max()
    return ((x - low) / (high - low) * 16).round()


def test_seed_moves_validation_but_never_test(digits):
    other = load_data(spec("digits", seed=1))
    assert torch.equal(other.y_test, digits.y_test)
    assert torch.equal(raw_digits(other, other.x_test), raw_digits(digits, digits.x_test))
    assert not torch.equal(raw_digits(other, other.x_val), raw_digits(digits, digits.x_val))


def test_normalisation_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(0)
    x, x_val, x_test = 5 + 2 * rng.standard_normal((300, 6)), np.full((10, 6), 9.0), np.full((20, 6), 100.0)
    y = np.arange(300) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x_val, y_val=y[:10], x_test=x_test, y_test=y[:20])
    data = load_data(spec("file", path=str(tmp_path / "d.npz")))
    assert abs(data.x_train.mean().item()) < 1e-5 and abs(data.x_train.std().item() - 1) < 1e-5
    mean, std = x.mean(), x.std(ddof=1)
    assert torch.allclose(data.x_val, torch.full((10, 6), (9 - mean) / std, dtype=torch.float32))
    assert torch.allclose(data.x_test, torch.full((20, 6), (100 - mean) / std, dtype=torch.float32))


def test_train_subset_thins_only_the_training_split(digits):
    small = load_data(spec("digits", train_subset=200))
    assert len(small.y_train) == 200
    assert np.abs(class_counts(small.y_train) - 20).max() <= 2
    assert torch.equal(small.y_val, digits.y_val) and torch.equal(small.y_test, digits.y_test)
    assert len(load_data(spec("digits", train_subset=10**6)).y_train) == 1294  # larger than train: keep all


def test_val_fraction_too_small_is_a_data_error():
    with pytest.raises(DataError, match="data.val_fraction"):
        load_data(spec("digits", val_fraction=1e-6))


def test_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"s\.yaml: data\.name: expected one of digits, fashion-mnist, mnist1d, file"):
        load_data(spec("cifar"), source="s.yaml")


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


# --- batches ------------------------------------------------------------------------------


def test_batches_cover_every_index_once_in_order_without_generator():
    chunks = list(batches(10, 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat(chunks), torch.arange(10))


def test_batches_shuffle_deterministically_with_a_generator():
    first = torch.cat(list(batches(100, 32, torch.Generator().manual_seed(7))))
    again = torch.cat(list(batches(100, 32, torch.Generator().manual_seed(7))))
    other = torch.cat(list(batches(100, 32, torch.Generator().manual_seed(8))))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, torch.arange(100))
    assert torch.equal(first.sort().values, torch.arange(100))


def test_batches_reject_a_bad_batch_size():
    with pytest.raises(ValueError):
        list(batches(10, 0))


# --- fingerprint --------------------------------------------------------------------------


def test_fingerprint_is_stable_and_memoised(digits):
    assert digits.fingerprint() == load_data(spec("digits")).fingerprint()
    assert digits.fingerprint() is digits.fingerprint()
    assert len(digits.fingerprint()) == 64


def test_fingerprint_changes_with_the_data(digits):
    assert load_data(spec("digits", seed=1)).fingerprint() != digits.fingerprint()
    x_test = digits.x_test.clone()
    x_test[0, 0, 0, 0] += 1
    changed = Dataset(
        digits.name, digits.x_train, digits.y_train, digits.x_val, digits.y_val, x_test, digits.y_test,
        digits.num_classes, digits.input_shape,
    )
    assert changed.fingerprint() != digits.fingerprint()


def test_accepts_the_real_data_spec():
    DataSpec = pytest.importorskip("autokd.spec").DataSpec
    assert len(load_data(DataSpec(name="digits", train_subset=100)).y_train) == 100
