"""Actor-critic networks: a batch of observations in, action-distribution parameters and values out.

The default run's network is `MLPPolicy`: CleanRL's ppo.py agent, two separate MLPs of 64 tanh
units over the flat observation vector, one for the actor (logits) and one for the critic
(value). Every network is a `Policy`, whose interface the collector, the update and the
evaluator use:
    params, value = policy(obs)                                     # [B, outputs], [B]
    action, logprob, entropy, value = policy.get_action_and_value(obs, action=None)
    logprob, entropy, value, params = policy.evaluate_actions(obs, action)   # the update's call
    action, logprob, value = policy.sample(obs)                     # the rollout's per-step call
    value = policy.get_value(obs)
Each network is an encoder (`encode(obs) -> [B, encoder_size]`) and actor and critic layers
(`decode(x) -> (distribution params, value)`); `self.head` is its action distribution:
- `CategoricalHead` (Discrete, MultiDiscrete): logits, one softmax per sub-action;
  = torch.distributions.Categorical(logits=part) for each part, independent.
- `GaussianHead` (Box): a mean from the actor and a learned, state-independent log standard
  deviation; = torch.distributions.Normal(mean, log_std.exp()), its dimensions independent.
Actions are always `[B, action_dim]`: one column for Discrete, one per sub-action for
MultiDiscrete, the vector for Box. The heads are written out by hand (tests check them against
torch.distributions): at a rollout's batch of a few environments, building distribution objects
costs more than the network (docs/speed.md).

The others, for other observations ("auto" picks by the observation space, policy.network_for):
- `CNNPolicy` ("simple_cnn"): a convolutional trunk shared by actor and critic, for images and grids.
- `TokenPolicy` ("token"): MettaGrid's token observations, encoded without drawing a grid.
- `MultiInputPolicy` ("multi_input"): Dict, Tuple, Discrete, ... spaces, each entry encoded by its
  kind (encoders.py), then MLPPolicy's actor and critic.
lstm.py puts an LSTM core between any network's encoder and heads; policy.make_policy builds them.
"""

from __future__ import annotations

import math
import operator
from functools import reduce

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from cleanmetta.config import ConfigError
from cleanmetta.encoders import ImageEncoder, MultiInputEncoder, encode_tokens, is_image, layer_init
from cleanmetta.fast import sample_categorical
from cleanmetta.normalize import ObservationNorm
from cleanmetta.spaces import ObservationLayout


class Policy(nn.Module):
    """Actor-critic base: subclasses define `encode(obs) -> features [B, encoder_size]` and
    `decode(features) -> (distribution params, value [B])`, or override `forward(obs)` directly."""

    head: CategoricalHead | GaussianHead
    recurrent = False  # True for lstm.LSTMPolicy, whose calls carry a state

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(obs))

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[1]

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The rollout's per-step call: a sampled action [B, A], its log-probability [B], and the
        value [B]; or None for the value, from a network whose critic is better run once over the
        whole rollout (MLPPolicy): the collector then does so at the end of the rollout."""
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

    def evaluate_actions(self, obs: torch.Tensor, action: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The update's call: the log-probability [B] and entropy [B] of the stored actions [B, A], the
        value [B], and the distribution's parameters [B, outputs], which a custom loss may read
        (ppo.PolicyOutputs) without a second forward pass."""
        params, value = self(obs)
        logprob, entropy = self.head.log_prob_entropy(params, action)
        return logprob, entropy, value, params

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions only: the distribution's mode when deterministic, else a sample."""
        params, _ = self(obs)
        return self.head.mode(params) if deterministic else self.head.sample(params)


class MLP(nn.Module):
    """= nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), ..., nn.Linear(sizes[-2], sizes[-1])),
    orthogonally initialised (gain sqrt 2, the last layer `out_std`), with zero biases.

    The layers' parameters are registered on this module itself (weight0, bias0, weight1, ...) and
    forward() calls F.linear on them: at rollout batch sizes going through nn.Linear submodules
    costs a measurable share of the step (docs/speed.md). A test checks it against nn.Sequential.
    """

    def __init__(self, sizes: list[int], out_std: float):
        super().__init__()
        self.num_layers = len(sizes) - 1
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layer = layer_init(nn.Linear(n_in, n_out), std=out_std if i == self.num_layers - 1 else math.sqrt(2))
            self.register_parameter(f"weight{i}", layer.weight)
            self.register_parameter(f"bias{i}", layer.bias)

    def extra_repr(self) -> str:
        """print(policy) shows the layers: 'Linear(4, 64), Tanh, Linear(64, 64), Tanh, Linear(64, 2)'."""
        layers = [f"Linear({w.shape[1]}, {w.shape[0]})" for w in (self._parameters[f"weight{i}"]
                                                                  for i in range(self.num_layers))]
        return ", Tanh, ".join(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self._parameters
        for i in range(self.num_layers):
            x = F.linear(x, params[f"weight{i}"], params[f"bias{i}"])
            if i < self.num_layers - 1:
                x = torch.tanh(x)
        return x


class MLPPolicy(Policy):
    """Separate actor and critic MLPs over flattened observations (CleanRL's ppo.py network).

    Its encoder is the flattening (and normalisation) alone: with an LSTM, the LSTM reads the
    observations and both MLPs read the LSTM's output (`core_size` wide), as in sb3-contrib's
    MlpLstmPolicy.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 64,
                 normalize_obs: bool = False, core_size: int | None = None):
        super().__init__()
        obs_dim = int(np.prod(observation_space.shape))
        self.encoder_size = obs_dim
        self.obs_norm = ObservationNorm((obs_dim,)) if normalize_obs else None
        self.head = make_head(action_space)
        core_size = core_size or obs_dim
        self.actor = MLP([core_size, hidden_size, hidden_size, self.head.num_outputs], out_std=0.01)
        self.critic = MLP([core_size, hidden_size, hidden_size, 1], out_std=1.0)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The flat float input of both MLPs, normalised when agent.normalize_obs."""
        x = obs.float() if obs.dim() == 2 else obs.flatten(1).float()
        return x if self.obs_norm is None else self.obs_norm(x)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.forward(x), self.critic.forward(x).squeeze(-1)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic.forward(self.encode(obs)).squeeze(-1)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """The actor alone (value None): the critic shares nothing with it, so the collector runs
        the critic once over the whole rollout, one batch instead of one call per step."""
        params = self.actor.forward(self.encode(obs))
        action = self.head.sample(params)
        return action, self.head.log_prob(params, action), None


class CategoricalHead(nn.Module):
    """Independent categorical distributions over logits split by `nvec` (Discrete is one split;
    it takes a path without split and stack: at rollout batch sizes each op avoided counts)."""

    def __init__(self, nvec: list[int]):
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.num_outputs = sum(self.nvec)

    def extra_repr(self) -> str:
        return f"nvec={self.nvec}"

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        if len(self.nvec) == 1:
            return sample_categorical(logits, keepdim=True)  # = Categorical(logits=logits).sample()[:, None]
        return torch.stack([sample_categorical(part) for part in logits.split(self.nvec, -1)], -1)

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        if len(self.nvec) == 1:
            return logits.argmax(-1, keepdim=True)
        return torch.stack([part.argmax(-1) for part in logits.split(self.nvec, -1)], -1)

    def log_prob(self, logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-probability [B] of the actions [B, k]: the sum over the independent parts."""
        return _sum([logp.gather(-1, a).squeeze(-1) for logp, a in self._log_probs(logits, action)])

    def log_prob_entropy(self, logits: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._log_probs(logits, action)
        log_prob = _sum([logp.gather(-1, a).squeeze(-1) for logp, a in parts])
        return log_prob, _sum([entropy_of(logp) for logp, _ in parts])

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

    def extra_repr(self) -> str:
        return f"action_dim={self.num_outputs}"

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


class CNNPolicy(Policy):
    """Convolutional trunk -> dense layer of `hidden_size` (encoders.ImageEncoder) -> linear actor and
    critic heads, for image or grid observations [C, H, W] or [H, W, C], or stacks of them (CleanRL's
    ppo_atari.py network at hidden_size 512 on 84x84 frames)."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 512,
                 core_size: int | None = None):
        super().__init__()
        if not is_image(observation_space):
            raise ConfigError(f"agent.name='simple_cnn' needs image observations ([C, H, W], [H, W, C] or a stack "
                              f"of them), but the env's have shape {observation_space.shape}; use --agent.name auto "
                              "(it picks the network that fits the observations)")
        self.image = ImageEncoder(observation_space, hidden_size)
        self.encoder_size = hidden_size
        self.head = make_head(action_space)
        core_size = core_size or hidden_size
        self.actor = layer_init(nn.Linear(core_size, self.head.num_outputs), std=0.01)
        self.critic = layer_init(nn.Linear(core_size, 1), std=1.0)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.image(obs)

    def hidden_weights(self) -> list[nn.Parameter]:
        """trainer.optimizer='muon''s matrices (optimizers.hidden_weights): the dense layer after the
        convolutions (the kernels are 4-D; the heads read its output)."""
        return [self.image.dense.weight]

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(x), self.critic(x).squeeze(-1)


class MultiInputPolicy(MLPPolicy):
    """Structured observations (a Dict, Tuple, Discrete, MultiDiscrete or MultiBinary space) as SB3's
    MultiInputPolicy takes them: each entry encoded (encoders.MultiInputEncoder: images through a conv
    trunk, discrete entries one-hot, the rest as floats), concatenated, then MLPPolicy's actor and
    critic MLPs (or the LSTM core, then the MLPs). Observations arrive as the buffer stores them: flat
    rows of the space's spaces.ObservationLayout."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, hidden_size: int = 64,
                 core_size: int | None = None):
        encoder = MultiInputEncoder(ObservationLayout(observation_space), hidden_size)
        super().__init__(spaces.Box(-np.inf, np.inf, (encoder.size,)), action_space, hidden_size,
                         core_size=core_size)
        self.inputs = encoder

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.inputs(obs)


class TokenPolicy(Policy):
    """Actor-critic over token observations `[num_tokens, 3]` of bytes (location, feature id, value), as
    MettaGrid emits them (encoders.encode_tokens); actor and critic share the encoder, each with one more
    tanh layer.

    Tokens are encoded directly rather than drawn into a [features, height, width] grid for
    simple_cnn: an agent sees a few dozen tokens but a grid has features x cells inputs, and at
    MettaGrid's speed convolutions over it would make the network, not the environment, the whole
    cost of training. The encoder's table has (largest feature id + 1) x 256 rows, the feature bound
    read from the observation space's high values.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 64,
                 core_size: int | None = None):
        super().__init__()
        if len(observation_space.shape) != 2 or observation_space.shape[1] != 3 or observation_space.dtype != np.uint8:
            raise ConfigError(f"agent.name='token' needs MettaGrid's uint8 token observations [num_tokens, 3], "
                              f"but the env's are {observation_space.shape} {observation_space.dtype}; use "
                              "--agent.name auto (it picks the network that fits the observations)")
        num_features = int(observation_space.high[..., 1].max()) + 1
        # ~16 tokens of a window are filled: rows of std 1/4 sum to pre-activations of std ~1.
        self.table = nn.Parameter(torch.randn(num_features * 256, hidden_size) / 4)
        self.encoder_size = hidden_size
        self.head = make_head(action_space)
        core_size = core_size or hidden_size
        self.actor = MLP([core_size, hidden_size, self.head.num_outputs], out_std=0.01)
        self.critic = MLP([core_size, hidden_size, 1], out_std=1.0)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return encode_tokens(obs, self.table)

    def hidden_weights(self) -> list[nn.Parameter]:
        """trainer.optimizer='muon''s matrices (optimizers.hidden_weights): the actor's and the critic's
        first layers, which read the token encoding (the table is an embedding, the last layers heads)."""
        return [self.actor.weight0, self.critic.weight0]

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.forward(x), self.critic.forward(x).squeeze(-1)


POLICIES: dict[str, type[Policy]] = {"mlp": MLPPolicy, "simple_cnn": CNNPolicy, "token": TokenPolicy,
                                     "multi_input": MultiInputPolicy}
