"""Fault-injection soak: training runs killed at random moments, then resumed. Is anything lost?

    python benchmarks/faults.py --runs 36 --out benchmarks/results/faults.json

Every run is train.py on CartPole (--preset small_fast: 512 agent steps an epoch; 40 epochs, a
checkpoint every 2) in its own run directory, hit by one of these, in turn:

    sigkill          SIGKILL at a random moment (a random epoch, a random instant in it)
    sigkill-saving   SIGKILL while a checkpoint file is being written (a temporary file is seen;
                     a wider network makes the files, and the moments, larger)
    sigkill-twice    SIGKILL, resume, SIGKILL the resumed run, resume again
    truncated        SIGKILL, then the newest trainer state or policy file cut to half its size
                     (a bad disk block, a copy cut short)
    sigterm          SIGTERM at a random moment: the run saves and exits, and must lose nothing
    torchrun         two processes (gloo), one of them (at random) SIGKILLed at a random moment

After each kill the run directory must be consistent (cleanmetta.checkpoint.inconsistencies:
every record's policy reads back, the trainer state in force belongs to the latest policy; not
checked for `truncated`, whose damage the resume must repair), then `train.py --resume RUN` (under
torchrun for `torchrun`) must finish the run: the newest checkpoint epochs present once (the
policies checkpoint.keep_policies keeps), the last at the final epoch, episodes.csv in step order, keeping every row logged up to the checkpoint it
resumed from (not: ending at the final step, since the resumed run restarts its episodes, and a
good policy's take 500 steps, more than the epochs left after a late checkpoint). Epochs lost per
kill: the epochs the killed run had finished (its last progress line) minus the checkpoint it left
in force.

Results go to --out after every run (a list of per-run records, each with the commit it ran), so an
interrupted soak continues where it stopped when started again with the same --out (records are only
added, never replaced); the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import compare  # noqa: E402  (benchmarks/, this file's folder, is on sys.path)
from cleanmetta.checkpoint import CheckpointError, PolicyStore, inconsistencies, trainer_state_paths  # noqa: E402
from cleanmetta.config import TrainingConfig  # noqa: E402
from cleanmetta.files import write_json  # noqa: E402

SCENARIOS = ["sigkill", "sigkill-saving", "sigkill-twice", "truncated", "sigterm", "torchrun"]
EPOCHS, INTERVAL, STEPS_PER_EPOCH = 40, 2, 512  # small_fast: 16 envs x 32 steps (x 2 under torchrun)
KEEP_POLICIES = TrainingConfig().checkpoint.keep_policies  # the run's default


class Run:
    """One train.py process (or torchrun of two), its output read line by line as it comes."""

    def __init__(self, run_dir: str, torchrun: bool, resume: bool, extra: list[str]):
        self.run_dir = run_dir
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                    if torchrun else [sys.executable])
        where = (["--resume", run_dir] if resume else
                 ["--log.run-root", os.path.dirname(run_dir), "--experiment-name", os.path.basename(run_dir)])
        steps = EPOCHS * STEPS_PER_EPOCH * (2 if torchrun else 1)
        command = [*launcher, "train.py", "--preset", "small_fast", *where, "--trainer.total-timesteps", str(steps),
                   "--checkpoint.interval", str(INTERVAL), "--log.no-tensorboard", "--log.console-interval", "0",
                   "--distributed-timeout", "30", *extra]
        self.steps_per_epoch = STEPS_PER_EPOCH * (2 if torchrun else 1)
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, store), daemon=True)
                        for stream, store in ((self.process.stdout, self.lines), (self.process.stderr, self.errors))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, store: list[str]) -> None:
        for line in stream:
            store.append(line.rstrip("\n"))

    @property
    def epochs_done(self) -> int:
        """Epochs finished, from the last progress line ('[ 12.5%] step 6,144/...')."""
        for line in reversed(self.lines):
            if m := re.search(r"step ([\d,]+)/", line):
                return int(m.group(1).replace(",", "")) // self.steps_per_epoch
        return 0

    def wait(self, timeout: float = 300.0) -> int:
        code = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code

    def worker_pids(self) -> list[int]:
        with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
            return [int(pid) for pid in f.read().split()]


def committed_epoch(run_dir: str) -> int:
    try:
        return PolicyStore(run_dir).latest().epoch
    except CheckpointError:
        return 0


def read_rows(run_dir: str) -> list[str]:
    path = os.path.join(run_dir, "episodes.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [row for row in f.read().splitlines()[1:] if row.count(",") == 3]  # a row cut short by the kill: out


def saving(run_dir: str) -> bool:
    """A checkpoint file is being written (its temporary file exists)."""
    for sub in ("policies", "trainer_states", ""):
        try:
            if any(entry.name.endswith(".tmp") for entry in os.scandir(os.path.join(run_dir, sub))):
                return True
        except FileNotFoundError:
            pass
    return False


def hit(run: Run, rng: random.Random, how: str, torchrun: bool, epochs: tuple[int, int]) -> dict:
    """Wait for a random epoch in `epochs` (first, last), then deliver the fault; return what happened."""
    target = rng.randint(*epochs)
    deadline = time.monotonic() + 120
    while run.epochs_done < target and run.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    during_save = False
    if how == "saving":  # the moment a checkpoint file is being written, within the next few epochs
        stop = time.monotonic() + 10
        while not (during_save := saving(run.run_dir)) and run.process.poll() is None and time.monotonic() < stop:
            pass
    else:
        time.sleep(rng.uniform(0.0, 0.06))  # somewhere inside the epoch (one takes ~40 ms)
    done = run.epochs_done
    if run.process.poll() is not None:
        return {"missed": True}
    if torchrun:
        victim = rng.choice(run.worker_pids())
        os.kill(victim, signal.SIGKILL)
    else:
        run.process.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    code = run.wait()
    return {"target_epoch": target, "epochs_done": max(done, run.epochs_done), "exit_code": code,
            "during_save": during_save}


def soak_one(index: int, scenario: str, root: str) -> dict:
    rng = random.Random(index)
    run_dir = os.path.join(root, f"run{index:03d}")
    torchrun = scenario == "torchrun"
    extra = ["--agent.hidden-size", "512"] if scenario == "sigkill-saving" else []
    record: dict = {"index": index, "scenario": scenario, "kills": [], "inconsistent": []}
    start = time.monotonic()
    run = Run(run_dir, torchrun, resume=False, extra=extra)
    rows_at_checkpoint: list[str] = []
    for attempt in range(2 if scenario == "sigkill-twice" else 1):
        how = {"sigterm": "sigterm", "sigkill-saving": "saving"}.get(scenario, "kill")
        if scenario == "sigkill-twice":  # the first kill in the first half, the second after the resume
            epochs = (1, EPOCHS // 2) if attempt == 0 else (committed_epoch(run_dir) + 1, EPOCHS - 2)
        else:  # truncated: after two checkpoints at least, so that there is one to fall back to
            epochs = (2 * INTERVAL + 1 if scenario == "truncated" else 1, EPOCHS - 4)
        kill = hit(run, rng, how, torchrun, epochs)
        kill["committed_epoch"] = committed_epoch(run_dir)
        kill["epochs_lost"] = kill.get("epochs_done", 0) - kill["committed_epoch"]
        kill["leftover_tmp"] = saving(run_dir)
        record["kills"].append(kill)
        if scenario != "truncated":
            record["inconsistent"] += [f"after kill {attempt + 1}: {p}" for p in inconsistencies(run_dir)]
        checkpoint_step = kill["committed_epoch"] * run.steps_per_epoch
        rows_at_checkpoint = [row for row in read_rows(run_dir) if int(row.split(",")[0]) <= checkpoint_step]
        if scenario == "truncated":
            path = rng.choice([trainer_state_paths(run_dir)[0], PolicyStore(run_dir).latest().uri])
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            record["truncated"] = os.path.relpath(path, run_dir)
            rows_at_checkpoint = []  # the resume falls back to an older checkpoint: compared below from its own
        run = Run(run_dir, torchrun, resume=True, extra=[])
    code = run.wait()
    out = "\n".join(run.lines)
    resumed = re.search(r"resumed \S+ at epoch (\d+)", out)
    record["resumed_from"] = int(resumed.group(1)) if resumed else 0
    if scenario == "truncated":
        record["fell_back"] = "checkpoint: skipped" in out
        record["epochs_lost_to_damage"] = record["kills"][0]["committed_epoch"] - record["resumed_from"]
    records = [r.epoch for r in PolicyStore(run_dir).records()] if os.path.exists(run_dir) else []
    steps = [int(row.split(",")[0]) for row in read_rows(run_dir)]
    final_step = EPOCHS * run.steps_per_epoch
    checks = {
        "exit 0": code == 0,
        "finished at the last epoch": bool(records) and records[-1] == EPOCHS,
        # the policies the run keeps (checkpoint.keep_policies; no evaluation here, so no best one): the newest
        "the newest checkpoint epochs once": set(list(range(INTERVAL, EPOCHS + 1, INTERVAL))[-KEEP_POLICIES:])
                                             <= set(records) and records == sorted(set(records)),
        # (not ending at final_step: a resumed run restarts its episodes, and a good CartPole policy's take
        # 500 steps, more than the few epochs after a late checkpoint)
        "episodes in step order": steps == sorted(steps) and bool(steps) and steps[-1] <= final_step,
        "rows up to the checkpoint kept": read_rows(run_dir)[:len(rows_at_checkpoint)] == rows_at_checkpoint,
    }
    record["inconsistent"] += [f"after the resume: {p}" for p in inconsistencies(run_dir)]
    record["failed_checks"] = [name for name, ok in checks.items() if not ok]
    record["finished"] = not record["failed_checks"]
    if record["failed_checks"] or record["inconsistent"]:
        record["stderr_tail"], record["last_steps"] = run.errors[-5:], steps[-3:]
    record["seconds"] = round(time.monotonic() - start, 1)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(run_dir + ".old-1", ignore_errors=True)
    return record


def table(results: list[dict]) -> str:
    lines = ["| fault | runs | resumed and finished | epochs lost per kill (max / mean) | kills during a save "
             "| inconsistent directories |", "|---|---|---|---|---|---|"]
    for scenario in SCENARIOS + ["all"]:
        rows = [r for r in results if scenario in ("all", r["scenario"])]
        if not rows:
            continue
        lost = [k["epochs_lost"] for r in rows for k in r["kills"] if not k.get("missed")]
        lines.append(f"| {scenario} | {len(rows)} | {sum(r['finished'] for r in rows)} / {len(rows)} | "
                     f"{max(lost) if lost else '-'} / {statistics.mean(lost) if lost else 0:.2f} | "
                     f"{sum(k.get('during_save', False) for r in rows for k in r['kills'])} | "
                     f"{sum(bool(r['inconsistent']) for r in rows)} |")
    damaged = [r for r in results if r["scenario"] == "truncated"]
    if damaged:
        lost = [r["epochs_lost_to_damage"] for r in damaged]
        lines.append(f"\ntruncated: {sum(r['fell_back'] for r in damaged)} of {len(damaged)} resumes skipped the "
                     f"damaged file and fell back to the checkpoint before, losing {max(lost)} epochs at most to "
                     "the damage.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=36, help="runs in all (scenarios taken in turn)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "faults.json"))
    parser.add_argument("--only", type=int, nargs="*", help="run these indices only (to reproduce one)")
    args = parser.parse_args()
    results = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)["runs"]
    done = {r["index"] for r in results}
    root = tempfile.mkdtemp(prefix="cleanmetta-faults-")
    try:
        for index in range(args.runs):
            if index in done or (args.only is not None and index not in args.only):
                continue
            record = {**soak_one(index, SCENARIOS[index % len(SCENARIOS)], root),
                      "commit": compare.commit_of(ROOT, *compare.CODE)}
            results.append(record)
            print(f"run {index:3d} {record['scenario']:15s} finished={record['finished']} "
                  f"lost={[k['epochs_lost'] for k in record['kills']]} inconsistent={record['inconsistent']} "
                  f"failed={record['failed_checks']} ({record['seconds']} s)", flush=True)
            write_json(args.out, {"command": "python benchmarks/faults.py " + " ".join(sys.argv[1:]),
                                  "machine": f"{os.cpu_count()}-core CPU", "epochs": EPOCHS, "interval": INTERVAL,
                                  "runs": sorted(results, key=lambda r: r["index"])})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(f"`python benchmarks/faults.py --runs {args.runs}`, {os.cpu_count()}-core CPU machine\n\n"
                + table(results) + "\n")


if __name__ == "__main__":
    main()
