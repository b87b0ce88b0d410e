"""Search progress in the terminal, as a Tune callback: trials done, failed, stopped, best, front, HV, ETA.

A rich bar when stderr is a terminal, a line per finished trial otherwise. The callback is
pickled with Tune's experiment state; the live display is not (it holds locks), so it is
dropped from the pickled state and rebuilt only in the driver that shows it.
"""

from __future__ import annotations

import sys
import time

import optuna
from ray.tune import Callback

from autokd.results import counts, study_hypervolume, trials_frame
from autokd.spec import StudySpec

# Reading the whole study for the display at most this often (big studies: one read per trial costs).
REFRESH_EVERY_S = 1.0


class SearchProgress(Callback):
    def __init__(self, study: optuna.Study, spec: StudySpec, budget: int, enabled: bool):
        self.study, self.spec, self.budget, self.enabled = study, spec, budget, enabled
        self.started = time.perf_counter()
        self.done_before = counts(study)["done"]
        self._last_refresh = 0.0
        self._bar = self._task = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[line]}"),
                                 transient=False)
            self._task = self._bar.add_task(spec.name, total=budget, completed=self.done_before, line="")
            self._bar.start()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None, "_task": None, "enabled": False}

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.update()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.update()

    def update(self, force: bool = False) -> None:
        if not self.enabled or (not force and time.monotonic() - self._last_refresh < REFRESH_EVERY_S):
            return
        self._last_refresh = time.monotonic()
        tally = counts(self.study)
        frame = trials_frame(self.study)
        complete = frame[frame["state"] == "COMPLETE"]
        best = complete["val_accuracy"].max() if len(complete) else float("nan")
        front = int((frame["pareto_rank"] == 0).sum())
        volume = study_hypervolume(frame, self.spec)
        line = (f"ok {tally['complete']} failed {tally['failed']} infeasible {tally['infeasible']} "
                f"stopped {tally['stopped']} | best acc {best:.4f} | front {front} | HV {volume:.4f}")
        if self._bar is not None:
            self._bar.update(self._task, completed=min(tally["done"], self.budget), line=line)
        else:
            elapsed = time.perf_counter() - self.started
            new = max(tally["done"] - self.done_before, 1)
            eta = elapsed / new * max(self.budget - tally["done"], 0)
            print(f"[{tally['done']}/{self.budget}] {line} | {elapsed:.0f}s elapsed, eta {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self.update(force=True)
            self._bar.stop()
