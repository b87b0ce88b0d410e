"""autokd.torch_state: a seeded block draws the seed's numbers and leaves the caller's RNG and threads as they were."""

import torch

from autokd.torch_state import seeded, torch_threads


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
