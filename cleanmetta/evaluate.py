"""PolicyEvaluator: score a policy on a suite of named simulations, reproducibly.

A simulation is a task (gymnasium id + kwargs), an episode count and a seed. Evaluation runs one
environment copy per episode, each for exactly one episode (so short episodes are not
over-counted), with its own seeded RNG for the policy's sampling: the same policy and seed give
the same scores, and the training run's RNG stream is left untouched. A recurrent policy's LSTM
state is carried per environment from a zero state at the episode's start.

From the command line, for the latest (or a chosen) policy of a run:

    python -m cleanmetta.evaluate runs/NAME
    python -m cleanmetta.evaluate runs/NAME --policy 120 --episodes 50 --deterministic
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch

from cleanmetta.checkpoint import CheckpointError, PolicyStore
from cleanmetta.config import ConfigError, EnvConfig, TrainingConfig
from cleanmetta.curriculum import SingleTaskCurriculum, Task
from cleanmetta.envs import make_vecenv


@dataclass
class Simulation:
    """One entry of a simulation suite."""

    name: str
    task: str
    """gymnasium id with optional kwargs, as in curriculum tasks: 'CartPole-v1:max_episode_steps=200'."""
    episodes: int = 10
    seed: int = 0


@dataclass
class SimulationResult:
    mean_return: float
    std_return: float
    min_return: float
    max_return: float
    mean_length: float
    episodes: int

    def scores(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{key}": float(value) for key, value in vars(self).items()}


def suite_from_config(config: TrainingConfig, episodes: int | None = None, seed: int | None = None) -> list[Simulation]:
    """One simulation per training task (the curriculum's tasks, else env.id)."""
    tasks = config.curriculum.tasks or [config.env.id]
    return [Simulation(name=Task.parse(task).name, task=task, episodes=episodes or config.evaluation.episodes,
                       seed=config.evaluation.seed if seed is None else seed) for task in tasks]


class PolicyEvaluator:
    def __init__(self, suite: list[Simulation], device: torch.device | str = "cpu", deterministic: bool = False):
        names = [sim.name for sim in suite]
        if len(set(names)) != len(names):
            raise ConfigError(f"simulation names must be distinct, got {names}")
        self.suite, self.device, self.deterministic = suite, torch.device(device), deterministic

    def evaluate(self, policy) -> dict[str, SimulationResult]:
        """Scores per simulation name."""
        return {sim.name: self.run(policy, sim) for sim in self.suite}

    @torch.inference_mode()
    def run(self, policy, sim: Simulation) -> SimulationResult:
        vecenv = make_vecenv(EnvConfig(id=Task.parse(sim.task).env_id, num_envs=sim.episodes),
                             sim.seed, SingleTaskCurriculum(sim.task))
        # One episode per env; a multi-agent env (MettaGrid) has several agents per episode, each a row.
        returns = np.zeros(vecenv.num_envs)
        lengths = np.zeros(vecenv.num_envs, np.int64)
        running = np.ones(vecenv.num_envs, bool)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(sim.seed)
            obs, _ = vecenv.reset()
            shape = vecenv.action_space.shape
            # A recurrent policy carries each env's LSTM state; one episode per env, so it starts at zero.
            state = policy.initial_state(vecenv.num_envs, self.device) if getattr(policy, "recurrent", False) else None
            while running.any():
                obs_t = torch.as_tensor(obs, device=self.device)
                if state is None:
                    action = policy.act(obs_t, self.deterministic)
                else:
                    action, state = policy.act(obs_t, self.deterministic, state)
                action = action.cpu().numpy().reshape(shape)
                obs, reward, terminated, truncated, _ = vecenv.step(action)
                returns += reward * running
                lengths += running
                running &= ~(terminated | truncated)
        vecenv.close()
        return SimulationResult(returns.mean(), returns.std(), returns.min(), returns.max(), lengths.mean(),
                                sim.episodes)


def format_table(results: dict[str, SimulationResult]) -> str:
    lines = [f"{'simulation':30s} {'episodes':>8s} {'mean':>9s} {'std':>9s} {'min':>9s} {'max':>9s} {'length':>8s}"]
    for name, r in results.items():
        lines.append(f"{name:30s} {r.episodes:8d} {r.mean_return:9.2f} {r.std_return:9.2f} {r.min_return:9.2f} "
                     f"{r.max_return:9.2f} {r.mean_length:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cleanmetta.evaluate", description="Evaluate a run's policy.")
    parser.add_argument("run_dir", help="run directory, e.g. runs/NAME")
    parser.add_argument("--policy", default="latest", help="'latest', an epoch number, 'best:<score>' or a file")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per simulation (default: the run's)")
    parser.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the run's)")
    parser.add_argument("--deterministic", action="store_true", help="act with the mode instead of sampling")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        config = TrainingConfig.from_yaml(f"{args.run_dir}/config.json")
        record = PolicyStore(args.run_dir).get(args.policy)
        evaluator = PolicyEvaluator(suite_from_config(config, args.episodes, args.seed), args.device,
                                    args.deterministic)
        results = evaluator.evaluate(record.policy.to(args.device))
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"{record.uri} (epoch {record.epoch}, {record.agent_steps:,} agent steps)")
    print(format_table(results))


if __name__ == "__main__":
    main()
