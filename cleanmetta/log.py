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
  episode), the mean return of the last 20 episodes, and `perf`: where this process's time went
  (timing.py; TensorBoard gets each epoch's split as perf/<part>);
- with `--log.wandb` (`start_wandb`), a Weights & Biases run under `wandb/`: the whole config, the
  same scalars under the same names against `global_step` (the agent steps), evaluation scores and
  videos. Its id is kept in `wandb_id`, so a resumed run continues the same wandb run.

config.json and summary.json are written atomically (files.py); episodes.csv and the TensorBoard
events are flushed every epoch, so that a killed run loses none of them (a resume cuts them back
to the checkpoint).

On the console: a progress line every few seconds, each evaluation's scores when they arrive, and
`end_of_run`'s summary when the run stops; on a terminal, the live panel (dashboard.py) instead of
the progress lines.

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
from cleanmetta.dashboard import Dashboard, wanted
from cleanmetta.files import write_json, write_text
from cleanmetta.timing import format_duration, hints

# update() stats key -> TensorBoard tag; any other key (a custom loss) is logged as losses/<key>.
LOSS_TAGS = {
    "policy_loss": "losses/policy_loss",
    "value_loss": "losses/value_loss",
    "entropy": "losses/entropy",
    "approx_kl": "losses/approx_kl",
    "clipfrac": "losses/clipfrac",
    "explained_variance": "losses/explained_variance",
}


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
        self.recent_lengths: deque[float] = deque(maxlen=20)
        self.last_scores: dict[str, float] = {}  # the latest evaluation's scores, and the best of each
        self.best_scores: dict[str, float] = {}
        self.last_sps = 0.0
        self.dashboard = None  # the live panel (dashboard.py) instead of the progress lines, when wanted
        if self.writes and config is not None and wanted(config.log, is_main=True):
            self.dashboard = Dashboard(run_dir, total_timesteps)

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
                  learning_rate: float, curriculum_stats: dict[str, float] | None = None,
                  split: dict[str, float] | None = None) -> None:
        """Record one epoch: its finished episodes, its update's losses, speed and learning rate (and the
        curriculum's scalars, Curriculum.update's; the epoch's time split, timing.Split.epoch's, as
        perf/<part>: each part's share of the epoch, perf/wall: its seconds)."""
        returns, lengths = rollout_stats["episodic_return"], rollout_stats["episodic_length"]
        epoch_steps, self.agent_steps = agent_steps - self.agent_steps, agent_steps
        seconds = self.elapsed
        if self.writes:
            run_seconds = self.seconds_before + seconds  # a resumed run's rows go on from its first part's time
            for episode_return, length in zip(returns.tolist(), lengths.tolist()):
                self.episodes_file.write(f"{agent_steps},{run_seconds:.3f},{episode_return:.6g},{length}\n")
        self.recent_returns.extend(returns.tolist())
        self.recent_lengths.extend(lengths.tolist())

        sps = self.steps_per_second(agent_steps)
        scalars = {"charts/SPS": sps, "charts/learning_rate": learning_rate, **(curriculum_stats or {})}
        if split:
            scalars.update({f"perf/{part}": value / split["wall"] for part, value in split.items() if part != "wall"})
            scalars["perf/wall"] = split["wall"]
            self.last_sps = epoch_steps / max(split["wall"], 1e-9)
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

        if self.dashboard is not None:
            families = {k.split("/")[1]: v for k, v in scalars.items() if k.startswith("tasks/")
                        and k.endswith("/episodic_return")} if tasks is not None else {}
            self.dashboard.update(agent_steps=agent_steps, sps=self.last_sps or sps, mean_sps=sps,
                                  update_stats=update_stats, learning_rate=learning_rate, split=split,
                                  returns=self.mean_recent_return if self.recent_returns else None,
                                  lengths=float(np.mean(self.recent_lengths)) if self.recent_lengths else None,
                                  families=families)
            return
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

    def log_evaluation(self, agent_steps: int, scores: dict[str, float]) -> None:
        """Record an evaluation's scores (eval/<simulation>/<metric>); keep the latest and the best of
        each simulation's mean return, and say them (a line, or the panel)."""
        self.log_scalars(agent_steps, {f"eval/{key}": value for key, value in scores.items()})
        headline = {key: value for key, value in scores.items() if key.endswith("/mean_return")} or scores
        self.last_scores = headline
        for key, value in headline.items():
            self.best_scores[key] = max(value, self.best_scores.get(key, -math.inf))
        if self.dashboard is not None:
            self.dashboard.update(scores=headline)
        elif self.writes and headline:
            print(f"evaluation at step {agent_steps:,}: " + ", ".join(f"{k} {v:.4g}" for k, v in headline.items()),
                  flush=True)

    def summary(self) -> dict[str, float]:
        """The whole run's totals (a resumed run's first part included)."""
        seconds = self.seconds_before + self.elapsed
        return {"agent_steps": self.agent_steps, "seconds": seconds,
                "steps_per_second": self.agent_steps / max(seconds, 1e-9),
                "mean_return_last20": self.mean_recent_return}

    def close(self, perf: dict[str, float] | None = None, report: str | None = None) -> None:
        """Write summary.json (with `perf`, timing.Split.whole_run's seconds and shares, when given),
        stop the panel, print `report` (end_of_run's), close the files, and finish the wandb run (with
        the summary in it)."""
        if not self.writes:
            return
        if self.dashboard is not None:
            self.dashboard.stop()
        write_json(os.path.join(self.run_dir, "summary.json"), {**self.summary(), **({"perf": perf} if perf else {})})
        if report:
            print(report, flush=True)
        self.episodes_file.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.summary.update({f"summary/{key}": value for key, value in self.summary().items()})
            self.wandb_run.finish()


def end_of_run(logger: StatsLogger, epoch: int, num_epochs: int, saved_epoch: int | None, stopped_by: str | None,
               perf: dict[str, float]) -> str:
    """What a run says when it stops (normally, at Ctrl-C or SIGTERM): where it is, how far it got, its
    last and best scores, its checkpoint, where the time went (with hints, timing.hints), and the
    commands to evaluate, plot and resume it."""
    run_dir, summary = logger.run_dir, logger.summary()
    how = f"stopped by {stopped_by} at epoch {epoch:,} of {num_epochs:,}" if stopped_by else \
        f"finished: {epoch:,} epochs"
    lines = [f"run {how}, {summary['agent_steps']:,} agent steps in {format_duration(summary['seconds'])} "
             f"({summary['steps_per_second']:,.0f} steps/s); return {summary['mean_return_last20']:.4g} (last 20)",
             f"  run directory: {run_dir} (summary.json, episodes.csv, config.json)"]
    for key, value in logger.last_scores.items():
        lines.append(f"  evaluation {key}: last {value:.4g}, best {logger.best_scores[key]:.4g}")
    if saved_epoch is not None:
        lines.append(f"  checkpoint: epoch {saved_epoch:,} ({os.path.join(run_dir, 'trainer_states')})")
    shares = {part[:-6]: share for part, share in perf.items() if part.endswith("_share") and share >= 0.005}
    if shares:
        lines.append("  where the time went: " + ", ".join(f"{part} {share:.0%}" for part, share in
                                                           sorted(shares.items(), key=lambda item: -item[1])))
        lines += [f"  try: {hint}" for hint in hints({part[:-2]: s for part, s in perf.items() if part.endswith("_s")})]
    longer = f" --trainer.total-timesteps {2 * summary['agent_steps']}" if not stopped_by else ""
    lines += ["next:", f"  python -m cleanmetta.evaluate {run_dir}",
              f"  python -m cleanmetta.plot {run_dir} --out {os.path.join(run_dir, 'curves.png')}",
              f"  python train.py --resume {run_dir}{longer}"]
    return "\n".join(lines)
