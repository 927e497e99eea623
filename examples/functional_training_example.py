"""The functional training loop with custom losses and a custom step function.

    python examples/functional_training_example.py
    torchrun --standalone --nproc_per_node 2 examples/functional_training_example.py   # 2 processes, 1 policy

`functional_training_loop` runs one `step_fn` call per epoch. This example wraps the default step
to log an extra metric and to stop early once the policy is good enough, and adds both example
custom losses from cleanmetta.losses. Under torchrun every process runs this script; the loop joins
them into one run, and rank 0 alone writes and prints.
"""

import os
import tempfile

from cleanmetta import distributed
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import small_fast_config
from cleanmetta.curriculum import make_curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.losses import make_curiosity_loss, make_diversity_loss
from cleanmetta.policy import make_policy
from cleanmetta.trainer import default_training_step, functional_training_loop, seed_everything


def custom_training_step(state, components, config, experience):
    metrics = default_training_step(state, components, config, experience)
    components.logger.log_scalars(state.agent_steps, {"custom/advantage_std": experience.advantages.std().item()})
    if components.logger.mean_recent_return >= 200:
        print(f"epoch {state.epoch}: last-20 mean return {components.logger.mean_recent_return:.0f}, stopping early")
        state.stop.requested = True  # the final checkpoint is still written by the step
    return metrics


def main() -> None:
    config = small_fast_config()
    config.experiment_name = "functional_example"
    with tempfile.TemporaryDirectory(prefix="cleanmetta_functional_") as run_root:  # removed at the end
        config.log.run_root = run_root
        config.trainer.total_timesteps = 60_000
        config.log.console_interval = 2.0

        seed_everything(config.seed)
        curriculum = make_curriculum(config.env, config.curriculum)
        probe = make_vecenv(config.env, config.seed, curriculum)
        agent = make_policy(config.agent, probe.single_observation_space, probe.single_action_space)
        probe.close()
        policy_store = PolicyStore(os.path.join(config.log.run_root, config.experiment_name))

        state = functional_training_loop(
            config=config,
            ppo_config=config.ppo,
            policy=agent,
            curriculum=curriculum,
            policy_store=policy_store,
            step_fn=custom_training_step,
            custom_losses=[make_curiosity_loss(0.01), make_diversity_loss(0.01)],
        )
        if distributed.is_main():  # torchrun: rank 0 saved the policies (into its own temporary run root)
            print(f"trained {state.agent_steps:,} agent steps in {state.epoch} epochs; "
                  f"latest policy: {policy_store.latest().uri}")
    distributed.close()  # torchrun: leave the process group (nothing to do in one process)


if __name__ == "__main__":
    main()
