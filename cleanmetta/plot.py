"""Learning curves as pictures: episodic return against agent steps and against wall time.

    python -m cleanmetta.plot runs/A runs/B ... --out curves.png

Each run directory's `episodes.csv` (written by log.py: agent_steps, seconds, return, length of
every finished episode) gives one curve: at each point, the mean return of the last 20 episodes
that had ended by then, as the console's "return (last 20)" (with all episodes of the epoch the
earliest of them ended in: a multi-agent epoch ends many at once). Runs whose config.json is the same
but for the seed (and the run's name and paths) are one experiment: drawn as the mean of its seeds'
curves with a band from the lowest to the highest seed, where every seed has data. Two panels: against agent steps and
against training seconds. Benchmarks draw their own runs (and other libraries') with
`plot_curves`. matplotlib is an optional extra: pip install -e ".[plot]".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import textwrap
from typing import Any

import numpy as np

from cleanmetta.config import ConfigError, import_extra

# config keys that do not change what a run learns: runs that differ only in these are seeds of one experiment
NOT_THE_EXPERIMENT = {"seed", "experiment_name", "log", "checkpoint", "evaluation", "device", "torch_threads",
                      "distributed_timeout"}


class PlotError(ValueError):
    """A run directory cannot be plotted; the message names it and what is missing."""


def read_episodes(run_dir: str) -> np.ndarray:
    """The run's finished episodes as rows of (agent_steps, seconds, return), in the order they ended."""
    path = os.path.join(run_dir, "episodes.csv")
    if not os.path.isdir(run_dir):
        raise PlotError(f"{run_dir}: no such run directory")
    if not os.path.isfile(path):
        raise PlotError(f"{run_dir}: no episodes.csv, so no finished episodes to plot (is it a cleanmetta run "
                        "directory, e.g. runs/NAME?)")
    with open(path, newline="") as f:
        rows = [(float(r["agent_steps"]), float(r["seconds"]), float(r["return"])) for r in csv.DictReader(f)
                if r.get("length")]  # a row cut short by a kill has no length
    if not rows:
        raise PlotError(f"{run_dir}: no episode has finished yet (episodes.csv has no rows); train longer, or "
                        "drop this run from the plot")
    return np.array(rows)


def last_mean(x: np.ndarray, returns: np.ndarray, grid: np.ndarray, window: int = 20) -> np.ndarray:
    """At each grid point, the mean of the last `window` returns whose x (step or second) is <= it,
    and of every other episode logged at the same x as the earliest of those (a run logs an epoch's
    episodes at one step: a MettaGrid epoch ends 64 agents' episodes at once, and the mean of any 20
    of them would depend on their order); NaN before the first episode and after the last one."""
    order = np.argsort(x, kind="stable")
    x, returns = x[order], returns[order]
    sums = np.concatenate([[0.0], np.cumsum(returns)])
    end = np.searchsorted(x, grid, side="right")
    start = np.searchsorted(x, x[np.maximum(end - window, 0)], side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[end] - sums[start]) / (end - start)
    means[(end == 0) | (grid > x[-1])] = np.nan
    return means


def experiment_curve(runs: list[np.ndarray], column: int, window: int = 20, points: int = 200
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) over the seeds `runs` (episode arrays), x from column 0 (steps) or 1 (seconds),
    at the points where every seed has data."""
    grid = np.linspace(0.0, max(run[:, column].max() for run in runs), points)
    curves = np.stack([last_mean(run[:, column], run[:, 2], grid, window) for run in runs])
    everyone = ~np.isnan(curves).any(axis=0)  # where every seed has data: the mean never changes its members
    grid, curves = grid[everyone], curves[:, everyone]
    return grid, curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)


def draw_curves(experiments: dict[str, list[np.ndarray]], title: str = "", window: int = 20):
    """A matplotlib figure of each experiment (label -> its seeds' episode arrays) against agent steps
    (left) and training seconds (right)."""
    matplotlib = import_extra("matplotlib", "plot", "plotting learning curves")
    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    # the legend goes under both panels, one label a line when they are long: it never covers a curve,
    # and the panels keep their width (the figure grows by the legend's lines)
    labels = {label: textwrap.fill(label + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""), 100)
              for label, runs in experiments.items()}
    columns = 2 if max(len(text) for text in labels.values()) <= 45 else 1
    lines = sum(text.count("\n") + 1 for text in labels.values()) / columns
    fig, axes = plt.subplots(1, 2, figsize=(11, 4 + 0.22 * lines), layout="constrained")
    draw_curve_axes(axes, {labels[label]: runs for label, runs in experiments.items()}, window)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=columns, fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def draw_curve_axes(axes, experiments: dict[str, list[np.ndarray]], window: int = 20,
                    ylabel: str | None = None) -> None:
    """Each experiment's mean (and, over several seeds, its range) on a pair of matplotlib axes: against
    agent steps, and against training seconds. An array per seed: (step, seconds, return) rows."""
    for label, runs in experiments.items():
        if not runs:
            raise PlotError(f"experiment {label!r} has no runs to plot")
        for ax, column in zip(axes, (0, 1)):
            x, mean, low, high = experiment_curve(runs, column, window)
            (line,) = ax.plot(x, mean, label=label)
            if len(runs) > 1:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes[0].set_xlabel("agent steps")
    axes[1].set_xlabel("training seconds")
    for ax in axes:
        ax.set_ylabel(ylabel or f"episodic return (mean of last {window})")
        ax.grid(alpha=0.3)


def plot_curves(experiments: dict[str, list[np.ndarray]], out: str, title: str = "", window: int = 20) -> str:
    """draw_curves, written to `out` as a PNG; returns its path."""
    fig = draw_curves(experiments, title, window)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    import matplotlib.pyplot as plt  # the plot extra: draw_curves imported it

    plt.close(fig)
    return out


def experiment_key(run_dir: str) -> dict[str, Any]:
    """The run's config.json without the keys that only tell seeds and runs apart (flattened)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {"run": os.path.basename(os.path.normpath(run_dir))}  # no config: a group of its own
    with open(path) as f:
        config = json.load(f)
    return {key: value for key, value in _flatten(config).items() if key.split(".")[0] not in NOT_THE_EXPERIMENT}


def group_runs(run_dirs: list[str]) -> dict[str, list[str]]:
    """Run directories grouped into experiments, labelled by the config values that tell them apart
    (one experiment: its env id)."""
    keys = [experiment_key(run_dir) for run_dir in run_dirs]
    groups: list[tuple[dict[str, Any], list[str]]] = []
    for key, run_dir in zip(keys, run_dirs):
        for group_key, members in groups:
            if group_key == key:
                members.append(run_dir)
                break
        else:
            groups.append((key, [run_dir]))
    differing = sorted({name for key, _ in groups for name in key if any(name not in other or other[name] != key[name]
                                                                         for other, _ in groups)})
    labels = {}
    for key, members in groups:
        label = ", ".join(f"{name}={key[name]}" for name in differing if name in key)
        labels[label or str(key.get("env.id", os.path.basename(os.path.normpath(members[0]))))] = members
    return labels


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cleanmetta.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories, e.g. runs/A runs/B (seeds of one experiment "
                                                    "are averaged)")
    parser.add_argument("--out", default="curves.png", help="PNG file to write")
    parser.add_argument("--title", default="")
    parser.add_argument("--window", type=int, default=20, help="episodes averaged at each point")
    args = parser.parse_args(argv)
    try:
        if args.window < 1:
            raise PlotError(f"--window {args.window} must be >= 1")
        experiments = {label: [read_episodes(run_dir) for run_dir in members]
                       for label, members in group_runs(args.run_dirs).items()}
        replaced = os.path.exists(args.out)
        path = plot_curves(experiments, args.out, args.title, args.window)
        print(f"wrote {path}" + (" (it replaced the file of that name; --out names another)" if replaced else ""))
    except (PlotError, ConfigError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
