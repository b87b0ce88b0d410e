"""The two-level search: architectures first, then paired distillation per front architecture."""

from __future__ import annotations

import json

import optuna
import pytest

from autokd.config_files import load_study
from autokd.levels import (ARCHITECTURE, ARCHITECTURES_ATTR, FINISHED, WAIT, TwoLevelPlan, choose_architectures,
                           confirm_seeds, gain_guided_distillation, is_two_level, paired_seeds)
from autokd.pairing import CE, CONFIRM, CONFIRM_CE, TUNED, VANILLA_KD, Choice
from autokd.space import load_space
from conftest import TINY_SPACE, tiny_study

States = optuna.trial.TrialState


def _frozen(number: int, accuracy: float, params: int, state=States.COMPLETE) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(state=state, values=[accuracy, params] if state == States.COMPLETE else None)
    trial.number = number
    return trial


def test_architectures_are_the_level1_front_spread_over_log_size():
    # front (accuracy up, size down): 0 (10 params), 1 (100), 3 (1,000), 4 (10,000), 5 (100,000); 2 is dominated
    level1 = [_frozen(0, 0.50, 10), _frozen(1, 0.70, 100), _frozen(2, 0.60, 500), _frozen(3, 0.80, 1_000),
              _frozen(4, 0.85, 10_000), _frozen(5, 0.90, 100_000), _frozen(6, 0.0, 1, state=States.FAIL)]
    assert choose_architectures(level1, ["val_accuracy", "params"], 10) == [0, 1, 3, 4, 5]
    # three of five: the ends and the middle of 1..5 decades
    assert choose_architectures(level1, ["val_accuracy", "params"], 3) == [0, 3, 5]
    assert choose_architectures([], ["val_accuracy", "params"], 3) == []
    # A degenerate tiny student (below half the best accuracy) stays on the front but is not tuned.
    degenerate = [_frozen(7, 0.18, 3), *level1]
    assert choose_architectures(degenerate, ["val_accuracy", "params"], 10) == [0, 1, 3, 4, 5]


def _level2(number: int, arch: int, role: str, seeds: list[float], params: dict | None = None,
            state=States.COMPLETE) -> optuna.trial.FrozenTrial:
    distributions = {"distill.temperature": optuna.distributions.FloatDistribution(1.0, 8.0, log=True),
                     "distill.kind": optuna.distributions.CategoricalDistribution(["kl", "mse", "dkd"])}
    trial = optuna.trial.create_trial(
        state=state, values=[sum(seeds) / len(seeds), 100.0] if state == States.COMPLETE else None,
        params=params or {}, distributions={k: distributions[k] for k in params or {}},
        user_attrs={"level": 2, "arch": arch, "role": role, "val_accuracy_seeds": seeds})
    trial.number = number
    return trial


def test_tuned_distillation_follows_the_paired_gain_over_ce_of_every_architecture(tmp_path):
    space = load_space(load_study(tiny_study(tmp_path)))
    # Two architectures of very different accuracy; at both, low temperatures gain over CE-only, high ones lose.
    # The large one was tried at high temperatures only: ranked by accuracy (what the study's own sampler
    # sees), its losing configs would beat the small one's gaining ones and pull the proposals up.
    level2 = [_level2(0, 100, CE, [0.70, 0.71]), _level2(1, 200, CE, [0.90, 0.91]),
              _level2(2, 100, VANILLA_KD, [0.60, 0.61])]
    rng = __import__("random").Random(0)
    for number in range(3, 33):
        arch, ce = (100, 0.70) if number % 2 else (200, 0.90)
        temperature = 8.0 ** rng.random() if arch == 100 else 3.0 + 5.0 * rng.random()
        gain = 0.01 if temperature < 2.0 else -0.01 * temperature
        level2.append(_level2(number, arch, TUNED, [ce + gain, ce + 0.01 + gain],
                              {"distill.temperature": temperature, "distill.kind": "kl"}))
    # Not evidence: no baseline for architecture 300, a failed trial, a vanilla KD trial (no distill params).
    level2 += [_level2(40, 300, TUNED, [0.99, 0.99], {"distill.temperature": 7.9, "distill.kind": "kl"}),
               _level2(41, 100, TUNED, [0.0, 0.0], {"distill.temperature": 7.5, "distill.kind": "kl"},
                       state=States.FAIL)]
    proposals = [gain_guided_distillation(space, level2, seed) for seed in range(20)]
    assert all(p.keys() >= {"distill.temperature", "distill.kind", "distill.w_ce", "distill.w_kd"} for p in proposals)
    assert all(not k.startswith(("student.", "schedule.")) for p in proposals for k in p)
    low = sum(p["distill.temperature"] < 2.0 for p in proposals)
    assert low >= 15, [round(p["distill.temperature"], 2) for p in proposals]  # a random draw: 1/3 of them
    # With no evidence yet (baselines only) the proposals are random draws over the whole range.
    first = [gain_guided_distillation(space, level2[:3], seed)["distill.temperature"] for seed in range(20)]
    assert 3 <= sum(t < 2.0 for t in first) <= 12


ARCH_DISTRIBUTIONS = {"student.family": optuna.distributions.CategoricalDistribution(["mlp", "cnn"]),
                      "student.width": optuna.distributions.IntDistribution(4, 64, log=True)}
TEMPERATURE = {"distill.temperature": optuna.distributions.FloatDistribution(1.0, 8.0, log=True)}


def _add(study: optuna.Study, attrs: dict, params: dict, seeds: list[float] | None = None, state=States.COMPLETE):
    values = [sum(seeds) / len(seeds) if seeds else 0.8, 100.0] if state == States.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(
        state=state, values=values, params=params,
        distributions={k: {**ARCH_DISTRIBUTIONS, **TEMPERATURE}[k] for k in params},
        user_attrs={**attrs, **({"val_accuracy_seeds": seeds} if seeds else {})}))
    return study.get_trials(deepcopy=False)[-1]


def _level2_done(study: optuna.Study, tuned_seeds: dict[int, list[float]]) -> dict[int, optuna.trial.FrozenTrial]:
    """Level 1 (two architectures), both chosen, their baselines and one tuned config each; {arch: tuned}."""
    tuned = {}
    for width in (8, 32):
        arch = _add(study, {"level": 1, "role": ARCHITECTURE}, {"student.family": "mlp", "student.width": width})
        level2 = {"level": 2, "arch": arch.number, "teachers_allowed": ["t-cnn"]}
        fixed = {"student.family": "mlp", "student.width": width}
        _add(study, {**level2, "role": CE}, fixed, [0.80, 0.82])
        _add(study, {**level2, "role": VANILLA_KD}, fixed, [0.70, 0.72])
        tuned[arch.number] = _add(study, {**level2, "role": TUNED}, {**fixed, "distill.temperature": 1.5},
                                  tuned_seeds[width])
    study.set_user_attr(ARCHITECTURES_ATTR, sorted(tuned))
    return tuned


def test_the_last_trials_confirm_each_distilled_choice_and_ce_only_on_fresh_seeds(tmp_path):
    from autokd.results import architecture_choices

    spec = load_study(tiny_study(tmp_path, trials=12, search={"mode": "two_level", "seeds": 2}))
    plan = TwoLevelPlan(spec, load_space(spec), spec.train_config(), (8, 8), 10)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("search_mode", "two_level")
    # Width 8: +2 pt on both seeds (a clear gain); width 32: no gain, CE-only keeps its place.
    tuned = _level2_done(study, {8: [0.82, 0.84], 32: [0.80, 0.82]})
    small, large = sorted(tuned)
    assert len(study.trials) == 8  # 12 - 2 x 2 kept for the confirmations: no more tuning
    proposal = plan.next_proposal(study)
    assert proposal.attrs == {"level": 2, "role": CONFIRM, "arch": small, "seeds": confirm_seeds(spec),
                              "teachers_allowed": ["t-cnn"], "confirms": tuned[small].number,
                              "confirms_role": TUNED}
    assert proposal.params == tuned[small].params  # the very config, on seeds that chose nothing
    assert not set(confirm_seeds(spec)) & set(paired_seeds(spec))
    _add(study, proposal.attrs, proposal.params, state=States.RUNNING)
    proposal = plan.next_proposal(study)
    assert (proposal.attrs["role"], proposal.attrs["confirms"], "confirms_role" in proposal.attrs) == \
        (CONFIRM_CE, tuned[small].number, False)
    assert proposal.params == {"student.family": "mlp", "student.width": 8}
    _add(study, proposal.attrs, proposal.params, state=States.RUNNING)
    assert plan.next_proposal(study) == FINISHED  # the large architecture's choice is CE-only: nothing
    waiting = optuna.create_study(directions=["maximize", "minimize"])
    tuned = _level2_done(waiting, {8: [0.82, 0.84], 32: [0.80, 0.82]})
    _add(waiting, {"level": 2, "arch": small, "role": TUNED}, {"student.family": "mlp"}, state=States.RUNNING)
    assert plan.next_proposal(waiting) == WAIT  # the choice may change until every tuned config is done

    for fresh_confirm, fresh_ce, kept in (([0.851, 0.862], [0.85, 0.86], True), ([0.85, 0.86], [0.85, 0.86], False)):
        finished = optuna.create_study(directions=["maximize", "minimize"])
        finished.set_user_attr("search_mode", "two_level")
        tuned = _level2_done(finished, {8: [0.82, 0.84], 32: [0.80, 0.82]})
        confirming = {"level": 2, "arch": small, "seeds": confirm_seeds(spec), "confirms": tuned[small].number}
        _add(finished, {**confirming, "role": CONFIRM, "confirms_role": TUNED}, tuned[small].params, fresh_confirm)
        _add(finished, {**confirming, "role": CONFIRM_CE}, {"student.family": "mlp", "student.width": 8}, fresh_ce)
        assert plan.next_proposal(finished) == FINISHED
        choices = architecture_choices(finished)
        assert choices[large].role == CE
        if kept:
            gain = pytest.approx(0.0015)  # +0.001, +0.002
            assert (choices[small].trial, choices[small].gain_vs_ce) == (tuned[small].number, gain)
            assert choices[small].reason.endswith("(confirmed on 2 fresh seeds)")
        else:
            assert choices[small].role == CE and choices[small].reason.startswith("distillation did not hold")


def test_without_confirmation_the_tuning_goes_on_to_the_last_trial(tmp_path):
    spec = load_study(tiny_study(tmp_path, trials=12, search={"mode": "two_level", "seeds": 2, "confirm": False}))
    plan = TwoLevelPlan(spec, load_space(spec), spec.train_config(), (8, 8), 10)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("search_mode", "two_level")
    _level2_done(study, {8: [0.82, 0.84], 32: [0.80, 0.82]})
    assert plan.next_proposal(study).attrs["role"] == TUNED


def test_two_levels_are_the_default_when_the_space_varies_student_and_distillation(tmp_path):
    spec = load_study(tiny_study(tmp_path, search={"mode": "auto"}))
    assert is_two_level(spec, load_space(spec))
    students_only = {"params": {k: v for k, v in TINY_SPACE["params"].items() if k.startswith("student.")}}
    spec = load_study(tiny_study(tmp_path, name="arch", search={"mode": "auto"}, search_space=students_only))
    assert not is_two_level(spec, load_space(spec))
    spec = load_study(tiny_study(tmp_path, name="flat", search={"mode": "flat"}))
    assert not is_two_level(spec, load_space(spec))


@pytest.mark.slow
def test_a_two_level_search_stores_its_baselines_as_trials_resumes_without_retraining_and_confirms(tmp_path,
                                                                                                  monkeypatch):
    from autokd.results import architecture_choices, front_frame, trials_frame
    from autokd.search import search

    settings = {"mode": "two_level", "level1_share": 0.4, "architectures": 2, "seeds": 2, "level2_epochs": 3,
                "confirm": False}
    spec = load_study(tiny_study(tmp_path, trials=10, epochs=2, search=settings))
    result = search(spec, progress=False, log=lambda message: None)
    trials = result.study.get_trials()
    assert len(trials) == 10 and all(t.state == States.COMPLETE for t in trials), [t.state for t in trials]
    level1 = [t for t in trials if t.user_attrs["level"] == 1]
    level2 = [t for t in trials if t.user_attrs["level"] == 2]
    assert len(level1) == 4 and {t.user_attrs["role"] for t in level1} == {ARCHITECTURE}
    # Level 1 trains cross-entropy only and samples no distillation parameter.
    assert all(not any(name.startswith("distill.") for name in t.params) for t in level1)
    assert all(t.user_attrs["config"]["distill"]["w_kd"] == 0 for t in level1)
    chosen = result.study.user_attrs[ARCHITECTURES_ATTR]
    assert len(chosen) == 2 and set(chosen) <= {t.number for t in level1}
    by_number = {t.number: t for t in trials}
    for arch in chosen:
        roles = [t.user_attrs["role"] for t in level2 if t.user_attrs["arch"] == arch]
        assert (roles.count(CE), roles.count(VANILLA_KD), roles.count(TUNED)) == (1, 1, 1), roles
        for trial in (t for t in level2 if t.user_attrs["arch"] == arch):
            # Same architecture and schedule as the level-1 trial (level2_epochs long), same paired seeds,
            # per-seed values stored.
            assert trial.user_attrs["config"]["student"] == by_number[arch].user_attrs["config"]["student"]
            assert trial.user_attrs["config"]["schedule"] == {**by_number[arch].user_attrs["config"]["schedule"],
                                                              "epochs": 3}
            assert trial.user_attrs["epochs_trained"] == 2 * 3
            assert trial.user_attrs["seeds"] == paired_seeds(spec)
            assert len(trial.user_attrs["val_accuracy_seeds"]) == 2
            assert trial.values[0] == pytest.approx(sum(trial.user_attrs["val_accuracy_seeds"]) / 2)
    distill = {t.user_attrs["role"]: t.user_attrs["config"]["distill"] for t in level2}
    assert distill[CE]["w_kd"] == 0 and distill[CE]["w_feat"] == 0
    assert (distill[VANILLA_KD]["temperature"], distill[VANILLA_KD]["w_kd"], distill[VANILLA_KD]["w_ce"]) == \
        (4.0, 0.9, 0.1)

    # The front: one place per tuned architecture, never a distilled config below its baselines.
    frame = trials_frame(result.study)
    front = front_frame(frame)
    choices = architecture_choices(result.study)
    assert set(front["trial"]) <= {c.trial for c in choices.values()}
    for arch, choice in choices.items():
        peers = frame[(frame["arch"] == arch) & frame["role"].isin([CE, VANILLA_KD])]
        if choice.role != CE:
            assert choice.mean >= peers["val_accuracy"].max() - 1e-12
        assert frame.loc[frame["trial"] == choice.trial, "front_reason"].item() == choice.reason

    # Resume with two more trials: level 2 goes on, nothing is trained twice, level 1 is not re-opened.
    spec.budget.trials = 12  # 40 % of 12 would be 5 level-1 trials: level 1 stays closed all the same
    resumed = search(spec, resume=True, progress=False, log=lambda message: None)
    after = resumed.study.get_trials()
    assert len(after) == 12 and resumed.study.user_attrs[ARCHITECTURES_ATTR] == chosen
    assert {t.number: t.values for t in after if t.number < 10} == {t.number: t.values for t in trials}
    assert [t.user_attrs["role"] for t in after[10:]] == [TUNED, TUNED]
    signatures = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in after]
    assert len(set(signatures)) == len(signatures), "a config was trained twice"

    # Confirmation turned on with 4 more trials: the budget is spent, so each distilled choice and its
    # CE-only are retrained on fresh seeds at once (an architecture whose choice is CE-only needs none).
    # Tuned configs of this tiny study rarely beat CE-only (2 seeds, 3 epochs): each architecture's first
    # tuned config is made its choice, so that there is something to confirm (`choose` is tested by hand).
    def first_tuned(candidates, margin_se):
        tuned = next(c for c in candidates if c.role == TUNED)
        return Choice(tuned.trial, TUNED, sum(tuned.accuracies) / len(tuned.accuracies), 0.01, 0.0, "chosen")

    monkeypatch.setattr("autokd.results.choose", first_tuned)
    spec.budget.trials, spec.search.confirm = 16, True
    before = architecture_choices(resumed.study)
    confirmed = search(spec, resume=True, accept_changes=True, progress=False, log=lambda message: None)
    final = confirmed.study.get_trials()
    distilled = {arch: choice for arch, choice in before.items() if choice.role != CE}
    assert distilled, "no distilled choice to confirm: the test exercises nothing"
    assert len(final) == 12 + 2 * len(distilled) and all(t.state == States.COMPLETE for t in final)
    for arch, choice in distilled.items():
        pair = {t.user_attrs["role"]: t for t in final[12:] if t.user_attrs["confirms"] == choice.trial}
        assert set(pair) == {CONFIRM, CONFIRM_CE} and all(t.user_attrs["arch"] == arch for t in pair.values())
        assert all(t.user_attrs["seeds"] == confirm_seeds(spec) for t in pair.values())
        chosen_trial = next(t for t in after if t.number == choice.trial)
        same = {k: v for k, v in chosen_trial.user_attrs["config"].items() if k != "seed"}
        assert {k: v for k, v in pair[CONFIRM].user_attrs["config"].items() if k != "seed"} == same
        assert pair[CONFIRM_CE].user_attrs["config"]["distill"]["w_kd"] == 0
        gain = sum(pair[CONFIRM].user_attrs["val_accuracy_seeds"]) - sum(pair[CONFIRM_CE].user_attrs[
            "val_accuracy_seeds"])
        assert architecture_choices(confirmed.study)[arch].role == (choice.role if gain > 0 else CE)


def test_level2_trials_train_level2_epochs_and_level1_keeps_the_architectures(tmp_path):
    from autokd.levels import trial_config

    varied_epochs = {"params": {**TINY_SPACE["params"], "schedule.epochs": {"type": "int", "low": 1, "high": 3}}}
    spec = load_study(tiny_study(tmp_path, epochs=2, search={"mode": "two_level", "level2_epochs": 7},
                                 search_space=varied_epochs))
    space, base = load_space(spec), spec.train_config()
    architecture = {"student.width": 12, "schedule.epochs": 3}
    level1 = trial_config(space, base, {"level": 1, "role": ARCHITECTURE}, architecture, 7)
    assert (level1.schedule.epochs, level1.student["width"], level1.distill.w_kd) == (3, 12, 0.0)
    for role in (CE, VANILLA_KD, TUNED):  # even when the architecture fixed its own epochs
        config = trial_config(space, base, {"level": 2, "role": role, "teachers_allowed": ["t-mlp"]}, architecture, 7)
        assert (config.schedule.epochs, config.student["width"]) == (7, 12), role
    assert trial_config(space, base, {"level": 2, "role": CE}, architecture, None).schedule.epochs == 3
    assert trial_config(space, base, {}, {"student.width": 12}, 7).schedule.epochs == 2  # a flat trial
    for bad in (0, -1, 2.5, "many"):
        with pytest.raises(Exception, match="level2_epochs"):
            load_study(tiny_study(tmp_path, name="bad", search={"mode": "two_level", "level2_epochs": bad}))
