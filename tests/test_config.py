import dataclasses

import pytest
import tyro

from cleanmetta.config import (PRESETS, AgentConfig, ConfigError, EnvConfig, PPOConfig, TrainerConfig,
                               TrainingConfig, small_fast_config)


def test_defaults_are_the_cartpole_reference_settings():
    c = TrainingConfig().validate()
    assert (c.env.id, c.env.num_envs, c.trainer.num_steps) == ("CartPole-v1", 4, 128)
    assert (c.ppo.num_minibatches, c.ppo.update_epochs) == (4, 4)
    assert (c.trainer.learning_rate, c.trainer.anneal_lr, c.trainer.total_timesteps) == (2.5e-4, True, 500_000)
    assert (c.ppo.gamma, c.ppo.gae_lambda, c.ppo.clip_coef) == (0.99, 0.95, 0.2)
    assert (c.ppo.ent_coef, c.ppo.vf_coef, c.ppo.max_grad_norm) == (0.01, 0.5, 0.5)


def test_small_fast_config_is_valid():
    small_fast_config().validate()


def test_cli_parses_nested_flags():
    c = tyro.cli(TrainingConfig, args=["--trainer.total-timesteps", "1000000", "--env.id", "Acrobot-v1",
                                       "--ppo.num-minibatches", "8", "--agent.hidden-size", "32",
                                       "--ppo.target-kl", "0.02", "--seed", "7", "--device", "cpu"])
    assert c.trainer.total_timesteps == 1_000_000
    assert c.env.id == "Acrobot-v1"
    assert c.ppo.num_minibatches == 8
    assert c.agent.hidden_size == 32
    assert c.ppo.target_kl == 0.02
    assert (c.seed, c.device) == (7, "cpu")


def test_cli_help_documents_every_field(capsys):
    with pytest.raises(SystemExit):
        tyro.cli(TrainingConfig, args=["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for section in (TrainingConfig, EnvConfig, AgentConfig, TrainerConfig, PPOConfig):
        for f in dataclasses.fields(section):
            if not dataclasses.is_dataclass(f.type) and f.name not in ("env", "agent", "trainer", "ppo", "log"):
                assert f.name.replace("_", "-") in text, f.name
    assert "surrogate clipping coefficient" in text
    assert "global gradient-norm clip" in text


def with_change(path: str, value) -> TrainingConfig:
    config = TrainingConfig()
    *parents, name = path.split(".")
    target = config
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)
    return config


@pytest.mark.parametrize("path, value, fragment", [
    ("experiment_name", "", "experiment_name=''"),
    ("experiment_name", "a/b", "without '/'"),
    ("device", "tpu", "device='tpu'"),
    ("torch_threads", 0, "torch_threads=0"),
    ("env.id", " ", "env.id"),
    ("env.num_envs", 0, "env.num_envs=0"),
    ("env.vectorization", "ray", "env.vectorization='ray'"),
    ("agent.name", "transformer", "agent.name='transformer' is not a known network; choose one of ['mlp', 'multi_input', 'simple_cnn', 'token'] or 'auto'"),
    ("agent.hidden_size", 0, "agent.hidden_size=0"),
    ("trainer.total_timesteps", 0, "trainer.total_timesteps=0"),
    ("trainer.num_steps", -1, "trainer.num_steps=-1"),
    ("trainer.learning_rate", -2.5e-4, "trainer.learning_rate=-0.00025 must be a finite number > 0"),
    ("trainer.learning_rate", float("nan"), "trainer.learning_rate=nan"),
    ("trainer.adam_eps", 0.0, "trainer.adam_eps=0.0"),
    ("ppo.gamma", 1.5, "ppo.gamma=1.5 must be in (0, 1]"),
    ("ppo.gae_lambda", -0.1, "ppo.gae_lambda=-0.1"),
    ("ppo.update_epochs", 0, "ppo.update_epochs=0"),
    ("ppo.num_minibatches", 0, "ppo.num_minibatches=0"),
    ("ppo.num_minibatches", 1000, "ppo.num_minibatches=1000 is more than the batch size env.num_envs x trainer.num_steps = 512; use at most 512"),
    ("ppo.clip_coef", 0.0, "ppo.clip_coef=0.0"),
    ("ppo.ent_coef", -0.01, "ppo.ent_coef=-0.01"),
    ("ppo.vf_coef", float("inf"), "ppo.vf_coef=inf"),
    ("ppo.max_grad_norm", 0.0, "ppo.max_grad_norm=0.0"),
    ("ppo.target_kl", -1.0, "ppo.target_kl=-1.0"),
    ("log.run_root", "", "log.run_root=''"),
    ("log.console_interval", -1.0, "log.console_interval=-1.0"),
])
def test_validate_names_field_value_and_fix(path, value, fragment):
    with pytest.raises(ConfigError) as err:
        with_change(path, value).validate()
    assert fragment in str(err.value)


def test_validate_reports_every_error_at_once():
    config = with_change("ppo.gamma", 2.0)
    config.env.num_envs = 0
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert "ppo.gamma=2.0" in str(err.value) and "env.num_envs=0" in str(err.value)


def test_every_preset_is_valid():
    for name, make in PRESETS.items():
        assert make().validate() is not None, name


def test_the_mountaincar_preset_has_rl_zoos_settings():
    c = PRESETS["mountaincar"]()
    assert (c.env.id, c.env.num_envs, c.trainer.num_steps) == ("MountainCar-v0", 16, 16)
    assert (c.ppo.num_minibatches, c.ppo.update_epochs, c.ppo.gae_lambda, c.ppo.ent_coef) == (4, 4, 0.98, 0.0)
    assert (c.trainer.learning_rate, c.trainer.anneal_lr) == (3e-4, False)
    assert c.agent.normalize_obs and c.ppo.normalize_reward
