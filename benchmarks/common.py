"""Shared by every benchmark: where results go and what machine they came from.

Each benchmark writes `benchmarks/results/<name>.json` with its figures plus the machine,
library versions and date; `benchmarks/render.py` turns those files into BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def installed_version(module: str) -> str:
    """A library's version, or "not installed" (a lent GPU machine has torch but neither Ray nor Optuna)."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "python": platform.python_version(), "torch": torch.__version__, "ray": installed_version("ray"),
            "optuna": installed_version("optuna"), "platform": platform.platform(), "date": dt.datetime.now().isoformat(
                timespec="seconds")}


def rerun_command() -> str:
    """How this benchmark was started, to be typed again from the repo root."""
    return " ".join([f"python benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write_result(name: str, figures: dict) -> Path:
    """Write one benchmark's figures (with machine and the command that ran it) atomically; returns the path."""
    command = rerun_command()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"name": name, "command": command, "machine": machine(), **figures}, indent=2))
    temporary.replace(path)
    print(f"wrote {path}")
    return path


class UtilisationSampler:
    """`nvidia-smi` GPU utilisation (%) sampled in a background thread: (seconds since start, value)."""

    def __init__(self, interval_s: float):
        self.interval_s, self.samples = interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.wait(self.interval_s):
            output = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                    capture_output=True, text=True, check=False).stdout.split()
            if output:
                self.samples.append((time.perf_counter() - started, float(output[0])))

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
