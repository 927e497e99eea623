import typing

import pytest
import torch
import tyro
from gymnasium import spaces

from cleanmetta.config import AgentConfig, ConfigError, CustomLossName, PPOConfig, TrainingConfig
from cleanmetta.experience import Experience
from cleanmetta.losses import CUSTOM_LOSSES, make_custom_losses
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer


def policy_and_batch(action_space=spaces.MultiDiscrete([3, 2])):
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(hidden_size=16), spaces.Box(-1, 1, (4,)), action_space)
    return policy, torch.randn(32, 4), torch.randn(32)


def gradient(policy, loss):
    policy.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in policy.actor.parameters()])


@pytest.mark.parametrize("name", sorted(CUSTOM_LOSSES))
def test_each_custom_loss_changes_the_policy_gradient(name):
    policy, obs, advantages = policy_and_batch()
    _, logprob, entropy, value = policy.get_action_and_value(obs)
    base_loss = -(logprob * advantages).mean()
    base = gradient(policy, base_loss)
    _, logprob, entropy, value = policy.get_action_and_value(obs)
    fn = CUSTOM_LOSSES[name](0.5)
    extra = fn(policy, obs, None, torch.zeros(32), value.detach(), advantages)
    assert extra.dim() == 0
    combined = gradient(policy, -(logprob * advantages).mean() + extra)
    assert (combined - base).norm() > 1e-4 * base.norm()


def test_curiosity_weights_the_entropy_bonus_by_surprise():
    policy, obs, _ = policy_and_batch(spaces.Discrete(3))
    loss = CUSTOM_LOSSES["curiosity"](1.0)
    uniform = loss(policy, obs, None, None, None, torch.ones(32))
    entropy = policy.get_action_and_value(obs)[2]
    assert uniform.item() == pytest.approx(-entropy.mean().item(), rel=1e-5)  # equal surprise: plain entropy bonus
    surprise = torch.zeros(32)
    surprise[0] = 1.0
    focused = loss(policy, obs, None, None, None, surprise)
    # all the weight on the one surprising sample: weight 32 there, mean over 32 samples
    assert focused.item() == pytest.approx(-entropy[0].item(), rel=1e-4)


def test_diversity_is_the_entropy_of_the_average_action_distribution():
    policy, obs, _ = policy_and_batch(spaces.Discrete(3))
    value = CUSTOM_LOSSES["diversity"](2.0)(policy, obs, None, None, None, None)
    probs = policy(obs)[0].softmax(-1).mean(0)
    assert value.item() == pytest.approx(2.0 * (probs * probs.log()).sum().item(), rel=1e-5)


def test_losses_need_a_categorical_policy():
    policy, obs, advantages = policy_and_batch(spaces.Box(-1, 1, (2,)))
    with pytest.raises(TypeError, match="Discrete or MultiDiscrete"):
        CUSTOM_LOSSES["diversity"](1.0)(policy, obs, None, None, None, advantages)


def test_custom_losses_come_from_the_command_line_with_their_coefficients():
    config = tyro.cli(TrainingConfig, args=["--ppo.custom-losses", "curiosity", "diversity",
                                            "--ppo.diversity-coef", "0.5"])
    assert config.ppo.custom_losses == ["curiosity", "diversity"]
    losses = make_custom_losses(config.ppo)
    assert [fn.__name__ for fn in losses] == ["curiosity", "diversity"]
    policy, obs, _ = policy_and_batch(spaces.Discrete(3))
    half = losses[1](policy, obs, None, None, None, None)
    one = CUSTOM_LOSSES["diversity"](1.0)(policy, obs, None, None, None, None)
    assert half.item() == pytest.approx(0.5 * one.item())


def test_unknown_custom_loss_names_are_rejected():
    config = TrainingConfig(ppo=PPOConfig(custom_losses=["curiosty"]))
    with pytest.raises(ConfigError, match="names unknown loss 'curiosty'; choose from \\['curiosity', 'diversity'\\]"):
        config.validate()
    with pytest.raises(ConfigError, match="names unknown loss 'curiosty'; choose from \\['curiosity', 'diversity'\\]"):
        make_custom_losses(config.ppo)  # the table's own check, for callers that skip validate()
    with pytest.raises(SystemExit):
        tyro.cli(TrainingConfig, args=["--ppo.custom-losses", "curiosty"])


def test_the_config_lists_exactly_the_losses_of_the_table():
    assert set(typing.get_args(CustomLossName)) == set(CUSTOM_LOSSES)


def test_custom_losses_are_logged_under_their_names():
    policy, _, _ = policy_and_batch(spaces.Discrete(2))
    exp = Experience(8, 2, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    exp.obs.normal_()
    exp.valid.fill_(1.0)
    ppo = PPOOptimizer(policy, torch.optim.Adam(policy.parameters()), "cpu", PPOConfig(num_minibatches=1))
    stats = ppo.update(exp, make_custom_losses(PPOConfig(custom_losses=["curiosity", "diversity"])))
    assert "curiosity" in stats and "diversity" in stats
