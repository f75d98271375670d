"""Summary metrics of one simulated run: the contract's JSON of `momentsim run`, and more.

Everything is computed with numpy over whole arrays (a run may have millions of moments), and
the result is JSON-safe: numpy scalars become Python numbers and NaN/inf become None (null),
because a summary of an empty set (no completed request, no decode moment) is "unknown",
not a number.

Keys beyond the contract: ttft_split_ms (queue, prefill, the stack's front-end overheads),
prefix_cache (hit rate of admitted prompt tokens), moments_by_kind (prefill = moments with any prompt tokens, i.e.
prefill-only and mixed; decode = decode-only; each also in device clock cycles), breakdown_share_by_kind,
mfu / mbu (over all devices of all replicas for the makespan; mfu counts useful work only, not
the prefill of tokens whose KV a preemption dropped), gpu_busy_frac / host_busy_frac
(per replica; with pp > 1 the virtual engines' moments overlap and each keeps each of the pp
stages busy for dur / pp, so gpu_busy_frac is sum(dur) / pp per replica, at most 1), kv (peak
from the moments, mean from the time series), preemptions (with the tokens computed again after
recompute preemptions: recomputed_tokens), goodput (requests/s meeting every
per-request SLO bound; whether the p99 SLOs hold), queue (from the time series, whose points
are interval averages), output_tokens, classes (per_class: each request class's latency and
goodput, with request classes or priorities), disaggregated (each pool and the KV transfers of
a disaggregated run), kv_offload (cache_summary: CPU-tier hits, copies and transfer seconds), energy (energy_summary: J per output token, the run's
energy, a replica's average and peak power; simulator/moment/power.py) and config.

Overload (`overloaded`, `overload`, see `overload`): a finite run always ends, so a server that
cannot keep up still reports percentiles; they then measure how long the run was, not the
server. The flag says so, `warnings` says it in words (and what rejected requests), and
`latency_of` says the latency percentiles cover completed requests only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.serving.engine import R_CONTEXT, R_KV, R_LEN, R_QUEUE, R_TOKENS

if TYPE_CHECKING:  # the engine is only needed for the type; summaries work on any such result
    from simulator.serving.result import SimResult

KIND_NAMES = ("prefill", "decode", "mixed")  # SimResult.moments["kind"]: 0, 1, 2
OVERLOAD_GROWTH = 0.05  # the queue grows by more than this share of the arrivals in the window...
OVERLOAD_SIGMAS = 2.0   # ...and by more than this many sqrt(arrivals): what chance alone gives at rho = 1
STATUS_COMPLETED, STATUS_REJECTED = 0, 1
SIG = 9  # significant digits kept in the JSON: more than any model input is known to


def clean(x: Any) -> Any:
    """JSON-safe copy: numpy -> Python, NaN/inf -> None, floats to SIG significant digits."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [clean(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if not math.isfinite(v):
            return None
        return float(f"{v:.{SIG}g}")
    return x


def num(x: float) -> str:
    """A number for a person: 1,234 / 123 / 12.3 / 1.23 / 0.123, never 1.23e+03."""
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def latency_stats(values_ms: np.ndarray) -> dict[str, float | None]:
    """mean, p50, p90, p99 of finite values (the contract's latency block); None when empty."""
    v = np.asarray(values_ms, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def moment_stats(dur_s: np.ndarray, clock_ghz: float | None = None) -> dict[str, float | int | None]:
    """Moment lengths in ms (the contract's moment_ms block), and in device clock cycles when
    a clock is given: a moment is to the model what a clock cycle is to a CPU."""
    ms = np.asarray(dur_s, dtype=float) * 1e3
    out: dict[str, float | int | None]
    if ms.size == 0:
        out = {"mean": None, "std": None, "p50": None, "p99": None, "count": 0}
    else:
        p50, p99 = np.percentile(ms, [50, 99])
        out = {"mean": float(ms.mean()), "std": float(ms.std()), "p50": float(p50), "p99": float(p99),
               "count": int(ms.size)}
    if clock_ghz is not None:
        cyc = 1e-3 * clock_ghz * 1e9  # cycles per ms
        out["mean_cycles"] = None if out["mean"] is None else out["mean"] * cyc
        out["p50_cycles"] = None if out["p50"] is None else out["p50"] * cyc
    return out


def shares(seconds: dict[str, float]) -> dict[str, float]:
    """Each category's fraction of the total (the categories cover the busy time)."""
    tot = float(sum(max(0.0, float(v)) for v in seconds.values()))
    if tot <= 0:
        return {k: 0.0 for k in seconds}
    return {k: max(0.0, float(v)) / tot for k, v in seconds.items()}


def per_request(r: SimResult) -> dict[str, np.ndarray]:
    """TTFT, TPOT and E2E of every request in ms (NaN where undefined), shared by the summary,
    requests.csv and the plots so that all three agree."""
    q = r.requests
    arrival = np.asarray(q["arrival_s"], dtype=float)
    first = np.asarray(q["first_token_s"], dtype=float)
    finish = np.asarray(q["finish_s"], dtype=float)
    out_len = np.asarray(q["output_len"], dtype=float)
    done = (np.asarray(q["status"]) == STATUS_COMPLETED) & np.isfinite(finish)
    ttft = (first - arrival) * 1e3
    e2e = np.where(done, (finish - arrival) * 1e3, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(done & (out_len > 1), (finish - first) * 1e3 / (out_len - 1), np.nan)
    return {"ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": e2e, "completed": done}


def _within(lat: dict[str, np.ndarray], bounds: dict[str, float | None]) -> np.ndarray:
    """Requests that completed within every bound that is set (ms)."""
    ok = lat["completed"].copy()
    for key, bound in bounds.items():
        if bound is not None:
            ok &= ~(lat[key] > bound)  # NaN (no TPOT) passes; a missing TTFT/E2E is already not completed
    return ok


def per_class(r: SimResult, lat: dict[str, np.ndarray], makespan: float) -> dict[str, Any] | None:
    """Latency and goodput of each request class (workload.classes, or a trace's priority levels):
    count, completed, priority, TTFT/TPOT/E2E percentiles, and the share within the class's own
    SLO (its bounds, else the scenario's). None for a workload of one class."""
    q = r.requests
    if "class" not in q:
        return None
    sc = getattr(r, "scenario", None)
    defined = (sc.workload.classes or []) if sc is not None else []
    names = getattr(r, "class_names", None) or [c.name for c in defined]
    slo = getattr(sc, "slo", None)
    klass, priority = np.asarray(q["class"]), np.asarray(q["priority"])
    out = {}
    for k, name in enumerate(names):
        sel = klass == k
        own = defined[k].slo if k < len(defined) else None
        bounds = {b: (getattr(own, b, None) if own is not None else None) or getattr(slo, b, None)
                  for b in ("ttft_ms", "tpot_ms", "e2e_ms")}
        ok = _within(lat, bounds) & sel
        n = int(sel.sum())
        sub = {key: v[sel] for key, v in lat.items()}
        out[name] = {
            "requests": n, "completed": int(sub["completed"].sum()),
            "priority": int(priority[sel][0]) if n else None,
            "ttft_ms": latency_stats(sub["ttft_ms"]), "tpot_ms": latency_stats(sub["tpot_ms"]),
            "e2e_ms": latency_stats(sub["e2e_ms"]),
            "goodput": {"fraction": int(ok.sum()) / n if n else None,
                        "requests_per_s": int(ok.sum()) / makespan if makespan > 0 else None,
                        "slo": {b: v for b, v in bounds.items() if v is not None}},
        }
    return out


CHUNK = 1 << 18  # memory: long passes over per-moment arrays go a chunk at a time
ENDED_TOL = 1e-7  # s: a one-token reply's time (the client's, less the way out) is its moment's end to round-off


def weighted_stats(values: np.ndarray, weights: np.ndarray, scale: float = 1.0) -> dict[str, float | None]:
    """mean, p50, p90, p99 of values each counted `weights` times, times `scale`: the percentiles
    of the pooled samples (the smallest value whose cumulative weight reaches q of the total).
    One argsort and one cumulative sum: a run may pool millions of values."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights)
    if not (np.isfinite(v).all() and (w > 0).all()):
        ok = np.isfinite(v) & (w > 0)
        v, w = v[ok], w[ok]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    # memory: the weighted sum a chunk at a time (no float copy of every weight)
    weighted = sum(float(np.dot(v[i:i + CHUNK], w[i:i + CHUNK])) for i in range(0, v.size, CHUNK))
    total = int(w.sum(dtype=np.int64))
    o = np.argsort(v)  # in place, no buffer: ties are equal values, so their order does not matter
    want = [0.5 * total, 0.9 * total, 0.99 * total]
    ranks: list[int] = []
    run = 0
    for i in range(0, v.size, CHUNK):  # the cumulative weight a chunk at a time: no copy of every weight
        cw = np.cumsum(w[o[i:i + CHUNK]], dtype=np.int64)
        cw += run
        while len(ranks) < 3 and cw[-1] >= want[len(ranks)]:
            ranks.append(i + int(np.searchsorted(cw, want[len(ranks)], side="left")))
        run = int(cw[-1])
    p50, p90, p99 = (float(v[o[min(k, v.size - 1)]]) * scale for k in ranks)
    return {"mean": weighted / total * scale, "p50": p50, "p90": p90, "p99": p99}


def _by_engine(cols: tuple[np.ndarray, ...] | None) -> tuple[np.ndarray, ...] | None:
    """Per-request columns (engine id first) sorted by engine, so each engine's are a slice."""
    if cols is None:
        return None
    u = np.asarray(cols[0], dtype=np.int64)
    o = np.argsort(u, kind="stable")
    return (u[o], *(np.asarray(c, dtype=float)[o] for c in cols[1:]))


def _of_engine(cols: tuple[np.ndarray, ...], u: int | None) -> tuple[np.ndarray, ...]:
    """The slice of _by_engine's columns of engine u (None: the run's only engine, all of them)."""
    if u is None:
        return cols[1:]
    lo, hi = np.searchsorted(cols[0], u), np.searchsorted(cols[0], u, side="right")
    return tuple(c[lo:hi] for c in cols[1:])


def itl_samples(m: dict[str, np.ndarray], pp: int = 1,
                ended: tuple[np.ndarray, np.ndarray] | None = None,
                joined: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The gaps between a request's consecutive streamed tokens, pooled over all requests, as
    (gap seconds, how many tokens had it), from the moment log alone (O(moments), no per-token
    record): `vllm bench serve`'s ITL.

    On one engine all decoding sequences get a token at the end of each moment with decodes
    (a multi-step block streams them at its last step only: `held` moments give none). A
    sequence that decoded in the previous such moment J waited end_k - end_J, stalls of
    prefill-only moments between them included; one whose prefill ended in a moment p since
    (`firsts`, its first token) waited end_k - end_p. So moment k gives decodes_k - (firsts in
    J..k-1) gaps of end_k - end_J, and each moment p with firsts gives firsts_p gaps of
    end_N - end_p, N the next streaming moment. A first token with no token after it (a
    one-token reply) is no newcomer: `ended` gives their engines (replica * pp + engine) and
    engine times, each taken off the firsts of the moment of its engine that ended then (the
    moment log cannot tell them apart; summarize passes the completed one-token requests). Not
    counted: a request's gap across a recompute preemption (from its last token before it to
    its re-prefill). A request that joins an engine's decodes with its tokens so far made
    elsewhere (a disaggregated run's decode pool: its KV came from the prefill pool) has no
    firsts entry: `joined` gives, for each, its engine, when the engine admitted it (the start of
    the moment being planned) and its previous token's time t1 (engine times). Its first token
    there comes at the end of the first streaming moment k starting then or later; it is taken
    off k's continuing gaps and counted with its own gap end_k - t1 (transfer and wait included). Arrays are made only at the streaming moments and freed as they go: a run
    may have millions of moments."""
    start = np.asarray(m["start_s"], dtype=float)
    if start.size == 0 or "decodes" not in m:
        return np.zeros(0), np.zeros(0, dtype=np.int32)
    dur = np.asarray(m["dur_s"], dtype=float)
    dec, first, held = m["decodes"], m["firsts"], m["held"]
    replica, engine = np.asarray(m["replica"]), np.asarray(m["engine"])
    one = not (replica.any() or engine.any())
    ended_by, joined_by = _by_engine(ended), _by_engine(joined)  # by engine: each engine's a slice
    gaps, weights = [], []
    for u in ([None] if one else np.unique(replica.astype(np.int64) * pp + engine)):
        sel = None if u is None else np.flatnonzero(replica.astype(np.int64) * pp + engine == u)
        d = dec if sel is None else dec[sel]
        stream = np.flatnonzero((d > 0) & ~(held if sel is None else held[sel]))  # this engine's streaming moments
        if stream.size == 0:
            continue
        at = stream if sel is None else sel[stream]
        es = start[at]
        es += dur[at]
        f = first if sel is None else first[sel]
        p = np.flatnonzero(f)  # moments where prefills ended: few, except in prefill-heavy runs
        w = d[stream[1:]].astype(np.int32)  # the sequences of each streaming moment after the first...
        if p.size:
            fp = f[p].astype(np.int32)
            if ended_by is not None:  # one-token replies: no newcomers (their moment: the first ending at their time)
                (t,) = _of_engine(ended_by, u)
                pe = p if sel is None else sel[p]
                k = np.searchsorted(start[pe] + dur[pe], t - ENDED_TOL)
                np.subtract.at(fp, k[k < p.size], 1)
            nxt = np.searchsorted(stream, p, side="right")  # the streaming moment after each: newcomers' gap
            ok = nxt < stream.size
            pa = p[ok] if sel is None else sel[p[ok]]
            gaps.append(es[nxt[ok]] - (start[pa] + dur[pa]))
            weights.append(fp[ok])
            j = nxt[ok] - 1  # ...less the newcomers among them (w[j] belongs to stream[j + 1])
            has = j >= 0
            np.subtract.at(w, j[has], fp[ok][has])
        if joined_by is not None:  # requests whose earlier tokens came from elsewhere: their own gap
            ta, t1 = _of_engine(joined_by, u)
            k = np.searchsorted(start[at], ta - ENDED_TOL)  # the first streaming moment from their admission
            if k.size:
                gaps.append(es[k] - t1)
                weights.append(np.ones(k.size, dtype=np.int32))
                np.subtract.at(w, k[k > 0] - 1, 1)  # w[j] belongs to stream[j + 1]
        if p.size or joined_by is not None:
            np.maximum(w, 0, out=w)
        del stream
        gaps.append(np.diff(es))
        del es
        weights.append(w)
    if not gaps:
        return np.zeros(0), np.zeros(0, dtype=np.int32)
    if len(gaps) == 1:
        return gaps[0], weights[0]
    return np.concatenate(gaps), np.concatenate(weights)


def itl(r: SimResult, completed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gaps between streamed tokens of a run (itl_samples), its completed one-token replies
    (per_request's `completed`) taken off the newcomers, and in a disaggregated run each request
    a decode engine admitted (`decode_admitted_s`) counted from its first token on the prefill
    pool. Engines are numbered replica * pp + engine with the largest pp of its pools (a
    disaggregated run's pools may differ); times are the engines' (the client's, less the front
    end's way out)."""
    q, m = r.requests, r.moments
    pp = max([int(getattr(r, "pp", 1))] + [int(p["pp"]) for p in getattr(r, "pools", None) or []])
    one = completed & (np.asarray(q["output_len"]) == 1)
    n = one.size
    replica = np.asarray(q.get("replica", np.zeros(n, dtype=np.int64)))[one].astype(np.int64)
    engine = np.asarray(q.get("engine", np.zeros(n, dtype=np.int64)))[one]
    out_s = float((getattr(r, "stats", None) or {}).get("request_out_s", 0.0))
    first = np.asarray(q["first_token_s"], dtype=float)
    joined = None
    if "decode_admitted_s" in q:
        ta = np.asarray(q["decode_admitted_s"], dtype=float)
        got = np.isfinite(ta)
        unit = np.asarray(q["decode_replica"])[got].astype(np.int64) * pp + np.asarray(q["decode_engine"])[got]
        joined = (unit, ta[got], first[got] - out_s)
    return itl_samples(m, pp, (replica * pp + engine, first[one] - out_s), joined)


def ttft_split(r: SimResult) -> dict[str, dict[str, float | None]]:
    """TTFT in three parts, each over completed requests (ms): queue (reaching the engine to the
    start of the moment that began its prefill), prefill (from there to its first token on the
    engine: its chunks, the steps between them, any restart) and overheads (the stack's front end,
    in and out)."""
    q = r.requests
    stats = getattr(r, "stats", {}) or {}
    t_out = float(stats.get("request_out_s", 0.0))
    done = np.asarray(q["status"]) == STATUS_COMPLETED
    arrival = np.asarray(q["arrival_s"], dtype=float)
    first = np.asarray(q["first_token_s"], dtype=float)
    started = np.asarray(q.get("started_s", np.full(arrival.size, np.nan)), dtype=float)
    reached = np.asarray(q.get("reached_s", arrival), dtype=float)
    queue = np.where(done, (started - reached) * 1e3, np.nan)
    prefill = np.where(done, (first - t_out - started) * 1e3, np.nan)
    over = np.where(done, (reached - arrival + t_out) * 1e3, np.nan)
    return {"queue": latency_stats(queue), "prefill": latency_stats(prefill), "overheads": latency_stats(over)}


def _goodput(r: SimResult, lat: dict[str, np.ndarray], makespan: float) -> dict[str, Any]:
    """Requests per second that meet every per-request SLO bound, and whether the p99 SLOs hold.

    A request counts when it completed and its TTFT, TPOT and E2E are within the bounds that are
    set; a request of one output token has no TPOT and so cannot miss a TPOT bound."""
    slo = getattr(getattr(r, "scenario", None), "slo", None)
    bounds = {k: getattr(slo, k, None) for k in ("ttft_ms", "tpot_ms", "e2e_ms")} if slo else {}
    ok = _within(lat, bounds)
    n = ok.size
    good = int(ok.sum())
    p99 = {}
    for key in ("ttft_ms", "tpot_ms"):
        bound = getattr(slo, f"p99_{key}", None) if slo else None
        if bound is None:
            p99[f"p99_{key[:-3]}_ok"] = None
        else:
            v = lat[key][np.isfinite(lat[key])]
            p99[f"p99_{key[:-3]}_ok"] = bool(v.size > 0 and np.percentile(v, 99) <= bound)
    return {
        "requests_per_s": good / makespan if makespan > 0 else None,
        "fraction": good / n if n else None,
        "requests": good,
        "slo": {k: v for k, v in bounds.items() if v is not None},
        **p99,
    }


def _queue(ts: dict[str, np.ndarray]) -> dict[str, float | None]:
    def stat(key: str) -> tuple[float | None, float | None]:
        v = np.asarray(ts.get(key, ()), dtype=float)
        return (float(v.mean()), float(v.max())) if v.size else (None, None)

    qm, qx = stat("queue_len")
    rm, rx = stat("running")
    om, ox = stat("outstanding")
    return {"mean_len": qm, "max_len": qx, "mean_running": rm, "max_running": rx,
            "mean_outstanding": om, "max_outstanding": ox}


def overload(r: SimResult) -> dict[str, Any]:
    """Whether arrivals outran the server: the trend of the waiting queue over the second half of
    the arrival window [mid, last arrival], mid halfway from the first arrival.

    growth = the least-squares slope of the waiting queue (the time series' queue_len: arrived,
    not finished, not running) over that window times its length, plus the requests turned away
    there because the queue was full (they count as queue that was not allowed to grow). With
    arrival rate l and service rate m > 0 the queue grows by (1 - m / l) of the A arrivals in
    the window when l > m (1 - 1/rho: 23 % at rho 1.3) and by nothing when l < m. The run is
    flagged when growth > max(OVERLOAD_GROWTH x A, OVERLOAD_SIGMAS x sqrt(A)): the first term
    ignores a slow drift (rho below about 1.05), the second what a queue exactly at capacity
    wanders by chance (a random walk of A Poisson steps, std about sqrt(A)). So a run of about
    1,000 Poisson requests at rho 1.3 is flagged and one at rho 0.5 is not; near rho = 1, or with
    fewer than about 200 arrivals at rho 1.3, the run is too short to tell and is not flagged.
    Requests rejected before routing (too long for any replica) say nothing about load and are
    left out; a burst (every arrival at one instant) has no rate to outrun: never flagged."""
    q, ts = r.requests, r.timeseries
    arrival = np.asarray(q["arrival_s"], dtype=float)
    status = np.asarray(q["status"])
    replica = np.asarray(q.get("replica", np.zeros(arrival.size)))
    offered = ~((status == STATUS_REJECTED) & (replica < 0))
    out: dict[str, Any] = {"overloaded": False, "queue_growth": 0.0, "threshold": None, "arrivals": 0,
                           "window_s": None, "arrival_rate": None, "completion_rate": None}
    if arrival.size < 2 or not arrival[-1] > arrival[0]:
        return out
    first, last = float(arrival.min()), float(arrival.max())
    mid = (first + last) / 2
    span = last - mid
    in_window = (arrival > mid) & (arrival <= last)
    n_arr = int((in_window & offered).sum())
    t = np.asarray(ts.get("t_s", ()), dtype=float)
    queue = np.asarray(ts.get("queue_len", ()), dtype=float)
    slope = 0.0
    if t.size >= 2 and queue.size == t.size:
        width = float(t[1] - t[0])
        sel = (t >= mid) & (t + width <= last + 1e-12 * last)
        if sel.sum() >= 3:
            centre = t[sel] + width / 2
            x = centre - centre.mean()
            slope = float((x * (queue[sel] - queue[sel].mean())).sum() / (x * x).sum())
    dropped = int((in_window & offered & (status == STATUS_REJECTED)).sum())  # queue full
    growth = slope * span + dropped
    threshold = max(OVERLOAD_GROWTH * n_arr, OVERLOAD_SIGMAS * math.sqrt(n_arr))
    finish = np.asarray(q["finish_s"], dtype=float)
    done = (status == STATUS_COMPLETED) & (finish > mid) & (finish <= last)
    out.update(overloaded=bool(n_arr > 0 and growth > threshold), queue_growth=growth, threshold=threshold,
               arrivals=n_arr, window_s=[mid, last], arrival_rate=n_arr / span,
               completion_rate=float(done.sum()) / span)
    return out


REJECT_ADVICE = {  # the engine's reasons, and what a user can change
    R_TOKENS: "the continuous and mixed schedulers cannot split a prompt: raise serving.max_batched_tokens "
              "or use scheduler: chunked",
    R_KV: "prompt + output exceed one replica's KV cache: more tp, a smaller kv_dtype or shorter requests",
    R_QUEUE: "serving.max_queue requests were already waiting",
    R_CONTEXT: "the model serves no longer sequences (its config's max_position_embeddings): shorter requests "
               "or a model with a longer context",
    R_LEN: "prompt + output exceed serving.max_model_len: raise it (up to the model's context) or shorter requests",
}


def warnings(s: dict[str, Any]) -> list[str]:
    """What makes a summary not a normal result, in words, most serious first: nothing completed,
    overload, rejected requests (by reason, with what to change)."""
    req, ov = s["requests"], s["overload"]
    why = {k: f"{v:,} {k}" + (f" ({REJECT_ADVICE[k]})" if k in REJECT_ADVICE else "")
           for k, v in req["reject_reasons"].items()}
    if req["completed"] == 0:
        return [f"no request completed: all {req['arrived']:,} were rejected: " + "; ".join(why.values())]
    out = []
    if s["overloaded"]:
        out.append(f"overloaded: arrivals ({num(ov['arrival_rate'])} req/s) outran completions "
                   f"({num(ov['completion_rate'])} req/s) in the second half of the arrivals and the queue grew by "
                   f"{ov['queue_growth']:,.0f} of {ov['arrivals']:,} arrivals; latency grows with the run's "
                   "length, the percentiles are not a steady state")
    out += [f"{req['reject_reasons'][k]:,} of {req['arrived']:,} requests rejected: {k}"
            + (f" ({REJECT_ADVICE[k]})" if k in REJECT_ADVICE else "") for k in why]
    return out


def summarize(r: SimResult) -> dict[str, Any]:
    """The contract's keys (DESIGN.md, `momentsim run --json`) first, then the extras."""
    q, m = r.requests, r.moments
    status = np.asarray(q["status"])
    lat = per_request(r)
    done = lat["completed"]
    arrived = int(status.size)
    completed = int(done.sum())
    rejected = int((status == STATUS_REJECTED).sum())
    makespan = float(r.makespan_s)
    per_s = (lambda x: x / makespan) if makespan > 0 else (lambda x: math.nan)
    out_tokens = float(np.asarray(q["output_len"], dtype=float)[done].sum())

    dur = np.asarray(m["dur_s"], dtype=float)
    kind = np.asarray(m["kind"])
    is_decode = kind == 1
    cats = {k: dict(v) for k, v in r.category_s.items()}
    all_cats: dict[str, float] = {}
    for part in cats.values():
        for c, s in part.items():
            all_cats[c] = all_cats.get(c, 0.0) + float(s)

    pools = getattr(r, "pools", None) or []
    devices = int(r.replicas) * int(r.devices_per_replica)
    busy = float(dur.sum()) / int(getattr(r, "pp", 1))  # pp > 1: each moment keeps each stage busy dur / pp
    capacity = makespan * int(r.replicas)
    kv_used = np.asarray(m["kv_blocks_used"], dtype=float)
    kv_cap = float(r.kv_capacity_blocks)
    peak_rate, bw_rate = float(r.peak_flops) * devices, float(r.mem_bw) * devices
    if pools:  # disaggregated: devices, peaks and busy time of both pools; KV as a share of each pool's
        devices = sum(p["replicas"] * p["devices_per_replica"] for p in pools)
        busy = sum(p["busy_s"] for p in pools)
        peak_rate = sum(p["peak_flops"] * p["replicas"] * p["devices_per_replica"] for p in pools)
        bw_rate = sum(p["mem_bw"] * p["replicas"] * p["devices_per_replica"] for p in pools)
        caps = np.asarray([p["kv_capacity_blocks"] for p in pools], dtype=float)[np.asarray(m["pool"])]
        kv_used, kv_cap = kv_used / caps, 1.0
    kv_ts = np.asarray(r.timeseries.get("kv_used_frac", ()), dtype=float)
    pre = np.asarray(q["preemptions"])
    clock = float(r.clock_ghz)

    out: dict[str, Any] = {
        "requests": {"arrived": arrived, "completed": completed, "rejected": rejected,
                     "reject_reasons": {str(k): int(v) for k, v in r.reject_reasons.items()}},
        "makespan_s": makespan,
        "output_tokens_per_s": per_s(out_tokens),
        "requests_per_s": per_s(completed),
        "ttft_ms": latency_stats(lat["ttft_ms"]),
        "tpot_ms": latency_stats(lat["tpot_ms"]),
        "e2e_ms": latency_stats(lat["e2e_ms"]),
        "itl_ms": weighted_stats(*itl(r, done), scale=1e3),
        "moment_ms": moment_stats(dur),
        "breakdown_share": shares(all_cats),
        "overloaded": False,  # set below (a contract key since turn 2)
        "energy_j_per_token": None,  # set below (a contract key since turn 2: energy is modelled)
        # -- beyond the contract ----------------------------------------------------------------
        "latency_of": {"requests": "completed", "count": completed},
        "overload": {},
        "warnings": [],
        "moments_by_kind": {
            "prefill": moment_stats(dur[~is_decode], clock),
            "decode": moment_stats(dur[is_decode], clock),
            "mixed_count": int((kind == 2).sum()),
        },
        "breakdown_share_by_kind": {k: shares(v) for k, v in cats.items()},
        "mfu": float(r.total_flops - getattr(r, "recomputed_flops", 0.0)) / (makespan * peak_rate)
        if makespan > 0 else None,
        "mbu": float(r.total_bytes) / (makespan * bw_rate) if makespan > 0 else None,
        "gpu_busy_frac": busy / capacity if capacity > 0 else None,
        "host_busy_frac": float(r.host_busy_s) / capacity if capacity > 0 else None,
        "kv": {
            "capacity_blocks": int(kv_cap),
            "block_size": int(r.block_size),
            "peak_blocks": float(kv_used.max()) if kv_used.size else 0.0,
            "peak_frac": float(kv_used.max()) / kv_cap if kv_used.size and kv_cap > 0 else None,
            "mean_frac": float(kv_ts.mean()) if kv_ts.size else None,
        },
        "ttft_split_ms": ttft_split(r),
        "prefix_cache": _prefix_cache(r),
        "preemptions": {"total": int(pre.sum()), "requests": int((pre > 0).sum()),
                        "recomputed_tokens": int(r.recomputed_tokens)},
        "goodput": _goodput(r, lat, makespan),
        "queue": _queue(r.timeseries),
        "output_tokens": out_tokens,
        "config": _config(r, devices),
    }
    if pools:
        out["disaggregated"] = disaggregated_summary(r, pools, makespan)
    cache = cache_summary(r)
    if cache:
        out.update(cache)
    classes = per_class(r, lat, makespan)
    if classes is not None:
        out["classes"] = classes
    out["energy"] = energy_summary(getattr(r, "energy", None) or {}, out_tokens, makespan)
    out["energy_j_per_token"] = out["energy"]["j_per_output_token"]
    ov = overload(r)
    out["overloaded"] = ov.pop("overloaded")
    out["overload"] = ov
    out["warnings"] = warnings(out)
    return clean(out)


def disaggregated_summary(r: SimResult, pools: list[dict[str, Any]], makespan: float) -> dict[str, Any]:
    """Each pool of a disaggregated run (role, hardware, tp, pp, replicas, devices, its busy share,
    MFU, peak KV use, energy) and the KV transfers (from prefill end to decode arrival, ms)."""
    m, q = r.moments, r.requests
    out: dict[str, Any] = {"pools": []}
    for k, p in enumerate(pools):
        sel = np.asarray(m["pool"]) == k
        devices = p["replicas"] * p["devices_per_replica"]
        kv = np.asarray(m["kv_blocks_used"], dtype=float)[sel]
        e = p["energy"]
        out["pools"].append({
            "role": p["role"], "hardware": p["hardware"], "tp": p["tp"], "pp": p["pp"], "replicas": p["replicas"],
            "devices": devices, "scheduler": p["scheduler"], "max_batch_size": p["max_batch_size"],
            "moments": int(sel.sum()),
            "gpu_busy_frac": p["busy_s"] / (makespan * p["replicas"]) if makespan > 0 else None,
            "mfu": p["total_flops"] / (makespan * p["peak_flops"] * devices) if makespan > 0 else None,
            "kv_peak_frac": float(kv.max()) / p["kv_capacity_blocks"] if kv.size and p["kv_capacity_blocks"] else None,
            "energy_j": e["total_j"] if e["known"] else None,
            "avg_power_w_per_replica": float(np.mean(e["avg_power_w"])) if e["known"] else None,
            "peak_power_w_per_replica": float(np.max(e["peak_power_w"])) if e["known"] else None,
        })
    out["kv_transfer_ms"] = latency_stats(np.asarray(q.get("kv_transfer_s", []), dtype=float) * 1e3)
    out["transferred"] = int(np.isfinite(np.asarray(q.get("kv_transfer_s", []), dtype=float)).sum())
    return out


def cache_summary(r: SimResult) -> dict[str, Any]:
    """kv_offload (with serving.kv_offload): the requests that looked up a shared prefix and found
    it (on the device or in the CPU tier), those served from the CPU tier, its copies and transfer
    seconds (prefix_cache has the hit rate in tokens)."""
    sc, st = getattr(r, "scenario", None), getattr(r, "cache_stats", None) or {}
    sv = getattr(sc, "serving", None)
    out: dict[str, Any] = {}
    if sv is None or not st:
        return out
    looked, hits = st.get("prefix_lookups", 0), st.get("prefix_hits", 0)
    if sv.kv_offload is not None:
        host = st.get("prefix_host_hits", 0)
        out["kv_offload"] = {
            "cpu_gb": sv.kv_offload.cpu_gb, "host_capacity_blocks": st.get("host_capacity_blocks", 0),
            "prefix_lookups": looked, "prefix_hit_rate": hits / looked if looked else None,
            "prefix_host_hits": host, "host_hit_rate": host / looked if looked else None,
            "copied_in_blocks": st.get("copied_in_blocks", 0), "stored_blocks": st.get("stored_blocks", 0),
            "swapped_out_blocks": st.get("swapped_out_blocks", 0), "swap_fallbacks": st.get("swap_fallbacks", 0),
            "transfer_s": st.get("transfer_s", 0.0),
        }
    return out


def energy_summary(e: dict[str, Any], out_tokens: float, makespan: float) -> dict[str, Any]:
    """The devices' energy (SimResult.energy) for the JSON: totals, J per output token, and the
    average and peak power of a replica (the mean of the replicas' averages, the highest peak);
    all None when the hardware has no power figures (hwmodels.spec.Power)."""
    if not e.get("known"):
        return {"j_per_output_token": None, "total_j": None, "note": "no power figures for this hardware "
                "(hardware.device.power: tdp_w, idle_w)"}
    avg, peak = np.asarray(e["avg_power_w"], dtype=float), np.asarray(e["peak_power_w"], dtype=float)
    return {
        "j_per_output_token": e["total_j"] / out_tokens if out_tokens > 0 else None,
        "total_j": e["total_j"], "idle_j": e["idle_j"], "dynamic_j": e["dynamic_j"],
        "kwh": e["total_j"] / 3.6e6,
        "avg_power_w": e["total_j"] / makespan if makespan > 0 else None,
        "avg_power_w_per_replica": float(avg.mean()) if avg.size else None,
        "peak_power_w_per_replica": float(peak.max()) if peak.size else None,
        "idle_power_w_per_replica": e["idle_power_w"], "tdp_w_per_replica": e["tdp_w"],
    }


def _prefix_cache(r: SimResult) -> dict[str, Any]:
    """Prompt tokens found in the prefix cache over those admitted (a recompute looks up again)."""
    stats = getattr(r, "stats", {}) or {}
    looked, hit = int(stats.get("prompt_tokens_admitted", 0)), int(stats.get("prefix_hit_tokens", 0))
    return {"hit_rate": hit / looked if looked else None, "hit_tokens": hit, "prompt_tokens": looked}


def _config(r: SimResult, devices: int) -> dict[str, Any]:
    """What was simulated, so a metrics.json read alone says what it measured."""
    sc = getattr(r, "scenario", None)
    cfg: dict[str, Any] = {"replicas": int(r.replicas), "devices_per_replica": int(r.devices_per_replica),
                           "devices": devices, "clock_ghz": float(r.clock_ghz),
                           "peak_flops": float(r.peak_flops), "mem_bw": float(r.mem_bw)}
    if sc is not None and hasattr(sc, "serving"):
        cfg = {"scenario": sc.name, "model": sc.model, "hardware": sc.hardware,
               "scheduler": sc.serving.scheduler, "tp": sc.serving.tp, "pp": sc.serving.pp,
               "mode": sc.serving.mode, "seed": sc.seed, **cfg}
        if sc.serving.stack is not None:  # what the preset set, as it ran
            sv = sc.serving
            cfg["stack"] = {"name": sv.stack, **sv.model_dump(include={
                "max_batch_size", "max_batched_tokens", "block_size", "gpu_memory_utilization", "prefix_caching",
                "async_scheduling", "num_scheduler_steps", "guaranteed_no_evict", "cuda_graph_padding",
                "graph_mixed", "overheads"}), "cuda_graph_max": max(sv.cuda_graph_sizes or [0]) or None}
    return cfg
