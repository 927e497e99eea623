import os

import numpy as np
import pytest

from cleanmetta.log import StatsLogger


def episodes(*returns):
    return {"episodic_return": np.array(returns, dtype=np.float64), "episodic_length": np.ones(len(returns), int)}


def logger_at(run_dir, start_step=0):
    return StatsLogger(str(run_dir), tensorboard=False, console_interval=0.0, total_timesteps=1000,
                       start_step=start_step)


def test_the_progress_line_shows_a_dash_until_an_episode_ends(tmp_path, capsys):
    logger = logger_at(tmp_path)
    logger.log_epoch(100, episodes(), {}, 1e-3)
    logger.log_epoch(200, episodes(3.0, 5.0), {}, 1e-3)
    logger.close()
    first, second = capsys.readouterr().out.splitlines()
    assert "return - (last 20)" in first and "nan" not in first
    assert "return 4.0 (last 20)" in second


def test_a_resumed_logger_restores_the_last_20_returns_and_drops_episodes_past_its_checkpoint(tmp_path, capsys):
    logger = logger_at(tmp_path)
    for step in range(1, 31):
        logger.log_epoch(step * 10, episodes(float(step)), {}, 1e-3)
    logger.close()
    with open(os.path.join(tmp_path, "episodes.csv"), "a") as f:
        f.write("310,9.9,31")  # half a row, as a kill -9 can leave it
    capsys.readouterr()

    resumed = logger_at(tmp_path, start_step=250)  # the checkpoint was at step 250: episodes 26-30 replay
    assert resumed.mean_recent_return == np.mean(np.arange(6, 26))
    resumed.log_epoch(260, episodes(100.0), {}, 1e-3)
    resumed.close()
    assert f"return {np.mean(np.arange(7, 26).tolist() + [100.0]):.1f} (last 20)" in capsys.readouterr().out
    with open(os.path.join(tmp_path, "episodes.csv")) as f:
        rows = f.read().splitlines()
    assert rows[0] == "agent_steps,seconds,return,length"
    assert [int(row.split(",")[0]) for row in rows[1:]] == [10 * step for step in range(1, 26)] + [260]


def test_config_and_summary_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from cleanmetta import files
    from cleanmetta.config import TrainingConfig

    logger = StatsLogger(str(tmp_path), TrainingConfig(seed=1), tensorboard=False)
    logger.close()
    before = {name: (tmp_path / name).read_text() for name in ("config.json", "summary.json")}

    def killed(src, dst):  # the process dies after writing the new contents, before the rename
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        StatsLogger(str(tmp_path), TrainingConfig(seed=2), tensorboard=False)
    logger = StatsLogger(str(tmp_path), None, tensorboard=False, start_step=0)
    with pytest.raises(KeyboardInterrupt):
        logger.close()
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_episodes_reach_the_file_every_epoch(tmp_path):
    logger = StatsLogger(str(tmp_path), None, tensorboard=False)
    stats = {"episodic_return": np.array([3.0, 4.0]), "episodic_length": np.array([3, 4])}
    logger.log_epoch(512, stats, {}, 1e-3)
    with open(tmp_path / "episodes.csv") as f:  # read while the logger is open: a kill now loses nothing
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    assert [(row[0], row[2], row[3]) for row in rows] == [("512", "3", "3"), ("512", "4", "4")]
