"""PolicyEvaluator: score a policy on a suite of named simulations, reproducibly.

A simulation is a task (gymnasium id + kwargs), an episode count and a seed. Evaluation runs one
environment copy per episode, each for exactly one episode (so short episodes are not
over-counted), with its own seeded RNG for the policy's sampling: the same policy and seed give
the same scores, and the training run's RNG stream is left untouched. A recurrent policy's LSTM
state is carried per environment from a zero state at the episode's start. An env that reports its
own episode score in info["episode"] (gymnasium's RecordEpisodeStatistics convention; ALE games, with
the unclipped game score over all lives) is scored by it, its episode ending when it reports one: an
Atari evaluation plays whole games whatever ends the training episodes.

From the command line, for the latest (or a chosen) policy of a run:

    python -m cleanmetta.evaluate runs/NAME
    python -m cleanmetta.evaluate runs/NAME --policy 120 --episodes 50 --deterministic
    python -m cleanmetta.evaluate runs/NAME --video     # also record each simulation's first episode

The scores are recorded on the policy's record in the run's policies.json (`--no-record`: not),
where `--policy best:<score>` and PolicyStore.best find them; a policy file outside the run's
store is evaluated, not recorded. The store's lock makes this safe while the run still trains.

Recording (`video_dir`, train.py's --evaluation.video): the first episode of every simulation, as
an mp4 for gymnasium envs that render rgb_array frames (gymnasium's RecordVideo, the `video` extra),
as MettaGrid's replay file (.json.z, for its MettaScope viewer) for MettaGrid. The recorded episode
is one of the scored ones, played exactly as without recording.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from cleanmetta.checkpoint import CheckpointError, PolicyStore, check_policy_spaces
from cleanmetta.config import ConfigError, EnvConfig, TrainingConfig
from cleanmetta.curriculum import SingleTaskCurriculum, Task, configured_families
from cleanmetta.envs import check_recordable, make_vecenv
from cleanmetta.spaces import observation_layout


METTASCOPE_HINT = ("MettaGrid's viewer MettaScope plays it: drop the file on "
                   "https://metta-ai.github.io/metta/mettascope/mettascope.html, or open that page with "
                   "?replay=<its URL>")


@dataclass
class Simulation:
    """One entry of a simulation suite."""

    name: str
    task: str
    """gymnasium id with optional kwargs, as in curriculum tasks: 'CartPole-v1:max_episode_steps=200'."""
    episodes: int = 10
    seed: int = 0
    wrappers: list[str] = field(default_factory=list)
    """gymnasium wrappers by import path, applied to every env in order, as the training run's env.wrappers."""


@dataclass
class SimulationResult:
    mean_return: float
    std_return: float
    min_return: float
    max_return: float
    mean_length: float
    episodes: int
    recordings: list[str] = field(default_factory=list)
    """files the evaluation recorded (an mp4, or a MettaGrid replay) when the evaluator has a video_dir."""

    def scores(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{key}": float(value) for key, value in vars(self).items() if key != "recordings"}


def video_dir(run_dir: str) -> str:
    """Where a run's evaluation recordings go."""
    return os.path.join(run_dir, "videos")


def suite_from_config(config: TrainingConfig, episodes: int | None = None, seed: int | None = None) -> list[Simulation]:
    """One simulation per training task (the curriculum's tasks, else env.id, with env.kwargs), on the
    training run's env.wrappers; each named by its task as written. A task family is played at its
    middle settings (curriculum.TaskFamily.middle)."""
    specs = config.curriculum.tasks or [config.env.id]
    families = configured_families(config.env, config.curriculum)
    return [Simulation(name=spec if family.settings else Task.parse(spec).name, task=family.middle().name,
                       episodes=episodes or config.evaluation.episodes,
                       seed=config.evaluation.seed if seed is None else seed, wrappers=list(config.env.wrappers))
            for spec, family in zip(specs, families)]


class PolicyEvaluator:
    """Scores policies on `suite`. With `video_dir`, every evaluation also records the first episode of
    each simulation (an mp4 of a gymnasium env, MettaGrid's replay file): checked here, before any
    training, that the suite's envs can be recorded."""

    def __init__(self, suite: list[Simulation], device: torch.device | str = "cpu", deterministic: bool = False,
                 video_dir: str | None = None):
        names = [sim.name for sim in suite]
        if len(set(names)) != len(names):
            raise ConfigError(f"simulation names must be distinct, got {names}")
        self.suite, self.device, self.deterministic = suite, torch.device(device), deterministic
        self.video_dir = video_dir
        if video_dir is not None:
            for sim in suite:
                check_recordable(sim.task)

    def evaluate(self, policy, step: int | None = None) -> dict[str, SimulationResult]:
        """Results per simulation name. Recordings go to video_dir/step_<step>/<simulation>/ (step: the
        policy's agent steps; None: video_dir/<simulation>/)."""
        results = {}
        for sim in self.suite:
            record_dir = None
            if self.video_dir is not None:
                step_dir = f"step_{step:09d}" if step is not None else ""
                record_dir = os.path.join(self.video_dir, step_dir, re.sub(r"[^\w.=-]+", "_", sim.name))
            results[sim.name] = self.run(policy, sim, record_dir)
        return results

    @torch.inference_mode()
    def run(self, policy, sim: Simulation, record_dir: str | None = None) -> SimulationResult:
        """Play sim.episodes episodes, one per env; with record_dir, record the first env's episode there."""
        if record_dir is not None and os.path.isdir(record_dir):
            shutil.rmtree(record_dir)  # this evaluation's files only (an earlier one at the same step, e.g.)
        # 'sync': the envs a recording needs (RecordVideo wraps one), so recording never changes the episodes
        env_config = EnvConfig(id=sim.task, num_envs=sim.episodes, vectorization="sync", wrappers=sim.wrappers)
        vecenv = make_vecenv(env_config, sim.seed, SingleTaskCurriculum(sim.task), record_dir)
        if getattr(policy, "spec", None) is not None:  # a saved policy of another env: said now, not by a matmul
            try:
                check_policy_spaces(policy, vecenv.single_observation_space, vecenv.single_action_space,
                                    f"simulation {sim.name!r}: the policy")
            except CheckpointError as err:
                vecenv.close()
                raise CheckpointError(f"{err}; evaluate it on the env it was trained on") from None
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
            layout = observation_layout(vecenv.single_observation_space)  # a Dict, ... as the buffer stores it
            while running.any():
                obs_t = torch.as_tensor(obs if layout is None else layout.flatten(obs), device=self.device)
                if state is None:
                    action = policy.act(obs_t, self.deterministic)
                else:
                    action, state = policy.act(obs_t, self.deterministic, state)
                action = action.cpu().numpy().reshape(shape)
                obs, reward, terminated, truncated, infos = vecenv.step(action)
                returns += reward * running
                lengths += running
                if "episode" in infos:  # the env's own score (e.g. an Atari game's, over all its lives): its episode
                    ended = infos["_episode"] & running
                    returns[ended], lengths[ended] = infos["episode"]["r"][ended], infos["episode"]["l"][ended]
                    running &= ~ended
                else:
                    running &= ~(terminated | truncated)
        vecenv.close()  # RecordVideo writes its mp4 when its episode ends, at the latest when closed
        recordings = sorted(os.path.join(record_dir, f) for f in os.listdir(record_dir)) if record_dir else []
        return SimulationResult(returns.mean(), returns.std(), returns.min(), returns.max(), lengths.mean(),
                                sim.episodes, recordings)


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
    parser.add_argument("--video", action="store_true",
                        help="record each simulation's first episode under RUN_DIR/videos/step_<policy's steps>/")
    parser.add_argument("--no-record", action="store_true",
                        help="leave RUN_DIR/policies.json as it is (by default the scores go on the policy's record)")
    parser.add_argument("--trust", action="append", default=[], metavar="MODULE",
                        help="a module a policy file's own network may be imported from (the run's own "
                             "agent.network is trusted already); repeatable")
    args = parser.parse_args(argv)
    store = PolicyStore(args.run_dir, trust=args.trust)
    try:
        config = TrainingConfig.from_yaml(f"{args.run_dir}/config.json")
        record = store.get(args.policy)
        evaluator = PolicyEvaluator(suite_from_config(config, args.episodes, args.seed), args.device,
                                    args.deterministic, video_dir(args.run_dir) if args.video else None)
        results = evaluator.evaluate(record.policy.to(args.device), record.agent_steps)
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"{record.uri} (epoch {record.epoch}, {record.agent_steps:,} agent steps)")
    print(format_table(results))
    for result in results.values():
        for path in result.recordings:
            replay = path.endswith(".json.z")
            print(f"recorded {path}" + (f" (a MettaGrid replay: {METTASCOPE_HINT})" if replay else ""))
    if args.no_record:
        return
    scores = {key: value for name, result in results.items() for key, value in result.scores(name).items()}
    try:
        recorded = store.record_scores(record.uri, scores)
    except (CheckpointError, OSError) as err:
        sys.exit(f"error: could not record the scores in {store.index_path} ({err}); --no-record evaluates "
                 "without recording")
    if recorded is None:
        print(f"scores not recorded: {record.uri} is not (or no longer) one of the policies in {store.index_path}")
    else:
        print(f"scores recorded on epoch {record.epoch}'s record in {store.index_path}")


if __name__ == "__main__":
    main()
