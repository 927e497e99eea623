"""Recording evaluation episodes: mp4 files of gymnasium envs, MettaGrid's own replay files.

The mp4 tests need the video extra (moviepy, which brings imageio-ffmpeg, and pygame for the
classic-control renderers) and skip without it, with its install command as the reason; the tests
of the error a user without it gets run always.
"""

import importlib.util
import json
import os
import sys
import zlib

import gymnasium as gym
import pytest
import torch

import train
from cleanmetta.config import AgentConfig, ConfigError, EnvConfig, small_fast_config
from cleanmetta.presets import mettagrid_config
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.evaluate import main as evaluate_main
from cleanmetta.policy import make_policy

needs_video = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("moviepy", "pygame")),
    reason='recording needs the video extra: pip install -e ".[video]"')
needs_mettagrid = pytest.mark.skipif(importlib.util.find_spec("mettagrid") is None,
                                     reason='MettaGrid is an optional extra: pip install -e ".[mettagrid]"')


def frame_count(path: str) -> int:
    """Frames in an mp4, counted by decoding it with ffmpeg (imageio-ffmpeg comes with moviepy)."""
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    return frames


def cartpole_policy(seed=0):
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    return make_policy(AgentConfig(), env.observation_space, env.action_space)


@needs_video
@pytest.mark.parametrize("episodes", [1, 3])
def test_the_first_episode_of_each_simulation_is_an_mp4_of_its_length(tmp_path, episodes):
    suite = [Simulation("CartPole-v1", "CartPole-v1", episodes=episodes, seed=3)]
    evaluator = PolicyEvaluator(suite, deterministic=True, video_dir=str(tmp_path))
    (path,) = evaluator.evaluate(cartpole_policy(), step=4096)["CartPole-v1"].recordings
    assert path == os.path.join(str(tmp_path), "step_000004096", "CartPole-v1", "rl-video-episode-0.mp4")
    # Acting by the mode, the first env (seeded 3) plays the same episode whatever the number of envs:
    # the one a single-episode evaluation measures. Its video holds the reset frame and one per step.
    alone = PolicyEvaluator([Simulation("CartPole-v1", "CartPole-v1", episodes=1, seed=3)], deterministic=True)
    length = alone.evaluate(cartpole_policy())["CartPole-v1"].mean_length
    assert length > 5 and frame_count(path) == length + 1


@needs_video
def test_recording_does_not_change_the_episodes_or_the_scores(tmp_path):
    suite = [Simulation("CartPole-v1", "CartPole-v1", episodes=4, seed=11)]
    plain = PolicyEvaluator(suite).evaluate(cartpole_policy())["CartPole-v1"]
    recorded = PolicyEvaluator(suite, video_dir=str(tmp_path)).evaluate(cartpole_policy())["CartPole-v1"]
    assert plain.scores("x") == recorded.scores("x") and len(recorded.recordings) == 1


@needs_video
def test_train_records_every_evaluation_under_the_run_directory(tmp_run_root):
    config = small_fast_config()
    config.trainer.total_timesteps = 512 * 4
    config.experiment_name = "video"
    config.log.run_root, config.log.tensorboard, config.log.console_interval = tmp_run_root, False, 1e9
    config.evaluation.interval, config.evaluation.episodes, config.evaluation.video = 2, 2, True
    train.main(config)
    videos = os.path.join(tmp_run_root, "video", "videos")
    assert sorted(os.listdir(videos)) == ["step_000001024", "step_000002048"]
    for step in os.listdir(videos):
        (path,) = [os.path.join(videos, step, "CartPole-v1", f) for f in os.listdir(os.path.join(videos, step,
                                                                                                "CartPole-v1"))]
        assert path.endswith(".mp4") and frame_count(path) > 1


@needs_video
def test_evaluate_command_records_with_video(tmp_run_root, capsys):
    config = small_fast_config()
    config.trainer.total_timesteps = 512
    config.experiment_name = "cli"
    config.log.run_root, config.log.tensorboard, config.log.console_interval = tmp_run_root, False, 1e9
    train.main(config)
    evaluate_main([os.path.join(tmp_run_root, "cli"), "--episodes", "1", "--video"])
    out = capsys.readouterr().out
    path = os.path.join(tmp_run_root, "cli", "videos", "step_000000512", "CartPole-v1", "rl-video-episode-0.mp4")
    assert f"recorded {path}" in out and frame_count(path) > 1


@needs_mettagrid
def test_mettagrid_evaluation_writes_mettagrids_own_replay(tmp_path):
    env = make_vecenv(EnvConfig(id="mettagrid/hearts", num_envs=1), 0)
    policy = make_policy(AgentConfig(), env.single_observation_space, env.single_action_space)
    env.close()
    suite = [Simulation("hearts", "mettagrid/hearts", episodes=2, seed=5)]
    plain = PolicyEvaluator(suite).evaluate(policy)["hearts"]
    result = PolicyEvaluator(suite, video_dir=str(tmp_path)).evaluate(policy, step=7)["hearts"]
    assert plain.scores("x") == result.scores("x")
    (path,) = result.recordings  # the first simulation's episode
    assert path.startswith(os.path.join(str(tmp_path), "step_000000007", "hearts")) and path.endswith(".json.z")
    with open(path, "rb") as f:
        replay = json.loads(zlib.decompress(f.read()))
    assert replay["num_agents"] == 4 and replay["max_steps"] == 200
    assert replay["action_names"] and replay["objects"]


@needs_mettagrid
def test_the_evaluate_command_names_the_viewer_of_a_mettagrid_replay(tmp_run_root, capsys):
    config = mettagrid_config()
    config.env.num_envs, config.trainer.num_steps, config.trainer.total_timesteps = 2, 16, 128
    config.experiment_name = "grid"
    config.log.run_root, config.log.tensorboard, config.log.console_interval = tmp_run_root, False, 1e9
    train.main(config)
    evaluate_main([os.path.join(tmp_run_root, "grid"), "--episodes", "1", "--video"])
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("recorded ")]
    assert line.endswith(".json.z (a MettaGrid replay: MettaGrid's viewer MettaScope plays it: drop the file on "
                         "https://metta-ai.github.io/metta/mettascope/mettascope.html, or open that page with "
                         "?replay=<its URL>)")


def test_video_without_evaluations_is_a_config_error():
    config = small_fast_config()
    config.evaluation.video = True
    with pytest.raises(ConfigError, match="evaluation.video=True records evaluation episodes, but "
                                          "evaluation.interval=0 runs none"):
        config.validate()


def test_without_moviepy_video_stops_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r'--evaluation\.video needs moviepy .*pip install -e "\.\[video\]"'):
        PolicyEvaluator([Simulation("CartPole-v1", "CartPole-v1")], video_dir=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="checks the renderer, after moviepy")
def test_without_a_renderer_video_stops_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)  # CartPole renders with pygame
    with pytest.raises(ConfigError, match=r'CartPole-v1 cannot render .*pip install -e "\.\[video\]"'):
        PolicyEvaluator([Simulation("CartPole-v1", "CartPole-v1")], video_dir=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="checks the env, after moviepy")
def test_an_env_that_cannot_render_frames_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"cleanmetta-test/Counter-v0 cannot render frames .*drop the flag"):
        PolicyEvaluator([Simulation("counter", "cleanmetta-test/Counter-v0")], video_dir=str(tmp_path))


class Flipbook(gym.Env):
    """Renders a small frame per step; its episodes last `length` steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, length: int):
        self.observation_space = gym.spaces.Box(0, 1, (1,))
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode, self.length, self.t = "rgb_array", length, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 0.0, self.t >= self.length, False, {}

    def render(self):
        import numpy as np

        return np.full((16, 16, 3), self.t * 5 % 255, np.uint8)


@needs_video
@pytest.mark.parametrize("length", [10, 11, 13, 28, 206])  # lengths whose last frame moviepy's rounding drops
def test_every_recorded_frame_is_in_the_video(tmp_path, length):
    from cleanmetta.envs import record_first_episode

    folder = str(tmp_path / "videos")
    env = record_first_episode(Flipbook(length), folder)
    env.reset()
    while not env.step(0)[2]:
        pass
    env.close()
    assert frame_count(os.path.join(folder, "rl-video-episode-0.mp4")) == length + 1
