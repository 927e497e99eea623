import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import ConfigError, TrainingConfig, small_fast_config
from cleanmetta.presets import continuous_config, mettagrid_config
from cleanmetta.spaces import space_from_dict
from cleanmetta.trainer import learning_rate_at, resolve_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_config(run_root, steps=2048, seed=1, preset=small_fast_config, **log) -> TrainingConfig:
    config = preset()
    config.trainer.total_timesteps = steps
    config.seed = seed
    config.experiment_name = f"test_seed{seed}"
    config.log.run_root = run_root
    config.log.console_interval = 1e9
    for key, value in log.items():
        setattr(config.log, key, value)
    return config


@pytest.mark.parametrize("preset, steps", [
    (small_fast_config, 2048),
    (continuous_config, 4096),  # normalisation statistics included
    pytest.param(mettagrid_config, 16384, marks=pytest.mark.skipif(
        importlib.util.find_spec("mettagrid") is None, reason='needs pip install -e ".[mettagrid]"')),
])
def test_same_seed_gives_identical_parameters(tmp_run_root, preset, steps):
    runs = [train.main(quick_config(f"{tmp_run_root}/{i}", steps, seed, preset, tensorboard=False))["policy"]
            for i, seed in enumerate((1, 1, 2))]
    a, b, c = (run.state_dict() for run in runs)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[name], c[name]) for name in a)


def test_short_cartpole_run_beats_a_random_policy(tmp_run_root):
    # A uniformly random policy averages about 22 on CartPole-v1.
    result = train.main(quick_config(tmp_run_root, steps=20_000, tensorboard=False))
    assert result["agent_steps"] >= 20_000
    assert result["mean_return_last20"] > 80


def test_run_directory_holds_config_episodes_and_tensorboard_tags(tmp_run_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = quick_config(tmp_run_root, steps=4096)
    result = train.main(config)
    run_dir = result["run_dir"]
    assert run_dir == os.path.join(tmp_run_root, "test_seed1")
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["trainer"]["total_timesteps"] == 4096
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        header, *rows = f.read().splitlines()
    assert header == "agent_steps,seconds,return,length" and len(rows) > 10
    tags = EventAccumulator(run_dir).Reload().Tags()["scalars"]
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
                "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance"):
        assert tag in tags, tag


def test_learning_rate_anneals_linearly_to_zero():
    trainer = TrainingConfig().trainer
    assert learning_rate_at(trainer, 0, 10) == trainer.learning_rate
    assert learning_rate_at(trainer, 5, 10) == pytest.approx(trainer.learning_rate / 2)
    assert learning_rate_at(trainer, 9, 10) == pytest.approx(trainer.learning_rate / 10)
    trainer.anneal_lr = False
    assert learning_rate_at(trainer, 9, 10) == trainer.learning_rate


def test_cosine_schedule_starts_at_the_rate_halves_midway_and_ends_near_zero():
    trainer = TrainingConfig().trainer
    trainer.lr_schedule = "cosine"
    rates = [learning_rate_at(trainer, epoch, 100) for epoch in range(100)]
    assert rates[0] == trainer.learning_rate and rates[50] == pytest.approx(trainer.learning_rate / 2)
    assert 0 < rates[-1] < 1e-3 * trainer.learning_rate and rates == sorted(rates, reverse=True)


@pytest.mark.parametrize("schedule, anneal", [("linear", True), ("cosine", True), ("linear", False)])
def test_warm_up_rises_to_the_rate_then_the_schedule_runs_over_the_remaining_epochs(schedule, anneal):
    trainer = TrainingConfig().trainer
    trainer.lr_schedule, trainer.anneal_lr, trainer.lr_warmup = schedule, anneal, 0.1
    lr = trainer.learning_rate
    rates = [learning_rate_at(trainer, epoch, 100) for epoch in range(100)]
    assert rates[0] == pytest.approx(lr / 11) and rates[9] == pytest.approx(lr * 10 / 11)  # 10 warm-up epochs
    assert rates[:10] == sorted(rates[:10]) and rates[10] == lr
    plain = TrainingConfig().trainer
    plain.lr_schedule, plain.anneal_lr = schedule, anneal
    for epoch in range(10, 100):  # after the warm-up: the schedule without warm-up, over 90 epochs
        assert rates[epoch] == pytest.approx(learning_rate_at(plain, epoch - 10, 90))


def test_the_run_trains_with_the_scheduled_rates(tmp_run_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = quick_config(tmp_run_root, steps=512 * 8)
    config.trainer.lr_schedule, config.trainer.lr_warmup = "cosine", 0.25
    run_dir = train.main(config)["run_dir"]
    logged = [event.value for event in EventAccumulator(run_dir).Reload().Scalars("charts/learning_rate")]
    assert logged == pytest.approx([learning_rate_at(config.trainer, epoch, 8) for epoch in range(8)])
    assert logged[1] == pytest.approx(config.trainer.learning_rate * 2 / 3)  # 2 warm-up epochs, then the peak
    assert logged[2] == pytest.approx(config.trainer.learning_rate)


def test_lr_schedule_values_are_checked():
    config = TrainingConfig()
    config.trainer.lr_schedule, config.trainer.lr_warmup = "exponential", 1.0
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert "trainer.lr_schedule='exponential' must be one of ['linear', 'cosine']" in str(err.value)
    assert "trainer.lr_warmup=1.0 must be a fraction of the run in [0, 1)" in str(err.value)


def test_cuda_request_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="device='cuda' but torch.cuda.is_available\\(\\) is False"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_train_script_runs_from_the_command_line(tmp_run_root):
    out = subprocess.run(
        [sys.executable, "train.py", "--trainer.total-timesteps", "1024", "--env.id", "Acrobot-v1",
         "--log.run-root", tmp_run_root, "--experiment-name", "cli", "--log.no-tensorboard"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[100.0%] step 1,024/1,024" in out.stdout and "SPS" in out.stdout
    assert os.path.exists(os.path.join(tmp_run_root, "cli", "config.json"))


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason='needs pip install -e ".[mujoco]"')
def test_the_readmes_mujoco_command_trains_halfcheetah(tmp_run_root):
    with open(os.path.join(ROOT, "README.md")) as f:
        command = next(line for line in f if line.startswith("python train.py") and "HalfCheetah-v5" in line)
    flags = command.split("#")[0].split()[2:]  # the README's, after `python train.py`; a tiny budget on top
    out = subprocess.run([sys.executable, "train.py", *flags, "--trainer.total-timesteps", "2048",
                          "--trainer.num-steps", "1024", "--log.run-root", tmp_run_root, "--experiment-name", "cheetah",
                          "--log.no-tensorboard"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[100.0%] step 2,048/2,048" in out.stdout
    run_dir = os.path.join(tmp_run_root, "cheetah")
    config = TrainingConfig.from_yaml(os.path.join(run_dir, "config.json"))
    assert (config.env.id, config.ppo.num_minibatches, config.ppo.update_epochs) == ("HalfCheetah-v5", 32, 10)
    spec = PolicyStore(run_dir).latest().policy.spec
    assert space_from_dict(spec["observation_space"]).shape == (17,)
    assert space_from_dict(spec["action_space"]).shape == (6,)
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        lengths = [row.split(",")[3] for row in f.read().splitlines()[1:]]
    assert lengths == ["1000", "1000"]  # two whole episodes, each ended by HalfCheetah's time limit


def test_train_script_rejects_an_invalid_value(tmp_run_root):
    out = subprocess.run([sys.executable, "train.py", "--ppo.num-minibatches", "1000", "--log.run-root", tmp_run_root],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "ppo.num_minibatches=1000 is more than the batch size" in out.stderr


def test_a_run_prints_its_directory_and_its_budget_in_whole_rollouts(tmp_run_root, capsys):
    config = small_fast_config()
    config.trainer.total_timesteps = 1200  # 512 agent steps an epoch: 3 epochs, 1,536 steps
    config.log.run_root, config.log.tensorboard = tmp_run_root, False
    result = train.main(config)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"run directory: {result['run_dir']} | 3 epochs x 512 agent steps = 1,536 "
                        "(trainer.total_timesteps 1,200 rounded up to whole rollouts)")
    progress = [line for line in lines if line.startswith("[")]
    assert progress[-1].startswith("[100.0%] step 1,536/1,536 ")  # never past 100%
    assert lines[lines.index(progress[-1]) + 1].startswith("run finished: 3 epochs, 1,536 agent steps in ")


def test_an_env_whose_package_is_missing_is_a_one_line_error(tmp_run_root):
    script = ("import gymnasium as gym, sys, runpy\n"
              "def needs_box2d(**kwargs):\n"
              "    raise gym.error.DependencyNotInstalled(\n"
              "        'Box2D is not installed, run `pip install \"gymnasium[box2d]\"`')\n"
              "gym.register('Needs-Box2D-v0', entry_point=needs_box2d)\n"
              "sys.argv = ['train.py', '--env.id', 'Needs-Box2D-v0', '--log.run-root', sys.argv[1]]\n"
              "runpy.run_path('train.py', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", script, tmp_run_root], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("error: env.id='Needs-Box2D-v0' needs a package that is not installed: Box2D is not "
                                  'installed, run `pip install "gymnasium[box2d]"`')


def test_the_readmes_trained_policy_snippet_runs_on_a_run_directory(tmp_run_root):
    run_dir = train.main(quick_config(tmp_run_root, steps=1024))["run_dir"]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Use a trained policy", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0].replace("runs/NAME", run_dir)
    out = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split("return ")[1]) >= 8  # an episode played to its end
