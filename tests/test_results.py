"""Reading a study back: the robust front (front configs re-run with several seeds), by hand."""

from __future__ import annotations

import optuna
import pytest

from autokd.results import robust_frame, trials_frame

States = optuna.trial.TrialState


def study_with(trials: list[tuple[float, int]], robust: dict[int, list[float]]) -> optuna.Study:
    """COMPLETE trials with (val accuracy, params), and `robust.<n>` attrs as the search writes them."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["val_accuracy", "params"])
    for accuracy, params in trials:
        study.add_trial(optuna.trial.create_trial(state=States.COMPLETE, values=[accuracy, params],
                                                  user_attrs={"params": params}))
    for number, accuracies in robust.items():
        mean = sum(accuracies) / len(accuracies)
        std = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5
        study.set_user_attr(f"robust.{number}", {"seeds": list(range(len(accuracies))), "val_accuracies": accuracies,
                                                 "mean": mean, "std": std})
    return study


def test_robust_front_is_ranked_by_mean_and_flags_the_lucky_seed():
    # Three front trials. Trial 1 (0.90 at 2,000 params) is on the search's front by one lucky
    # seed: its other seeds give 0.80 and 0.82, so by mean (0.84) trial 0 (0.85 at 1,000 params,
    # steady) is as accurate and smaller.
    study = study_with([(0.85, 1_000), (0.90, 2_000), (0.95, 9_000)],
                       robust={0: [0.85, 0.84, 0.86], 1: [0.90, 0.80, 0.82], 2: [0.95, 0.94, 0.93]})
    robust = robust_frame(study, trials_frame(study))
    assert robust["trial"].tolist() == [2, 0, 1]                         # by mean: 0.94, 0.85, 0.84
    assert robust["mean"].tolist() == pytest.approx([0.94, 0.85, 0.84])
    assert robust["std"].tolist() == pytest.approx([0.01, 0.01, (0.0056 / 2) ** 0.5])  # by hand
    assert robust["seeds"].tolist() == [3, 3, 3]
    assert robust["val_accuracy"].tolist() == [0.95, 0.85, 0.90]         # the search's seed
    assert robust["front_by_mean"].tolist() == [True, True, False]
    assert robust["beaten_by"].tolist() == [None, None, 0]


def test_no_rerun_means_an_empty_robust_frame():
    study = study_with([(0.85, 1_000)], robust={})
    robust = robust_frame(study, trials_frame(study))
    assert robust.empty and {"trial", "mean", "std", "front_by_mean"} <= set(robust.columns)
