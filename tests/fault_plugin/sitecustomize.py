"""Test-only fault injection, loaded into every process of a test search (driver and Ray workers).

A fault test puts this folder on PYTHONPATH and sets AUTOKD_INJECT_FAULT="3:nan,4:build,5:raise,7:oom,9:exit"
(or "0:overlap,1:overlap": those trials wait, up to a minute, until both have started, so that two
worker actors must exist at once; trials mark their start in AUTOKD_FAULT_DIR; or "ray_start:ctrl_c":
Ctrl-C typed while Ray builds the driver's core worker; or "teachers:swallowed_ctrl_c": a Ctrl-C that
lands in a finalizer once the teachers' outputs are ready, which Python swallows);
Python imports `sitecustomize` at start-up, and this one wraps the product's documented seam,
`autokd.runner.run_config` (every trial trains through it), as soon as `autokd.trial` is imported.
Nothing of this lives in the product.
"""

import functools
import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

FAULTS = dict(item.split(":", 1) for item in os.environ.get("AUTOKD_INJECT_FAULT", "").split(",") if ":" in item)


def _install(trial_module) -> None:
    import torch

    from autokd import runner

    run_trial, run_config = trial_module.run_trial, runner.run_config
    current = {}

    # wraps: the driver pickles the trial function by reference (autokd.trial.run_trial) only when it
    # carries that name; a closure would travel by value and the workers would never load this plugin's patch.
    @functools.wraps(run_trial)
    def faulty_run_trial(trial, data, outputs):
        current["number"] = str(trial["trial_number"])
        if FAULTS.get(current["number"], "").strip() == "overlap":
            marks = Path(os.environ["AUTOKD_FAULT_DIR"])
            (marks / f"started-{current['number']}").touch()
            overlapping = sum(FAULTS[n].strip() == "overlap" for n in FAULTS)
            deadline = time.monotonic() + 60
            while len(list(marks.glob("started-*"))) < overlapping and time.monotonic() < deadline:
                time.sleep(0.2)
        return run_trial(trial, data, outputs)

    def faulty_run_config(config, data, targets, on_epoch=None, **kwargs):
        fault = FAULTS.get(current.get("number", ""), "").strip()
        if fault == "build":  # an architecture the zoo rejects, past the spec's validation
            config = config.model_copy(update={"student": {**config.student, "width": -1}})
        if fault == "nan":  # an infinite learning rate: the real non-finite path through fit
            config = config.model_copy(update={"schedule": config.schedule.model_copy(update={"lr": float("inf")})})
        if fault == "raise":
            raise RuntimeError(f"injected fault in trial {current['number']}")

        def faulty_on_epoch(epoch):
            if fault == "oom":
                raise torch.OutOfMemoryError("simulated: CUDA out of memory. Tried to allocate 2.00 GiB")
            if fault == "exit" and epoch.epoch == 2:
                os._exit(1)  # the worker process dies mid-trial, as on a node failure
            return on_epoch(epoch) if on_epoch is not None else None

        return run_config(config, data, targets, on_epoch=faulty_on_epoch, **kwargs)

    trial_module.run_trial = faulty_run_trial
    runner.run_config = faulty_run_config


def _ctrl_c_while_ray_starts(module) -> None:
    """The terminal's SIGINT to the whole foreground group, sent while Ray builds the driver's core worker
    (whose construction calls back into Python: here). Only in the driver, the process running autokd's CLI
    (Ray's workers, started with the cluster, build core workers too), once; the mark in AUTOKD_FAULT_DIR
    says it was sent."""
    build_gc_thread = module.PythonGCThread.__init__

    def typed_ctrl_c(self, *args, **kwargs):
        mark = Path(os.environ["AUTOKD_FAULT_DIR"]) / "ctrl_c-typed"
        main = getattr(sys.modules.get("__main__"), "__spec__", None)  # `python -m autokd.cli` runs as __main__
        if ("autokd.cli" in sys.modules or getattr(main, "name", "") == "autokd.cli") and not mark.exists():
            mark.touch()
            os.killpg(os.getpgrp(), signal.SIGINT)
        build_gc_thread(self, *args, **kwargs)

    module.PythonGCThread.__init__ = typed_ctrl_c


def _swallowed_ctrl_c_after_teachers(module) -> None:
    """Ctrl-C handled inside a finalizer right after the driver computed its teachers' outputs: Python prints
    "Exception ignored in ..." and swallows the KeyboardInterrupt (as when Ctrl-C lands in a weakref callback)."""
    compute = module.teacher_outputs

    def teacher_outputs_then_ctrl_c(*args, **kwargs):
        outputs = compute(*args, **kwargs)

        class Finalized:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10_000):  # Python runs the signal's handler here, inside __del__
                    pass

        Finalized()
        return outputs

    module.teacher_outputs = teacher_outputs_then_ctrl_c


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `install(module)` once the module `name` has been imported."""

    def __init__(self, name, install):
        self.name, self.install = name, install

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.install(module)

        spec.loader.exec_module = exec_module
        return spec


if FAULTS.get("ray_start", "").strip() == "ctrl_c":
    sys.meta_path.insert(0, _AfterImport("ray._private.gc_collect_manager", _ctrl_c_while_ray_starts))
if FAULTS.get("teachers", "").strip() == "swallowed_ctrl_c":
    sys.meta_path.insert(0, _AfterImport("autokd.teacher_outputs", _swallowed_ctrl_c_after_teachers))
if any(key not in ("ray_start", "teachers") for key in FAULTS):
    sys.meta_path.insert(0, _AfterImport("autokd.trial", _install))
