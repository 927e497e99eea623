"""Env worker processes and double buffering on MettaGrid: how close the training loop gets to the bare env.

One invocation, the `mettagrid` preset (16 simulations x 4 agents) on one task, equal agent steps:
1. bare env: agent-steps/s of the in-process env alone, uniformly random actions (median of 3);
2. the training loop (`train.py` in a fresh process, each configuration in turn, the order
   rotated every repeat) with env.num_workers 0, 1, 2 and, for 1 and 2 workers, double
   buffering (env.async_batches 2): agent-steps/s of the loop (median over repeats), loop / bare,
   and the final policy's reward per agent over 16 evaluation episodes (fixed seed, sampled
   actions; of the first repeat, seed 1).
Each invocation writes a new results file, results/env_workers_<UTC date-time>.json (with the
command, commit and machine).

    pip install -e ".[mettagrid]"
    python benchmarks/env_workers.py                                # hearts, 500k steps, 2 repeats (~6 minutes)
    python benchmarks/env_workers.py --workers 0 1 2 4 8 15 --repeats 3   # a many-core machine: the scaling curve
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py: not the package

from cleanmetta.presets import mettagrid_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mettagrid/hearts")
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/env_workers_<date-time>.json")
    args = parser.parse_args()
    args.out = compare.result_path("env_workers", args.out)
    num_sims = mettagrid_config().env.num_envs
    bare = compare.bare_env_speed(args.task, num_sims)
    print(f"{args.task}: bare env {bare:,.0f} agent-steps/s ({num_sims} simulations, in process)", flush=True)

    setups = [(w, 1) for w in args.workers] + [(w, 2) for w in args.workers if 1 <= w <= num_sims // 2]
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for workers, batches in compare.rotated(setups, repeat):
                name = f"workers{workers}_batches{batches}"
                extra = ["--preset", "mettagrid", "--env.num-workers", str(workers), "--env.async-batches", str(batches)]
                run = compare.run_evaluated(repeat + 1, args.steps, workdir, extra, name, args.task)
                runs.setdefault(name, []).append({"seed": repeat + 1, "sps": run["sps"], "reward": run["reward"]})

    print(f"\n{args.task}, mettagrid preset, {args.steps:,} agent steps, {args.repeats} repeats (seeds 1..); "
          f"bare env {bare:,.0f} agent-steps/s\n")
    print("| env.num_workers | double buffering | loop agent-steps/s (median) | loop / bare | reward per agent (seed 1) |")
    print("|---|---|---|---|---|")
    rows = []
    for workers, batches in setups:
        name = f"workers{workers}_batches{batches}"
        sps = compare.median([r["sps"] for r in runs[name]])
        rows.append({"workers": workers, "async_batches": batches, "sps": sps, "loop_over_bare": sps / bare,
                     "reward_seed1": runs[name][0]["reward"], "runs": runs[name]})
        print(f"| {workers} | {'yes' if batches == 2 else 'no'} | {sps:,.0f} | {sps / bare:.2f} "
              f"| {runs[name][0]['reward']:.2f} |")
    compare.write_result(args.out, {"task": args.task, "steps": args.steps, "bare_sps": bare, "setups": rows})
    print(f"\nresults: {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
