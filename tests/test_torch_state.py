"""autokd.torch_state: a seeded block draws the seed's numbers and leaves the caller's RNG and threads as they were."""

import sys
import threading

import torch

from autokd.torch_state import seeded, seeding, torch_threads


def _at_once(target, *arguments) -> None:
    """`target(argument)` for every argument, each in a thread of its own, all at once; the threads switch
    as often as the interpreter can, so that a race shows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target, args=(argument,)) for argument in arguments]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


def test_seeded_draws_from_the_seed_alone_and_keeps_the_callers_rng():
    torch.manual_seed(1)
    expected_after = torch.rand(3)
    torch.manual_seed(7)
    from_seed = torch.rand(3)
    torch.manual_seed(1)
    with seeded(7):
        assert torch.equal(torch.rand(3), from_seed)
    torch.manual_seed(1)
    with seeded(7):
        torch.rand(100)
    assert torch.equal(torch.rand(3), expected_after)  # the block consumed none of the caller's numbers


def test_seeded_none_leaves_the_callers_rng_untouched_too():
    torch.manual_seed(2)
    expected = torch.rand(3)
    torch.manual_seed(2)
    with seeded(None):
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)


def test_torch_threads_sets_the_count_and_restores_it_even_after_an_error():
    threads = torch.get_num_threads()
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == threads
    with torch_threads(None):  # None leaves the count alone
        assert torch.get_num_threads() == threads
    with torch_threads(0):  # a count below one still runs, on one thread
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_models_built_in_threads_at_once_equal_models_built_one_by_one():
    """In-process Optuna (`n_jobs=2`) builds students in threads that share torch's RNG: a seeded block
    must not draw another thread's numbers (it did, and the orchestration benchmark's in-process arm then
    missed the search's val accuracy for a few trials in a hundred)."""
    from autokd.zoo import build_model

    arch = {"family": "mlp", "depth": 2, "width": 32}
    seeds = {name: list(range(offset, offset + 40)) for name, offset in (("a", 0), ("b", 1000))}
    expected = {seed: build_model(arch, (64,), 10, seed=seed).state_dict()
                for run in seeds.values() for seed in run}
    built: dict[int, dict] = {}

    def build_all(run: list[int]) -> None:
        for seed in run:
            built[seed] = build_model(arch, (64,), 10, seed=seed).state_dict()

    _at_once(build_all, *seeds.values())
    differ = [seed for seed, state in expected.items()
              if any(not torch.equal(state[key], built[seed][key]) for key in state)]
    assert differ == []


def test_seeding_draws_from_the_seed_while_other_threads_seed_too():
    """`seeding` (fit's seed for the loss's parameters and dropout) holds other threads' seeding off its draws."""
    def draws() -> torch.Tensor:
        return torch.cat([torch.rand(1) for _ in range(50)])  # many small draws: room for a thread switch

    expected = {}
    for seed in range(60):
        torch.manual_seed(seed)
        expected[seed] = draws()
    got: dict[int, torch.Tensor] = {}

    def seed_and_draw(seeds: range) -> None:
        for seed in seeds:
            with seeding(seed):
                got[seed] = draws()

    _at_once(seed_and_draw, range(30), range(30, 60))
    assert [seed for seed in expected if not torch.equal(got[seed], expected[seed])] == []
    with seeding(3):
        pass
    assert torch.equal(draws(), expected[3])  # the RNG stays seeded after the block
