"""Custom losses, and the name -> loss table behind `--ppo.custom-losses`.

A custom loss is any `fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor`;
PPOOptimizer.update adds it to the PPO loss on every minibatch and reports it under fn.__name__.
One that also declares `outputs` gets what the PPO pass computed (ppo.PolicyOutputs). Besides the
names below, `--ppo.custom-losses` takes a loss of one's own by import path (`load_loss`):

    python train.py --ppo.custom-losses my_losses:logit_l2:coef=0.0001

'module:function' is the loss itself, its `:key=value` settings passed on every call as keyword
arguments; 'module:Class[:key=value]' is built once, Class(**kwargs), and called as the loss.

- kickstart (Kickstarter): distil a trained teacher while learning (Schmitt et al. 2018, as
  Metta's trainer does). The student is pulled towards the teacher's action distribution (KL from
  the teacher's to the student's) and value (squared error), with weights that fade linearly to 0
  over ppo.kickstart_steps agent steps: the teacher gives a head start, then PPO takes over.

    python train.py --ppo.custom-losses kickstart --ppo.kickstart-teacher runs/NAME

  A loss whose weight follows training keeps an `agent_steps` attribute; the loops update it
  before every PPO update (`set_agent_steps`).

The other two are exploration terms for categorical (Discrete / MultiDiscrete) policies; they
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

import functools
import inspect
import os
from typing import Any, Callable

import torch
from gymnasium import spaces

from cleanmetta import distributed
from cleanmetta.checkpoint import CheckpointError, PolicyStore, check_policy_spaces, load_policy_file
from cleanmetta.config import ConfigError, PPOConfig
from cleanmetta.imports import asks_for, check_call, load_object
from cleanmetta.networks import CategoricalHead, Policy, entropy_of
from cleanmetta.ppo import loss_name
from cleanmetta.protocol import has_distribution

CustomLoss = Callable[..., torch.Tensor]


def _logits(policy, obs: torch.Tensor) -> torch.Tensor:
    if has_distribution(policy) and not isinstance(policy.head, CategoricalHead):
        raise TypeError("the curiosity and diversity losses need a Discrete or MultiDiscrete action space")
    return policy(obs)[0]  # a network without distribution parameters says so (protocol.NetworkPolicy)


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


def action_kl(teacher: Policy, teacher_params: torch.Tensor, student: Policy, student_params: torch.Tensor
              ) -> torch.Tensor:
    """KL(teacher || student) [B] between two policies' action distributions: categorical (summed over
    the independent parts of a MultiDiscrete action) or diagonal Gaussian, in closed form."""
    if isinstance(student.head, CategoricalHead):
        nvec = student.head.nvec
        kl = 0
        for t, s in zip(teacher_params.split(nvec, -1), student_params.split(nvec, -1)):
            t, s = t.log_softmax(-1), s.log_softmax(-1)
            kl = kl + (t.exp() * (t - s)).sum(-1)
        return kl
    t_log_std, s_log_std = teacher.head.log_std, student.head.log_std
    return (s_log_std - t_log_std + ((2 * t_log_std).exp() + (teacher_params - student_params).pow(2))
            / (2 * (2 * s_log_std).exp()) - 0.5).sum(-1)


def load_teacher(path: str, observation_space: spaces.Space, action_space: spaces.Space,
                 device: torch.device | str = "cpu") -> Policy:
    """The teacher network of `path`, a run directory (its latest saved policy) or a policy file,
    frozen and checked against the student's spaces (a network of one's own loads as
    policy_store.load_policy_file allows). Under torchrun rank 0 reads it and sends it to the others
    (their machines need no copy)."""
    teacher = distributed.on_main(_read_teacher, path, observation_space, action_space)
    return teacher.to(device).eval().requires_grad_(False)


def _read_teacher(path: str, observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    try:
        uri = PolicyStore(path).latest().uri if os.path.isdir(path) else path
        teacher = load_policy_file(uri)
        check_policy_spaces(teacher, observation_space, action_space, uri)
    except CheckpointError as err:
        raise ConfigError(f"ppo.kickstart_teacher={path!r}: {err}; kickstart from a policy trained on the same "
                          "env (its observation and action spaces)") from None
    if teacher.recurrent:
        raise ConfigError(f"ppo.kickstart_teacher={path!r} is recurrent (agent.lstm_size > 0): kickstarting needs "
                          "a feedforward teacher, whose outputs depend on the minibatch's observations alone")
    return teacher


class Kickstarter:
    """The kickstart loss: action_coef x KL(teacher || student) + value_coef x 0.5 (V - V_teacher)^2,
    means over the minibatch, both weights fading linearly from their value at agent step 0 to 0 at
    `steps`. With a student equal to its teacher the loss and its gradient are 0."""

    __name__ = "kickstart"

    def __init__(self, teacher: Policy, action_coef: float = 1.0, value_coef: float = 0.5, steps: int = 250_000):
        self.teacher = teacher.eval().requires_grad_(False)
        self.action_coef, self.value_coef, self.steps = action_coef, value_coef, steps
        self.agent_steps = 0  # set by the training loop before every update (set_agent_steps)

    def coefficients(self) -> tuple[float, float]:
        """(action, value) weights at the current agent step."""
        fade = max(0.0, 1.0 - self.agent_steps / self.steps)
        return self.action_coef * fade, self.value_coef * fade

    def __call__(self, policy, obs, actions, rewards, values, advantages, outputs=None) -> torch.Tensor:
        action_coef, value_coef = self.coefficients()
        if action_coef == 0 and value_coef == 0:  # faded out: no teacher forward pass
            return torch.zeros((), device=obs.device)
        if has_distribution(self.teacher) and has_distribution(policy):  # the KL in closed form
            with torch.no_grad():
                teacher_params, teacher_value = self.teacher(obs)
            if outputs is not None and outputs.params is not None:  # the PPO pass's: no second student forward
                params, value = outputs.params.float(), outputs.values.float()
            else:
                params, value = policy(obs)
            action_loss = action_kl(self.teacher, teacher_params, policy, params).mean()
        else:  # a network of CleanRL's protocol: the KL estimated at the teacher's sampled actions
            with torch.no_grad():
                teacher_actions, teacher_logprobs, _, teacher_value = self.teacher.get_action_and_value(obs)
            _, logprobs, _, value = policy.get_action_and_value(obs, teacher_actions)
            action_loss = (teacher_logprobs - logprobs).mean()  # E_teacher[log t(a) - log s(a)]: its gradient is exact
        value_loss = 0.5 * (value - teacher_value).pow(2).mean()
        return action_coef * action_loss + value_coef * value_loss


def make_kickstart_loss(ppo_config: PPOConfig, observation_space: spaces.Space, action_space: spaces.Space,
                        device: torch.device | str = "cpu") -> Kickstarter:
    teacher = load_teacher(ppo_config.kickstart_teacher, observation_space, action_space, device)
    return Kickstarter(teacher, ppo_config.kickstart_action_coef, ppo_config.kickstart_value_coef,
                       ppo_config.kickstart_steps)


def set_agent_steps(custom_losses, agent_steps: int) -> None:
    """Tell the losses whose weights follow training (those with an `agent_steps` attribute, e.g.
    kickstart) how many agent steps have been trained."""
    for fn in custom_losses:
        if hasattr(fn, "agent_steps"):
            fn.agent_steps = agent_steps


CUSTOM_LOSSES: dict[str, Callable[..., CustomLoss]] = {
    # name -> builder(ppo_config, observation_space, action_space, device)
    "curiosity": lambda cfg, *env: make_curiosity_loss(cfg.curiosity_coef),
    "diversity": lambda cfg, *env: make_diversity_loss(cfg.diversity_coef),
    "kickstart": make_kickstart_loss,
}


def load_loss(spec: str) -> CustomLoss:
    """A loss of one's own by import path: 'module:function[:key=value,...]' (the settings passed as
    keyword arguments on every call) or 'module:Class[:key=value,...]' (built once). Refused before
    training, in one line, when it cannot take Metta's six arguments or the settings."""
    what = f"ppo.custom_losses entry {spec!r}"
    obj, kwargs = load_object(spec, what)
    if inspect.isclass(obj):
        check_call(obj, (), kwargs, what)
        obj, kwargs = obj(**kwargs), {}
    if not callable(obj):
        raise ConfigError(f"{what} is a {type(obj).__name__}, not a function or class")
    extra = {"outputs": None} if asks_for(obj, "outputs") else {}
    check_call(obj, (None,) * 6, {**kwargs, **extra}, f"{what} called as fn(policy, obs, actions, rewards, values, "
                                                    "advantages)")
    if not kwargs:
        return obj
    loss = functools.partial(obj, **kwargs)
    loss.__name__ = loss_name(obj)
    return loss


def make_custom_losses(ppo_config: PPOConfig, vecenv: Any = None, device: torch.device | str = "cpu"
                       ) -> list[CustomLoss]:
    """The losses named in ppo_config.custom_losses (by name, or by import path: load_loss), built from
    its settings. `vecenv` (its single_* spaces) and `device` are for the losses that load a network:
    kickstart's teacher."""
    for name in ppo_config.custom_losses:
        if name not in CUSTOM_LOSSES and ":" not in name:
            raise ConfigError(f"ppo.custom_losses={ppo_config.custom_losses} names unknown loss {name!r}; "
                              f"choose from {sorted(CUSTOM_LOSSES)} or name one of your own by import path "
                              "'module:function'")
    if "kickstart" in ppo_config.custom_losses and (vecenv is None or ppo_config.kickstart_teacher is None):
        raise ConfigError("the kickstart loss needs ppo.kickstart_teacher and the student's env: "
                          "make_custom_losses(ppo_config, vecenv, device)")
    observation_space = getattr(vecenv, "single_observation_space", None)
    action_space = getattr(vecenv, "single_action_space", None)
    return [load_loss(name) if ":" in name else
            CUSTOM_LOSSES[name](ppo_config, observation_space, action_space, device)
            for name in ppo_config.custom_losses]
