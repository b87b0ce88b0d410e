"""The search driver: check everything, start Ray, open the study, run the trials, return the front.

    study.yaml -> spec, space, data, teachers checked (nothing written yet)
               -> Ray started (a private local instance unless an address is given)
               -> Optuna study opened or created; teachers trained once, outputs cached
               -> Tuner(AutokdSearcher [+ TwoLevelPlan], reuse_actors=True) -> trial.run_stored_trial
               -> Optuna storage (COMPLETE / FAIL with reason / PRUNED: infeasible or stopped early)

The jobs around it live in their own modules: `study_store` (storage, sampler, heartbeats,
orphan recovery), `searcher`, `levels` (the two-level plan), `trial` (the worker),
`scheduler`, `progress`, `ray_cluster`, `robust`. Resume does not use `Tuner.restore`: the
storage is the truth, orphan RUNNING trials are failed as interrupted and re-queued, and the
budget counts what is already done. Ctrl-C fails this driver's running trials as interrupted
(re-queued on resume), trains nothing else and raises `SearchInterrupted`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import optuna
import pandas as pd

from autokd.archs import check_code_allowed
from autokd.config_files import load_study
from autokd.paths import relative_paths, resolve_paths
from autokd.results import checkpoint, counts, front_frame, trained_epochs, trials_frame, use_write_ahead_log
from autokd.space import load_space
from autokd.spec import StudySpec
from autokd.study_store import (beat, check_outputs, check_resumable, check_unchanged, clear_beat, existing_study,
                                open_or_create_study, recover_interrupted)


@dataclass
class SearchResult:
    study: optuna.Study
    spec: StudySpec
    trials: pd.DataFrame
    pareto: pd.DataFrame
    wall_seconds: float


# Ctrl-C typed during this process's search: set by its SIGINT handler (`_ctrl_c_ends_the_search`), cleared
# when the search has stopped; `searcher.ReraiseCtrlC` raises it again at each step of Tune's loop.
CTRL_C = threading.Event()


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search: finished trials are stored, running ones re-queued for --resume."""

    def __init__(self, done: int, budget: int, source: str):
        super().__init__(f"{done}/{budget} trials done")
        self.done, self.budget, self.source = done, budget, source


def search(study: StudySpec | str | Path, *, resume: bool = False, storage: str | None = None,
           address: str | None = None, progress: bool = True, log: Callable[[str], None] = print,
           accept_changes: bool = False) -> SearchResult:
    """Run (or continue) a study and return its trials and Pareto front.

    Example::

        import autokd
        result = autokd.search("studies/digits.yaml", resume=True)
        print(result.pareto[["trial", "val_accuracy", "params"]])

    A resume whose study file changed the space, data, teachers or training defaults is refused
    unless `accept_changes` (the stored trials were sampled and trained from the old ones).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Everything the user gave is checked before the storage is touched: bad input writes nothing.
    # Every path absolute from here on (a study file's relative to its folder, a StudySpec's to its source's).
    spec = resolve_paths(study, study.folder) if isinstance(study, StudySpec) else load_study(study)
    space = load_space(spec)
    check_code_allowed(spec.student, "student", spec.source)  # running the user's code is opt-in
    storage_url = storage or spec.storage_url()
    check_outputs(spec, storage_url, storage_flag=storage is not None)
    stored = existing_study(spec, storage_url)  # reads only: Optuna's tables are made once every check passed
    if stored is not None:
        check_resumable(spec, stored, storage_url, resume)
    # torch loads from here on, not before: a bad study file, space, storage or a missing --resume is
    # refused without it (2.2-2.7 s instead of 4.4-6.6 s for a missing --resume, measured through the CLI)
    from autokd.data import load_data
    from autokd.levels import is_two_level
    from autokd.teacher_outputs import teacher_outputs
    from autokd.teachers import check_teachers, prepare_teachers

    data = load_data(spec.data, spec.source)
    check_teachers(spec.teachers, data, source=spec.source)
    _check_student(spec, space, data)
    attention = _check_attention(spec, space, data)
    signature = {name: param.model_dump() for name, param in space.params.items()}
    if stored is not None:
        changes = check_unchanged(spec, stored, signature, accept_changes)
        if changes:
            log(f"resume: --accept-changes: {', '.join(changes)} differ from the stored study")
    optuna_study = stored
    with _ctrl_c_ends_the_search(spec, lambda: optuna_study):
        if _work_left(spec, stored):
            from autokd.ray_cluster import init_ray

            init_ray(address or spec.ray_address, spec)  # a failed start writes nothing: before the storage
        if storage_url.startswith("sqlite:///"):
            Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        optuna_study = stored or open_or_create_study(spec, storage_url, resume, signature)
        use_write_ahead_log(storage_url)  # every check has passed: from here on the search writes
        started = time.perf_counter()
        teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, log=log, source=spec.source,
                                    progress=progress)
        outputs = teacher_outputs(teachers, data, attention=attention) if teachers else None
        two_level = is_two_level(spec, space)
        for key, value in study_attrs(spec, signature, two_level).items():
            optuna_study.set_user_attr(key, value)
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; the dashboard and load_study read it
            warnings.simplefilter("ignore")
            optuna_study.set_metric_names(list(spec.objectives))
        beat(optuna_study)
        try:
            recovered = recover_interrupted(optuna_study)
            if recovered:
                log(f"resume: {recovered} interrupted trial(s) re-queued")
            if _work_left(spec, optuna_study):
                plan = None
                if two_level:
                    from autokd.levels import TwoLevelPlan

                    base = spec.train_config()
                    plan = TwoLevelPlan(spec, space, base, data.input_shape, data.num_classes,
                                        {t.name: t.meta["val_accuracy"] for t in teachers  # unknown val: kept
                                         if t.meta["val_accuracy"] is not None})
                _run_tuner(spec, space, data, outputs, storage_url, optuna_study, plan, address, progress)
            if spec.robust.top_k > 0:
                from autokd.ray_cluster import init_ray
                from autokd.robust import rerun_front_with_seeds

                init_ray(address or spec.ray_address, spec)
                rerun_front_with_seeds(spec, optuna_study, data, outputs, log)
        finally:
            clear_beat(optuna_study)
            checkpoint(storage_url)
        frame = trials_frame(optuna_study)
        return SearchResult(optuna_study, spec, frame, front_frame(frame), time.perf_counter() - started)


@contextlib.contextmanager
def _ctrl_c_ends_the_search(spec: StudySpec, written_study: Callable[[], optuna.Study | None]) -> Iterator[None]:
    """Ctrl-C from Ray's start to the search's end: a plain KeyboardInterrupt while the study is not written
    yet, then SearchInterrupted (trials done, the resume line) wherever it lands: teachers, trials, the robust
    front's reruns. It is also recorded (`CTRL_C`): a KeyboardInterrupt that lands in a finalizer is swallowed
    by Python ("Exception ignored in ..."; 3 in 80 Ctrl-C at random moments, the search then ran to its end),
    so the search raises it again before Tune starts and at each step of Tune's loop."""

    def ctrl_c(signum, frame) -> None:
        CTRL_C.set()
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal's condition
    previous_handler = signal.signal(signal.SIGINT, ctrl_c) if in_main_thread else None
    try:
        yield
    except SearchInterrupted:
        raise
    except KeyboardInterrupt:
        study = written_study()
        if study is None:
            raise
        raise SearchInterrupted(counts(study)["done"], spec.budget.trials, spec.source) from None
    finally:
        CTRL_C.clear()
        # After a Ctrl-C, `_run_tuner` has put `_exit_at_once` in place for the clean-up: leave it there.
        if previous_handler is not None and signal.getsignal(signal.SIGINT) is ctrl_c:
            signal.signal(signal.SIGINT, previous_handler)


def _check_student(spec: StudySpec, space, data) -> None:
    """A custom student is built once on a dummy batch (`custom_student.check_student`): a bad factory is
    one line, now."""
    from autokd.custom_student import check_student
    from autokd.space import may_be_positive

    check_student(spec.student, data.input_shape, data.num_classes, source=spec.source, int8=spec.quantize.int8,
                  features=may_be_positive(space, "distill.w_feat", spec.distill.w_feat),
                  searched_args=tuple(name.removeprefix("student.args.") for name in space.params
                                      if name.startswith("student.args.")), space_source=space.source)


def _check_attention(spec: StudySpec, space, data) -> bool:
    """Can a trial use attention transfer (w_at > 0)? If so, every student family it may go with (the
    study's student for its own family, the family's defaults for another) shares a stage size with
    every teacher it may use (`teacher_outputs.check_attention`); one ConfigError line if not."""
    from autokd.space import attention_scope
    from autokd.teacher_outputs import check_attention

    scope = attention_scope(space, spec)
    if scope is None:
        return False
    families, teachers = scope
    for family in families:
        student = spec.student if spec.student.get("family") == family else {"family": family}
        check_attention(student, teachers, data.input_shape, spec.source)
    return True


def study_attrs(spec: StudySpec, space_signature: dict, two_level: bool) -> dict:
    """What a study stores about itself (resume checks, report, show and export read it back).

    Its paths are relative to the study file (`paths.relative_paths`): the same from any working
    directory, and no path of this machine; ``study_file`` says where this driver found the file (a
    study opened by name resolves them from its folder)."""
    return {"objectives": spec.objectives, "space": space_signature,
            "study_spec": relative_paths(spec, spec.folder).model_dump(mode="json"),
            "study_file": str(spec.folder / Path(spec.source).name),
            "search_mode": "two_level" if two_level else "flat"}


def _work_left(spec: StudySpec, study: optuna.Study | None) -> bool:
    if study is None:
        return True
    compute_left = spec.budget.epochs is None or trained_epochs(study) < spec.budget.epochs
    return compute_left and counts(study)["done"] < spec.budget.trials


def _run_tuner(spec, space, data, outputs, storage_url, optuna_study, plan, address, progress) -> None:
    import ray
    from ray import tune

    from autokd.progress import SearchProgress
    from autokd.ray_cluster import init_ray
    from autokd.scheduler import make_scheduler
    from autokd.searcher import AutokdSearcher, DriverHeartbeat, ReraiseCtrlC
    from autokd.trial import run_stored_trial

    init_ray(address or spec.ray_address, spec)
    remaining = spec.budget.trials - counts(optuna_study)["done"]
    base = spec.train_config()
    base.threads = max(1, int(spec.resources.cpus_per_trial))  # the trial's count, recorded in its config
    bar = SearchProgress(optuna_study, spec, spec.budget.trials, progress)
    searcher = AutokdSearcher(space, spec, base, data.input_shape, data.num_classes, storage_url,
                              len(optuna_study.get_trials(deepcopy=False)), plan)
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial,
                 **spec.resources.custom}
    # References inside a tuple: Tune passes them through unresolved, and each worker fetches the arrays once.
    study_refs = (ray.put(data), ray.put(outputs))
    trainable = tune.with_resources(tune.with_parameters(run_stored_trial, study_refs=study_refs), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, reuse_actors=True,
                                    max_concurrent_trials=spec.resources.concurrency,
                                    time_budget_s=spec.budget.time_limit_s,
                                    scheduler=make_scheduler(spec, optuna_study)),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(Path(spec.cache_dir).resolve() / "ray"),
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                                  callbacks=[bar, DriverHeartbeat(searcher), ReraiseCtrlC()]),
    )

    try:  # Ctrl-C is search()'s (`_ctrl_c_ends_the_search`): one swallowed so far is raised here
        if CTRL_C.is_set():
            raise KeyboardInterrupt
        tuner.fit()
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _exit_at_once)  # a second Ctrl-C does not wait for the clean-up
        bar.close()
        searcher.claim_asked_trial()
        recover_interrupted(optuna_study, own_only=True)
        raise SearchInterrupted(counts(optuna_study)["done"], spec.budget.trials, spec.source) from None
    finally:
        bar.close()
        # A trial still open here was cut by the time limit: fail it now rather than leave it RUNNING.
        recover_interrupted(optuna_study, own_only=True)


def _exit_at_once(signum, frame) -> None:
    os._exit(130)
