"""PPOOptimizer: PPO's update, the clipped objective minimised over epochs of shuffled minibatches.

PPOOptimizer is not a torch optimiser: it owns PPO's update and calls the torch optimiser it is
given (trainer.make_optimizer's Adam) once per minibatch; the name is Metta's. The learning-rate
schedule belongs to the caller (train.py sets the rate before each update).

The default run's update is `update` read top to bottom:
1. GAE advantages and returns over the rollout (experience.py), and its valid steps as one flat batch;
2. `update_epochs` passes, each a new shuffle cut into `num_minibatches` minibatches (`minibatches`);
3. on each minibatch the PPO loss (`compute_ppo_loss`, then `ppo_objective`: advantages normalised
   in the minibatch, clipped surrogate, clipped value loss, entropy bonus) plus every custom loss,
   then zero_grad, backward, the global grad-norm clip and the optimiser step (fast.py's versions
   of the plain torch calls, which the comments name);
4. an early stop when approx_kl passes ppo.target_kl (off by default); the mean losses returned.

A custom loss is any callable `fn(policy, obs, actions, rewards, values, advantages) -> scalar
tensor` over the minibatch (values are the rollout's value estimates, advantages the raw GAE
advantages); it is added to the PPO loss and its value reported under its `__name__`. A loss that
also declares a parameter `outputs` gets what the PPO pass computed on the minibatch
(`PolicyOutputs`: new log-probabilities, entropy, values and the distribution's parameters), so
that e.g. a penalty on the logits costs no second forward pass.

Beside the default path, each a named step that `update` takes only when it is switched on:
- Recurrent policies (agent.lstm_size > 0), V-trace (ppo.vtrace) and prioritized minibatches
  (ppo.prio_alpha > 0) train on whole segments: each agent's rollout cut into
  trainer.bptt_horizon steps (experience.py); a minibatch is then some segments, and the losses
  see their valid steps (`Minibatch`).
- Recurrent policies: the LSTM is replayed over the minibatch's segments from their stored start
  states (lstm.SegmentReplay), which the PPO loss and custom losses receive as `policy`.
- V-trace (`vtrace_loss`): the advantages and returns recomputed on every minibatch with the
  current policy's importance ratios (`vtrace`, experience.discounted_advantages).
- Prioritized minibatches (`segment_priorities`): segments drawn by the size of their advantages,
  their advantages weighted by importance weights whose exponent `update(..., progress)` anneals.
- torchrun (distributed.py): the lines marked "torchrun" average the gradients over all processes,
  normalise advantages with all processes' statistics (ppo.global_adv_norm), let target_kl compare
  the processes' mean approx_kl and report means over all processes. In one process they do nothing.
- ppo.compile and ppo.bf16 wrap `compute_ppo_loss` (torch.compile; torch.autocast to bfloat16).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from cleanmetta import distributed
from cleanmetta.config import ConfigError, PPOConfig
from cleanmetta.experience import Batch, Experience, discounted_advantages
from cleanmetta.fast import add_scaled, clip_grad_norm, optimizer_step, zero_grad
from cleanmetta.imports import asks_for
from cleanmetta.lstm import SegmentReplay

CustomLoss = Callable[..., torch.Tensor]
AdvantageStats = tuple[torch.Tensor, torch.Tensor]  # the mean and std to normalise advantages with


class PPOLosses(NamedTuple):
    """total_loss = policy_loss - ent_coef * entropy_loss + vf_coef * value_loss."""

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy_loss: torch.Tensor  # mean entropy of the current policy (a bonus: it is subtracted)
    total_loss: torch.Tensor
    approx_kl: torch.Tensor     # E[(ratio - 1) - log ratio], no gradient
    clipfrac: torch.Tensor      # fraction of samples with |ratio - 1| > clip_coef, no gradient


class PolicyOutputs(NamedTuple):
    """What the PPO pass computed on a minibatch, given to the custom losses that ask for `outputs`."""

    logprobs: torch.Tensor       # [N] log-probabilities of the stored actions under the current policy
    entropy: torch.Tensor        # [N]
    values: torch.Tensor         # [N] the current critic's values
    params: torch.Tensor | None  # [N, outputs] the distribution's parameters (logits, or Gaussian means);
                                 # None from a network that exposes none (protocol.NetworkPolicy)


def score_actions(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> PolicyOutputs:
    """The policy's one forward pass on a minibatch: `evaluate_actions` (networks.Policy's), or for any
    module with CleanRL's get_action_and_value only, that (params None)."""
    if hasattr(policy, "evaluate_actions"):
        return PolicyOutputs(*policy.evaluate_actions(obs, actions))
    _, logprobs, entropy, values = policy.get_action_and_value(obs, actions)
    return PolicyOutputs(logprobs, entropy, values, None)


class Minibatch(NamedTuple):
    """One optimiser step's samples, flat `[N, ...]`. On the default path that is all; the extras
    that train on whole segments also keep the `segments` the samples are the valid steps of,
    prioritized sampling each sample's importance weight, and torchrun the advantages' mean and
    std over all processes."""

    samples: Batch
    segments: Batch | None = None
    weights: torch.Tensor | None = None
    adv_stats: AdvantageStats | None = None


def loss_name(fn: CustomLoss) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, <= 0 no better than a constant."""
    var_returns = returns.var()
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var() / var_returns)


class PPOOptimizer:
    def __init__(self, policy: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 config: PPOConfig | None = None):
        self.policy, self.optimizer = policy, optimizer
        self.device = torch.device(device)
        self.config = config if config is not None else PPOConfig()
        # ppo.compile: the forward pass and the objective fused by torch.compile (dynamic shapes: the
        # number of valid samples varies per rollout). ppo.bf16: the same under torch.autocast.
        loss = torch.compile(self.loss_and_outputs, dynamic=True) if self.config.compile else self.loss_and_outputs
        self.minibatch_loss = torch.autocast(self.device.type, dtype=torch.bfloat16)(loss) if self.config.bf16 else loss

    def update(self, experience: Experience, custom_loss_fns: Sequence[CustomLoss] = (),
               progress: float = 0.0) -> dict[str, float]:
        """PPO's update on one rollout: `update_epochs` x `num_minibatches` optimiser steps; returns the
        mean losses and diagnostics. `progress` (the fraction of training done, 0 to 1) anneals
        prioritized sampling's importance-weight exponent from ppo.prio_beta0 to 1."""
        cfg = self.config
        experience.compute_advantages(cfg.gamma, cfg.gae_lambda)  # GAE: advantages and returns [T, B]
        # recurrent policies, V-trace and prioritized minibatches train on whole segments of each agent's rollout
        segmented = experience.lstm_size > 0 or cfg.vtrace or cfg.prio_alpha > 0
        batch = experience.batch(segments=segmented)  # the valid steps [N, ...]; or segments [S, L, ...]
        names = ["policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"]
        names += [loss_name(fn) for fn in custom_loss_fns]
        if len(set(names)) != len(names):
            raise ValueError(f"custom losses need distinct names that differ from the PPO terms, got {names[5:]}")
        fed = [asks_for(fn, "outputs") for fn in custom_loss_fns]  # the losses that read the PPO pass's outputs
        check_minibatches_on_every_process(batch, cfg.num_minibatches, segmented)  # torchrun
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        priorities = None
        if cfg.prio_alpha > 0:  # prioritized: each segment's probability and importance weight, beta annealed
            priorities = segment_priorities(batch, cfg.prio_alpha, cfg.prio_beta0 + (1 - cfg.prio_beta0) * progress)
        history: list[torch.Tensor] = []  # per minibatch: the reported terms, stacked once at the end
        counts: list[int] = []  # per minibatch: its samples, which weigh its terms over processes (torchrun)

        for epoch in range(cfg.update_epochs):
            for mb, segments, weights, adv_stats in self.minibatches(batch, segmented, priorities):
                policy = self.policy
                if experience.lstm_size > 0:  # recurrent: the LSTM replayed over the minibatch's segments
                    policy = SegmentReplay(self.policy, segments, mb.obs)
                if cfg.vtrace:  # V-trace: the advantages follow from the current policy's ratios
                    losses, outputs = self.vtrace_loss(policy, mb, segments, weights)
                else:
                    losses, outputs = self.minibatch_loss(mb.obs, mb.actions, mb.logprobs, mb.advantages, mb.returns,
                                                          mb.values, policy=policy, weights=weights,
                                                          adv_stats=adv_stats)
                custom = [scalar(fn(policy, mb.obs, mb.actions, mb.rewards, mb.values, mb.advantages,
                                    **({"outputs": outputs} if wants else {})), name)
                          for fn, wants, name in zip(custom_loss_fns, fed, names[5:])]
                loss = sum(custom, start=losses.total_loss)
                if not torch.isfinite(loss):
                    raise not_finite_error(losses, dict(zip(names[5:], custom)))

                zero_grad(params)  # = self.optimizer.zero_grad()
                loss.backward()
                counts.append(len(mb.advantages))
                distributed.average_gradients(params, samples=counts[-1])  # torchrun: weighted by samples
                clip_grad_norm(params, cfg.max_grad_norm)  # = nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer_step(self.optimizer)  # = self.optimizer.step()
                history += [losses.policy_loss.detach(), losses.value_loss.detach(), losses.entropy_loss.detach(),
                            losses.approx_kl, losses.clipfrac, *(value.detach() for value in custom)]
            # torchrun: approx_kl's mean over all processes, so that they all stop at the same epoch
            if cfg.target_kl is not None and float(distributed.weighted_mean(
                    losses.approx_kl.view(1), torch.tensor([counts[-1]]))) > cfg.target_kl:
                break

        # each term's mean over the minibatches (torchrun: per minibatch, over all processes' samples first)
        means = distributed.weighted_mean(torch.stack(history).view(-1, len(names)), torch.tensor(counts)).mean(0)
        stats = dict(zip(names, means.tolist()))
        samples = batch.valid_steps() if segmented else batch
        obs_norm = getattr(self.policy, "obs_norm", None)
        if obs_norm is not None:  # agent.normalize_obs: updated after, so the update saw what the rollout saw
            obs_norm.update(samples.obs.flatten(1))
        stats["explained_variance"] = explained_variance(samples.values, samples.returns)
        return stats

    def minibatches(self, batch: Batch, segmented: bool = False,
                    priorities: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Minibatch]:
        """One epoch's minibatches: the batch in a new random order, cut into ppo.num_minibatches parts
        of nearly equal size (none empty). A batch of segments is cut into segments, and each
        minibatch's samples are their valid steps. With `priorities` (segment_priorities: each
        segment's probability and importance weight) the segments are drawn by priority instead."""
        cfg = self.config
        n = batch.obs.shape[0]  # samples, or segments
        edges = [round(i * n / cfg.num_minibatches) for i in range(cfg.num_minibatches + 1)]
        parts = [slice(start, end) for start, end in zip(edges[:-1], edges[1:]) if end > start]
        if priorities is None:
            order = torch.randperm(n, device=self.device)  # every sample once an epoch
        else:  # prioritized: n draws with replacement (the importance weights assume each has probability p)
            order = torch.multinomial(priorities[0], n, replacement=True)
        shuffled = batch.select(order)  # one gather, then views
        if segmented:
            weights = None if priorities is None else priorities[1][order]
            minibatches = [segment_minibatch(shuffled.select(part), None if weights is None else weights[part])
                           for part in parts]
        else:
            minibatches = [Minibatch(shuffled.select(part)) for part in parts]
        if self.normalizes_over_processes() and not cfg.vtrace:
            # torchrun: each minibatch's advantages normalised with all processes' statistics (one all-reduce)
            means, stds = distributed.mean_std([mb.samples.advantages for mb in minibatches])
            minibatches = [mb._replace(adv_stats=(mean, std)) for mb, mean, std in zip(minibatches, means, stds)]
        return minibatches

    def normalizes_over_processes(self) -> bool:
        """torchrun with ppo.global_adv_norm: advantages normalised with all processes' statistics."""
        return self.config.norm_adv and self.config.global_adv_norm and distributed.world_size() > 1

    def compute_ppo_loss(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
                         policy: nn.Module | None = None, weights: torch.Tensor | None = None,
                         adv_stats: AdvantageStats | None = None) -> PPOLosses:
        """The PPO loss on one minibatch: the policy's log-probabilities of the stored `actions`, its
        entropy and values, then `ppo_objective`. `old_logprobs` and `values` are the rollout's.
        `policy` scores the actions (self.policy by default; update() passes a recurrent policy's
        SegmentReplay of the minibatch); `weights` and `adv_stats` are as in ppo_objective."""
        return self.loss_and_outputs(obs, actions, old_logprobs, advantages, returns, values, policy, weights,
                                     adv_stats)[0]

    def loss_and_outputs(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
                         policy: nn.Module | None = None, weights: torch.Tensor | None = None,
                         adv_stats: AdvantageStats | None = None) -> tuple[PPOLosses, PolicyOutputs]:
        """compute_ppo_loss, and the policy's outputs it was computed from (for the custom losses)."""
        outputs = score_actions(policy if policy is not None else self.policy, obs, actions)
        losses = self.ppo_objective(outputs.logprobs, outputs.entropy, outputs.values, old_logprobs, advantages,
                                    returns, values, weights, adv_stats)
        return losses, outputs

    def ppo_objective(self, new_logprobs: torch.Tensor, entropy: torch.Tensor, new_values: torch.Tensor,
                      old_logprobs: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
                      values: torch.Tensor, weights: torch.Tensor | None = None,
                      adv_stats: AdvantageStats | None = None) -> PPOLosses:
        """PPO's clipped objective from the policy's outputs on the minibatch. With ppo.norm_adv the
        advantages are normalised with the minibatch's own mean and std, or with `adv_stats` (torchrun:
        all processes'); `weights` (prioritized sampling's importance weights) multiply them after."""
        cfg = self.config
        log_ratio = new_logprobs - old_logprobs
        ratio = log_ratio.exp()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()

        if cfg.norm_adv and (adv_stats is not None or advantages.numel() > 1):
            mean, std = adv_stats if adv_stats is not None else (advantages.mean(), advantages.std())
            advantages = (advantages - mean) / (std + 1e-8)
        if weights is not None:
            advantages = advantages * weights
        policy_loss = torch.max(-advantages * ratio,
                                -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()

        value_loss = (new_values - returns).pow(2)
        if cfg.clip_vloss:  # the value kept within clip_coef of the rollout's: values + (new - values).clamp(-c, c)
            clipped_values = new_values.clamp(values - cfg.clip_coef, values + cfg.clip_coef)
            value_loss = torch.max(value_loss, (clipped_values - returns).pow(2))
        value_loss = 0.5 * value_loss.mean()

        entropy_loss = entropy.mean()
        # = policy_loss - ent_coef * entropy_loss + vf_coef * value_loss
        total_loss = add_scaled(policy_loss, (-cfg.ent_coef, entropy_loss), (cfg.vf_coef, value_loss))
        return PPOLosses(policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac)

    def vtrace_loss(self, policy: nn.Module, mb: Batch, segments: Batch, weights: torch.Tensor | None
                    ) -> tuple[PPOLosses, PolicyOutputs]:
        """The PPO loss with V-trace advantages and returns (ppo.vtrace): the policy's outputs first,
        since the advantages depend on its importance ratios, then the same objective."""
        outputs = score_actions(policy, mb.obs, mb.actions)
        advantages, returns = self.vtrace(segments, outputs.logprobs)
        adv_stats = distributed.mean_std([advantages]) if self.normalizes_over_processes() else None  # torchrun
        return self.ppo_objective(outputs.logprobs, outputs.entropy, outputs.values, mb.logprobs, advantages, returns,
                                  mb.values, weights, adv_stats), outputs

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


def segment_priorities(segments: Batch, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prioritized sampling of segments: each one's probability p = |A|^alpha / sum (|A| the sum of
    its valid steps' absolute advantages) and its importance weight (S p)^-beta (S segments), which
    undoes the sampling bias at beta = 1. Segments with no advantage at all keep a small chance."""
    magnitude = (segments.advantages.abs() * segments.mask).sum(1)
    priority = torch.nan_to_num(magnitude.pow(alpha), nan=0.0, posinf=0.0) + 1e-6
    probs = priority / priority.sum()
    return probs, (len(probs) * probs).pow(-beta)


def segment_minibatch(segments: Batch, segment_weights: torch.Tensor | None = None) -> Minibatch:
    """A minibatch of segments: their valid steps as the samples, and each step's importance weight
    from its segment's (prioritized sampling)."""
    weights = None
    if segment_weights is not None:
        weights = segment_weights[:, None].expand_as(segments.mask)[segments.mask.bool()]
    return Minibatch(segments.valid_steps(), segments, weights)


def check_minibatches_on_every_process(batch: Batch, num_minibatches: int, segmented: bool) -> None:
    """torchrun: every process must run every minibatch (each one all-reduces its gradients), so each
    needs at least num_minibatches samples (segments). Nothing in one process."""
    if distributed.world_size() == 1:
        return
    fewest = int(distributed.all_reduce(torch.tensor(batch.obs.shape[0]), distributed.ReduceOp.MIN))
    if fewest < num_minibatches:
        raise ValueError(f"a process has {fewest} {'segments' if segmented else 'valid samples'}, fewer than "
                         f"ppo.num_minibatches={num_minibatches}; use fewer minibatches or longer rollouts")


def scalar(value: torch.Tensor, name: str) -> torch.Tensor:
    """A custom loss's value, which must be a scalar tensor (one that backward() can start from)."""
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(f"custom loss {name!r} returned {shape}, not a scalar tensor; reduce it, e.g. with .mean()")
    return value


def not_finite_error(losses: PPOLosses, custom: dict[str, torch.Tensor]) -> FloatingPointError:
    """The error for a NaN or infinite loss, naming each term's value and what to try."""
    terms = {"policy_loss": losses.policy_loss, "value_loss": losses.value_loss, "entropy": losses.entropy_loss,
             **custom}
    return FloatingPointError(
        "PPO loss is not finite (" + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        + "); lower trainer.learning_rate, check the env's rewards and observations for NaN/inf, or check the "
        "custom losses")
