"""cleanmetta's `atari` preset against CleanRL's ppo_atari.py (and ppo_atari_envpool.py) on Breakout.

All train PPO with CleanRL's Atari settings (8 envs x 128 steps, 4 minibatches x 4 epochs, lr
2.5e-4 annealed, clip 0.1, entropy 0.01, the Nature CNN) for the same agent steps and seeds:
  cleanmetta       `python train.py --preset atari`: ALE/Breakout-v5 in ale-py's native vector env
                   (C++ threads, no sticky actions), float32.
  cleanmetta_bf16  the same with `--ppo.bf16` (the update's forward pass in bfloat16).
  cleanrl          CleanRL's ppo_atari.py on BreakoutNoFrameskip-v4 (gymnasium's SyncVectorEnv and
                   Python wrappers: NoopReset 30, MaxAndSkip 4, EpisodicLife, FireReset, ClipReward,
                   84x84 grayscale, FrameStack 4).
  cleanrl_envpool  CleanRL's ppo_atari_envpool.py on envpool's Breakout-v5 (C++ threads), run by
                   `--envpool-python` (a Python with envpool installed).
This file holds none of CleanRL's code: `--cleanrl` names a CleanRL checkout (or its
cleanrl/ppo_atari.py, with ppo_atari_envpool.py beside it); each run copies the script into a
scratch directory and adapts the copy to gymnasium 1.x and ale-py 0.12 with the text substitutions
in SUBSTITUTIONS (benchmarks/cleanrl_scripts.py: each must match, or the run stops and says which
did not): ale-py's ids
registered, FrameStack and GrayScaleObservation under their gymnasium 1.x names, same-step
autoreset as gymnasium 0.29 had (as CleanRL's own gymnasium-1.x branch does), the episode
statistics read from gymnasium 1.x's `final_info` dict; for the envpool script, envpool's gymnasium
API instead of the old gym package's; for both, two files written as cleanmetta's run directory has
them: episodes.csv (agent_steps, seconds, return, length of every finished game) and summary.json
(agent_steps, seconds, steps_per_second of the training loop). They run with `--no-track
--no-capture-video`, on the CPU unless `--device cuda`. ppo_atari.py's episode length counts
emulator frames (its RecordEpisodeStatistics sits under the frame skip); the others', agent steps.
Threads: CleanRL keeps torch's default thread count (2 on a 2-core machine); the atari preset
sets 2.

Runs alternate between the libraries (the order rotates every seed); each is a fresh process, whose
wall time includes interpreter start and imports. Per run: wall seconds, steps per second of the
training loop, the final game score (mean raw score of the last 20 finished games: all lives, not
clipped), the number of finished games and the process's peak resident memory. Each finished run
is written to the JSON results at once (keyed by library and seed, with the command, the commit and
the machine), so a later invocation with the same settings continues where an interrupted one
stopped; runs are only added, never replaced (another --out starts over). Per library:
medians, and the median of the per-seed ratios cleanmetta / CleanRL of steps per second. The
table goes to the console and next to the JSON (results/atari.md); the learning curves (score
against agent steps and wall time, mean and range over seeds) to results/atari.png.

    pip install opencv-python-headless   # gymnasium's ResizeObservation, in CleanRL's wrappers
    pip install stable-baselines3        # only for a ppo_atari.py without its checkout's cleanrl_utils
    git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl
    python benchmarks/atari.py --cleanrl /tmp/cleanrl       # 3 seeds x 300k steps: ~20-25 minutes a run on
                                                             # 2 cores (an interrupted one goes on)
    python benchmarks/atari.py --cleanrl /tmp/cleanrl --libraries cleanmetta cleanmetta_bf16 cleanrl --seeds 1 2
    python -m venv --system-site-packages /tmp/envpool && /tmp/envpool/bin/pip install envpool
    python benchmarks/atari.py --cleanrl /tmp/cleanrl --libraries cleanmetta_bf16 cleanrl_envpool \\
        --envpool-python /tmp/envpool/bin/python --total-timesteps 30000 --out /tmp/envpool.json
    python benchmarks/atari.py --cleanrl /tmp/cleanrl --seeds 1 --total-timesteps 4096 \\
        --libraries cleanrl --out /tmp/atari.json           # a smoke test of the CleanRL side (~30 s)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import compare  # noqa: E402  (this folder is first on sys.path)
from cleanrl_scripts import COMMON, FINAL_INFO, MARK, adapt, read_run, same_step_autoreset  # noqa: E402

# benchmarks/ off the path once compare is in: its mettagrid.py would shadow the mettagrid package
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p) != HERE]

from cleanmetta.files import write_json  # noqa: E402

LIBRARIES = ["cleanmetta", "cleanmetta_bf16", "cleanrl", "cleanrl_envpool"]
CLEANMETTA = {"cleanmetta": [], "cleanmetta_bf16": ["--ppo.bf16"]}  # cleanmetta's variants: train.py flags
SCRIPTS = {"cleanrl": "ppo_atari.py", "cleanrl_envpool": "ppo_atari_envpool.py"}  # CleanRL's, by library
FINAL_WINDOW = 20  # the final score: mean of the last 20 finished games

WRAPPERS_CLEANRL = "from cleanrl_utils.atari_wrappers import ("
WRAPPERS_SB3 = "from stable_baselines3.common.atari_wrappers import ("

SUBSTITUTIONS = {  # per script
    "ppo_atari.py": COMMON + [
        ("register ale-py's ids (gymnasium 1.x registers them only when ale_py is imported)",
         "import gymnasium as gym\n",
         "import gymnasium as gym\n"
         "import ale_py" + MARK + "\n"
         "gym.register_envs(ale_py)" + MARK + "\n"),
        ("GrayScaleObservation is GrayscaleObservation in gymnasium 1.x",
         "gym.wrappers.GrayScaleObservation(env)",
         "gym.wrappers.GrayscaleObservation(env)"),
        ("FrameStack is FrameStackObservation in gymnasium 1.x (same padding: the reset frame)",
         "gym.wrappers.FrameStack(env, 4)",
         "gym.wrappers.FrameStackObservation(env, 4)"),
        same_step_autoreset("for i in range(args.num_envs)],\n    )"),
        FINAL_INFO,
    ],
    "ppo_atari_envpool.py": COMMON + [
        ("envpool's gymnasium API instead of the old gym package's",
         "import gym\n",
         "import gymnasium as gym" + MARK + "\n"),
        ("envpool's gymnasium API", 'env_type="gym",', 'env_type="gymnasium",'),
        ("the old gym's Wrapper, which passed attributes through (gymnasium 1.x's does not)",
         "class RecordEpisodeStatistics(gym.Wrapper):\n",
         "class _Wrapper:  # cleanmetta benchmark: from here\n"
         "    def __init__(self, env):\n"
         "        self.env = env\n\n"
         "    def __getattr__(self, name):\n"
         "        return getattr(self.env, name)\n\n"
         "    def reset(self, **kwargs):\n"
         "        return self.env.reset(**kwargs)\n\n"
         "    def step(self, action):\n"
         "        return self.env.step(action)  # to here\n\n\n"
         "class RecordEpisodeStatistics(_Wrapper):\n"),
        ("the wrapper first: envpool's gymnasium envs have read-only num_envs and spaces",
         "    envs.num_envs = args.num_envs\n    envs.single_action_space = envs.action_space\n"
         "    envs.single_observation_space = envs.observation_space\n    envs = RecordEpisodeStatistics(envs)\n",
         "    envs = RecordEpisodeStatistics(envs)  # cleanmetta benchmark\n    envs.num_envs = args.num_envs\n"
         "    envs.single_action_space = envs.action_space\n    envs.single_observation_space = envs.observation_space\n"),
        ("gymnasium's reset returns (observations, infos)",
         "        observations = super().reset(**kwargs)\n",
         "        observations, _ = super().reset(**kwargs)  # cleanmetta benchmark\n"),
        ("gymnasium's step returns terminations and truncations",
         "        observations, rewards, dones, infos = super().step(action)\n",
         "        observations, rewards, terminations, truncations, infos = super().step(action)  # cleanmetta benchmark\n"
         "        dones = terminations | truncations  # cleanmetta benchmark\n"),
        ("each finished game also goes to episodes.csv",
         "                    print(f\"global_step={global_step}, episodic_return={info['r'][idx]}\")\n",
         "                    print(f\"global_step={global_step}, episodic_return={info['r'][idx]}\")\n"
         "                    episodes_csv.write(f\"{global_step},{time.time() - start_time:.3f},\"  # cleanmetta benchmark\n"
         "                                       f\"{info['r'][idx]:.6g},{info['l'][idx]}\\n\")  # cleanmetta benchmark\n"),
    ],
}


def find_cleanrl(path: str, library: str) -> tuple[str, str | None]:
    """(the library's script, the checkout's cleanrl_utils folder or None) for a checkout or ppo_atari.py's path
    (the envpool script lies beside it)."""
    script = os.path.join(path, "cleanrl", "ppo_atari.py") if os.path.isdir(path) else path
    script = os.path.join(os.path.dirname(script), SCRIPTS[library])
    if not os.path.isfile(script):
        raise SystemExit(f"--cleanrl {path}: no {SCRIPTS[library]} there (expected a CleanRL checkout, with "
                         "cleanrl/ppo_atari.py in it, or the path of ppo_atari.py)")
    utils = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(script))), "cleanrl_utils")
    return script, utils if os.path.isfile(os.path.join(utils, "atari_wrappers.py")) else None


def adapt_cleanrl(script: str, utils: str | None, dest: str) -> str:
    """Copy CleanRL's script (and the checkout's cleanrl_utils) into `dest` and adapt the copy with its
    SUBSTITUTIONS (cleanrl_scripts.adapt); return the copy's path."""
    with open(script) as f:
        text = f.read()
    if WRAPPERS_CLEANRL in text and utils is None:
        # CleanRL's cleanrl_utils/atari_wrappers.py is SB3's, copied: without the checkout, SB3's
        text = text.replace(WRAPPERS_CLEANRL, WRAPPERS_SB3)
    if WRAPPERS_SB3 in text and importlib.util.find_spec("stable_baselines3") is None:
        raise SystemExit(f"{script} imports stable_baselines3's Atari wrappers (or the checkout's cleanrl_utils "
                         "is missing): pip install stable-baselines3")
    copy = adapt(script, SUBSTITUTIONS[os.path.basename(script)], dest, "benchmarks/atari.py", text)
    if utils is not None and WRAPPERS_CLEANRL in text:
        shutil.copytree(utils, os.path.join(dest, "cleanrl_utils"), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def check_cleanrl_needs(library: str, python: str) -> None:
    """Stop before the first run when the CleanRL script cannot run with `python` here."""
    missing = {"tyro": "tyro", "tensorboard": "tensorboard (CleanRL's SummaryWriter)"}
    if library == "cleanrl":
        missing.update(cv2="opencv-python-headless (gymnasium's ResizeObservation)", ale_py="ale-py")
    else:
        missing.update(envpool="envpool")
    probe = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    absent = subprocess.run([python, "-c", probe, *missing], capture_output=True, text=True, check=True).stdout.split()
    if absent:
        raise SystemExit(f"CleanRL's {SCRIPTS[library]} needs, for {python}: pip install "
                         + " ".join(missing[m].split()[0] for m in absent) + "  ("
                         + "; ".join(missing[m] for m in absent) + ")")


def run_cleanmetta(library: str, seed: int, steps: int, workdir: str, device: str, extra: list[str]
                   ) -> tuple[float, float, str]:
    name = f"{library}_seed{seed}"
    extra = CLEANMETTA[library] + extra
    wall, rss = compare.run_process([sys.executable, "train.py", "--preset", "atari", "--seed", str(seed),
                                     "--trainer.total-timesteps", str(steps), "--device", device,
                                     "--log.run-root", workdir, "--experiment-name", name,
                                     "--log.console-interval", "1e9", *extra])
    return wall, rss, os.path.join(workdir, name)


def run_cleanrl(library: str, seed: int, steps: int, workdir: str, device: str, script: str, utils: str | None,
                python: str) -> tuple[float, float, str]:
    run_dir = os.path.join(workdir, f"{library}_seed{seed}")
    copy = adapt_cleanrl(script, utils, run_dir)
    wall, rss = compare.run_process([python, copy, "--seed", str(seed), "--total-timesteps", str(steps),
                                     "--no-track", "--no-capture-video",
                                     "--cuda" if device == "cuda" else "--no-cuda"])
    return wall, rss, run_dir


def measure(wall: float, rss: float, run_dir: str, seed: int) -> dict:
    summary, episodes = read_run(run_dir)
    final = [ret for _, _, ret, _ in episodes[-FINAL_WINDOW:]]
    return {"seed": seed, "wall_s": wall, "sps": summary["steps_per_second"], "agent_steps": summary["agent_steps"],
            "final_score": statistics.fmean(final) if final else None, "games": len(episodes),
            "peak_rss_mb": rss, "episodes": episodes}


def score(value: float | None) -> str:
    return "no game finished" if value is None else f"{value:.1f}"


def load(out: str, settings: dict) -> dict:
    """The results so far (the runs of earlier invocations with the same settings), or new ones."""
    if not os.path.exists(out):
        return {**settings, "runs": {}}
    with open(out) as f:
        results = json.load(f)
    differ = {key: (results.get(key), value) for key, value in settings.items() if results.get(key) != value}
    if differ:
        told = ", ".join(f"{key}: {there} there, {now} now" for key, (there, now) in differ.items())
        raise SystemExit(f"{out} holds runs with other settings ({told}): pass another --out")
    return results


def save(results: dict, out: str) -> None:
    write_json(out, results)  # atomic: a kill mid-write leaves the previous results whole


def table(results: dict, libraries: list[str]) -> str:
    runs = results["runs"]
    lines = [f"{results['env']}, {results['total_timesteps']:,} agent steps, device {results['device']}; "
             "medians over seeds", "",
             f"| library | seeds | wall s | steps/s | final score (last {FINAL_WINDOW} games) | games | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for lib in libraries:
        rows = list(runs.get(lib, {}).values())
        if not rows:
            continue
        col = {key: compare.median([r[key] for r in rows]) for key in ("wall_s", "sps", "final_score", "games",
                                                                         "peak_rss_mb")}
        lines.append(f"| {lib} | {len(rows)} | {col['wall_s']:.1f} | {col['sps']:,.0f} | "
                     f"{score(col['final_score'])} | {col['games']:.0f} | {col['peak_rss_mb']:.0f} |")
    for ours in CLEANMETTA:
        for lib in SCRIPTS:
            both = sorted(set(runs.get(ours, {})) & set(runs.get(lib, {})), key=int)
            if both:
                ratios = [runs[ours][s]["sps"] / runs[lib][s]["sps"] for s in both]
                walls = [runs[lib][s]["wall_s"] / runs[ours][s]["wall_s"] for s in both]
                lines += ["", f"{ours} / {lib} ({SCRIPTS[lib]}) steps per second, median of per-seed ratios (seeds "
                              f"{', '.join(both)}): {statistics.median(ratios):.2f}x; wall time "
                              f"{statistics.median(walls):.2f}x shorter"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cleanrl", default=None, help="a CleanRL checkout, or its cleanrl/ppo_atari.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, default=300_000)
    parser.add_argument("--libraries", nargs="+", default=LIBRARIES[:2], choices=LIBRARIES)
    parser.add_argument("--envpool-python", default=sys.executable,
                        help="the Python that runs ppo_atari_envpool.py: one with envpool installed")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="both libraries' torch device")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "atari.json"))
    parser.add_argument("--cleanmetta-args", nargs=argparse.REMAINDER, default=[],
                        help="extra train.py flags, e.g. --cleanmetta-args --torch-threads 2")
    args = parser.parse_args()
    scripts = {}  # CleanRL library -> (script, cleanrl_utils, python)
    for lib in SCRIPTS:
        if lib not in args.libraries:
            continue
        if args.cleanrl is None:
            raise SystemExit("--cleanrl PATH is needed for the CleanRL runs (a CleanRL checkout, or its "
                             "cleanrl/ppo_atari.py); or pass --libraries cleanmetta")
        python = args.envpool_python if lib == "cleanrl_envpool" else sys.executable
        check_cleanrl_needs(lib, python)
        script, utils = find_cleanrl(args.cleanrl, lib)
        with tempfile.TemporaryDirectory() as scratch:  # every substitution matches: now, not after an hour
            adapt_cleanrl(script, utils, scratch)
        scripts[lib] = script, utils, python

    settings = {"env": "Breakout (cleanmetta: ALE/Breakout-v5, CleanRL: BreakoutNoFrameskip-v4)",
                "total_timesteps": args.total_timesteps, "device": args.device}
    results = load(args.out, settings)
    runs = results["runs"]
    for lib, (script, _, _) in scripts.items():
        with open(script, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        key = f"{lib}_script_sha256"
        if runs.get(lib) and results.get(key, sha) != sha:
            raise SystemExit(f"{args.out} holds {lib} runs of another {SCRIPTS[lib]} (sha256 {results[key]}): pass "
                             "another --out")
        results[key] = sha

    def run(lib: str, seed: int, workdir: str) -> tuple[float, float, str]:
        if lib in CLEANMETTA:
            return run_cleanmetta(lib, seed, args.total_timesteps, workdir, args.device, args.cleanmetta_args)
        return run_cleanrl(lib, seed, args.total_timesteps, workdir, args.device, *scripts[lib])

    with tempfile.TemporaryDirectory() as workdir:
        for i, seed in enumerate(args.seeds):
            for lib in compare.rotated(args.libraries, i):
                if str(seed) in runs.get(lib, {}):
                    print(f"{lib:15s} seed {seed}: done in an earlier invocation, kept", flush=True)
                    continue
                row = {**measure(*run(lib, seed, workdir), seed), **compare.run_record()}
                runs.setdefault(lib, {})[str(seed)] = row
                save(results, args.out)
                print(f"{lib:15s} seed {seed}: {row['wall_s']:7.1f} s wall, {row['sps']:6,.0f} steps/s, final score "
                      f"{score(row['final_score'])} ({row['games']} games), peak "
                      f"{row['peak_rss_mb']:.0f} MB", flush=True)

    report = table(results, LIBRARIES)
    print("\n" + report)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(report + "\n")
    curves = {lib: [r["episodes"] for r in runs[lib].values() if r["episodes"]] for lib in LIBRARIES if lib in runs}
    curves = {lib: episodes for lib, episodes in curves.items() if episodes}
    if curves:
        compare.save_curves(curves, args.out, f"Breakout, {args.total_timesteps:,} agent steps (raw game score)")
    else:
        print("no finished game yet: no learning curves")


if __name__ == "__main__":
    main()
