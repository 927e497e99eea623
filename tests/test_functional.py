import os

import torch

import train
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import small_fast_config
from cleanmetta.curriculum import make_curriculum
from cleanmetta.envs import make_vecenv
from cleanmetta.policy import make_policy
from cleanmetta.trainer import default_training_step, functional_training_loop, seed_everything


def config_for(run_root, name):
    config = small_fast_config()
    config.trainer.total_timesteps = 512 * 6
    config.experiment_name = name
    config.checkpoint.interval = 2
    config.evaluation.interval = 3
    config.evaluation.episodes = 3
    config.ppo.custom_losses = ["curiosity", "diversity"]
    config.log.run_root = run_root
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    return config


def build_policy(config):
    seed_everything(config.seed, config.torch_deterministic)
    curriculum = make_curriculum(config.env, config.curriculum)
    probe = make_vecenv(config.env, config.seed, curriculum)
    policy = make_policy(config.agent, probe.single_observation_space, probe.single_action_space)
    probe.close()
    return policy, curriculum


def test_train_py_and_functional_loop_give_identical_parameters(tmp_run_root):
    explicit = train.main(config_for(tmp_run_root, "explicit"))["policy"]

    config = config_for(tmp_run_root, "functional")
    policy, curriculum = build_policy(config)
    state = functional_training_loop(config, config.ppo, policy, curriculum, PolicyStore(
        os.path.join(tmp_run_root, "functional")))
    assert (state.epoch, state.agent_steps) == (6, 3072)
    for (name, a), b in zip(explicit.named_parameters(), policy.parameters()):
        assert torch.equal(a, b), name
    # both stored the same evaluated checkpoints
    scores = [[r.scores for r in PolicyStore(os.path.join(tmp_run_root, d)).records()] for d in ("explicit", "functional")]
    assert scores[0] == scores[1] and "CartPole-v1/mean_return" in scores[0][-1]


def test_the_loops_agree_with_kickstart_vtrace_and_prioritized_minibatches(tmp_run_root):
    """Each loop tells the kickstart loss the agent steps and the update its progress (prio beta) alike."""
    teacher = config_for(tmp_run_root, "teacher")
    teacher.ppo.custom_losses, teacher.evaluation.interval = [], 0
    teacher_dir = train.main(teacher)["run_dir"]
    configs = [config_for(tmp_run_root, name) for name in ("explicit", "functional")]
    for config in configs:
        config.ppo.custom_losses, config.ppo.kickstart_teacher = ["kickstart"], teacher_dir
        config.ppo.kickstart_steps, config.evaluation.interval = 2048, 0
        config.ppo.vtrace, config.ppo.prio_alpha, config.trainer.bptt_horizon = True, 0.6, 16
    explicit = train.main(configs[0])["policy"]
    policy, curriculum = build_policy(configs[1])
    functional_training_loop(configs[1], configs[1].ppo, policy, curriculum)
    for (name, a), b in zip(explicit.named_parameters(), policy.parameters()):
        assert torch.equal(a, b), name


def test_a_custom_step_fn_replaces_the_default_step(tmp_run_root):
    config = config_for(tmp_run_root, "custom")
    policy, curriculum = build_policy(config)
    calls = []

    def my_step(state, components, config, experience):
        calls.append(state.epoch)
        stats = default_training_step(state, components, config, experience)
        if state.epoch == 4:
            state.stop.requested = True  # the step decides when training ends
        return stats

    state = functional_training_loop(config, config.ppo, policy, curriculum, None, step_fn=my_step,
                                     custom_losses=[])
    assert calls == [0, 1, 2, 3]
    assert state.epoch == 4
    # checkpoints every 2 epochs, an evaluated epoch (every 3) saved with its scores, and the last one
    assert [r.epoch for r in PolicyStore(os.path.join(tmp_run_root, "custom")).records()] == [2, 3, 4]
