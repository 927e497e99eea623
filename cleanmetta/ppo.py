"""PPOOptimizer: PPO's update, the clipped objective minimised over epochs of shuffled minibatches.

PPOOptimizer is not a torch optimiser: it owns PPO's update and calls the torch optimiser it is
given (optimizers.make_optimizer's Adam) once per minibatch; the name is Metta's. The learning-rate
schedule belongs to the caller (train.py sets the rate before each update).

The default run's update is `PPOOptimizer.update` read top to bottom, with no branch but the lines
marked "torchrun":
1. GAE advantages and returns over the rollout (experience.py), and its valid steps as one flat batch;
2. `update_epochs` passes, each a new shuffle cut into `num_minibatches` minibatches (`minibatches`);
3. on each minibatch the PPO loss (`loss_and_outputs`: the policy's one forward pass, then
   `ppo_objective`: advantages normalised in the minibatch, clipped surrogate, clipped value loss,
   entropy bonus) plus every custom loss, then `optimize`: zero_grad, backward, the global
   grad-norm clip and the optimiser step (fast.py's versions of the plain torch calls, which the
   comments name);
4. an early stop when approx_kl passes ppo.target_kl (off by default); the mean losses returned.
`compute_ppo_loss` is Metta's name for the loss alone.

A custom loss is any callable `fn(policy, obs, actions, rewards, values, advantages) -> scalar
tensor` over the minibatch (values are the rollout's value estimates, advantages the raw GAE
advantages); it is added to the PPO loss and its value reported under its `__name__`. A loss that
also declares a parameter `outputs` gets what the PPO pass computed on the minibatch
(`PolicyOutputs`: new log-probabilities, entropy, values and the distribution's parameters), so
that e.g. a penalty on the logits costs no second forward pass.

Chosen once, when the optimiser is built, never inside the default path:
- `SegmentPPOOptimizer` (at the end of this file), which `PPOOptimizer(...)` builds instead for a
  recurrent policy (agent.lstm_size > 0), V-trace (ppo.vtrace) or prioritized minibatches
  (ppo.prio_alpha > 0): these train on whole segments of each agent's rollout
  (trainer.bptt_horizon steps, experience.py). The LSTM is replayed over a minibatch's segments
  from their stored start states (lstm.SegmentReplay, which the losses receive as `policy`);
  V-trace recomputes each minibatch's advantages with the current policy's importance ratios
  (`vtrace`); prioritized sampling draws segments by the size of their advantages and weights them
  (`segment_priorities`), its exponent annealed by `update(..., progress)`.
- ppo.compile and ppo.bf16 replace `loss_and_outputs` by its torch.compile'd or bfloat16-autocast
  version (`__init__`).
- torchrun (distributed.py): the lines marked "torchrun" average the gradients over all processes,
  normalise advantages with all processes' statistics (ppo.global_adv_norm), let target_kl compare
  the processes' mean approx_kl and report means over all processes. In one process they do nothing.
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


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, <= 0 no better than a constant."""
    var_returns = returns.var()
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var() / var_returns)


class PPOOptimizer:
    def __new__(cls, policy: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                config: PPOConfig | None = None):
        # recurrent policies, V-trace and prioritized minibatches train on segments: SegmentPPOOptimizer
        if cls is PPOOptimizer and trains_on_segments(policy, config if config is not None else PPOConfig()):
            cls = SegmentPPOOptimizer
        return super().__new__(cls)

    def __init__(self, policy: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 config: PPOConfig | None = None):
        self.policy, self.optimizer = policy, optimizer
        self.device = torch.device(device)
        self.config = config if config is not None else PPOConfig()
        if self.config.compile:  # ppo.compile: the forward pass and the objective fused (dynamic: N varies)
            self.loss_and_outputs = torch.compile(self.loss_and_outputs, dynamic=True)
        if self.config.bf16:  # ppo.bf16: the same under torch.autocast to bfloat16
            self.loss_and_outputs = torch.autocast(self.device.type, dtype=torch.bfloat16)(self.loss_and_outputs)

    def update(self, experience: Experience, custom_loss_fns: Sequence[CustomLoss] = (),
               progress: float = 0.0) -> dict[str, float]:
        """PPO's update on one rollout: `update_epochs` x `num_minibatches` optimiser steps; returns the
        mean losses and diagnostics. (`progress`, the fraction of training done, is for
        SegmentPPOOptimizer's prioritized sampling.)"""
        cfg = self.config
        experience.compute_advantages(cfg.gamma, cfg.gae_lambda)  # GAE: advantages and returns [T, B]
        batch = experience.batch()  # the rollout's valid steps, flat [N, ...]
        check_minibatches_on_every_process(batch, cfg.num_minibatches, "valid samples")  # torchrun
        custom_losses = CustomLosses(custom_loss_fns)
        history = History(custom_losses)
        for epoch in range(cfg.update_epochs):
            minibatches = self.minibatches(batch)  # a new shuffle, cut into num_minibatches
            adv_stats = self.advantage_stats(minibatches)  # torchrun: all processes' mean and std, else None
            for mb, stats in zip(minibatches, adv_stats):
                losses, outputs = self.loss_and_outputs(mb.obs, mb.actions, mb.logprobs, mb.advantages, mb.returns,
                                                        mb.values, adv_stats=stats)
                custom = custom_losses(self.policy, mb, outputs)
                self.optimize(losses, custom, samples=len(mb.advantages))
                history.add(losses, custom, len(mb.advantages))
            if history.past_target_kl(cfg.target_kl):
                break
        return self.summary(history, batch)

    def minibatches(self, batch: Batch) -> list[Batch]:
        """One epoch's minibatches: the batch in a new random order, cut into ppo.num_minibatches parts
        of nearly equal size (none empty)."""
        order = torch.randperm(len(batch.obs), device=self.device)  # every sample once an epoch
        shuffled = batch.select(order)  # one gather, then views
        return [shuffled.select(part) for part in parts(len(order), self.config.num_minibatches)]

    def advantage_stats(self, minibatches: list[Batch]) -> list[AdvantageStats | None]:
        """torchrun with ppo.global_adv_norm: each minibatch's advantage mean and std over all processes
        (one all-reduce); else None for each (ppo_objective then uses the minibatch's own)."""
        if not self.normalizes_over_processes():
            return [None] * len(minibatches)
        means, stds = distributed.mean_std([mb.advantages for mb in minibatches])
        return list(zip(means, stds))

    def normalizes_over_processes(self) -> bool:
        """torchrun with ppo.global_adv_norm: advantages normalised with all processes' statistics."""
        return self.config.norm_adv and self.config.global_adv_norm and distributed.world_size() > 1

    def optimize(self, losses: PPOLosses, custom: dict[str, torch.Tensor], samples: int) -> None:
        """One optimiser step on the PPO loss plus the custom losses: backward, the global grad-norm clip,
        step. A loss that is not finite stops the run, naming each term."""
        loss = sum(custom.values(), start=losses.total_loss)
        if not torch.isfinite(loss):
            raise not_finite_error(losses, custom)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        zero_grad(params)  # = self.optimizer.zero_grad()
        loss.backward()
        distributed.average_gradients(params, samples=samples)  # torchrun: weighted by samples
        clip_grad_norm(params, self.config.max_grad_norm)  # = nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer_step(self.optimizer)  # = self.optimizer.step()

    def summary(self, history: History, batch: Batch) -> dict[str, float]:
        """The update's statistics: each term's mean over the minibatches, and the critic's explained
        variance on the rollout's valid steps (`batch`: flat samples). agent.normalize_obs's statistics
        take in the rollout's observations now, after the update saw what the rollout saw."""
        stats = history.means()
        obs_norm = getattr(self.policy, "obs_norm", None)
        if obs_norm is not None:
            obs_norm.update(batch.obs.flatten(1))
        stats["explained_variance"] = explained_variance(batch.values, batch.returns)
        return stats

    def compute_ppo_loss(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
                         policy: nn.Module | None = None, weights: torch.Tensor | None = None,
                         adv_stats: AdvantageStats | None = None) -> PPOLosses:
        """The PPO loss on one minibatch (Metta's name): `loss_and_outputs` without the outputs."""
        return self.loss_and_outputs(obs, actions, old_logprobs, advantages, returns, values, policy, weights,
                                     adv_stats)[0]

    def loss_and_outputs(self, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor,
                         advantages: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
                         policy: nn.Module | None = None, weights: torch.Tensor | None = None,
                         adv_stats: AdvantageStats | None = None) -> tuple[PPOLosses, PolicyOutputs]:
        """The PPO loss on one minibatch, and the policy's outputs it was computed from: the policy's
        log-probabilities of the stored `actions`, its entropy and values (one forward pass:
        `score_actions`), then `ppo_objective`. `old_logprobs` and `values` are the rollout's.
        `policy` scores the actions (self.policy by default; SegmentPPOOptimizer passes a recurrent
        policy's replay of the minibatch); `weights` and `adv_stats` are as in ppo_objective."""
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
            mean, std = adv_stats if adv_stats is not None else (advantages.mean(), advantages.std())  # torchrun
            advantages = (advantages - mean) / (std + 1e-8)
        if weights is not None:  # prioritized minibatches (SegmentPPOOptimizer): importance weights
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


def trains_on_segments(policy: nn.Module, config: PPOConfig) -> bool:
    """Whether the update trains on whole segments (SegmentPPOOptimizer): a recurrent policy, V-trace,
    prioritized minibatches."""
    return getattr(policy, "recurrent", False) or config.vtrace or config.prio_alpha > 0


def parts(n: int, num_parts: int) -> list[slice]:
    """0..n cut into `num_parts` slices of nearly equal size, empty ones left out."""
    edges = [round(i * n / num_parts) for i in range(num_parts + 1)]
    return [slice(start, end) for start, end in zip(edges[:-1], edges[1:]) if end > start]


class CustomLosses:
    """The custom losses of an update, called on each minibatch with Metta's signature (and the PPO
    pass's `outputs` for those that declare it); their values by name."""

    def __init__(self, fns: Sequence[CustomLoss]):
        self.fns, self.names = list(fns), [loss_name(fn) for fn in fns]
        if len(set(self.names)) != len(self.names) or set(self.names) & set(History.TERMS):
            raise ValueError(f"custom losses need distinct names that differ from the PPO terms, got {self.names}")
        self.fed = [asks_for(fn, "outputs") for fn in self.fns]

    def __call__(self, policy: nn.Module, mb: Batch, outputs: PolicyOutputs) -> dict[str, torch.Tensor]:
        values = {}
        for fn, fed, name in zip(self.fns, self.fed, self.names):
            try:
                value = fn(policy, mb.obs, mb.actions, mb.rewards, mb.values, mb.advantages,
                           **({"outputs": outputs} if fed else {}))
            except (AttributeError, TypeError) as err:
                if fed and outputs.params is None:  # most likely it used the parameters this network has not
                    raise ConfigError(f"custom loss {name!r} failed ({type(err).__name__}: {err}): outputs.params is "
                                      "None for a network with CleanRL's get_action_and_value only, which gives no "
                                      "distribution parameters; write the network as a cleanmetta Policy "
                                      "(docs/customizing.md) or use outputs.logprobs, entropy or values") from err
                raise
            values[name] = scalar(value, name)
        return values


class History:
    """Per minibatch, the reported terms and its number of samples (which weigh its terms over
    processes under torchrun)."""

    TERMS = ["policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"]

    def __init__(self, custom: CustomLosses):
        self.names = self.TERMS + custom.names
        self.rows: list[torch.Tensor] = []  # stacked once at the end: no synchronisation per minibatch
        self.counts: list[int] = []
        self.last_kl = torch.zeros(1)

    def add(self, losses: PPOLosses, custom: dict[str, torch.Tensor], samples: int) -> None:
        self.rows += [losses.policy_loss.detach(), losses.value_loss.detach(), losses.entropy_loss.detach(),
                      losses.approx_kl, losses.clipfrac, *(value.detach() for value in custom.values())]
        self.counts.append(samples)
        self.last_kl = losses.approx_kl

    def past_target_kl(self, target_kl: float | None) -> bool:
        """ppo.target_kl's early stop, after an epoch: the last minibatch's approx_kl (torchrun: its mean
        over all processes, so that they all stop at the same epoch) above the target."""
        return target_kl is not None and float(distributed.weighted_mean(
            self.last_kl.view(1), torch.tensor([self.counts[-1]]))) > target_kl

    def means(self) -> dict[str, float]:
        """Each term's mean over the minibatches (torchrun: per minibatch, over all processes' samples first)."""
        rows = torch.stack(self.rows).view(-1, len(self.names))
        return dict(zip(self.names, distributed.weighted_mean(rows, torch.tensor(self.counts)).mean(0).tolist()))


def loss_name(fn: CustomLoss) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


# ---- training on segments: recurrent policies, V-trace, prioritized minibatches -------------------

class Minibatch(NamedTuple):
    """A minibatch of segments: their valid steps as flat samples `[N, ...]`, the segments, each
    sample's importance weight (prioritized sampling) and torchrun's advantage statistics."""

    samples: Batch
    segments: Batch
    weights: torch.Tensor | None = None
    adv_stats: AdvantageStats | None = None


class SegmentPPOOptimizer(PPOOptimizer):
    """PPO's update on whole segments of each agent's rollout (`trains_on_segments`): a minibatch is
    some segments, and the losses see their valid steps. The same steps as PPOOptimizer.update, with
    what segments change: the LSTM replayed over the minibatch's segments (lstm.SegmentReplay),
    V-trace's advantages (`vtrace_loss`), prioritized sampling (`segment_priorities`)."""

    def update(self, experience: Experience, custom_loss_fns: Sequence[CustomLoss] = (),
               progress: float = 0.0) -> dict[str, float]:
        """As PPOOptimizer.update; `progress` (the fraction of training done, 0 to 1) anneals prioritized
        sampling's importance-weight exponent from ppo.prio_beta0 to 1."""
        cfg = self.config
        experience.compute_advantages(cfg.gamma, cfg.gae_lambda)
        batch = experience.batch(segments=True)  # segments [S, L, ...]
        check_minibatches_on_every_process(batch, cfg.num_minibatches, "segments")  # torchrun
        priorities = None
        if cfg.prio_alpha > 0:  # prioritized: each segment's probability and importance weight, beta annealed
            priorities = segment_priorities(batch, cfg.prio_alpha, cfg.prio_beta0 + (1 - cfg.prio_beta0) * progress)
        custom_losses = CustomLosses(custom_loss_fns)
        history = History(custom_losses)
        for epoch in range(cfg.update_epochs):
            for mb, segments, weights, adv_stats in self.segment_minibatches(batch, priorities):
                policy = self.policy
                if experience.lstm_size > 0:  # recurrent: the LSTM replayed over the minibatch's segments
                    policy = SegmentReplay(self.policy, segments, mb.obs)
                if cfg.vtrace:  # V-trace: the advantages follow from the current policy's ratios
                    losses, outputs = self.vtrace_loss(policy, mb, segments, weights)
                else:
                    losses, outputs = self.loss_and_outputs(mb.obs, mb.actions, mb.logprobs, mb.advantages,
                                                            mb.returns, mb.values, policy, weights, adv_stats)
                custom = custom_losses(policy, mb, outputs)
                self.optimize(losses, custom, samples=len(mb.advantages))
                history.add(losses, custom, len(mb.advantages))
            if history.past_target_kl(cfg.target_kl):
                break
        return self.summary(history, batch.valid_steps())

    def segment_minibatches(self, batch: Batch, priorities: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> list[Minibatch]:
        """One epoch's minibatches of segments: shuffled (or, with `priorities`, each segment's
        probability and importance weight, drawn by priority), cut into ppo.num_minibatches parts;
        each minibatch's samples are its segments' valid steps."""
        n = batch.obs.shape[0]
        if priorities is None:
            order = torch.randperm(n, device=self.device)
        else:  # prioritized: n draws with replacement (the importance weights assume each has probability p)
            order = torch.multinomial(priorities[0], n, replacement=True)
        shuffled = batch.select(order)
        weights = None if priorities is None else priorities[1][order]
        minibatches = [segment_minibatch(shuffled.select(part), None if weights is None else weights[part])
                       for part in parts(n, self.config.num_minibatches)]
        if not self.config.vtrace:  # torchrun: all processes' advantage statistics (V-trace's come later)
            stats = self.advantage_stats([mb.samples for mb in minibatches])
            minibatches = [mb._replace(adv_stats=s) for mb, s in zip(minibatches, stats)]
        return minibatches

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


def check_minibatches_on_every_process(batch: Batch, num_minibatches: int, units: str) -> None:
    """torchrun: every process must run every minibatch (each one all-reduces its gradients), so each
    needs at least num_minibatches `units` (valid samples, or segments). Nothing in one process."""
    if distributed.world_size() == 1:
        return
    fewest = int(distributed.all_reduce(torch.tensor(batch.obs.shape[0]), distributed.ReduceOp.MIN))
    if fewest < num_minibatches:
        raise ValueError(f"a process has {fewest} {units}, fewer than ppo.num_minibatches={num_minibatches}; use "
                         "fewer minibatches or longer rollouts")


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
