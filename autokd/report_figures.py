"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot: no global state, no display needed).

Each `*_figure` function takes the report's frames and arrays and returns the figure, or None when
there is nothing to draw; `save` writes it. What the figures show is described in `autokd.report`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from autokd.pairing import CE
from autokd.pareto import USEFUL_SHARE, pareto_front_mask, useful_mask
from autokd.report_format import gain_text
from autokd.spec import StudySpec

EFFECT_PARAMS = ("distill.temperature", "distill.w_kd")
FAINT, FRONT, KNEE, TEACHER, LIMIT = "#8a96a3", "#c0392b", "#f1c40f", "#222222", "#2c6fbb"
HINTON_T = (2.5, 4.0)  # Hinton et al. 2015: the best T for 30-unit MNIST students
DPI = 110


def save(figure: Figure | None, folder: Path, name: str, *, svg: bool = False) -> None:
    """`folder/name.png` (and `.svg`, for the figures a reader may want to scale); nothing for no figure."""
    if figure is None:
        return
    figure.savefig(folder / f"{name}.png", dpi=DPI)
    if svg:
        figure.savefig(folder / f"{name}.svg")


def _figure(width: float, height: float, columns: int = 1, **margins: float) -> tuple[Figure, list]:
    # Fixed margins: constrained layout measures every label and took half the build time.
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(**{"left": 0.09, "right": 0.98, "bottom": 0.13, "top": 0.9, "wspace": 0.3, **margins})
    return figure, list(figure.subplots(1, columns, squeeze=False)[0])


def _log_axis(axis) -> None:
    """Log scale labelled 1,000 / 2,000 / 5,000: readable, and no mathtext to typeset."""
    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.6g}"))
    axis.set_minor_locator(NullLocator())


def _useful_band(front: pd.DataFrame, spec: StudySpec, teachers: list[dict], top: float) -> tuple[float, float]:
    """(bottom, top) of the plot's accuracy axis: the front's useful points and the teachers, padded."""
    useful = front.loc[useful_mask(front[spec.objectives].to_numpy(float), spec.directions), "val_accuracy"]
    lowest = float(useful.min())
    low = min([lowest, *(t["val_accuracy"] for t in teachers if t["val_accuracy"] >= lowest)])
    pad = max(0.07 * (top - low), 0.005)
    return low - pad, top + pad


def pareto_figure(frame: pd.DataFrame, front: pd.DataFrame, spec: StudySpec, teachers: list[dict],
                  knee: int | None) -> Figure | None:
    """Val accuracy vs log size over the useful band; what lies below it is drawn at its bottom edge."""
    complete = frame[frame["state"] == "COMPLETE"]
    if complete.empty or front.empty:
        return None
    size = spec.objectives[1]
    limit = spec.size_limits().get(size)
    teachers = [t for t in teachers if t.get(size) is not None]  # teacher rows carry params, bytes_fp32, macs
    figure, (axes,) = _figure(10.5, 5.2, left=0.07, right=0.75, top=0.92)  # the legend goes right of the axes
    top = max([*complete["val_accuracy"], *(t["val_accuracy"] for t in teachers)])
    bottom, ceiling = _useful_band(front, spec, teachers, top)
    axes.set_ylim(bottom, ceiling)
    _log_axis(axes.xaxis)
    sizes = np.log10(np.maximum([*complete[size], *(t[size] for t in teachers),
                                 *([limit] if limit is not None else [])], 1.0))
    margin = max(0.05 * (sizes.max() - sizes.min()), 0.1)
    left, right = sizes.min() - margin, sizes.max() + margin
    axes.set_xlim(10 ** left, 10 ** right)

    def place(x: float) -> float:  # where x lies across the axis, 0 (left) to 1 (right)
        return (np.log10(max(x, 1.0)) - left) / (right - left)

    def shown(accuracy: np.ndarray) -> np.ndarray:
        return np.maximum(accuracy, bottom)

    x, y = complete[size].to_numpy(float), complete["val_accuracy"].to_numpy(float)
    axes.scatter(x[y >= bottom], y[y >= bottom], s=12, color=FAINT, alpha=0.45, linewidths=0,
                 label=f"complete trials ({len(complete)})")
    if (y < bottom).any():
        axes.scatter(x[y < bottom], shown(y[y < bottom]), s=22, marker="v", color=FAINT, alpha=0.7, linewidths=0,
                     clip_on=False, label="trials below the band (at its edge)")
    # The step line is the 2-D attainment curve of the plotted pair, sorted by size.
    pair = front[["val_accuracy", size]].to_numpy(float)
    line = front[pareto_front_mask(pair, ["maximize", "minimize"])]
    axes.step(line[size], shown(line["val_accuracy"].to_numpy(float)), where="post", color=FRONT, linewidth=1.8)
    fx, fy = front[size].to_numpy(float), front["val_accuracy"].to_numpy(float)
    axes.scatter(fx[fy >= bottom], fy[fy >= bottom], s=30, color=FRONT, zorder=3,
                 label=f"Pareto front ({len(front)}), by trial number")
    if (fy < bottom).any():
        axes.scatter(fx[fy < bottom], shown(fy[fy < bottom]), s=60, marker="v", color=FRONT, zorder=3,
                     clip_on=False, label=f"front below {USEFUL_SHARE:.0%} of the best (acc)")
    for (px, py), trials in front.groupby([size, "val_accuracy"], sort=False)["trial"]:  # exact ties: one label
        low, is_knee = py < bottom, knee in set(trials)
        text = ", ".join(map(str, trials)) + (f" ({py:.2f})" if low else "")
        to_left, step = place(px) > 0.1, 9 if is_knee else 4
        axes.annotate(text, (px, max(py, bottom)), textcoords="offset points",
                      xytext=(-step if to_left else step, 7 if low else step - 1), ha="right" if to_left else "left",
                      va="bottom", fontsize=7.5, color=FRONT, annotation_clip=False,
                      fontweight="bold" if is_knee else "normal")
    if knee is not None:
        row = front[front["trial"] == knee].iloc[0]
        axes.scatter([row[size]], [row["val_accuracy"]], s=260, marker="*", color=KNEE, edgecolors="black",
                     zorder=4, label=f"knee (trial {knee})")
    if teachers:
        tx = np.array([t[size] for t in teachers], dtype=float)
        ty = np.array([t["val_accuracy"] for t in teachers], dtype=float)
        axes.scatter(tx[ty >= bottom], ty[ty >= bottom], s=60, marker="^", color=TEACHER, zorder=3, label="teachers")
        if (ty < bottom).any():
            axes.scatter(tx[ty < bottom], shown(ty[ty < bottom]), s=60, marker="v", color=TEACHER, zorder=3,
                         clip_on=False, label=None if (ty >= bottom).any() else "teachers")
        for teacher, px, py in zip(teachers, tx, ty):
            text = teacher["name"] + (f" ({py:.2f})" if py < bottom else "")
            to_left = place(px) > 0.6  # names run away from the right edge, so they are never cut off
            low = py < bottom  # at the bottom edge the name goes above the marker, clear of the tick labels
            axes.annotate(text, (px, max(py, bottom)), textcoords="offset points",
                          xytext=(-7 if to_left else 7, 5 if low else -4), ha="right" if to_left else "left",
                          va="bottom" if low else "top", fontsize=8, annotation_clip=False)
    if limit is not None:
        axes.axvline(limit, color=LIMIT, linestyle="--", linewidth=1.2, label=f"constraint: {size} <= {limit:,.0f}")
    axes.set_xlabel(f"{size} (log scale)")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"{spec.name}: validation accuracy vs {size}")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    return figure


def hypervolume_figure(numbers: np.ndarray, curve: np.ndarray, reference: list[float],
                       size_names: list[str]) -> Figure | None:
    """The front's hypervolume after each trial (`report_data.hypervolume_curve`); the y label states the
    reference point (accuracy, then log10 of each size in `size_names`). None with no trial."""
    if len(numbers) == 0:
        return None
    figure, (axes,) = _figure(8, 3.6, left=0.12, bottom=0.15, top=0.9)
    axes.step(numbers, curve, where="post", color=FRONT)
    axes.set_xlabel("trial number")
    limits = ", ".join(f"{name} {10 ** value:,.0f}" for name, value in zip(size_names, reference[1:]))
    axes.set_ylabel(f"hypervolume of (val acc, log10 size)\nreference: acc {reference[0]:g}, {limits}", fontsize=9)
    axes.set_title("Pareto-front hypervolume after each trial", fontsize=10)
    axes.grid(True, alpha=0.25)
    return figure


def importance_figure(importances: dict[str, dict[str, float]], top: int = 12) -> Figure | None:
    """A bar chart per objective of its `top` most important parameters; None without importances."""
    if not importances:
        return None
    rows = min(top, max(map(len, importances.values())))
    figure, axes_list = _figure(5.5 * len(importances), 1.2 + 0.3 * rows, columns=len(importances), left=0.2,
                                wspace=0.75, bottom=0.5 / (1.2 + 0.3 * rows) + 0.08, top=0.85)
    for axes, (objective, values) in zip(axes_list, importances.items()):
        shown = list(values.items())[:top][::-1]  # most important on top
        axes.barh([name for name, _ in shown], [value for _, value in shown], color=FRONT)
        axes.set_title(f"importance for {objective}", fontsize=10)
        axes.set_xlabel("importance (PED-ANOVA, normalised)")
        axes.tick_params(axis="y", labelsize=8)
    return figure


def effects_figure(frame: pd.DataFrame, spec: StudySpec) -> Figure | None:
    """Val accuracy against each of EFFECT_PARAMS, coloured by log size; None when no complete trial has one."""
    complete = frame[frame["state"] == "COMPLETE"]
    present = [p for p in EFFECT_PARAMS if p in complete.columns and complete[p].notna().any()]
    if not present:
        return None
    size = spec.objectives[1]
    figure, axes_list = _figure(5.5 * len(present), 4, columns=len(present), right=0.9)
    for axes, param in zip(axes_list, present):
        rows = complete[complete[param].notna()]
        points = axes.scatter(rows[param].astype(float), rows["val_accuracy"], s=16,
                              c=np.log10(np.maximum(rows[size].to_numpy(float), 1.0)), cmap="viridis")
        if param == "distill.temperature":
            _log_axis(axes.xaxis)
        axes.set_xlabel(param)
        axes.set_ylabel("validation accuracy")
        axes.grid(True, alpha=0.25)
    figure.colorbar(points, ax=axes_list, label=f"log10 {size}")
    return figure


def temperature_figure(points: pd.DataFrame, spec: StudySpec) -> Figure:
    """Chosen T (left) and KD share (right) against log size; where T does not apply the point sits hollow
    (CE-only) or as x (a KD kind without T) on the bottom edge. Each point carries its paired val gain."""
    size = spec.objectives[1]
    figure, (t_axes, share_axes) = _figure(11, 4.4, columns=2, left=0.07, right=0.98, bottom=0.14, top=0.84,
                                           wspace=0.22)
    figure.suptitle(f"{spec.name}: the distillation chosen per front architecture "
                    "(labels: paired val gain over CE-only, pt)", fontsize=10)
    sizes = np.log10(np.maximum(points["size"].to_numpy(float), 1.0))
    margin = max(0.12 * (sizes.max() - sizes.min()), 0.3)
    left, right = sizes.min() - margin, sizes.max() + margin
    temperatures = points["temperature"].dropna()
    t_top = max(8.0, 1.25 * float(temperatures.max())) if len(temperatures) else 8.0
    t_axes.axhspan(*HINTON_T, color=KNEE, alpha=0.25, linewidth=0, label="Hinton et al. 2015: T 2.5-4")
    ce = points["role"] == CE
    has_t = points["temperature"].notna()
    no_t = ~ce & ~has_t
    for axes, column, bottom, top in ((t_axes, "temperature", 0.0, t_top), (share_axes, "kd_share", 0.0, 1.05)):
        _log_axis(axes.xaxis)
        axes.set_xlim(10 ** left, 10 ** right)
        axes.set_ylim(bottom, top)
        values = points[column].fillna(bottom) if column == "temperature" else points[column]
        line = points[~ce & has_t] if column == "temperature" else points[~ce]  # the curve over the distilled
        axes.plot(line["size"], line[column], color=FRONT, linewidth=1.2, linestyle="--", alpha=0.7)
        axes.scatter(points.loc[~ce & ~no_t, "size"], values[~ce & ~no_t], s=46, color=FRONT, zorder=3,
                     clip_on=False, label="distilled choice")
        if no_t.any():
            axes.scatter(points.loc[no_t, "size"], values[no_t], s=46, marker="x", color=FRONT, zorder=3,
                         clip_on=False, label="distilled, kind without T (at the bottom)" if column == "temperature"
                         else "distilled, kind without T")
        if ce.any():
            axes.scatter(points.loc[ce, "size"], values[ce], s=52, facecolors="none", edgecolors=TEACHER,
                         linewidths=1.3, zorder=3, clip_on=False,
                         label="CE-only: T n/a (at the bottom)" if column == "temperature" else "CE-only: share 0")
        for (_, row), y in zip(points.iterrows(), values):
            text = "CE-only" if row["role"] == CE else gain_text(row["val_gain_pt"], row["val_gain_se_pt"])
            to_left = (np.log10(max(row["size"], 1.0)) - left) / (right - left) > 0.75
            axes.annotate(text, (row["size"], y), textcoords="offset points", xytext=(-6 if to_left else 6, 6),
                          ha="right" if to_left else "left", va="bottom", fontsize=7.5, annotation_clip=False,
                          color=TEACHER if row["role"] == CE else FRONT)
        axes.set_xlabel(f"{size} (log scale)")
        axes.grid(True, which="both", alpha=0.25)
    t_axes.set_ylabel("chosen temperature T")
    t_axes.set_title("temperature", fontsize=10)
    share_axes.set_ylabel("w_kd / (w_ce + w_kd)")
    share_axes.set_title("KD share of the loss", fontsize=10)
    t_axes.legend(loc="upper left", fontsize=7.5)
    return figure


