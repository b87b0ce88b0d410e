"""Starting Ray for a search: a private local instance, or the cluster the user names.

Without an address autokd always starts its own local instance (`address="local"`): a bare
`ray.init()` would join whatever cluster Ray's temp dir names (after `ray start --head`, or
another job's), where `num_cpus` is refused. A trial sees exactly the accelerators it reserved:
`RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1` makes Ray set CUDA_VISIBLE_DEVICES="" for a trial that
reserved no GPU (Ray's default leaves every GPU of the node visible to it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from typing import Any, Iterator

from autokd.errors import AutokdError
from autokd.spec import StudySpec

# Set before Ray starts: raylets and workers inherit the driver's environment.
RAY_ENVIRONMENT = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a failed trial reports no accuracy
    # Ctrl-C reaches the driver as KeyboardInterrupt: Tune's own handler would end the run
    # quietly and let the search go on to its report (see `search.search`).
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Results live in the Optuna study; Tune's default CSV/JSON/TensorBoard loggers only cost time
    # (orchestration benchmark: wall ratio against in-process Optuna 1.45 -> 1.13 without them).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
}


def init_ray(address: str | None, spec: StudySpec) -> None:
    """Connect to `address`, or start a private local instance sized for the study; one-line AutokdError."""
    import ray

    os.environ.update(RAY_ENVIRONMENT)
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    try:
        with _ctrl_c_held_until_done():
            _start_or_connect(ray, address, spec, kwargs)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = (" (token authentication: put the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                if "auth" in first.lower() or "token" in first.lower() else "")
        where = f"--address {address}: cannot connect to the Ray cluster" if address else \
            "cannot start a local Ray instance"
        raise AutokdError(f"{where}: {first}{hint}") from None


def _start_or_connect(ray, address: str | None, spec: StudySpec, kwargs: dict[str, Any]) -> None:
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A private local cluster: token auth is not needed on loopback and would print warnings.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray takes whole-number totals only; round up what `concurrency` trials would hold at once.
        extra = {k: float(math.ceil(round(v * spec.resources.concurrency, 6)))
                 for k, v in spec.resources.custom.items()}
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(spec.resources.cpus_per_trial)),
                 resources=extra or None, **kwargs)


@contextlib.contextmanager
def _ctrl_c_held_until_done() -> Iterator[None]:
    """Ctrl-C typed while Ray starts takes effect once `ray.init` has returned (a second one exits at once).

    A KeyboardInterrupt inside `ray.init` can land while Ray builds the driver's core worker (it calls
    back into Python there), and shutting that half-built worker down segfaults: measured, Ctrl-C 2.4-2.8 s
    into a local start crashed the driver 4 times in 6, and `autokd search` under a terminal 2 times in 40
    at random moments. Held, the Ctrl-C becomes a KeyboardInterrupt with Ray whole, which shuts down cleanly.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    typed = []

    def hold(signum, frame) -> None:
        if typed:
            os._exit(130)  # a second Ctrl-C does not wait for Ray (its processes share the driver's fate)
        typed.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if typed:
        raise KeyboardInterrupt


def stop_ray() -> None:
    """Disconnect from Ray now, stopping the local instance this process started (a cluster named by an
    address goes on). At interpreter exit Ray's own hook does the same after half a second's sleep."""
    import sys

    ray = sys.modules.get("ray")  # never imported (a search refused early): nothing to stop, and no import
    if ray is not None and ray.is_initialized():
        ray.shutdown()
