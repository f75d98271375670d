"""Tables: CSV files written from columns (a run's millions of moments) or from rows (a sweep's
or a plan's records), and aligned text for a terminal."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 65_536
NAN_CELL = re.compile(r"(?<![^,\n])nan(?![^,\n])")  # a whole cell that is NaN


@dataclass(frozen=True)
class Lazy:
    """A column made a chunk of rows at a time (labels of codes, scaled values, row numbers), so a
    million-row CSV needs no full-length copy of it: rows(i, j) gives rows i..j-1."""

    n: int
    rows: Callable[[int, int], Any]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> Any:
        return self.rows(s.start, min(s.stop, self.n))


def labels(names: Sequence[str], codes: np.ndarray) -> Lazy:
    """The column names[codes[i]]."""
    table = np.asarray(names)
    return Lazy(len(codes), lambda i, j: table[codes[i:j]])


def write_columns(path: Path, columns: Sequence[tuple[str, np.ndarray | Lazy, str]], limit: int | None = None) -> int:
    """Write columns (name, values, %-format) as CSV; NaN cells are left empty. Formats chunks of
    rows with one %-operation each (numpy's savetxt formats row by row). Returns rows written."""
    n = min(len(c[1]) for c in columns) if columns else 0
    if limit is not None:
        n = min(n, limit)
    row_fmt = ",".join(c[2] for c in columns) + "\n"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(c[0] for c in columns) + "\n")
        for i in range(0, n, CHUNK):
            j = min(n, i + CHUNK)
            block = np.empty((j - i, len(columns)), dtype=object)
            for k, (_, values, _) in enumerate(columns):
                block[:, k] = np.asarray(values[i:j]).tolist()
            text = (row_fmt * (j - i)) % tuple(block.ravel().tolist())
            if "nan" in text:
                text = NAN_CELL.sub("", text)
            f.write(text)
    return n


def write_rows(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str] | None = None) -> None:
    """Write dict rows as CSV, None as an empty cell. The columns are `columns` (other keys are
    left out) or every key in the order first seen. Written to a temporary file and renamed, so
    a reader never sees half a table."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    tmp.replace(path)


def aligned(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A header and rows of cells as left-aligned columns two spaces apart."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return lines
