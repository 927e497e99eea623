"""Where a run's time goes: each epoch's wall time split into its parts, always measured.

    split = Split()
    with split.part("update"):          # a part around a call (train.py's loop)
        ppo.update(experience)
    split.epoch()                       # {"env": s, ..., "other": s, "wall": s}, then the next epoch

The parts: `env` (stepping the vector env, or waiting for its worker processes), `policy` (the
rollout's forward pass, sampling, the actions read back and the buffer writes), `copies` (the
observations to the policy's device, the rollout's columns into the buffer), `update` (GAE and the
PPO update), `evaluation`, `checkpoint`, `logging`, `ranks` (torchrun: waiting in collectives for
the other processes; taken out of the part it happened in) and `other` (the rest of the epoch's
wall time). A `with split.part(...)` block costs about 0.44 µs: the collector times three parts
per env step, 0.17 ms of a CartPole epoch's ~40 ms (docs/logging.md has the measurement).

`hints()` reads a split as a user would: the largest part and the flags that shrink it;
`format_duration()` writes seconds as the console and the panel show them (1:02:03, 2:03).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

PARTS = ("env", "policy", "copies", "update", "evaluation", "checkpoint", "logging", "ranks")

HINTS = {  # the largest part -> what to try, each a flag that exists
    "env": "env-bound: step envs in worker processes (--env.num-workers N, --env.async-batches 2) or run "
           "more of them per step (--env.num-envs)",
    "policy": "policy-bound in the rollout: more envs per forward pass (--env.num-envs), a smaller network "
              "(--agent.hidden-size), or a GPU (--device cuda)",
    "copies": "copy-bound: fewer, larger copies with more envs per step (--env.num-envs)",
    "update": "update-bound: fewer epochs or minibatches per update (--ppo.update-epochs, --ppo.num-minibatches), "
              "--ppo.bf16 or --ppo.compile",
    "evaluation": "evaluation-bound: evaluate less often (--evaluation.interval) or on fewer episodes",
    "checkpoint": "checkpoint-bound: save less often (--checkpoint.interval)",
    "logging": "logging-bound: TensorBoard off (--log.no-tensorboard) or a longer --log.console-interval",
    "ranks": "waiting for other torchrun processes: give each the same work (env.num_envs, hardware)",
}


class Split:
    """Seconds per part of the current epoch (`seconds`) and of the whole run (`totals`). `waited`: a
    callable giving the seconds spent so far in collectives (distributed.waited), taken out of every
    part and counted as `ranks`."""

    def __init__(self, waited: Callable[[], float] | None = None):
        self.waited = waited or (lambda: 0.0)
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.totals = dict.fromkeys((*PARTS, "other", "wall"), 0.0)
        self.started = time.perf_counter()
        self.waited_before = self.waited()
        self._parts = {name: _Part(self, name) for name in PARTS}

    def part(self, name: str) -> _Part:
        """`with split.part(name):` adds the block's seconds to `name` (less what it waited for other ranks)."""
        return self._parts[name]

    def epoch(self) -> dict[str, float]:
        """The epoch that ends now: seconds per part, `other` (the rest) and `wall`; the next one starts."""
        now, waited = time.perf_counter(), self.waited()
        split = dict(self.seconds)
        split["ranks"] += waited - self.waited_before
        split["wall"] = now - self.started
        split["other"] = max(0.0, split["wall"] - sum(split[part] for part in PARTS))
        for part, seconds in split.items():
            self.totals[part] += seconds
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.started, self.waited_before = now, waited
        return split

    def whole_run(self) -> dict[str, float]:
        """The run's seconds per part, `other` and `wall` (the time since the last epoch() included: the
        last checkpoint), and each part's share of the wall time."""
        self.epoch()
        wall = self.totals["wall"] or 1e-9
        return {**{f"{part}_s": seconds for part, seconds in self.totals.items()},
                **{f"{part}_share": self.totals[part] / wall for part in (*PARTS, "other")}}


class _Part:
    """A reusable `with` block timing one part (no generator, no allocation per use)."""

    __slots__ = ("split", "name", "start", "waited")

    def __init__(self, split: Split, name: str):
        self.split, self.name = split, name

    def __enter__(self) -> None:
        self.waited = self.split.waited()
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.split.seconds[self.name] += time.perf_counter() - self.start - (self.split.waited() - self.waited)


def hints(totals: dict[str, float]) -> list[str]:
    """What to try, from a run's seconds per part: the hint of each part that took 25% of the time or
    more, largest first (nothing to say when no part does)."""
    wall = totals.get("wall") or 1e-9
    parts = sorted((part for part in PARTS if totals.get(part, 0.0) / wall >= 0.25), key=lambda p: -totals[p])
    return [f"{part} {totals[part] / wall:.0%}: {HINTS[part]}" for part in parts]


def format_duration(seconds: float) -> str:
    """Seconds as H:MM:SS, or M:SS under an hour; '?' when not finite (an ETA before any speed)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
