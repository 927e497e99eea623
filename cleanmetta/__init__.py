"""cleanmetta: Metta's modular RL components (collector, PPO, evaluator, checkpointer, logger) as
small flat modules, joined by a readable loop in train.py."""

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
