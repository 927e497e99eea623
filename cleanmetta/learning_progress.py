"""Learning progress: on which tasks the agent is learning now, from the scores of its episodes.

Metta's curriculum algorithm (Metta's learning_progress_algorithm.py, Metta-AI/metta, commit
9b6f0d6e0a), on its own: it knows tasks only by key (an int) and scores only as numbers;
curriculum.py keeps the pool of tasks, gives the normalisation and draws the tasks.

Per task i, m_i is the mean of its last `memory` episode returns. Each `step()` (once per rollout)
moves two moving averages of it, in the returns' own units:

    fast_i <- fast_i + a   (m_i - fast_i)          a = ema_timescale
    slow_i <- slow_i + a/5 (m_i - slow_i)

both starting at m_i. A task whose score rises has its fast average above its slow one (one whose
score falls, below it); a task flat at any level has the two equal. Scoring maps both averages to
[0, 1] by the `normalize` it was given (curriculum.py: the family's score range as it is now) and
takes the gap between them:

    lp_i = |r(n(fast_i)) - r(n(slow_i))| + 0.1 max(r(n(fast_i)), 0)
    r(p) = p (1 - s) / (p + s (1 - 2p))               s = progress_smoothing

n is increasing and r too, so a rising task's gap stays open whatever the range, and a flat task's
gap stays 0 when the range widens (only its performance bonus, the second term, moves with where it
sits in the range). r stretches small scores (with s = 0.05, r(0.05) = 0.5), so the first successes
on a hard task count. A task with fewer than `sample_threshold` scores has lp_i = exploration_bonus
instead, so that new tasks get tried.

Sampling (`sampling_probabilities`): the tasks with lp_i > 0 are standardised,
z_i = (lp_i - mean) / std, squashed, q_i = sigmoid(z_i) / sum_j sigmoid(z_j), and mixed with
uniform draws over all N tasks:

    P_i = (1 - rand_task_rate) q_i + rand_task_rate / N

A task with lp_i = 0 (nothing learned, nothing to learn) is drawn only by the uniform share.

Eviction (`evictable`): the task with the lowest lp among those with at least `min_presentations`
scores, if it is in the bottom 40% of the pool; curriculum.py replaces it with a new task.

Where this differs from Metta's code, and why:
- Uniform share: P_i mixes in rand_task_rate / N. Metta declares rand_task_rate = 0.25 and never
  uses it; its draws follow q_i alone. Here the flag does what it names, and it keeps every pool
  task played, so that a task at lp 0 still gets scores and can show progress or be evicted.
- No floor: Metta floors every scored task at exploration_bonus, max(lp_i, 0.1), for sampling
  (not for eviction), so a task that always fails keeps a share of q like a learning one. Here the
  uniform share does that job and q goes to the tasks that move.
- One step per rollout, on the mean of the last `memory` scores: Metta steps a task's averages
  once per episode of that task, on that episode's score. Here ema_timescale is a time constant in
  rollouts, whatever the episode length, the number of agents or how often the task is drawn, and
  one lucky episode moves a mean of 25 by a 25th.
- Rate: ema_timescale = 0.1 per rollout; Metta's 0.001 per episode of the task is for runs of
  billions of steps and would barely move the averages of a run of a few hundred rollouts.
- Normalisation: Metta clips each score to [0, 1] and keeps the averages of (score - 0.5) / 0.5, a
  fixed baseline for success rates, and applies r to values in [-1, 1] (below -0.056, where r's
  denominator is <= 0, it takes p (1 - s)). Here returns keep their units, as they are not success
  rates and each family has its own scale: each family is mapped to [0, 1] by its own range (fixed,
  or the running min and max of its tasks' means) when scoring, so that a widening range neither
  hides a rising task nor lends a flat one progress.
- Standardising from two tasks: Metta standardises only when more than two tasks score above 0;
  with two, sigmoid of the raw lp_i (about 0.1 to 0.3) gives nearly equal draws, [0.3, 0.1] ->
  [0.52, 0.48]. Here the same rule holds at every pool size: [0.3, 0.1] -> [0.73, 0.27].
- sample_threshold: the bonus until 10 scores (Metta declares it and scores after 2): a mean of
  fewer than 10 scores, 3 MettaGrid simulations, is mostly noise.
- Eviction once per rollout, after the update: Metta checks at every task draw and plays the new
  task at once; its test compares the floored sampling scores with the 40th percentile and evicts
  the lowest unfloored score among the tasks at or below it, which without a floor is the rule above.
- The performance gain (Metta's lp_gain) is fixed at its default, 0.1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def sampling_probabilities(scores: np.ndarray, rand_task_rate: float) -> np.ndarray:
    """P_i from the tasks' lp_i: the positive ones standardised (from two on), squashed by a sigmoid and
    normalised, mixed with a uniform share rand_task_rate."""
    scores = np.asarray(scores, dtype=float)
    q = np.zeros(len(scores))
    positive = scores > 0
    if positive.any():
        z = scores[positive] - scores[positive].mean()
        std = z.std()
        z = z / std if std > 0 else z
        squashed = 1.0 / (1.0 + np.exp(-z))
        q[positive] = squashed / squashed.sum()
    else:
        q[:] = 1.0 / len(scores)
    return (1.0 - rand_task_rate) * q + rand_task_rate / len(scores)


class LearningProgress:
    """The scores of a pool's tasks. `normalize(task, value)` maps a task's mean return to [0, 1] (it is
    clipped there); None: the returns are in [0, 1] already."""

    def __init__(self, ema_timescale: float = 0.1, exploration_bonus: float = 0.1, sample_threshold: int = 10,
                 progress_smoothing: float = 0.05, memory: int = 25, rand_task_rate: float = 0.25,
                 normalize: Callable[[int, float], float] | None = None):
        self.ema_timescale, self.exploration_bonus = ema_timescale, exploration_bonus
        self.sample_threshold, self.progress_smoothing = sample_threshold, progress_smoothing
        self.memory, self.rand_task_rate, self.normalize = memory, rand_task_rate, normalize
        self.outcomes: dict[int, list[float]] = {}  # task -> its last `memory` scores
        self.counts: dict[int, int] = {}            # task -> scores recorded since it was added
        self.fast: dict[int, float] = {}            # task -> the averages of its mean score, in its units
        self.slow: dict[int, float] = {}

    def add(self, task: int) -> None:
        self.outcomes[task], self.counts[task] = [], 0

    def remove(self, task: int) -> None:
        for table in (self.outcomes, self.counts, self.fast, self.slow):
            table.pop(task, None)

    def record(self, task: int, score: float) -> None:
        """One finished episode's score, as the env returned it."""
        self.outcomes[task] = (self.outcomes[task] + [float(score)])[-self.memory:]
        self.counts[task] += 1

    def step(self) -> None:
        """Move every scored task's averages towards its mean score (once per rollout)."""
        a = self.ema_timescale
        for task, outcomes in self.outcomes.items():
            if not outcomes:
                continue
            mean = float(np.mean(outcomes))
            self.fast[task] = self.fast.get(task, mean) + a * (mean - self.fast.get(task, mean))
            self.slow[task] = self.slow.get(task, mean) + a / 5 * (mean - self.slow.get(task, mean))

    def _reweight(self, value: float, task: int) -> float:
        p = float(self.normalize(task, value)) if self.normalize else value
        p, s = min(max(p, 0.0), 1.0), self.progress_smoothing
        denominator = p + s * (1.0 - 2.0 * p)
        return p * (1.0 - s) / denominator if denominator > 0 else 0.0

    def score(self, task: int) -> float:
        """lp_i: the task's learning progress (the exploration bonus while it has few scores)."""
        if self.counts[task] < self.sample_threshold or task not in self.fast:
            return self.exploration_bonus
        fast, slow = self._reweight(self.fast[task], task), self._reweight(self.slow[task], task)
        return abs(fast - slow) + 0.1 * max(fast, 0.0)

    def probabilities(self, tasks: list[int]) -> np.ndarray:
        """P_i for `tasks`, summing to 1."""
        return sampling_probabilities(np.array([self.score(task) for task in tasks]), self.rand_task_rate)

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
                "counts": [self.counts[t] for t in tasks],  # fast_return, slow_return: None while unscored
                "fast_return": [self.fast.get(t) for t in tasks], "slow_return": [self.slow.get(t) for t in tasks]}

    def load_state_dict(self, state: dict) -> None:
        self.outcomes = {t: list(o) for t, o in zip(state["tasks"], state["outcomes"])}
        self.counts = dict(zip(state["tasks"], state["counts"]))
        self.fast = {t: v for t, v in zip(state["tasks"], state["fast_return"]) if v is not None}
        self.slow = {t: v for t, v in zip(state["tasks"], state["slow_return"]) if v is not None}
