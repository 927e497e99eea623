"""fast.py's speed tricks against the plain torch calls their docstrings name: the same results.

Each test runs the trick and its plain equivalent on the same inputs; exact equality where the
arithmetic is the same, a tight tolerance where only the order of floating-point operations
differs, and a frequency check for sampling (the two draw different random numbers).
"""

import math

import pytest
import torch
from gymnasium import spaces
from torch import nn

from cleanmetta.fast import add_scaled, clip_grad_norm, lstm_step, optimizer_step, sample_categorical, zero_grad
from cleanmetta.networks import MLP, MLPPolicy


def test_zero_grad_matches_optimizer_zero_grad():
    params = [nn.Parameter(torch.randn(3)) for _ in range(2)]
    for p in params:
        p.grad = torch.ones(3)
    zero_grad(params)
    other = [nn.Parameter(torch.randn(3)) for _ in range(2)]
    for p in other:
        p.grad = torch.ones(3)
    torch.optim.Adam(other).zero_grad()  # set_to_none=True is the default
    assert [p.grad for p in params] == [p.grad for p in other] == [None, None]


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for pa, pb in zip(a, b):
        pa.grad = torch.randn_like(pa) * 4
        pb.grad = pa.grad.clone()
    clip_grad_norm(a, 0.5)
    torch.nn.utils.clip_grad_norm_(b, 0.5)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa.grad, pb.grad)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in a])) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("amsgrad, weight_decay, decoupled", [(False, 0.0, False), (True, 0.01, False),
                                                              (False, 0.01, True)])
def test_optimizer_step_matches_adam_step(amsgrad, weight_decay, decoupled):
    """The fast path in optimizer_step must be exactly Adam.step(), from the first step on."""
    torch.manual_seed(0)
    space_obs, space_act = spaces.Box(-1, 1, (4,)), spaces.Discrete(2)
    policies = [MLPPolicy(space_obs, space_act) for _ in range(2)]
    policies[1].load_state_dict(policies[0].state_dict())
    optimizers = [torch.optim.Adam(p.parameters(), lr=1e-2, eps=1e-5, fused=True, amsgrad=amsgrad,
                                   weight_decay=weight_decay, decoupled_weight_decay=decoupled) for p in policies]
    step = [lambda opt: opt.step(), optimizer_step]
    for _ in range(4):
        obs = torch.randn(8, 4)
        for policy, optimizer, do_step in zip(policies, optimizers, step):
            optimizer.param_groups[0]["lr"] *= 0.9  # as the trainer's schedule does
            policy.zero_grad(set_to_none=True)
            logits, value = policy(obs)
            (logits.square().sum() + value.sum()).backward()
            do_step(optimizer)
    for a, b in zip(policies[0].parameters(), policies[1].parameters()):
        assert torch.equal(a, b)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        for a, b in zip(optimizers[0].state.values(), optimizers[1].state.values()):
            assert torch.equal(a[key], b[key])


def test_optimizer_step_falls_back_to_step_for_other_optimizers():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.5)
    param.grad = torch.ones(3)
    optimizer_step(optimizer)
    assert torch.equal(param.detach(), torch.full((3,), 0.5))


def test_add_scaled_matches_the_plain_weighted_sum():
    torch.manual_seed(0)
    x, a, b = (torch.randn((), requires_grad=True) for _ in range(3))
    fast = add_scaled(x, (-0.01, a), (0.5, b))
    plain = x - 0.01 * a + 0.5 * b
    torch.testing.assert_close(fast, plain)
    assert torch.autograd.grad(fast, (x, a, b)) == torch.autograd.grad(plain, (x, a, b))


def test_sample_categorical_follows_the_softmax_as_torch_distributions_do():
    torch.manual_seed(0)
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]])
    logits = probs.log().repeat(20000, 1)  # 20,000 draws of each row
    fast = sample_categorical(logits).view(20000, 2)
    plain = torch.distributions.Categorical(logits=logits).sample().view(20000, 2)
    assert fast.shape == plain.shape and fast.dtype == plain.dtype
    for row in range(2):
        fast_freq = torch.bincount(fast[:, row], minlength=3).float() / 20000
        plain_freq = torch.bincount(plain[:, row], minlength=3).float() / 20000
        torch.testing.assert_close(fast_freq, probs[row], atol=0.015, rtol=0)  # 4.5 standard errors
        torch.testing.assert_close(plain_freq, probs[row], atol=0.015, rtol=0)
    assert sample_categorical(logits[:4], keepdim=True).shape == (4, 1)


def test_lstm_step_matches_one_step_of_nn_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7)
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    fast_h, fast_c = lstm_step(lstm, x, (h, c))
    _, (plain_h, plain_c) = lstm(x[None], (h[None], c[None]))
    torch.testing.assert_close(fast_h, plain_h[0])
    torch.testing.assert_close(fast_c, plain_c[0])


def test_mlp_matches_nn_sequential_with_the_same_weights():
    torch.manual_seed(0)
    mlp = MLP([4, 64, 64, 2], out_std=0.01)
    sequential = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    with torch.no_grad():
        for i, linear in enumerate(sequential[::2]):
            linear.weight.copy_(getattr(mlp, f"weight{i}"))
            linear.bias.copy_(getattr(mlp, f"bias{i}"))
    x = torch.randn(9, 4)
    torch.testing.assert_close(mlp(x), sequential(x))
    # orthogonal rows scaled by the gain: sqrt 2 for the hidden layers, out_std for the last
    torch.testing.assert_close(mlp.weight1 @ mlp.weight1.T, 2 * torch.eye(64), atol=1e-5, rtol=0)
    assert math.isclose(float(mlp.weight2.detach().norm(dim=1)[0]), 0.01, rel_tol=1e-5)
