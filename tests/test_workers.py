"""Env worker processes (env.num_workers): shared-memory stepping, equality with in-process stepping,
faults (a worker that raises, dies or hangs), and shutdown without leftover processes."""

import os
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta.checkpoint import trainer_state_paths
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import EnvConfig
from cleanmetta.presets import mettagrid_config
from cleanmetta.curriculum import RandomCurriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.policy import make_policy
from cleanmetta.workers import WorkerError, WorkerVecEnv
from test_mettagrid import needs_mettagrid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CountingEnv:
    """A stand-in for an in-process multi-agent env (2 agents per simulation): every row's observation is
    (simulation number, step count, last action); `fail` makes simulation `fail[0]` raise at step `fail[1]`
    (or, with `fail[2] == "hang"`, sleep instead)."""

    metadata = {}
    agents_per_sim = 2
    single_observation_space = spaces.Box(0, 1e6, (3,), np.float32)
    single_action_space = spaces.Discrete(4)

    def __init__(self, first=0, count=1, arrays=None, fail=None):
        n = count * self.agents_per_sim
        arrays = arrays or {"observations": np.zeros((n, 3), np.float32), "rewards": np.zeros(n, np.float32),
                            "terminals": np.zeros(n, bool), "truncations": np.zeros(n, bool),
                            "actions": np.zeros(n, np.int64)}
        for name, array in arrays.items():
            setattr(self, name, array)
        self.sims = np.repeat(np.arange(first, first + count), self.agents_per_sim)
        self.fail, self.t = fail, 0

    def reset(self, seed=None):
        self.t = 0
        self.observations[:] = np.stack([self.sims, np.zeros_like(self.sims), np.zeros_like(self.sims)], 1)
        return self.observations, {}

    def step(self, actions):
        self.t += 1
        if self.fail and self.fail[0] in self.sims and self.t == self.fail[1]:
            if len(self.fail) > 2:
                time.sleep(60)
            raise ValueError(f"simulation {self.fail[0]} broke")
        self.observations[:] = np.stack([self.sims, np.full_like(self.sims, self.t), actions], 1)
        self.rewards[:] = self.sims * 10 + self.t
        self.terminals[:] = self.t % 3 == 0
        ended = self.t % 3 == 0
        infos = {"episode_stats": {"game/t": [float(s) for s in np.unique(self.sims)]}} if ended else {}
        return self.observations, self.rewards, self.terminals, self.truncations, infos

    def close(self):
        pass


def counting_env(fail, first, count, arrays):
    return CountingEnv(first, count, arrays, fail)


def workers(num_sims=5, num_workers=2, fail=None, timeout=30.0):
    return WorkerVecEnv(partial(counting_env, fail), CountingEnv(), num_sims, num_workers, timeout)


def alive(pids):
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]]


def test_the_learner_reads_what_every_worker_wrote_in_shared_memory():
    env = workers(num_sims=5, num_workers=2)  # simulations 0-1 and 2-4
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs[:, 0], np.repeat(np.arange(5), 2))
    rng = np.random.default_rng(0)
    for t in range(1, 7):
        actions = rng.integers(0, 4, env.num_envs)
        obs, reward, terminated, truncated, infos = env.step(actions)
        np.testing.assert_array_equal(obs, np.stack([np.repeat(np.arange(5), 2), np.full(10, t), actions], 1))
        np.testing.assert_array_equal(reward, np.repeat(np.arange(5), 2) * 10 + t)
        assert terminated.all() == (t % 3 == 0) and not truncated.any()
        assert infos == ({"episode_stats": {"game/t": [0.0, 1.0, 2.0, 3.0, 4.0]}} if t % 3 == 0 else {})
    pids = [p.pid for p in env.processes]
    env.close()
    assert alive(pids) == []


@pytest.mark.parametrize("fault, message", [
    ((3, 2), r"(?s)env worker 1 \(simulations 2-4\) raised:\nTraceback.*ValueError: simulation 3 broke"),
    ((0, 2, "hang"), r"env worker 0 \(simulations 0-1\) did not answer within 1 s"),
])
def test_a_failing_worker_is_a_clear_error_and_every_worker_stops(fault, message):
    env = workers(fail=fault, timeout=1.0)
    env.reset()
    env.step(np.zeros(10, np.int64))
    pids = [p.pid for p in env.processes]
    start = time.monotonic()
    with pytest.raises(WorkerError, match=message):
        env.step(np.zeros(10, np.int64))
    assert time.monotonic() - start < 10
    assert alive(pids) == []


def test_a_killed_worker_is_reported_at_once_and_nothing_is_left_behind():
    env = workers()
    env.reset()
    pids = [p.pid for p in env.processes]
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"env worker 1 \(simulations 2-4\) (died \(exit code -9\)|is gone)"):
        env.step(np.zeros(10, np.int64))
    assert time.monotonic() - start < 5
    assert alive(pids) == []


def test_gymnasium_ids_step_in_asyncvectorenv_with_the_same_episodes():
    import gymnasium as gym
    sync = make_vecenv(EnvConfig(id="Acrobot-v1", num_envs=2, vectorization="sync"), seed=4)
    async_ = make_vecenv(EnvConfig(id="Acrobot-v1", num_envs=2, vectorization="sync", num_workers=2), seed=4)
    assert isinstance(async_, gym.vector.AsyncVectorEnv)
    for _ in range(20):
        actions = np.array([0, 2])
        for a, b in zip(sync.step(actions)[:4], async_.step(actions)[:4]):
            np.testing.assert_array_equal(a, b)
    sync.close()
    async_.close()


def rollout(num_workers, tasks=("mettagrid/hearts:max_steps=12",)):
    torch.manual_seed(0)
    vecenv = make_vecenv(EnvConfig(id=tasks[0], num_envs=3, num_workers=num_workers), seed=5, curriculum=RandomCurriculum(
        list(tasks)))
    policy = make_policy(mettagrid_config().agent, vecenv.single_observation_space, vecenv.single_action_space)
    exp = Experience.for_env(vecenv, 30, "cpu")
    stats, _ = RolloutCollector(vecenv, policy, exp).collect()
    vecenv.close()
    return exp, stats


@needs_mettagrid
@pytest.mark.parametrize("tasks", [("mettagrid/hearts:max_steps=12",),
                                   ("mettagrid/hearts:max_steps=12", "mettagrid/hearts_sparse:max_steps=9")],
                         ids=["one task", "curriculum"])
def test_mettagrid_rollouts_are_identical_with_0_1_and_2_workers(tasks):
    """Episodes of 9-12 steps: autoreset steps in 30, all fields, tasks and episode statistics compared."""
    base, base_stats = rollout(0, tasks)
    assert (base.valid == 0).sum() > 0 and len(base_stats["episodic_return"]) > 0
    assert len(set(base_stats["episodic_task"])) == len(tasks)
    for num_workers in (1, 2):
        exp, stats = rollout(num_workers, tasks)
        for name in ("obs", "actions", "logprobs", "values", "rewards", "terminals", "dones", "valid", "last_value"):
            assert torch.equal(getattr(exp, name), getattr(base, name)), (num_workers, name)
        assert set(stats) == set(base_stats)
        np.testing.assert_array_equal(stats["episodic_return"], base_stats["episodic_return"])
        np.testing.assert_array_equal(stats["episodic_task"], base_stats["episodic_task"])
        assert {k: list(v) for k, v in stats["episode_stats"].items()} == \
            {k: list(v) for k, v in base_stats["episode_stats"].items()}


@needs_mettagrid
def test_training_with_workers_gives_the_in_process_parameters(tmp_run_root):
    params = []
    for num_workers in (0, 2):
        config = mettagrid_config()
        config.env.num_envs, config.env.num_workers = 4, num_workers
        config.trainer.total_timesteps, config.trainer.num_steps = 4096, 64
        config.experiment_name, config.log.run_root = f"w{num_workers}", tmp_run_root
        config.log.tensorboard, config.log.console_interval = False, 1e9
        params.append(train.main(config)["policy"].state_dict())
    for name in params[0]:
        assert torch.equal(params[0][name], params[1][name]), name


@needs_mettagrid
def test_sigterm_stops_training_and_its_workers(tmp_run_root):
    marker = os.path.join(tmp_run_root, "sigterm-run")
    process = subprocess.Popen(
        [sys.executable, "train.py", "--preset", "mettagrid", "--env.num-workers", "2", "--log.run-root", marker,
         "--experiment-name", "r", "--trainer.total-timesteps", "10000000", "--log.console-interval", "0",
         "--log.no-tensorboard"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("run directory: ")
    assert "SPS" in process.stdout.readline()  # the first epoch is done: the workers are running
    workers = [pid for pid in os.listdir("/proc") if pid.isdigit() and pid != str(process.pid)
               and marker in open(f"/proc/{pid}/cmdline").read()]
    assert len(workers) == 2
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert trainer_state_paths(os.path.join(marker, "r"))  # it saved before it left
    assert alive([int(pid) for pid in workers]) == []


class ModePolicy(torch.nn.Module):
    """A policy whose actions do not depend on the order of its calls: the distribution's mode."""

    def __init__(self, policy):
        super().__init__()
        self.policy, self.recurrent = policy, policy.recurrent
        self.lstm_size = getattr(policy, "lstm_size", 0)

    def sample(self, obs, state=None, first=None):
        params, value, *state = self.policy.step(obs, state, first) if self.recurrent else self.policy(obs)
        action = self.policy.head.mode(params)
        return action, self.policy.head.log_prob(params, action), value, *state

    def __getattr__(self, name):  # initial_state, step, get_value: the wrapped policy's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.policy, name)


@needs_mettagrid
@pytest.mark.parametrize("lstm_size", [0, 8], ids=["feedforward", "lstm"])
def test_double_buffering_keeps_every_agents_transitions_in_order(lstm_size):
    """Two halves stepped alternately: with actions that depend on the observation (and state) alone, the
    buffer is the one stepping every agent at once gives (episode ends, autoreset steps, LSTM states)."""
    def collect(async_batches, num_workers):
        torch.manual_seed(0)
        vecenv = make_vecenv(EnvConfig(id="mettagrid/hearts:max_steps=12", num_envs=4, num_workers=num_workers,
                                       async_batches=async_batches), seed=5)
        agent = mettagrid_config().agent
        agent.lstm_size = lstm_size
        policy = make_policy(agent, vecenv.single_observation_space, vecenv.single_action_space)
        exp = Experience.for_env(vecenv, 30, "cpu", lstm_size, 10)
        collector = RolloutCollector(vecenv, ModePolicy(policy), exp)
        stats = [collector.collect()[0] for _ in range(2)]  # the second rollout continues the first
        vecenv.close()
        return exp, stats

    base, base_stats = collect(1, 0)
    assert (base.valid == 0).sum() > 0
    for num_workers in (1, 2):
        exp, stats = collect(2, num_workers)
        names = ["obs", "actions", "logprobs", "values", "rewards", "terminals", "dones", "valid", "last_value"]
        for name in names + (["first", "lstm_h", "lstm_c"] if lstm_size else []):
            assert torch.equal(getattr(exp, name), getattr(base, name)), (num_workers, name)
        for a, b in zip(stats, base_stats):
            np.testing.assert_array_equal(a["episodic_return"], b["episodic_return"])
            np.testing.assert_array_equal(a["episodic_task"], b["episodic_task"])


def test_async_batches_settings_are_checked():
    from cleanmetta.config import ConfigError, TrainingConfig
    for env, message in [({"async_batches": 3}, "env.async_batches=3 must be 1 or 2"),
                         ({"async_batches": 2}, "env.async_batches=2 double-buffers MettaGrid simulations"),
                         ({"id": "mettagrid/hearts", "num_envs": 4, "num_workers": 3, "async_batches": 2},
                          "env.num_workers=3 must be between 0 .* and env.num_envs / env.async_batches = 2")]:
        config = TrainingConfig.from_dict({"env": env})
        with pytest.raises(ConfigError, match=message):
            config.validate()
