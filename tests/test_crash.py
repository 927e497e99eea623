"""A failure in the middle of a run keeps its progress: an exception in the env or in an evaluation
saves a checkpoint first (the weights are whole there) and `--resume` continues from it; a write
that fails, a full disk above all, is one line naming the path and the space left, and the
checkpoint before it stays in force."""

import errno
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import train
from cleanmetta import files
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.config import TrainingConfig
from cleanmetta.evaluate import PolicyEvaluator
from cleanmetta.files import WriteError, write_atomic, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
FAILING = ["--env.id", "toy_envs:toy/Failing-v0", "--env.num-envs", "2", "--trainer.num-steps", "16",
           "--trainer.total-timesteps", "320", "--log.console-interval", "1e9", "--log.no-tensorboard"]


def run_train(argv: list[str], **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS]), **env}
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=120)


def test_an_env_that_raises_saves_a_checkpoint_and_resume_continues_from_it(tmp_path):
    run_dir = str(tmp_path / "failing")
    argv = FAILING + ["--log.run-root", str(tmp_path), "--experiment-name", "failing"]
    crashed = run_train(argv, CLEANMETTA_TEST_FAIL_AT="60")  # each env's 60th step: in the 4th or 5th epoch
    assert crashed.returncode != 0
    assert "RuntimeError: simulated env failure" in crashed.stderr  # the env's own traceback, as it is
    assert f"checkpoint saved at the last whole epoch before this RuntimeError: python train.py --resume {run_dir} " \
           "continues from it" in crashed.stderr
    saved = PolicyStore(run_dir).latest()
    assert 3 <= saved.epoch <= 5 and saved.agent_steps == 32 * saved.epoch and saved.scores == {}
    assert TrainingCheckpointer(run_dir).load_trainer_state(run_dir)["epoch"] == saved.epoch

    resumed = run_train(["--resume", run_dir])
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch {saved.epoch}, {32 * saved.epoch} agent steps" in resumed.stdout
    assert PolicyStore(run_dir).latest().epoch == 10


def small_config(tmp_path, name: str) -> TrainingConfig:
    config = TrainingConfig(experiment_name=name)
    config.env.num_envs, config.trainer.num_steps, config.trainer.total_timesteps = 2, 16, 320
    config.evaluation.interval, config.evaluation.episodes, config.checkpoint.interval = 3, 2, 0
    config.log.run_root, config.log.tensorboard, config.log.console_interval = str(tmp_path), False, 1e9
    return config


def test_an_evaluation_that_raises_saves_the_evaluated_epoch_without_scores(tmp_path, monkeypatch):
    def broken(self, policy, step=None):
        raise RuntimeError("simulated evaluation failure")

    monkeypatch.setattr(PolicyEvaluator, "evaluate", broken)
    with pytest.raises(RuntimeError, match="simulated evaluation failure") as failure:
        train.main(small_config(tmp_path, "eval"))
    run_dir = str(tmp_path / "eval")
    assert failure.value.__notes__ == [f"checkpoint saved at the last whole epoch before this RuntimeError: python "
                                       f"train.py --resume {run_dir} continues from it"]
    record = PolicyStore(run_dir).latest()
    assert (record.epoch, record.agent_steps, record.scores) == (3, 96, {})  # after the update, before the scores
    monkeypatch.undo()
    assert train.main(small_config(tmp_path, "eval"))["epoch"] == 10  # --resume continues


def test_a_failure_right_after_a_checkpoint_keeps_that_checkpoints_scores(tmp_path, monkeypatch):
    config = small_config(tmp_path, "scored")
    config.env.id, config.evaluation.interval, config.checkpoint.interval = "toy_envs:toy/Failing-v0", 2, 2
    monkeypatch.setenv("CLEANMETTA_TEST_FAIL_AT", "35")  # each training env's 35th step: in epoch 3's rollout
    with pytest.raises(RuntimeError, match="simulated env failure"):
        train.main(config)
    store = PolicyStore(str(tmp_path / "scored"))
    assert store.latest().epoch == 2 and store.latest().scores["toy_envs:toy/Failing-v0/mean_return"] >= 0


def test_the_functional_loop_saves_on_an_env_failure_too(tmp_path, monkeypatch):
    from cleanmetta.curriculum import make_curriculum
    from cleanmetta.envs import make_vecenv
    from cleanmetta.policy import make_policy
    from cleanmetta.trainer import functional_training_loop

    config = small_config(tmp_path, "functional")
    config.env.id, config.evaluation.interval = "toy_envs:toy/Failing-v0", 0
    env = make_vecenv(config.env, 0)
    policy = make_policy(config.agent, env.single_observation_space, env.single_action_space)
    env.close()
    monkeypatch.setenv("CLEANMETTA_TEST_FAIL_AT", "60")
    with pytest.raises(RuntimeError, match="simulated env failure"):
        functional_training_loop(config, config.ppo, policy, make_curriculum(config.env))
    record = PolicyStore(str(tmp_path / "functional")).latest()
    assert 3 <= record.epoch <= 5 and record.agent_steps == 32 * record.epoch


# ---- writes that fail ------------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_naming_the_path_and_the_free_space(tmp_path, monkeypatch):
    path = str(tmp_path / "policies.json")
    write_text(path, "old")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda directory: SimpleNamespace(free=4096))

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as failure:
        write_atomic(path, full)
    message = str(failure.value)
    assert message.startswith(f"cannot write {path}: no space left on the device (4,096 bytes free in {tmp_path})")
    assert "\n" not in message and "--resume" in message
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["policies.json"]  # the old file, no leftovers


def test_torch_saves_iostream_errors_on_a_full_disk_are_named_a_full_disk(tmp_path, monkeypatch):
    usage = SimpleNamespace(free=0)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda directory: usage)

    def torch_on_a_full_disk(obj, tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3904 vs 3792")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    with pytest.raises(WriteError, match="no space left on the device"):
        write_atomic(str(tmp_path / "policy.pt"), lambda tmp: torch.save({}, tmp))
    usage.free = 10 << 30  # with room on the disk, the same error is not taken for a full disk
    with pytest.raises(RuntimeError, match="unexpected pos"):
        write_atomic(str(tmp_path / "policy.pt"), lambda tmp: torch.save({}, tmp))


def test_train_py_says_the_disk_is_full_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "full"
    # the third checkpoint's write meets a full disk: torch's C++ writer fails as it does there
    code = (f"import os, runpy, sys, torch; from cleanmetta import files\n"
            f"saves, save = [0], torch.save\n"
            f"def full_after_two(obj, f):\n"
            f"    saves[0] += 1\n"
            f"    if saves[0] > 4: raise RuntimeError('basic_ios::clear: iostream error')\n"
            f"    save(obj, f)\n"
            f"torch.save = full_after_two\n"
            f"files.shutil.disk_usage = lambda d: type('usage', (), {{'free': 512}})()\n"
            f"sys.argv = ['train.py'] + {FAILING!r} + ['--log.run-root', {str(tmp_path)!r}, '--experiment-name',"
            f" 'full', '--checkpoint.interval', '2']\n"
            f"runpy.run_path('train.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {run_dir}/") and "no space left on the device (512 bytes free" in last
    assert PolicyStore(str(run_dir)).latest().epoch == 4  # two checkpoints (2 files each) before the disk filled up


def test_a_run_root_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    done = run_train(["--log.run-root", str(a_file), "--trainer.total-timesteps", "512"])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"error: log.run_root={str(a_file)!r}: cannot write in {a_file}/CartPole-v1__1__")
    assert "(Not a directory" in line and line.endswith("pick a directory you can write to") and "\n" not in line
    assert "run directory:" not in done.stdout  # said before the run starts
