import os
import subprocess
import sys

import pytest

from cleanmetta.config import ConfigError, TrainingConfig
from train import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_from_dict_builds_nested_sections_and_keeps_other_defaults():
    config = TrainingConfig.from_dict({"agent": {"name": "simple_cnn"}, "trainer": {"total_timesteps": 10_000_000}})
    assert config.agent.name == "simple_cnn" and config.agent.hidden_size == 64
    assert config.trainer.total_timesteps == 10_000_000 and config.trainer.num_steps == 128
    assert config.total_timesteps == 10_000_000


def test_from_dict_moves_legacy_ppo_keys_out_of_the_trainer_section():
    config = TrainingConfig.from_dict({"trainer": {"gamma": 0.977, "clip_coef": 0.1, "update_epochs": 2,
                                                   "learning_rate": 3e-4}})
    assert (config.ppo.gamma, config.ppo.clip_coef, config.ppo.update_epochs) == (0.977, 0.1, 2)
    assert config.trainer.learning_rate == 3e-4


def test_unknown_key_names_the_key_and_its_closest_spelling():
    with pytest.raises(ConfigError, match="unknown config key 'trainer.total_timestep'; did you mean "
                                          "'trainer.total_timesteps'\\?"):
        TrainingConfig.from_dict({"trainer": {"total_timestep": 5}})
    with pytest.raises(ConfigError, match="unknown config key 'agnet'; did you mean 'agent'\\?"):
        TrainingConfig.from_dict({"agnet": {}})


def test_wrong_types_are_errors_naming_the_field():
    with pytest.raises(ConfigError, match="trainer.total_timesteps='lots' must be of type int"):
        TrainingConfig.from_dict({"trainer": {"total_timesteps": "lots"}})
    with pytest.raises(ConfigError, match="env must be a mapping"):
        TrainingConfig.from_dict({"env": "CartPole-v1"})
    assert TrainingConfig.from_dict({"ppo": {"gamma": 1}}).ppo.gamma == 1.0


def test_names_from_a_fixed_list_are_typed_on_read_and_their_choices_checked_by_validate():
    with pytest.raises(ConfigError, match="agent.name=3 must be of type str"):
        TrainingConfig.from_dict({"agent": {"name": 3}})
    with pytest.raises(ConfigError, match="ppo.custom_losses=7 must be of type str"):
        TrainingConfig.from_dict({"ppo": {"custom_losses": [7]}})
    config = TrainingConfig.from_dict({"agent": {"name": "transformer"}, "ppo": {"custom_losses": ["diversity"]}})
    assert config.ppo.custom_losses == ["diversity"]
    with pytest.raises(ConfigError, match="agent.name='transformer' is not a known network"):
        config.validate()


def test_from_yaml_reads_yaml_and_run_directory_json(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("experiment_name: yaml_run\nenv:\n  id: Acrobot-v1\ntrainer:\n  learning_rate: 1e-3\n"
                    "ppo:\n  custom_losses: [diversity]\n")
    config = TrainingConfig.from_yaml(str(path))
    assert (config.experiment_name, config.env.id, config.trainer.learning_rate) == ("yaml_run", "Acrobot-v1", 1e-3)
    assert config.ppo.custom_losses == ["diversity"]
    (tmp_path / "config.json").write_text(__import__("json").dumps(config.to_dict()))
    assert TrainingConfig.from_yaml(str(tmp_path / "config.json")) == config

    (tmp_path / "bad.yaml").write_text("ppo:\n  clip_coeff: 0.3\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config key 'ppo.clip_coeff'; did you mean 'ppo.clip_coef'"):
        TrainingConfig.from_yaml(str(tmp_path / "bad.yaml"))


def test_config_file_first_then_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 5\ntrainer:\n  total_timesteps: 1000\n  num_steps: 64\n")
    config = parse_config(["--config", str(path), "--trainer.total-timesteps", "2048"])
    assert config.seed == 5 and config.trainer.num_steps == 64
    assert config.trainer.total_timesteps == 2048


def test_train_script_reports_a_bad_config_file_without_a_traceback(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  totl_timesteps: 5\n")
    out = subprocess.run([sys.executable, "train.py", "--config", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "unknown config key 'trainer.totl_timesteps'; did you mean 'trainer.total_timesteps'?" in out.stderr


def test_preset_flag_starts_from_the_named_preset():
    from cleanmetta.config import small_fast_config

    config = parse_config(["--preset", "small_fast", "--seed", "4"])
    expected = small_fast_config()
    expected.seed = 4
    assert config == expected
    with pytest.raises(ConfigError, match="--preset 'fastest' is not a preset; choose one of"):
        parse_config(["--preset", "fastest"])


def test_base_flags_take_the_equals_form_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 7\n")
    assert parse_config(["--preset=small_fast"]) == parse_config(["--preset", "small_fast"])
    assert parse_config([f"--config={path}", "--seed=8"]).seed == 8
    assert parse_config([f"--config={path}"]).seed == 7
    with pytest.raises(ConfigError, match="--config needs a value: --config FILE"):
        parse_config(["--config"])


def test_help_lists_the_base_flags_and_the_preset_names_and_survives_a_closed_pipe():
    from cleanmetta.presets import PRESETS

    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert all(flag in out.stdout for flag in ("--preset NAME", "--config FILE", "--resume RUN"))
    assert all(name in out.stdout for name in PRESETS)
    # `python train.py --help | head -1`: the reader closes the pipe after a line
    piped = subprocess.run(f"{sys.executable} train.py --help | head -1", shell=True, cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert piped.stdout.startswith("usage: train.py") and piped.stderr == ""


def test_numbers_in_e_notation_are_ints_where_exact_and_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  total_timesteps: 2e4\n  learning_rate: 3e-4\n")
    config = TrainingConfig.from_yaml(str(path))
    assert config.trainer.total_timesteps == 20000 and type(config.trainer.total_timesteps) is int
    assert config.trainer.learning_rate == 3e-4
    path.write_text("trainer:\n  total_timesteps: 2.5\n")
    with pytest.raises(ConfigError, match="trainer.total_timesteps=2.5 must be of type int"):
        TrainingConfig.from_yaml(str(path))
    path.write_text("trainer:\n  total_timesteps: [1\nppo: {\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3: not valid YAML: expected ',' or ']'"):
        TrainingConfig.from_yaml(str(path))
    bad_json = tmp_path / "config.json"
    bad_json.write_text('{"seed": 1,\n "trainer": }')
    with pytest.raises(ConfigError, match=r"config.json:2: not valid JSON"):
        TrainingConfig.from_yaml(str(bad_json))


def yaml_keys(data, prefix=""):
    return {key for name, value in data.items()
            for key in ([f"{prefix}{name}"] + (sorted(yaml_keys(value, f"{prefix}{name}.")) if isinstance(value, dict)
                                               else []))}


def test_the_example_config_file_holds_every_field_with_its_default():
    import dataclasses

    import yaml

    path = os.path.join(ROOT, "examples", "config.yaml")
    assert TrainingConfig.from_yaml(path) == TrainingConfig()
    with open(path) as f:
        keys = yaml_keys(yaml.safe_load(f))
    expected = yaml_keys(dataclasses.asdict(TrainingConfig()))
    assert keys == expected, expected ^ keys
