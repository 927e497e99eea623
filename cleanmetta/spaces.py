"""The gymnasium spaces cleanmetta trains on: the check that refuses others early, and spaces as
plain data.

One agent observes a Box (vectors, images, MettaGrid's token arrays) and acts in a Discrete (from
0), a one-dimensional MultiDiscrete (every start at 0) or a one-dimensional Box. Anything else gets
`UnsupportedEnvError` naming the space and the fix, before a network or buffer is built for it.

A checkpoint stores the spaces a policy was built for (`space_to_dict`): tensors, numbers and
strings only, so that it loads with `torch.load(..., weights_only=True)`.

This module describes spaces; building environments is envs.py's job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces


class UnsupportedEnvError(ValueError):
    """The environment's spaces or reset mode are not ones cleanmetta can train on."""


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space, env_id: str = "env") -> None:
    """Raise UnsupportedEnvError unless the per-agent spaces are ones our policies handle."""
    if not isinstance(observation_space, spaces.Box):
        raise UnsupportedEnvError(
            f"{env_id}: observation space {observation_space} is not supported; cleanmetta needs a "
            "Box observation space (wrap dict/tuple observations with gymnasium.wrappers.FlattenObservation)"
        )
    if isinstance(action_space, spaces.Discrete):
        if action_space.start != 0:
            raise UnsupportedEnvError(
                f"{env_id}: Discrete action space with start={action_space.start} is not supported; "
                "actions must start at 0 (shift them with a gymnasium ActionWrapper)"
            )
    elif isinstance(action_space, spaces.MultiDiscrete):
        if action_space.nvec.ndim != 1 or np.any(action_space.start != 0):
            raise UnsupportedEnvError(
                f"{env_id}: MultiDiscrete action space {action_space} is not supported; it must be "
                "one-dimensional with every start at 0"
            )
    elif isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1:
            raise UnsupportedEnvError(
                f"{env_id}: Box action space of shape {action_space.shape} is not supported; "
                "flatten it to one dimension"
            )
    else:
        raise UnsupportedEnvError(
            f"{env_id}: action space {action_space} is not supported; use Discrete, MultiDiscrete or Box"
        )


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A supported space as plain data (for a checkpoint)."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": torch.as_tensor(space.low), "high": torch.as_tensor(space.high),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec]}
    raise UnsupportedEnvError(f"cannot store space {space}: only Box, Discrete and MultiDiscrete are supported")


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    if data["type"] == "Box":
        return spaces.Box(data["low"].numpy(), data["high"].numpy(), dtype=np.dtype(data["dtype"]))
    if data["type"] == "Discrete":
        return spaces.Discrete(data["n"])
    return spaces.MultiDiscrete(data["nvec"])


def spaces_match(a: spaces.Space, b: spaces.Space) -> bool:
    """Whether a network built for space `a` fits space `b` (Boxes: same shape and dtype; bounds may differ)."""
    if isinstance(a, spaces.Box) and isinstance(b, spaces.Box):
        return a.shape == b.shape and a.dtype == b.dtype
    return a == b
