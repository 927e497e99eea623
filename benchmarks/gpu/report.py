"""The report of benchmarks/gpu/check.py: its tables, and --report's copy into the results folder and README.

A report is a dict: command, started, machine (device, cpu, versions, pip check) and parts (name -> status,
seconds, limit_s and rows, each row a dict). `markdown` gives every row, a table per part; `summary` the README's
table, one line per part.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "gpu")
README_START = "<!-- gpu table: written by benchmarks/gpu/check.py --report -->"
README_END = "<!-- end of gpu table -->"
sys.path.insert(0, ROOT)  # cleanmetta's atomic file writes (imported where used: the wheels come first)


def markdown(report: dict) -> str:
    """Every row: the machine, then a table per part with its status."""
    machine = report["machine"]
    versions = ", ".join(f"{key} {value}" for key, value in machine.items()
                         if key not in ("device", "cpu", "pip_check"))
    lines = [f"# cleanmetta on {machine.get('gpu', machine['device'])}", "",
             f"Command: `{report['command']}` ({report['started']}). Machine: {machine['cpu']}; {versions}."]
    if machine.get("pip_check"):
        lines += ["", "pip check: " + "; ".join(machine["pip_check"])]
    for name, part in report["parts"].items():
        lines += ["", f"## {name}: {part['status']}, {part['seconds']} s of {part['limit_s']:g} s", ""]
        lines += table(part["rows"]) if part["rows"] else ["(no rows)"]
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: a column per key that any row has, in the order they first appear."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return "" if value is None else str(value)


def summary(report: dict) -> str:
    """The README's table: one line per part."""
    machine = report["machine"]
    lines = [f"Measured on {machine.get('gpu', machine['device'])} ({machine['cpu']}), torch {machine['torch']}, "
             f"cleanmetta {machine['commit'] or '(commit not recorded)'}, {report['started']}, with "
             f"`{report['command']}`; every row in "
             "[benchmarks/results/gpu/gpu_check.md](benchmarks/results/gpu/gpu_check.md). Steps/s: agent steps per "
             "second after the first epoch.", "", "| part | status | measured |", "|---|---|---|"]
    for name, part in report["parts"].items():
        rows = part["rows"]
        if name == "tests":
            failed = [row["test"].split("::")[-1] for row in rows if row["outcome"] != "passed"]
            text = f"{len(rows) - len(failed)} of {len(rows)} device tests passed" + (
                f"; failed: {', '.join(failed)}" if failed else "")
        else:
            text = "; ".join(describe(row) for row in rows)
        lines.append(f"| {name} | {part['status']} | {text or '-'} |")
    return "\n".join(lines)


def describe(row: dict) -> str:
    """One row in a few words: what ran, and its steps/s (or its error)."""
    if "backend" in row:
        return (f"{row['backend']} process group of {row['ranks']}, all-reduce of 1M floats "
                f"{row['all_reduce_1M_floats_ms']:.2f} ms" + ("" if row["all_reduce_sum_ok"] else " (wrong sum)"))
    settings = ", ".join(f"{key} {row[key]}" for key in ("envs", "simulations", "workers", "ranks") if key in row)
    what = f"{row['run']} on {row['device']}" + (f" ({settings})" if settings else "")
    if "error" in row:
        return f"{what}: failed ({row['error']})"
    text = f"{what}: {cell(row['steps_per_s'] or row['whole_steps_per_s'])} steps/s"
    return text + (f", {row['loop_over_bare']:.2f}x the bare env" if "loop_over_bare" in row else "")


def write_report(report: dict, out: str) -> None:
    """gpu_check.json and gpu_check.md into `out`, each replaced whole."""
    from cleanmetta.files import write_json, write_text

    write_json(os.path.join(out, "gpu_check.json"), report)
    write_text(os.path.join(out, "gpu_check.md"), markdown(report))


def publish(path: str) -> None:
    """--report: a check's JSON into benchmarks/results/gpu/ (with its markdown) and its tables into the README."""
    with open(path) as f:
        report = json.load(f)
    write_report(report, RESULTS)
    load_benchmark("compare").write_readme_block(README_START, README_END, summary(report))
    print(f"wrote {os.path.relpath(RESULTS, ROOT)}/gpu_check.json, gpu_check.md and the README's GPU table")


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (not by putting benchmarks/ on sys.path: its mettagrid.py would hide
    the mettagrid package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # registered first: its dataclasses need it
    spec.loader.exec_module(module)
    return module
