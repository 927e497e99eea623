import os
import subprocess
import sys

import pytest
import torch

import train
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import AgentConfig, small_fast_config
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.policy import make_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cartpole_policy(seed=0):
    import gymnasium as gym

    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    return make_policy(AgentConfig(), env.observation_space, env.action_space)


def test_evaluation_is_deterministic_for_a_seed_and_leaves_training_rng_alone():
    policy = cartpole_policy()
    evaluator = PolicyEvaluator([Simulation("a", "CartPole-v1", episodes=5, seed=3)])
    torch.manual_seed(0)
    first = evaluator.evaluate(policy)
    after_first = torch.rand(1)
    torch.manual_seed(0)
    second = evaluator.evaluate(policy)
    assert first == second
    assert torch.equal(torch.rand(1), after_first)  # evaluation did not consume the global stream
    other = PolicyEvaluator([Simulation("a", "CartPole-v1", episodes=5, seed=4)]).evaluate(policy)
    assert other != first


def test_results_count_each_episode_once_with_its_full_return():
    # Counter-v0: reward 1 per step, truncated after 7 steps
    result = PolicyEvaluator([Simulation("counter", "cleanmetta-test/Counter-v0", episodes=4)]).evaluate(
        make_policy(AgentConfig(), *spaces_of("cleanmetta-test/Counter-v0")))["counter"]
    assert (result.mean_return, result.std_return, result.min_return, result.max_return) == (7, 0, 7, 7)
    assert (result.mean_length, result.episodes) == (7, 4)


def spaces_of(env_id):
    import gymnasium as gym

    env = gym.make(env_id)
    return env.observation_space, env.action_space


def test_suite_with_two_simulations_and_kwargs():
    evaluator = PolicyEvaluator([Simulation("short", "CartPole-v1:max_episode_steps=5", episodes=3),
                                 Simulation("long", "CartPole-v1", episodes=3)], deterministic=True)
    results = evaluator.evaluate(cartpole_policy())
    assert set(results) == {"short", "long"}
    assert results["short"].max_return <= 5


def test_duplicate_simulation_names_are_rejected():
    with pytest.raises(ValueError, match="distinct"):
        PolicyEvaluator([Simulation("a", "CartPole-v1"), Simulation("a", "Acrobot-v1")])


def test_checkpoint_evaluates_to_the_same_score_in_a_fresh_process(tmp_run_root):
    config = small_fast_config()
    config.trainer.total_timesteps = 512 * 8
    config.experiment_name = "evaluated"
    config.log.run_root = tmp_run_root
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    policy = train.main(config)["policy"]
    run_dir = os.path.join(tmp_run_root, "evaluated")
    expected = PolicyEvaluator([Simulation("CartPole-v1", "CartPole-v1", episodes=7, seed=11)]).evaluate(policy)

    out = subprocess.run([sys.executable, "-m", "cleanmetta.evaluate", run_dir, "--episodes", "7", "--seed", "11"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("CartPole-v1 "))
    assert float(row.split()[2]) == pytest.approx(expected["CartPole-v1"].mean_return, abs=0.005)
    assert "policy_000008.pt (epoch 8, 4,096 agent steps)" in out.stdout
    assert PolicyStore(run_dir).latest().epoch == 8


def test_evaluate_cli_reports_a_missing_run_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cleanmetta.evaluate", str(tmp_path / "nothing")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "error:" in out.stderr and "Traceback" not in out.stderr
