"""cleanmetta's train.py against Stable-Baselines3 PPO with the same settings, side by side.

Both libraries train with the same PPO hyper-parameters for the same number of steps and seeds.
Runs alternate between the libraries (the order flips every seed) so that drift in machine speed
hits both alike. Each run is a fresh process; its wall time includes interpreter start and imports.

Tasks:
  cartpole     CartPole-v1, the reference discrete settings (4 envs x 128 steps, 4 minibatches x 4
               epochs, lr 2.5e-4 annealed, ...), 500k steps, "solved" at a last-20 mean of 475.
  pendulum     Pendulum-v1, the reference continuous settings (cleanmetta's `continuous` preset: 1 env x
               2048 steps, 32 minibatches x 10 epochs, lr 3e-4 annealed, no entropy bonus, observations
               and rewards normalised; SB3 with VecNormalize), "solved" at -200.
  halfcheetah  HalfCheetah-v5 (needs `pip install mujoco`), the same continuous settings, "solved" at 1000.

Per run: wall seconds, steps per second of the training loop, the agent step and the wall time at
which the mean return of the last 20 episodes first reaches the task's threshold, the final last-20
mean return, and the process's peak resident memory. Per library: medians, and the ratios. Each
invocation writes a new results file, benchmarks/results/<task>_<UTC date-time>.json (or --out, which
must not exist), with the command, the commit and the machine, as every benchmark here does
(result_path, run_record): no run overwrites another's file. The learning curves (mean and range over
seeds, against agent steps and wall time) go next to the JSON as a PNG (every benchmark here draws
them: pip install -e ".[plot]").

    pip install stable-baselines3            # only for this benchmark (and mujoco for halfcheetah)
    python benchmarks/compare.py             # CartPole: 5 seeds x 500k steps, ~15 minutes on 2 cores
    python benchmarks/compare.py --task pendulum --seeds 1 2 3 --total-timesteps 200000
    python benchmarks/compare.py --seeds 1 --total-timesteps 50000 --libraries cleanmetta
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import import_extra
from cleanmetta.presets import mettagrid_config
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.files import write_json, write_text
from cleanmetta.plot import plot_curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import_extra("matplotlib", "plot", "the benchmarks' learning curves")  # fail now, not after an hour of runs


@dataclass
class Task:
    env_id: str
    settings: str          # the hyper-parameter set: cleanmetta's --preset and sb3_ppo.py's --settings
    total_timesteps: int
    solved: float          # the last-20 mean return that counts as solved


TASKS = {
    "cartpole": Task("CartPole-v1", "default", 500_000, 475.0),
    "pendulum": Task("Pendulum-v1", "continuous", 1_000_000, -200.0),
    "halfcheetah": Task("HalfCheetah-v5", "continuous", 1_000_000, 1000.0),
}


def commit_of(checkout: str, *code: str) -> str | None:
    """The checkout's commit, with "+changes" when the files of its `code` paths differ from it (edited, or
    new and not ignored)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", checkout, *args], capture_output=True, text=True)

    commit = git("rev-parse", "--short=7", "HEAD").stdout.strip()
    changed = bool(git("status", "--porcelain", "--untracked-files=all", "--", *code).stdout.strip())
    return (commit + ("+changes" if changed else "")) if commit else None


CODE = ("cleanmetta", "train.py", "benchmarks", ":(exclude)benchmarks/results")  # what a benchmark run runs


def result_path(name: str, out: str | None = None) -> str:
    """Where one run's results go: `out`, or benchmarks/results/<name>_<UTC date-time>.json. Results are
    added, never overwritten: a path that exists is refused here, before the run starts."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        out = os.path.join(ROOT, "benchmarks", "results", f"{name}_{stamp}.json")
    if os.path.exists(out):
        raise SystemExit(f"--out {out} exists: every run adds its own results file and never overwrites one; "
                         "pass a new --out, or none for a new dated file in benchmarks/results/")
    return out


def run_record() -> dict:
    """What a results file records about the run that wrote it: the command, the commit of the code it ran
    ("+changes": cleanmetta/, train.py or benchmarks/ differed from that commit), the machine, the UTC time
    of writing and the machine's load average then (1, 5 and 15 minutes: other work sharing the cores)."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return {"command": shlex.join(["python", script, *sys.argv[1:]]), "commit": commit_of(ROOT, *CODE),
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": [round(load, 2) for load in os.getloadavg()]}


def write_result(path: str, data: dict) -> None:
    """Write one run's results, with its run_record() first, to `path` (from result_path)."""
    write_json(path, {**run_record(), **data})


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    import torch  # only for its version: the runs themselves are subprocesses

    return f"{os.cpu_count()}-core CPU ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def write_readme_block(start: str, end: str, text: str) -> None:
    """Put `text` between the README's `start` and `end` markers (atomically; nothing when they are missing)."""
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        content = f.read()
    if start in content and end in content:
        before, rest = content.split(start, 1)
        write_text(readme, f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


def run_process(command: list[str]) -> tuple[float, float]:
    """Run `command`; return (wall seconds, peak RSS in MB) of that process alone."""
    start = time.perf_counter()
    (rss,) = run_processes([command])
    return time.perf_counter() - start, rss


def run_processes(commands: list[list[str]]) -> list[float]:
    """Run the commands at once, from the repository root; return each one's peak RSS in MB."""
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL) for command in commands]
    peaks = []
    for command, process in zip(commands, processes):
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            raise RuntimeError(f"{' '.join(command)} failed with status {status}")
        peaks.append(usage.ru_maxrss / 1024)  # ru_maxrss is in KB on Linux
    return peaks


def rotated(items: list, i: int) -> list:
    """`items` started at position i (mod len): the run order for the i-th seed, so that no contender
    always runs first or last while the machine's speed drifts."""
    return items[i % len(items):] + items[:i % len(items)]


def first_solved(episodes: list[tuple[int, float, float]], threshold: float = 475.0) -> tuple[int, float] | None:
    """(agent step, seconds) at which the mean of the last 20 episode returns first reaches `threshold`."""
    for i in range(19, len(episodes)):
        if statistics.fmean(ret for _, _, ret in episodes[i - 19 : i + 1]) >= threshold:
            return episodes[i][0], episodes[i][1]
    return None


def run_cleanmetta(seed: int, total_timesteps: int | None, workdir: str, extra: list[str], label: str = "cleanmetta"
                   ) -> dict:
    name = f"{label}_seed{seed}"
    steps = [] if total_timesteps is None else ["--trainer.total-timesteps", str(total_timesteps)]
    wall, rss = run_process([sys.executable, "train.py", "--seed", str(seed), *steps, "--log.run-root", workdir,
                             "--experiment-name", name, "--log.console-interval", "1e9", *extra])
    run_dir = os.path.join(workdir, name)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        episodes = [(int(r["agent_steps"]), float(r["seconds"]), float(r["return"])) for r in csv.DictReader(f)]
    return {"wall": wall, "train": summary["seconds"], "steps": summary["agent_steps"], "rss": rss,
            "episodes": episodes}


def run_evaluated(seed: int, total_timesteps: int, workdir: str, extra: list[str], label: str, task: str) -> dict:
    """run_cleanmetta on `task`, then its final policy evaluated over 16 episodes (fixed seed, sampled
    actions): the run's dict with `sps` (agent steps per second of the training loop) and `reward`
    (mean return per agent) added; prints one line."""
    run = run_cleanmetta(seed, total_timesteps, workdir, ["--env.id", task, "--log.no-tensorboard", *extra], label)
    policy = PolicyStore(os.path.join(workdir, f"{label}_seed{seed}")).latest().policy
    evaluator = PolicyEvaluator([Simulation("final", task, episodes=16, seed=12345)])
    run.update(sps=run["steps"] / run["train"], reward=evaluator.evaluate(policy)["final"].mean_return)
    print(f"{task} {label} seed {seed}: {run['sps']:7,.0f} agent-steps/s, evaluated reward {run['reward']:.2f} per "
          "agent", flush=True)
    return run


def bare_env_speed(task: str, num_envs: int, steps: int = 500, repeats: int = 3, num_workers: int = 0) -> float:
    """Agent steps per second of the MettaGrid env alone, in this process (or stepped by `num_workers` env
    worker processes), with uniformly random actions: the median of `repeats` timed runs of `steps` batch steps."""
    config = mettagrid_config()  # 16 simulations x 4 agents
    config.env.id, config.env.num_envs, config.env.num_workers = task, num_envs, num_workers
    env = make_vecenv(config.env, seed=0)
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, env.single_action_space.n, env.num_envs) for _ in range(steps)]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        rates.append(steps * env.num_envs / (time.perf_counter() - start))
    env.close()
    return statistics.median(rates)


def run_sb3(task: Task, seed: int, total_timesteps: int, workdir: str, threads: int) -> dict:
    out = os.path.join(workdir, f"sb3_seed{seed}_threads{threads}.json")
    wall, rss = run_process([sys.executable, "benchmarks/sb3_ppo.py", "--env-id", task.env_id, "--settings",
                             task.settings, "--seed", str(seed), "--threads", str(threads),
                             "--total-timesteps", str(total_timesteps), "--out", out])
    with open(out) as f:
        result = json.load(f)
    return {"wall": wall, "train": result["train_seconds"], "steps": result["agent_steps"], "rss": rss,
            "episodes": [(step, seconds, ret) for step, seconds, ret, _ in result["episodes"]]}


def measure(run: dict, threshold: float) -> dict:
    startup = run["wall"] - run["train"]  # interpreter start, imports and setup
    solved = first_solved(run["episodes"], threshold)
    final = [ret for _, _, ret in run["episodes"][-20:]]
    return {
        "wall_s": run["wall"],
        "sps": run["steps"] / run["train"],
        "solved_step": solved[0] if solved else None,
        "solved_wall_s": startup + solved[1] if solved else None,
        "final_return": statistics.fmean(final) if final else float("nan"),
        "peak_rss_mb": run["rss"],
    }


def save_curves(experiments: dict[str, list[list[tuple[int, float, float]]]], json_out: str, title: str,
                part: str = "") -> None:
    """Draw each contender's runs (their episodes: step, seconds, return) next to the JSON results:
    <results>.png, or <results>_<part>.png."""
    stem = os.path.splitext(json_out)[0] + (f"_{part}" if part else "")
    path = plot_curves({name: [np.array(episodes)[:, :3] for episodes in runs] for name, runs in experiments.items()},
                       stem + ".png", title)
    print(f"learning curves: {os.path.relpath(path, ROOT)}")


def median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="cartpole")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: the task's")
    parser.add_argument("--libraries", nargs="+", default=["cleanmetta", "sb3"],
                        choices=["cleanmetta", "sb3", "sb3-1thread"],
                        help="sb3 keeps torch's default thread count; sb3-1thread sets one thread as cleanmetta does")
    parser.add_argument("--cleanmetta-args", nargs=argparse.REMAINDER, default=[],
                        help="extra train.py flags, e.g. --cleanmetta-args --torch-threads 2")
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/<task>_<date-time>.json")
    args = parser.parse_args()
    task = TASKS[args.task]
    steps = args.total_timesteps or task.total_timesteps
    out = result_path(args.task, args.out)

    cleanmetta_args = ["--preset", task.settings, "--env.id", task.env_id, *args.cleanmetta_args]
    runners = {
        "cleanmetta": lambda seed, d: run_cleanmetta(seed, steps, d, cleanmetta_args),
        "sb3": lambda seed, d: run_sb3(task, seed, steps, d, threads=0),
        "sb3-1thread": lambda seed, d: run_sb3(task, seed, steps, d, threads=1),
    }
    results: dict[str, list[dict]] = {lib: [] for lib in args.libraries}
    episodes: dict[str, list] = {lib: [] for lib in args.libraries}
    with tempfile.TemporaryDirectory() as workdir:
        for i, seed in enumerate(args.seeds):
            order = args.libraries if i % 2 == 0 else args.libraries[::-1]
            for lib in order:
                run = runners[lib](seed, workdir)
                episodes[lib].append(run["episodes"])
                row = measure(run, task.solved)
                results[lib].append({"seed": seed, **row})
                print(f"{lib:12s} seed {seed}: {row['wall_s']:6.1f} s wall, {row['sps']:7.0f} steps/s, "
                      f"solved at step {fmt(row['solved_step'], ',')}, final return {row['final_return']:.1f}, "
                      f"peak {row['peak_rss_mb']:.0f} MB", flush=True)

    print(f"\n{task.env_id} ({task.settings} settings), {steps:,} steps, seeds {args.seeds}; medians over seeds\n")
    print(f"| library | wall s | steps/s | step at last-20 mean >= {task.solved:g} | wall s at {task.solved:g} "
          f"| final return | seeds ending >= {task.solved:g} | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for lib, rows in results.items():
        col = {key: median([r[key] for r in rows]) for key in rows[0] if key != "seed"}
        solved = sum(r["final_return"] >= task.solved for r in rows)
        summary[lib] = {**col, "seeds_final_solved": solved, "runs": rows}
        print(f"| {lib} | {col['wall_s']:.1f} | {col['sps']:,.0f} | {fmt(col['solved_step'], ',.0f')} "
              f"| {fmt(col['solved_wall_s'], '.1f')} | {col['final_return']:.1f} | {solved}/{len(rows)} "
              f"| {col['peak_rss_mb']:.0f} |")
    if "cleanmetta" in results:
        for lib in results:
            if lib != "cleanmetta":
                ratios = [a["sps"] / b["sps"] for a, b in zip(results["cleanmetta"], results[lib])]
                walls = [b["wall_s"] / a["wall_s"] for a, b in zip(results["cleanmetta"], results[lib])]
                print(f"\ncleanmetta / {lib}: steps per second, median of per-seed ratios "
                      f"{statistics.median(ratios):.2f}x; "
                      f"wall time {statistics.median(walls):.2f}x shorter")
    write_result(out, {"task": args.task, "env_id": task.env_id, "total_timesteps": steps, "seeds": args.seeds,
                       "libraries": summary})
    print(f"results: {os.path.relpath(out, ROOT)}")
    save_curves(episodes, out, f"{task.env_id} ({task.settings} settings), seeds {args.seeds}")


if __name__ == "__main__":
    main()
