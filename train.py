"""Train PPO with cleanmetta's components: the loop to read, copy and fork.

    python train.py                                   # CartPole-v1, reference PPO settings
    python train.py --env.id Acrobot-v1 --trainer.total-timesteps 1000000
    python train.py --preset small_fast               # a named preset (see presets.PRESETS)
    python train.py --config run.yaml --seed 3        # a config file, then flags on top
    python train.py --resume runs/NAME                # continue a run from its last checkpoint
    python train.py --log.wandb --evaluation.interval 10 --evaluation.video   # wandb run, evaluation videos
    python train.py --help                            # every flag, with its meaning
    torchrun --standalone --nproc_per_node 2 train.py # one policy, two processes (GPUs or CPU slots)

Each epoch: collect a rollout into the experience buffer, run the PPO update on it, log; every
few epochs evaluate and checkpoint. Ctrl-C (or SIGTERM) finishes the epoch, saves and exits.
cleanmetta.trainer.functional_training_loop runs the same epoch; a test keeps the two identical.
Under torchrun every process runs this same loop; the lines marked "torchrun" are all it takes
(the components share the rest, see cleanmetta/distributed.py).
"""

from __future__ import annotations

import os
import sys

import torch

from cleanmetta import distributed
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.cli import USER_ERRORS, parse_config
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import TrainingConfig
from cleanmetta.curriculum import make_curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, suite_from_config, video_dir
from cleanmetta.experience import Experience
from cleanmetta.log import StatsLogger, end_of_run, start_wandb
from cleanmetta.losses import make_custom_losses, set_agent_steps
from cleanmetta.optimizers import averaged_weights, make_optimizer, set_learning_rate
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.resume import finished, restore_checkpoint, save_checkpoint
from cleanmetta.timing import Split
from cleanmetta.trainer import (SaveOnError, StopOnSignal, announce, announce_resume, evaluate_and_log,
                                join_process_group, learning_rate_at, make_reward_scaler, num_epochs_for,
                                planned_steps, rank_seed, run_dir_for, seed_everything)


def main(config: TrainingConfig) -> dict:
    device = join_process_group(config)  # torchrun: join the others; this rank's GPU (NCCL) or the CPU (gloo)
    config = distributed.broadcast_object(config).validate()  # torchrun: rank 0's (only it reads --resume's file)
    seed = rank_seed(config)             # torchrun: each rank its own RNG stream and episodes
    seed_everything(seed, config.torch_deterministic)
    torch.set_num_threads(config.torch_threads)
    run_dir = run_dir_for(config)

    # Build the parts.
    curriculum = make_curriculum(config.env, config.curriculum, config.seed)  # the tasks, and each episode's choice
    vecenv = make_vecenv(config.env, seed, curriculum)
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space).to(device)
    distributed.broadcast_module(policy)  # torchrun: every rank starts from rank 0's weights
    optimizer = make_optimizer(policy, config.trainer, device)
    experience = Experience.for_env(vecenv, config.trainer.num_steps, device, config.agent.lstm_size,
                                    config.trainer.bptt_horizon)
    checkpointer = TrainingCheckpointer(run_dir, PolicyStore(run_dir), keep=config.checkpoint.keep)
    reward_scaler = make_reward_scaler(config, vecenv)  # None unless ppo.normalize_reward
    evaluator = PolicyEvaluator(suite_from_config(config), device, config.evaluation.deterministic,
                                video_dir(run_dir) if config.evaluation.video else None)  # videos: mp4 / replays
    epoch, agent_steps = restore_checkpoint(checkpointer, config, policy, optimizer, vecenv, reward_scaler,
                                            curriculum)
    num_epochs = num_epochs_for(config, experience)
    if finished(run_dir, epoch, agent_steps, num_epochs):  # --resume of a finished run: say so, change nothing
        vecenv.close()
        distributed.close()
        return {"run_dir": run_dir, "policy": policy, "epoch": epoch, "agent_steps": agent_steps}
    wandb_run = start_wandb(config, run_dir, resume=agent_steps > 0)  # wandb: None unless --log.wandb (rank 0)
    if config.log.wandb_checkpoints:
        checkpointer.wandb_run = wandb_run  # wandb: every saved policy as a model artifact
    ppo = PPOOptimizer(policy, optimizer, device, config.ppo)
    custom_losses = make_custom_losses(config.ppo, vecenv, device)  # by name; kickstart loads its teacher here
    announce(run_dir, config, experience)  # the run directory, and the budget in whole rollouts
    announce_resume(run_dir, config, experience, epoch)  # a resume that moves the learning-rate schedule says so
    logger = StatsLogger(run_dir, config, planned_steps(config, experience), config.log.tensorboard,
                         config.log.console_interval, start_step=agent_steps, wandb_run=wandb_run)
    split = Split(distributed.waited)  # timing: where each epoch's time goes (env, policy, update, ...)
    collector = RolloutCollector(vecenv, policy, experience, device, reward_scaler, split)

    # Train.
    def save(scores: dict[str, float], if_missing: bool = False) -> None:  # the run as of `epoch` (read when called)
        save_checkpoint(checkpointer, config, policy, optimizer, epoch, agent_steps, scores, reward_scaler, curriculum,
                        if_missing)

    saving = SaveOnError(lambda: save({}, if_missing=True), run_dir)  # an env or evaluation error: save, go on up
    saved_epoch = epoch or None  # a resumed run's checkpoint is on disk
    with StopOnSignal() as stop:
        while epoch < num_epochs and not stop.requested:
            learning_rate = learning_rate_at(config.trainer, epoch, num_epochs)
            set_learning_rate(optimizer, learning_rate)

            with saving:
                rollout_stats, num_steps = collector.collect()
            agent_steps += num_steps
            curriculum_stats = curriculum.update(rollout_stats)  # learning progress: the scores pick the tasks
            set_agent_steps(custom_losses, agent_steps)  # kickstart: the teacher's weight fades with agent steps
            with split.part("update"):  # timing
                update_stats = ppo.update(experience, custom_losses, progress=(epoch + 1) / num_epochs)
            epoch += 1
            with split.part("logging"):  # timing
                logger.log_epoch(agent_steps, rollout_stats, update_stats, learning_rate, curriculum_stats,
                                 split.epoch())

            evaluated = bool(config.evaluation.interval) and epoch % config.evaluation.interval == 0
            with saving, split.part("evaluation"):  # the scores of the policy as of `epoch` ({} when not evaluated)
                with averaged_weights(optimizer, when=evaluated):  # schedule-free: evaluate its averaged weights
                    scores = evaluate_and_log(evaluator, policy, logger, agent_steps) if evaluated else {}
            last = stop.sync() or epoch >= num_epochs  # torchrun: a signal to any rank stops all at this epoch
            # an evaluated policy is saved with its scores, so that best:<score> can choose it
            if last or evaluated or (config.checkpoint.interval and epoch % config.checkpoint.interval == 0):
                with split.part("checkpoint"):  # timing
                    save(scores)
                saved_epoch = epoch

    perf = split.whole_run()  # summary.json, and what the run says when it stops (end_of_run)
    logger.close(perf, end_of_run(logger, epoch, num_epochs, saved_epoch, stop.signal_name, perf))
    vecenv.close()
    distributed.close()  # torchrun: leave the process group
    return {"run_dir": run_dir, "policy": policy, "curriculum": curriculum, "epoch": epoch, **logger.summary()}


if __name__ == "__main__":
    try:
        main(parse_config(sys.argv[1:], description=__doc__.split("\n\n")[0]))
    except BrokenPipeError:  # e.g. python train.py --help | head: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (Exception, KeyboardInterrupt) as err:
        distributed.report_failure(err)  # torchrun: the other ranks stop within seconds, with this message
        if isinstance(err, USER_ERRORS):  # a bad value, a missing package, a full disk, ...: one line, the fix
            sys.exit(f"error: {err}")
        raise
