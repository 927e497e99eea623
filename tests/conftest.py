import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="the torch device of the tests that take the `device` fixture (marked `device`), e.g. "
                          "cuda: python -m pytest -m device --device cuda")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on --device (cpu unless told); `-m device` selects these")
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {device} but torch.cuda.is_available() is False; use --device cpu")


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture
def device(request) -> torch.device:
    """The device under test (--device): these tests hold on the CPU and on a GPU alike."""
    return torch.device(request.config.getoption("--device"))


class EpisodeCounterEnv(gym.Env):
    """Observation [episode index, step in episode]; reward 1 per step.

    Terminates after `terminate_at` steps when that is set; time limits come from max_episode_steps.
    """

    metadata = {"render_modes": []}

    def __init__(self, terminate_at: int | None = None):
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.terminate_at = terminate_at
        self.episode = -1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([self.episode, self.t], np.float32), 1.0, terminated, False, {}


gym.register("cleanmetta-test/Counter-v0", entry_point=EpisodeCounterEnv, max_episode_steps=7)
gym.register("cleanmetta-test/CounterTerminating-v0", entry_point=EpisodeCounterEnv, max_episode_steps=7,
             kwargs={"terminate_at": 5})


@pytest.fixture
def tmp_run_root(tmp_path):
    return str(tmp_path / "runs")
