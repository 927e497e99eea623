"""Atari through ale-py's native vector env: the game score, lost lives, the preset (needs the atari extra)."""

import importlib.util
import os

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py", reason='the atari extra: pip install -e ".[atari]"')

import train  # noqa: E402
from cleanmetta.atari import AtariGames, make_atari_vecenv  # noqa: E402
from cleanmetta.checkpoint import PolicyStore  # noqa: E402
from cleanmetta.collector import RolloutCollector  # noqa: E402
from cleanmetta.config import EnvConfig  # noqa: E402
from cleanmetta.presets import PRESETS  # noqa: E402
from cleanmetta.envs import make_vecenv  # noqa: E402
from cleanmetta.evaluate import PolicyEvaluator, Simulation  # noqa: E402
from cleanmetta.experience import Experience  # noqa: E402
from cleanmetta.policy import CNNPolicy, make_policy  # noqa: E402

# Space Invaders: 3 lives, and aliens worth 5 to 30 points, so a clipped sum differs from the score.
GAME = "ALE/SpaceInvaders-v5"
SETTINGS = {"repeat_action_probability": 0.0, "episodic_life": True, "reward_clipping": True}


class Spy:
    """Records what ale-py's own vector env answered, under the AtariGames wrapper."""

    def __init__(self, games: AtariGames):
        self.inner_step, self.actions, self.rewards, self.lives, self.ends = games.env.step, [], [], [], []
        games.env.step = self.step

    def step(self, actions):
        self.actions.append(np.array(actions))
        obs, reward, terminated, truncated, info = self.inner_step(actions)
        self.rewards.append(np.array(reward, np.float64))
        self.lives.append(np.array(info["lives"]))
        self.ends.append(terminated | truncated)
        return obs, reward, terminated, truncated, info


def play(games: AtariGames, steps: int, seed: int = 0):
    """Random actions for `steps` steps; the wrapper's answers, stacked."""
    rng = np.random.default_rng(seed)
    games.reset(seed=seed)
    return [games.step(rng.integers(0, games.single_action_space.n, games.num_envs)) for _ in range(steps)]


def test_a_lost_life_ends_the_training_episode_and_the_game_goes_on_to_its_unclipped_score():
    games = make_atari_vecenv(GAME, 2, SETTINGS)
    spy = Spy(games)
    answers = play(games, 1200)
    raw, lives, ends = np.array(spy.rewards), np.array(spy.lives), np.array(spy.ends)
    reward = np.array([a[1] for a in answers])
    terminated = np.array([a[2] for a in answers])
    scores = [(t, e, a[4]["episode"]["r"][e]) for t, a in enumerate(answers) for e in np.nonzero(a[4]["_episode"])[0]]
    assert len(scores) >= 2, "random play should end a few games in 1200 steps"
    lost_lives = 0
    for t, e, score in scores:
        game_start = 0 if not ends[:t, e].any() else np.nonzero(ends[:t, e])[0][-1] + 2  # after ale-py's reset step
        game = raw[game_start:t + 1, e]
        assert score == game.sum() > np.sign(game).sum()  # every life, unclipped
        lost = np.nonzero(np.diff(lives[game_start:t + 1, e]) < 0)[0] + game_start + 1  # steps that lost a life
        lost = lost[lost < t]  # the last life ends the game itself
        lost_lives += len(lost)
        assert terminated[lost, e].all()  # a training episode ends at each lost life...
        assert not ends[lost, e].any()    # ...while the game goes on (ale-py did not end it)
        assert (np.array(spy.actions)[lost + 1, e] == 1).all()  # the next step presses FIRE, the reset step
        assert (reward[lost + 1, e] == 0).all()  # and its reward is not trained on
    assert lost_lives >= 2
    assert set(np.unique(reward)) <= {0.0, 1.0} and raw.max() > 1  # training rewards clipped to their sign
    games.close()


def test_the_collector_and_the_evaluator_report_game_scores():
    vecenv = make_vecenv(EnvConfig(id=GAME, num_envs=2, kwargs="repeat_action_probability=0.0,episodic_life=true"),
                         seed=0)
    spy = Spy(vecenv)
    torch.manual_seed(0)
    policy = make_policy(PRESETS["atari"]().agent, vecenv.single_observation_space, vecenv.single_action_space)
    experience = Experience.for_env(vecenv, 600)
    stats, _ = RolloutCollector(vecenv, policy, experience).collect()
    raw, ends = np.array(spy.rewards), np.array(spy.ends)
    expected = []
    for e in range(2):
        starts = np.concatenate([[0], np.nonzero(ends[:, e])[0] + 2])
        expected += [(t, raw[s:t + 1, e].sum()) for s, t in zip(starts, np.nonzero(ends[:, e])[0])]
    expected = [score for _, score in sorted(expected, key=lambda pair: pair[0])]
    assert len(expected) >= 1
    assert sorted(stats["episodic_return"].tolist()) == sorted(expected)
    assert experience.rewards.abs().max() <= 1  # training rewards are clipped
    vecenv.close()

    sim = Simulation("space_invaders", f"{GAME}:repeat_action_probability=0.0,episodic_life=true", episodes=2)
    result = PolicyEvaluator([sim]).evaluate(policy)["space_invaders"]
    assert result.episodes == 2 and result.mean_length > 100  # whole games: three lives, not one
    assert result.max_return > 30  # unclipped points


def test_the_preset_builds_ale_pys_vector_env_with_cleanrls_settings():
    config = PRESETS["atari"]()
    assert (config.env.num_envs, config.trainer.num_steps, config.ppo.num_minibatches, config.ppo.update_epochs) == \
        (8, 128, 4, 4)
    assert (config.ppo.clip_coef, config.ppo.ent_coef, config.agent.name, config.agent.hidden_size) == \
        (0.1, 0.01, "simple_cnn", 512)
    vecenv = make_vecenv(config.env, seed=0)
    assert isinstance(vecenv, AtariGames) and type(vecenv.env).__name__ == "AtariVectorEnv"
    assert vecenv.single_observation_space.shape == (4, 84, 84) and vecenv.episodic_life and vecenv.reward_clipping
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    assert isinstance(policy, CNNPolicy) and policy.image.trunk[0].kernel_size == (8, 8)
    vecenv.close()


def test_a_short_atari_run_trains_and_evaluates(tmp_path):
    config = PRESETS["atari"]()
    config.env.num_envs, config.trainer.num_steps, config.trainer.total_timesteps = 2, 64, 256
    config.agent.hidden_size = 64
    config.evaluation.interval, config.evaluation.episodes = 2, 1
    config.experiment_name, config.log.run_root, config.log.tensorboard = "atari", str(tmp_path), False
    result = train.main(config)
    record = PolicyStore(os.path.join(str(tmp_path), "atari")).latest()
    assert result["epoch"] == 2 and record.scores[f"{config.env.id}/episodes"] == 1


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason='recording needs the video extra: '
                    'pip install -e ".[video]"')
def test_an_atari_evaluation_records_its_whole_game_without_changing_it(tmp_path):
    from test_video import frame_count

    torch.manual_seed(0)
    vecenv = make_vecenv(EnvConfig(id=GAME), seed=0)
    policy = make_policy(PRESETS["atari"]().agent, vecenv.single_observation_space, vecenv.single_action_space)
    vecenv.close()
    sim = Simulation("space_invaders", f"{GAME}:repeat_action_probability=0.0,episodic_life=true", episodes=1, seed=3)
    plain = PolicyEvaluator([sim]).evaluate(policy)["space_invaders"]
    recorded = PolicyEvaluator([sim], video_dir=str(tmp_path)).evaluate(policy, step=0)["space_invaders"]
    assert plain.scores("x") == recorded.scores("x")
    (path,) = recorded.recordings
    # the game's first observation, then one frame a step
    assert path.endswith("game-0.mp4") and frame_count(path) == recorded.mean_length + 1
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(path)
    meta = next(frames)
    rgb = np.frombuffer(next(frames), np.uint8).reshape(meta["size"][1], meta["size"][0], 3).astype(int)
    assert meta["size"] == (160, 210)  # the console's screen, as CleanRL's videos show it, not the 84x84 input
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 30  # in colour (video encoding blurs grays by a few levels)
