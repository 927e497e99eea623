"""One process against two under torchrun: same global batch, same agent-step budget, side by side.

Per task, three layouts of one global batch (the preset's 16 environments x T steps an epoch,
the same minibatches over all processes), each run a fresh process, in an order that rotates
every seed:
  1x16xT      one process, 16 envs, T-step rollouts (the preset as it is)
  2x8xT       two processes of 8 envs each, T-step rollouts
  2x16xT/2    two processes of 16 envs each, T/2-step rollouts (fewer, larger policy steps per process)
  2x8xT apart two independent `python train.py` runs at once, 8 envs and half the budget each: the
              same work per process as 2x8xT without any synchronisation, the ceiling for torchrun
              here (its steps/s is the sum of both; its reward the mean of two policies that each
              saw half the steps, so not comparable)
  mettagrid  the `mettagrid` preset: T = 128, 16 simulations of 4 agents, 8192 samples an epoch
  cartpole   the `small_fast` preset: T = 32, 512 samples an epoch

    python train.py --preset P ...
    python -m torch.distributed.run --standalone --nproc_per_node 2 train.py --preset P --env.num-envs 8 ...

Reported per run: agent steps per second of the training loop (summary.json: the steps of all
processes over rank 0's training seconds), the final policy's evaluated mean reward (per agent for
MettaGrid; fixed evaluation seed, sampled actions), and the peak resident memory of the largest
process (torchrun's agent or a worker). Per task: medians, and the ratio of 2 processes to 1; the
learning curves of rank 0 per layout next to the JSON. Each invocation writes a new results file
(benchmarks/results/distributed_<UTC date-time>.json, with the command, commit and machine).

    python benchmarks/distributed.py                                # both tasks, 2 seeds, ~4 minutes
    python benchmarks/distributed.py --tasks mettagrid --seeds 1 2 3 --total-timesteps 1000000
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

from compare import result_path, rotated, run_process, run_processes, save_curves, write_result  # noqa: E402

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py: not the package

from cleanmetta.checkpoint import PolicyStore  # noqa: E402
from cleanmetta.evaluate import PolicyEvaluator, Simulation  # noqa: E402
from cleanmetta.plot import read_episodes  # noqa: E402
from cleanmetta.distributed import RANK_SEED_STRIDE  # noqa: E402

TASKS = {  # name: (preset, env id, rollout steps T, default agent steps, evaluation episodes)
    "mettagrid": ("mettagrid", "mettagrid/hearts", 128, 500_000, 16),
    "cartpole": ("small_fast", "CartPole-v1", 32, 150_000, 20),
}
LAYOUTS = {"1x16xT": (1, 16, 1), "2x8xT": (2, 8, 1), "2x16xT/2": (2, 16, 2),  # processes, envs each, T divisor
           "2x8xT apart": (2, 8, 1)}
os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets for its workers (and says so), for both sides
LAUNCH = {1: [sys.executable, "train.py"],
          2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]}


def run(task: str, layout: str, seed: int, total: int, workdir: str) -> dict:
    preset, env_id, steps, _, episodes = TASKS[task]
    processes, envs, divisor = LAYOUTS[layout]
    name = f"{task}_{layout.replace('/', '_').replace(' ', '_')}_seed{seed}"

    def command(seed: int, total: int, name: str, processes: int) -> list[str]:
        return LAUNCH[processes] + [
            "--preset", preset, "--env.id", env_id, "--env.num-envs", str(envs), "--trainer.num-steps",
            str(steps // divisor), "--seed", str(seed), "--trainer.total-timesteps", str(total),
            "--log.run-root", workdir, "--experiment-name", name, "--log.console-interval", "1e9",
            "--log.no-tensorboard"]

    if layout.endswith("apart"):  # two single-process runs at once, seeds apart as torchrun's ranks are
        names = [f"{name}_{i}" for i in range(processes)]
        rss = max(run_processes([command(seed + i * RANK_SEED_STRIDE, total // processes, names[i], 1)
                                 for i in range(processes)]))
    else:
        names = [name]
        _, rss = run_process(command(seed, total, name, processes))
    evaluator = PolicyEvaluator([Simulation(task, env_id, episodes=episodes, seed=12345)])
    steps_per_second, rewards, played = 0.0, [], []
    for run_name in names:
        run_dir = os.path.join(workdir, run_name)
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        steps_per_second += summary["agent_steps"] / summary["seconds"]
        rewards.append(evaluator.evaluate(PolicyStore(run_dir).latest().policy)[task].mean_return)
        played.append(read_episodes(run_dir))
    return {"steps_per_second": steps_per_second, "reward": statistics.fmean(rewards), "rss": rss,
            "episodes": played}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: 500k MettaGrid, 150k CartPole")
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/distributed_<date-time>.json")
    args = parser.parse_args()
    args.out = result_path("distributed", args.out)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for task in args.tasks:
            total = args.total_timesteps or TASKS[task][3]
            runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
            curves: dict[str, list] = {layout: [] for layout in LAYOUTS}
            for i, seed in enumerate(args.seeds):
                for layout in rotated(list(LAYOUTS), i):
                    result = run(task, layout, seed, total, workdir)
                    curves[layout].extend(result.pop("episodes"))
                    runs[layout].append({"seed": seed, **result})
                    print(f"{task} seed {seed}, {layout}: {result['steps_per_second']:,.0f} agent-steps/s, "
                          f"reward {result['reward']:.2f}, peak RSS {result['rss']:.0f} MB", flush=True)
            results[task] = {"agent_steps": total, "runs": runs}
            save_curves(curves, args.out, f"{task}: one process against two, seeds {args.seeds} (apart: each run's "
                        "half budget)", part=task)
    write_result(args.out, {"seeds": args.seeds, "tasks": results})

    print(f"\nseeds {args.seeds}; medians over seeds; T = the preset's rollout length\n")
    print("| task | agent steps | processes x envs x steps | agent-steps/s | vs 1 process | evaluated reward "
          "| peak RSS MB (largest process) |")
    print("|---|---|---|---|---|---|---|")
    for task, result in results.items():
        runs = result["runs"]
        for layout, rows in runs.items():
            ratio = statistics.median(row["steps_per_second"] / one["steps_per_second"]
                                      for row, one in zip(rows, runs["1x16xT"]))
            median = {key: statistics.median(row[key] for row in rows) for key in ("steps_per_second", "reward", "rss")}
            print(f"| {task} | {result['agent_steps']:,} | {layout} | {median['steps_per_second']:,.0f} | {ratio:.2f}x "
                  f"| {median['reward']:.2f} | {median['rss']:.0f} |")
    print(f"\n(vs 1 process: median of per-seed ratios of agent-steps/s; results in {os.path.relpath(args.out, ROOT)})")


if __name__ == "__main__":
    main()
