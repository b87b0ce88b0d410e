"""The `autokd` command. Thin: it parses flags and calls the library.

A user error (`AutokdError`: bad config, missing file, broken checkpoint, bad storage) is
printed as one line on stderr with exit code 2; nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from autokd.errors import AutokdError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AutoML for knowledge distillation: search, report, export, train.")

STORAGE = typer.Option(None, "--storage", help="Optuna storage URL (default: the study's, an SQLite file "
                                               "beside the study YAML); any SQLAlchemy URL, e.g. PostgreSQL.")


@app.command()
def search(study: Path = typer.Argument(..., help="Study YAML file."),
           resume: bool = typer.Option(False, "--resume", help="Continue the study (or start it if new)."),
           storage: Optional[str] = STORAGE,
           address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS",
                                                 help="Existing Ray cluster, e.g. 'auto' or 'HOST:6379'."),
           no_progress: bool = typer.Option(False, "--no-progress", help="No progress output."),
           report: bool = typer.Option(True, "--report/--no-report", help="Write the report at the end.")) -> None:
    """Run a multi-objective search (Optuna proposes, Ray Tune runs)."""
    from autokd.search import search as run_search

    result = run_search(study, resume=resume, storage=storage, address=address, progress=not no_progress)
    _print_front(result.pareto, result.spec.objectives)
    if report:
        from autokd.report import build_report

        folder = build_report(str(study), storage=storage)
        typer.echo(f"report: {folder / 'index.html'}")


@app.command()
def teachers(study: Path = typer.Argument(..., help="Study or training config YAML.")) -> None:
    """Train the missing teachers once and cache them with their outputs."""
    from autokd.data import load_data
    from autokd.spec import load_study
    from autokd.teachers import prepare_teachers, teacher_outputs

    spec = load_study(study)
    data = load_data(spec.data, str(study))
    cached = prepare_teachers(spec.teachers, data, spec.cache_dir, spec.resolve_path, log=typer.echo,
                              source=str(study))
    teacher_outputs(cached, data)
    for teacher in cached:
        meta = teacher.meta
        typer.echo(f"{teacher.name:>16}  val {meta['val_accuracy']:.4f}  test {meta['test_accuracy']:.4f}  "
                   f"params {meta['params']:>9,}  trained in {meta['train_seconds']:.1f} s  {teacher.folder}")


@app.command()
def train(config: Path = typer.Argument(..., help="Exported training config, or a study file."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
          epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the schedule's epochs."),
          seeds: int = typer.Option(1, "--seeds", min=1, help="Train K seeds; report mean ± std."),
          augment: Optional[str] = typer.Option(None, "--augment", help="Comma list of: shift, flip "
                                                "(teachers then run online on the augmented batch).")) -> None:
    """Train one student by distillation at production length."""
    from autokd.train import train as run_train

    kinds = None
    if augment is not None:
        kinds = [k.strip() for k in augment.split(",") if k.strip()]
        unknown = sorted(set(kinds) - {"shift", "flip"})
        if unknown:
            raise AutokdError(f"--augment: must be a comma list of ['flip', 'shift'], got {unknown[0]!r}")
    run = run_train(config, out, epochs=epochs, seeds=seeds, augment=kinds, log=typer.echo)
    metrics = run.metrics
    typer.echo(f"test accuracy {metrics['test_accuracy_mean']:.4f} ± {metrics['test_accuracy_std']:.4f} "
               f"(val {metrics['val_accuracy_mean']:.4f}), params {metrics['params']:,}")
    typer.echo(f"run: {run.folder}")


@app.command()
def report(study: str = typer.Argument(..., help="Study YAML file, or the study's name with --storage."),
           storage: Optional[str] = STORAGE,
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder (default reports/<study>)."),
           baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                          help="Train CE-only and vanilla-KD baselines for front students.")) -> None:
    """Write the Pareto report: HTML, plots, CSV and JSON."""
    from autokd.report import build_report

    folder = build_report(study, storage=storage, out=out, baselines=baselines)
    typer.echo(f"report: {folder / 'index.html'}")


@app.command()
def show(study: str = typer.Argument(..., help="Study YAML file, or the study's name with --storage."),
         storage: Optional[str] = STORAGE) -> None:
    """Print the Pareto front as a terminal table."""
    from autokd.results import front_frame, robust_frame, study_and_spec, trials_frame

    optuna_study, spec = study_and_spec(study, storage)
    frame = trials_frame(optuna_study)
    objectives = optuna_study.user_attrs.get("objectives", ["val_accuracy", "params"])
    states = frame["state"].value_counts().to_dict() if len(frame) else {}
    typer.echo(f"study {optuna_study.study_name}: {len(frame)} trials {states}")
    front = front_frame(frame) if len(frame) else frame
    robust = robust_frame(optuna_study, frame) if len(frame) else None
    if robust is not None and len(robust):
        # mean ± std over the re-run seeds; "lucky": off the front by mean (see `results.robust_frame`)
        robust["robust"] = [f"{r['mean']:.4f}±{r['std']:.4f}" + ("" if r["front_by_mean"] else " lucky")
                            for _, r in robust.iterrows()]
        front = front.merge(robust[["trial", "robust"]], on="trial", how="left").fillna({"robust": ""})
    _print_front(front, objectives)


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


def _print_front(front, objectives: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from autokd.spec import SIZE_METRICS

    if front is None or len(front) == 0:
        typer.echo("no complete trials yet")
        return
    table = Table(title="Pareto front (validation accuracy vs size)")
    columns = ["trial", *objectives] + [c for c in ("params", "macs", "student.family", "distill.kind",
                                                    "distill.temperature", "distill.teachers", "robust")
                                        if c in front.columns and c not in objectives]
    for column in columns:
        table.add_column(column, justify="right")
    for _, row in front.iterrows():
        table.add_row(*[_cell(int(row[c]) if c in SIZE_METRICS else row[c]) for c in columns])
    Console(width=max(150, Console().width)).print(table)


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
    except KeyboardInterrupt as interrupt:
        done = getattr(interrupt, "done", None)  # search.SearchInterrupted says how far the search got
        if done is not None:
            print(f"interrupted: {done}/{interrupt.budget} trials done — continue with: "
                  f"autokd search {interrupt.source} --resume", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


if __name__ == "__main__":
    main()
