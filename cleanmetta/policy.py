"""Policy networks: an actor-critic maps a batch of observations to an action distribution and a value.

Every policy is a `Policy`: `forward(obs)` returns the action-distribution parameters and the value
`[B]`; `get_action_and_value(obs, action=None)` samples (or scores a given) action and returns
`(action, logprob, entropy, value)`; `get_value(obs)` returns the value alone. Actions are always
`[B, action_dim]`: one column for Discrete, one per sub-action for MultiDiscrete, the vector for Box.

Three networks, chosen by `AgentConfig.name` through the `POLICIES` table ("auto", the default,
picks one from the observation space, see `network_for`):
- "mlp": separate actor and critic MLPs with tanh (CleanRL's sizes by default), optionally on
  normalised observations.
- "simple_cnn": a convolutional trunk shared by the actor and critic heads, for image or grid
  observations.
- "token": MettaGrid's token observations, encoded without drawing a grid.

The action distributions are written out by hand rather than with torch.distributions: at a batch
of a few environments the distribution objects cost more than the network itself.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from functools import reduce

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from cleanmetta.config import AgentConfig, ConfigError
from cleanmetta.normalize import ObservationNorm
from cleanmetta.spaces import check_spaces, space_to_dict


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with gain `std` and constant bias, the PPO reference initialisation."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class CategoricalHead(nn.Module):
    """Independent categorical distributions over logits split by `nvec` (Discrete is one split).

    Discrete takes a direct path without split/stack: at rollout batch sizes each op avoided is
    a measurable share of the step.
    """

    def __init__(self, nvec: list[int]):
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.num_outputs = sum(self.nvec)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits); -log(Exp(1)) is Gumbel.
        return self.mode(logits - torch.empty_like(logits).exponential_().log())

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        if len(self.nvec) == 1:
            return logits.argmax(-1, keepdim=True)
        return torch.stack([part.argmax(-1) for part in logits.split(self.nvec, -1)], -1)

    def log_prob(self, logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return _sum([logp.gather(-1, a).squeeze(-1) for logp, a in self._log_probs(logits, action)])

    def log_prob_entropy(self, logits: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._log_probs(logits, action)
        return _sum([logp.gather(-1, a).squeeze(-1) for logp, a in parts]), _sum([entropy_of(logp) for logp, _ in parts])

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy [B] of the joint distribution (the sum over independent parts)."""
        return _sum([entropy_of(part.log_softmax(-1)) for part in logits.split(self.nvec, -1)])

    def _log_probs(self, logits: torch.Tensor, action: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per part: log-probabilities [B, n] and the action's column [B, 1]."""
        if len(self.nvec) == 1:
            return [(logits.log_softmax(-1), action)]
        return [(part.log_softmax(-1), action[:, i : i + 1]) for i, part in enumerate(logits.split(self.nvec, -1))]


def _sum(terms: list[torch.Tensor]) -> torch.Tensor:
    return reduce(operator.add, terms)  # a lone term comes back as is: no extra op for Discrete


def entropy_of(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis of a categorical given as log-probabilities."""
    return (log_probs.exp() * log_probs).sum(-1).neg()


class GaussianHead(nn.Module):
    """Diagonal Gaussian with a state-independent, learned log standard deviation."""

    def __init__(self, action_dim: int):
        super().__init__()
        self.num_outputs = action_dim
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def sample(self, mean: torch.Tensor) -> torch.Tensor:
        return mean + self.log_std.exp() * torch.randn_like(mean)

    def mode(self, mean: torch.Tensor) -> torch.Tensor:
        return mean

    def log_prob(self, mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        z = (action - mean) / self.log_std.exp()
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, mean: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum(-1).expand(mean.shape[0])

    def log_prob_entropy(self, mean: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_prob(mean, action), self.entropy(mean)


def make_head(action_space: spaces.Space) -> CategoricalHead | GaussianHead:
    if isinstance(action_space, spaces.Discrete):
        return CategoricalHead([int(action_space.n)])
    if isinstance(action_space, spaces.MultiDiscrete):
        return CategoricalHead(list(action_space.nvec))
    return GaussianHead(int(np.prod(action_space.shape)))


class Policy(nn.Module):
    """Actor-critic base: subclasses define `forward(obs) -> (distribution params, value [B])`."""

    head: CategoricalHead | GaussianHead

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[1]

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The rollout's per-step call: a sampled action [B, A], its log-probability [B], and the
        value [B], or None where the value is cheaper to compute for the whole rollout at once
        (the collector then calls get_value on all its observations in one batch)."""
        params, value = self(obs)
        action = self.head.sample(params)
        return action, self.head.log_prob(params, action), value

    def get_action_and_value(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample an action (or score `action`): returns action [B, A], logprob [B], entropy [B], value [B]."""
        params, value = self(obs)
        if action is None:
            action = self.head.sample(params)
        logprob, entropy = self.head.log_prob_entropy(params, action)
        return action, logprob, entropy, value

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions only: the distribution's mode when deterministic, else a sample."""
        params, _ = self(obs)
        return self.head.mode(params) if deterministic else self.head.sample(params)


class MLP(nn.Module):
    """Linear layers with tanh between them.

    The weights are registered on this module itself (weight0, bias0, weight1, ...) and read from
    its parameter dict in forward(): at rollout batch sizes, going through nn.Linear submodules
    costs more than their arithmetic (30 -> 20 us per forward of a 64-unit MLP).
    """

    def __init__(self, sizes: list[int], out_std: float):
        super().__init__()
        self.num_layers = len(sizes) - 1
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layer = layer_init(nn.Linear(n_in, n_out), std=out_std if i == self.num_layers - 1 else math.sqrt(2))
            self.register_parameter(f"weight{i}", layer.weight)
            self.register_parameter(f"bias{i}", layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self._parameters
        for i in range(self.num_layers):
            x = F.linear(x, params[f"weight{i}"], params[f"bias{i}"])
            if i < self.num_layers - 1:
                x = torch.tanh(x)
        return x


class MLPPolicy(Policy):
    """Separate actor and critic MLPs over flattened observations (CleanRL's ppo.py network)."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 64,
                 normalize_obs: bool = False):
        super().__init__()
        obs_dim = int(np.prod(observation_space.shape))
        self.obs_norm = ObservationNorm((obs_dim,)) if normalize_obs else None
        self.head = make_head(action_space)
        self.actor = MLP([obs_dim, hidden_size, hidden_size, self.head.num_outputs], out_std=0.01)
        self.critic = MLP([obs_dim, hidden_size, hidden_size, 1], out_std=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(obs)
        return self.actor.forward(x), self.critic.forward(x).squeeze(-1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The flat float input of both MLPs, normalised when agent.normalize_obs."""
        x = obs.float() if obs.dim() == 2 else obs.flatten(1).float()
        return x if self.obs_norm is None else self.obs_norm(x)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic.forward(self.features(obs)).squeeze(-1)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        # The critic shares nothing with the actor, so the rollout runs the actor alone and the
        # collector evaluates the critic once on the whole rollout: +11% steps/s on CartPole.
        params = self.actor.forward(self.features(obs))
        action = self.head.sample(params)
        return action, self.head.log_prob(params, action), None


class CNNPolicy(Policy):
    """Convolutional trunk -> dense layer of `hidden_size` -> actor and critic heads.

    Observations are [C, H, W], or [H, W, C] when the last axis is the shortest and at most 4 long
    (RGB frames). uint8 observations are scaled to [0, 1]. Large frames (36 pixels or more) get the
    Nature-DQN trunk (8x8/4, 4x4/2, 3x3/1); small grids get two padded 3x3 convolutions.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 512):
        super().__init__()
        shape = observation_space.shape
        if len(shape) != 3:
            raise ValueError(f"simple_cnn needs [C, H, W] or [H, W, C] observations, got shape {shape}; "
                             "use agent.name='mlp' for vector observations")
        self.channels_last = shape[-1] <= 4 and shape[-1] < min(shape[0], shape[1])
        channels, height, width = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        self.scale = 1.0 / 255.0 if observation_space.dtype == np.uint8 else 1.0
        if min(height, width) >= 36:
            convs = [nn.Conv2d(channels, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3)]
        else:
            convs = [nn.Conv2d(channels, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)]
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [layer_init(conv), nn.ReLU()]
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.trunk(torch.zeros(1, channels, height, width)).shape[1]
        self.dense = layer_init(nn.Linear(flat, hidden_size))
        self.head = make_head(action_space)
        self.actor = layer_init(nn.Linear(hidden_size, self.head.num_outputs), std=0.01)
        self.critic = layer_init(nn.Linear(hidden_size, 1), std=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = obs.float() * self.scale
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        hidden = F.relu(self.dense(self.trunk(x)))
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


EMPTY_TOKEN = 0xFF  # the location byte of an unused token slot


class TokenPolicy(Policy):
    """Actor-critic over token observations `[num_tokens, 3]` of bytes (location, feature id, value), as
    MettaGrid emits them; location 0xFF marks an empty token.

    Tokens are encoded directly rather than drawn into a [features, height, width] grid for
    simple_cnn: an agent sees a few dozen tokens but a grid has features x cells inputs, and at
    MettaGrid's speed (~70k agent-steps/s on one core) convolutions over it would make the network,
    not the environment, the whole cost of training. The encoder is exactly a linear layer over the
    one-hot (feature, location) grid, computed from the tokens alone: token (loc, f, v) selects row
    f * 256 + loc of a table and weighs it by log(1 + v); the weighted rows are summed (one
    embedding_bag call), then tanh. The table has (largest feature id + 1) x 256 rows, the feature
    bound read from the observation space's high values. Actor and critic share the encoder, each
    with one more tanh layer.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 64):
        super().__init__()
        if len(observation_space.shape) != 2 or observation_space.shape[1] != 3 or observation_space.dtype != np.uint8:
            raise ValueError(f"token needs uint8 observations [num_tokens, 3], got {observation_space.shape} "
                             f"{observation_space.dtype}; use agent.name='mlp' or 'simple_cnn'")
        num_features = int(observation_space.high[..., 1].max()) + 1
        # ~16 tokens of a window are filled: rows of std 1/4 sum to pre-activations of std ~1.
        self.table = nn.Parameter(torch.randn(num_features * 256, hidden_size) / 4)
        self.head = make_head(action_space)
        self.actor = MLP([hidden_size, hidden_size, self.head.num_outputs], out_std=0.01)
        self.critic = MLP([hidden_size, hidden_size, 1], out_std=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        filled = obs[..., 0] != EMPTY_TOKEN  # [B, num_tokens]
        # Skip the token columns that no agent of the batch filled (MettaGrid pads a window of a few
        # dozen tokens to num_tokens): -34% update time on the hearts task.
        used = filled.any(0).nonzero()
        width = int(used[-1]) + 1 if len(used) else 1
        loc, feature, value = obs[:, :width].long().unbind(-1)  # each [B, width]
        filled = filled[:, :width]
        rows = (feature * 256 + loc) * filled  # empty tokens point at row 0 with weight 0
        weights = torch.log1p(value.float()) * filled
        hidden = torch.tanh(F.embedding_bag(rows, self.table, per_sample_weights=weights, mode="sum"))
        return self.actor.forward(hidden), self.critic.forward(hidden).squeeze(-1)


POLICIES: dict[str, type[Policy]] = {"mlp": MLPPolicy, "simple_cnn": CNNPolicy, "token": TokenPolicy}


def network_for(agent_config: AgentConfig, observation_space: spaces.Space) -> str:
    """agent.name, with 'auto' resolved from the observation space: token for uint8 [num_tokens, 3]
    (MettaGrid), simple_cnn for [C, H, W] / [H, W, C] images, mlp otherwise."""
    if agent_config.name != "auto":
        return agent_config.name
    shape = observation_space.shape
    if len(shape) == 2 and shape[1] == 3 and observation_space.dtype == np.uint8:
        return "token"
    return "simple_cnn" if len(shape) == 3 else "mlp"


def make_policy(agent_config: AgentConfig, observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    """Build the network named by `agent_config.name` for one agent's observation and action spaces."""
    check_spaces(observation_space, action_space)
    name = network_for(agent_config, observation_space)
    if name not in POLICIES:
        raise ConfigError(f"agent.name={name!r} is not a known network; choose one of {sorted(POLICIES)} or 'auto'")
    if agent_config.normalize_obs and name != "mlp":
        raise ConfigError(f"agent.normalize_obs is for the mlp network, not {name!r} (agent.name="
                          f"{agent_config.name!r}); drop the flag")
    kwargs = {"normalize_obs": True} if agent_config.normalize_obs else {}
    policy = POLICIES[name](observation_space, action_space, agent_config.hidden_size, **kwargs)
    # What a checkpoint needs to rebuild this network (see checkpoint.py).
    policy.spec = {"agent": dataclasses.asdict(agent_config), "observation_space": space_to_dict(observation_space),
                   "action_space": space_to_dict(action_space)}
    return policy
