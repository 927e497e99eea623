"""Environments people bring: `module:EnvId`, wrappers by import path, and every common observation space."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta import evaluate
from cleanmetta.checkpoint import PolicyStore, load_policy_file
from cleanmetta.config import AgentConfig, ConfigError, CurriculumConfig, EnvConfig, TrainingConfig
from cleanmetta.curriculum import RandomCurriculum, Task, make_curriculum
from cleanmetta.encoders import ImageEncoder
from cleanmetta.envs import make_vecenv
from cleanmetta.policy import MultiInputPolicy, make_policy
from cleanmetta.spaces import ObservationLayout, space_from_dict, space_to_dict, spaces_match

import toy_envs

CORRIDOR_MODULE = '''
import gymnasium as gym
import numpy as np

class Corridor(gym.Env):
    """Walk right `length` cells; observation [position]."""

    def __init__(self, length=5):
        self.length = length
        self.observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0
        return np.array([self.position], np.float32), {}

    def step(self, action):
        self.position += int(action)
        done = self.position >= self.length
        return np.array([self.position], np.float32), float(done), done, False, {}

gym.register("corridor/MODULE-v0", entry_point=Corridor)
'''


@pytest.fixture
def corridor_module(tmp_path, monkeypatch):
    """A package of the test's own that registers corridor/<its name>-v0 when (and only when) it is imported."""
    name = f"corridor_{os.getpid()}_{len(sys.modules)}"
    (tmp_path / f"{name}.py").write_text(CORRIDOR_MODULE.replace("MODULE", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def small_config(run_root: str, env_id: str, steps: int = 256, **env) -> TrainingConfig:
    config = TrainingConfig(experiment_name="run", env=EnvConfig(id=env_id, num_envs=2, **env))
    config.trainer.total_timesteps, config.trainer.num_steps = steps, 32
    config.ppo.num_minibatches, config.ppo.update_epochs = 2, 2
    config.checkpoint.interval, config.log.run_root = 2, run_root
    config.log.tensorboard, config.log.console_interval = False, 1e9
    return config


def test_task_strings_name_a_module_an_id_and_kwargs():
    assert Task.parse("ale_py:ALE/Pong-v5") == Task("ALE/Pong-v5", {}, "ale_py")
    task = Task.parse("ale_py:ALE/Pong-v5:frameskip=2,mode=[1, 2]")
    assert (task.module, task.env_id, task.kwargs) == ("ale_py", "ALE/Pong-v5", {"frameskip": 2, "mode": [1, 2]})
    assert Task.parse(task.name) == task
    # ids without a module keep their meaning, MettaGrid's included
    assert Task.parse("CartPole-v1:max_episode_steps=200") == Task("CartPole-v1", {"max_episode_steps": 200})
    assert Task.parse("mettagrid/hearts:altars=3") == Task("mettagrid/hearts", {"altars": 3})
    assert Task.parse("Foo:bar=1") == Task("Foo", {"bar": 1})  # '=' after the colon: kwargs, not an id
    # config files and dicts take the same strings
    data = {"env": {"id": "ale_py:ALE/Pong-v5:frameskip=2", "kwargs": "repeat_action_probability=0.0",
                    "wrappers": ["gymnasium.wrappers:ClipReward:min_reward=-1,max_reward=1"]}}
    assert TrainingConfig.from_dict(data).validate().env.wrappers == data["env"]["wrappers"]
    # env.kwargs come under every task's own
    tasks = make_curriculum(EnvConfig(id="CartPole-v1:a=1", kwargs="a=0,b=2"), CurriculumConfig()).tasks
    assert tasks[0].kwargs == {"a": 1, "b": 2}


def test_module_colon_id_imports_the_module_that_registers_the_id(corridor_module):
    assert corridor_module not in sys.modules
    vecenv = make_vecenv(EnvConfig(id=f"{corridor_module}:corridor/{corridor_module}-v0", num_envs=2), seed=0)
    assert corridor_module in sys.modules and vecenv.envs[0].unwrapped.length == 5
    vecenv.close()
    vecenv = make_vecenv(EnvConfig(id=f"{corridor_module}:corridor/{corridor_module}-v0:length=2", num_envs=2), seed=0)
    vecenv.step(np.ones(2, np.int64))
    _, reward, terminated, _, _ = vecenv.step(np.ones(2, np.int64))  # length=2 reached the end
    assert terminated.all() and (reward == 1).all()
    vecenv.close()


def test_module_colon_id_tasks_mix_in_a_curriculum(corridor_module):
    env_id = f"{corridor_module}:corridor/{corridor_module}-v0"
    curriculum = RandomCurriculum([f"{env_id}:length=1", f"{env_id}:length=3"])
    vecenv = make_vecenv(EnvConfig(num_envs=4), seed=0, curriculum=curriculum)
    lengths = set()
    for _ in range(40):
        _, _, terminated, _, infos = vecenv.step(np.ones(4, np.int64))
        lengths.update(task[-1] for task in infos["task"][terminated])
    assert lengths == {"1", "3"}
    vecenv.close()


def test_a_missing_module_gets_its_name_and_the_install_command():
    with pytest.raises(ConfigError, match="needs the module 'no_such_package', which is not installed: "
                                          "pip install no-such-package"):
        make_vecenv(EnvConfig(id="no_such_package:Thing-v0"), seed=0)
    with pytest.raises(ConfigError, match="is not a registered gymnasium environment"):
        make_vecenv(EnvConfig(id="toy_envs:toy/NoSuchSpace-v0"), seed=0)


def test_wrappers_are_checked_early_with_a_clear_error():
    with pytest.raises(ConfigError, match="env.wrappers entry 'ImgObsWrapper' must be an import path"):
        TrainingConfig(env=EnvConfig(wrappers=["ImgObsWrapper"])).validate()
    with pytest.raises(ConfigError, match="steps the id's own vector env, which env.wrappers cannot wrap"):
        TrainingConfig(env=EnvConfig(wrappers=["gymnasium.wrappers:ClipReward"], vectorization="native")).validate()
    with pytest.raises(ConfigError, match="module gymnasium.wrappers has no 'NoSuchWrapper'"):
        make_vecenv(EnvConfig(wrappers=["gymnasium.wrappers:NoSuchWrapper"]), seed=0)
    with pytest.raises(ConfigError, match="are gymnasium wrappers; MettaGrid tasks take none"):
        make_vecenv(EnvConfig(id="mettagrid/hearts", wrappers=["gymnasium.wrappers:ClipReward"]), seed=0)
    with pytest.raises(ConfigError, match="cannot wrap CartPole-v1: TypeError"):
        make_vecenv(EnvConfig(wrappers=["gymnasium.wrappers:ClipReward:no_such_arg=1"]), seed=0)


def test_a_wrapper_by_import_path_changes_what_the_policy_sees_and_survives_resume_and_evaluate(tmp_path, capsys):
    run_root = str(tmp_path)
    wrappers = ['gymnasium.wrappers:FilterObservation:filter_keys=["direction", "vector"]']
    train.main(small_config(run_root, "toy_envs:toy/Dict-v0", wrappers=wrappers))
    policy = PolicyStore(os.path.join(run_root, "run")).latest().policy
    seen = space_from_dict(policy.spec["observation_space"])
    assert list(seen.spaces) == ["direction", "vector"]  # the image is gone
    assert not policy.inputs.images

    result = train.main(small_config(run_root, "toy_envs:toy/Dict-v0", steps=512, wrappers=wrappers))
    assert result["epoch"] == 8  # resumed at epoch 4: the saved config's env, wrappers included, matches
    evaluate.main([os.path.join(run_root, "run"), "--episodes", "3"])
    assert "toy_envs:toy/Dict-v0" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["Discrete", "MultiDiscrete", "MultiBinary", "Tuple", "Dict", "Nested"])
def test_each_observation_space_trains_checkpoints_reloads_and_evaluates(tmp_path, name):
    run_root = str(tmp_path)
    result = train.main(small_config(run_root, f"toy_envs:toy/{name}-v0"))
    assert isinstance(result["policy"], MultiInputPolicy)
    record = PolicyStore(os.path.join(run_root, "run")).latest()
    reloaded = load_policy_file(record.uri)
    space = toy_envs.SPACES[name]
    assert spaces_match(space_from_dict(reloaded.spec["observation_space"]), space)
    obs = torch.as_tensor(ObservationLayout(space).flatten(batch_of(space, 5)))
    torch.testing.assert_close(reloaded(obs)[0], result["policy"](obs)[0])
    sim = evaluate.Simulation(name, f"toy_envs:toy/{name}-v0", episodes=3)
    scores = evaluate.PolicyEvaluator([sim]).evaluate(reloaded)[name]
    assert scores.episodes == 3 and scores.mean_length == 8


def batch_of(space: spaces.Space, n: int, seed: int = 0):
    """n samples of `space` stacked as a vector env returns them."""
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    if isinstance(space, spaces.Dict):
        return {key: batch_of(sub, n, seed) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(batch_of(sub, n, seed + i) for i, sub in enumerate(space.spaces))
    return np.stack(samples)


def test_structured_observations_are_stored_as_one_flat_row_by_a_rule_per_space():
    layout = ObservationLayout(spaces.Tuple((spaces.Discrete(5, start=2), spaces.MultiDiscrete([3, 4]),
                                             spaces.MultiBinary(2), spaces.Box(0, 255, (2,), np.uint8))))
    rows = layout.flatten((np.array([2, 6]), np.array([[0, 3], [2, 1]]), np.array([[1, 0], [0, 1]]),
                           np.array([[7, 8], [9, 10]], np.uint8)))
    np.testing.assert_array_equal(rows, [[0, 0, 3, 1, 0, 7, 8], [4, 2, 1, 0, 1, 9, 10]])
    assert rows.dtype == np.uint8  # every entry fits a byte
    floats = ObservationLayout(spaces.Dict({"x": spaces.Box(-1, 1, (2,))}))
    assert floats.flatten({"x": np.zeros((1, 2))}).dtype == np.float32

    policy = make_policy(AgentConfig(), layout.space, spaces.Discrete(2))
    features = policy.encode(torch.as_tensor(rows))
    one_hot = torch.tensor([[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0]],
                           dtype=torch.float32)
    torch.testing.assert_close(features[:, :12], one_hot)  # Discrete(5) then MultiDiscrete([3, 4]), one-hot
    torch.testing.assert_close(features[:, 12:], torch.tensor([[1, 0, 7, 8], [0, 1, 9, 10]], dtype=torch.float32))


def test_a_dict_with_an_image_runs_the_cnn_on_the_image():
    space = toy_envs.SPACES["Dict"]
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(hidden_size=16), space, spaces.Discrete(2))
    (image,) = policy.inputs.images.values()
    assert isinstance(image, ImageEncoder) and image.channels_last and image.dense.out_features == 16
    obs = batch_of(space, 4)
    rows = torch.as_tensor(ObservationLayout(space).flatten(obs))
    other = dict(obs, image=255 - obs["image"])
    changed = torch.as_tensor(ObservationLayout(space).flatten(other))
    features, features_changed = policy.encode(rows), policy.encode(changed)
    assert policy.encoder_size == 16 + 3 + 4  # image features, the vector, direction one-hot
    image_columns = slice(4, 20)  # after direction's 4 one-hot columns, in the Dict's key order
    assert not torch.allclose(features[:, image_columns], features_changed[:, image_columns])
    torch.testing.assert_close(features[:, :4], features_changed[:, :4])


def test_a_dict_observation_trains_with_an_lstm(tmp_path):
    config = small_config(str(tmp_path), "toy_envs:toy/Dict-v0")
    config.agent.lstm_size, config.trainer.bptt_horizon = 8, 8
    result = train.main(config)
    assert result["policy"].recurrent and isinstance(result["policy"].net, MultiInputPolicy)
    reloaded = load_policy_file(PolicyStore(os.path.join(str(tmp_path), "run")).latest().uri)
    sim = evaluate.Simulation("dict", "toy_envs:toy/Dict-v0", episodes=2)
    scores = evaluate.PolicyEvaluator([sim]).evaluate(reloaded)
    assert scores["dict"].mean_length == 8


def test_spaces_are_stored_as_plain_data():
    for space in toy_envs.SPACES.values():
        if "mission" in getattr(space, "spaces", {}):
            continue
        rebuilt = space_from_dict(space_to_dict(space))
        assert rebuilt == space, (space, rebuilt)


def test_an_unencodable_entry_is_named_with_a_wrapper_that_removes_it():
    with pytest.raises(Exception, match="observation entry 'mission' is a Text.*filter_keys=\\[\"image\"\\]"):
        make_vecenv(EnvConfig(id="toy_envs:toy/Text-v0"), seed=0)
    vecenv = make_vecenv(EnvConfig(id="toy_envs:toy/Text-v0",
                                   wrappers=['gymnasium.wrappers:FilterObservation:filter_keys=["image"]']), seed=0)
    assert list(vecenv.single_observation_space.spaces) == ["image"]
    vecenv.close()


def test_a_network_that_does_not_fit_the_space_is_refused():
    with pytest.raises(ConfigError, match="agent.name='mlp' does not fit the observation space"):
        make_policy(AgentConfig(name="mlp"), toy_envs.SPACES["Dict"], spaces.Discrete(2))
    with pytest.raises(ConfigError, match="agent.name='multi_input' does not fit"):
        make_policy(AgentConfig(name="multi_input"), spaces.Box(-1, 1, (3,)), spaces.Discrete(2))


def test_torchrun_trains_a_dict_observation_policy_on_two_processes(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
               "--env.id", "toy_envs:toy/Dict-v0", "--env.num-envs", "2", "--trainer.num-steps", "32",
               "--trainer.total-timesteps", "512", "--log.run-root", str(tmp_path), "--experiment-name", "run",
               "--log.no-tensorboard", "--distributed-timeout", "60"]
    done = subprocess.run(command, cwd=os.path.dirname(here), capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": here})
    assert done.returncode == 0, done.stderr
    policy = PolicyStore(os.path.join(str(tmp_path), "run")).latest().policy
    assert isinstance(policy, MultiInputPolicy) and policy.inputs.images
