"""One process against two under torchrun: same global batch, same agent-step budget, side by side.

Per task, each run a fresh process, one process and two alternating (the order flips every seed):
  mettagrid  the `mettagrid` preset: 1 process x 16 simulations against 2 processes x 8 (64 agents
             a step, 8192 samples an epoch, minibatches of 2048 over all processes, either way)
  cartpole   the `small_fast` preset: 1 process x 16 envs against 2 processes x 8

    python train.py --preset P --env.num-envs 16 ...
    python -m torch.distributed.run --standalone --nproc_per_node 2 train.py --preset P --env.num-envs 8 ...

Reported per run: agent steps per second of the training loop (summary.json: the steps of all
processes over rank 0's training seconds), the final policy's evaluated mean reward (per agent for
MettaGrid; fixed evaluation seed, sampled actions), and the peak resident memory of the largest
process (torchrun's agent or a worker). Per task: medians, and the ratio of 2 processes to 1.

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

from compare import run_process  # noqa: E402  (this folder is first on sys.path)

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py: not the package

from cleanmetta.checkpoint import PolicyStore  # noqa: E402
from cleanmetta.evaluate import PolicyEvaluator, Simulation  # noqa: E402

TASKS = {  # name: (preset, env id, default agent steps, evaluation episodes)
    "mettagrid": ("mettagrid", "mettagrid/hearts", 500_000, 16),
    "cartpole": ("small_fast", "CartPole-v1", 150_000, 20),
}
LAUNCH = {1: [sys.executable, "train.py"],
          2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]}


def run(task: str, processes: int, seed: int, total: int, workdir: str) -> dict:
    preset, env_id, _, episodes = TASKS[task]
    name = f"{task}_{processes}p_seed{seed}"
    _, rss = run_process(LAUNCH[processes] + [
        "--preset", preset, "--env.id", env_id, "--env.num-envs", str(16 // processes), "--seed", str(seed),
        "--trainer.total-timesteps", str(total), "--log.run-root", workdir, "--experiment-name", name,
        "--log.console-interval", "1e9", "--log.no-tensorboard"])
    run_dir = os.path.join(workdir, name)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    evaluator = PolicyEvaluator([Simulation(task, env_id, episodes=episodes, seed=12345)])
    reward = evaluator.evaluate(PolicyStore(run_dir).latest().policy)[task].mean_return
    return {"steps_per_second": summary["agent_steps"] / summary["seconds"], "reward": reward, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: 500k MettaGrid, 150k CartPole")
    args = parser.parse_args()

    table = []
    with tempfile.TemporaryDirectory() as workdir:
        for task in args.tasks:
            total = args.total_timesteps or TASKS[task][2]
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for seed in args.seeds:
                for processes in ((1, 2) if seed % 2 else (2, 1)):
                    result = run(task, processes, seed, total, workdir)
                    runs[processes].append(result)
                    print(f"{task} seed {seed}, {processes} process(es): {result['steps_per_second']:,.0f} agent-steps/s, "
                          f"reward {result['reward']:.2f}, peak RSS {result['rss']:.0f} MB", flush=True)
            ratios = [two["steps_per_second"] / one["steps_per_second"] for one, two in zip(runs[1], runs[2])]
            table.append((task, total, runs, statistics.median(ratios)))

    print(f"\nseeds {args.seeds}; medians over seeds\n")
    print("| task | agent steps | processes | agent-steps/s | evaluated reward | peak RSS MB (largest process) |")
    print("|---|---|---|---|---|---|")
    for task, total, runs, _ in table:
        for processes, results in runs.items():
            median = {key: statistics.median(r[key] for r in results) for key in results[0]}
            print(f"| {task} | {total:,} | {processes} | {median['steps_per_second']:,.0f} | {median['reward']:.2f} "
                  f"| {median['rss']:.0f} |")
    print()
    for task, _, _, ratio in table:
        print(f"{task}: 2 processes / 1, agent-steps/s, median of per-seed ratios: {ratio:.2f}x")


if __name__ == "__main__":
    main()
