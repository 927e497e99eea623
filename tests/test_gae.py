"""GAE against an independent, plain-Python formulation: the discounted sum of TD residuals
over the rest of each episode segment, A_t = sum_k (gamma lambda)^k delta_{t+k} (and V-trace, in
test_vtrace_prio.py, against the same sum with its importance weights)."""

import random

import pytest
import torch
from gymnasium import spaces

from cleanmetta.experience import Experience


def reference_advantages(rewards, values, last_value, terminals, dones, gamma, lam, ratios=None, rho_clip=1.0,
                         c_clip=1.0):
    """A_t = sum_k (gamma lambda)^k delta_{t+k} up to the end of the episode or of the rollout; with `ratios`,
    V-trace as IMPALA writes it: each term also weighted by min(ratio_{t+k}, rho_clip) and by the trace
    c_t ... c_{t+k-1}, c_i = min(ratio_i, c_clip)."""
    T, B = len(rewards), len(rewards[0])
    ratios = ratios or [[1.0] * B for _ in range(T)]
    advantages = [[0.0] * B for _ in range(T)]
    for b in range(B):
        def next_value(t):
            if terminals[t][b]:
                return 0.0
            return values[t + 1][b] if t + 1 < T else last_value[b]

        deltas = [rewards[t][b] + gamma * next_value(t) - values[t][b] for t in range(T)]
        for t in range(T):
            total, trace, k = 0.0, 1.0, 0
            while True:
                total += (gamma * lam) ** k * trace * min(ratios[t + k][b], rho_clip) * deltas[t + k]
                if dones[t + k][b] or t + k + 1 == T:
                    break
                trace *= min(ratios[t + k][b], c_clip)
                k += 1
            advantages[t][b] = total
    return advantages


def random_experience(T, B, seed, device="cpu"):
    rng = random.Random(seed)
    exp = Experience(T, B, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), device)
    terminals = [[float(rng.random() < 0.1) for _ in range(B)] for _ in range(T)]
    truncations = [[float(rng.random() < 0.1) for _ in range(B)] for _ in range(T)]
    dones = [[max(a, b) for a, b in zip(x, y)] for x, y in zip(terminals, truncations)]
    rewards = [[rng.gauss(0, 1) for _ in range(B)] for _ in range(T)]
    values = [[rng.gauss(0, 1) for _ in range(B)] for _ in range(T)]
    last_value = [rng.gauss(0, 1) for _ in range(B)]
    exp.rewards[:] = torch.tensor(rewards)
    exp.values[:] = torch.tensor(values)
    exp.terminals[:] = torch.tensor(terminals)
    exp.dones[:] = torch.tensor(dones)
    exp.last_value[:] = torch.tensor(last_value)
    return exp, (rewards, values, last_value, terminals, dones)


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.9, 1.0), (1.0, 0.0)])
def test_gae_matches_plain_python_reference(gamma, lam, device):
    exp, data = random_experience(T=40, B=5, seed=3, device=device)
    exp.compute_advantages(gamma, lam)
    expected = torch.tensor(reference_advantages(*data, gamma, lam))
    assert exp.advantages.device.type == device.type
    torch.testing.assert_close(exp.advantages.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(exp.returns.cpu(), expected + exp.values.cpu())


def test_truncation_bootstraps_but_termination_does_not(device):
    exp = Experience(2, 2, spaces.Box(-1, 1, (1,)), spaces.Discrete(2), device)
    exp.rewards[:] = 1.0
    exp.values[:] = torch.tensor([[0.5, 0.5], [10.0, 10.0]])  # step 1 holds the final obs' value
    exp.dones[0] = 1.0
    exp.terminals[0] = torch.tensor([1.0, 0.0])  # env 0 terminated, env 1 truncated
    exp.compute_advantages(gamma=0.5, gae_lambda=0.9)
    assert exp.advantages[0, 0].item() == pytest.approx(1.0 - 0.5)              # r - V
    assert exp.advantages[0, 1].item() == pytest.approx(1.0 + 0.5 * 10.0 - 0.5)  # r + gamma V(final) - V
