"""MettaGrid, Metta AI's C++ multi-agent gridworld, as one vector env of N simulations x A agents.

`python train.py --env.id mettagrid/hearts` trains on it after `pip install -e ".[mettagrid]"`.
`env.num_envs` is the number of simulations; the collector sees `num_envs x agents` agents, each a
row of the batch, and trains one policy shared by all of them (parameter sharing).

Stepping: every simulation owns a slice of one set of numpy arrays (observations, actions,
rewards, terminals, truncations) that the C++ simulator reads and writes in place, so a step
copies nothing: write the actions, call `step()` on each simulation, read the arrays. The arrays
are overwritten by the next step; the collector copies what it keeps. Simulations run in this
process one after another: on 2 cores, PufferLib's worker processes were ~10x slower (see
shared/notes/mettagrid.md).

Episodes end at the task's `max_steps` as truncations (bootstrapped by PPO). Autoreset follows
envs.py's NEXT_STEP contract: the step after a simulation's episode ends starts a new simulation
(a new map from the curriculum's next task), returns its first observation with reward 0 and
ignores the actions. Each finished episode reports its task in info["task"] and MettaGrid's own
statistics, averaged over the simulation's agents, in info["episode_stats"].

Tasks (`mettagrid/<name>`, with `:key=value` overrides, e.g. `mettagrid/hearts:altars=3`):
- `hearts`: 4 agents on a 15x15 map with 6 altars of 5 hearts each; walking onto an altar takes
  a heart, worth 1. 200 steps.
- `hearts_sparse`: the same agents on a 25x25 map with 4 altars of 3 hearts and more walls: fewer,
  farther rewards, which a random walk rarely finds.
Both share spaces (tokens, 5 actions: noop and four moves), so a curriculum can mix them.

Replays: with `replay_dir`, MettaGrid's own ReplayLogWriter records the first simulation's
episodes for MettaGrid's MettaScope viewer (`evaluation.video` uses it for evaluation episodes).
"""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from cleanmetta.config import ConfigError
from cleanmetta.curriculum import Curriculum, Task
from cleanmetta.spaces import UnsupportedEnvError

PREFIX = "mettagrid/"
KEEP = 256  # task configs kept per env
INSTALL_HINT = 'MettaGrid is an optional extra: pip install -e ".[mettagrid]"'


def is_mettagrid(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


def hearts_task(num_agents: int = 4, width: int = 15, height: int = 15, altars: int = 6, hearts: int = 5,
                walls: int = 10, max_steps: int = 200, view: int = 7, num_tokens: int = 64):
    """A MettaGridConfig: agents collect hearts (reward 1 each) by walking onto altars that hold them.

    Built from mettagrid's public config classes: an altar is a grid object with `hearts` in its
    inventory whose use handler (an agent moving onto it) withdraws one heart into the agent's
    inventory and removes the altar once empty; agents are rewarded by their heart count. Actions
    are noop and four moves (vibes off). Each agent sees a `view` x `view` window as `num_tokens`
    tokens. Time limits end episodes as truncations.
    """
    # mettagrid is the optional extra: imported when a MettaGrid task is built, never by `import cleanmetta`
    from mettagrid.config.action_config import ActionsConfig, ChangeVibeActionConfig
    from mettagrid.config.game_value import InventoryValue
    from mettagrid.config.handler_config import Handler
    from mettagrid.config.mettagrid_config import (AgentConfig, GameConfig, GridObjectConfig, InventoryConfig,
                                                   MettaGridConfig, WallConfig)
    from mettagrid.config.mutation import withdraw
    from mettagrid.config.obs_config import ObsConfig
    from mettagrid.config.reward_config import reward
    from mettagrid.map_builder.random_map import RandomMapBuilder

    altar = GridObjectConfig(name="altar", inventory=InventoryConfig(initial={"heart": hearts}),
                             on_use_handler=Handler(mutations=[withdraw({"heart": 1}, remove_when_empty=True)]))
    return MettaGridConfig(game=GameConfig(
        num_agents=num_agents, max_steps=max_steps, episode_truncates=True, resource_names=["heart"],
        obs=ObsConfig(width=view, height=view, num_tokens=num_tokens),
        actions=ActionsConfig(change_vibe=ChangeVibeActionConfig(enabled=False)),
        agent=AgentConfig(rewards={"heart": reward(InventoryValue(item="heart"))}),
        objects={"wall": WallConfig(), "altar": altar},
        map_builder=RandomMapBuilder.Config(agents=num_agents, width=width, height=height, border_width=1,
                                            objects={"altar": altars, "wall": walls}),
    ))


TASKS: dict[str, dict[str, Any]] = {
    "hearts": {},
    "hearts_sparse": {"width": 25, "height": 25, "altars": 4, "hearts": 3, "walls": 40},
}


def task_config(task: Task):
    """The MettaGridConfig of a `mettagrid/<name>:key=value` task."""
    name = task.env_id[len(PREFIX):]
    if name not in TASKS:
        raise ConfigError(f"env.id={task.env_id!r} is not a MettaGrid task; choose one of "
                          f"{[PREFIX + known for known in TASKS]}")
    known = inspect.signature(hearts_task).parameters
    unknown = [key for key in task.kwargs if key not in known]
    if unknown:
        raise ConfigError(f"MettaGrid task {task.name!r}: unknown setting {unknown[0]!r}; its settings are "
                          f"{list(known)}")
    try:
        return hearts_task(**{**TASKS[name], **task.kwargs})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"MettaGrid task {task.name!r}: {str(err).splitlines()[0]}") from None


class MettaGridVecEnv:
    """`num_envs` MettaGrid simulations stepped together; each of their agents is one row of the batch."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, curriculum: Curriculum, num_envs: int, seed: int = 0, replay_dir: str | None = None,
                 first: int = 0, arrays: dict[str, np.ndarray] | None = None):
        """replay_dir: MettaGrid's ReplayLogWriter writes every finished episode of the first simulation
        there as a replay for its MettaScope viewer (<episode id>.json.z).

        Simulation i draws its tasks and maps from its own generator, seeded by (seed, first + i): the
        same seed gives the same episodes however the simulations are split over processes (an env
        of env worker k holds the simulations numbered from `first`, see workers.py). `arrays` are
        the observations, rewards, terminals, truncations and actions arrays to step in (shared
        memory for a worker; by default its own)."""
        Simulator, Buffers = _import_mettagrid()
        self.curriculum = curriculum
        self.configs: OrderedDict[str, Any] = OrderedDict()  # task name -> its config, the most recently played last
        config = self._config(curriculum.tasks[0])
        game = config.game
        self.agents_per_sim = game.num_agents
        self.shape = _shape(config)
        for task in curriculum.probes:  # the middle and both ends of every family, checked now
            self._config(task)
        self.num_simulations = num_envs
        self.num_envs = num_envs * self.agents_per_sim  # the batch: one row per agent
        # Tokens are bytes; the feature column's bound is the largest feature id (TokenPolicy sizes its table by it).
        high = np.full((game.obs.num_tokens, 3), 255, np.uint8)
        high[:, 1] = max(feature.id for feature in game.id_map().features())
        self.single_observation_space = spaces.Box(np.zeros_like(high), high, dtype=np.uint8)
        self.single_action_space = spaces.Discrete(_num_actions(config))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        # The arrays every simulation reads and writes in place, each through its slice of rows.
        n = self.num_envs
        arrays = arrays or {"observations": np.zeros((n, game.obs.num_tokens, 3), np.uint8),
                            "terminals": np.zeros(n, bool), "truncations": np.zeros(n, bool),
                            "rewards": np.zeros(n, np.float32), "actions": np.zeros(n, np.int32)}
        self.observations, self.rewards, self.actions = arrays["observations"], arrays["rewards"], arrays["actions"]
        self.terminals, self.truncations = arrays["terminals"], arrays["truncations"]
        self.buffers = [Buffers(observations=self.observations[rows], terminals=self.terminals[rows],
                                truncations=self.truncations[rows], rewards=self.rewards[rows],
                                masks=np.ones(self.agents_per_sim, bool), actions=self.actions[rows],
                                teacher_actions=np.zeros(self.agents_per_sim, np.int32))
                        for rows in map(self._rows, range(num_envs))]

        self.simulators = [Simulator() for _ in range(num_envs)]  # a Simulator runs one simulation at a time
        if replay_dir is not None:
            from mettagrid.simulator import ReplayLogWriter  # the optional extra, imported above

            os.makedirs(replay_dir, exist_ok=True)
            self.simulators[0].add_event_handler(ReplayLogWriter(replay_dir))
        self.simulations: list[Any] = [None] * num_envs
        self.task_names = np.full(num_envs, curriculum.tasks[0].name, dtype=object)  # each simulation's task
        self.needs_reset = np.zeros(num_envs, bool)
        self.first = first
        self._seed(seed)

    def _seed(self, seed: int) -> None:
        self.rngs = [np.random.default_rng([seed, self.first + i]) for i in range(self.num_simulations)]

    def _rows(self, i: int) -> slice:
        return slice(i * self.agents_per_sim, (i + 1) * self.agents_per_sim)

    def _config(self, task: Task):
        """The task's MettaGridConfig, built at its first draw and kept (the KEEP most recently played)."""
        config = self.configs.pop(task.name, None)
        if config is None:
            config = task_config(task)
            if self.configs and _shape(config) != self.shape:
                raise UnsupportedEnvError(f"curriculum task {task.name} has (agents, tokens, actions) "
                                          f"{_shape(config)}; every task needs those of "
                                          f"{self.curriculum.tasks[0].name}: {self.shape}")
            if len(self.configs) >= KEEP:
                self.configs.popitem(last=False)
        self.configs[task.name] = config
        return config

    def _start_episode(self, i: int) -> None:
        """A new simulation in slot i, on the curriculum's next task; it writes its first observation."""
        if self.simulations[i] is not None:
            self.simulations[i].close()
        rng = self.rngs[i]
        task = self.curriculum.sample(rng)
        self.task_names[i] = task.name
        seed = int(rng.integers(2**31 - 1))
        config = self._config(task)
        config.game.map_builder.seed = seed  # read when the simulation builds its map, right below
        self.simulations[i] = self.simulators[i].new_simulation(config, seed, buffers=self.buffers[i])
        rows = self._rows(i)
        self.rewards[rows] = 0.0
        self.terminals[rows] = False
        self.truncations[rows] = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed(seed)
        for i in range(self.num_simulations):
            self._start_episode(i)
        self.needs_reset[:] = False
        return self.observations, {}

    def step(self, actions: np.ndarray):
        """Actions `[num_envs]` -> (observations, rewards, terminated, truncated, infos), all arrays of
        this env's own (overwritten by the next step)."""
        self.actions[:] = np.asarray(actions).reshape(self.num_envs)
        ended = []
        for i, simulation in enumerate(self.simulations):
            if self.needs_reset[i]:  # NEXT_STEP: this step starts the next episode, the actions are ignored
                self._start_episode(i)
                self.needs_reset[i] = False
                continue
            simulation.step()
            if simulation.is_done():
                self.needs_reset[i] = True
                ended.append(i)
        return self.observations, self.rewards, self.terminals, self.truncations, self._episode_infos(ended)

    def _episode_infos(self, ended: list[int]) -> dict[str, Any]:
        """For the simulations whose episode just ended: the task of every agent row, and per statistic
        one value per simulation (agent statistics averaged over its agents; a statistic an episode
        never recorded, e.g. hearts gained when none were, is absent from that episode)."""
        if not ended:
            return {}
        stats: dict[str, list[float]] = {}
        for i in ended:
            episode = self.simulations[i].episode_stats
            values = {f"game/{key}": value for key, value in episode["game"].items()}
            for key in set().union(*episode["agent"]):  # an agent's stats list only what happened to it
                values[f"agent/{key}"] = np.mean([agent.get(key, 0.0) for agent in episode["agent"]])
            for key, value in values.items():
                stats.setdefault(key, []).append(float(value))
        return {"task": np.repeat(self.task_names, self.agents_per_sim), "episode_stats": stats}

    def close(self) -> None:
        for simulation in self.simulations:
            if simulation is not None:
                simulation.close()
        self.simulations = [None] * self.num_simulations


def worker_env(curriculum: Curriculum, seed: int, first: int, count: int, arrays: dict[str, np.ndarray]
               ) -> MettaGridVecEnv:
    """An env worker's share (workers.py): simulations first .. first + count - 1, stepping in `arrays`."""
    return MettaGridVecEnv(curriculum, count, seed, first=first, arrays=arrays)


def _num_actions(config) -> int:
    return len(config.game.actions.actions())


def _shape(config) -> tuple[int, int, int]:
    """(agents, tokens, actions): what every task of one env must share."""
    return config.game.num_agents, config.game.obs.num_tokens, _num_actions(config)


def _import_mettagrid():
    os.environ.setdefault("METTAGRID_LOG_LEVEL", "WARNING")  # importing it adds an INFO handler otherwise
    try:  # the optional extra: a clear error with the install command when it is missing
        from mettagrid.simulator import Simulator
        from mettagrid.simulator.simulator import Buffers
    except ImportError as err:
        raise UnsupportedEnvError(f"env.id='mettagrid/...' needs the mettagrid package ({err}). "
                                  f"{INSTALL_HINT}") from None
    return Simulator, Buffers
