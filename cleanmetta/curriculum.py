"""Tasks and curricula: which task each new episode plays.

A task is an environment id with optional constructor kwargs, written `"CartPole-v1"` or
`"CartPole-v1:max_episode_steps=200"` (a gymnasium id, or a `mettagrid/<task>` id), optionally
after the module that registers the id: `"ale_py:ALE/Pong-v5:frameskip=4"` (config.parse_task has
the grammar). `env.kwargs` go into every task's kwargs, under its own. A curriculum
holds a list of tasks and picks the task of every new episode: `SingleTaskCurriculum` always the
same one, `RandomCurriculum` one drawn by weight. The tasks of one curriculum must share their
spaces; envs.py checks that when it builds them.

The rules for the strings and weights themselves (task syntax, one finite weight per task) are
config values' rules and live in config.py, so that `TrainingConfig.validate()` applies them too.

This module chooses tasks; building the environments that play them is envs.py's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cleanmetta.config import ConfigError, CurriculumConfig, EnvConfig, parse_kwargs, parse_task, task_probabilities


@dataclass(frozen=True)
class Task:
    """One task: an environment id, the kwargs its environment is made with, and the module to import
    first (None: the id is registered already, or envs.py knows its package)."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    module: str | None = None

    @property
    def name(self) -> str:
        """The task string it parses from: '[module:]ID[:key=value,...]'."""
        args = ",".join(f"{k}={json.dumps(v)}" for k, v in self.kwargs.items())
        env_id = f"{self.module}:{self.env_id}" if self.module else self.env_id
        return f"{env_id}:{args}" if args else env_id

    @classmethod
    def parse(cls, spec: str, default_kwargs: dict[str, Any] | None = None) -> Task:
        """'[module:]ID[:key=value,key=value]'; values are read as JSON when they parse, else as strings.
        `default_kwargs` (env.kwargs) come first, the task's own override them."""
        env_id, kwargs, module = parse_task(spec)
        return cls(env_id, {**(default_kwargs or {}), **kwargs}, module)


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
        self.probabilities = np.asarray(task_probabilities(weights, len(self.tasks)))

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.tasks), p=self.probabilities))


def configured_tasks(env_config: EnvConfig, curriculum_config: CurriculumConfig | None = None) -> list[Task]:
    """The tasks a config trains on: curriculum.tasks, else env.id; each with env.kwargs under its own."""
    specs = (curriculum_config.tasks if curriculum_config else None) or [env_config.id]
    default_kwargs = parse_kwargs(env_config.kwargs, "env.kwargs")
    return [Task.parse(spec, default_kwargs) for spec in specs]


def make_curriculum(env_config: EnvConfig, curriculum_config: CurriculumConfig | None = None) -> Curriculum:
    """The configured curriculum; without tasks, the single task env.id."""
    tasks = configured_tasks(env_config, curriculum_config)
    if len(tasks) == 1:
        return SingleTaskCurriculum(tasks[0])
    return RandomCurriculum(tasks, curriculum_config.weights)
