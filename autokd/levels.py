"""The two-level search plan: which trial comes next.

    level 1  architectures (student shape and schedule), trained with cross-entropy only,
             proposals spread over log size -> the architecture front
    level 2  per front architecture (at most `search.architectures`, spread over log size):
               CE-only and vanilla KD as ordinary trials, then tuned distillation configs with
               the architecture fixed (enqueued), all on the same `search.seeds` seeds -> paired
               gains (`pairing.choose`). With the TPE sampler, a tuned config's distillation is
               proposed by a TPE fitted to the paired gains over CE-only of the tuned configs so
               far, every architecture's together (`gain_guided_distillation`): the study's own
               sampler would rank them by (accuracy, size), which the architecture decides, not
               the distillation
    confirm  (`search.confirm`) the last trials: each architecture's distilled choice and its
             CE-only retrained on fresh seeds, once the tuned configs are done; their paired gain
             is unbiased (fresh seeds chose nothing) and decides and labels the front point
             (`pairing.confirm`). Two trials per architecture are kept for them from the start

The plan is read from the storage every time (`next_proposal(study)`), so a resumed study
continues where it stopped: its trials say which level, role and architecture they are.
Everything here runs in the driver; nothing trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from autokd.pairing import CE, CONFIRM, CONFIRM_CE, TUNED, VANILLA_KD
from autokd.pareto import pareto_front_mask, useful_mask
from autokd.results import INTERRUPTED, architecture_choices
from autokd.sizes import arch_size
from autokd.space import SUBSET_SEPARATOR, SearchSpace, TeacherSubsetParam
from autokd.spec import StudySpec, TrainConfig, derived_seed

ARCHITECTURE = "architecture"  # the role of a level-1 trial
ARCH_SECTIONS = ("student", "schedule")
ALL_SECTIONS = ("student", "schedule", "distill")
ARCHITECTURES_ATTR = "level2.architectures"  # study attr: the level-1 trial numbers chosen for level 2
STRATIFY_CANDIDATES = 48
# Paired seeds sit far from the level-1 trials' seeds (base seed + trial number).
PAIRED_SEED_STRIDE = 100_003
CONFIRM_SEED_STRIDE = 200_009  # and the confirmation's from both
CE_ONLY = {"w_ce": 1.0, "w_kd": 0.0, "w_feat": 0.0, "w_at": 0.0}
VANILLA = {"kind": "kl", "temperature": 4.0, "w_kd": 0.9, "w_ce": 0.1, "w_feat": 0.0, "w_at": 0.0,
           "aggregation": "mean_logits"}


@dataclass
class Proposal:
    """What to ask next: the trial's attrs (level, role, ...) and fixed `params` to enqueue
    (None: the sampler proposes every parameter its role samples, see `sampled_sections`)."""

    attrs: dict[str, Any]
    params: dict[str, Any] | None = None


def sampled_sections(role: str | None) -> tuple[str, ...]:
    """Architectures and baselines sample no distillation parameter; tuned (and flat) trials all.
    `role` is the one whose config the trial trains (`config_role`)."""
    return ARCH_SECTIONS if role in (ARCHITECTURE, CE, VANILLA_KD) else ALL_SECTIONS


def config_role(attrs: dict[str, Any]) -> str | None:
    """The role whose distillation a trial trains: a confirmation trains what it confirms, or CE-only."""
    role = attrs.get("role")
    if role == CONFIRM_CE:
        return CE
    return attrs.get("confirms_role") if role == CONFIRM else role


WAIT = "wait"  # level 1 still running: level 2 cannot be planned yet
FINISHED = "finished"


def is_two_level(spec: StudySpec, space: SearchSpace) -> bool:
    if spec.search.mode != "auto":
        return spec.search.mode == "two_level"
    return space.varies("student") and space.varies("distill")


def paired_seeds(spec: StudySpec) -> list[int]:
    return [derived_seed(spec.seed, PAIRED_SEED_STRIDE * (k + 1)) for k in range(spec.search.seeds)]


def confirm_seeds(spec: StudySpec) -> list[int]:
    return [derived_seed(spec.seed, CONFIRM_SEED_STRIDE * (k + 1)) for k in range(spec.search.seeds)]


def level1_trials(spec: StudySpec) -> int:
    return max(1, math.ceil(spec.search.level1_share * spec.budget.trials))


def role_config(role: str, base: TrainConfig, teachers: list[str] | None) -> TrainConfig:
    """The study's defaults with the distillation a role trains with (tuned: the defaults, then sampled)."""
    document = base.model_dump()
    if role in (ARCHITECTURE, CE):
        document["distill"] = {**document["distill"], **CE_ONLY}
    elif role == VANILLA_KD:
        document["distill"] = {**document["distill"], **VANILLA, "teachers": teachers}
    return TrainConfig.model_validate(document)


def trial_config(space: SearchSpace, base: TrainConfig, attrs: dict[str, Any], params: dict[str, Any],
                 level2_epochs: int | None = None) -> TrainConfig:
    """A trial's config: the study's defaults with its role's distillation (a flat trial has no role),
    then its params; a level-2 trial trains `level2_epochs` epochs when set, whatever its architecture's."""
    role = config_role(attrs)
    config = space.apply(base if role is None else role_config(role, base, attrs.get("teachers_allowed")), params)
    if attrs.get("level") == 2 and level2_epochs is not None:
        config.schedule.epochs = level2_epochs
    return config


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Does this trial take its place in the plan? Interrupted ones are replaced by their re-queued copy,
    infeasible proposals by the next one."""
    if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("failure_reason") == INTERRUPTED:
        return False
    return not (trial.state == optuna.trial.TrialState.PRUNED
                and str(trial.user_attrs.get("pruned_reason", "")).startswith("infeasible"))


@dataclass
class TwoLevelPlan:
    spec: StudySpec
    space: SearchSpace
    base: TrainConfig
    input_shape: tuple[int, ...]
    num_classes: int
    teacher_accuracy: dict[str, float] = field(default_factory=dict)  # val accuracy per teacher

    def next_proposal(self, study: optuna.Study) -> Proposal | str:
        trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
        level1 = [t for t in trials if t.user_attrs.get("level") == 1]
        level1_open = ARCHITECTURES_ATTR not in study.user_attrs  # closed once level 2 has its architectures
        if level1_open and len(level1) < level1_trials(self.spec):
            return self._level1_proposal(level1, len(level1))
        if any(not t.state.is_finished() for t in level1):
            return WAIT
        chosen = self.architectures(study, level1)
        if not chosen:
            return FINISHED
        by_number = {t.number: t for t in level1}
        level2 = [t for t in trials if t.user_attrs.get("level") == 2]
        able = self.able_teachers(level1)
        for number in chosen:  # baselines first: every tuned config is compared with them
            for role in (CE, VANILLA_KD) if self.spec.teachers else (CE,):
                if not any(t.user_attrs.get("arch") == number and t.user_attrs.get("role") == role for t in level2):
                    return self._level2_proposal(by_number[number], role, able)
        if len(trials) >= self.spec.budget.trials - self._confirmation_trials(len(chosen)):
            return self._confirmation(study, level2, by_number, chosen)
        tuned = {number: sum(1 for t in level2 if t.user_attrs.get("arch") == number
                             and t.user_attrs.get("role") == TUNED) for number in chosen}
        number = min(chosen, key=lambda n: (tuned[n], chosen.index(n)))
        proposal = self._level2_proposal(by_number[number], TUNED, able)
        if self.spec.sampler.name == "tpe":
            sampled = gain_guided_distillation(self.space, level2, derived_seed(self.spec.sampler.seed, len(level2)))
            proposal.params = {**sampled, **proposal.params}  # the architecture and the able teachers stay fixed
        return proposal

    # -- level 1 ----------------------------------------------------------------------------

    def _level1_proposal(self, level1: list[optuna.trial.FrozenTrial], count: int) -> Proposal:
        """Even proposals fill the widest gap in log size; odd ones are the sampler's (it learns the front)."""
        attrs = {"level": 1, "role": ARCHITECTURE}
        if count % 2 == 1:
            return Proposal(attrs)
        return Proposal(attrs, self._spread_student(level1, count))

    def _spread_student(self, level1: list[optuna.trial.FrozenTrial], count: int) -> dict[str, Any] | None:
        metric = self.spec.objectives[1]
        tried = np.log10([max(float(t.user_attrs[metric]), 1.0) for t in level1 if metric in t.user_attrs])
        limits = self.spec.size_limits()
        seed = derived_seed(self.spec.sampler.seed * 7919, count)
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        best, best_distance = None, -1.0
        for _ in range(STRATIFY_CANDIDATES):
            candidate = draws.ask()
            self.space.suggest(candidate, ("student",))
            params = dict(candidate.params)
            try:
                size = arch_size(self.space.apply(self.base, params).student, self.input_shape,
                                 self.num_classes).as_dict()
            except Exception:  # an invalid shape: the searcher records such configs; here just skip it
                continue
            if any(size[m] > limit for m, limit in limits.items()):
                continue
            log_size = math.log10(max(size[metric], 1))
            # The first proposal is the smallest student; then the farthest from every tried size.
            distance = -log_size if len(tried) == 0 else float(np.min(np.abs(tried - log_size)))
            if distance > best_distance:
                best, best_distance = params, distance
        return best

    # -- level 2 ----------------------------------------------------------------------------

    def architectures(self, study: optuna.Study, level1: list[optuna.trial.FrozenTrial]) -> list[int]:
        """The level-1 trials whose architectures level 2 tunes; chosen once and stored in the study."""
        stored = study.user_attrs.get(ARCHITECTURES_ATTR)
        if stored is not None:
            return list(stored)
        chosen = choose_architectures(level1, self.spec.objectives, self._level2_architecture_count())
        study.set_user_attr(ARCHITECTURES_ATTR, chosen)
        return chosen

    def _level2_architecture_count(self) -> int:
        # baselines plus at least one tuned config, and its confirmation
        per_architecture = (3 if self.spec.teachers else 2) + self._confirmation_trials(1)
        room = self.spec.budget.trials - level1_trials(self.spec)
        return max(1, min(self.spec.search.architectures, room // per_architecture))

    def able_teachers(self, level1: list[optuna.trial.FrozenTrial]) -> list[str]:
        """Teachers at least as accurate (val) as the best CE-only student of level 1 (all when none is)."""
        names = [t.name for t in self.spec.teachers]
        if self.spec.search.weak_teachers == "keep" or not self.teacher_accuracy:
            return names
        best_student = max((t.values[0] for t in level1 if t.state == optuna.trial.TrialState.COMPLETE),
                           default=0.0)
        able = [name for name in names if self.teacher_accuracy.get(name, 1.0) >= best_student]
        return able or names

    def _level2_proposal(self, architecture: optuna.trial.FrozenTrial, role: str, able: list[str]) -> Proposal:
        fixed = architecture_params(architecture)
        attrs = {"level": 2, "role": role, "arch": architecture.number, "seeds": paired_seeds(self.spec),
                 "teachers_allowed": able}
        if role != TUNED:
            return Proposal(attrs, fixed)
        subset = self.space.params.get("distill.teachers")
        if isinstance(subset, TeacherSubsetParam) and len(able) < len(self.spec.teachers):
            joined = SUBSET_SEPARATOR.join(able)
            if joined in self.space.subsets(subset):
                fixed["distill.teachers"] = joined
        return Proposal(attrs, fixed)

    # -- confirmation --------------------------------------------------------------------------

    def _confirmation_trials(self, architectures: int) -> int:
        return 2 * architectures if self.spec.search.confirm and self.spec.teachers else 0

    def _confirmation(self, study: optuna.Study, level2: list[optuna.trial.FrozenTrial],
                      by_number: dict[int, optuna.trial.FrozenTrial], chosen: list[int]) -> Proposal | str:
        """Each architecture's distilled choice, then its CE-only, on fresh seeds; once every other level-2
        trial is done (the choice is final). An architecture whose choice is CE-only needs none."""
        if any(not t.state.is_finished() for t in level2 if t.user_attrs.get("role") not in (CONFIRM, CONFIRM_CE)):
            return WAIT
        choices = architecture_choices(study)
        asked = {(t.user_attrs.get("confirms"), t.user_attrs.get("role")) for t in level2}
        level2_by_number = {t.number: t for t in level2}
        for number in chosen:
            choice = choices.get(number)
            if choice is None or choice.role == CE:
                continue
            for role in (CONFIRM, CONFIRM_CE):
                if (choice.trial, role) not in asked:
                    return self._confirm_proposal(by_number[number], level2_by_number[choice.trial], role)
        return FINISHED

    def _confirm_proposal(self, architecture: optuna.trial.FrozenTrial, confirmed: optuna.trial.FrozenTrial,
                          role: str) -> Proposal:
        attrs = {"level": 2, "role": role, "arch": architecture.number, "seeds": confirm_seeds(self.spec),
                 "teachers_allowed": confirmed.user_attrs.get("teachers_allowed"), "confirms": confirmed.number}
        if role == CONFIRM_CE:
            return Proposal(attrs, architecture_params(architecture))
        return Proposal({**attrs, "confirms_role": confirmed.user_attrs["role"]}, dict(confirmed.params))


def architecture_params(architecture: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A level-1 trial's student and schedule params: what a level-2 trial of its architecture fixes."""
    return {name: value for name, value in architecture.params.items() if name.partition(".")[0] in ARCH_SECTIONS}


def gain_guided_distillation(space: SearchSpace, level2: list[optuna.trial.FrozenTrial], seed: int) -> dict[str, Any]:
    """The distillation parameters of the next tuned config: a single-objective TPE (random for its
    first 10) over the finished tuned configs of every architecture, each scored by its paired mean
    gain over its architecture's CE-only baseline on the shared seeds. Gains, unlike accuracies, are
    comparable across architectures, so what one architecture learns guides the others."""
    complete = optuna.trial.TrialState.COMPLETE
    baseline = {t.user_attrs.get("arch"): t.user_attrs["val_accuracy_seeds"] for t in level2
                if t.user_attrs.get("role") == CE and t.state == complete and t.user_attrs.get("val_accuracy_seeds")}
    history = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for trial in level2:
        ce_seeds, seeds = baseline.get(trial.user_attrs.get("arch")), trial.user_attrs.get("val_accuracy_seeds")
        if trial.user_attrs.get("role") != TUNED or trial.state != complete or not ce_seeds or not seeds \
                or len(seeds) != len(ce_seeds):
            continue
        distributions = {name: d for name, d in trial.distributions.items() if name.startswith("distill.")}
        history.add_trial(optuna.trial.create_trial(
            params={name: trial.params[name] for name in distributions}, distributions=distributions,
            value=float(np.mean(np.asarray(seeds) - np.asarray(ce_seeds)))))
    proposal = history.ask()
    space.suggest(proposal, ("distill",))
    return dict(proposal.params)


def choose_architectures(level1: list[optuna.trial.FrozenTrial], objectives: list[str], count: int) -> list[int]:
    """The level-1 front (CE-only accuracy vs size) in its useful band (`pareto.useful_mask`: at least
    half the best accuracy; a degenerate tiny student is not worth tuning), thinned to `count` trials
    spread evenly over log size."""
    complete = [t for t in level1 if t.state == optuna.trial.TrialState.COMPLETE and t.values is not None]
    if not complete:
        return []
    values = np.array([t.values for t in complete], dtype=float)
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    mask = pareto_front_mask(values, directions) & useful_mask(values, directions)
    front = sorted((t for t, on in zip(complete, mask) if on), key=lambda t: (t.values[1], t.number))
    if len(front) <= count:
        return [t.number for t in front]
    log_size = np.log10(np.maximum([t.values[1] for t in front], 1.0))
    targets = np.linspace(log_size[0], log_size[-1], count)
    picked: list[int] = []
    for target in targets:  # nearest unpicked front point to each evenly spaced log size
        order = np.argsort(np.abs(log_size - target), kind="stable")
        picked.append(next(int(i) for i in order if int(i) not in picked))
    return [front[i].number for i in sorted(picked)]
