"""MettaGrid: speed of the bare environment and of the full training loop, and what training learns.

Per task (default: hearts and hearts_sparse), with the `mettagrid` preset (16 simulations x 4
agents, see cleanmetta/config.py):
1. bare environment: agent-steps per second of MettaGridVecEnv with uniformly random actions
   (median of 3 timed runs of 500 batch steps);
2. full loop: `python train.py --preset mettagrid --env.id mettagrid/<task>` in a fresh process,
   agent-steps per second of its training loop, and the ratio to the bare environment;
3. learning: mean episode reward per agent of the trained policy and of a uniformly random policy,
   each over the same evaluation episodes (sampled actions, fixed seed), and the learning curves
   (reward per agent of the training episodes against steps and wall time) as a PNG next to the
   JSON results: a new file per invocation, results/mettagrid_<UTC date-time>.json (with the command,
   commit and machine), and its .png.

    pip install -e ".[mettagrid]"
    python benchmarks/mettagrid.py                        # both tasks, 500k steps each, ~3 minutes
    python benchmarks/mettagrid.py --tasks hearts --total-timesteps 200000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# This file's name would shadow the mettagrid package: take its folder off the path, import compare by file.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]
_spec = importlib.util.spec_from_file_location("compare", os.path.join(HERE, "compare.py"))
compare = sys.modules["compare"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

from cleanmetta.checkpoint import PolicyStore  # noqa: E402
from cleanmetta.presets import mettagrid_config  # noqa: E402
from cleanmetta.evaluate import PolicyEvaluator, Simulation  # noqa: E402


class UniformPolicy(torch.nn.Module):
    """The random baseline: every action equally likely."""

    def __init__(self, num_actions: int):
        super().__init__()
        self.num_actions = num_actions

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return torch.randint(self.num_actions, (obs.shape[0], 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["hearts", "hearts_sparse"])
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-episodes", type=int, default=16, help="simulations of 4 agents each")
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/mettagrid_<date-time>.json")
    args = parser.parse_args()
    args.out = compare.result_path("mettagrid", args.out)
    preset = mettagrid_config()
    total = args.total_timesteps or preset.trainer.total_timesteps

    rows, episodes = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.tasks:
            task = f"mettagrid/{name}"
            bare = compare.bare_env_speed(task, preset.env.num_envs)
            run = compare.run_cleanmetta(args.seed, total, workdir, ["--preset", "mettagrid", "--env.id", task])
            loop = run["steps"] / run["train"]
            run_dir = os.path.join(workdir, f"cleanmetta_seed{args.seed}")
            trained = PolicyStore(run_dir).latest().policy
            evaluator = PolicyEvaluator([Simulation(name, task, episodes=args.eval_episodes, seed=12345)], "cpu")
            trained_reward = evaluator.evaluate(trained)[name].mean_return
            random_reward = evaluator.evaluate(UniformPolicy(5))[name].mean_return
            episodes[task] = [run["episodes"]]
            rows.append((task, bare, loop, trained_reward, random_reward))
            print(f"{task}: bare env {bare:,.0f} agent-steps/s, training loop {loop:,.0f} ({loop / bare:.2f} of bare); "
                  f"reward per agent: trained {trained_reward:.2f}, random {random_reward:.2f}", flush=True)
            os.rename(run_dir, f"{run_dir}_{name}")  # the next task's run gets a fresh directory

    print(f"\nmettagrid preset (16 simulations x 4 agents), {total:,} steps per task, seed {args.seed}\n")
    print("| task | bare env agent-steps/s | training loop agent-steps/s | loop / bare "
          "| reward per agent, trained | reward per agent, random |")
    print("|---|---|---|---|---|---|")
    for task, bare, loop, trained_reward, random_reward in rows:
        print(f"| {task} | {bare:,.0f} | {loop:,.0f} | {loop / bare:.2f} | {trained_reward:.2f} "
              f"| {random_reward:.2f} |")
    compare.write_result(args.out, {"total_timesteps": total, "seed": args.seed, "tasks": [
        dict(zip(("task", "bare_sps", "loop_sps", "trained_reward", "random_reward"), row)) for row in rows]})
    compare.save_curves(episodes, args.out, f"mettagrid preset, {total:,} steps, seed {args.seed} (reward per agent)")
    print(f"results: {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
