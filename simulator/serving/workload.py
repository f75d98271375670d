"""Requests of a scenario's workload: arrival times, prompt and output lengths, shared prefixes.

Everything is drawn at once with numpy (vectorised, one `default_rng(seed)`), so a million
requests cost milliseconds and the engine's hot loop only reads arrays. Draws happen in a
fixed order (arrivals, prompt lengths, output lengths, prefixes) so that a seed gives the same
requests whatever the engine does with them.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwmodels.errors import InputError
from simulator.serving.scenario import Empirical, Fixed, FromTrace, Lognormal, Uniform, Workload

# Column names a trace may use: ours, then the Azure LLM inference trace's.
ARRIVAL_COLS = ("arrival_s", "TIMESTAMP")
PROMPT_COLS = ("prompt_len", "ContextTokens")
OUTPUT_COLS = ("output_len", "GeneratedTokens")


@dataclass(frozen=True)
class Requests:
    """The requests of a run, sorted by arrival. Index i is the request's id everywhere."""

    arrival_s: np.ndarray    # float64, seconds from the start of the run
    prompt_len: np.ndarray   # int64, full prompt including any shared prefix
    output_len: np.ndarray   # int64, tokens to generate (>= 1)
    prefix_id: np.ndarray    # int64, shared-prefix group or -1
    prefix_len: np.ndarray   # int64, tokens of the shared prefix (0 if none)

    def __len__(self) -> int:
        return int(self.arrival_s.size)


# -- traces --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray
    prompt_len: np.ndarray | None
    output_len: np.ndarray | None


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in header:
            return n
    low = {h.lower(): h for h in header}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return None


def _numbers(path: str, col: str, values: list, lines: list[int], integer: bool) -> np.ndarray:
    """Column values as numbers >= 0; the first bad one raises an InputError with its line."""
    allowed = "an integer >= 0" if integer else "a number >= 0"
    try:
        arr = np.asarray(values, dtype=np.float64)
        ok = arr.ndim == 1 and arr.size == len(values)  # a JSON list in a cell is not a number
        ok = ok and bool(np.all(np.isfinite(arr)) and np.all(arr >= 0))
    except (TypeError, ValueError):
        ok = False
    if ok and integer and not np.all(arr == np.floor(arr)):
        ok = False
    if ok:
        return arr
    for v, ln in zip(values, lines, strict=True):  # slow path only to name the bad row
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = float("nan")
        if isinstance(v, bool) or not math.isfinite(x) or x < 0 or (integer and x != math.floor(x)):
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
        return _numbers(path, col, values, lines, integer=False)
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
    return (t - t.min()).astype(np.int64) / 1e9


def _read_rows(path: str, limit: int | None, what: str) -> tuple[list[dict], list[int], list[str]]:
    """The rows of a CSV (header row) or JSONL (one object per line) file, their line numbers and
    the column names; the first `limit` rows."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "", f"{what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, "", f"cannot read {what}: {e.__class__.__name__}") from None
    rows: list[dict] = []
    lines: list[int] = []
    jsonl = p.suffix.lower() in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith("{")
    if jsonl:
        for ln, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(path, f"line {ln}", f"not a JSON object; a JSONL {what} has one object per line") \
                    from None
            if not isinstance(obj, dict):
                raise InputError(path, f"line {ln}", f"not a JSON object; a JSONL {what} has one object per line")
            rows.append(obj)
            lines.append(ln)
        header = list(rows[0].keys()) if rows else []
    else:
        reader = csv.reader(text.splitlines())
        header = [h.strip() for h in next(reader, [])]
        for ln, rec in enumerate(reader, start=2):
            if not rec or all(not c.strip() for c in rec):
                continue
            if limit is not None and len(rows) >= limit:
                break
            if len(rec) < len(header):
                raise InputError(path, f"line {ln}", f"has {len(rec)} columns, the header has {len(header)}")
            rows.append({h: rec[i].strip() for i, h in enumerate(header)})
            lines.append(ln)
    return rows, lines, header


def _column(path: str, rows: list[dict], lines: list[int], col: str) -> list:
    out = []
    for r, ln in zip(rows, lines, strict=True):
        if col not in r:
            raise InputError(path, f"{col} (line {ln})", "missing value")
        out.append(r[col])
    return out


def read_trace(path: str, limit: int | None = None) -> Trace:
    """A CSV (header row) or JSONL (one object per line) trace; the first `limit` rows."""
    rows, lines, header = _read_rows(path, limit, "trace")
    if not rows:
        raise InputError(path, "", "empty trace: no requests; needs a header and rows with "
                         "arrival_s,prompt_len,output_len (or TIMESTAMP,ContextTokens,GeneratedTokens)")
    a_col = _pick(header, ARRIVAL_COLS)
    if a_col is None:
        raise InputError(path, "arrival_s", f"missing column; allowed: {' or '.join(ARRIVAL_COLS)} "
                         f"(found: {', '.join(header[:8])})")

    t = _times(path, a_col, _column(path, rows, lines, a_col), lines)
    lens = []
    for cols in (PROMPT_COLS, OUTPUT_COLS):
        c = _pick(header, cols)
        lens.append(None if c is None else
                    _numbers(path, c, _column(path, rows, lines, c), lines, integer=True).astype(np.int64))
    return Trace(t - t.min(), lens[0], lens[1])


def read_lengths(path: str, which: str) -> np.ndarray:
    """The `which` column (prompt_len or output_len; also the Azure names) of a length file, each >= 1."""
    rows, lines, header = _read_rows(path, None, "length")
    names = PROMPT_COLS if which == "prompt_len" else OUTPUT_COLS
    if not rows:
        raise InputError(path, "", "empty length file: needs a header and rows of prompt_len,output_len")
    c = _pick(header, names)
    if c is None:
        raise InputError(path, which, f"missing column; allowed: {' or '.join(names)} (found: {', '.join(header[:8])})")
    x = _numbers(path, c, _column(path, rows, lines, c), lines, integer=True).astype(np.int64)
    if np.any(x < 1):
        ln = lines[int(np.argmax(x < 1))]
        raise InputError(path, f"{c} (line {ln})", "got 0; a length must be >= 1")
    return x


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
    pl, ol = workload.prompt_len, workload.output_len
    rows = None  # one file of pairs for both: each request takes both lengths from one row
    if isinstance(pl, Empirical) and isinstance(ol, Empirical) and Path(pl.path).resolve() == Path(ol.path).resolve():
        rows = _rows(n, read_lengths(pl.path, "prompt_len").size, rng)
    prompt = _lengths(pl, n, rng, trace, "prompt_len", where, str(arr.path), rows)
    output = _lengths(ol, n, rng, trace, "output_len", where, str(arr.path), rows)
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
    return Requests(np.ascontiguousarray(t, dtype=np.float64), prompt.astype(np.int64), output.astype(np.int64),
                    prefix_id.astype(np.int64), prefix_len.astype(np.int64))


__all__ = ["Requests", "Trace", "make_requests", "read_trace", "read_lengths"]
