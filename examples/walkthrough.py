# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # PPO on CartPole, one part at a time
#
# `python train.py` runs PPO on CartPole-v1 with the reference settings. This walkthrough builds
# that run's parts one at a time with cleanmetta's own functions, shows what each holds, and checks
# its numbers with plain `assert`s; the last step trains for a few seconds. Run it as
# `python examples/walkthrough.py` (under a minute on a 2-core CPU), or open it as a notebook
# with jupytext. Every number is seeded: two runs print the same output.

# %%
import csv
import importlib.util
import math
import os
import subprocess
import sys
import tempfile

import torch
from torch.distributions import Categorical

from cleanmetta.collector import RolloutCollector
from cleanmetta.config import EnvConfig, TrainingConfig
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.optimizers import make_optimizer
from cleanmetta.plot import plot_curves, read_episodes
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.trainer import learning_rate_at, num_epochs_for, seed_everything

try:
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
except NameError:  # a notebook has no __file__; jupytext opens it from examples/
    ROOT = os.path.dirname(os.getcwd())
config = TrainingConfig()  # what `python train.py` runs, with no flag
device = torch.device("cpu")
seed_everything(config.seed)
torch.set_num_threads(config.torch_threads)

# %% [markdown]
# ## 1. The settings
#
# Every PPO coefficient of the default run, its value and the flag that changes it
# (`cleanmetta/config.py`: `TrainerConfig`, `PPOConfig`). They are CleanRL's ppo.py defaults, so
# a default run compares one to one with its published curves.

# %%
CLEANRL = {  # CleanRL's ppo.py Args (adam_eps: its Adam line), by our section and field name
    "env.num_envs": 4, "trainer.total_timesteps": 500_000, "trainer.num_steps": 128,
    "trainer.learning_rate": 2.5e-4, "trainer.anneal_lr": True, "trainer.adam_eps": 1e-5,
    "ppo.gamma": 0.99, "ppo.gae_lambda": 0.95, "ppo.update_epochs": 4, "ppo.num_minibatches": 4,
    "ppo.norm_adv": True, "ppo.clip_coef": 0.2, "ppo.clip_vloss": True, "ppo.ent_coef": 0.01,
    "ppo.vf_coef": 0.5, "ppo.max_grad_norm": 0.5, "ppo.target_kl": None,
}
print(f"{'setting':<24} {'value':>8}  flag")
for name, expected in CLEANRL.items():
    section, field = name.split(".")
    value = getattr(getattr(config, section), field)
    print(f"{name:<24} {value!s:>8}  --{section}.{field.replace('_', '-')}")
    assert value == expected, (name, value, expected)
batch_size = config.env.num_envs * config.trainer.num_steps
print(f"batch: {batch_size} agent steps per rollout, minibatches of {batch_size // config.ppo.num_minibatches}")
assert (batch_size, batch_size // config.ppo.num_minibatches) == (512, 128)

# %% [markdown]
# ## 2. Env, policy, buffer
#
# `cleanmetta/envs.py:make_vecenv` builds 4 seeded CartPoles in gymnasium's native vector env;
# `cleanmetta/policy.py:make_policy` picks the "mlp" network for a 4-number observation: CleanRL's
# agent, two separate MLPs of 64 tanh units (`cleanmetta/networks.py:MLPPolicy`). `print(policy)`
# names its parts; the parameters below are the layers. `Experience.for_env` preallocates the
# rollout buffer once, `[T, B, ...]` with T = 128 steps and B = 4 agents.

# %%
vecenv = make_vecenv(config.env, config.seed)
policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
print(policy)
for name, parameter in policy.named_parameters():
    print(f"  {name:<16} {tuple(parameter.shape)}")
actor, critic = (4 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2), (4 * 64 + 64) + (64 * 64 + 64) + (64 * 1 + 1)
assert sum(p.numel() for p in policy.parameters()) == actor + critic  # CleanRL's agent: 4-64-64-2 and 4-64-64-1

experience = Experience.for_env(vecenv, config.trainer.num_steps, device)
T, B = experience.num_steps, experience.num_agents
for name, column in vars(experience).items():
    if isinstance(column, torch.Tensor):
        print(f"  experience.{name:<11} {str(list(column.shape)):<13} {column.dtype}")
assert (T, B) == (128, 4)
assert experience.obs.shape == (T, B, 4) and experience.actions.shape == (T, B, 1)
assert experience.rewards.shape == experience.valid.shape == (T, B)
observation_space, action_space = vecenv.single_observation_space, vecenv.single_action_space
vecenv.close()

# %% [markdown]
# ## 3. One rollout around a time limit
#
# A time limit of 20 steps (the task string `CartPole-v1:max_episode_steps=20`, docs/environments.md)
# makes truncations common. `cleanmetta/collector.py:RolloutCollector.collect` fills the buffer.
# Environments autoreset the NEXT_STEP way: the step after an episode ends is an autoreset step,
# which stores the episode's final observation, ignores its action and gets reward 0. The table at
# the top of `cleanmetta/experience.py` says what each column holds; here is one env's rollout
# around a truncation, with `next_values()[t]` = V(obs[t + 1]). A truncation is done (no advantage
# flows back across it) but not terminal: its return is bootstrapped with the value of the
# episode's final observation, which the autoreset step stores. CleanRL's ppo.py treats it as a
# termination.

# %%
short = make_vecenv(EnvConfig(id="CartPole-v1:max_episode_steps=20"), config.seed)
collector = RolloutCollector(short, policy, experience, device)
stats, agent_steps = collector.collect()
print(f"{agent_steps} agent steps; episode lengths {stats['episodic_length'].tolist()}")
terminals, dones, valid, rewards = experience.terminals, experience.dones, experience.valid, experience.rewards
t, b = next((t, b) for t in range(2, T - 2) for b in range(B) if dones[t, b] and not terminals[t, b])  # a truncation
next_values = experience.next_values()
print(f"env {b}, steps {t - 2} to {t + 2}:")
print("   t  reward  terminal  done  valid  next_value")
for step in range(t - 2, t + 3):
    note = {t: "truncation", t + 1: "autoreset step", t + 2: "the next episode's first step"}.get(step, "")
    print(f"{step:>4} {rewards[step, b]:>7.0f} {terminals[step, b]:>9.0f} {dones[step, b]:>5.0f} "
          f"{valid[step, b]:>6.0f} {next_values[step, b]:>11.3f}  {note}".rstrip())
assert (terminals[t, b], dones[t, b], valid[t, b]) == (0, 1, 1)  # done, not terminal, trained on
assert (rewards[t + 1, b], dones[t + 1, b], valid[t + 1, b]) == (0, 0, 0)  # autoreset: reward 0, never trained on
assert valid[t + 2, b] == 1
assert (terminals <= dones).all()  # a termination is done too
# the autoreset step stores the truncated episode's final observation, whose value bootstraps the truncation
torch.testing.assert_close(next_values[t, b], policy.get_value(experience.obs[t + 1, b][None])[0])
assert experience.obs[t + 2, b].abs().max() <= 0.05  # a new CartPole episode starts within +-0.05
assert stats["episodic_length"].max() == 20 and (stats["episodic_length"] < 20).any()  # truncations and terminations
assert (1 - valid).sum() == dones[:-1].sum()  # one autoreset step after every done (but the rollout's last)
short.close()

# %% [markdown]
# ## 4. GAE on five steps, by hand
#
# Two envs, five steps each: env 0 is truncated at step 1, env 1 terminates there; step 2 is each
# one's autoreset step. `gae_by_hand` is CleanRL's ppo.py loop with one change: the bootstrap
# reads `terminals` and the carry reads `dones`. CleanRL's loop reads one `nextnonterminal = 1 -
# dones[t + 1]` for both (its `dones[t + 1]` is our `dones[t]`), so it gives env 0 what env 1 gets.
# `Experience.compute_advantages` runs `cleanmetta/experience.py:discounted_advantages`, the same
# recursion on tensors.

# %%
gamma, gae_lambda = config.ppo.gamma, config.ppo.gae_lambda


def gae_by_hand(rewards, values, last_value, terminals, dones):
    advantages, lastgaelam = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        nextvalues = values[t + 1] if t + 1 < len(rewards) else last_value
        nextnonterminal = 1.0 - terminals[t]  # bootstrap unless the episode ended for good
        nextnotdone = 1.0 - dones[t]  # no advantage flows back across an episode's end
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnotdone * lastgaelam
    return advantages


rewards5, values5, last_value5 = [1.0, 1.0, 0.0, 1.0, 1.0], [0.5, 0.6, 0.7, 0.8, 0.9], 1.0
columns = {  # env: terminals, dones, valid
    0: ([0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 1, 1]),  # truncated at step 1
    1: ([0, 1, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 1, 1]),  # terminated at step 1
}
gae = Experience(5, 2, observation_space, action_space)
for env, (terms, ends, keep) in columns.items():
    gae.rewards[:, env], gae.values[:, env] = torch.tensor(rewards5), torch.tensor(values5)
    gae.terminals[:, env], gae.dones[:, env] = torch.tensor(terms), torch.tensor(ends)
    gae.valid[:, env] = torch.tensor(keep)
gae.last_value[:] = last_value5
gae.compute_advantages(gamma, gae_lambda)
by_hand = torch.tensor([gae_by_hand(rewards5, values5, last_value5, *columns[env][:2]) for env in columns]).T
print("advantages [T, B] by hand:\n", by_hand, "\ncompute_advantages:\n", gae.advantages)
torch.testing.assert_close(gae.advantages, by_hand)
torch.testing.assert_close(gae.returns, gae.advantages + gae.values)
# at the truncation, the advantage is one TD error that bootstraps V(final observation) = values[2]
assert math.isclose(by_hand[1, 0], rewards5[1] + gamma * values5[2] - values5[1], rel_tol=1e-6)
assert math.isclose(by_hand[1, 0] - by_hand[1, 1], gamma * values5[2], rel_tol=1e-6)  # the termination does not
torch.testing.assert_close(by_hand[3:, 0], by_hand[3:, 1])  # the next episode does not see how the last one ended
assert len(gae.batch().advantages) == 8  # the update trains on the valid steps: 10 less 2 autoreset steps

# %% [markdown]
# ## 5. One minibatch of the update
#
# `PPOOptimizer.update` (`cleanmetta/ppo.py`) runs 4 epochs of 4 shuffled minibatches on the
# rollout of step 3. On a minibatch of that rollout (a quarter of its valid steps, drawn at random)
# `PPOOptimizer.compute_ppo_loss` gives the loss; `cleanrl_loss` is the same loss in plain torch,
# written the way CleanRL's ppo.py writes it. After one update at the default rate the ratios of new
# to old probabilities stay inside 1 +- clip_coef (clipfrac 0, usual early on CartPole); twenty
# Adam steps at 100x the rate then move the policy far enough for both clips to act.

# %%
ppo = PPOOptimizer(policy, make_optimizer(policy, config.trainer, device), device, config.ppo)
update_stats = ppo.update(experience)
print("update:", {name: round(value, 4) for name, value in update_stats.items()})
batch = experience.batch()  # the rollout's valid steps, flat [N, ...]
mb = batch.select(torch.randperm(len(batch.obs))[:len(batch.obs) // config.ppo.num_minibatches])  # CleanRL's mb_inds
clip_coef, ent_coef, vf_coef = config.ppo.clip_coef, config.ppo.ent_coef, config.ppo.vf_coef


def cleanrl_loss(obs, actions, logprobs, advantages, returns, values):
    logits, newvalue = policy(obs)  # the actor's logits and the critic's value
    dist = Categorical(logits=logits)
    newlogprob, entropy = dist.log_prob(actions.squeeze(-1)), dist.entropy()
    logratio = newlogprob - logprobs
    ratio = logratio.exp()
    approx_kl = ((ratio - 1) - logratio).mean()
    clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    v_loss_unclipped = (newvalue - returns) ** 2
    v_clipped = values + torch.clamp(newvalue - values, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return pg_loss, v_loss, entropy_loss, loss, approx_kl, clipfrac


def compare(title: str):
    losses = ppo.compute_ppo_loss(mb.obs, mb.actions, mb.logprobs, mb.advantages, mb.returns, mb.values)
    plain = cleanrl_loss(mb.obs, mb.actions, mb.logprobs, mb.advantages, mb.returns, mb.values)
    value_clipped = ((policy.get_value(mb.obs) - mb.values).abs() > clip_coef).float().mean()
    print(f"{title}, minibatch of {len(mb.advantages)}: {'cleanmetta':>11} {'plain torch':>11}")
    for name, ours, theirs in zip(losses._fields, losses, plain):
        print(f"  {name:<13} {ours.item():>11.5f} {theirs.item():>11.5f}")
        torch.testing.assert_close(ours, theirs)
    print(f"  values moved past the value clip: {value_clipped:.2f}")
    return losses, value_clipped


losses, _ = compare("after one update")
assert losses.approx_kl > 0 and losses.clipfrac == 0  # the policy moved, within the clip
far = torch.optim.Adam(policy.parameters(), lr=100 * config.trainer.learning_rate)
for _ in range(20):
    far.zero_grad()
    ppo.compute_ppo_loss(mb.obs, mb.actions, mb.logprobs, mb.advantages, mb.returns, mb.values).total_loss.backward()
    far.step()
losses, value_clipped = compare("after 20 steps at 100x the rate")
assert losses.clipfrac > 0 and value_clipped > 0  # both clips act, and the two losses still agree

# %% [markdown]
# ## 6. The learning rate
#
# `cleanmetta/trainer.py:learning_rate_at` anneals the rate linearly from 2.5e-4 to 0 over the
# run's epochs, CleanRL's schedule: epoch e of n gets 2.5e-4 x (1 - e / n). train.py sets it before
# each rollout.

# %%
num_epochs = num_epochs_for(config, experience)  # 500,000 steps / 512 per rollout, rounded up
assert num_epochs == math.ceil(500_000 / 512) == 977
for epoch in (0, 1, num_epochs // 2, num_epochs - 1):
    rate = learning_rate_at(config.trainer, epoch, num_epochs)
    print(f"epoch {epoch:>3}: learning rate {rate:.3e}")
    assert math.isclose(rate, 2.5e-4 * (1 - epoch / num_epochs))

# %% [markdown]
# ## 7. A short run
#
# `python train.py` itself, with 25,000 agent steps (49 rollouts, over which the learning rate
# anneals to 0; the default is 500,000), a temporary run root removed at the end, and no
# TensorBoard files. Its `episodes.csv` has one row per finished episode (agent steps at the end of
# its rollout, seconds, return, length); below, the mean return of each epoch's episodes.
# CartPole's return is the episode's length, at most 500. With matplotlib installed,
# `cleanmetta/plot.py:plot_curves` also draws the curve into the run root.

# %%
with tempfile.TemporaryDirectory(prefix="cleanmetta_walkthrough_") as run_root:  # removed at the end
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--trainer.total-timesteps", "25000",
               "--log.run-root", run_root, "--experiment-name", "walkthrough", "--log.no-tensorboard"]
    print(" ".join(command[1:]).replace(ROOT + os.sep, ""), flush=True)  # before train.py's own output
    subprocess.run(command, cwd=ROOT, check=True)
    run_dir = os.path.join(run_root, "walkthrough")
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        episodes = [(int(row["agent_steps"]), float(row["return"])) for row in csv.DictReader(f)]
    per_epoch: dict[int, list[float]] = {}
    for steps, episode_return in episodes:
        per_epoch.setdefault(steps // batch_size, []).append(episode_return)
    print("epoch  agent steps  episodes  mean return")
    for epoch, returns in sorted(per_epoch.items()):
        mean = sum(returns) / len(returns)
        print(f"{epoch:>5} {epoch * batch_size:>12,} {len(returns):>9} {mean:>12.1f}  {'#' * round(mean / 5)}")
    first = [r for epoch in range(1, 6) for r in per_epoch.get(epoch, [])]
    last = [r for epoch in range(40, 50) for r in per_epoch.get(epoch, [])]
    print(f"mean return, epochs 1-5: {sum(first) / len(first):.1f}; epochs 40-49: {sum(last) / len(last):.1f}")
    assert sum(last) / len(last) > 3 * sum(first) / len(first)  # it learns
    if importlib.util.find_spec("matplotlib"):  # optional (the plot extra): the curve as a picture
        print("learning curve:", plot_curves({"walkthrough": [read_episodes(run_dir)]},
                                             os.path.join(run_root, "curve.png")))
