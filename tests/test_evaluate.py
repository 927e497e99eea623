import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta import evaluate
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import AgentConfig, TrainingConfig, small_fast_config
from cleanmetta.evaluate import PolicyEvaluator, Simulation, suite_from_config
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


class AlternatingEnv(gym.Env):
    """Pays 1 for action t % 2 at step t of an 8-step episode and observes nothing (always 0): only a
    policy that remembers its steps is paid every step."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward = float(int(action) == self.t % 2)
        self.t += 1
        return np.zeros(1, np.float32), reward, self.t >= 8, False, {}


ALTERNATING = "cleanmetta-test/Alternating-v0"
gym.register(ALTERNATING, entry_point=AlternatingEnv)


class StepCountingPolicy:
    """A recurrent policy (LSTMPolicy's `recurrent`, `initial_state` and `act(obs, deterministic, state)`)
    whose state counts its steps and whose action is the count's parity: it plays AlternatingEnv
    perfectly when its state goes from each step to the next, and plays action 0 throughout when
    every step sees the zero state."""

    recurrent = True

    def initial_state(self, batch_size, device="cpu"):
        zeros = torch.zeros(batch_size, 1, device=device)
        return zeros, zeros.clone()

    def act(self, obs, deterministic=False, state=None):
        steps, c = state if state is not None else self.initial_state(obs.shape[0], obs.device)
        return steps[:, 0].long() % 2, (steps + 1, c)


def test_a_recurrent_policys_state_goes_from_each_step_to_the_next():
    result = PolicyEvaluator([Simulation("alternating", ALTERNATING, episodes=3)]).evaluate(
        StepCountingPolicy())["alternating"]
    # paid all 8 steps of every episode (with its state dropped: action 0 every step, paid 4)
    assert (result.mean_return, result.min_return, result.mean_length) == (8, 8, 8)


def action_one_policy():
    """An mlp policy for AlternatingEnv whose actor, whatever it sees, gives action 1 probability 3/4."""
    policy = make_policy(AgentConfig(), *spaces_of(ALTERNATING))
    with torch.no_grad():
        policy.actor.weight2.zero_()
        policy.actor.bias2.copy_(torch.tensor([0.0, math.log(3.0)]))
    return policy


def test_a_deterministic_evaluation_plays_the_policys_most_likely_action():
    sim = Simulation("alternating", ALTERNATING, episodes=10)
    result = PolicyEvaluator([sim], deterministic=True).evaluate(action_one_policy())["alternating"]
    # action 1 every step: paid at steps 1, 3, 5 and 7 of every episode
    assert (result.mean_return, result.std_return, result.min_return, result.max_return) == (4, 0, 4, 4)


def test_an_evaluation_that_is_not_deterministic_samples_the_policys_actions():
    sim = Simulation("alternating", ALTERNATING, episodes=10)
    result = PolicyEvaluator([sim]).evaluate(action_one_policy())["alternating"]
    assert result.std_return > 0  # some episodes drew action 0, at even steps (paid) or odd ones (not)


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


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A CartPole run of 3 epochs, each checkpointed and evaluated (5 episodes, evaluation seed 1000)."""
    config = small_fast_config()
    config.trainer.total_timesteps = 512 * 3
    config.experiment_name = "scored"
    config.log.run_root = str(tmp_path_factory.mktemp("runs"))
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    config.checkpoint.interval = config.evaluation.interval = 1
    config.evaluation.episodes = 5
    train.main(config)
    return os.path.join(config.log.run_root, "scored")


def evaluate_cli(capsys, run_dir, *flags) -> tuple[str, float]:
    """`python -m cleanmetta.evaluate RUN_DIR FLAGS`: its first line (the policy) and its mean return."""
    evaluate.main([run_dir, *flags])
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("CartPole-v1 "))
    return lines[0], float(row.split()[2])


def training_score(record) -> float:
    return record.scores["CartPole-v1/mean_return"]


def test_evaluate_cli_policy_epoch_scores_that_epochs_policy(scored_run, capsys):
    record = PolicyStore(scored_run).get(2)
    header, mean_return = evaluate_cli(capsys, scored_run, "--policy", "2")
    assert header.endswith("policy_000002.pt (epoch 2, 1,024 agent steps)")
    assert mean_return == pytest.approx(training_score(record), abs=0.005)  # the score it had in training


def test_evaluate_cli_policy_best_picks_the_record_with_the_highest_score(scored_run, capsys):
    records = PolicyStore(scored_run).records()
    best = max(records, key=lambda r: (training_score(r), r.epoch))  # a tie goes to the later
    assert best.epoch != records[-1].epoch  # this run's best is not its latest, so the choice shows
    header, mean_return = evaluate_cli(capsys, scored_run, "--policy", "best:CartPole-v1/mean_return")
    assert f"(epoch {best.epoch}, " in header
    assert mean_return == pytest.approx(training_score(best), abs=0.005)


def test_evaluate_cli_deterministic_plays_the_policys_most_likely_actions(scored_run, capsys):
    config = TrainingConfig.from_yaml(os.path.join(scored_run, "config.json"))
    policy = PolicyStore(scored_run).latest().policy
    expected = PolicyEvaluator(suite_from_config(config), deterministic=True).evaluate(policy)["CartPole-v1"]
    _, sampled = evaluate_cli(capsys, scored_run)
    _, deterministic = evaluate_cli(capsys, scored_run, "--deterministic")
    assert deterministic == pytest.approx(expected.mean_return, abs=0.005)
    assert deterministic != sampled
