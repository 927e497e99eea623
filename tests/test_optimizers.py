"""trainer.optimizer (cleanmetta/optimizers.py): every optimiser trains and resumes exactly, in one
process and under torchrun; Muon's split of the weights; schedule-free's averaged weights; and the
one-line errors of a name or an import path that does not fit.

Schedule-free needs its optional extra and skips without it, with the install command as the reason.
"""

import importlib.util
import os
import sys
import typing

import numpy as np
import pytest
import torch
from gymnasium import spaces
from test_distributed import spawn
from test_resume import config_for
from torch import nn

import train
from cleanmetta import distributed
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.collector import RolloutCollector
from cleanmetta.config import AgentConfig, ConfigError, OptimizerName, TrainerConfig, small_fast_config
from cleanmetta.envs import make_vecenv
from cleanmetta.evaluate import PolicyEvaluator
from cleanmetta.experience import Experience
from cleanmetta.optimizers import OPTIMIZERS, CombinedOptimizer, averaged_weights, make_optimizer, set_learning_rate
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.resume import restore_checkpoint

needs_schedulefree = pytest.mark.skipif(importlib.util.find_spec("schedulefree") is None,
                                        reason='schedule-free needs the schedulefree extra: '
                                               'pip install -e ".[schedulefree]"')
EVERY_OPTIMIZER = ["adam", "adamw", "muon", pytest.param("schedulefree", marks=needs_schedulefree),
                   "torch.optim:SGD:momentum=0.9"]
CPU = torch.device("cpu")
VECTOR = spaces.Box(-1.0, 1.0, (4,), np.float32)


def train_and_restore(run_root: str, optimizer: str) -> tuple[tuple, tuple, object]:
    """train.main for 2 epochs of small_fast CartPole with `optimizer` (a checkpoint at the end); then
    ((the live policy, its optimizer), (a fresh policy and optimizer restored from the run directory, as
    a resumed process builds them), the vecenv the restore reseeded)."""
    built = []

    def recording(*args):
        built.append(make_optimizer(*args))
        return built[-1]

    steps = 2 * 512 * distributed.world_size()  # 2 epochs (torchrun: of both ranks' steps)
    config = config_for(run_root, steps=steps, interval=1)
    config.trainer.optimizer = optimizer
    original = train.make_optimizer, distributed.close
    train.make_optimizer, distributed.close = recording, lambda: None  # torchrun: stay in the group to resume
    try:
        live = train.main(config)["policy"]
    finally:
        train.make_optimizer, distributed.close = original
    vecenv = make_vecenv(config.env, distributed.seed_for_rank(config.seed))
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    restored = make_optimizer(policy, config.trainer, CPU)
    run_dir = os.path.join(run_root, config.experiment_name)
    assert restore_checkpoint(TrainingCheckpointer(run_dir), config, policy, restored, vecenv) == (2, steps)
    return (live, built[0]), (policy, restored), vecenv


def next_parameters(pairs, vecenv) -> list[dict[str, torch.Tensor]]:
    """Each (policy, optimizer)'s parameters after one more PPO update on one rollout of the first policy."""
    config = small_fast_config()
    experience = Experience.for_env(vecenv, config.trainer.num_steps)
    RolloutCollector(vecenv, pairs[0][0], experience).collect()
    after = []
    for policy, optimizer in pairs:
        torch.manual_seed(0)  # the same minibatches
        set_learning_rate(optimizer, config.trainer.learning_rate)
        PPOOptimizer(policy, optimizer, CPU, config.ppo).update(experience)
        after.append({name: value.clone() for name, value in policy.state_dict().items()})
    return after


def assert_equal(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("optimizer", EVERY_OPTIMIZER)
def test_each_optimizer_trains_and_resumes_to_the_same_next_parameters(tmp_run_root, optimizer):
    (live, live_optimizer), (restored, restored_optimizer), vecenv = train_and_restore(tmp_run_root, optimizer)
    assert live_optimizer.state  # it stepped
    assert_equal(live.state_dict(), restored.state_dict())
    before = live.critic.weight0.clone()
    uninterrupted, resumed = next_parameters([(live, live_optimizer), (restored, restored_optimizer)], vecenv)
    assert not torch.equal(uninterrupted["critic.weight0"], before)  # the update moved the weights...
    assert_equal(uninterrupted, resumed)  # ... alike: the optimiser's state came back whole


def _resume_worker(rank, run_root, optimizer):
    torch.manual_seed(rank)  # different initial weights: the ranks must start from rank 0's
    (live, live_optimizer), (restored, restored_optimizer), vecenv = train_and_restore(run_root, optimizer)
    after = next_parameters([(live, live_optimizer), (restored, restored_optimizer)], vecenv)
    gathered = distributed.all_gather_objects(after)
    if rank == 0:
        torch.save(gathered, os.path.join(run_root, "gathered.pt"))


@pytest.mark.parametrize("optimizer", EVERY_OPTIMIZER)
def test_each_optimizer_trains_and_resumes_alike_on_two_processes(tmp_path, optimizer):
    spawn(_resume_worker, str(tmp_path), optimizer)
    (first_live, first_resumed), (second_live, second_resumed) = torch.load(tmp_path / "gathered.pt",
                                                                            weights_only=True)
    assert_equal(first_live, first_resumed)
    assert_equal(first_live, second_live)  # every rank holds the same weights (schedule-free's switches included)
    assert_equal(second_live, second_resumed)


def test_a_run_resumes_only_with_the_optimizer_it_was_trained_with(tmp_run_root):
    train.main(config_for(tmp_run_root, steps=512))
    config = config_for(tmp_run_root, steps=1024)
    config.trainer.optimizer = "muon"
    with pytest.raises(ConfigError, match="was trained with trainer.optimizer='adam', not 'muon': resume it with "
                                          "--trainer.optimizer adam, or pass --checkpoint.no-resume"):
        train.main(config)


def test_the_optimizer_table_names_config_s_optimizers():
    assert list(OPTIMIZERS) == list(typing.get_args(OptimizerName))


def test_the_default_is_the_fused_adam_with_eps_1e_5_and_weight_decay_its_l2_penalty():
    policy = make_policy(AgentConfig(), VECTOR, spaces.Discrete(2))
    optimizer = make_optimizer(policy, TrainerConfig(), CPU)
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["fused"] and group["eps"] == 1e-5 and group["weight_decay"] == 0.0
    assert make_optimizer(policy, TrainerConfig(weight_decay=0.01), CPU).param_groups[0]["weight_decay"] == 0.01


# ---- Muon's split ----------------------------------------------------------------------------------

class CleanRLAgent(nn.Module):
    """CleanRL's ppo.py Agent: two tanh MLPs."""

    def __init__(self):
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.actor = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))

    def get_action_and_value(self, x, action=None):
        raise NotImplementedError  # (only the layout matters here)


class Adapter(nn.Module):
    """A wrapper around a network of one's own, as an adapter holds it (`.network`)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def get_action_and_value(self, x, action=None):
        return self.network.get_action_and_value(x, action)


def muon_and_adamw(policy: nn.Module) -> tuple[set[str], set[str]]:
    """The names of the parameters muon's CombinedOptimizer gives Muon, and those it gives AdamW."""
    optimizer = make_optimizer(policy, TrainerConfig(optimizer="muon"), CPU)
    names = {id(p): name for name, p in policy.named_parameters()}
    parts = {part: {names[id(p)] for group in inner.param_groups for p in group["params"]}
             for part, inner in optimizer.optimizers.items()}
    assert not parts.get("muon", set()) & parts["adamw"] and set(names.values()) == parts.get("muon", set()) | \
        parts["adamw"]  # every parameter in exactly one part
    return parts.get("muon", set()), parts["adamw"]


@pytest.mark.parametrize("policy, hidden", [
    (lambda: make_policy(AgentConfig(), VECTOR, spaces.Discrete(2)), {"actor.weight1", "critic.weight1"}),
    (lambda: make_policy(AgentConfig(lstm_size=16), VECTOR, spaces.Discrete(2)),
     {"net.actor.weight1", "net.critic.weight1"}),  # the LSTM's weights go to AdamW
    (lambda: CleanRLAgent(), {"critic.2.weight", "actor.2.weight"}),
    (lambda: Adapter(CleanRLAgent()), {"network.critic.2.weight", "network.actor.2.weight"}),
], ids=["mlp", "lstm", "cleanrl-agent", "wrapped-cleanrl-agent"])
def test_muon_trains_the_hidden_2d_weights_and_adamw_the_rest(policy, hidden):
    assert muon_and_adamw(policy())[0] == hidden


@pytest.mark.parametrize("observation_space, hidden", [
    (spaces.Box(0, 255, (4, 84, 84), np.uint8), {"image.dense.weight"}),  # the kernels are 4-D, the heads outputs
    (spaces.Box(0, 255, (20, 3), np.uint8), {"actor.weight0", "critic.weight0"}),  # the table is an embedding
], ids=["cnn", "token"])
def test_cleanmettas_image_and_token_networks_name_their_hidden_weights(observation_space, hidden):
    assert muon_and_adamw(make_policy(AgentConfig(), observation_space, spaces.Discrete(6)))[0] == hidden


def test_a_network_without_hidden_2d_weights_trains_with_adamw_alone_and_says_so(capsys):
    class Linear(nn.Module):  # each child a single layer: an input and an output layer at once
        def __init__(self):
            super().__init__()
            self.actor, self.critic = nn.Linear(4, 2), nn.Linear(4, 1)

    policy = Linear()
    muon, adamw = muon_and_adamw(policy)
    assert muon == set() and adamw == {name for name, _ in policy.named_parameters()}
    assert "has no hidden 2-D weight" in capsys.readouterr().out


def test_a_network_names_its_own_hidden_weights():
    class Named(CleanRLAgent):
        def hidden_weights(self):
            return [self.actor[2].weight]

    assert muon_and_adamw(Named())[0] == {"actor.2.weight"}
    assert muon_and_adamw(Adapter(Named()))[0] == {"network.actor.2.weight"}  # inside its adapter too


def test_muon_s_two_parts_share_the_learning_rate_before_and_after_a_restore():
    policy = make_policy(AgentConfig(), VECTOR, spaces.Discrete(2))
    optimizer = make_optimizer(policy, TrainerConfig(optimizer="muon"), CPU)
    assert isinstance(optimizer, CombinedOptimizer) and len(optimizer.param_groups) == 2
    set_learning_rate(optimizer, 0.5)
    optimizer.load_state_dict(optimizer.state_dict())  # replaces each part's groups
    set_learning_rate(optimizer, 0.25)
    assert [inner.param_groups[0]["lr"] for inner in optimizer.optimizers.values()] == [0.25, 0.25]
    with pytest.raises(ValueError, match="the state of optimizers"):
        optimizer.load_state_dict(torch.optim.Adam(policy.parameters()).state_dict())


# ---- schedule-free's averaged weights ------------------------------------------------------------

@needs_schedulefree
def test_schedulefree_evaluates_and_saves_its_averaged_weights(tmp_run_root, monkeypatch):
    seen = []
    evaluate = PolicyEvaluator.evaluate

    def recording(self, policy, *args, **kwargs):
        seen.append({name: value.clone() for name, value in policy.state_dict().items()})
        return evaluate(self, policy, *args, **kwargs)

    monkeypatch.setattr(PolicyEvaluator, "evaluate", recording)
    config = config_for(tmp_run_root, steps=512 * 2)
    config.trainer.optimizer, config.evaluation.interval, config.evaluation.episodes = "schedulefree", 2, 1
    result = train.main(config)
    saved = PolicyStore(result["run_dir"]).latest().policy.state_dict()
    trained = result["policy"].state_dict()  # the weights it trains at
    for name, value in saved.items():
        torch.testing.assert_close(seen[-1][name], value, rtol=0, atol=1e-6)
    assert any(not torch.allclose(value, trained[name]) for name, value in saved.items())


def test_averaged_weights_leaves_an_optimizer_without_two_weight_sequences_alone():
    policy = make_policy(AgentConfig(), VECTOR, spaces.Discrete(2))
    before = {name: value.clone() for name, value in policy.state_dict().items()}
    with averaged_weights(make_optimizer(policy, TrainerConfig(), CPU)):
        assert_equal(policy.state_dict(), before)


def test_schedulefree_without_its_extra_is_a_one_line_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "schedulefree", None)  # as if not installed
    policy = make_policy(AgentConfig(), VECTOR, spaces.Discrete(2))
    with pytest.raises(ConfigError) as err:
        make_optimizer(policy, TrainerConfig(optimizer="schedulefree"), CPU)
    assert str(err.value).startswith("trainer.optimizer='schedulefree' needs schedulefree")
    assert str(err.value).endswith('pip install -e ".[schedulefree]"') and "\n" not in str(err.value)


# ---- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, weight_decay, message", [
    ("adamm", 0.0, "trainer.optimizer='adamm' must be one of ['adam', 'adamw', 'muon', 'schedulefree']"),
    ("no_such_package:Opt", 0.0, "module 'no_such_package' is not installed"),
    ("torch.nn:Linear", 0.0, "is not a torch.optim.Optimizer subclass"),
    ("torch.optim:SGD:momentum=0.9,betas=2", 0.0, "got an unexpected keyword argument 'betas'"),
    ("torch.optim:SGD:lr=0.1", 0.0, "the rate is --trainer.learning-rate"),
    ("torch.optim:SGD", 0.01, "give trainer.optimizer 'torch.optim:SGD' its own keyword weight_decay=0.01"),
], ids=["unknown-name", "missing-module", "not-an-optimizer", "unknown-kwarg", "lr-kwarg", "weight-decay"])
def test_an_optimizer_that_does_not_fit_is_a_one_line_error_naming_trainer_optimizer(optimizer, weight_decay,
                                                                                    message):
    policy = make_policy(AgentConfig(), VECTOR, spaces.Discrete(2))
    with pytest.raises(ConfigError) as err:
        make_optimizer(policy, TrainerConfig(optimizer=optimizer, weight_decay=weight_decay), CPU)
    assert "trainer.optimizer" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_train_refuses_an_optimizer_that_does_not_fit_before_it_trains(tmp_run_root):
    config = config_for(tmp_run_root, steps=512)
    config.trainer.optimizer = "torch.optim:SGD:nesterov=yes_please,bogus=1"
    with pytest.raises(ConfigError, match="trainer.optimizer"):
        train.main(config)
    assert not os.path.exists(os.path.join(tmp_run_root, "run", "episodes.csv"))


def test_the_device_may_be_named_as_a_string_as_everywhere_else():
    policy = make_policy(AgentConfig(), VECTOR, spaces.Discrete(2))
    assert isinstance(make_optimizer(policy, TrainerConfig(), "cpu"), torch.optim.Adam)
