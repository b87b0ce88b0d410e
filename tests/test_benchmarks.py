"""Every benchmark script still runs against the package: it imports, and `--help` exits 0.

A benchmark is started as `python benchmarks/x.py`, so its own folder is first on sys.path (it
imports `common` and its siblings by their bare names). The benchmarks themselves take minutes
to hours and never run here; these checks catch a refactor that renames or moves something a
benchmark imports, which nothing else would notice until the next benchmark run.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
NAMES = sorted(path.stem for path in BENCHMARKS.glob("*.py"))
HELP_TIMEOUT_S = 300


def test_benchmarks_are_found():
    assert {"common", "render", "run_all", "search_quality"} <= set(NAMES)


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    """sys.path as `python benchmarks/x.py` has it; the modules loaded from benchmarks/ are forgotten after."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # undone after the test, with what `common` adds
    yield
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or ".").parent == BENCHMARKS:
            del sys.modules[name]


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_imports(name, benchmarks_on_path):
    module = importlib.import_module(name)
    assert Path(module.__file__).parent == BENCHMARKS


def parses_arguments(name: str) -> bool:
    """A script that runs something when started must parse its arguments: `--help` may not start it."""
    source = (BENCHMARKS / f"{name}.py").read_text()
    return '__name__ == "__main__"' not in source or "ArgumentParser" in source


def help_run(name: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(error.cmd, -1, "", f"no answer within {HELP_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def help_runs() -> dict[str, subprocess.CompletedProcess]:
    """`python benchmarks/x.py --help` for every script that parses its arguments, a few at a time
    (each imports torch: seconds apiece)."""
    names = [name for name in NAMES if parses_arguments(name)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(names, pool.map(help_run, names)))


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_help_exits_0(name, help_runs):
    assert parses_arguments(name), (f"benchmarks/{name}.py runs when started but parses no arguments: "
                                    "`--help` would start it (give it an argparse parser)")
    completed = help_runs[name]
    assert completed.returncode == 0, f"benchmarks/{name}.py --help exited {completed.returncode}:\n" \
                                      f"{completed.stdout[-2000:]}{completed.stderr[-4000:]}"
    if "ArgumentParser" in (BENCHMARKS / f"{name}.py").read_text():
        assert "usage:" in completed.stdout
