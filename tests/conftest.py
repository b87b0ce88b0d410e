"""Shared fixtures: tiny real studies on digits that search in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
AUTOKD = [sys.executable, "-m", "autokd.cli"]

TINY_SPACE = {"params": {
    "student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "student.width": {"type": "int", "low": 4, "high": 64, "log": True, "when": {"student.family": ["mlp"]}},
    "student.channels": {"type": "int", "low": 2, "high": 8, "when": {"student.family": ["cnn"]}},
    "distill.teachers": {"type": "teacher_subset"},
    "distill.kind": {"type": "categorical", "choices": ["kl", "mse", "dkd"]},
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
    "distill.w_ce": {"type": "float", "low": 0.0, "high": 1.0},
    "distill.w_kd": {"type": "float", "low": 0.1, "high": 1.0},
    "schedule.lr": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
}}


def tiny_study(folder: Path, name: str = "tiny", trials: int = 6, epochs: int = 2, **overrides) -> Path:
    """A real study: digits, two tiny teachers, a small space; each trial takes well under a second."""
    document = {
        "name": name,
        "data": {"name": "digits", "val_fraction": 0.15},
        "teachers": [
            {"name": "t-mlp", "arch": {"family": "mlp", "depth": 1, "width": 48}, "schedule": {"epochs": 4}},
            {"name": "t-cnn", "arch": {"family": "cnn", "stages": 1, "channels": 8, "head_width": 0},
             "schedule": {"epochs": 4}},
        ],
        "student": {"family": "mlp", "depth": 1, "width": 16},
        "schedule": {"epochs": epochs, "batch_size": 64},
        "search_space": TINY_SPACE,
        "budget": {"trials": trials},
        "cache_dir": str(folder / "cache"),
        **overrides,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_cli(*args, env: dict | None = None, timeout: float = 300, check: bool = False):
    """Run `autokd ARGS` the way a user types it; returns the CompletedProcess."""
    completed = subprocess.run([*AUTOKD, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})}, cwd=REPO)
    if check and completed.returncode != 0:
        raise AssertionError(f"autokd {' '.join(map(str, args))} failed ({completed.returncode}):\n"
                             f"{completed.stdout}\n{completed.stderr}")
    return completed


@pytest.fixture
def study_file(tmp_path):
    return tiny_study(tmp_path)
