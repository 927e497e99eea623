"""Recurrent policies: the LSTM core, its state in the rollout, segments in the buffer, the replay in the update."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import AgentConfig, ConfigError, EnvConfig, PPOConfig, TrainingConfig
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator, Simulation
from cleanmetta.experience import Experience
from cleanmetta.losses import make_curiosity_loss
from cleanmetta.normalize import ObservationNorm
from cleanmetta.policy import LSTMPolicy, SegmentReplay, make_policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.trainer import make_optimizer
from test_mettagrid import needs_mettagrid

T, NUM_ENVS, HORIZON = 32, 4, 8


def rollout(env_id: str = "CartPoleNoVel-v1", name: str = "mlp", lstm_size: int = 16, num_envs: int = NUM_ENVS,
            seed: int = 0, device: torch.device | str = "cpu"):
    """A recurrent policy, the buffer of one rollout of an untrained policy (CartPole episodes of ~20 steps
    end inside the 8-step segments), and its collector."""
    torch.manual_seed(seed)
    vecenv = make_vecenv(EnvConfig(id=env_id, num_envs=num_envs), seed)
    policy = make_policy(AgentConfig(name=name, lstm_size=lstm_size), vecenv.single_observation_space,
                         vecenv.single_action_space).to(device)
    exp = Experience.for_env(vecenv, T, device, policy.lstm_size, HORIZON)
    collector = RolloutCollector(vecenv, policy, exp, device)
    collector.collect()
    exp.compute_advantages(0.99, 0.95)
    return policy, exp, collector


def test_make_policy_puts_an_lstm_between_any_encoder_and_the_heads():
    cases = {"mlp": spaces.Box(-1, 1, (4,), np.float32), "simple_cnn": spaces.Box(0, 255, (3, 8, 8), np.uint8),
             "token": spaces.Box(0, 255, (10, 3), np.uint8)}
    for name, obs_space in cases.items():
        policy = make_policy(AgentConfig(name=name, hidden_size=32, lstm_size=24), obs_space, spaces.Discrete(5))
        assert isinstance(policy, LSTMPolicy) and policy.recurrent and policy.lstm.hidden_size == 24
        obs = torch.as_tensor(np.stack([obs_space.sample() for _ in range(6)]))
        state = policy.initial_state(6)
        action, logprob, value, (h, c) = policy.sample(obs, state, torch.zeros(6, dtype=torch.bool))
        assert action.shape == (6, 1) and logprob.shape == value.shape == (6,) and h.shape == c.shape == (6, 24)
        assert not torch.equal(h, state[0])  # the state moved
    assert not make_policy(AgentConfig(), cases["mlp"], spaces.Discrete(5)).recurrent  # feedforward stays the default
    for lstm_size in (0, 8):  # observation normalisation reaches the network, with or without the LSTM
        policy = make_policy(AgentConfig(normalize_obs=True, lstm_size=lstm_size), cases["mlp"], spaces.Discrete(5))
        assert isinstance(policy.obs_norm, ObservationNorm)
        policy.obs_norm.update(torch.randn(100, 4) * 5 + 3)
        obs = torch.randn(3, 4)
        assert torch.equal(policy.encode(obs) if not lstm_size else policy.net.encode(obs), policy.obs_norm(obs))


def test_the_first_minibatch_recomputes_the_rollouts_logprobs_and_values(device):
    """Ratio 1 on the first minibatch of the first epoch: the replay from the stored segment starts, with its
    resets at episode starts, must reproduce what the rollout computed step by step."""
    policy, exp, _ = rollout(device=device)
    assert exp.first[1:].sum() > 0 and (exp.valid == 0).any()  # episodes end and restart inside the rollout
    starts_inside = exp.first.view(T // HORIZON, HORIZON, NUM_ENVS)[:, 1:].sum()
    assert starts_inside > 0  # some segment holds an episode boundary past its first step

    ppo = PPOOptimizer(policy, make_optimizer(policy, TrainingConfig().trainer, device), device,
                       PPOConfig(num_minibatches=2, update_epochs=1))
    seen, loss_and_outputs = [], ppo.loss_and_outputs

    def recording_loss(obs, actions, old_logprobs, advantages, returns, values, policy, *rest):
        if not seen:
            _, logprobs, _, new_values = policy.get_action_and_value(obs, actions)
            seen.append((logprobs.detach(), old_logprobs, new_values.detach(), values))
        return loss_and_outputs(obs, actions, old_logprobs, advantages, returns, values, policy, *rest)

    ppo.loss_and_outputs = recording_loss
    ppo.update(exp)
    logprobs, old_logprobs, values, old_values = seen[0]
    assert 0 < len(logprobs) < int(exp.valid.sum())  # one minibatch of two
    torch.testing.assert_close(logprobs, old_logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, old_values, rtol=1e-5, atol=1e-5)


def test_after_an_episode_ends_the_next_real_step_sees_a_zero_state():
    policy, exp, _ = rollout()
    t, b = [int(i) for i in (exp.first[1:] == 1).nonzero()[0]]
    t += 1
    assert exp.valid[t - 1, b] == 0  # the step before is the autoreset step
    with torch.no_grad():
        _, fresh_value, _ = policy.step(exp.obs[t, b][None], policy.initial_state(1))
        busy = tuple(torch.randn(1, policy.lstm_size) for _ in range(2))  # whatever the state was
        _, reset_value, _ = policy.step(exp.obs[t, b][None], busy, torch.ones(1, dtype=torch.bool))
        _, kept_value, _ = policy.step(exp.obs[t, b][None], busy, torch.zeros(1, dtype=torch.bool))
    assert exp.values[t, b] == pytest.approx(float(fresh_value), abs=1e-6)  # what the rollout computed
    assert float(reset_value) == pytest.approx(float(fresh_value), abs=1e-6)
    assert float(kept_value) != pytest.approx(float(fresh_value), abs=1e-4)


def test_segments_never_mix_agents_and_start_from_the_stored_state(device):
    policy, exp, _ = rollout(device=device)
    batch = exp.batch()
    K = T // HORIZON
    assert batch.obs.shape == (K * NUM_ENVS, HORIZON, 2) and batch.mask.shape == (K * NUM_ENVS, HORIZON)
    for k in range(K):
        for b in range(NUM_ENVS):
            s = k * NUM_ENVS + b
            steps = slice(k * HORIZON, (k + 1) * HORIZON)
            assert torch.equal(batch.obs[s], exp.obs[steps, b]) and torch.equal(batch.actions[s], exp.actions[steps, b])
            assert torch.equal(batch.mask[s], exp.valid[steps, b]) and torch.equal(batch.first[s], exp.first[steps, b])
            assert torch.equal(batch.lstm_h[s], exp.lstm_h[k, b]) and torch.equal(batch.lstm_c[s], exp.lstm_c[k, b])
    assert torch.count_nonzero(exp.lstm_h[0]) == 0  # the run's first segment starts from zero
    assert torch.count_nonzero(exp.lstm_h[1]) > 0   # later ones from the state the rollout reached


def test_masked_steps_contribute_nothing_to_any_loss_or_gradient():
    policy, exp, _ = rollout()
    ppo = PPOOptimizer(policy, make_optimizer(policy, TrainingConfig().trainer, torch.device("cpu")), "cpu")
    curiosity = make_curiosity_loss(0.1)

    def loss_and_grads(batch):
        replay = SegmentReplay(policy, batch)
        mb = batch.valid_steps()
        loss = ppo.compute_ppo_loss(mb.obs, mb.actions, mb.logprobs, mb.advantages, mb.returns, mb.values,
                                    policy=replay).total_loss
        loss = loss + curiosity(replay, mb.obs, mb.actions, mb.rewards, mb.values, mb.advantages)
        policy.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in policy.parameters()]

    batch = exp.batch()
    masked = batch.mask == 0
    assert masked.any()
    loss, grads = loss_and_grads(batch)
    junk = batch._replace(obs=torch.where(masked[..., None], 50.0, batch.obs),
                          actions=torch.where(masked[..., None], 1 - batch.actions, batch.actions),
                          logprobs=torch.where(masked, -30.0, batch.logprobs),
                          advantages=torch.where(masked, 1e3, batch.advantages),
                          returns=torch.where(masked, -1e3, batch.returns))
    junk_loss, junk_grads = loss_and_grads(junk)
    assert junk_loss == loss
    for grad, junk_grad in zip(grads, junk_grads):
        assert torch.equal(grad, junk_grad)


def test_the_replay_answers_only_for_its_own_minibatch():
    policy, exp, _ = rollout()
    batch = exp.batch()
    replay = SegmentReplay(policy, batch)
    obs = batch.valid_steps().obs
    replay(obs.clone())  # equal observations are fine
    with pytest.raises(ValueError, match="LSTMPolicy.unroll"):
        replay(obs[:3])


def test_a_custom_loss_trains_a_recurrent_policy():
    policy, exp, _ = rollout()
    received = []

    def prefer_action_zero(policy, obs, actions, rewards, values, advantages):
        received.append((obs.shape, actions.shape, advantages.shape))
        return -policy.get_action_and_value(obs, torch.zeros_like(actions))[1].mean()

    def mean_logprob_of_action_zero() -> float:
        batch = exp.batch()
        replay = SegmentReplay(policy, batch)
        obs = batch.valid_steps().obs
        with torch.no_grad():
            return float(replay.get_action_and_value(obs, torch.zeros(len(obs), 1, dtype=torch.long))[1].mean())

    before = mean_logprob_of_action_zero()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    ppo = PPOOptimizer(policy, optimizer, "cpu", PPOConfig(num_minibatches=2, update_epochs=2))
    stats = ppo.update(exp, [prefer_action_zero])
    valid = int(exp.valid.sum())
    assert len(received) == 4 and received[0][0][0] + received[1][0][0] == valid  # valid steps only, flat
    assert all(obs[1:] == (2,) and actions[1:] == (1,) and len(adv) == 1 for obs, actions, adv in received)
    assert np.isfinite(stats["prefer_action_zero"])
    assert mean_logprob_of_action_zero() > before + 0.01  # its gradient went through the replayed LSTM


def test_the_state_carries_across_rollouts_and_resets_at_episode_starts():
    policy, exp, collector = rollout()
    carried = tuple(x.clone() for x in collector.state)
    first = torch.as_tensor(collector.first.copy())  # the collector updates it in place
    collector.collect()
    assert torch.equal(exp.lstm_h[0], carried[0]) and torch.equal(exp.lstm_c[0], carried[1])
    assert torch.equal(exp.first[0], first.float())


def test_a_recurrent_policy_survives_a_checkpoint_and_is_evaluated_with_its_state(tmp_path):
    policy, _, _ = rollout()
    checkpointer = TrainingCheckpointer(str(tmp_path), PolicyStore(str(tmp_path)))
    checkpointer.save_policy(policy, 1, {"agent_steps": 128})
    loaded = PolicyStore(str(tmp_path)).latest().policy
    assert isinstance(loaded, LSTMPolicy)
    obs = torch.randn(5, 2)
    state = tuple(torch.randn(5, 16) for _ in range(2))
    first = torch.tensor([True, False, False, True, False])
    for a, b in zip(policy.step(obs, state, first), loaded.step(obs, state, first)):
        for x, y in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)

    result = PolicyEvaluator([Simulation("novel", "CartPoleNoVel-v1", episodes=3, seed=1)]).evaluate(loaded)["novel"]
    assert result.episodes == 3 and result.mean_length >= 8
    again = PolicyEvaluator([Simulation("novel", "CartPoleNoVel-v1", episodes=3, seed=1)]).evaluate(loaded)["novel"]
    assert again == result


def test_cartpole_without_velocities_is_cartpole_positions_native_or_not():
    full = make_vecenv(EnvConfig(id="CartPole-v1", num_envs=3), 7)
    for vectorization in ("native", "sync"):
        novel = make_vecenv(EnvConfig(id="CartPoleNoVel-v1", num_envs=3, vectorization=vectorization), 7)
        assert novel.single_observation_space.shape == (2,) and novel.observation_space.shape == (3, 2)
        assert novel.metadata["autoreset_mode"] == full.metadata["autoreset_mode"]
    native = make_vecenv(EnvConfig(id="CartPoleNoVel-v1", num_envs=3, vectorization="native"), 7)
    obs_full, _ = full.reset(seed=7)
    obs, _ = native.reset(seed=7)
    np.testing.assert_array_equal(obs, obs_full[:, [0, 2]])
    for _ in range(40):  # through episode ends and autoresets
        actions = np.array([0, 1, 0])
        obs_full, reward_full, term_full, trunc_full, _ = full.step(actions)
        obs, reward, term, trunc, _ = native.step(actions)
        np.testing.assert_array_equal(obs, obs_full[:, [0, 2]])
        assert np.array_equal(term, term_full) and np.array_equal(reward, reward_full)
    assert obs.dtype == np.float32 and obs.flags.c_contiguous


def test_recurrent_config_errors_name_the_field():
    config = TrainingConfig()
    config.trainer.bptt_horizon = 16
    with pytest.raises(ConfigError, match="trainer.bptt_horizon=16 is for segment minibatches"):
        config.validate()
    config.agent.lstm_size = 32
    config.trainer.bptt_horizon = 48
    with pytest.raises(ConfigError, match="must divide trainer.num_steps=128"):
        config.validate()
    config.trainer.bptt_horizon, config.ppo.num_minibatches = 64, 16
    with pytest.raises(ConfigError, match="ppo.num_minibatches=16 is more than the number of segments .* = 8; use at most 8"):
        config.validate()
    config.agent.lstm_size = -1
    with pytest.raises(ConfigError, match="agent.lstm_size=-1"):
        config.validate()


def test_a_recurrent_policy_learns_cartpole(tmp_path):
    config = train.parse_config(["--agent.lstm-size", "32", "--trainer.bptt-horizon", "16", "--env.num-envs", "8",
                                 "--trainer.num-steps", "32", "--ppo.num-minibatches", "4",
                                 "--trainer.learning-rate", "1e-3", "--trainer.total-timesteps", "40000",
                                 "--log.run-root", str(tmp_path), "--experiment-name", "lstm",
                                 "--log.no-tensorboard", "--log.console-interval", "1e9"])
    result = train.main(config)
    assert isinstance(result["policy"], LSTMPolicy)
    assert result["mean_return_last20"] > 150  # random play: ~22


# What the feedforward networks gave before recurrent policies existed (commit c064a10, torch 2.13 CPU):
# the sum of each parameter tensor after a short training run with the same seed, and for simple_cnn
# its initial parameters and outputs. The encode/decode split must leave all of it unchanged.
BEFORE_LSTM = {
    "mlp": [-0.509823, -0.001743, 12.604455, 0.002837, 0.013136, 0.0, -2.855236, 0.086991, -6.516595, -0.059258,
            0.302925, 0.005991],
    "continuous": [0.012855, 15.687065, 4076.0001, -0.005215, -1.553383, -0.058759, 8.41639, -0.118129, 0.051911,
                   -0.010522, 0.486661, -0.075805, -8.186761, -0.129818, 0.60257, -0.031136],  # normalize_obs, Box
    # re-pinned when MettaGrid simulations got a generator each (when env workers came): other maps, same code path
    "token": [102.251574, 9.240129, 0.001508, 0.058131, -0.002146, -10.185183, 0.001198, -0.295126, 0.001331],
    "cnn": [4.413022, 0.0, 16.614216, 0.0, -5.402868, 0.0, -0.00415, 0.0, 0.084073, 0.0, 0.052487, -1.42874],
}


def sums(tensors) -> list[float]:
    return [float(t.detach().double().sum()) for t in tensors]


@pytest.mark.parametrize("network", ["mlp", "continuous", pytest.param("token", marks=needs_mettagrid)])
def test_feedforward_training_is_unchanged_by_recurrent_support(network, tmp_path):
    argv = {"mlp": ["--trainer.total-timesteps", "1024"],
            "continuous": ["--preset", "continuous", "--trainer.total-timesteps", "4096"],
            "token": ["--preset", "mettagrid", "--trainer.total-timesteps", "8192"]}[network]
    config = train.parse_config(argv + ["--log.run-root", str(tmp_path), "--experiment-name", "ff",
                                        "--log.no-tensorboard", "--log.console-interval", "1e9",
                                        "--evaluation.interval", "0"])
    policy = train.main(config)["policy"]
    assert sums(policy.state_dict().values()) == pytest.approx(BEFORE_LSTM[network], rel=1e-4, abs=1e-5)


def test_feedforward_cnn_is_unchanged_by_recurrent_support():
    torch.manual_seed(3)
    cnn = make_policy(AgentConfig(name="simple_cnn", hidden_size=32), spaces.Box(0, 255, (3, 8, 8), np.uint8),
                      spaces.Discrete(4))
    logits, value = cnn(torch.randint(0, 255, (5, 3, 8, 8), dtype=torch.uint8))
    assert sums([*cnn.state_dict().values(), logits, value]) == pytest.approx(BEFORE_LSTM["cnn"], rel=1e-4, abs=1e-5)


def test_a_recurrent_run_resumes_from_its_checkpoint(tmp_path):
    """Resume restores the weights and optimizer; the LSTM state is not saved: the envs restart their
    episodes on resume, and every agent starts them from a zero state, as at the start of a run."""
    flags = ["--preset", "cartpole_lstm", "--trainer.bptt-horizon", "8", "--ppo.num-minibatches", "4",
             "--log.run-root", str(tmp_path), "--experiment-name", "lstm", "--log.no-tensorboard",
             "--log.console-interval", "1e9", "--evaluation.interval", "0"]
    first = train.main(train.parse_config(flags + ["--trainer.total-timesteps", "512"]))
    assert first["epoch"] == 2
    resumed = train.main(train.parse_config(flags + ["--trainer.total-timesteps", "1024", "--checkpoint.resume"]))
    assert resumed["epoch"] == 4 and resumed["agent_steps"] == 1024
    assert isinstance(resumed["policy"], LSTMPolicy)


@needs_mettagrid
def test_the_mettagrid_lstm_preset_trains_the_token_network_with_memory(tmp_path):
    config = train.parse_config(["--preset", "mettagrid_lstm", "--trainer.total-timesteps", "8192", "--log.run-root",
                                 str(tmp_path), "--experiment-name", "mg", "--log.no-tensorboard",
                                 "--log.console-interval", "1e9", "--evaluation.interval", "0"])
    result = train.main(config)
    policy = result["policy"]
    assert isinstance(policy, LSTMPolicy) and type(policy.net).__name__ == "TokenPolicy"
    assert result["epoch"] == 1 and policy.lstm.hidden_size == 64
