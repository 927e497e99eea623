import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from cleanmetta.collector import RolloutCollector
from cleanmetta.config import AgentConfig, EnvConfig
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.policy import CategoricalHead, Policy, make_policy
from cleanmetta.spaces import UnsupportedEnvError


class ValueIsStepPolicy(Policy):
    """Uniform random actions; value = 10 * episode index + step in episode (read from the obs)."""

    def __init__(self, num_actions=3):
        super().__init__()
        self.head = CategoricalHead([num_actions])
        self.num_actions = num_actions

    def forward(self, obs):
        return torch.zeros(obs.shape[0], self.num_actions), 10 * obs[:, 0] + obs[:, 1]


def collect(env_id, num_envs=3, num_steps=20, rollouts=2):
    torch.manual_seed(0)
    vecenv = make_vecenv(EnvConfig(id=env_id, num_envs=num_envs), seed=0)
    exp = Experience.for_env(vecenv, num_steps)
    collector = RolloutCollector(vecenv, ValueIsStepPolicy(), exp)
    results = []
    for _ in range(rollouts):
        stats, steps = collector.collect()
        results.append((stats, steps, {k: v.clone() for k, v in vars(exp).items() if torch.is_tensor(v)}))
    return results


@pytest.mark.parametrize("env_id", ["cleanmetta-test/Counter-v0", "cleanmetta-test/CounterTerminating-v0"])
def test_no_valid_transition_spans_two_episodes(env_id):
    for _, steps, buf in collect(env_id):
        obs, valid = buf["obs"], buf["valid"]
        assert steps == obs.shape[0] * obs.shape[1]
        T = obs.shape[0]
        for t in range(T - 1):
            for b in range(obs.shape[1]):
                if valid[t, b] and not buf["dones"][t, b]:
                    # the next observation continues the same episode, one step later
                    assert obs[t + 1, b, 0] == obs[t, b, 0]
                    assert obs[t + 1, b, 1] == obs[t, b, 1] + 1
                if not valid[t, b]:
                    # an autoreset step: the previous step ended the episode, the next one starts a new one
                    assert buf["dones"][t - 1, b] if t > 0 else True
                    assert obs[t + 1, b, 1] == 0 and obs[t + 1, b, 0] == obs[t, b, 0] + 1
                    assert buf["rewards"][t, b] == 0
        assert valid.sum() < valid.numel()  # episodes of 5-7 steps: some autoreset steps occurred


def test_autoreset_state_carries_across_rollouts():
    # 7-step episodes over rollouts of 7 steps: every second rollout starts with an autoreset step
    results = collect("cleanmetta-test/Counter-v0", num_envs=2, num_steps=7, rollouts=3)
    assert results[0][2]["valid"][0].tolist() == [1.0, 1.0]
    assert results[1][2]["valid"][0].tolist() == [0.0, 0.0]


def test_truncation_is_bootstrapped_with_the_final_observation_value():
    (_, _, buf), = collect("cleanmetta-test/Counter-v0", num_envs=1, num_steps=20, rollouts=1)
    t = int(buf["dones"][:, 0].nonzero()[0])  # time limit 7: the 7th step truncates
    assert t == 6 and buf["terminals"][t, 0] == 0
    # the observation after the truncated step is the episode's final one: value 10 * episode + 7
    episode = buf["obs"][t, 0, 0].item()
    assert buf["values"][t + 1, 0] == 10 * episode + 7
    exp = Experience(20, 1, spaces.Box(-np.inf, np.inf, (2,)), spaces.Discrete(3))
    for name in ("rewards", "values", "terminals", "dones", "last_value"):
        getattr(exp, name).copy_(buf[name])
    exp.compute_advantages(gamma=0.9, gae_lambda=0.8)
    assert exp.advantages[t, 0].item() == pytest.approx(1.0 + 0.9 * (10 * episode + 7) - (10 * episode + 6), abs=1e-5)


def test_termination_is_not_bootstrapped():
    (_, _, buf), = collect("cleanmetta-test/CounterTerminating-v0", num_envs=1, num_steps=20, rollouts=1)
    t = int(buf["dones"][:, 0].nonzero()[0])
    assert t == 4 and buf["terminals"][t, 0] == 1
    exp = Experience(20, 1, spaces.Box(-np.inf, np.inf, (2,)), spaces.Discrete(3))
    for name in ("rewards", "values", "terminals", "dones", "last_value"):
        getattr(exp, name).copy_(buf[name])
    exp.compute_advantages(gamma=0.9, gae_lambda=0.8)
    episode = buf["obs"][t, 0, 0].item()
    assert exp.advantages[t, 0].item() == pytest.approx(1.0 - (10 * episode + 4))


def test_episode_stats_report_return_and_length_of_finished_episodes():
    results = collect("cleanmetta-test/CounterTerminating-v0", num_envs=2, num_steps=20, rollouts=1)
    stats = results[0][0]
    assert len(stats["episodic_return"]) == 2 * 3  # 20 steps: three 5-step episodes (+ 3 autoreset steps) each
    assert stats["episodic_return"].tolist() == [5.0] * 6
    assert stats["episodic_length"].tolist() == [5] * 6


def test_box_actions_are_clipped_to_the_bounds_before_stepping():
    vecenv = make_vecenv(EnvConfig(id="Pendulum-v1", num_envs=2), seed=0)
    sent = []
    original_step = vecenv.step
    vecenv.step = lambda a: sent.append(a.copy()) or original_step(a)
    policy = make_policy(AgentConfig(), vecenv.single_observation_space, vecenv.single_action_space)
    with torch.no_grad():
        policy.head.log_std.fill_(3.0)  # std 20: most samples fall outside [-2, 2]
    exp = Experience.for_env(vecenv, 16)
    RolloutCollector(vecenv, policy, exp).collect()
    sent = np.stack(sent)
    assert sent.min() >= -2.0 and sent.max() <= 2.0
    assert exp.actions.abs().max() > 2.0  # the buffer keeps the sampled (unclipped) action


def test_same_step_autoreset_env_is_rejected():
    vecenv = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync",
                          vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    policy = make_policy(AgentConfig(), vecenv.single_observation_space, vecenv.single_action_space)
    with pytest.raises(UnsupportedEnvError, match="autoreset_mode"):
        RolloutCollector(vecenv, policy, Experience.for_env(vecenv, 4))


def test_unsupported_spaces_get_a_clear_error():
    text = spaces.Dict({"image": spaces.Box(0, 255, (5, 5, 3), np.uint8), "mission": spaces.Text(20)})
    with pytest.raises(UnsupportedEnvError, match="observation entry 'mission' is a Text.*FilterObservation:"
                                                  'filter_keys=\\["image"\\]'):
        make_policy(AgentConfig(), text, spaces.Discrete(2))
    with pytest.raises(UnsupportedEnvError, match="observation space is a Graph"):
        make_policy(AgentConfig(), spaces.Graph(spaces.Box(0, 1, (2,)), None), spaces.Discrete(2))
    with pytest.raises(UnsupportedEnvError, match="action space .* Discrete, MultiDiscrete or Box"):
        make_policy(AgentConfig(), spaces.Box(-1, 1, (3,)), spaces.Tuple([spaces.Discrete(2)]))
    with pytest.raises(UnsupportedEnvError, match="start=1"):
        make_policy(AgentConfig(), spaces.Box(-1, 1, (3,)), spaces.Discrete(2, start=1))


def test_values_computed_after_the_rollout_match_per_step_values():
    # MLPPolicy leaves values to one batched critic pass at the end of the rollout.
    torch.manual_seed(0)
    vecenv = make_vecenv(EnvConfig(id="CartPole-v1", num_envs=3), seed=0)
    policy = make_policy(AgentConfig(), vecenv.single_observation_space, vecenv.single_action_space)
    assert policy.sample(torch.zeros(3, 4))[2] is None
    exp = Experience.for_env(vecenv, 10)
    RolloutCollector(vecenv, policy, exp).collect()
    with torch.no_grad():
        per_step = torch.stack([policy.get_action_and_value(exp.obs[t], exp.actions[t])[3] for t in range(10)])
        logprobs = torch.stack([policy.get_action_and_value(exp.obs[t], exp.actions[t])[1] for t in range(10)])
    torch.testing.assert_close(exp.values, per_step)
    torch.testing.assert_close(exp.logprobs, logprobs)
