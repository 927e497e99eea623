"""Train PPO with cleanmetta's components: the loop to read, copy and fork.

    python train.py                                   # CartPole-v1, reference PPO settings
    python train.py --env.id Acrobot-v1 --trainer.total-timesteps 1000000
    python train.py --help                            # every flag, with its meaning

Each epoch: collect a rollout into the experience buffer, run the PPO update on it, log.
"""

from __future__ import annotations

import math
import sys

import torch
import tyro

from cleanmetta.collector import RolloutCollector
from cleanmetta.config import ConfigError, TrainingConfig
from cleanmetta.envs import UnsupportedEnvError, make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.log import StatsLogger
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.trainer import learning_rate_at, make_optimizer, resolve_device, run_dir_for, seed_everything


def main(config: TrainingConfig) -> dict:
    config.validate()
    device = resolve_device(config.device)
    seed_everything(config.seed, config.torch_deterministic)
    torch.set_num_threads(config.torch_threads)

    # Build the parts.
    vecenv = make_vecenv(config.env, config.seed)
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space).to(device)
    optimizer = make_optimizer(policy, config.trainer, device)
    experience = Experience.for_env(vecenv, config.trainer.num_steps, device)
    collector = RolloutCollector(vecenv, policy, experience, device)
    ppo = PPOOptimizer(policy, optimizer, device, config.ppo)
    logger = StatsLogger(run_dir_for(config), config, config.trainer.total_timesteps,
                         config.log.tensorboard, config.log.console_interval)

    # Train.
    num_epochs = math.ceil(config.trainer.total_timesteps / experience.batch_size)
    agent_steps = 0
    for epoch in range(num_epochs):
        learning_rate = learning_rate_at(config.trainer, epoch, num_epochs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

        rollout_stats, num_steps = collector.collect()
        agent_steps += num_steps
        update_stats = ppo.update(experience)
        logger.log_epoch(agent_steps, rollout_stats, update_stats, learning_rate)

    logger.close()
    vecenv.close()
    return {"run_dir": logger.run_dir, "policy": policy, **logger.summary()}


if __name__ == "__main__":
    try:
        main(tyro.cli(TrainingConfig))
    except (ConfigError, UnsupportedEnvError) as err:
        sys.exit(f"error: {err}")
