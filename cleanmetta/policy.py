"""make_policy: the actor-critic network for an env's observation and action spaces.

`make_policy(AgentConfig(), observation_space, action_space)` builds the network agent.name names
(or agent.network, a network of one's own by import path: protocol.py);
"auto", the default, picks one from the observation space (`network_for`): for CartPole's vector
observations, networks.MLPPolicy, CleanRL's two 64-unit tanh MLPs. With agent.lstm_size > 0 the
network gets an LSTM core (lstm.LSTMPolicy). The policy keeps `spec`, what a checkpoint needs to
build it again.

This module is also the one place to import any policy class from: the networks and their action
heads (networks.py), the LSTM core (lstm.py) and the adapter of CleanRL-style networks (protocol.py)
are re-exported here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from gymnasium import spaces

from cleanmetta.config import AgentConfig, ConfigError
from cleanmetta.encoders import is_image
from cleanmetta.lstm import LSTMPolicy, LSTMState, SegmentReplay
from cleanmetta.networks import (MLP, POLICIES, CategoricalHead, CNNPolicy, GaussianHead, MLPPolicy, MultiInputPolicy,
                                 Policy, TokenPolicy, make_head)
from cleanmetta.protocol import NetworkPolicy, make_network
from cleanmetta.spaces import check_spaces, space_to_dict

__all__ = ["CNNPolicy", "CategoricalHead", "GaussianHead", "LSTMPolicy", "LSTMState", "MLP", "MLPPolicy",
           "MultiInputPolicy", "NetworkPolicy", "POLICIES", "Policy", "SegmentReplay", "TokenPolicy", "make_head",
           "make_policy", "network_for"]


def network_for(agent_config: AgentConfig, observation_space: spaces.Space) -> str:
    """agent.name, with 'auto' resolved from the observation space: multi_input for any space but a Box
    (Dict, Tuple, Discrete, ...), token for uint8 [num_tokens, 3] (MettaGrid), simple_cnn for images
    and stacks of images (encoders.is_image), mlp for vectors and 2-axis arrays. A Box of more axes
    that is no image is refused: flattened, its structure would reach the MLP unseen."""
    if agent_config.name != "auto":
        return agent_config.name
    if not isinstance(observation_space, spaces.Box):
        return "multi_input"
    shape = observation_space.shape
    if len(shape) == 2 and shape[1] == 3 and observation_space.dtype == np.uint8:
        return "token"
    if is_image(observation_space):
        return "simple_cnn"
    if len(shape) > 2:
        raise ConfigError(f"observations of shape {shape} are neither vectors nor images ([C, H, W], [H, W, C] or a "
                          "stack of them); flatten them with --env.wrappers gymnasium.wrappers:FlattenObservation, "
                          "or pick a network with --agent.name mlp (it flattens them)")
    return "mlp"


def make_policy(agent_config: AgentConfig, observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    """Build the network named by `agent_config.name` for one agent's observation and action spaces."""
    check_spaces(observation_space, action_space)
    if agent_config.network:  # a network of one's own, by import path (protocol.py)
        policy = make_network(agent_config.network, observation_space, action_space)
        policy.spec = spec_of(agent_config, observation_space, action_space)
        return policy
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
    policy.spec = spec_of(agent_config, observation_space, action_space)
    return policy


def spec_of(agent_config: AgentConfig, observation_space: spaces.Space, action_space: spaces.Space) -> dict:
    """What a checkpoint needs to build the network again (policy_store.py), as data: the agent settings
    (a network of one's own: its import path and keyword arguments) and the spaces."""
    return {"agent": dataclasses.asdict(agent_config), "observation_space": space_to_dict(observation_space),
            "action_space": space_to_dict(action_space)}
