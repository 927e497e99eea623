"""benchmarks/gpu/check.py, the one command a GPU machine runs, dry-run on the CPU with tiny budgets, so that it
cannot rot before a GPU comes."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ["tests", "cartpole", "mettagrid", "atari", "lstm", "torchrun"]
needs_extras = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("mettagrid", "ale_py", "matplotlib")),
    reason='the dry run trains on MettaGrid and Atari: pip install -e ".[mettagrid,atari,plot]"')


def check(tmp_path, *flags: str, status: int = 0) -> dict:
    result = subprocess.run([sys.executable, "benchmarks/gpu/check.py", "--device", "cpu", "--quick", "--out",
                             str(tmp_path), *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == status, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "gpu_check.json") as f:
        return json.load(f)


@needs_extras
def test_the_dry_run_runs_every_part_and_reports_each_row(tmp_path):
    report = check(tmp_path)
    assert list(report["parts"]) == PARTS
    assert report["machine"]["device"] == "cpu" and report["machine"]["mettagrid"] != "missing"
    for name, part in report["parts"].items():
        assert part["status"] == "ok" and part["rows"], (name, part["status"], part["rows"])
    tests = report["parts"]["tests"]["rows"]
    assert len(tests) >= 13 and {row["outcome"] for row in tests} == {"passed"}
    assert any("first_minibatch_recomputes" in row["test"] for row in tests)
    runs = [row for name in PARTS[1:] for row in report["parts"][name]["rows"] if "agent_steps" in row]
    assert len(runs) == 9 and all(row["agent_steps"] > 0 and row["whole_steps_per_s"] > 0 for row in runs)
    assert all(row["steps_per_s"] > 0 for row in runs)  # every run has 3 epochs or more
    assert all(row["loop_over_bare"] > 0 for row in report["parts"]["mettagrid"]["rows"])
    group = report["parts"]["torchrun"]["rows"][0]
    assert (group["backend"], group["ranks"], group["all_reduce_sum_ok"]) == ("gloo", 1, True)
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert all(f"## {name}: ok" in markdown for name in PARTS) and "| run | device |" in markdown
    assert "==== torchrun" in (tmp_path / "gpu_check.log").read_text()


def test_a_part_past_its_limit_is_stopped_and_keeps_the_rows_it_finished(tmp_path):
    report = check(tmp_path, "--parts", "cartpole", "--limit", "cartpole=6", status=1)
    part = report["parts"]["cartpole"]
    assert part["status"] == "stopped at its 6 s limit" and 6 <= part["seconds"] < 15
    assert len(part["rows"]) < 2 and all(row["agent_steps"] == 2048 for row in part["rows"])
    assert "## cartpole: stopped at its 6 s limit" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.parametrize("flags, error", [(["--out", "x", "--limit", "atari"], "--limit atari: write PART=SECONDS"),
                                          (["--parts", "atari"], "--out DIR: where to write gpu_check.json")])
def test_bad_flags_are_a_one_line_error(flags, error):
    result = subprocess.run([sys.executable, "benchmarks/gpu/check.py", *flags], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2 and error in result.stderr


def test_the_readme_summary_gives_each_parts_status_failures_and_speeds():
    spec = importlib.util.spec_from_file_location("gpu_report", os.path.join(ROOT, "benchmarks", "gpu", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    atari = {"run": "ALE/Breakout-v5 float32", "device": "cuda", "envs": 64, "agent_steps": 65536,
             "steps_per_s": 12345.6, "whole_steps_per_s": 9000.0, "return_last20": None, "wall_s": 20.0}
    data = {"command": "python benchmarks/gpu/check.py", "started": "2026-12-06 10:00 UTC",
            "machine": {"device": "cuda", "cpu": "16 cores", "torch": "2.11.0", "commit": "abc1234", "gpu": "H200"},
            "parts": {
                "tests": {"status": "failed (exit status 1)", "seconds": 30.0, "limit_s": 50, "rows": [
                    {"test": "tests.test_ppo::test_a", "outcome": "passed", "seconds": 0.1, "message": ""},
                    {"test": "tests.test_lstm::test_b", "outcome": "failed", "seconds": 0.2, "message": "Error: x"}]},
                "atari": {"status": "stopped at its 100 s limit", "seconds": 100.2, "limit_s": 100, "rows": [
                    atari, {"run": "ALE/Breakout-v5 --ppo.compile", "device": "cuda", "envs": 64, "error": "boom"}]}}}
    summary = report.summary(data)
    assert "| tests | failed (exit status 1) | 1 of 2 device tests passed; failed: test_b |" in summary
    assert ("| atari | stopped at its 100 s limit | ALE/Breakout-v5 float32 on cuda (envs 64): 12,346 steps/s; "
            "ALE/Breakout-v5 --ppo.compile on cuda (envs 64): failed (boom) |") in summary
    assert "H200 (16 cores), torch 2.11.0, cleanmetta abc1234" in summary
    markdown = report.markdown(data)
    assert "## atari: stopped at its 100 s limit, 100.2 s of 100 s" in markdown
    assert "| run | device | envs | agent_steps | steps_per_s |" in markdown and "| boom |" in markdown
