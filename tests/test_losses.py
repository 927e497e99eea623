import copy
import os
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch
import tyro
from gymnasium import spaces

import train
from cleanmetta.checkpoint import PolicyStore, TrainingCheckpointer
from cleanmetta.cli import parse_config
from cleanmetta.config import AgentConfig, ConfigError, CustomLossName, PPOConfig, TrainingConfig, small_fast_config
from cleanmetta.curriculum import make_curriculum
from cleanmetta.experience import Experience
from cleanmetta.losses import (CUSTOM_LOSSES, Kickstarter, make_curiosity_loss, make_custom_losses, make_diversity_loss,
                               load_teacher, set_agent_steps)
from cleanmetta.policy import make_policy
from cleanmetta.ppo import PPOOptimizer, score_actions
from cleanmetta.trainer import default_training_step, functional_training_loop, seed_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_and_batch(action_space=spaces.MultiDiscrete([3, 2])):
    torch.manual_seed(0)
    policy = make_policy(AgentConfig(hidden_size=16), spaces.Box(-1, 1, (4,)), action_space)
    return policy, torch.randn(32, 4), torch.randn(32)


def gradient(policy, loss):
    policy.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in policy.actor.parameters()])


EXPLORATION = {"curiosity": make_curiosity_loss, "diversity": make_diversity_loss}


@pytest.mark.parametrize("name", sorted(EXPLORATION))
def test_each_exploration_loss_changes_the_policy_gradient(name):
    policy, obs, advantages = policy_and_batch()
    _, logprob, entropy, value = policy.get_action_and_value(obs)
    base_loss = -(logprob * advantages).mean()
    base = gradient(policy, base_loss)
    _, logprob, entropy, value = policy.get_action_and_value(obs)
    fn = EXPLORATION[name](0.5)
    extra = fn(policy, obs, None, torch.zeros(32), value.detach(), advantages)
    assert extra.dim() == 0
    combined = gradient(policy, -(logprob * advantages).mean() + extra)
    assert (combined - base).norm() > 1e-4 * base.norm()


def test_curiosity_weights_the_entropy_bonus_by_surprise():
    policy, obs, _ = policy_and_batch(spaces.Discrete(3))
    loss = make_curiosity_loss(1.0)
    uniform = loss(policy, obs, None, None, None, torch.ones(32))
    entropy = policy.get_action_and_value(obs)[2]
    assert uniform.item() == pytest.approx(-entropy.mean().item(), rel=1e-5)  # equal surprise: plain entropy bonus
    surprise = torch.zeros(32)
    surprise[0] = 1.0
    focused = loss(policy, obs, None, None, None, surprise)
    # all the weight on the one surprising sample: weight 32 there, mean over 32 samples
    assert focused.item() == pytest.approx(-entropy[0].item(), rel=1e-4)


def test_diversity_is_the_entropy_of_the_average_action_distribution():
    policy, obs, _ = policy_and_batch(spaces.Discrete(3))
    value = make_diversity_loss(2.0)(policy, obs, None, None, None, None)
    probs = policy(obs)[0].softmax(-1).mean(0)
    assert value.item() == pytest.approx(2.0 * (probs * probs.log()).sum().item(), rel=1e-5)


def test_losses_need_a_categorical_policy():
    policy, obs, advantages = policy_and_batch(spaces.Box(-1, 1, (2,)))
    with pytest.raises(TypeError, match="Discrete or MultiDiscrete"):
        make_diversity_loss(1.0)(policy, obs, None, None, None, advantages)


def test_custom_losses_come_from_the_command_line_with_their_coefficients():
    config = tyro.cli(TrainingConfig, args=["--ppo.custom-losses", "curiosity", "diversity",
                                            "--ppo.diversity-coef", "0.5"])
    assert config.ppo.custom_losses == ["curiosity", "diversity"]
    losses = make_custom_losses(config.ppo)
    assert [fn.__name__ for fn in losses] == ["curiosity", "diversity"]
    policy, obs, _ = policy_and_batch(spaces.Discrete(3))
    half = losses[1](policy, obs, None, None, None, None)
    one = make_diversity_loss(1.0)(policy, obs, None, None, None, None)
    assert half.item() == pytest.approx(0.5 * one.item())


def test_unknown_custom_loss_names_are_rejected():
    config = TrainingConfig(ppo=PPOConfig(custom_losses=["curiosty"]))
    with pytest.raises(ConfigError, match="names unknown loss 'curiosty'; choose from \\['curiosity', 'diversity', 'kickstart'\\]"):
        config.validate()
    with pytest.raises(ConfigError, match="names unknown loss 'curiosty'; choose from \\['curiosity', 'diversity', 'kickstart'\\]"):
        make_custom_losses(config.ppo)  # the table's own check, for callers that skip validate()
    with pytest.raises(ConfigError, match="names unknown loss 'curiosty'"):  # the command line: train.py's one line
        parse_config(["--ppo.custom-losses", "curiosty"]).validate()


def test_the_config_lists_exactly_the_losses_of_the_table():
    assert set(typing.get_args(CustomLossName)) == set(CUSTOM_LOSSES)


def test_custom_losses_are_logged_under_their_names():
    policy, _, _ = policy_and_batch(spaces.Discrete(2))
    exp = Experience(8, 2, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    exp.obs.normal_()
    exp.valid.fill_(1.0)
    ppo = PPOOptimizer(policy, torch.optim.Adam(policy.parameters()), "cpu", PPOConfig(num_minibatches=1))
    stats = ppo.update(exp, make_custom_losses(PPOConfig(custom_losses=["curiosity", "diversity"])))
    assert "curiosity" in stats and "diversity" in stats


# ---- kickstart ------------------------------------------------------------------------------------

KICKSTART_SPACES = [spaces.Discrete(3), spaces.MultiDiscrete([3, 2]), spaces.Box(-1, 1, (2,))]


@pytest.mark.parametrize("action_space", KICKSTART_SPACES, ids=["discrete", "multidiscrete", "box"])
def test_kickstart_with_the_student_as_its_own_teacher_is_zero_with_zero_gradient(action_space):
    student, obs, _ = policy_and_batch(action_space)
    kickstart = Kickstarter(copy.deepcopy(student), action_coef=1.0, value_coef=0.5, steps=1000)
    loss = kickstart(student, obs, None, None, None, None)
    assert loss.item() == 0.0
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
    assert grads.abs().max() < 1e-6
    assert not any(p.requires_grad for p in kickstart.teacher.parameters())  # the teacher stays frozen


@pytest.mark.parametrize("action_space", KICKSTART_SPACES, ids=["discrete", "multidiscrete", "box"])
def test_kickstart_action_term_is_the_kl_from_teacher_to_student(action_space):
    student, obs, _ = policy_and_batch(action_space)
    torch.manual_seed(1)
    teacher = make_policy(AgentConfig(hidden_size=16), spaces.Box(-1, 1, (4,)), action_space)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    t_params, t_value = teacher(obs)
    s_params, s_value = student(obs)
    if isinstance(action_space, spaces.Box):
        dist = lambda mean, head: torch.distributions.Normal(mean, head.log_std.exp())  # noqa: E731
        kl = torch.distributions.kl_divergence(dist(t_params, teacher.head), dist(s_params, student.head)).sum(-1)
    else:
        kl = sum(torch.distributions.kl_divergence(torch.distributions.Categorical(logits=t),
                                                   torch.distributions.Categorical(logits=s))
                 for t, s in zip(t_params.split(student.head.nvec, -1), s_params.split(student.head.nvec, -1)))
    kickstart = Kickstarter(teacher, action_coef=2.0, value_coef=0.25, steps=10)
    loss = kickstart(student, obs, None, None, None, None)
    expected = 2.0 * kl.mean() + 0.25 * 0.5 * (s_value - t_value).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # in the update it reads the student's outputs from the PPO pass: the same loss, no second forward
    actions = student.get_action_and_value(obs)[0]
    outputs = score_actions(student, obs, actions)
    assert kickstart(student, obs, actions, None, None, None, outputs=outputs).item() == pytest.approx(loss.item())


def test_kickstart_weights_fade_linearly_to_zero_and_then_skip_the_teacher():
    student, obs, _ = policy_and_batch(spaces.Discrete(3))
    kickstart = Kickstarter(make_policy(AgentConfig(hidden_size=8), spaces.Box(-1, 1, (4,)), spaces.Discrete(3)),
                            action_coef=1.5, value_coef=0.5, steps=1000)
    at = {}
    for steps in (0, 250, 1000, 5000):
        set_agent_steps([make_curiosity_loss(0.1), kickstart], steps)  # losses without a schedule are left alone
        at[steps] = kickstart.coefficients()
    assert at[0] == (1.5, 0.5)
    assert at[250] == pytest.approx((1.125, 0.375))
    assert at[1000] == at[5000] == (0.0, 0.0)
    kickstart.teacher = None  # faded out: the teacher is not called any more
    loss = kickstart(student, obs, None, None, None, None)
    assert loss.item() == 0.0 and not loss.requires_grad


def test_a_student_trained_on_the_kickstart_loss_alone_moves_to_its_teachers_actions():
    obs_space, action_space = spaces.Box(-1, 1, (4,)), spaces.Discrete(4)
    torch.manual_seed(0)
    teacher = make_policy(AgentConfig(hidden_size=32), obs_space, action_space)
    with torch.no_grad():  # a strong teacher: confident, state-dependent actions
        teacher.actor.weight2.mul_(300.0)
    student = make_policy(AgentConfig(hidden_size=32), obs_space, action_space)
    kickstart = Kickstarter(teacher, action_coef=1.0, value_coef=0.5, steps=10_000)
    held_out = torch.rand(512, 4) * 2 - 1

    def agreement():
        return (teacher.act(held_out, True) == student.act(held_out, True)).float().mean().item()

    before = agreement()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    for _ in range(300):
        loss = kickstart(student, torch.rand(256, 4) * 2 - 1, None, None, None, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.5 and agreement() > 0.9
    with torch.no_grad():
        value_gap = (student.get_value(held_out) - teacher.get_value(held_out)).abs().mean()
    assert value_gap < 0.1


def test_kickstart_settings_go_together():
    config = TrainingConfig(ppo=PPOConfig(custom_losses=["kickstart"]))
    with pytest.raises(ConfigError, match="ppo.kickstart_teacher=None and 'kickstart' in ppo.custom_losses go together"):
        config.validate()
    config = TrainingConfig(ppo=PPOConfig(kickstart_teacher="runs/teacher"))
    with pytest.raises(ConfigError, match="pass both --ppo.custom-losses kickstart and --ppo.kickstart-teacher"):
        config.validate()
    config = TrainingConfig(ppo=PPOConfig(custom_losses=["kickstart"], kickstart_teacher="t", kickstart_steps=0,
                                          kickstart_value_coef=-1.0))
    with pytest.raises(ConfigError, match="ppo.kickstart_value_coef=-1.0 must be(.|\n)*ppo.kickstart_steps=0 must be"):
        config.validate()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A short CartPole run whose saved policy serves as a teacher."""
    config = small_fast_config()
    config.trainer.total_timesteps, config.experiment_name = 2048, "teacher"
    config.log.run_root, config.log.tensorboard, config.log.console_interval = str(tmp_path_factory.mktemp("t")), False, 1e9
    return train.main(config)["run_dir"]


@pytest.mark.parametrize("lstm_size", [0, 8], ids=["feedforward", "recurrent-student"])
def test_a_kickstarted_run_distils_its_teacher_until_the_weights_fade(tmp_run_root, teacher_run, lstm_size):
    config = small_fast_config()  # 512 agent steps an epoch
    config.trainer.total_timesteps, config.experiment_name, config.agent.lstm_size = 512 * 4, "student", lstm_size
    config.log.run_root, config.log.tensorboard, config.log.console_interval = tmp_run_root, False, 1e9
    config.ppo.custom_losses, config.ppo.kickstart_teacher, config.ppo.kickstart_steps = ["kickstart"], teacher_run, 1024
    seed_everything(config.seed)
    policy = make_policy(config.agent, spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2))
    seen = []

    def step(state, components, config, experience):
        stats = default_training_step(state, components, config, experience)
        seen.append((state.agent_steps, components.custom_losses[0].coefficients(), stats["kickstart"]))

    functional_training_loop(config, config.ppo, policy, make_curriculum(config.env, config.curriculum), step_fn=step)
    assert [s for s, _, _ in seen] == [512, 1024, 1536, 2048]
    assert seen[0][1] == (0.5, 0.25) and seen[0][2] > 0  # half faded after 512 of 1024 steps
    assert all(coefs == (0.0, 0.0) and loss == 0.0 for _, coefs, loss in seen[1:])


def test_a_teacher_of_another_env_or_with_an_lstm_is_refused(tmp_run_root, teacher_run):
    out = subprocess.run([sys.executable, "train.py", "--env.id", "Acrobot-v1", "--ppo.custom-losses", "kickstart",
                          "--ppo.kickstart-teacher", teacher_run, "--log.run-root", tmp_run_root],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f"error: ppo.kickstart_teacher={teacher_run!r}: " in out.stderr
    assert "was saved for observations Box(" in out.stderr and "kickstart from a policy trained on the same env" in out.stderr

    obs_space, action_space = spaces.Box(-1, 1, (4,)), spaces.Discrete(2)
    recurrent = make_policy(AgentConfig(lstm_size=8), obs_space, action_space)
    path = TrainingCheckpointer(tmp_run_root).save_policy(recurrent, 1).uri
    with pytest.raises(ConfigError, match="is recurrent .*kickstarting needs a feedforward teacher"):
        load_teacher(path, obs_space, action_space)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        load_teacher(os.path.join(tmp_run_root, "missing.pt"), obs_space, action_space)
    teacher = load_teacher(teacher_run, obs_space, action_space)  # a run directory: its latest policy
    latest = PolicyStore(teacher_run).latest().policy
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), latest.state_dict().values()))


def test_the_docs_show_the_kickstart_loss_as_the_code_has_it():
    """docs/custom-losses.md's worked example is an excerpt of losses.py: every code line of it is in the module."""
    def code_lines(text):
        return [line.split("  #")[0].strip() for line in text.splitlines()
                if line.strip() and not line.strip().startswith(("#", "..."))]

    with open(os.path.join(ROOT, "docs", "custom-losses.md")) as f:
        readme = f.read()
    start = readme.index("class Kickstarter:")
    excerpt = code_lines(readme[start:readme.index("```", start)])
    with open(os.path.join(ROOT, "cleanmetta", "losses.py")) as f:
        module = set(code_lines(f.read()))
    assert len(excerpt) > 15 and [line for line in excerpt if line not in module] == []
