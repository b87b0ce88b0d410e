"""`autokd search` as a user runs it in a terminal (issue 13, items 1-4).

- In a real terminal (a pseudo-terminal) the search draws its progress bar and completes:
  the bar once travelled with Tune's pickled state and crashed the search ("cannot pickle
  '_thread.RLock' object").
- Ctrl-C (typed into the terminal) stops the search with exit 130 and one line saying how far
  it got and how to go on; no report is written, no trial is left RUNNING, and `--resume`
  completes the budget without training anything twice.
- Without --address the search starts its own Ray instance even when Ray's temp dir names
  a cluster that is gone (a bare `ray.init` would try to join it and refuse `num_cpus`).
- A trial that reserved no GPU sees none: Ray sets CUDA_VISIBLE_DEVICES="" for it.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest

from autokd.results import INTERRUPTED
from conftest import AUTOKD, REPO, load_tiny, run_cli, tiny_study, trials_or_empty, with_faults

pytestmark = pytest.mark.serial  # keystrokes and Ctrl-C timed against a running search

States = optuna.trial.TrialState
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """`autokd ARGS` with a pseudo-terminal as its controlling terminal, as typed in a shell.

    stdin, stdout and stderr are the terminal; writing b"\\x03" is Ctrl-C (the terminal sends
    SIGINT to the foreground process group: the driver and the Ray processes it started).
    """

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None):
        extra = dict(env or {})
        path = os.pathsep.join(p for p in (extra.pop("PYTHONPATH", None), str(REPO)) if p)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "PYTHONPATH": path, **extra}
        self.output = b""
        self.code: int | None = None
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                # As a shell starts a foreground job: Ctrl-C's signal neither ignored nor blocked, whatever
                # the test process inherited or its threads did (both survive exec, and Python installs no
                # KeyboardInterrupt for an ignored SIGINT).
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.chdir(cwd)
                os.execve(sys.executable, [*AUTOKD, *args], env)
            finally:
                os._exit(127)

    @property
    def text(self) -> str:
        return ANSI.sub("", self.output.decode(errors="replace")).replace("\r\n", "\n")

    def pump(self, until: Callable[[], bool] = lambda: False, timeout: float = 300) -> bool:
        """Read the terminal until `until()` holds (True) or the program exits (False)."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            if until():
                return True
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"no exit or moment in {timeout} s:\n{self.text[-3000:]}")
            self._read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        while self._read(0.2):  # what it wrote just before exiting
            pass
        return False

    def wait(self, timeout: float = 300) -> int:
        self.pump(timeout=timeout)
        return self.code

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def close(self) -> None:
        """Kill what is left of the session (the driver's process group) and close the terminal."""
        if self.fd < 0:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.code is None:
            self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        os.close(self.fd)
        self.fd = -1

    def _read(self, seconds: float) -> bool:
        if not select.select([self.fd], [], [], seconds)[0]:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # Linux: EIO once nothing holds the terminal open
            return False
        self.output += chunk
        return bool(chunk)


def _one_done_one_running(folder: Path) -> bool:
    states = [t.state for t in trials_or_empty(folder)]
    return States.COMPLETE in states and States.RUNNING in states


def _trained(trials: list[optuna.trial.FrozenTrial]) -> list[tuple]:
    """The parameters of every trial that really trained (an interrupted one has no train_seconds)."""
    return [tuple(sorted(t.params.items())) for t in trials
            if t.state in (States.COMPLETE, States.FAIL) and "train_seconds" in t.user_attrs]


# ---------------------------------------------------------------------------------------------
# 1. A real terminal


@pytest.mark.slow
def test_search_in_a_terminal_draws_its_bar_and_completes(tmp_path):
    tiny_study(tmp_path, cached_teachers=True, trials=2, epochs=1)
    session = Terminal("search", "tiny.yaml", "--no-report", cwd=tmp_path)
    try:
        code = session.wait()
    finally:
        session.close()
    text = session.text
    assert code == 0, text[-3000:]
    assert "Traceback" not in text and "pickle" not in text, text[-3000:]
    assert re.search(r"tiny .*2/2", text), f"no progress bar drawn on the terminal:\n{text[-3000:]}"
    trials = load_tiny(tmp_path).get_trials()
    assert [t.state for t in trials] == [States.COMPLETE] * 2


# ---------------------------------------------------------------------------------------------
# 2. Ctrl-C


# Room for Ctrl-C to land before the last trial ends on a loaded machine (trials report once, at their end,
# and take about a second here); a search interrupted early trains no more than with a smaller budget.
BUDGET = 8


# The default SQLite file, and the journal file README recommends for many short trials.
@pytest.fixture(scope="module", params=[None, "tiny.log"], ids=["sqlite", "journal"])
def interrupted(request, tmp_path_factory):
    """A search typed in a terminal, Ctrl-C typed once a trial has finished; what it printed and left."""
    folder = tmp_path_factory.mktemp("interrupted")
    # One trial at a time, each a few seconds: Ctrl-C lands while the next one trains.
    tiny_study(folder, cached_teachers=True, trials=BUDGET, epochs=12, resources={"concurrency": 1},
               **({"storage": request.param} if request.param else {}))
    session = Terminal("search", "tiny.yaml", cwd=folder)  # with its report, were it to finish
    try:
        assert session.pump(until=lambda: _one_done_one_running(folder)), \
            f"the search ended before Ctrl-C:\n{session.text[-3000:]}"
        session.type(b"\x03")
        code = session.wait(timeout=120)
    finally:
        session.close()
    trials = load_tiny(folder).get_trials()
    assert (folder / "tiny.log").is_file() == bool(request.param)  # the study is where the test meant it to be
    assert sum(t.state == States.COMPLETE for t in trials) < BUDGET, \
        f"Ctrl-C came after the last trial: the test exercises nothing (exit {code}):\n{session.text[-3000:]}"
    return {"folder": folder, "code": code, "text": session.text, "trials": trials}


@pytest.mark.slow
def test_ctrl_c_exits_130_leaves_no_trial_running_and_writes_no_report(interrupted):
    text = interrupted["text"]
    assert interrupted["code"] == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    states = {t.number: (t.state.name, t.user_attrs.get("failure_reason")) for t in interrupted["trials"]}
    assert States.RUNNING not in [t.state for t in interrupted["trials"]], states
    # The trial Ctrl-C cut is failed as interrupted (the budget does not count it) and re-queued.
    cut = [t for t in interrupted["trials"] if t.state == States.FAIL]
    queued = [t for t in interrupted["trials"] if t.state == States.WAITING]
    assert cut and all(t.user_attrs.get("failure_reason") == INTERRUPTED for t in cut), states
    assert sorted(t.user_attrs.get("retry_of") for t in queued) == [t.number for t in cut], states
    queued.sort(key=lambda t: t.user_attrs["retry_of"])
    assert [q.system_attrs.get("fixed_params") for q in queued] == \
        [{**t.system_attrs.get("fixed_params", {}), **t.params} for t in cut]  # Optuna's enqueue
    assert not (interrupted["folder"] / "reports").exists(), "an interrupted search wrote its report"


@pytest.mark.slow
def test_ctrl_c_says_how_far_the_search_got_and_how_to_go_on(interrupted):
    done = sum(t.state == States.COMPLETE for t in interrupted["trials"])
    line = f"interrupted: {done}/{BUDGET} trials done — continue with: autokd search tiny.yaml --resume"
    assert line in interrupted["text"].splitlines(), interrupted["text"][-3000:]


@pytest.mark.slow
def test_resume_after_ctrl_c_completes_the_budget_and_trains_nothing_twice(interrupted):
    folder = interrupted["folder"]
    before = {t.number: tuple(t.values) for t in interrupted["trials"] if t.state == States.COMPLETE}
    cut = [t for t in interrupted["trials"] if t.state == States.FAIL]
    resumed = subprocess.run([*AUTOKD, "search", "tiny.yaml", "--resume", "--no-report", "--no-progress"],
                             cwd=folder, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = load_tiny(folder).get_trials()
    complete = {t.number: tuple(t.values) for t in trials if t.state == States.COMPLETE}
    assert len(complete) == BUDGET, {t.number: t.state.name for t in trials}
    assert all(complete[n] == values for n, values in before.items()), "a finished trial changed on resume"
    assert not [t.number for t in trials if t.state in (States.RUNNING, States.WAITING)]
    trained = _trained(trials)
    assert len(trained) == len(set(trained)), f"a configuration trained twice: {trained}"
    # A trial cut while being asked has only some parameters: its retry keeps them and draws the rest.
    retries = {t.user_attrs.get("retry_of"): t for t in trials if t.state == States.COMPLETE}
    assert all(t.number in retries and retries[t.number].params.items() >= t.params.items() for t in cut), \
        f"a trial cut by Ctrl-C was not run again on resume: cut {[(t.number, t.params) for t in cut]}, " \
        f"retries {[(n, t.number, t.params) for n, t in retries.items() if n is not None]}"


# ---------------------------------------------------------------------------------------------
# 3. A stray Ray cluster named in Ray's temp dir


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_exits_130_without_a_crash_and_writes_nothing(tmp_path):
    """Ctrl-C typed while Ray builds the driver's core worker, which calls back into Python: a KeyboardInterrupt
    there left a half-built worker whose shutdown segfaulted (exit -11, no message; 2 in 40 Ctrl-C at random
    moments of a search). Ray's start-up holds the Ctrl-C until it is done, then the search stops as usual."""
    study_file = tiny_study(tmp_path, cached_teachers=True)
    terminal = Terminal("search", study_file.name, cwd=tmp_path,
                        env={**with_faults("ray_start:ctrl_c"), "AUTOKD_FAULT_DIR": str(tmp_path)})
    try:
        code = terminal.wait(timeout=120)
    finally:
        terminal.close()
    text = terminal.text
    assert (tmp_path / "ctrl_c-typed").exists()  # the Ctrl-C was typed inside Ray's start-up
    assert code == 130, text[-3000:]
    assert "interrupted before the search began: nothing was written" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "tiny.db").exists()  # Ray starts before the study's storage is written


@pytest.mark.slow
def test_a_ctrl_c_that_python_swallows_in_a_finalizer_still_stops_the_search(tmp_path):
    """A KeyboardInterrupt raised inside a finalizer is printed as "Exception ignored" and lost: the search ran
    on to its end (seen once in 40 Ctrl-C at random moments). The search records Ctrl-C and raises it again."""
    tiny_study(tmp_path, cached_teachers=True)
    completed = run_cli("search", "tiny.yaml", "--no-progress", cwd=tmp_path,
                        env=with_faults("teachers:swallowed_ctrl_c"))
    assert "Exception ignored in" in completed.stderr  # Python did swallow the KeyboardInterrupt
    assert completed.returncode == 130, completed.stdout + completed.stderr
    assert "interrupted: 0/6 trials done — continue with: autokd search tiny.yaml --resume" in completed.stderr
    assert [t.state.name for t in load_tiny(tmp_path).get_trials()] == []  # stopped before any trial


@pytest.mark.slow
@pytest.mark.serial
def test_ctrl_c_while_teachers_train_says_how_to_go_on_and_the_resume_completes(tmp_path):
    """The study exists once teachers train (after Ray's start): Ctrl-C there names the resume, as later on
    (typer turned it into a silent exit 130, and a plain rerun was then refused for the stored study)."""
    tiny_study(tmp_path)
    terminal = Terminal("search", "tiny.yaml", cwd=tmp_path)
    try:
        assert terminal.pump(until=lambda: "training 2 teachers" in terminal.text)
        terminal.type(b"\x03")
        code = terminal.wait(timeout=120)
    finally:
        terminal.close()
    text = terminal.text
    assert code == 130, text[-3000:]
    assert "interrupted: 0/6 trials done — continue with: autokd search tiny.yaml --resume" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    run_cli("search", "tiny.yaml", "--resume", "--no-report", "--no-progress", cwd=tmp_path, check=True)
    assert sorted(t.state.name for t in load_tiny(tmp_path).get_trials()) == ["COMPLETE"] * 6


@pytest.fixture
def ray_tmpdir():
    """A private Ray temp dir (short: Ray's socket paths are limited), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_search_without_address_starts_its_own_ray_when_the_temp_dir_names_a_dead_cluster(tmp_path, ray_tmpdir):
    # What `ray start --head` leaves behind; that cluster is gone (nothing listens on port 1).
    # A bare `ray.init(num_cpus=...)` reads this file and fails: "When connecting to an existing
    # cluster, num_cpus and num_gpus must not be provided".
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=2, epochs=1)
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    completed = subprocess.run([*AUTOKD, "search", str(study_file), "--no-report", "--no-progress"],
                               cwd=REPO, capture_output=True, text=True, timeout=300,
                               env={**env, "RAY_TMPDIR": str(ray_tmpdir)})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert [t.state for t in load_tiny(tmp_path).get_trials()] == [States.COMPLETE] * 2
    sessions = [p for p in (ray_tmpdir / "ray").glob("session_*") if p.name != "session_latest"]
    assert sessions, "the search's Ray instance did not live in the private temp dir"


# ---------------------------------------------------------------------------------------------
# 4. Devices a trial sees

SEARCH_AND_PRINT = textwrap.dedent("""
    import sys
    import autokd.ray_cluster
    from autokd.search import search
    autokd.ray_cluster.RAY_ENVIRONMENT["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = sys.argv[2]
    result = search(sys.argv[1], progress=False, log=lambda line: None)
    print(repr([t.user_attrs.get("visible_devices") for t in result.study.get_trials()]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("override, seen", [("1", ""),  # as autokd starts Ray
                                            ("0", "0")])  # Ray's default: the driver's GPUs stay visible
def test_a_trial_that_reserved_no_gpu_sees_none(tmp_path, override, seen):
    study_file = tiny_study(tmp_path, cached_teachers=True, trials=1, epochs=1)
    # The driver sees a GPU (on this CPU machine none is there: Ray counts 0 and the trial reserves 0).
    completed = subprocess.run([sys.executable, "-c", SEARCH_AND_PRINT, str(study_file), override], cwd=REPO,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.splitlines()[-1] == repr([seen]), completed.stdout
    assert load_tiny(tmp_path).get_trials()[0].user_attrs["visible_devices"] == seen
