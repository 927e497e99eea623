"""MettaGrid adapter, token policy and training on MettaGrid. Needs the extra: pip install -e ".[mettagrid,test]".

Without it the tests that step MettaGrid are skipped; the ones that check what a user without the
extra sees, and the token policy's arithmetic, run everywhere.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta.config import ConfigError, EnvConfig
from cleanmetta.presets import mettagrid_config
from cleanmetta.curriculum import RandomCurriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.policy import TokenPolicy
from cleanmetta.spaces import UnsupportedEnvError

needs_mettagrid = pytest.mark.skipif(importlib.util.find_spec("mettagrid") is None,
                                     reason='MettaGrid is an optional extra: pip install -e ".[mettagrid]"')


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mettagrid.simulator", None)  # import fails as if not installed
    with pytest.raises(UnsupportedEnvError, match=r'pip install -e "\.\[mettagrid\]"'):
        make_vecenv(EnvConfig(id="mettagrid/hearts"), 0)


def test_token_policy_is_a_linear_layer_over_the_one_hot_grid():
    high = np.full((6, 3), 255, np.uint8)
    high[:, 1] = 4  # feature ids 0..4
    policy = TokenPolicy(spaces.Box(np.zeros_like(high), high, dtype=np.uint8), spaces.Discrete(5), hidden_size=8)
    obs = torch.tensor([[[0x12, 3, 2], [0x21, 0, 1], [0xFE, 4, 7], [0xFF, 0xFF, 0xFF], [0xFF, 0xFF, 0xFF],
                         [0xFF, 0xFF, 0xFF]]], dtype=torch.uint8)
    # Reference: the grid of (feature, location) cells with value log(1 + v), times the table.
    grid = torch.zeros(5 * 256)
    for loc, feature, value in obs[0].tolist():
        if loc != 0xFF:
            grid[feature * 256 + loc] += np.log1p(value)
    hidden = torch.tanh(grid @ policy.table)
    logits, value = policy(obs)
    assert torch.allclose(logits, policy.actor(hidden[None]), atol=1e-6)
    assert torch.allclose(value, policy.critic(hidden[None]).squeeze(-1), atol=1e-6)
    # The order of the tokens does not matter.
    shuffled = obs[:, [2, 4, 0, 3, 1, 5]]
    assert torch.allclose(policy(shuffled)[0], logits, atol=1e-6)


@needs_mettagrid
def test_vecenv_batches_every_agent_of_every_simulation_zero_copy():
    env = make_vecenv(EnvConfig(id="mettagrid/hearts", num_envs=3), seed=0)
    assert (env.num_simulations, env.agents_per_sim, env.num_envs) == (3, 4, 12)
    assert env.single_observation_space.shape == (64, 3) and env.single_observation_space.dtype == np.uint8
    assert env.single_action_space == spaces.Discrete(5)
    assert env.action_space.shape == (12,)
    for i, buffers in enumerate(env.buffers):  # each simulation writes into its rows of the batch arrays
        assert np.shares_memory(buffers.observations, env.observations)
        assert buffers.observations.ctypes.data == env.observations[4 * i].ctypes.data
    obs, *_ = env.step(np.zeros(12, np.int64))
    assert obs is env.observations
    assert ((obs[:, :, 0] != 0xFF).sum(1) > 0).all()  # every agent sees something
    env.close()


@needs_mettagrid
def test_episodes_end_in_truncation_then_next_step_autoreset_with_stats():
    env = make_vecenv(EnvConfig(id="mettagrid/hearts:max_steps=5", num_envs=2), seed=0)
    rng = np.random.default_rng(0)
    for t in range(5):
        obs, reward, terminated, truncated, infos = env.step(rng.integers(0, 5, env.num_envs))
        assert not terminated.any()
        assert truncated.all() == (t == 4)
    assert list(infos["task"]) == ["mettagrid/hearts:max_steps=5"] * 8
    stats = infos["episode_stats"]
    assert len(stats["game/tokens_written"]) == 2  # one value per simulation
    assert any(key.startswith("agent/action.") for key in stats)
    # NEXT_STEP: the following step starts new episodes, ignores the actions and pays nothing.
    obs, reward, terminated, truncated, infos = env.step(rng.integers(0, 5, env.num_envs))
    assert not (terminated | truncated).any() and not reward.any() and infos == {}
    obs, reward, terminated, truncated, infos = env.step(rng.integers(0, 5, env.num_envs))
    assert not truncated.any()
    env.close()


@needs_mettagrid
def test_same_seed_same_episodes_other_seed_other_maps():
    def rollout(seed):
        env = make_vecenv(EnvConfig(id="mettagrid/hearts", num_envs=2), seed)
        rng = np.random.default_rng(0)
        frames = [env.observations.copy()]
        for _ in range(30):
            obs, reward, *_ = env.step(rng.integers(0, 5, env.num_envs))
            frames.append(obs.copy())
            frames.append(reward.copy())
        env.close()
        return frames

    a, b, c = rollout(1), rollout(1), rollout(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@needs_mettagrid
def test_unknown_task_and_bad_option_are_config_errors():
    with pytest.raises(ConfigError, match="mettagrid/hearts_sparse"):
        make_vecenv(EnvConfig(id="mettagrid/nope"), 0)
    with pytest.raises(ConfigError, match="colour"):
        make_vecenv(EnvConfig(id="mettagrid/hearts:colour=1"), 0)
    with pytest.raises(ConfigError, match="mix MettaGrid and gymnasium"):
        make_vecenv(EnvConfig(), 0, RandomCurriculum(["mettagrid/hearts", "CartPole-v1"]))


@needs_mettagrid
def test_curriculum_over_both_tasks_reports_each_task():
    curriculum = RandomCurriculum(["mettagrid/hearts:max_steps=4", "mettagrid/hearts_sparse:max_steps=4"])
    env = make_vecenv(EnvConfig(num_envs=8), 3, curriculum)
    seen = set()
    for _ in range(20):
        *_, infos = env.step(np.zeros(env.num_envs, np.int64))
        seen.update(infos.get("task", []))
    assert seen == {"mettagrid/hearts:max_steps=4", "mettagrid/hearts_sparse:max_steps=4"}
    env.close()


@needs_mettagrid
def test_training_on_mettagrid_beats_the_untrained_policy(tmp_run_root):
    config = mettagrid_config()
    config.trainer.total_timesteps = 8192 * 24  # ~100k steps is where learning starts: seed luck decides
    config.experiment_name = "hearts"
    config.log.run_root = tmp_run_root
    config.log.console_interval = 1e9
    evaluator = PolicyEvaluator([Simulation("hearts", "mettagrid/hearts", episodes=4, seed=5)], "cpu")

    torch.manual_seed(config.seed)
    vecenv = make_vecenv(config.env, config.seed)
    from cleanmetta.policy import make_policy
    untrained = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    vecenv.close()
    before = evaluator.evaluate(untrained)["hearts"].mean_return

    result = train.main(config)
    after = evaluator.evaluate(result["policy"])["hearts"].mean_return
    assert isinstance(result["policy"], TokenPolicy)  # agent.name 'auto' picked the token network
    assert after > before + 1.0, (before, after)
    # The run directory holds MettaGrid's own statistics next to the returns.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(tmp_run_root, "hearts")).Reload()
    assert "env/agent/heart.gained" in events.Tags()["scalars"]
