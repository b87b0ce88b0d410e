"""The search: Optuna proposes, Ray Tune runs, the Optuna storage remembers.

This is the only module that imports Ray. The flow::

    study.yaml -> data + teachers (cached outputs, put in Ray's object store once)
               -> Tuner(_AutokdSearcher over the space, reuse_actors=True) -> trials call distill.fit
               -> Optuna storage (COMPLETE / FAIL with reason / PRUNED: infeasible or stopped early)

Fixes to stock OptunaSearch, all in `_AutokdSearcher`: a size constraint is checked before a
trial trains (infeasible configs never reach Ray); a NaN, an exception or a missing metric ends
the trial FAIL with its reason (stock leaves NaN trials RUNNING and aborts on a missing metric);
a trial stopped before its last epoch is PRUNED, never COMPLETE. Resume does not use
`Tuner.restore`: the storage is the truth, orphan RUNNING trials are failed as interrupted and
their parameters re-queued, and the budget counts what is already done.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd

from autokd.data import load_data
from autokd.errors import AutokdError, StorageError
from autokd.results import (INTERRUPTED, counts, front_frame, open_storage, study_hypervolume, trained_epochs,
                            trials_frame)
from autokd.space import SearchSpace, load_space
from autokd.spec import StudySpec, TrainConfig, load_study
from autokd.stopping import ParetoRungs
from autokd.teachers import check_teachers, prepare_teachers, teacher_outputs
from autokd.zoo import arch_size

DRIVER = f"{socket.gethostname()}:{os.getpid()}"
# A driver on another host whose heartbeat is older than this is taken for dead.
DRIVER_STALE_S = 600.0
HEARTBEAT_EVERY_S = 30.0
# Stop after this many infeasible proposals in a row: the space and the constraints disagree.
MAX_INFEASIBLE_IN_A_ROW = 200


@dataclass
class SearchResult:
    study: optuna.Study
    spec: StudySpec
    trials: pd.DataFrame
    pareto: pd.DataFrame
    wall_seconds: float


def _sampler(spec: StudySpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler. A resumed driver offsets the seed by the trials already in storage:
    a sampler restarted with its first seed would replay the first driver's random draws and
    train the same configs again."""
    seed = spec.sampler.seed + trials_so_far
    if spec.sampler.name == "nsga2":
        # Optuna's default population (50) would make a 30-40 trial study one random generation.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=nsga2_population(spec.budget.trials))
    if spec.sampler.name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna, and much better here
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def driver_alive(driver: str | None, heartbeats: dict[str, float], now: float | None = None) -> bool:
    """Is the driver that started a trial still running? Same host: its PID; other hosts: its heartbeat."""
    if not driver:
        return False
    host, _, pid = driver.rpartition(":")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True
    last = heartbeats.get(driver)
    return last is not None and (now or time.time()) - last < DRIVER_STALE_S


def beat(study: optuna.Study) -> None:
    """Tell other drivers sharing the study that this one is alive."""
    study.set_user_attr(f"heartbeat.{DRIVER}", time.time())


def nsga2_population(trials: int) -> int:
    """A quarter of the budget (4 to 50), so that NSGA-II runs several generations."""
    return max(4, min(50, trials // 4))


def recover_interrupted(study: optuna.Study, own_only: bool = False) -> int:
    """Fail orphan RUNNING trials (their driver died) and re-queue their parameters.

    Trials of other live drivers adding to the same study are left alone; with `own_only`,
    only this driver's open trials are recovered (e.g. trials cut by the time limit).
    """
    attrs = study.user_attrs
    heartbeats = {key.removeprefix("heartbeat."): value for key, value in attrs.items()
                  if key.startswith("heartbeat.")}
    orphans = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if (t.user_attrs.get("driver") == DRIVER if own_only
                   else not driver_alive(t.user_attrs.get("driver"), heartbeats))]
    for trial in orphans:
        study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", INTERRUPTED)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(orphans)


def open_or_create_study(spec: StudySpec, storage_url: str, resume: bool, space_signature: dict) -> optuna.Study:
    """The study in storage; refuses to mix runs that would not be comparable."""
    storage = open_storage(storage_url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if spec.name in names:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        if not resume and study.get_trials(deepcopy=False):
            raise StorageError(f"{spec.source}: name: study {spec.name!r} already has trials in {storage_url}; "
                               "use --resume to continue it (or give the study another name)")
        directions = [d.name.lower() for d in study.directions]
        if directions != spec.directions or study.user_attrs.get("objectives") not in (None, spec.objectives):
            raise StorageError(f"{spec.source}: objectives: study {spec.name!r} in {storage_url} has objectives "
                               f"{study.user_attrs.get('objectives')} ({directions}); the file asks for "
                               f"{spec.objectives}")
        if study.user_attrs.get("space") not in (None, space_signature):
            raise StorageError(f"{spec.source}: search_space: differs from the space study {spec.name!r} was "
                               "started with; resuming would mix two searches (use another study name)")
        return study
    try:
        return optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions)
    except optuna.exceptions.DuplicatedStudyError:  # another driver created it a moment ago
        if not resume:
            raise StorageError(f"{spec.source}: name: study {spec.name!r} was just created in {storage_url} by "
                               "another driver; use --resume to add trials to it") from None
        return optuna.load_study(study_name=spec.name, storage=storage)


# ---------------------------------------------------------------------------------------------
# The searcher (driver side)


def _make_searcher(space: SearchSpace, spec: StudySpec, base: TrainConfig, input_shape, num_classes,
                   storage_url: str, trials_so_far: int, on_change: Callable[[], None]):
    from ray.tune.search.optuna import OptunaSearch

    limits = spec.size_limits()
    metrics = spec.objectives

    class _AutokdSearcher(OptunaSearch):
        def __init__(self):
            super().__init__(space=space.suggest, metric=metrics,
                             mode=["max"] + ["min"] * (len(metrics) - 1),
                             sampler=_sampler(spec, trials_so_far),
                             study_name=spec.name, storage=open_storage(storage_url))
            self._curves: dict[str, list[float]] = {}
            self._last_beat = time.monotonic()
            self._epochs_trained = trained_epochs(self._ot_study)

        def suggest(self, trial_id: str) -> dict | None:
            if spec.budget.epochs is not None and self._epochs_trained >= spec.budget.epochs:
                return self.FINISHED
            for _ in range(MAX_INFEASIBLE_IN_A_ROW):
                ot_trial = self._ot_study.ask()
                params = self._suggest_from_define_by_run_func(self._space, ot_trial)
                try:
                    config = space.apply(base, params)
                    size = arch_size(config.student, input_shape, num_classes).as_dict()
                except (AutokdError, ValueError) as error:
                    self._finish(ot_trial, optuna.trial.TrialState.FAIL, failure_reason=f"invalid config: {error}")
                    continue
                config.seed = base.seed + ot_trial.number
                # `driver` tells apart the trials of several drivers adding to one shared study.
                for key, value in {"config": config.model_dump(), "seed": config.seed, "driver": DRIVER,
                                   **size}.items():
                    ot_trial.set_user_attr(key, value)
                broken = [f"{metric} {size[metric]} > {limit:g}" for metric, limit in limits.items()
                          if size[metric] > limit]
                for metric, limit in limits.items():
                    ot_trial.set_constraint(metric, size[metric] - limit)
                if broken:  # known before training: never trained, never on the front
                    self._finish(ot_trial, optuna.trial.TrialState.PRUNED,
                                 pruned_reason="infeasible: " + ", ".join(broken))
                    continue
                self._ot_trials[trial_id] = ot_trial
                return {"config": config.model_dump(), "trial_number": ot_trial.number, "size": size}
            raise AutokdError(f"{spec.source}: constraints: {MAX_INFEASIBLE_IN_A_ROW} proposals in a row broke "
                              f"{spec.constraints}; widen the constraints or shrink the search space")

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            curve = self._curves.setdefault(trial_id, [])
            if "val_accuracy" in result and result.get("epoch", len(curve) + 1) > len(curve):  # once per epoch
                curve.append(float(result["val_accuracy"]))
                self._epochs_trained += 1
            self._beat()

        def _beat(self) -> None:
            if time.monotonic() - self._last_beat > HEARTBEAT_EVERY_S:
                beat(self._ot_study)
                self._last_beat = time.monotonic()

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.pop(trial_id, None)
            if ot_trial is None:
                return
            result = result or {}
            curve = self._curves.pop(trial_id, [])
            if "val_accuracy" in result and result.get("epoch", 0) > len(curve):
                # Tune skips on_trial_result for the result a scheduler stops the trial on.
                curve.append(float(result["val_accuracy"]))
                self._epochs_trained += 1
            attrs = {"val_accuracy_curve": curve, "epochs_trained": result.get("epoch", len(curve)),
                     "train_seconds": result.get("train_seconds"), "node": result.get("node"),
                     "device": result.get("device")}
            values = [result.get(m) for m in metrics]
            if result.get("failure_reason") or error:
                reason = result.get("failure_reason") or "the trial's worker process died or raised (see Ray logs)"
                self._finish(ot_trial, optuna.trial.TrialState.FAIL, failure_reason=reason, **attrs)
            elif any(v is None or not math.isfinite(float(v)) for v in values):
                missing = [m for m, v in zip(metrics, values) if v is None or not math.isfinite(float(v))]
                self._finish(ot_trial, optuna.trial.TrialState.FAIL,
                             failure_reason=f"missing or non-finite metric(s) {missing} in the last result", **attrs)
            elif result.get("epoch", 0) < result.get("epochs", 0):
                self._finish(ot_trial, optuna.trial.TrialState.PRUNED,
                             pruned_reason=f"early-stopped at epoch {result['epoch']} of {result['epochs']}", **attrs)
            else:
                self._finish(ot_trial, optuna.trial.TrialState.COMPLETE, values=[float(v) for v in values], **attrs)

        def _finish(self, ot_trial, state, values=None, **attrs) -> None:
            for key, value in attrs.items():
                if value is not None:
                    ot_trial.set_user_attr(key, value)
            self._ot_study.tell(ot_trial, values, state=state)
            self._beat()
            try:
                on_change()
            except Exception as error:  # a display problem must never stop a search
                logging.getLogger("autokd").warning("progress update failed: %s", error)

    return _AutokdSearcher()


# ---------------------------------------------------------------------------------------------
# The trial (worker side)


def injected_fault(trial_number: int) -> str | None:
    """Faults the fault tests inject: AUTOKD_INJECT_FAULT="3:nan,4:build,5:raise,7:oom,9:exit"."""
    for item in os.environ.get("AUTOKD_INJECT_FAULT", "").split(","):
        number, _, kind = item.partition(":")
        if number.strip() == str(trial_number):
            return kind.strip()
    return None


def _run_trial(trial: dict, data, outputs) -> None:
    """One trial: build the student, distil with the cached teacher outputs, report every epoch."""
    import ray
    import torch
    from ray import tune

    from autokd.distill import fit, resolve_device
    from autokd.zoo import build_model

    config = TrainConfig.model_validate(trial["config"])
    report = {**trial["size"], "epochs": config.schedule.epochs, "node": ray.get_runtime_context().get_node_id()}
    started = time.perf_counter()
    try:
        torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
        device = resolve_device(config.device)
        report["device"] = str(device)
        fault = injected_fault(trial["trial_number"])
        # "build": an architecture the zoo rejects, past the spec's validation (as a broken zoo entry would be).
        arch = {**config.student, "width": -1} if fault == "build" else config.student
        student = build_model(arch, data.input_shape, data.num_classes, seed=config.seed)
        chosen = [t.name for t in config.selected_teachers()]
        source = outputs.select(chosen).to(device) if outputs is not None and chosen else None
        if fault == "nan":  # an infinite learning rate: the real non-finite path through fit
            config.schedule.lr = float("inf")
        if fault == "raise":
            raise RuntimeError(f"injected fault in trial {trial['trial_number']}")

        def on_epoch(epoch) -> None:
            if fault == "oom":
                raise torch.OutOfMemoryError("simulated: CUDA out of memory. Tried to allocate 2.00 GiB")
            if fault == "exit" and epoch.epoch == 2:
                os._exit(1)  # the worker process dies mid-trial, as on a node failure
            tune.report({**report, "val_accuracy": epoch.val_accuracy, "epoch": epoch.epoch,
                         "train_loss": epoch.train_loss, "train_seconds": time.perf_counter() - started})

        fit(student, data, source, config.distill, config.schedule, seed=config.seed, device=device,
            on_epoch=on_epoch)
    except Exception as error:  # the reason goes to the study; the search goes on
        message = str(error).splitlines()[0] if str(error) else ""
        tune.report({**report, "failure_reason": f"{type(error).__name__}: {message}"[:500],
                     "train_seconds": time.perf_counter() - started})


# ---------------------------------------------------------------------------------------------
# The driver


class _Progress:
    """Trials done / failed / infeasible, best accuracy, front size, hypervolume, elapsed and ETA."""

    def __init__(self, study: optuna.Study, spec: StudySpec, budget: int, enabled: bool):
        self.study, self.spec, self.budget, self.enabled = study, spec, budget, enabled
        self.started = time.perf_counter()
        self.done_before = counts(study)["done"]
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[line]}"),
                                 transient=False)
            self._task = self._bar.add_task(spec.name, total=budget, completed=self.done_before, line="")
            self._bar.start()

    def update(self) -> None:
        if not self.enabled:
            return
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
            self._bar.stop()


def _init_ray(address: str | None, spec: StudySpec) -> None:
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # a failed trial reports no accuracy
    # Results live in the Optuna study; Tune's default CSV/JSON/TensorBoard loggers only cost time
    # (orchestration benchmark: wall ratio against in-process Optuna 1.45 -> 1.13 without them).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A private local cluster: token auth is not needed on loopback and would print warnings.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # Ray takes whole-number totals only; round up what `concurrency` trials would hold at once.
            extra = {k: float(math.ceil(round(v * spec.resources.concurrency, 6)))
                     for k, v in spec.resources.custom.items()}
            ray.init(num_cpus=max(os.cpu_count() or 1, int(spec.resources.cpus_per_trial)), resources=extra or None,
                     **kwargs)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = (" (token authentication: put the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                if "auth" in first.lower() or "token" in first.lower() else "")
        where = f"--address {address}: cannot connect to the Ray cluster" if address else \
            "cannot start a local Ray instance"
        raise AutokdError(f"{where}: {first}{hint}") from None


def search(study: StudySpec | str | Path, *, resume: bool = False, storage: str | None = None,
           address: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> SearchResult:
    """Run (or continue) a study and return its trials and Pareto front.

    Example::

        import autokd
        result = autokd.search("studies/digits.yaml", resume=True)
        print(result.pareto[["trial", "val_accuracy", "params"]])
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Everything the user gave is checked before the storage is touched: bad input writes nothing.
    spec = study if isinstance(study, StudySpec) else load_study(study)
    space = load_space(spec)
    storage_url = storage or spec.storage_url()
    data = load_data(spec.data, spec.source)
    check_teachers(spec.teachers, data, spec.resolve_path, source=spec.source)
    signature = {name: param.model_dump() for name, param in space.params.items()}
    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    optuna_study = open_or_create_study(spec, storage_url, resume, signature)

    started = time.perf_counter()
    teachers = prepare_teachers(spec.teachers, data, spec.cache_dir, spec.resolve_path, log=log, source=spec.source)
    outputs = teacher_outputs(teachers, data) if teachers else None
    optuna_study.set_user_attr("objectives", spec.objectives)
    optuna_study.set_user_attr("space", signature)
    optuna_study.set_user_attr("study_spec", spec.model_dump(mode="json"))
    optuna_study.set_user_attr("study_file", str(Path(spec.source).resolve()))
    beat(optuna_study)
    recovered = recover_interrupted(optuna_study)
    if recovered:
        log(f"resume: {recovered} interrupted trial(s) re-queued")
    base = spec.train_config()

    remaining = spec.budget.trials - counts(optuna_study)["done"]
    compute_left = spec.budget.epochs is None or trained_epochs(optuna_study) < spec.budget.epochs
    if remaining > 0 and compute_left:
        _run_tuner(spec, space, base, data, outputs, storage_url, optuna_study, remaining, address, progress)
    if spec.robust.top_k > 0:
        _rerun_front_with_seeds(spec, optuna_study, data, outputs, address, log)
    frame = trials_frame(optuna_study)
    return SearchResult(optuna_study, spec, frame, front_frame(frame), time.perf_counter() - started)


def _run_tuner(spec, space, base, data, outputs, storage_url, optuna_study, remaining, address, progress) -> None:
    from ray import tune

    _init_ray(address or spec.ray_address, spec)
    bar = _Progress(optuna_study, spec, spec.budget.trials, progress)
    trials_so_far = len(optuna_study.get_trials(deepcopy=False))
    searcher = _make_searcher(space, spec, base, data.input_shape, data.num_classes, storage_url, trials_so_far,
                              bar.update)
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial,
                 **spec.resources.custom}
    trainable = tune.with_resources(tune.with_parameters(_run_trial, data=data, outputs=outputs), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, reuse_actors=True,
                                    max_concurrent_trials=spec.resources.concurrency,
                                    time_budget_s=spec.budget.time_limit_s,
                                    scheduler=_scheduler(spec, optuna_study)),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(Path(spec.cache_dir).resolve() / "ray"),
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
    )
    try:
        tuner.fit()
    finally:
        bar.close()
        # A trial still open here was cut by the time limit: fail it now rather than leave it RUNNING.
        recover_interrupted(optuna_study, own_only=True)


def robust_seeds(trial_seed: int, count: int) -> list[int]:
    """The trial's own seed first, then count-1 fresh ones far from other trials' seeds."""
    return [trial_seed] + [trial_seed + 100_003 * k for k in range(1, count)]


def _val_accuracy_with_seed(config_dict: dict, seed: int, data, outputs) -> float:
    """One re-run of a trial's config with another seed (a Ray task)."""
    import torch

    from autokd.distill import fit
    from autokd.zoo import build_model

    torch.set_num_threads(1)
    config = TrainConfig.model_validate(config_dict)
    chosen = [t.name for t in config.selected_teachers()]
    source = outputs.select(chosen) if outputs is not None and chosen else None
    student = build_model(config.student, data.input_shape, data.num_classes, seed=seed)
    return fit(student, data, source, config.distill, config.schedule, seed=seed, device=config.device).val_accuracy


def _rerun_front_with_seeds(spec: StudySpec, study: optuna.Study, data, outputs, address, log) -> None:
    """Re-run the top-K front configs with S seeds; stored as study attrs `robust.<trial>` (resumable)."""
    import ray

    frame = trials_frame(study)
    front = frame[frame["pareto_rank"] == 0].sort_values("val_accuracy", ascending=False).head(spec.robust.top_k)
    todo = [int(n) for n in front["trial"] if f"robust.{int(n)}" not in study.user_attrs]
    if not todo:
        return
    _init_ray(address or spec.ray_address, spec)
    log(f"robust front: re-running {len(todo)} front config(s) with {spec.robust.seeds} seeds")
    task = ray.remote(num_cpus=spec.resources.cpus_per_trial)(_val_accuracy_with_seed)
    data_ref, outputs_ref = ray.put(data), ray.put(outputs)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    pending = {}
    for number in todo:
        trial = trials[number]
        seeds = robust_seeds(trial.user_attrs["seed"], spec.robust.seeds)
        pending[number] = (seeds, [trial.values[0]] + [task.remote(trial.user_attrs["config"], seed, data_ref,
                                                                    outputs_ref) for seed in seeds[1:]])
    for number, (seeds, results) in pending.items():
        accuracies = [results[0]] + ray.get(results[1:])
        mean = sum(accuracies) / len(accuracies)
        std = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5
        study.set_user_attr(f"robust.{number}", {"seeds": seeds, "val_accuracies": accuracies,
                                                 "mean": mean, "std": std})


def _scheduler(spec: StudySpec, study: optuna.Study):
    """No stopping, Pareto-aware successive halving, or stock ASHA on accuracy (for comparison)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    stopping = spec.early_stopping
    if stopping.kind == "asha":
        return ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=spec.schedule.epochs,
                             grace_period=stopping.grace_epochs, reduction_factor=stopping.eta)
    if stopping.kind == "none":
        return FIFOScheduler()

    class _ParetoRungScheduler(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.rungs = ParetoRungs(stopping.grace_epochs, stopping.eta, spec.schedule.epochs)
            self.size_metric = spec.objectives[1]
            self._curves: dict[str, list[float]] = {}
            # A resumed study's rungs and front are its stored trials', not empty.
            for stored in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE,
                                                                   optuna.trial.TrialState.PRUNED]):
                curve, size = stored.user_attrs.get("val_accuracy_curve"), stored.user_attrs.get(self.size_metric)
                if curve and size is not None:
                    self.rungs.finished(f"stored-{stored.number}", curve, size)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            if "val_accuracy" not in result:
                return TrialScheduler.CONTINUE
            curve = self._curves.setdefault(trial.trial_id, [])
            if result["epoch"] > len(curve):  # once per epoch
                curve.append(float(result["val_accuracy"]))
            if result.get("epoch", 0) >= result.get("epochs", 0):
                return TrialScheduler.CONTINUE
            keep = self.rungs.keep_training(trial.trial_id, result["epoch"], result["val_accuracy"],
                                            result[self.size_metric])
            return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

        def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
            curve = self._curves.pop(trial.trial_id, [])
            if result and self.size_metric in result and "failure_reason" not in result:
                self.rungs.finished(trial.trial_id, curve, result[self.size_metric])

        def on_trial_remove(self, tune_controller, trial) -> None:
            self._curves.pop(trial.trial_id, None)

    return _ParetoRungScheduler()
