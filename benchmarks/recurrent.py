"""Recurrent policies: does the LSTM remember, what does it cost, and how does it compare with sb3-contrib.

1. cartpole: CartPole without velocities (CartPoleNoVel-v1, only positions are seen) with rl-zoo's
   RecurrentPPO settings for this task (cleanmetta's `cartpole_lstm` preset) and its budget
   (100k steps), the same seeds, each run a fresh process, the order rotated every seed:
     feedforward         cleanmetta, the preset with --agent.lstm-size 0 (cannot infer velocities)
     lstm                cleanmetta, the preset as it is (one LSTM of 64 units, Tanh 64x64 heads)
     recurrentppo        sb3-contrib's RecurrentPPO, same settings, rl-zoo's network for this task
                         (a second LSTM for the critic, ReLU 64 heads; sb3_ppo.py --settings recurrent-zoo)
     recurrentppo-shared the same with cleanmetta's network: one LSTM, Tanh 64x64 heads (--settings recurrent)
   RecurrentPPO runs with one torch thread, as cleanmetta does by default (RecurrentPPO is a little
   faster so here than with its default of two).
   Per run: steps/s of the training loop, the step at which the mean of the last 20 episode
   returns first reaches 475, the final last-20 mean.
2. mettagrid: the `mettagrid` preset on mettagrid/hearts_sparse, the token network with and
   without an LSTM (`mettagrid_lstm` preset: 64 units, 32-step segments), equal agent steps:
   agent-steps/s and the final policy's evaluated reward per agent (16 episodes, fixed seed).
Each invocation writes a new results file, benchmarks/results/recurrent_<UTC date-time>.json (with the
command, commit and machine; never over an earlier run's), and each part draws its learning curves
next to it (<that name>_cartpole.png, _mettagrid.png).

    pip install sb3-contrib                          # only for this benchmark
    python benchmarks/recurrent.py                   # both parts: 5 CartPole seeds, 3 MettaGrid seeds (~1 hour)
    python benchmarks/recurrent.py --parts cartpole --seeds 1 2 --contenders lstm recurrentppo-shared
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py: not the package


NOVEL = compare.Task("CartPoleNoVel-v1", "recurrent-zoo", 100_000, 475.0)
SHARED = compare.Task("CartPoleNoVel-v1", "recurrent", 100_000, 475.0)
CARTPOLE = {
    "feedforward": lambda seed, steps, d: compare.run_cleanmetta(
        seed, steps, d, ["--preset", "cartpole_lstm", "--agent.lstm-size", "0"], label="feedforward"),
    "lstm": lambda seed, steps, d: compare.run_cleanmetta(seed, steps, d, ["--preset", "cartpole_lstm"], label="lstm"),
    "recurrentppo": lambda seed, steps, d: compare.run_sb3(NOVEL, seed, steps, d, threads=1),
    "recurrentppo-shared": lambda seed, steps, d: compare.run_sb3(SHARED, seed, steps, d, threads=1),
}
METTAGRID = {"token": "mettagrid", "token + lstm": "mettagrid_lstm"}  # name: preset


def cartpole(seeds: list[int], steps: int, contenders: list[str], workdir: str, out: str) -> dict:
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    episodes: dict[str, list] = {name: [] for name in contenders}
    for i, seed in enumerate(seeds):
        for name in compare.rotated(contenders, i):
            run = CARTPOLE[name](seed, steps, workdir)
            episodes[name].append(run["episodes"])
            row = compare.measure(run, NOVEL.solved)
            results[name].append({"seed": seed, **row})
            print(f"cartpole {name:12s} seed {seed}: {row['sps']:7,.0f} steps/s, solved at step "
                  f"{compare.fmt(row['solved_step'], ',')}, final return {row['final_return']:.1f}", flush=True)
    print(f"\n{NOVEL.env_id}, {steps:,} steps, seeds {seeds}; medians over seeds\n")
    print("| contender | steps/s | step at last-20 mean >= 475 | final return | seeds reaching 475 |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        reached = sum(row["solved_step"] is not None for row in rows)
        print(f"| {name} | {compare.median([r['sps'] for r in rows]):,.0f} "
              f"| {compare.fmt(compare.median([r['solved_step'] for r in rows]), ',.0f')} "
              f"| {compare.median([r['final_return'] for r in rows]):.1f} | {reached}/{len(rows)} |")
    for other in ("recurrentppo", "recurrentppo-shared"):
        if "lstm" in results and other in results:
            ratios = [a["sps"] / b["sps"] for a, b in zip(results["lstm"], results[other])]
            print(f"\nlstm / {other} steps/s: median of per-seed ratios {statistics.median(ratios):.1f}x")
    compare.save_curves(episodes, out, f"{NOVEL.env_id}, seeds {seeds}", part="cartpole")
    return results


def mettagrid(seeds: list[int], steps: int, workdir: str, out: str) -> dict:
    task = "mettagrid/hearts_sparse"
    results: dict[str, list[dict]] = {name: [] for name in METTAGRID}
    episodes: dict[str, list] = {name: [] for name in METTAGRID}
    for i, seed in enumerate(seeds):
        for name in compare.rotated(list(METTAGRID), i):
            run = compare.run_evaluated(seed, steps, workdir, ["--preset", METTAGRID[name]],
                                        f"mettagrid_{METTAGRID[name]}", task)
            episodes[name].append(run["episodes"])
            results[name].append({"seed": seed, "sps": run["sps"], "reward": run["reward"]})
    print(f"\n{task}, {steps:,} agent steps, seeds {seeds}; medians over seeds (reward: each seed's)\n")
    print("| network | agent-steps/s | evaluated reward per agent |")
    print("|---|---|---|")
    for name, rows in results.items():
        each = ", ".join(format(r["reward"], ".2f") for r in rows)
        print(f"| {name} | {compare.median([r['sps'] for r in rows]):,.0f} | "
              f"{compare.median([r['reward'] for r in rows]):.2f} ({each}) |")
    compare.save_curves(episodes, out, f"{task} (reward per agent), seeds {seeds}", part="mettagrid")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["cartpole", "mettagrid"], choices=["cartpole", "mettagrid"])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 1-5 CartPole, 1-3 MettaGrid")
    parser.add_argument("--contenders", nargs="+", default=["feedforward", "lstm", "recurrentppo"],
                        choices=list(CARTPOLE))
    parser.add_argument("--cartpole-steps", type=int, default=NOVEL.total_timesteps)
    parser.add_argument("--mettagrid-steps", type=int, default=1_000_000)
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/recurrent_<date-time>.json")
    args = parser.parse_args()
    args.out = compare.result_path("recurrent", args.out)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        if "cartpole" in args.parts:
            results["cartpole"] = {"steps": args.cartpole_steps, "runs": cartpole(
                args.seeds or [1, 2, 3, 4, 5], args.cartpole_steps, args.contenders, workdir, args.out)}
        if "mettagrid" in args.parts:
            results["mettagrid"] = {"steps": args.mettagrid_steps, "runs": mettagrid(
                args.seeds or [1, 2, 3], args.mettagrid_steps, workdir, args.out)}
    compare.write_result(args.out, results)
    print(f"results: {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
