"""Wall time to solve CartPole-v1 with small_fast_config(), process start included.

Each seed runs `python train.py --preset small_fast` in a fresh process. "Solved" is the first
moment the mean return of the last 20 episodes reaches 475; its wall time is the process's start-up
(interpreter, imports, building the parts: wall time minus the training time the run reports) plus
the training time at which that episode ended (episodes.csv).

    python benchmarks/solve_time.py                  # 5 seeds
    python benchmarks/solve_time.py --seeds 1 2 3 -- --trainer.learning-rate 2e-3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import first_solved, run_cleanmetta  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("train_args", nargs="*", help="extra train.py flags (after --)")
    args = parser.parse_args()

    times, steps = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            run = run_cleanmetta(seed, None, workdir, ["--preset", "small_fast", *args.train_args])
            solved = first_solved(run["episodes"])
            startup = run["wall"] - run["train"]
            wall = startup + solved[1] if solved else None
            times.append(wall)
            steps.append(solved[0] if solved else None)
            print(f"seed {seed}: start-up {startup:.1f} s, solved at step {solved[0] if solved else 'never'}, "
                  f"wall {'never' if wall is None else f'{wall:.1f} s'} (run {run['wall']:.1f} s)", flush=True)
    never = float("inf")  # an unsolved seed counts as slower than any solved one
    print(f"\nsmall_fast_config: solved in {sum(t is not None for t in times)}/{len(times)} seeds; "
          f"median wall time to solve {statistics.median([never if t is None else t for t in times]):.1f} s, "
          f"median solve step {statistics.median([never if s is None else s for s in steps]):,.0f}")


if __name__ == "__main__":
    main()
