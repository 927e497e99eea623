import math
import os
import re

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
from cleanmetta.resume import restore_checkpoint
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


# ---- task families ----------------------------------------------------------------------------------

def test_task_families_parse_ranges_floats_and_choices():
    from cleanmetta.curriculum import TaskFamily

    family = TaskFamily.parse("mettagrid/hearts:altars=1..8,speed=0.5..2.0,size=9|15|25,mode=easy|hard,walls=3")
    assert {key: s.kind for key, s in family.settings.items()} == {"altars": "int", "speed": "float", "size": "choice",
                                                                  "mode": "choice"}
    assert family.settings["size"].choices == (9, 15, 25) and family.fixed == {"walls": 3}
    rng = np.random.default_rng(0)
    tasks = [family.draw(rng) for _ in range(200)]
    assert {t.kwargs["altars"] for t in tasks} == set(range(1, 9))  # both ends included
    assert all(0.5 <= t.kwargs["speed"] <= 2.0 and t.kwargs["mode"] in ("easy", "hard") for t in tasks)
    assert all(family.contains(Task.parse(t.name)) for t in tasks)  # every draw is a concrete task string
    assert not family.contains(Task.parse("mettagrid/hearts:altars=9,speed=1,size=9,mode=\"easy\",walls=3"))
    assert family.middle().kwargs == {"walls": 3, "altars": 4, "speed": 1.25, "size": 15, "mode": "hard"}
    assert family.size == math.inf and TaskFamily.parse("CartPole-v1:max_episode_steps=10..19").size == 10


@pytest.mark.parametrize("spec, message", [
    ("mettagrid/hearts:altars=8..1", "altars=8..1 is an empty range: write low..high with low <= high"),
    ("mettagrid/hearts:altars=1..", "a range needs two numbers, low..high"),
    ("mettagrid/hearts:size=9||25", "has an empty choice: write a|b|c"),
])
def test_task_family_errors_name_the_fix(spec, message):
    from cleanmetta.config import TrainingConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainingConfig(curriculum=CurriculumConfig(tasks=[spec])).validate()


def test_an_unknown_setting_is_named_with_the_settings_there_are():
    pytest.importorskip("mettagrid")
    with pytest.raises(ConfigError, match=r"unknown setting 'altar'; its settings are \['num_agents'"):
        make_vecenv(EnvConfig(num_envs=2), 0, RandomCurriculum(["mettagrid/hearts:altar=1..3"]))
    with pytest.raises(ConfigError, match="task 'CartPole-v1:poles=2'.*unexpected keyword argument 'poles'"):
        make_vecenv(EnvConfig(num_envs=2), 0, RandomCurriculum(["CartPole-v1:poles=1..3"]))


def test_random_curriculum_draws_a_new_task_of_the_family_each_episode():
    vecenv = make_vecenv(EnvConfig(num_envs=4), seed=0, curriculum=make_curriculum(
        EnvConfig(), CurriculumConfig(tasks=["CartPole-v1:max_episode_steps=5..40"])))
    played = set()
    vecenv.reset(seed=0)
    for _ in range(300):
        _, _, terminated, truncated, infos = vecenv.step(vecenv.action_space.sample())
        played.update(infos["task"][terminated | truncated])
    lengths = {int(name.rsplit("=", 1)[1]) for name in played}
    assert len(lengths) > 15 and min(lengths) >= 5 and max(lengths) <= 40


# ---- learning progress: the maths on scripted scores -----------------------------------------------

def scripted(lp, steps=80):
    """Task 0's score rises from 0 to 1, task 1 stays at 0, task 2 at 1; one score each per step."""
    for task in range(3):
        lp.add(task)
    for t in range(steps):
        for task, score in enumerate((min(t / 60, 1.0), 0.0, 1.0)):
            lp.record(task, score)
        lp.step()


def test_a_rising_task_is_sampled_more_than_one_flat_at_0_or_at_1():
    from cleanmetta.learning_progress import LearningProgress

    lp = LearningProgress(rand_task_rate=0.25)
    scripted(lp, steps=40)
    p = lp.probabilities([0, 1, 2])
    assert p[0] > p[2] > p[1]
    assert p[1] == pytest.approx(0.25 / 3)  # flat at 0: no progress, drawn only by the random share
    assert lp.score(1) == 0.0 and lp.score(2) == pytest.approx(0.1)  # flat at 1: the performance bonus alone


def test_new_tasks_get_the_exploration_bonus_and_equal_draws():
    from cleanmetta.learning_progress import LearningProgress

    lp = LearningProgress(exploration_bonus=0.1, sample_threshold=10)
    for task in range(4):
        lp.add(task)
    lp.record(0, 1.0)
    lp.step()
    assert [lp.score(t) for t in range(4)] == [0.1] * 4
    np.testing.assert_allclose(lp.probabilities(list(range(4))), 0.25)


def test_the_averages_step_once_per_rollout_towards_the_mean_return():
    from cleanmetta.learning_progress import LearningProgress

    lp = LearningProgress(ema_timescale=0.1, memory=25)
    lp.add(0)
    for _ in range(25):
        lp.record(0, 0.0)
    lp.step()
    for _ in range(25):  # 25 episodes in one rollout: one step, towards their mean, in the returns' units
        lp.record(0, 10.0)
    lp.step()
    assert lp.fast[0] == pytest.approx(0.1 * 10.0) and lp.slow[0] == pytest.approx(0.02 * 10.0)


def test_two_scoring_tasks_are_standardised_and_mixed_with_the_uniform_share():
    from cleanmetta.learning_progress import sampling_probabilities

    np.testing.assert_allclose(sampling_probabilities(np.array([0.3, 0.1, 0.0]), 0.0),
                               [0.7311, 0.2689, 0.0], atol=1e-4)  # sigmoid(+1), sigmoid(-1); Metta: 0.52, 0.48
    np.testing.assert_allclose(sampling_probabilities(np.array([0.3, 0.1, 0.0]), 0.25),
                               [0.75 * 0.7311 + 0.25 / 3, 0.75 * 0.2689 + 0.25 / 3, 0.25 / 3], atol=1e-4)


def three_task_script(rollouts=150, rise=100):
    """One family of three tasks, scored by its running range: flat at 0, flat at 5, and rising from 5 to
    10 over `rise` rollouts (then flat); 4 episodes of each per rollout. Each task's learning progress
    after every rollout, and the family's range then."""
    curriculum = lp_curriculum(["CartPole-v1:max_episode_steps=10..12"], num_active_tasks=3)
    flat_0, flat_5, rising = sorted(curriculum.ids)
    progress, ranges = {flat_0: [], flat_5: [], rising: []}, []
    for t in range(rollouts):
        returns = {flat_0: 0.0, flat_5: 5.0, rising: 5.0 + 5.0 * min(t / rise, 1.0)}
        names = [name for name in returns for _ in range(4)]
        curriculum.update({"episodic_task": np.array(names, dtype=object),
                           "episodic_return": np.array([returns[name] for name in names])})
        for name in progress:
            progress[name].append(curriculum.lp.score(curriculum.ids[name]))
        ranges.append(tuple(curriculum.seen[0]))
    return [np.array(progress[name]) for name in (flat_0, flat_5, rising)], ranges


def test_a_rising_task_is_seen_rising_when_it_widens_its_family_range():
    (flat_0, flat_5, rising), ranges = three_task_script()
    assert ranges[10][1] < 6 and ranges[99][1] > 9.5  # the rising task's mean is the family's maximum
    rises = slice(10, 100)  # scored (from 10 episodes) and rising
    assert (flat_0[rises] == 0).all()  # nothing learned: no progress, no performance bonus
    # a flat task scores at most 0.1, the performance bonus at the top of the range; the rising one more
    assert (rising[rises] > 0.1 + 1e-4).all() and (rising[rises] > flat_5[rises]).all()


def test_a_flat_task_gains_no_progress_when_its_family_range_widens():
    (_, flat_5, _), ranges = three_task_script()
    assert ranges[-1] == (0.0, 10.0)  # from 0..5 to 0..10
    assert (np.diff(flat_5) <= 1e-12).all()  # only its bonus moves: down, as the range grows above it
    assert flat_5[-1] == pytest.approx(0.1 * 0.95)  # 0.1 r(0.5): in the middle of the range


def lp_curriculum(tasks, seed=0, **settings):
    config = CurriculumConfig(tasks=tasks, algorithm="learning_progress", **settings)
    return make_curriculum(EnvConfig(), config, seed)


def rollout(curriculum, rng, score_of, episodes=24):
    """Episodes of the curriculum's draws, each scored by score_of(task name)."""
    names = [curriculum.sample(rng).name for _ in range(episodes)]
    return {"episodic_task": np.array(names, dtype=object),
            "episodic_return": np.array([score_of(name) for name in names])}


def test_random_draws_happen_at_the_configured_rate():
    curriculum = lp_curriculum(["CartPole-v1:max_episode_steps=10..13"], num_active_tasks=4, rand_task_rate=0.4,
                               sample_threshold=1, score_ranges=["0..1"])
    assert len(curriculum.pool) == 4  # the whole family: 4 tasks
    rising = curriculum.names[curriculum.pool[0]]
    rng = np.random.default_rng(0)
    for step in range(30):  # one task improves, the other three stay at 0
        curriculum.update(rollout(curriculum, rng, lambda name: step / 30 if name == rising else 0.0))
    draws = [curriculum.sample(rng).name for _ in range(20000)]
    for name in curriculum.names.values():
        if name != rising:
            assert np.mean([d == name for d in draws]) == pytest.approx(0.4 / 4, abs=0.01)


def test_eviction_replaces_a_task_that_stopped_improving():
    curriculum = lp_curriculum(["CartPole-v1:max_episode_steps=10..500"], num_active_tasks=4, min_presentations=5,
                               sample_threshold=1, score_ranges=["0..1"])
    stuck = curriculum.names[curriculum.pool[0]]
    rng = np.random.default_rng(1)
    updates = 0
    while stuck in curriculum.ids and updates < 50:  # the others keep improving, the stuck one is flat at 0
        updates += 1
        stats = curriculum.update(rollout(curriculum, rng, lambda name: 0.0 if name == stuck else updates / 50))
    assert stuck not in curriculum.ids and len(curriculum.pool) == 4
    assert stats["curriculum/evictions"] >= 1 and stats["curriculum/pool_size"] == 4


def test_the_same_seed_makes_the_same_choices():
    def run(seed):
        curriculum = lp_curriculum(["CartPole-v1:max_episode_steps=10..500"], seed, num_active_tasks=8,
                                   sample_threshold=2, min_presentations=2)
        rng = np.random.default_rng(3)
        for _ in range(15):
            curriculum.update(rollout(curriculum, rng, lambda name: len(name) % 7))
        return curriculum.state_dict(), [curriculum.sample(rng).name for _ in range(50)]

    assert run(0) == run(0)
    assert run(0)[0]["pool"] != run(1)[0]["pool"]


# ---- learning progress in training ------------------------------------------------------------------

def lp_config(run_root, tasks, steps, **env):
    from cleanmetta.config import TrainingConfig

    config = TrainingConfig(experiment_name="lp", env=EnvConfig(**env),
                            curriculum=CurriculumConfig(tasks=tasks, algorithm="learning_progress", num_active_tasks=6,
                                                        sample_threshold=2, min_presentations=2))
    config.log.run_root, config.log.console_interval = str(run_root), 1e9
    config.trainer.total_timesteps, config.trainer.num_steps = steps, 64
    config.checkpoint.interval = 1
    return config


def test_resume_continues_the_curriculum_exactly(tmp_path):
    import train
    from cleanmetta.checkpoint import TrainingCheckpointer
    from cleanmetta.trainer import make_optimizer

    config = lp_config(tmp_path, ["CartPole-v1:max_episode_steps=8..200"], 4 * 64 * 4, num_envs=4)
    uninterrupted = train.main(config)["curriculum"]
    assert uninterrupted.updates == 4 and uninterrupted.evictions >= 1  # the pool moved

    resumed = lp_config(tmp_path, ["CartPole-v1:max_episode_steps=8..200"], 8 * 64 * 4, num_envs=4)
    curriculum = make_curriculum(resumed.env, resumed.curriculum, resumed.seed)
    vecenv = make_vecenv(resumed.env, resumed.seed, curriculum)
    policy = make_policy(resumed.agent, vecenv.single_observation_space, vecenv.single_action_space)
    restore_checkpoint(TrainingCheckpointer(str(tmp_path / "lp")), resumed, policy,
                       make_optimizer(policy, resumed.trainer, torch.device("cpu")), vecenv, curriculum=curriculum)
    assert curriculum.state_dict() == uninterrupted.state_dict()
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert [curriculum.sample(a).name for _ in range(40)] == [uninterrupted.sample(b).name for _ in range(40)]
    stats = rollout(curriculum, np.random.default_rng(8), len)
    assert curriculum.update(stats) == uninterrupted.update(stats)  # and the next update moves both alike
    assert curriculum.state_dict() == uninterrupted.state_dict()
    vecenv.close()


def _trained_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"histograms": 0, "scalars": 0}).Reload()
    return events.Tags()["scalars"], events.Tags()["histograms"], events


@pytest.mark.parametrize("num_workers", [0, 2], ids=["in-process", "env-workers"])
def test_a_short_mettagrid_run_with_learning_progress_trains_and_logs_the_scores(tmp_path, num_workers):
    pytest.importorskip("mettagrid")
    import train

    family = "mettagrid/hearts:altars=1..6,width=9..15,max_steps=16..40"
    config = lp_config(tmp_path, [family], 6 * 64 * 16, num_envs=4, num_workers=num_workers)
    result = train.main(config)
    curriculum = result["curriculum"]
    assert curriculum.updates == 6 and sum(curriculum.lp.counts.values()) > 0
    scalars, histograms, events = _trained_tags(result["run_dir"])
    for name in ("learning_progress", "probability", "coverage", "pool_tasks"):
        assert f"curriculum/{family}/{name}" in scalars
    assert {"curriculum/sampling_entropy", "curriculum/evictions", f"tasks/{family}/episodic_return"} <= set(scalars)
    assert {f"tasks/{family}/{key}" for key in ("altars", "width", "max_steps")} <= set(histograms)
    played = {}  # the histograms have one bin per integer of the range: which altar counts were played
    for item in events.Histograms(f"tasks/{family}/altars"):
        for limit, count in zip(item.histogram_value.bucket_limit, item.histogram_value.bucket):
            played[limit - 0.5] = played.get(limit - 0.5, 0) + count
    assert all(value.is_integer() for value in played)
    altars = {value for value, count in played.items() if count}  # TensorBoard keeps some empty bins: not played
    assert altars <= set(range(1, 7)) and len(altars) >= 3
    with open(os.path.join(result["run_dir"], "episodes.csv")) as f:
        assert sum(played.values()) == len(f.readlines()) - 1  # every finished episode, once
    state = torch.load(max((tmp_path / "lp").glob("**/trainer_state*.pt")), weights_only=True)
    assert state["curriculum"]["pool"] == curriculum.pool


@pytest.mark.parametrize("env_id, num_workers", [("mettagrid/hearts", 2), ("CartPole-v1", 2), ("CartPole-v1", 0)],
                         ids=["mettagrid-workers", "gymnasium-async", "gymnasium-sync"])
def test_env_processes_play_the_pool_the_learner_publishes(env_id, num_workers):
    if env_id.startswith("mettagrid"):
        pytest.importorskip("mettagrid")
    setting = "max_steps=5..9" if env_id.startswith("mettagrid") else "max_episode_steps=5..9"
    curriculum = lp_curriculum([f"{env_id}:{setting}"], num_active_tasks=5)
    vecenv = make_vecenv(EnvConfig(id=env_id, num_envs=4, num_workers=num_workers), 0, curriculum)
    chosen = curriculum.pool[2]
    curriculum.table.write([chosen], np.ones(1))  # what an update publishes: here, one task alone
    vecenv.reset(seed=1)
    played = []
    for _ in range(40):
        _, _, terminated, truncated, infos = vecenv.step(vecenv.action_space.sample())
        if (terminated | truncated).any():
            played.extend(infos["task"][terminated | truncated])
    vecenv.close()
    assert len(played) > 8 and set(played) == {curriculum.names[chosen]}


def test_a_family_whose_settings_change_the_spaces_is_refused_before_training():
    pytest.importorskip("mettagrid")
    with pytest.raises(UnsupportedEnvError, match="num_agents=2 has \\(agents, tokens, actions\\) \\(2, 64, 5\\)"):
        make_vecenv(EnvConfig(num_envs=2), 0, RandomCurriculum(["mettagrid/hearts:num_agents=2..4"]))


def test_a_checkpointed_pool_is_refused_by_another_task_space():
    saved = lp_curriculum(["CartPole-v1:max_episode_steps=10..500"]).state_dict()
    with pytest.raises(ConfigError, match="resume with its curriculum.tasks, or pass --checkpoint.no-resume"):
        lp_curriculum(["CartPole-v1:max_episode_steps=10..50"]).load_state_dict(saved)


def test_a_checkpoint_of_averages_of_normalised_scores_is_refused_with_the_fix():
    curriculum = lp_curriculum(["CartPole-v1:max_episode_steps=10..500"])
    saved = curriculum.state_dict()
    lp = saved["lp"]
    saved["lp"] = {**{k: v for k, v in lp.items() if not k.endswith("_return")}, "fast": lp["fast_return"],
                   "slow": lp["slow_return"]}  # as an earlier cleanmetta saved it
    with pytest.raises(ConfigError, match=r"averages are of normalised scores .*pass --checkpoint.no-resume"):
        curriculum.load_state_dict(saved)


def test_every_curriculum_flag_the_docs_name_exists():
    import dataclasses

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = {f.name.replace("_", "-") for f in dataclasses.fields(CurriculumConfig)}
    for page in ("README.md", os.path.join("docs", "curriculum.md")):
        with open(os.path.join(root, page)) as f:
            named = set(re.findall(r"--curriculum\.([a-z-]+)", f.read()))
        assert named and named <= flags, (page, named - flags)
