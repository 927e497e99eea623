"""Typed training configuration: every knob of a run, its default, and its validation.

Each section is a dataclass whose fields carry a one-line docstring; tyro turns them into
`--section.field` flags with that text as help (`python train.py --help`). The defaults are the
reference PPO settings for CartPole-v1 (Huang et al. 2022 / CleanRL's ppo.py), so a default run
compares one to one with published PPO baselines.

This module owns the values and their consistency checks (`TrainingConfig.validate`); it does not
build anything from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration value is invalid; the message names each bad field, its value and the fix."""


@dataclass
class EnvConfig:
    """Which environment to train on and how many copies to step at once."""

    id: str = "CartPole-v1"
    """gymnasium environment id (Box observations; Discrete, MultiDiscrete or Box actions)."""
    num_envs: int = 4
    """number of environment copies stepped together."""
    vectorization: str = "auto"
    """'auto' (native vector env when the id has one, else 'sync'), 'native', 'sync' or 'async'."""


@dataclass
class AgentConfig:
    """The policy network."""

    name: str = "mlp"
    """network: 'mlp' (vector observations) or 'simple_cnn' (image / grid observations)."""
    hidden_size: int = 64
    """width of the hidden layers (mlp) or of the dense layer after the convolutions (simple_cnn)."""


@dataclass
class TrainerConfig:
    """Rollout size, run length and optimiser settings."""

    total_timesteps: int = 500_000
    """agent steps to train for (summed over all environments and agents)."""
    num_steps: int = 128
    """steps each environment runs per rollout; batch size = num_steps x agents."""
    learning_rate: float = 2.5e-4
    """Adam learning rate at the start of training."""
    anneal_lr: bool = True
    """decay the learning rate linearly to zero over the run."""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as in the reference implementations, not torch's 1e-8)."""


@dataclass
class PPOConfig:
    """The PPO objective and update schedule."""

    gamma: float = 0.99
    """discount factor."""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation."""
    update_epochs: int = 4
    """passes over each rollout batch."""
    num_minibatches: int = 4
    """minibatches per pass; must divide the batch size."""
    norm_adv: bool = True
    """normalise advantages inside each minibatch."""
    clip_coef: float = 0.2
    """surrogate clipping coefficient epsilon."""
    clip_vloss: bool = True
    """clip the value loss around the rollout's value estimates."""
    ent_coef: float = 0.01
    """entropy bonus coefficient."""
    vf_coef: float = 0.5
    """value loss coefficient."""
    max_grad_norm: float = 0.5
    """global gradient-norm clip."""
    target_kl: float | None = None
    """stop an update's epochs early once approx_kl exceeds this (None: never)."""


@dataclass
class LogConfig:
    """Where and how often the run reports."""

    run_root: str = "runs"
    """directory that holds one sub-directory per run."""
    tensorboard: bool = True
    """write TensorBoard event files into the run directory."""
    console_interval: float = 5.0
    """seconds between console progress lines (0: every epoch)."""


@dataclass
class TrainingConfig:
    """A whole training run."""

    experiment_name: str | None = None
    """run directory name under log.run_root (None: '<env id>__<seed>__<unix time>')."""
    seed: int = 1
    """seed of python, numpy, torch and the environments."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'."""
    torch_threads: int = 1
    """CPU threads for torch; one is fastest for small networks (per-op overhead dominates)."""
    torch_deterministic: bool = True
    """ask torch (and cuDNN) for deterministic kernels."""
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> TrainingConfig:
        """Raise ConfigError listing every inconsistent value; return self when all are valid."""
        from cleanmetta.policy import POLICIES

        errors: list[str] = []

        def check(ok: bool, name: str, value: object, problem: str) -> None:
            if not ok:
                errors.append(f"{name}={value!r} {problem}")

        def positive(name: str, value: float) -> None:
            check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name, value,
                  "must be a finite number > 0")

        def non_negative(name: str, value: float) -> None:
            check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, name, value,
                  "must be a finite number >= 0")

        check(self.experiment_name is None or (self.experiment_name.strip() != ""
                                               and "/" not in self.experiment_name),
              "experiment_name", self.experiment_name, "must be a non-empty name without '/' (or None)")
        check(self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                         and self.device[5:].isdigit()),
              "device", self.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check(self.torch_threads >= 1, "torch_threads", self.torch_threads, "must be >= 1")

        env = self.env
        check(bool(env.id.strip()), "env.id", env.id, "must name a gymnasium environment, e.g. 'CartPole-v1'")
        check(env.num_envs >= 1, "env.num_envs", env.num_envs, "must be >= 1")
        check(env.vectorization in ("auto", "native", "sync", "async"), "env.vectorization",
              env.vectorization, "must be one of 'auto', 'native', 'sync', 'async'")

        check(self.agent.name in POLICIES, "agent.name", self.agent.name,
              f"is not a known network; choose one of {sorted(POLICIES)}")
        check(self.agent.hidden_size >= 1, "agent.hidden_size", self.agent.hidden_size, "must be >= 1")

        trainer = self.trainer
        check(trainer.total_timesteps >= 1, "trainer.total_timesteps", trainer.total_timesteps, "must be >= 1")
        check(trainer.num_steps >= 1, "trainer.num_steps", trainer.num_steps, "must be >= 1")
        positive("trainer.learning_rate", trainer.learning_rate)
        positive("trainer.adam_eps", trainer.adam_eps)

        ppo = self.ppo
        check(0 < ppo.gamma <= 1, "ppo.gamma", ppo.gamma, "must be in (0, 1]")
        check(0 <= ppo.gae_lambda <= 1, "ppo.gae_lambda", ppo.gae_lambda, "must be in [0, 1]")
        check(ppo.update_epochs >= 1, "ppo.update_epochs", ppo.update_epochs, "must be >= 1")
        check(ppo.num_minibatches >= 1, "ppo.num_minibatches", ppo.num_minibatches, "must be >= 1")
        rollout = env.num_envs * trainer.num_steps
        if ppo.num_minibatches >= 1 and env.num_envs >= 1 and trainer.num_steps >= 1:
            check(rollout % ppo.num_minibatches == 0, "ppo.num_minibatches", ppo.num_minibatches,
                  f"must divide the batch size env.num_envs x trainer.num_steps = {rollout}; "
                  f"pick a divisor such as {_nearest_divisors(rollout, ppo.num_minibatches)}")
        positive("ppo.clip_coef", ppo.clip_coef)
        non_negative("ppo.ent_coef", ppo.ent_coef)
        non_negative("ppo.vf_coef", ppo.vf_coef)
        positive("ppo.max_grad_norm", ppo.max_grad_norm)
        if ppo.target_kl is not None:
            positive("ppo.target_kl", ppo.target_kl)

        check(bool(self.log.run_root.strip()), "log.run_root", self.log.run_root, "must be a directory path")
        non_negative("log.console_interval", self.log.console_interval)

        if errors:
            raise ConfigError("invalid training config:\n  " + "\n  ".join(errors))
        return self


def _nearest_divisors(n: int, target: int) -> str:
    """The divisors of n just below and just above target, e.g. '2 or 4'."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    below = max(d for d in divisors if d <= target)
    above = [d for d in divisors if d > target]
    return f"{below} or {above[0]}" if above else str(below)


def small_fast_config() -> TrainingConfig:
    """CartPole settings tuned for wall-clock time rather than for comparison with baselines.

    More environments per step (the native vector env makes them nearly free), a shorter
    rollout, fewer and larger minibatches, and a higher learning rate.
    """
    return TrainingConfig(
        env=EnvConfig(num_envs=16),
        trainer=TrainerConfig(total_timesteps=150_000, num_steps=32, learning_rate=1e-3),
        ppo=PPOConfig(num_minibatches=2, update_epochs=4),
        log=LogConfig(console_interval=2.0),
    )
