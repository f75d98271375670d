"""Requests of a scenario's workload: arrival times, prompt and output lengths, shared prefixes,
request classes and priorities.

Everything is drawn at once with numpy (vectorised, one `default_rng(seed)`), so a million
requests cost milliseconds and the engine's hot loop only reads arrays. Draws happen in a
fixed order (arrivals, prompt lengths, output lengths, classes and their own lengths, prefixes)
so that a seed gives the same requests whatever the engine does with them; a workload without
classes draws nothing for them.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from hwmodels.errors import InputError, open_regular
from simulator.serving.scenario import (
    MAX_PRIORITY,
    MAX_TOKENS,
    Empirical,
    Fixed,
    FromTrace,
    Lognormal,
    Uniform,
    Workload,
)

# Column names a trace may use: ours, then the Azure LLM inference trace's.
ARRIVAL_COLS = ("arrival_s", "TIMESTAMP")
PROMPT_COLS = ("prompt_len", "ContextTokens")
OUTPUT_COLS = ("output_len", "GeneratedTokens")
PRIORITY_COLS = ("priority",)
MAX_TRACE_S = 1e9         # a trace spans at most ~32 years of arrivals
MAX_LINE_BYTES = 1 << 20  # one row of a trace


@dataclass(frozen=True)
class Requests:
    """The requests of a run, sorted by arrival. Index i is the request's id everywhere."""

    arrival_s: np.ndarray    # float64, seconds from the start of the run
    prompt_len: np.ndarray   # int32 (at most MAX_TOKENS), full prompt including any shared prefix
    output_len: np.ndarray   # int32, tokens to generate (>= 1)
    prefix_id: np.ndarray    # int32, shared-prefix group or -1
    prefix_len: np.ndarray   # int32, tokens of the shared prefix (0 if none)
    priority: np.ndarray | None = None   # int32, 0 first (serving.queue: priority); None: all 0
    klass: np.ndarray | None = None      # int32, index into class_names; None: all 0
    class_names: tuple[str, ...] = ("all",)

    def __post_init__(self) -> None:
        for name in ("priority", "klass"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(self.arrival_s.size, dtype=np.int32))

    def __len__(self) -> int:
        return int(self.arrival_s.size)


# -- traces --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray
    prompt_len: np.ndarray | None
    output_len: np.ndarray | None
    priority: np.ndarray | None = None


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in header:
            return n
    low = {h.lower(): h for h in header}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return None


def _numbers(path: str, col: str, values: list, lines: list[int], integer: bool, hi: float) -> np.ndarray:
    """Column values as numbers in [0, hi]; the first bad one raises an InputError with its line."""
    allowed = f"an integer >= 0 and <= {hi:,.0f}" if integer else f"a number >= 0 and <= {hi:g}"
    try:
        arr = np.asarray(values, dtype=np.float64)
        ok = arr.ndim == 1 and arr.size == len(values)  # a JSON list in a cell is not a number
        ok = ok and bool(np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.all(arr <= hi))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok and integer and not np.all(arr == np.floor(arr)):
        ok = False
    if ok:
        return arr
    for v, ln in zip(values, lines, strict=True):  # slow path only to name the bad row
        try:
            x = float(v)
        except (TypeError, ValueError, OverflowError):
            x = float("nan")
        if isinstance(v, bool) or not math.isfinite(x) or not 0 <= x <= hi or (integer and x != math.floor(x)):
            raise InputError(path, f"{col} (line {ln})", f"got {str(v)[:40]!r}; must be {allowed}")
    raise InputError(path, col, f"must be {allowed}")  # pragma: no cover


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _times(path: str, col: str, values: list, lines: list[int]) -> np.ndarray:
    """Arrival times: numbers of seconds, or datetime strings (the Azure trace's TIMESTAMP)."""
    try:
        return _numbers(path, col, values, lines, integer=False, hi=MAX_TRACE_S)
    except InputError:
        if not values or not all(isinstance(v, str) for v in values) or _is_number(values[0]):
            raise  # a column of seconds with a bad value; date-times are tried only for dates
    try:
        t = np.asarray(values, dtype="datetime64[ns]")
    except ValueError:
        for v, ln in zip(values, lines, strict=True):
            try:
                np.datetime64(v, "ns")
            except ValueError:
                raise InputError(path, f"{col} (line {ln})",
                                 f"got {v[:40]!r}; must be seconds >= 0 or a date-time like "
                                 "2023-11-16 18:15:46.68") from None
        raise
    if np.any(np.isnat(t)):
        ln = lines[int(np.argmax(np.isnat(t)))]
        raise InputError(path, f"{col} (line {ln})", "empty time; must be seconds >= 0 or a date-time")
    s = (t - t.min()).astype(np.int64) / 1e9
    if s.max() > MAX_TRACE_S:
        raise InputError(path, col, f"spans {s.max():.3g} s; at most {MAX_TRACE_S:g} s allowed")
    return s


def _lines(f: IO[bytes], path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a trace file, one line at a time: a trace may be far longer than
    the rows a run needs, and a line may not be longer than MAX_LINE_BYTES."""
    for ln, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(path, f"line {ln}", f"longer than {MAX_LINE_BYTES:,} bytes")
        try:
            yield ln, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise InputError(path, f"line {ln}", "not UTF-8 text") from None


def read_trace(path: str, limit: int | None = None) -> Trace:
    """A CSV (header row) or JSONL (one object per line) trace; the first `limit` rows."""
    with open_regular(path, "trace file") as f:
        return _read_rows(_lines(f, path), path, Path(path).suffix.lower(), limit)


def read_lengths(path: str, which: str) -> np.ndarray:
    """The `which` column (prompt_len or output_len; also the Azure names) of a length file of
    (prompt, output) pairs, CSV or JSONL, each length >= 1."""
    with open_regular(path, "length file") as f:
        rows, lines, header = _parse(_lines(f, path), path, Path(path).suffix.lower(), None, "length file")
    names = PROMPT_COLS if which == "prompt_len" else OUTPUT_COLS
    if not rows:
        raise InputError(path, "", "empty length file: needs a header and rows of prompt_len,output_len")
    c = _pick(header, names)
    if c is None:
        raise InputError(path, which, f"missing column; allowed: {' or '.join(names)} (found: {', '.join(header[:8])})")
    x = _numbers(path, c, _column(path, rows, lines, c), lines, integer=True, hi=MAX_TOKENS).astype(np.int64)
    if np.any(x < 1):
        ln = lines[int(np.argmax(x < 1))]
        raise InputError(path, f"{c} (line {ln})", "got 0; a length must be >= 1")
    return x


def _column(path: str, rows: list[dict], lines: list[int], col: str) -> list:
    out = []
    for r, ln in zip(rows, lines, strict=True):
        if col not in r:
            raise InputError(path, f"{col} (line {ln})", "missing value")
        out.append(r[col])
    return out


def _parse(numbered: Iterator[tuple[int, str]], path: str, suffix: str, limit: int | None,
           what: str = "trace") -> tuple[list[dict], list[int], list[str]]:
    """The rows of a CSV (header row) or JSONL (one object per line) file, their line numbers and
    the column names; the first `limit` rows."""
    rows: list[dict] = []
    lines: list[int] = []
    first = next(((ln, t) for ln, t in numbered if t.strip()), None)  # leading blank lines skipped
    numbered = itertools.chain([first] if first else [], numbered)
    if suffix in (".jsonl", ".ndjson", ".json") or (first is not None and first[1].lstrip().startswith("{")):
        for ln, line in numbered:
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise InputError(path, f"line {ln}", f"not a JSON object; a JSONL {what} has one object per line") \
                    from None
            if not isinstance(obj, dict):
                raise InputError(path, f"line {ln}", f"not a JSON object; a JSONL {what} has one object per line")
            rows.append(obj)
            lines.append(ln)
        header = list(rows[0].keys()) if rows else []
    else:
        at = [1]  # the line csv.reader is on (it sees text only)

        def texts() -> Iterator[str]:
            for ln, text in numbered:
                at[0] = ln
                yield text

        reader = csv.reader(texts())
        try:
            header = [h.strip() for h in next(reader, [])]
            for rec in reader:
                ln = at[0]
                if not rec or all(not c.strip() for c in rec):
                    continue
                if limit is not None and len(rows) >= limit:
                    break
                if len(rec) < len(header):
                    raise InputError(path, f"line {ln}", f"has {len(rec)} columns, the header has {len(header)}")
                rows.append({h: rec[i].strip() for i, h in enumerate(header)})
                lines.append(ln)
        except csv.Error as e:
            raise InputError(path, f"line {at[0]}", f"not valid CSV: {e}") from None
    return rows, lines, header


def _read_rows(numbered: Iterator[tuple[int, str]], path: str, suffix: str, limit: int | None) -> Trace:
    rows, lines, header = _parse(numbered, path, suffix, limit)
    if not rows:
        raise InputError(path, "", "empty trace: no requests; needs a header and rows with "
                         "arrival_s,prompt_len,output_len (or TIMESTAMP,ContextTokens,GeneratedTokens)")
    a_col = _pick(header, ARRIVAL_COLS)
    if a_col is None:
        raise InputError(path, "arrival_s", f"missing column; allowed: {' or '.join(ARRIVAL_COLS)} "
                         f"(found: {', '.join(header[:8])})")

    def column(col: str) -> list:
        return _column(path, rows, lines, col)

    t = _times(path, a_col, column(a_col), lines)
    lens = []
    for cols in (PROMPT_COLS, OUTPUT_COLS, PRIORITY_COLS):
        c = _pick(header, cols)
        hi = MAX_TOKENS if cols is not PRIORITY_COLS else MAX_PRIORITY
        lens.append(None if c is None else
                    _numbers(path, c, column(c), lines, integer=True, hi=hi).astype(np.int64))
    return Trace(t - t.min(), lens[0], lens[1], lens[2])


# -- sampling ------------------------------------------------------------------------------------

def _rows(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n row indices of a file of `size` rows: shuffles of all rows, one after another (every
    row once before any twice, as a benchmark client samples its dataset)."""
    reps = -(-n // size)
    return np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]


def _lengths(spec, n: int, rng: np.random.Generator, trace: Trace | None, which: str, where: str,
             trace_path: str = "", rows: np.ndarray | None = None) -> np.ndarray:
    if isinstance(spec, Empirical):
        col = read_lengths(spec.path, which)
        return col[rows if rows is not None else _rows(n, col.size, rng)]
    if isinstance(spec, Fixed):
        return np.full(n, spec.value, dtype=np.int64)
    if isinstance(spec, Uniform):
        return rng.integers(spec.low, spec.high, size=n, endpoint=True, dtype=np.int64)
    if isinstance(spec, Lognormal):
        mu = math.log(spec.mean) - spec.sigma ** 2 / 2  # so that E[length] = mean
        x = np.rint(rng.lognormal(mu, spec.sigma, size=n))
        hi = spec.max if spec.max is not None else np.iinfo(np.int32).max
        return np.clip(x, 1, hi).astype(np.int64)
    if isinstance(spec, FromTrace):
        if trace is None:
            raise InputError(where, f"workload.{which}", "dist trace needs workload.arrival.process: trace")
        col = trace.prompt_len if which == "prompt_len" else trace.output_len
        if col is None:
            names = PROMPT_COLS if which == "prompt_len" else OUTPUT_COLS
            raise InputError(trace_path, " or ".join(names),
                             f"missing column; workload.{which} is dist trace")
        return np.maximum(col[:n], 1)  # a request has at least one token each way
    raise InputError(where, f"workload.{which}", f"unknown distribution {spec!r}")  # pragma: no cover


def make_requests(workload: Workload, seed: int, where: str = "workload") -> Requests:
    """Draw the workload's requests. `where` names the scenario file in error messages.

    A trace supplies arrival times (re-based to 0, times time_scale) and, with `dist: trace`,
    lengths; when it has fewer rows than num_requests, all of its rows are used.
    """
    rng = np.random.default_rng(seed)
    arr = workload.arrival
    n = workload.num_requests
    trace = None
    if arr.process == "trace":
        trace = read_trace(str(arr.path), limit=n)
        n = len(trace.arrival_s)
        t = trace.arrival_s * arr.time_scale
    elif arr.process == "burst":
        t = np.zeros(n)
    elif arr.process == "poisson":
        t = np.cumsum(rng.exponential(1.0 / arr.rate, size=n))
    else:  # gamma gaps with mean 1/rate and coefficient of variation cv: shape 1/cv^2
        k = 1.0 / arr.cv ** 2
        t = np.cumsum(rng.gamma(k, 1.0 / (arr.rate * k), size=n))
    if not np.all(np.isfinite(t)):  # the schema's bounds keep times finite; the engine relies on it
        raise InputError(where, "workload.arrival", "arrival times overflow; use a higher rate or a smaller time_scale")
    pl, ol = workload.prompt_len, workload.output_len
    rows = None  # one file of pairs for both: each request takes both lengths from one row
    if isinstance(pl, Empirical) and isinstance(ol, Empirical) and Path(pl.path).resolve() == Path(ol.path).resolve():
        rows = _rows(n, read_lengths(pl.path, "prompt_len").size, rng)
    prompt = _lengths(pl, n, rng, trace, "prompt_len", where, str(arr.path), rows)
    output = _lengths(ol, n, rng, trace, "output_len", where, str(arr.path), rows)
    klass = priority = None
    names: tuple[str, ...] = ("all",)
    if workload.classes:
        cls = workload.classes
        klass = rng.choice(len(cls), size=n, p=np.asarray([c.share for c in cls]) / sum(c.share for c in cls))
        for k, c in enumerate(cls):
            for spec, which in ((c.prompt_len, "prompt_len"), (c.output_len, "output_len")):
                if spec is not None:
                    own = _lengths(spec, n, rng, trace, which, where, str(arr.path))
                    if which == "prompt_len":
                        prompt = np.where(klass == k, own, prompt)
                    else:
                        output = np.where(klass == k, own, output)
        priority = np.asarray([c.priority for c in cls], dtype=np.int64)[klass]
        names = tuple(c.name for c in cls)
    elif trace is not None and trace.priority is not None:  # the trace's priority column: a class per level
        priority = trace.priority[:n]
        levels, klass = np.unique(priority, return_inverse=True)
        names = tuple(f"priority {p}" for p in levels.tolist())
    prefix_id = np.full(n, -1, dtype=np.int64)
    prefix_len = np.zeros(n, dtype=np.int64)
    pf = workload.prefix
    if pf is not None and pf.fraction > 0:
        has = rng.random(n) < pf.fraction
        groups = rng.integers(0, pf.groups, size=n, dtype=np.int64)
        prefix_id = np.where(has, groups, -1)
        prefix_len = np.where(has, pf.length, 0).astype(np.int64)
        prompt = np.where(has, np.maximum(prompt, pf.length + 1), prompt)  # the prefix plus >= 1 own token
    order = np.argsort(t, kind="stable")
    if np.any(order != np.arange(n)):
        t, prompt, output, prefix_id, prefix_len = (x[order] for x in (t, prompt, output, prefix_id, prefix_len))
        klass, priority = (None if x is None else x[order] for x in (klass, priority))
    # int32: lengths are at most MAX_TOKENS (10M), and 10M requests take 40 MB less than as int64
    return Requests(np.ascontiguousarray(t, dtype=np.float64), prompt.astype(np.int32), output.astype(np.int32),
                    prefix_id.astype(np.int32), prefix_len.astype(np.int32),
                    None if priority is None else priority.astype(np.int32),
                    None if klass is None else np.asarray(klass, dtype=np.int32), names)


__all__ = ["Requests", "Trace", "make_requests", "read_trace", "read_lengths"]
