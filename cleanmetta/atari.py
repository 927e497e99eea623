"""Atari the way CleanRL's ppo_atari.py trains it, on ale-py's native vector env (the `atari` extra).

`ALE/<Game>-v5` ids (`pip install -e ".[atari]"`) step in ale-py's C++ `AtariVectorEnv`: threads,
NEXT_STEP autoreset, observations uint8 [4, 84, 84] (grayscale, 4 stacked frames, frame skip 4
with max-pooling), up to 30 no-op starts and FIRE at reset. Its arguments are the task's kwargs
(`repeat_action_probability`, `frameskip`, `noop_max`, ...; the v5 ids default to sticky actions,
0.25, which the `atari` preset turns off as CleanRL does). Two of them are applied here instead, so
that the game score stays known whatever the trainer optimises:

- `reward_clipping` (default True, as in ale-py): the trainer receives the sign of each reward.
- `episodic_life` (default False): a lost life ends the *training* episode (terminated), as
  DeepMind's EpisodicLifeEnv does, and the game goes on: the next step is that env's autoreset step
  under the NEXT_STEP contract (its action is replaced by FIRE where the game has it, else NOOP, as
  FireResetEnv does after every reset; its reward is not trained on). ale-py's own option restarts
  the whole game at every lost life instead, so it is never passed through.

The score people report for Atari is the game's: unclipped rewards summed over the whole game, all
lives, until the game ends (game over or the frame limit). Every step's info carries it as
gymnasium's RecordEpisodeStatistics does, `info["episode"] = {"r": score, "l": agent steps}` with
the mask `info["_episode"]` of the envs whose game ended at that step; the collector and the
evaluator report these instead of their own sums of training rewards.

Recording (evaluation.video): the first env's game as an mp4 in colour, as CleanRL's videos show
it. AtariVectorEnv renders nothing itself, so a second one of a single game, seeded and stepped as
the first env (its game is the same, frame for frame), returns the console's 210x160 colour screen.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from cleanmetta.config import ConfigError, import_extra, read_bool
from cleanmetta.video import write_mp4

PREFIX = "ALE/"


def is_atari(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


class AtariGames(gym.vector.VectorWrapper):
    """ale-py's AtariVectorEnv with life loss as a training episode end, reward clipping, and the game
    score in info["episode"] (see the module docstring)."""

    def __init__(self, env: gym.vector.VectorEnv, reward_clipping: bool = True, episodic_life: bool = False,
                 fire_reset: bool = True, record_dir: str | None = None, screen: gym.vector.VectorEnv | None = None):
        """record_dir: record the first env's first game there, from `screen`, the colour twin of that game."""
        super().__init__(env)
        self.reward_clipping, self.episodic_life = reward_clipping, episodic_life
        n = env.num_envs
        self.score = np.zeros(n, np.float64)    # unclipped reward of the game so far, all lives
        self.length = np.zeros(n, np.int64)     # agent steps of the game so far
        self.lives = np.zeros(n, np.int64)
        self.life_lost = np.zeros(n, bool)      # the previous step lost a life: this step continues the game
        self.game_over = np.zeros(n, bool)      # the previous step ended the game: this step is ale-py's reset
        actions = [action.name for action in env.unwrapped.ale.get_action_set()]  # e.g. NOOP, FIRE, RIGHT, LEFT
        self.restart_action = actions.index("FIRE") if fire_reset and "FIRE" in actions else actions.index("NOOP")
        self.record_dir, self.screen, self.frames = record_dir, screen, None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.score[:], self.length[:], self.lives[:] = 0, 0, info["lives"]
        self.life_lost[:], self.game_over[:] = False, False
        if self.record_dir is not None:
            self.frames = [self.screen.reset(seed=seed, options=options)[0][0, -1]]
        return obs, info

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions).astype(np.int64).reshape(-1)
        if self.life_lost.any():  # the game goes on after a lost life: this step is the training episode's reset
            actions = np.where(self.life_lost, self.restart_action, actions)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        reward = np.asarray(reward, np.float64)
        playing = ~self.game_over  # ale-py's own reset step after a game over starts a new game
        self.score = np.where(playing, self.score + reward, 0.0)
        self.length = np.where(playing, self.length + 1, 0)
        game_ended = (terminated | truncated) & playing
        info["episode"] = {"r": np.where(game_ended, self.score, 0.0), "l": np.where(game_ended, self.length, 0)}
        info["_episode"] = game_ended
        lives = np.asarray(info["lives"], np.int64)
        lost = self.episodic_life & (lives < self.lives) & ~game_ended & playing
        train_reward = np.sign(reward) if self.reward_clipping else reward
        train_reward = np.where(self.life_lost, 0.0, train_reward)  # an autoreset step's reward is not trained on
        self.life_lost, self.game_over, self.lives = lost, terminated | truncated, lives
        self._record(actions, game_ended)
        return obs, train_reward.astype(np.float32), terminated | lost, truncated, info

    def _record(self, actions: np.ndarray, game_ended: np.ndarray) -> None:
        """The first env's first game, frame by frame from its colour twin, written as an mp4 when it ends."""
        if self.frames is None:
            return
        self.frames.append(self.screen.step(actions[:1])[0][0, -1])
        if game_ended[0]:
            self._write_video()

    def _write_video(self) -> None:
        # 15 agent steps a second: the Atari's 60 frames, 4 to a step
        write_mp4(self.frames, os.path.join(self.record_dir, "game-0.mp4"), fps=15)
        self.frames = None

    def close(self, **kwargs):
        if self.frames is not None and len(self.frames) > 1:  # a game still going when the env closes
            self._write_video()
        if self.screen is not None:
            self.screen.close()
        return super().close(**kwargs)


def make_atari_vecenv(env_id: str, num_envs: int, kwargs: dict[str, Any],
                      record_dir: str | None = None) -> AtariGames:
    """`num_envs` games of `env_id` (an ALE/ id) in ale-py's AtariVectorEnv, wrapped in AtariGames."""
    import_extra("ale_py", "atari", f"env.id={env_id!r}")
    kwargs = dict(kwargs)
    # 'false', 'no', 'False' mean False (env_checks.task_kwargs reads AtariVectorEnv's other bools the same way)
    reward_clipping = read_bool(kwargs.pop("reward_clipping", True), f"env.id={env_id!r}: reward_clipping")
    episodic_life = read_bool(kwargs.pop("episodic_life", False), f"env.id={env_id!r}: episodic_life")
    fire_reset = read_bool(kwargs.get("use_fire_reset", True), f"env.id={env_id!r}: use_fire_reset")
    for key in ("autoreset_mode", "life_loss_info", "batch_size"):
        if key in kwargs:
            raise ConfigError(f"env.id={env_id!r}: {key} is cleanmetta's to set (NEXT_STEP autoreset, every env each "
                              "step); drop it from the task's kwargs")
    try:
        env = gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point", reward_clipping=False,
                           episodic_life=False, autoreset_mode=AutoresetMode.NEXT_STEP, **kwargs)
        screen = None
        if record_dir is not None:  # the first game again, in colour, the console's whole screen
            screen = gym.make_vec(env_id, 1, vectorization_mode="vector_entry_point", reward_clipping=False,
                                  episodic_life=False, autoreset_mode=AutoresetMode.NEXT_STEP,
                                  **{**kwargs, "grayscale": False, "img_height": 210, "img_width": 160, "stack_num": 1})
    except TypeError as err:
        raise ConfigError(f"env.id={env_id!r}: {err} (AtariVectorEnv's arguments: repeat_action_probability, "
                          "frameskip, noop_max, stack_num, img_height, img_width, grayscale, use_fire_reset, "
                          "...)") from None
    return AtariGames(env, reward_clipping, episodic_life, fire_reset, record_dir, screen)
