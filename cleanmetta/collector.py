"""RolloutCollector: steps the vector env with the policy and fills an Experience buffer.

The default run's rollout is `collect` read top to bottom: for each of `experience.num_steps`
steps, `_act` runs the policy once on every agent's observation (`policy.sample` under
torch.inference_mode) and stores the observation, action and log-probability; the env steps; and
`_observe` stores its answer (reward, termination, episode end, which steps to train on; the
vocabulary is experience.py's) and keeps each episode's return and length. After the last step
come the values: the default network (networks.MLPPolicy) leaves them to one batched critic pass
over the whole rollout, other networks return them from `sample` at each step; then the value of
the observation after the rollout (`last_value`), for bootstrapping.

Autoreset (NEXT_STEP, see envs.py): the step after an env reports done is that env's autoreset step;
its action is ignored and its transition joins two episodes, so it is stored with valid = 0 and
never trained on. `collect` returns the finished episodes' returns and lengths (with their task,
when the env names one in info["task"], and any statistics the env reports in
info["episode_stats"], a dict of name -> values). An env that keeps its own episode score, as
gymnasium's RecordEpisodeStatistics does in info["episode"] (Atari: the unclipped game score over
all lives, while training episodes end at each lost life), has that score reported instead of
the sum of the rewards trained on.

Beside the default path:
- A recurrent policy (policy.recurrent, `_sample_recurrent`) gets each agent's LSTM state from the
  previous step, carried across rollouts, and `first` marking the observations that begin an
  episode (the one after an autoreset step, and every agent's first): the policy zeroes their
  state. The buffer keeps `first` and the state at every segment start for the update's replay.
- Double buffering (`_collect_double_buffered`): with an env that steps its agents in two halves
  in worker processes (workers.WorkerVecEnv with two `batch_rows`, env.async_batches 2), each step
  acts on one half while the workers step the other. Every agent's transitions land at the same
  [t, agent] places as without it; `_act` and `_observe` then work on a slice of the agents.
- torchrun: each process collects its own rollout; `collect` then gathers the finished episodes of
  every process (one collective per rollout) and counts the agent steps of all of them.
- Devices: environment outputs stay in host numpy arrays for the whole rollout and reach the
  device in one copy each at the end; observations go to the device every step through a pinned
  host buffer with a non-blocking copy. The only per-step host sync is reading the actions back.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from cleanmetta import distributed
from cleanmetta.env_checks import check_autoreset
from cleanmetta.experience import Experience
from cleanmetta.normalize import RewardScaler
from cleanmetta.spaces import check_spaces, observation_layout
from cleanmetta.timing import Split


ALL = slice(None)  # every agent: one batch per step, without double buffering


class RolloutCollector:
    def __init__(self, vecenv, policy, experience: Experience, device: torch.device | str = "cpu",
                 reward_scaler: RewardScaler | None = None, split: Split | None = None):
        check_spaces(vecenv.single_observation_space, vecenv.single_action_space)
        check_autoreset(vecenv)
        if experience.num_agents != vecenv.num_envs:
            raise ValueError(f"experience holds {experience.num_agents} agents but the vector env has "
                             f"{vecenv.num_envs}; build it with Experience.for_env(vecenv, ...)")
        self.vecenv, self.policy, self.experience = vecenv, policy, experience
        self.split = split if split is not None else Split()  # where the rollout's time goes (timing.py)
        self.reward_scaler = reward_scaler  # rewards reach the buffer scaled; episode returns stay raw
        self.device = torch.device(device)
        T, B = experience.num_steps, experience.num_agents

        self.action_shape = vecenv.action_space.shape  # what vecenv.step expects: (B,), (B, k) or (B, d)
        space = vecenv.single_action_space
        bounded = isinstance(space, spaces.Box) and np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))
        self.action_bounds = (space.low, space.high) if bounded else None

        # Host-side rollout columns, copied to the experience once per rollout.  [T, B]
        self.rewards = np.zeros((T, B), np.float32)
        self.terminals = np.zeros((T, B), np.float32)
        self.dones = np.zeros((T, B), np.float32)
        self.valid = np.zeros((T, B), np.float32)

        # Episode bookkeeping, carried across rollouts.  [B]
        self.prev_done = np.zeros(B, bool)
        self.episode_return = np.zeros(B, np.float64)
        self.episode_length = np.zeros(B, np.int64)

        # Recurrent policies: the LSTM state [B, lstm_size] x 2, and which observations begin an episode.
        self.recurrent = getattr(policy, "recurrent", False)
        if self.recurrent:
            if experience.lstm_size != policy.lstm_size:
                raise ValueError(f"the policy's LSTM has {policy.lstm_size} units but the experience stores "
                                 f"{experience.lstm_size}; build it with Experience.for_env(..., lstm_size="
                                 "policy.lstm_size)")
            self.state = policy.initial_state(B, self.device)
            self.first = np.ones(B, bool)

        # Double buffering (env.async_batches 2, an env that steps in workers): two halves of the agents.
        self.halves = getattr(vecenv, "batch_rows", [ALL])
        self.values_after_rollout = False

        # A Dict, Tuple, Discrete, ... observation is stored as one flat row per agent (spaces.py); a Box as it is.
        self.obs_layout = observation_layout(vecenv.single_observation_space)
        pin = self.device.type == "cuda"
        self.obs_host = torch.empty(experience.obs.shape[1:], dtype=experience.obs.dtype, pin_memory=pin)
        obs, _ = vecenv.reset()
        self._obs_to_device(obs)

    def _obs_to_device(self, obs: np.ndarray, rows: slice = ALL) -> None:
        """The agents `rows`' next observations into `next_obs`, through the pinned host buffer (on the
        CPU that buffer is `next_obs` itself)."""
        if self.obs_layout is not None:
            obs = self.obs_layout.flatten(obs)
        # Safe to reuse the pinned buffer: the previous copy finished before the actions were read back.
        self.obs_host[rows].copy_(torch.from_numpy(np.asarray(obs)))
        if rows == ALL:
            self.next_obs = self.obs_host.to(self.device, non_blocking=True)
        elif self.next_obs is not self.obs_host:
            self.next_obs[rows] = self.obs_host[rows].to(self.device, non_blocking=True)

    @torch.inference_mode()
    def collect(self) -> tuple[dict[str, np.ndarray], int]:
        """Fill the experience with one rollout; returns (finished-episode stats, agent steps taken), both over
        all processes under torchrun."""
        exp = self.experience
        self.finished = {"returns": [], "lengths": [], "tasks": [], "stats": {}}  # episodes that end in this rollout
        in_policy, in_env, in_copies = self.split.part("policy"), self.split.part("env"), self.split.part("copies")
        if len(self.halves) == 1:
            for t in range(exp.num_steps):
                with in_policy:  # timed parts of the epoch (timing.py): the forward pass, sampling
                    actions = self._act(t, ALL)
                with in_env:
                    result = self.vecenv.step(actions)
                with in_copies:  # the env's answer into the buffers, the observations to the device
                    self._observe(t, ALL, result)
        else:  # env.async_batches 2: act on one half of the agents while the env workers step the other
            self._collect_double_buffered()

        with in_policy:
            if self.values_after_rollout:  # the default network: its critic once over the rollout, one batch
                exp.values.copy_(self.policy.get_value(exp.obs.flatten(0, 1)).view_as(exp.values))
            if self.recurrent:  # the bootstrap value continues each agent's memory
                first = torch.from_numpy(self.first).to(self.device)
                exp.last_value.copy_(self.policy.step(self.next_obs, self.state, first)[1])
            else:
                exp.last_value.copy_(self.policy.get_value(self.next_obs))  # the value after the last step
        rewards = self.rewards
        if self.reward_scaler is not None:  # ppo.normalize_reward
            rewards = self.reward_scaler(self.rewards, self.dones, self.valid)
        with in_copies:
            for column, values in ((exp.rewards, rewards), (exp.terminals, self.terminals), (exp.dones, self.dones),
                                   (exp.valid, self.valid)):
                column.copy_(torch.from_numpy(values), non_blocking=True)
        stats = self._episode_stats()
        if distributed.world_size() > 1:  # torchrun: every process's episodes
            stats = merge_episode_stats(distributed.all_gather_objects(stats))
        return stats, exp.batch_size * distributed.world_size()

    def _collect_double_buffered(self) -> None:
        """The rollout's steps for an env that steps two halves of the agents in worker processes: each
        step sends one half's actions, then takes in the other half's answer to its previous step."""
        in_policy, in_env, in_copies = self.split.part("policy"), self.split.part("env"), self.split.part("copies")
        pending = None  # (step, half) sent and not yet received
        for t in range(self.experience.num_steps):
            for half, rows in enumerate(self.halves):
                with in_policy:
                    actions = self._act(t, rows)
                with in_env:  # sending, then waiting for the workers' answer
                    self.vecenv.send(actions, half)
                    result = self.vecenv.recv(pending[1]) if pending is not None else None
                if pending is not None:
                    with in_copies:
                        self._observe(pending[0], self.halves[pending[1]], result)
                pending = (t, half)
        with in_env:
            result = self.vecenv.recv(pending[1])
        with in_copies:
            self._observe(pending[0], self.halves[pending[1]], result)

    def _episode_stats(self) -> dict:
        """The episodes that finished in this rollout: returns, lengths, tasks and the env's statistics."""
        finished = self.finished
        stats = {
            "episodic_return": np.concatenate(finished["returns"]) if finished["returns"] else np.zeros(0),
            "episodic_length": np.concatenate(finished["lengths"]) if finished["lengths"] else np.zeros(0, np.int64),
        }
        if finished["tasks"]:
            stats["episodic_task"] = np.concatenate(finished["tasks"])
        if finished["stats"]:
            stats["episode_stats"] = {name: np.asarray(values) for name, values in finished["stats"].items()}
        return stats

    def _act(self, t: int, rows: slice) -> np.ndarray:
        """The policy on the agents `rows` at step t: what it saw and did into the buffer; the actions for the env."""
        exp = self.experience
        obs = self.next_obs[rows]
        if self.recurrent:
            action, logprob, value = self._sample_recurrent(t, rows, obs)
        else:
            action, logprob, value = self.policy.sample(obs)
        exp.obs[t, rows] = obs
        exp.actions[t, rows] = action
        exp.logprobs[t, rows] = logprob
        self.values_after_rollout = value is None  # the policy leaves the values to one pass after the rollout
        if value is not None:
            exp.values[t, rows] = value
        env_action = action.cpu().numpy().reshape((-1, *self.action_shape[1:]))
        return env_action if self.action_bounds is None else np.clip(env_action, *self.action_bounds)

    def _sample_recurrent(self, t: int, rows: slice, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """policy.sample for a recurrent policy: the agents' LSTM state in (zeroed where an episode
        begins) and out; at a segment's start the state is stored for the update's replay."""
        exp = self.experience
        first = torch.from_numpy(self.first[rows]).to(self.device, non_blocking=True)
        state = (self.state[0][rows], self.state[1][rows])
        if t % exp.bptt_horizon == 0:
            exp.lstm_h[t // exp.bptt_horizon, rows], exp.lstm_c[t // exp.bptt_horizon, rows] = state
        exp.first[t, rows] = first
        action, logprob, value, (h, c) = self.policy.sample(obs, state, first)
        self.state[0][rows], self.state[1][rows] = h, c
        return action, logprob, value

    def _observe(self, t: int, rows: slice, result: tuple) -> None:
        """The env's answer to step t for the agents `rows`: into the rollout columns and episode bookkeeping."""
        next_obs, reward, terminated, truncated, infos = result
        done = terminated | truncated
        self.rewards[t, rows] = reward
        self.terminals[t, rows] = terminated
        self.dones[t, rows] = done
        prev_done = self.prev_done[rows]
        self.valid[t, rows] = ~prev_done  # the step after a done is an autoreset step: not trained on
        episode_return, episode_length = self.episode_return[rows], self.episode_length[rows]  # views
        episode_return += reward
        episode_length += ~prev_done
        if done.any():
            self._finish(done, episode_return, episode_length, infos)
            episode_return[done] = 0.0
            episode_length[done] = 0
        if self.recurrent:
            self.first[rows] = prev_done  # after this autoreset step comes a new episode's first observation
        self.prev_done[rows] = done
        self._obs_to_device(next_obs, rows)

    def _finish(self, done: np.ndarray, episode_return: np.ndarray, episode_length: np.ndarray, infos: dict) -> None:
        """Record the episodes that ended at this step: their return and length (the env's own score
        when it reports one, as gymnasium's RecordEpisodeStatistics does in info["episode"]: e.g. an
        Atari game's unclipped score over all its lives), task and statistics."""
        if "episode" in infos:
            ended = infos["_episode"]
            returns, lengths = infos["episode"]["r"][ended], infos["episode"]["l"][ended]
        else:
            ended, returns, lengths = done, episode_return[done], episode_length[done]
        self.finished["returns"].append(np.array(returns, np.float64))
        self.finished["lengths"].append(np.array(lengths, np.int64))
        if "task" in infos:  # a curriculum env names the task each episode played
            self.finished["tasks"].append(infos["task"][ended])
        for name, values in infos.get("episode_stats", {}).items():  # the env's own statistics
            self.finished["stats"].setdefault(name, []).extend(values)


def merge_episode_stats(per_rank: list[dict]) -> dict:
    """One collect() stats dict from several (one per process), episodes in rank order."""
    merged = {key: np.concatenate([stats[key] for stats in per_rank]) for key in ("episodic_return", "episodic_length")}
    tasks = [stats["episodic_task"] for stats in per_rank if "episodic_task" in stats]
    if tasks:
        merged["episodic_task"] = np.concatenate(tasks)
    names = {name for stats in per_rank for name in stats.get("episode_stats", {})}
    if names:
        merged["episode_stats"] = {name: np.concatenate([stats["episode_stats"][name] for stats in per_rank
                                                         if name in stats.get("episode_stats", {})])
                                   for name in sorted(names)}
    return merged
