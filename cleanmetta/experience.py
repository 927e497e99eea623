"""Experience: the preallocated rollout buffer, its advantages, and the training batch drawn from it.

Every tensor is allocated once, `[T, B, ...]` with T = steps per rollout and B = agents across all
environments, and overwritten in place by the collector each rollout. Step t holds the
observation the policy saw, what it did, and what the environment answered:

    obs[t], actions[t], logprobs[t], values[t]    the policy's side
    rewards[t], terminals[t], dones[t]            the env's answer (dones = terminated or truncated)
    valid[t]                                      0 on autoreset steps (see envs.py): never trained on

This module owns storage, GAE and batching; filling the buffer is the collector's job.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces


class Batch(NamedTuple):
    """Flat training samples `[N, ...]`: the valid transitions of one rollout."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The samples at `index` (a gather for an index tensor, views for a slice)."""
        return Batch(*(x[index] for x in self))


def action_layout(action_space: spaces.Space) -> tuple[tuple[int, ...], torch.dtype]:
    """Per-agent action shape and dtype as stored: Discrete (1,), MultiDiscrete (k,), Box (d,)."""
    if isinstance(action_space, spaces.Discrete):
        return (1,), torch.long
    if isinstance(action_space, spaces.MultiDiscrete):
        return (len(action_space.nvec),), torch.long
    return (int(np.prod(action_space.shape)),), torch.float32


class Experience:
    def __init__(
        self,
        num_steps: int,
        num_agents: int,
        observation_space: spaces.Box,
        action_space: spaces.Space,
        device: torch.device | str = "cpu",
    ):
        self.num_steps, self.num_agents = num_steps, num_agents
        self.device = torch.device(device)
        T, B = num_steps, num_agents
        obs_dtype = torch.uint8 if observation_space.dtype == np.uint8 else torch.float32
        action_shape, action_dtype = action_layout(action_space)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.obs = zeros(T, B, *observation_space.shape, dtype=obs_dtype)  # [T, B, *obs_shape]
        self.actions = zeros(T, B, *action_shape, dtype=action_dtype)     # [T, B, A]
        self.logprobs = zeros(T, B)
        self.values = zeros(T, B)
        self.rewards = zeros(T, B)
        self.terminals = zeros(T, B)
        self.dones = zeros(T, B)
        self.valid = zeros(T, B)
        self.advantages = zeros(T, B)
        self.returns = zeros(T, B)
        self.last_value = zeros(B)  # value of the observation after step T-1, for bootstrapping

    @classmethod
    def for_env(cls, vecenv, num_steps: int, device: torch.device | str = "cpu") -> Experience:
        """A buffer shaped for `vecenv`: one agent per sub-env, the per-agent spaces of its single_* spaces."""
        return cls(num_steps, vecenv.num_envs, vecenv.single_observation_space, vecenv.single_action_space, device)

    @property
    def batch_size(self) -> int:
        return self.num_steps * self.num_agents

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """GAE(gamma, lambda) into `advantages` and `returns` (= advantages + values).

        The value after step t is values[t + 1] (last_value after the final step). Under NEXT_STEP
        autoreset the observation after a truncated step is that episode's final observation, so
        its value bootstraps the truncation; only a termination zeroes it. Any done cuts the
        recursion, so advantages never flow across an episode boundary.
        """
        next_values = torch.cat([self.values[1:], self.last_value[None]])
        deltas = self.rewards + gamma * next_values * (1.0 - self.terminals) - self.values
        carry = gamma * gae_lambda * (1.0 - self.dones)
        next_advantage = torch.zeros_like(self.last_value)
        for t in reversed(range(self.num_steps)):
            next_advantage = torch.addcmul(deltas[t], carry[t], next_advantage, out=self.advantages[t])
        torch.add(self.advantages, self.values, out=self.returns)

    def batch(self) -> Batch:
        """The valid transitions, flattened to `[N, ...]` (autoreset steps dropped)."""
        keep = self.valid.flatten().nonzero().squeeze(-1)

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.flatten(0, 1)[keep]

        return Batch(flat(self.obs), flat(self.actions), flat(self.logprobs), flat(self.values),
                     flat(self.rewards), flat(self.advantages), flat(self.returns))
