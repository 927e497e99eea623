"""PPOOptimizer: the clipped PPO objective and the epochs-by-minibatches update that minimises it.

`compute_ppo_loss` is the objective on one minibatch (usable on its own); `update` computes GAE on
an Experience, then runs `update_epochs` passes of shuffled minibatches, adding every custom loss
to the PPO loss on each minibatch. A custom loss is any callable

    fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor

over the minibatch (values are the rollout's value estimates, advantages the raw GAE advantages);
its value is reported under its `__name__`.

Recurrent policies (policy.LSTMPolicy): the batch is whole segments (experience.py); each minibatch
of segments is replayed through the LSTM from the segments' stored start states, and the losses
see its valid steps only, flattened as for a feedforward policy. The PPO loss and custom losses
then receive a `SegmentReplay` as `policy`: it answers `policy(obs)`, `get_action_and_value(obs,
actions)` and `get_value(obs)` for the minibatch's `obs` from the replay, so autoreset steps count
in no loss or gradient and a custom loss needs no change to train a recurrent policy.

Two of Metta's additions, both off by default, work on minibatches of whole segments (each agent's
rollout cut into trainer.bptt_horizon steps, experience.py), for any policy:
- V-trace (ppo.vtrace): on every minibatch the advantages and returns are recomputed from the stored
  rewards, values and dones with the current policy's importance ratios, clipped by vtrace_rho_clip
  and vtrace_c_clip (experience.discounted_advantages); past a segment's end the rollout's GAE
  stands. While the policy is still the rollout's (ratio 1) this is GAE.
- Prioritized minibatches (ppo.prio_alpha > 0): segments are drawn with probability p proportional
  to (sum of |advantage| over the segment)^alpha, and their normalised advantages multiplied by the
  importance weight (S p)^-beta, beta annealed from ppo.prio_beta0 to 1 by `update(..., progress)`.
  With alpha 0 the update is the uniform shuffle it always was.

Under torchrun (distributed.py) each process updates on its own rollout and the processes stay one
policy: after every backward pass the gradients are averaged over all processes, minibatch
advantages are normalised with the statistics of all processes' minibatches (ppo.global_adv_norm),
target_kl compares the processes' mean approx_kl, and the reported losses are means over processes.

This module owns the objective and the optimiser steps; the optimiser and its learning rate
schedule belong to the caller.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn
from torch.optim.adam import adam as functional_adam

from cleanmetta import distributed
from cleanmetta.config import PPOConfig
from cleanmetta.experience import Batch, Experience, discounted_advantages
from cleanmetta.policy import SegmentReplay

CustomLoss = Callable[..., torch.Tensor]


class PPOLosses(NamedTuple):
    """total_loss = policy_loss - ent_coef * entropy_loss + vf_coef * value_loss."""

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy_loss: torch.Tensor  # mean entropy of the current policy (a bonus: it is subtracted)
    total_loss: torch.Tensor
    approx_kl: torch.Tensor     # E[(ratio - 1) - log ratio], no gradient
    clipfrac: torch.Tensor      # fraction of samples with |ratio - 1| > clip_coef, no gradient


def loss_name(fn: CustomLoss) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, <= 0 no better than a constant."""
    var_returns = returns.var()
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var() / var_returns)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale the gradients together so that their global L2 norm is at most max_norm.

    The arithmetic of nn.utils.clip_grad_norm_ in three foreach calls: on a small network the
    library version's per-call bookkeeping costs as much as the arithmetic (~60 us a minibatch).
    """
    grads = [p.grad for p in params if p.grad is not None]
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total_norm + 1e-6)).clamp(max=1.0))


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.step(); for a fused single-group Adam (what trainer.make_optimizer builds), the same
    fused kernel called through torch's functional `adam`, skipping Optimizer.step's per-call
    bookkeeping over every parameter: ~90 us a minibatch, ~6% of CartPole's update. A test checks
    that both give identical parameters and optimiser state."""
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


class PPOOptimizer:
    def __init__(self, policy: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 config: PPOConfig | None = None):
        self.policy, self.optimizer = policy, optimizer
        self.device = torch.device(device)
        self.config = config if config is not None else PPOConfig()
        # ppo.compile: the forward pass and PPO objective fused by torch.compile (dynamic minibatch
        # sizes: the number of valid samples varies per rollout). On CartPole's update, 1.44 -> 1.03 ms
        # a CPU minibatch after ~18 s of compiling; a 1M-step CartPole run took 111.5 -> 104.8 s.
        minibatch_loss = (torch.compile(self.compute_ppo_loss, dynamic=True) if self.config.compile
                          else self.compute_ppo_loss)
        # ppo.bf16: the loss's forward pass under torch.autocast in bfloat16 (matrix products and convolutions
        # in bf16; parameters, gradients and Adam stay float32). Atari's Nature CNN minibatch of 256 frames:
        # 128 -> 84 ms on a 2-core CPU with AVX512-BF16.
        self.minibatch_loss = (torch.autocast(self.device.type, dtype=torch.bfloat16)(minibatch_loss)
                               if self.config.bf16 else minibatch_loss)

    def compute_ppo_loss(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
                         normalize_advantages: bool = True, policy: nn.Module | None = None,
                         weights: torch.Tensor | None = None) -> PPOLosses:
        """The PPO loss on one minibatch; `values` are the rollout's (old) value estimates. With
        ppo.norm_adv the advantages are normalised here unless `normalize_advantages` is False
        (the caller already has, as update() does with all processes' statistics under torchrun).
        `policy` scores the actions: self.policy by default; update() passes a recurrent policy's
        SegmentReplay of the minibatch. `weights` (prioritized sampling's importance weights)
        multiply the advantages after normalisation."""
        policy = policy if policy is not None else self.policy
        _, new_logprobs, entropy, new_values = policy.get_action_and_value(obs, actions)
        return self.ppo_objective(new_logprobs, entropy, new_values, old_logprobs, advantages, returns, values,
                                  normalize_advantages, weights)

    def ppo_objective(self, new_logprobs: torch.Tensor, entropy: torch.Tensor, new_values: torch.Tensor,
                      old_logprobs: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
                      values: torch.Tensor, normalize_advantages: bool = True,
                      weights: torch.Tensor | None = None) -> PPOLosses:
        """compute_ppo_loss from the policy's outputs on the minibatch (its logprobs of the stored
        actions, entropy and values): for callers that need the outputs first, as V-trace does."""
        cfg = self.config
        log_ratio = new_logprobs - old_logprobs
        ratio = log_ratio.exp()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()

        if cfg.norm_adv and normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        if weights is not None:
            advantages = advantages * weights
        policy_loss = torch.max(-advantages * ratio,
                                -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()

        value_error = (new_values - returns).pow(2)
        if cfg.clip_vloss:  # = values + (new_values - values).clamp(-clip, clip), in one op
            clipped_values = new_values.clamp(values - cfg.clip_coef, values + cfg.clip_coef)
            value_error = torch.max(value_error, (clipped_values - returns).pow(2))
        value_loss = 0.5 * value_error.mean()

        entropy_loss = entropy.mean()
        # policy_loss - ent_coef * entropy_loss + vf_coef * value_loss, two ops fewer: each op in
        # the graph costs its forward and backward call, the main cost of a small network's update.
        total_loss = policy_loss.sub(entropy_loss, alpha=cfg.ent_coef).add(value_loss, alpha=cfg.vf_coef)
        return PPOLosses(policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac)

    def vtrace(self, segments: Batch, new_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V-trace advantages and returns of a minibatch's valid steps, recomputed over its whole
        segments with the current policy's importance ratios (`new_logprobs` of the valid steps);
        the steps after each segment keep the rollout's advantages (`tail_advantages`)."""
        cfg = self.config
        valid = segments.mask.bool()
        ratio = torch.ones_like(segments.values)  # autoreset steps: 1 (their advantages reach no valid step)
        ratio[valid] = (new_logprobs.detach() - segments.logprobs[valid]).exp()
        advantages = discounted_advantages(
            segments.rewards.T, segments.values.T, segments.next_values.T, segments.terminals.T, segments.dones.T,
            cfg.gamma, cfg.gae_lambda, ratio.T, cfg.vtrace_rho_clip, cfg.vtrace_c_clip, segments.tail_advantages).T
        advantages = advantages[valid]
        return advantages, advantages + segments.values[valid]

    def update(self, experience: Experience, custom_loss_fns: Sequence[CustomLoss] = (),
               progress: float = 0.0) -> dict[str, float]:
        """Advantages, then `update_epochs` x `num_minibatches` optimiser steps; returns mean losses
        and diagnostics. `progress` (the fraction of training done, 0 to 1) anneals prioritized
        sampling's importance-weight exponent from ppo.prio_beta0 to 1."""
        cfg = self.config
        experience.compute_advantages(cfg.gamma, cfg.gae_lambda)
        # minibatches of whole segments: for an LSTM's replay, for V-trace, and for prioritized sampling
        segmented = experience.lstm_size > 0 or cfg.vtrace or cfg.prio_alpha > 0
        batch = experience.batch(segments=segmented)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        names = ["policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"] + [loss_name(f) for f in custom_loss_fns]
        if len(set(names)) != len(names):
            raise ValueError(f"custom losses need distinct names that differ from the PPO terms, got {names[5:]}")
        history: list[torch.Tensor] = []  # per minibatch: the reported terms, stacked once at the end
        counts: list[int] = []  # per minibatch: its samples, which weigh its terms over processes

        recurrent = experience.lstm_size > 0  # segments [S, L, ...] replayed through the LSTM (experience.py)
        n = batch.obs.shape[0]  # samples, or segments
        edges = [round(i * n / cfg.num_minibatches) for i in range(cfg.num_minibatches + 1)]
        global_adv_norm = cfg.norm_adv and cfg.global_adv_norm and distributed.world_size() > 1
        if distributed.world_size() > 1:  # every process must run every minibatch: each one all-reduces
            fewest = int(distributed.all_reduce(torch.tensor(n), distributed.ReduceOp.MIN))
            if fewest < cfg.num_minibatches:
                raise ValueError(f"a process has {fewest} {'segments' if segmented else 'valid samples'}, fewer "
                                 f"than ppo.num_minibatches={cfg.num_minibatches}; use fewer minibatches or longer "
                                 "rollouts")
        if cfg.prio_alpha > 0:  # prioritized sampling (Schaul et al. 2016), over segments
            probs, segment_weights = segment_priorities(batch, cfg.prio_alpha,
                                                        cfg.prio_beta0 + (1 - cfg.prio_beta0) * progress)
        for _ in range(cfg.update_epochs):
            if cfg.prio_alpha > 0:  # each segment of each minibatch drawn by priority (with replacement: the
                # weights (S p)^-beta assume every draw has probability p)
                picks = [torch.multinomial(probs, end - start, replacement=True) for start, end in zip(edges[:-1], edges[1:])]
                minibatches = [batch.select(pick) for pick in picks]
            else:
                shuffled = batch.select(torch.randperm(n, device=self.device))  # one gather per epoch, then slices
                minibatches = [shuffled.select(slice(start, end)) for start, end in zip(edges[:-1], edges[1:])
                               if end > start]  # none empty unless there are fewer samples than minibatches
            # what the losses see: the samples, or the segments' valid steps
            samples = [mb.valid_steps() for mb in minibatches] if segmented else minibatches
            if global_adv_norm and not cfg.vtrace:  # torchrun: each minibatch's mean and std over all processes
                adv_mean, adv_std = distributed.mean_std([mb.advantages for mb in samples])  # one all-reduce
            for i, (segments, mb) in enumerate(zip(minibatches, samples)):
                policy = self.policy
                if recurrent:  # the LSTM replayed over the minibatch's segments, from their start states
                    policy = SegmentReplay(self.policy, segments, mb.obs)
                weights = None
                if cfg.prio_alpha > 0:  # each step weighted by its segment's importance weight
                    weights = segment_weights[picks[i]][:, None].expand_as(segments.mask)[segments.mask.bool()]
                advantages, returns = mb.advantages, mb.returns
                if cfg.vtrace:  # the policy's outputs first: the advantages depend on its ratios
                    _, new_logprobs, entropy, new_values = policy.get_action_and_value(mb.obs, mb.actions)
                    advantages, returns = self.vtrace(segments, new_logprobs)
                if global_adv_norm:
                    mean, std = (adv_mean[i], adv_std[i]) if not cfg.vtrace else distributed.mean_std([advantages])
                    advantages = (advantages - mean) / (std + 1e-8)
                if cfg.vtrace:
                    losses = self.ppo_objective(new_logprobs, entropy, new_values, mb.logprobs, advantages, returns,
                                                mb.values, not global_adv_norm, weights)
                else:
                    losses = self.minibatch_loss(mb.obs, mb.actions, mb.logprobs, advantages, returns, mb.values,
                                                 normalize_advantages=not global_adv_norm, policy=policy,
                                                 weights=weights)
                loss = losses.total_loss
                custom_values = []
                for fn in custom_loss_fns:
                    value = fn(policy, mb.obs, mb.actions, mb.rewards, mb.values, mb.advantages)
                    loss = loss + value
                    custom_values.append(value.detach())
                if not torch.isfinite(loss):
                    terms = {"policy_loss": losses.policy_loss, "value_loss": losses.value_loss,
                             "entropy": losses.entropy_loss, **dict(zip(names[5:], custom_values))}
                    raise FloatingPointError(
                        "PPO loss is not finite ("
                        + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                        + "); lower trainer.learning_rate, check the env's rewards and observations for "
                        "NaN/inf, or check the custom losses")

                for p in params:  # optimizer.zero_grad(set_to_none=True), minus its per-call overhead
                    p.grad = None
                loss.backward()
                counts.append(len(mb.advantages))
                # torchrun: one all-reduce, each rank's gradient weighted by its samples; nothing in one process
                distributed.average_gradients(params, samples=counts[-1])
                clip_grad_norm(params, cfg.max_grad_norm)
                optimizer_step(self.optimizer)

                history += [losses.policy_loss.detach(), losses.value_loss.detach(), losses.entropy_loss.detach(),
                            losses.approx_kl, losses.clipfrac, *custom_values]
            # torchrun: the processes compare approx_kl over all their samples, so that they stop at the same epoch
            if cfg.target_kl is not None and float(distributed.weighted_mean(
                    losses.approx_kl.view(1), torch.tensor([counts[-1]]))) > cfg.target_kl:
                break

        # per minibatch, the terms' means over all processes' samples (torchrun); then the mean over minibatches
        means = distributed.weighted_mean(torch.stack(history).view(-1, len(names)), torch.tensor(counts)).mean(0)
        stats = dict(zip(names, means.tolist()))
        if segmented:
            batch = batch.valid_steps()
        obs_norm = getattr(self.policy, "obs_norm", None)
        if obs_norm is not None:  # after the update, so that it scored actions as the rollout saw them
            obs_norm.update(batch.obs.flatten(1))
        stats["explained_variance"] = explained_variance(batch.values, batch.returns)
        return stats


def segment_priorities(segments: Batch, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prioritized sampling of segments: each one's probability p = |A|^alpha / sum (|A| the sum of
    its valid steps' absolute advantages) and its importance weight (S p)^-beta (S segments), which
    undoes the sampling bias at beta = 1. Segments with no advantage at all keep a small chance."""
    magnitude = (segments.advantages.abs() * segments.mask).sum(1)
    priority = torch.nan_to_num(magnitude.pow(alpha), nan=0.0, posinf=0.0) + 1e-6
    probs = priority / priority.sum()
    return probs, (len(probs) * probs).pow(-beta)
