"""Which policies a run keeps, which scores their records carry, and the index's safety when two
processes write it (the trainer and `python -m cleanmetta.evaluate` or a pin)."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta import checkpoint, evaluate
from cleanmetta.checkpoint import CheckpointError, PolicyStore, TrainingCheckpointer, inconsistencies, trainer_state_paths
from cleanmetta.config import AgentConfig, ConfigError, small_fast_config
from cleanmetta.policy import make_policy
from cleanmetta.trainer import functional_training_loop
from test_functional import build_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORE = "CartPole-v1/mean_return"


def config_for(run_root, epochs, checkpoint_every=2, evaluate_every=0, keep_policies=5):
    config = small_fast_config()
    config.trainer.total_timesteps = 512 * epochs
    config.experiment_name = "run"
    config.checkpoint.interval = checkpoint_every
    config.checkpoint.keep_policies = keep_policies
    config.evaluation.interval = evaluate_every
    config.evaluation.episodes = 2
    config.log.run_root = run_root
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    return config


def functional_main(config):
    policy, curriculum = build_policy(config)
    functional_training_loop(config, config.ppo, policy, curriculum)


def small_policy(seed=0):
    torch.manual_seed(seed)
    return make_policy(AgentConfig(hidden_size=16), spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2))


def epochs_of(run_dir):
    return [r.epoch for r in PolicyStore(run_dir).records()]


def files_of(run_dir):
    return sorted(os.listdir(os.path.join(run_dir, "policies")))


# ---- a record carries only the scores measured on its own policy ---------------------------------

@pytest.mark.parametrize("loop", ["train.py", "functional"])
def test_only_evaluated_epochs_carry_scores_and_best_is_an_evaluated_one(tmp_run_root, loop):
    config = config_for(tmp_run_root, epochs=7, checkpoint_every=2, evaluate_every=3, keep_policies=0)
    if loop == "train.py":
        train.main(config)
    else:
        functional_main(config)
    store = PolicyStore(os.path.join(tmp_run_root, "run"))
    assert [r.epoch for r in store.records()] == [2, 3, 4, 6, 7]  # every evaluated epoch (3, 6) is saved too
    assert [r.epoch for r in store.records() if r.scores] == [3, 6]  # 4 and 7 were never evaluated
    assert store.best(SCORE).epoch in (3, 6)
    assert store.get("best:" + SCORE).scores[SCORE] == max(store.get(3).scores[SCORE], store.get(6).scores[SCORE])


def test_best_without_the_score_names_the_scores_there_are_and_how_to_get_them(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path))
    checkpointer.save_policy(small_policy(), 1)
    with pytest.raises(CheckpointError) as err:
        PolicyStore(str(tmp_path)).best(SCORE)
    message = str(err.value)
    assert "no policy has the score 'CartPole-v1/mean_return'" in message and "\n" not in message
    assert "no policy here has been evaluated" in message
    assert f"python -m cleanmetta.evaluate {tmp_path} --policy EPOCH" in message
    assert "--evaluation.interval N" in message
    checkpointer.save_policy(small_policy(), 2, {"scores": {"a/mean_return": 1.0, "a/episodes": 3}})
    with pytest.raises(CheckpointError, match=r"the scores recorded are \['a/episodes', 'a/mean_return'\]"):
        PolicyStore(str(tmp_path)).get("best:" + SCORE)


# ---- python -m cleanmetta.evaluate records what it measures --------------------------------------

def test_evaluate_records_its_scores_so_best_works_on_a_default_run(tmp_run_root, capsys):
    run_dir = train.main(config_for(tmp_run_root, epochs=4))["run_dir"]  # no evaluation during training
    store = PolicyStore(run_dir)
    assert [r.scores for r in store.records()] == [{}, {}]

    evaluate.main([run_dir, "--policy", "2", "--episodes", "3"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("CartPole-v1 "))
    assert f"scores recorded on epoch 2's record in {store.index_path}" in out
    assert store.get(2).scores[SCORE] == pytest.approx(float(row.split()[2]), abs=0.005)
    assert store.get(2).scores["CartPole-v1/episodes"] == 3 and store.get(4).scores == {}

    evaluate.main([run_dir, "--policy", "best:" + SCORE, "--episodes", "3"])  # the README's best: now works
    assert "(epoch 2, 1,024 agent steps)" in capsys.readouterr().out
    assert store.best(SCORE).epoch == 2

    outside = os.path.join(tmp_run_root, "copy.pt")  # a policy file that is not one of the run's records
    shutil.copy(store.get(4).uri, outside)
    before = open(store.index_path).read()
    evaluate.main([run_dir, "--policy", outside, "--episodes", "3"])
    assert f"scores not recorded: {outside} is not (or no longer) one of the policies" in capsys.readouterr().out
    evaluate.main([run_dir, "--policy", "4", "--episodes", "3", "--no-record"])
    assert "recorded" not in capsys.readouterr().out
    assert open(store.index_path).read() == before


SLOW_WRITER = """
import sys, time
from cleanmetta.checkpoint import PolicyRecord, PolicyStore
run_dir, operation, ready = sys.argv[1:]
write = PolicyStore._write
def slow_write(self, records):  # the index read, the new one not written yet: the window a lost update needs
    open(ready, "w").close()
    time.sleep(1.5)
    write(self, records)
PolicyStore._write = slow_write
store = PolicyStore(run_dir)
if operation == "record_scores":  # what python -m cleanmetta.evaluate does
    store.record_scores(store.get(1).uri, {"CartPole-v1/mean_return": 42.0})
else:
    store.add(PolicyRecord(store.get(1).uri, 1, 100, scores={"CartPole-v1/mean_return": 42.0}))
"""


@pytest.mark.parametrize("operation", ["record_scores", "add"])
def test_a_record_the_trainer_adds_while_another_process_writes_the_index_is_not_lost(tmp_path, operation):
    run_dir = str(tmp_path / "run")
    checkpointer = TrainingCheckpointer(run_dir)
    checkpointer.save_checkpoint(small_policy(), 1, 100, {})
    ready = str(tmp_path / "ready")
    other = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, run_dir, operation, ready], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(ready) and other.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(ready), other.communicate()[1]
    checkpointer.save_checkpoint(small_policy(), 2, 200, {})  # the trainer's next checkpoint, meanwhile
    assert other.wait(timeout=60) == 0, other.stderr.read()
    records = PolicyStore(run_dir).records()
    assert [r.epoch for r in records] == [1, 2]  # the trainer's newest record, and with it its checkpoint
    assert records[0].scores == {SCORE: 42.0}  # and the other process's change
    assert inconsistencies(run_dir) == []


# ---- which policies are kept -----------------------------------------------------------------------

def test_a_run_keeps_the_newest_the_best_the_pinned_and_its_trainer_states_policies(tmp_run_root, monkeypatch,
                                                                                    capsys):
    scores = {}  # agent steps -> the evaluation's mean return, pruned records' included

    def evaluate_and_record(evaluator, policy, logger, agent_steps):
        result = evaluate_and_log(evaluator, policy, logger, agent_steps)
        scores[agent_steps // 512] = result[SCORE]
        return result

    evaluate_and_log = train.evaluate_and_log
    monkeypatch.setattr(train, "evaluate_and_log", evaluate_and_record)
    run_dir = os.path.join(tmp_run_root, "run")
    first = config_for(tmp_run_root, epochs=5, checkpoint_every=1, evaluate_every=4, keep_policies=2)
    train.main(first)  # checkpoint.keep = 3 trainer states
    assert epochs_of(run_dir) == [3, 4, 5]  # 3: a trainer state's; 4: the best so far (and a trainer state's)
    assert files_of(run_dir) == ["policy_000003.pt", "policy_000004.pt", "policy_000005.pt"]

    checkpoint.main([run_dir, "--pin", "3"])
    assert f"pinned epoch 3: {PolicyStore(run_dir).get(3).uri}" in capsys.readouterr().out
    train.main(config_for(tmp_run_root, epochs=11, checkpoint_every=1, evaluate_every=4, keep_policies=2))
    assert f"resumed {run_dir} at epoch 5" in capsys.readouterr().out  # a resume after pruning

    best = max(scores, key=lambda epoch: (scores[epoch], epoch))
    assert sorted(scores) == [4, 8]  # the best is kept for being the best alone
    kept = sorted({10, 11} | {9, 10, 11} | {best} | {3})  # newest 2, trainer states, best, pinned
    assert epochs_of(run_dir) == kept
    assert files_of(run_dir) == [f"policy_{epoch:06d}.pt" for epoch in kept]  # disk and index agree
    assert PolicyStore(run_dir).best(SCORE).epoch == best
    assert inconsistencies(run_dir) == []

    checkpoint.main([run_dir])  # the listing shows what is kept and why
    listing = capsys.readouterr().out.splitlines()
    assert [int(line.split()[1]) for line in listing] == kept
    assert "pinned" in listing[0] and "trainer state" in listing[-1] and SCORE in listing[kept.index(best)]

    newest = trainer_state_paths(run_dir)[0]  # damaged: the resume falls back to epoch 10, whose policy was kept
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    result = train.main(config_for(tmp_run_root, epochs=12, checkpoint_every=1, evaluate_every=4, keep_policies=2))
    assert f"resumed {run_dir} at epoch 10" in capsys.readouterr().out and result["epoch"] == 12
    assert inconsistencies(run_dir) == []


def test_pinned_policies_stay_until_unpinned(tmp_path):
    run_dir = str(tmp_path)
    checkpointer = TrainingCheckpointer(run_dir, keep=1)
    for epoch in (1, 2, 3):
        checkpointer.save_checkpoint(small_policy(), epoch, 100 * epoch, {})
    assert PolicyStore(run_dir).pin(1).pinned
    for epoch in (4, 5):
        checkpointer.save_checkpoint(small_policy(), epoch, 100 * epoch, {})
        checkpointer.prune_policies(1)
    assert epochs_of(run_dir) == [1, 5]
    PolicyStore(run_dir).unpin(1)
    assert [r.epoch for r in checkpointer.prune_policies(1)] == [1] and epochs_of(run_dir) == [5]
    with pytest.raises(CheckpointError, match="no policy matches '7'"):
        PolicyStore(run_dir).pin("7")
    assert checkpointer.prune_policies(0) == [] and checkpointer.prune_policies(5) == []  # 0: keep all


def test_the_pin_command_runs_from_the_command_line_and_refuses_an_unknown_policy(tmp_path):
    run_dir = str(tmp_path)
    TrainingCheckpointer(run_dir).save_checkpoint(small_policy(), 1, 100, {})
    out = subprocess.run([sys.executable, "-m", "cleanmetta.checkpoint", run_dir, "--pin", "latest"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert PolicyStore(run_dir).get(1).pinned and "pinned" in out.stdout.splitlines()[-1]
    with pytest.raises(SystemExit, match="error: .*no policy matches '9'"):
        checkpoint.main([run_dir, "--unpin", "9"])


def test_a_kill_while_pruning_leaves_a_consistent_directory_and_the_next_prune_finishes(tmp_path, monkeypatch):
    run_dir = str(tmp_path)
    checkpointer = TrainingCheckpointer(run_dir, keep=1)
    for epoch in (1, 2, 3):
        checkpointer.save_checkpoint(small_policy(), epoch, 100 * epoch, {})

    class Killed(BaseException):
        """Stands in for a SIGKILL: nothing catches it, nothing after it runs."""

    remove = os.remove

    def dying_remove(path):
        if "policy_" in os.path.basename(path):
            raise Killed()
        remove(path)

    monkeypatch.setattr(os, "remove", dying_remove)
    with pytest.raises(Killed):
        checkpointer.prune_policies(1)
    monkeypatch.undo()
    assert epochs_of(run_dir) == [3]  # the index went first ...
    assert files_of(run_dir) == ["policy_000001.pt", "policy_000002.pt", "policy_000003.pt"]  # ... the files not yet
    assert inconsistencies(run_dir) == []
    checkpointer.save_checkpoint(small_policy(), 4, 400, {})
    checkpointer.prune_policies(1)
    assert epochs_of(run_dir) == [4] and files_of(run_dir) == ["policy_000004.pt"]
    assert inconsistencies(run_dir) == []


def test_keep_policies_must_not_be_negative():
    config = small_fast_config()
    config.checkpoint.keep_policies = -1
    with pytest.raises(ConfigError, match=r"checkpoint.keep_policies=-1 must be >= 0 \(0 keeps every policy\)"):
        config.validate()
