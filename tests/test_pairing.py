"""Paired multi-seed scoring against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from autokd.pairing import CE, TUNED, VANILLA_KD, Candidate, Choice, beats, choose, confirm, paired_gain


def test_paired_gain_is_the_mean_and_standard_error_of_per_seed_differences():
    # differences 0.01, 0.02, 0.01: mean 0.04/3; sample std sqrt(((1/3)^2*2 + (2/3)^2) * 1e-4 / 2) = 0.005774;
    # standard error 0.005774 / sqrt(3) = 0.003333
    mean, standard_error = paired_gain([0.80, 0.82, 0.81], [0.79, 0.80, 0.80])
    assert mean == pytest.approx(0.04 / 3)
    assert standard_error == pytest.approx(0.0033333, abs=1e-7)


def test_paired_gain_cancels_what_the_seeds_share():
    # Seed 2 is 5 pt easier for everyone: unpaired the spread would be huge, paired it is zero.
    mean, standard_error = paired_gain([0.80, 0.85], [0.79, 0.84])
    assert mean == pytest.approx(0.01) and standard_error == pytest.approx(0.0, abs=1e-12)


def test_paired_gain_needs_one_value_per_shared_seed():
    with pytest.raises(ValueError, match="one value per shared seed"):
        paired_gain([0.8, 0.9], [0.8])


def test_a_gain_counts_only_beyond_the_margin():
    assert beats(0.003, 0.001, 2.0)          # 3 SE
    assert not beats(0.003, 0.002, 2.0)      # 1.5 SE
    assert not beats(-0.01, 0.0, 2.0)        # a loss never counts
    assert beats(0.001, 0.0, 2.0)            # identical differences: any positive gain
    assert not beats(0.01, math.nan, 2.0)    # one seed: no standard error, no claim


def test_ce_only_stays_when_distillation_does_not_beat_the_margin():
    candidates = [Candidate(1, CE, (0.80, 0.82, 0.81)),
                  Candidate(2, VANILLA_KD, (0.78, 0.80, 0.79)),   # worse on every seed
                  Candidate(3, TUNED, (0.83, 0.81, 0.81))]        # +0.0067 +- 0.0133: noise
    choice = choose(candidates, margin_se=2.0)
    assert (choice.trial, choice.role, choice.gain_vs_ce) == (1, CE, 0.0)
    assert choice.reason == "distillation did not help at this size"


def test_a_tuned_config_with_a_clear_paired_gain_takes_the_place():
    candidates = [Candidate(1, CE, (0.80, 0.82, 0.81)),
                  Candidate(2, VANILLA_KD, (0.79, 0.81, 0.80)),
                  Candidate(3, TUNED, (0.81, 0.83, 0.82)),       # +0.01 on every seed
                  Candidate(4, TUNED, (0.84, 0.80, 0.81))]       # higher mean, but a noisy gain
    choice = choose(candidates, margin_se=2.0)
    assert (choice.trial, choice.role) == (3, TUNED)
    assert choice.mean == pytest.approx(0.82) and choice.gain_vs_ce == pytest.approx(0.01)
    assert "+1.00 ± 0.00 pt over CE-only (3 paired seeds)" in choice.reason


def test_a_distilled_choice_is_never_below_vanilla_kd():
    # Vanilla KD's mean is highest, but its gain is noise; the tuned config's gain is clear but
    # its mean is below vanilla's: neither may replace CE-only... unless it reaches vanilla's mean.
    candidates = [Candidate(1, CE, (0.80, 0.80, 0.80)),
                  Candidate(2, VANILLA_KD, (0.86, 0.78, 0.80)),   # mean 0.8133, SE 0.024
                  Candidate(3, TUNED, (0.81, 0.81, 0.81))]        # mean 0.81 < 0.8133
    assert choose(candidates, margin_se=2.0).role == CE


def test_no_choice_before_the_ce_baseline_finished():
    assert choose([Candidate(3, TUNED, (0.9, 0.9))], margin_se=2.0) is None


CHOSEN = Choice(3, TUNED, 0.82, 0.01, 0.0, "distillation gains +1.00 ± 0.00 pt over CE-only (3 paired seeds)")
BASELINE = Candidate(1, CE, (0.80, 0.82, 0.81))


def test_a_choice_confirmed_on_fresh_seeds_keeps_its_place_and_shows_the_fresh_gain():
    # fresh seeds: differences 0.004, 0.001, 0.004 -> mean 0.003, sample std 0.0017321, SE 0.001
    choice = confirm(CHOSEN, BASELINE, (0.904, 0.911, 0.924), (0.900, 0.910, 0.920))
    assert (choice.trial, choice.role, choice.mean) == (3, TUNED, 0.82)  # the point the search found
    assert choice.gain_vs_ce == pytest.approx(0.003) and choice.gain_se == pytest.approx(0.001)
    assert choice.reason == "distillation gains +0.30 ± 0.10 pt over CE-only (confirmed on 3 fresh seeds)"


def test_a_choice_that_does_not_hold_on_fresh_seeds_gives_the_place_back_to_ce_only():
    for fresh in ((0.90, 0.91, 0.92), (0.899, 0.909, 0.921)):  # no gain; a loss of 0.0003 (1 up, 2 down)
        choice = confirm(CHOSEN, BASELINE, fresh, (0.900, 0.910, 0.920))
        assert (choice.trial, choice.role, choice.gain_vs_ce) == (1, CE, 0.0)
        assert choice.mean == pytest.approx(0.81)
        assert choice.reason.startswith("distillation did not hold on 3 fresh seeds (")


def test_without_both_confirmation_runs_the_choice_stands():
    assert confirm(CHOSEN, BASELINE, None, (0.9, 0.9, 0.9)) is CHOSEN
    assert confirm(CHOSEN, BASELINE, (0.9, 0.9, 0.9), None) is CHOSEN
    ce_choice = Choice(1, CE, 0.81, 0.0, 0.0, "distillation did not help at this size")
    assert confirm(ce_choice, BASELINE, (0.99, 0.99, 0.99), (0.5, 0.5, 0.5)) is ce_choice
