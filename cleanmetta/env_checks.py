"""What building an env checks, and the one-line errors for what it finds (envs.make_vecenv's helpers).

- `register_task`: the module that registers a task's id is imported (`module:ID`, or the package
  of a known family such as `ALE/`), and an id that is not registered is refused, naming it;
- `making(task)`: around the code that makes a task's envs, what it raises for a cause the user can
  fix (a missing package or module, a kwarg the env does not take) becomes one line naming the fix;
- `task_kwargs`: a task's kwargs as the env's constructor declares them, a bool written `False`,
  `no` or `off` reaching it as False;
- `load_wrapper`: an env.wrappers entry by import path, and the error when it cannot wrap the env;
- `check_autoreset`, `check_observations`, `first_reset`: the vector env resets the way the
  collector expects (NEXT_STEP), and its first observations have the shape its space declares, or
  the env or wrapper that breaks that is named.

Building the envs is envs.py's job; this module only looks at what is built.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AutoresetMode

from cleanmetta.config import ConfigError, read_kwargs_for
from cleanmetta.curriculum import Task
from cleanmetta.imports import load_object
from cleanmetta.spaces import UnsupportedEnvError


def check_autoreset(vecenv: gym.vector.VectorEnv) -> None:
    """Raise UnsupportedEnvError unless the vector env resets sub-envs in NEXT_STEP mode."""
    mode = vecenv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise UnsupportedEnvError(
            f"vector env autoreset_mode={mode} is not supported; create it with "
            "make_vecenv() or pass vector_kwargs={'autoreset_mode': AutoresetMode.NEXT_STEP}"
        )


def check_observations(obs, space: gym.spaces.Space, env_id: str, wrappers: Sequence[str] = ()) -> None:
    """UnsupportedEnvError unless the first observations (a batch of a vector env's reset) have the
    shape (and for a Box the dtype) that the observation space declares: the buffer and the network
    are built from the space, so an env or wrapper that returns something else is named now, not by
    a shape error deep in the first update."""
    if space.shape is None:
        return  # a Dict or Tuple: flattened entry by entry (spaces.ObservationLayout)
    obs = np.asarray(obs)
    if obs.shape[1:] == space.shape and (not isinstance(space, gym.spaces.Box)
                                         or np.can_cast(obs.dtype, space.dtype, "same_kind")):
        return
    source = f"the last of env.wrappers {list(wrappers)}" if wrappers else env_id
    raise UnsupportedEnvError(
        f"{env_id}: the first observation has shape {obs.shape[1:]} and dtype {obs.dtype}, but the observation space "
        f"declares {space.shape} {space.dtype}: {source} must declare the observation_space of what it returns")


def first_reset(vecenv: gym.vector.VectorEnv, seed: int, make_one: Callable[[], gym.Env], env_id: str,
                wrappers: Sequence[str] = ()) -> None:
    """The vector env's seeding reset, its observations checked against the space (check_observations).
    A sync or async vector env fails inside that reset when an env's observation does not fit the space
    (gymnasium copies it into an array of the space's shape); one env made apart (`make_one`) then
    tells whether that was the cause, so that the env or wrapper is named instead."""
    try:
        obs, _ = vecenv.reset(seed=seed)
    except Exception:
        env = make_one()
        try:
            obs, _ = env.reset(seed=seed)
        finally:
            env.close()
        check_observations(np.asarray(obs)[None], vecenv.single_observation_space, env_id, wrappers)
        raise  # the observation fits: the failure has another cause
    check_observations(obs, vecenv.single_observation_space, env_id, wrappers)


# Families of ids whose package registers them on import: (package, how to install it).
KNOWN_PACKAGES = {"ALE/": ("ale_py", 'pip install -e ".[atari]"'), "MiniGrid-": ("minigrid", "pip install minigrid"),
                  "BabyAI-": ("minigrid", "pip install minigrid")}


def register_task(task: Task) -> None:
    """Import the module that registers task.env_id: the task's own (`module:ID`), else a known family's
    package when the id is not registered yet. ConfigError with the install command when it is missing."""
    module, install = task.module, None
    if module is None and task.env_id not in gym.registry:
        module, install = next((package for prefix, package in KNOWN_PACKAGES.items()
                                if task.env_id.startswith(prefix)), (None, None))
    if module is not None:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise missing_module(task, err, install) from None
    try:
        gym.spec(task.env_id)
    except gym.error.Error as err:
        raise ConfigError(f"env.id={task.name!r} is not a registered gymnasium environment: {err}") from None


def missing_module(task: Task, err: ModuleNotFoundError, install: str | None = None) -> ConfigError:
    """The one-line error for a module that a task's env needs and that is not installed."""
    missing = err.name or str(err)
    install = install or f"pip install {missing.split('.')[0].replace('_', '-')} (or the package that provides it)"
    return ConfigError(f"env.id={task.name!r} needs the module {missing!r}, which is not installed: {install}")


def task_kwargs(task: Task, vector: bool = False) -> dict:
    """task.kwargs as the env's constructor (`vector`: its native vector env's) declares them: a value
    for a bool parameter read as its user wrote it ('False', 'no', 'off': False; config.read_bool)."""
    spec = gym.spec(task.env_id)
    entry_point = spec.vector_entry_point if vector else spec.entry_point
    if entry_point is None or not task.kwargs:
        return dict(task.kwargs)
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    kwargs = read_kwargs_for(gym.make_vec if vector else gym.make, task.kwargs, f"task {task.name!r}")  # their own
    return read_kwargs_for(creator, kwargs, f"task {task.name!r}")


@contextmanager
def making(task: Task) -> Iterator[None]:
    """`with making(task):` around the code that makes `task`'s envs: what it raises for a cause the user
    can fix becomes one line naming the task and the fix: a package gymnasium says is missing, a
    module the env imports that is not installed (imageio for MuJoCo, ...), a kwarg the env does not take."""
    try:
        yield
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"env.id={task.name!r} needs a package that is not installed: {err}") from None
    except ModuleNotFoundError as err:
        raise missing_module(task, err) from None
    except TypeError as err:
        if not task.kwargs or "keyword argument" not in str(err):
            raise
        cause = str(err).split(" was raised from")[0]  # gymnasium appends the kwargs again
        raise ConfigError(f"task {task.name!r}: {cause}; drop that setting or give one the env takes") from None


Wrapper = Callable[[gym.Env], gym.Env]


def load_wrapper(spec: str) -> Wrapper:
    """An env.wrappers entry 'module:Class[:key=value,...]' as a function env -> wrapped env."""
    wrapper, kwargs = load_object(spec, "env.wrappers entry")

    def wrap(env: gym.Env) -> gym.Env:
        try:
            return wrapper(env, **kwargs)
        except (TypeError, ValueError, KeyError, AssertionError, NotImplementedError) as err:
            raise ConfigError(f"env.wrappers entry {spec!r} cannot wrap {env.spec.id if env.spec else env}: "
                              f"{type(err).__name__}: {err}") from None

    return wrap
