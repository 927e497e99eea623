"""A tuning trial's runs (tune.py): each a training-script process forked from a server that has
imported torch, followed through the episodes.csv it writes.

A run executes the training script (train.py or a fork) with the trial's config, one task and one
seed, in the trial's directory. `Run.passed` turns the episodes the run has logged into its score
at each report point, which the tuner reports to Optuna (and prunes by); `Run.value` is its score
when it ends: the mean return of its last episodes, or (auc) the mean over its report points,
normalised by the task's score range when there is one.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import multiprocessing
import os
import runpy
import signal
import sys

from cleanmetta.config import TrainingConfig


PRELOAD = ["torch", "gymnasium", "tyro", "cleanmetta.cli", "cleanmetta.trainer", "cleanmetta.evaluate",
           "cleanmetta.resume", "cleanmetta.losses"]
"""What the fork server imports once, so that a run starts in a fraction of a second where a new
interpreter spends about 3 seconds importing torch and the rest (scripts import what else they need)."""


def start_run(command: list[str], env: dict[str, str], log_path: str) -> multiprocessing.Process:
    """`python SCRIPT ARGS...` (command[1:]) as a process forked from a server that has imported PRELOAD;
    its output goes to log_path. The run is its own process (pruning SIGTERMs it, as any run)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    process = context.Process(target=run_script, args=(command[1], command[2:], env, log_path), name="run")
    process.start()
    return process


def run_script(script: str, argv: list[str], env: dict[str, str], log_path: str) -> None:
    """In the run's process: what `python script argv...` does (its exit status included), with the
    tuner's environment plus `env`, and SIGTERM when the tuner dies (Linux: a killed tuner leaves no run
    training on its own; the run saves and exits as at any SIGTERM)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (the fork server, which ends with the tuner)
    except (OSError, AttributeError):
        pass
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` puts its folder first
    runpy.run_path(script, run_name="__main__")


def episode_rows(path: str, offset: int) -> tuple[list[tuple[int, float]], int]:
    """The whole (agent_steps, return) rows of episodes.csv from byte `offset` on, and the new offset."""
    if not os.path.exists(path):
        return [], offset
    with open(path) as f:
        f.seek(offset)
        text = f.read()
    end = text.rfind("\n") + 1  # a row still being written waits for the next read
    rows = []
    for line in text[:end].splitlines():
        if line and not line.startswith("agent_steps"):
            steps, _, ret, _ = line.split(",")
            rows.append((int(steps), float(ret)))
    return rows, offset + len(text[:end].encode())


class Run:
    """One training process of a trial: a task and a seed. `scores` holds its normalised score at each
    report point it has passed."""

    def __init__(self, args: argparse.Namespace, config: TrainingConfig, trial_dir: str, task: int, seed: int):
        self.args, self.task, self.seed = args, task, seed
        self.name = f"{args.tasks[task].replace('/', '-').replace(':', '-')}__seed{seed}"
        self.run_dir = os.path.join(trial_dir, self.name)
        self.total = config.trainer.total_timesteps
        self.rows: list[tuple[int, float]] = []
        self.offset = 0  # the bytes of the run's episodes.csv read so far
        self.scores: list[float] = []
        self.returncode: int | None = None
        threads = max(1, min(config.torch_threads, (os.cpu_count() or 1) // args.jobs))
        self.command = [sys.executable, args.script, "--config", os.path.join(trial_dir, "config.json"),
                        "--env.id", args.tasks[task], "--seed", str(seed), "--torch-threads", str(threads),
                        "--log.run-root", trial_dir, "--experiment-name", self.name]
        self.env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def score_of(self, rows: list[tuple[int, float]]) -> float | None:
        """The normalised mean return of the last episodes of `rows` (None before the first episode)."""
        if not rows:
            return None
        value = sum(ret for _, ret in rows[-self.args.last_episodes:]) / len(rows[-self.args.last_episodes:])
        if self.args.ranges:
            low, high = self.args.ranges[self.task]
            value = (value - low) / (high - low)
        return value

    @property
    def log_path(self) -> str:
        """The run's output (the script's stdout and stderr), beside its run directory."""
        return self.run_dir + ".log"

    def last_line(self) -> str:
        """The last line the run printed (a failed run's error), or why there is none."""
        if not os.path.exists(self.log_path):
            return "no output: its process ended before the script started (the tuner's output says why)"
        with open(self.log_path) as f:
            return ([line.strip() for line in f if line.strip()] or ["(no output)"])[-1]

    def new_rows(self) -> list[tuple[int, float]]:
        """The (agent_steps, return) rows the run has logged since the last call."""
        rows, self.offset = episode_rows(os.path.join(self.run_dir, "episodes.csv"), self.offset)
        return rows

    def passed(self, rows: list[tuple[int, float]], done: bool) -> list[int]:
        """Add `rows`; the indices of the report points the run has now passed (all when `done`), whose
        scores are now in `scores` (NaN for a point before the run's first episode)."""
        self.rows += rows
        new = []
        while len(self.scores) < self.args.reports:
            point = (len(self.scores) + 1) * self.total / self.args.reports
            if not done and (not self.rows or self.rows[-1][0] < point):
                break  # rows are logged at the end of each epoch: a later one says the run is past the point
            score = self.score_of([row for row in self.rows if row[0] <= point])
            self.scores.append(math.nan if score is None else score)
            new.append(len(self.scores) - 1)
        return new

    def area(self, points: int) -> float | None:
        """(auc) The mean score over the first `points` report points, those before the first episode
        left out; None when there is none."""
        scores = [score for score in self.scores[:points] if not math.isnan(score)]
        return sum(scores) / len(scores) if scores else None

    def value(self) -> float:
        """The run's objective: its final score, or the mean of its report points' scores (auc)."""
        score = self.score_of(self.rows) if self.args.objective != "auc" else self.area(len(self.scores))
        if score is None:
            raise RunError(f"{self.run_dir} finished no episode: raise --trainer.total-timesteps")
        return score


class RunError(RuntimeError):
    """A trial's training process failed; the trial is marked failed and the study goes on."""
