"""Environments: build a seeded gymnasium vector env and check that cleanmetta can train on it.

The contract with the rest of the package is gymnasium's NEXT_STEP autoreset: the step that ends
an episode returns that episode's final observation, and the following step resets the env
(its action is ignored, its reward is 0) and returns the first observation of the next episode.
Working with this mode means no extra policy forward is needed to bootstrap a truncated episode:
the final observation is the next one fed to the policy. The collector marks the reset steps as
invalid so no training transition ever spans two episodes.

A curriculum chooses the task of every new episode: `SingleTaskCurriculum` always the same one,
`RandomCurriculum` one drawn by weight. Tasks are gymnasium ids with optional constructor kwargs
(`"CartPole-v1"`, `"CartPole-v1:max_episode_steps=200"`) and must share their spaces. With more
than one task each sub-env is a `CurriculumEnv`, which reports its task in `info["task"]`.

`mettagrid/<task>` ids (the optional MettaGrid extra) build cleanmetta.mettagrid_env's vector env,
which follows the same contract with one batch row per agent.

This module owns env construction, curricula and space checks; stepping is the collector's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from cleanmetta.config import ConfigError, CurriculumConfig, EnvConfig


class UnsupportedEnvError(ValueError):
    """The environment's spaces or reset mode are not ones cleanmetta can train on."""


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space, env_id: str = "env") -> None:
    """Raise UnsupportedEnvError unless the per-agent spaces are ones our policies handle."""
    if not isinstance(observation_space, spaces.Box):
        raise UnsupportedEnvError(
            f"{env_id}: observation space {observation_space} is not supported; cleanmetta needs a "
            "Box observation space (wrap dict/tuple observations with gymnasium.wrappers.FlattenObservation)"
        )
    if isinstance(action_space, spaces.Discrete):
        if action_space.start != 0:
            raise UnsupportedEnvError(
                f"{env_id}: Discrete action space with start={action_space.start} is not supported; "
                "actions must start at 0 (shift them with a gymnasium ActionWrapper)"
            )
    elif isinstance(action_space, spaces.MultiDiscrete):
        if action_space.nvec.ndim != 1 or np.any(action_space.start != 0):
            raise UnsupportedEnvError(
                f"{env_id}: MultiDiscrete action space {action_space} is not supported; it must be "
                "one-dimensional with every start at 0"
            )
    elif isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1:
            raise UnsupportedEnvError(
                f"{env_id}: Box action space of shape {action_space.shape} is not supported; "
                "flatten it to one dimension"
            )
    else:
        raise UnsupportedEnvError(
            f"{env_id}: action space {action_space} is not supported; use Discrete, MultiDiscrete or Box"
        )


def check_autoreset(vecenv: gym.vector.VectorEnv) -> None:
    """Raise UnsupportedEnvError unless the vector env resets sub-envs in NEXT_STEP mode."""
    mode = vecenv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise UnsupportedEnvError(
            f"vector env autoreset_mode={mode} is not supported; create it with "
            "make_vecenv() or pass vector_kwargs={'autoreset_mode': AutoresetMode.NEXT_STEP}"
        )


@dataclass(frozen=True)
class Task:
    """One task: a gymnasium id and the kwargs its environment is made with."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        args = ",".join(f"{k}={json.dumps(v)}" for k, v in self.kwargs.items())
        return f"{self.env_id}:{args}" if args else self.env_id

    @classmethod
    def parse(cls, spec: str) -> Task:
        """'ID' or 'ID:key=value,key=value'; values are read as JSON when they parse, else as strings."""
        env_id, _, args = spec.partition(":")
        kwargs = {}
        for item in filter(None, args.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"curriculum task {spec!r}: {item!r} is not key=value")
            try:
                kwargs[key.strip()] = json.loads(value)
            except ValueError:
                kwargs[key.strip()] = value
        return cls(env_id.strip(), kwargs)


class Curriculum:
    """Chooses the task index of each new episode from `tasks`."""

    def __init__(self, tasks: list[Task | str]):
        if not tasks:
            raise ConfigError("a curriculum needs at least one task")
        self.tasks = [Task.parse(task) if isinstance(task, str) else task for task in tasks]

    def sample(self, rng: np.random.Generator) -> int:
        raise NotImplementedError


class SingleTaskCurriculum(Curriculum):
    def __init__(self, task: Task | str):
        super().__init__([task])

    def sample(self, rng: np.random.Generator) -> int:
        return 0


class RandomCurriculum(Curriculum):
    """Each episode plays task i with probability weights[i] / sum(weights)."""

    def __init__(self, tasks: list[Task | str], weights: list[float] | None = None):
        super().__init__(tasks)
        weights = np.ones(len(self.tasks)) if not weights else np.asarray(weights, dtype=np.float64)
        if len(weights) != len(self.tasks) or not np.all(np.isfinite(weights) & (weights >= 0)) or weights.sum() <= 0:
            raise ConfigError(f"curriculum.weights={weights.tolist()} must give one finite weight >= 0 per task "
                              f"({len(self.tasks)} tasks), not all zero")
        self.probabilities = weights / weights.sum()

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.tasks), p=self.probabilities))


def make_curriculum(env_config: EnvConfig, curriculum_config: CurriculumConfig | None = None) -> Curriculum:
    """The configured curriculum; without tasks, the single task env.id."""
    tasks = (curriculum_config.tasks if curriculum_config else None) or [env_config.id]
    if len(tasks) == 1:
        return SingleTaskCurriculum(tasks[0])
    return RandomCurriculum(tasks, curriculum_config.weights)


class CurriculumEnv(gym.Env):
    """A single env that plays the curriculum's choice of task each episode; info["task"] names it."""

    def __init__(self, curriculum: Curriculum):
        self.curriculum = curriculum
        self.envs = [gym.make(task.env_id, **task.kwargs) for task in curriculum.tasks]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        for task, env in zip(curriculum.tasks, self.envs):
            if env.observation_space != self.observation_space or env.action_space != self.action_space:
                raise UnsupportedEnvError(
                    f"curriculum task {task.name} has spaces {env.observation_space}, {env.action_space}; "
                    f"every task needs those of {curriculum.tasks[0].name}: {self.observation_space}, "
                    f"{self.action_space}")
        self.task = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:  # seed every task's env, so that each one's episodes are reproducible
            for i, env in enumerate(self.envs):
                env.reset(seed=seed + 7919 * i)
        self.task = self.curriculum.sample(self.np_random)
        obs, info = self.envs[self.task].reset(options=options)
        return obs, {**info, "task": self.curriculum.tasks[self.task].name}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.envs[self.task].step(action)
        return obs, reward, terminated, truncated, {**info, "task": self.curriculum.tasks[self.task].name}

    def close(self):
        for env in self.envs:
            env.close()


def make_vecenv(env_config: EnvConfig, seed: int, curriculum: Curriculum | None = None) -> gym.vector.VectorEnv:
    """Build `env_config.num_envs` copies of the env (or of the curriculum's tasks), seeded with seed, seed + 1, ...

    `mettagrid/<task>` ids build cleanmetta.mettagrid_env.MettaGridVecEnv: num_envs simulations of
    several agents each, one batch row per agent.
    """
    curriculum = curriculum or SingleTaskCurriculum(env_config.id)
    task = curriculum.tasks[0]
    from cleanmetta import mettagrid_env  # cheap: the mettagrid package loads only when a simulation is built

    is_mettagrid = [mettagrid_env.is_mettagrid(t.env_id) for t in curriculum.tasks]
    if any(is_mettagrid):  # the optional MettaGrid extra
        if not all(is_mettagrid):
            raise ConfigError(f"curriculum tasks {[t.name for t in curriculum.tasks]} mix MettaGrid and gymnasium "
                              "environments; their observations differ, so train on one kind at a time")
        vecenv = mettagrid_env.MettaGridVecEnv(curriculum, env_config.num_envs, seed)
        vecenv.reset(seed=seed)
        return vecenv
    try:
        spec = gym.spec(task.env_id)
    except gym.error.Error as err:
        raise ConfigError(f"env.id={task.env_id!r} is not a registered gymnasium environment: {err}") from None

    mode = env_config.vectorization
    if mode == "auto":
        mode = "native" if spec.vector_entry_point is not None and len(curriculum.tasks) == 1 else "sync"
    if mode == "native" and (spec.vector_entry_point is None or len(curriculum.tasks) > 1):
        raise ConfigError(f"env.vectorization='native' but {task.name} has no native vector env "
                          "(or the curriculum has several tasks); use 'sync' or 'async'")
    next_step = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    if len(curriculum.tasks) > 1:
        vector_class = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
        vecenv = vector_class([lambda: CurriculumEnv(curriculum)] * env_config.num_envs, **next_step)
    elif mode == "native":
        vecenv = gym.make_vec(task.env_id, env_config.num_envs, vectorization_mode="vector_entry_point", **task.kwargs)
    else:
        vecenv = gym.make_vec(task.env_id, env_config.num_envs, vectorization_mode=mode, vector_kwargs=next_step,
                              **task.kwargs)
    try:
        check_spaces(vecenv.single_observation_space, vecenv.single_action_space, task.name)
        check_autoreset(vecenv)
    except UnsupportedEnvError:
        vecenv.close()
        raise
    vecenv.reset(seed=seed)
    vecenv.action_space.seed(seed)
    return vecenv
