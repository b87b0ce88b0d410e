"""Every ```python block of README.md runs as written, top to bottom, in a fresh folder.

The folder holds copies of the repository's studies/ and search_spaces/, with one stand-in:
studies/digits.yaml is a tiny study of the same name (two small teachers, 4 trials of 1 epoch),
because the README's `autokd.search("studies/digits.yaml")` would otherwise run the real
30-trial search and train the real teachers (minutes). The snippets' text is run unchanged;
the second snippet runs once more on the "best.yaml" its comment offers instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import autokd
from conftest import REPO, tiny_study

BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[str]:
    return BLOCK.findall((REPO / "README.md").read_text())


def run_python(code: str, folder: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True,
                               timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, f"README snippet failed:\n{code}\n{completed.stdout}\n{completed.stderr}"
    return completed


def test_readme_snippets_compile_and_use_only_public_names():
    blocks = readme_blocks()
    assert len(blocks) == 2  # the "From Python" and "In your own training code" snippets
    for code in blocks:
        compile(code, "README.md", "exec")
        used = set(re.findall(r"\bautokd\.([A-Za-z_]\w*)", code))
        assert used <= set(autokd.__all__), f"README uses non-public names: {sorted(used - set(autokd.__all__))}"


@pytest.mark.slow
def test_readme_snippets_run_as_written(tmp_path):
    shutil.copytree(REPO / "studies", tmp_path / "studies", ignore=shutil.ignore_patterns("*.db", "*.db-journal"))
    shutil.copytree(REPO / "search_spaces", tmp_path / "search_spaces")
    tiny_study(tmp_path / "studies", name="digits", trials=4, epochs=1, cache_dir=".cache/autokd")  # the stand-in
    from_python, own_loop = readme_blocks()

    run_python(from_python, tmp_path)
    assert (tmp_path / "best.yaml").is_file() and (tmp_path / "reports" / "digits" / "index.html").is_file()
    run_folder = next((tmp_path / "runs").iterdir())
    assert {"student.pt", "student.torchscript.pt", "metrics.json"} <= {p.name for p in run_folder.iterdir()}

    for config in ("studies/digits.yaml", "best.yaml"):
        code = own_loop if config == "studies/digits.yaml" else own_loop.replace('"studies/digits.yaml"', '"best.yaml"')
        printed = run_python(code, tmp_path).stdout
        accuracy = float(re.search(r"val accuracy (\S+)", printed).group(1))
        assert 0.15 < accuracy <= 1, printed  # above chance (0.1) after the stand-in's single epoch
