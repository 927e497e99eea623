import ast
import dataclasses
import inspect
import re
import textwrap
import typing

import pytest
import tyro

import train
from cleanmetta.config import ConfigError, TrainingConfig, small_fast_config
from cleanmetta.presets import PRESETS


def test_defaults_are_the_cartpole_reference_settings():
    c = TrainingConfig().validate()
    assert (c.env.id, c.env.num_envs, c.trainer.num_steps) == ("CartPole-v1", 4, 128)
    assert (c.ppo.num_minibatches, c.ppo.update_epochs) == (4, 4)
    assert (c.trainer.learning_rate, c.trainer.anneal_lr, c.trainer.total_timesteps) == (2.5e-4, True, 500_000)
    assert (c.ppo.gamma, c.ppo.gae_lambda, c.ppo.clip_coef) == (0.99, 0.95, 0.2)
    assert (c.ppo.ent_coef, c.ppo.vf_coef, c.ppo.max_grad_norm) == (0.01, 0.5, 0.5)


def changes(config, default=None, prefix="") -> dict:
    """The fields where `config` differs from TrainingConfig(), as {'section.field': value}."""
    default = TrainingConfig() if default is None else default
    changed = {}
    for f in dataclasses.fields(config):
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            changed.update(changes(value, base, f"{prefix}{f.name}."))
        elif value != base:
            changed[f"{prefix}{f.name}"] = value
    return changed


def test_small_fast_config_trades_comparability_for_wall_clock_time_on_cartpole():
    fast, reference = small_fast_config(), TrainingConfig()
    assert changes(fast) == {"env.num_envs": 16, "trainer.total_timesteps": 150_000, "trainer.num_steps": 32,
                             "trainer.learning_rate": 1e-3, "ppo.num_minibatches": 2, "log.console_interval": 2.0}
    # its docstring: more environments, a shorter rollout, fewer and larger minibatches, a higher learning rate
    assert fast.env.num_envs > reference.env.num_envs and fast.trainer.num_steps < reference.trainer.num_steps
    assert fast.ppo.num_minibatches < reference.ppo.num_minibatches
    minibatch = fast.env.num_envs * fast.trainer.num_steps // fast.ppo.num_minibatches
    assert minibatch > reference.env.num_envs * reference.trainer.num_steps // reference.ppo.num_minibatches
    assert fast.trainer.learning_rate > reference.trainer.learning_rate


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


def field_docstrings(cls=TrainingConfig, prefix="--") -> dict[str, str | None]:
    """{flag: the docstring under its field in config.py, whitespace collapsed (None: it has none)} for
    every field of `cls` and of its sections."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {node.target.id: " ".join(after.value.value.split()) for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)}
    hints, flags = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            flags.update(field_docstrings(hints[f.name], f"--{f.name}."))
        else:
            flags[prefix + f.name.replace("_", "-")] = docs.get(f.name)
    return flags


def help_under_each_flag(text: str) -> dict[str, str]:
    """{flag: the help printed under it, whitespace collapsed} from tyro's --help (boxed or not)."""
    shown, flag = {}, None
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():  # colours, if the terminal asks for them
        inner = line.rstrip().strip("│").rstrip()
        indent = len(inner) - len(inner.lstrip())
        starts = re.match(r" {0,2}(--[a-z][\w.-]*)", inner)  # '  --ppo.norm-adv, --ppo.no-norm-adv'
        if starts:
            flag = starts.group(1)
            shown[flag] = ""
        elif flag and indent >= 4:  # its help, indented under it
            shown[flag] += " " + inner.strip()
        else:
            flag = None
    return {flag: " ".join(text.split()) for flag, text in shown.items()}


def test_cli_help_documents_every_field(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")  # one column of sections
    with pytest.raises(SystemExit):
        train.parse_config(["--help"])  # python train.py --help
    shown = help_under_each_flag(capsys.readouterr().out)
    for flag, docstring in field_docstrings().items():
        assert docstring, f"{flag}'s field has no docstring"
        assert docstring in shown.get(flag, ""), f"{flag}: {docstring!r} is not its help"


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


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid(name):
    config = PRESETS[name]()
    assert config.validate() is config  # validate() raises on the first inconsistent preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_what_its_flag_and_its_saved_config_give(name):
    config = PRESETS[name]()
    assert train.parse_config(["--preset", name]) == config
    assert TrainingConfig.from_dict(config.to_dict()) == config  # a run's config.json, read back on --resume


PRESET_CHANGES = {  # what each preset's docstring promises, against TrainingConfig()'s reference settings
    "default": {},
    "mountaincar": {"env.id": "MountainCar-v0", "env.num_envs": 16, "agent.normalize_obs": True,
                    "trainer.num_steps": 16, "trainer.learning_rate": 3e-4, "trainer.anneal_lr": False,
                    "ppo.gae_lambda": 0.98, "ppo.ent_coef": 0.0, "ppo.normalize_reward": True},
    "continuous": {"env.id": "Pendulum-v1", "env.num_envs": 1, "agent.normalize_obs": True,
                   "trainer.total_timesteps": 1_000_000, "trainer.num_steps": 2048, "trainer.learning_rate": 3e-4,
                   "ppo.num_minibatches": 32, "ppo.update_epochs": 10, "ppo.ent_coef": 0.0,
                   "ppo.normalize_reward": True},
    "mettagrid": {"env.id": "mettagrid/hearts", "env.num_envs": 16, "trainer.learning_rate": 1e-3,
                  "ppo.update_epochs": 2, "ppo.ent_coef": 0.005},
    "mettagrid_lstm": {"env.id": "mettagrid/hearts", "env.num_envs": 16, "trainer.learning_rate": 1e-3,
                       "ppo.update_epochs": 2, "ppo.ent_coef": 0.005, "agent.lstm_size": 64,
                       "trainer.bptt_horizon": 32},
    "cartpole_lstm": {"env.id": "CartPoleNoVel-v1", "env.num_envs": 8, "agent.name": "mlp",
                      "agent.normalize_obs": True, "agent.lstm_size": 64, "trainer.total_timesteps": 100_000,
                      "trainer.num_steps": 32, "trainer.learning_rate": 1e-3, "ppo.num_minibatches": 1,
                      "ppo.update_epochs": 20, "ppo.gamma": 0.98, "ppo.gae_lambda": 0.8, "ppo.ent_coef": 0.0},
    "atari": {"torch_threads": 2, "env.id": "ALE/Breakout-v5", "env.num_envs": 8,
              "env.kwargs": "repeat_action_probability=0.0,episodic_life=true,reward_clipping=true",
              "agent.name": "simple_cnn", "agent.hidden_size": 512, "trainer.total_timesteps": 10_000_000,
              "ppo.clip_coef": 0.1},
}


@pytest.mark.parametrize("name", sorted(PRESET_CHANGES))
def test_each_preset_changes_the_reference_settings_as_its_docstring_says(name):
    assert changes(PRESETS[name]()) == PRESET_CHANGES[name]


def test_every_preset_has_each_of_its_changes_spelled_out():
    """With small_fast's test above, every field a preset (presets.py's data) changes is written in a test."""
    assert set(PRESETS) == set(PRESET_CHANGES) | {"small_fast"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_value_has_the_type_of_its_field(name):
    """presets.py's data is read as YAML is: an integer written for a float field arrives as a float."""
    def types(config: dict) -> dict:
        return {key: types(value) if isinstance(value, dict) else type(value) for key, value in config.items()}

    assert types(PRESETS[name]().to_dict()) == types(TrainingConfig().to_dict())


def test_the_mountaincar_preset_has_rl_zoos_settings():
    c = PRESETS["mountaincar"]()
    assert (c.env.id, c.env.num_envs, c.trainer.num_steps) == ("MountainCar-v0", 16, 16)
    assert (c.ppo.num_minibatches, c.ppo.update_epochs, c.ppo.gae_lambda, c.ppo.ent_coef) == (4, 4, 0.98, 0.0)
    assert (c.trainer.learning_rate, c.trainer.anneal_lr) == (3e-4, False)
    assert c.agent.normalize_obs and c.ppo.normalize_reward


def test_presets_keep_their_old_import_path_from_config():
    # They moved to presets.py (config.py imports nothing of ours); code written against
    # `from cleanmetta.config import mettagrid_config` keeps running and gets the same functions.
    from cleanmetta import config, presets
    from cleanmetta.config import PRESETS as old_presets, mettagrid_config as old_mettagrid_config
    assert old_presets is presets.PRESETS and old_mettagrid_config is presets.mettagrid_config
    for name, make in presets.PRESETS.items():
        if make.__module__ == "cleanmetta.presets":
            assert getattr(config, make.__name__) is make, name
    assert presets.PRESETS["small_fast"] is config.small_fast_config
