"""Environments: build a seeded vector env for a curriculum and check that cleanmetta can train on it.

The contract with the rest of the package is gymnasium's NEXT_STEP autoreset: the step that ends
an episode returns that episode's final observation, and the following step resets the env
(its action is ignored, its reward is 0) and returns the first observation of the next episode.
Working with this mode means no extra policy forward is needed to bootstrap a truncated episode:
the final observation is the next one fed to the policy. The collector marks the reset steps as
invalid so no training transition ever spans two episodes.

`make_vecenv` builds `env.num_envs` copies of the curriculum's task (curriculum.py), using
gymnasium's native vector env where the id has one. With more than one task each sub-env is a
`CurriculumEnv`, which plays the curriculum's choice each episode, reports its task in
`info["task"]` and refuses tasks whose spaces differ. `mettagrid/<task>` ids (the optional
MettaGrid extra) build cleanmetta.mettagrid_env's vector env, which follows the same contract with
one batch row per agent.

`CartPoleNoVel-v1` (registered here) is CartPole-v1 without its two velocity observations: only
the cart's position and the pole's angle are seen, so a policy must remember past observations to
balance the pole (the standard test of recurrent RL). It keeps CartPole's native vector env.

This module owns env construction and the autoreset check (spaces: spaces.py; tasks:
curriculum.py); stepping is the collector's job.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv
from gymnasium.vector import AutoresetMode

from cleanmetta import mettagrid_env
from cleanmetta.config import ConfigError, EnvConfig
from cleanmetta.curriculum import Curriculum, SingleTaskCurriculum
from cleanmetta.spaces import UnsupportedEnvError, check_spaces


def check_autoreset(vecenv: gym.vector.VectorEnv) -> None:
    """Raise UnsupportedEnvError unless the vector env resets sub-envs in NEXT_STEP mode."""
    mode = vecenv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise UnsupportedEnvError(
            f"vector env autoreset_mode={mode} is not supported; create it with "
            "make_vecenv() or pass vector_kwargs={'autoreset_mode': AutoresetMode.NEXT_STEP}"
        )


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


POSITIONS = [0, 2]  # CartPole's observation: cart position, cart velocity, pole angle, pole angular velocity


def _positions_only(space: gym.spaces.Box) -> gym.spaces.Box:
    return gym.spaces.Box(space.low[..., POSITIONS], space.high[..., POSITIONS], dtype=space.dtype)


def cartpole_no_velocity(**kwargs) -> gym.Env:
    env = CartPoleEnv(**kwargs)
    return gym.wrappers.TransformObservation(env, lambda obs: obs[POSITIONS], _positions_only(env.observation_space))


def cartpole_no_velocity_vector(num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    env = CartPoleVectorEnv(num_envs, **{"max_episode_steps": 500, **kwargs})
    return gym.wrappers.vector.TransformObservation(env, lambda obs: np.ascontiguousarray(obs[:, POSITIONS]),
                                                    _positions_only(env.observation_space),
                                                    _positions_only(env.single_observation_space))


if "CartPoleNoVel-v1" not in gym.registry:
    gym.register("CartPoleNoVel-v1", entry_point=cartpole_no_velocity, vector_entry_point=cartpole_no_velocity_vector,
                 max_episode_steps=500, reward_threshold=475.0)


def make_vecenv(env_config: EnvConfig, seed: int, curriculum: Curriculum | None = None) -> gym.vector.VectorEnv:
    """Build `env_config.num_envs` copies of the env (or of the curriculum's tasks), seeded with seed, seed + 1, ...

    `mettagrid/<task>` ids build cleanmetta.mettagrid_env.MettaGridVecEnv: num_envs simulations of
    several agents each, one batch row per agent.
    """
    curriculum = curriculum or SingleTaskCurriculum(env_config.id)
    task = curriculum.tasks[0]
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
