"""Named starting points for a run: `python train.py --preset NAME`, or `PRESETS[NAME]()` in Python.

Each preset is a function returning a TrainingConfig with a task's published settings (CleanRL's,
rl-zoo's or Metta's), the reason in its docstring. `small_fast_config` stays in config.py, where
Metta's README imports it from beside TrainingConfig. These functions lived in config.py before
they had a module of their own; `from cleanmetta.config import mettagrid_config` keeps working
(cleanmetta/__init__.py points the old names here).
"""

from __future__ import annotations

from cleanmetta.config import (AgentConfig, EnvConfig, PPOConfig, TrainerConfig, TrainingConfig,
                               small_fast_config)


def continuous_config() -> TrainingConfig:
    """The continuous-control reference settings (CleanRL's ppo_continuous_action.py) on Pendulum-v1.

    One environment, 2048-step rollouts, 32 minibatches x 10 epochs, lr 3e-4 annealed, no entropy
    bonus, observations and rewards normalised by running statistics. Pick the task with --env.id.
    """
    return TrainingConfig(
        env=EnvConfig(id="Pendulum-v1", num_envs=1),
        agent=AgentConfig(normalize_obs=True),
        trainer=TrainerConfig(total_timesteps=1_000_000, num_steps=2048, learning_rate=3e-4),
        ppo=PPOConfig(num_minibatches=32, update_epochs=10, ent_coef=0.0, normalize_reward=True),
    )


def mountaincar_config() -> TrainingConfig:
    """MountainCar-v0, which CleanRL's ppo.py settings do not solve (-200: the car never reaches the
    flag, so every return is the same and the advantages teach nothing): rl-zoo's PPO settings for
    this task, 16 envs x 16 steps, 4 minibatches x 4 epochs, lr 3e-4 constant, GAE lambda 0.98, no
    entropy bonus, observations and rewards normalised by running statistics."""
    return TrainingConfig(
        env=EnvConfig(id="MountainCar-v0", num_envs=16),
        agent=AgentConfig(normalize_obs=True),
        trainer=TrainerConfig(total_timesteps=500_000, num_steps=16, learning_rate=3e-4, anneal_lr=False),
        ppo=PPOConfig(gae_lambda=0.98, ent_coef=0.0, normalize_reward=True),
    )


def mettagrid_config() -> TrainingConfig:
    """Multi-agent PPO on MettaGrid's hearts task (needs the `mettagrid` extra).

    16 simulations x 4 agents = 64 agents a step, 128-step rollouts (8192 samples), 2 epochs of 4
    minibatches, lr 1e-3, a smaller entropy bonus: cheap updates for a fast environment. Train on
    both tasks with --curriculum.tasks mettagrid/hearts mettagrid/hearts_sparse.
    """
    return TrainingConfig(
        env=EnvConfig(id="mettagrid/hearts", num_envs=16),
        trainer=TrainerConfig(total_timesteps=500_000, learning_rate=1e-3),
        ppo=PPOConfig(update_epochs=2, ent_coef=0.005),
    )


def cartpole_lstm_config() -> TrainingConfig:
    """A memory task: CartPole without its velocities (CartPoleNoVel-v1), an LSTM of 64 units on the
    mlp network, with rl-zoo's RecurrentPPO settings for this task: 8 envs x 32 steps, one minibatch
    x 20 epochs, lr 1e-3 annealed, gamma 0.98, GAE lambda 0.8, no entropy bonus, observations
    normalised, 100k steps. Without the LSTM (--agent.lstm-size 0) the policy cannot see velocities.
    """
    return TrainingConfig(
        env=EnvConfig(id="CartPoleNoVel-v1", num_envs=8),
        agent=AgentConfig(name="mlp", normalize_obs=True, lstm_size=64),
        trainer=TrainerConfig(total_timesteps=100_000, num_steps=32, learning_rate=1e-3),
        ppo=PPOConfig(num_minibatches=1, update_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0),
    )


def mettagrid_lstm_config() -> TrainingConfig:
    """The `mettagrid` preset with an LSTM of 64 units after the token encoder, trained on segments of
    32 steps (4 per rollout), as Metta's agents are: MettaGrid agents see only a window around them."""
    config = mettagrid_config()
    config.agent.lstm_size, config.trainer.bptt_horizon = 64, 32
    return config


def atari_config() -> TrainingConfig:
    """Atari as CleanRL's ppo_atari.py trains it (needs the `atari` extra): Breakout in ale-py's native
    vector env (84x84 grayscale, 4 frames stacked, frame skip 4, up to 30 no-op starts, FIRE at
    reset), no sticky actions, a lost life ends the training episode, rewards clipped to their sign;
    the Nature CNN (simple_cnn, 512 units); 8 envs x 128 steps, 4 minibatches x 4 epochs, lr 2.5e-4
    annealed, clip 0.1, entropy 0.01, 10M agent steps. Episode returns are game scores (all lives,
    unclipped). Another game: --env.id ALE/Pong-v5 (env.kwargs keep these settings). Two torch
    threads (CleanRL's default on 2 cores): the CNN's update, not the env, takes most of the time.
    """
    return TrainingConfig(
        torch_threads=2,
        env=EnvConfig(id="ALE/Breakout-v5", num_envs=8,
                      kwargs="repeat_action_probability=0.0,episodic_life=true,reward_clipping=true"),
        agent=AgentConfig(name="simple_cnn", hidden_size=512),
        trainer=TrainerConfig(total_timesteps=10_000_000, num_steps=128, learning_rate=2.5e-4),
        ppo=PPOConfig(num_minibatches=4, update_epochs=4, clip_coef=0.1, ent_coef=0.01, vf_coef=0.5,
                      max_grad_norm=0.5),
    )


PRESETS = {"default": TrainingConfig, "small_fast": small_fast_config, "continuous": continuous_config,
           "mountaincar": mountaincar_config,
           "mettagrid": mettagrid_config, "mettagrid_lstm": mettagrid_lstm_config,
           "cartpole_lstm": cartpole_lstm_config, "atari": atari_config}
"""Named starting points for `python train.py --preset NAME`."""
