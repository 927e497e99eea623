"""Networks of one's own: the protocol cleanmetta asks of a network, and `--agent.network module:Class`.

A network is a torch.nn.Module with CleanRL's two methods, built from an object that has the
env's `single_observation_space` and `single_action_space` (CleanRL's `Agent(envs)`):

    net = Class(envs, **kwargs)
    value = net.get_value(obs)                                            # [B] or [B, 1]
    action, logprob, entropy, value = net.get_action_and_value(obs, action=None)

`obs` is a batch of observations as the buffer stores them: [B, *shape] in the space's dtype (a
Dict or Tuple space flattened into rows: spaces.ObservationLayout). Actions are in the env's
shape: [B] for Discrete, [B, k] for MultiDiscrete, [B, *shape] for Box. A class written this way
trains as it is: `make_network` builds it from agent.network and wraps it in a `NetworkPolicy`,
which answers the calls the collector, the update and the evaluator make.

A cleanmetta `Policy` subclass (networks.py: `forward(obs) -> (distribution params, value)` and a
`head`, or `encode`/`decode`) is used as it is, unwrapped, and gets what needs the action
distribution's parameters, not only samples and log-probabilities: deterministic evaluation (the
mode), the curiosity and diversity losses, the exact KL of kickstarting, and `outputs.params` in a
custom loss. A CleanRL-style network gets each of these refused with the reason, except the
kickstart KL, which it gets estimated at the teacher's sampled actions.

Either way the checkpoint stores agent.network (the import path and keyword arguments, data) beside
the weights, and loading imports that class again (policy_store.load_policy_file: only modules
the user named, only nn.Module subclasses).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from gymnasium import spaces
from torch import nn

from cleanmetta.config import ConfigError
from cleanmetta.imports import check_call, load_object
from cleanmetta.networks import Policy

PROTOCOL = ("get_value", "get_action_and_value")


@dataclass
class EnvSpaces:
    """What a network's constructor is given: one agent's observation and action spaces, under the
    names of a gymnasium vector env (CleanRL's networks read envs.single_observation_space)."""

    single_observation_space: spaces.Space
    single_action_space: spaces.Space


class NetworkPolicy(Policy):
    """A network that follows the protocol, seen as a cleanmetta Policy: actions reshaped to the
    buffer's [B, A] (a Discrete action is one column), values and log-probabilities to [B]."""

    def __init__(self, network: nn.Module, action_space: spaces.Space):
        super().__init__()
        self.network = network
        self.discrete = isinstance(action_space, spaces.Discrete)  # the network's actions are [B], the buffer's [B, 1]

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        if action is not None and self.discrete:
            action = action[:, 0]
        action, logprob, entropy, value = self.network.get_action_and_value(obs, action)
        if self.discrete:
            action = action.reshape(-1, 1)
        return action, logprob.reshape(-1), entropy.reshape(-1), value.reshape(-1)

    def evaluate_actions(self, obs: torch.Tensor, action: torch.Tensor):
        """(logprob, entropy, value, None): the network exposes no distribution parameters."""
        _, logprob, entropy, value = self.get_action_and_value(obs, action)
        return logprob, entropy, value, None

    def sample(self, obs: torch.Tensor):
        action, logprob, _, value = self.get_action_and_value(obs)
        return action, logprob, value

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.network.get_value(obs).reshape(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if deterministic:
            raise ConfigError(f"evaluation.deterministic needs the mode of the action distribution, which "
                              f"{type(self.network).__name__} does not expose; evaluate by sampling (drop the flag), "
                              "or write the network as a cleanmetta Policy (docs/customizing.md)")
        return self.get_action_and_value(obs)[0]

    def forward(self, obs: torch.Tensor):
        raise ConfigError(f"{type(self.network).__name__} exposes no action-distribution parameters (only CleanRL's "
                          "get_value and get_action_and_value); the curiosity and diversity losses need them: write "
                          "the network as a cleanmetta Policy, forward(obs) -> (params, value) and a head "
                          "(docs/customizing.md)")


def has_distribution(policy: nn.Module) -> bool:
    """Whether `policy(obs)` gives the action distribution's parameters, read by `policy.head`."""
    return hasattr(policy, "head") and not isinstance(policy, NetworkPolicy)


def make_network(spec: str, observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    """The network agent.network names ('module:Class[:key=value,...]'), built as Class(envs, **kwargs);
    a class that is not an nn.Module, kwargs it does not take, or a missing protocol method are
    refused before anything trains, in one line."""
    cls, kwargs = load_object(spec, "agent.network")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"agent.network={spec!r} is not a torch.nn.Module class; name a network class, "
                          "e.g. 'my_nets:Agent'")
    missing = [name for name in PROTOCOL if not callable(getattr(cls, name, None))]
    if missing:
        raise ConfigError(f"agent.network={spec!r}: {cls.__name__} has no {' and no '.join(missing)}; a network needs "
                          "get_value(obs) and get_action_and_value(obs, action=None) -> (action, logprob, entropy, "
                          "value), as in CleanRL (docs/customizing.md)")
    envs = EnvSpaces(observation_space, action_space)
    check_call(cls, (envs,), kwargs, f"agent.network={spec!r}")
    network = cls(envs, **kwargs)
    return network if isinstance(network, Policy) else NetworkPolicy(network, action_space)
