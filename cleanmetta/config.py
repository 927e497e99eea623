"""Typed training configuration: every knob of a run, its default, and its validation.

Each section is a dataclass whose fields carry a one-line docstring; tyro turns them into
`--section.field` flags with that text as help (`python train.py --help`). The defaults are the
reference PPO settings for CartPole-v1 (Huang et al. 2022 / CleanRL's ppo.py), so a default run
compares one to one with published PPO baselines.

This module owns the values and their consistency checks (`TrainingConfig.validate`); it does not
build anything from them, and it imports nothing from the rest of cleanmetta: every other module
builds on it, the named presets (presets.py) too. Where a value names something another module
defines (a network, a custom loss), its type lists the names (a `Literal`, so `--help` shows the
choices) and a test keeps each list equal to the table in that module (policy.POLICIES,
losses.CUSTOM_LOSSES, curriculum.CURRICULA).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is invalid; the message names each bad field, its value and the fix."""


def import_extra(module: str, extra: str, feature: str) -> Any:
    """Import `module`, which the optional extra `extra` installs; ConfigError with the install command
    when it is missing. `feature` names what needs it, e.g. '--log.wandb'."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{feature} needs {module} ({err}), an optional extra: "
                          f'pip install -e ".[{extra}]"') from None


NetworkName = Literal["auto", "mlp", "simple_cnn", "token", "multi_input"]
"""policy.POLICIES' networks, and 'auto' (chosen from the observation space)."""
CustomLossName = Literal["curiosity", "diversity", "kickstart"]
"""losses.CUSTOM_LOSSES' losses (ppo.custom_losses also takes import paths)."""
OptimizerName = Literal["adam", "adamw", "muon", "schedulefree"]
"""optimizers.OPTIMIZERS' optimisers (trainer.optimizer also takes import paths)."""
LRScheduleName = Literal["linear", "cosine"]
"""trainer.learning_rate_at's decays."""
CurriculumName = Literal["random", "learning_progress"]
"""curriculum.CURRICULA's algorithms."""


@dataclass
class EnvConfig:
    """Which environment to train on and how many copies to step at once."""

    id: str = "CartPole-v1"
    """the task: a gymnasium id, 'module:ID' to import the package that registers ID first (e.g.
    'ale_py:ALE/Pong-v5'), and optional ':key=value,...' kwargs for the env's constructor."""
    kwargs: str = ""
    """constructor kwargs for every task, 'key=value,key=value' (a task's own kwargs win), e.g.
    'repeat_action_probability=0.0' (the atari preset's)."""
    wrappers: list[str] = field(default_factory=list)
    """gymnasium wrappers applied to every env in order, by import path 'module:Class' with optional
    ':key=value,...', e.g. 'minigrid.wrappers:ImgObsWrapper'."""
    num_envs: int = 4
    """number of environment copies stepped together (by each process under torchrun)."""
    vectorization: str = "auto"
    """'auto' (native vector env when the id has one, else 'sync'), 'native', 'sync' or 'async'."""
    num_workers: int = 0
    """processes that step the environments (0: in the training process). MettaGrid: the simulations split
    over that many workers stepping in shared memory; gymnasium ids: AsyncVectorEnv, a process per copy."""
    worker_timeout: float = 60.0
    """seconds the training process waits for an env worker's step before reporting it stuck."""
    async_batches: int = 1
    """2: double buffering (MettaGrid with env.num_workers): the policy acts on one half of the agents while
    the workers step the other half (1: every agent each step, in order)."""


@dataclass
class AgentConfig:
    """The policy network."""

    name: NetworkName = "auto"
    """network: 'mlp' (vectors), 'simple_cnn' (images, grids), 'token' (MettaGrid tokens), 'multi_input' (Dict,
    Tuple, Discrete, MultiDiscrete, MultiBinary observations) or 'auto' (by the observation space)."""
    hidden_size: int = 64
    """width of the hidden layers (mlp, token) or of the dense layer after the convolutions (simple_cnn)."""
    normalize_obs: bool = False
    """mlp: standardise observations by their running mean and std, clipped to +-10 (saved with the policy)."""
    lstm_size: int = 0
    """units of an LSTM between the network's encoder and its actor and critic heads (0: no LSTM, feedforward)."""
    network: str = ""
    """a network of your own by import path 'module:Class[:key=value,...]', built as Class(envs, **kwargs) (envs
    has single_observation_space and single_action_space, as in CleanRL); replaces agent.name (docs/customizing.md)."""


@dataclass
class TrainerConfig:
    """Rollout size, run length and optimiser settings."""

    total_timesteps: int = 500_000
    """agent steps to train for (summed over all environments, agents and torchrun processes)."""
    num_steps: int = 128
    """steps each environment runs per rollout; batch size = num_steps x agents."""
    bptt_horizon: int = 0
    """steps per training segment when minibatches are whole segments (with an LSTM, ppo.vtrace or
    ppo.prio_alpha > 0): each agent's rollout is cut into num_steps / bptt_horizon segments (0: the whole rollout)."""
    learning_rate: float = 2.5e-4
    """Adam learning rate at the start of training."""
    anneal_lr: bool = True
    """decay the learning rate to zero over the run, by trainer.lr_schedule (False: constant)."""
    lr_schedule: LRScheduleName = "linear"
    """with anneal_lr: 'linear' (CleanRL's) or 'cosine' (half a cosine wave) decay to zero."""
    lr_warmup: float = 0.0
    """fraction of the run's epochs over which the learning rate first rises linearly to learning_rate (0: none)."""
    adam_eps: float = 1e-5
    """Adam epsilon of adam, adamw, muon's AdamW part and schedulefree (1e-5 as in the reference implementations,
    not torch's 1e-8)."""
    optimizer: str = "adam"
    """'adam', 'adamw', 'muon' (Muon for the hidden 2-D weights, AdamW for the rest), 'schedulefree' (schedule-free
    AdamW, pip install -e ".[schedulefree]"), or a torch optimizer by import path 'module:Class[:key=value,...]',
    built as Class(params, lr=trainer.learning_rate, **kwargs)."""
    weight_decay: float = 0.0
    """weight decay: decoupled for adamw, muon and schedulefree; adam's L2 penalty (torch.optim.Adam's)."""


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
    """minibatches per pass: each pass shuffles the rollout's valid steps (or its segments) and cuts them
    into this many parts of nearly equal size."""
    norm_adv: bool = True
    """normalise advantages inside each minibatch."""
    global_adv_norm: bool = True
    """under torchrun, normalise with the mean and std of all processes' minibatches (one all-reduce each)."""
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
    normalize_reward: bool = False
    """divide rewards by the running std of the discounted return, clipped to +-10 (continuous control)."""
    compile: bool = False
    """torch.compile the minibatch loss: ~50 s to compile, then CPU minibatches in ~0.6x the time (pays past ~2M
    CartPole steps; docs/speed.md)."""
    bf16: bool = False
    """run the PPO loss's forward pass in bfloat16 (torch.autocast; parameters, gradients and Adam stay
    float32; V-trace minibatches and custom losses stay float32): for CPUs with AVX512-BF16 or AMX and
    recent GPUs, e.g. Atari's Nature CNN minibatch in 0.65x the time on a 2-core CPU."""
    target_kl: float | None = None
    """stop an update's epochs early once approx_kl exceeds this (None: never)."""
    vtrace: bool = False
    """recompute each minibatch's advantages by V-trace with the current policy's importance ratios,
    clipped by vtrace_rho_clip and vtrace_c_clip (minibatches become whole segments, see trainer.bptt_horizon)."""
    vtrace_rho_clip: float = 1.0
    """V-trace: clip of the ratio that weights each TD error (IMPALA's rho-bar)."""
    vtrace_c_clip: float = 1.0
    """V-trace: clip of the ratio that carries later TD errors back (IMPALA's c-bar)."""
    prio_alpha: float = 0.0
    """prioritized minibatches: segments drawn with probability proportional to their summed |advantage|
    to this power (0: the uniform shuffle)."""
    prio_beta0: float = 0.6
    """prioritized minibatches: exponent of the importance weights (S p)^-beta at the start, annealed to 1."""
    custom_losses: list[str] = field(default_factory=list)
    """extra losses added to every minibatch: 'curiosity', 'diversity', 'kickstart' (cleanmetta/losses.py), or a loss
    of your own by import path 'module:function[:key=value,...]' (docs/customizing.md)."""
    curiosity_coef: float = 0.01
    """weight of the 'curiosity' loss (surprise-weighted entropy bonus)."""
    diversity_coef: float = 0.01
    """weight of the 'diversity' loss (entropy of the batch's average action distribution)."""
    kickstart_teacher: str | None = None
    """'kickstart' loss: the teacher, a run directory (its latest policy) or a policy file."""
    kickstart_action_coef: float = 1.0
    """'kickstart' loss: weight of KL(teacher || student) of the action distributions at the start."""
    kickstart_value_coef: float = 0.5
    """'kickstart' loss: weight of the squared error to the teacher's value at the start."""
    kickstart_steps: int = 250_000
    """'kickstart' loss: agent steps over which both weights decay linearly to 0 (the teacher is then unused)."""


@dataclass
class LogConfig:
    """Where and how often the run reports."""

    run_root: str = "runs"
    """directory that holds one sub-directory per run."""
    tensorboard: bool = True
    """write TensorBoard event files into the run directory."""
    console_interval: float = 5.0
    """seconds between console progress lines (0: every epoch)."""
    dashboard: Literal["auto", "on", "off"] = "auto"
    """a live terminal panel instead of the progress lines (dashboard.py; pip install -e ".[dashboard]"):
    'auto' shows it when the output is a terminal and rich is installed, 'on' always, 'off' never."""
    wandb: bool = False
    """also log to a Weights & Biases run: config, the TensorBoard scalars, evaluation scores and videos
    (pip install -e ".[wandb]"; WANDB_MODE=offline runs without a network)."""
    wandb_project: str = "cleanmetta"
    """wandb project of the run."""
    wandb_entity: str | None = None
    """wandb team or user (None: your default entity)."""
    wandb_group: str | None = None
    """wandb group, e.g. one experiment's seeds (None: no group)."""
    wandb_name: str | None = None
    """wandb run name (None: the run directory's name)."""
    wandb_tags: list[str] = field(default_factory=list)
    """wandb tags of the run."""
    wandb_checkpoints: bool = False
    """with log.wandb: upload every saved policy as a wandb model artifact (aliases latest and epoch_N)."""


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    interval: int = 50
    """epochs between checkpoints (policy + trainer state); one is also written after every evaluation
    and at the end."""
    resume: bool = True
    """continue from the run directory's last checkpoint when it has one (off: start over; an earlier
    run's files in the directory are moved to RUN.old-N first)."""
    keep: int = 3
    """trainer states kept (the newest): a resume falls back to an older one when the newest does not
    read back whole."""
    keep_policies: int = 5
    """policies kept: the newest N, plus the best by each simulation's mean return, the pinned (python -m
    cleanmetta.checkpoint RUN --pin EPOCH) and those of kept trainer states (0: keep every policy)."""


@dataclass
class EvalConfig:
    """Evaluation of the policy during training."""

    interval: int = 0
    """epochs between evaluations (0: none during training)."""
    episodes: int = 10
    """episodes per simulation."""
    seed: int = 1000
    """seed of the evaluation environments and action sampling."""
    deterministic: bool = False
    """act with the distribution's mode instead of sampling."""
    video: bool = False
    """record the first episode of every simulation at each evaluation under <run>/videos: an mp4 for
    gymnasium envs that render (pip install -e ".[video]"), a MettaScope replay for MettaGrid."""


@dataclass
class CurriculumConfig:
    """Which tasks the training environments play, and how each episode's task is chosen (curriculum.py)."""

    tasks: list[str] = field(default_factory=list)
    """tasks or task families, 'ID' or 'ID:key=value,...' (empty: env.id alone). A family draws settings:
    'key=1..8' integers, 'key=0.5..2.0' floats (both ends included), 'key=a|b|c' a choice, e.g.
    'mettagrid/hearts:altars=1..8,width=9..25'."""
    weights: list[float] = field(default_factory=list)
    """sampling weight of each entry of tasks (empty: uniform); learning_progress: of each family's new tasks."""
    algorithm: CurriculumName = "random"
    """'random': every episode a task drawn by weight (a family's settings uniformly); 'learning_progress':
    a pool of tasks drawn from the families, sampled by learning progress (Metta's algorithm)."""
    num_active_tasks: int = 64
    """learning_progress: tasks in the pool (Metta: 1000, for runs of billions of steps)."""
    rand_task_rate: float = 0.25
    """learning_progress: share of draws uniform over the pool (Metta declares 0.25 and draws none)."""
    ema_timescale: float = 0.1
    """learning_progress: rate of the fast EMA of each task's mean score, per rollout (the slow one: a fifth of
    it; Metta: 0.001 per episode of the task, for runs of billions of steps)."""
    exploration_bonus: float = 0.1
    """learning_progress: the score of a task seen fewer than sample_threshold times (Metta: also the least
    score of every task)."""
    sample_threshold: int = 10
    """learning_progress: finished episodes before a task is scored by its progress."""
    progress_smoothing: float = 0.05
    """learning_progress: reweighting of the EMAs before their difference (0: none)."""
    memory: int = 25
    """learning_progress: each task's last episode scores that its mean is taken over."""
    min_presentations: int = 5
    """learning_progress: finished episodes before a task may be evicted from the pool."""
    score_ranges: list[str] = field(default_factory=list)
    """learning_progress: 'low..high' episode return of each entry of tasks (or one for all) that scores are
    normalised by to [0, 1] when scored (empty: the running min and max of each family's tasks' mean returns)."""


@dataclass
class TrainingConfig:
    """A whole training run."""

    experiment_name: str | None = None
    """run directory name under log.run_root (None: '<env id>__<seed>__<unix time>', under torchrun
    '<env id>__<seed>__<torchrun's run id>', with '/' and ':' of the env id as '-')."""
    seed: int = 1
    """seed of python, numpy, torch and the environments."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'."""
    torch_threads: int = 1
    """CPU threads for torch; one is fastest for small networks (per-op overhead dominates)."""
    torch_deterministic: bool = True
    """ask torch (and cuDNN) for deterministic kernels."""
    distributed_timeout: float = 600.0
    """torchrun: seconds a process waits for the others (e.g. while rank 0 evaluates) before failing."""
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    @property
    def total_timesteps(self) -> int:
        """Shortcut for trainer.total_timesteps (the loops in Metta's README read config.total_timesteps)."""
        return self.trainer.total_timesteps

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from a nested dict (e.g. a YAML file); unknown keys are errors naming the closest key.

        Legacy Metta layouts that keep PPO settings under `trainer` (trainer.gamma, trainer.clip_coef,
        ...) are accepted and moved to `ppo`.
        """
        data = _move_legacy_keys(data)
        return _build(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str) -> TrainingConfig:
        """Read a YAML (or JSON) file, e.g. a run directory's config.json."""
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a directory; name a YAML or JSON file (a run's config is RUN/config.json, "
                              "and --resume RUN continues that run)")
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: no such config file")
        with open(path) as f:
            try:
                data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f"{path}:{mark.line + 1}" if mark is not None else path
                raise ConfigError(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainingConfig:
        """Raise ConfigError listing every inconsistent value; return self when all are valid."""
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
        positive("distributed_timeout", self.distributed_timeout)

        env = self.env
        check(bool(env.id.strip()), "env.id", env.id, "must name a gymnasium environment, e.g. 'CartPole-v1'")
        try:  # the rules envs.py applies when it builds them
            parse_kwargs(env.kwargs, "env.kwargs")
            for wrapper in env.wrappers:
                parse_import(wrapper, "env.wrappers entry")
        except ConfigError as err:
            errors.append(str(err))
        check(not env.wrappers or env.vectorization != "native", "env.vectorization", env.vectorization,
              "steps the id's own vector env, which env.wrappers cannot wrap; use 'auto', 'sync' or 'async'")
        check(env.num_envs >= 1, "env.num_envs", env.num_envs, "must be >= 1")
        check(env.vectorization in ("auto", "native", "sync", "async"), "env.vectorization",
              env.vectorization, "must be one of 'auto', 'native', 'sync', 'async'")
        check(env.async_batches in (1, 2), "env.async_batches", env.async_batches, "must be 1 or 2 (double buffering)")
        per_batch = max(env.num_envs // max(env.async_batches, 1), 1)
        check(0 <= env.num_workers <= per_batch, "env.num_workers", env.num_workers,
              f"must be between 0 (step in the training process) and env.num_envs / env.async_batches = {per_batch}")
        check(env.async_batches == 1 or (env.num_workers >= 1 and env.id.startswith("mettagrid/")),
              "env.async_batches", env.async_batches, "double-buffers MettaGrid simulations stepped by env workers: "
              "set env.num_workers >= 1 on a mettagrid/ task, or use 1")
        positive("env.worker_timeout", env.worker_timeout)

        networks = sorted(set(typing.get_args(NetworkName)) - {"auto"})
        check(self.agent.name in typing.get_args(NetworkName), "agent.name", self.agent.name,
              f"is not a known network; choose one of {networks} or 'auto'")
        check(self.agent.hidden_size >= 1, "agent.hidden_size", self.agent.hidden_size, "must be >= 1")
        check(self.agent.lstm_size >= 0, "agent.lstm_size", self.agent.lstm_size, "must be >= 0 (0: no LSTM)")
        check(not self.agent.normalize_obs or self.agent.name in ("mlp", "auto"), "agent.normalize_obs", True,
              f"is for agent.name='mlp' (vector observations), not {self.agent.name!r}; drop the flag")
        if self.agent.network:
            try:
                parse_import(self.agent.network, "agent.network")
            except ConfigError as err:
                errors.append(str(err))
            for name, value, default in (("name", self.agent.name, "auto"), ("lstm_size", self.agent.lstm_size, 0),
                                         ("normalize_obs", self.agent.normalize_obs, False)):
                check(value == default, f"agent.{name}", value, "is for cleanmetta's networks, not agent.network="
                      f"{self.agent.network!r}; drop one of the two")

        trainer = self.trainer
        check(trainer.total_timesteps >= 1, "trainer.total_timesteps", trainer.total_timesteps, "must be >= 1")
        check(trainer.num_steps >= 1, "trainer.num_steps", trainer.num_steps, "must be >= 1")
        positive("trainer.learning_rate", trainer.learning_rate)
        check(trainer.lr_schedule in typing.get_args(LRScheduleName), "trainer.lr_schedule", trainer.lr_schedule,
              f"must be one of {list(typing.get_args(LRScheduleName))} (a constant rate: --trainer.no-anneal-lr)")
        check(isinstance(trainer.lr_warmup, (int, float)) and 0 <= trainer.lr_warmup < 1, "trainer.lr_warmup",
              trainer.lr_warmup, "must be a fraction of the run in [0, 1)")
        positive("trainer.adam_eps", trainer.adam_eps)
        non_negative("trainer.weight_decay", trainer.weight_decay)
        check(trainer.optimizer in typing.get_args(OptimizerName) or ":" in trainer.optimizer, "trainer.optimizer",
              trainer.optimizer, f"must be one of {list(typing.get_args(OptimizerName))} or an optimizer class by "
              "import path 'module:Class', e.g. 'torch.optim:SGD:momentum=0.9'")
        try:
            if ":" in trainer.optimizer:
                parse_import(trainer.optimizer, "trainer.optimizer")
        except ConfigError as err:
            errors.append(str(err))

        ppo = self.ppo
        check(0 < ppo.gamma <= 1, "ppo.gamma", ppo.gamma, "must be in (0, 1]")
        check(0 <= ppo.gae_lambda <= 1, "ppo.gae_lambda", ppo.gae_lambda, "must be in [0, 1]")
        check(ppo.update_epochs >= 1, "ppo.update_epochs", ppo.update_epochs, "must be >= 1")
        check(ppo.num_minibatches >= 1, "ppo.num_minibatches", ppo.num_minibatches, "must be >= 1")
        # minibatches of whole segments (ppo.py): an LSTM replays them, V-trace and prioritized sampling need them
        segmented = self.agent.lstm_size > 0 or ppo.vtrace or ppo.prio_alpha > 0
        check(trainer.bptt_horizon >= 0, "trainer.bptt_horizon", trainer.bptt_horizon, "must be >= 0")
        check(trainer.bptt_horizon == 0 or segmented, "trainer.bptt_horizon", trainer.bptt_horizon,
              "is for segment minibatches (recurrent policies, ppo.vtrace, ppo.prio_alpha > 0); set "
              "agent.lstm_size, ppo.vtrace or ppo.prio_alpha too, or drop the flag")
        horizon = trainer.bptt_horizon or trainer.num_steps
        if segmented and horizon >= 1 and trainer.num_steps >= 1:
            check(trainer.num_steps % horizon == 0, "trainer.bptt_horizon", trainer.bptt_horizon,
                  f"must divide trainer.num_steps={trainer.num_steps}")
        if ppo.num_minibatches >= 1 and env.num_envs >= 1 and horizon >= 1 and trainer.num_steps % horizon == 0:
            if segmented:
                units, what = env.num_envs * (trainer.num_steps // horizon), ("the number of segments env.num_envs x "
                                                                             "trainer.num_steps / bptt_horizon")
            else:
                units, what = env.num_envs * trainer.num_steps, "the batch size env.num_envs x trainer.num_steps"
            check(ppo.num_minibatches <= units, "ppo.num_minibatches", ppo.num_minibatches,
                  f"is more than {what} = {units}; use at most {units}")
        positive("ppo.clip_coef", ppo.clip_coef)
        non_negative("ppo.ent_coef", ppo.ent_coef)
        non_negative("ppo.vf_coef", ppo.vf_coef)
        positive("ppo.max_grad_norm", ppo.max_grad_norm)
        if ppo.target_kl is not None:
            positive("ppo.target_kl", ppo.target_kl)

        for name in ppo.custom_losses:
            check(name in typing.get_args(CustomLossName) or ":" in name, "ppo.custom_losses", ppo.custom_losses,
                  f"names unknown loss {name!r}; choose from {sorted(typing.get_args(CustomLossName))} or name "
                  "one of your own by import path 'module:function'")
        try:  # the grammar of the losses named by import path
            for name in ppo.custom_losses:
                if ":" in name:
                    parse_import(name, "ppo.custom_losses entry")
        except ConfigError as err:
            errors.append(str(err))
        check(len(set(ppo.custom_losses)) == len(ppo.custom_losses), "ppo.custom_losses", ppo.custom_losses,
              "lists a loss twice")
        non_negative("ppo.curiosity_coef", ppo.curiosity_coef)
        non_negative("ppo.diversity_coef", ppo.diversity_coef)
        check(("kickstart" in ppo.custom_losses) == (ppo.kickstart_teacher is not None), "ppo.kickstart_teacher",
              ppo.kickstart_teacher, "and 'kickstart' in ppo.custom_losses go together: pass both --ppo.custom-losses "
              "kickstart and --ppo.kickstart-teacher RUN_DIR_OR_POLICY_FILE")
        non_negative("ppo.kickstart_action_coef", ppo.kickstart_action_coef)
        non_negative("ppo.kickstart_value_coef", ppo.kickstart_value_coef)
        check(ppo.kickstart_steps >= 1, "ppo.kickstart_steps", ppo.kickstart_steps, "must be >= 1")
        positive("ppo.vtrace_rho_clip", ppo.vtrace_rho_clip)
        positive("ppo.vtrace_c_clip", ppo.vtrace_c_clip)
        non_negative("ppo.prio_alpha", ppo.prio_alpha)
        check(isinstance(ppo.prio_beta0, (int, float)) and 0 <= ppo.prio_beta0 <= 1, "ppo.prio_beta0", ppo.prio_beta0,
              "must be in [0, 1]")

        check(self.checkpoint.interval >= 0, "checkpoint.interval", self.checkpoint.interval, "must be >= 0")
        check(self.checkpoint.keep >= 1, "checkpoint.keep", self.checkpoint.keep, "must be >= 1")
        check(self.checkpoint.keep_policies >= 0, "checkpoint.keep_policies", self.checkpoint.keep_policies,
              "must be >= 0 (0 keeps every policy)")
        check(self.evaluation.interval >= 0, "evaluation.interval", self.evaluation.interval, "must be >= 0")
        check(self.evaluation.episodes >= 1, "evaluation.episodes", self.evaluation.episodes, "must be >= 1")
        check(not self.evaluation.video or self.evaluation.interval > 0, "evaluation.video", True,
              "records evaluation episodes, but evaluation.interval=0 runs none: set --evaluation.interval N")
        curriculum = self.curriculum
        tasks = curriculum.tasks or [env.id]
        try:  # the rules curriculum.py applies when it builds the curriculum (make_curriculum)
            for task in tasks:
                parse_task_family(task)
            if len(tasks) > 1:
                task_probabilities(curriculum.weights, len(tasks))
            check(len(curriculum.score_ranges) in (0, 1, len(tasks)), "curriculum.score_ranges",
                  curriculum.score_ranges, f"must give one range per entry of curriculum.tasks ({len(tasks)}) or one")
            for text in curriculum.score_ranges:
                parse_range(text, "curriculum.score_ranges entry")
        except ConfigError as err:
            errors.append(str(err))
        check(curriculum.algorithm in typing.get_args(CurriculumName), "curriculum.algorithm", curriculum.algorithm,
              f"must be one of {list(typing.get_args(CurriculumName))}")
        check(curriculum.num_active_tasks >= 1, "curriculum.num_active_tasks", curriculum.num_active_tasks,
              "must be >= 1")
        check(0 <= curriculum.rand_task_rate <= 1, "curriculum.rand_task_rate", curriculum.rand_task_rate,
              "must be in [0, 1]")
        check(0 < curriculum.ema_timescale <= 1, "curriculum.ema_timescale", curriculum.ema_timescale,
              "must be in (0, 1]")
        non_negative("curriculum.exploration_bonus", curriculum.exploration_bonus)
        check(0 <= curriculum.progress_smoothing < 0.5, "curriculum.progress_smoothing", curriculum.progress_smoothing,
              "must be in [0, 0.5)")
        for name in ("sample_threshold", "memory", "min_presentations"):
            check(getattr(curriculum, name) >= 1, f"curriculum.{name}", getattr(curriculum, name), "must be >= 1")

        check(bool(self.log.run_root.strip()), "log.run_root", self.log.run_root, "must be a directory path")
        non_negative("log.console_interval", self.log.console_interval)
        check(not self.log.wandb_checkpoints or self.log.wandb, "log.wandb_checkpoints", True,
              "uploads to the wandb run: add --log.wandb")
        check(bool(self.log.wandb_project.strip()), "log.wandb_project", self.log.wandb_project, "must be a name")

        if errors:
            raise ConfigError("invalid training config:\n  " + "\n  ".join(errors))
        return self


# Metta's older YAML kept the PPO settings in the trainer section.
LEGACY_TRAINER_KEYS = ("gamma", "gae_lambda", "update_epochs", "num_minibatches", "norm_adv", "clip_coef",
                       "clip_vloss", "ent_coef", "vf_coef", "max_grad_norm", "target_kl")


def _move_legacy_keys(data: dict[str, Any]) -> dict[str, Any]:
    trainer = data.get("trainer")
    if not isinstance(trainer, dict) or not any(key in trainer for key in LEGACY_TRAINER_KEYS):
        return data
    trainer = dict(trainer)
    ppo = dict(data.get("ppo") or {})
    for key in LEGACY_TRAINER_KEYS:
        if key in trainer:
            ppo.setdefault(key, trainer.pop(key))
    return {**data, "trainer": trainer, "ppo": ppo}


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from `data`, recursing into nested sections, rejecting unknown keys."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            section, dot, rest = str(key).partition(".")
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            if dot and dataclasses.is_dataclass(hints.get(section)):  # `env.id: X`, a flag's spelling
                hint = f"nest it under its section: '{prefix}{section}:' then '{rest}: ...' on an indented line below"
            elif close:
                hint = f"did you mean '{prefix}{close[0]}'?"
            else:
                hint = f"valid keys: {sorted(fields)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'; {hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, name: str) -> Any:
    """Check `value` against a field type (int, float, str, bool, Literal, X | None, list[X]); ints pass as
    floats. A Literal is checked for its type here and for its choices by validate(), like every value."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is Literal:
        kind = type(args[0])
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be a list")
        return [_coerce(item, args[0], name) for item in value]
    if type(None) in args:  # X | None
        return None if value is None else _coerce(value, next(a for a in args if a is not type(None)), name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (float, int) and isinstance(value, str):  # YAML 1.1 reads 1e-5 and 2e4 (no dot) as strings
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, float) and value.is_integer():  # 2e4, 20000.0: exactly an int
        return int(value)
    if kind is bool and isinstance(value, str):  # "False", "no": as the user meant it, not a truthy string
        return read_bool(value, name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{name}={value!r} must be of type {kind.__name__}")
    return value


def parse_task(spec: str) -> tuple[str, dict[str, Any], str | None]:
    """A task string as (ID, kwargs, module): '[module:]ID[:key=value,key=value]'.

    'CartPole-v1', 'CartPole-v1:max_episode_steps=200', 'ale_py:ALE/Pong-v5' (gymnasium's convention:
    import `module`, which registers ID, then make ID) and 'ale_py:ALE/Pong-v5:frameskip=4'. The text
    before the first ':' is a module when it is a dotted Python name and the text after it (up to the
    next ':') holds no '='. Values are read as JSON when they parse, else kept as strings.
    """
    head, sep, rest = spec.partition(":")
    module = None
    if sep and _is_module_name(head.strip()) and "=" not in rest.partition(":")[0]:
        module = head.strip()
        head, _, rest = rest.partition(":")
    return head.strip(), parse_kwargs(rest, f"task {spec!r}"), module


@dataclass(frozen=True)
class Setting:
    """A setting that a task family draws for each task: an integer or a float in [low, high] (both ends
    included), or one of `choices` (curriculum.py draws them)."""

    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()


def parse_task_family(spec: str) -> tuple[str, dict[str, Any], dict[str, Setting], str | None]:
    """A task family as (ID, fixed kwargs, settings drawn per task, module): parse_task's grammar, where a
    value may also be a range, 'low..high' (integers when both ends are, else floats), or a choice,
    'a|b|c' (each read as JSON when it parses). 'mettagrid/hearts:altars=1..8,width=9|15|25'. A task
    without ranges or choices is a family of one."""
    env_id, kwargs, module = parse_task(spec)
    settings = {}
    for key, value in list(kwargs.items()):
        if isinstance(value, str) and (setting := parse_setting(value, f"task {spec!r}: {key}={value}")):
            settings[key] = setting
            del kwargs[key]
    return env_id, kwargs, settings, module


def parse_setting(text: str, where: str) -> Setting | None:
    """'low..high' or 'a|b|c' as a Setting; None for a plain string value."""
    low, dots, high = text.partition("..")
    if dots:
        ends = [_number(low), _number(high)]
        if None not in ends:
            kind = "int" if all(isinstance(end, int) for end in ends) else "float"
            if ends[0] > ends[1]:
                raise ConfigError(f"{where} is an empty range: write low..high with low <= high")
            return Setting(kind, ends[0], ends[1])
        if ends != [None, None]:
            raise ConfigError(f"{where}: a range needs two numbers, low..high (e.g. 1..8 or 0.5..2.0)")
    if "|" in text:
        parts = text.split("|")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"{where} has an empty choice: write a|b|c")
        return Setting("choice", choices=tuple(_json_or_text(part.strip()) for part in parts))
    return None


def parse_range(text: str, where: str) -> tuple[float, float]:
    """'low..high' as (low, high), low < high (curriculum.score_ranges)."""
    low, dots, high = text.partition("..")
    ends = (_number(low), _number(high))
    if not dots or None in ends or not ends[0] < ends[1]:
        raise ConfigError(f"{where}={text!r} must be a range 'low..high' with low < high, e.g. 0..10")
    return float(ends[0]), float(ends[1])


def _number(text: str) -> int | float | None:
    value = _json_or_text(text.strip())
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}
"""Python's spellings of JSON's true, false and null: a value written either way means the same."""


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return PYTHON_CONSTANTS.get(text.strip(), text)


BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
"""How people write a bool (any case): Python's True/False, JSON's and YAML's true/false, yes/no, on/off, 1/0."""


def read_bool(value: Any, where: str) -> bool:
    """`value`, meant as a bool, as its user wrote it (BOOL_WORDS, or a bool, or the integers 1 and 0);
    ConfigError for anything else, so that a typo never silently reads as True."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word not in BOOL_WORDS:
        raise ConfigError(f"{where}={value!r} must be a bool: true or false (also True/False, yes/no, on/off, 1/0)")
    return BOOL_WORDS[word]


def read_kwargs_for(function: Any, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """`kwargs` for a call of `function` (a class or a function), each value of a parameter that
    `function` declares a bool (by its annotation or its default) read with read_bool: 'no',
    'False' and 'off' reach it as False, never as a non-empty string that Python would take as True."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C extension without a signature: nothing to read by
        return dict(kwargs)
    read = dict(kwargs)
    for key, value in kwargs.items():
        parameter = parameters.get(key)
        if parameter is not None and value is not None and _takes_bool(parameter):
            read[key] = read_bool(value, f"{where}: {key}")
    return read


def _takes_bool(parameter: inspect.Parameter) -> bool:
    """Whether a parameter is declared a bool (or a bool or None): by its annotation, written or
    postponed as a string, or by its default."""
    annotation = parameter.annotation
    if isinstance(annotation, str):
        names = [part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")]
    else:
        names = [getattr(part, "__name__", str(part)) for part in (typing.get_args(annotation) or (annotation,))]
    return "bool" in names or isinstance(parameter.default, bool)


def parse_import(spec: str, what: str) -> tuple[str, str, dict[str, Any]]:
    """'module:Name[:key=value,...]' as (module, Name, kwargs), e.g. 'minigrid.wrappers:ImgObsWrapper'."""
    module, sep, rest = spec.partition(":")
    name, _, args = rest.partition(":")
    if not sep or not _is_module_name(module.strip()) or not name.strip().isidentifier():
        raise ConfigError(f"{what} {spec!r} must be an import path 'module:Name' with optional ':key=value,...', "
                          "e.g. 'minigrid.wrappers:ImgObsWrapper'")
    return module.strip(), name.strip(), parse_kwargs(args, f"{what} {spec!r}")


def parse_kwargs(text: str, where: str) -> dict[str, Any]:
    """'key=value,key=value' as a dict; values are JSON when they parse (numbers, true/false, null, lists,
    quoted strings), else strings. Commas inside brackets or quotes belong to the value."""
    kwargs = {}
    for item in _split_top_level(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: {item!r} is not key=value")
        kwargs[key.strip()] = _json_or_text(value)
    return kwargs


def _split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes; empty items dropped."""
    items, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _is_module_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def task_probabilities(weights: list[float] | None, num_tasks: int) -> list[float]:
    """Each task's sampling probability, weights[i] / sum(weights); no weights: uniform."""
    weights = [1.0] * num_tasks if weights is None or len(weights) == 0 else [float(w) for w in weights]
    if len(weights) != num_tasks or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"curriculum.weights={weights} must give one finite weight >= 0 per task "
                          f"({num_tasks} tasks), not all zero")
    return [w / sum(weights) for w in weights]


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
