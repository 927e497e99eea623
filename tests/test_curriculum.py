import numpy as np
import pytest
import torch

from cleanmetta.collector import RolloutCollector
from cleanmetta.config import AgentConfig, ConfigError, CurriculumConfig, EnvConfig
from cleanmetta.curriculum import RandomCurriculum, SingleTaskCurriculum, Task, make_curriculum
from cleanmetta.envs import CurriculumEnv, make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.log import StatsLogger
from cleanmetta.policy import make_policy
from cleanmetta.spaces import UnsupportedEnvError


def test_task_specs_parse_ids_and_kwargs():
    task = Task.parse("CartPole-v1:max_episode_steps=50,render_mode=rgb_array")
    assert task.env_id == "CartPole-v1"
    assert task.kwargs == {"max_episode_steps": 50, "render_mode": "rgb_array"}
    assert Task.parse(task.name) == task
    with pytest.raises(ConfigError, match="is not key=value"):
        Task.parse("CartPole-v1:oops")


def test_make_curriculum_defaults_to_the_single_env_id():
    curriculum = make_curriculum(EnvConfig(id="Acrobot-v1"), CurriculumConfig())
    assert isinstance(curriculum, SingleTaskCurriculum) and curriculum.tasks[0].env_id == "Acrobot-v1"
    two = make_curriculum(EnvConfig(), CurriculumConfig(tasks=["CartPole-v1:max_episode_steps=200", "CartPole-v1"], weights=[1, 3]))
    assert isinstance(two, RandomCurriculum)
    np.testing.assert_allclose(two.probabilities, [0.25, 0.75])


def test_two_task_curriculum_plays_both_tasks_in_the_configured_proportions(tmp_path):
    curriculum = RandomCurriculum(["CartPole-v1:max_episode_steps=200", "CartPole-v1:max_episode_steps=30"], weights=[3, 1])
    vecenv = make_vecenv(EnvConfig(num_envs=8), seed=0, curriculum=curriculum)
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(), vecenv.single_observation_space, vecenv.single_action_space)
    experience = Experience.for_env(vecenv, 64)
    collector = RolloutCollector(vecenv, policy, experience)
    logger = StatsLogger(str(tmp_path), console_interval=1e9)
    tasks, lengths = [], []
    for _ in range(24):
        stats, steps = collector.collect()
        tasks.append(stats["episodic_task"])
        lengths.append(stats["episodic_length"])
        logger.log_epoch(steps, stats, {}, 0.0)
    logger.close()
    tasks, lengths = np.concatenate(tasks), np.concatenate(lengths)
    share = np.mean(tasks == "CartPole-v1:max_episode_steps=200")
    assert len(tasks) > 500
    assert 0.68 < share < 0.82  # 0.75 expected
    assert lengths[tasks != "CartPole-v1:max_episode_steps=200"].max() <= 30  # the second task's kwargs are in effect

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(str(tmp_path)).Reload().Tags()["scalars"]
    assert "tasks/CartPole-v1:max_episode_steps=200/episodic_return" in tags
    assert "tasks/CartPole-v1:max_episode_steps=30/episodic_return" in tags


def test_curriculum_tasks_must_share_spaces():
    with pytest.raises(UnsupportedEnvError, match="Acrobot-v1 has spaces"):
        CurriculumEnv(RandomCurriculum(["CartPole-v1", "Acrobot-v1"]))


def test_curriculum_weights_are_validated():
    with pytest.raises(ConfigError, match="one finite weight >= 0 per task"):
        RandomCurriculum(["CartPole-v1:max_episode_steps=200", "CartPole-v1"], weights=[1.0])
    with pytest.raises(ConfigError, match="one finite weight >= 0 per task"):
        RandomCurriculum(["CartPole-v1:max_episode_steps=200", "CartPole-v1"], weights=[1.0, float("nan")])


def test_validate_reports_curriculum_errors_early():
    from cleanmetta.config import TrainingConfig

    config = TrainingConfig(curriculum=CurriculumConfig(tasks=["CartPole-v1", "CartPole-v1:oops"]))
    with pytest.raises(ConfigError, match="'oops' is not key=value"):
        config.validate()
    config = TrainingConfig(curriculum=CurriculumConfig(tasks=["CartPole-v1", "Acrobot-v1"], weights=[0.0, 0.0]))
    with pytest.raises(ConfigError, match="curriculum.weights=\\[0.0, 0.0\\] must give one finite weight"):
        config.validate()
