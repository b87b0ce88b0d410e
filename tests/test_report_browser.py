"""The report as a person choosing a student sees it: rendered by headless Chromium at 1400 px.

A script injected into a copy of the page writes what the browser measured (scroll widths, the
knee's commands) into ``<pre id="measure">``; ``--dump-dom`` brings it back. The report itself
never contains a script (`test_report.py::test_user_strings_are_escaped`).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from conftest import run_cli, tiny_study

CHROMIUM = "/usr/bin/chromium"
WIDTH = 1400
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"needs Chromium at {CHROMIUM} (Debian's chromium)")]

MEASURE = """<script>
const box = (id) => document.getElementById(id);
const found = {
  window_width: window.innerWidth,
  page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
  front_table: box("front-table") && [box("front-table").scrollWidth, box("front-table").clientWidth],
  knee_commands: box("knee-commands") && [box("knee-commands").scrollWidth, box("knee-commands").clientWidth],
  export_commands: box("export-commands") && [box("export-commands").scrollWidth, box("export-commands").clientWidth],
  knee_text: box("knee-commands") && box("knee-commands").textContent,
  images: Array.from(document.images).map((image) => image.naturalWidth),
};
const out = document.createElement("pre");
out.id = "measure";
out.textContent = JSON.stringify(found);
document.body.appendChild(out);
</script>"""


def chromium(*flags: str, page: Path, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", f"--window-size={WIDTH},2000", *flags,
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=60)


def measure(folder: Path, scratch: Path) -> tuple[dict, str]:
    """(what the browser measured at 1400 px, the rendered DOM) for the report in `folder`."""
    page = scratch / "measured.html"  # beside the report's own files would be nicer, but it must stay untouched
    page.write_text((folder / "index.html").read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium("--dump-dom", page=page, profile=scratch / "profile-dom").stdout
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, f"the measuring script did not run; chromium printed:\n{dom[-2000:]}"
    return json.loads(html.unescape(found.group(1))), dom


def screenshot(folder: Path, scratch: Path) -> Path:
    shot = scratch / "report.png"
    chromium(f"--screenshot={shot}", page=folder / "index.html", profile=scratch / "profile-shot")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "no PNG screenshot written"
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[1] == WIDTH and pixels[..., :3].std() > 0.05  # the page, not a blank or one-colour frame
    return shot


def check_page_fits(found: dict) -> None:
    """Nothing of the front needs horizontal scrolling at 1400 px: not the table, not a command, not the page."""
    assert found["window_width"] == WIDTH
    for name in ("page", "front_table", "knee_commands", "export_commands"):
        assert found[name] is not None, f"#{name} is missing from the page"
        scroll, client = found[name]
        assert scroll <= client, f"{name} overflows at {WIDTH} px: scrollWidth {scroll} > clientWidth {client}"
    assert found["images"] and min(found["images"]) > 0, "an inlined plot did not load"


def check_knee(found: dict, dom: str, folder: Path, study: Path) -> None:
    """The knee's trial number and its export and train commands are on the rendered page."""
    knee = json.loads((folder / "summary.json").read_text())["knee_trial"]
    assert f"<strong>Knee: trial {knee}</strong>" in dom
    assert found["knee_text"].splitlines() == [f"autokd export {study} --trial {knee} -o trial-{knee}.yaml",
                                               f"autokd train trial-{knee}.yaml"]


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory, ray_head):
    """A small real digits study, searched and reported the way a user does it (baselines off)."""
    from autokd.report import build_report

    folder = tmp_path_factory.mktemp("browser")
    study = tiny_study(folder, cached_teachers=True, trials=6, constraints=["params <= 5000"])
    run_cli("search", study, "--no-report", "--no-progress", env=ray_head, check=True, timeout=600)
    return build_report(str(study), out=folder / "report", baselines=False, log=lambda m: None), study


@pytest.mark.slow
def test_a_person_at_1400_px_sees_the_knee_its_commands_and_the_whole_front_table(digits_report, tmp_path):
    folder, study = digits_report
    found, dom = measure(folder, tmp_path)
    check_page_fits(found)
    check_knee(found, dom, folder, study)
    assert not re.search(r"[0-9a-f]{56}", dom), "a full Ray node id is on the page"
    assert re.search(r"search nodes: [^<]+ \(\d+ trials\)", dom)
    screenshot(folder, tmp_path)


def test_the_synthetic_report_fits_at_1400_px(tmp_path):
    """The same checks on a report of a synthetic study (no search): quick, and in `make test-fast`."""
    from autokd.report import build_report
    from test_report import write_study

    path, _ = write_study(tmp_path)
    folder = build_report(str(path), out=tmp_path / "out", evaluate_test=False, baselines=False, log=lambda m: None)
    found, dom = measure(folder, tmp_path)
    check_page_fits(found)
    check_knee(found, dom, folder, path)
    for trial in pd.read_csv(folder / "pareto.csv")["trial"]:
        assert f"autokd export {path} --trial {trial} -o trial-{trial}.yaml" in dom
    screenshot(folder, tmp_path)
