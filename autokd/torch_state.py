"""Torch's process-wide state for a block of code: the RNG seed and the thread count.

`seeded` builds a model from a seed alone, whatever random numbers the caller (a reused Ray worker,
a test) consumed before, and leaves the caller's RNG as it was; `seeding` seeds the RNG for good and
draws a block's numbers from the seed; `torch_threads` runs a block at a given thread count. Threads of
one process share torch's RNG (in-process Optuna's ``n_jobs``, a thread pool in a notebook): both seeded
blocks hold one lock, so no other thread's seeding lands among the block's draws. Used where models are
built, measured and trained (`autokd.zoo`, `autokd.custom_student`, `autokd.distill`, `autokd.sizes`,
`autokd.runner`, `autokd.packing`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_RNG_LOCK = threading.RLock()  # re-entrant: a seeded block may build a model that seeds again


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block on a forked CPU RNG seeded with `seed` (None: unseeded); the caller's RNG state is kept."""
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def seeding(seed: int) -> Iterator[None]:
    """``torch.manual_seed(seed)``, then the block's draws come from the seed; the RNG stays seeded after it."""
    with _RNG_LOCK:
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` intra-op threads (None: leave as is), restoring the previous count.

    Training runs at a config's thread count (CPU kernels are bit-identical only at the same count);
    a one-sample forward runs at 1: it gains nothing from threads, and while trials keep the cores
    busy the threads wait on each other (measured on 2 busy cores: the default cnn's size took
    172 ms with 2 threads and 14 ms with 1).
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
