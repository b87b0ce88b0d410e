"""Import cost of `autokd` next to `torch`, and how fast a bad config is answered (issue 16.7).

Every figure is the median wall time of fresh interpreters (`python -c ...`, started from the
repo root), the arms interleaved run by run so that both see the same machine load; one untimed
run of each arm warms the file cache first. Arms:

    torch            python -c "import torch"
    autokd           python -c "import autokd"            (target: at most 0.3 s more than torch)
    autokd.search    python -c "import autokd.search"     (what the first call of autokd.search pays)
    missing file     autokd search <missing>.yaml         (the CLI as a user types it; target < 1 s)
    bad key          autokd search <digits.yaml + an unknown key>                  (target < 1 s)
    bad space        autokd search <digits.yaml, a space with low > high>          (target < 1 s)

The bad-config arms must exit 2 with `error: ...` naming the problem, or the script stops:
an arm that failed for another reason would time the wrong thing. The modules that a bare
`import autokd` loads among torch, Optuna, Ray, pandas, matplotlib, scipy and numpy are listed.

    python benchmarks/import_time.py            # median of 9 runs per arm (~1 min)
    python benchmarks/import_time.py --quick    # median of 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result

MAX_OVER_TORCH_S = 0.3
MAX_BAD_CONFIG_S = 1.0
HEAVY = ("torch", "optuna", "ray", "pandas", "matplotlib", "scipy", "numpy")


def cli() -> list[str]:
    """The `autokd` console script beside this interpreter (as a user runs it), else its entry point."""
    script = Path(sys.executable).with_name("autokd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from autokd.cli import main; sys.argv[0] = 'autokd'; sys.exit(main())"]


def arms(folder: Path) -> dict[str, tuple[list[str], str | None]]:
    """Arm name -> (command, text its stderr must contain; None: must exit 0)."""
    bad_key = folder / "bad_key.yaml"
    bad_key.write_text((REPO / "studies" / "digits.yaml").read_text() + "\nnot_a_key: 1\n")
    bad_space = folder / "bad_space.yaml"  # checked by the CLI right after the study file, before torch
    (folder / "space.yaml").write_text("params:\n  distill.temperature: {type: float, low: 4, high: 1}\n")
    bad_space.write_text((REPO / "studies" / "digits.yaml").read_text().replace(
        "search_space: ../search_spaces/kd_full.yaml", "search_space: space.yaml"))
    missing = folder / "missing.yaml"
    return {
        "torch": ([sys.executable, "-c", "import torch"], None),
        "autokd": ([sys.executable, "-c", "import autokd"], None),
        "autokd_search_module": ([sys.executable, "-c", "import autokd.search"], None),
        "missing_file": ([*cli(), "search", str(missing)], "file not found"),
        "bad_key": ([*cli(), "search", str(bad_key)], "not_a_key"),
        "bad_space": ([*cli(), "search", str(bad_space)], "low must be <= high"),
    }


def timed_run(name: str, command: list[str], expected_error: str | None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    if expected_error is None and done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    if expected_error is not None and (done.returncode != 2 or expected_error not in done.stderr):
        raise SystemExit(f"{name}: expected exit 2 with {expected_error!r} on stderr, got exit {done.returncode}: "
                         f"{done.stderr.strip()[-500:]}")
    return seconds


def heavy_modules_of_import_autokd() -> list[str]:
    probe = f"import sys, autokd; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="median of 5 runs per arm: a smoke run")
    parser.add_argument("--runs", type=int, default=None, help="fresh interpreters per arm (at least 5)")
    args = parser.parse_args()
    runs = max(5, args.runs or (5 if args.quick else 9))

    with tempfile.TemporaryDirectory(prefix="autokd-import-time-") as tmp:
        commands = arms(Path(tmp))
        for name, (command, expected_error) in commands.items():  # warm-up: file cache, .pyc files
            timed_run(name, command, expected_error)
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for run in range(runs):
            for name, (command, expected_error) in commands.items():
                seconds[name].append(timed_run(name, command, expected_error))
            print(f"run {run + 1}/{runs}: " + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in
                                                        seconds.items()), flush=True)
    median = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
    heavy = heavy_modules_of_import_autokd()

    figures = {
        "torch_s": median["torch"],
        "autokd_s": median["autokd"],
        "autokd_minus_torch_s": round(median["autokd"] - median["torch"], 3),
        "autokd_over_torch": round(median["autokd"] / median["torch"], 3),
        "autokd_search_module_s": median["autokd_search_module"],
        "bad_config_missing_file_s": median["missing_file"],
        "bad_config_bad_key_s": median["bad_key"],
        "bad_config_bad_space_s": median["bad_space"],
        "heavy_modules_after_import_autokd": heavy,
        "runs_s": {name: [round(s, 3) for s in values] for name, values in seconds.items()},
    }
    targets = {"autokd_minus_torch_s": f"<= {MAX_OVER_TORCH_S}", "bad_config_missing_file_s": f"< {MAX_BAD_CONFIG_S}",
               "bad_config_bad_key_s": f"< {MAX_BAD_CONFIG_S}", "bad_config_bad_space_s": f"< {MAX_BAD_CONFIG_S}"}
    met = {"autokd_minus_torch_s": figures["autokd_minus_torch_s"] <= MAX_OVER_TORCH_S,
           "bad_config_missing_file_s": figures["bad_config_missing_file_s"] < MAX_BAD_CONFIG_S,
           "bad_config_bad_key_s": figures["bad_config_bad_key_s"] < MAX_BAD_CONFIG_S,
           "bad_config_bad_space_s": figures["bad_config_bad_space_s"] < MAX_BAD_CONFIG_S}
    note = (f"Median of {runs} fresh interpreters per arm, interleaved. `import autokd` {figures['autokd_s']} s vs "
            f"`import torch` {figures['torch_s']} s: difference {figures['autokd_minus_torch_s']:+.3f} s, ratio "
            f"{figures['autokd_over_torch']} (heavy modules loaded: {', '.join(heavy) or 'none'}). "
            f"`autokd search` answers a missing file in {figures['bad_config_missing_file_s']} s and an unknown key "
            f"in {figures['bad_config_bad_key_s']} s and a bad search space in {figures['bad_config_bad_space_s']} s "
            f"(target < {MAX_BAD_CONFIG_S} s).")
    for key, target in targets.items():
        print(f"{key}: {figures[key]} (target {target}: {'met' if met[key] else 'MISSED'})")
    print(f"autokd_over_torch: {figures['autokd_over_torch']}; heavy modules after `import autokd`: {heavy or 'none'}")
    write_result("import_time", {"quick": args.quick, "figures": figures, "targets": targets, "met": met,
                                 "note": note, "settings": {"runs": runs, "cli": cli()[0]}})


if __name__ == "__main__":
    sys.exit(main())
