"""What one trial's bookkeeping costs the search driver in its Optuna storage (issue 17.1).

The searcher (`autokd.searcher.AutokdSearcher`, the very class a search runs) proposes and records
trials on the orchestration benchmark's space (digits, a fixed CNN student, TPE) without Ray or
training: `suggest` (ask, the driver's mark, the sampled parameters, the trial's config and size,
its constraint) and `on_trial_complete` (its results and state) with a made-up result. Per trial
and phase: the driver's time, and on SQLite the commits and SQL statements (SQLAlchemy's events).

Arms, on the same sampler seed:
- ``sqlite``: an SQLite file, as a search writes it (write-ahead log, synchronous=NORMAL);
- ``sqlite_one_transaction``: the same, with every write Optuna's `Trial` makes while the trial is
  proposed (the driver's mark, each parameter, the constraint) kept and written in one transaction
  at the end of `suggest`: what batching a trial's start would save;
- ``journal``: an Optuna journal file (``storage: study.log``).

Figures: per arm and phase, the median ms per trial over the trials after the first
``--warmup`` (TPE's random start-up trials are cheaper), and the commits and statements per trial.

    python benchmarks/storage_writes.py            # 60 timed trials per arm after 20 (~1 min)
    python benchmarks/storage_writes.py --quick    # 10 after 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import write_result  # noqa: E402  (common puts the repo on sys.path)
from orchestration import study_spec  # noqa: E402

import optuna  # noqa: E402
from optuna.storages._rdb.models import TrialSystemAttributeModel, TrialUserAttributeModel  # noqa: E402
from optuna.storages._rdb.storage import _create_scoped_session  # noqa: E402
from sqlalchemy import event  # noqa: E402

from autokd.results import open_storage, use_write_ahead_log  # noqa: E402
from autokd.searcher import AutokdSearcher  # noqa: E402
from autokd.space import load_space  # noqa: E402

ARMS = ("sqlite", "sqlite_one_transaction", "journal")
DIGITS_INPUT, DIGITS_CLASSES = (1, 8, 8), 10


class OneTrialWrites:
    """Stands in for a trial's storage while it is proposed: parameter and attribute writes are kept and
    written in one transaction by `flush`; everything else goes to the storage."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.params: list[tuple] = []
        self.user_attrs: dict = {}
        self.system_attrs: dict = {}

    def set_trial_param(self, trial_id, name, value, distribution) -> None:
        self.params.append((name, value, distribution))

    def set_trial_user_attr(self, trial_id, key, value) -> None:
        self.user_attrs[key] = value

    def set_trial_system_attr(self, trial_id, key, value) -> None:
        self.system_attrs[key] = value

    def get_trial_system_attrs(self, trial_id) -> dict:
        return {**self.storage.get_trial_system_attrs(trial_id), **self.system_attrs}

    def __getattr__(self, name):
        return getattr(self.storage, name)

    def flush(self) -> None:
        backend = self.storage._backend
        with _create_scoped_session(backend.scoped_session, True) as session:
            for name, value, distribution in self.params:
                backend._set_trial_param_without_commit(session, self.trial_id, name, value, distribution)
            for model, attrs in ((TrialUserAttributeModel, self.user_attrs),
                                 (TrialSystemAttributeModel, self.system_attrs)):
                for key, value in attrs.items():
                    backend._set_trial_attr_without_commit(session, model, self.trial_id, key, value)


class OneTransactionSearcher(AutokdSearcher):
    def suggest(self, trial_id: str):
        study = self._ot_study
        writes: list[tuple] = []

        def ask(*args, **kwargs):
            trial = optuna.Study.ask(study, *args, **kwargs)
            writes.append((trial, OneTrialWrites(trial.storage, trial._trial_id)))
            trial.storage = writes[-1][1]
            return trial

        study.ask = ask
        try:
            return super().suggest(trial_id)
        finally:
            del study.ask
            for trial, kept in writes:
                trial.storage = kept.storage
                kept.flush()


def run_arm(arm: str, folder: Path, trials: int, warmup: int) -> dict:
    spec = study_spec(folder, arm, trials + warmup, epochs=2, seed=0,
                      storage="journal" if arm == "journal" else "sqlite")
    url = spec.storage
    optuna.create_study(storage=open_storage(url), study_name=spec.name, directions=spec.directions)
    use_write_ahead_log(url)
    base = spec.train_config()
    searcher_class = OneTransactionSearcher if arm == "sqlite_one_transaction" else AutokdSearcher
    searcher = searcher_class(load_space(spec), spec, base, DIGITS_INPUT, DIGITS_CLASSES, url, 0)
    backend = getattr(searcher._ot_study._storage, "_backend", None)  # Optuna's _CachedStorage wraps an RDBStorage
    backend = backend if isinstance(backend, optuna.storages.RDBStorage) else None
    counted = {"commit": 0, "statement": 0}
    if backend is not None:
        event.listen(backend.engine, "commit", lambda _c: counted.__setitem__("commit", counted["commit"] + 1))
        event.listen(backend.engine, "before_cursor_execute",
                     lambda *_a: counted.__setitem__("statement", counted["statement"] + 1))
    rows = []
    for number in range(trials + warmup):
        before = dict(counted)
        started = time.perf_counter()
        proposed = searcher.suggest(f"t{number}")
        suggested = time.perf_counter()
        result = {**proposed["size"], "val_accuracy": 0.5 + 0.4 * (number % 7) / 7, "epoch": 2, "epochs": 2,
                  "epochs_trained": 2, "train_seconds": 0.1, "val_accuracy_curve": [0.4, 0.5], "node": "n"}
        searcher.on_trial_complete(f"t{number}", result)
        completed = time.perf_counter()
        rows.append({"suggest_ms": 1000 * (suggested - started), "complete_ms": 1000 * (completed - suggested),
                     "commits": counted["commit"] - before["commit"],
                     "statements": counted["statement"] - before["statement"]})
    states = {t.state.name for t in searcher._ot_study.get_trials(deepcopy=False)}
    if states != {"COMPLETE"}:
        raise RuntimeError(f"{arm}: every trial must complete, got {states}")
    timed = rows[warmup:]

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in timed), 2)

    figures = {"suggest_ms": median("suggest_ms"), "complete_ms": median("complete_ms"),
               "trial_ms": round(median("suggest_ms") + median("complete_ms"), 2)}
    if backend is not None:
        figures.update(commits_per_trial=median("commits"), statements_per_trial=median("statements"))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 timed trials per arm after 5")
    parser.add_argument("--trials", type=int, default=None, help="timed trials per arm (default 60)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed trials first (default 20)")
    args = parser.parse_args()
    trials = args.trials or (10 if args.quick else 60)
    warmup = args.warmup or (5 if args.quick else 20)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="autokd-storage-writes-") as tmp:
        arms = {arm: run_arm(arm, Path(tmp), trials, warmup) for arm in ARMS}
    for arm, figures in arms.items():
        print(arm, figures)
    sqlite, batched, journal = (arms[arm] for arm in ARMS)
    note = (f"The searcher's bookkeeping of one trial (suggest + on_trial_complete, no Ray, no training) on the "
            f"orchestration benchmark's space; medians over {trials} trials after {warmup}. SQLite: "
            f"{sqlite['trial_ms']:.1f} ms, {sqlite['commits_per_trial']:.0f} commits, "
            f"{sqlite['statements_per_trial']:.0f} statements; with the trial's start in one transaction: "
            f"{batched['trial_ms']:.1f} ms, {batched['commits_per_trial']:.0f} commits, "
            f"{batched['statements_per_trial']:.0f} statements; journal file: {journal['trial_ms']:.1f} ms.")
    print(note)
    figures = {f"{arm}.{key}": value for arm, values in arms.items() for key, value in values.items()}
    write_result("storage_writes", {"quick": args.quick, "figures": figures, "note": note,
                                    "settings": {"trials": trials, "warmup": warmup}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
