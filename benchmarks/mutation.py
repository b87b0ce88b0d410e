"""Mutation testing of the core modules (issue 18): how many deliberate bugs the fast tests catch.

mutmut (configured in pyproject.toml, `[tool.mutmut]`) copies autokd/ into mutants/, makes many
small bugs in the core modules (a `<` for a `<=`, a number off by one, an argument dropped, ...) and
runs, for each, the fast tests that call the mutated function. A mutant is killed when a test fails
(or it times out). The score is killed / (mutants - listed equivalents): an equivalent mutant
changes no behaviour any caller can see, so no test can kill it; each is listed with its reason in
benchmarks/mutation_equivalent.txt and excluded. Every other survivor is a gap in the tests.

    python benchmarks/mutation.py                    # all core modules (`make mutation`)
    python benchmarks/mutation.py --modules pareto stopping --max-children 2
    python benchmarks/mutation.py --summarise-only   # re-read mutants/ without running

Results are incremental: mutmut keeps each mutant's verdict in mutants/ until its function changes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, write_result

CORE = ("losses", "pareto", "distill", "space", "searcher", "evaluation", "export", "stopping")
EQUIVALENTS = REPO / "benchmarks" / "mutation_equivalent.txt"
TARGET_SCORE = 90.0
MUTMUT = [str(Path(sys.executable).with_name("mutmut"))]  # the console script of this interpreter's environment
RESULT_LINE = re.compile(r"^\s+(?P<name>autokd\.(?P<module>\w+)\.\S+): (?P<status>.+)$")
KILLED = ("killed", "timeout")


def read_equivalents(path: Path = EQUIVALENTS) -> dict[str, tuple[str, str]]:
    """{mutant name: (reason, the mutated line it was judged on)} from blocks of

        autokd.pareto.x_hypervolume__mutmut_3
            reason: <why no caller can tell it apart>
            line: <the + line of `mutmut show`, stripped>

    The line pins the judgement to the mutation: when mutmut numbers mutants differently after an
    edit, a name that now shows another line is reported stale and not excluded.
    """
    entries: dict[str, tuple[str, str]] = {}
    name = reason = None
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("reason:"):
            reason = line.removeprefix("reason:").strip()
        elif line.startswith("line:"):
            entries[name] = (reason or "", line.removeprefix("line:").strip())
        else:
            name, reason = line, None
    return entries


def mutated_line(name: str) -> str:
    """The first added line of `mutmut show <name>`, stripped ("" if it shows none)."""
    shown = subprocess.run([*MUTMUT, "show", name], cwd=REPO, capture_output=True, text=True).stdout
    added = [line[1:].strip() for line in shown.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else ""


def statuses() -> dict[str, tuple[str, str]]:
    """{mutant name: (module, status)} for every mutant mutmut knows (`mutmut results --all true`)."""
    listed = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    found = {}
    for line in listed.splitlines():
        match = RESULT_LINE.match(line)
        if match:
            found[match["name"]] = (match["module"], match["status"].strip())
    return found


def summarise(modules: list[str]) -> dict:
    """Score per module and in all, with every surviving mutant (name, status, mutated line)."""
    equivalents = read_equivalents()
    per_module: dict[str, dict] = {}
    survivors, stale, equivalent_used = [], [], []
    for name, (module, status) in sorted(statuses().items()):
        if module not in modules:
            continue
        counts = per_module.setdefault(module, {"mutants": 0, "killed": 0, "equivalent": 0, "surviving": 0,
                                                "not_checked": 0})
        counts["mutants"] += 1
        if status == "not checked":
            counts["not_checked"] += 1
        elif status in KILLED:
            counts["killed"] += 1
            if name in equivalents:
                stale.append({"mutant": name, "why": "listed as equivalent but killed"})
        elif name in equivalents:
            reason, line = equivalents[name]
            shown = mutated_line(name)
            if shown == line:
                counts["equivalent"] += 1
                equivalent_used.append({"mutant": name, "reason": reason})
                continue
            stale.append({"mutant": name, "why": f"listed for `{line}`, now shows `{shown}`"})
            counts["surviving"] += 1
            survivors.append({"mutant": name, "status": status, "line": shown})
        else:
            counts["surviving"] += 1
            survivors.append({"mutant": name, "status": status, "line": mutated_line(name)})
    for counts in per_module.values():
        counts["score_percent"] = _score(counts)
    total = {key: sum(c[key] for c in per_module.values())
             for key in ("mutants", "killed", "equivalent", "surviving", "not_checked")}
    total["score_percent"] = _score(total)
    return {"total": total, "per_module": per_module, "surviving": survivors, "equivalent": equivalent_used,
            "stale_equivalents": stale}


def _score(counts: dict) -> float | None:
    checked = counts["mutants"] - counts["not_checked"] - counts["equivalent"]
    return round(100.0 * counts["killed"] / checked, 2) if checked else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", choices=CORE, default=list(CORE),
                        help="core modules to mutate (default: all); results of others are kept, not counted")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutant workers")
    parser.add_argument("--summarise-only", action="store_true", help="read mutants/ without running mutmut")
    args = parser.parse_args()

    seconds = None
    if not args.summarise_only:
        started = time.perf_counter()
        names = [] if set(args.modules) == set(CORE) else [f"autokd.{m}.*" for m in args.modules]
        subprocess.run([*MUTMUT, "run", "--max-children", str(args.max_children), *names], cwd=REPO, check=True)
        seconds = round(time.perf_counter() - started, 1)
    summary = summarise(args.modules)
    score = summary["total"]["score_percent"]
    left = [m for m in CORE if m not in summary["per_module"] or summary["per_module"][m]["not_checked"]]
    write_result("mutation", {
        "targets": {"total.score_percent": f">= {TARGET_SCORE:g}"},
        "met": {"total.score_percent": score is not None and score >= TARGET_SCORE and not left},
        "note": ("Score = killed / (mutants - equivalents listed in benchmarks/mutation_equivalent.txt); each "
                 "mutant runs only the fast tests that call its function. "
                 + (f"Not (fully) measured yet: {', '.join(left)}." if left else "All core modules measured.")),
        "figures": {"total": summary["total"], "per_module": summary["per_module"], "run_seconds": seconds,
                    "max_children": None if seconds is None else args.max_children,
                    "modules_run": args.modules, "not_measured": left,
                    "surviving_mutants": summary["surviving"], "stale_equivalents": summary["stale_equivalents"]},
        "equivalent_mutants": summary["equivalent"],
    })
    print(f"mutation score {score} % ({summary['total']}); {len(summary['surviving'])} surviving")


if __name__ == "__main__":
    main()
