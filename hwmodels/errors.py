"""The one error a user's mistake raises: the CLI prints it as one line and exits 2.

Also the one way the tool reads a file it is given (`read_regular`, `open_regular`,
`load_mapping`): only regular files (a FIFO or /dev/zero would block or never end), of bounded
size, and for YAML with aliases expanded only up to a bound (a 331-byte alias bomb otherwise
expands to gigabytes when the mapping is copied or validated).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

MAX_FILE_BYTES = 64 * 2**20  # a scenario, hardware, model config, profile, sweep or plan file
MAX_VALUES = 2_000_000       # values in such a file once YAML aliases are expanded (see _expanded)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when installed: the same, faster


class InputError(ValueError):
    """Bad input: names the file, the field and what is allowed."""

    def __init__(self, where: str, field: str, message: str):
        where, field, message = (_one_line(x) for x in (where, field, message))
        self.where, self.field, self.message = where, field, message
        super().__init__(where, field, message)  # args rebuild it (SimPy re-raises a process's error so; pickling)

    def __str__(self) -> str:
        loc = f"{self.where}: {self.field}" if self.field else self.where
        return f"{loc}: {self.message}"


def _one_line(text: str) -> str:
    """A user's key or value may hold line breaks; the message must stay one line."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def from_validation(err: ValidationError, where: str) -> InputError:
    """Turn pydantic's multi-line report into one line naming the first bad field."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif first.get("type") == "missing":
        msg = "field required"
    n = len(err.errors())
    more = f" (and {n - 1} more problem{'s' if n > 2 else ''})" if n > 1 else ""
    return InputError(where, field, msg + more)


# -- reading files ---------------------------------------------------------------------------------
def open_regular(path: str | Path, what: str = "file") -> IO[bytes]:
    """Open a regular file for reading in binary; anything else (missing, a folder, a FIFO, a
    device such as /dev/zero) is an InputError. O_NONBLOCK: opening a FIFO must not wait for a
    writer; it is then refused by its type like any other special file."""
    p = str(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(p, "", f"{what} not found") from None
    except OSError as e:
        raise InputError(p, "", f"cannot read {what}: {e.strerror or type(e).__name__}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
            raise InputError(p, "", f"is {kind}, not a regular file; give a {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, limit: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see open_regular)."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise InputError(str(path), "", f"{what} is {max(size, len(data)):,} bytes; at most {limit:,} allowed")
        return data


def _expanded(root: Any, limit: int) -> int:
    """How many values `root` holds with every shared (aliased) container counted each time it
    occurs, as a copy or a validator would see it; a string counts 1 + len // 16. Memoised by
    identity, so the walk costs the parsed size, not the expanded one. Raises ValueError past
    `limit` or on a container that holds itself (a recursive alias)."""
    memo: dict[int, int] = {}
    busy = object()

    def size(x: Any) -> int:
        if isinstance(x, str):
            return 1 + len(x) // 16
        if not isinstance(x, (dict, list)):
            return 1
        k = id(x)
        got = memo.get(k)
        if got is busy:
            raise ValueError("a value that contains itself (recursive alias)")
        if got is not None:
            return got  # type: ignore[return-value]
        memo[k] = busy  # type: ignore[assignment]
        n = 1 + (sum(size(a) + size(b) for a, b in x.items()) if isinstance(x, dict) else sum(size(v) for v in x))
        if n > limit:
            raise ValueError(f"more than {limit:,} values once aliases are expanded")
        memo[k] = n
        return n

    return size(root)


def read_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """A text file's contents (a regular file of at most `limit` bytes, UTF-8); any failure is an
    InputError."""
    try:
        return read_regular(path, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(str(path), "", "cannot read: not UTF-8 text") from None


def file_stamp(arg: str | Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the file `arg` names, None if it names none: beside the name, the key of
    a cache of what was read from it, so a file edited since is read again."""
    try:
        st = os.stat(arg)
    except (OSError, ValueError):
        return None
    return st.st_mtime_ns, st.st_size


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping; any failure is an InputError."""
    p = Path(path)
    text = read_text(p)
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        line = getattr(e, "lineno", None) or getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" near line {line + (0 if p.suffix == '.json' else 1)}" if line is not None else ""
        raise InputError(str(p), "", f"not valid {'JSON' if p.suffix == '.json' else 'YAML'}{at}") from None
    except (ValueError, RecursionError):
        raise InputError(str(p), "", "not valid YAML/JSON") from None
    if not isinstance(data, dict):
        raise InputError(str(p), "", f"must hold a mapping of fields, got {type(data).__name__}")
    try:
        _expanded(data, MAX_VALUES)
    except ValueError as e:
        raise InputError(str(p), "", f"too large: {e}") from None
    except RecursionError:
        raise InputError(str(p), "", "too deeply nested") from None
    return data
