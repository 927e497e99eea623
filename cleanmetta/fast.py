"""Speed tricks: faster ways to make a plain torch call, each behind a plainly named function.

Read the first line of each docstring and move on: it names the plain torch call the function
stands for, and a test in tests/test_fast.py checks that the two agree. At PPO's usual sizes (a
few environments, a 64-unit MLP, minibatches of a few hundred samples) the cost of a step is
mostly the per-call bookkeeping of torch's convenience layers, not arithmetic; these functions
skip that bookkeeping. How much each one saves is measured side by side with its plain
equivalent by benchmarks/speed_tricks.py (docs/speed.md has the figures).
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as functional_adam


def zero_grad(params: list[torch.Tensor]) -> None:
    """= optimizer.zero_grad(set_to_none=True), for the optimiser's parameters `params`."""
    for p in params:
        p.grad = None


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """= nn.utils.clip_grad_norm_(params, max_norm): the gradients scaled together so that their
    global L2 norm is at most max_norm; the same arithmetic in three foreach calls."""
    grads = [p.grad for p in params if p.grad is not None]
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total_norm + 1e-6)).clamp(max=1.0))


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """= optimizer.step(). For a fused single-group Adam (what optimizers.adam builds) after
    its first step, the same fused kernel called through torch's functional `adam`, skipping
    Optimizer.step's per-call bookkeeping over every parameter; any other optimiser: step()."""
    group = optimizer.param_groups[0]
    params = group["params"]
    fast = (type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1 and group["fused"]
            and not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
            and all(p.grad is not None and optimizer.state[p] for p in params))  # state exists after step 1
    if not fast:
        optimizer.step()
        return
    states = [optimizer.state[p] for p in params]
    beta1, beta2 = group["betas"]
    adamw = {"decoupled_weight_decay": True} if group.get("decoupled_weight_decay") else {}  # torch >= 2.6 only
    functional_adam(
        params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], [s["step"] for s in states],
        fused=True, capturable=group["capturable"], differentiable=group["differentiable"], amsgrad=group["amsgrad"],
        beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
        maximize=group["maximize"], **adamw)


def add_scaled(x: torch.Tensor, *terms: tuple[float, torch.Tensor]) -> torch.Tensor:
    """= x + w1 * t1 + w2 * t2 + ... for terms (w1, t1), (w2, t2), ...: one op per term instead of
    two (each op in a loss costs its forward and its backward call)."""
    for weight, term in terms:
        x = x.add(term, alpha=weight)
    return x


def sample_categorical(logits: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """= torch.distributions.Categorical(logits=logits).sample() over the last axis, by the Gumbel-max
    trick: argmax(logits + Gumbel noise) is a sample of softmax(logits), and -log(Exp(1)) is Gumbel
    noise. `keepdim` keeps the last axis (as a column of indices)."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1, keepdim=keepdim)


def lstm_step(lstm: torch.nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """= lstm(x[None], (h[None], c[None]))'s new (h, c), squeezed: one step of a one-layer nn.LSTM,
    as one lstm_cell call on its weights (x [B, input_size], h and c [B, hidden_size])."""
    return torch.lstm_cell(x, state, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
