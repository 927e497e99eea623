"""Experience: the preallocated rollout buffer, its advantages, and the training batch drawn from it.

On the default run: the collector fills the buffer, `compute_advantages` computes GAE over it
(`discounted_advantages`), and `batch()` hands the update the valid steps as one flat batch.

Every tensor is allocated once, `[T, B, ...]` with T = steps per rollout and B = agents across all
environments, and overwritten in place by the collector each rollout. Step t holds the
observation the policy saw, what it did, and what the environment answered:

    obs[t], actions[t], logprobs[t], values[t]    the policy's side
    rewards[t], terminals[t], dones[t]            the env's answer to actions[t]
    valid[t]                                      whether step t is trained on

Episode ends, in one vocabulary (used everywhere in cleanmetta). Environments autoreset the
gymnasium way (NEXT_STEP, envs.py): the step after an episode ends is an autoreset step, whose
observation is that episode's final one, whose action is ignored and whose answer is the next
episode's first observation with reward 0.

    step t is               terminals[t]  dones[t]  valid[t]  first[t+1]  next_values[t] = V(obs[t+1]), obs[t+1] is
    an ordinary step             0            0         1         0        the next observation
    a termination                1            1         1         0        the final one; unused (terminals[t] = 1)
    a truncation (time limit)    0            1         1         0        the final one: bootstraps the return
    an autoreset step            0            0         0         1        the new episode's first; unused (valid 0)

- terminals: the episode ended for good (gymnasium's `terminated`): nothing is bootstrapped past it.
- dones: the episode ended either way (`terminated or truncated`): advantages do not flow back
  across it.
- valid: 0 on autoreset steps, whose transition joins two episodes: never trained on.
- first: 1 where obs[t] begins an episode (the step after an autoreset step, and every agent's
  first step); a recurrent policy zeroes its state there. Kept for LSTM policies only.
- next_values[t] (`next_values()`): the value of the observation after step t; after a
  truncation that is the episode's final observation, so a time limit is bootstrapped, not
  treated as the end of the world.
Readers from CleanRL: its `dones[t]` is stored beside obs[t] and says that obs[t] begins an
episode, i.e. it is our dones[t - 1] (so its GAE reads dones[t + 1] where ours reads dones[t]);
and its PPO treats a truncation as a termination.

For a recurrent policy (`lstm_size > 0`) the buffer also keeps what the update needs to replay the
LSTM: each agent's rollout is cut into segments of `bptt_horizon` steps, and

    first[t]                                      as above
    lstm_h[k], lstm_c[k]                          the state at the start of segment k (step k * bptt_horizon)

`batch()` then gives whole segments instead of flat samples (see Batch). It does so for a
feedforward policy too when asked (`batch(segments=True)`): V-trace and prioritized sampling
(ppo.py) draw whole segments. One recursion (`discounted_advantages`) serves the rollout's GAE and,
given importance ratios, ppo.py's per-minibatch V-trace.

This module owns storage, advantages and batching; filling the buffer is the collector's job.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from cleanmetta.spaces import stored_space


class Batch(NamedTuple):
    """Training samples: flat `[N, ...]`, the valid transitions of one rollout; or segments
    `[S, L, ...]` (S = agents x segments per agent, L = bptt_horizon) with the fields from `mask` on
    set: every step of each segment, and `mask` saying which ones to train on."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    mask: torch.Tensor | None = None    # [S, L] 1 on valid steps, 0 on autoreset steps
    first: torch.Tensor | None = None   # [S, L] 1 where an episode begins
    lstm_h: torch.Tensor | None = None  # [S, lstm_size] the LSTM state at each segment's start (LSTM only)
    lstm_c: torch.Tensor | None = None
    # what V-trace needs to recompute a segment's advantages (ppo.vtrace)
    terminals: torch.Tensor | None = None        # [S, L]
    dones: torch.Tensor | None = None            # [S, L]
    next_values: torch.Tensor | None = None      # [S, L] the value of the observation after each step
    tail_advantages: torch.Tensor | None = None  # [S] the rollout's advantage at the step after the segment

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The samples (segments) at `index` (a gather for an index tensor, views for a slice)."""
        return Batch(*(None if x is None else x[index] for x in self))

    def valid_steps(self) -> Batch:
        """Segments' valid steps, flattened to samples [N, ...] (the segment fields dropped)."""
        index = self.mask.flatten().nonzero().squeeze(-1)
        return Batch(*(x.flatten(0, 1)[index] for x in self[:self._fields.index("mask")]))


def action_layout(action_space: spaces.Space) -> tuple[tuple[int, ...], torch.dtype]:
    """Per-agent action shape and dtype as stored: Discrete (1,), MultiDiscrete (k,), Box (d,)."""
    if isinstance(action_space, spaces.Discrete):
        return (1,), torch.long
    if isinstance(action_space, spaces.MultiDiscrete):
        return (len(action_space.nvec),), torch.long
    return (int(np.prod(action_space.shape)),), torch.float32


def discounted_advantages(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                          terminals: torch.Tensor, dones: torch.Tensor, gamma: float, gae_lambda: float,
                          ratio: torch.Tensor | None = None, rho_clip: float = 1.0, c_clip: float = 1.0,
                          tail: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages of steps laid out time-first, `[T, ...]`, by the backward recursion

        A_t = rho_t delta_t + gamma lambda c_t (1 - done_t) A_{t+1},
        delta_t = r_t + gamma V(next obs_t) (1 - terminal_t) - V(obs_t).

    Without `ratio`, rho = c = 1: GAE(gamma, lambda). With `ratio` (pi/mu, the current policy's
    probability of each stored action over the rollout policy's), rho_t = min(ratio_t, rho_clip) and
    c_t = min(ratio_t, c_clip): V-trace (IMPALA, Espeholt et al. 2018) in the form Metta's trainer
    uses, whose returns A + V are the V-trace value targets; with ratio 1 and clips >= 1 it is GAE,
    bit for bit. `tail` is A after the last step (None: 0, where the rollout ends). A done cuts the
    recursion, so nothing flows across an episode boundary.
    """
    deltas = rewards + gamma * next_values * (1.0 - terminals) - values
    carry = gamma * gae_lambda * (1.0 - dones)
    if ratio is not None:
        deltas = deltas * ratio.clamp(max=rho_clip)
        carry = carry * ratio.clamp(max=c_clip)
    out = torch.empty_like(values) if out is None else out
    next_advantage = torch.zeros_like(values[0]) if tail is None else tail
    for t in reversed(range(values.shape[0])):
        next_advantage = torch.addcmul(deltas[t], carry[t], next_advantage, out=out[t])
    return out


class Experience:
    def __init__(
        self,
        num_steps: int,
        num_agents: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "cpu",
        lstm_size: int = 0,
        bptt_horizon: int = 0,
    ):
        self.num_steps, self.num_agents = num_steps, num_agents
        self.lstm_size, self.bptt_horizon = lstm_size, bptt_horizon or num_steps
        if num_steps % self.bptt_horizon:
            raise ValueError(f"bptt_horizon={bptt_horizon} must divide num_steps={num_steps}")
        self.device = torch.device(device)
        T, B = num_steps, num_agents
        observation_space = stored_space(observation_space)  # a Dict, Discrete, ... as one flat row (spaces.py)
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
        if lstm_size:
            self.first = zeros(T, B)
            self.lstm_h = zeros(T // self.bptt_horizon, B, lstm_size)
            self.lstm_c = zeros(T // self.bptt_horizon, B, lstm_size)

    @classmethod
    def for_env(cls, vecenv, num_steps: int, device: torch.device | str = "cpu", lstm_size: int = 0,
                bptt_horizon: int = 0) -> Experience:
        """A buffer shaped for `vecenv`: one agent per sub-env, the per-agent spaces of its single_* spaces.
        For a recurrent policy pass its lstm_size (policy.lstm_size) and the segment length."""
        return cls(num_steps, vecenv.num_envs, vecenv.single_observation_space, vecenv.single_action_space, device,
                   lstm_size, bptt_horizon)

    @property
    def batch_size(self) -> int:
        return self.num_steps * self.num_agents

    def next_values(self) -> torch.Tensor:
        """[T, B] the value after each step: values[t + 1], last_value after the final step (see the
        table above: after a truncation it bootstraps; after a termination it is zeroed)."""
        return torch.cat([self.values[1:], self.last_value[None]])

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """GAE(gamma, lambda) into `advantages` and `returns` (= advantages + values)."""
        discounted_advantages(self.rewards, self.values, self.next_values(), self.terminals, self.dones, gamma,
                              gae_lambda, out=self.advantages)
        torch.add(self.advantages, self.values, out=self.returns)

    def batch(self, segments: bool | None = None) -> Batch:
        """The valid transitions, flattened to `[N, ...]` (autoreset steps dropped); with an LSTM, or
        when `segments` is True, the segments `[S, L, ...]`, segment k of agent b at row k * B + b, all
        steps kept (see Batch)."""
        if segments or (segments is None and self.lstm_size):
            return self._segments()
        keep = self.valid.flatten().nonzero().squeeze(-1)

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.flatten(0, 1)[keep]

        return Batch(flat(self.obs), flat(self.actions), flat(self.logprobs), flat(self.values),
                     flat(self.rewards), flat(self.advantages), flat(self.returns))

    def _segments(self) -> Batch:
        K, L = self.num_steps // self.bptt_horizon, self.bptt_horizon

        def cut(x: torch.Tensor) -> torch.Tensor:  # [T, B, ...] -> [K * B, L, ...]
            return x.view(K, L, *x.shape[1:]).transpose(1, 2).flatten(0, 1)

        lstm = ((cut(self.first), self.lstm_h.flatten(0, 1), self.lstm_c.flatten(0, 1)) if self.lstm_size
                else (None, None, None))
        # the rollout's advantage at the step after each segment (0 after the last): [K, B] -> rows k * B + b
        tails = torch.cat([self.advantages[L::L], torch.zeros_like(self.advantages[:1])]).flatten()
        return Batch(cut(self.obs), cut(self.actions), cut(self.logprobs), cut(self.values), cut(self.rewards),
                     cut(self.advantages), cut(self.returns), cut(self.valid), *lstm, cut(self.terminals),
                     cut(self.dones), cut(self.next_values()), tails)
