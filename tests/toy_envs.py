"""Tiny environments with every observation space cleanmetta encodes, registered on import.

`toy/<Space>-v0` observes a random sample of its space each step (seeded by reset) and is paid 1
when its action equals the step number modulo 2; episodes last 8 steps. Tests name them as
`toy_envs:toy/<Space>-v0`, so the module that registers them is imported by the task itself.
`toy/Failing-v0` raises in step() at a step count set by an environment variable; `DropsAnEntry`
is a wrapper whose observations do not match the space it declares.
"""

import os

import gymnasium as gym
import numpy as np
from gymnasium import spaces

class Mission(spaces.Space):
    """A space gymnasium cannot flatten, as MiniGrid's MissionSpace: a sentence of the task."""

    def sample(self, mask=None, probability=None):
        return "go to the red door"

    def contains(self, x):
        return isinstance(x, str)


IMAGE = spaces.Box(0, 255, (8, 8, 3), np.uint8)
VECTOR = spaces.Box(-1, 1, (3,), np.float32)
SPACES = {
    "Discrete": spaces.Discrete(5, start=2),
    "MultiDiscrete": spaces.MultiDiscrete([3, 4]),
    "MultiBinary": spaces.MultiBinary(6),
    "Tuple": spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11), spaces.Discrete(2))),  # Blackjack's
    "Dict": spaces.Dict({"image": IMAGE, "vector": VECTOR, "direction": spaces.Discrete(4)}),
    "Nested": spaces.Dict({"inner": spaces.Tuple((VECTOR, spaces.MultiBinary(2))), "grid": spaces.Discrete(300)}),
    "Text": spaces.Dict({"image": IMAGE, "mission": spaces.Text(10)}),
    "Mission": spaces.Dict({"image": IMAGE, "mission": Mission()}),
}


class SpaceEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, space: str = "Discrete", length: int = 8):
        self.observation_space = SPACES[space]
        self.action_space = spaces.Discrete(2)
        self.length = length
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        reward = float(int(action) == self.t % 2)
        self.t += 1
        return self.observation_space.sample(), reward, self.t >= self.length, False, {}


for name in SPACES:
    gym.register(f"toy/{name}-v0", entry_point=SpaceEnv, kwargs={"space": name})


class FailingEnv(SpaceEnv):
    """SpaceEnv whose step() raises once this env has taken $CLEANMETTA_TEST_FAIL_AT steps (never
    when the variable is unset): an env that breaks in the middle of a run."""

    def __init__(self, space: str = "MultiBinary", length: int = 8):
        super().__init__(space, length)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        fail_at = os.environ.get("CLEANMETTA_TEST_FAIL_AT")
        if fail_at is not None and self.steps >= int(fail_at):
            raise RuntimeError(f"simulated env failure at step {self.steps}")
        return super().step(action)


gym.register("toy/Failing-v0", entry_point=FailingEnv)


class DropsAnEntry(gym.ObservationWrapper):
    """A wrapper that returns a vector one entry shorter than the observation space it leaves in place
    (a wrapper that forgot to declare its observation_space)."""

    def observation(self, observation):
        return observation[:-1]
