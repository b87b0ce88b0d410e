"""Every benchmark script still runs against the package: it imports, and `--help` exits 0.

A benchmark is started as `python benchmarks/x.py`, so its own folder is first on sys.path (it
imports `common` and its siblings by their bare names). The benchmarks themselves take minutes
to hours and never run here; these checks catch a refactor that renames or moves something a
benchmark imports, which nothing else would notice until the next benchmark run.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
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


# Runs in a child Python: each script as `python benchmarks/x.py --help` would run it (as __main__, its
# folder first on sys.path), one after another, so torch is imported once, not once a script.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, sys.argv[1])
answers = {}
for path in sys.argv[2:]:
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    answers[path] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def help_runs() -> dict[str, subprocess.CompletedProcess]:
    """`python benchmarks/x.py --help` for every script that parses its arguments."""
    paths = [str(BENCHMARKS / f"{name}.py") for name in NAMES if parses_arguments(name)]
    completed = subprocess.run([sys.executable, "-c", HELP_RUNNER, str(BENCHMARKS), *paths], cwd=REPO,
                               capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    assert completed.returncode == 0, f"the --help runner failed:\n{completed.stderr[-4000:]}"
    answers = json.loads(completed.stdout.splitlines()[-1])
    return {Path(path).stem: subprocess.CompletedProcess([path, "--help"], *answer)
            for path, answer in answers.items()}


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_help_exits_0(name, help_runs):
    assert parses_arguments(name), (f"benchmarks/{name}.py runs when started but parses no arguments: "
                                    "`--help` would start it (give it an argparse parser)")
    completed = help_runs[name]
    assert completed.returncode == 0, f"benchmarks/{name}.py --help exited {completed.returncode}:\n" \
                                      f"{completed.stdout[-2000:]}{completed.stderr[-4000:]}"
    if "ArgumentParser" in (BENCHMARKS / f"{name}.py").read_text():
        assert "usage:" in completed.stdout
