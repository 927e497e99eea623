"""Use cleanmetta's components directly, with your own loop instead of train.py's.

    python examples/direct_training_with_components.py

Builds the env, policy, buffer, collector and PPO optimiser by hand, trains CartPole for a few
seconds with a custom loss, checkpoints the policy and evaluates it.
"""

import tempfile

import torch

from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import AgentConfig, EnvConfig, PPOConfig
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.experience import Experience
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer


def small_logits(policy, obs, actions, rewards, values, advantages):
    """A custom loss: keep the action logits small (a mild regulariser)."""
    logits, _ = policy(obs)
    return 1e-4 * logits.pow(2).mean()


def main() -> None:
    torch.manual_seed(1)
    torch.set_num_threads(1)  # small networks: one thread is fastest
    device = torch.device("cpu")
    vecenv = make_vecenv(EnvConfig(id="CartPole-v1", num_envs=16), seed=1)
    policy = make_policy(AgentConfig(name="mlp"), vecenv.single_observation_space, vecenv.single_action_space)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    experience = Experience.for_env(vecenv, num_steps=32, device=device)

    collector = RolloutCollector(vecenv, policy, experience, device)
    ppo = PPOOptimizer(policy, optimizer, device, PPOConfig(num_minibatches=2))

    returns = []
    for epoch in range(60):
        stats, steps = collector.collect()
        losses = ppo.update(experience, custom_loss_fns=[small_logits])
        returns.extend(stats["episodic_return"].tolist())
        if epoch % 20 == 19:
            print(f"epoch {epoch + 1}: mean return of the last 20 episodes {sum(returns[-20:]) / 20:.1f}, "
                  f"value loss {losses['value_loss']:.2f}, small_logits {losses['small_logits']:.2e}")

    with tempfile.TemporaryDirectory(prefix="cleanmetta_direct_") as run_dir:  # removed at the end
        checkpointer = TrainingCheckpointer(run_dir, PolicyStore(run_dir))
        record = checkpointer.save_policy(policy, epoch=60, metadata={"agent_steps": 60 * experience.batch_size})
        scores = PolicyEvaluator([Simulation("cartpole", "CartPole-v1", episodes=10)]).evaluate(record.policy)
        print(f"saved {record.uri}; evaluated mean return {scores['cartpole'].mean_return:.1f}")


if __name__ == "__main__":
    main()
