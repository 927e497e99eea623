"""CleanRL's published PPO results table, reproduced: cleanmetta and CleanRL's own scripts, side by side.

Tasks, budgets and CleanRL's published results (mean +- std over 3 seeds, CleanRL's docs,
docs/benchmark/ppo.md and ppo_continuous_action.md: ppo.py at 500k steps, ppo_continuous_action.py
at 1M, MuJoCo v4) are in TASKS. Each task runs
  cleanmetta  `python train.py` with CleanRL's settings for it: the default preset (ppo.py's
              settings) or `--preset continuous` (ppo_continuous_action.py's); and for
              MountainCar-v0 also `--preset mountaincar` (rl-zoo's settings), which solves it;
  cleanrl     CleanRL's ppo.py or ppo_continuous_action.py from a checkout (`--cleanrl PATH`), copied
              into a scratch directory and adapted to gymnasium 1.x there (cleanrl_scripts.py;
              CleanRL's code is never stored here), run with OMP_NUM_THREADS=1 as CleanRL's own
              benchmark script runs it (cleanmetta uses one torch thread by default too).
The score rule, the same for every library: a run's score is the mean return of its last 20
training episodes (the raw return, before any reward normalisation); a task's is the mean +- std
of its runs' scores over seeds. Per run also: steps per second of the training loop, wall time of
the whole process, and every episode (for the curves).

Every finished run is written at once to results/suite/<task>/<library>_seed<N>.json (with its
command, commit and machine), and a run whose file exists is not run again, nor is CleanRL's
checkout needed for it: stop the suite at any time and start it again to go on (to run one again,
delete its file first; git keeps the old one). The table is written from every run on disk to
results/suite.md and into the README between its suite markers, with the commands that run exactly
its runs (the seeds of each task and library); the curves of every task (return against agent
steps and against seconds) to results/suite.png.

    pip install -e ".[plot,mujoco]"                      # the curves; MuJoCo for the last three tasks
    git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl
    python benchmarks/suite.py --cleanrl /tmp/cleanrl     # every task, seeds 1-3, both libraries: hours
    python benchmarks/suite.py --cleanrl /tmp/cleanrl --tasks cartpole acrobot --seeds 1
    python benchmarks/suite.py --libraries cleanmetta --tasks mountaincar_rlzoo
    python benchmarks/suite.py --report                  # the table and curves from the runs on disk
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)
from cleanrl_scripts import COMMON, FINAL_INFO, adapt, read_run, same_step_autoreset  # noqa: E402

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py shadows

import numpy as np  # noqa: E402

from cleanmetta.config import import_extra  # noqa: E402
from cleanmetta.files import write_text  # noqa: E402
from cleanmetta.plot import draw_curve_axes, last_mean  # noqa: E402

RESULTS = os.path.join(HERE, "results", "suite")
WINDOW = 20  # the score: mean return of the last 20 training episodes
LIBRARIES = ["cleanmetta", "cleanrl"]
README_START = "<!-- suite table: written by benchmarks/suite.py -->"
README_END = "<!-- end of suite table -->"


@dataclass
class Task:
    env_id: str
    steps: int
    cleanmetta: list[str]            # train.py flags besides --env.id
    cleanrl: str | None              # CleanRL's script for it (None: no CleanRL counterpart)
    published: tuple[float, float] | None = None  # CleanRL's published mean and std over 3 seeds
    published_wall_min: float | None = None       # the wall time CleanRL's docs give for one run
    note: str = ""


TASKS = {
    "cartpole": Task("CartPole-v1", 500_000, [], "ppo.py", (490.04, 6.12), 10.5),
    "acrobot": Task("Acrobot-v1", 500_000, [], "ppo.py", (-86.36, 1.32), 15.5),
    "mountaincar": Task("MountainCar-v0", 500_000, [], "ppo.py", (-200.00, 0.00), 7.0),
    "mountaincar_rlzoo": Task("MountainCar-v0", 500_000, ["--preset", "mountaincar"], None,
                              note="cleanmetta's `mountaincar` preset (rl-zoo's settings); CleanRL has none"),
    "halfcheetah": Task("HalfCheetah-v4", 1_000_000, ["--preset", "continuous"], "ppo_continuous_action.py",
                        (1442.64, 46.03), 25.0),
    "walker2d": Task("Walker2d-v4", 1_000_000, ["--preset", "continuous"], "ppo_continuous_action.py",
                     (2287.95, 571.78), 24.0),
    "hopper": Task("Hopper-v4", 1_000_000, ["--preset", "continuous"], "ppo_continuous_action.py",
                   (2382.86, 271.74), 26.0),
}

SUBSTITUTIONS = {  # CleanRL's script -> its adaptations to gymnasium 1.x (cleanrl_scripts.py)
    "ppo.py": COMMON + [same_step_autoreset("for i in range(args.num_envs)],\n    )"), FINAL_INFO],
    "ppo_continuous_action.py": COMMON + [
        same_step_autoreset("for i in range(args.num_envs)]\n    )"),
        FINAL_INFO,
        ("gymnasium 1.x's TransformObservation takes the new observation space (None: the same)",
         "lambda obs: np.clip(obs, -10, 10))", "lambda obs: np.clip(obs, -10, 10), None)"),
    ],
}


def run_path(task: str, library: str, seed: int) -> str:
    return os.path.join(RESULTS, task, f"{library}_seed{seed}.json")


def cleanmetta_command(task: Task, seed: int, workdir: str) -> list[str]:
    return [sys.executable, "train.py", *task.cleanmetta, "--env.id", task.env_id, "--seed", str(seed),
            "--trainer.total-timesteps", str(task.steps), "--log.run-root", workdir, "--experiment-name", "run",
            "--log.console-interval", "1e9", "--log.no-tensorboard", "--evaluation.interval", "0"]


def cleanrl_command(task: Task, seed: int, copy: str) -> list[str]:
    return ["env", "OMP_NUM_THREADS=1", sys.executable, copy, "--env-id", task.env_id,
            "--seed", str(seed), "--total-timesteps", str(task.steps), "--no-cuda", "--no-track",
            "--no-capture-video"]


def run_one(name: str, task: Task, library: str, seed: int, cleanrl: str | None) -> dict:
    """One run in a scratch directory; its result (written to its JSON file by the caller)."""
    with tempfile.TemporaryDirectory() as workdir:
        if library == "cleanmetta":
            command, run_dir = cleanmetta_command(task, seed, workdir), os.path.join(workdir, "run")
            shown = ["python", "train.py", *command[2:command.index("--log.run-root")]]
        else:
            script = os.path.join(cleanrl, "cleanrl", task.cleanrl)
            copy = adapt(script, SUBSTITUTIONS[task.cleanrl], workdir, "benchmarks/suite.py")
            command, run_dir = cleanrl_command(task, seed, copy), workdir
            shown = ["OMP_NUM_THREADS=1", "python", f"cleanrl/{task.cleanrl}", *command[4:]]
        wall, rss = compare.run_process(command)
        summary, episodes = read_run(run_dir)
    return {"task": name, "env_id": task.env_id, "library": library, "seed": seed, "steps": task.steps,
            "command": " ".join(shown), "commit": (compare.commit_of(cleanrl, "cleanrl") if library == "cleanrl"
                                                   else compare.commit_of(ROOT, "cleanmetta", "train.py")),
            "machine": compare.machine(), "wall_s": wall, "peak_rss_mb": rss, **measured(summary, episodes)}


def measured(summary: dict, episodes: list[tuple[int, float, float, int]]) -> dict:
    """The run's speed and score from what it wrote."""
    final = [ret for _, _, ret, _ in episodes[-WINDOW:]]
    return {"sps": summary["steps_per_second"], "agent_steps": summary["agent_steps"],
            "score": statistics.fmean(final) if final else None, "episodes": len(episodes),
            "curve": curve(episodes)}


def curve(episodes: list[tuple[int, float, float, int]], points: int = 200) -> list[list[float]]:
    """The run's learning curve at `points` places: (agent step, seconds, mean of the last 20 returns)."""
    if not episodes:
        return []
    steps, seconds, returns = (np.array(column, float) for column in list(zip(*episodes))[:3])
    grid = np.linspace(steps[0], steps[-1], points)
    means = last_mean(steps, returns, grid, WINDOW)
    at = np.searchsorted(steps, grid, side="right").clip(1, len(steps)) - 1
    return [[float(x), float(seconds[i]), float(m)] for x, i, m in zip(grid, at, means) if not np.isnan(m)]


def load_runs() -> dict[str, dict[str, list[dict]]]:
    """task -> library -> its runs on disk, by seed."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for name in TASKS:
        folder = os.path.join(RESULTS, name)
        for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if file.endswith(".json"):
                with open(os.path.join(folder, file)) as f:
                    run = json.load(f)
                runs.setdefault(name, {}).setdefault(run["library"], []).append(run)
    return runs


def commands(runs: dict[str, dict[str, list[dict]]]) -> list[str]:
    """The suite commands that run exactly `runs` (task -> library -> runs): one per set of tasks whose
    libraries ran the same seeds, with --libraries where a task's libraries ran different seeds."""
    groups: dict[tuple[tuple[str, ...], tuple[int, ...]], list[str]] = {}
    for name, task in TASKS.items():
        seeds = {lib: tuple(sorted(r["seed"] for r in rows)) for lib, rows in runs.get(name, {}).items() if rows}
        if not seeds:
            continue
        libraries = tuple(lib for lib in LIBRARIES if lib in seeds)
        every = tuple(lib for lib in LIBRARIES if lib == "cleanmetta" or task.cleanrl is not None)
        if libraries == every and len(set(seeds.values())) == 1:
            groups.setdefault(((), seeds[libraries[0]]), []).append(name)
        else:
            for lib in libraries:
                groups.setdefault(((lib,), seeds[lib]), []).append(name)
    lines = []
    for (libraries, seeds), names in groups.items():
        cleanrl = any(lib == "cleanrl" and TASKS[name].cleanrl for name in names for lib in libraries or LIBRARIES)
        lines.append("python benchmarks/suite.py" + (" --cleanrl /tmp/cleanrl" if cleanrl else "")
                     + " --tasks " + " ".join(names) + (" --libraries " + " ".join(libraries) if libraries else "")
                     + " --seeds " + " ".join(map(str, seeds)))
    return lines


def named_runs(tasks: list[str], libraries: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """(task, library, seed) of every run a suite command names, in the order it runs them: seed by seed,
    task by task, the libraries' order rotated every seed."""
    wanted = [(name, lib) for name in tasks for lib in libraries if lib == "cleanmetta" or TASKS[name].cleanrl]
    return [(name, lib, seed) for i, seed in enumerate(seeds) for name in tasks
            for lib in compare.rotated([lib for task, lib in wanted if task == name], i)]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cleanrl", default=None,
                        help="a CleanRL checkout (git clone https://github.com/vwxyzjn/cleanrl)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--libraries", nargs="+", default=LIBRARIES, choices=LIBRARIES)
    parser.add_argument("--report", action="store_true", help="only write the table and curves from disk")
    return parser


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} +- {std:.2f} ({len(values)})"


def table(runs: dict[str, dict[str, list[dict]]]) -> str:
    lines = ["| task | steps | CleanRL published | cleanmetta | CleanRL here | steps/s cleanmetta / CleanRL | "
             "wall min cleanmetta / CleanRL here / CleanRL published |", "|---|---|---|---|---|---|---|"]
    for name, task in TASKS.items():
        by_lib = runs.get(name, {})
        ours, theirs = by_lib.get("cleanmetta", []), by_lib.get("cleanrl", [])

        def median(rows: list[dict], key: str, scale: float = 1.0) -> str:
            return f"{statistics.median(r[key] for r in rows) * scale:,.0f}" if rows else "-"

        published = "-" if task.published is None else f"{task.published[0]:.2f} +- {task.published[1]:.2f}"
        label = f"{task.env_id}" + (f" ({task.note})" if task.note else "")
        wall = [f"{statistics.median(r['wall_s'] for r in rows) / 60:.1f}" if rows else "-" for rows in (ours, theirs)]
        steps = f"{task.steps / 1e6:g}M" if task.steps >= 1_000_000 else f"{task.steps // 1000}k"
        lines.append(f"| {label} | {steps} | {published} | "
                     f"{mean_std([r['score'] for r in ours if r['score'] is not None])} | "
                     f"{mean_std([r['score'] for r in theirs if r['score'] is not None])} | "
                     f"{median(ours, 'sps')} / {median(theirs, 'sps')} | {wall[0]} / {wall[1]} / "
                     f"{task.published_wall_min if task.published_wall_min else '-'} |")
    every = [r for lib in runs.values() for rows in lib.values() for r in rows]
    machines = sorted({r["machine"] for r in every})
    commits = {lib: sorted({r.get("commit") or "?" for r in every if r["library"] == lib}) for lib in LIBRARIES}
    lines += ["", f"Score: mean return of the last {WINDOW} training episodes of a run; mean +- std over seeds "
                  "(the number of seeds in brackets; - : not run yet). Steps/s and wall time: medians over seeds. "
                  "Measured on: " + "; ".join(machines) + "; cleanmetta at " + ", ".join(commits["cleanmetta"])
              + ", CleanRL at " + ", ".join(commits["cleanrl"]) + " (each run's command, commit and machine are "
                "in its file in benchmarks/results/suite/). The commands that run exactly the runs of this table "
                "(a run whose file is on disk is kept, not run again):", "", "```", *clone(commits["cleanrl"]),
              *commands(runs), "```"]
    return "\n".join(lines)


def clone(commits: list[str]) -> list[str]:
    """The commands that fetch CleanRL as the table's CleanRL runs had it (at their commit when they share one)."""
    fetch = "git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl"
    if len(commits) == 1 and commits[0] != "?" and not commits[0].endswith("+changes"):
        fetch += f" && git -C /tmp/cleanrl checkout {commits[0]}"
    return [fetch] if commits else []


def draw(runs: dict[str, dict[str, list[dict]]], out: str) -> str | None:
    """Every task's curves on one figure: a row per task, against agent steps and against seconds."""
    names = [name for name in TASKS if name in runs]
    if not names:
        return None
    matplotlib = import_extra("matplotlib", "plot", "the suite's learning curves")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3 * len(names)), layout="constrained", squeeze=False)
    for row, name in zip(axes, names):
        experiments = {lib: [np.array(r["curve"]) for r in rows if r["curve"]] for lib, rows in runs[name].items()}
        # each run's curve is already the mean of its last 20 returns: drawn as it is (window 1)
        draw_curve_axes(row, {f"{lib} ({len(c)} seeds)": c for lib, c in experiments.items() if c}, window=1,
                        ylabel=f"return (mean of last {WINDOW})")
        row[0].set_title(f"{TASKS[name].env_id}" + (" (rl-zoo preset)" if TASKS[name].note else ""), fontsize="small")
        row[0].legend(fontsize="small")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_report(runs: dict[str, dict[str, list[dict]]]) -> None:
    report = table(runs)
    print("\n" + report)
    write_text(os.path.join(HERE, "results", "suite.md"), report + "\n")
    picture = draw(runs, os.path.join(HERE, "results", "suite.png"))
    figure = "\n\n![every task's learning curves](benchmarks/results/suite.png)" if picture else ""
    compare.write_readme_block(README_START, README_END, report + figure)


def main() -> None:
    args = parser().parse_args()
    if not args.report:
        to_run = [(name, lib, seed) for name, lib, seed in named_runs(args.tasks, args.libraries, args.seeds)
                  if not os.path.exists(run_path(name, lib, seed))]  # results are added, never run again
        if any(lib == "cleanrl" for _, lib, _ in to_run):
            if args.cleanrl is None:
                raise SystemExit("--cleanrl PATH is needed for CleanRL's runs (git clone "
                                 "https://github.com/vwxyzjn/cleanrl /tmp/cleanrl); or pass --libraries cleanmetta")
            with tempfile.TemporaryDirectory() as scratch:  # every substitution matches: now, not after an hour
                for script in {TASKS[name].cleanrl for name, lib, _ in to_run if lib == "cleanrl"}:
                    adapt(os.path.join(args.cleanrl, "cleanrl", script), SUBSTITUTIONS[script], scratch,
                          "benchmarks/suite.py")
        for name, lib, seed in to_run:
            result = run_one(name, TASKS[name], lib, seed, args.cleanrl)
            write_text(run_path(name, lib, seed), json.dumps(result))  # atomic: a kill mid-write leaves no half result
            score = "no episode finished" if result["score"] is None else f"{result['score']:.2f}"
            print(f"{name:18s} {lib:10s} seed {seed}: score {score}, {result['sps']:,.0f} steps/s, "
                  f"{result['wall_s'] / 60:.1f} min", flush=True)
    write_report(load_runs())


if __name__ == "__main__":
    main()
