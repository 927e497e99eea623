"""cleanmetta's tuner (python -m cleanmetta.tune) against CleanRL's (cleanrl_utils/tuner.py), same space, same clock.

Both tuners search the PPO knobs both libraries have, on CartPole-v1 and Acrobot-v1 together (returns
normalised into [0, 1] by the ranges 0..500 and -500..0, the mean over tasks and seeds is a trial's
score), 2 seeds per trial, every run 50k agent steps, TPE with the median pruner, Optuna's SQLite
storage, one trial at a time, one torch thread per run:
  learning rate   1e-4..3e-3 on a log scale     clip coefficient   0.1..0.3
  entropy coef    0..0.05                       update epochs      1..10
  minibatches     1, 2, 4 or 8
  cleanmetta  python -m cleanmetta.tune driving train.py (each run a process forked from a server that
              has imported torch): it scores each run at 10 points as it trains
              (the median pruner may stop a run half way) and a run is the mean of its last 20 returns;
  cleanrl     CleanRL's Tuner driving its cleanrl/ppo.py in-process (runpy), its MedianPruner and
              TPESampler as in its tuner_example.py; a run is the mean of the last 20 returns in its
              TensorBoard log (its window set to cleanmetta's 20), and it reports once per seed.
Each tuner gets the same wall-clock budget (--wall-minutes, default 20) and is stopped with SIGTERM
when it is spent; the budget used is kept in <work-dir>/<tuner>/clock.json, so a stopped benchmark
continues where it was and the same tuner command continues the study. Then the best config of each
tuner trains 5 fresh seeds (101-105) on both tasks at the same budget beside its library's defaults
(cleanmetta's train.py, CleanRL's ppo.py), the four configs back to back per task and seed, their
order rotated every seed.

CleanRL's code is not in this file: it is copied from a checkout (--cleanrl) into <work-dir>/cleanrl at
run time and adapted there with text substitutions (cleanrl_scripts.adapt): ppo.py as in suite.py
(gymnasium 1.x), and tuner.py so that (1) a rerun continues its study (create_study's
load_if_exists) and (2) the script sees every flag: the tuner sets sys.argv to the flags alone, so
that tyro, reading sys.argv[1:], drops the first one (the learning rate); argv[0] is put back
(CleanRL's issue #533, its fix in pull request #536 is not merged at fe8d8a0).

Results, each written as soon as it is known, with the command, commit, machine and load average
(compare.write_result): <out-dir>/<tuner>.json (the study's trials with their states, scores and
wall-clock minutes, once the tuner's budget is spent) and <out-dir>/eval/<task>_<config>_seed<N>.json
(one fresh-seed run); a file that exists is not made again. The report: <out-dir>.md and <out-dir>.png
(best score so far against wall-clock minutes). Tuner logs: <work-dir>/<tuner>.log.

    git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl
    python benchmarks/tune.py --cleanrl /tmp/cleanrl            # 2 x 20 min of tuning, then ~10 min of fresh seeds
    python benchmarks/tune.py --cleanrl /tmp/cleanrl --wall-minutes 1 --total-timesteps 5000 --eval-seeds 101 \\
        --out-dir /tmp/tune_smoke/tune --work-dir /tmp/tune_smoke/work   # a smoke run: minutes
    python benchmarks/tune.py --report                          # the report from the files on disk
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)
import suite  # noqa: E402
from cleanrl_scripts import MARK, adapt, read_run  # noqa: E402

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py shadows

from cleanmetta.files import write_json, write_text  # noqa: E402

TASKS = {"CartPole-v1": (0.0, 500.0), "Acrobot-v1": (-500.0, 0.0)}  # env id -> score range normalised to [0, 1]
SEEDS_PER_TRIAL = 2
LAST_EPISODES = 20
TUNERS = ["cleanmetta", "cleanrl"]
CONFIGS = ["cleanmetta_default", "cleanmetta_best", "cleanrl_default", "cleanrl_best"]
SPACE = (  # cleanmetta's flag, CleanRL's flag, low, high or choices, log scale
    ("trainer.learning_rate", "learning-rate", 1e-4, 3e-3, True),
    ("ppo.clip_coef", "clip-coef", 0.1, 0.3, False),
    ("ppo.ent_coef", "ent-coef", 0.0, 0.05, False),
    ("ppo.update_epochs", "update-epochs", 1, 10, False),
    ("ppo.num_minibatches", "num-minibatches", (1, 2, 4, 8), None, False),
)
CLEANMETTA_BASE = ["--log.no-tensorboard", "--log.console-interval", "1e9"]  # logging only: quiet, no event files
RESULTS = os.path.join(HERE, "results", "tune")
WORK = os.path.join(tempfile.gettempdir(), "cleanmetta_tune_benchmark")

TUNER_SUBSTITUTIONS = [
    ("a rerun continues the study in the storage", "            sampler=self.sampler,\n",
     "            sampler=self.sampler,\n            load_if_exists=True," + MARK + "\n"),
    ("the script sees every flag: tyro reads sys.argv[1:], so argv[0] must be the script",
     'sys.argv = algo_command + [f"--env-id={env_id}", f"--seed={seed}"]',
     'sys.argv = [self.script] + algo_command + [f"--env-id={env_id}", f"--seed={seed}"]' + MARK),
]

DRIVER = '''"""CleanRL's Tuner on benchmarks/tune.py's space: written by it, run in {work}."""
import sys
import optuna
import torch
sys.path.insert(0, {work!r})
from cleanrl_utils.tuner import Tuner
torch.set_num_threads(1)
SPACE = {space!r}

def params_fn(trial):
    params = {{}}
    for _, flag, low, high, log in SPACE:
        if isinstance(low, (list, tuple)):
            params[flag] = trial.suggest_categorical(flag, list(low))
        elif isinstance(low, int) and isinstance(high, int):
            params[flag] = trial.suggest_int(flag, low, high, log=log)
        else:
            params[flag] = trial.suggest_float(flag, low, high, log=log)
    params["total-timesteps"] = {steps}
    return params

Tuner(script={script!r}, metric="charts/episodic_return", metric_last_n_average_window={last},
      target_scores={targets!r}, params_fn=params_fn, direction="maximize", aggregation_type="average",
      pruner=optuna.pruners.MedianPruner(n_startup_trials=5), sampler=optuna.samplers.TPESampler(seed=0),
      storage={storage!r}, study_name="cleanrl").tune(num_trials=100000, num_seeds={seeds})
'''


def cleanmetta_space() -> str:
    parts = []
    for name, _, low, high, log in SPACE:
        parts.append(f"{name}={'|'.join(map(str, low))}" if isinstance(low, tuple)
                     else f"{name}={low}..{high}{':log' if log else ''}")
    return ",".join(parts)


def tuner_command(tuner: str, args: argparse.Namespace) -> tuple[list[str], dict, str]:
    """The tuner's command, its environment and the directory it runs in (CleanRL's: adapted here first)."""
    study = os.path.join(args.work_dir, tuner)
    os.makedirs(study, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if tuner == "cleanmetta":
        ranges = [f"{low:g}..{high:g}" for low, high in TASKS.values()]
        return ([sys.executable, "-m", "cleanmetta.tune", "--space", cleanmetta_space(), "--tasks", *TASKS,
                 "--score-ranges", *ranges, "--seeds", str(SEEDS_PER_TRIAL), "--trials", "100000", "--jobs", "1",
                 "--pruner", "median", "--last-episodes", str(LAST_EPISODES), "--sampler-seed", "0",
                 "--study-dir", study, "--", "--trainer.total-timesteps", str(args.total_timesteps),
                 *CLEANMETTA_BASE], env, ROOT)
    if args.cleanrl is None:
        raise SystemExit("--cleanrl PATH is needed for CleanRL's tuner (git clone https://github.com/vwxyzjn/cleanrl "
                         "/tmp/cleanrl)")
    scratch = os.path.join(args.work_dir, "cleanrl")
    script = adapt(os.path.join(args.cleanrl, "cleanrl", "ppo.py"), suite.SUBSTITUTIONS["ppo.py"],
                   os.path.join(scratch, "cleanrl"), "benchmarks/tune.py")
    adapt(os.path.join(args.cleanrl, "cleanrl_utils", "tuner.py"), TUNER_SUBSTITUTIONS,
          os.path.join(scratch, "cleanrl_utils"), "benchmarks/tune.py")
    driver = os.path.join(scratch, "tune_driver.py")
    write_text(driver, DRIVER.format(work=scratch, space=SPACE, steps=args.total_timesteps, script=script,
                                     last=LAST_EPISODES, targets={k: list(v) for k, v in TASKS.items()},
                                     storage=f"sqlite:///{os.path.join(study, 'study.db')}", seeds=SEEDS_PER_TRIAL))
    return [sys.executable, driver], env, scratch


def run_tuner(tuner: str, args: argparse.Namespace) -> None:
    """Run the tuner until its wall-clock budget (kept in clock.json across reruns) is spent, then SIGTERM it."""
    clock_path = os.path.join(args.work_dir, tuner, "clock.json")
    clock = json.load(open(clock_path)) if os.path.exists(clock_path) else {"segments": []}
    used = sum(end - start for start, end in clock["segments"])
    budget = args.wall_minutes * 60
    if used < budget:
        command, env, cwd = tuner_command(tuner, args)
        with open(os.path.join(args.work_dir, f"{tuner}.log"), "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)} ({budget - used:.0f} s left)\n")
            log.flush()
            start = time.time()
            clock["segments"].append([start, start])
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            print(f"{tuner}: tuning for {(budget - used) / 60:.1f} min (log: {log.name})", flush=True)
            while process.poll() is None and time.time() - start < budget - used:
                time.sleep(1)
                clock["segments"][-1][1] = time.time()
                write_json(clock_path, clock)
            if process.poll() is None:  # the budget is spent: stop it as a user would (both save what they have)
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            clock["segments"][-1][1] = time.time()
            write_json(clock_path, clock)
            log.write(f"=== exit status {process.returncode}\n")
        if process.returncode not in (0, 1, -signal.SIGTERM) and time.time() - start < budget - used - 5:
            raise SystemExit(f"{tuner}'s tuner exited with {process.returncode} before its budget was spent: "
                             f"see {log.name}")
    compare.write_result(os.path.join(args.out_dir, f"{tuner}.json"), study_record(tuner, args, clock))


def study_record(tuner: str, args: argparse.Namespace, clock: dict) -> dict:
    """The study's trials (state, score, params, wall-clock minutes of the tuner when each finished)."""
    import optuna

    storage = f"sqlite:///{os.path.join(args.work_dir, tuner, 'study.db')}"
    study = optuna.load_study(study_name=tuner, storage=storage)
    segments = clock["segments"]

    def tuner_minutes(when: float) -> float:
        before = 0.0
        for start, end in segments:
            if when <= end + 5:
                return (before + max(0.0, min(when, end) - start)) / 60
            before += end - start
        return before / 60

    trials = []
    for trial in study.get_trials(deepcopy=False):
        done = trial.datetime_complete.timestamp() if trial.datetime_complete else None
        trials.append({"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
                       "params": trial.params, "minutes": None if done is None else tuner_minutes(done)})
    command, _, _ = tuner_command(tuner, args)
    shown = (["python", *command[1:]] if tuner == "cleanmetta"
             else ["OMP_NUM_THREADS=1", "python", "tune_driver.py"])
    return {"tuner": tuner, "tuner_command": " ".join(shown), "total_timesteps": args.total_timesteps,
            "wall_minutes": sum(end - start for start, end in segments) / 60, "budget_minutes": args.wall_minutes,
            "cleanrl_commit": compare.commit_of(args.cleanrl, "cleanrl") if args.cleanrl else None,
            "trials": trials}


def best_params(record: dict) -> dict | None:
    complete = [t for t in record["trials"] if t["state"] == "complete" and t["value"] is not None]
    return max(complete, key=lambda t: t["value"])["params"] if complete else None


def eval_command(config: str, params: dict | None, env_id: str, seed: int, steps: int, workdir: str,
                 args: argparse.Namespace) -> tuple[list[str], str, list[str]]:
    """A fresh-seed run's command, its run directory and the command as shown."""
    if config.startswith("cleanmetta"):
        flags = [x for name, value in (params or {}).items() for x in (f"--{name.replace('_', '-')}", str(value))]
        task = suite.Task(env_id, steps, [*flags, *CLEANMETTA_BASE], None)
        command = suite.cleanmetta_command(task, seed, workdir)
        shown = ["python", "train.py", *command[2:command.index("--log.run-root")]]
        return command, os.path.join(workdir, "run"), shown
    copy = adapt(os.path.join(args.cleanrl, "cleanrl", "ppo.py"), suite.SUBSTITUTIONS["ppo.py"], workdir,
                 "benchmarks/tune.py")
    flags = [f"--{name}={value}" for name, value in (params or {}).items()]
    command = [*suite.cleanrl_command(suite.Task(env_id, steps, [], "ppo.py"), seed, copy), *flags]
    return command, workdir, ["OMP_NUM_THREADS=1", "python", "cleanrl/ppo.py", *command[4:]]


def run_evals(args: argparse.Namespace) -> None:
    records = {tuner: json.load(open(os.path.join(args.out_dir, f"{tuner}.json"))) for tuner in TUNERS}
    params = {"cleanmetta_default": {}, "cleanrl_default": {},
              "cleanmetta_best": best_params(records["cleanmetta"]), "cleanrl_best": best_params(records["cleanrl"])}
    for env_id in TASKS:
        for i, seed in enumerate(args.eval_seeds):
            for config in compare.rotated(CONFIGS, i):
                path = os.path.join(args.out_dir, "eval", f"{env_id}_{config}_seed{seed}.json")
                if os.path.exists(path) or params[config] is None:
                    continue
                with tempfile.TemporaryDirectory() as workdir:
                    command, run_dir, shown = eval_command(config, params[config], env_id, seed,
                                                           args.total_timesteps, workdir, args)
                    try:
                        wall, rss = compare.run_process(command)
                    except RuntimeError as err:  # no file: the next invocation tries it again
                        print(f"{env_id} {config} seed {seed}: {err}", flush=True)
                        continue
                    summary, episodes = read_run(run_dir)
                measured = suite.measured(summary, episodes)
                measured.pop("curve")
                low, high = TASKS[env_id]
                score = measured["score"]
                os.makedirs(os.path.dirname(path), exist_ok=True)
                compare.write_result(path, {
                    "env_id": env_id, "config": config, "params": params[config], "seed": seed,
                    "steps": args.total_timesteps, "run_command": " ".join(shown), "wall_s": wall,
                    "peak_rss_mb": rss, **measured,
                    "normalised": None if score is None else (score - low) / (high - low)})
                print(f"{env_id:12s} {config:18s} seed {seed}: return {score}, {wall:.1f} s", flush=True)


def load(out_dir: str) -> tuple[dict, list[dict]]:
    records = {}
    for tuner in TUNERS:
        path = os.path.join(out_dir, f"{tuner}.json")
        if os.path.exists(path):
            records[tuner] = json.load(open(path))
    folder = os.path.join(out_dir, "eval")
    evals = [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
             if f.endswith(".json")] if os.path.isdir(folder) else []
    return records, evals


def mean_std(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def report(records: dict, evals: list[dict]) -> str:
    lines = ["## The tuners, same space, tasks, seeds and wall-clock budget", "",
             "| tuner | wall min | complete | pruned | failed | stopped at the budget | trials/hour | best score | "
             "its config |", "|---|---|---|---|---|---|---|---|---|"]
    for tuner, record in records.items():
        states = [t["state"] for t in record["trials"]]
        finished = states.count("complete") + states.count("pruned")
        values = [t["value"] for t in record["trials"] if t["state"] == "complete" and t["value"] is not None]
        best = best_params(record)
        shown = ", ".join(f"{k.split('.')[-1].replace('-', '_')} {v:.3g}" if isinstance(v, float)
                          else f"{k.split('.')[-1].replace('-', '_')} {v}" for k, v in (best or {}).items())
        lines.append(f"| {tuner} | {record['wall_minutes']:.1f} | {states.count('complete')} | "
                     f"{states.count('pruned')} | {states.count('fail')} | {states.count('running')} | "
                     f"{finished / (record['wall_minutes'] / 60):.1f} | "
                     f"{max(values) if values else float('nan'):.3f} | "
                     f"{shown or '-'} |")
    lines += ["", "## Fresh seeds: each tuner's best config against its library's defaults", "",
              "| config | seeds | " + " | ".join(f"{env_id} return" for env_id in TASKS)
              + " | normalised score | wall s per run (median) |", "|---|---|" + "---|" * len(TASKS) + "---|---|"]
    for config in CONFIGS:
        rows = [r for r in evals if r["config"] == config]
        if not rows:
            continue
        per_seed = {}
        for r in rows:
            per_seed.setdefault(r["seed"], []).append(r["normalised"] if r["normalised"] is not None else 0.0)
        seed_means = [statistics.fmean(v) for v in per_seed.values() if len(v) == len(TASKS)]
        cells = [mean_std([r["score"] for r in rows if r["env_id"] == env_id and r["score"] is not None])
                 for env_id in TASKS]
        lines.append(f"| {config} | {len(per_seed)} | {' | '.join(cells)} | {mean_std(seed_means, 3)} | "
                     f"{statistics.median(r['wall_s'] for r in rows):.1f} |")
    every = list(records.values()) + evals
    loads = [r["load_average"][0] for r in every if "load_average" in r]
    machines = sorted({r["machine"] for r in every})
    commits = sorted({r.get("commit") or "?" for r in every})
    cleanrl = sorted({r["cleanrl_commit"] for r in records.values() if r.get("cleanrl_commit")})
    commands = sorted({r["command"] for r in every})
    lines += ["", f"A trial's score: the mean over tasks ({', '.join(TASKS)}) and {SEEDS_PER_TRIAL} seeds of a run's "
              f"mean return over its last {LAST_EPISODES} episodes, normalised into [0, 1] by the ranges "
              f"{', '.join(f'{lo:g}..{hi:g}' for lo, hi in TASKS.values())}; best score: the best complete trial. "
              "Trials/hour: complete and pruned trials per hour of the tuner's wall clock. Stopped at the budget: "
              "the trial running when the tuner was stopped (cleanmetta's tuner marks it failed, so it is counted "
              "under failed there; CleanRL's leaves it running). Fresh seeds: seeds "
              f"{', '.join(str(s) for s in sorted({r['seed'] for r in evals}))} on both tasks at the same budget "
              "per run; return mean ± std over seeds; normalised score: the mean over tasks, mean ± std over seeds; "
              "wall: the whole process. The two libraries' trials differ besides the tuner: CleanRL's tuner seeds "
              "its runs 0..N-1 and prunes only between seeds, cleanmetta's seeds them 1..N and prunes at 10 "
              "points of each run; CleanRL's ppo.py runs in the tuner's process, cleanmetta's train.py as a "
              "process of its own, forked from a server that has imported torch.",
              "", f"Machine: {'; '.join(machines) or '-'}; its 1-minute load average when each result was written: "
              f"{', '.join(f'{x:.2f}' for x in loads) or '-'} (other work shared the cores when it is above 1-2). "
              f"Commit: {', '.join(commits)}; CleanRL at {', '.join(cleanrl) or '-'}. Each tuner's trials, the tuner "
              "command and every fresh run's command are in benchmarks/results/tune/. Made with:", "", "```",
              *commands, "```"]
    for record in records.values():
        lines += ["", f"{record['tuner']}'s tuner: `{record['tuner_command']}`"]
    return "\n".join(lines)


def draw(records: dict, out: str) -> str | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tuner, record in records.items():
        done = sorted((t["minutes"], t["value"]) for t in record["trials"]
                      if t["state"] == "complete" and t["value"] is not None and t["minutes"] is not None)
        xs, ys, best = [0.0], [float("nan")], float("-inf")
        for minutes, value in done:
            best = max(best, value)
            xs.append(minutes)
            ys.append(best)
        xs.append(record["wall_minutes"])
        ys.append(best if done else float("nan"))
        ax.step(xs, ys, where="post", label=f"{tuner} ({len(done)} complete trials)")
        ax.plot([m for m, _ in done], [v for _, v in done], ".", alpha=0.4, color=ax.lines[-1].get_color())
    ax.set_xlabel("tuner wall-clock minutes")
    ax.set_ylabel("best normalised score so far (dots: each complete trial)")
    ax.set_title("CartPole-v1 + Acrobot-v1, 2 seeds per trial")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cleanrl", default=None,
                        help="a CleanRL checkout (git clone https://github.com/vwxyzjn/cleanrl)")
    parser.add_argument("--tuners", nargs="+", default=TUNERS, choices=TUNERS)
    parser.add_argument("--wall-minutes", type=float, default=20.0, help="each tuner's wall-clock budget")
    parser.add_argument("--total-timesteps", type=int, default=50_000, help="agent steps of every run")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[101, 102, 103, 104, 105])
    parser.add_argument("--out-dir", default=RESULTS, help="the results; the report goes to <out-dir>.md and .png")
    parser.add_argument("--work-dir", default=WORK, help="the studies, their runs, logs and CleanRL's adapted copy")
    parser.add_argument("--report", action="store_true", help="only write the report from the files on disk")
    args = parser.parse_args()
    if not args.report:
        os.makedirs(args.out_dir, exist_ok=True)
        for tuner in args.tuners:
            if not os.path.exists(os.path.join(args.out_dir, f"{tuner}.json")):
                run_tuner(tuner, args)
        if all(os.path.exists(os.path.join(args.out_dir, f"{t}.json")) for t in TUNERS):
            run_evals(args)
    records, evals = load(args.out_dir)
    text = report(records, evals)
    print("\n" + text)
    write_text(args.out_dir.rstrip("/") + ".md", "# cleanmetta's tuner against CleanRL's\n\n" + text + "\n")
    draw(records, args.out_dir.rstrip("/") + ".png")


if __name__ == "__main__":
    main()
