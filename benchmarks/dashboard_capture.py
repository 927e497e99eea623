"""A real capture of the live panel (--log.dashboard) for the README: docs/dashboard.svg.

Trains train.py's main() in-process with the panel on, drawn into a recording console instead of
the terminal, and saves the panel's last frame as SVG with rich's exporter. Any train.py flag
changes the run (default: CartPole-v1, 200,000 steps, an evaluation every 50 epochs).

    python benchmarks/dashboard_capture.py                          # -> docs/dashboard.svg
    python benchmarks/dashboard_capture.py --out /tmp/panel.svg --preset mettagrid --trainer.total-timesteps 300000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

# The repository root instead of benchmarks/, whose mettagrid.py would shadow the mettagrid package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from rich.console import Console  # noqa: E402  (the dashboard extra)

import train  # noqa: E402
from cleanmetta import dashboard, log  # noqa: E402
from cleanmetta.cli import parse_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 110


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.svg"))
    args, rest = parser.parse_known_args()
    frames: list = []

    class Recorded(dashboard.Dashboard):
        """The panel, drawn into a console that records instead of the terminal; keeps its last frame."""

        def __init__(self, run_dir: str, total_steps: int | None):
            super().__init__(run_dir, total_steps, Console(file=io.StringIO(), width=WIDTH, force_terminal=True))

        def stop(self) -> None:
            if self.live.is_started:
                frames.append(self.render())
            super().stop()

    log.Dashboard = Recorded  # StatsLogger builds this one
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the panel's title shows runs/CartPole-v1__1, as a user's run would
        config = parse_config(["--trainer.total-timesteps", "200000", "--evaluation.interval", "50",
                               "--experiment-name", "CartPole-v1__1", *rest])
        config.log.dashboard = "on"
        train.main(config)
        os.chdir(ROOT)
    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True)
    console.print(frames[-1])
    console.save_svg(args.out, title="python train.py  (--log.dashboard, a 2-core CPU machine)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
