"""Where a training run's time goes: env stepping, the rollout's policy work, the PPO update, logging.

Runs train.py's main() in-process with timers wrapped around four calls: the vector env's step(),
RolloutCollector.collect() (minus the env steps inside it: the policy forward, sampling and buffer
writes), PPOOptimizer.update() and StatsLogger.log_epoch(). Everything else (start-up, checkpoints)
is "other". Under torchrun, every process prints its own split, and a fifth timer takes the
collectives out of the part that called them (mostly the update's gradient all-reduces): their
time includes waiting for the slowest process. Timers add about a microsecond per call.

    python benchmarks/profile_split.py                                  # reference CartPole settings
    python benchmarks/profile_split.py --trainer.total-timesteps 100000 --env.num-envs 16
    python benchmarks/profile_split.py --preset mettagrid --trainer.total-timesteps 163840
    torchrun --standalone --nproc_per_node 2 benchmarks/profile_split.py --preset mettagrid --env.num-envs 8
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict

# The repository root instead of benchmarks/, whose mettagrid.py would shadow the mettagrid package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import train  # noqa: E402
from cleanmetta import collector, distributed, envs, log, ppo  # noqa: E402

seconds: dict[str, float] = defaultdict(float)  # per label, excluding the timed calls nested inside
running: list[str] = []  # labels of the timed calls in progress, innermost last


def timed(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        running.append(label)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            running.pop()
            seconds[label] += elapsed
            if running:  # not the caller's time
                seconds[running[-1]] -= elapsed

    setattr(owner, name, wrapper)


def main() -> None:
    config = train.parse_config(sys.argv[1:])  # train.py's flags, --preset NAME included
    config.experiment_name = "profile"
    config.log.run_root = tempfile.mkdtemp(prefix="cleanmetta_profile_")
    config.log.console_interval = 1e9

    make_vecenv = envs.make_vecenv

    def make_timed_vecenv(*args, **kwargs):
        vecenv = make_vecenv(*args, **kwargs)
        timed(vecenv, "step", "env step")
        return vecenv

    train.make_vecenv = make_timed_vecenv
    timed(collector.RolloutCollector, "collect", "collect")
    timed(ppo.PPOOptimizer, "update", "update")
    timed(log.StatsLogger, "log_epoch", "logging")
    timed(distributed, "_collective", "collectives")

    start = time.perf_counter()
    result = train.main(config)
    total = time.perf_counter() - start
    split = {
        "env step": seconds["env step"],
        "rollout policy + buffer": seconds["collect"],
        "PPO update (incl. GAE)": seconds["update"],
        "logging": seconds["logging"],
    }
    if "collectives" in seconds:  # torchrun
        split["collectives (torchrun)"] = seconds["collectives"]
    split["other (setup, checkpoints)"] = total - sum(split.values())
    print(f"\n{result['agent_steps']:,} agent steps in {total:.1f} s ({result['agent_steps'] / total:,.0f} steps/s)\n")
    print("| part | seconds | share | us per agent step |")
    print("|---|---|---|---|")
    for part, secs in split.items():
        print(f"| {part} | {secs:.2f} | {100 * secs / total:.0f}% | {1e6 * secs / result['agent_steps']:.1f} |")


if __name__ == "__main__":
    main()
