"""Stable-Baselines3 PPO baseline for the cleanmetta benchmark.

Trains SB3 PPO with the hyper-parameters of one of cleanmetta's presets and writes every finished
episode plus timing and memory figures to a JSON file. Both settings use Tanh 64x64 actor and
critic, orthogonal init, Adam eps 1e-5, a learning rate annealed linearly to 0, GAE 0.95, clip 0.2
for the policy and the value loss, max grad norm 0.5:

  default      CleanRL's ppo.py CartPole reference: 4 envs x 128 steps, 4 minibatches, 4 epochs,
               lr 2.5e-4, entropy 0.01.
  continuous   CleanRL's ppo_continuous_action.py: 1 env x 2048 steps, 32 minibatches, 10 epochs,
               lr 3e-4, no entropy bonus, VecNormalize (observations and rewards, clipped to 10).
  recurrent    cleanmetta's `cartpole_lstm` preset (rl-zoo's settings for CartPoleNoVel-v1) with
               sb3-contrib's RecurrentPPO: 8 envs x 32 steps, 1 minibatch, 20 epochs, lr 1e-3, gamma
               0.98, GAE 0.8, no entropy bonus, VecNormalize (observations only); one LSTM of 64 units
               shared by actor and critic, as cleanmetta's (sb3-contrib then trains it through the
               actor only), then the Tanh 64x64 heads above. Needs `pip install sb3-contrib`.
  recurrent-zoo  the same, with rl-zoo's network for this task instead: a second LSTM for the
               critic, ReLU heads of one 64-unit layer, default (not orthogonal) initialisation.
"""

import time

START = time.perf_counter()  # before heavy imports, so wall_seconds includes them

import argparse
import json
import resource

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

SETTINGS = {
    "default": dict(n_envs=4, n_steps=128, minibatches=4, n_epochs=4, learning_rate=2.5e-4, ent_coef=0.01),
    "continuous": dict(n_envs=1, n_steps=2048, minibatches=32, n_epochs=10, learning_rate=3e-4, ent_coef=0.0),
    "recurrent": dict(n_envs=8, n_steps=32, minibatches=1, n_epochs=20, learning_rate=1e-3, ent_coef=0.0,
                      gamma=0.98, gae_lambda=0.8),
}
SETTINGS["recurrent-zoo"] = SETTINGS["recurrent"]
NETWORKS = {  # policy_kwargs on top of the common ones
    "recurrent": dict(lstm_hidden_size=64, shared_lstm=True, enable_critic_lstm=False),
    "recurrent-zoo": dict(lstm_hidden_size=64, shared_lstm=False, enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64]),
                          activation_fn=torch.nn.ReLU, ortho_init=False),
}


class EpisodeRecorder(BaseCallback):
    """Collects [step, seconds, return, length] for every finished episode."""

    def __init__(self):
        super().__init__()
        self.episodes = []
        self.start = time.perf_counter()

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()  # episode times count from the start of training

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            ep = info.get("episode")  # added by the Monitor wrapper on episode end
            if ep is not None:
                seconds = time.perf_counter() - self.start
                self.episodes.append([self.num_timesteps, seconds, float(ep["r"]), int(ep["l"])])
        return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="CartPole-v1")
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--out", required=True, help="path of the JSON result")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    settings = SETTINGS[args.settings]
    recurrent = args.settings.startswith("recurrent")
    if recurrent:
        import cleanmetta.envs  # noqa: F401  (registers CartPoleNoVel-v1)
        from sb3_contrib import RecurrentPPO
    envs = make_vec_env(args.env_id, n_envs=settings["n_envs"], seed=args.seed)  # DummyVecEnv + Monitor
    if args.settings == "continuous":  # Monitor sits inside, so recorded returns stay raw
        envs = VecNormalize(envs, norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0, gamma=0.99)
    if recurrent:
        envs = VecNormalize(envs, norm_obs=True, norm_reward=False, clip_obs=10.0)
    lr = settings["learning_rate"]
    policy_kwargs = dict(
        net_arch=dict(pi=[64, 64], vf=[64, 64]),
        activation_fn=torch.nn.Tanh,
        ortho_init=True,
        log_std_init=0.0,  # Box actions: the learned log-std starts at 0, as in cleanmetta
        optimizer_kwargs=dict(eps=1e-5),
    )
    policy_kwargs.update(NETWORKS.get(args.settings, {}))
    model = (RecurrentPPO if recurrent else PPO)(
        "MlpLstmPolicy" if recurrent else "MlpPolicy",
        envs,
        learning_rate=lambda progress_remaining: progress_remaining * lr,
        n_steps=settings["n_steps"],
        batch_size=settings["n_envs"] * settings["n_steps"] // settings["minibatches"],
        n_epochs=settings["n_epochs"],
        gamma=settings.get("gamma", 0.99),
        gae_lambda=settings.get("gae_lambda", 0.95),
        clip_range=0.2,
        clip_range_vf=0.2,  # cleanmetta and CleanRL clip the value loss too
        ent_coef=settings["ent_coef"],
        vf_coef=0.5,
        max_grad_norm=0.5,
        normalize_advantage=True,
        policy_kwargs=policy_kwargs,
        seed=args.seed,
        device="cpu",
        verbose=0,
    )

    recorder = EpisodeRecorder()
    train_start = time.perf_counter()
    model.learn(total_timesteps=args.total_timesteps, callback=recorder)
    train_seconds = time.perf_counter() - train_start

    result = {
        "library": "sb3",
        "env_id": args.env_id,
        "seed": args.seed,
        "total_timesteps": args.total_timesteps,
        "wall_seconds": time.perf_counter() - START,
        "train_seconds": train_seconds,
        "agent_steps": model.num_timesteps,
        "steps_per_second": model.num_timesteps / train_seconds,
        "episodes": recorder.episodes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
