"""The CLI as a user types it: budget flags, `show` (JSON, narrow terminals), `studies`, first-run teachers."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import threading

import optuna
import pytest

from conftest import AUTOKD, REPO, database_content, run_cli, tiny_study

States = optuna.trial.TrialState


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_head):
    """A study whose YAML asks for 6 trials, searched with --trials 2 --concurrency 1 --timeout 600
    on the session's Ray head."""
    study_file = tiny_study(tmp_path_factory.mktemp("searched"), cached_teachers=True, trials=6, epochs=1)
    completed = run_cli("search", study_file, "--trials", 2, "--concurrency", 1, "--timeout", 600, "--no-report",
                        "--no-progress", env=ray_head, check=True)
    return study_file, completed


def _study(study_file, name="tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_file.parent / (name + '.db')}")


@pytest.mark.slow
def test_search_flags_override_the_budget_and_the_end_says_what_to_do_next(searched):
    study_file, completed = searched
    study = _study(study_file)
    assert len(study.get_trials()) == 2 and all(t.state == States.COMPLETE for t in study.get_trials())
    stored = study.user_attrs["study_spec"]
    assert (stored["budget"]["trials"], stored["resources"]["concurrency"], stored["budget"]["time_limit_s"]) \
        == (2, 1, 600)
    lines = completed.stdout.splitlines()
    assert any(line.startswith("total time ") for line in lines), completed.stdout
    for step in (f"autokd report {study_file}", f"autokd export {study_file} --knee -o best.yaml",
                 "autokd train best.yaml"):
        assert f"  {step}" in lines[lines.index("next:"):], completed.stdout


BAD_FLAGS = [("--trials", "0"), ("--trials", "abc"), ("--concurrency", "-1"), ("--timeout", "0")]


def _one_line_naming(completed, flag: str) -> None:
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.count("\n") == 1 and flag in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("flag, value", BAD_FLAGS)
def test_a_bad_budget_flag_is_one_line_and_a_new_study_writes_nothing(tmp_path, flag, value):
    study_file = tiny_study(tmp_path)
    completed = run_cli("search", study_file, flag, value, "--no-progress")
    _one_line_naming(completed, flag)
    assert sorted(p.name for p in tmp_path.iterdir()) == [study_file.name]  # no storage, no cache


@pytest.mark.slow
@pytest.mark.parametrize("flag, value", BAD_FLAGS[:1])
def test_a_bad_budget_flag_leaves_an_existing_storage_byte_identical(searched, flag, value):
    study_file, _ = searched
    storage = study_file.parent / "tiny.db"
    before = storage.read_bytes()
    completed = run_cli("search", study_file, "--resume", flag, value, "--no-progress")
    _one_line_naming(completed, flag)
    assert storage.read_bytes() == before


@pytest.mark.slow
def test_show_json_prints_the_front_as_records(searched):
    study_file, _ = searched
    completed = run_cli("show", study_file, "--json", check=True)
    records = json.loads(completed.stdout)
    front = {t.number: t.values for t in _study(study_file).best_trials}
    assert {r["trial"] for r in records} == set(front) and len(records) == len(front)
    for record in records:
        assert [record["val_accuracy"], record["params"]] == front[record["trial"]]
        assert isinstance(record["params"], int) and record["config"]["student"]["family"] in ("mlp", "cnn")


@pytest.mark.slow
def test_show_fits_a_narrow_terminal_and_uses_a_wide_one(searched):
    study_file, _ = searched
    narrow = run_cli("show", study_file, env={"COLUMNS": "80"}, check=True).stdout
    wide = run_cli("show", study_file, env={"COLUMNS": "200"}, check=True).stdout
    assert max(map(len, narrow.splitlines())) <= 80, narrow
    assert "trial" in narrow and "params" in narrow and "…" not in narrow, narrow  # dropped, not truncated
    assert "distill.temperature" in wide and "…" not in wide, wide
    numbers = {t.number for t in _study(study_file).best_trials}
    rows = [line for line in narrow.splitlines() if line.startswith("│")]
    assert {int(row.split("│")[1]) for row in rows} == numbers


@pytest.mark.slow
def test_studies_lists_each_study_with_counts_and_writes_nothing(searched, tmp_path):
    study_file, _ = searched
    copy = tmp_path / "shared.db"
    shutil.copy(study_file.parent / "tiny.db", copy)
    url = f"sqlite:///{copy}"
    other = optuna.create_study(study_name="other", storage=url, directions=["maximize", "minimize"])
    other.tell(other.ask(), state=States.FAIL)
    other.tell(other.ask(), state=States.PRUNED)
    before = database_content(copy)

    listed = run_cli("studies", "--storage", url, check=True).stdout
    assert database_content(copy) == before
    rows = {line.split()[0]: line.split()[1:] for line in listed.splitlines()[2:]}
    best = max(t.values[0] for t in _study(study_file).get_trials() if t.state == States.COMPLETE)
    assert rows == {"tiny": ["2", "2", "0", "0", "0", f"{best:.4f}"], "other": ["2", "0", "1", "1", "0", "-"]}

    by_file = run_cli("studies", study_file, check=True).stdout
    assert by_file.splitlines()[2].split()[:3] == ["tiny", "2", "2"]


@pytest.mark.slow
def test_train_with_one_seed_prints_no_spread(searched, tmp_path):
    study_file, _ = searched  # its teachers are cached
    completed = run_cli("train", study_file, "--epochs", 1, "--seeds", 1, "-o", tmp_path / "run", check=True)
    assert "test accuracy 0." in completed.stdout and "±" not in completed.stdout, completed.stdout


def test_first_run_says_teachers_train_once_with_one_line_each(tmp_path):
    study_file = tiny_study(tmp_path)
    first = run_cli("teachers", study_file, check=True).stdout.splitlines()
    assert first[0] == f"training 2 teachers once; they are cached in {tmp_path / 'cache' / 'teachers'} for later runs"
    assert [line.split(":")[0] for line in first if line.startswith("teacher ")] == ["teacher t-mlp", "teacher t-cnn"]
    assert not [line for line in first if "epoch 1/" in line]
    again = run_cli("teachers", study_file, check=True).stdout
    assert "training" not in again and "teacher t-" not in again


def test_teachers_show_one_progress_bar_each_on_a_terminal(tmp_path):
    study_file = tiny_study(tmp_path)
    controller, terminal = pty.openpty()
    process = subprocess.Popen([*AUTOKD, "teachers", str(study_file)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=terminal, text=True, env={**os.environ, "COLUMNS": "100"})
    os.close(terminal)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(controller, chunks), daemon=True)
    reader.start()
    stdout = process.stdout.read()
    assert process.wait(timeout=300) == 0
    reader.join(timeout=10)
    os.close(controller)
    stderr = b"".join(chunks).decode(errors="replace")
    assert "teacher t-mlp" in stderr and "teacher t-cnn" in stderr and "4/4" in stderr, stderr[-2000:]
    assert stdout.startswith("training 2 teachers once")
    assert not [line for line in stdout.splitlines() if line.startswith("teacher ")], stdout  # the bars say it


def _drain(fd: int, chunks: list[bytes]) -> None:
    """Read a pty until the other side closes it (Linux then raises EIO)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        chunks.append(chunk)
