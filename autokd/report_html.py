"""The report's page: one self-contained HTML file from the summary (`autokd.report_summary`).

`render_html` returns the page as a string; the PNG figures it shows are read from the report
folder and inlined, so the page opens offline. Every value passes through `_e` (html.escape) on its
way in: study names, parameter values, failure reasons and teacher names are user-controlled.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from autokd.archs import FAMILIES
from autokd.pareto import USEFUL_SHARE
from autokd.report_format import gain_text, missing

TEMPERATURE_CAPTION = ("the study's own answer to which T for which student (Hinton et al. 2015 found 30-unit "
                       "MNIST students best at T 2.5-4)")
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;margin:0;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.sub{color:#5b6573;margin:0 0 16px}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 8px;border-bottom:1px solid #e6e8eb;
text-align:left;vertical-align:top}th{background:#f0f2f5}tbody tr:nth-child(even){background:#fafbfc}
tr.knee{background:#fff6d6 !important;font-weight:600}tr.low{color:#7b8490}code{font-size:12px}
pre.cmd{white-space:pre-wrap;overflow-wrap:anywhere;background:#f0f2f5;border:1px solid #e0e3e8;padding:8px 12px;
font-size:13px;margin:6px 0}.pick{margin:12px 0 4px}p code{white-space:nowrap}.band{color:#5b6573}
figure{margin:8px 0}img{max-width:100%;height:auto;border:1px solid #eceef1}
.notes{background:#fff8e6;border-left:4px solid #f0b429;padding:8px 14px}.empty{color:#8a4b00;font-weight:600}
"""


def render_html(summary: dict, folder: Path) -> str:
    """The self-contained page for `summary`; images are read from `folder` and inlined."""
    name = summary["study"]
    complete = summary["trials"]["complete"]
    parts = [f"<h1>autokd report: {_e(name)}</h1>",
             f'<p class="sub">Pareto front of validation accuracy vs {_e(summary["objectives"][1])}. '
             "Test accuracy is measured only for the front, after the search, and never used to choose.</p>"]
    if complete == 0:
        parts.append('<p class="empty">No complete trials yet: there is no front to show. '
                     f'{_e(summary["trials"]["total"])} trial(s) in storage.</p>')
    if summary["notes"]:
        parts.append('<div class="notes"><ul>' + "".join(f"<li>{_e(n)}</li>" for n in summary["notes"])
                     + "</ul></div>")
    parts += ["<h2>Study</h2>", _table(None, _overview_rows(summary))]
    if complete:
        parts += ["<h2>Pareto front</h2>", _image(folder, "pareto.png", f"{name}: validation accuracy vs size"),
                  _knee_block(summary),
                  '<p>Also as <a href="pareto.svg">SVG</a>; all rows in <a href="pareto.csv">pareto.csv</a>, '
                  'every trial in <a href="trials.csv">trials.csv</a>. '
                  + (_two_level_gains_text(summary) if summary.get("two_level") else
                     "Gains are test-accuracy percentage points over the same student trained with cross-entropy "
                     "only and with vanilla KD (KL, T=4, w_kd 0.9, w_ce 0.1), same schedule and seed.") + "</p>",
                  _front_table(summary)]
    if summary["robust"]:
        parts += ["<h2>Robust front</h2>", _robust_table(summary)]
    if summary["teachers"]:
        parts += ["<h2>Teachers</h2>", _teachers_block(summary)]
    if summary["failure_reasons"]:
        parts += ["<h2>Trials that did not complete</h2>",
                  _table(["state", "reason", "count"],
                         [[r["state"], r["reason"], r["count"]] for r in summary["failure_reasons"]])]
    if complete:
        parts += ["<h2>Search progress</h2>", _image(folder, "hypervolume.png", "front hypervolume by trial"),
                  "<h2>Parameter importance</h2>", _image(folder, "importance.png", "parameter importance"),
                  "<h2>Temperature and KD weight</h2>", _image(folder, "effects.png", "parameter effects")]
        if summary.get("temperature_curve"):
            parts += ["<h2>Temperature by student size</h2>",
                      _image(folder, "temperature.png", "chosen temperature and KD share by student size"),
                      f'<p class="caption" id="temperature-caption">The temperature curve: {_e(TEMPERATURE_CAPTION)}. '
                      "Filled: the distilled config that took the architecture's front place, labelled with its "
                      "paired val gain over CE-only; hollow at the bottom: CE-only (T does not apply); the shaded "
                      'band is T 2.5-4. Also as <a href="temperature.svg">SVG</a>.</p>']
    parts += ["<h2>Search space</h2>", _table(["parameter", "type", "range / choices", "only when"],
                                              _space_rows(summary["search_space"]))]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>autokd report: {_e(name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def _overview_rows(summary: dict) -> list[list[Any]]:
    trials = summary["trials"]
    data = ", ".join(f"{k}={v}" for k, v in summary["data"].items() if v is not None)
    reference = ", ".join(f"{name} {value:.3g}" for name, value in
                          zip(summary["hypervolume_space"], summary["hypervolume_reference"]))
    return [
        ["data", data],
        ["objectives", ", ".join(f"{o} ({d})" for o, d in zip(summary["objectives"], summary["directions"]))],
        ["constraints", ", ".join(summary["constraints"]) or "none"],
        ["sampler", ", ".join(f"{k}={v}" for k, v in summary["sampler"].items())],
        ["budget", ", ".join(f"{k}={v}" for k, v in summary["budget"].items() if v is not None)],
        ["trials", f"{trials['total']} in storage: {trials['complete']} complete, {trials['failed']} failed, "
                   f"{trials['infeasible']} infeasible, {trials['stopped']} stopped early, "
                   f"{trials['interrupted']} interrupted, {trials['running']} running or waiting"],
        ["wall time", f"{_duration(summary['wall_seconds'])} (first trial start to last trial end); "
                      f"{summary['train_seconds']:.0f} s of training in all"],
        ["compute", f"{summary['epochs_trained']} epochs trained in all; early stopping: "
                    + ", ".join(f"{k}={v}" for k, v in summary["early_stopping"].items())],
        ["hypervolume", f"{summary['hypervolume']:.4f} of ({', '.join(summary['hypervolume_space'])}) "
                        f"against reference point ({reference})"],
        ["knee", "—" if summary["knee_trial"] is None else
                 f"trial {summary['knee_trial']} ({summary['knee_rule']}; the trial autokd export --knee picks)"],
        ["storage", summary["storage"]],
        ["versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())],
        ["device", summary["device"]["report_machine"] + "; search nodes: "
                   + (", ".join(f"{name} ({count} trials)" for name, count in
                                summary["device"]["search_node_trials"].items()) or "—")],
        ["generated", summary["generated_at"]],
    ]


def _front_table(summary: dict) -> str:
    size = summary["objectives"][1]
    two_level = summary.get("two_level", False)
    headers = ["#", "trial", "params", "bytes (fp32)", "MACs", "val acc", "test acc", "T",
               "weights ce / kd / feat", "KD kind", "student", "teachers", "gain vs CE", "gain vs vanilla KD"]
    if two_level:
        headers[-2:] = ["choice", "val gain vs CE", "test gain vs CE", "test gain vs vanilla KD"]
    if size not in ("params", "bytes_fp32", "macs"):
        headers.insert(5, size)
    rows, classes = [], []
    for row in summary["front"]:
        mark = " (knee)" if row["knee"] else "" if row["useful"] else " (below band)"
        cells = [f"{row['position']}{mark}", row["trial"], _number(row["params"]),
                 _number(row["bytes_fp32"]), _number(row["macs"]), _accuracy(row["val_accuracy"]),
                 _accuracy(row["test_accuracy"]), _number(row["temperature"]),
                 " / ".join(_number(row[k]) for k in ("w_ce", "w_kd", "w_feat")), row["kd_kind"] or "none (CE)",
                 _arch_text(row["student"]), ", ".join(row["teachers_used"]) or "—", _gain(row["gain_vs_ce"]),
                 _gain(row["gain_vs_vanilla_kd"])]
        if two_level:
            cells[-2:] = [row["choice"] or "—", gain_text(row["val_gain_vs_ce_pt"], row["val_gain_se_pt"]),
                          gain_text(row["gain_vs_ce"], row["gain_vs_ce_se"]),
                          gain_text(row["gain_vs_vanilla_kd"], row["gain_vs_vanilla_kd_se"])]
        if size not in ("params", "bytes_fp32", "macs"):
            cells.insert(5, _number(row[size]))
        rows.append(cells)
        classes.append("knee" if row["knee"] else "" if row["useful"] else "low")
    commands = "\n".join(row["export_command"] for row in summary["front"])
    return (_table(headers, rows, row_classes=classes, table_id="front-table")
            + f'<p>Export any front trial:</p><pre class="cmd" id="export-commands">{_e(commands)}</pre>')


def _knee_block(summary: dict) -> str:
    """The recommended student in one sentence, its commands in a block that wraps instead of scrolling."""
    size = summary["objectives"][1]
    row = next(r for r in summary["front"] if r["knee"])
    below = [r for r in summary["front"] if not r["useful"]]
    parts = [f'<p class="pick"><strong>Knee: trial {_e(row["trial"])}</strong>, val acc '
             f'{_e(_accuracy(row["val_accuracy"]))} at {_e(_number(row[size]))} {_e(size)} '
             f'({_e(summary["knee_rule"])}; <code>autokd export --knee</code> picks the same trial). '
             "Export it and train it:</p>",
             f'<pre class="cmd" id="knee-commands">{_e(chr(10).join(summary["knee_commands"]))}</pre>',
             "<p>Add <code>--epochs N</code> to train longer than the trial did, <code>--seeds S</code> for a "
             "mean ± std over seeds; any other front trial exports the same way with its <code>--trial</code>.</p>"]
    if below:
        listed = ", ".join(f"trial {r['trial']} ({_accuracy(r['val_accuracy'])} at {_number(r[size])} {size})"
                           for r in below)
        parts.append(f'<p class="band">The plot\'s accuracy axis shows the useful band. Front trials below '
                     f'{USEFUL_SHARE:.0%} of the best val accuracy (&lt; {_e(_accuracy(summary["useful_floor"]))}) are '
                     f"drawn ▼ at its bottom edge with their accuracy, stay in the table, and are no candidates "
                     f"for the knee: {_e(listed)}.</p>")
    return "".join(parts)


def _two_level_gains_text(summary: dict) -> str:
    seeds = sorted({int(row["test_seeds"]) for row in summary["front"] if not missing(row.get("test_seeds"))})
    counted = " or ".join(map(str, seeds)) or "its"
    return ("Each architecture holds one front place: CE-only unless a distilled config's paired val gain "
            "beats the margin (choice). Val and test accuracy are means over the architecture's "
            f"{_e(counted)} paired seeds; gains are percentage points over the same student trained with "
            "cross-entropy only (and with vanilla KD: KL, T=4, w_kd 0.9, w_ce 0.1) on the same seeds, the mean of "
            "the per-seed differences ± its standard error.")


def _teachers_block(summary: dict) -> str:
    """The teachers, each with whether it can teach: one less accurate than the best CE-only student cannot."""
    best = summary.get("best_ce_only_student")
    if best is None:
        intro = "<p>No CE-only student in the study to compare the teachers with.</p>"
    else:
        source = ("the best level-1 architecture" if summary.get("two_level") else
                  "the best trial trained with cross-entropy only")
        intro = (f"<p>Teachers that can teach: a teacher less accurate (val) than the best CE-only student of the "
                 f"study (trial {_e(best['trial'])}, val acc {_e(_accuracy(best['val_accuracy']))}, {source}) has "
                 "little to teach it. A two-level search leaves such teachers out of level 2 unless "
                 "<code>search.weak_teachers: keep</code>.</p>")
    rows = [[t["name"], _arch_text(t["arch"]), _number(t["params"]), _accuracy(t["val_accuracy"]),
             _accuracy(t["test_accuracy"]), t.get("can_teach", "—")] for t in summary["teachers"]]
    classes = ["low" if t.get("weaker") else "" for t in summary["teachers"]]
    return intro + _table(["name", "architecture", "params", "val acc", "test acc", "can teach"], rows,
                          row_classes=classes, table_id="teachers-table")


def _robust_table(summary: dict) -> str:
    """The re-run front configs by mean val accuracy; those that need their lucky seed are marked."""
    size = summary["objectives"][1]
    rows = []
    for rank, row in enumerate(summary["robust"], start=1):
        verdict = ("on the front by mean" if row["front_by_mean"] else
                   f"off the front by mean (trial {row['beaten_by']} is as accurate and no larger): "
                   "its place rests on one seed")
        rows.append([rank, row["trial"], _number(row[size]), _accuracy(row["val_accuracy"]),
                     f"{_accuracy(row['mean'])} ± {_accuracy(row['std'])}",
                     ", ".join(_accuracy(a) for a in row["val_accuracies"]), verdict])
    seeds = summary["robust"][0]["seeds"]
    return (f"<p>The top front configs by val accuracy, re-run with {_e(seeds)} seeds (the search's seed first) "
            "and ranked by mean; ± is the standard deviation over the seeds.</p>"
            + _table(["#", "trial", size, "val acc (search)", "mean ± std", "per seed", "verdict"], rows))


def _space_rows(space: Any) -> list[list[Any]]:
    if not isinstance(space, dict):
        return [[str(space), "file", "", ""]]
    params = space.get("params", space)  # the stored signature, or an inline space document
    return [[name, param.get("type", ""), _range_text(param),
             ", ".join(f"{k} in {v}" for k, v in (param.get("when") or {}).items())]
            for name, param in params.items() if isinstance(param, dict)]


def _range_text(param: dict) -> str:
    kind = param.get("type")
    if kind in ("float", "int"):
        step = f", step {param['step']}" if param.get("step", 1) != 1 else ""
        return f"{param.get('low')} to {param.get('high')}{' (log)' if param.get('log') else ''}{step}"
    if kind == "categorical":
        return ", ".join(map(str, param.get("choices", [])))
    if kind == "fixed":
        return str(param.get("value"))
    if kind == "teacher_subset":
        return "any non-empty subset of the teachers" + (f" (at most {param['max_size']})"
                                                          if param.get("max_size") else "")
    return json.dumps(param)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str] | None, rows: list[list[Any]], row_classes: list[str] | None = None,
           table_id: str | None = None) -> str:
    head = f'<thead><tr>{"".join(f"<th>{_e(h)}</th>" for h in headers)}</tr></thead>' if headers else ""
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f"<td>{_e(cell)}</td>" for cell in row)
        css = f' class="{_e(row_classes[index])}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    container = f' id="{_e(table_id)}"' if table_id else ""
    return f'<div class="scroll"{container}><table>{head}<tbody>{"".join(body)}</tbody></table></div>'


def _image(folder: Path, name: str, alt: str) -> str:
    path = folder / name
    if not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(alt)}"></figure>'


def _number(value: Any) -> str:
    if missing(value):
        return "—"
    if isinstance(value, float) and not float(value).is_integer():
        return f"{value:.4g}"
    return f"{int(value):,}"


def _accuracy(value: Any) -> str:
    return "—" if missing(value) else f"{value:.4f}"


def _gain(value: Any) -> str:
    return "—" if missing(value) else f"{value:+.2f} pp"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _arch_text(arch: dict) -> str:
    """`mlp depth=1 width=22`: the family and the shape values that differ from its defaults (a custom
    student: its factory and args, not the folder it is imported from)."""
    defaults = FAMILIES.get(arch.get("family"), {})
    rest = " ".join(f"{k}={v}" for k, v in arch.items()
                    if k not in ("family", "path") and defaults.get(k, object()) != v)
    return f"{arch.get('family', '?')} {rest}".strip()
