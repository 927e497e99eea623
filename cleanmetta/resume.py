"""Resuming a run: the config it continues with, its checkpoint saved and restored, and its run
directory made to agree with the checkpoint.

train.py and the functional loop (trainer.py) call `save_checkpoint` every checkpoint.interval
epochs, after every evaluation and at the end, and `restore_checkpoint` once at the start;
train.py's --resume and --config read their base config here (`resume_base`, `config_file_base`).

Under torchrun rank 0 alone reads and writes the run's files: it writes the checkpoint with every
rank's RNG state; on resume it reads the config, the checkpoint (and prepares the directory) and
sends them, or the error it met, to every rank, which restores the same policy and optimizer and
its own RNG stream. The other machines need no copy of the run directory.
"""

from __future__ import annotations

import os
from typing import Any

from cleanmetta import distributed
from cleanmetta.checkpoint import (CheckpointError, TrainingCheckpointer, remove_leftovers, rng_state, set_aside,
                                   set_rng_state)
from cleanmetta.config import ConfigError, TrainingConfig
from cleanmetta.curriculum import Curriculum
from cleanmetta.normalize import RewardScaler
from cleanmetta.optimizers import averaged_weights, train_mode


def finished(run_dir: str, epoch: int, agent_steps: int, num_epochs: int) -> bool:
    """True (and says so, on rank 0) when a resumed run has trained all its epochs already."""
    if epoch < num_epochs:
        return False
    if distributed.is_main():
        print(f"{run_dir} has finished: epoch {epoch} of {num_epochs}, {agent_steps:,} agent steps; nothing to "
              "train (raise --trainer.total-timesteps to train it further)", flush=True)
    return True


# ---- config files ---------------------------------------------------------------------------------

def resume_base(run_dir: str) -> TrainingConfig:
    """The config `--resume RUN_DIR` continues: RUN_DIR/config.json, or the copy in its newest trainer
    state when that file is missing or unreadable. Under torchrun only rank 0 reads it (defaults on
    the others, which get rank 0's config once they join): no other machine needs the run's files."""
    if distributed.launch_rank() != 0:
        return TrainingConfig()
    path = os.path.join(run_dir, "config.json")
    try:
        return TrainingConfig.from_yaml(path)
    except (OSError, ValueError) as err:
        state = TrainingCheckpointer(run_dir).load_trainer_state(run_dir) if os.path.isdir(run_dir) else None
        if state is None or "config" not in state:
            raise ConfigError(f"--resume {run_dir}: no readable config.json and no checkpoint ({err})") from None
        print(f"{path} unreadable ({type(err).__name__}); resuming with the config saved in {state['path']}")
        return TrainingConfig.from_dict(state["config"])


def config_file_base(path: str) -> TrainingConfig:
    """The config of `--config FILE`. A run's own config.json names that run (experiment_name); used
    as a config file it starts a new run, under a new name, instead of reopening the old one
    (`--resume RUN_DIR` continues a run)."""
    config = TrainingConfig.from_yaml(path)
    run_dir = os.path.dirname(os.path.abspath(path))
    if (config.experiment_name == os.path.basename(run_dir) and os.path.basename(path) == "config.json"
            and any(os.path.exists(os.path.join(run_dir, name)) for name in ("policies.json", "episodes.csv"))):
        if distributed.launch_rank() == 0:
            print(f"{path} is the config of run {config.experiment_name}: training a new run with it "
                  f"(--resume {run_dir} continues that one)", flush=True)
        config.experiment_name = None
    return config


# ---- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(checkpointer: TrainingCheckpointer, config: TrainingConfig, policy, optimizer,
                    epoch: int, agent_steps: int, scores: dict[str, float] | None = None,
                    reward_scaler: RewardScaler | None = None, curriculum: Curriculum | None = None,
                    if_missing: bool = False) -> None:
    """One checkpoint (TrainingCheckpointer.save_checkpoint: in force only once whole), then the
    policies beyond checkpoint.keep_policies pruned (TrainingCheckpointer.prune_policies). `scores`:
    those measured on this very policy ({} when it was not evaluated). `if_missing`: write nothing
    when `epoch` is saved already (its record keeps its scores and pin). Under torchrun every rank
    calls this and rank 0 writes, with every rank's RNG state (and the curriculum's state, the same
    on every rank)."""
    if if_missing and any(record.epoch == epoch for record in checkpointer.policy_store.records()):
        return
    extra = {"reward_scaler": reward_scaler.state_dict()} if reward_scaler is not None else {}
    curriculum_state = curriculum.state_dict() if curriculum is not None else {}
    if curriculum_state:  # learning progress: its pool
        extra["curriculum"] = curriculum_state
    if distributed.world_size() > 1:
        extra.update(world_size=distributed.world_size(), rank_rng=distributed.all_gather_objects(rng_state()))
    with averaged_weights(optimizer):  # schedule-free: save its averaged weights (on every rank: all stay alike)
        if not distributed.is_main():
            return
        checkpointer.save_checkpoint(policy, epoch, agent_steps, optimizer.state_dict(), {"scores": scores or {}},
                                     config=config.to_dict(), **extra)
    checkpointer.prune_policies(config.checkpoint.keep_policies)


def restore_checkpoint(checkpointer: TrainingCheckpointer, config: TrainingConfig, policy, optimizer,
                       vecenv, reward_scaler: RewardScaler | None = None,
                       curriculum: Curriculum | None = None) -> tuple[int, int]:
    """Load the run directory's last checkpoint into policy, optimizer (reward scaler, curriculum);
    return (epoch, agent_steps).

    Returns (0, 0) when there is none or checkpoint.resume is off; an earlier run's files in the
    directory are then moved aside to RUN.old-N (checkpoint.set_aside), so that two runs never mix.
    A resumed run deletes what was saved after its checkpoint (policies, newer trainer states that
    did not read back), which it is about to train again. Environments cannot be saved, so episodes
    in flight at the checkpoint restart: the envs are reseeded from (seed, epoch). Under torchrun
    rank 0 reads the checkpoint (the other ranks' machines may not see its files) and sends it to
    every rank, or the error it met; each restores the same policy and optimizer and its own RNG state.
    """
    state = distributed.on_main(prepare_run_dir, checkpointer, config, vecenv)
    if state is None:
        return 0, 0
    try:
        policy.load_state_dict(state["policy_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        train_mode(optimizer)  # schedule-free: saved at its averaged weights (eval mode); back to training's
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{state['path']}: does not fit this run's policy and optimizer: "
                              f"{str(err).splitlines()[0]}") from None
    if reward_scaler is not None:
        if "reward_scaler" not in state:
            raise ConfigError(f"{checkpointer.checkpoint_dir} was trained without ppo.normalize_reward; resume it "
                              "without the flag, or pass --checkpoint.no-resume to start over")
        reward_scaler.load_state_dict(state["reward_scaler"])
    if curriculum is not None and curriculum.state_dict():  # learning progress: its pool, before the envs reset
        if "curriculum" not in state:
            raise ConfigError(f"{checkpointer.checkpoint_dir} was trained without --curriculum.algorithm "
                              "learning_progress; resume it without the flag, or pass --checkpoint.no-resume")
        curriculum.load_state_dict(state["curriculum"])
    set_rng_state(state["rank_rng"][distributed.rank()] if "rank_rng" in state else state["rng"])
    vecenv.reset(seed=distributed.seed_for_rank(config.seed) + 104_729 * state["epoch"])
    if distributed.is_main():
        print(f"resumed {checkpointer.checkpoint_dir} at epoch {state['epoch']}, {state['agent_step']:,} agent "
              f"steps", flush=True)
    return state["epoch"], state["agent_step"]


def prepare_run_dir(checkpointer: TrainingCheckpointer, config: TrainingConfig, vecenv) -> dict[str, Any] | None:
    """Rank 0's half of restore_checkpoint: the checkpoint to resume (read_checkpoint) with the
    directory made to agree with it, or None with an earlier run's files moved aside."""
    run_dir = checkpointer.checkpoint_dir
    state = read_checkpoint(checkpointer, config, vecenv) if config.checkpoint.resume else None
    if os.path.isdir(run_dir):
        remove_leftovers(run_dir)
    if state is None:
        moved = set_aside(run_dir)
        if moved:
            print(f"{run_dir} held an earlier run{' (without a checkpoint)' if config.checkpoint.resume else ''}: "
                  f"moved it to {moved}", flush=True)
        return None
    for path in checkpointer.discard_after(state["epoch"]):
        print(f"checkpoint: deleted {path}, saved after the checkpoint this run resumes from", flush=True)
    return state


def read_checkpoint(checkpointer: TrainingCheckpointer, config: TrainingConfig, vecenv) -> dict[str, Any] | None:
    """The run directory's trainer state with its policy's weights (`policy_state`), checked against
    this run's config and number of processes; None when it has none."""
    state = checkpointer.load_trainer_state(checkpointer.checkpoint_dir)
    if state is None:
        return None
    try:
        saved, current = state["config"], config.to_dict()
        mismatched = [section for section in ("env", "agent") if saved[section] != current[section]]
        saved_world = state.get("world_size", 1)
        saved_optimizer = saved["trainer"].get("optimizer", "adam")  # (checkpoints from before the setting: Adam's)
    except (KeyError, TypeError, AttributeError) as err:  # a trainer state of another program
        raise CheckpointError(f"{state['path']}: not a trainer state this version of cleanmetta can resume "
                              f"({type(err).__name__}: {err})") from None
    if mismatched:
        section, run_dir = mismatched[0], checkpointer.checkpoint_dir
        raise ConfigError(f"{run_dir} holds a run with {section}={saved[section]}, not {current[section]}; pick "
                          "another --experiment-name, or pass --checkpoint.no-resume to start over in this "
                          f"directory (the old run is moved to {run_dir}.old-N)")
    if saved_optimizer != config.trainer.optimizer:  # its state would not fit, or would step another optimiser
        raise ConfigError(f"{checkpointer.checkpoint_dir} was trained with trainer.optimizer={saved_optimizer!r}, not "
                          f"{config.trainer.optimizer!r}: resume it with --trainer.optimizer {saved_optimizer}, or "
                          "pass --checkpoint.no-resume to start over")
    if saved_world != distributed.world_size():
        raise ConfigError(f"{checkpointer.checkpoint_dir} was trained by {saved_world} process(es), this run has "
                          f"{distributed.world_size()}: resume it with torchrun --nproc_per_node {saved_world} (or "
                          f"without torchrun for 1), or pass --checkpoint.no-resume to start over")
    state["policy_state"] = checkpointer.policy_weights(state, vecenv)
    return state
