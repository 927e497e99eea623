import json
import os
import signal
import subprocess
import sys
import time

import torch

import train
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.config import small_fast_config
from cleanmetta.envs import make_vecenv
from cleanmetta.policy import make_policy
from cleanmetta.trainer import make_optimizer, restore_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_for(run_root, steps, name="run", interval=2):
    config = small_fast_config()
    config.trainer.total_timesteps = steps
    config.experiment_name = name
    config.checkpoint.interval = interval
    config.log.run_root = run_root
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    return config


def test_resume_restores_policy_optimizer_and_counters_exactly(tmp_run_root):
    first = config_for(tmp_run_root, steps=512 * 3)
    result = train.main(first)
    trained = result["policy"]
    run_dir = os.path.join(tmp_run_root, "run")

    # A fresh process would rebuild everything from scratch and restore it from the run directory.
    resumed = config_for(tmp_run_root, steps=512 * 6)
    vecenv = make_vecenv(resumed.env, resumed.seed)
    policy = make_policy(resumed.agent, vecenv.single_observation_space, vecenv.single_action_space)
    optimizer = make_optimizer(policy, resumed.trainer, torch.device("cpu"))
    epoch, agent_steps = restore_checkpoint(TrainingCheckpointer(run_dir), resumed, policy, optimizer, vecenv)
    assert (epoch, agent_steps) == (3, 1536)
    for a, b in zip(trained.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    saved = torch.load(os.path.join(run_dir, "trainer_state.pt"), weights_only=True)["optimizer_state"]
    for key, value in optimizer.state_dict()["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(value[name], saved["state"][key][name])

    # ... and the run continues from there to the new total.
    result = train.main(resumed)
    assert (result["epoch"], result["agent_steps"]) == (6, 3072)
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [2, 3, 4, 6]
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    steps, seconds = [int(row[0]) for row in rows], [float(row[1]) for row in rows]
    assert steps == sorted(steps) and steps[-1] > 1536  # one CSV, appended after the resume
    assert seconds == sorted(seconds)  # training time goes on from the first part's, as the steps do


def test_resume_refuses_a_run_directory_of_another_experiment(tmp_run_root):
    train.main(config_for(tmp_run_root, steps=512))
    other = config_for(tmp_run_root, steps=1024)
    other.agent.hidden_size = 32
    try:
        train.main(other)
    except ValueError as err:
        assert "holds a run with agent=" in str(err) and "--checkpoint.no-resume" in str(err)
    else:
        raise AssertionError("expected a ConfigError")


def launch(run_root, *flags):
    return subprocess.Popen(
        [sys.executable, "train.py", "--log.run-root", run_root, "--experiment-name", "run", "--env.num-envs", "16",
         "--trainer.num-steps", "32", "--log.no-tensorboard", "--log.console-interval", "0", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def saved_epoch(run_dir):
    path = os.path.join(run_dir, "trainer_state.pt")
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def test_sigterm_finishes_the_epoch_saves_and_exits_cleanly(tmp_run_root):
    run_dir = os.path.join(tmp_run_root, "run")
    process = launch(tmp_run_root, "--trainer.total-timesteps", "10000000", "--checkpoint.interval", "100000")
    wait_for(lambda: os.path.exists(os.path.join(run_dir, "episodes.csv")) and os.path.getsize(
        os.path.join(run_dir, "episodes.csv")) > 200)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "SIGTERM: finishing this epoch, saving a checkpoint" in out
    epoch = saved_epoch(run_dir)
    assert epoch > 0
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["agent_steps"] == epoch * 512


def test_kill_9_then_resume_continues_from_the_last_checkpoint(tmp_run_root):
    run_dir = os.path.join(tmp_run_root, "run")
    total = 512 * 400
    process = launch(tmp_run_root, "--trainer.total-timesteps", str(total), "--checkpoint.interval", "3")
    wait_for(lambda: saved_epoch(run_dir) >= 6)
    process.kill()  # SIGKILL: no handler runs, the run stops wherever it is
    process.communicate()
    killed_at = saved_epoch(run_dir)
    assert killed_at >= 6 and killed_at < 400

    resumed = subprocess.run([sys.executable, "train.py", "--resume", run_dir, "--trainer.total-timesteps",
                              str(512 * (killed_at + 6))], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {run_dir} at epoch {killed_at}, {killed_at * 512:,} agent steps" in resumed.stdout
    assert saved_epoch(run_dir) == killed_at + 6
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["agent_steps"] == 512 * (killed_at + 6)
    store = PolicyStore(run_dir)
    before, after = store.get(killed_at).policy, store.get(killed_at + 6).policy
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))  # it kept learning
    with open(os.path.join(run_dir, "episodes.csv")) as f:  # episodes logged after the checkpoint were cut
        steps = [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] > 512 * killed_at
