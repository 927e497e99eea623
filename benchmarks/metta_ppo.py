"""Metta's additions to PPO on MettaGrid: V-trace, prioritized minibatches and kickstarting, against plain PPO.

Per task (default: mettagrid/hearts_sparse and mettagrid/hearts), the `mettagrid` preset (16
simulations x 4 agents, 128-step rollouts), equal agent steps, the same seeds, each run a fresh
`train.py` process, the order rotated every seed:
    plain       the preset as it is
    vtrace      --ppo.vtrace (rho and c clips 1.0), 32-step segments
    prio        --ppo.prio-alpha 0.6 (beta 0.6 annealed to 1), 32-step segments
    both        V-trace and prioritized minibatches together
    kickstart   plain PPO plus the kickstart loss from a teacher that this benchmark first trains
                (plain PPO, twice the steps, its own seed); the teacher's weights fade to 0 over
                the first half of the run
Per run: agent-steps/s of the training loop and the final policy's reward per agent, evaluated over
16 episodes (fixed seed, sampled actions); the teacher is evaluated the same way. The learning
curves (reward per agent of the training episodes) go next to the JSON results: each invocation
writes a new file, results/metta_ppo_<UTC date-time>.json (with the command, commit and machine),
and <that name>_<task>.png.

The `update` part isolates what each variant costs: one rollout of the preset on hearts_sparse,
then PPOOptimizer.update on that same buffer from the same policy, variants alternating, the median
of 7 timed updates each (in this one process, so machine drift does not favour a variant).

    pip install -e ".[mettagrid,plot]"
    python benchmarks/metta_ppo.py                               # both parts: 2 tasks x 5 variants x 3 seeds, 1M steps (~45 min)
    python benchmarks/metta_ppo.py --parts update                # the update's cost alone (~1 min)
    python benchmarks/metta_ppo.py --parts learning --tasks hearts_sparse --seeds 1 --steps 200000 --variants plain kickstart
Each invocation's file holds the parts it ran.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)

sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]  # benchmarks/mettagrid.py: not the package

SEGMENTS = ["--trainer.bptt-horizon", "32"]
VARIANTS = {
    "plain": [],
    "vtrace": ["--ppo.vtrace", *SEGMENTS],
    "prio": ["--ppo.prio-alpha", "0.6", *SEGMENTS],
    "both": ["--ppo.vtrace", "--ppo.prio-alpha", "0.6", *SEGMENTS],
    "kickstart": ["--ppo.custom-losses", "kickstart"],  # + the teacher and its fade, per task
}
TEACHER_SEED = 100


def run_task(name: str, seeds: list[int], steps: int, variants: list[str], workdir: str, out: str) -> dict:
    task = f"mettagrid/{name}"
    teacher = None
    if "kickstart" in variants:
        run = compare.run_evaluated(TEACHER_SEED, 2 * steps, workdir, ["--preset", "mettagrid"], f"{name}_teacher", task)
        teacher = {"steps": 2 * steps, "reward": run["reward"]}
        kickstart = ["--ppo.kickstart-teacher", os.path.join(workdir, f"{name}_teacher_seed{TEACHER_SEED}"),
                     "--ppo.kickstart-steps", str(steps // 2)]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    episodes: dict[str, list] = {v: [] for v in variants}
    for i, seed in enumerate(seeds):
        for variant in compare.rotated(variants, i):
            extra = ["--preset", "mettagrid", *VARIANTS[variant], *(kickstart if variant == "kickstart" else [])]
            run = compare.run_evaluated(seed, steps, workdir, extra, f"{name}_{variant}", task)
            episodes[variant].append(run["episodes"])
            results[variant].append({"seed": seed, "sps": run["sps"], "reward": run["reward"]})

    print(f"\n{task}, {steps:,} agent steps, seeds {seeds}; medians over seeds (reward: each seed's too)\n")
    print("| variant | agent-steps/s | vs plain | evaluated reward per agent |")
    print("|---|---|---|---|")
    plain_sps = compare.median([r["sps"] for r in results["plain"]]) if "plain" in results else None
    for variant, rows in results.items():
        sps = compare.median([r["sps"] for r in rows])
        each = ", ".join(format(r["reward"], ".2f") for r in rows)
        ratio = f"{sps / plain_sps:.2f}" if plain_sps else "-"
        print(f"| {variant} | {sps:,.0f} | {ratio} | {compare.median([r['reward'] for r in rows]):.2f} ({each}) |")
    if teacher:
        print(f"| (teacher: plain, {teacher['steps']:,} steps) | | | {teacher['reward']:.2f} |")
    compare.save_curves(episodes, out, f"{task} (reward per agent), {steps:,} steps, seeds {seeds}", part=name)
    return {"steps": steps, "runs": results, "teacher": teacher}


def update_cost(repeats: int = 7) -> dict:
    """Milliseconds per PPOOptimizer.update of each variant, on one fixed rollout from the same policy."""
    import torch  # the update part alone needs these: the learning part runs train.py in fresh processes

    from cleanmetta.collector import RolloutCollector
    from cleanmetta.presets import mettagrid_config
    from cleanmetta.envs import make_vecenv
    from cleanmetta.experience import Experience
    from cleanmetta.losses import Kickstarter
    from cleanmetta.policy import make_policy
    from cleanmetta.ppo import PPOOptimizer
    from cleanmetta.trainer import make_optimizer, seed_everything

    config = mettagrid_config()
    config.env.id = "mettagrid/hearts_sparse"
    seed_everything(1)
    torch.set_num_threads(1)
    vecenv = make_vecenv(config.env, seed=1)
    policy = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    teacher = make_policy(config.agent, vecenv.single_observation_space, vecenv.single_action_space)
    experience = Experience.for_env(vecenv, config.trainer.num_steps, bptt_horizon=32)  # the learning part's segments
    RolloutCollector(vecenv, policy, experience).collect()
    settings = {"plain": {}, "vtrace": {"vtrace": True}, "prio": {"prio_alpha": 0.6},
                "both": {"vtrace": True, "prio_alpha": 0.6}, "kickstart": {}}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for i in range(repeats):
        for name in compare.rotated(list(settings), i):
            student = copy.deepcopy(policy)
            ppo_config = dataclasses.replace(config.ppo, **settings[name])
            ppo = PPOOptimizer(student, make_optimizer(student, config.trainer, torch.device("cpu")), "cpu", ppo_config)
            losses = [Kickstarter(teacher, steps=10**9)] if name == "kickstart" else []
            start = time.perf_counter()
            ppo.update(experience, losses, progress=0.5)
            times[name].append(1000 * (time.perf_counter() - start))
    vecenv.close()
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nPPOOptimizer.update on one hearts_sparse rollout ({experience.batch_size:,} samples, "
          f"{config.ppo.update_epochs} epochs x {config.ppo.num_minibatches} minibatches), median of {repeats}\n")
    print("| variant | ms per update | vs plain |")
    print("|---|---|---|")
    for name, ms in medians.items():
        print(f"| {name} | {ms:.0f} | {ms / medians['plain']:.2f} |")
    return {"samples": experience.batch_size, "repeats": repeats, "ms": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["learning", "update"], choices=["learning", "update"])
    parser.add_argument("--tasks", nargs="+", default=["hearts_sparse", "hearts"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None,
                        help="a new file; default: benchmarks/results/metta_ppo_<date-time>.json")
    args = parser.parse_args()
    args.out = compare.result_path("metta_ppo", args.out)
    results = {}
    if "learning" in args.parts:
        with tempfile.TemporaryDirectory() as workdir:
            for name in args.tasks:
                results[name] = run_task(name, args.seeds, args.steps, args.variants, workdir, args.out)
    if "update" in args.parts:
        results["update_ms"] = update_cost()
    compare.write_result(args.out, results)
    print(f"\nresults: {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
