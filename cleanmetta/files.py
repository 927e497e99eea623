"""Files a run writes, written so that a process killed at any moment leaves the old file or the new one.

Each file is written to a temporary name in its own directory, flushed to disk, and renamed over
the old one (a rename within a directory is atomic on POSIX and Windows); then the directory
itself is fsynced where the platform allows it, so that the rename survives a power cut too.
Leftover temporary files (`<name>.<random>.tmp`) are all a kill can leave behind. A write that
fails leaves the old file whole and raises WriteError, one line naming the path and the cause (a
full disk says so, with the space left); files get the permissions of the process's umask, like
the logs beside them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from typing import Any, Callable

FULL = 1 << 20  # bytes: a device with less free space than this is taken as full when a write fails


class WriteError(OSError):
    """A run's file or directory cannot be written; the message names the path, why, and the fix."""


def write_error(path: str, err: BaseException) -> WriteError | None:
    """The one-line WriteError for a failed write of `path`, None when `err` is not about the disk.

    A full disk shows in many ways: ENOSPC or EDQUOT from the OS, or, from torch.save's C++ writer,
    "basic_ios::clear: iostream error" or "unexpected pos"; so any OSError or RuntimeError of a
    write to a device with less than FULL bytes free is taken as one."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (isinstance(err, (OSError, RuntimeError)) and free is not None
                                                  and free < FULL):
        what = "the disk quota is exceeded" if code == errno.EDQUOT else "no space left on the device"
        return WriteError(f"cannot write {path}: {what} ({free:,} bytes free in {directory}); free some space, or "
                          "train elsewhere (--log.run-root), and --resume continues from the last checkpoint")
    if isinstance(err, OSError):
        return WriteError(f"cannot write {path}: {err.strerror or err}")
    return None


def make_directory(directory: str, what: str) -> None:
    """Create `directory` (and its parents) and check that a file can be written in it; a WriteError
    naming `what` (the setting that chose it) when it cannot."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise WriteError(f"{what}: cannot write in {directory} ({err.strerror or err}: {err.filename or directory}); "
                         "pick a directory you can write to") from None


UMASK = os.umask(0)
os.umask(UMASK)  # the process's umask, read once: files get the permissions open() would give them


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
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would set the run's files apart from its logs
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except (OSError, RuntimeError) as err:
        error = write_error(path, err)
        if error is None:
            raise
        raise error from None
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
