"""Learning curves as pictures (cleanmetta.plot): the curve arithmetic, the grouping of seeds into
experiments, the PNG from real runs, and the errors a user sees instead of a traceback.

Drawing needs the plot extra (matplotlib) and skips without it, with its install command as the
reason; the arithmetic, the grouping and the error without the extra are tested always.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import train
from cleanmetta.config import ConfigError, small_fast_config
from cleanmetta.plot import (PlotError, draw_curves, experiment_curve, group_runs, last_mean, plot_curves,
                             read_episodes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason='plotting needs the plot extra: pip install -e ".[plot]"')
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def short_run(run_root, name, seed=1, learning_rate=None):
    config = small_fast_config()
    config.trainer.total_timesteps = 512 * 4
    config.seed = seed
    config.experiment_name = name
    config.log.run_root, config.log.tensorboard, config.log.console_interval = run_root, False, 1e9
    if learning_rate is not None:
        config.trainer.learning_rate = learning_rate
    train.main(config)
    return os.path.join(run_root, name)


def test_last_mean_is_the_mean_of_the_last_episodes_ended_by_each_point():
    x = np.array([10.0, 20.0, 30.0, 40.0])
    returns = np.array([1.0, 2.0, 3.0, 5.0])
    means = last_mean(x, returns, np.array([5.0, 10.0, 25.0, 40.0, 45.0]), window=2)
    assert np.isnan(means[0]) and np.isnan(means[-1])  # before the first episode, after the last
    assert means[1:4].tolist() == [1.0, 1.5, 4.0]


def test_episodes_logged_at_the_same_step_count_together():
    x = np.array([10.0, 20.0, 20.0, 20.0, 30.0])  # three episodes ended in the epoch logged at step 20
    returns = np.array([1.0, 2.0, 4.0, 6.0, 8.0])
    means = last_mean(x, returns, np.array([20.0, 30.0]), window=2)
    assert means.tolist() == [4.0, 5.0]  # all of step 20's episodes, not the last two of them in file order


def test_experiment_curve_averages_seeds_where_all_of_them_have_data():
    a = np.array([[0, 0, 1.0], [100, 1, 1.0]])
    b = np.array([[0, 0, 3.0], [50, 1, 3.0]])  # ends earlier
    x, mean, low, high = experiment_curve([a, b], column=0, window=1, points=5)
    assert x.tolist() == [0.0, 25.0, 50.0]
    assert mean.tolist() == [2.0] * 3 and low.tolist() == [1.0] * 3 and high.tolist() == [3.0] * 3


def test_seeds_of_one_experiment_are_grouped_and_experiments_labelled_by_what_differs(tmp_run_root):
    runs = [short_run(tmp_run_root, "a1", seed=1), short_run(tmp_run_root, "a2", seed=2),
            short_run(tmp_run_root, "b1", seed=1, learning_rate=1e-4)]
    assert group_runs(runs) == {"trainer.learning_rate=0.001": runs[:2], "trainer.learning_rate=0.0001": runs[2:]}
    assert group_runs(runs[:2]) == {"CartPole-v1": runs[:2]}


@needs_matplotlib
def test_plot_command_draws_a_png_from_two_runs(tmp_run_root):
    runs = [short_run(tmp_run_root, "a1", seed=1), short_run(tmp_run_root, "a2", seed=2)]
    out = os.path.join(tmp_run_root, "curves.png")
    done = subprocess.run([sys.executable, "-m", "cleanmetta.plot", *runs, "--out", out], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import matplotlib.image

    with open(out, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height > 200  # two panels side by side
    assert done.stdout.strip() == f"wrote {out}"
    again = subprocess.run([sys.executable, "-m", "cleanmetta.plot", runs[0], "--out", out], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "replaced the file of that name" in again.stdout  # never silently


@needs_matplotlib
def test_one_line_per_experiment_in_each_panel_with_its_seed_count():
    episodes = {"a": [np.array([[i * 10, i, i] for i in range(1, 30)], float)] * 2,
                "b": [np.array([[i * 10, i, -i] for i in range(1, 30)], float)]}
    fig = draw_curves(episodes, title="t")
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert [len(ax.collections) for ax in fig.axes] == [1, 1]  # a band for the experiment with two seeds
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["a (2 seeds)", "b"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["agent steps", "training seconds"]


def test_a_run_directory_without_episodes_is_a_clear_error_not_a_traceback(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "episodes.csv").write_text("agent_steps,seconds,return,length\n")
    done = subprocess.run([sys.executable, "-m", "cleanmetta.plot", str(empty), "--out", str(tmp_path / "c.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"error: {empty}: no episode has finished yet" in done.stderr
    with pytest.raises(PlotError, match="no episodes.csv"):
        read_episodes(str(tmp_path))
    with pytest.raises(PlotError, match="no such run directory"):
        read_episodes(str(tmp_path / "missing"))


def test_a_row_cut_short_by_a_kill_is_left_out(tmp_path):
    (tmp_path / "episodes.csv").write_text("agent_steps,seconds,return,length\n512,0.5,20,20\n1024,1.0,3")
    assert read_episodes(str(tmp_path)).tolist() == [[512.0, 0.5, 20.0]]


def test_without_matplotlib_plotting_stops_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r'plotting learning curves needs matplotlib .*pip install -e "\.\[plot\]"'):
        plot_curves({"a": [np.array([[1.0, 1.0, 1.0]])]}, str(tmp_path / "c.png"))


@needs_matplotlib
def test_long_labels_go_under_the_panels_and_never_cover_them():
    runs = [np.array([[i * 10, i, i] for i in range(1, 30)], float)]
    labels = [", ".join(f"ppo.setting_{k}={k * n}" for k in range(5)) for n in (1, 2, 3)]
    fig = draw_curves({label: runs for label in labels})
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    panels = [ax.get_window_extent() for ax in fig.axes]
    assert all(not legend.overlaps(panel) for panel in panels)
    assert panels[0].width == pytest.approx(panels[1].width, rel=0.05)  # the left panel keeps its width
    assert panels[0].width > 0.35 * fig.bbox.width
