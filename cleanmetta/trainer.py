"""Run setup and the functional training loop.

On the default run, train.py takes from here the device, the seeding and the learning rate of
each epoch (`learning_rate_at`: linear annealing from trainer.learning_rate to 0, CleanRL's
schedule); the optimiser is optimizers.py's (`make_optimizer`, imported here too).

The helpers (device, seeding, learning-rate schedule, run directory, signal handling,
a checkpoint saved when the env or an evaluation raises; resume.py: config files, checkpoint
save/restore) are shared by train.py's explicit loop and by `functional_training_loop`, which
runs the same epoch as a replaceable `step_fn`:

    state = functional_training_loop(config, config.ppo, policy, curriculum, policy_store,
                                      step_fn=my_step, custom_losses=[my_loss])

A test trains with both and checks that they end with identical parameters.

Under torchrun both loops run on every process, unchanged: `join_process_group` starts the
process, each rank seeds its own RNG and environments (`rank_seed`), the ranks start from rank 0's
weights, and the helpers share what must be shared: the run directory's name, the checkpoint
(resume.py), the decision to stop. Rank 0 alone evaluates and writes files (log.py: and logs, to wandb too).
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cleanmetta import distributed
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import ConfigError, PPOConfig, TrainerConfig, TrainingConfig
from cleanmetta.curriculum import Curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, suite_from_config, video_dir
from cleanmetta.experience import Experience
from cleanmetta.files import make_directory
from cleanmetta.log import StatsLogger, end_of_run, start_wandb
from cleanmetta.losses import make_custom_losses, set_agent_steps
from cleanmetta.normalize import RewardScaler
from cleanmetta.optimizers import averaged_weights, make_optimizer, set_learning_rate
from cleanmetta.ppo import CustomLoss, PPOOptimizer
from cleanmetta.resume import finished, restore_checkpoint, save_checkpoint
from cleanmetta.timing import Split


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a CUDA request on a machine without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but torch.cuda.is_available() is False; "
                          "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
    return device


def rank_seed(config: TrainingConfig) -> int:
    """This process's seed: config.seed on rank 0 (and without torchrun), a different one per rank."""
    return distributed.seed_for_rank(config.seed)


def join_process_group(config: TrainingConfig) -> torch.device:
    """This process's device; under torchrun, also join the process group (NCCL on cuda:LOCAL_RANK,
    gloo on the CPU). Without torchrun: resolve_device(config.device), nothing else."""
    device = resolve_device(config.device)
    if device.type == "cuda" and distributed.launched_by_torchrun():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    distributed.init(device, config.distributed_timeout)
    return device


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic
    torch.backends.cudnn.benchmark = not torch_deterministic


def make_reward_scaler(config: TrainingConfig, vecenv) -> RewardScaler | None:
    """The collector's reward scaler when ppo.normalize_reward, else None."""
    return RewardScaler(vecenv.num_envs, config.ppo.gamma) if config.ppo.normalize_reward else None


def learning_rate_at(trainer: TrainerConfig, epoch: int, num_epochs: int) -> float:
    """Learning rate for 0-based `epoch` of `num_epochs`. First a warm-up over the first
    lr_warmup x num_epochs epochs (rising linearly: epoch i of w gets (i + 1) / (w + 1) of the
    rate), then, when anneal_lr, a decay from learning_rate towards 0 over the remaining epochs:
    linear (1 - progress; without warm-up, CleanRL's 1 - epoch / num_epochs) or cosine
    ((1 + cos(pi x progress)) / 2); else constant. A function of the epoch only, so a resumed run
    continues the same schedule."""
    warmup = round(trainer.lr_warmup * num_epochs)
    if epoch < warmup:
        return trainer.learning_rate * (epoch + 1) / (warmup + 1)
    if not trainer.anneal_lr:
        return trainer.learning_rate
    progress = (epoch - warmup) / (num_epochs - warmup)
    if trainer.lr_schedule == "cosine":
        return trainer.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return trainer.learning_rate * (1.0 - progress)


def run_dir_for(config: TrainingConfig) -> str:
    """RUN_ROOT/experiment_name; without a name, ENV__SEED__<start time>, or under torchrun
    ENV__SEED__<torchrun's run id> when it has one (--standalone always does), so that a group
    restarted by `torchrun --max-restarts` finds the same directory and resumes it."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none") if distributed.launched_by_torchrun() else "none"
    stamp = run_id[:8] if run_id not in ("", "none") else str(int(time.time()))
    name = config.experiment_name or f"{re.sub(r'[/:]', '-', config.env.id)}__{config.seed}__{stamp}"
    run_dir = distributed.broadcast_object(os.path.join(config.log.run_root, name))  # torchrun: rank 0's clock
    if distributed.is_main():  # a path that cannot be written is said now, before anything is built
        make_directory(run_dir, f"log.run_root={config.log.run_root!r}")
    return run_dir


def num_epochs_for(config: TrainingConfig, experience: Experience) -> int:
    """Epochs needed to reach trainer.total_timesteps agent steps over all processes: the budget is
    rounded up to whole rollouts (planned_steps)."""
    return math.ceil(config.trainer.total_timesteps / (experience.batch_size * distributed.world_size()))


def planned_steps(config: TrainingConfig, experience: Experience) -> int:
    """The agent steps the run will train: num_epochs_for x the agent steps of one epoch (all processes)."""
    return num_epochs_for(config, experience) * experience.batch_size * distributed.world_size()


def announce(run_dir: str, config: TrainingConfig, experience: Experience) -> None:
    """Print (rank 0) where the run writes and how many steps it trains: trainer.total_timesteps,
    rounded up to whole rollouts."""
    if not distributed.is_main():
        return
    epochs, planned = num_epochs_for(config, experience), planned_steps(config, experience)
    rounded = (f" (trainer.total_timesteps {config.trainer.total_timesteps:,} rounded up to whole rollouts)"
               if planned != config.trainer.total_timesteps else "")
    print(f"run directory: {run_dir} | {epochs:,} epochs x {planned // epochs:,} agent steps = {planned:,}{rounded}",
          flush=True)


def announce_resume(run_dir: str, config: TrainingConfig, experience: Experience, epoch: int) -> None:
    """A resumed run (rank 0) whose budget or schedule changed says what that does to the learning rate:
    the schedule runs over the new number of epochs, so the rate at the resumed epoch moves."""
    path = os.path.join(run_dir, "config.json")  # the run's config so far (the logger rewrites it later)
    if not epoch or not distributed.is_main() or not os.path.exists(path):
        return
    try:
        before = TrainingConfig.from_yaml(path)
    except (OSError, ValueError):
        return
    num_epochs, epochs_before = num_epochs_for(config, experience), num_epochs_for(before, experience)
    now, then = (learning_rate_at(config.trainer, epoch, num_epochs),
                 learning_rate_at(before.trainer, epoch, epochs_before))
    if not math.isclose(now, then, rel_tol=1e-9, abs_tol=1e-15):
        print(f"resuming at epoch {epoch:,}: the learning-rate schedule now runs over {num_epochs:,} epochs (it ran "
              f"over {epochs_before:,}), so the rate at this epoch is {now:.3g} where the run had reached {then:.3g}",
              flush=True)


class StopOnSignal:
    """SIGINT / SIGTERM ask the loop to stop after the current epoch (which then saves); a second
    SIGINT interrupts at once.

    `requested` is what the loop reads. In one process it is true from the signal on. Under torchrun
    a signal may reach one rank only, and all must stop at the same epoch: `sync()`, called by
    every rank once per epoch (train.py and default_training_step do), sets `requested` on every
    rank when any rank got a signal; between calls it does not change."""

    def __init__(self):
        self.signalled = False
        self.signal_name: str | None = None  # the signal that stopped the run (end_of_run says it)
        self.agreed = False
        self.previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.agreed if distributed.world_size() > 1 else self.signalled

    @requested.setter
    def requested(self, value: bool) -> None:
        """A step_fn may stop the run itself (under torchrun: on every rank, e.g. from a statistic all
        ranks share, such as the logger's last-20 return)."""
        self.signalled = self.agreed = value

    def sync(self) -> bool:
        """`requested`, after agreeing on it with the other ranks (one all-reduce under torchrun)."""
        self.agreed = distributed.any_rank(self.signalled)
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signalled, self.signal_name = True, signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this epoch, saving a checkpoint, then exiting", flush=True)

    def __enter__(self) -> StopOnSignal:
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class SaveOnError:
    """`with guard:` around a phase that leaves the weights whole (the rollout, an evaluation): an
    exception there first saves a checkpoint (`save()`: the run as of its last whole epoch), says so
    after the traceback, and goes on up, so that `--resume` continues from it instead of from the last
    periodic checkpoint. Never around the update, where an exception may leave the weights between
    two optimiser steps. Under torchrun it saves nothing: the other ranks cannot join the save (the
    last periodic checkpoint stands; distributed.report_failure stops them)."""

    def __init__(self, save: Callable[[], None], run_dir: str):
        self.save, self.run_dir = save, run_dir

    def __enter__(self) -> SaveOnError:
        return self

    def __exit__(self, kind, err, traceback) -> bool:
        if not isinstance(err, (Exception, KeyboardInterrupt)) or distributed.world_size() > 1:
            return False
        try:
            self.save()
            note = (f"checkpoint saved at the last whole epoch before this {kind.__name__}: python train.py "
                    f"--resume {self.run_dir} continues from it")  # (or found saved already)
        except Exception as save_err:  # e.g. a full disk: the checkpoint before it stays in force
            note = f"no checkpoint saved after this {kind.__name__}: {save_err}"
        if hasattr(err, "add_note"):  # printed after the traceback (Python 3.11+)
            err.add_note(note)
        else:
            print(note, file=sys.stderr, flush=True)
        return False


# ---- the functional loop ---------------------------------------------------------------------------

@dataclass
class TrainingState:
    epoch: int = 0
    agent_steps: int = 0
    num_epochs: int | None = None
    learning_rate: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)  # of the policy as of `epoch` ({} when not evaluated)
    checkpoint_epoch: int | None = None  # epoch of the last checkpoint written
    stop: StopOnSignal = field(default_factory=StopOnSignal)


@dataclass
class TrainingComponents:
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    vecenv: Any
    collector: RolloutCollector
    ppo: PPOOptimizer
    logger: StatsLogger
    checkpointer: TrainingCheckpointer
    evaluator: PolicyEvaluator
    custom_losses: list[CustomLoss]
    device: torch.device
    curriculum: Curriculum | None = None  # learning progress learns from every rollout's episodes
    start_epoch: int = 0        # where the run directory's checkpoint left off (0 for a new run)
    start_agent_steps: int = 0
    split: Split = field(default_factory=lambda: Split(distributed.waited))  # where each epoch's time goes


def create_training_components(config: TrainingConfig, ppo_config: PPOConfig, policy, vecenv,
                               experience: Experience, policy_store: PolicyStore | None = None,
                               custom_losses: Sequence[CustomLoss] | None = None,
                               optimizer: torch.optim.Optimizer | None = None,
                               curriculum: Curriculum | None = None) -> TrainingComponents:
    """Everything one training epoch touches, built the way train.py builds it (under torchrun, the
    policy starts from rank 0's weights)."""
    device = experience.device
    distributed.broadcast_module(policy)
    run_dir = run_dir_for(config)
    optimizer = optimizer or make_optimizer(policy, config.trainer, device)
    checkpointer = TrainingCheckpointer(run_dir, policy_store or PolicyStore(run_dir), keep=config.checkpoint.keep)
    reward_scaler = make_reward_scaler(config, vecenv)
    evaluator = PolicyEvaluator(suite_from_config(config), device, config.evaluation.deterministic,
                                video_dir(run_dir) if config.evaluation.video else None)
    epoch, agent_steps = restore_checkpoint(checkpointer, config, policy, optimizer, vecenv, reward_scaler, curriculum)
    wandb_run = start_wandb(config, run_dir, resume=agent_steps > 0)
    if config.log.wandb_checkpoints:
        checkpointer.wandb_run = wandb_run
    losses = list(custom_losses) if custom_losses is not None else make_custom_losses(ppo_config, vecenv, device)
    announce(run_dir, config, experience)
    announce_resume(run_dir, config, experience, epoch)
    logger = StatsLogger(run_dir, config, planned_steps(config, experience), config.log.tensorboard,
                         config.log.console_interval, start_step=agent_steps, wandb_run=wandb_run)
    split = Split(distributed.waited)  # the epochs' time from here on
    return TrainingComponents(
        policy=policy, optimizer=optimizer, vecenv=vecenv, split=split,
        collector=RolloutCollector(vecenv, policy, experience, device, reward_scaler, split),
        ppo=PPOOptimizer(policy, optimizer, device, ppo_config), logger=logger,
        checkpointer=checkpointer,
        evaluator=evaluator,
        custom_losses=losses, device=device, curriculum=curriculum, start_epoch=epoch, start_agent_steps=agent_steps,
    )


def default_training_step(state: TrainingState, components: TrainingComponents, config: TrainingConfig,
                          experience: Experience) -> dict[str, float]:
    """One epoch, as train.py runs it: collect, update, log; evaluate and checkpoint when due (an
    evaluated epoch is a checkpoint epoch too)."""
    c = components
    if state.num_epochs is None:  # a fresh TrainingState(): start where the components resumed
        state.epoch, state.agent_steps = c.start_epoch, c.start_agent_steps
        state.num_epochs = num_epochs_for(config, experience)
    state.learning_rate = learning_rate_at(config.trainer, state.epoch, state.num_epochs)
    set_learning_rate(c.optimizer, state.learning_rate)

    saving = SaveOnError(lambda: save_checkpoint(c.checkpointer, config, c.policy, c.optimizer, state.epoch,
                                                 state.agent_steps, {}, c.collector.reward_scaler, c.curriculum,
                                                 if_missing=True), c.checkpointer.checkpoint_dir)
    with saving:  # an exception in the env: save the run as of its last whole epoch, then go on up
        rollout_stats, num_steps = c.collector.collect()
    state.agent_steps += num_steps
    curriculum_stats = c.curriculum.update(rollout_stats) if c.curriculum is not None else {}
    set_agent_steps(c.custom_losses, state.agent_steps)
    with c.split.part("update"):
        update_stats = c.ppo.update(experience, c.custom_losses, progress=(state.epoch + 1) / state.num_epochs)
    state.epoch += 1
    with c.split.part("logging"):
        c.logger.log_epoch(state.agent_steps, rollout_stats, update_stats, state.learning_rate, curriculum_stats,
                           c.split.epoch())

    evaluated = bool(config.evaluation.interval) and state.epoch % config.evaluation.interval == 0
    with saving, c.split.part("evaluation"):
        with averaged_weights(c.optimizer, when=evaluated):  # schedule-free: evaluate its averaged weights
            state.scores = evaluate_and_log(c.evaluator, c.policy, c.logger, state.agent_steps) if evaluated else {}
    last = state.stop.sync() or state.epoch >= state.num_epochs  # torchrun: every rank stops at the same epoch
    # an evaluated policy is saved with its scores, so that best:<score> can choose it
    if last or evaluated or (config.checkpoint.interval and state.epoch % config.checkpoint.interval == 0):
        with c.split.part("checkpoint"):
            save_checkpoint(c.checkpointer, config, c.policy, c.optimizer, state.epoch, state.agent_steps,
                            state.scores, c.collector.reward_scaler, c.curriculum)
        state.checkpoint_epoch = state.epoch
    return update_stats


def evaluate_and_log(evaluator: PolicyEvaluator, policy, logger: StatsLogger, agent_steps: int) -> dict[str, float]:
    """Evaluate on rank 0 (the only rank without torchrun) and log the scores (and the videos, when the
    evaluator records them); other ranks get {}."""
    if not distributed.is_main():
        return {}
    scores: dict[str, float] = {}
    videos: dict[str, str] = {}
    for name, result in evaluator.evaluate(policy, agent_steps).items():
        scores.update(result.scores(name))
        videos.update({f"videos/{name}": path for path in result.recordings if path.endswith(".mp4")})
    logger.log_evaluation(agent_steps, scores)  # TensorBoard / wandb, and said when it arrives
    logger.log_videos(agent_steps, videos)
    return scores


StepFn = Callable[[TrainingState, TrainingComponents, TrainingConfig, Experience], Any]


def functional_training_loop(config: TrainingConfig, ppo_config: PPOConfig, policy, curriculum: Curriculum,
                             policy_store: PolicyStore | None = None, step_fn: StepFn | None = None,
                             custom_losses: Sequence[CustomLoss] | None = None) -> TrainingState:
    """Train `policy` on `curriculum` until config.trainer.total_timesteps; return the final state.

    Builds the envs, buffer and components from `config` (seed the RNGs before building the policy
    for a reproducible run), resumes from the run directory's checkpoint when there is one, then
    calls `step_fn` (default: default_training_step) once per epoch.

    Under torchrun it joins the process group on the policy's device (on GPUs, build the policy on
    `join_process_group(config)`'s device), trains from rank 0's weights, and reseeds each rank's
    RNG with `rank_seed(config)` before it builds the components. A custom step_fn that does not call
    default_training_step must call `state.stop.sync()` once per epoch for signals to stop all ranks.
    The process stays in the group afterwards (for the caller's own collectives): leave it with
    `distributed.close()` when done, as the examples do.
    """
    config.validate()
    torch.set_num_threads(config.torch_threads)
    step_fn = step_fn or default_training_step
    device = next(policy.parameters()).device
    distributed.init(device, config.distributed_timeout)  # torchrun: join the others (see the docstring)
    vecenv = make_vecenv(config.env, rank_seed(config), curriculum)
    experience = Experience.for_env(vecenv, config.trainer.num_steps, device, getattr(policy, "lstm_size", 0),
                                    config.trainer.bptt_horizon)
    if distributed.world_size() > 1:  # torchrun: a sampling stream of its own for each rank (a resume restores it)
        seed_everything(rank_seed(config), config.torch_deterministic)
    components = create_training_components(config, ppo_config, policy, vecenv, experience, policy_store,
                                            custom_losses, curriculum=curriculum)
    state = TrainingState(epoch=components.start_epoch, agent_steps=components.start_agent_steps,
                          num_epochs=num_epochs_for(config, experience),
                          checkpoint_epoch=components.start_epoch or None)  # a resumed run's checkpoint is on disk
    finished(components.checkpointer.checkpoint_dir, state.epoch, state.agent_steps, state.num_epochs)  # says so
    with state.stop:
        while state.epoch < state.num_epochs and not state.stop.requested:
            step_fn(state, components, config, experience)
    if state.checkpoint_epoch != state.epoch:  # e.g. a step_fn that stopped early: never lose the last epochs
        save_checkpoint(components.checkpointer, config, policy, components.optimizer, state.epoch,
                        state.agent_steps, state.scores, components.collector.reward_scaler, curriculum)
    perf = components.split.whole_run()
    components.logger.close(perf, end_of_run(components.logger, state.epoch, state.num_epochs, state.checkpoint_epoch,
                                             state.stop.signal_name, perf))
    vecenv.close()
    return state
