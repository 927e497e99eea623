"""Tiny environments with every observation space cleanmetta encodes, registered on import.

`toy/<Space>-v0` observes a random sample of its space each step (seeded by reset) and is paid 1
when its action equals the step number modulo 2; episodes last 8 steps. Tests name them as
`toy_envs:toy/<Space>-v0`, so the module that registers them is imported by the task itself.
"""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

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
