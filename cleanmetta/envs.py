"""Environments: build a seeded gymnasium vector env and check that cleanmetta can train on it.

The contract with the rest of the package is gymnasium's NEXT_STEP autoreset: the step that ends
an episode returns that episode's final observation, and the following step resets the env
(its action is ignored, its reward is 0) and returns the first observation of the next episode.
Working with this mode means no extra policy forward is needed to bootstrap a truncated episode:
the final observation is the next one fed to the policy. The collector marks the reset steps as
invalid so no training transition ever spans two episodes.

This module owns env construction and space checks; stepping is the collector's job.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from cleanmetta.config import ConfigError, EnvConfig


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


def make_vecenv(env_config: EnvConfig, seed: int) -> gym.vector.VectorEnv:
    """Build `env_config.num_envs` copies of `env_config.id`, seeded with `seed`, seed + 1, ..."""
    try:
        spec = gym.spec(env_config.id)
    except gym.error.Error as err:
        raise ConfigError(f"env.id={env_config.id!r} is not a registered gymnasium environment: {err}") from None

    mode = env_config.vectorization
    if mode == "auto":
        mode = "native" if spec.vector_entry_point is not None else "sync"
    if mode == "native" and spec.vector_entry_point is None:
        raise ConfigError(
            f"env.vectorization='native' but {env_config.id} has no native vector env; use 'sync' or 'async'"
        )
    if mode == "native":
        vecenv = gym.make_vec(env_config.id, env_config.num_envs, vectorization_mode="vector_entry_point")
    else:
        vecenv = gym.make_vec(env_config.id, env_config.num_envs, vectorization_mode=mode,
                              vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP})
    try:
        check_spaces(vecenv.single_observation_space, vecenv.single_action_space, env_config.id)
        check_autoreset(vecenv)
    except UnsupportedEnvError:
        vecenv.close()
        raise
    vecenv.reset(seed=seed)
    vecenv.action_space.seed(seed)
    return vecenv
