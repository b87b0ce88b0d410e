"""Shared by every benchmark: where results go and what machine they came from.

Each benchmark writes `benchmarks/results/<name>.json` with its figures plus the machine,
library versions and date; `benchmarks/render.py` turns those files into BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def machine() -> dict:
    import optuna
    import ray
    import torch

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "platform": platform.platform(), "date": dt.datetime.now().isoformat(
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
