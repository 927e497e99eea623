"""StatsLogger: TensorBoard scalars, a per-episode CSV and the console progress line.

A run directory holds:
- `config.json`: the resolved TrainingConfig the run was started with;
- TensorBoard event files under CleanRL's tags (charts/episodic_return, charts/SPS,
  losses/value_loss, ...; one losses/<name> per custom loss);
- `episodes.csv`: agent_steps, seconds since training started, return and length of every
  finished episode (a resumed run first cuts it back to its checkpoint's step, as TensorBoard's
  purge_step does for the event files, and restores the console's last-20 window from it);
- `summary.json` when the run ends: the whole run's agent steps, training seconds and steps per
  second (a resumed run adds the seconds of its first part, up to the checkpoint's last logged
  episode), and the mean return of the last 20 episodes;
- with `--log.wandb` (`start_wandb`), a Weights & Biases run under `wandb/`: the whole config, the
  same scalars under the same names against `global_step` (the agent steps), evaluation scores and
  videos. Its id is kept in `wandb_id`, so a resumed run continues the same wandb run.

config.json and summary.json are written atomically (files.py); episodes.csv and the TensorBoard
events are flushed every epoch, so that a killed run loses none of them (a resume cuts them back
to the checkpoint).

Under torchrun only rank 0 writes and prints (and talks to wandb): the other ranks' loggers keep
the same counters (the collector hands every rank all ranks' episodes) and write nothing.

This module only records; it never changes what it is given.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from typing import Any

import numpy as np

from cleanmetta import distributed
from cleanmetta.config import TrainingConfig, import_extra
from cleanmetta.curriculum import Curriculum, Task, configured_families
from cleanmetta.files import write_json, write_text

# update() stats key -> TensorBoard tag; any other key (a custom loss) is logged as losses/<key>.
LOSS_TAGS = {
    "policy_loss": "losses/policy_loss",
    "value_loss": "losses/value_loss",
    "entropy": "losses/entropy",
    "approx_kl": "losses/approx_kl",
    "clipfrac": "losses/clipfrac",
    "explained_variance": "losses/explained_variance",
}


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def cut_episodes_back(path: str, agent_steps: int, window: int = 20) -> tuple[list[float], float]:
    """Truncate an episodes.csv after its last whole row logged at or before `agent_steps`; return the
    returns of the last `window` rows kept and the seconds of the last one (0 if none). A run killed
    after its last checkpoint logged episodes (and maybe half a row) that its resumed run will play
    again."""
    returns: deque[float] = deque(maxlen=window)
    seconds = 0.0
    with open(path, "rb+") as f:
        f.readline()  # the header
        keep = f.tell()
        for line in iter(f.readline, b""):
            fields = line.split(b",")
            try:
                if not line.endswith(b"\n") or len(fields) != 4 or int(fields[0]) > agent_steps:
                    break
                returns.append(float(fields[2]))
                seconds = float(fields[1])
            except ValueError:  # a row cut short by the kill
                break
            keep = f.tell()
        f.truncate(keep)
    return list(returns), seconds


WANDB_ID_FILE = "wandb_id"


def start_wandb(config: TrainingConfig, run_dir: str, resume: bool = False) -> Any:
    """A wandb run for this training run when config.log.wandb, else None (and None on every torchrun
    rank but 0). Its files go under run_dir/wandb; WANDB_MODE=offline keeps them there, unsent.

    The run's id is written to run_dir/wandb_id; with `resume` (the trainer restored a checkpoint)
    that id is reused, so the resumed training continues the same wandb run. Scalars are plotted
    against `global_step`, the agent steps, which a resumed run logs again from its checkpoint on.
    """
    if not config.log.wandb or not distributed.is_main():
        return None
    wandb = import_extra("wandb", "wandb", "--log.wandb")
    os.makedirs(run_dir, exist_ok=True)
    id_path = os.path.join(run_dir, WANDB_ID_FILE)
    run_id = None
    if resume and os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip() or None
    log = config.log
    run = wandb.init(project=log.wandb_project, entity=log.wandb_entity, group=log.wandb_group,
                     name=log.wandb_name or os.path.basename(os.path.normpath(run_dir)), tags=list(log.wandb_tags),
                     config=config.to_dict(), dir=run_dir, id=run_id, resume="allow" if run_id else None)
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    write_text(id_path, run.id)
    return run


class StatsLogger:
    def __init__(self, run_dir: str, config: Any = None, total_timesteps: int | None = None,
                 tensorboard: bool = True, console_interval: float = 5.0, start_step: int = 0,
                 wandb_run: Any = None):
        self.run_dir = run_dir
        self.writes = distributed.is_main()  # torchrun: rank 0 alone writes files and prints
        self.writer = None
        self.episodes_file = None
        # optional: a wandb run (start_wandb(), wandb.init()) that receives the same scalars; close() finishes it
        self.wandb_run = wandb_run if self.writes else None
        self.recent_returns: deque[float] = deque(maxlen=20)
        # the curriculum's families: episodes are logged per family, and the settings they played as histograms
        self.families = Curriculum(configured_families(config.env, config.curriculum)) if config is not None else None
        self.seconds_before = 0.0  # a resumed run's training seconds up to its checkpoint (episodes.csv)
        if self.writes:
            self._open_files(config, tensorboard, start_step)
        self.total_timesteps = total_timesteps
        self.console_interval = console_interval
        self.start_time = time.perf_counter()
        self.start_step = start_step
        self.last_print = -math.inf
        self.agent_steps = start_step

    def _open_files(self, config: Any, tensorboard: bool, start_step: int) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        if config is not None:
            write_json(os.path.join(self.run_dir, "config.json"), dataclasses.asdict(config))
        if tensorboard:
            # imported only when on: TensorBoard's writer costs ~16 MB and a second of start-up
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: after a resume, drop events a killed run wrote past its last checkpoint
            self.writer = SummaryWriter(self.run_dir, purge_step=start_step or None)
        episodes_path = os.path.join(self.run_dir, "episodes.csv")
        is_new = not os.path.exists(episodes_path)
        if start_step and not is_new:
            returns, self.seconds_before = cut_episodes_back(episodes_path, start_step)
            self.recent_returns.extend(returns)
        self.episodes_file = open(episodes_path, "a")
        if is_new:
            self.episodes_file.write("agent_steps,seconds,return,length\n")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def steps_per_second(self, agent_steps: int) -> float:
        return (agent_steps - self.start_step) / max(self.elapsed, 1e-9)

    @property
    def mean_recent_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()  # to the OS, so that a kill loses no event (its own flush comes every 2 minutes)
        if self.wandb_run is not None:
            self.wandb_run.log({**scalars, "global_step": step})

    def log_settings(self, step: int, tasks: np.ndarray) -> None:
        """Histograms of the settings the episodes played, per family and setting (tasks/<family>/<key>:
        the value in a range, the index in a choice), so that TensorBoard's and wandb's histogram views
        show over training which parts of each family were sampled."""
        if self.families is None or (self.writer is None and self.wandb_run is None):
            return
        histograms: dict[str, tuple[list[float], np.ndarray]] = {}  # tag -> (values, bin edges)
        families = {family.spec: family for family in self.families.families if family.settings}
        for name in tasks:
            family = families.get(self.families.family_of(name))
            if family is None:  # a concrete task: no settings to show
                continue
            kwargs = Task.parse(name).kwargs
            for key in family.settings:
                values, _ = histograms.setdefault(f"tasks/{family.spec}/{key}", ([], family.histogram_edges(key)))
                values.append(family.position(key, kwargs[key]))
        for tag, (values, edges) in histograms.items():
            if self.writer is not None:
                self.writer.add_histogram(tag, np.asarray(values), step, bins=edges)
        if self.wandb_run is not None and histograms:
            import wandb  # the wandb extra: installed, since there is a wandb run

            self.wandb_run.log({**{tag: wandb.Histogram(np_histogram=np.histogram(values, edges))
                                   for tag, (values, edges) in histograms.items()}, "global_step": step})

    def log_videos(self, step: int, videos: dict[str, str]) -> None:
        """Send mp4 files (tag -> path) to the wandb run, if any; they are on disk already."""
        if self.wandb_run is not None and videos:
            import wandb  # the wandb extra: installed, since there is a wandb run

            self.wandb_run.log({**{tag: wandb.Video(path, format="mp4") for tag, path in videos.items()},
                                "global_step": step})

    def log_epoch(self, agent_steps: int, rollout_stats: dict[str, np.ndarray], update_stats: dict[str, float],
                  learning_rate: float, curriculum_stats: dict[str, float] | None = None) -> None:
        """Record one epoch: its finished episodes, its update's losses, speed and learning rate (and the
        curriculum's scalars, Curriculum.update's)."""
        returns, lengths = rollout_stats["episodic_return"], rollout_stats["episodic_length"]
        self.agent_steps = agent_steps
        seconds = self.elapsed
        if self.writes:
            run_seconds = self.seconds_before + seconds  # a resumed run's rows go on from its first part's time
            for episode_return, length in zip(returns.tolist(), lengths.tolist()):
                self.episodes_file.write(f"{agent_steps},{run_seconds:.3f},{episode_return:.6g},{length}\n")
        self.recent_returns.extend(returns.tolist())

        sps = self.steps_per_second(agent_steps)
        scalars = {"charts/SPS": sps, "charts/learning_rate": learning_rate, **(curriculum_stats or {})}
        if len(returns):
            scalars["charts/episodic_return"] = float(np.mean(returns))
            scalars["charts/episodic_length"] = float(np.mean(lengths))
        tasks = rollout_stats.get("episodic_task")
        if tasks is not None:
            labels = np.array([self.families.family_of(task) for task in tasks]) if self.families else tasks
            for label in np.unique(labels):
                scalars[f"tasks/{label}/episodic_return"] = float(np.mean(returns[labels == label]))
            self.log_settings(agent_steps, tasks)
        for name, values in rollout_stats.get("episode_stats", {}).items():  # e.g. MettaGrid's game stats
            scalars[f"env/{name}"] = float(np.mean(values))
        for key, value in update_stats.items():
            scalars[LOSS_TAGS.get(key, f"losses/{key}")] = value
        self.log_scalars(agent_steps, scalars)
        if self.writes:
            self.episodes_file.flush()  # to the OS each epoch, so that a kill loses no row

        done = self.total_timesteps is not None and agent_steps >= self.total_timesteps
        if self.writes and (done or seconds - self.last_print >= self.console_interval):
            self.last_print = seconds
            print(self.progress_line(agent_steps, sps, update_stats), flush=True)

    def progress_line(self, agent_steps: int, sps: float, update_stats: dict[str, float]) -> str:
        if self.total_timesteps:
            percent = 100.0 * agent_steps / self.total_timesteps
            eta = (self.total_timesteps - agent_steps) / sps if sps > 0 else float("inf")
            head = f"[{percent:5.1f}%] step {agent_steps:,}/{self.total_timesteps:,} | ETA {format_duration(eta)}"
        else:
            head = f"step {agent_steps:,}"
        losses = " ".join(f"{key} {update_stats[key]:.3g}" for key in ("policy_loss", "value_loss", "entropy")
                          if key in update_stats)
        recent = f"{self.mean_recent_return:.1f}" if self.recent_returns else "-"  # no episode has ended yet
        return f"{head} | {sps:,.0f} SPS | return {recent} (last 20) | {losses}"

    def summary(self) -> dict[str, float]:
        """The whole run's totals (a resumed run's first part included)."""
        seconds = self.seconds_before + self.elapsed
        return {"agent_steps": self.agent_steps, "seconds": seconds,
                "steps_per_second": self.agent_steps / max(seconds, 1e-9),
                "mean_return_last20": self.mean_recent_return}

    def close(self) -> None:
        """Write summary.json, close the files, and finish the wandb run (with the summary in it)."""
        if not self.writes:
            return
        write_json(os.path.join(self.run_dir, "summary.json"), self.summary())
        self.episodes_file.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.summary.update({f"summary/{key}": value for key, value in self.summary().items()})
            self.wandb_run.finish()
