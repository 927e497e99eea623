"""Example custom losses, and the name -> loss table behind `--ppo.custom-losses`.

A custom loss is any `fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor`;
PPOOptimizer.update adds it to the PPO loss on every minibatch and reports it under fn.__name__.
Both examples are exploration terms for categorical (Discrete / MultiDiscrete) policies; they
are negative when they reward exploration, since the optimiser minimises the sum.

- curiosity: a surprise-weighted entropy bonus. The advantage magnitude |A| measures how wrong
  the critic was about a transition; the bonus keeps the policy exploratory (high entropy) where
  the critic was most surprised and lets it commit where the outcome is predictable. It needs no
  extra network, unlike forward-model curiosity (ICM), which would need the next observation.
- diversity: the entropy of the minibatch's *average* action distribution. The standard entropy
  bonus makes each state's distribution flat; this one rewards using different actions across
  states even when each state's choice is confident.
"""

from __future__ import annotations

from typing import Callable

import torch

from cleanmetta.config import ConfigError
from cleanmetta.policy import CategoricalHead, entropy_of

CustomLoss = Callable[..., torch.Tensor]


def _logits(policy, obs: torch.Tensor) -> torch.Tensor:
    if not isinstance(policy.head, CategoricalHead):
        raise TypeError("the curiosity and diversity losses need a Discrete or MultiDiscrete action space")
    return policy(obs)[0]


def make_curiosity_loss(coef: float) -> CustomLoss:
    def curiosity(policy, obs, actions, rewards, values, advantages):
        surprise = advantages.abs()
        weight = surprise / (surprise.mean() + 1e-8)  # mean 1 over the minibatch: coef keeps its scale
        return -coef * (weight * policy.head.entropy(_logits(policy, obs))).mean()

    return curiosity


def make_diversity_loss(coef: float) -> CustomLoss:
    def diversity(policy, obs, actions, rewards, values, advantages):
        logits = _logits(policy, obs)
        # log of the minibatch-average probabilities, per independent part of the action
        mean_log_probs = [part.softmax(-1).mean(0).clamp_min(1e-12).log() for part in logits.split(policy.head.nvec, -1)]
        return -coef * sum(entropy_of(logp) for logp in mean_log_probs)

    return diversity


CUSTOM_LOSSES: dict[str, Callable[[float], CustomLoss]] = {
    "curiosity": make_curiosity_loss,
    "diversity": make_diversity_loss,
}


def make_custom_losses(ppo_config) -> list[CustomLoss]:
    """The losses named in ppo_config.custom_losses, each with its coefficient from the config."""
    for name in ppo_config.custom_losses:
        if name not in CUSTOM_LOSSES:
            raise ConfigError(f"ppo.custom_losses={ppo_config.custom_losses} names unknown loss {name!r}; "
                              f"choose from {sorted(CUSTOM_LOSSES)}")
    coefs = {"curiosity": ppo_config.curiosity_coef, "diversity": ppo_config.diversity_coef}
    return [CUSTOM_LOSSES[name](coefs[name]) for name in ppo_config.custom_losses]
