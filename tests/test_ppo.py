import math
import shutil

import numpy as np
import pytest
import torch
from gymnasium import spaces

from cleanmetta.config import PPOConfig, TrainerConfig
from cleanmetta.experience import Experience
from cleanmetta.policy import MLPPolicy, Policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.trainer import make_optimizer


class TablePolicy(Policy):
    """Fixed, known outputs: obs row i has logits `logits[i]` and value `values[i]` (times `scale`)."""

    def __init__(self, logits, values):
        super().__init__()
        from cleanmetta.policy import CategoricalHead
        self.head = CategoricalHead([len(logits[0])])
        self.logits = torch.tensor(logits)
        self.values = torch.tensor(values)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, obs):
        i = obs[:, 0].long()
        return self.logits[i] * self.scale, self.values[i] * self.scale


def test_ppo_loss_terms_match_hand_computation():
    logits = [[0.0, math.log(3.0)], [math.log(2.0), 0.0]]  # softmax: [0.25, 0.75], [2/3, 1/3]
    new_values = [1.0, -2.0]
    policy = TablePolicy(logits, new_values)
    config = PPOConfig(clip_coef=0.2, ent_coef=0.01, vf_coef=0.5, norm_adv=False, clip_vloss=True)
    ppo = PPOOptimizer(policy, torch.optim.SGD(policy.parameters(), lr=0.1), "cpu", config)

    obs = torch.tensor([[0.0], [1.0]])
    actions = torch.tensor([[1], [0]])
    old_logprobs = torch.log(torch.tensor([0.5, 0.5]))
    advantages = torch.tensor([2.0, -1.0])
    returns = torch.tensor([1.5, 0.0])
    old_values = torch.tensor([0.9, -1.0])
    losses = ppo.compute_ppo_loss(obs, actions, old_logprobs, advantages, returns, old_values)

    # ratios: 0.75 / 0.5 = 1.5 and (2/3) / 0.5 = 4/3
    r = [1.5, 4.0 / 3.0]
    clipped = [min(max(x, 0.8), 1.2) for x in r]
    pg = [max(-a * x, -a * c) for a, x, c in zip([2.0, -1.0], r, clipped)]  # [-2.4, 4/3]
    policy_loss = sum(pg) / 2
    # values: sample 0 moves 0.1 (inside the clip), sample 1 moves -1.0 -> clipped to -1.2
    v_unclipped = [(1.0 - 1.5) ** 2, (-2.0 - 0.0) ** 2]
    v_clipped = [(1.0 - 1.5) ** 2, (-1.2 - 0.0) ** 2]
    value_loss = 0.5 * sum(max(a, b) for a, b in zip(v_unclipped, v_clipped)) / 2
    entropy = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)),
               -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))]
    entropy_loss = sum(entropy) / 2
    approx_kl = sum((x - 1) - math.log(x) for x in r) / 2
    clipfrac = sum(abs(x - 1) > 0.2 for x in r) / 2

    assert losses.policy_loss.item() == pytest.approx(policy_loss, rel=1e-5)
    assert losses.value_loss.item() == pytest.approx(value_loss, rel=1e-5)
    assert losses.entropy_loss.item() == pytest.approx(entropy_loss, rel=1e-5)
    assert losses.total_loss.item() == pytest.approx(policy_loss - 0.01 * entropy_loss + 0.5 * value_loss, rel=1e-5)
    assert losses.approx_kl.item() == pytest.approx(approx_kl, rel=1e-5)
    assert losses.clipfrac.item() == pytest.approx(clipfrac)


def test_advantages_are_normalised_per_minibatch():
    policy = TablePolicy([[0.0, 0.0]] * 3, [0.0] * 3)
    ppo = PPOOptimizer(policy, torch.optim.SGD(policy.parameters(), lr=0.1), "cpu", PPOConfig(norm_adv=True))
    obs, actions = torch.tensor([[0.0], [1.0], [2.0]]), torch.zeros(3, 1, dtype=torch.long)
    logp = torch.log(torch.full((3,), 0.5))
    zeros = torch.zeros(3)
    a = ppo.compute_ppo_loss(obs, actions, logp, torch.tensor([1.0, 2.0, 3.0]), zeros, zeros)
    b = ppo.compute_ppo_loss(obs, actions, logp, torch.tensor([10.0, 20.0, 30.0]), zeros, zeros)
    # ratio 1 everywhere: the loss is -mean(normalised advantages) = 0 whatever the scale
    assert a.policy_loss.item() == pytest.approx(0.0, abs=1e-6)
    assert b.policy_loss.item() == pytest.approx(0.0, abs=1e-6)


def filled_experience(num_steps=8, num_agents=4, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)  # the same data on every device
    exp = Experience(num_steps, num_agents, spaces.Box(-1, 1, (4,)), spaces.Discrete(2), device)
    exp.obs[:] = torch.randn(exp.obs.shape, generator=gen)
    exp.actions[:] = torch.randint(0, 2, exp.actions.shape, generator=gen)
    exp.logprobs[:] = math.log(0.5)
    exp.values[:] = torch.randn(exp.values.shape, generator=gen)
    exp.rewards[:] = torch.randn(exp.rewards.shape, generator=gen)
    exp.valid[:] = 1.0
    return exp


def make_ppo(config=None):
    torch.manual_seed(0)
    policy = MLPPolicy(spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    return policy, PPOOptimizer(policy, optimizer, "cpu", config or PPOConfig())


def test_custom_loss_receives_documented_arguments_and_is_reported():
    policy, ppo = make_ppo(PPOConfig(num_minibatches=2, update_epochs=1))
    exp = filled_experience()
    seen = []

    def probe_loss(policy_arg, obs, actions, rewards, values, advantages):
        seen.append((policy_arg, obs, actions, rewards, values, advantages))
        return torch.tensor(0.25)

    stats = ppo.update(exp, custom_loss_fns=[probe_loss])
    assert len(seen) == 2
    assert stats["probe_loss"] == pytest.approx(0.25)
    policy_arg, obs, actions, rewards, values, advantages = seen[0]
    assert policy_arg is policy
    assert obs.shape == (16, 4) and actions.shape == (16, 1)
    assert rewards.shape == values.shape == advantages.shape == (16,)
    # every row is one transition of the rollout: obs, rewards and values stay aligned
    flat_obs, flat_rewards, flat_values = exp.obs.flatten(0, 1), exp.rewards.flatten(), exp.values.flatten()
    for i in range(16):
        j = int((flat_obs == obs[i]).all(-1).nonzero()[0])
        assert rewards[i] == flat_rewards[j] and values[i] == flat_values[j]
        assert advantages[i] == exp.advantages.flatten()[j]


def test_custom_loss_gradient_reaches_the_policy():
    def actor_weight_decay(policy, obs, actions, rewards, values, advantages):
        return 100.0 * policy.actor.weight0.pow(2).sum()

    def weights_after(custom):
        policy, ppo = make_ppo(PPOConfig(num_minibatches=1, update_epochs=1, max_grad_norm=1e6))
        torch.manual_seed(1)
        ppo.update(filled_experience(), custom_loss_fns=custom)
        return policy.actor.weight0.detach().clone()

    plain, with_custom = weights_after([]), weights_after([actor_weight_decay])
    assert not torch.allclose(plain, with_custom)
    assert with_custom.norm() < plain.norm()  # the penalty pulled the weights towards zero


def test_the_update_on_the_device_matches_the_update_on_the_cpu(device):
    """The same policy, rollout and settings: GAE, the clipped losses, gradient clipping and fused Adam give the
    CPU's parameters and statistics on `device`, to float tolerance. One minibatch an epoch, so that the shuffle,
    which each device draws from its own generator, changes only the order of the sums."""
    def update_on(dev):
        torch.manual_seed(0)
        policy = MLPPolicy(spaces.Box(-1, 1, (4,)), spaces.Discrete(2)).to(dev)
        initial = [p.detach().clone().cpu() for p in policy.parameters()]  # a copy: the update works in place
        optimizer = make_optimizer(policy, TrainerConfig(learning_rate=1e-2), dev)
        exp = filled_experience(num_steps=32, num_agents=8, device=dev)
        exp.dones[10], exp.terminals[10, :4], exp.valid[11] = 1.0, 1.0, 0.0  # ends, truncations, autoreset steps
        exp.last_value[:] = 0.5
        stats = PPOOptimizer(policy, optimizer, dev, PPOConfig(num_minibatches=1, update_epochs=3)).update(exp)
        assert exp.advantages.device.type == policy.actor.weight0.device.type == dev.type
        return initial, [p.detach().cpu() for p in policy.parameters()], stats

    initial, on_cpu, cpu_stats = update_on(torch.device("cpu"))
    _, on_device, device_stats = update_on(device)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(on_cpu, initial))  # three Adam steps moved the policy
    for a, b in zip(on_device, on_cpu):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert device_stats.keys() == cpu_stats.keys()
    for key, value in cpu_stats.items():
        assert device_stats[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key


def test_update_reports_losses_and_changes_parameters():
    policy, ppo = make_ppo()
    before = [p.detach().clone() for p in policy.parameters()]
    stats = ppo.update(filled_experience())
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance"):
        assert math.isfinite(stats[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_invalid_transitions_are_not_trained_on():
    policy, ppo = make_ppo(PPOConfig(num_minibatches=1, update_epochs=1))
    exp = filled_experience()
    exp.valid[0] = 0.0
    seen = []
    ppo.update(exp, custom_loss_fns=[lambda p, obs, *rest: seen.append(obs) or torch.zeros(())])
    assert seen[0].shape[0] == exp.batch_size - exp.num_agents


def test_non_finite_loss_raises_a_clear_error():
    _, ppo = make_ppo()
    exp = filled_experience()
    exp.rewards[3, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="PPO loss is not finite .*value_loss=nan.*learning_rate"):
        ppo.update(exp)


def test_a_non_finite_custom_loss_is_named_in_the_error():
    _, ppo = make_ppo()

    def exploding(*args):
        return torch.tensor(float("inf"))

    with pytest.raises(FloatingPointError, match="entropy=[0-9.]+, exploding=inf\\)"):
        ppo.update(filled_experience(), custom_loss_fns=[exploding])


def test_custom_losses_need_distinct_names():
    _, ppo = make_ppo()

    def entropy(*args):
        return torch.zeros(())

    with pytest.raises(ValueError, match="distinct names"):
        ppo.update(filled_experience(), custom_loss_fns=[entropy])


def test_target_kl_stops_the_update_early():
    def count_minibatches(config):
        calls = []
        _, ppo = make_ppo(config)
        ppo.update(filled_experience(), custom_loss_fns=[lambda *a: calls.append(1) or torch.zeros(())])
        return len(calls)

    full = count_minibatches(PPOConfig(update_epochs=4, num_minibatches=2))
    early = count_minibatches(PPOConfig(update_epochs=4, num_minibatches=2, target_kl=1e-12,
                                        ent_coef=0.0, norm_adv=False))
    assert full == 8 and early == 2


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch.compile's own internals
def test_compiled_loss_matches_eager_loss_and_gradients():
    torch.manual_seed(0)
    policy = MLPPolicy(spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    eager = PPOOptimizer(policy, optimizer, "cpu", PPOConfig())
    compiled = PPOOptimizer(policy, optimizer, "cpu", PPOConfig(compile=True))
    assert compiled.loss_and_outputs != eager.loss_and_outputs  # the flag does compile
    for n in (37, 64):  # two minibatch sizes: one dynamic-shape graph serves both
        obs, actions = torch.randn(n, 4), torch.randint(0, 2, (n, 1))
        args = (obs, actions, torch.randn(n) - 0.7, torch.randn(n), torch.randn(n), torch.randn(n))
        results = []
        for ppo in (eager, compiled):
            policy.zero_grad(set_to_none=True)
            losses, _ = ppo.loss_and_outputs(*args)
            losses.total_loss.backward()
            results.append((losses, [p.grad.clone() for p in policy.parameters()]))
        (a, grads_a), (b, grads_b) = results
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)
        for x, y in zip(grads_a, grads_b):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


def test_bf16_runs_the_loss_forward_in_bfloat16_close_to_float32():
    from cleanmetta.policy import CNNPolicy

    torch.manual_seed(0)
    policy = CNNPolicy(spaces.Box(0, 255, (4, 36, 36), np.uint8), spaces.Discrete(4), hidden_size=32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    plain = PPOOptimizer(policy, optimizer, "cpu", PPOConfig())
    bf16 = PPOOptimizer(policy, optimizer, "cpu", PPOConfig(bf16=True))
    dtypes = []
    policy.image.trunk[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    n = 64
    obs, actions = torch.randint(0, 255, (n, 4, 36, 36), dtype=torch.uint8), torch.randint(0, 4, (n, 1))
    with torch.no_grad():
        old_logprobs = policy.get_action_and_value(obs, actions)[1]
    args = (obs, actions, old_logprobs, torch.randn(n), torch.randn(n), torch.randn(n))
    results = []
    for ppo in (plain, bf16):
        policy.zero_grad(set_to_none=True)
        losses, _ = ppo.loss_and_outputs(*args)
        losses.total_loss.backward()
        results.append((losses, torch.cat([p.grad.flatten() for p in policy.parameters()])))
    assert dtypes[-3:] == [torch.float32, torch.float32, torch.bfloat16]  # old logprobs, plain, bf16
    (a, grads_a), (b, grads_b) = results
    assert b.approx_kl < 1e-4  # the rollout's policy, to bfloat16's precision
    torch.testing.assert_close(b.total_loss, a.total_loss, rtol=0.02, atol=0.02)
    assert torch.nn.functional.cosine_similarity(grads_a, grads_b, dim=0) > 0.99
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in policy.parameters())
