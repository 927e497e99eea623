import os

import numpy as np
import pytest
import torch

import train
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.config import ConfigError
from cleanmetta.presets import continuous_config
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.normalize import ObservationNorm, RewardScaler, RunningMeanStd


def test_running_mean_std_merges_batches_exactly():
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([3.0, -2.0, 0.0])
    stats = RunningMeanStd((3,))
    for chunk in data.split([1, 99, 400, 500]):
        stats.update(chunk)
    # The prior count of 1e-4 (mean 0, var 1) shifts the result by about 1e-7.
    assert torch.allclose(stats.mean, data.mean(0), atol=1e-5)
    assert torch.allclose(stats.var, data.var(0, unbiased=False), rtol=1e-5, atol=1e-6)
    assert stats.count.item() == pytest.approx(1000, abs=1e-3)


def test_observation_norm_standardises_and_clips():
    norm = ObservationNorm((2,))
    norm.update(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))  # mean [1, 20], std [1, 10]
    out = norm(torch.tensor([[1.0, 20.0], [3.0, 40.0], [100.0, 20.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0], [2.0, 2.0], [10.0, 0.0]]), atol=1e-3)


def test_reward_scaler_divides_by_discounted_return_std_and_restarts_at_episode_end():
    scaler = RewardScaler(num_agents=2, gamma=0.5)
    rewards = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], np.float32)
    dones = np.array([[0, 0], [1, 0], [0, 0]], np.float32)
    valid = np.ones_like(rewards)
    scaled = scaler(rewards, dones, valid)
    # Discounted returns: agent 0: 1, 1.5, (episode ends) 1; agent 1: 2, 3, 3.5.
    returns = np.array([1.0, 1.5, 1.0, 2.0, 3.0, 3.5])
    assert scaler.stats.var.item() == pytest.approx(returns.var(), rel=1e-4)
    np.testing.assert_allclose(scaled, rewards / np.sqrt(returns.var()), rtol=1e-4)
    np.testing.assert_allclose(scaler.returns, [1.0, 3.5])  # carried into the next rollout
    # Autoreset steps (valid = 0) stay out of the statistics.
    before = scaler.stats.count.item()
    scaler(rewards, dones, np.zeros_like(rewards))
    assert scaler.stats.count.item() == before


def test_reward_scaler_clips_large_rewards():
    scaler = RewardScaler(num_agents=1, gamma=0.0)
    rewards = np.array([[i % 2] for i in range(200)] + [[1000.0]], np.float32)  # std ~70: 1000 -> 14 -> 10
    scaled = scaler(rewards, np.zeros_like(rewards), np.ones_like(rewards))
    assert scaled.max() == 10.0
    assert scaled[1, 0] == pytest.approx(1 / np.sqrt(rewards.var()), rel=1e-3)


def continuous_run(run_root, steps, name="pendulum"):
    config = continuous_config()
    config.trainer.total_timesteps = steps
    config.trainer.num_steps = 256
    config.ppo.num_minibatches = 4
    config.ppo.update_epochs = 2
    config.checkpoint.interval = 1
    config.experiment_name = name
    config.log.run_root = run_root
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    return config


def test_normalisation_statistics_are_trained_saved_resumed_and_used_in_evaluation(tmp_run_root):
    result = train.main(continuous_run(tmp_run_root, steps=256 * 2))
    policy = result["policy"]
    # Every trained observation entered the statistics: 512 steps less 2 autoreset steps (Pendulum's
    # episodes last 200 steps), and they moved off their prior (Pendulum's cos/sin/velocity).
    assert policy.obs_norm.count.item() == pytest.approx(510, abs=0.01)
    assert policy.obs_norm.var[2].item() > 0.1

    run_dir = os.path.join(tmp_run_root, "pendulum")
    checkpointer = TrainingCheckpointer(run_dir, PolicyStore(run_dir))
    state = checkpointer.load_trainer_state(run_dir)
    assert state["reward_scaler"]["count"].item() == pytest.approx(510, abs=0.01)
    saved = checkpointer.load_policy(state).policy
    assert torch.equal(saved.obs_norm.mean, policy.obs_norm.mean)  # the statistics travel with the policy

    # Resuming continues from the saved statistics rather than starting them over: 255 more valid
    # steps (the envs restart at the resume, and reset once more at step 713).
    resumed = train.main(continuous_run(tmp_run_root, steps=256 * 3))
    assert resumed["policy"].obs_norm.count.item() == pytest.approx(765, abs=0.01)
    state = checkpointer.load_trainer_state(run_dir)
    assert state["reward_scaler"]["count"].item() == pytest.approx(765, abs=0.01)

    # Evaluation applies the same statistics: an evaluation with them zeroed out acts differently.
    evaluator = PolicyEvaluator([Simulation("pendulum", "Pendulum-v1", episodes=1, seed=3)], "cpu",
                                deterministic=True)
    with_stats = evaluator.evaluate(saved)["pendulum"].mean_return
    saved.obs_norm.mean.zero_()
    saved.obs_norm.var.fill_(1.0)
    assert evaluator.evaluate(saved)["pendulum"].mean_return != with_stats


def test_resuming_with_reward_normalisation_needs_a_checkpoint_that_has_it(tmp_run_root):
    config = continuous_run(tmp_run_root, steps=256)
    config.ppo.normalize_reward = False
    train.main(config)
    with pytest.raises(ConfigError, match="normalize_reward"):
        train.main(continuous_run(tmp_run_root, steps=512))


def test_normalize_obs_is_for_the_mlp_only():
    config = continuous_config()
    config.agent.name = "simple_cnn"
    with pytest.raises(ConfigError, match="agent.normalize_obs"):
        config.validate()

