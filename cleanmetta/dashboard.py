"""A live terminal panel for a training run (`--log.dashboard`), redrawn four times a second by `rich`.

    ╭─ cleanmetta · runs/CartPole-v1__1__1764670000 ─────────────────────────────────────╮
    │ ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━  48%  ETA 0:24   │
    │ where the time goes      ppo                        episodes                        │
    │ env      ████░░░ 21%     policy_loss  -0.0112        return  131.4 (last 20)       │
    │ ...                                                                                 │

Progress with its ETA; steps per second now (the last epoch) and over the run; the last epoch's
time split (timing.py) as bars; the CPU time the process used per second of wall time and its
memory (resident set size; on CUDA the device's use, with NVML, and allocated memory); the PPO
diagnostics (losses, approx_kl, clipfrac, explained variance, learning rate); the last episodes'
return and length; the latest evaluation's scores; and the curriculum's families when one runs.

`--log.dashboard auto` (the default) shows it when standard output is a terminal and `rich` is
installed (the `dashboard` extra), on torchrun's rank 0 only; elsewhere (CI, nohup, a pipe, the
other ranks) the run prints the plain progress lines. `on` asks for it (an error without rich),
`off` never shows it. The panel only displays what StatsLogger records; stopping it (the end of the
run, Ctrl-C, an error) leaves the last frame and restores the terminal.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import resource
import sys
import time
from typing import Any

import torch

from cleanmetta.config import LogConfig, import_extra
from cleanmetta.timing import PARTS, format_duration

DIAGNOSTICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance")


def wanted(log_config: LogConfig, is_main: bool) -> bool:
    """Whether this process shows the panel: `on`, or `auto` on a terminal with rich installed (rank 0)."""
    if log_config.dashboard == "off" or not is_main:
        return False
    if log_config.dashboard == "on":
        import_extra("rich", "dashboard", "--log.dashboard on")
        return True
    return importlib.util.find_spec("rich") is not None and sys.stdout.isatty()  # without rich: the plain lines


def memory_mb() -> float:
    """The process's resident set size now (Linux /proc), else its peak (getrusage), in MB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Dashboard:
    """The live panel. `update(**state)` after each epoch; `stop()` at the end (also at exit)."""

    def __init__(self, run_dir: str, total_steps: int | None, console: Any = None):
        import rich.console  # the dashboard extra (wanted() checked it)
        import rich.live
        import rich.panel
        import rich.progress_bar
        import rich.table

        self.rich = rich
        self.run_dir, self.total_steps = run_dir, total_steps
        self.state: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.cpu = (time.process_time(), time.perf_counter(), 0.0)  # (cpu, wall) at the last epoch, CPU share
        self.console = console or rich.console.Console()
        self.live = rich.live.Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                                   redirect_stdout=True, redirect_stderr=True)
        self.live.start()
        atexit.register(self.stop)  # an error that ends the run still restores the terminal

    def update(self, **state: Any) -> None:
        """Take in the epoch's numbers (agent_steps, sps, update_stats, learning_rate, split, returns,
        lengths, scores, families); the panel shows them at its next redraw."""
        cpu, wall = time.process_time(), time.perf_counter()
        self.cpu = (cpu, wall, (cpu - self.cpu[0]) / max(wall - self.cpu[1], 1e-9))
        if torch.cuda.is_initialized():
            state["cuda_mb"] = torch.cuda.memory_allocated() / 2**20
            try:
                state["cuda_use"] = torch.cuda.utilization()  # through NVML (pynvml), when it is installed
            except Exception:  # no NVML: memory only
                state["cuda_use"] = None
        self.state.update(state)

    def stop(self) -> None:
        if self.live.is_started:
            self.live.refresh()
            self.live.stop()

    def render(self) -> Any:
        Table, s = self.rich.table.Table, self.state
        steps, sps, mean_sps = s.get("agent_steps", 0), s.get("sps", 0.0), s.get("mean_sps", 0.0)
        head = Table.grid(expand=True, padding=(0, 1))
        head.add_column(ratio=1)
        head.add_column(justify="right")
        if self.total_steps:
            eta = (self.total_steps - steps) / mean_sps if mean_sps > 0 else float("inf")
            head.add_row(self.rich.progress_bar.ProgressBar(total=self.total_steps, completed=steps),
                         f"{100 * steps / self.total_steps:5.1f}%  {steps:,}/{self.total_steps:,}  "
                         f"ETA {format_duration(eta)}")
        resources = f"CPU {100 * self.cpu[2]:.0f}%  RSS {memory_mb():,.0f} MB"
        if s.get("cuda_mb") is not None:
            use = f" {s['cuda_use']}%" if s.get("cuda_use") is not None else ""
            resources += f"  GPU{use} {s['cuda_mb']:,.0f} MB"
        head.add_row(f"{sps:,.0f} steps/s now · {mean_sps:,.0f} mean", resources)

        body = Table.grid(expand=True, padding=(0, 3))
        for ratio in (4, 3, 3):
            body.add_column(ratio=ratio)
        body.add_row(self._split_table(s.get("split") or {}), self._ppo_table(s), self._episodes_table(s))
        return self.rich.panel.Panel(self.rich.console.Group(head, body), title=f"cleanmetta · {self.run_dir}",
                                     title_align="left")

    def titled(self, title: str, columns: int) -> Any:
        """A borderless table under `title`, its columns never wrapped."""
        table = self.rich.table.Table(title=title, title_justify="left", title_style="bold", show_header=False,
                                      box=None, padding=(0, 1), show_edge=False)
        for _ in range(columns):
            table.add_column(no_wrap=True)
        return table

    def _split_table(self, split: dict[str, float]) -> Any:
        table = self.titled("where the time goes", 3)
        wall = split.get("wall") or 0.0
        for part in (*PARTS, "other"):
            share = split.get(part, 0.0) / wall if wall else 0.0
            if part in ("evaluation", "checkpoint", "ranks") and share < 0.005:  # parts that did not run
                continue
            table.add_row(part, "█" * round(16 * share) + "░" * (16 - round(16 * share)), f"{share:4.0%}")
        return table

    def _ppo_table(self, s: dict[str, Any]) -> Any:
        table = self.titled("ppo", 2)
        stats = s.get("update_stats") or {}
        for key in (*DIAGNOSTICS, *sorted(k for k in stats if k not in DIAGNOSTICS)):
            if key in stats:
                table.add_row(key, f"{stats[key]:.4g}")
        if "learning_rate" in s:
            table.add_row("learning_rate", f"{s['learning_rate']:.3g}")
        return table

    def _episodes_table(self, s: dict[str, Any]) -> Any:
        table = self.titled("episodes", 2)
        returns, lengths = s.get("returns"), s.get("lengths")
        table.add_row("return (last 20)", f"{returns:.4g}" if returns is not None else "-")
        table.add_row("length (last 20)", f"{lengths:.4g}" if lengths is not None else "-")
        for name, value in (s.get("families") or {}).items():
            table.add_row(name, f"{value:.4g}")
        for name, value in list((s.get("scores") or {}).items())[:6]:
            table.add_row(f"eval {name.removesuffix('/mean_return')}", f"{value:.4g}")
        return table
