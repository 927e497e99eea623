"""cleanmetta's floors: every module imports only from the floors below its own.

Each import statement is read with `ast`, at the top of a module and inside functions alike, and
resolved to one of our modules. An import from the same floor or a higher one fails the test with
the offending edge (file, line, both floors). Since every edge must point strictly down, an import
cycle cannot pass either. FLOORS is the table the README's Layout section shows; a test keeps the
two equal.
"""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOORS = [  # bottom first
    ["config", "distributed", "spaces", "files", "fast",   # 1 plain dataclasses; the process group;
     "learning_progress", "timing"],                       #   spaces and how observations are stored; atomic
                                                           #   files; faster equivalents of plain torch calls;
                                                           #   learning progress's maths on task scores; where
                                                           #   an epoch's time goes
    ["curriculum", "normalize", "experience", "workers", "video",  # 2 tasks, running statistics, buffers,
     "imports", "dashboard", "presets"],                   #   env worker processes, mp4 files; objects named
                                                           #   by import path; the live terminal panel; the
                                                           #   named presets
    ["mettagrid_env", "atari", "env_checks",               # 3 the optional MettaGrid and Atari vector envs;
     "optimizers"],                                        #   what building an env checks, one-line errors;
                                                           #   trainer.optimizer's optimisers
    ["envs", "encoders"],                                  # 4 make_vecenv; observation encoders
    ["networks"],                                          # 5 actor-critic networks and action distributions
    ["lstm", "protocol"],                                  # 6 the LSTM core for any network; networks of
                                                           #   one's own (CleanRL's protocol)
    ["policy", "collector", "ppo"],                        # 7 make_policy; rollout, PPO update
    ["policy_store"],                                      # 8 checkpoint files, saved policies and their index
    ["checkpoint", "log"],                                 # 9 trainer states, checkpoints committed whole; metrics
    ["evaluate", "plot", "losses", "resume",               # 10 scoring (its CLI reads the policy store); curves;
     "tune_report", "tune_runs"],                          #   custom losses (kickstart loads a teacher policy);
                                                           #   config files, checkpoints saved and restored;
                                                           #   what a tuning study leaves, a trial's runs
    ["trainer", "cli", "__init__"],                        # 11 run setup and the functional loop; train.py's
                                                           #   command line; public names
    ["tune"],                                              # 12 hyperparameter sweeps (runs train.py)
    ["train", "examples"],                                 # 13 the training script, examples
    ["benchmarks"],                                        # 14 measure train.py and the components
]
FLOOR = {name: i + 1 for i, names in enumerate(FLOORS) for name in names}
PACKAGE = os.path.join(ROOT, "cleanmetta")
MODULES = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py")}
SCRIPTS = ("train", "examples", "benchmarks")


def sources() -> dict[str, str]:
    """path -> the floor-table name of every file that the floors cover."""
    files = {os.path.join(PACKAGE, f"{module}.py"): module for module in MODULES}
    files[os.path.join(ROOT, "train.py")] = "train"
    for folder in ("examples", "benchmarks"):
        for f in os.listdir(os.path.join(ROOT, folder)):
            if f.endswith(".py"):
                files[os.path.join(ROOT, folder, f)] = folder
    return files


def imported(node: ast.AST, source: str) -> list[str]:
    """The floor-table names an import statement reaches (empty for anything not ours)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: only meaningful inside the package
            base = "cleanmetta" + (f".{node.module}" if node.module else "")
        else:
            base = node.module or ""
        # `from cleanmetta import envs` reaches the module envs; `from cleanmetta import X` for any
        # other name reaches __init__.
        targets = [f"{base}.{alias.name}" if base == "cleanmetta" and alias.name in MODULES else base
                   for alias in node.names]
    else:
        return []
    names = []
    for target in targets:
        parts = target.split(".")
        if parts[0] == "cleanmetta":
            names.append(parts[1] if len(parts) > 1 else "__init__")
        elif parts[0] in SCRIPTS:
            names.append(parts[0])
    return [name for name in names if name != source]


def read(path: str) -> ast.Module:
    with open(path) as f:
        return ast.parse(f.read(), path)


def test_every_module_has_a_floor():
    placed = {name for names in FLOORS for name in names}
    assert MODULES - placed == set(), "put each new module on a floor in FLOORS and in the README's Layout"
    assert placed - MODULES - set(SCRIPTS) == set(), "FLOORS names a module that no longer exists"


def test_every_import_points_down():
    bad = []
    for path, source in sorted(sources().items()):
        for node in ast.walk(read(path)):
            for target in imported(node, source):
                if FLOOR[target] >= FLOOR[source]:
                    bad.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {target} (floor "
                               f"{FLOOR[target]}) from {source} (floor {FLOOR[source]})")
    assert not bad, "imports that do not point to a lower floor:\n  " + "\n  ".join(bad)


def test_imports_inside_functions_are_optional_dependencies_with_a_comment():
    """Our own modules are imported at the top of a module, where a reader sees them; an import
    inside a function is for an optional dependency and says so in a comment on its line or the
    line above (or continues a block of such imports)."""
    bad = []
    for path, source in sorted(sources().items()):
        if source in ("examples", "benchmarks"):
            continue
        with open(path) as f:
            lines = f.read().splitlines()
        tree = ast.parse("\n".join(lines), path)
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            imports = [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
            block_ends = {n.end_lineno for n in imports}
            for node in imports:
                where = f"{os.path.relpath(path, ROOT)}:{node.lineno}"
                if imported(node, source):
                    bad.append(f"{where} imports one of our modules inside {function.name}(); import it at the top")
                commented = "#" in lines[node.lineno - 1] or "#" in lines[node.lineno - 2]
                if not (commented or node.lineno - 1 in block_ends):
                    bad.append(f"{where} imports inside {function.name}() without a comment saying why")
    assert not bad, "\n  ".join(["function-level imports:"] + bad)


def test_readme_layout_shows_the_same_floors():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    shown = {}
    for line in layout.splitlines():
        match = re.match(r"\s*(\d+)\s+(.*)", line)
        if match:
            names = []
            for token in match.group(2).split():
                if not token.endswith((".py", "/")):
                    break
                names.append(token.removesuffix(".py").removesuffix("/"))
            shown[int(match.group(1))] = sorted(names)
    assert shown == {i + 1: sorted(names) for i, names in enumerate(FLOORS)}


def test_the_checker_sees_upward_imports_at_any_depth():
    """The resolver behind the floor test, on the import forms it must catch."""
    tree = ast.parse("from cleanmetta.policy import POLICIES\n"
                     "def f():\n    from cleanmetta import losses, config\n    import cleanmetta.trainer\n"
                     "    from . import envs\n    from .log import StatsLogger\n    import train\n"
                     "    from cleanmetta import TrainingConfig\n    import numpy\n")
    found = [name for node in ast.walk(tree) for name in imported(node, "config")]
    assert sorted(found) == sorted(["policy", "losses", "trainer", "envs", "log", "train", "__init__"])


def test_ci_watches_the_modules_of_every_optional_extra():
    """tests/conftest.py's EXTRA_MODULES (what .ci/run's [test]-only pass looks for) names every extra."""
    import tomllib

    from conftest import EXTRA_MODULES

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert set(EXTRA_MODULES) == set(extras) - {"test"}
