"""trainer.optimizer side by side: adam (the default) against adamw, muon and schedulefree, same budgets.

Tasks, with the settings the published suite (suite.py) trains them with:
  cartpole     CartPole-v1, the default settings (CleanRL's ppo.py), 500k steps;
  acrobot      Acrobot-v1, the same settings, 500k steps;
  halfcheetah  HalfCheetah-v5, --preset continuous (CleanRL's ppo_continuous_action.py), 1M steps.
Optimisers (docs/optimizers.md), each with the flags its authors would run it with:
  adam          the default: Adam, eps 1e-5, learning rate annealed linearly to 0;
  adamw         --trainer.optimizer adamw --trainer.weight-decay 0.01;
  muon          --trainer.optimizer muon (Muon for the hidden 2-D weights, AdamW for the rest);
  schedulefree  --trainer.optimizer schedulefree --trainer.no-anneal-lr (schedule-free AdamW: constant rate).

Every (task, seed) runs all optimisers back to back, their order rotated every seed, so that drift
in the machine's speed hits them alike; classic control first, HalfCheetah last. Each run is a fresh
train.py process (compare.run_process); its score is the mean return of its last 20 training
episodes, as in suite.py. Each finished run is written at once to
results/optimizers/<task>_<optimizer>_seed<N>.json (with its command, commit, machine and load
average: compare.write_result), and a run whose file exists is not run again: stop the benchmark
at any time and start it again to go on. The table (per task and optimiser: score mean +- std over
seeds, median wall time and steps/s, and each one's ratio to adam's) is printed and written to
results/optimizers.md.

    pip install -e ".[plot,mujoco,schedulefree]"
    python benchmarks/optimizers.py                      # 3 tasks x 4 optimisers x 3 seeds: hours
    python benchmarks/optimizers.py --tasks cartpole --seeds 1 --total-timesteps 20000 --out-dir /tmp/optimizers
    python benchmarks/optimizers.py --report             # the table from the runs on disk
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)
import suite  # noqa: E402
from cleanrl_scripts import read_run  # noqa: E402

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py shadows

from cleanmetta.files import write_text  # noqa: E402

TASKS = {
    "cartpole": suite.Task("CartPole-v1", 500_000, suite.TASKS["cartpole"].cleanmetta, None),
    "acrobot": suite.Task("Acrobot-v1", 500_000, suite.TASKS["acrobot"].cleanmetta, None),
    "halfcheetah": suite.Task("HalfCheetah-v5", 1_000_000, suite.TASKS["halfcheetah"].cleanmetta, None),
}
OPTIMIZERS = {
    "adam": [],
    "adamw": ["--trainer.optimizer", "adamw", "--trainer.weight-decay", "0.01"],
    "muon": ["--trainer.optimizer", "muon"],
    "schedulefree": ["--trainer.optimizer", "schedulefree", "--trainer.no-anneal-lr"],
}
RESULTS = os.path.join(HERE, "results", "optimizers")


def run_path(out_dir: str, task: str, optimizer: str, seed: int) -> str:
    return os.path.join(out_dir, f"{task}_{optimizer}_seed{seed}.json")


def named_runs(tasks: list[str], optimizers: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """(task, optimizer, seed) in the order they run: task by task (in TASKS' order: classic control
    first), seed by seed, every optimiser back to back, their order rotated every seed."""
    return [(task, optimizer, seed) for task in TASKS if task in tasks for i, seed in enumerate(seeds)
            for optimizer in compare.rotated(optimizers, i)]


def run_one(task_name: str, optimizer: str, seed: int, steps: int) -> dict:
    """One train.py run in a scratch directory: what it measured (suite.measured), its command and wall time."""
    base = TASKS[task_name]
    task = suite.Task(base.env_id, steps, [*base.cleanmetta, *OPTIMIZERS[optimizer]], None)
    with tempfile.TemporaryDirectory() as workdir:
        command = suite.cleanmetta_command(task, seed, workdir)
        wall, rss = compare.run_process(command)
        summary, episodes = read_run(os.path.join(workdir, "run"))
    shown = ["python", "train.py", *command[2:command.index("--log.run-root")]]
    return {"task": task_name, "env_id": base.env_id, "optimizer": optimizer, "seed": seed, "steps": steps,
            "run_command": " ".join(shown), "wall_s": wall, "peak_rss_mb": rss, **suite.measured(summary, episodes)}


def load_runs(out_dir: str) -> dict[str, dict[str, list[dict]]]:
    """task -> optimizer -> its runs on disk."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for file in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
        if file.endswith(".json"):
            with open(os.path.join(out_dir, file)) as f:
                run = json.load(f)
            runs.setdefault(run["task"], {}).setdefault(run["optimizer"], []).append(run)
    return runs


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value is not None and reference else "-"


def table(runs: dict[str, dict[str, list[dict]]]) -> str:
    lines = ["| task | optimizer | seeds | return (last 20) | x adam | wall min | x adam | steps/s | x adam |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in TASKS:
        by_optimizer = runs.get(name, {})
        stats = {}
        for optimizer in OPTIMIZERS:
            rows = by_optimizer.get(optimizer, [])
            scores = [r["score"] for r in rows if r["score"] is not None]
            stats[optimizer] = (statistics.fmean(scores) if scores else None,
                                statistics.median(r["wall_s"] for r in rows) if rows else None,
                                statistics.median(r["sps"] for r in rows) if rows else None, scores, rows)
        reference = stats["adam"]
        for optimizer, (score, wall, sps, scores, rows) in stats.items():
            if not rows:
                continue
            steps = sorted({r["steps"] for r in rows})
            label = f"{TASKS[name].env_id} ({', '.join(f'{s:,}' for s in steps)} steps)"
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            lines.append(f"| {label} | {optimizer} | {len(rows)} | "
                         f"{'-' if score is None else f'{score:.1f} ± {std:.1f}'} | {ratio(score, reference[0])} | "
                         f"{wall / 60:.1f} | {ratio(wall, reference[1])} | {sps:,.0f} | {ratio(sps, reference[2])} |")
    every = [r for by_optimizer in runs.values() for rows in by_optimizer.values() for r in rows]
    machines = sorted({r["machine"] for r in every})
    commits = sorted({r.get("commit") or "?" for r in every})
    lines += ["", "Return: mean of the last 20 training episodes of a run, mean ± std over seeds. Wall time (the whole "
              "process) and steps/s (the training loop): medians over seeds. x adam: the ratio to adam's on the same "
              "task (Acrobot's returns are negative: there a ratio below 1 is the better return). Flags: "
              + "; ".join(f"{name} `{' '.join(flags) or '(none)'}`" for name, flags in OPTIMIZERS.items())
              + f". Measured on {'; '.join(machines) or '-'} at {', '.join(commits) or '-'} with `python "
              "benchmarks/optimizers.py` (each run's command, commit, machine and load average are in its file in "
              "benchmarks/results/optimizers/)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, default=None, help="every task's budget (default: its own)")
    parser.add_argument("--out-dir", default=RESULTS, help="one JSON per run; the table goes to <out-dir>.md")
    parser.add_argument("--report", action="store_true", help="only write the table from the runs on disk")
    args = parser.parse_args()
    if not args.report:
        for task, optimizer, seed in named_runs(args.tasks, args.optimizers, args.seeds):
            path = run_path(args.out_dir, task, optimizer, seed)
            if os.path.exists(path):  # results are added, never run again
                continue
            try:
                result = run_one(task, optimizer, seed, args.total_timesteps or TASKS[task].steps)
            except RuntimeError as err:  # a failed run writes no file: the next invocation tries it again
                print(f"{task} {optimizer} seed {seed}: {err}", flush=True)
                continue
            os.makedirs(args.out_dir, exist_ok=True)
            compare.write_result(path, result)  # atomic, with the command, commit, machine and load average
            score = "no episode finished" if result["score"] is None else f"{result['score']:.1f}"
            print(f"{task:12s} {optimizer:12s} seed {seed}: return {score}, {result['sps']:,.0f} steps/s, "
                  f"{result['wall_s'] / 60:.1f} min", flush=True)
    report = table(load_runs(args.out_dir))
    print("\n" + report)
    write_text(args.out_dir.rstrip("/") + ".md", report + "\n")


if __name__ == "__main__":
    main()
