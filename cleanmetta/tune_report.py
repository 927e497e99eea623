"""What a study leaves in its directory, rewritten each time a tuner stops (tune.py):

- `best.yaml`: the best trial's config, which `python train.py --config best.yaml` runs as it is
  (with two objectives: the trial of the Pareto front with the best score);
- `results.md`: the top trials (also printed), the Pareto front, and the parameters' importances;
- with the `plot` extra: `history.png`, `parallel.png`, `importances.png`, and `pareto.png` for two
  objectives (Optuna's matplotlib plots). `optuna-dashboard sqlite:///<study-dir>/study.db` shows
  the same study live in a browser.
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import yaml

from cleanmetta.files import write_atomic, write_text

TOP = 10
"""Trials in results.md's table."""


def best_trial(study: Any) -> Any | None:
    """The best complete trial (two objectives: the highest score on the Pareto front), or None."""
    if not any(trial.state.name == "COMPLETE" for trial in study.trials):
        return None
    front = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    return max(front, key=lambda trial: trial.values[0])


def table(study: Any, args: argparse.Namespace) -> str:
    """The top trials by score as a markdown table: complete ones, then pruned ones by their last report."""
    def score(trial: Any) -> float:
        if trial.values:
            return trial.values[0]
        return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else -1e30

    names = [param.name for param in args.params]
    cost = args.objective.partition(",")[2]
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    trials.sort(key=lambda t: (t.state.name == "COMPLETE", score(t)), reverse=True)
    head = ["trial", "state", "score"] + ([cost] if cost else []) + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trial in trials[:TOP]:
        values = [f"{v:.4g}" for v in trial.values] if trial.values else [f"{score(trial):.4g} (at prune)"] + \
            (["-"] if cost else [])
        params = [f"{trial.params[n]:.4g}" if isinstance(trial.params.get(n), float) else str(trial.params.get(n))
                  for n in names]
        lines.append("| " + " | ".join([str(trial.number), trial.state.name.lower(), *values, *params]) + " |")
    return "\n".join(lines)


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances for the score (empty below 2 complete trials)."""
    import optuna  # the tune extra (optional), there whenever a study is
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    target = (lambda t: -t.values[0]) if len(study.directions) > 1 else None  # its evaluator ranks low values
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the evaluator's reminder that it ranks low values, each call
            return optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError):  # e.g. every trial drew the same values
        return {}


def pictures(study: Any, study_dir: str) -> list[str]:
    """Optuna's matplotlib plots as PNGs (the plot extra); the names written, or [] without matplotlib."""
    try:
        import matplotlib  # the plot extra (optional): without it, no pictures
        matplotlib.use("Agg")
        from optuna.visualization import matplotlib as plots  # the same extra
    except ImportError:
        return []
    two = len(study.directions) > 1
    target = {"target": lambda t: t.values[0], "target_name": "score"} if two else {"target_name": "score"}
    ranked = {"target": lambda t: -t.values[0], "target_name": "score"} if two else {"target_name": "score"}
    wanted = {"history.png": lambda: plots.plot_optimization_history(study, **target),
              "parallel.png": lambda: plots.plot_parallel_coordinate(study, **target),
              "importances.png": lambda: plots.plot_param_importances(study, **ranked)}
    if two:
        wanted["pareto.png"] = lambda: plots.plot_pareto_front(study, target_names=["score", "cost"])
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental, each call
        for name, plot in wanted.items():
            try:
                ax = plot()
            except (ValueError, RuntimeError):  # too few trials for this plot yet
                continue
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            write_atomic(os.path.join(study_dir, name), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
            matplotlib.pyplot.close(figure)
            written.append(name)
    return written


def write_report(study: Any, args: argparse.Namespace) -> None:
    """best.yaml, results.md and the pictures, from the study as it stands; the table to the console."""
    states = [t.state.name for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
                       if s in states)
    text = [f"# Study {study.study_name!r}", "",
            f"Objective: {args.objective} over {', '.join(args.tasks)} x {args.seeds} seed(s); trials: {counts or 'none'}."]
    best = best_trial(study)
    if best is not None:
        config = best.user_attrs["config"]  # from the storage: the trial may have run on another machine
        write_text(os.path.join(args.study_dir, "best.yaml"),
                   f"# the best trial of study {study.study_name!r}: trial {best.number}, values {best.values}\n"
                   f"# python train.py --config {os.path.join(args.study_dir, 'best.yaml')}\n"
                   + yaml.safe_dump(config, sort_keys=False))
        text += ["", f"Best: trial {best.number}, values {[round(v, 4) for v in best.values]}, params {best.params}; "
                     f"`python train.py --config {os.path.join(args.study_dir, 'best.yaml')}` trains it."]
    text += ["", table(study, args)]
    if len(study.directions) > 1 and best is not None:
        front = sorted(study.best_trials, key=lambda t: t.values[1])
        text += ["", "Pareto front (score against cost): " + ", ".join(
            f"trial {t.number} ({t.values[0]:.4g}, {t.values[1]:.4g})" for t in front)]
    ranked = importances(study)
    if ranked:
        text += ["", "Importances (Optuna's, for the score): " + ", ".join(f"{k} {v:.2f}" for k, v in ranked.items())]
    written = pictures(study, args.study_dir) if best is not None else []
    text += ["", "Pictures: " + ", ".join(written) if written else
             "Pictures: none yet (they need the plot extra, pip install -e \".[plot]\", and a few finished trials)"]
    write_text(os.path.join(args.study_dir, "results.md"), "\n".join(text) + "\n")
    print("\n".join(text[2:]), flush=True)
