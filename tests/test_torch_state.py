"""autokd.torch_state: a seeded block draws the seed's numbers and leaves the caller's RNG and threads as they were."""

import torch

from autokd.torch_state import one_thread, seeded


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


def test_one_thread_restores_the_thread_count_even_after_an_error():
    threads = torch.get_num_threads()
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == threads
