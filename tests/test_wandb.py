"""Weights & Biases: a real offline run (WANDB_MODE=offline, no network), read back from its files.

An offline run keeps everything it would send in one record file, run-<id>.wandb (LevelDB's log
format: 32 KiB blocks of checksummed, possibly split records, each a wandb protobuf `Record`).
`wandb_records` reads it, so these tests check what wandb itself stored, not what we handed it.
Without the wandb extra they skip, with its install command as the reason; the test of the error
a user without the extra gets runs always.
"""

import glob
import importlib.util
import json
import os
import sys
import time

import pytest

import train
from cleanmetta import distributed
from cleanmetta.checkpoint import PolicyStore
from cleanmetta.config import ConfigError, CurriculumConfig, small_fast_config
from cleanmetta.log import start_wandb

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason='wandb is an optional extra: pip install -e ".[wandb]"')

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: str, timeout: float = 30.0) -> list:
    """Every Record in an offline run's .wandb file, in order: once the file ends with the run's exit
    record (wandb's service process may still be writing it when run.finish() has returned)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_records(path: str) -> list:
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a wandb record file"
    records, pending, pos = [], b"", 7  # 7: the file header (magic, version)
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left_in_block < 7 or kind == 0:  # the block's zero padding
            pos += left_in_block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_runs(run_dir: str) -> list[str]:
    """The run directory's offline wandb runs (one per process that trained in it), oldest first (by
    when each was last written: a second run started within the same second as the first is named
    like it plus '-1', which sorts before it)."""
    return sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")), key=os.path.getmtime)


def history(records) -> list[dict]:
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return rows


def wandb_config(run_dir, steps, **flags):
    config = small_fast_config()
    config.trainer.total_timesteps = steps
    config.experiment_name = "run"
    config.log.run_root = run_dir
    config.log.tensorboard = False
    config.log.console_interval = 1e9
    config.log.wandb = True
    config.log.wandb_project = "cleanmetta-tests"
    config.log.wandb_group = "group-a"
    config.log.wandb_tags = ["tag-1", "tag-2"]
    config.checkpoint.interval = 2
    config.evaluation.interval = 2
    config.evaluation.episodes = 2
    for key, value in flags.items():
        section, field = key.split("__")
        setattr(getattr(config, section), field, value)
    return config


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@needs_wandb
def test_offline_run_holds_the_config_the_scalars_and_the_evaluation_scores(tmp_path, offline):
    config = wandb_config(str(tmp_path), steps=512 * 4)
    train.main(config)
    run_dir = os.path.join(str(tmp_path), "run")
    (path,) = offline_runs(run_dir)
    records = wandb_records(path)

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "cleanmetta-tests" and run.run_group == "group-a" and run.display_name == "run"
    assert list(run.tags) == ["tag-1", "tag-2"]
    uploaded = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert uploaded["trainer"]["total_timesteps"] == 2048 and uploaded["env"]["id"] == "CartPole-v1"
    assert uploaded["log"]["wandb_group"] == "group-a"

    rows = history(records)
    epochs = [row for row in rows if "charts/SPS" in row]
    assert [row["global_step"] for row in epochs] == [512, 1024, 1536, 2048]
    for name in ("charts/episodic_return", "charts/episodic_length", "charts/learning_rate", "losses/policy_loss",
                 "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                 "losses/explained_variance"):
        assert name in epochs[-1], name
    with open(os.path.join(run_dir, "episodes.csv")) as f:  # the same numbers as the run's own files
        last_epoch = [float(line.split(",")[2]) for line in f.read().splitlines()[1:] if line.startswith("2048,")]
    assert epochs[-1]["charts/episodic_return"] == pytest.approx(sum(last_epoch) / len(last_epoch), rel=1e-5)

    evaluations = [row for row in rows if "eval/CartPole-v1/mean_return" in row]
    assert [row["global_step"] for row in evaluations] == [1024, 2048]
    saved = PolicyStore(run_dir).get(4).scores
    assert evaluations[-1]["eval/CartPole-v1/mean_return"] == saved["CartPole-v1/mean_return"]
    assert not [r for r in records if r.WhichOneof("record_type") == "artifact"]  # checkpoints only behind the flag


@needs_wandb
def test_the_curriculum_scalars_and_the_settings_histograms_reach_wandb(tmp_path, offline):
    family = "CartPole-v1:max_episode_steps=8..40"
    config = wandb_config(str(tmp_path), steps=512 * 4, evaluation__interval=0)
    config.curriculum = CurriculumConfig(tasks=[family], algorithm="learning_progress", num_active_tasks=6,
                                         sample_threshold=2, min_presentations=2)
    curriculum = train.main(config)["curriculum"]
    run_dir = os.path.join(str(tmp_path), "run")
    (path,) = offline_runs(run_dir)
    rows = history(wandb_records(path))

    epochs = [row for row in rows if "curriculum/pool_size" in row]
    assert [row["global_step"] for row in epochs] == [512, 1024, 1536, 2048]
    for name, value in curriculum.stats().items():  # every scalar, and the last epoch's as the curriculum has them
        assert epochs[-1][name] == pytest.approx(value), name
    assert {"curriculum/sampling_entropy", "curriculum/evictions", "curriculum/episodes",
            f"curriculum/{family}/learning_progress", f"curriculum/{family}/coverage"} <= set(epochs[-1])

    tag = f"tasks/{family}/max_episode_steps"
    histograms = [row for row in rows if f"{tag}/_type" in row]
    assert [(row[f"{tag}/_type"], row["global_step"]) for row in histograms] == [
        ("histogram", step) for step in (512, 1024, 1536, 2048)]
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        episodes = [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]
    for row in histograms:  # one bin per integer of 8..40, holding each of the epoch's episodes once
        assert row[f"{tag}/bins"] == [value - 0.5 for value in range(8, 42)]
        assert sum(row[f"{tag}/values"]) == episodes.count(row["global_step"]) > 0


@needs_wandb
def test_checkpoints_become_model_artifacts_behind_the_flag(tmp_path, offline):
    train.main(wandb_config(str(tmp_path), steps=512 * 4, log__wandb_checkpoints=True))
    (path,) = offline_runs(os.path.join(str(tmp_path), "run"))
    artifacts = [r.artifact for r in wandb_records(path) if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in artifacts] == ["model", "model"]
    assert [sorted(a.aliases) for a in artifacts] == [["epoch_2", "latest"], ["epoch_4", "latest"]]
    assert [json.loads(a.metadata)["agent_steps"] for a in artifacts] == [1024, 2048]
    assert [os.path.basename(entry.path) for a in artifacts for entry in a.manifest.contents] == [
        "policy_000002.pt", "policy_000004.pt"]


@needs_wandb
def test_resume_continues_the_same_wandb_run(tmp_path, offline):
    train.main(wandb_config(str(tmp_path), steps=512 * 2))
    run_dir = os.path.join(str(tmp_path), "run")
    with open(os.path.join(run_dir, "wandb_id")) as f:
        first_id = f.read()
    train.main(wandb_config(str(tmp_path), steps=512 * 4))  # the same run directory: resumes at epoch 2
    first, second = offline_runs(run_dir)
    ids = [[r.run.run_id for r in wandb_records(path) if r.WhichOneof("record_type") == "run"] for path in (first,
                                                                                                            second)]
    assert ids == [[first_id], [first_id]]
    resumed_steps = [row["global_step"] for row in history(wandb_records(second)) if "charts/SPS" in row]
    assert resumed_steps == [1536, 2048]


@needs_wandb
def test_a_fresh_start_in_the_same_directory_is_a_new_wandb_run(tmp_path, offline):
    train.main(wandb_config(str(tmp_path), steps=512 * 2))
    run_dir = os.path.join(str(tmp_path), "run")
    restart = wandb_config(str(tmp_path), steps=512 * 2)
    restart.checkpoint.resume = False
    train.main(restart)
    ids = [{r.run.run_id for path in offline_runs(directory) for r in wandb_records(path)
            if r.WhichOneof("record_type") == "run"} for directory in (run_dir, run_dir + ".old-1")]
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]  # the first run's files were moved aside


def test_only_rank_0_talks_to_wandb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # would fail to import if it were tried
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    config = wandb_config(str(tmp_path), steps=512)
    assert start_wandb(config, str(tmp_path)) is None


def test_without_the_extra_log_wandb_stops_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r'--log\.wandb needs wandb .*pip install -e "\.\[wandb\]"'):
        train.main(wandb_config(str(tmp_path), steps=512))
    assert not os.path.exists(os.path.join(str(tmp_path), "run", "episodes.csv"))  # stopped before training


def test_wandb_checkpoints_without_wandb_is_a_config_error():
    config = small_fast_config()
    config.log.wandb_checkpoints = True
    with pytest.raises(ConfigError, match="log.wandb_checkpoints=True uploads to the wandb run: add --log.wandb"):
        config.validate()


@needs_wandb
@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason='needs pip install -e ".[video]"')
def test_evaluation_videos_reach_the_wandb_run(tmp_path, offline):
    train.main(wandb_config(str(tmp_path), steps=512 * 2, evaluation__video=True))
    (path,) = offline_runs(os.path.join(str(tmp_path), "run"))
    (row,) = [row for row in history(wandb_records(path)) if "videos/CartPole-v1/_type" in row]
    assert row["videos/CartPole-v1/_type"] == "video-file" and row["global_step"] == 1024
    uploaded = os.path.join(os.path.dirname(path), "files", row["videos/CartPole-v1/path"])
    with open(uploaded, "rb") as f:  # wandb's copy of the mp4 in the run directory
        assert f.read(12)[4:8] == b"ftyp"
