"""Turn benchmarks/results/*.json into BENCHMARKS.md and the README's headline table.

Nothing here measures anything: every number comes from a result file that a script in
benchmarks/ wrote, with its command and the machine it ran on.

    python benchmarks/render.py
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from common import REPO, RESULTS

# (result file stem, title, the issue it answers), in reading order.
SECTIONS = [
    ("orchestration", "Orchestration overhead: autokd search (Ray Tune) vs in-process Optuna", "issue 6.1"),
    ("orchestration_120trials", "Orchestration overhead with 120 of the standard trials: each worker's start "
     "amortised", "issue 17.1"),
    ("orchestration_short", "Orchestration overhead with 200 trials of ~0.3 s: the fixed cost per trial",
     "issue 17.1"),
    ("orchestration_short_journal", "Orchestration overhead with 200 trials of ~0.3 s, the study in a journal file",
     "issue 17.1"),
    ("orchestration_profile", "Where the search driver's time goes per trial: a cProfile on short trials",
     "issue 17.1"),
    ("storage_writes", "One trial's bookkeeping in the study's storage: SQLite, in one transaction, journal file",
     "issue 17.1"),
    ("trial_cost", "Trial cost vs a bare PyTorch loop; cached vs online teachers", "issue 6.2"),
    ("study_fetch", "What a trial pays to receive the study's data from Ray's object store", "issue 17.1"),
    ("packing", "Packed trials: 8 configs of one MLP student as one batched model vs one by one", "issue 17.2"),
    ("packing_gpu", "Packed trials on a GPU: 8 and 64 configs of one MLP student as one batched model vs one by one",
     "issue 17.2"),
    ("search_quality", "Search quality: hypervolume of TPE vs random vs NSGA-II, and of the two-level search",
     "issue 6.3, issue 12"),
    ("search_quality_fashion_mnist", "Search quality on Fashion-MNIST alone (a run of that dataset only)",
     "issue 6.3, issue 12"),
    ("distillation_gain", "Distillation gain on Fashion-MNIST: two-level vs flat search, each against CE-only and "
     "vanilla KD on paired seeds", "issue 12"),
    ("distillation_gain_30t_l1_0.4", "Distillation gain, the smaller run (30 two-level trials, 40 % level 1)",
     "issue 12"),
    ("distillation_gain_60t_l1_0.3_l2e15", "Distillation gain with level 2 at the production length (60 trials, "
     "30 % level 1, level-2 trials of 15 epochs)", "issue 12"),
    ("distillation_gain_40t_l1_0.3_l2e15", "Distillation gain with level 2 at the production length, the smaller run "
     "(40 trials, 30 % level 1, level-2 trials of 15 epochs)", "issue 12"),
    ("distillation_gain_60t_l1_0.3_l2e15_confirm", "Distillation gain with the choices confirmed on fresh seeds "
     "(search.confirm; 60 trials, 30 % level 1, level-2 trials of 15 epochs)", "issue 12"),
    ("distillation_gain_60t_l1_0.3_l2e30_confirm_e30", "Distillation gain with the patient schedule: level 2 and "
     "production at 30 epochs (60 trials, 30 % level 1, confirmed on fresh seeds)", "issue 12"),
    ("schedule_length", "Distillation's gain over CE-only at 15 and 30 epochs: fixed KD configs, paired seeds (val)",
     "issue 12"),
    ("unlabeled_gain", "Unlabeled data on Fashion-MNIST: KD through the unlabeled pool vs CE on the labeled part",
     "issue 15.3"),
    ("attention_transfer", "Attention transfer on/off for CNN students at equal epochs, paired seeds", "issue 15.4"),
    ("int8_front", "int8 students: the front after quantisation (int8 bytes) against the fp32 front", "issue 15.5"),
    ("gpu_sharing", "Students sharing one GPU through fractional resources", "issue 6.5"),
    ("early_stopping", "Pareto-aware early stopping vs none vs stock ASHA at equal compute", "issue 8"),
    ("early_stopping_fashion_36", "Pareto-aware early stopping at a larger Fashion-MNIST budget (36 trials)",
     "issue 8"),
    ("stopping_replay", "Early-stopping rules replayed on recorded learning curves, with an oracle bound", "issue 8"),
    ("production_train", "Production training of exported configs", "issue 5"),
    ("report_speed", "Report build time for 1,000 trials", "issue 4"),
    ("import_time", "Import time of autokd vs torch; how fast a bad config is answered", "issue 16.7"),
    ("mutation", "Mutation testing of the core modules: how many deliberate bugs the fast tests catch", "issue 18"),
]
README_START, README_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
LONG_LIST = 8  # lists longer than this (curves) stay in the JSON file


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested figures as (dotted.key, scalar or short list) rows; long curves are left out."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and len(value) > LONG_LIST:
        return []
    return [(prefix, value)]


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def machine_line(machine: dict) -> str:
    gpu = machine.get("gpu") or "no GPU"
    return (f"{machine.get('cpu')} ({machine.get('cores')} cores), {gpu}; Python {machine.get('python')}, "
            f"torch {machine.get('torch')}, Ray {machine.get('ray')}, Optuna {machine.get('optuna')}; "
            f"{machine.get('date')}")


def lookup(figures: dict, key: str) -> Any:
    """figures[key], or the value at a dotted path, or None."""
    node: Any = figures
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def met_cell(met: dict, key: str) -> str:
    """Whether a target was met; per dataset when a benchmark reports it so."""
    if key in met:
        return cell(met[key])
    nested = {name: value[key] for name, value in met.items() if isinstance(value, dict) and key in value}
    return ", ".join(f"{name}: {cell(value)}" for name, value in nested.items()) if nested else "—"


def measured_cell(figures: dict, key: str) -> str:
    measured = lookup(figures, key)
    structured = isinstance(measured, dict) or (isinstance(measured, list) and
                                                any(isinstance(v, (dict, list)) for v in measured))
    return "see BENCHMARKS.md" if measured is None or structured else cell(measured)


def section(stem: str, title: str, issue: str, result: dict) -> str:
    lines = [f"## {title}", "", f"*{issue}* — `{result.get('command')}`", "",
             f"Machine: {machine_line(result.get('machine', {}))}", ""]
    if result.get("quick"):
        lines += ["> **Smoke run (`--quick`)**: small settings; not the full benchmark.", ""]
    targets, met = result.get("targets", {}), result.get("met", {})
    if targets:
        lines += ["| target | measured | met |", "|---|---|---|"]
        for key, target in targets.items():
            shown = measured_cell(result.get("figures", {}), key).replace("see BENCHMARKS.md", "see below")
            lines.append(f"| `{key}` {cell(target)} | {shown} | {met_cell(met, key)} |")
        lines.append("")
    if result.get("note"):
        lines += [result["note"], ""]
    lines += record_tables(result.get("figures", {}))
    rows = flatten(result.get("figures", {}))
    if rows:
        lines += ["<details><summary>All figures</summary>", "", "| figure | value |", "|---|---|"]
        lines += [f"| `{key}` | {cell(value)} |" for key, value in rows]
        lines += ["", "</details>", ""]
    lines += [f"Raw: [`benchmarks/results/{stem}.json`](benchmarks/results/{stem}.json)", ""]
    return "\n".join(lines)


def record_tables(figures: dict, path: str = "") -> list[str]:
    """Lists of records (e.g. one row per front point) as tables of their scalar and short-list fields."""
    lines = []
    for key, value in figures.items():
        name = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            lines += record_tables(value, name)
        elif isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            columns = [column for column, cell_value in value[0].items()
                       if not isinstance(cell_value, (list, dict)) or column.startswith("test_mean")]
            lines += [f"`{name}`:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in value]
            lines.append("")
    return lines


def headline_table(results: dict[str, dict]) -> str:
    lines = ["| benchmark | target | measured | met |", "|---|---|---|---|"]
    for stem, title, _ in SECTIONS:
        result = results.get(stem)
        if result is None:
            lines.append(f"| {title} | — | not run yet | — |")
            continue
        quick = " (smoke run)" if result.get("quick") else ""
        for key, target in result.get("targets", {}).items():
            shown = measured_cell(result.get("figures", {}), key)
            met = met_cell(result.get("met", {}), key)
            lines.append(f"| {title}{quick} | `{key}` {cell(target)} | {shown} | {met} |")
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    body = ["# Benchmarks", "",
            "Every figure below comes from a script in `benchmarks/` that wrote `benchmarks/results/<name>.json`; "
            "this page is generated from those files by `python benchmarks/render.py` (`make bench` reruns "
            "everything). Ratios are measured side by side in one run; the machines are noisy.", ""]
    for stem, title, issue in SECTIONS:
        if stem in results:
            body.append(section(stem, title, issue, results[stem]))
        else:
            body += [f"## {title}", "", f"*{issue}* — not run yet: no `benchmarks/results/{stem}.json`.", ""]
    (REPO / "BENCHMARKS.md").write_text("\n".join(body))

    readme = REPO / "README.md"
    text = readme.read_text()
    block = f"{README_START}\n{headline_table(results)}\n{README_END}"
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    readme.write_text(pattern.sub(lambda _: block, text) if pattern.search(text) else text)
    print(f"wrote {REPO / 'BENCHMARKS.md'} and the README's headline table")


if __name__ == "__main__":
    main()
