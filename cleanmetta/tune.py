"""Hyperparameter sweeps with Optuna: any flag of train.py, several tasks and seeds per trial, pruning
from the runs' own logs, parallel workers on one shared study, and a best.yaml that train.py runs.

    python -m cleanmetta.tune --space 'trainer.learning_rate=1e-4..3e-3:log,ppo.clip_coef=0.1..0.3' \\
        --space 'agent.hidden_size=64|128|256' --tasks CartPole-v1 Acrobot-v1 --score-ranges 0..500 -500..0 \\
        --seeds 2 --trials 30 --jobs 2 --study-dir tune/classic -- --trainer.total-timesteps 100000

Everything after `--` (or any flag tune does not know) is train.py's: the base every trial starts
from (`--preset`, `--config`, any flag). The space uses the curriculum's task grammar: a range
`low..high` (integers when both ends are), `:log` after a range for a log scale, a choice `a|b|c`.

A trial is a sampled config. For each task and seed it runs the training script (train.py, or a
fork: `--script`) as its own process, in `<study-dir>/trials/<n>/<task>__seed<s>/`, reads the
run's episodes.csv as it grows, and reports the score so far at `--reports` points of each run;
a pruned trial's process is stopped as SIGTERM stops a run (it saves a checkpoint and exits 0)
and its run directories get `tune.json` saying so. A run's score is the mean return of its last
`--last-episodes` episodes (`--objective score`) or the mean of that score over the run's report
points (`auc`, the area under the learning curve), normalised into [0, 1] by the task's score range
(CleanRL's tuner does the same); a trial's score is the mean over its runs. `score,seconds` and
`score,steps` add a second objective, the trial's cost (process seconds or agent steps), and give
the Pareto front of score against cost.

The study lives in Optuna's storage: `<study-dir>/study.db` (SQLite) unless `--storage` names
another database URL (e.g. PostgreSQL, for workers on several machines). Any number of tune
processes share a study; `--trials` counts the study's finished trials, so a tuner killed and
started again runs only the rest, and a trial whose tuner died is marked failed by the next one
(Optuna's heartbeat). Each stop writes the report (tune_report.py): best.yaml, results.md, and
pictures with the `plot` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from cleanmetta.cli import USER_ERRORS, parse_config
from cleanmetta.config import ConfigError, TrainingConfig, import_extra, parse_kwargs, parse_range, parse_setting
from cleanmetta.files import make_directory, write_json
from cleanmetta.tune_report import write_report
from cleanmetta.tune_runs import Run, RunError, start_run

OBJECTIVES = ("score", "auc", "score,seconds", "score,steps")
PRUNERS = ("median", "halving", "none")
HEARTBEAT_S = 5
"""A running trial's tuner writes a heartbeat this often; one silent for 3x as long is marked failed."""


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a float or int range (on a log scale or not), or a choice."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        return suggest(self.name, self.low, self.high, log=self.log)


def parse_space(texts: list[str]) -> list[Param]:
    """`--space` values ('key=low..high[:log],key=a|b|c', any number of them) as Params."""
    params = []
    for text in texts:
        for key, value in parse_kwargs(text, "--space").items():
            name, where = key.strip().replace("-", "_"), f"--space {key}={value}"
            value, log = (value[:-4], True) if isinstance(value, str) and value.endswith(":log") else (value, False)
            setting = parse_setting(value, where) if isinstance(value, str) else None
            if setting is None:
                raise ConfigError(f"{where} is one value, not a range or a choice: write low..high or a|b|c "
                                  "(a fixed value is a train.py flag after --)")
            if setting.kind != "choice" and not setting.low < setting.high:
                raise ConfigError(f"{where} is an empty range: write low..high with low < high")
            if log and (setting.kind == "choice" or setting.low <= 0):
                raise ConfigError(f"{where}: ':log' needs a range of positive numbers, e.g. 1e-4..1e-2:log")
            if setting.kind == "choice" and not all(isinstance(c, (str, int, float, bool)) or c is None
                                                    for c in setting.choices):
                raise ConfigError(f"{where}: each choice must be a number, a bool, a string or null")
            params.append(Param(name, setting.kind, setting.low, setting.high, log, setting.choices))
    if not params:
        raise ConfigError("--space is empty: name at least one flag to tune, e.g. --space 'ppo.clip_coef=0.1..0.3'")
    if len({p.name for p in params}) < len(params):
        raise ConfigError("--space names a flag twice: give each flag one range or choice")
    return params


def plain(data: Any) -> Any:
    """`data` as JSON stores it (tuples as lists), a copy: what Optuna's storage keeps and gives back."""
    return json.loads(json.dumps(data))


def config_with(base: TrainingConfig, values: dict[str, Any]) -> TrainingConfig:
    """`base` with each dotted flag of `values` set (ConfigError naming an unknown flag or a bad value)."""
    data = plain(base.to_dict())
    for name, value in values.items():
        section = data
        *path, last = name.split(".")
        for part in path:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ConfigError(f"unknown config key '{name}': '{part}' is a setting, not a section")
        section[last] = value
    return TrainingConfig.from_dict(data).validate()


def check_space(base: TrainingConfig, params: list[Param]) -> None:
    """Build a config at both ends and the middle of every range and at every choice: an unknown flag,
    or a value the flag refuses (a fraction for an integer), is an error now, before any trial runs."""
    for param in params:
        middle = (param.low + param.high) / 2 if param.kind == "float" else param.low
        for value in param.choices or (param.low, middle, param.high):
            try:
                config_with(base, {param.name: value})
            except ConfigError as err:
                raise ConfigError(f"--space {param.name}={value!r}: " + " ".join(str(err).split())) from None


RANGE = re.compile(r"^-?[0-9.eE+]+\.\.-?[0-9.eE+-]+$")


def ranges_as_flags(argv: list[str]) -> list[str]:
    """`--score-ranges 0..500 -500..0` as `--score-ranges=0..500 --score-ranges=-500..0`: argparse would
    take a value starting with '-' for a flag."""
    out, taking = [], False
    for arg in argv:
        taking = arg == "--score-ranges" or (taking and RANGE.match(arg) is not None)
        if arg != "--score-ranges":
            out.append(f"--score-ranges={arg}" if taking else arg)
    return out


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, TrainingConfig]:
    """tune's own flags, and the base config from the rest (train.py's flags)."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m cleanmetta.tune", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Every other flag (or all after --) is train.py's: the base config.")
    add = parser.add_argument
    add("--space", action="append", default=[], help="flags to tune: 'key=low..high[:log],key=a|b|c' (repeatable)")
    add("--tasks", nargs="+", default=None, help="env ids (task strings) each trial trains on (default: the base's)")
    add("--score-ranges", nargs="+", action="extend", default=None, metavar="LOW..HIGH",
        help="per task (in the order of --tasks) the score range normalised into [0, 1], e.g. 0..500 -500..0")
    add("--seeds", type=int, default=1, help="seeds per task and trial: 1..N")
    add("--trials", type=int, default=20, help="finished trials the study should hold (it stops there)")
    add("--jobs", type=int, default=1, help="trials run at once by this process")
    add("--study-dir", default="tune", help="the study's directory: trials, storage, report")
    add("--study-name", default="cleanmetta", help="the study's name in the storage")
    add("--storage", default=None, help="an Optuna storage URL (default: sqlite:///<study-dir>/study.db)")
    add("--objective", default="score", choices=OBJECTIVES, metavar="|".join(OBJECTIVES),
        help="what a trial is scored by: the final score, its area under the curve, or the score and a cost")
    add("--pruner", default=None, choices=PRUNERS, help="stop weak trials early (default: median; none for two objectives)")
    add("--reports", type=int, default=10, help="points of each run where its score so far is reported")
    add("--last-episodes", type=int, default=20, help="episodes a run's score is the mean return of")
    add("--script", default="train.py", help="the training script each run executes (train.py or a fork)")
    add("--sampler-seed", type=int, default=None, help="seed of Optuna's TPE sampler")
    args, rest = parser.parse_known_args(ranges_as_flags(argv[:split]))
    base = parse_config(rest + argv[split + 1:])
    for name in ("seeds", "trials", "jobs", "reports", "last_episodes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if not os.path.isfile(args.script):
        raise ConfigError(f"--script {args.script!r} is not a file: run from the directory holding train.py, "
                          "or name the training script, e.g. --script path/to/train.py")
    args.tasks = args.tasks or [base.env.id]
    if args.score_ranges is None and len(args.tasks) > 1:
        raise ConfigError(f"--tasks names {len(args.tasks)} tasks: give each its score range with --score-ranges "
                          "(e.g. --score-ranges 0..500 -500..0), so that their scores can be averaged")
    if args.score_ranges is not None and len(args.score_ranges) != len(args.tasks):
        raise ConfigError(f"--score-ranges has {len(args.score_ranges)} ranges for {len(args.tasks)} tasks: "
                          "give one 'low..high' per task, in the order of --tasks")
    args.ranges = [parse_range(text, "--score-ranges entry") for text in args.score_ranges or []]
    args.two_objectives = "," in args.objective
    if args.pruner is None:
        args.pruner = "none" if args.two_objectives else "median"
    if args.two_objectives and args.pruner != "none":
        raise ConfigError(f"--pruner {args.pruner} with --objective {args.objective}: Optuna prunes single-objective "
                          "studies only; leave --pruner out (or none)")
    args.params = parse_space(args.space)
    check_space(base, args.params)
    return args, base


def open_study(args: argparse.Namespace, base: TrainingConfig) -> tuple[Any, Any]:
    """The study and its storage, created or continued; ConfigError when it cannot be opened or was made
    with other settings."""
    optuna = import_extra("optuna", "tune", "python -m cleanmetta.tune")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's, since 2.9
    make_directory(args.study_dir, "--study-dir")
    url = args.storage or f"sqlite:///{os.path.abspath(os.path.join(args.study_dir, 'study.db'))}"
    storage = open_storage(optuna, url)
    sampler = optuna.samplers.TPESampler(seed=args.sampler_seed, multivariate=True, constant_liar=True)
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=args.reports // 2),
              "halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}[args.pruner]()
    directions = ["maximize", "minimize"] if args.two_objectives else ["maximize"]
    study = optuna.create_study(storage=storage, study_name=args.study_name, sampler=sampler, pruner=pruner,
                                directions=directions, load_if_exists=True)
    settings = plain({"space": sorted(args.space), "tasks": args.tasks, "score_ranges": args.ranges,
                      "seeds": args.seeds, "objective": args.objective, "last_episodes": args.last_episodes,
                      "reports": args.reports, "base": base.to_dict()})
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        changed = sorted(key for key in settings if saved.get(key) != settings[key])
        raise ConfigError(f"the study {args.study_name!r} in {url} was made with other settings ({', '.join(changed)}): "
                          "continue it with the same flags, or start another with --study-dir or --study-name")
    fail_orphans(study, storage)
    return study, storage


def open_storage(optuna: Any, url: str, attempts: int = 5) -> Any:
    """Optuna's RDBStorage at `url`. Tuners started together race to create a new database's tables
    (one gets IntegrityError or 'database is locked'): each tries again a few times."""
    import sqlalchemy.exc  # comes with optuna (the tune extra)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as err:
            if attempt == attempts - 1:
                raise ConfigError(f"--storage {url!r} cannot be opened: {str(err).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as err:  # a bad URL, a missing driver: SQLAlchemy's many errors
            raise ConfigError(f"--storage {url!r} cannot be opened: {str(err).splitlines()[0]}") from None


def fail_orphans(study: Any, storage: Any) -> None:
    """Mark failed, never RUNNING for ever, the trials whose tuner died: at once when it ran on this
    machine (its process is gone), else once its heartbeat is 3 x HEARTBEAT_S old (Optuna's rule)."""
    import optuna  # the tune extra (optional): imported once main has checked it is there
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Objective:
    """Optuna's objective: sample a config, train it on every task and seed, return its value(s)."""

    def __init__(self, args: argparse.Namespace, base: TrainingConfig):
        self.args, self.base = args, base
        self.lock = threading.Lock()
        self.failures_in_a_row = 0

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna  # the tune extra (optional): imported once main has checked it is there
        args = self.args
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # fail_orphans reads it
        values = {param.name: param.suggest(trial) for param in args.params}
        trial_dir = os.path.join(args.study_dir, "trials", str(trial.number))
        config = config_with(self.base, {**values, "env.id": args.tasks[0], "seed": 1})  # best.yaml's task, seed
        make_directory(trial_dir, "--study-dir")
        data = plain(config.to_dict())
        write_json(os.path.join(trial_dir, "config.json"), data)
        trial.set_user_attr("config", data)  # best.yaml on any worker's machine
        runs, seconds, steps = [], 0.0, 0
        try:
            for task in range(len(args.tasks)):
                for seed in range(1, args.seeds + 1):
                    run = Run(args, config, trial_dir, task, seed)
                    runs.append(run)
                    started = time.perf_counter()
                    self.train(trial, run, [r.value() for r in runs[:-1]], len(runs) - 1)
                    seconds += time.perf_counter() - started
                    with open(os.path.join(run.run_dir, "summary.json")) as f:
                        steps += json.load(f)["agent_steps"]
        except optuna.TrialPruned:
            self.mark(trial, runs, "pruned")
            raise
        except BaseException as err:
            self.mark(trial, runs, "failed")
            if isinstance(err, RunError):
                print(f"trial {trial.number} failed: {err}", flush=True)
            raise
        score = sum(run.value() for run in runs) / len(runs)
        self.mark(trial, runs, "complete", score=score)
        with self.lock:
            self.failures_in_a_row = 0
        cost = {"score,seconds": seconds, "score,steps": float(steps)}.get(args.objective)
        return (score, cost) if cost is not None else score

    def train(self, trial: Any, run: Run, finished: list[float], index: int) -> None:
        """Run one training process; stop it as SIGTERM stops a run (it finishes its epoch, saves a
        checkpoint, exits 0) when the pruner says so (then raise TrialPruned) or the tuner stops."""
        import optuna  # the tune extra (optional): imported once main has checked it is there
        process = start_run(run.command, run.env, run.log_path)
        try:
            pruned = self.follow(trial, run, process, finished, index)
        finally:  # pruned, or the tuner interrupted (Ctrl-C, SIGTERM)
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
            process.join()
            run.returncode = process.exitcode
        if pruned:
            raise optuna.TrialPruned()
        if run.returncode != 0:
            raise RunError(f"{' '.join(run.command[1:])} exited with {run.returncode}: {run.last_line()}")

    def follow(self, trial: Any, run: Run, process: multiprocessing.Process, finished: list[float], index: int) -> bool:
        """Read the run's episodes.csv as it grows, reporting the trial's score so far at each report point
        (the mean of the finished runs' values and this run's); True when the pruner says stop."""
        while True:
            done = not process.is_alive()
            for point in run.passed(run.new_rows(), done and process.exitcode == 0):
                score = run.scores[point] if self.args.objective != "auc" else run.area(point + 1)  # auc: up to here
                if self.args.two_objectives or score is None or math.isnan(score):
                    continue
                trial.report((sum(finished) + score) / (len(finished) + 1), step=index * self.args.reports + point)
                if not done and trial.should_prune():
                    return True
            if done:
                return False
            time.sleep(0.25)

    def mark(self, trial: Any, runs: list[Run], state: str, score: float | None = None) -> None:
        """Write tune.json into each run directory and the trial's: its state, params and scores."""
        record = {"trial": trial.number, "state": state, "params": trial.params, "score": score,
                  "runs": {run.name: {"scores": run.scores, "exit": run.returncode} for run in runs}}
        for run in runs:
            if os.path.isdir(run.run_dir):
                write_json(os.path.join(run.run_dir, "tune.json"), record)
        write_json(os.path.join(self.args.study_dir, "trials", str(trial.number), "tune.json"), record)
        if state == "failed":
            with self.lock:
                self.failures_in_a_row += 1


def main(argv: list[str]) -> None:
    args, base = parse_args(argv)
    optuna = import_extra("optuna", "tune", "python -m cleanmetta.tune")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial: our one line, not its traceback
    study, storage = open_study(args, base)
    objective = Objective(args, base)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def stop_when_done(study: Any, trial: Any) -> None:
        if trial.state != optuna.trial.TrialState.FAIL:  # a failed one has said why (Objective)
            print(f"trial {trial.number} {trial.state.name.lower()}: {trial.values} {trial.params}", flush=True)
        if objective.failures_in_a_row >= max(3, args.jobs):
            study.stop()
        optuna.study.MaxTrialsCallback(args.trials, states=finished)(study, trial)

    done = len(study.get_trials(deepcopy=False, states=finished))
    print(f"study {args.study_name!r} in {args.study_dir}: {done} of {args.trials} trials finished", flush=True)
    try:
        if done < args.trials:
            study.optimize(objective, n_jobs=args.jobs, callbacks=[stop_when_done], catch=(RunError,))
    finally:
        fail_orphans(study, storage)
        write_report(study, args)
    if objective.failures_in_a_row >= max(3, args.jobs):
        raise ConfigError(f"{objective.failures_in_a_row} trials failed in a row: see the last one's log under "
                          f"{os.path.join(args.study_dir, 'trials')} (e.g. a task that cannot be built)")


def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running trial is marked failed, the report written


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    try:
        main(sys.argv[1:])
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("stopped: the same command continues the study (finished trials are kept)")
