"""CleanRL's scripts, run side by side with cleanmetta: copied, adapted to gymnasium 1.x, read back.

This file holds none of CleanRL's code. A benchmark names a CleanRL checkout (`--cleanrl PATH`,
e.g. `git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl`); each run copies one of its
scripts into a scratch directory and adapts the copy with text substitutions: (what it is for,
CleanRL's text, its replacement), each of which must match exactly once, or the run stops and says
which did not. Lines added are marked `# cleanmetta benchmark`.

What every script gets (COMMON): its files go to the scratch directory, and it writes the two files
a cleanmetta run directory has, episodes.csv (agent_steps, seconds, return, length of every
finished episode) and summary.json (agent_steps, seconds, steps_per_second of the training loop),
so that one reader (`read_run`) serves both libraries. What the gymnasium-0.29 scripts (ppo.py,
ppo_continuous_action.py, ppo_atari.py) get (`same_step_autoreset`, FINAL_INFO): gymnasium 0.29's
same-step autoreset, which they were written for (gymnasium 1.x's default is next-step), and the
episode statistics read from gymnasium 1.x's `final_info` dict of arrays.
"""

from __future__ import annotations

import csv
import json
import os

MARK = "  # cleanmetta benchmark"

COMMON = [
    ("json for summary.json", "import time\n", "import json" + MARK + "\nimport time\n"),
    ("the run's files (runs/, episodes.csv, summary.json) go to the script's scratch directory",
     "    args = tyro.cli(Args)\n",
     "    os.chdir(os.path.dirname(os.path.abspath(__file__)))" + MARK + "\n    args = tyro.cli(Args)\n"),
    ("episodes.csv, opened when the clock starts",
     "    start_time = time.time()\n",
     "    start_time = time.time()\n"
     "    episodes_csv = open(\"episodes.csv\", \"w\", buffering=1)" + MARK + "\n"
     "    episodes_csv.write(\"agent_steps,seconds,return,length\\n\")" + MARK + "\n"),
    ("summary.json: agent steps and seconds of the training loop",
     "    envs.close()\n",
     "    envs.close()\n"
     "    seconds = time.time() - start_time" + MARK + "\n"
     "    with open(\"summary.json\", \"w\") as f:" + MARK + "\n"
     "        json.dump({\"agent_steps\": global_step, \"seconds\": seconds," + MARK + "\n"
     "                   \"steps_per_second\": global_step / seconds}, f)" + MARK + "\n"),
]

FINAL_INFO = (
    "gymnasium 1.x's final_info is one dict of arrays (with an _episode mask), not a list of dicts; "
    "each finished episode also goes to episodes.csv",
    """            if "final_info" in infos:
                for info in infos["final_info"]:
                    if info and "episode" in info:
                        print(f"global_step={global_step}, episodic_return={info['episode']['r']}")
                        writer.add_scalar("charts/episodic_return", info["episode"]["r"], global_step)
                        writer.add_scalar("charts/episodic_length", info["episode"]["l"], global_step)
""",
    """            if "final_info" in infos and "episode" in infos["final_info"]:""" + MARK + """: from here
                final = infos["final_info"]
                for i in np.flatnonzero(final["_episode"]):
                    r, l = float(final["episode"]["r"][i]), int(final["episode"]["l"][i])
                    print(f"global_step={global_step}, episodic_return={r}")
                    writer.add_scalar("charts/episodic_return", r, global_step)
                    writer.add_scalar("charts/episodic_length", l, global_step)
                    episodes_csv.write(f"{global_step},{time.time() - start_time:.3f},{r:.6g},{l}\\n")  # to here
""")


def same_step_autoreset(closing: str) -> tuple[str, str, str]:
    """The substitution that gives a script's SyncVectorEnv gymnasium 0.29's same-step autoreset;
    `closing` is the script's text that ends the list of env makers and the call."""
    makers, end = closing.rsplit("\n", 1)
    comma = "" if makers.endswith(",") else ","
    return ("same-step autoreset, as gymnasium 0.29 did (gymnasium 1.x's default is next-step)", closing,
            f"{makers}{comma}\n        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,{MARK}\n{end}")


def adapt(script: str, substitutions: list[tuple[str, str, str]], dest: str, owner: str,
          text: str | None = None) -> str:
    """Copy CleanRL's `script` (or `text`, its text as the caller has it) into `dest` with `substitutions`
    applied; return the copy's path. Stops with a message naming the substitution that no longer
    matches (`owner`: the benchmark whose substitutions to update)."""
    if text is None:
        with open(script) as f:
            text = f.read()
    for what, old, new in substitutions:
        if text.count(old) != 1:
            raise SystemExit(f"{script}: cannot adapt it to gymnasium 1.x ({what}): expected this text once, found "
                             f"it {text.count(old)} times:\n{old}\nThe script has changed; update the "
                             f"substitutions in {owner}.")
        text = text.replace(old, new)
    os.makedirs(dest, exist_ok=True)
    copy = os.path.join(dest, os.path.basename(script))
    with open(copy, "w") as f:
        f.write(text)
    return copy


def read_run(run_dir: str) -> tuple[dict, list[tuple[int, float, float, int]]]:
    """summary.json and the finished episodes (agent_steps, seconds, return, length) of episodes.csv,
    as cleanmetta's run directory and an adapted CleanRL script both write them."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "episodes.csv"), newline="") as f:
        episodes = [(int(r["agent_steps"]), float(r["seconds"]), float(r["return"]), int(r["length"]))
                    for r in csv.DictReader(f) if r.get("length")]
    return summary, episodes
