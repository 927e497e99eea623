"""The gymnasium spaces cleanmetta trains on: the check that refuses others early, how structured
observations are stored, and spaces as plain data.

One agent observes a Box (vectors, images, MettaGrid's token arrays), a Discrete, MultiDiscrete or
MultiBinary, or a Dict / Tuple nest of these (MiniGrid, Blackjack), and acts in a Discrete (from
0), a one-dimensional MultiDiscrete (every start at 0) or a one-dimensional Box. Anything else gets
`UnsupportedEnvError` naming the space (or the Dict entry) and the fix, before a network or buffer is
built for it.

A Box observation is stored and fed to the policy as it is. Any other space is stored as one flat
row per agent (`ObservationLayout`): its entries in order, each flattened, Discrete and
MultiDiscrete entries as their indices from 0 (the policy one-hots them, encoders.py); uint8 when
every entry fits a byte, else float32. The collector and the evaluator flatten what the env returns;
the buffer, the update, torchrun and checkpoints see a plain Box (`stored_space`).

A checkpoint stores the spaces a policy was built for (`space_to_dict`): tensors, numbers and
strings only, so that it loads with `torch.load(..., weights_only=True)`.

This module describes spaces; building environments is envs.py's job.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from gymnasium import spaces


class UnsupportedEnvError(ValueError):
    """The environment's spaces or reset mode are not ones cleanmetta can train on."""


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space, env_id: str = "env") -> None:
    """Raise UnsupportedEnvError unless the per-agent spaces are ones our policies handle."""
    if not isinstance(observation_space, spaces.Box):
        ObservationLayout(observation_space, env_id)  # raises for an entry it cannot store
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


Path = tuple  # keys (Dict) and indices (Tuple) from the top-level space down to one entry
LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def leaves(space: spaces.Space, path: Path = ()) -> list[tuple[Path, spaces.Space]]:
    """The entries of a (nested) Dict / Tuple space in order, each with its path; a leaf space is its own entry."""
    if isinstance(space, spaces.Dict):
        return [leaf for key, sub in space.spaces.items() for leaf in leaves(sub, (*path, key))]
    if isinstance(space, spaces.Tuple):
        return [leaf for i, sub in enumerate(space.spaces) for leaf in leaves(sub, (*path, i))]
    return [(path, space)]


def _top_level_keys(space: spaces.Space) -> list:
    """The keys (Dict) or indices (Tuple) of the top-level entries whose every leaf can be stored."""
    subspaces = space.spaces.items() if isinstance(space, spaces.Dict) else enumerate(space.spaces)
    return [key for key, sub in subspaces if all(isinstance(leaf, LEAVES) for _, leaf in leaves(sub))]


def path_name(path: Path) -> str:
    return "/".join(map(str, path)) or "observation"


class ObservationLayout:
    """How observations of a non-Box space are stored: one flat row [size] per agent.

    `entries` lists each leaf as (path, space, start, stop): its columns in the row. A Box entry's
    values come flattened, a Discrete's index (minus its start) in one column, a MultiDiscrete's
    indices (minus their starts) and a MultiBinary's bits one per column.
    """

    def __init__(self, space: spaces.Space, env_id: str = "env"):
        self.space = space
        self.entries: list[tuple[Path, spaces.Space, int, int]] = []
        fits_byte = True
        start = 0
        for path, leaf in leaves(space):
            if not isinstance(leaf, LEAVES):
                where = f"entry {path_name(path)!r}" if path else "space"
                fix = "drop it with a gymnasium ObservationWrapper (--env.wrappers)"
                if len(path) == 1:  # a top-level entry: gymnasium's FilterObservation keeps the others
                    keep = [key for key in _top_level_keys(space) if key != path[0]]
                    fix = ("keep the others with --env.wrappers 'gymnasium.wrappers:FilterObservation:filter_keys="
                           f"{json.dumps(keep, separators=(',', ':'))}'")
                raise UnsupportedEnvError(f"{env_id}: observation {where} is a {type(leaf).__name__}, which cleanmetta "
                                          f"cannot encode; {fix}")
            size = int(np.prod(leaf.shape)) if leaf.shape else 1
            self.entries.append((path, leaf, start, start + size))
            start += size
            if isinstance(leaf, spaces.Box):
                fits_byte &= leaf.dtype == np.uint8
            elif isinstance(leaf, spaces.Discrete):
                fits_byte &= int(leaf.n) <= 256
            elif isinstance(leaf, spaces.MultiDiscrete):
                fits_byte &= bool(np.all(leaf.nvec <= 256))
        self.size = start
        dtype = np.uint8 if fits_byte else np.float32
        self.flat_space = spaces.Box(0 if fits_byte else -np.inf, 255 if fits_byte else np.inf, (start,), dtype)

    def flatten(self, obs: Any) -> np.ndarray:
        """A batch of observations [B, ...] as a vector env returns them (dicts / tuples of arrays) -> [B, size]."""
        columns = []
        for path, leaf, _, _ in self.entries:
            value = obs
            for key in path:
                value = value[key]
            value = np.asarray(value)
            if isinstance(leaf, (spaces.Discrete, spaces.MultiDiscrete)):
                value = value - leaf.start
            columns.append(value.reshape(len(value), -1))
        return np.concatenate(columns, axis=1).astype(self.flat_space.dtype, copy=False)


def observation_layout(space: spaces.Space) -> ObservationLayout | None:
    """The layout that stores `space`'s observations, or None for a Box (stored as it is)."""
    return None if isinstance(space, spaces.Box) else ObservationLayout(space)


def stored_space(space: spaces.Space) -> spaces.Box:
    """The Box that holds `space`'s observations in the buffer: itself for a Box, else its flat row."""
    return space if isinstance(space, spaces.Box) else ObservationLayout(space).flat_space


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A supported space as plain data (for a checkpoint)."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": torch.as_tensor(space.low), "high": torch.as_tensor(space.high),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": torch.as_tensor(space.nvec), "start": torch.as_tensor(space.start)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": [int(n) for n in np.atleast_1d(space.n)]}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "keys": list(space.spaces), "spaces": [space_to_dict(s) for s in space.spaces.values()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(s) for s in space.spaces]}
    raise UnsupportedEnvError(f"cannot store space {space}: only Box, Discrete, MultiDiscrete, MultiBinary, Dict and "
                              "Tuple are supported")


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    kind = data["type"]
    if kind == "Box":
        return spaces.Box(data["low"].numpy(), data["high"].numpy(), dtype=np.dtype(data["dtype"]))
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        nvec = data["nvec"].numpy() if isinstance(data["nvec"], torch.Tensor) else np.asarray(data["nvec"])
        start = data["start"].numpy() if "start" in data else None
        return spaces.MultiDiscrete(nvec, start=start)
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"] if len(data["n"]) > 1 else data["n"][0])
    if kind == "Dict":
        return spaces.Dict({key: space_from_dict(sub) for key, sub in zip(data["keys"], data["spaces"])})
    if kind == "Tuple":
        return spaces.Tuple([space_from_dict(sub) for sub in data["spaces"]])
    raise UnsupportedEnvError(f"cannot rebuild a space of type {kind!r}")


def spaces_match(a: spaces.Space, b: spaces.Space) -> bool:
    """Whether a network built for space `a` fits space `b` (Boxes: same shape and dtype; bounds may
    differ; Dict / Tuple: the same entries, each matching)."""
    if isinstance(a, spaces.Box) and isinstance(b, spaces.Box):
        return a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, spaces.Dict) and isinstance(b, spaces.Dict):
        return list(a.spaces) == list(b.spaces) and all(spaces_match(a[k], b[k]) for k in a.spaces)
    if isinstance(a, spaces.Tuple) and isinstance(b, spaces.Tuple):
        return len(a.spaces) == len(b.spaces) and all(spaces_match(x, y) for x, y in zip(a.spaces, b.spaces))
    return a == b
