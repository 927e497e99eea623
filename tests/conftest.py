import builtins
import importlib

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

torch.set_num_threads(1)

EXTRA_MODULES = {"mettagrid": ["mettagrid"], "atari": ["ale_py"], "wandb": ["wandb"], "plot": ["matplotlib"],
                 "video": ["moviepy", "pygame", "imageio_ffmpeg"], "mujoco": ["mujoco", "imageio"],
                 "schedulefree": ["schedulefree"], "tune": ["optuna"], "dashboard": ["rich"]}
"""The modules each optional extra of pyproject.toml installs (a test keeps the keys equal to its extras)."""
OPTIONAL = {module for modules in EXTRA_MODULES.values() for module in modules}


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="the torch device of the tests that take the `device` fixture (marked `device`), e.g. "
                          "cuda: python -m pytest -m device --device cuda")
    parser.addoption("--list-extra-users", metavar="FILE",
                     help="write to FILE the ids of the tests that import a module of an optional extra (.ci/run "
                          "then runs them where no extra is installed: each must skip or pass)")
    parser.addoption("--only-tests", metavar="FILE", help="run only the tests whose ids FILE lists, one a line")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on --device (cpu unless told); `-m device` selects these")
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {device} but torch.cuda.is_available() is False; use --device cpu")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
    if config.getoption("--only-tests"):
        with open(config.getoption("--only-tests")) as f:
            wanted = set(f.read().splitlines())
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
        items[:] = [item for item in items if item.nodeid in wanted]


EXTRA_USERS: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With --list-extra-users: note the test when it, or a fixture it sets up, imports (or asks import_extra
    for) an extra's module, whether or not an earlier test imported it first."""
    if not item.config.getoption("--list-extra-users"):
        yield
        return
    import_statement, import_module = builtins.__import__, importlib.import_module

    def noting(load):
        def load_and_note(name, *args, **kwargs):
            if name.partition(".")[0] in OPTIONAL:
                EXTRA_USERS.add(item.nodeid)
            return load(name, *args, **kwargs)
        return load_and_note

    builtins.__import__, importlib.import_module = noting(import_statement), noting(import_module)
    try:
        yield
    finally:
        builtins.__import__, importlib.import_module = import_statement, import_module


def pytest_sessionfinish(session):
    path = session.config.getoption("--list-extra-users")
    if path:
        with open(path, "w") as f:
            f.write("".join(f"{nodeid}\n" for nodeid in sorted(EXTRA_USERS)))


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
