"""fast.py's speed tricks (and the hand-written distributions) against the plain torch calls, side by side.

Each trick stands for one plain torch call (its docstring names it; tests/test_fast.py checks that
the two agree). This times both on the default run's sizes: CartPole's 64-unit MLPs, a rollout
batch of 4 environments, minibatches of 128 samples, one torch thread. Per pair: `--repeats`
rounds of `--calls` calls of each, alternating which goes first, and the median microseconds per
call; the saving is what one call of the trick saves, and `per run` what that makes over the
default 500k-step run (the number of calls there is counted from its settings; "-" for a trick
the default run does not use).

`--compile` also times `--ppo.compile` (off by default, so not a trick of the default run): the
first call of the compiled minibatch loss (its compilation, with torch's compile caches off as on a
machine's first compiled run), then the loss's forward and backward
pass on a minibatch of 128, eager against compiled, in the same alternating rounds.

    python benchmarks/speed_tricks.py                          # ~1 minute on 2 cores
    python benchmarks/speed_tricks.py --compile                # and torch.compile (~1 more minute)

Each invocation writes a new results file, results/speed_tricks_<UTC date-time>.json (or --out,
which must not exist), with the command, commit and machine; it is written after each pair, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from gymnasium import spaces
from torch import nn
from torch.distributions import Categorical

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare  # noqa: E402

sys.path[:] = [compare.ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py shadows

from cleanmetta import fast  # noqa: E402
from cleanmetta.config import PPOConfig  # noqa: E402
from cleanmetta.networks import MLPPolicy  # noqa: E402
from cleanmetta.ppo import PPOOptimizer  # noqa: E402

# The default run: 500k steps of 4 envs x 128 steps (977 rollouts), 4 epochs x 4 minibatches of 128.
ROLLOUTS = 977
CALLS_PER_RUN = {"rollout step": ROLLOUTS * 128, "minibatch": ROLLOUTS * 16, "rollout": ROLLOUTS}


def per_call_us(fn, calls: int) -> float:
    for _ in range(calls // 10):  # warm-up
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def pairs() -> list[tuple[str, str, str, object, object]]:
    """(name, how often the default run calls it, plain call, plain fn, trick fn)."""
    torch.manual_seed(0)
    policy = MLPPolicy(spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=2.5e-4, eps=1e-5, fused=True)
    params = list(policy.parameters())
    obs, actions = torch.randn(128, 4), torch.randint(0, 2, (128, 1))
    _, logprob, entropy, value = policy.get_action_and_value(obs, actions)
    (logprob.mean() + entropy.mean() + value.pow(2).mean()).backward()
    optimizer.step()  # Adam's state exists from here on, as after the first minibatch of a run
    unfused = torch.optim.Adam(policy.parameters(), lr=2.5e-4, eps=1e-5, fused=False)
    unfused.step()  # optimizers.adam asks for the fused kernel: this is the default one

    step_obs, logits = torch.randn(4, 4), torch.randn(4, 2)
    step_actions = torch.randint(0, 2, (4, 1))
    sequential = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    lstm, lstm_x = nn.LSTM(4, 128), torch.randn(4, 4)
    state = (torch.zeros(4, 128), torch.zeros(4, 128))
    rollout_obs = torch.randn(128, 4, 4)
    terms = [torch.randn((), requires_grad=True) for _ in range(3)]

    grads = [p.grad for p in params]

    def then_regrad(zero):  # the gradients put back after each call (both sides pay it alike)
        def run():
            zero()
            for p, g in zip(params, grads):
                p.grad = g
        return run

    def per_step_values():  # a value with every step: the critic 128 times on 4 observations
        for t in range(128):
            policy.get_value(rollout_obs[t])

    def loss_backward(total):
        def run():
            total(*terms).backward()
        return run

    head = policy.head
    return [
        ("zero_grad", "minibatch", "optimizer.zero_grad()", then_regrad(optimizer.zero_grad),
         then_regrad(lambda: fast.zero_grad(params))),
        ("clip_grad_norm", "minibatch", "nn.utils.clip_grad_norm_(params, 0.5)",
         lambda: nn.utils.clip_grad_norm_(params, 0.5), lambda: fast.clip_grad_norm(params, 0.5)),
        ("optimizer_step", "minibatch", "optimizer.step()", optimizer.step, lambda: fast.optimizer_step(optimizer)),
        ("fused Adam", "minibatch", "torch.optim.Adam(params, fused=False).step()", unfused.step, optimizer.step),
        ("add_scaled", "minibatch", "p - 0.01 * e + 0.5 * v, forward and backward",
         loss_backward(lambda p, e, v: p - 0.01 * e + 0.5 * v),
         loss_backward(lambda p, e, v: fast.add_scaled(p, (-0.01, e), (0.5, v)))),
        ("sample_categorical", "rollout step", "Categorical(logits=logits).sample()",
         lambda: Categorical(logits=logits).sample(), lambda: fast.sample_categorical(logits, keepdim=True)),
        ("CategoricalHead.log_prob", "rollout step", "Categorical(logits=logits).log_prob(actions)",
         lambda: Categorical(logits=logits).log_prob(step_actions[:, 0]), lambda: head.log_prob(logits, step_actions)),
        ("MLP", "rollout step", "nn.Sequential(Linear, Tanh, Linear, Tanh, Linear)(obs)",
         torch.inference_mode()(lambda: sequential(step_obs)), torch.inference_mode()(lambda: policy.actor(step_obs))),
        ("lstm_step", "rollout step (LSTM policies only)", "lstm(x[None], (h[None], c[None]))",
         torch.inference_mode()(lambda: lstm(lstm_x[None], (state[0][None], state[1][None]))),
         torch.inference_mode()(lambda: fast.lstm_step(lstm, lstm_x, state))),
        ("values after the rollout", "rollout", "the critic at each of 128 steps",
         torch.inference_mode()(per_step_values),
         torch.inference_mode()(lambda: policy.get_value(rollout_obs.flatten(0, 1)))),
    ]


def compile_pair() -> tuple[float, object, object]:
    """--ppo.compile: (seconds of the compiled loss's first call, eager fn, compiled fn), each fn the PPO
    minibatch loss's forward and backward pass on the default run's minibatch of 128 samples."""
    torch.manual_seed(0)
    policy = MLPPolicy(spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=2.5e-4, eps=1e-5)
    minibatch = (torch.randn(128, 4), torch.randint(0, 2, (128, 1)), torch.randn(128) - 0.7, torch.randn(128),
                 torch.randn(128), torch.randn(128))  # obs, actions, old log-probabilities, advantages, returns, values

    def loss_backward(ppo: PPOOptimizer):
        def run():
            ppo.loss_and_outputs(*minibatch)[0].total_loss.backward()
        return run

    eager = loss_backward(PPOOptimizer(policy, optimizer, "cpu", PPOConfig()))
    compiled = loss_backward(PPOOptimizer(policy, optimizer, "cpu", PPOConfig(compile=True)))
    start = time.perf_counter()
    with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():  # from scratch,
        warnings.filterwarnings("ignore", "dynamo_pgo force disabled")  # as on a first run (which warns of it)
        compiled()
    return time.perf_counter() - start, eager, compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--compile", action="store_true", help="also time --ppo.compile's minibatch loss")
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/speed_tricks_<date-time>.json")
    args = parser.parse_args()
    args.out = compare.result_path("speed_tricks", args.out)
    torch.set_num_threads(1)
    results = {"torch": torch.__version__, "repeats": args.repeats, "calls": args.calls, "pairs": []}
    pairs_to_time = pairs()
    if args.compile:
        results["compile_first_call_s"], eager, compiled = compile_pair()
        print(f"--ppo.compile: the first call of the compiled loss (compilation) took "
              f"{results['compile_first_call_s']:.1f} s")
        pairs_to_time.append(("ppo.compile", "minibatch (opt-in)", "the eager minibatch loss, forward and backward",
                              eager, compiled))
    print(f"{'trick':26s} {'plain us':>9s} {'trick us':>9s} {'saved us':>9s} {'per run s':>9s}  plain call")
    for name, unit, plain_call, plain, trick in pairs_to_time:
        calls = max(args.calls // 16, 20) if unit == "rollout" else args.calls
        times: dict[str, list[float]] = {"plain": [], "trick": []}
        for repeat in range(args.repeats):
            order = [("plain", plain), ("trick", trick)]
            for side, fn in order if repeat % 2 == 0 else order[::-1]:
                times[side].append(per_call_us(fn, calls))
        plain_us, trick_us = statistics.median(times["plain"]), statistics.median(times["trick"])
        runs = CALLS_PER_RUN.get(unit)  # None: not on the default run's path
        per_run = None if runs is None else (plain_us - trick_us) * runs / 1e6
        shown = "-" if per_run is None else f"{per_run:.2f}"
        print(f"{name:26s} {plain_us:9.1f} {trick_us:9.1f} {plain_us - trick_us:9.1f} {shown:>9s}  {plain_call}")
        results["pairs"].append({"name": name, "called once per": unit, "plain": plain_call, "plain_us": plain_us,
                                 "trick_us": trick_us, "saved_s_per_default_run": per_run, "times_us": times})
        compare.write_result(args.out, results)
    print(f"results: {os.path.relpath(args.out, compare.ROOT)}")


if __name__ == "__main__":
    main()
