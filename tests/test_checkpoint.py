import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

from cleanmetta.checkpoint import (CheckpointError, PolicyStore, TrainingCheckpointer, load_checkpoint,
                                   save_checkpoint)
from cleanmetta.config import AgentConfig
from cleanmetta.policy import make_policy

BOX = spaces.Box(-1, 1, (4,), np.float32)


def make(action_space=spaces.Discrete(2), seed=0):
    torch.manual_seed(seed)
    return make_policy(AgentConfig(hidden_size=16), BOX, action_space)


class FakeEnv:
    single_observation_space = BOX
    single_action_space = spaces.Discrete(2)


def test_saved_policy_loads_with_the_same_outputs(tmp_path):
    policy = make(spaces.Box(-1, 1, (2,)))
    checkpointer = TrainingCheckpointer(str(tmp_path))
    record = checkpointer.save_policy(policy, epoch=3, metadata={"agent_steps": 1536, "note": "hi"})
    assert (record.epoch, record.agent_steps, record.metadata) == (3, 1536, {"note": "hi"})
    obs = torch.randn(5, 4)
    loaded = PolicyStore(str(tmp_path)).latest().policy
    torch.testing.assert_close(loaded(obs), policy(obs))
    torch.testing.assert_close(loaded.head.log_std, policy.head.log_std)


def test_policy_store_lists_and_picks_latest_and_best(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path))
    for epoch, score in [(1, 10.0), (2, 30.0), (3, 20.0)]:
        checkpointer.save_policy(make(seed=epoch), epoch, {"agent_steps": epoch * 100, "scores": {"sim/mean_return": score}})
    store = PolicyStore(str(tmp_path))
    assert [r.epoch for r in store.records()] == [1, 2, 3]
    assert store.latest().epoch == 3
    assert store.best("sim/mean_return").epoch == 2
    assert store.get(1).agent_steps == 100
    assert store.get("best:sim/mean_return").epoch == 2
    with pytest.raises(CheckpointError, match="no policy has the score 'other'"):
        store.best("other")


def test_run_directory_can_be_moved(tmp_path):
    TrainingCheckpointer(str(tmp_path / "a")).save_policy(make(), 1)
    os.rename(tmp_path / "a", tmp_path / "b")
    record = PolicyStore(str(tmp_path / "b")).latest()
    assert record.uri.startswith(str(tmp_path / "b"))
    assert record.policy is not None


def test_writes_are_atomic_when_the_process_dies_mid_write(tmp_path, monkeypatch):
    path = str(tmp_path / "state.pt")
    save_checkpoint({"value": 1}, path, "test")

    def dying_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"value": 2}, path, "test")
    assert load_checkpoint(path, "test")["value"] == 1
    assert os.listdir(tmp_path) == ["state.pt"]  # no temporary file left behind


def test_missing_truncated_and_foreign_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint file"):
        load_checkpoint(str(tmp_path / "nope.pt"), "policy")

    good = str(tmp_path / "good.pt")
    TrainingCheckpointer(str(tmp_path)).save_policy(make(), 1)
    save_checkpoint({"x": torch.zeros(1000)}, good, "policy")
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(str(truncated), "policy")

    foreign = str(tmp_path / "foreign.pt")
    torch.save({"model": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a cleanmetta checkpoint"):
        load_checkpoint(foreign, "policy")

    garbage = tmp_path / "garbage.pt"
    for seed in range(200):  # random bytes make the unpickler fail in many ways (IndexError among them)
        garbage.write_bytes(np.random.default_rng(seed).bytes(256))
        with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
            load_checkpoint(str(garbage), "policy")

    with pytest.raises(CheckpointError, match="good.pt: holds a 'policy' checkpoint, expected 'trainer_state'"):
        load_checkpoint(good, "trainer_state")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"format": "cleanmetta-checkpoint/1", "kind": "policy", "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint .*plain data"):
        load_checkpoint(path, "policy")


def test_trainer_state_round_trip_restores_optimizer_counters_and_rng(tmp_path):
    from cleanmetta.checkpoint import set_rng_state

    policy = make()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    policy(torch.randn(8, 4))[1].sum().backward()
    optimizer.step()
    checkpointer = TrainingCheckpointer(str(tmp_path))
    checkpointer.save_policy(policy, 7)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    checkpointer.save_trainer_state(1234, 7, optimizer.state_dict(), str(tmp_path))
    expected = (torch.rand(3), np.random.rand(3), random.random())

    state = checkpointer.load_trainer_state(str(tmp_path))
    assert (state["agent_step"], state["epoch"], state["policy_uri"]) == (1234, 7, "policies/policy_000007.pt")
    fresh = torch.optim.Adam(make(seed=9).parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer_state"])
    for a, b in zip(optimizer.state.values(), fresh.state.values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert checkpointer.load_trainer_state(str(tmp_path / "empty")) is None
    # a trainer state whose policy never reached policies.json (a kill in between) is not in force
    checkpointer.save_trainer_state(1300, 8, optimizer.state_dict(), str(tmp_path), policy_uri="policies/x.pt")
    assert checkpointer.load_trainer_state(str(tmp_path))["epoch"] == 7


LOAD_WITHOUT_A_GPU = """
import sys, torch
from cleanmetta.checkpoint import TrainingCheckpointer, set_rng_state
from cleanmetta.config import TrainerConfig
from cleanmetta.trainer import make_optimizer
assert not torch.cuda.is_available()
run_dir = sys.argv[1]
expected = torch.load(run_dir + "/expected.pt", weights_only=True)
checkpointer = TrainingCheckpointer(run_dir)
state = checkpointer.load_trainer_state(run_dir)
policy = checkpointer.load_policy(state).policy
for got, want in zip(policy(expected["obs"]), expected["outputs"]):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
optimizer = make_optimizer(policy, TrainerConfig(), torch.device("cpu"))
optimizer.load_state_dict(state["optimizer_state"])
for moments, want in zip(optimizer.state.values(), expected["exp_avg"]):
    assert moments["exp_avg"].device.type == "cpu"
    torch.testing.assert_close(moments["exp_avg"], want, rtol=0, atol=0)
set_rng_state(state["rng"])
print("loaded", state["epoch"], state["agent_step"])
"""


def test_a_checkpoint_saved_on_the_device_loads_where_there_is_no_gpu(tmp_path, device):
    """A checkpoint written from `device` (the policy, fused Adam's moments, the RNG states) reads back in a
    process that sees no GPU, as a GPU run's checkpoint does on a laptop: the same outputs and moments."""
    from cleanmetta.config import TrainerConfig
    from cleanmetta.trainer import make_optimizer

    policy = make().to(device)
    optimizer = make_optimizer(policy, TrainerConfig(), device)
    policy(torch.randn(8, 4, device=device))[1].sum().backward()
    optimizer.step()
    TrainingCheckpointer(str(tmp_path)).save_checkpoint(policy, 2, 1024, optimizer.state_dict())
    obs = torch.randn(5, 4)
    with torch.no_grad():
        outputs = [x.cpu() for x in policy(obs.to(device))]
    torch.save({"obs": obs, "outputs": outputs, "exp_avg": [s["exp_avg"].cpu() for s in optimizer.state.values()]},
               tmp_path / "expected.pt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])  # the tree, and what else the tests had
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_A_GPU, str(tmp_path)], capture_output=True, text=True,
                            cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "loaded 2 1024"


def test_load_policy_checks_the_env_spaces(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path))
    checkpointer.save_policy(make(), 2)
    checkpointer.save_trainer_state(0, 2, {}, str(tmp_path), policy_uri="policies/policy_000002.pt")
    state = checkpointer.load_trainer_state(str(tmp_path))
    assert checkpointer.load_policy(state, FakeEnv()).epoch == 2

    class OtherEnv(FakeEnv):
        single_action_space = spaces.Discrete(5)

    with pytest.raises(CheckpointError, match="saved for .* Discrete\\(2\\).* but the env has .*Discrete\\(5\\)"):
        checkpointer.load_policy(state, OtherEnv())


def test_checkpoints_keep_the_newest_trainer_states_and_every_policy(tmp_path):
    from cleanmetta.checkpoint import inconsistencies, trainer_state_paths
    from cleanmetta.config import ConfigError, TrainingConfig

    policy = make()
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2)
    for epoch in (1, 2, 3, 4):
        checkpointer.save_checkpoint(policy, epoch, 100 * epoch, {})
    assert [os.path.basename(p) for p in trainer_state_paths(str(tmp_path))] == [
        "trainer_state_000004.pt", "trainer_state_000003.pt"]
    assert [r.epoch for r in PolicyStore(str(tmp_path)).records()] == [1, 2, 3, 4]
    assert checkpointer.load_trainer_state(str(tmp_path))["policy_uri"] == "policies/policy_000004.pt"
    assert inconsistencies(str(tmp_path)) == []
    config = TrainingConfig()
    config.checkpoint.keep = 0
    with pytest.raises(ConfigError, match="checkpoint.keep=0 must be >= 1"):
        config.validate()
