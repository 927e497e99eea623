"""Running normalisation of observations and rewards, for tasks whose scales are far from 1.

Continuous-control PPO (CleanRL's ppo_continuous_action.py, SB3's VecNormalize) trains on
observations standardised by their running mean and variance and on rewards divided by the running
standard deviation of the discounted return, both clipped to +-10. Two pieces here do that:

- `ObservationNorm`: lives inside the policy (`agent.normalize_obs`), so its statistics are saved
  with the network and applied wherever the policy acts, evaluation included. The PPO update folds
  each rollout's observations into it after optimising on them: the rollout and the update of one
  batch then see the same normalisation.
- `RewardScaler`: used by the collector (`ppo.normalize_reward`) on each rollout's rewards; its
  statistics are part of the trainer state (see trainer.save_checkpoint).

Both keep their statistics in a `RunningMeanStd`, a module whose buffers hold the mean, variance
and count, merged batch by batch (Chan et al.'s parallel algorithm). Under torchrun a batch is the
union of every process's batch, so all processes hold the same statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cleanmetta import distributed

CLIP = 10.0  # observations and rewards are clipped to +-CLIP after normalisation (CleanRL, SB3)
EPSILON = 1e-8


class RunningMeanStd(nn.Module):
    """Mean and variance over every sample seen so far, per feature of shape `shape`."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))  # a tiny prior: var starts at 1

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch `[N, *shape]` into the statistics (under torchrun: every process's batch)."""
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        if distributed.world_size() > 1:
            n, batch_mean, batch_var = (moment[0] for moment in distributed.moments([x]))
        elif len(x):
            n, batch_mean, batch_var = len(x), x.mean(0), x.var(0, unbiased=False)
        else:
            n = 0
        if n == 0:
            return
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def std(self) -> torch.Tensor:
        return (self.var + EPSILON).sqrt()


class ObservationNorm(RunningMeanStd):
    """(obs - mean) / std, clipped to +-10, with the statistics of every training observation so far."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean.float()) / self.std().float()).clamp(-CLIP, CLIP)


class RewardScaler:
    """Divides rewards by the running std of the discounted return, clipped to +-10.

    The discounted return of each agent is accumulated step by step across rollouts and restarts
    when its episode ends; only valid steps (not autoreset steps) enter the statistics.
    """

    def __init__(self, num_agents: int, gamma: float):
        self.gamma = gamma
        self.stats = RunningMeanStd()
        self.returns = np.zeros(num_agents, np.float64)  # per agent, carried across rollouts

    def __call__(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Scaled rewards `[T, B]` for one rollout's rewards, dones and valid masks (all `[T, B]`)."""
        discounted = np.empty(rewards.shape, np.float64)
        for t in range(rewards.shape[0]):  # numpy: on these small arrays its calls cost less than torch's
            self.returns = self.returns * self.gamma + rewards[t]
            discounted[t] = self.returns
            self.returns[dones[t] > 0] = 0.0
        self.stats.update(torch.from_numpy(discounted[valid > 0]))
        scale = float(self.stats.std())
        return np.clip(rewards / scale, -CLIP, CLIP).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats.load_state_dict(state)
