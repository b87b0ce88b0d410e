"""Paired multi-seed scoring: when does a distilled config beat not distilling?

Level-2 configs of one architecture (CE-only, vanilla KD, tuned) are trained on the same
seeds: the same initial weights and batch order per seed. A config's gain over CE-only is
then measured per seed, which cancels most of the seed-to-seed spread (as large as the gains
themselves: 0.1-0.25 pt for MLPs on Fashion-MNIST, about 1 pt for tiny CNNs).

Pure functions over arrays: no torch, Optuna or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CE, VANILLA_KD, TUNED = "ce", "vanilla_kd", "tuned"
# A chosen distilled config and CE-only retrained on fresh seeds, once level 2 is done (`confirm`).
CONFIRM, CONFIRM_CE = "confirm", "confirm_ce"


def paired_gain(accuracies, baseline_accuracies) -> tuple[float, float]:
    """(mean, standard error) of the per-seed differences `accuracies - baseline_accuracies`.

    >>> paired_gain([0.80, 0.82, 0.81], [0.79, 0.80, 0.80])
    (0.0133..., 0.0033...)
    """
    config, baseline = np.asarray(accuracies, dtype=float), np.asarray(baseline_accuracies, dtype=float)
    if config.shape != baseline.shape or config.size == 0:
        raise ValueError(f"accuracies: need one value per shared seed, got {config.size} and {baseline.size}")
    differences = config - baseline
    if differences.size == 1:
        return float(differences[0]), float("nan")
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(differences.size))


def beats(gain: float, standard_error: float, margin_se: float) -> bool:
    """A gain counts when it is positive and exceeds `margin_se` standard errors."""
    return bool(gain > 0 and gain > margin_se * (standard_error if np.isfinite(standard_error) else np.inf))


@dataclass(frozen=True)
class Candidate:
    trial: int
    role: str  # CE, VANILLA_KD or TUNED
    accuracies: tuple[float, ...]  # one per shared seed, in seed order


@dataclass(frozen=True)
class Choice:
    trial: int
    role: str
    mean: float
    gain_vs_ce: float  # paired mean gain over CE-only (0 for CE-only itself)
    gain_se: float
    reason: str


def choose(candidates: list[Candidate], margin_se: float) -> Choice | None:
    """The front place of one architecture: the best of {CE-only, vanilla KD, tuned} that may take it.

    CE-only is the default. Vanilla KD or a tuned config replaces it only when its paired gain
    over CE-only beats the margin and its mean is at least vanilla KD's; among those, the
    highest mean wins (ties: the lower trial number). Without a finished CE-only baseline there is no choice yet (None).
    """
    baseline = next((c for c in candidates if c.role == CE), None)
    if baseline is None:
        return None
    best = Choice(baseline.trial, CE, float(np.mean(baseline.accuracies)), 0.0, 0.0,
                  "distillation did not help at this size")
    vanilla = next((c for c in candidates if c.role == VANILLA_KD), None)
    floor = max(best.mean, float(np.mean(vanilla.accuracies)) if vanilla is not None else -np.inf)
    contenders = sorted((c for c in candidates if c.role != CE and len(c.accuracies) == len(baseline.accuracies)),
                        key=lambda c: (-float(np.mean(c.accuracies)), c.trial))
    for contender in contenders:
        gain, standard_error = paired_gain(contender.accuracies, baseline.accuracies)
        # Never a distilled config below CE-only or vanilla KD, whichever is higher.
        if beats(gain, standard_error, margin_se) and float(np.mean(contender.accuracies)) >= floor:
            return Choice(contender.trial, contender.role, float(np.mean(contender.accuracies)), gain,
                          standard_error, f"distillation gains {100 * gain:+.2f} ± {100 * standard_error:.2f} pt "
                                          f"over CE-only ({len(baseline.accuracies)} paired seeds)")
    return best


def confirm(choice: Choice, baseline: Candidate, confirmation: tuple[float, ...] | None,
            confirmation_ce: tuple[float, ...] | None) -> Choice:
    """The choice once its config and CE-only were retrained on fresh seeds (val accuracies, seed order).

    The gain that chose a config is the best of many on the same seeds, so it overstates the
    real one (the winner's curse: +0.42 pt on the search's seeds was +0.09 on test at 15 epochs).
    Fresh seeds choose nothing, so their paired gain is unbiased: the config keeps its place when
    that gain is positive, and it is the gain shown; otherwise CE-only takes the place back.
    Without both confirmation runs (not run yet, or `search.confirm` off) the choice stands.
    """
    if choice.role == CE or not confirmation or not confirmation_ce:
        return choice
    gain, standard_error = paired_gain(confirmation, confirmation_ce)
    seeds = f"{len(confirmation)} fresh seeds"
    if gain > 0:
        return Choice(choice.trial, choice.role, choice.mean, gain, standard_error,
                      f"distillation gains {100 * gain:+.2f} ± {100 * standard_error:.2f} pt over CE-only "
                      f"(confirmed on {seeds})")
    return Choice(baseline.trial, CE, float(np.mean(baseline.accuracies)), 0.0, 0.0,
                  f"distillation did not hold on {seeds} ({100 * gain:+.2f} ± {100 * standard_error:.2f} pt "
                  f"over CE-only)")
