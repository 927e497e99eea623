"""train.py's speed at this working tree against an earlier revision, side by side.

Checks that a change leaves a path as fast as it was: the same train.py command runs from a
checkout of `--base` (a git worktree in a temporary folder) and from this tree, alternating (the
order flips every repeat), each a fresh process. Per run: the training loop's agent steps per
second (summary.json); per side: the median; and the ratio of the medians, this tree / base. Each
invocation writes a new results file, results/revisions_<UTC date-time>.json (or --out, which must
not exist), with the command, the commit of this tree and the base's commit.

    python benchmarks/revisions.py --base HEAD -- --preset small_fast
    python benchmarks/revisions.py --base d6a348e --repeats 5 -- --trainer.total-timesteps 200000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import ROOT, result_path, rotated, write_result  # noqa: E402


def steps_per_second(tree: str, train_args: list[str], workdir: str, name: str) -> float:
    """Run train.py of `tree` with `train_args`; the training loop's agent steps per second."""
    subprocess.run([sys.executable, "train.py", *train_args, "--log.run-root", workdir, "--experiment-name", name,
                    "--log.console-interval", "1e9", "--log.no-tensorboard"], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": tree})
    with open(os.path.join(workdir, name, "summary.json")) as f:
        return json.load(f)["steps_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/revisions_<date-time>.json")
    parser.add_argument("train_args", nargs="*", help="train.py flags (after --)")
    args = parser.parse_args()
    args.out = result_path("revisions", args.out)
    base_commit = subprocess.run(["git", "rev-parse", "--short=7", args.base], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = os.path.join(scratch, "base")
        subprocess.run(["git", "worktree", "add", "--detach", base_tree, args.base], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rates: dict[str, list[float]] = {"base": [], "tree": []}
            for repeat in range(args.repeats):
                for side in rotated(["base", "tree"], repeat):
                    tree = base_tree if side == "base" else ROOT
                    rate = steps_per_second(tree, args.train_args, os.path.join(scratch, "runs"), f"{side}{repeat}")
                    rates[side].append(rate)
                    print(f"{side:5s} run {repeat + 1}: {rate:9,.0f} steps/s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT, check=True)
    medians = {side: statistics.median(values) for side, values in rates.items()}
    ratio = medians["tree"] / medians["base"]
    print(f"\ntrain.py {' '.join(args.train_args)}: median steps/s base ({args.base}) {medians['base']:,.0f}, "
          f"this tree {medians['tree']:,.0f}; this tree / base = {ratio:.3f}")
    write_result(args.out, {"base": args.base, "base_commit": base_commit, "train_args": args.train_args,
                            "rates": rates, "medians": medians, "ratio": ratio})
    print(f"results: {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
