"""Learning progress: on which tasks the agent is learning now, from the scores of its episodes.

Metta's curriculum algorithm (metta/cogworks/curriculum/learning_progress_algorithm.py), on its own:
it knows tasks only by key (an int) and scores only as numbers; curriculum.py keeps the pool of
tasks, normalises the scores and draws the tasks.

Per task i, its last `memory` episode scores have a mean m_i, normalised to p_i in [0, 1] (by the
`normalize` that `step` is given). Each `step()` (once per rollout) moves two moving averages of it:

    fast_i <- fast_i + a   (p_i - fast_i)          a = ema_timescale
    slow_i <- slow_i + a/5 (p_i - slow_i)

both starting at p_i. A task whose score rises has its fast average ahead of its slow one (one
whose score falls, behind it); a task flat at any level has the two equal. Its learning progress:

    lp_i = |r(fast_i) - r(slow_i)| + 0.1 max(r(fast_i), 0)
    r(p) = p (1 - s) / (p + s (1 - 2p))               s = progress_smoothing

r stretches small scores (with s = 0.05, r(0.05) = 0.5), so that the first successes on a hard
task count; the second term is a small bonus for the tasks done well. A task with fewer than
`sample_threshold` scores has lp_i = exploration_bonus instead, so that new tasks get tried.

Sampling: the tasks with lp_i > 0 are standardised, z_i = (lp_i - mean) / std, squashed,
q_i = sigmoid(z_i) / sum_j sigmoid(z_j), and mixed with uniform draws over all N tasks:

    P_i = (1 - rand_task_rate) q_i + rand_task_rate / N

A task with lp_i = 0 (nothing learned, nothing to learn) is drawn only by the uniform share.

Eviction (`evictable`): the task with the lowest lp among those with at least `min_presentations`
scores, if it is in the bottom 40% of the pool; curriculum.py replaces it with a new task.

As Metta has it, except: Metta normalises by a fixed baseline of 0.5, (m - 0.5) / 0.5, and steps
the averages once per 32 episodes at a = 0.001 (runs of billions of steps); here the scores are
normalised by each family's range and the averages step once per rollout.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class LearningProgress:
    def __init__(self, ema_timescale: float = 0.1, exploration_bonus: float = 0.1, sample_threshold: int = 10,
                 progress_smoothing: float = 0.05, memory: int = 25, rand_task_rate: float = 0.25):
        self.ema_timescale, self.exploration_bonus = ema_timescale, exploration_bonus
        self.sample_threshold, self.progress_smoothing = sample_threshold, progress_smoothing
        self.memory, self.rand_task_rate = memory, rand_task_rate
        self.outcomes: dict[int, list[float]] = {}  # task -> its last `memory` scores
        self.counts: dict[int, int] = {}            # task -> scores recorded since it was added
        self.fast: dict[int, float] = {}
        self.slow: dict[int, float] = {}

    def add(self, task: int) -> None:
        self.outcomes[task], self.counts[task] = [], 0

    def remove(self, task: int) -> None:
        for table in (self.outcomes, self.counts, self.fast, self.slow):
            table.pop(task, None)

    def record(self, task: int, score: float) -> None:
        """One finished episode's score (raw; `step` normalises the means)."""
        self.outcomes[task] = (self.outcomes[task] + [float(score)])[-self.memory:]
        self.counts[task] += 1

    def step(self, normalize: Callable[[int, float], float] = lambda task, mean: mean) -> None:
        """Move every scored task's averages towards its normalised mean score."""
        a = self.ema_timescale
        for task, outcomes in self.outcomes.items():
            if not outcomes:
                continue
            p = min(max(float(normalize(task, float(np.mean(outcomes)))), 0.0), 1.0)
            self.fast[task] = self.fast.get(task, p) + a * (p - self.fast.get(task, p))
            self.slow[task] = self.slow.get(task, p) + a / 5 * (p - self.slow.get(task, p))

    def _reweight(self, p: float) -> float:
        s = self.progress_smoothing
        denominator = p + s * (1.0 - 2.0 * p)
        return p * (1.0 - s) / denominator if denominator > 0 else 0.0

    def score(self, task: int) -> float:
        """lp_i: the task's learning progress (the exploration bonus while it has few scores)."""
        if self.counts[task] < self.sample_threshold or task not in self.fast:
            return self.exploration_bonus
        fast, slow = self._reweight(self.fast[task]), self._reweight(self.slow[task])
        return abs(fast - slow) + 0.1 * max(fast, 0.0)

    def probabilities(self, tasks: list[int]) -> np.ndarray:
        """P_i for `tasks`, summing to 1."""
        scores = np.array([self.score(task) for task in tasks])
        q = np.zeros(len(tasks))
        positive = scores > 0
        if positive.any():
            z = scores[positive] - scores[positive].mean()
            std = z.std()
            z = z / std if std > 0 else z
            squashed = 1.0 / (1.0 + np.exp(-z))
            q[positive] = squashed / squashed.sum()
        else:
            q[:] = 1.0 / len(tasks)
        return (1.0 - self.rand_task_rate) * q + self.rand_task_rate / len(tasks)

    def evictable(self, tasks: list[int], min_presentations: int) -> int | None:
        """The task to replace: the lowest-scoring one with min_presentations scores, when it is in the
        pool's bottom 40%; None when no task qualifies."""
        scores = {task: self.score(task) for task in tasks}
        candidates = [task for task in tasks if self.counts[task] >= min_presentations]
        if len(tasks) < 2 or not candidates:
            return None
        threshold = sorted(scores.values())[int(len(scores) * 0.4)]
        lowest = min(candidates, key=lambda task: (scores[task], task))
        return lowest if scores[lowest] <= threshold else None

    def state_dict(self) -> dict:
        tasks = sorted(self.outcomes)
        return {"tasks": tasks, "outcomes": [self.outcomes[t] for t in tasks],
                "counts": [self.counts[t] for t in tasks],
                "fast": [self.fast.get(t) for t in tasks], "slow": [self.slow.get(t) for t in tasks]}  # None: unscored

    def load_state_dict(self, state: dict) -> None:
        self.outcomes = {t: list(o) for t, o in zip(state["tasks"], state["outcomes"])}
        self.counts = dict(zip(state["tasks"], state["counts"]))
        self.fast = {t: v for t, v in zip(state["tasks"], state["fast"]) if v is not None}
        self.slow = {t: v for t, v in zip(state["tasks"], state["slow"]) if v is not None}
