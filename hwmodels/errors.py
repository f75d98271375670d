"""The one error a user's mistake raises: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class InputError(ValueError):
    """Bad input: names the file, the field and what is allowed."""

    def __init__(self, where: str, field: str, message: str):
        where, field, message = (_one_line(x) for x in (where, field, message))
        self.where, self.field, self.message = where, field, message
        loc = f"{where}: {field}" if field else where
        super().__init__(f"{loc}: {message}")


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


def read_text(path: str | Path) -> str:
    """A text file's contents; a missing or unreadable file is an InputError."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(p), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(p), "", f"cannot read: {e.__class__.__name__}") from None


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping; any failure is an InputError."""
    p = Path(path)
    text = read_text(p)
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        line = getattr(e, "lineno", None) or getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" near line {line + (0 if p.suffix == '.json' else 1)}" if line is not None else ""
        raise InputError(str(p), "", f"not valid {'JSON' if p.suffix == '.json' else 'YAML'}{at}") from None
    except (ValueError, RecursionError):
        raise InputError(str(p), "", "not valid YAML/JSON") from None
    if not isinstance(data, dict):
        raise InputError(str(p), "", f"must hold a mapping of fields, got {type(data).__name__}")
    return data
