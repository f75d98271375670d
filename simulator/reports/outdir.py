"""The output folder of run, sweep, plan and curves: checked before any work, never left empty.

`out_dir` creates the folder (and missing parents) and proves it writable before the caller
simulates anything, so a bad `--out` (a file, under a file, read-only) costs a second, not a
finished simulation. If the work then fails, the folders it created are removed again while they
are still empty. A write that fails on the way (a full disk) becomes one InputError line
(`write_error`).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwmodels.errors import InputError


def reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, NotADirectoryError) or e.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return e.strerror or type(e).__name__


def make_writable(path: Path, flag: str = "--out") -> list[Path]:
    """Create `path` as a folder and check that a file can be written in it; returns the folders
    this created (outermost first) so that a failed run can take them back."""
    missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
    if path.exists() and not path.is_dir():
        raise InputError(flag, str(path), "is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".momentsim-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_empty(missing[::-1])
        raise InputError(flag, str(path), f"cannot write there: {reason(e)}") from None
    return missing[::-1]


def remove_empty(created: list[Path]) -> None:
    """Remove the folders this run created, innermost first, as long as they are empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            return


@contextmanager
def out_dir(path: Path | None, flag: str = "--out") -> Iterator[Path | None]:
    """with out_dir(Path(args.out)) as out: ... (see the module docstring); None: no folder."""
    created = make_writable(path, flag) if path is not None else []
    try:
        yield path
    except BaseException:
        remove_empty(created)
        raise


def write_error(e: OSError, path: Path, flag: str = "--out") -> InputError:
    """A failed write under an output folder (a full disk, say) as one line."""
    name = f" {Path(e.filename).name}" if e.filename else ""
    return InputError(flag, str(path), f"cannot write{name}: {reason(e)}")
