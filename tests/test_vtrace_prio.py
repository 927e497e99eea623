"""V-trace advantages (ppo.vtrace) and prioritized segment sampling (ppo.prio_alpha), Metta's additions to the
PPO update: against plain-Python references, against GAE where they must agree, and inside PPOOptimizer.update."""

import math
import random

import pytest
import torch
from gymnasium import spaces

import cleanmetta.ppo as ppo_module
from cleanmetta.config import AgentConfig, ConfigError, PPOConfig, TrainingConfig
from cleanmetta.experience import Batch, Experience, discounted_advantages
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer, segment_priorities
from test_gae import random_experience, reference_advantages


def random_ratios(T, B, seed):
    rng = random.Random(seed)
    return [[math.exp(rng.gauss(0, 0.5)) for _ in range(B)] for _ in range(T)]


@pytest.mark.parametrize("rho_clip, c_clip", [(1.0, 1.0), (2.0, 0.5), (100.0, 100.0)])
def test_vtrace_matches_plain_python_reference(rho_clip, c_clip, device):
    exp, data = random_experience(T=40, B=5, seed=4, device=device)  # with terminations and truncations
    ratios = random_ratios(40, 5, seed=5)
    got = discounted_advantages(exp.rewards, exp.values, exp.next_values(), exp.terminals, exp.dones, 0.97, 0.9,
                                torch.tensor(ratios, device=device), rho_clip, c_clip)
    expected = torch.tensor(reference_advantages(*data, 0.97, 0.9, ratios, rho_clip, c_clip))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)


def test_vtrace_with_ratio_one_is_gae_bit_for_bit(device):
    exp, _ = random_experience(T=40, B=5, seed=6, device=device)
    exp.compute_advantages(0.99, 0.95)
    ones = torch.ones_like(exp.values)
    vtrace = discounted_advantages(exp.rewards, exp.values, exp.next_values(), exp.terminals, exp.dones, 0.99, 0.95,
                                   ones, rho_clip=1.0, c_clip=1.0)
    assert torch.equal(vtrace, exp.advantages)


def segment_buffer(T=32, B=4, horizon=8, seed=7, device="cpu"):
    """A synthetic rollout with episode ends, autoreset (invalid) steps and GAE computed, cut into segments."""
    exp, _ = random_experience(T, B, seed, device)
    exp.bptt_horizon = horizon
    exp.valid.fill_(1.0)
    exp.valid[1:][exp.dones[:-1] == 1] = 0.0  # the step after a done is the autoreset step
    exp.logprobs.normal_(-1.0, 0.3)
    exp.compute_advantages(0.99, 0.95)
    return exp, exp.batch(segments=True)


def test_minibatch_vtrace_recomputes_each_segment_with_its_ratios_and_the_rollouts_tail(device):
    exp, batch = segment_buffer(device=device)
    T, B, L = exp.num_steps, exp.num_agents, exp.bptt_horizon
    ppo = PPOOptimizer(torch.nn.Linear(1, 1), None, device, PPOConfig(gamma=0.99, gae_lambda=0.95, vtrace=True,
                                                                       vtrace_rho_clip=1.2, vtrace_c_clip=1.0))
    rows = [5, 2, 9]  # segment s = k * B + b: agent b, steps k*L .. k*L + L - 1
    segments = batch.select(torch.tensor(rows, device=device))
    valid = segments.mask.bool()
    noise = 0.5 * torch.randn(int(valid.sum())).to(device)  # ratios on both sides of the clips
    new_logprobs = segments.logprobs[valid] + noise
    advantages, returns = ppo.vtrace(segments, new_logprobs)
    assert advantages.device.type == device.type

    # reference: V-trace over each agent's whole rollout, the new ratios inside the segment, 1 elsewhere (where, with
    # clips >= 1, V-trace is GAE: the rollout's advantages after the segment)
    step_ratio_seg = torch.ones_like(segments.values)
    step_ratio_seg[valid] = (new_logprobs - segments.logprobs[valid]).exp()
    expected = []
    for row, s in enumerate(rows):
        k, b = divmod(s, B)
        ratios = torch.ones(T, B)
        ratios[k * L:(k + 1) * L, b] = step_ratio_seg[row].cpu()
        full = reference_advantages(exp.rewards.tolist(), exp.values.tolist(), exp.last_value.tolist(),
                                    exp.terminals.tolist(), exp.dones.tolist(), 0.99, 0.95, ratios.tolist(), 1.2, 1.0)
        expected.append(torch.tensor(full)[k * L:(k + 1) * L, b])
    expected = torch.stack(expected)[valid.cpu()]
    torch.testing.assert_close(advantages.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns.cpu(), expected + segments.values[valid].cpu())

    same, same_returns = ppo.vtrace(segments, segments.logprobs[valid])  # ratio 1: the rollout's GAE, exactly
    assert torch.equal(same, segments.advantages[valid]) and torch.equal(same_returns, segments.returns[valid])


def cartpole_update(seed=0, epochs=1, minibatches=1, progress=0.0, **ppo):
    """A CartPole-shaped buffer of random data and one update of a fresh policy; returns its parameters."""
    torch.manual_seed(seed)
    obs_space = spaces.Box(-1, 1, (4,))
    policy = make_policy(AgentConfig(hidden_size=16), obs_space, spaces.Discrete(2))
    exp, batch = segment_buffer(T=32, B=4, horizon=8, seed=seed + 10)
    exp.obs = torch.randn(32, 4, 4)
    exp.actions = torch.randint(0, 2, (32, 4, 1))
    with torch.no_grad():
        exp.logprobs = policy.get_action_and_value(exp.obs.flatten(0, 1), exp.actions.flatten(0, 1))[1].view(32, 4)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    torch.manual_seed(seed + 1)
    stats = PPOOptimizer(policy, optimizer, "cpu", PPOConfig(update_epochs=epochs, num_minibatches=minibatches,
                                                             **ppo)).update(exp, progress=progress)
    return torch.cat([p.detach().flatten() for p in policy.parameters()]), stats, exp


def test_vtrace_update_equals_the_plain_update_while_the_policy_is_the_rollouts():
    """One minibatch, one epoch: the ratios are all 1, so V-trace changes nothing (only the summation order of the
    means differs); a second epoch sees ratios != 1 and moves elsewhere."""
    plain, _, _ = cartpole_update()
    vtrace, stats, _ = cartpole_update(vtrace=True)
    torch.testing.assert_close(vtrace, plain, rtol=1e-5, atol=1e-6)
    assert math.isfinite(stats["policy_loss"])
    plain2, _, _ = cartpole_update(epochs=2)
    vtrace2, _, _ = cartpole_update(epochs=2, vtrace=True, vtrace_rho_clip=0.9, vtrace_c_clip=0.9)
    assert (plain2 - vtrace2).abs().max() > 1e-6


def test_prio_alpha_zero_reproduces_the_uniform_update_bit_for_bit():
    plain, plain_stats, _ = cartpole_update(epochs=3, minibatches=4)
    zero, zero_stats, _ = cartpole_update(epochs=3, minibatches=4, prio_alpha=0.0, prio_beta0=0.2)
    assert torch.equal(plain, zero) and plain_stats == zero_stats
    prioritized, _, _ = cartpole_update(epochs=3, minibatches=4, prio_alpha=1.0)
    assert not torch.equal(plain, prioritized)


def test_segment_priorities_and_importance_weights_are_as_defined():
    advantages = torch.tensor([[1.0, -1.0, 5.0], [2.0, 0.5, 0.0], [0.0, 0.0, 0.0], [-3.0, 3.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # step 2 of 0: autoreset
    batch = Batch(*[advantages] * 7, mask=mask)
    probs, weights = segment_priorities(batch, alpha=0.5, beta=0.4)
    magnitude = torch.tensor([2.0, 2.5, 0.0, 9.0])  # valid steps' |A| summed
    priority = magnitude.sqrt() + 1e-6
    torch.testing.assert_close(probs, priority / priority.sum())
    torch.testing.assert_close(weights, (4 * probs).pow(-0.4))
    assert probs[2] > 0  # a segment without advantage keeps a small chance
    uniform_probs, uniform_weights = segment_priorities(batch, alpha=0.0, beta=0.7)
    torch.testing.assert_close(uniform_probs, torch.full((4,), 0.25))
    torch.testing.assert_close(uniform_weights, torch.ones(4))


def test_sampling_frequencies_follow_advantage_magnitude_to_the_alpha():
    """Segments drawn by the update itself (a loss records which segment each minibatch holds: obs[:, 0] is its
    id), over many epochs, against p ~ (sum |A|)^alpha of the buffer."""
    S, L, alpha = 6, 4, 1.5
    exp = Experience(L, S, spaces.Box(-1e3, 1e3, (1,)), spaces.Discrete(2))
    exp.valid.fill_(1.0)
    exp.obs[:, :, 0] = torch.arange(S, dtype=torch.float32)  # segment id of each step (one segment per agent)
    exp.rewards[-1] = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0, 8.0])
    exp.logprobs.fill_(math.log(0.5))
    policy = make_policy(AgentConfig(hidden_size=8), spaces.Box(-1e3, 1e3, (1,)), spaces.Discrete(2))
    counts = torch.zeros(S)

    def record(policy, obs, actions, rewards, values, advantages):
        counts.add_(torch.bincount(obs[:, 0].long(), minlength=S) / L)
        return torch.zeros(())

    record.__name__ = "record"
    torch.manual_seed(0)
    ppo = PPOOptimizer(policy, torch.optim.SGD(policy.parameters(), lr=0.0), "cpu",
                       PPOConfig(update_epochs=1000, num_minibatches=1, prio_alpha=alpha))
    ppo.update(exp, [record])
    magnitude = exp.advantages.abs().sum(0)
    expected = magnitude.pow(alpha) / magnitude.pow(alpha).sum()
    frequencies = counts / counts.sum()
    assert counts.sum() == 1000 * S  # every minibatch holds S segments, drawn with replacement
    torch.testing.assert_close(frequencies, expected, rtol=0.0, atol=0.02)  # ~3 standard errors of 6000 draws


def test_importance_weights_multiply_the_normalised_advantages_and_beta_anneals(monkeypatch):
    policy = make_policy(AgentConfig(hidden_size=8), spaces.Box(-1, 1, (3,)), spaces.Discrete(2))
    ppo = PPOOptimizer(policy, None, "cpu", PPOConfig(clip_coef=10.0))
    obs, actions = torch.randn(6, 3), torch.randint(0, 2, (6, 1))
    logprobs = policy.get_action_and_value(obs, actions)[1].detach()
    advantages, weights = torch.randn(6), torch.rand(6) + 0.5
    values = torch.zeros(6)
    weighted = ppo.compute_ppo_loss(obs, actions, logprobs, advantages, values, values, weights=weights)
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    # ratio 1 and a wide clip: the policy loss is -mean(weight x normalised advantage)
    torch.testing.assert_close(weighted.policy_loss, -(weights * normalised).mean())

    betas = []

    def spy(batch, alpha, beta):
        betas.append(beta)
        return segment_priorities(batch, alpha, beta)

    monkeypatch.setattr(ppo_module, "segment_priorities", spy)
    for progress in (0.0, 0.5, 1.0):  # the fraction of training done
        cartpole_update(prio_alpha=0.5, prio_beta0=0.4, progress=progress)
    assert betas == pytest.approx([0.4, 0.7, 1.0])


def test_vtrace_and_prio_settings_are_checked():
    for field, value, message in [("vtrace_rho_clip", 0.0, "ppo.vtrace_rho_clip=0.0 must be a finite number > 0"),
                                  ("vtrace_c_clip", -1.0, "ppo.vtrace_c_clip=-1.0 must be"),
                                  ("prio_alpha", -0.5, "ppo.prio_alpha=-0.5 must be"),
                                  ("prio_beta0", 1.5, "ppo.prio_beta0=1.5 must be in \\[0, 1\\]")]:
        config = TrainingConfig()
        setattr(config.ppo, field, value)
        with pytest.raises(ConfigError, match=message):
            config.validate()
    config = TrainingConfig()
    config.ppo.vtrace, config.trainer.bptt_horizon = True, 32  # segments of a feedforward policy: allowed
    config.validate()
    config.trainer.bptt_horizon = 48
    with pytest.raises(ConfigError, match="trainer.bptt_horizon=48 must divide trainer.num_steps=128"):
        config.validate()
    config.trainer.bptt_horizon, config.ppo.num_minibatches = 64, 3  # 4 envs x 2 segments = 8 segments
    config.validate()  # 3, 3 and 2 segments
    config.ppo.num_minibatches = 9
    with pytest.raises(ConfigError, match="ppo.num_minibatches=9 is more than the number of segments"):
        config.validate()
