"""Learning progress against uniform sampling and against the hard tasks alone, on a MettaGrid task space.

The space: `mettagrid/hearts` with the map's width and height drawn from 10..50 and 1..4 altars
(5 hearts each), 4 agents, 100 steps: from small maps, where a uniformly random policy takes a
quarter to almost half of the hearts, to large maps with one altar, where it takes none
(`--random-policy` measures it on the evaluation grid: results/curriculum/random_policy_<date>.json).
Four ways to train on it, each with the `mettagrid` preset and the same agent-step budget, in a
fresh process per run:
- learning_progress: `--curriculum.algorithm learning_progress` over the space;
- learning_progress_by_altars: the same space as four families, one per altar count, each scored
  on its own scale (`--curriculum.score-ranges 0..1.25 0..2.5 0..3.75 0..5.0`, the most hearts an
  agent can average): in one family a map with 4 altars has 4 times the room of a map with 1;
- uniform: `--curriculum.algorithm random` over the same space (a new draw every episode);
- hard_only: uniform over the hardest corner, width and height 40..50 with 1..2 altars.

Each final policy is evaluated on a fixed held-out grid across the space: square maps of side 12,
24, 36 and 48 with 1, 2, 3 or 4 altars (16 settings; the training draws' width and height differ
in general, so these are seldom a training task), `--eval-episodes` simulations each, sampled
actions, a fixed seed. The hard half of the grid is the 8 settings with the most map cells per
altar; the easy half the other 8. Score: mean reward per agent.

Results go to benchmarks/results/curriculum/<arm>_seed<N>.json as each run finishes (an existing
one is kept: the benchmark continues where it stopped; to run the code again, first move the old
files into a subdirectory named for what they measured), each with its
command, the commit it ran at ("+changes": uncommitted changes, saved beside the results as
changes-<sha>.diff and named in the JSON), the machine, and the cores other processes kept busy
while it trained. Runs of earlier versions of the code are kept in subdirectories named for what
they measured. --report writes the table (results/curriculum.md, and the README between its
curriculum-table markers) and the figure (results/curriculum.png: evaluation per grid setting,
training curves, and which widths and altar counts each curriculum sampled over training, from the
runs' TensorBoard histograms).

    pip install -e ".[mettagrid,plot]"
    python benchmarks/curriculum.py                      # 4 arms x 5 seeds, 2M agent steps each (~35 min)
    python benchmarks/curriculum.py --seeds 1 --arms learning_progress uniform --total-timesteps 500000
    python benchmarks/curriculum.py --report
    python benchmarks/curriculum.py --random-policy      # the grid's scores without any training
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import importlib.util
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # benchmarks/mettagrid.py shadows

import numpy as np  # noqa: E402

from cleanmetta.checkpoint import PolicyStore  # noqa: E402
from cleanmetta.evaluate import PolicyEvaluator, Simulation  # noqa: E402
from cleanmetta.files import write_json, write_text  # noqa: E402

_spec = importlib.util.spec_from_file_location("compare", os.path.join(HERE, "compare.py"))  # by file: see above
compare = sys.modules["compare"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

SPACE = "mettagrid/hearts:width=10..50,height=10..50,altars=1..4,max_steps=100"
BY_ALTARS = [f"mettagrid/hearts:width=10..50,height=10..50,altars={a},max_steps=100" for a in (1, 2, 3, 4)]
CAPS = [f"0..{5 * a / 4}" for a in (1, 2, 3, 4)]  # the most hearts per agent: 5 per altar, 4 agents
HARD = "mettagrid/hearts:width=40..50,height=40..50,altars=1..2,max_steps=100"
ARMS = {  # name -> (curriculum.tasks, curriculum.algorithm, other flags)
    "learning_progress": ([SPACE], "learning_progress", []),
    "learning_progress_by_altars": (BY_ALTARS, "learning_progress", ["--curriculum.score-ranges", *CAPS]),
    "uniform": ([SPACE], "random", []),
    "hard_only": ([HARD], "random", []),
}
SIDES, ALTARS = (12, 24, 36, 48), (1, 2, 3, 4)
GRID = [(side, altars) for side in SIDES for altars in ALTARS]
HARD_HALF = set(sorted(GRID, key=lambda g: g[0] ** 2 / g[1])[len(GRID) // 2:])  # the most cells per altar
RESULTS = os.path.join(HERE, "results", "curriculum")
MARKERS = ("<!-- curriculum table: written by benchmarks/curriculum.py -->", "<!-- end of curriculum table -->")


def code_changes() -> str | None:
    """The uncommitted changes to the code a run trains with, saved once as results/curriculum/changes-<sha>.diff
    (the name goes in each run's JSON, so that a run at "<commit>+changes" can be rebuilt); None: no changes."""
    diff = subprocess.run(["git", "-C", ROOT, "diff", "HEAD", "--", "cleanmetta", "train.py"], capture_output=True,
                          text=True).stdout
    if not diff:
        return None
    name = f"changes-{hashlib.sha256(diff.encode()).hexdigest()[:12]}.diff"
    if not os.path.exists(os.path.join(RESULTS, name)):
        write_text(os.path.join(RESULTS, name), diff)
    return name


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine spent busy since boot, CPU seconds of this process's finished children)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def grid_task(side: int, altars: int) -> str:
    return f"mettagrid/hearts:width={side},height={side},altars={altars},max_steps=100"


def sampled_settings(run_dir: str) -> dict[str, dict]:
    """Per setting (width, altars), from the TensorBoard histograms tasks/<family>/<setting> that log.py
    writes each epoch (one bin per integer; a family of one altar count is counted by its episodes):
    `mean`, the mean value the epoch's episodes played, as (agent steps, mean); and `share`, for each
    tenth of training the share of its episodes in each of 10 bins of the range."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"histograms": 0}).Reload()
    counts: dict[str, dict[int, np.ndarray]] = {"width": {}, "altars": {}}  # setting -> step -> count per value
    for tag in events.Tags()["histograms"]:
        key = tag.rsplit("/", 1)[1]
        fixed = re.search(r"altars=(\d+)(,|$)", tag)  # a family of one altar count
        for item in events.Histograms(tag):
            h = item.histogram_value
            for setting, (low, high) in (("width", (10, 50)), ("altars", (1, 4))):
                row = counts[setting].setdefault(item.step, np.zeros(high - low + 1))
                if setting == key:
                    for limit, count in zip(h.bucket_limit, h.bucket):
                        if count and low <= limit - 0.5 <= high:
                            row[int(limit - 0.5) - low] += count
                elif setting == "altars" and key == "width" and fixed:
                    row[int(fixed.group(1)) - low] += h.num
    out = {}
    for setting, low in (("width", 10), ("altars", 1)):
        steps = sorted(counts[setting])
        rows = np.array([counts[setting][step] for step in steps])
        if not len(steps) or rows.sum() == 0:
            continue
        values = low + np.arange(rows.shape[1])
        tenths = np.array_split(rows, 10)
        bins = np.array_split(np.arange(rows.shape[1]), min(10, rows.shape[1]))
        share = np.array([[t[:, b].sum() for b in bins] for t in tenths])
        out[setting] = {"mean": [(step, round(float(row @ values / row.sum()), 3)) for step, row in zip(steps, rows)
                                 if row.sum()],
                        "share": (share / np.maximum(share.sum(axis=1, keepdims=True), 1)).round(4).tolist()}
    return out


def run(arm: str, seed: int, total: int, episodes: int, workdir: str) -> dict:
    tasks, algorithm, flags = ARMS[arm]
    name = f"{arm}_seed{seed}"
    shown = ["train.py", "--preset", "mettagrid", "--curriculum.tasks", *tasks, "--curriculum.algorithm", algorithm,
             *flags, "--trainer.total-timesteps", str(total), "--seed", str(seed)]
    command = [sys.executable, *shown, "--log.run-root", workdir, "--experiment-name", name,
               "--log.console-interval", "1e9"]
    machine_before, ours_before = busy_cpu_seconds()
    wall, _ = compare.run_process(command)
    machine_after, ours_after = busy_cpu_seconds()
    # the cores other processes kept busy meanwhile, on average: 0 on a machine of its own
    others = round((machine_after - machine_before - (ours_after - ours_before)) / wall, 2)
    run_dir = os.path.join(workdir, name)
    with open(os.path.join(run_dir, "episodes.csv")) as f:
        curve = [(int(r["agent_steps"]), float(r["return"])) for r in csv.DictReader(f)]
    policy = PolicyStore(run_dir).latest().policy
    sims = [Simulation(setting_name(side, altars), grid_task(side, altars), episodes=episodes, seed=4242)
            for side, altars in GRID]
    scores = {name: result.mean_return for name, result in PolicyEvaluator(sims).evaluate(policy).items()}
    steps = np.array([s for s, _ in curve])
    returns = np.array([r for _, r in curve])
    edges = np.linspace(0, steps.max(), 41)
    binned = [(int(b), float(returns[(steps > a) & (steps <= b)].mean())) for a, b in zip(edges[:-1], edges[1:])
              if ((steps > a) & (steps <= b)).any()]
    return {"arm": arm, "seed": seed, "tasks": tasks, "algorithm": algorithm, "total_timesteps": total,
            "eval_episodes": episodes, "wall_seconds": wall, "other_processes_cores": others,
            "command": shlex.join(["python", *shown]),
            "grid": scores, "curve": binned, "sampled": sampled_settings(run_dir),
            "commit": compare.commit_of(ROOT, "cleanmetta", "train.py"), "changes": code_changes(),
            "machine": compare.machine()}


class RandomPolicy:
    """Uniformly random actions over MettaGrid's Discrete(5) (noop and four moves), seeded by the evaluator."""

    def act(self, obs, deterministic: bool = False):
        import torch

        return torch.randint(5, (len(obs),))


def random_policy(episodes: int) -> None:
    """The grid's scores of a uniformly random policy, as a new file in results/curriculum/."""
    sims = [Simulation(setting_name(side, altars), grid_task(side, altars), episodes=episodes, seed=4242)
            for side, altars in GRID]
    scores = {name: result.mean_return for name, result in PolicyEvaluator(sims).evaluate(RandomPolicy()).items()}
    path = compare.result_path("curriculum/random_policy")
    compare.write_result(path, {"policy": "uniformly random", "eval_episodes": episodes, "grid": scores})
    print("\n".join(f"{name}: {score:.2f} reward per agent" for name, score in scores.items()))
    print(f"wrote {os.path.relpath(path, ROOT)}")


def setting_name(side: int, altars: int) -> str:
    return f"{side}x{side}_{altars}"


def halves(result: dict) -> tuple[float, float]:
    """Mean evaluation reward per agent on the easy and on the hard half of the grid."""
    scores = {g: result["grid"][setting_name(*g)] for g in GRID}
    return (float(np.mean([v for g, v in scores.items() if g not in HARD_HALF])),
            float(np.mean([v for g, v in scores.items() if g in HARD_HALF])))


def report() -> None:
    results = {arm: [json.load(open(path)) for path in sorted(glob.glob(os.path.join(RESULTS, f"{arm}_seed*.json")))]
               for arm in ARMS}
    results = {arm: runs for arm, runs in results.items() if runs}
    if not results:
        sys.exit(f"no results in {RESULTS}: run the benchmark first")
    some = next(iter(results.values()))[0]
    every_run = [r for runs in results.values() for r in runs]
    commits = ", ".join(sorted({r["commit"] + (f" with {os.path.relpath(os.path.join(RESULTS, r['changes']), ROOT)}"
                                               if r.get("changes") else "") for r in every_run}))
    others = [r["other_processes_cores"] for r in every_run if r.get("other_processes_cores") is not None]
    shared = (f" Other processes kept {min(others):.1f} to {max(others):.1f} cores busy (median "
              f"{statistics.median(others):.1f}) while the runs trained: wall times are of a shared machine."
              if others and max(others) >= 0.2 else "")

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.2f} ± {np.std(values):.2f}"

    lines = ["| curriculum | seeds | easy half | hard half | whole grid | wall (min) |", "|---|---|---|---|---|---|"]
    for arm, runs in results.items():
        easy, hard = zip(*(halves(r) for r in runs))
        whole = [float(np.mean(list(r["grid"].values()))) for r in runs]
        lines.append(f"| {arm} | {len(runs)} | {cell(easy)} | {cell(hard)} | {cell(whole)} | "
                     f"{statistics.median(r['wall_seconds'] for r in runs) / 60:.1f} |")
    table = "\n".join(lines)
    text = (f"{table}\n\nMean evaluation reward per agent ± std over seeds, on the 16-setting held-out grid "
            f"({some['eval_episodes']} simulations of 4 agents per setting); {some['total_timesteps']:,} agent steps "
            f"per run, `mettagrid` preset. Measured on a {some['machine']} (cleanmetta {commits}) with "
            f"`python benchmarks/curriculum.py`.{shared}")
    write_text(os.path.join(HERE, "results", "curriculum.md"), text + "\n")
    compare.write_readme_block(*MARKERS, text)
    print(text)
    draw(results)


def draw(results: dict) -> None:
    from cleanmetta.config import import_extra

    plt = import_extra("matplotlib.pyplot", "plot", "the curriculum figure")
    arms = list(results)
    fig, axes = plt.subplots(2, 1 + len(arms), figsize=(4.2 * (1 + len(arms)), 7.5))
    grids = {arm: np.mean([[r["grid"][setting_name(*g)] for g in GRID] for r in runs], axis=0).reshape(
        len(SIDES), len(ALTARS)) for arm, runs in results.items()}
    top = max(grid.max() for grid in grids.values())
    for k, arm in enumerate(arms):  # evaluation per grid setting: sides x altars, one colour scale
        ax = axes[0, k]
        image = ax.imshow(grids[arm], origin="lower", cmap="viridis", vmin=0, vmax=top)
        ax.set(xticks=range(len(ALTARS)), xticklabels=ALTARS, yticks=range(len(SIDES)), yticklabels=SIDES,
               xlabel="altars", ylabel="map side", title=f"{arm}\nevaluation reward per agent")
        fig.colorbar(image, ax=ax, shrink=0.8)
    ax = axes[0, -1]
    for arm in arms:  # training curves, mean over seeds
        curves = [np.array(r["curve"]) for r in results[arm]]
        n = min(len(c) for c in curves)
        ax.plot(curves[0][:n, 0], np.mean([c[:n, 1] for c in curves], axis=0), label=arm)
    ax.set(xlabel="agent steps", ylabel="training episode reward per agent", title="training (its own tasks)")
    ax.legend()
    for k, arm in enumerate(arms):  # which widths each curriculum sampled over training (seed 1)
        sampled = results[arm][0]["sampled"].get("width")
        ax = axes[1, k]
        if sampled:
            ax.imshow(np.array(sampled["share"]).T, origin="lower", aspect="auto", cmap="magma", extent=(0, 1, 10, 50),
                      vmin=0, vmax=0.3)
        ax.set(xlabel="fraction of training", ylabel="map width sampled", title=f"{arm}\nwidths played")
    ax = axes[1, -1]
    for arm in arms:
        sampled = results[arm][0]["sampled"].get("altars")
        if sampled:
            steps, means = np.array(sampled["mean"]).T
            window = np.ones(10) / 10  # a moving average over 10 epochs
            ax.plot(steps[9:], np.convolve(means, window, "valid"), label=arm)
    ax.set(xlabel="agent steps", ylabel="mean altars of the maps played", title="altars played (seed 1)")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(HERE, "results", "curriculum.png")
    fig.savefig(path + ".tmp.png", dpi=80)
    os.replace(path + ".tmp.png", path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--total-timesteps", type=int, default=2_000_000)
    parser.add_argument("--eval-episodes", type=int, default=16, help="simulations of 4 agents per grid setting")
    parser.add_argument("--report", action="store_true", help="only write the table and figure from the results")
    parser.add_argument("--random-policy", action="store_true",
                        help="only evaluate a uniformly random policy on the grid (a new results file)")
    args = parser.parse_args()
    if args.random_policy:
        return random_policy(args.eval_episodes)
    if not args.report:
        os.makedirs(RESULTS, exist_ok=True)
        with tempfile.TemporaryDirectory() as workdir:
            for seed in args.seeds:  # seed by seed: a stopped benchmark has every arm of its first seeds
                for arm in args.arms:
                    path = os.path.join(RESULTS, f"{arm}_seed{seed}.json")
                    if os.path.exists(path):
                        continue
                    result = run(arm, seed, args.total_timesteps, args.eval_episodes, workdir)
                    write_json(path, result)
                    easy, hard = halves(result)
                    print(f"{arm} seed {seed}: easy half {easy:.2f}, hard half {hard:.2f} reward per agent "
                          f"({result['wall_seconds'] / 60:.1f} min)", flush=True)
    report()


if __name__ == "__main__":
    main()
