"""Tasks, task families and curricula: which task each new episode plays.

A task is an environment id with optional constructor kwargs, written `"CartPole-v1"` or
`"CartPole-v1:max_episode_steps=200"` (a gymnasium id, or a `mettagrid/<task>` id), optionally
after the module that registers the id: `"ale_py:ALE/Pong-v5:frameskip=4"`. A task family is the
same with settings drawn per task: `altars=1..8` (integers, both ends included), `scale=0.5..2.0`
(floats), `size=small|large` (a choice), e.g. `"mettagrid/hearts:altars=1..8,width=9..25"`; every
task drawn from it is a concrete task string (`mettagrid/hearts:altars=3,width=17`), which is
what episodes report in info["task"] and logs name. config.parse_task_family has the grammar.
`env.kwargs` go into every task's kwargs, under its own. In a YAML config file, `curriculum.tasks`
is the list of these strings.

A curriculum holds the families (`curriculum.tasks`) and picks the task of every new episode:
- `SingleTaskCurriculum`: always the same task;
- `RandomCurriculum`: a family drawn by weight, then its settings uniformly (a new task each episode);
- `LearningProgressCurriculum` (`--curriculum.algorithm learning_progress`, Metta's): a pool of
  `num_active_tasks` tasks drawn from the families, sampled by their learning progress
  (learning_progress.py has the maths), the least promising evicted and replaced by new draws.

Envs call `sample(rng)` at every reset, with their own generator, in whichever process steps them;
the learner calls `update(rollout_stats)` once per rollout, with every finished episode's task and
return (under torchrun, every rank's: each rank's curriculum takes the same updates from the same
seed, so all hold one and the same pool), and saves `state_dict()` in the checkpoint. The pool's
sampling table lives in shared memory (`TaskTable`), so that env worker processes, forked or
spawned, draw from the pool the learner last published. The tasks of one curriculum must share
their spaces; envs.py checks that when it builds them.

The rules for the strings and weights themselves are config values' rules and live in config.py,
so that `TrainingConfig.validate()` applies them too. Building the environments is envs.py's job.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cleanmetta.config import (ConfigError, CurriculumConfig, EnvConfig, Setting, parse_kwargs, parse_range,
                               parse_task, parse_task_family, task_probabilities)
from cleanmetta.learning_progress import LearningProgress

BINS = 10  # a range's bins when coverage and pictures split it


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


@dataclass(frozen=True)
class TaskFamily:
    """The tasks of one curriculum entry: fixed kwargs, and settings drawn for each task."""

    spec: str                              # as written: the family's name in logs
    env_id: str
    fixed: dict[str, Any] = field(hash=False)
    settings: dict[str, Setting] = field(hash=False)
    module: str | None = None

    @classmethod
    def parse(cls, spec: str, default_kwargs: dict[str, Any] | None = None) -> TaskFamily:
        env_id, fixed, settings, module = parse_task_family(spec)
        fixed = {key: value for key, value in {**(default_kwargs or {}), **fixed}.items() if key not in settings}
        return cls(spec, env_id, fixed, settings, module)

    def _task(self, values: dict[str, Any]) -> Task:
        return Task(self.env_id, {**self.fixed, **values}, self.module)

    def draw(self, rng: np.random.Generator) -> Task:
        """A task with every setting drawn uniformly (floats rounded to 4 significant digits)."""
        values = {}
        for key, s in self.settings.items():
            if s.kind == "int":
                values[key] = int(rng.integers(s.low, s.high + 1))
            elif s.kind == "float":
                values[key] = float(f"{rng.uniform(s.low, s.high):.4g}")
            else:
                values[key] = s.choices[int(rng.integers(len(s.choices)))]
        return self._task(values)

    def middle(self) -> Task:
        """The task at the middle of every range (the middle choice): the one evaluation plays."""
        return self._task({key: s.choices[len(s.choices) // 2] if s.kind == "choice" else
                           (int(s.low + s.high) // 2 if s.kind == "int" else float(f"{(s.low + s.high) / 2:.4g}"))
                           for key, s in self.settings.items()})

    def edges(self) -> list[Task]:
        """The tasks at the low and at the high end of every setting (the first and the last choice)."""
        return [self._task({key: (s.choices[end] if s.kind == "choice" else (s.low, s.high)[end])
                            for key, s in self.settings.items()}) for end in (0, -1)]

    @property
    def size(self) -> float:
        """How many distinct tasks it holds (math.inf with a float range)."""
        sizes = [len(s.choices) if s.kind == "choice" else s.high - s.low + 1 if s.kind == "int" else math.inf
                 for s in self.settings.values()]
        return math.prod(sizes) if sizes else 1

    def contains(self, task: Task) -> bool:
        kwargs = task.kwargs
        return (task.env_id == self.env_id and task.module == self.module
                and set(kwargs) == set(self.fixed) | set(self.settings)
                and all(kwargs[key] == value for key, value in self.fixed.items())
                and all(self.position(key, kwargs[key]) is not None for key in self.settings))

    def position(self, key: str, value: Any) -> float | None:
        """Where `value` lies in setting `key`: the number itself in a range, its index in a choice;
        None when it is not one of the setting's values."""
        s = self.settings[key]
        if s.kind == "choice":
            return float(s.choices.index(value)) if value in s.choices else None
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and (s.kind == "float" or
                                                                                        float(value).is_integer())
        return float(value) if number and s.low <= value <= s.high else None

    def histogram_edges(self, key: str) -> np.ndarray:
        """Bin edges for histograms of setting `key`'s positions: one bin per integer of a range (at most
        50 bins) or per choice, 20 equal bins of a float range."""
        s = self.settings[key]
        if s.kind == "choice":
            return np.arange(len(s.choices) + 1) - 0.5
        if s.kind == "int" and s.high - s.low < 50:
            return np.arange(s.low, s.high + 2) - 0.5
        return np.linspace(s.low, s.high, 21 if s.kind == "float" else 51)

    def bins(self, key: str) -> int:
        """How many bins setting `key` is split into for coverage: one per choice, one per integer of a
        short range, else BINS equal parts."""
        s = self.settings[key]
        if s.kind == "choice":
            return len(s.choices)
        return int(s.high - s.low + 1) if s.kind == "int" and s.high - s.low < BINS else BINS

    def bin(self, key: str, value: Any) -> int:
        s, position, count = self.settings[key], self.position(key, value), self.bins(key)
        if s.kind == "choice":
            return int(position)
        span = s.high - s.low + (1 if s.kind == "int" else 0)
        return min(int((position - s.low) / span * count) if span > 0 else 0, count - 1)


class TaskTable:
    """A pool's task ids and cumulative probabilities in memory shared with env processes (a
    multiprocessing RawArray: inherited by forked workers, passed to spawned ones). The learner
    writes it between rollouts; envs read it at every reset."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.raw = multiprocessing.RawArray("d", 1 + 2 * capacity)  # [count, ids..., cdf...]; ids < 2**31
        self._views()

    def _views(self) -> None:
        array = np.frombuffer(self.raw, np.float64)
        self.count, self.ids, self.cdf = array[:1], array[1:1 + self.capacity], array[1 + self.capacity:]

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity, "raw": self.raw}

    def __setstate__(self, state: dict) -> None:
        self.capacity, self.raw = state["capacity"], state["raw"]
        self._views()

    def write(self, ids: list[int], probabilities: np.ndarray) -> None:
        self.ids[:len(ids)] = ids
        self.cdf[:len(ids)] = np.cumsum(probabilities)
        self.count[0] = len(ids)

    def draw(self, rng: np.random.Generator) -> int:
        n = int(self.count[0])
        return int(self.ids[min(int(np.searchsorted(self.cdf[:n], rng.random() * self.cdf[n - 1], "right")), n - 1)])


class Curriculum:
    """Task families, and the choice of each new episode's task (`sample`, by the envs)."""

    def __init__(self, tasks: list[TaskFamily | Task | str], weights: list[float] | None = None):
        if not tasks:
            raise ConfigError("a curriculum needs at least one task")
        self.families = [TaskFamily.parse(task.name if isinstance(task, Task) else task)
                         if not isinstance(task, TaskFamily) else task for task in tasks]
        self.probabilities = np.asarray(task_probabilities(weights, len(self.families)))
        self.tasks = [family.middle() for family in self.families]  # one task per family, its middle settings
        probes = [task for family in self.families for task in (family.middle(), *family.edges())]
        self.probes = list({task.name: task for task in probes}.values())  # envs check their spaces on these
        self.size = sum(family.size for family in self.families)
        self._families_of: dict[str, str] = {}

    @property
    def single(self) -> bool:
        """Whether every episode plays the same task."""
        return self.size == 1

    def draw(self, rng: np.random.Generator) -> Task:
        """A new task: a family by weight, then its settings."""
        family = int(rng.choice(len(self.families), p=self.probabilities)) if len(self.families) > 1 else 0
        return self.families[family].draw(rng)

    def task(self, task_id: int) -> Task:
        """The task that id `task_id` stands for (the same in every process)."""
        return self.draw(np.random.default_rng(task_id))

    def family_of(self, name: str) -> str:
        """The name of the family a task belongs to (the task itself when no family holds it)."""
        if name not in self._families_of:
            if len(self._families_of) > 100_000:  # a float range names a new task at every draw
                self._families_of.clear()
            task = Task.parse(name)
            self._families_of[name] = next((f.spec for f in self.families if f.contains(task)), name)
        return self._families_of[name]

    def sample(self, rng: np.random.Generator) -> Task:
        raise NotImplementedError

    def update(self, rollout_stats: dict) -> dict[str, float]:
        """Learn from a rollout's finished episodes (once per rollout, in the learner); its scalars to log."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SingleTaskCurriculum(Curriculum):
    def __init__(self, task: Task | str):
        super().__init__([task])

    def sample(self, rng: np.random.Generator) -> Task:
        return self.tasks[0]


class RandomCurriculum(Curriculum):
    """Each episode plays a new draw: family i with probability weights[i] / sum(weights), then its settings."""

    def sample(self, rng: np.random.Generator) -> Task:
        return self.draw(rng)


class LearningProgressCurriculum(Curriculum):
    """A pool of tasks drawn from the families, sampled by learning progress (learning_progress.py).

    Each update: the episodes' returns are recorded for their tasks (each agent's episode is one
    score, so a MettaGrid simulation gives one per agent; episodes of a task that has left the pool
    are dropped), the families' running ranges take in their tasks' means and the averages step (in
    the returns' units: scoring maps them by the family's range, curriculum.score_ranges, else the
    running min and max of its tasks' mean scores); then, when the families hold more
    tasks than the pool, the task `LearningProgress.evictable` names is replaced by a new draw;
    then the sampling table is published. Its draws are seeded by (seed, number of updates): the
    same on every torchrun rank, and restored by a resume with the counters.
    """

    def __init__(self, tasks: list[TaskFamily | Task | str], weights: list[float] | None = None,
                 config: CurriculumConfig | None = None, seed: int = 0):
        super().__init__(tasks, weights)
        c = config or CurriculumConfig(algorithm="learning_progress")
        self.config, self.seed = c, seed
        self.lp = LearningProgress(c.ema_timescale, c.exploration_bonus, c.sample_threshold, c.progress_smoothing,
                                   c.memory, c.rand_task_rate, normalize=self._normalize)
        ranges = [parse_range(text, "curriculum.score_ranges entry") for text in c.score_ranges]
        self.ranges = ranges * len(self.families) if len(ranges) == 1 else ranges or [None] * len(self.families)
        self.seen: list[list[float]] = [[math.inf, -math.inf] for _ in self.families]  # running min, max
        self.pool: list[int] = []
        self.names: dict[int, str] = {}
        self.ids: dict[str, int] = {}
        self.updates = self.evictions = self.recorded = 0  # recorded: episode scores taken in, all tasks
        self.table = TaskTable(c.num_active_tasks)
        self._fill(self._rng())
        self._publish()

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x1EA2, self.updates])

    def _fill(self, rng: np.random.Generator) -> None:
        """New tasks until the pool is full (or, for families of few tasks, until draws find no new one)."""
        for _ in range(20 * self.config.num_active_tasks):
            if len(self.pool) >= self.config.num_active_tasks:
                break
            task_id = int(rng.integers(2**31))
            name = self.task(task_id).name
            if name not in self.ids:
                self.pool.append(task_id)
                self.names[task_id], self.ids[name] = name, task_id
                self.lp.add(task_id)

    def _publish(self) -> None:
        self.probs = self.lp.probabilities(self.pool)
        self.table.write(self.pool, self.probs)

    def sample(self, rng: np.random.Generator) -> Task:
        return self.task(self.table.draw(rng))

    def _family(self, task_id: int) -> int:
        return next(i for i, f in enumerate(self.families) if f.spec == self.family_of(self.names[task_id]))

    def _normalize(self, task_id: int, value: float) -> float:
        """A return of the task's family on [0, 1]: by its score range, else by the range seen so far."""
        family = self._family(task_id)
        low, high = self.ranges[family] or self.seen[family]
        return (value - low) / (high - low) if high > low else 0.0

    def update(self, rollout_stats: dict) -> dict[str, float]:
        returns = rollout_stats["episodic_return"].tolist()
        for name, episode_return in zip(rollout_stats.get("episodic_task", []), returns):
            task_id = self.ids.get(name)
            if task_id is not None:  # else drawn before its task left the pool
                self.lp.record(task_id, episode_return)
                self.recorded += 1
        for task_id in self.pool:  # the families' ranges: of their tasks' mean scores, robust to a lucky episode
            if self.lp.outcomes[task_id]:
                seen, mean = self.seen[self._family(task_id)], float(np.mean(self.lp.outcomes[task_id]))
                seen[:] = min(seen[0], mean), max(seen[1], mean)
        self.lp.step()
        self.updates += 1
        evicted = self.lp.evictable(self.pool, self.config.min_presentations) if self.size > len(self.pool) else None
        if evicted is not None:
            self.pool.remove(evicted)
            self.lp.remove(evicted)
            del self.ids[self.names.pop(evicted)]
            self.evictions += 1
            self._fill(self._rng())
        self._publish()
        return self.stats()

    def stats(self) -> dict[str, float]:
        """The pool: its size, evictions and episodes taken in so far, the sampling entropy (nats), and per family its tasks,
        their mean learning progress, their share of the draws and their coverage of its settings
        (the mean over settings of the share of their bins that a pool task falls in)."""
        p = self.probs
        stats = {"curriculum/pool_size": len(self.pool), "curriculum/evictions": self.evictions,
                 "curriculum/episodes": self.recorded,
                 "curriculum/sampling_entropy": float(-(p * np.log(np.maximum(p, 1e-12))).sum())}
        members = [self._family(task_id) for task_id in self.pool]
        for i, family in enumerate(self.families):
            mine = [k for k, member in enumerate(members) if member == i]
            prefix = f"curriculum/{family.spec}"
            stats[f"{prefix}/pool_tasks"] = len(mine)
            stats[f"{prefix}/probability"] = float(p[mine].sum())
            if mine:
                stats[f"{prefix}/learning_progress"] = float(np.mean([self.lp.score(self.pool[k]) for k in mine]))
            tasks = [Task.parse(self.names[self.pool[k]]) for k in mine]
            shares = [len({family.bin(key, t.kwargs[key]) for t in tasks}) / family.bins(key)
                      for key in family.settings]
            stats[f"{prefix}/coverage"] = float(np.mean(shares)) if shares and tasks else float(bool(tasks))
        return stats

    def state_dict(self) -> dict:
        return {"algorithm": "learning_progress", "families": [f.spec for f in self.families],
                "pool": list(self.pool), "updates": self.updates, "recorded": self.recorded,
                "evictions": self.evictions, "seen": [list(s) for s in self.seen], "lp": self.lp.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        families = [f.spec for f in self.families]
        if state["families"] != families:  # the pool's ids stand for tasks of those families
            raise ConfigError(f"the checkpoint's curriculum drew its tasks from {state['families']}, not {families}: "
                              "resume with its curriculum.tasks, or pass --checkpoint.no-resume to start over")
        if "fast_return" not in state["lp"]:  # averages of scores normalised by ranges since widened: not comparable
            raise ConfigError("the checkpoint's learning-progress averages are of normalised scores (an earlier "
                              "cleanmetta's), not returns: pass --checkpoint.no-resume to start a new run")
        self.pool, self.updates, self.evictions = list(state["pool"]), state["updates"], state["evictions"]
        self.recorded = state["recorded"]
        self.seen = [list(s) for s in state["seen"]]
        self.lp.load_state_dict(state["lp"])
        self.names = {task_id: self.task(task_id).name for task_id in self.pool}
        self.ids = {name: task_id for task_id, name in self.names.items()}
        self._publish()


CURRICULA = {"random": RandomCurriculum, "learning_progress": LearningProgressCurriculum}


def configured_families(env_config: EnvConfig, curriculum_config: CurriculumConfig | None = None) -> list[TaskFamily]:
    """The families a config trains on: curriculum.tasks, else env.id; each with env.kwargs under its own."""
    specs = (curriculum_config.tasks if curriculum_config else None) or [env_config.id]
    default_kwargs = parse_kwargs(env_config.kwargs, "env.kwargs")
    return [TaskFamily.parse(spec, default_kwargs) for spec in specs]


def make_curriculum(env_config: EnvConfig, curriculum_config: CurriculumConfig | None = None,
                    seed: int = 0) -> Curriculum:
    """The configured curriculum; without tasks, the single task env.id. `seed` seeds a learning-progress
    pool (train.py: config.seed, the same on every torchrun rank)."""
    config = curriculum_config or CurriculumConfig()
    families = configured_families(env_config, config)
    if config.algorithm == "learning_progress":
        return LearningProgressCurriculum(families, config.weights, config, seed)
    curriculum = RandomCurriculum(families, config.weights)
    return SingleTaskCurriculum(curriculum.tasks[0]) if curriculum.single else curriculum
