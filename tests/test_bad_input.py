"""Bad or unusual input: every setting is read as its user wrote it or refused in one line naming the
fix, before anything trains (docs/errors.md has the table these tests keep true)."""

import importlib.util
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from cleanmetta.cli import parse_config, read_flag_values
from cleanmetta.config import AgentConfig, ConfigError, EnvConfig, TrainingConfig, parse_kwargs, read_bool
from cleanmetta.encoders import ImageEncoder
from cleanmetta.envs import make_vecenv
from cleanmetta.files import WriteError, make_directory
from cleanmetta.policy import make_policy, network_for
from cleanmetta.spaces import UnsupportedEnvError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_atari = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None,
                                 reason='Atari needs the atari extra: pip install -e ".[atari]"')


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message
    return message


# ---- bools, as people write them ------------------------------------------------------------------------

@pytest.mark.parametrize("written, meant", [(True, True), ("True", True), ("true", True), ("yes", True), ("ON", True),
                                           (1, True), ("1", True), (False, False), ("False", False),
                                           ("false", False), ("no", False), ("off", False), (0, False)])
def test_every_spelling_of_a_bool_means_what_it_says(written, meant):
    assert read_bool(written, "x") is meant


@pytest.mark.parametrize("written", ["maybe", "", 2, 0.5, None, "Nein"])
def test_a_value_that_is_no_bool_is_refused(written):
    with pytest.raises(ConfigError, match="x=.* must be a bool: true or false"):
        read_bool(written, "x")


def test_kwargs_in_python_spelling_are_python_values():
    assert parse_kwargs("a=False,b=True,c=None,d=false,e=no", "t") == {"a": False, "b": True, "c": None, "d": False,
                                                                         "e": "no"}


@pytest.mark.parametrize("written", ["False", "false", "no", "off", "0"])
@pytest.mark.parametrize("vectorization", ["native", "sync"])
def test_a_bool_env_kwarg_written_any_way_reaches_the_env_as_that_bool(written, vectorization):
    env = make_vecenv(EnvConfig(id=f"CartPole-v1:sutton_barto_reward={written}", num_envs=2,
                                vectorization=vectorization), 0)
    reads = env._sutton_barto_reward if vectorization == "native" else env.envs[0].unwrapped._sutton_barto_reward
    env.close()
    assert reads is False
    env = make_vecenv(EnvConfig(id="CartPole-v1", kwargs="sutton_barto_reward=yes", num_envs=2), 0)
    assert env._sutton_barto_reward is True
    env.close()


@pytest.mark.parametrize("written, checked", [("no", True), ("off", True), ("yes", False)])
def test_gymnasiums_own_bool_kwargs_are_read_as_written_too(written, checked):
    env = make_vecenv(EnvConfig(id=f"CartPole-v1:disable_env_checker={written}", vectorization="sync", num_envs=1), 0)
    wrappers, wrapped = [], env.envs[0]
    while hasattr(wrapped, "env"):
        wrappers, wrapped = wrappers + [type(wrapped).__name__], wrapped.env
    env.close()
    assert ("PassiveEnvChecker" in wrappers) is checked  # "no": the checker stays, not disabled by a truthy string


def test_a_bool_env_kwarg_that_is_no_bool_is_refused_naming_the_task():
    with pytest.raises(ConfigError, match="task 'CartPole-v1:sutton_barto_reward=\"maybe\"': sutton_barto_reward="
                                          "'maybe' must be a bool") as failure:
        make_vecenv(EnvConfig(id="CartPole-v1:sutton_barto_reward=maybe"), 0)
    one_line(failure.value)


@needs_atari
@pytest.mark.parametrize("off", ["False", "no"])  # the other spellings: read_bool's test above
def test_atari_options_written_in_any_spelling_turn_off(off):
    env = make_vecenv(EnvConfig(id=f"ALE/Breakout-v5:episodic_life={off},reward_clipping={off}", num_envs=2), 0)
    assert (env.reward_clipping, env.episodic_life) == (False, False)
    env.close()
    env = make_vecenv(EnvConfig(id="ALE/Breakout-v5", kwargs=f"reward_clipping={off.upper()}", num_envs=2), 0)
    assert env.reward_clipping is False
    env.close()


def test_a_bool_in_a_config_file_may_be_any_spelling_of_one():
    config = TrainingConfig.from_dict({"ppo": {"norm_adv": "no", "clip_vloss": "False"}, "log": {"tensorboard": "off"}})
    assert (config.ppo.norm_adv, config.ppo.clip_vloss, config.log.tensorboard) == (False, False, False)
    with pytest.raises(ConfigError, match="ppo.norm_adv='maybe' must be a bool"):
        TrainingConfig.from_dict({"ppo": {"norm_adv": "maybe"}})


@pytest.mark.parametrize("argv", [["--ppo.norm-adv", "False"], ["--ppo.norm-adv=no"], ["--ppo.norm_adv", "off"],
                                  ["--ppo.no-norm-adv"], ["--ppo.norm-adv", "0"]])
def test_a_bool_flag_given_a_value_reads_it(argv):
    assert parse_config(argv).ppo.norm_adv is False


def test_bool_flags_given_true_and_top_level_flags_read_their_values():
    config = parse_config(["--no-torch-deterministic", "--torch-deterministic", "yes", "--log.wandb", "false",
                           "--evaluation.deterministic=True"])
    assert (config.torch_deterministic, config.log.wandb, config.evaluation.deterministic) == (True, False, True)
    assert read_flag_values(["--ppo.norm-adv", "--seed", "3"]) == ["--ppo.norm-adv", "--seed", "3"]  # no value


def test_a_bool_flag_given_a_value_that_is_no_bool_is_refused_naming_the_flag():
    with pytest.raises(ConfigError, match="--ppo.norm-adv='maybe' must be a bool"):
        parse_config(["--ppo.norm-adv=maybe"])


@pytest.mark.parametrize("written, meant", [("2e3", 2000), ("2E5", 200_000), ("1000.0", 1000), ("512", 512)])
def test_an_integer_flag_takes_an_exponent_as_a_config_file_does(written, meant):
    assert parse_config(["--trainer.total-timesteps", written]).trainer.total_timesteps == meant
    assert parse_config([f"--trainer.total-timesteps={written}"]).trainer.total_timesteps == meant
    assert TrainingConfig.from_dict({"trainer": {"total_timesteps": written}}).trainer.total_timesteps == meant


def test_an_integer_flag_refuses_a_fraction():
    with pytest.raises(SystemExit):
        parse_config(["--trainer.total-timesteps", "2.5"])


# ---- config files ---------------------------------------------------------------------------------------

def test_a_flat_dotted_key_in_a_config_file_is_told_to_nest():
    with pytest.raises(ConfigError, match="unknown config key 'env.id'; nest it under its section: 'env:' then "
                                          "'id: ...'"):
        TrainingConfig.from_dict({"env.id": "Acrobot-v1"})


def test_config_naming_a_directory_or_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is a directory; name a YAML or JSON file") as failure:
        parse_config(["--config", str(tmp_path)])
    one_line(failure.value)
    with pytest.raises(ConfigError, match="no such config file"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])


# ---- observations ----------------------------------------------------------------------------------------

def test_stacked_rgb_frames_go_through_the_cnn_frame_by_frame():
    space = spaces.Box(0, 255, (4, 84, 84, 3), np.uint8)  # ALE/Breakout-v5:grayscale=false, a FrameStack of RGB
    assert network_for(AgentConfig(), space) == "simple_cnn"
    encoder = make_policy(AgentConfig(), space, spaces.Discrete(4)).image
    assert isinstance(encoder, ImageEncoder) and encoder.trunk[0].in_channels == 12
    obs = torch.zeros(2, 4, 84, 84, 3, dtype=torch.uint8)
    for frame in range(4):
        for channel in range(3):
            obs[:, frame, :, :, channel] = 10 * frame + channel
    seen = []
    encoder.trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    encoder(obs)
    expected = torch.tensor([10 * f + c for f in range(4) for c in range(3)], dtype=torch.float32) / 255
    assert seen[0].shape == (2, 12, 84, 84)
    assert torch.allclose(seen[0][:, :, 40, 40], expected.expand(2, 12))  # channel f x 3 + c is frame f's colour c


def test_a_stack_of_channels_first_frames_is_an_image_too():
    space = spaces.Box(0, 255, (4, 3, 64, 64), np.uint8)
    assert make_policy(AgentConfig(), space, spaces.Discrete(2)).image.trunk[0].in_channels == 12


@pytest.mark.parametrize("shape", [(4, 10, 10, 10), (2, 3, 4, 5, 6)])
def test_observations_of_many_axes_that_are_no_images_are_refused_naming_the_fix(shape):
    with pytest.raises(ConfigError, match="neither vectors nor images.*FlattenObservation") as failure:
        make_policy(AgentConfig(), spaces.Box(0, 1, shape, np.float32), spaces.Discrete(2))
    one_line(failure.value)


@needs_atari
def test_atari_in_colour_trains_through_the_cnn():
    env = make_vecenv(EnvConfig(id="ALE/Breakout-v5:grayscale=false", num_envs=2), 0)
    policy = make_policy(AgentConfig(), env.single_observation_space, env.single_action_space)
    obs, _ = env.reset(seed=0)
    action, _, _, value = policy.get_action_and_value(torch.as_tensor(obs))
    env.close()
    assert env.single_observation_space.shape == (4, 84, 84, 3) and type(policy).__name__ == "CNNPolicy"
    assert action.shape[0] == 2 and value.shape == (2,)


@pytest.mark.parametrize("name, wants", [("simple_cnn", "image observations"), ("token", "token observations")])
def test_a_network_that_does_not_fit_the_observations_is_one_line(name, wants):
    with pytest.raises(ConfigError, match=f"agent.name='{name}' needs .*{wants}.*use --agent.name auto") as failure:
        make_policy(AgentConfig(name=name), spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2))
    one_line(failure.value)


# ---- environments ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("vectorization", ["auto", "sync", "async"])
def test_a_kwarg_the_env_does_not_take_is_one_line(vectorization):
    with pytest.raises(ConfigError, match="task 'CartPole-v1:nosuchkwarg=1': .*unexpected keyword argument "
                                          "'nosuchkwarg'; drop that setting") as failure:
        make_vecenv(EnvConfig(id="CartPole-v1:nosuchkwarg=1", vectorization=vectorization), 0)
    one_line(failure.value)


def env_that_imports_a_missing_module():
    import cleanmetta_test_missing_renderer  # noqa: F401 (as gymnasium's MuJoCo envs import imageio)


gym.register("cleanmetta-test/NeedsAModule-v0", entry_point=env_that_imports_a_missing_module)


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_module_the_env_imports_that_is_missing_is_one_line_with_its_pip_command(vectorization):
    with pytest.raises(ConfigError, match="env.id='cleanmetta-test/NeedsAModule-v0' needs the module "
                                          "'cleanmetta_test_missing_renderer', which is not installed: pip install "
                                          "cleanmetta-test-missing-renderer") as failure:
        make_vecenv(EnvConfig(id="cleanmetta-test/NeedsAModule-v0", vectorization=vectorization), 0)
    one_line(failure.value)


@needs_atari
def test_an_atari_game_that_does_not_exist_is_one_line():
    with pytest.raises(ConfigError, match="env.id='ALE/NoSuchGame-v5' is not a registered gymnasium environment: "
                                          ".*NoSuchGame") as failure:
        make_vecenv(EnvConfig(id="ALE/NoSuchGame-v5"), 0)
    one_line(failure.value)


def test_a_wrapper_that_cannot_wrap_the_space_is_one_line_naming_it():
    wrapper = "gymnasium.wrappers:FlattenObservation"  # over a space gymnasium cannot flatten (MiniGrid's mission)
    with pytest.raises(ConfigError, match=f"env.wrappers entry '{wrapper}' cannot wrap toy/Mission-v0: "
                                          "NotImplementedError") as failure:
        make_vecenv(EnvConfig(id="toy_envs:toy/Mission-v0", wrappers=[wrapper]), 0)
    one_line(failure.value)


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_wrapper_whose_observations_do_not_match_its_space_is_named_at_the_first_reset(vectorization):
    config = EnvConfig(id="toy_envs:toy/Failing-v0", wrappers=["toy_envs:DropsAnEntry"], vectorization=vectorization)
    with pytest.raises(UnsupportedEnvError, match=r"the first observation has shape \(5,\).*declares \(6,\).*the "
                                                  r"last of env.wrappers \['toy_envs:DropsAnEntry'\] must declare "
                                                  "the observation_space") as failure:
        make_vecenv(config, 0)
    one_line(failure.value)


# ---- where a run writes ----------------------------------------------------------------------------------

def test_a_run_root_under_a_file_or_on_a_read_only_path_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    for directory in (str(tmp_path / "a_file" / "run"), "/proc/cleanmetta/run"):
        with pytest.raises(WriteError, match=f"log.run_root: cannot write in {directory} .*pick a directory you can "
                                             "write to") as failure:
            make_directory(directory, "log.run_root")
        one_line(failure.value)


def test_train_py_prints_one_line_for_a_network_that_does_not_fit():
    done = subprocess.run([sys.executable, "train.py", "--agent.name", "simple_cnn"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: agent.name='simple_cnn' needs image observations")


def test_evaluating_a_policy_of_another_env_is_one_line_not_a_shape_error():
    from cleanmetta.checkpoint import CheckpointError
    from cleanmetta.evaluate import PolicyEvaluator, Simulation

    acrobot = make_vecenv(EnvConfig(id="Acrobot-v1"), 0)
    policy = make_policy(AgentConfig(), acrobot.single_observation_space, acrobot.single_action_space)
    acrobot.close()
    with pytest.raises(CheckpointError, match=r"simulation 'CartPole-v1': the policy was saved for observations "
                                              r"Box\(6,\) float32 and actions Discrete\(3\), but the env has "
                                              r"Box\(4,\) float32 and Discrete\(2\); evaluate it on the env it was "
                                              "trained on") as failure:
        PolicyEvaluator([Simulation("CartPole-v1", "CartPole-v1", episodes=2)]).evaluate(policy)
    one_line(failure.value)


# ---- what a run writes and prints ------------------------------------------------------------------------

def test_a_runs_files_get_the_permissions_of_the_umask_like_its_logs(tmp_path):
    from cleanmetta.files import write_text

    write_text(str(tmp_path / "config.json"), "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "config.json").st_mode & 0o777 == 0o666 & ~umask


def test_resume_names_the_run_directory_as_a_new_run_does(tmp_path, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    config = parse_config(["--trainer.total-timesteps", "512", "--experiment-name", "a", "--log.no-tensorboard"])
    train.main(config)
    resumed = parse_config(["--resume", "runs/a/", "--trainer.total-timesteps", "1024"])
    assert (resumed.log.run_root, resumed.experiment_name) == ("runs", "a")  # printed as runs/a, not /tmp/.../runs/a
    monkeypatch.chdir(tmp_path / "runs")
    resumed = parse_config(["--resume", "a"])
    assert (resumed.log.run_root, resumed.experiment_name) == (".", "a")
