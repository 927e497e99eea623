"""Extension points used as a user uses them: code of one's own outside the package, named by
import path on the command line, in YAML and in Python. The modules are docs/customizing.md's
examples, written out into a working directory as a user would save them."""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from gymnasium import spaces

import train
from cleanmetta import evaluate
from cleanmetta.checkpoint import CheckpointError, PolicyStore, TrainingCheckpointer, inconsistencies
from cleanmetta.checkpoint import save_checkpoint as save_checkpoint_file
from cleanmetta.config import AgentConfig, ConfigError, PPOConfig, TrainingConfig, small_fast_config
from cleanmetta.curriculum import make_curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.experience import Experience
from cleanmetta.losses import Kickstarter, load_loss, make_custom_losses
from cleanmetta.policy import NetworkPolicy, make_policy
from cleanmetta.policy_store import load_policy_file
from cleanmetta.ppo import PPOOptimizer
from cleanmetta.resume import restore_checkpoint
from cleanmetta.spaces import space_to_dict
from cleanmetta.trainer import functional_training_loop, make_optimizer, seed_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("my_nets", "my_losses", "my_envs", "my_step")


def doc_files() -> dict[str, str]:
    """docs/customizing.md's python blocks, by the file name their first line gives ('# my_nets.py')."""
    with open(os.path.join(ROOT, "docs", "customizing.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    return {match.group(1): block for block in blocks if (match := re.match(r"# (\w+\.py)", block))}


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user's working directory holding the page's modules (importable from it, as python -m finds them)."""
    for name, code in doc_files().items():
        (tmp_path / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in MODULES:
        sys.modules.pop(module, None)


def small(run_root, name="run", epochs=4, **sections) -> TrainingConfig:
    """small_fast (16 envs x 32 steps, 512 agent steps an epoch) for `epochs`, checkpoints every 2."""
    config = small_fast_config()
    config.experiment_name, config.log.run_root = name, str(run_root)
    config.trainer.total_timesteps = 512 * epochs
    config.checkpoint.interval, config.log.tensorboard, config.log.console_interval = 2, False, 1e9
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return config.validate()


def assert_resumes_exactly(config: TrainingConfig, trained: torch.nn.Module) -> None:
    """A fresh process's rebuild of `config`'s run from its run directory holds the trained parameters
    and optimiser state, and the same next update moves both to the same parameters."""
    run_dir = os.path.join(config.log.run_root, config.experiment_name)
    seed_everything(config.seed)
    vecenv = make_vecenv(config.env, config.seed)
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    optimizer = make_optimizer(policy, config.trainer, torch.device("cpu"))
    restore_checkpoint(TrainingCheckpointer(run_dir), config, policy, optimizer, vecenv)
    for a, b in zip(trained.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    trained_optimizer = make_optimizer(trained, config.trainer, torch.device("cpu"))
    trained_optimizer.load_state_dict(TrainingCheckpointer(run_dir).load_trainer_state(run_dir)["optimizer_state"])
    experience = Experience.for_env(vecenv, 8)
    experience.obs.normal_()
    experience.valid.fill_(1.0)
    for net, opt in ((trained, trained_optimizer), (policy, optimizer)):
        torch.manual_seed(0)
        PPOOptimizer(net, opt, "cpu", config.ppo).update(experience)
    for a, b in zip(trained.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    vecenv.close()


def spaces_of(config: TrainingConfig) -> tuple[spaces.Space, spaces.Space]:
    vecenv = make_vecenv(config.env, config.seed)
    vecenv.close()
    return vecenv.single_observation_space, vecenv.single_action_space


def run_script(*args, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---- a network of one's own ------------------------------------------------------------------------

def test_a_cleanrl_network_by_import_path_trains_resumes_evaluates_and_teaches(user_dir):
    config = small(user_dir / "runs", agent={"network": "my_nets:Agent:hidden=32"})
    result = train.main(config)
    policy = result["policy"]
    assert isinstance(policy, NetworkPolicy) and type(policy.network).__name__ == "Agent"
    assert policy.network.actor[0].out_features == 32  # the setting reached the constructor
    run_dir = result["run_dir"]
    assert inconsistencies(run_dir) == []
    loaded = PolicyStore(run_dir).latest().policy
    for a, b in zip(loaded.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    assert_resumes_exactly(config, policy)

    # the run's own config names the network: a fresh process evaluates it, with nothing but the run directory
    done = run_script("-m", "cleanmetta.evaluate", run_dir, "--episodes", "2", cwd=user_dir)
    assert done.returncode == 0, done.stderr
    assert "CartPole-v1" in done.stdout and "scores recorded on epoch 4" in done.stdout

    # it teaches a student of cleanmetta's own network (the KL estimated at the teacher's actions): a student
    # equal to its teacher has a loss of 0, another one a positive loss
    kickstart = Kickstarter(copy.deepcopy(policy))
    obs = torch.randn(64, 4)
    assert kickstart(copy.deepcopy(policy), obs, None, None, None, None).item() == 0
    assert kickstart(make_policy(AgentConfig(), *spaces_of(config)), obs, None, None, None, None).item() > 0
    student = small(user_dir / "runs", "student", epochs=2, ppo={"custom_losses": ["kickstart"],
                                                                 "kickstart_teacher": run_dir})
    stats = train.main(student)
    assert stats["epoch"] == 2 and inconsistencies(stats["run_dir"]) == []


def test_a_network_and_a_loss_of_ones_own_from_yaml_and_the_command_line_save_resume_and_evaluate(user_dir):
    train_py = os.path.join(ROOT, "train.py")
    (user_dir / "acrobot.yaml").write_text(
        "env: {id: Acrobot-v1, num_envs: 4}\n"
        "agent: {network: 'my_nets:Agent:hidden=128'}\n"  # a 2 x 128 network on Acrobot
        "trainer: {total_timesteps: 1024, num_steps: 128}\n")
    (user_dir / "logits.yaml").write_text(  # the L2 on the default network's logits
        "ppo: {custom_losses: ['my_losses:logit_l2:coef=0.0001']}\n")
    logits = ["--config", "logits.yaml", "--env.num-envs", "16", "--trainer.num-steps", "32",
              "--trainer.total-timesteps", "1024"]
    for name, flags in (("acrobot", ["--config", "acrobot.yaml"]), ("logits", logits)):
        done = run_script(train_py, *flags, "--experiment-name", name, "--log.console-interval", "0", cwd=user_dir)
        assert done.returncode == 0, done.stderr
        done = run_script(train_py, "--resume", f"runs/{name}", "--trainer.total-timesteps", "1536", cwd=user_dir)
        assert done.returncode == 0 and f"resumed runs/{name} at epoch 2" in done.stdout, done.stderr
        done = run_script("-m", "cleanmetta.evaluate", f"runs/{name}", "--episodes", "1", cwd=user_dir)
        assert done.returncode == 0 and "scores recorded on epoch 3" in done.stdout, done.stderr
    with open(user_dir / "runs" / "acrobot" / "config.json") as f:
        assert json.load(f)["agent"]["network"] == "my_nets:Agent:hidden=128"


def test_a_policy_class_of_a_forked_train_py_trains_to_its_end_and_says_what_it_cannot_do(user_dir):
    fork = doc_files()["fork.py"].rstrip().splitlines()
    classes, build = "\n".join(fork[1:-1]), fork[-1]
    with open(os.path.join(ROOT, "train.py")) as f:
        script = f.read()
    line = next(line for line in script.splitlines() if "policy = make_policy(" in line)
    script = script.replace(line, "    " + build).replace("\n\ndef main(", f"\n\n{classes}\n\n\ndef main(", 1)
    (user_dir / "my_train.py").write_text(script)
    flags = ["--preset", "small_fast", "--experiment-name", "fork", "--trainer.total-timesteps", "1536",
             "--checkpoint.interval", "2", "--log.console-interval", "0"]
    done = run_script(str(user_dir / "my_train.py"), *flags, cwd=user_dir)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: WidePolicy")]
    assert len(warnings) == 1 and "move the class into a module" in warnings[0]
    run_dir = str(user_dir / "runs" / "fork")
    assert inconsistencies(run_dir) == [] and [r.epoch for r in PolicyStore(run_dir).records()] == [2, 3]
    weights = torch.load(PolicyStore(run_dir).latest().uri, weights_only=True)["state_dict"]
    assert weights["actor.weight1"].shape == (128, 128)  # the fork's own network, saved
    done = run_script(str(user_dir / "my_train.py"), *flags[:-2], "--resume", run_dir, "--trainer.total-timesteps",
                      "2560", cwd=user_dir)
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stdout and [r.epoch for r in PolicyStore(run_dir).records()][-1] == 5
    done = run_script("-m", "cleanmetta.evaluate", run_dir, cwd=user_dir)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "a class of the script that trained it" in done.stderr and "--agent.network my_nets:WidePolicy" in done.stderr


def test_a_network_by_import_path_trains_under_two_gloo_ranks_and_with_env_workers(user_dir):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "train.py"), "--preset", "small_fast", "--experiment-name", "ranks",
               "--agent.network", "my_nets:Agent", "--trainer.total-timesteps", "4096", "--log.console-interval", "0",
               "--distributed-timeout", "60"]
    done = subprocess.run(command, cwd=user_dir, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert inconsistencies(str(user_dir / "runs" / "ranks")) == []
    config = small(user_dir / "runs", "workers", epochs=2, agent={"network": "my_nets:Agent"},
                   env={"num_workers": 2, "num_envs": 4})
    result = train.main(config)  # 4 envs stepped in 2 worker processes
    assert result["agent_steps"] == 1024 and inconsistencies(result["run_dir"]) == []


def test_an_env_wrappers_and_a_step_of_ones_own(user_dir):
    from my_step import stop_when_solved

    config = small(user_dir / "runs", "guess", epochs=3, env={"id": "my_envs:Guess-v0", "num_envs": 4,
                                                             "wrappers": ["gymnasium.wrappers:TimeAwareObservation"]})
    seed_everything(config.seed)
    curriculum = make_curriculum(config.env, config.curriculum)
    vecenv = make_vecenv(config.env, config.seed, curriculum)
    assert vecenv.single_observation_space.shape == (2,)  # the sign, and the wrapper's time
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    vecenv.close()
    state = functional_training_loop(config, config.ppo, policy, curriculum, step_fn=stop_when_solved)
    assert state.agent_steps == 1536 and inconsistencies(os.path.join(config.log.run_root, "guess")) == []


# ---- a checkpoint stays data -------------------------------------------------------------------

def saved_policy(run_dir, network: str) -> str:
    """A policy file whose spec names `network` (crafted: written as a checkpoint file, by hand)."""
    spec = {"agent": {**AgentConfig().__dict__, "network": network},
            "observation_space": space_to_dict(spaces.Box(-1, 1, (4,))), "action_space": space_to_dict(spaces.Discrete(2))}
    path = os.path.join(run_dir, "policies", "policy_000001.pt")
    save_checkpoint_file({"spec": spec, "state_dict": {}, "epoch": 1, "agent_steps": 0, "metadata": {}}, path,
                         "policy")
    return path


def test_a_checkpoint_naming_a_command_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = saved_policy(str(tmp_path / "crafted"), f"subprocess:Popen:args=['touch','{marker}']")
    for trust in ((), ("subprocess",)):  # subprocess is imported already: the class check refuses it
        with pytest.raises(CheckpointError, match="is not a torch.nn.Module class"):
            load_policy_file(path, trust=trust)
    assert not marker.exists()
    # a module nobody named is not imported at all (importing it would leave the marker)
    (tmp_path / "side_effects.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom torch.nn import Linear\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = saved_policy(str(tmp_path / "crafted2"), "side_effects:Linear")
    with pytest.raises(CheckpointError, match="pass --trust side_effects"):
        load_policy_file(path)
    with pytest.raises(CheckpointError, match="pass --trust side_effects"):
        PolicyStore(str(tmp_path / "crafted2")).get(path).policy
    assert not marker.exists()


def test_a_copied_policy_file_loads_only_when_its_module_is_trusted(user_dir):
    result = train.main(small(user_dir / "runs", epochs=2, agent={"network": "my_nets:Agent"}))
    copy = user_dir / "elsewhere.pt"
    copy.write_bytes(open(PolicyStore(result["run_dir"]).latest().uri, "rb").read())
    sys.modules.pop("my_nets")  # a fresh process: nothing imported yet
    with pytest.raises(CheckpointError, match="pass --trust my_nets"):
        load_policy_file(str(copy))
    assert isinstance(load_policy_file(str(copy), trust=["my_nets"]), NetworkPolicy)
    plain = train.main(small(user_dir / "runs", "plain", epochs=1))["run_dir"]  # its config names no network
    sys.modules.pop("my_nets", None)
    with pytest.raises(SystemExit, match="pass --trust my_nets"):
        evaluate.main([plain, "--policy", str(copy), "--episodes", "1"])
    sys.modules.pop("my_nets", None)
    evaluate.main([plain, "--policy", str(copy), "--episodes", "1", "--trust", "my_nets"])


# ---- a loss of one's own -----------------------------------------------------------------------

def test_a_loss_by_import_path_reads_the_logits_of_the_ppo_pass_without_a_second_forward(user_dir):
    loss = load_loss("my_losses:logit_l2:coef=0.0001")
    assert loss.__name__ == "logit_l2"
    policy = make_policy(AgentConfig(name="mlp"), spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    forwards, seen = [], []  # the logits of every forward pass; those the loss read
    policy.register_forward_hook(lambda module, args, out: forwards.append(out[0]))

    def logit_l2(policy, obs, actions, rewards, values, advantages, outputs):
        seen.append(outputs.params)
        return loss(policy, obs, actions, rewards, values, advantages, outputs=outputs)

    experience = Experience(8, 4, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    experience.obs.normal_()
    experience.valid.fill_(1.0)
    config = PPOConfig(update_epochs=2, num_minibatches=4)
    ppo = PPOOptimizer(policy, make_optimizer(policy, TrainingConfig().trainer, torch.device("cpu")), "cpu", config)
    stats = ppo.update(experience, [logit_l2])
    assert len(forwards) == 8 and [len(x) for x in forwards] == [8] * 8  # one forward a minibatch: 2 epochs x 4
    assert all(a is b for a, b in zip(seen, forwards))  # the loss read the PPO pass's own logits
    assert stats["logit_l2"] == pytest.approx(sum(1e-4 * x.pow(2).mean().item() for x in seen) / 8)
    # by name on the command line and in YAML, beside the built-in ones
    losses = make_custom_losses(PPOConfig(custom_losses=["curiosity", "my_losses:logit_l2:coef=0.0001"]))
    assert [getattr(fn, "__name__") for fn in losses] == ["curiosity", "logit_l2"]


def test_a_loss_on_the_logits_of_a_cleanrl_style_network_says_why_it_has_none(user_dir):
    # get_action_and_value gives no distribution parameters: outputs.params is None, and the loss that
    # reads it is stopped with a ConfigError (train.py's one-line errors) naming the loss and the way out
    policy = make_policy(AgentConfig(network="my_nets:Agent"), spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    assert isinstance(policy, NetworkPolicy)
    experience = Experience(8, 4, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    experience.valid.fill_(1.0)
    ppo = PPOOptimizer(policy, make_optimizer(policy, TrainingConfig().trainer, torch.device("cpu")), "cpu",
                       PPOConfig(update_epochs=1, num_minibatches=2))
    with pytest.raises(ConfigError, match=r"custom loss 'logit_l2' failed \(AttributeError: .*outputs.params is "
                                          r"None for a network with CleanRL's get_action_and_value only"):
        ppo.update(experience, [load_loss("my_losses:logit_l2")])

    def entropy_floor(policy, obs, actions, rewards, values, advantages, outputs):  # what such a network gives
        return (0.5 - outputs.entropy).clamp(min=0).mean()

    assert "entropy_floor" in ppo.update(experience, [entropy_floor])


def test_bad_extensions_are_refused_before_training_in_one_line(user_dir):
    (user_dir / "bad.py").write_text(
        "import torch\n"
        "def per_sample(policy, obs, actions, rewards, values, advantages):\n    return advantages\n"
        "def too_few(policy, obs):\n    return 0\n")
    cases = [
        (["--agent.network", "no_such_module:Net"], "agent.network 'no_such_module:Net': module 'no_such_module' is "
                                                     "not installed"),
        (["--agent.network", "torch.nn:Linear"], "Linear has no get_value and no get_action_and_value"),
        (["--agent.network", "os:path"], "is not a torch.nn.Module class"),
        (["--agent.network", "my_nets:Agent:width=3"], "got an unexpected keyword argument 'width'; it takes ['hidden']"),
        (["--agent.network", "my_nets:Agent", "--agent.lstm-size", "8"], "agent.lstm_size=8 is for cleanmetta's"),
        (["--ppo.custom-losses", "bad:too_few"], "called as fn(policy, obs, actions, rewards, values, advantages)"),
        (["--ppo.custom-losses", "bad:nothing"], "module bad has no 'nothing'"),
        (["--ppo.custom-losses", "bad:per_sample"], "custom loss 'per_sample' returned [64], not a scalar tensor"),
    ]
    for flags, message in cases:
        done = run_script(os.path.join(ROOT, "train.py"), "--preset", "small_fast", "--trainer.total-timesteps",
                          "512", "--trainer.num-steps", "8", *flags, cwd=user_dir)
        assert done.returncode == 1 and message in done.stderr, (flags, done.stderr)
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
