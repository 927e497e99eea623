"""Policy networks: an actor-critic maps a batch of observations to an action distribution and a value.

Every policy is a `Policy`: `forward(obs)` returns the action-distribution parameters and the value
`[B]`; `get_action_and_value(obs, action=None)` samples (or scores a given) action and returns
`(action, logprob, entropy, value)`; `get_value(obs)` returns the value alone. Actions are always
`[B, action_dim]`: one column for Discrete, one per sub-action for MultiDiscrete, the vector for Box.

Four networks, chosen by `AgentConfig.name` through the `POLICIES` table ("auto", the default,
picks one from the observation space, see `network_for`):
- "mlp": separate actor and critic MLPs with tanh (CleanRL's sizes by default), optionally on
  normalised observations.
- "simple_cnn": a convolutional trunk shared by the actor and critic heads, for image or grid
  observations.
- "token": MettaGrid's token observations, encoded without drawing a grid.
- "multi_input": every other observation space (Dict, Tuple, Discrete, ...), each entry encoded by
  its kind (encoders.py), then the mlp network's actor and critic.

Each network is an encoder (`encode(obs) -> [B, encoder_size]`) and actor and critic heads
(`decode(x) -> (distribution params, value)`). With `agent.lstm_size > 0`, `make_policy` puts an
LSTM core between the two (`LSTMPolicy`): the policy then has memory, carried in a state that the
caller passes in and gets back (see LSTMPolicy for the rollout, replay and evaluation calls).

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
from cleanmetta.encoders import ImageEncoder, MultiInputEncoder, is_image, layer_init
from cleanmetta.normalize import ObservationNorm
from cleanmetta.spaces import ObservationLayout, check_spaces, space_to_dict


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
    """Actor-critic base: subclasses define `encode(obs) -> features [B, encoder_size]` and
    `decode(features) -> (distribution params, value [B])`, or override `forward(obs)` directly."""

    head: CategoricalHead | GaussianHead
    recurrent = False  # True for LSTMPolicy, whose calls carry a state

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(obs))

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
        # The critic shares nothing with the actor, so the rollout runs the actor alone and the
        # collector evaluates the critic once on the whole rollout: +11% steps/s on CartPole.
        params = self.actor.forward(self.encode(obs))
        action = self.head.sample(params)
        return action, self.head.log_prob(params, action), None


class CNNPolicy(Policy):
    """Convolutional trunk -> dense layer of `hidden_size` (encoders.ImageEncoder) -> linear actor and
    critic heads, for image or grid observations [C, H, W] or [H, W, C] (CleanRL's ppo_atari.py network
    at hidden_size 512 on 84x84 frames)."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 512,
                 core_size: int | None = None):
        super().__init__()
        if not is_image(observation_space):
            raise ValueError(f"simple_cnn needs [C, H, W] or [H, W, C] observations, got shape "
                             f"{observation_space.shape}; use agent.name='mlp' for vector observations")
        self.image = ImageEncoder(observation_space, hidden_size)
        self.encoder_size = hidden_size
        self.head = make_head(action_space)
        core_size = core_size or hidden_size
        self.actor = layer_init(nn.Linear(core_size, self.head.num_outputs), std=0.01)
        self.critic = layer_init(nn.Linear(core_size, 1), std=1.0)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.image(obs)

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

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, hidden_size: int = 64,
                 core_size: int | None = None):
        super().__init__()
        if len(observation_space.shape) != 2 or observation_space.shape[1] != 3 or observation_space.dtype != np.uint8:
            raise ValueError(f"token needs uint8 observations [num_tokens, 3], got {observation_space.shape} "
                             f"{observation_space.dtype}; use agent.name='mlp' or 'simple_cnn'")
        num_features = int(observation_space.high[..., 1].max()) + 1
        # ~16 tokens of a window are filled: rows of std 1/4 sum to pre-activations of std ~1.
        self.table = nn.Parameter(torch.randn(num_features * 256, hidden_size) / 4)
        self.encoder_size = hidden_size
        self.head = make_head(action_space)
        core_size = core_size or hidden_size
        self.actor = MLP([core_size, hidden_size, self.head.num_outputs], out_std=0.01)
        self.critic = MLP([core_size, hidden_size, 1], out_std=1.0)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        filled = obs[..., 0] != EMPTY_TOKEN  # [B, num_tokens]
        # Skip the token columns that no agent of the batch filled (MettaGrid pads a window of a few
        # dozen tokens to num_tokens): -34% update time on the hearts task.
        used = filled.any(0).nonzero()
        width = int(used[-1]) + 1 if len(used) else 1
        loc, feature, value = obs[:, :width].long().unbind(-1)  # each [B, width]
        filled = filled[:, :width]
        rows = (feature * 256 + loc) * filled  # empty tokens point at row 0 with weight 0
        weights = torch.log1p(value.float()) * filled
        return torch.tanh(F.embedding_bag(rows, self.table, per_sample_weights=weights, mode="sum"))

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.forward(x), self.critic.forward(x).squeeze(-1)


LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [B, lstm_size]


class LSTMPolicy(Policy):
    """A network's encoder -> LSTM -> its actor and critic heads: a policy with memory.

    The LSTM's state (h, c) is per agent, passed in and returned, never kept on the module:
        state = policy.initial_state(num_agents, device)               # zeros
        action, logprob, value, state = policy.sample(obs, state, first)  # the rollout, one step
        action, state = policy.act(obs, deterministic, state)          # evaluation, one step
        core = policy.unroll(obs, first, state)                        # the update: [S, L, ...] segments
    `first` [B] (or [S, L]) marks observations that begin an episode: the state they see is zeroed.
    Feedforward calls (forward, get_action_and_value, get_value) read from a zero state.
    """

    recurrent = True

    def __init__(self, net: Policy, lstm_size: int):
        super().__init__()
        self.net, self.head, self.lstm_size = net, net.head, lstm_size
        self.lstm = nn.LSTM(net.encoder_size, lstm_size)
        for name, param in self.lstm.named_parameters():  # CleanRL's LSTM initialisation
            if "weight" in name:
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.constant_(param, 0.0)

    @property
    def obs_norm(self) -> ObservationNorm | None:
        return self.net.obs_norm

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> LSTMState:
        zeros = torch.zeros(batch_size, self.lstm_size, device=device)
        return zeros, zeros.clone()

    def step(self, obs: torch.Tensor, state: LSTMState, first: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, LSTMState]:
        """One step of every agent: (distribution params, value [B], next state)."""
        h, c = state
        if first is not None:  # new episodes start from a zero state
            keep = (~first.bool()).unsqueeze(-1).to(h.dtype)
            h, c = h * keep, c * keep
        lstm = self.lstm  # one cell step of the same weights, without nn.LSTM's per-call overhead
        h, c = torch.lstm_cell(self.net.encode(obs), (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                               lstm.bias_hh_l0)
        params, value = self.net.decode(h)
        return params, value, (h, c)

    def unroll(self, obs: torch.Tensor, first: torch.Tensor, state: LSTMState) -> torch.Tensor:
        """The LSTM's outputs [S, L, lstm_size] over S segments of L steps (obs [S, L, ...]) from their
        start states (state: [S, lstm_size] each), the state zeroed before every step that begins an
        episode (first [S, L]).

        nn.LSTM cannot reset part of its batch mid-sequence, so the segments are cut at episode starts
        into pieces, each starting from its segment's state or from zeros; the pieces, padded to the
        longest, go through one nn.LSTM call (one fused kernel instead of a Python loop over steps,
        ~3x faster on CPU) and the outputs are put back in place. Padding comes after a piece's
        steps, so it changes none of their outputs.
        """
        S, L = first.shape
        x = self.net.encode(obs.flatten(0, 1))                          # [S * L, encoder_size]
        first = first.bool()
        keep = (~first[:, 0]).unsqueeze(-1).to(x.dtype)
        if not first[:, 1:].any():  # no episode begins inside a segment (most minibatches, once episodes are long)
            h, c = (state[0] * keep).unsqueeze(0), (state[1] * keep).unsqueeze(0)
            out, _ = self.lstm(x.view(S, L, -1).transpose(0, 1), (h, c))
            return out.transpose(0, 1)
        starts = first.clone()
        starts[:, 0] = True                                              # every segment starts a piece
        starts = starts.flatten()
        piece = starts.cumsum(0) - 1                                     # [S * L] the piece of each step
        begins = starts.nonzero().flatten()                              # [P] where each piece begins
        position = torch.arange(S * L, device=x.device) - begins[piece]  # the step's place in its piece
        padded = x.new_zeros(int(position.max()) + 1, len(begins), x.shape[-1])
        padded = padded.index_put((position, piece), x)                  # [longest piece, P, encoder_size]
        # A piece that begins an episode starts from zeros, one that begins a segment from its stored state.
        keep = (~first.flatten()[begins]).unsqueeze(-1).to(x.dtype)
        segment = begins // L
        h, c = (state[0][segment] * keep).unsqueeze(0), (state[1][segment] * keep).unsqueeze(0)
        out, _ = self.lstm(padded, (h, c))
        return out[position, piece].view(S, L, -1)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:  # a single step from a zero state
        return self.step(obs, self.initial_state(obs.shape[0], obs.device))[2][0]

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.decode(x)

    def sample(self, obs: torch.Tensor, state: LSTMState | None = None, first: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LSTMState]:
        """The rollout's per-step call: action [B, A], log-probability [B], value [B], next state."""
        state = state if state is not None else self.initial_state(obs.shape[0], obs.device)
        params, value, state = self.step(obs, state, first)
        action = self.head.sample(params)
        return action, self.head.log_prob(params, action), value, state

    def act(self, obs: torch.Tensor, deterministic: bool = False, state: LSTMState | None = None
            ) -> tuple[torch.Tensor, LSTMState]:
        """Actions and the next state."""
        state = state if state is not None else self.initial_state(obs.shape[0], obs.device)
        params, _, state = self.step(obs, state)
        return (self.head.mode(params) if deterministic else self.head.sample(params)), state


class SegmentReplay(Policy):
    """A recurrent policy replayed over one minibatch of segments, seen as a feedforward policy of the
    minibatch's valid steps.

    The update runs the LSTM once over the segments (all their steps, so that each sequence stays
    contiguous) and keeps the outputs of the valid steps (segments.mask), flattened in the order of
    `segments.valid_steps()`, whose observations `obs` are. `self(obs)`, `get_action_and_value(obs,
    actions)` and `get_value(obs)` answer for those steps. This is what the PPO loss and custom
    losses receive as `policy`, so a loss written for feedforward policies works unchanged. They
    may pass only this minibatch's `obs`: the outputs are the LSTM's over its segments, not a
    function of obs alone.
    """

    def __init__(self, policy: LSTMPolicy, segments, obs: torch.Tensor | None = None):
        super().__init__()
        self.recurrent_policy = [policy]  # a list: not a submodule (parameters() stays empty)
        self.head = policy.head
        self.obs = obs if obs is not None else segments.valid_steps().obs
        core = policy.unroll(segments.obs, segments.first, (segments.lstm_h, segments.lstm_c))
        self.core = core.flatten(0, 1)[segments.mask.flatten().nonzero().squeeze(-1)]  # [N, lstm_size]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if obs is not self.obs and not (obs.shape == self.obs.shape and torch.equal(obs, self.obs)):
            raise ValueError("a recurrent policy in the update answers only for its minibatch's own observations "
                             "(the obs passed to the loss); to run it on others, call LSTMPolicy.unroll")
        return self.recurrent_policy[0].decode(self.core)


POLICIES: dict[str, type[Policy]] = {"mlp": MLPPolicy, "simple_cnn": CNNPolicy, "token": TokenPolicy,
                                     "multi_input": MultiInputPolicy}


def network_for(agent_config: AgentConfig, observation_space: spaces.Space) -> str:
    """agent.name, with 'auto' resolved from the observation space: multi_input for any space but a Box
    (Dict, Tuple, Discrete, ...), token for uint8 [num_tokens, 3] (MettaGrid), simple_cnn for
    [C, H, W] / [H, W, C] images, mlp otherwise."""
    if agent_config.name != "auto":
        return agent_config.name
    if not isinstance(observation_space, spaces.Box):
        return "multi_input"
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
    if (name == "multi_input") == isinstance(observation_space, spaces.Box):
        raise ConfigError(f"agent.name={name!r} does not fit the observation space {observation_space}: "
                          "'multi_input' is for every space but a Box, the others for Boxes; use 'auto'")
    if agent_config.normalize_obs and name != "mlp":
        raise ConfigError(f"agent.normalize_obs is for the mlp network, not {name!r} (agent.name="
                          f"{agent_config.name!r}); drop the flag")
    kwargs = {"normalize_obs": True} if agent_config.normalize_obs else {}
    if agent_config.lstm_size:  # the heads read the LSTM's output
        kwargs["core_size"] = agent_config.lstm_size
    policy = POLICIES[name](observation_space, action_space, agent_config.hidden_size, **kwargs)
    if agent_config.lstm_size:
        policy = LSTMPolicy(policy, agent_config.lstm_size)
    # What a checkpoint needs to rebuild this network (see checkpoint.py).
    policy.spec = {"agent": dataclasses.asdict(agent_config), "observation_space": space_to_dict(observation_space),
                   "action_space": space_to_dict(action_space)}
    return policy
