"""Structured configs: presets, dataclasses, legacy dicts and YAML files, then a training run.

    python examples/structured_config_training.py
    torchrun --standalone --nproc_per_node 2 examples/structured_config_training.py   # 2 processes, 1 policy
"""

import os
import tempfile

from cleanmetta import distributed
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import AgentConfig, TrainerConfig, TrainingConfig, small_fast_config
from cleanmetta.curriculum import make_curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.policy import make_policy
from cleanmetta.trainer import functional_training_loop, seed_everything


def main() -> None:
    # A preset, adjusted field by field.
    config = small_fast_config()
    config.trainer.total_timesteps = 20_000

    # The same kind of thing spelled as dataclasses...
    custom = TrainingConfig(
        experiment_name="my_experiment",
        agent=AgentConfig(name="mlp", hidden_size=64),
        trainer=TrainerConfig(total_timesteps=20_000),
    )
    # ... as a legacy YAML-shaped dict (PPO keys under `trainer` move to `ppo`) ...
    legacy = TrainingConfig.from_dict({"agent": {"name": "mlp"}, "trainer": {"total_timesteps": 20_000, "gamma": 0.98}})
    assert legacy.ppo.gamma == 0.98 and custom.trainer.total_timesteps == legacy.trainer.total_timesteps

    # ... or as a YAML file; `python train.py --config run.yaml` reads the same file.
    with tempfile.TemporaryDirectory(prefix="cleanmetta_structured_") as run_root:  # removed at the end
        # (examples/config.yaml shows every field with its default and meaning)
        path = os.path.join(run_root, "run.yaml")
        with open(path, "w") as f:
            f.write("experiment_name: yaml_example\nenv:\n  num_envs: 16\ntrainer:\n  total_timesteps: 2e4\n"
                    "  num_steps: 32\n  learning_rate: 1e-3\nppo:\n  num_minibatches: 2\n")
        config = TrainingConfig.from_yaml(path)
        config.log.run_root = run_root
        config.log.console_interval = 1e9
        config.validate()
        print("config from YAML:", config.env, config.trainer, sep="\n  ")

        seed_everything(config.seed)
        curriculum = make_curriculum(config.env, config.curriculum)
        probe = make_vecenv(config.env, config.seed, curriculum)
        policy = make_policy(config.agent, probe.single_observation_space, probe.single_action_space)
        probe.close()
        run_dir = os.path.join(config.log.run_root, config.experiment_name)
        state = functional_training_loop(config, config.ppo, policy, curriculum, PolicyStore(run_dir))
        if distributed.is_main():  # torchrun: rank 0 wrote the run directory
            print(f"{state.agent_steps:,} agent steps; run directory {run_dir} holds "
                  f"{', '.join(sorted(os.listdir(run_dir)))}")
    distributed.close()  # torchrun: leave the process group (nothing to do in one process)


if __name__ == "__main__":
    main()
