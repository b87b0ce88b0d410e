"""Pareto-aware early stopping: `stopping.ParetoRungs` by hand, then a real search that stops trials."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from autokd.stopping import ParetoRungs, crowding_distances
from conftest import run_cli, tiny_study

States = optuna.trial.TrialState


def rung_rule_only(grace_epochs: int, eta: int, max_epochs: int) -> ParetoRungs:
    """Rungs whose front rule says "stop" to every trial, so that the rung rule alone decides."""
    rungs = ParetoRungs(grace_epochs, eta, max_epochs)
    rungs._front_beats = lambda epoch, accuracy, size: True
    return rungs


# ---------------------------------------------------------------------------------------------
# Crowding distance, by hand


def test_crowding_distance_of_three_points_by_hand():
    points = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 2.0]])
    # middle point: (3 - 0) / 3 on the first objective + (2 - 0) / 2 on the second = 2
    np.testing.assert_allclose(crowding_distances(points), [np.inf, 2.0, np.inf])


def test_crowding_distance_of_four_points_by_hand():
    points = np.array([[0.9, 4.0], [0.5, 2.0], [0.6, 2.5], [0.2, 1.0]])
    # accuracy: sorted 0.2, 0.5, 0.6, 0.9 (range 0.7); size: sorted 1, 2, 2.5, 4 (range 3)
    # [0.5, 2.0]: (0.6 - 0.2) / 0.7 + (2.5 - 1) / 3 ; [0.6, 2.5]: (0.9 - 0.5) / 0.7 + (4 - 2) / 3
    expected = [np.inf, 0.4 / 0.7 + 1.5 / 3, 0.4 / 0.7 + 2 / 3, np.inf]
    np.testing.assert_allclose(crowding_distances(points), expected)


def test_crowding_distance_of_one_or_two_points_is_infinite_and_a_flat_objective_adds_nothing():
    assert np.isinf(crowding_distances(np.array([[0.5, 1.0]]))).all()
    assert np.isinf(crowding_distances(np.array([[0.5, 1.0], [0.6, 2.0]]))).all()
    flat = crowding_distances(np.array([[0.1, 3.0], [0.2, 3.0], [0.4, 3.0]]))
    np.testing.assert_allclose(flat, [np.inf, (0.4 - 0.1) / 0.3, np.inf])


def test_crowding_distance_of_repeated_points_breaks_ties_by_row_order():
    """The same student trained twice gives the same (accuracy, size): equal rows keep their row order
    (a stable sort), so of equal smallest rows the first is the extreme, of equal largest the last."""
    small, large = [0.0, 3.0], [0.3, 5.0]
    # sorted: rows 2, 3 (small), 0, 1 (large); extremes rows 2 and 1; rows 3 and 0 each get 1 + 1
    np.testing.assert_allclose(crowding_distances(np.array([large, large, small, small])), [2.0, np.inf, np.inf, 2.0])
    alternating = np.array([large, small] * 10)  # rows 0, 2, .., 18 large; 1, 3, .., 19 small
    expected = np.zeros(20)
    expected[[1, 18]] = np.inf  # the first small, the last large
    expected[[19, 0]] = 2.0  # the last small and the first large are each other's neighbours
    np.testing.assert_allclose(crowding_distances(alternating), expected)


# ---------------------------------------------------------------------------------------------
# Milestones


@pytest.mark.parametrize("grace, eta, max_epochs, expected", [
    (1, 2, 4, [1, 2]),          # the last epoch is never a rung: a trial that reaches it completes
    (1, 2, 8, [1, 2, 4]),
    (1, 3, 27, [1, 3, 9]),
    (2, 2, 8, [2, 4]),
    (2, 3, 20, [2, 6, 18]),
    (3, 2, 3, []),              # grace at or past the schedule: nothing is ever stopped
    (5, 2, 4, []),
])
def test_milestones_are_grace_times_powers_of_eta_below_the_last_epoch(grace, eta, max_epochs, expected):
    assert ParetoRungs(grace, eta, max_epochs).milestones == expected


@pytest.mark.parametrize("grace, eta", [(0, 2), (-1, 3), (1, 1), (2, 0)])
def test_bad_grace_or_eta_is_refused(grace, eta):
    with pytest.raises(ValueError, match="grace_epochs must be >= 1 and eta >= 2"):
        ParetoRungs(grace, eta, 10)


def test_epochs_that_are_not_milestones_never_stop_a_trial():
    rungs = ParetoRungs(grace_epochs=2, eta=2, max_epochs=8)  # milestones [2, 4]
    for epoch in (1, 3, 5, 6, 7, 8, 9):
        for k in range(5):  # even a hopeless trial with many hopeless peers goes on between rungs
            assert rungs.keep_training(f"t{k}", epoch, accuracy=0.01 * k, size=1e6 - k)


def test_no_milestones_means_every_result_continues():
    rungs = ParetoRungs(grace_epochs=4, eta=2, max_epochs=4)
    assert all(rungs.keep_training(f"t{k}", 4, 0.1, 10 ** k) for k in range(6))


# ---------------------------------------------------------------------------------------------
# The asynchronous "too few peers" rule


def test_first_eta_minus_one_trials_at_a_rung_always_continue():
    rungs = rung_rule_only(grace_epochs=1, eta=4, max_epochs=16)
    # Three terrible, huge trials arrive first: with fewer than eta at the rung nobody is judged.
    assert rungs.keep_training("a", 1, accuracy=0.10, size=90_000)
    assert rungs.keep_training("b", 1, accuracy=0.11, size=80_000)
    assert rungs.keep_training("c", 1, accuracy=0.12, size=70_000)
    # The fourth is judged against the three: it dominates them all and is the top 1/4.
    assert rungs.keep_training("d", 1, accuracy=0.90, size=1_000)
    # A fifth dominated one is now judged and stopped (ceil(5/4) = 2 survive: d, then c).
    assert not rungs.keep_training("e", 1, accuracy=0.05, size=95_000)


def test_each_rung_counts_its_own_peers():
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=8)  # milestones [1, 2, 4]
    assert rungs.keep_training("a", 1, 0.9, 100)
    assert not rungs.keep_training("b", 1, 0.5, 1000)   # dominated by a at rung 1
    # At rung 2, a is alone: peers from rung 1 do not count, so even a poor result continues.
    assert rungs.keep_training("a", 2, 0.1, 100)


# ---------------------------------------------------------------------------------------------
# Top 1/eta by non-dominated rank


def test_top_one_over_eta_by_rank_then_accuracy_when_all_have_the_same_size():
    """Equal sizes make the comparison plain accuracy: the top ceil(n/eta) so far continue."""
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=4)
    assert rungs.keep_training("a", 1, 0.90, 1000)        # alone: too few peers
    assert not rungs.keep_training("b", 1, 0.80, 1000)    # 2 at the rung: ceil(2/2)=1 survives (a)
    assert rungs.keep_training("c", 1, 0.85, 1000)        # 3: ceil(3/2)=2 survive (a, c)
    assert not rungs.keep_training("d", 1, 0.70, 1000)    # 4: ceil(4/2)=2 survive (a, c)
    assert rungs.keep_training("e", 1, 0.95, 1000)        # 5: best so far


def test_eta_three_keeps_a_third():
    rungs = rung_rule_only(grace_epochs=1, eta=3, max_epochs=9)
    decisions = [rungs.keep_training(f"t{k}", 1, accuracy, 5000)
                 for k, accuracy in enumerate([0.50, 0.40, 0.30, 0.60, 0.20, 0.10])]
    # t0, t1: too few peers. t2 (3 at rung, 1 survives: t0) stops. t3 best. t4 (5, 2 survive) stops.
    # t5 (6, 2 survive: t3, t0) stops.
    assert decisions == [True, True, False, True, False, False]


def test_a_small_weak_student_survives_against_big_accurate_ones():
    """Stock ASHA would stop it (lowest accuracy); by Pareto rank it is on the rung's front."""
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=8)
    assert rungs.keep_training("big-1", 1, accuracy=0.95, size=50_000)
    assert not rungs.keep_training("big-2", 1, accuracy=0.94, size=60_000)  # dominated by big-1
    assert not rungs.keep_training("big-3", 1, accuracy=0.93, size=70_000)  # dominated twice
    # 4 at the rung, ceil(4/2)=2 survive. The tiny student is non-dominated (smallest by far),
    # so it ranks on the first front with big-1 and continues despite the lowest accuracy.
    assert rungs.keep_training("tiny", 1, accuracy=0.55, size=300)
    # A second small student that the tiny one dominates is not so lucky.
    assert not rungs.keep_training("small-dominated", 1, accuracy=0.50, size=400)


def test_a_big_student_dominated_by_a_smaller_more_accurate_one_is_stopped():
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=8)
    assert rungs.keep_training("small-good", 1, accuracy=0.90, size=1_000)
    assert not rungs.keep_training("big-bad", 1, accuracy=0.85, size=100_000)


def test_front_members_beyond_the_quota_are_cut_by_crowding_then_accuracy():
    """When the first front alone exceeds ceil(n/eta), its extremes go on, the most accurate first."""
    rungs = rung_rule_only(grace_epochs=1, eta=4, max_epochs=16)
    # Four mutually non-dominated trials (accuracy grows with size): all rank 0, quota ceil(4/4)=1.
    assert rungs.keep_training("s1", 1, 0.60, 100)
    assert rungs.keep_training("s2", 1, 0.70, 1_000)
    assert rungs.keep_training("s3", 1, 0.80, 10_000)
    assert rungs.keep_training("s4", 1, 0.90, 100_000)   # an extreme (infinite crowding), most accurate
    assert not rungs.keep_training("s5", 1, 0.65, 500)    # rank 0 too, but inner; quota 2 = s4, s1


def test_an_isolated_small_student_beats_a_near_twin_of_the_most_accurate():
    """By accuracy c would be second; by crowding the lone small student a goes on and c stops."""
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=8)
    assert rungs.keep_training("a", 1, accuracy=0.60, size=100)
    assert rungs.keep_training("b", 1, accuracy=0.90, size=100_000)   # quota 1: both extremes, b more accurate
    assert not rungs.keep_training("c", 1, accuracy=0.85, size=50_000)  # quota 2 = b, a (extremes)
    assert not rungs.keep_training("d", 1, accuracy=0.62, size=120)     # quota 2 = b, a


def test_a_trial_reporting_twice_at_a_rung_is_counted_once():
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=4)
    assert rungs.keep_training("a", 1, 0.9, 100)
    assert rungs.keep_training("a", 1, 0.9, 100)   # the same trial again: still alone at the rung
    assert not rungs.keep_training("b", 1, 0.5, 1000)


# ---------------------------------------------------------------------------------------------
# The front rule: a trial goes on while the full-fidelity front could still move because of it


def test_before_any_trial_finishes_nothing_is_stopped():
    """No front yet: the front rule lets everyone go on, even trials the rung rule would stop."""
    rungs = ParetoRungs(grace_epochs=1, eta=2, max_epochs=4)
    assert rungs.keep_training("a", 1, 0.9, 100)
    assert rungs.keep_training("b", 1, 0.5, 1000)  # dominated at the rung, outside the top 1/2


def test_a_trial_the_front_beat_at_the_same_epoch_is_stopped_unless_the_rung_keeps_it():
    rungs = ParetoRungs(grace_epochs=1, eta=3, max_epochs=9)
    rungs.finished("front", [0.70, 0.80, 0.85, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90], size=1_000)
    # Two at the rung (the front trial's epoch 1 and a), fewer than eta: the rung rule keeps a
    # although the front beat it at epoch 1.
    assert rungs.keep_training("a", 1, 0.60, 2_000)
    # Three: the rung keeps ceil(3/3) = 1, the front trial itself; and the front beat b.
    assert not rungs.keep_training("b", 1, 0.55, 5_000)
    # Smaller than every front trial: the front cannot beat it, whatever its accuracy.
    assert rungs.keep_training("c", 1, 0.10, 500)
    # Larger, but more accurate at epoch 1 than the front trial was at epoch 1.
    assert rungs.keep_training("d", 1, 0.75, 10_000)


def test_the_front_is_compared_at_the_same_epoch_not_at_its_final_accuracy():
    rungs = ParetoRungs(grace_epochs=1, eta=2, max_epochs=4)
    rungs.finished("slow-starter", [0.30, 0.60, 0.85, 0.95], size=1_000)
    for k, accuracy in enumerate([0.50, 0.55, 0.60]):  # stopped peers that beat what follows at the rung
        rungs.finished(f"stopped-{k}", [accuracy], size=100 + 50 * k)
    # Outside the rung's top half, so only the front rule can keep them going. 0.40 at epoch 1
    # is far below the front's final 0.95 but above its 0.30 at epoch 1: it goes on.
    assert rungs.keep_training("x", 1, 0.40, 2_000)
    # Equal to the front trial at the same epoch and size: not dominated, goes on.
    assert rungs.keep_training("twin", 1, 0.30, 1_000)
    # Below the front trial's epoch-1 accuracy and larger: stopped.
    assert not rungs.keep_training("y", 1, 0.25, 2_000)


def test_only_full_length_non_dominated_curves_form_the_front():
    rungs = ParetoRungs(grace_epochs=1, eta=2, max_epochs=4)
    rungs.finished("stopped-early", [0.99, 0.99], size=10)        # never reached the last epoch
    rungs.finished("good", [0.80, 0.85, 0.88, 0.90], size=1_000)
    rungs.finished("beaten", [0.85, 0.86, 0.87, 0.88], size=2_000)  # final 0.88 at 2,000 < 0.90 at 1,000
    # The rung keeps 2 of 4 (stopped-early, then one of good and beaten): only the front can keep these.
    assert rungs.keep_training("under-beaten", 1, 0.84, 3_000)    # the off-front trial's 0.85 does not count
    assert not rungs.keep_training("under-good", 1, 0.79, 3_000)  # "good" had 0.80 at epoch 1


def test_finished_trials_replayed_on_resume_fill_the_rungs():
    """A resumed study seeds the rungs from stored curves: the peers are there, no warm-up again."""
    fresh = ParetoRungs(grace_epochs=1, eta=3, max_epochs=9)
    resumed = ParetoRungs(grace_epochs=1, eta=3, max_epochs=9)
    resumed.finished("stored-0", [0.90, 0.92, 0.93], size=1_000)          # stopped at rung 3
    resumed.finished("stored-1", [0.91, 0.93, 0.95, 0.95, 0.96, 0.96, 0.96, 0.97, 0.97], size=900)
    assert fresh.keep_training("new", 1, 0.50, 5_000)          # alone at a fresh rung: goes on
    assert not resumed.keep_training("new", 1, 0.50, 5_000)    # third at rung 1, dominated, front beat it
    assert resumed.milestones == [1, 3]
    assert not resumed.keep_training("new", 3, 0.50, 5_000)


def test_crowding_within_a_rung_front_is_over_accuracy_and_log_size():
    """Five students on one front, evenly spread in log size; the quota (3 of 5) keeps the two ends and
    the inner one farthest from its neighbours in accuracy: C, whose neighbours sit 0.5 apart."""
    rungs = rung_rule_only(grace_epochs=1, eta=2, max_epochs=4)
    front = {"A": (0.10, 10), "B": (0.20, 100), "D": (0.75, 10_000), "E": (0.80, 100_000)}
    for name, (accuracy, size) in front.items():
        rungs.finished(name, [accuracy], size)
    assert rungs.keep_training("C", 1, 0.60, 1_000)
    # B's neighbours (A, C) sit 0.5 apart in accuracy as well, but D's are only 0.2 apart
    later = rung_rule_only(grace_epochs=1, eta=2, max_epochs=4)
    for name, (accuracy, size) in {**front, "C": (0.60, 1_000)}.items():
        if name != "D":
            later.finished(name, [accuracy], size)
    assert not later.keep_training("D", 1, 0.75, 10_000)


def front_rule_only(grace_epochs: int, eta: int, max_epochs: int) -> ParetoRungs:
    """Rungs whose rung rule says "stop" to every trial, so that the front rule alone decides."""
    rungs = ParetoRungs(grace_epochs, eta, max_epochs)
    rungs._in_top_fraction = lambda trial_id, epoch: False
    return rungs


def test_the_front_rule_is_pareto_dominance_at_the_same_epoch_ties_included():
    rungs = front_rule_only(grace_epochs=1, eta=2, max_epochs=2)
    rungs.finished("front", [0.50, 0.90], size=1_000)
    assert not rungs.keep_training("same-size-less-accurate", 1, 0.40, 1_000)
    assert not rungs.keep_training("larger-as-accurate", 1, 0.50, 2_000)
    assert rungs.keep_training("twin", 1, 0.50, 1_000)  # equal in both: not dominated
    assert rungs.keep_training("smaller-less-accurate", 1, 0.10, 999)
    assert rungs.keep_training("larger-more-accurate", 1, 0.51, 5_000)


def test_the_front_is_chosen_by_final_accuracy():
    """"late" ends above "early" at the same size, so it alone is the front, though "early" led at epoch 1."""
    rungs = front_rule_only(grace_epochs=1, eta=2, max_epochs=2)
    rungs.finished("early", [0.90, 0.50], size=1_000)
    rungs.finished("late", [0.30, 0.80], size=1_000)
    assert rungs.keep_training("x", 1, 0.50, 2_000)  # "early" (0.90 at epoch 1) would have beaten it
    assert not rungs.keep_training("y", 1, 0.20, 2_000)  # "late" had 0.30 at epoch 1


# ---------------------------------------------------------------------------------------------
# A real search with Pareto early stopping


@pytest.mark.slow
def test_search_with_pareto_stopping_prunes_trials_and_keeps_them_off_the_front(tmp_path, ray_head):
    from autokd.results import front_frame, trials_frame

    epochs = 8
    study_file = tiny_study(tmp_path, cached_teachers=True, name="stop", trials=10, epochs=epochs,
                            early_stopping={"kind": "pareto", "grace_epochs": 1, "eta": 2})
    run_cli("search", study_file, "--no-report", "--no-progress", env=ray_head, check=True, timeout=600)

    study = optuna.load_study(study_name="stop", storage=f"sqlite:///{tmp_path / 'stop.db'}")
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (States.RUNNING, States.FAIL)]
    stopped = [t for t in trials if t.state == States.PRUNED]
    complete = [t for t in trials if t.state == States.COMPLETE]
    assert stopped, "Pareto stopping (grace 1, eta 2) stopped no trial of 10"
    assert complete, "every trial was stopped: none reached the last epoch"
    milestones = ParetoRungs(1, 2, epochs).milestones
    for trial in stopped:
        reason = trial.user_attrs["pruned_reason"]
        assert reason.startswith("early-stopped at epoch "), reason
        epoch = int(reason.split()[3])
        assert epoch in milestones and reason.endswith(f"of {epochs}"), reason
        assert trial.user_attrs["epochs_trained"] == epoch < epochs
        assert len(trial.user_attrs["val_accuracy_curve"]) == epoch  # the rung's result included
        assert trial.values is None
    for trial in complete:
        assert trial.user_attrs["epochs_trained"] == epochs

    frame = trials_frame(study)
    front = front_frame(frame)
    pruned_numbers = {t.number for t in stopped}
    assert len(front) > 0
    assert set(front["state"]) == {"COMPLETE"}
    assert not pruned_numbers & set(front["trial"])
    assert frame.loc[frame["state"] == "PRUNED", "pareto_rank"].isna().all()

    report = pytest.importorskip("autokd.report")
    if hasattr(report, "build_report"):
        folder = report.build_report(study_file, out=tmp_path / "report", baselines=False, evaluate_test=False,
                                     log=lambda message: None)
        pareto = pd.read_csv(folder / "pareto.csv")
        assert len(pareto) == len(front)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["epochs_trained"] == sum(t.user_attrs["epochs_trained"] for t in trials if t.state.is_finished())
        assert summary["trials"]["stopped"] == len(stopped)
        assert not pruned_numbers & set(pareto["trial"])
        assert set(pareto["state"]) == {"COMPLETE"}


def test_the_scheduler_of_a_resumed_study_starts_from_its_stored_trials(tmp_path):
    """Rung results and the front come back from the stored curves, not from an empty memory."""
    from autokd.config_files import load_study
    from autokd.scheduler import make_scheduler

    spec = load_study(tiny_study(tmp_path, epochs=4, early_stopping={"kind": "pareto", "grace_epochs": 1,
                                                                      "eta": 2}))
    study = optuna.create_study(directions=["maximize", "minimize"])
    distributions = {"x": optuna.distributions.FloatDistribution(0, 1)}
    stored = [(States.COMPLETE, [0.70, 0.80, 0.85, 0.90], 1_000),
              (States.PRUNED, [0.75], 500),
              (States.FAIL, [0.99, 0.99], 10)]                # failed: never a peer, never on the front
    for state, curve, params in stored:
        study.add_trial(optuna.trial.create_trial(
            state=state, values=[curve[-1], params] if state == States.COMPLETE else None,
            params={"x": 0.5}, distributions=distributions,
            user_attrs={"val_accuracy_curve": curve, "params": params, "epochs_trained": len(curve)}))
    rungs = make_scheduler(spec, study).rungs
    assert rungs.milestones == [1, 2]
    assert sorted(rungs._recorded[1].values()) == [(0.70, 1_000), (0.75, 500)]
    assert list(rungs._recorded[2].values()) == [(0.80, 1_000)]
    # Third at rung 1, dominated by the stopped peer, beaten by the stored front trial: stopped.
    assert not rungs.keep_training("new", 1, 0.60, 2_000)
