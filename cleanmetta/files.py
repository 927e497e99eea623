"""Files a run writes, written so that a process killed at any moment leaves the old file or the new one.

Each file is written to a temporary name in its own directory, flushed to disk, and renamed over
the old one (a rename within a directory is atomic on POSIX and Windows); then the directory
itself is fsynced where the platform allows it, so that the rename survives a power cut too.
Leftover temporary files (`<name>.<random>.tmp`) are all a kill can leave behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) to write the file's contents, then put it in place of `path` at once."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Atomically write `text` to `path`."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    write_atomic(path, write)


def write_json(path: str, data: Any) -> None:
    """Atomically write `data` to `path` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
