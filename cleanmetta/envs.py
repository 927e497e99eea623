"""Environments: build a seeded vector env for a curriculum and check that cleanmetta can train on it.

The contract with the rest of the package is gymnasium's NEXT_STEP autoreset: the step that ends
an episode returns that episode's final observation, and the following step resets the env
(its action is ignored, its reward is 0) and returns the first observation of the next episode.
Working with this mode means no extra policy forward is needed to bootstrap a truncated episode:
the final observation is the next one fed to the policy. The collector marks these autoreset
steps invalid (valid = 0: the table in experience.py), so no training transition spans two episodes.

On the default run `make_vecenv` builds CartPole-v1 as gymnasium's numpy-vectorised vector env
of 4 copies (its `vector_entry_point`), seeded, with NEXT_STEP autoreset.

`make_vecenv` builds `env.num_envs` copies of the curriculum's task (curriculum.py), using
gymnasium's native vector env where the id has one. An id from another package is registered by
importing that package first: the task's own module (`module:ID`, gymnasium's convention), or for
a few known families (`ALE/`, `MiniGrid-`, `BabyAI-`) their package, when the id is not registered
yet. `env.wrappers` (gymnasium wrappers by import path) wrap every task's env, in order. With more
than one task (or a task family) each sub-env is a `CurriculumEnv`, which plays the curriculum's
choice each episode, reports its task in `info["task"]` and refuses tasks whose spaces differ.
`mettagrid/<task>` ids (the optional MettaGrid extra) build cleanmetta.mettagrid_env's vector env,
which follows the same contract with one batch row per agent; `ALE/<game>` ids (the atari extra)
cleanmetta.atari's, on ale-py's native vector env with the game score in info["episode"].

`CartPoleNoVel-v1` (registered here) is CartPole-v1 without its two velocity observations: only
the cart's position and the pole's angle are seen, so a policy must remember past observations to
balance the pole (the standard test of recurrent RL). It keeps CartPole's native vector env.

This module owns env construction (its checks and one-line errors: env_checks.py; spaces:
spaces.py; tasks: curriculum.py); stepping is the collector's job.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv
from gymnasium.vector import AutoresetMode

from cleanmetta import atari, mettagrid_env
from cleanmetta.config import ConfigError, EnvConfig, import_extra
from cleanmetta.curriculum import Curriculum, SingleTaskCurriculum, Task, make_curriculum
from cleanmetta.env_checks import (Wrapper, check_autoreset, first_reset, load_wrapper, making, register_task,
                                   task_kwargs)
from cleanmetta.spaces import UnsupportedEnvError, check_spaces
from cleanmetta.video import write_mp4
from cleanmetta.workers import WorkerVecEnv


class CurriculumEnv(gym.Env):
    """A single env that plays the curriculum's choice of task each episode; info["task"] names it.

    A task's env is built the first time the task is drawn and kept for its later episodes (the
    `KEEP` most recently played); it must have the spaces of the curriculum's first task, which the
    middle and both ends of every family (`curriculum.probes`) are checked against here. Each episode
    reseeds its task's env from this env's generator, so that a seed gives the same episodes
    whatever the order of the draws."""

    KEEP = 32

    def __init__(self, curriculum: Curriculum, render_mode: str | None = None, wrappers: Sequence[Wrapper] = ()):
        self.curriculum = curriculum
        self.render_mode, self.wrappers = render_mode, wrappers
        self.envs: dict[str, gym.Env] = {}  # task name -> its env, the most recently played last
        first = self._env(curriculum.tasks[0])
        self.observation_space, self.action_space = first.observation_space, first.action_space
        for task in curriculum.probes:
            self._env(task)
        self.task = curriculum.tasks[0]

    def _env(self, task: Task) -> gym.Env:
        env = self.envs.pop(task.name, None)
        if env is None:
            env = make_task_env(task, self.render_mode, self.wrappers)
            if self.envs and (env.observation_space != self.observation_space or env.action_space != self.action_space):
                env.close()
                first = self.curriculum.tasks[0].name
                raise UnsupportedEnvError(
                    f"curriculum task {task.name} has spaces {env.observation_space}, {env.action_space}; "
                    f"every task needs those of {first}: {self.observation_space}, {self.action_space}")
            if len(self.envs) >= self.KEEP:
                self.envs.pop(next(iter(self.envs))).close()
        self.envs[task.name] = env
        return env

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.task = self.curriculum.sample(self.np_random)
        env = self._env(self.task)
        obs, info = env.reset(seed=int(self.np_random.integers(2**31)), options=options)
        return obs, {**info, "task": self.task.name}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.envs[self.task.name].step(action)
        return obs, reward, terminated, truncated, {**info, "task": self.task.name}

    def render(self):
        return self.envs[self.task.name].render()

    def close(self):
        for env in self.envs.values():
            env.close()


POSITIONS = [0, 2]  # CartPole's observation: cart position, cart velocity, pole angle, pole angular velocity


def _positions_only(space: gym.spaces.Box) -> gym.spaces.Box:
    return gym.spaces.Box(space.low[..., POSITIONS], space.high[..., POSITIONS], dtype=space.dtype)


def cartpole_no_velocity(**kwargs) -> gym.Env:
    env = CartPoleEnv(**kwargs)
    return gym.wrappers.TransformObservation(env, lambda obs: obs[POSITIONS], _positions_only(env.observation_space))


def cartpole_no_velocity_vector(num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    env = CartPoleVectorEnv(num_envs, **{"max_episode_steps": 500, **kwargs})
    return gym.wrappers.vector.TransformObservation(env, lambda obs: np.ascontiguousarray(obs[:, POSITIONS]),
                                                    _positions_only(env.observation_space),
                                                    _positions_only(env.single_observation_space))


if "CartPoleNoVel-v1" not in gym.registry:
    gym.register("CartPoleNoVel-v1", entry_point=cartpole_no_velocity, vector_entry_point=cartpole_no_velocity_vector,
                 max_episode_steps=500, reward_threshold=475.0)


def make_env(curriculum: Curriculum, render_mode: str | None = None, wrappers: Sequence[Wrapper] = ()) -> gym.Env:
    """One env of the curriculum: its task's env, or a CurriculumEnv over its several tasks."""
    if not curriculum.single:
        return CurriculumEnv(curriculum, render_mode, wrappers)
    return make_task_env(curriculum.tasks[0], render_mode, wrappers)


def make_task_env(task: Task, render_mode: str | None = None, wrappers: Sequence[Wrapper] = ()) -> gym.Env:
    """gym.make of one task, then the wrappers in order; render_mode only when asked for (not every env
    takes the argument). A kwarg the env does not take is a ConfigError naming the task."""
    register_task(task)
    if render_mode == "rgb_array":
        render_offscreen()
    with making(task):
        env = gym.make(task.env_id, **({"render_mode": render_mode} if render_mode else {}), **task_kwargs(task))
    for wrap in wrappers:
        env = wrap(env)
    return env


def render_offscreen() -> None:
    """On a Linux machine without a display, render frames without one: MuJoCo through EGL
    (MUJOCO_GL=egl; its default tries a window first, then fails), SDL (pygame: classic control,
    Box2D) to no window and no sound device. Settings the user made win. Called before an env that
    renders frames is made: MuJoCo reads MUJOCO_GL when it first renders."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        for key, value in (("MUJOCO_GL", "egl"), ("PYOPENGL_PLATFORM", "egl"), ("SDL_VIDEODRIVER", "dummy"),
                           ("SDL_AUDIODRIVER", "dummy")):
            os.environ.setdefault(key, value)


class RecordVideo(gym.wrappers.RecordVideo):
    """gymnasium's RecordVideo, writing every frame it recorded (video.write_mp4: moviepy alone drops
    the last frame of many episode lengths)."""

    def stop_recording(self):
        if self.recorded_frames:
            write_mp4(self.recorded_frames, os.path.join(self.video_folder, f"{self._video_name}.mp4"),
                      self.frames_per_sec)
        self.recorded_frames, self.recording, self._video_name = [], False, None


def record_first_episode(env: gym.Env, record_dir: str) -> gym.Env:
    """`env` (rendering rgb_array) in RecordVideo: the first episode after its next reset goes to
    record_dir as an mp4 (written at the reset after it, or when the env closes)."""
    import_extra("moviepy", "video", "--evaluation.video")  # RecordVideo's encoder
    return RecordVideo(env, record_dir, episode_trigger=lambda episode: episode == 0, disable_logger=True)


def check_recordable(task: str) -> None:
    """ConfigError unless episodes of `task` (a curriculum task string) can be recorded: MettaGrid
    writes replays; ALE games record what the agent sees (the video extra); a gymnasium env needs the
    video extra and must render rgb_array frames (one is rendered here, so a missing renderer such as
    pygame shows now, not at the first evaluation)."""
    parsed = Task.parse(task)
    if mettagrid_env.is_mettagrid(parsed.env_id):
        return
    import_extra("moviepy", "video", "--evaluation.video")
    if atari.is_atari(parsed.env_id):  # the agent's own frames, written by atari.AtariGames
        return
    env = make_env(SingleTaskCurriculum(task))
    modes = env.metadata.get("render_modes", [])
    env.close()
    if "rgb_array" not in modes:
        raise ConfigError(f"--evaluation.video: {parsed.name} cannot render frames (its render modes: {modes}); "
                          "drop the flag for this env")
    env = make_env(SingleTaskCurriculum(task), "rgb_array")
    try:
        env.reset(seed=0)
        env.render()
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"--evaluation.video: {parsed.name} cannot render ({err}); its renderer is in the video "
                          'extra: pip install -e ".[video]"') from None
    except Exception as err:  # e.g. mujoco.FatalError: no OpenGL library for MUJOCO_GL's backend
        gl = os.environ.get("MUJOCO_GL")
        raise ConfigError(f"--evaluation.video: {parsed.name} cannot render here ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'})"
                          + (f"; MUJOCO_GL={gl}: install its OpenGL library (egl: libegl1; osmesa: libosmesa6) "
                             "or try the other one" if gl else "") + ", or drop the flag") from None
    finally:
        env.close()


def make_vecenv(env_config: EnvConfig, seed: int, curriculum: Curriculum | None = None,
                record_dir: str | None = None) -> gym.vector.VectorEnv:
    """Build `env_config.num_envs` copies of the env (or of the curriculum's tasks), seeded with seed, seed + 1, ...

    `mettagrid/<task>` ids build cleanmetta.mettagrid_env.MettaGridVecEnv: num_envs simulations of
    several agents each, one batch row per agent.

    With `record_dir`, the first episode the first copy plays after its next reset (the caller's) is
    recorded there: as an mp4 by gymnasium's RecordVideo (that copy renders rgb_array frames, the
    others do not render; all are stepped in this process, vectorization 'sync'), or for MettaGrid
    as MettaGrid's own replay file of each finished episode (.json.z, for its MettaScope viewer).
    See `check_recordable`.
    """
    curriculum = curriculum or make_curriculum(env_config)  # env.id, with env.kwargs
    task = curriculum.tasks[0]
    workers = env_config.num_workers if record_dir is None else 0  # a recording steps in this process
    is_mettagrid = [mettagrid_env.is_mettagrid(t.env_id) for t in curriculum.tasks]
    if env_config.wrappers and any(is_mettagrid):
        raise ConfigError(f"env.wrappers={env_config.wrappers} are gymnasium wrappers; MettaGrid tasks take none")
    if any(is_mettagrid):  # the optional MettaGrid extra
        if not all(is_mettagrid):
            raise ConfigError(f"curriculum tasks {[t.name for t in curriculum.tasks]} mix MettaGrid and gymnasium "
                              "environments; their observations differ, so train on one kind at a time")
        if workers:  # the simulations stepped by worker processes
            template = mettagrid_env.MettaGridVecEnv(curriculum, 1, seed)  # the spaces and arrays' shapes
            vecenv = WorkerVecEnv(partial(mettagrid_env.worker_env, curriculum, seed), template, env_config.num_envs,
                                  workers, env_config.worker_timeout, env_config.async_batches)
            template.close()
        else:
            vecenv = mettagrid_env.MettaGridVecEnv(curriculum, env_config.num_envs, seed, replay_dir=record_dir)
        vecenv.reset(seed=seed)
        return vecenv
    for t in curriculum.tasks:
        register_task(t)  # imports what registers the id; refuses an id that is not registered
    if any(atari.is_atari(t.env_id) for t in curriculum.tasks):  # ale-py's native vector env (the atari extra)
        if not curriculum.single or env_config.wrappers or workers:
            raise ConfigError(f"{task.name}: ALE games step in ale-py's own vector env, one game at a time, with "
                              "its own threads: drop curriculum.tasks, env.wrappers and env.num_workers")
        vecenv = atari.make_atari_vecenv(task.env_id, env_config.num_envs, task_kwargs(task, vector=True), record_dir)
        vecenv.reset(seed=seed)
        return vecenv
    spec = gym.spec(task.env_id)
    wrappers = [load_wrapper(wrapper) for wrapper in env_config.wrappers]

    mode = env_config.vectorization if record_dir is None else "sync"  # RecordVideo wraps one sub-env
    if workers:  # gymnasium's own worker processes, in shared memory
        mode = "async"
    has_native = spec.vector_entry_point is not None and curriculum.single and not wrappers
    if mode == "auto":
        mode = "native" if has_native else "sync"
    if mode == "native" and not has_native:
        raise ConfigError(f"env.vectorization='native' but {task.name} has no native vector env (or the curriculum "
                          "has several tasks, or env.wrappers wrap each env); use 'sync' or 'async'")
    next_step = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    with making(task):  # the env's own imports run here (MuJoCo, Box2D, ...)
        if record_dir is not None:
            env_fns = ([lambda: make_env(curriculum, "rgb_array", wrappers)]
                       + [lambda: make_env(curriculum, None, wrappers)] * (env_config.num_envs - 1))
            vecenv = gym.vector.SyncVectorEnv(env_fns, **next_step)
        elif not curriculum.single:
            vector_class = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
            vecenv = vector_class([lambda: CurriculumEnv(curriculum, None, wrappers)] * env_config.num_envs,
                                  **next_step)
        elif mode == "native":
            vecenv = gym.make_vec(task.env_id, env_config.num_envs, vectorization_mode="vector_entry_point",
                                  **task_kwargs(task, vector=True))
        else:
            vecenv = gym.make_vec(task.env_id, env_config.num_envs, vectorization_mode=mode, vector_kwargs=next_step,
                                  wrappers=wrappers, **task_kwargs(task))
    try:
        check_spaces(vecenv.single_observation_space, vecenv.single_action_space, task.name)
        check_autoreset(vecenv)
        first_reset(vecenv, seed, lambda: make_env(curriculum, None, wrappers), task.name, env_config.wrappers)
    except Exception:
        vecenv.close()
        raise
    vecenv.action_space.seed(seed)
    if record_dir is not None:  # after the seeding reset: the episode recorded is the first one its user plays
        vecenv.envs[0] = record_first_episode(vecenv.envs[0], record_dir)
    return vecenv
