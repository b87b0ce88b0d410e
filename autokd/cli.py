"""The `autokd` command. Thin: it parses flags and calls the library.

A user error (`AutokdError`: bad config, missing file, broken checkpoint, bad storage) is
printed as one line on stderr with exit code 2; nothing is written.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from autokd.errors import AutokdError, ConfigError, StorageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AutoML for knowledge distillation: search, report, export, train.")

STORAGE = typer.Option(None, "--storage", help="Optuna storage URL (default: the study's, an SQLite file "
                                               "beside the study YAML); any SQLAlchemy URL, e.g. PostgreSQL.")
ALLOW_CODE = typer.Option(False, "--allow-code", help="Run a custom student's factory (student: {family: custom}): "
                                                     "imports and runs your code; same as AUTOKD_ALLOW_CODE=1.")


@app.command()
def search(study: Path = typer.Argument(..., help="Study YAML file."),
           resume: bool = typer.Option(False, "--resume", help="Continue the study (or start it if new)."),
           accept_changes: bool = typer.Option(False, "--accept-changes", help="With --resume: go on although "
                                               "the space, data, teachers or training defaults changed."),
           storage: Optional[str] = STORAGE,
           address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS",
                                                 help="Existing Ray cluster, e.g. 'auto' or 'HOST:6379'."),
           trials: Optional[int] = typer.Option(None, "--trials", help="Trial budget, overriding budget.trials "
                                                "(with --resume it counts the trials already done)."),
           concurrency: Optional[int] = typer.Option(None, "--concurrency",
                                                     help="Trials at once, overriding resources.concurrency."),
           timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds the search may run (trials "
                                                   "still running then are cut), overriding budget.time_limit_s."),
           no_progress: bool = typer.Option(False, "--no-progress", help="No progress output."),
           report: bool = typer.Option(True, "--report/--no-report", help="Write the report at the end."),
           allow_code: bool = ALLOW_CODE) -> None:
    """Run a multi-objective search (Optuna proposes, Ray Tune runs)."""
    from autokd.config_files import load_study

    _allow_code(allow_code)

    started = time.perf_counter()
    spec = _with_overrides(load_study(study), {"--trials": ("budget", "trials", trials),
                                               "--concurrency": ("resources", "concurrency", concurrency),
                                               "--timeout": ("budget", "time_limit_s", timeout)})
    from autokd.space import load_space

    load_space(spec)  # a bad space is one line before pandas, torch and Ray load (search() checks it again)
    from autokd.ray_cluster import stop_ray
    from autokd.results import counts  # torch, Ray and Optuna load only once the flags are known to be good
    from autokd.search import SearchInterrupted
    from autokd.search import search as run_search

    try:
        result = run_search(spec, resume=resume, storage=storage, address=address, progress=not no_progress,
                            accept_changes=accept_changes)
    except SearchInterrupted as interrupt:  # caught here: typer would turn it into a bare exit 130
        typer.echo(f"interrupted: {interrupt.done}/{interrupt.budget} trials done — continue with: "
                   f"autokd search {interrupt.source} --resume", err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # before the study was written (data, Ray's start): typer would exit silently
        typer.echo("interrupted before the search began: nothing was written", err=True)
        raise typer.Exit(130) from None
    finally:
        stop_ray()  # the report needs no Ray
    _print_front(result.pareto, result.spec.objectives)
    if report:
        from autokd.report import build_report

        folder = build_report(str(study), storage=storage)
        typer.echo(f"report: {folder / 'index.html'}")
    typer.echo(f"total time {_duration(time.perf_counter() - started)}: {_tally(counts(result.study))}")
    target = shlex.quote(str(study)) + (f" --storage {shlex.quote(storage)}" if storage else "")
    steps = ([] if report else [f"autokd report {target}"])
    if len(result.pareto):
        steps += [f"autokd export {target} --knee -o best.yaml", "autokd train best.yaml"]
    else:
        steps += [f"autokd show {target}"]
    typer.echo("next:\n" + "\n".join(f"  {step}" for step in steps))


def _allow_code(allowed: bool, study: str | None = None, storage: str | None = None) -> None:
    """--allow-code: opt in for this process and the Ray workers it starts. Without it (and without
    AUTOKD_ALLOW_CODE=1) a stored study's custom student is refused here, before anything is written."""
    from autokd.archs import allow_code, check_code_allowed

    if allowed:
        allow_code()
    elif study is not None:
        from autokd.results import study_and_spec

        spec = study_and_spec(study, storage)[1]
        if spec is not None:
            check_code_allowed(spec.student, "student", spec.source if spec.source != "<study>" else study)


def _with_overrides(spec, overrides: dict[str, tuple[str, str, object]]):
    """`spec` with flag values put in its sections, each checked as the study file's own value would be."""
    from pydantic import ValidationError

    from autokd.config_files import describe_validation_error

    sections = {}
    for flag, (section, key, value) in overrides.items():
        if value is None:
            continue
        current = sections.get(section, getattr(spec, section))
        try:
            sections[section] = type(current).model_validate({**current.model_dump(), key: value})
        except ValidationError as error:
            raise ConfigError(f"{flag}: {describe_validation_error(error)[1]}") from None
    return spec.model_copy(update=sections) if sections else spec


@app.command()
def teachers(study: Path = typer.Argument(..., help="Study or training config YAML.")) -> None:
    """Train the missing teachers once and cache them with their outputs."""
    from autokd.config_files import load_study
    from autokd.data import load_data
    from autokd.teacher_outputs import teacher_outputs
    from autokd.teachers import prepare_teachers

    spec = load_study(study)
    data = load_data(spec.data, str(study))
    cached = prepare_teachers(spec.teachers, data, spec.cache_dir, log=typer.echo, source=str(study))
    teacher_outputs(cached, data)
    for teacher in cached:
        meta = teacher.meta
        val, test = ("—" if meta[key] is None else f"{meta[key]:.4f}" for key in ("val_accuracy", "test_accuracy"))
        params = "—" if meta["params"] is None else f"{meta['params']:,}"  # an outputs file has no model
        typer.echo(f"{teacher.name:>16}  val {val:>6}  test {test:>6}  params {params:>9}  "
                   f"trained in {meta['train_seconds']:.1f} s  {teacher.folder}")


@app.command()
def train(config: Path = typer.Argument(..., help="Exported training config, or a study file."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
          epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the schedule's epochs."),
          seeds: int = typer.Option(1, "--seeds", min=1, help="Train K seeds; report mean ± std."),
          augment: Optional[str] = typer.Option(None, "--augment", help="Comma list of: shift, flip "
                                                "(teachers then run online on the augmented batch)."),
          allow_code: bool = ALLOW_CODE) -> None:
    """Train one student by distillation at production length."""
    from autokd.train import train as run_train

    _allow_code(allow_code)

    kinds = None
    if augment is not None:
        kinds = [k.strip() for k in augment.split(",") if k.strip()]
        unknown = sorted(set(kinds) - {"shift", "flip"})
        if unknown:
            raise AutokdError(f"--augment: must be a comma list of ['flip', 'shift'], got {unknown[0]!r}")
    run = run_train(config, out, epochs=epochs, seeds=seeds, augment=kinds, log=typer.echo)
    metrics = run.metrics
    spread = f" ± {metrics['test_accuracy_std']:.4f}" if seeds > 1 else ""
    typer.echo(f"test accuracy {metrics['test_accuracy_mean']:.4f}{spread} "
               f"(val {metrics['val_accuracy_mean']:.4f}), params {metrics['params']:,}")
    typer.echo(f"run: {run.folder}")


@app.command()
def report(study: str = typer.Argument(..., help="Study YAML file, or the study's name with --storage."),
           storage: Optional[str] = STORAGE,
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder (default reports/<study>)."),
           baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                          help="Train CE-only and vanilla-KD baselines for front students."),
           allow_code: bool = ALLOW_CODE) -> None:
    """Write the Pareto report: HTML, plots, CSV and JSON."""
    _allow_code(allow_code, study, storage)  # the report retrains front students on test; an unknown study is refused
    from autokd.report import build_report  # torch and matplotlib: once the study is known

    folder = build_report(study, storage=storage, out=out, baselines=baselines)
    typer.echo(f"report: {folder / 'index.html'}")


@app.command()
def show(study: str = typer.Argument(..., help="Study YAML file, or the study's name with --storage."),
         storage: Optional[str] = STORAGE,
         as_json: bool = typer.Option(False, "--json", help="Print the front as JSON records instead.")) -> None:
    """Print the Pareto front as a terminal table (or JSON)."""
    from autokd.results import counts, front_frame, robust_frame, study_and_spec, trials_frame

    optuna_study, spec = study_and_spec(study, storage)
    frame = trials_frame(optuna_study)
    objectives = optuna_study.user_attrs.get("objectives", ["val_accuracy", "params"])
    front = front_frame(frame) if len(frame) else frame
    robust = robust_frame(optuna_study, frame) if len(frame) else None
    if as_json:
        if robust is not None and len(robust):
            columns = {"mean": "robust_mean", "std": "robust_std", "seeds": "robust_seeds",
                       "front_by_mean": "robust_front_by_mean"}
            front = front.merge(robust[["trial", *columns]].rename(columns=columns), on="trial", how="left")
        typer.echo(json.dumps(_records(front), indent=2))
        return
    typer.echo(f"study {optuna_study.study_name}: {len(frame)} trials ({_tally(counts(optuna_study))})")
    if robust is not None and len(robust):
        # mean ± std over the re-run seeds; "lucky": off the front by mean (see `results.robust_frame`)
        robust["robust"] = [f"{r['mean']:.4f}±{r['std']:.4f}" + ("" if r["front_by_mean"] else " lucky")
                            for _, r in robust.iterrows()]
        front = front.merge(robust[["trial", "robust"]], on="trial", how="left").fillna({"robust": ""})
    _print_front(front, objectives)


def _records(frame) -> list[dict]:
    """A frame as JSON-ready records: NaN as null, sizes as integers, `config` as an object."""
    from autokd.spec import SIZE_METRICS

    records = []
    for row in frame.to_dict(orient="records"):
        record = {}
        for key, value in row.items():
            value = value.item() if hasattr(value, "item") else value  # numpy scalars: full precision
            if isinstance(value, float) and value != value:
                value = None
            elif key in SIZE_METRICS and isinstance(value, float):
                value = int(value)
            elif key == "config" and isinstance(value, str):
                value = json.loads(value)
            record[key] = value
        records.append(record)
    return records


@app.command()
def studies(study: Optional[Path] = typer.Argument(None, help="A study YAML file: list the studies in its storage."),
            storage: Optional[str] = STORAGE) -> None:
    """List the studies in a storage: trials by outcome and best val accuracy."""
    import optuna
    from optuna.trial import TrialState

    from autokd.config_files import load_study
    from autokd.results import counts, open_storage

    if storage is None and study is None:
        raise ConfigError("autokd studies: give a study file or --storage URL")
    url = storage or load_study(study).storage_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise StorageError(f"{study or '--storage'}: storage file {url.removeprefix('sqlite:///')} does not exist "
                           "(run `autokd search` first)")
    opened = open_storage(url)
    summaries = sorted(optuna.get_all_study_summaries(opened, include_best_trial=False), key=lambda s: s.study_name)
    rows = []
    for summary in summaries:
        loaded = optuna.load_study(study_name=summary.study_name, storage=opened)
        tally = counts(loaded)
        accuracies = [t.values[0] for t in loaded.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
                      if t.values]
        rows.append([summary.study_name, len(loaded.get_trials(deepcopy=False)), tally["complete"],
                     tally["failed"] + tally["interrupted"], tally["infeasible"] + tally["stopped"],
                     tally["running"], f"{max(accuracies):.4f}" if accuracies else "-"])
    typer.echo(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} in {url}")
    if rows:
        header = ["study", "trials", "complete", "failed", "pruned", "running", "best val acc"]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            typer.echo("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                                 for i, (v, w) in enumerate(zip(row, widths))))


@app.command()
def export(study: str = typer.Argument(..., help="Study YAML file, or the study's name with --storage."),
           storage: Optional[str] = STORAGE,
           trial: Optional[int] = typer.Option(None, "--trial", help="Export this trial number."),
           max_params: Optional[int] = typer.Option(None, "--max-params", help="Best val accuracy with ≤ N params."),
           max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="Best val accuracy with ≤ N bytes."),
           min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy",
                                                        help="Smallest front student with val accuracy ≥ A."),
           knee: bool = typer.Option(False, "--knee", help="The knee of the front."),
           output: Path = typer.Option(..., "--output", "-o", help="Where to write the training config.")) -> None:
    """Write a chosen trial as a standalone training config."""
    from autokd.export import export_config

    path, chosen = export_config(study, output, storage=storage, trial=trial, max_params=max_params,
                                 max_bytes=max_bytes, min_accuracy=min_accuracy, knee=knee)
    typer.echo(f"exported trial {chosen} to {path}; train it with: autokd train {path}")


# Columns of the front table, most important first; the last ones go first when the terminal is
# narrow. Short headers are used before any column is dropped. A two-level study's front adds
# `val_gain_pt` (paired val gain over CE-only ± SE, points) and `choice` (the role standing there).
_FRONT_EXTRAS = ("val_gain_pt", "choice", "robust", "student.family", "distill.kind", "distill.temperature",
                 "distill.teachers", "params", "macs")
_SHORT_HEADERS = {"val_accuracy": "val acc", "bytes_fp32": "fp32 B", "bytes_fp16": "fp16 B",
                  "val_gain_pt": "gain pt", "student.family": "student", "distill.kind": "kd",
                  "distill.temperature": "T", "distill.teachers": "teachers"}
_CHOICES = {"ce": "CE-only", "vanilla_kd": "vanilla KD", "tuned": "tuned KD"}


def _print_front(front, objectives: list[str]) -> None:
    from rich.console import Console

    if front is None or len(front) == 0:
        typer.echo("no complete trials yet")
        return
    if "val_gain_vs_ce" in front.columns and front["val_gain_vs_ce"].notna().any():  # a two-level front
        front = front.assign(
            val_gain_pt=[_gain_cell(gain, se) for gain, se in zip(front["val_gain_vs_ce"], front["val_gain_se"])],
            choice=[_CHOICES.get(role, role or "") if isinstance(role, str) else "" for role in front["role"]])
    width = _terminal_width()
    console = Console(width=width)
    columns = ["trial", *objectives] + [c for c in _FRONT_EXTRAS if c in front.columns and c not in objectives]
    short = False
    while True:
        table = _front_table(front, columns, short)
        unclamped = console.options.update_width(1_000_000)  # measure what the table wants, not what fits
        if console.measure(table, options=unclamped).maximum <= width or len(columns) <= 1 + len(objectives):
            break
        if short:
            columns = columns[:-1]
        short = True
    console.print(table)
    if "front_reason" in front.columns:  # a two-level front: why each point stands (confirmed, or CE-only and why)
        for trial, reason in zip(front["trial"], front["front_reason"]):
            if isinstance(reason, str):
                typer.echo(f"trial {int(trial)}: {reason}")


def _front_table(front, columns: list[str], short: bool):
    from rich.table import Table

    from autokd.spec import SIZE_METRICS

    table = Table(title="Pareto front (validation accuracy vs size)")
    for column in columns:
        header = _SHORT_HEADERS.get(column, column) if short else column
        table.add_column(header, justify="right", no_wrap=True, overflow="ellipsis")
    for _, row in front.iterrows():
        table.add_row(*[_cell(int(row[c]) if c in SIZE_METRICS else row[c]) for c in columns])
    return table


def _gain_cell(gain, standard_error) -> str:
    """`+0.42±0.10`: a paired gain over CE-only and its standard error, fractions shown in points."""
    if gain is None or gain != gain:
        return ""
    spread = "" if standard_error is None or standard_error != standard_error else f"±{100 * standard_error:.2f}"
    return f"{100 * gain:+.2f}{spread}"


def _terminal_width() -> int:
    """$COLUMNS when set, else the width of the terminal on stdout, else (not a terminal) 120."""
    return shutil.get_terminal_size(fallback=(120, 24)).columns


def _tally(tally: dict[str, int]) -> str:
    """'5 complete, 1 failed': the non-zero outcomes of `results.counts`."""
    parts = [f"{tally[k]} {k}" for k in ("complete", "failed", "infeasible", "stopped", "interrupted", "running")
             if tally.get(k)]
    return ", ".join(parts) or "no trials"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else (f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main() -> None:
    try:  # typer >= 0.24 vendors its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    try:
        # standalone_mode=False: a bad flag raises here instead of printing click's multi-line box.
        exit_code = app(standalone_mode=False, prog_name="autokd")
    except AutokdError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except click_errors.NoArgsIsHelpError as error:
        error.show()
        sys.exit(error.exit_code)
    except click_errors.UsageError as error:
        command = error.ctx.command_path if error.ctx else "autokd"
        print(f"error: {command}: {error.format_message()}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


if __name__ == "__main__":
    main()
