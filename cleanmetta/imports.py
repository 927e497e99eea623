"""Objects named by import path: the env wrappers, networks, losses and optimisers of one's own.

Every extension point is named the same way, on the command line, in YAML and in Python:
'module:Name' with optional ':key=value,...' keyword arguments (config.parse_import's grammar),
e.g. `--agent.network my_nets:Agent:hidden=128`. `load_object` imports the object, with one line
naming the fix when the module is not installed or has no such name; `check_call` refuses keyword
arguments it does not take before anything trains; `import_path` is the reverse, the path that
a checkpoint stores beside the object's keyword arguments.

Nothing here runs what a file names: loading a checkpoint that names a class is policy_store.py's
(it imports only modules the user named, and calls only torch.nn.Module subclasses).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from cleanmetta.config import ConfigError, parse_import


def load_object(spec: str, what: str) -> tuple[Any, dict[str, Any]]:
    """The object 'module:Name' names, and the spec's keyword arguments. `what` names the setting in
    the errors, e.g. 'agent.network'. The working directory is searched too, as `python -m` does,
    so that a module beside a forked train.py imports from wherever the script is run."""
    module, name, kwargs = parse_import(spec, what)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{what} {spec!r}: module {err.name!r} is not installed (nor a file {err.name}.py in "
                          f"the working directory); install it or check the spelling") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {spec!r}: module {module} has no {name!r}") from None
        obj = getattr(obj, part)
    return obj, kwargs


def check_call(function: Any, args: tuple, kwargs: dict[str, Any], what: str) -> None:
    """ConfigError unless `function(*args, **kwargs)` fits its signature: a keyword argument it does not
    take, or one it needs and is not given, is named now instead of by a TypeError mid-build."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: the call will tell
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        accepted = [p for p in signature.parameters if p not in ("self", "args", "kwargs")][len(args):]
        raise ConfigError(f"{what}: {err}; it takes {accepted or 'no keyword arguments'}") from None


def import_path(obj: Any) -> str:
    """'module:QualName' of a class or function (what load_object reads back)."""
    return f"{obj.__module__}:{obj.__qualname__}"


def importable(obj: Any) -> bool:
    """Whether import_path(obj) leads back to obj in another process: not a class of a script's
    __main__ or one defined inside a function."""
    return obj.__module__ != "__main__" and "<locals>" not in obj.__qualname__


def asks_for(function: Any, name: str) -> bool:
    """Whether `function` (a function or a callable object) declares a parameter `name`."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
