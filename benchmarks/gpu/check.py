"""Everything a GPU machine can tell about cleanmetta, in one command of about eight minutes.

On a machine with a GPU and no network, from the repository root, after `bash benchmarks/gpu/wheels.sh`
here has put the packages it lacks into benchmarks/gpu/wheels/ (and that folder travels with the tree):

    python3 benchmarks/gpu/check.py --wheels benchmarks/gpu/wheels --out OUT   # everything, ~8 minutes
    python3 benchmarks/gpu/check.py --wheels benchmarks/gpu/wheels --out OUT --parts atari lstm   # again, some parts
    python benchmarks/gpu/check.py --device cpu --quick --out /tmp/gpu-check   # the dry run, tiny budgets (a test)
    python benchmarks/gpu/check.py --report OUT/gpu_check.json                 # back here: README and results

It installs the wheels into a folder of their own (--site, first on PYTHONPATH), then runs each part
in its own process group under its own time limit; a part stopped at its limit keeps the rows it
finished. After every part it rewrites OUT/gpu_check.json (the machine, the packages, every part's
status and rows), OUT/gpu_check.md (a table per part) and OUT/gpu_check.log (every part's output).

Parts (steps/s: agent steps per second of the training loop after its first epoch, which holds
CUDA's and torch.compile's warm-up, from TensorBoard's charts/SPS wall times; "whole" includes it):
  tests      the test suite's device tests (`pytest -m device --device cuda`): GAE and V-trace,
             the PPO update against the CPU's, the LSTM replay at ratio 1, a GPU checkpoint read
             back where no GPU is visible
  cartpole   train.py's default settings and --preset small_fast on the device and on the CPU
  mettagrid  --preset mettagrid with 15 env workers at 256 and 1024 simulations (double buffered),
             then the env-worker curve 0, 1, 2, 4, 8, 15 at 256: the loop against the bare env
             stepped by the same workers with random actions
  atari      --preset atari at 8 and 64 envs: float32, --ppo.bf16, --ppo.compile
  lstm       --preset mettagrid_lstm and cartpole_lstm, beside the feedforward mettagrid preset
  torchrun   the process group train.py joins under torchrun (NCCL on GPUs: one rank per GPU),
             an all-reduce's time, and train.py under torchrun
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

from report import load_benchmark, markdown, publish, write_report  # benchmarks/gpu/report.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PACKAGES = ["numpy", "gymnasium", "tyro", "ale-py", "mettagrid", "tensorboard", "pydantic", "typing-extensions"]


class Part:
    """What one part measures: `run(ctx)` records rows as it goes; `limit_s` for the full run, `quick_s` for --quick."""

    def __init__(self, run, limit_s: int, quick_s: int):
        self.run, self.limit_s, self.quick_s = run, limit_s, quick_s


class Context:
    """A part's settings and its `record`: each finished row is appended to the part's rows file at once."""

    def __init__(self, device: str, quick: bool, rows_path: str, workdir: str):
        self.device, self.quick, self.rows_path, self.workdir = device, quick, rows_path, workdir
        self.failures = 0  # runs (or tests) that failed: the part goes on, then exits with an error

    def record(self, **row) -> None:
        with open(self.rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print("row:", json.dumps(row), flush=True)

    def run(self, command: list[str]) -> str | None:
        """`command` from the repository root, its stderr passed on: None, or its error's last line."""
        result = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(result.stderr)
        if result.returncode == 0:
            return None
        self.failures += 1
        lines = [line for line in result.stderr.splitlines() if line.strip()] or [f"exit status {result.returncode}"]
        return lines[-1][:300]

    def devices(self) -> list[str]:
        """The device under test, then the CPU for comparison (once when they are the same)."""
        return [self.device] if self.device == "cpu" else [self.device, "cpu"]


# ---- training runs --------------------------------------------------------------------------------

def train(ctx: Context, label: str, flags: list[str], device: str | None = None, launcher: list[str] | None = None,
          **row) -> dict:
    """train.py with `flags` on `device` (the one under test by default), in a fresh process (or under
    `launcher`, e.g. torchrun): its row, with its error's last line when it failed."""
    device = device or ctx.device
    row = {"run": label, "device": device, **row}
    name = f"{label}_{device}_{len(os.listdir(ctx.workdir))}".replace(" ", "_").replace("/", "-")
    command = [*(launcher or [sys.executable]), "train.py", "--device", device, "--log.run-root", ctx.workdir,
               "--experiment-name", name, "--log.console-interval", "1e9", *flags]
    start = time.perf_counter()
    error = ctx.run(command)
    wall = time.perf_counter() - start
    if error:
        return {**row, "error": error}
    run_dir = os.path.join(ctx.workdir, name)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    mean_return = summary["mean_return_last20"]
    return {**row, "agent_steps": summary["agent_steps"], "steps_per_s": steady_rate(run_dir),
            "whole_steps_per_s": summary["steps_per_second"],
            "return_last20": None if mean_return != mean_return else mean_return,  # NaN: no episode ended yet
            "wall_s": wall}


def steady_rate(run_dir: str) -> float | None:
    """Agent steps per second from the end of the first epoch to the end of the last (None under 3 epochs):
    from the wall times of the run's charts/SPS TensorBoard events, one per epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    sps = events.Scalars("charts/SPS")[1:]
    if len(sps) < 2:
        return None
    return (sps[-1].step - sps[0].step) / max(sps[-1].wall_time - sps[0].wall_time, 1e-9)


def steps(ctx: Context, full: int, quick: int) -> list[str]:
    return ["--trainer.total-timesteps", str(quick if ctx.quick else full)]


# ---- the parts ------------------------------------------------------------------------------------

def part_tests(ctx: Context) -> None:
    junit = os.path.join(ctx.workdir, "junit.xml")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "device", "--device", ctx.device, "-p",
                    "no:cacheprovider", f"--junitxml={junit}"], cwd=ROOT)
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcome = "passed" if problem is None else {"failure": "failed"}.get(problem.tag, problem.tag)
        message = "" if problem is None else "".join((problem.get("message") or "").splitlines()[:1])[:200]
        ctx.record(test=f"{case.get('classname')}::{case.get('name')}", outcome=outcome,
                   seconds=float(case.get("time", 0)), message=message)
        ctx.failures += outcome in ("failed", "error")


def part_cartpole(ctx: Context) -> None:
    for label, flags in (("CartPole-v1 default", steps(ctx, 30_000, 2_048)),
                         ("CartPole-v1 small_fast", ["--preset", "small_fast", *steps(ctx, 100_000, 2_048)])):
        for device in ctx.devices():
            ctx.record(**train(ctx, label, flags, device))


def part_mettagrid(ctx: Context) -> None:
    compare = load_benchmark("compare")  # bare_env_speed
    sims = 16 if ctx.quick else 256
    rollout = ["--trainer.num-steps", "16"] if ctx.quick else []

    def loop_and_bare(workers: int, simulations: int, batches: int) -> None:
        try:
            bare = compare.bare_env_speed("mettagrid/hearts", simulations, steps=20 if ctx.quick else 100,
                                          num_workers=workers, repeats=1 if ctx.quick else 3)
        except Exception as err:  # noqa: BLE001 (the row says what failed; the curve goes on)
            ctx.failures += 1
            return ctx.record(run="bare env", workers=workers, simulations=simulations, error=repr(err)[:300])
        flags = ["--preset", "mettagrid", "--env.num-envs", str(simulations), "--env.num-workers", str(workers),
                 "--env.async-batches", str(batches), *rollout, *steps(ctx, 4 * simulations * 4 * 128, 3 * 1024)]
        row = train(ctx, "mettagrid/hearts", flags, workers=workers, simulations=simulations,
                    double_buffered=batches == 2, bare_env_steps_per_s=bare)
        if "error" not in row:
            row["loop_over_bare"] = (row["steps_per_s"] or row["whole_steps_per_s"]) / bare
        ctx.record(**row)

    many = 2 if ctx.quick else min(15, max((os.cpu_count() or 2) - 1, 1))
    for simulations in ([sims] if ctx.quick else [256, 1024]):
        loop_and_bare(many, simulations, 2)
    for workers in ([0] if ctx.quick else [0, 1, 2, 4, 8, 15]):
        loop_and_bare(workers, sims, 1)


def part_atari(ctx: Context) -> None:
    import torch

    bf16 = ctx.device == "cpu" or torch.cuda.is_bf16_supported()
    few, many = (2, 4) if ctx.quick else (8, 64)
    rollout = ["--trainer.num-steps", "8"] if ctx.quick else []
    setups = [(few, []), (many, []), (many, ["--ppo.bf16"]), (many, ["--ppo.compile"]), (few, ["--ppo.compile"]),
              (many, ["--ppo.compile", "--ppo.bf16"])]
    if ctx.quick:  # no compiling (~20 s) in the dry run
        setups = [(few, []), (many, ["--ppo.bf16"])]
    for envs, extra in setups:
        if "--ppo.bf16" in extra and not bf16:
            continue
        budget = steps(ctx, envs * 128 * (12 if envs == few else 8), envs * 8 * 3)
        ctx.record(**train(ctx, "ALE/Breakout-v5 " + (" ".join(extra) or "float32"),
                           ["--preset", "atari", "--env.num-envs", str(envs), *rollout, *budget, *extra], envs=envs))


def part_lstm(ctx: Context) -> None:
    rollout = ["--trainer.num-steps", "32"] if ctx.quick else []  # one 32-step segment per agent in the dry run
    for preset in ["mettagrid_lstm"] if ctx.quick else ["mettagrid", "mettagrid_lstm"]:  # feedforward, then LSTM
        ctx.record(**train(ctx, preset, ["--preset", preset, *rollout, *steps(ctx, 300_000, 6_144)]))
    ctx.record(**train(ctx, "cartpole_lstm", ["--preset", "cartpole_lstm", *steps(ctx, 20_000, 768)]))


def part_torchrun(ctx: Context) -> None:
    import torch

    ranks = torch.cuda.device_count() if ctx.device.startswith("cuda") else 1
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    probe = os.path.join(ctx.workdir, "probe.json")
    error = ctx.run([*launcher, os.path.abspath(__file__), "--probe", probe, "--device", ctx.device])
    if error:
        ctx.record(run="process group", ranks=ranks, device=ctx.device, error=error)
    else:
        with open(probe) as f:
            ctx.record(**json.load(f))
    ctx.record(**train(ctx, "CartPole-v1 small_fast", ["--preset", "small_fast", *steps(ctx, 100_000, 2_048)],
                       launcher=launcher, ranks=ranks))


def probe_process_group(out: str, device_name: str) -> None:
    """Under torchrun: join the process group as train.py does, then all-reduce 1M floats through
    torch.distributed itself (cleanmetta's collectives skip themselves at one rank, and one GPU allows
    one NCCL rank); rank 0 writes the backend, the sum's check and the median time."""
    import torch
    import torch.distributed as dist

    from cleanmetta import distributed
    from cleanmetta.config import TrainingConfig
    from cleanmetta.trainer import join_process_group

    device = join_process_group(TrainingConfig(device=device_name))
    buffer = torch.ones(1 << 20, device=device)
    times = []
    for _ in range(21):
        buffer.fill_(1.0)
        start = time.perf_counter()
        dist.all_reduce(buffer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if distributed.rank() == 0:
        with open(out, "w") as f:
            json.dump({"run": "process group", "backend": dist.get_backend(), "ranks": distributed.world_size(),
                       "device": str(device), "all_reduce_sum_ok": bool(buffer[0] == distributed.world_size()),
                       "all_reduce_1M_floats_ms": 1000 * sorted(times[1:])[10]}, f)
    distributed.close()


PARTS = {"tests": Part(part_tests, 40, 60), "cartpole": Part(part_cartpole, 70, 40),
         "mettagrid": Part(part_mettagrid, 140, 90), "atari": Part(part_atari, 100, 60),
         "lstm": Part(part_lstm, 50, 40), "torchrun": Part(part_torchrun, 40, 40)}  # 440 s in all


# ---- the command: install, run the parts, write the report -------------------------------------------

def install(wheels: str, site: str) -> None:
    """The wheels into `site`, without their dependencies (wheels.sh chose them to fit this machine's)."""
    files = sorted(os.path.join(wheels, name) for name in os.listdir(wheels) if name.endswith(".whl"))
    if not files:
        sys.exit(f"error: --wheels {wheels} holds no .whl files; run bash benchmarks/gpu/wheels.sh first")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--no-cache-dir", "--upgrade", "--target", site, *files])
    if pip.returncode != 0:
        sys.exit(f"error: pip could not install the wheels of {wheels} into {site} (its message is above)")


def machine_info(device: str) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    info = {"device": device, "cpu": f"{os.cpu_count()} cores, {cpu}", "python": platform.python_version(),
            "torch": torch.__version__, "commit": commit()}
    if torch.cuda.is_available():
        nccl = torch.cuda.nccl.version()  # (major, minor, patch)
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported(),
                    nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "missing"
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    info["pip_check"] = (check.stdout + check.stderr).strip().splitlines()[:20]
    return info


def commit() -> str | None:
    """The checkout's commit, where git and the repository's history came along."""
    try:
        result = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return result.stdout.strip() or None


def run_part(name: str, args: argparse.Namespace, log) -> dict:
    """One part in its own process group, killed whole at its limit; its status and the rows it recorded."""
    limit = args.limits[name]
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as workdir:
        rows_path = os.path.join(workdir, "rows.jsonl")
        command = [sys.executable, os.path.abspath(__file__), "--run-part", name, "--device", args.device,
                   "--rows", rows_path, *(["--quick"] if args.quick else [])]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "ok" if process.wait(timeout=limit) == 0 else f"failed (exit status {process.returncode})"
        except subprocess.TimeoutExpired:
            stop_group(process)
            status = f"stopped at its {limit:g} s limit"
        rows = []
        if os.path.exists(rows_path):
            with open(rows_path) as f:
                rows = [json.loads(line) for line in f]
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "limit_s": limit, "rows": rows}


def stop_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop a part's process group: SIGTERM first (torchrun's agent passes it on to its workers, which run in
    sessions of their own), then SIGKILL to whatever is left after `grace_s`."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reaps the part's own process, so that a zombie does not count as left
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device under test (cpu: the dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and shorter limits: the dry run")
    parser.add_argument("--out", help="where gpu_check.json, .md and .log go (a folder; needed to run a check)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS",
                        help="another time limit for a part (repeatable), e.g. --limit mettagrid=200")
    parser.add_argument("--wheels", help="install these wheels first (benchmarks/gpu/wheels.sh makes them)")
    parser.add_argument("--site", default=os.path.join(tempfile.gettempdir(), "cleanmetta-site"),
                        help="where --wheels are installed, first on PYTHONPATH")
    parser.add_argument("--report", metavar="JSON", help="publish a finished check: results folder and README")
    parser.add_argument("--run-part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        return publish(args.report)
    if args.probe:
        return probe_process_group(args.probe, args.device)
    if args.run_part:
        with tempfile.TemporaryDirectory(prefix="gpu-check-runs-") as workdir:
            ctx = Context(args.device, args.quick, args.rows, workdir)
            PARTS[args.run_part].run(ctx)
        if ctx.failures:
            sys.exit(f"{args.run_part}: {ctx.failures} runs failed (their rows say why)")
        return

    if not args.out:
        parser.error("--out DIR: where to write gpu_check.json, .md and .log (--report JSON publishes one)")
    args.limits = {name: part.quick_s if args.quick else part.limit_s for name, part in PARTS.items()}
    for text in args.limit:
        name, _, seconds = text.partition("=")
        if name not in PARTS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--limit {text}: write PART=SECONDS with PART one of {', '.join(PARTS)}")
        args.limits[name] = float(seconds)
    if args.wheels:
        install(args.wheels, args.site)
        sys.path.insert(0, args.site)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*([args.site] if args.wheels else []), ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.makedirs(args.out, exist_ok=True)
    report = {"command": " ".join(["python", os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_info(args.device), "parts": {}}
    write_report(report, args.out)
    with open(os.path.join(args.out, "gpu_check.log"), "a") as log:
        for name in args.parts:
            print(f"{name}: running (limit {args.limits[name]:g} s)", flush=True)
            log.write(f"\n==== {name}\n")
            log.flush()
            report["parts"][name] = run_part(name, args, log)
            write_report(report, args.out)
            print(f"{name}: {report['parts'][name]['status']}, {report['parts'][name]['seconds']} s, "
                  f"{len(report['parts'][name]['rows'])} rows", flush=True)
    print(markdown(report))
    not_ok = [name for name, part in report["parts"].items() if part["status"] != "ok"]
    if not_ok:
        sys.exit(f"parts not ok: {', '.join(not_ok)} (their rows and {args.out}/gpu_check.log say why)")


if __name__ == "__main__":
    main()
