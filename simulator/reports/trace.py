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
    order = np.argsort(start, kind="stable")[:n_mom]
    names = np.asarray(KIND_NAMES)[np.asarray(m["kind"], dtype=int)[order]].tolist()
    ts_us = np.round(start[order] * 1e6, 3).tolist()
    dur_us = np.round(np.asarray(m["dur_s"], dtype=float)[order] * 1e6, 3).tolist()
    pid = np.asarray(m["replica"], dtype=int)[order].tolist()
    tid = (np.asarray(m["engine"], dtype=int)[order].tolist() if "engine" in m else [0] * len(pid))
    tok = np.asarray(m["tokens"], dtype=int)[order].tolist()
    bat = np.asarray(m["batch"], dtype=int)[order].tolist()
    kvb = np.asarray(m["kv_blocks_used"], dtype=int)[order].tolist()
    moments = [
        {"name": n, "cat": "moment", "ph": "X", "ts": a, "dur": d, "pid": p, "tid": e,
         "args": {"tokens": k, "batch": b, "kv_blocks": v}}
        for n, a, d, p, e, k, b, v in zip(names, ts_us, dur_us, pid, tid, tok, bat, kvb, strict=True)
    ]
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
    return {"traceEvents": meta + counters + moments, "displayTimeUnit": "ms", "otherData": other}


def write_trace(r: SimResult, path: Path, max_events: int = MAX_EVENTS) -> dict[str, Any]:
    """Write the trace JSON; returns its otherData (what was kept)."""
    tr = trace_events(r, max_events)
    # json.dumps runs the C encoder; json.dump to a file streams through the pure-Python one
    Path(path).write_text(json.dumps(tr, separators=(",", ":")), encoding="utf-8")
    return tr["otherData"]
