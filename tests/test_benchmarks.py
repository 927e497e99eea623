"""The benchmarks' bookkeeping: a published table's commands run exactly its runs, and no run overwrites the
results of another."""

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")  # the benchmarks draw their curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)
try:
    import compare
    import optimizers as optimizer_benchmark
    import suite
finally:  # benchmarks/mettagrid.py would shadow the mettagrid package for the other tests
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != BENCHMARKS]

# task -> library -> seeds, as uneven as the published suite table: 5 seeds of one task, one CleanRL seed of another
SEEDS = {"cartpole": {"cleanmetta": [1, 2, 3], "cleanrl": [1, 2, 3]},
         "acrobot": {"cleanmetta": [1, 2, 3, 4, 5], "cleanrl": [1, 2, 3, 4, 5]},
         "mountaincar_rlzoo": {"cleanmetta": [1, 2, 3]},
         "hopper": {"cleanmetta": [1, 2, 3], "cleanrl": [1]},
         "walker2d": {"cleanmetta": [2, 3]}}


def runs_on_disk() -> dict:
    return {task: {lib: [{"task": task, "library": lib, "seed": seed, "score": -1.0, "sps": 1.0, "wall_s": 60.0,
                          "machine": "a machine", "commit": "abc1234", "curve": []} for seed in seeds]
                   for lib, seeds in libraries.items()} for task, libraries in SEEDS.items()}


def printed_commands(table: str) -> list[list[str]]:
    """The suite commands a table prints, as argument lists."""
    return [line.split()[2:] for line in re.findall(r"python benchmarks/suite\.py[^`\n]*", table)]


def test_the_suite_table_prints_the_commands_that_run_exactly_its_runs():
    runs = runs_on_disk()
    named = [run for args in printed_commands(suite.table(runs))
             for run in suite.named_runs(**{key: value for key, value in vars(suite.parser().parse_args(args)).items()
                                            if key in ("tasks", "libraries", "seeds")})]
    on_disk = [(task, lib, seed) for task, libraries in SEEDS.items() for lib, seeds in libraries.items()
               for seed in seeds]
    assert sorted(named) == sorted(on_disk)


def test_the_suite_runs_nothing_whose_results_are_on_disk_and_needs_no_cleanrl_for_them(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "RESULTS", str(tmp_path))
    for task, libraries in runs_on_disk().items():
        for lib, runs in libraries.items():
            for run in runs:
                path = suite.run_path(task, lib, run["seed"])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    json.dump(run, f)

    def run_one(*args):
        raise AssertionError(f"ran {args[:4]} again")

    monkeypatch.setattr(suite, "run_one", run_one)
    monkeypatch.setattr(suite, "write_report", lambda runs: None)
    for args in printed_commands(suite.table(runs_on_disk())):
        args = [str(tmp_path / "no-cleanrl-here") if arg == "/tmp/cleanrl" else arg for arg in args]
        monkeypatch.setattr(sys, "argv", ["suite.py", *args])
        suite.main()


def test_a_results_file_that_exists_is_refused(tmp_path):
    path = tmp_path / "earlier_run.json"
    path.write_text("{}")
    with pytest.raises(SystemExit, match="never overwrites"):
        compare.result_path("earlier_run", str(path))
    assert compare.result_path("new_run", str(tmp_path / "new_run.json")) == str(tmp_path / "new_run.json")


def test_a_benchmark_run_leaves_an_earlier_results_file_as_it_was(tmp_path):
    earlier = tmp_path / "recurrent.json"
    earlier.write_text('{"cartpole": "an earlier run"}')
    result = subprocess.run([sys.executable, "benchmarks/recurrent.py", "--parts", "cartpole", "--seeds", "1",
                             "--contenders", "feedforward", "--cartpole-steps", "1024", "--out", str(earlier)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "never overwrites" in result.stderr
    assert earlier.read_text() == '{"cartpole": "an earlier run"}'


def test_a_results_file_records_the_command_and_the_commit_it_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [os.path.join(BENCHMARKS, "recurrent.py"), "--parts", "cartpole"])
    record = compare.run_record()
    assert record["command"] == "python benchmarks/recurrent.py --parts cartpole"
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert record["commit"].split("+")[0] == head.stdout.strip()


def test_the_optimizer_benchmark_runs_a_task_and_seeds_optimizers_back_to_back_and_nothing_on_disk_again(
        tmp_path, monkeypatch):
    names = list(optimizer_benchmark.OPTIMIZERS)
    order = optimizer_benchmark.named_runs(["halfcheetah", "cartpole"], names, [1, 2])
    assert [task for task, _, _ in order] == ["cartpole"] * 8 + ["halfcheetah"] * 8  # classic control first
    for start in range(0, 16, 4):  # each (task, seed): every optimiser, back to back
        assert len({(task, seed) for task, _, seed in order[start:start + 4]}) == 1
        assert sorted(optimizer for _, optimizer, _ in order[start:start + 4]) == sorted(names)

    out = tmp_path / "optimizers"
    out.mkdir()
    (out / "cartpole_adam_seed1.json").write_text(json.dumps(
        {"task": "cartpole", "optimizer": "adam", "seed": 1, "steps": 500, "score": 20.0, "sps": 1.0, "wall_s": 60.0,
         "machine": "a machine", "commit": "abc1234"}))
    ran = []

    def run_one(task, optimizer, seed, steps):
        ran.append((task, optimizer, seed))
        return {"task": task, "optimizer": optimizer, "seed": seed, "steps": steps, "score": 10.0, "sps": 2.0,
                "wall_s": 30.0}

    monkeypatch.setattr(optimizer_benchmark, "run_one", run_one)
    monkeypatch.setattr(sys, "argv", ["optimizers.py", "--tasks", "cartpole", "--seeds", "1",
                                      "--total-timesteps", "500", "--out-dir", str(out)])
    optimizer_benchmark.main()
    assert ran == [("cartpole", name, 1) for name in names[1:]]  # adam's file is on disk
    table = (tmp_path / "optimizers.md").read_text()
    assert "| CartPole-v1 (500 steps) | muon | 1 | 10.0 ± 0.0 | 0.50 | 0.5 | 0.50 | 2 | 2.00 |" in table
