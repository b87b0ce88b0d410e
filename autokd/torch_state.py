"""Torch's process-wide state, set for one block and restored after it: the RNG seed and the thread count.

`seeded` builds a model from a seed alone, whatever random numbers the caller (a reused Ray worker,
a test) consumed before, and leaves the caller's RNG as it was; `one_thread` runs a one-sample
forward single-threaded. Both are used where models are built and measured (`autokd.zoo`,
`autokd.custom_student`, `autokd.sizes`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block on a forked CPU RNG seeded with `seed` (None: unseeded); the caller's RNG state is kept."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded for a moment, then restore the caller's thread count.

    A one-sample forward gains nothing from threads, and while trials keep the cores busy
    the threads wait on each other: measured on 2 busy cores, the default cnn's size took
    172 ms with 2 threads and 14 ms with 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
