"""cleanmetta: Metta's modular RL components (collector, PPO, evaluator, checkpointer, logger) as
small flat modules, joined by a readable loop in train.py."""

from cleanmetta import config as _config
from cleanmetta import presets as _presets
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import (AgentConfig, ConfigError, EnvConfig, LogConfig, PPOConfig, TrainerConfig,
                               TrainingConfig, small_fast_config)
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.log import StatsLogger
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOLosses, PPOOptimizer
from cleanmetta.spaces import UnsupportedEnvError

__all__ = [
    "AgentConfig", "ConfigError", "EnvConfig", "Experience", "LogConfig", "PPOConfig", "PPOLosses",
    "PPOOptimizer", "RolloutCollector", "StatsLogger", "TrainerConfig", "TrainingConfig",
    "UnsupportedEnvError", "make_policy", "make_vecenv", "small_fast_config",
]

# The presets lived in config.py until they got a module of their own (config imports nothing of
# ours, so it cannot import them back): their old import path keeps working.
for _name in ("PRESETS", "atari_config", "cartpole_lstm_config", "continuous_config", "mettagrid_config",
              "mettagrid_lstm_config", "mountaincar_config"):
    setattr(_config, _name, getattr(_presets, _name))
