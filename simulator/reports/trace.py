"""A Chrome / Perfetto trace of a run (JSON trace-event format): open it in ui.perfetto.dev or
chrome://tracing to see every moment of every replica on a timeline.

One process per replica (pid = replica), thread 0 = its GPU, one complete ("X") event per
moment named prefill / decode / mixed with its tokens, batch and KV blocks; counters ("C") for
the queue length, running requests and KV usage on a separate "cluster" process. Timestamps
and durations are in microseconds, as the format wants. A trace viewer chokes on millions of
events, so the file keeps the first `max_events` and says so in `otherData`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.reports.metrics import KIND_NAMES

if TYPE_CHECKING:
    from simulator.serving.result import SimResult

MAX_EVENTS = 200_000


def trace_events(r: SimResult, max_events: int = MAX_EVENTS) -> dict[str, Any]:
    """The trace as a dict (events sorted by time within each kind of event)."""
    head, m, order, ts_us, other = _trace(r, max_events)
    return {"traceEvents": head + _moment_events(m, order, ts_us), "displayTimeUnit": "ms", "otherData": other}


def _trace(r: SimResult, max_events: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], np.ndarray,
                                                    list[float], dict[str, Any]]:
    """The metadata and counter events, the moments to write (rows `order` of r.moments, their
    start in us) and otherData: the moment events themselves are made by _moment_events."""
    m, ts = r.moments, r.timeseries
    replicas = int(r.replicas)
    cluster_pid = replicas  # the counters' process, after the replicas
    meta: list[dict[str, Any]] = []
    engines = max([int(getattr(r, "pp", 1) or 1)] + [x["pp"] for x in getattr(r, "pools", None) or []])
    role = {x["replica_offset"] + k: x["role"] + " " for x in getattr(r, "pools", None) or [] for k in range(x["replicas"])}
    for p in range(replicas):
        meta.append({"ph": "M", "name": "process_name", "pid": p, "tid": 0,
                     "args": {"name": f"{role.get(p, '')}replica {p}"}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": p, "tid": 0, "args": {"sort_index": p}})
        for e in range(engines):
            name = "GPU" if engines == 1 else f"GPUs, pipeline engine {e}"
            meta.append({"ph": "M", "name": "thread_name", "pid": p, "tid": e, "args": {"name": name}})
    meta.append({"ph": "M", "name": "process_name", "pid": cluster_pid, "tid": 0, "args": {"name": "cluster"}})
    meta.append({"ph": "M", "name": "process_sort_index", "pid": cluster_pid, "tid": 0,
                 "args": {"sort_index": -1}})

    budget = max(0, max_events - len(meta))
    # the two counter series get at most a fifth of the budget, moments the rest
    t = np.asarray(ts.get("t_s", ()), dtype=float)
    n_ts = min(t.size, budget // 10)
    counters: list[dict[str, Any]] = []
    if n_ts:
        tus = np.round(t[:n_ts] * 1e6, 3).tolist()
        series = {
            "queue": {"queued": ts.get("queue_len"), "running": ts.get("running")},
            "kv_used_%": {"kv_used_%": None if ts.get("kv_used_frac") is None
                          else np.asarray(ts["kv_used_frac"], dtype=float) * 100},
        }
        for name, cols in series.items():
            cols = {k: np.asarray(v, dtype=float)[:n_ts].tolist() for k, v in cols.items() if v is not None}
            if not cols:
                continue
            keys = list(cols)
            for i, when in enumerate(tus):
                counters.append({"ph": "C", "name": name, "pid": cluster_pid, "tid": 0, "ts": when,
                                 "args": {k: cols[k][i] for k in keys}})

    start = np.asarray(m["start_s"], dtype=float)
    total_moments = int(start.size)
    n_mom = min(total_moments, budget - len(counters))
    if total_moments and bool(np.all(start[1:] >= start[:-1])):  # the engine logs moments in start order
        order = np.arange(n_mom)
    else:
        order = np.argsort(start, kind="stable")[:n_mom]
    ts_us = np.round(start[order] * 1e6, 3).tolist()
    truncated = n_mom < total_moments or n_ts < t.size
    other = {"moments_total": total_moments, "moments_written": n_mom, "counter_samples": int(n_ts),
             "truncated": truncated, "max_events": max_events}
    if truncated:
        end = ts_us[-1] / 1e6 if ts_us else 0.0
        other["note"] = (f"trace capped at {max_events} events: the first {n_mom} of {total_moments} moments "
                         f"(up to t = {end:.3f} s); metrics and moments.csv cover the whole run")
    sc = getattr(r, "scenario", None)
    if sc is not None and hasattr(sc, "model"):
        other.update({"scenario": sc.name, "model": sc.model, "hardware": sc.hardware})
    return meta + counters, m, order, ts_us, other


def _moment_events(m: dict[str, np.ndarray], order: np.ndarray, ts_us: list[float]) -> list[dict[str, Any]]:
    """Complete ("X") events of the moments at `order` (only those rows are read or converted)."""
    names = np.asarray(KIND_NAMES)[np.asarray(m["kind"])[order]].tolist()
    dur_us = np.round(np.asarray(m["dur_s"], dtype=float)[order] * 1e6, 3).tolist()
    pid = np.asarray(m["replica"])[order].tolist()
    tid = np.asarray(m["engine"])[order].tolist() if "engine" in m else [0] * len(pid)
    tok = np.asarray(m["tokens"])[order].tolist()
    bat = np.asarray(m["batch"])[order].tolist()
    kvb = np.asarray(m["kv_blocks_used"])[order].tolist()
    return [
        {"name": n, "cat": "moment", "ph": "X", "ts": a, "dur": d, "pid": p, "tid": e,
         "args": {"tokens": k, "batch": b, "kv_blocks": v}}
        for n, a, d, p, e, k, b, v in zip(names, ts_us, dur_us, pid, tid, tok, bat, kvb, strict=True)
    ]


def write_trace(r: SimResult, path: Path, max_events: int = MAX_EVENTS, chunk: int = 20_000) -> dict[str, Any]:
    """Write the trace JSON; returns its otherData (what was kept). The moment events are made and
    encoded a chunk at a time (all 200,000 as dicts would hold ~100 MB at once); json.dumps runs
    the C encoder, json.dump to a file the pure-Python one."""
    head, m, order, ts_us, other = _trace(r, max_events)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"traceEvents":[' + json.dumps(head, separators=(",", ":"))[1:-1])
        for i in range(0, len(order), chunk):
            part = json.dumps(_moment_events(m, order[i:i + chunk], ts_us[i:i + chunk]), separators=(",", ":"))
            f.write(("," if head or i else "") + part[1:-1])
        f.write('],"displayTimeUnit":"ms","otherData":' + json.dumps(other, separators=(",", ":")) + "}")
    return other
