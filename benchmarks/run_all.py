"""Run every benchmark at its default (full) settings, one after the other, then render BENCHMARKS.md.

    python benchmarks/run_all.py            # everything (about three hours on 2 cores)
    python benchmarks/run_all.py --quick    # smoke runs of every script

The scripts run in sequence, never side by side: timing ratios need a quiet machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# production_train searches its Fashion-MNIST bench study (fashion_study.py) when it does not exist yet.
SCRIPTS = ["import_time.py", "report_speed.py", "trial_cost.py", "packing.py", "orchestration.py",
           "orchestration.py --trials 120", "orchestration.py --workload short",
           "orchestration.py --workload short --storage journal",
           "orchestration_profile.py", "storage_writes.py", "study_fetch.py",
           "search_quality.py", "early_stopping.py", "stopping_replay.py", "distillation_gain.py", "schedule_length.py",
           "production_train.py", "gpu_sharing.py", "int8_front.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs")
    args = parser.parse_args()
    failed = []
    for script in SCRIPTS:
        name, *script_args = script.split()
        command = [sys.executable, str(HERE / name), *script_args, *(["--quick"] if args.quick else [])]
        print(f"== {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(script)
    subprocess.run([sys.executable, str(HERE / "render.py")], cwd=HERE.parent, check=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
