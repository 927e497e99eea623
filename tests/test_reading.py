"""docs/reading.md and docs/ppo_details.md name only files, functions and flags that exist, and
reading.md's line numbers point into the functions beside them.

The pages write a file as `path.py` (a path under the project or under cleanmetta/), a function or
class as `module.qualname` (module one of ours, or train), a flag as `--section.field-name`, and a
location as `file.py:N` `module.qualname`.
"""

import dataclasses
import importlib
import inspect
import os
import re

import pytest

from cleanmetta.config import TrainingConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["reading.md", "ppo_details.md"]
OURS = {f[:-3] for f in os.listdir(os.path.join(ROOT, "cleanmetta")) if f.endswith(".py")} | {"train"}


def page(name: str = "reading.md") -> str:
    with open(os.path.join(ROOT, "docs", name)) as f:
        return f.read()


def resolve(reference: str):
    """The object `module.qualname` names (module: cleanmetta's, or train.py)."""
    module, *names = reference.split(".")
    obj = importlib.import_module(module if module == "train" else f"cleanmetta.{module}")
    for name in names:
        obj = getattr(obj, name)
    return obj


def code_tokens(text: str) -> list[str]:
    return re.findall(r"`([^`\s]+)`", text)


@pytest.mark.parametrize("name", PAGES)
def test_every_file_it_names_exists(name):
    files = [t for t in code_tokens(page(name)) if t.endswith(".py") and not t.startswith("cleanrl/")]
    assert files
    missing = [f for f in files if not (os.path.exists(os.path.join(ROOT, f))
                                        or os.path.exists(os.path.join(ROOT, "cleanmetta", f)))]
    assert not missing, missing


@pytest.mark.parametrize("name", PAGES)
def test_every_function_it_names_exists(name):
    references = [t for t in code_tokens(page(name)) if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", t)
                  and t.split(".")[0] in OURS and not t.endswith(".py")]
    assert len(references) > 20
    for reference in references:
        assert callable(resolve(reference)), reference


@pytest.mark.parametrize("name", PAGES)
def test_every_flag_it_names_exists(name):
    flags = re.findall(r"`(--[a-z_]+\.[a-z0-9-]+)", page(name))
    if name == "ppo_details.md":
        assert len(flags) > 20
    for flag in flags:
        section, field = flag[2:].split(".")
        field = field.replace("-", "_")
        config = getattr(TrainingConfig(), section)
        names = {f.name for f in dataclasses.fields(config)}
        assert field in names or field.removeprefix("no_") in names, f"{flag} is not a flag of train.py"


def locations(text: str) -> list[tuple[str, int, str]]:
    return [(f, int(n), ref) for f, n, ref in re.findall(r"`([\w/]+\.py):(\d+)` `([\w.]+)`", text)]


def test_every_line_number_points_into_the_function_beside_it():
    found = locations(page())
    assert len(found) >= 14
    for file, line, reference in found:
        obj = inspect.unwrap(resolve(reference))
        source, start = inspect.getsourcelines(obj)
        assert os.path.basename(inspect.getsourcefile(obj)) == os.path.basename(file), (file, reference)
        assert start <= line < start + len(source), f"{file}:{line} is not in {reference} (lines {start}-" \
                                                    f"{start + len(source) - 1}); update docs/reading.md"


def test_the_six_answers_need_at_most_five_files_and_fifteen_functions():
    table = page().split("## Six questions, side by side", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "?" in line.split("|")[1]]
    assert len(rows) == 6
    answers = [location for row in rows for location in locations(row.split("|")[3])]
    assert all(locations(row.split("|")[3]) for row in rows)  # every question answered with a location
    assert len({file for file, _, _ in answers}) <= 5
    assert len({reference for _, _, reference in answers}) <= 15


def section(title: str) -> str:
    text = page()
    start = text.index(title)
    return text[start:text.index("\n## ", start)]


def test_the_defaults_table_holds_the_codes_values():
    rows = [line.split("|")[1:-1] for line in section("## The defaults").splitlines() if line.startswith("| ")]
    defaults = dataclasses.asdict(TrainingConfig())
    assert len(rows) > 15
    for _, flag, ours, cleanrl in rows[1:]:
        section_name, field = flag.strip(" `-").split(".")
        value = defaults[section_name][field.replace("-", "_")]
        assert str(value) == ours.strip(), (flag, value, ours)


def test_the_six_answers_take_under_900_lines_of_at_most_6_files():
    text = section("## What the six answers take")
    references = [t for t in code_tokens(text) if re.fullmatch(r"[a-z_]+(\.\w+)+", t) and not t.endswith(".py")]
    lines = sum(len(inspect.getsourcelines(inspect.unwrap(resolve(r)))[0]) for r in references)
    table = importlib.import_module("cleanmetta.experience").__doc__.count("\n") + 1  # the table atop experience.py
    files = {r.split(".")[0] for r in references}
    stated = int(re.search(r"(\d+) lines", text).group(1))
    assert len(files) <= 6 and lines + table <= 900
    assert abs(stated - (lines + table)) <= 20, f"the page says {stated} lines; they are {lines + table} now"
