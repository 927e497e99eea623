"""The live panel (dashboard.py): it renders what the run records, it shows only on a terminal (or when
asked), the plain lines stay elsewhere, and Ctrl-C under it saves, exits 0 and restores the terminal."""

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from cleanmetta import dashboard
from cleanmetta.config import ConfigError, LogConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW_CURSOR, HIDE_CURSOR = "\x1b[?25h", "\x1b[?25l"


@pytest.fixture
def rich():
    return pytest.importorskip("rich", reason='the dashboard extra: pip install -e ".[dashboard]"')


def test_the_panel_shows_progress_split_diagnostics_episodes_and_scores(rich):
    from rich.console import Console

    console = Console(record=True, force_terminal=True, width=130, file=io.StringIO())
    panel = dashboard.Dashboard("runs/demo", 100_000, console=console)
    panel.update(agent_steps=25_000, sps=9_876, mean_sps=9_000, learning_rate=2.1e-4,
                 update_stats={"policy_loss": -0.0123, "value_loss": 41.5, "entropy": 0.58, "approx_kl": 0.0041,
                               "clipfrac": 0.12, "explained_variance": 0.77, "logit_l2": 0.5},
                 split={"env": 0.2, "policy": 0.3, "copies": 0.05, "update": 0.4, "logging": 0.04, "other": 0.01,
                        "wall": 1.0}, returns=131.4, lengths=131.0, families={"mettagrid/hearts": 2.5},
                 scores={"CartPole-v1/mean_return": 200.0})
    panel.stop()
    console.print(panel.render())
    text = console.export_text()
    for expected in ("cleanmetta · runs/demo", "25.0%  25,000/100,000", "9,876 steps/s now", "9,000 mean", "RSS",
                     "where the time goes", "update   ██████░░░░░░░░░░   40%", "policy_loss", "-0.0123", "logit_l2",
                     "learning_rate", "0.00021", "return (last 20)", "131.4", "mettagrid/hearts",
                     "eval CartPole-v1 ", "200"):
        assert expected in text, expected
    assert "evaluation " not in text and "ranks" not in text  # parts that did not run stay out


def test_auto_shows_it_on_a_terminal_only_and_off_never(rich, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert dashboard.wanted(LogConfig(dashboard="auto"), is_main=True)
    assert not dashboard.wanted(LogConfig(dashboard="auto"), is_main=False)  # torchrun's other ranks
    assert not dashboard.wanted(LogConfig(dashboard="off"), is_main=True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # CI, nohup, a pipe
    assert not dashboard.wanted(LogConfig(dashboard="auto"), is_main=True)
    assert dashboard.wanted(LogConfig(dashboard="on"), is_main=True)


def test_on_without_rich_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(ConfigError, match=r"--log.dashboard on needs rich .*pip install -e \"\.\[dashboard\]\""):
        dashboard.wanted(LogConfig(dashboard="on"), is_main=True)


def test_the_plain_lines_when_the_output_is_not_a_terminal(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--preset", "small_fast", "--trainer.total-timesteps", "2048",
                          "--log.run-root", str(tmp_path), "--log.no-tensorboard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "[100.0%] step 2,048/2,048" in out and "where the time goes" not in out and HIDE_CURSOR not in out


def read_until(fd: int, text: str, timeout: float) -> str:
    """What the pseudo-terminal shows until `text` appears (or the child ends, or the time is up)."""
    seen, deadline = "", time.time() + timeout
    while text not in seen and time.time() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child has closed the terminal
                break
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
    return seen


def test_ctrl_c_under_the_panel_saves_exits_0_and_restores_the_terminal(rich, tmp_path):
    pid, fd = pty.fork()
    if pid == 0:  # the child: train.py on a terminal, so --log.dashboard auto shows the panel
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "train.py", "--trainer.total-timesteps", "10000000",
                                  "--log.run-root", str(tmp_path), "--experiment-name", "run", "--log.no-tensorboard"])
    shown = read_until(fd, "where the time goes", timeout=60)
    assert "where the time goes" in shown and HIDE_CURSOR in shown
    time.sleep(1)
    os.kill(pid, signal.SIGINT)  # Ctrl-C
    shown += read_until(fd, "python train.py --resume", timeout=60)
    shown += read_until(fd, "\x00never", timeout=5)  # the rest, until the child closes the terminal
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, shown[-2000:]
    assert shown.rfind(SHOW_CURSOR) > shown.rfind(HIDE_CURSOR)  # the cursor is back
    assert "run stopped by SIGINT at epoch" in shown and f"python train.py --resume {tmp_path / 'run'}" in shown
    assert os.listdir(tmp_path / "run" / "trainer_states")  # the checkpoint Ctrl-C promised
