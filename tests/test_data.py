"""Tests of autokd.data: splits, normalisation, batching, fingerprints."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from autokd.data import Dataset, batches, load_data, stratified_split
from autokd.errors import ConfigError, DataError
from conftest import class_counts, data_spec as spec


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
