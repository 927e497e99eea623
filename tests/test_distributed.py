"""torchrun: two CPU processes (gloo) train one policy.

The update-level tests start two processes with torch.multiprocessing and compare them with a
single process; the run-level tests launch `python -m torch.distributed.run` (torchrun) on
train.py, as a user would.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from gymnasium import spaces

import train
from cleanmetta import distributed
from cleanmetta.checkpoint import (PolicyStore, TrainingCheckpointer, inconsistencies, rng_state, trainer_state_path,
                                   trainer_state_paths)
from cleanmetta.checkpoint import save_checkpoint as save_checkpoint_file
from cleanmetta.config import AgentConfig, ConfigError, CurriculumConfig, PPOConfig, TrainerConfig, small_fast_config
from cleanmetta.curriculum import make_curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.normalize import RewardScaler
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.resume import restore_checkpoint, save_checkpoint
from cleanmetta.trainer import functional_training_loop, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBS = spaces.Box(-1.0, 1.0, (4,), np.float32)
T, B = 16, 4  # the whole batch: B agents, of which each of the 2 processes holds B // 2


# ---- update-level: two processes started here ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, *args) -> None:
    """Run worker(rank, *args) in 2 processes joined in a gloo process group."""
    mp.start_processes(_join_and_run, args=(free_port(), worker, args), nprocs=2, start_method="spawn")


def _join_and_run(rank, port, worker, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"), timeout_s=60)
    try:
        worker(rank, *args)
    except BaseException as err:  # the other process stops at once, with this message (no barrier to wait in)
        distributed.report_failure(err)
        raise
    distributed.close()


def fixed_experience(agents: slice, normalize_obs: bool = False, lstm_size: int = 0, unequal: bool = False
                     ) -> tuple[torch.nn.Module, Experience]:
    """The same policy everywhere, and the columns `agents` of one fixed rollout [T, B] (with an LSTM:
    segments of T / 2 steps, episode starts, autoreset steps and segment start states). `unequal`:
    the last agent's first 7 steps are autoreset steps, so the second process has fewer valid samples."""
    g = torch.Generator().manual_seed(0)
    full = {"obs": torch.randn(T, B, 4, generator=g), "actions": torch.randint(0, 3, (T, B, 1), generator=g),
            "logprobs": torch.randn(T, B, generator=g) * 0.1 - 1.1, "values": torch.randn(T, B, generator=g),
            "rewards": torch.randn(T, B, generator=g), "dones": (torch.rand(T, B, generator=g) < 0.1).float(),
            "last_value": torch.randn(B, generator=g)}
    if lstm_size:
        after_done = torch.cat([torch.zeros(1, B), full["dones"][:-1]])
        full.update(valid=1.0 - after_done, first=torch.cat([torch.zeros(1, B), after_done[:-1]]),
                    lstm_h=torch.randn(2, B, lstm_size, generator=g), lstm_c=torch.randn(2, B, lstm_size, generator=g))
    full["obs"][:, 2:] += 3.0  # the second process's agents see other observations and advantages
    full["rewards"][:, 2:] *= 5.0
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(name="mlp", normalize_obs=normalize_obs, lstm_size=lstm_size), OBS,
                         spaces.Discrete(3))
    exp = Experience(T, len(range(B)[agents]), OBS, spaces.Discrete(3), lstm_size=lstm_size, bptt_horizon=T // 2)
    exp.valid.fill_(1.0)
    if unequal:
        full["valid"] = torch.ones(T, B)
        full["valid"][:7, B - 1] = 0.0
    for name, value in full.items():
        getattr(exp, name).copy_(value[..., agents, :] if value.dim() == 3 else value[..., agents])
    exp.terminals.copy_(exp.dones)
    return policy, exp


def update(policy, exp, **ppo) -> tuple[dict, torch.optim.Optimizer]:
    optimizer = make_optimizer(policy, TrainerConfig(learning_rate=1e-3), torch.device("cpu"))
    stats = PPOOptimizer(policy, optimizer, "cpu", PPOConfig(**ppo)).update(exp)
    return stats, optimizer


def _update_worker(rank, out_dir, ppo, lstm_size=0, unequal=False):
    policy, exp = fixed_experience(slice(2 * rank, 2 * rank + 2), normalize_obs=True, lstm_size=lstm_size,
                                   unequal=unequal)
    torch.manual_seed(rank)  # different shuffles on each rank: one minibatch per epoch must not care
    stats, optimizer = update(policy, exp, **ppo)
    torch.save({"params": policy.state_dict(), "optimizer": optimizer.state_dict(), "stats": stats},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("lstm_size, vtrace, unequal", [(0, False, False), (0, False, True), (8, False, False),
                                                     (0, True, False)],
                         ids=["feedforward", "unequal-valid-steps", "lstm", "vtrace"])
def test_an_update_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path, lstm_size, vtrace, unequal):
    ppo = dict(num_minibatches=1, update_epochs=3, vtrace=vtrace)  # V-trace: advantages normalised per minibatch
    spawn(_update_worker, str(tmp_path), ppo, lstm_size, unequal)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    policy, exp = fixed_experience(slice(0, B), normalize_obs=True, lstm_size=lstm_size, unequal=unequal)
    if unequal:  # 32 valid samples on the first process, 25 on the second
        assert [int(exp.valid[:, 2 * r:2 * r + 2].sum()) for r in range(2)] == [32, 25]
    if lstm_size:  # segments with episode starts and masked steps inside, LSTM state included
        assert exp.first[1:T // 2].any() and (exp.valid == 0).any() and "lstm.weight_hh_l0" in policy.state_dict()
    stats, optimizer = update(policy, exp, **ppo)
    for name, value in policy.state_dict().items():  # obs normalisation statistics included
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-5, atol=1e-5, msg=name)
    for key in ("policy_loss", "value_loss", "entropy"):
        assert ranks[0]["stats"][key] == pytest.approx(stats[key], rel=1e-4, abs=1e-6)

    # Per-process advantage normalisation would not give the single-process update: the check bites.
    spawn(_update_worker, str(tmp_path), {**ppo, "global_adv_norm": False}, lstm_size)
    local = torch.load(tmp_path / "rank0.pt", weights_only=True)["params"]
    name = "net.actor.weight0" if lstm_size else "actor.weight0"
    assert not torch.allclose(local[name], policy.state_dict()[name], atol=1e-6)


def _sync_worker(rank, out_dir):
    policy, exp = fixed_experience(slice(2 * rank, 2 * rank + 2))
    torch.manual_seed(rank)
    _, optimizer = update(policy, exp, num_minibatches=4, update_epochs=3, target_kl=1e-4)
    scaler = RewardScaler(2, 0.99)
    scaler(np.random.default_rng(rank).normal(size=(T, 2)) * (rank + 1), np.zeros((T, 2)), np.ones((T, 2)))
    # Minibatch statistics for global advantage normalisation: part i pooled over the ranks.
    mean, std = distributed.mean_std([torch.arange(5.0) * (rank + 1), torch.full((3,), float(rank))])
    adam = {f"{i}.{name}": value for i, state in optimizer.state_dict()["state"].items() for name, value in state.items()}
    gathered = distributed.all_gather_objects({"params": policy.state_dict(), "optimizer": adam,
                                               "scaler": scaler.state_dict(), "moments": {"mean": mean, "std": std}})
    if rank == 0:
        torch.save(gathered, os.path.join(out_dir, "gathered.pt"))


def test_after_an_update_every_process_holds_the_same_parameters_and_statistics(tmp_path):
    spawn(_sync_worker, str(tmp_path))
    first, second = torch.load(tmp_path / "gathered.pt", weights_only=True)
    assert len(first["optimizer"]) == 3 * len(first["params"])  # step, exp_avg, exp_avg_sq of each parameter
    for part in ("params", "optimizer", "scaler", "moments"):
        for name in first[part]:
            assert torch.equal(first[part][name], second[part][name]), (part, name)
    assert first["scaler"]["count"] > 2 * T  # both processes' returns, not one's
    pooled = [torch.cat([torch.arange(5.0), torch.arange(5.0) * 2]), torch.tensor([0.0, 0, 0, 1, 1, 1])]
    torch.testing.assert_close(first["moments"]["mean"], torch.stack([x.mean() for x in pooled]))
    torch.testing.assert_close(first["moments"]["std"], torch.stack([x.std() for x in pooled]))


def _train(run_root, name, epochs, curriculum=None):
    """The functional loop on small_fast settings, 8 envs on each of the 2 ranks for `epochs` epochs
    (a curriculum config on top, if given): (policy, curriculum, final state)."""
    config = small_fast_config()
    config.env.num_envs, config.trainer.total_timesteps = 8, epochs * 2 * 8 * 32
    config.log.run_root, config.experiment_name, config.log.tensorboard = run_root, name, False
    config.curriculum = curriculum or config.curriculum
    built = make_curriculum(config.env, config.curriculum, config.seed)
    probe = make_vecenv(config.env, config.seed, built)
    policy = make_policy(config.agent, probe.single_observation_space, probe.single_action_space)
    probe.close()
    state = functional_training_loop(config, config.ppo, policy, built, PolicyStore(os.path.join(run_root, name)))
    return policy, built, state


def _functional_worker(rank, run_root):
    torch.manual_seed(rank)  # different initial weights: the loop must start every rank from rank 0's
    policy, _, state = _train(run_root, "functional", epochs=3)
    gathered = distributed.all_gather_objects({"params": policy.state_dict(), "agent_steps": state.agent_steps})
    if rank == 0:
        torch.save(gathered, os.path.join(run_root, "gathered.pt"))


def test_the_functional_loop_trains_one_policy_on_two_processes(tmp_path):
    spawn(_functional_worker, str(tmp_path))
    first, second = torch.load(tmp_path / "gathered.pt", weights_only=True)
    assert first["agent_steps"] == second["agent_steps"] == 3 * 512
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    assert [r.epoch for r in PolicyStore(str(tmp_path / "functional")).records()] == [3]


def _curriculum_worker(rank, run_root):
    _, curriculum, state = _train(run_root, "curriculum", epochs=4, curriculum=CurriculumConfig(
        tasks=["CartPole-v1:max_episode_steps=8..100"], algorithm="learning_progress", num_active_tasks=6,
        sample_threshold=2, min_presentations=2))
    gathered = distributed.all_gather_objects({"curriculum": curriculum.state_dict(), "steps": state.agent_steps})
    if rank == 0:
        torch.save(gathered, os.path.join(run_root, "gathered.pt"))


def test_every_ranks_episodes_update_one_shared_curriculum(tmp_path):
    spawn(_curriculum_worker, str(tmp_path))
    first, second = torch.load(tmp_path / "gathered.pt", weights_only=True)
    assert first["curriculum"] == second["curriculum"] and first["curriculum"]["updates"] == 4
    with open(tmp_path / "curriculum" / "episodes.csv") as f:
        episodes = len(f.read().splitlines()) - 1  # every rank's episodes, as rank 0 logs them
    # both ranks' episodes, less the few that finished after their task left the pool (one rank's: about half)
    assert episodes > 40 and 0.8 * episodes <= first["curriculum"]["recorded"] <= episodes


def _checkpoint_worker(rank, run_dir):
    config = small_fast_config()
    config.seed = 5
    torch.manual_seed(100 + rank)  # different weights per rank until the checkpoint is restored
    policy, exp = fixed_experience(slice(2 * rank, 2 * rank + 2))
    _, optimizer = update(policy, exp)
    checkpointer = TrainingCheckpointer(run_dir)
    save_checkpoint(checkpointer, config, policy, optimizer, epoch=3, agent_steps=3 * 128)
    expected_rng = rng_state()["torch"]
    torch.manual_seed(999)  # scramble what the restore must bring back
    fresh = make_policy(AgentConfig(name="mlp"), OBS, spaces.Discrete(3))
    fresh_optimizer = make_optimizer(fresh, config.trainer, torch.device("cpu"))

    class Env:  # restore_checkpoint reseeds the envs and checks their spaces
        single_observation_space, single_action_space = OBS, spaces.Discrete(3)

        def reset(self, seed):
            self.seed = seed

    env = Env()
    assert restore_checkpoint(checkpointer, config, fresh, fresh_optimizer, env) == (3, 3 * 128)
    assert torch.equal(torch.get_rng_state(), expected_rng)  # this rank's own stream
    assert env.seed == config.seed + 1_000_003 * rank + 104_729 * 3
    gathered = distributed.all_gather_objects({"params": fresh.state_dict(), "optimizer": fresh_optimizer.state_dict(),
                                               "saved": policy.state_dict()})
    if rank == 0:
        torch.save(gathered, os.path.join(run_dir, "gathered.pt"))


def test_resume_gives_every_process_rank_0s_checkpoint_and_its_own_rng(tmp_path):
    spawn(_checkpoint_worker, str(tmp_path))
    first, second = torch.load(tmp_path / "gathered.pt", weights_only=True)
    for name, saved in first["saved"].items():  # rank 0 wrote its own weights
        assert torch.equal(first["params"][name], saved) and torch.equal(second["params"][name], saved), name
    for key, state in first["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], second["optimizer"]["state"][key]["exp_avg"])
    saved = torch.load(trainer_state_paths(str(tmp_path))[0], weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rank_rng"]) == 2


def test_a_single_process_refuses_to_resume_a_two_process_run(tmp_path):
    spawn(_checkpoint_worker, str(tmp_path))
    config = small_fast_config()
    config.seed = 5
    config.log.run_root, config.experiment_name = os.path.split(str(tmp_path))
    with pytest.raises(ConfigError, match="trained by 2 process\\(es\\), this run has 1: resume it with torchrun "
                                          "--nproc_per_node 2"):
        train.main(config)


def _no_shared_files_worker(rank, run_root, resume):
    run_dir = os.path.join(run_root, "run")
    argv = ["--preset", "small_fast", "--log.run-root", run_root, "--experiment-name", "run", "--log.no-tensorboard",
            "--trainer.total-timesteps", str(1024 * 2), "--checkpoint.interval", "1"]
    if resume:  # rank 1 stands on a machine without the run directory: reading anything in it fails
        argv = ["--resume", run_dir, "--trainer.total-timesteps", str(1024 * 4), "--ppo.custom-losses", "kickstart",
                "--ppo.kickstart-teacher", run_dir]
        if rank == 1:
            import builtins
            real_open = builtins.open

            def local_open(path, *args, **kwargs):
                if str(path).startswith(run_root):
                    raise FileNotFoundError(f"rank 1 cannot see {path}")
                return real_open(path, *args, **kwargs)

            builtins.open = local_open
            real_load = torch.load

            def local_load(f, *args, **kwargs):  # (broadcast objects' tensors come through torch.load too)
                if str(f).startswith(run_root):
                    raise FileNotFoundError(f"rank 1 cannot see {f}")
                return real_load(f, *args, **kwargs)

            torch.load = local_load
    result = train.main(train.parse_config(argv))
    assert result["epoch"] == (4 if resume else 2)


def test_resume_and_a_kickstart_teacher_need_no_run_files_on_the_other_ranks(tmp_path):
    spawn(_no_shared_files_worker, str(tmp_path), False)
    spawn(_no_shared_files_worker, str(tmp_path), True)  # rank 0 reads config, checkpoint and teacher, and sends them
    assert [r.epoch for r in PolicyStore(str(tmp_path / "run")).records()] == [1, 2, 3, 4]


# ---- run-level: torchrun on train.py -------------------------------------------------------------

def torchrun(run_root, *flags, nproc=2, fault=None, launcher=(), name=("--experiment-name", "run")):
    """torchrun on train.py (with `fault`: on tests/fault_train.py, which injects it; `launcher`:
    more torchrun flags)."""
    script = ["tests/fault_train.py"] if fault else ["train.py"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *launcher, *script, "--preset", "small_fast", "--log.run-root", run_root, *name,
               "--log.no-tensorboard", "--log.console-interval", "0", "--distributed-timeout", "60", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"CLEANMETTA_FAULT": fault} if fault else {})}
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_episodes(run_dir):
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        return [line.split(",") for line in f.read().splitlines()]


def test_two_processes_learn_and_only_rank_0_writes_then_resume_continues(tmp_run_root):
    run_dir = os.path.join(tmp_run_root, "run")
    process = torchrun(tmp_run_root, "--trainer.total-timesteps", str(1024 * 24), "--checkpoint.interval", "8")
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    lines = [line for line in out.splitlines() if "SPS" in line]
    assert len(lines) == 24 and lines[-1].startswith("[100.0%] step 24,576/24,576")  # one line an epoch: rank 0's
    rows = read_episodes(run_dir)
    assert rows[0] == ["agent_steps", "seconds", "return", "length"] and rows.count(rows[0]) == 1
    returns = [float(row[2]) for row in rows[1:]]
    assert np.mean(returns[-20:]) > 2 * np.mean(returns[:20])  # it learns: CartPole returns grow
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [8, 16, 24]
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["agent_steps"] == 24 * 1024  # 2 processes x 16 envs x 32 steps an epoch

    process = torchrun(tmp_run_root, "--resume", run_dir, "--trainer.total-timesteps", str(1024 * 28))
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert out.count(f"resumed {run_dir} at epoch 24, 24,576 agent steps") == 1
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [8, 16, 24, 28]
    steps = [int(row[0]) for row in read_episodes(run_dir)[1:]]
    assert steps == sorted(steps) and steps[-1] == 28 * 1024


def worker_pids(torchrun_pid):
    """rank -> pid of the processes torchrun started."""
    pids = {}
    with open(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        pids[int(env[b"RANK"])] = pid
    return pids


def wait_for_training(run_dir, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    path = os.path.join(run_dir, "episodes.csv")
    while not (os.path.exists(path) and os.path.getsize(path) > 200):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def test_sigterm_to_one_process_stops_both_at_one_epoch_with_a_checkpoint(tmp_run_root):
    run_dir = os.path.join(tmp_run_root, "run")
    process = torchrun(tmp_run_root, "--trainer.total-timesteps", "100000000", "--checkpoint.interval", "100000")
    wait_for_training(run_dir, process)
    os.kill(worker_pids(process.pid)[1], signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "SIGTERM: finishing this epoch" in out
    epoch = torch.load(trainer_state_paths(run_dir)[0], weights_only=True)["epoch"]
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["agent_steps"] == epoch * 1024


def test_a_process_killed_makes_the_other_exit_with_an_error(tmp_run_root):
    run_dir = os.path.join(tmp_run_root, "run")
    # A collective notices the dead peer at once, or at the latest after the timeout (20 s here, so
    # that a loaded machine, where the survivor may be the one waiting, still ends well within 60 s).
    process = torchrun(tmp_run_root, "--trainer.total-timesteps", "100000000", "--distributed-timeout", "20")
    wait_for_training(run_dir, process)
    start = time.monotonic()
    os.kill(worker_pids(process.pid)[1], signal.SIGKILL)
    out, err = process.communicate(timeout=90)
    assert process.returncode != 0
    assert time.monotonic() - start < 60
    assert "error: rank 0 of 2: " in err and "another rank has probably died" in err, err


@pytest.mark.parametrize("fault, message", [
    ("nan:1:3", "rank 1: FloatingPointError: PPO loss is not finite"),
    ("eval:0", "rank 0: RuntimeError: injected evaluation failure"),
    ("foreign", "not a trainer state this version of cleanmetta can resume"),
    # rank 0 is in a two-minute evaluation when rank 1 fails: the watcher thread ends it
    ("log:1:2,sleep-eval:0", "rank 1: RuntimeError: injected logging failure"),
])
def test_a_failure_on_one_rank_ends_every_rank_within_seconds_with_its_message(tmp_run_root, fault, message):
    run_dir = os.path.join(tmp_run_root, "run")
    flags = ["--trainer.total-timesteps", "100000000", "--evaluation.interval", "2"]
    if fault == "foreign":  # a trainer state in the cleanmetta format, but not one cleanmetta wrote
        save_checkpoint_file({"epoch": 3, "agent_step": 10}, trainer_state_path(run_dir, 3), "trainer_state")
    start = time.monotonic()
    process = torchrun(tmp_run_root, *flags, fault=None if fault == "foreign" else fault)
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - start < 30 + 10  # 10 s to start two processes and their envs
    if fault == "foreign":
        assert err.count(message) == 2, err  # rank 0 read it; both ranks stop with its error
    else:
        assert "error: rank " in err and f"stopped because {message}" in err, err  # the other rank says why
        assert message.split(": ")[-1] in err.replace(f"stopped because {message}", ""), err  # and the failing one
    assert inconsistencies(run_dir) == [] or fault == "foreign"


def test_torchrun_max_restarts_continues_the_same_run_from_its_last_checkpoint(tmp_run_root):
    # No --experiment-name: the run directory's name comes from torchrun's run id, the same after a restart.
    process = torchrun(tmp_run_root, "--trainer.total-timesteps", str(1024 * 10), "--checkpoint.interval", "2",
                       fault="kill:1:5", launcher=["--max-restarts", "1"], name=())
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    (run_name,) = os.listdir(tmp_run_root)  # one directory, no run.old-N
    run_dir = os.path.join(tmp_run_root, run_name)
    assert f"resumed {run_dir} at epoch 4, 4,096 agent steps" in out  # rank 1 died in epoch 5's update
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [2, 4, 6, 8, 10]
    assert inconsistencies(run_dir) == []
    steps = [int(row[0]) for row in read_episodes(run_dir)[1:]]
    assert steps == sorted(steps) and steps[-1] == 10 * 1024
