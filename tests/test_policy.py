import typing

import numpy as np
import pytest
import torch
import tyro
from gymnasium import spaces
from torch.distributions import Categorical, Normal

from cleanmetta.config import AgentConfig, ConfigError, NetworkName, TrainingConfig
from cleanmetta.policy import POLICIES, CNNPolicy, MLPPolicy, TokenPolicy, make_policy

BOX4 = spaces.Box(-1, 1, (4,), np.float32)


@pytest.mark.parametrize("action_space, action_shape, dtype", [
    (spaces.Discrete(3), (5, 1), torch.long),
    (spaces.MultiDiscrete([3, 2, 4]), (5, 3), torch.long),
    (spaces.Box(-1, 1, (2,)), (5, 2), torch.float32),
])
def test_mlp_policy_output_shapes(action_space, action_shape, dtype):
    policy = make_policy(AgentConfig(), BOX4, action_space)
    with torch.no_grad():
        action, logprob, entropy, value = policy.get_action_and_value(torch.randn(5, 4))
    assert action.shape == action_shape and action.dtype == dtype
    assert logprob.shape == entropy.shape == value.shape == (5,)
    if not isinstance(action_space, spaces.Box):
        env_actions = action.numpy().reshape((5, *action_space.shape)).astype(action_space.dtype)
        assert all(action_space.contains(a) for a in env_actions)


def test_multidiscrete_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(), BOX4, spaces.MultiDiscrete([3, 2]))
    obs = torch.randn(6, 4)
    action, logprob, entropy, _ = policy.get_action_and_value(obs)
    logits, _ = policy(obs)
    dists = [Categorical(logits=part) for part in logits.split([3, 2], -1)]
    torch.testing.assert_close(logprob, sum(d.log_prob(action[:, i]) for i, d in enumerate(dists)))
    torch.testing.assert_close(entropy, sum(d.entropy() for d in dists))


def test_gaussian_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(), BOX4, spaces.Box(-2, 2, (3,)))
    with torch.no_grad():
        policy.head.log_std.copy_(torch.tensor([-0.5, 0.0, 0.3]))
    obs = torch.randn(6, 4)
    action, logprob, entropy, _ = policy.get_action_and_value(obs)
    mean, _ = policy(obs)
    dist = Normal(mean, policy.head.log_std.exp())
    torch.testing.assert_close(logprob, dist.log_prob(action).sum(-1))
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))


def test_categorical_samples_follow_the_softmax():
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(), BOX4, spaces.Discrete(3))
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(20000, 1)
    counts = torch.bincount(policy.head.sample(logits)[:, 0], minlength=3).float() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.2, 0.5, 0.3]), atol=0.015, rtol=0)


def test_deterministic_act_is_the_mode():
    policy = make_policy(AgentConfig(), BOX4, spaces.Discrete(3))
    obs = torch.randn(8, 4)
    logits, _ = policy(obs)
    assert torch.equal(policy.act(obs, deterministic=True)[:, 0], logits.argmax(-1))


def test_mlp_initialisation_follows_the_reference():
    policy = make_policy(AgentConfig(), BOX4, spaces.Discrete(2))
    out = policy.actor.weight2
    # orthogonal rows scaled by 0.01: W W^T = 0.01^2 I
    torch.testing.assert_close(out @ out.T, 1e-4 * torch.eye(2), atol=1e-7, rtol=0)
    assert all(getattr(policy.critic, f"bias{i}").abs().max() == 0 for i in range(3))


@pytest.mark.parametrize("shape", [(3, 11, 11), (84, 84, 4), (4, 84, 84)])
def test_simple_cnn_handles_grids_and_frames(shape):
    obs_space = spaces.Box(0, 255, shape, np.uint8)
    policy = make_policy(AgentConfig(name="simple_cnn", hidden_size=32), obs_space, spaces.Discrete(5))
    obs = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    action, logprob, entropy, value = policy.get_action_and_value(obs)
    assert action.shape == (2, 1) and value.shape == (2,)
    assert policy.image.dense.out_features == 32


def test_simple_cnn_rejects_vector_observations():
    with pytest.raises(ValueError, match="agent.name='simple_cnn' needs image observations .* use --agent.name auto"):
        make_policy(AgentConfig(name="simple_cnn"), BOX4, spaces.Discrete(2))


def test_the_config_lists_exactly_the_networks_of_the_table():
    assert set(typing.get_args(NetworkName)) == {"auto", *POLICIES}


def test_unknown_network_names_are_rejected_by_the_cli_the_config_and_make_policy():
    with pytest.raises(SystemExit):
        tyro.cli(TrainingConfig, args=["--agent.name", "transformer"])
    message = "agent.name='transformer' is not a known network; choose one of \\['mlp', 'multi_input', 'simple_cnn', 'token'\\]"
    with pytest.raises(ConfigError, match=message):
        TrainingConfig(agent=AgentConfig(name="transformer")).validate()
    with pytest.raises(ConfigError, match=message):
        make_policy(AgentConfig(name="transformer"), BOX4, spaces.Discrete(2))


def test_auto_picks_the_network_from_the_observation_space():
    action = spaces.Discrete(3)
    assert isinstance(make_policy(AgentConfig(), spaces.Box(-1, 1, (4,)), action), MLPPolicy)
    assert isinstance(make_policy(AgentConfig(), spaces.Box(0, 255, (3, 8, 8), np.uint8), action), CNNPolicy)
    assert isinstance(make_policy(AgentConfig(), spaces.Box(0, 255, (10, 3), np.uint8), action), TokenPolicy)
    assert isinstance(make_policy(AgentConfig(name="mlp"), spaces.Box(0, 255, (10, 3), np.uint8), action), MLPPolicy)
    with pytest.raises(ConfigError, match="normalize_obs is for the mlp"):
        make_policy(AgentConfig(normalize_obs=True), spaces.Box(0, 255, (10, 3), np.uint8), action)


def test_printing_the_default_network_shows_every_layer():
    text = str(make_policy(AgentConfig(), spaces.Box(-1, 1, (4,)), spaces.Discrete(2)))
    assert "(actor): MLP(Linear(4, 64), Tanh, Linear(64, 64), Tanh, Linear(64, 2))" in text
    assert "(critic): MLP(Linear(4, 64), Tanh, Linear(64, 64), Tanh, Linear(64, 1))" in text
    assert "CategoricalHead(nvec=[2])" in text
