import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import train
from cleanmetta import log
from cleanmetta.checkpoint import (CheckpointError, PolicyStore, TrainingCheckpointer, inconsistencies,
                                   trainer_state_paths)
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import small_fast_config
from cleanmetta.envs import make_vecenv
from cleanmetta.policy import make_policy
from cleanmetta.resume import restore_checkpoint
from cleanmetta.trainer import StopOnSignal, make_optimizer

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
    saved = torch.load(trainer_state_paths(run_dir)[0], weights_only=True)["optimizer_state"]
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
    """The epoch of the checkpoint in force: the latest policy record (the commit)."""
    try:
        return PolicyStore(run_dir).latest().epoch
    except CheckpointError:  # none yet (or the index caught mid-rename)
        return 0


def stop_a_run_with(run_root, signum) -> tuple[str, int]:
    """Send `signum` to a long train.py run once it has logged episodes; its output and saved epoch."""
    run_dir = os.path.join(run_root, "run")
    process = launch(run_root, "--trainer.total-timesteps", "10000000", "--checkpoint.interval", "100000")
    wait_for(lambda: os.path.exists(os.path.join(run_dir, "episodes.csv")) and os.path.getsize(
        os.path.join(run_dir, "episodes.csv")) > 200)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out, saved_epoch(run_dir)


def test_sigterm_finishes_the_epoch_saves_and_exits_cleanly(tmp_run_root):
    out, epoch = stop_a_run_with(tmp_run_root, signal.SIGTERM)
    assert "SIGTERM: finishing this epoch, saving a checkpoint" in out
    assert epoch > 0
    with open(os.path.join(tmp_run_root, "run", "summary.json")) as f:
        assert json.load(f)["agent_steps"] == epoch * 512


def test_ctrl_c_finishes_the_epoch_saves_exits_cleanly_and_resume_continues(tmp_run_root, capsys):
    run_dir = os.path.join(tmp_run_root, "run")
    out, epoch = stop_a_run_with(tmp_run_root, signal.SIGINT)  # what Ctrl-C sends
    assert "SIGINT: finishing this epoch, saving a checkpoint, then exiting" in out
    assert epoch > 0 and inconsistencies(run_dir) == []
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["agent_steps"] == epoch * 512

    train.main(train.parse_config(["--resume", run_dir, "--trainer.total-timesteps", str(512 * (epoch + 2))]))
    assert f"resumed {run_dir} at epoch {epoch}, {epoch * 512:,} agent steps" in capsys.readouterr().out
    assert saved_epoch(run_dir) == epoch + 2


@pytest.fixture
def sigint_before_the_loop():
    """SIGINT's handler before the training loop: it records what it receives (pytest's comes back after)."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGINT, previous)


def test_a_second_ctrl_c_interrupts_at_once(sigint_before_the_loop, capsys):
    with StopOnSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested  # the first: the loop stops after this epoch
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second: now, without waiting for the epoch
    assert capsys.readouterr().out.count("SIGINT: finishing this epoch") == 1
    assert sigint_before_the_loop == []


def test_after_the_loop_ctrl_c_goes_to_the_handler_from_before(sigint_before_the_loop):
    with StopOnSignal():
        pass
    signal.raise_signal(signal.SIGINT)
    assert sigint_before_the_loop == [signal.SIGINT]


def test_kill_9_then_resume_continues_from_the_last_checkpoint(tmp_run_root):
    run_dir = os.path.join(tmp_run_root, "run")
    total = 512 * 400
    process = launch(tmp_run_root, "--trainer.total-timesteps", str(total), "--checkpoint.interval", "3")
    wait_for(lambda: saved_epoch(run_dir) >= 6)
    process.kill()  # SIGKILL: no handler runs, the run stops wherever it is
    process.communicate()
    killed_at = saved_epoch(run_dir)
    assert killed_at >= 6 and killed_at < 400
    assert inconsistencies(run_dir) == []
    rows_at_kill = read_rows(run_dir)
    assert int(rows_at_kill[-1].split(",")[0]) >= 512 * killed_at  # every epoch's rows reached the file

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
    rows = read_rows(run_dir)  # every episode up to the checkpoint, then the resumed run's, none twice
    kept = [row for row in rows_at_kill if int(row.split(",")[0]) <= 512 * killed_at]
    assert rows[:len(kept)] == kept and all(int(row.split(",")[0]) > 512 * killed_at for row in rows[len(kept):])
    steps = [int(row.split(",")[0]) for row in rows]
    assert steps == sorted(steps) and steps[-1] == 512 * (killed_at + 6)
    assert inconsistencies(run_dir) == []


# ---- run-directory integrity ------------------------------------------------------------------

def read_rows(run_dir):
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        return f.read().splitlines()[1:]


def test_starting_over_in_a_used_directory_moves_the_old_run_aside(tmp_run_root, capsys):
    run_dir = os.path.join(tmp_run_root, "run")
    train.main(config_for(tmp_run_root, steps=512 * 4))
    old_rows = read_rows(run_dir)
    again = config_for(tmp_run_root, steps=512 * 2)
    again.checkpoint.resume = False
    train.main(again)
    assert f"moved it to {run_dir}.old-1" in capsys.readouterr().out
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [2]  # the new run's records only
    assert PolicyStore(run_dir).latest().agent_steps == 1024
    steps = [int(row.split(",")[0]) for row in read_rows(run_dir)]
    assert steps == sorted(steps) and steps[-1] == 1024
    assert [r.epoch for r in PolicyStore(run_dir + ".old-1").records()] == [2, 4]  # the old run, whole
    assert read_rows(run_dir + ".old-1") == old_rows
    assert inconsistencies(run_dir) == [] and inconsistencies(run_dir + ".old-1") == []


def test_a_directory_of_other_files_is_refused_not_moved(tmp_run_root):
    os.makedirs(os.path.join(tmp_run_root, "run"))
    with open(os.path.join(tmp_run_root, "run", "notes.txt"), "w") as f:
        f.write("mine")
    with pytest.raises(CheckpointError, match="holds files that are not a cleanmetta run"):
        train.main(config_for(tmp_run_root, steps=512))


class Killed(BaseException):
    """Stands in for a SIGKILL: nothing catches it, nothing after it runs."""


@pytest.mark.parametrize("where", ["before the policy record", "before the trainer state"])
def test_a_kill_between_the_two_halves_of_a_checkpoint_leaves_the_previous_one(tmp_run_root, monkeypatch, where):
    run_dir = os.path.join(tmp_run_root, "run")
    if where == "before the policy record":  # train.py's order: trainer state, policy file, record
        save_policy = TrainingCheckpointer.save_policy

        def dying(self, policy, epoch, metadata=None):
            if epoch == 4:
                self.policy_store.add = lambda record: (_ for _ in ()).throw(Killed())
            return save_policy(self, policy, epoch, metadata)

        monkeypatch.setattr(TrainingCheckpointer, "save_policy", dying)
        with pytest.raises(Killed):
            train.main(config_for(tmp_run_root, steps=512 * 6))
        assert len(trainer_state_paths(run_dir)) == 2  # epoch 4's trainer state was written, uncommitted
    else:  # Metta's README's order, by hand: save_policy, then (killed before) save_trainer_state
        train.main(config_for(tmp_run_root, steps=512 * 2))
        vecenv = make_vecenv(small_fast_config().env, 0)
        policy = make_policy(small_fast_config().agent, vecenv.single_observation_space, vecenv.single_action_space)
        TrainingCheckpointer(run_dir).save_policy(policy, 4, {"agent_steps": 2048})
    monkeypatch.undo()
    assert inconsistencies(run_dir) == ([] if where == "before the policy record" else [
        f"{trainer_state_paths(run_dir)[0]} (epoch 2) is not the latest policy's (epoch 4)"])

    result = train.main(config_for(tmp_run_root, steps=512 * 6))
    assert result["epoch"] == 6
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [2, 4, 6]
    assert PolicyStore(run_dir).get(4).agent_steps == 2048  # epoch 4 trained again, once
    assert inconsistencies(run_dir) == []


@pytest.mark.parametrize("damaged", ["trainer state", "policy"])
def test_a_checkpoint_cut_short_after_it_was_written_falls_back_to_the_previous_one(tmp_run_root, capsys, damaged):
    run_dir = os.path.join(tmp_run_root, "run")
    train.main(config_for(tmp_run_root, steps=512 * 6))
    path = trainer_state_paths(run_dir)[0] if damaged == "trainer state" else PolicyStore(run_dir).latest().uri
    with open(path, "r+b") as f:  # a copy cut short, a bad block: the file stops halfway
        f.truncate(os.path.getsize(path) // 2)
    assert inconsistencies(run_dir) != []

    result = train.main(config_for(tmp_run_root, steps=512 * 8))
    out = capsys.readouterr().out
    assert "checkpoint: skipped" in out and f"resumed {run_dir} at epoch 4, 2,048 agent steps" in out
    assert result["epoch"] == 8  # lost checkpoint.interval = 2 epochs, no more
    assert [r.epoch for r in PolicyStore(run_dir).records()] == [2, 4, 6, 8]
    assert inconsistencies(run_dir) == []


def snapshot(directory):
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return files


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_run_root, capsys):
    run_dir = os.path.join(tmp_run_root, "run")
    train.main(config_for(tmp_run_root, steps=512 * 4))
    before = snapshot(run_dir)
    result = train.main(train.parse_config(["--resume", run_dir]))
    assert f"{run_dir} has finished: epoch 4 of 4, 2,048 agent steps; nothing to train" in capsys.readouterr().out
    assert result["epoch"] == 4 and snapshot(run_dir) == before


def test_summary_holds_the_whole_runs_totals(tmp_run_root, monkeypatch):
    # The logger's clock moves only while a rollout is collected, 10 seconds each: every epoch takes 10 s.
    clock = SimpleNamespace(seconds=0.0)
    monkeypatch.setattr(log, "time", SimpleNamespace(perf_counter=lambda: clock.seconds))
    collect = RolloutCollector.collect

    def ten_second_rollout(self):
        clock.seconds += 10.0
        return collect(self)

    monkeypatch.setattr(RolloutCollector, "collect", ten_second_rollout)
    run_dir = os.path.join(tmp_run_root, "run")
    assert train.main(config_for(tmp_run_root, steps=512 * 4))["seconds"] == 40.0
    train.main(config_for(tmp_run_root, steps=512 * 8))  # resumed at epoch 4
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert (summary["agent_steps"], summary["seconds"]) == (512 * 8, 80.0)  # both parts: 8 epochs of 10 s
    assert summary["steps_per_second"] == 512 * 8 / 80.0


def test_a_runs_config_file_starts_a_new_run_instead_of_reopening_it(tmp_run_root, capsys):
    run_dir = os.path.join(tmp_run_root, "sf")
    train.main(config_for(tmp_run_root, steps=512 * 2, name="sf"))
    before = snapshot(run_dir)
    config = train.parse_config(["--config", os.path.join(run_dir, "config.json"), "--seed", "2"])
    assert "is the config of run sf: training a new run" in capsys.readouterr().out
    result = train.main(config)
    assert result["run_dir"] != run_dir and os.path.basename(result["run_dir"]).startswith("CartPole-v1__2__")
    assert snapshot(run_dir) == before  # run sf untouched
    assert train.parse_config(["--config", os.path.join(run_dir, "config.json")]).trainer.total_timesteps == 1024


def test_resume_reads_the_config_from_the_checkpoint_when_config_json_is_unreadable(tmp_run_root, capsys):
    run_dir = os.path.join(tmp_run_root, "run")
    train.main(config_for(tmp_run_root, steps=512 * 2, interval=1))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write('{"trainer": {"total_ti')  # cut short (config.json itself is written atomically)
    config = train.parse_config(["--resume", run_dir, "--trainer.total-timesteps", "2048"])
    assert "resuming with the config saved in" in capsys.readouterr().out
    assert config.checkpoint.interval == 1 and config.trainer.total_timesteps == 2048
    assert train.main(config)["epoch"] == 4
