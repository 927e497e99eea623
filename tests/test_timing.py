"""Where a run's time goes (timing.py): the split covers each epoch's wall time, its timers measure what
they name, it reaches TensorBoard and summary.json; and what a run says as it goes and when it stops."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import train
from cleanmetta.cli import flag_types
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import TrainingConfig, small_fast_config
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.policy import make_policy
from cleanmetta.timing import HINTS, PARTS, Split, hints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_config(run_root, steps=4096, **evaluation) -> TrainingConfig:
    config = small_fast_config()
    config.trainer.total_timesteps, config.experiment_name = steps, "run"
    config.log.run_root, config.log.console_interval = run_root, 1e9
    for key, value in evaluation.items():
        setattr(config.evaluation, key, value)
    return config


def test_the_split_covers_each_epoch_and_reaches_tensorboard_and_summary_json(tmp_run_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train.main(quick_config(tmp_run_root))
    perf = json.load(open(os.path.join(result["run_dir"], "summary.json")))["perf"]
    named = sum(perf[f"{part}_s"] for part in PARTS)
    assert named + perf["other_s"] == pytest.approx(perf["wall_s"], rel=1e-6)
    assert named >= 0.9 * perf["wall_s"]  # the timers account for the epochs' time; "other" is the small rest
    assert min(perf["env_s"], perf["policy_s"], perf["copies_s"], perf["update_s"], perf["checkpoint_s"]) > 0
    assert perf["ranks_s"] == 0.0  # one process: no collectives
    events = EventAccumulator(result["run_dir"]).Reload()
    epochs = [[e.value for e in events.Scalars(f"perf/{part}")] for part in (*PARTS, "other")]
    assert len(epochs[0]) == 8  # 4,096 steps of 512: one split per epoch
    for shares in zip(*epochs):  # each epoch's parts add up to its wall time
        assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert len(events.Scalars("perf/wall")) == 8


def test_the_env_timer_measures_the_envs_steps(tmp_run_root):
    config = quick_config(tmp_run_root)
    vecenv = make_vecenv(config.env, 1)
    step = vecenv.step

    def slow_step(actions):  # 2 ms more per vector step, which only the env part should see
        time.sleep(0.002)
        return step(actions)

    vecenv.step = slow_step
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    experience = Experience.for_env(vecenv, config.trainer.num_steps, "cpu")
    split = Split()
    RolloutCollector(vecenv, policy, experience, split=split).collect()
    env, others = split.seconds["env"], split.seconds["policy"] + split.seconds["copies"]
    assert 0.002 * config.trainer.num_steps <= env < 0.002 * config.trainer.num_steps + 0.2
    assert others < env
    assert split.epoch()["wall"] >= env + others


def test_hints_name_the_largest_parts_with_flags_that_exist():
    flags = flag_types()
    for text in HINTS.values():
        for flag in re.findall(r"--[a-z0-9.-]+[a-z0-9]", text):
            assert flag in flags or flag.replace(".no-", ".") in flags, flag
    totals = {"wall": 10.0, "env": 6.0, "update": 3.0, "policy": 0.5}
    assert hints(totals) == [f"env 60%: {HINTS['env']}", f"update 30%: {HINTS['update']}"]
    assert hints({"wall": 10.0, "env": 2.0, "update": 2.0}) == []


def test_a_run_says_its_evaluations_and_ends_with_a_summary_and_the_commands(tmp_run_root, capsys):
    result = train.main(quick_config(tmp_run_root, interval=4, episodes=2))
    out = capsys.readouterr().out
    run_dir = result["run_dir"]
    assert re.search(r"^evaluation at step 2,048: CartPole-v1/mean_return [\d.]+$", out, re.M)
    assert re.search(r"^evaluation at step 4,096: CartPole-v1/mean_return [\d.]+$", out, re.M)
    end = out[out.index("run finished"):]
    assert end.startswith("run finished: 8 epochs, 4,096 agent steps in ")
    assert f"run directory: {run_dir}" in end and "evaluation CartPole-v1/mean_return: last " in end
    assert f"checkpoint: epoch 8 ({os.path.join(run_dir, 'trainer_states')})" in end
    assert re.search(r"where the time went: \w+ \d+%", end)
    assert f"python -m cleanmetta.evaluate {run_dir}\n" in end
    assert f"python train.py --resume {run_dir} --trainer.total-timesteps 8192" in end


def test_sigterm_ends_with_the_epoch_it_saved_and_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", "--trainer.total-timesteps", "10000000", "--log.run-root",
                                str(tmp_path), "--experiment-name", "run", "--log.no-tensorboard"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (run_dir / "episodes.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert process.returncode == 0, out
    stopped = re.search(r"run stopped by SIGTERM at epoch ([\d,]+) of 19,532", out)
    assert stopped and f"checkpoint: epoch {stopped.group(1)} " in out
    assert f"python train.py --resume {run_dir}\n" in out


def test_a_resume_that_moves_the_learning_rate_says_so(tmp_run_root, capsys):
    train.main(quick_config(tmp_run_root, steps=2048))
    config = quick_config(tmp_run_root, steps=4096)
    config.checkpoint.resume = True
    train.main(config)
    out = capsys.readouterr().out
    assert ("resuming at epoch 4: the learning-rate schedule now runs over 8 epochs (it ran over 4), so the rate "
            "at this epoch is 0.0005 where the run had reached 0") in out  # small_fast: 1e-3, halfway down
