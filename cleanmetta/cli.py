"""The command line of train.py: a base config, then flags on top, each value read as its user wrote it.

    python train.py --preset small_fast --seed 3
    python train.py --config run.yaml --trainer.total-timesteps 2e6 --ppo.norm-adv false

`--preset NAME`, `--config FILE` and `--resume RUN` give the base (read first, in that order);
tyro parses every other flag of TrainingConfig on top of it. Before tyro sees them, values are read
the way a YAML file's are (config.py's rules): an integer written with an exponent (`2e6`) is that
integer, and a bool flag given a value (`--ppo.norm-adv False`, `--ppo.norm-adv=no`) is that bool,
spelled as tyro's flag pair (`--ppo.norm-adv` / `--ppo.no-norm-adv`); a value that is no bool is an
error naming the flag.

Errors of the user's making (a bad value, a missing package, an env cleanmetta cannot train on, a
damaged checkpoint, a path that cannot be written) are `USER_ERRORS`: train.py prints them as one
line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

import tyro

from cleanmetta.checkpoint import CheckpointError
from cleanmetta.config import BOOL_WORDS, ConfigError, TrainingConfig, read_bool
from cleanmetta.presets import PRESETS
from cleanmetta.distributed import DistributedError
from cleanmetta.files import WriteError
from cleanmetta.resume import config_file_base, resume_base
from cleanmetta.spaces import UnsupportedEnvError

USER_ERRORS = (ConfigError, UnsupportedEnvError, CheckpointError, WriteError, FileNotFoundError, DistributedError,
               FloatingPointError)
"""Errors whose message says what to fix: shown as `error: <message>`, without a traceback."""

BASES = {  # read before the other flags, in this order; each replaces the base config
    "--preset": "NAME   a named preset: " + ", ".join(sorted(PRESETS)),
    "--config": "FILE   a YAML or JSON config file (the layout: examples/config.yaml)",
    "--resume": "RUN    continue the run in directory RUN from its last checkpoint",
}


def parse_config(argv: list[str], description: str = "") -> TrainingConfig:
    """Flags on top of a base: --preset NAME, --config FILE, or the config saved in --resume RUN_DIR
    (as `--preset NAME` or `--preset=NAME`). `description` heads --help."""
    base, resume_dir, given, rest = TrainingConfig(), None, {}, []
    args = iter(argv)
    for arg in args:
        flag, equals, value = arg.partition("=")
        if flag not in BASES:
            rest.append(arg)
            continue
        value = value if equals else next(args, None)
        if value is None:
            raise ConfigError(f"{flag} needs a value: {flag} {BASES[flag].split()[0]}")
        given[flag] = value
    for flag, value in ((flag, given[flag]) for flag in BASES if flag in given):
        if flag == "--preset":
            if value not in PRESETS:
                raise ConfigError(f"--preset {value!r} is not a preset; choose one of {sorted(PRESETS)}")
            base = PRESETS[value]()
        elif flag == "--config":
            base = config_file_base(value)  # a run's config.json starts a new run (a new name), not that run
        else:
            resume_dir = os.path.normpath(value)
            base = resume_base(resume_dir)  # RUN/config.json (torchrun: on rank 0 only)
    bases = "\n".join(f"  {flag} {text}" for flag, text in BASES.items())
    config = tyro.cli(TrainingConfig, default=base, args=read_flag_values(rest),
                      description=f"{description}\n\nRead first (the flags below override them):\n{bases}")
    if resume_dir is not None:  # the run directory is what --resume names, as it names it
        run_root, config.experiment_name = os.path.split(resume_dir)
        config.log.run_root = run_root or "."
        config.checkpoint.resume = True
    return config


def flag_types(cls: type = TrainingConfig, prefix: str = "--") -> dict[str, Any]:
    """Every flag of the dataclass `cls` (nested sections as `--section.field`), with '_' and '-'
    spellings, mapped to its field's type."""
    types = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            types.update(flag_types(kind, f"{prefix}{name}."))
        else:
            types[prefix + name] = types[prefix + name.replace("_", "-")] = kind
    return types


def read_flag_values(argv: list[str]) -> list[str]:
    """`argv` with integers written with an exponent made plain (`2e6` -> `2000000`, as a YAML file
    reads them) and bool flags given a value made tyro's flag pair (`--ppo.norm-adv false` ->
    `--ppo.no-norm-adv`); a bool flag given `=value` that is no bool is a ConfigError."""
    types, out, i = flag_types(), [], 0
    while i < len(argv):
        flag, equals, value = argv[i].partition("=")
        kind = types.get(flag)
        if kind is bool:
            if not equals and i + 1 < len(argv) and argv[i + 1].strip().lower() in BOOL_WORDS:
                equals, value, i = "=", argv[i + 1], i + 1
            if equals:
                section, dot, name = flag[2:].rpartition(".")
                flag = flag if read_bool(value, flag) else f"--{section}{dot}no-{name.replace('_', '-')}"
            out.append(flag)
        elif kind in (int, int | None):
            number = _integer(value if equals else argv[i + 1] if i + 1 < len(argv) else "")
            if number is None:  # plain digits, or no integer at all: tyro reads or refuses it
                out.append(argv[i])
            elif equals:
                out.append(f"{flag}={number}")
            else:
                out += [flag, number]
                i += 1
        else:
            out.append(argv[i])
        i += 1
    return out


def _integer(text: str) -> str | None:
    """`text` as plain digits when it is an integer written with an exponent or a point (2e6, 100.0)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return str(int(number)) if number.is_integer() and not text.strip().lstrip("-").isdigit() else None
