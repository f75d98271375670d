"""Every function of simulator/reports/metrics.py on small runs built by hand, against values
worked out by hand in the comments (or by a brute-force computation beside it: numpy's
percentiles of the expanded samples, each request's tokens one by one). No number here comes
from the code's own output. Times are mostly multiples of 1/64 s: their milliseconds are exact.

Fast on purpose (no simulation): mutation testing (benchmarks/mutation.sh) runs it per mutant."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import simulator.reports.metrics as metrics
from simulator.reports.metrics import (
    _config,
    _goodput,
    _prefix_cache,
    _queue,
    cache_summary,
    clean,
    disaggregated_summary,
    energy_summary,
    itl,
    itl_samples,
    latency_stats,
    moment_stats,
    overload,
    per_class,
    per_request,
    shares,
    summarize,
    ttft_split,
    weighted_stats,
)
from simulator.serving.engine import R_KV, R_QUEUE
from simulator.serving.result import SimResult
from simulator.serving.scenario import Scenario

nan = math.nan
LATENCY_KEYS = {"mean", "p50", "p90", "p99"}


def scenario(**fields: Any) -> Scenario:
    return Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", **fields})


def requests(arrival, first, finish, out, status, **extra) -> dict[str, np.ndarray]:
    """The request columns summarize reads (preemptions 0 unless given)."""
    q = {"arrival_s": np.asarray(arrival, dtype=float), "first_token_s": np.asarray(first, dtype=float),
         "finish_s": np.asarray(finish, dtype=float), "output_len": np.asarray(out),
         "status": np.asarray(status), "preemptions": np.zeros(len(arrival), dtype=int)}
    q.update({k: np.asarray(v) for k, v in extra.items()})
    return q


def no_moments() -> dict[str, np.ndarray]:
    return {"start_s": np.zeros(0), "dur_s": np.zeros(0), "replica": np.zeros(0, dtype=int),
            "kind": np.zeros(0, dtype=int), "kv_blocks_used": np.zeros(0, dtype=int)}


def result(q: dict[str, np.ndarray], moments: dict[str, np.ndarray] | None = None, **fields: Any) -> SimResult:
    """A SimResult of these requests: no moments, no time series, one device, unless given."""
    base: dict[str, Any] = dict(
        requests=q, reject_reasons={}, moments=moments if moments is not None else no_moments(),
        category_s={"prefill": {}, "decode": {}}, timeseries={}, makespan_s=8.0, kv_capacity_blocks=100,
        block_size=16, replicas=1, devices_per_replica=1, clock_ghz=1.0, peak_flops=1e15, mem_bw=1e12,
        total_flops=0.0, total_bytes=0.0, host_busy_s=0.0, scenario=scenario())
    base.update(fields)
    return SimResult(**base)


def as_lists(q: dict[str, np.ndarray]) -> dict[str, list]:
    """The columns as plain lists with None for NaN: a requests table read back from JSON."""
    return {k: [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()] for k, v in q.items()}


# -- per request ---------------------------------------------------------------------------------

def six_requests() -> dict[str, np.ndarray]:
    """r0: arrives 1, first token 1.25, done 2.25, 5 tokens: TTFT 250, TPOT 1000/4 = 250, E2E 1250 ms
    r1: arrives 2, first token = finish 2.5, 1 token:        TTFT 500, no TPOT,          E2E  500
    r2: arrives 3, first 3.125, finish 3.375, 2 tokens:      TTFT 125, TPOT 250/1 = 250,  E2E  375
    r3: arrives 4, first 4.25, finish 4.5, 1 token:          TTFT 250, no TPOT (one token has no gap
        after it, even if the request ends later), E2E 500
    r4: arrives 5, rejected, 7 tokens wanted:               nothing
    r5: arrives 6, first 6.5, finish 7.0, aborted (status rejected) after 3 tokens: TTFT 500 (its first
        token came), not completed: no TPOT, no E2E."""
    return requests([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.25, 2.5, 3.125, 4.25, nan, 6.5],
                    [2.25, 2.5, 3.375, 4.5, nan, 7.0], [5, 1, 2, 1, 7, 3], [0, 0, 0, 0, 1, 1])


def test_per_request_ttft_tpot_e2e_by_hand() -> None:
    with warnings.catch_warnings():  # no 0/0 or x/0 behind the NaNs: numpy warns of neither
        warnings.simplefilter("error", RuntimeWarning)
        lat = per_request(result(six_requests()))
    np.testing.assert_array_equal(lat["ttft_ms"], [250, 500, 125, 250, nan, 500])
    np.testing.assert_array_equal(lat["tpot_ms"], [250, nan, 250, nan, nan, nan])
    np.testing.assert_array_equal(lat["e2e_ms"], [1250, 500, 375, 500, nan, nan])
    assert lat["completed"].tolist() == [True, True, True, True, False, False]


def test_per_request_reads_lists_with_none_for_missing_times() -> None:
    lat = per_request(result(as_lists(six_requests())))  # type: ignore[arg-type]
    np.testing.assert_array_equal(lat["ttft_ms"], [250, 500, 125, 250, nan, 500])
    np.testing.assert_array_equal(lat["tpot_ms"], [250, nan, 250, nan, nan, nan])
    np.testing.assert_array_equal(lat["e2e_ms"], [1250, 500, 375, 500, nan, nan])


# -- goodput and classes -------------------------------------------------------------------------

CLASSES = [{"name": "chat", "share": 0.5, "priority": 0, "slo": {"ttft_ms": 150}},
           {"name": "batch", "share": 0.3, "priority": 2},
           {"name": "idle", "share": 0.2, "priority": 1, "slo": {"e2e_ms": 500}}]


def classy() -> SimResult:
    """Seven requests in an 8 s run; the scenario's SLO: TTFT 300, TPOT 125, E2E 2000 ms, p99 TTFT 250.

         class  arrive first  finish  tokens  TTFT  TPOT            E2E   scenario's SLO  its class's
    a    chat   0     0.125   0.625   5       125   500/4 = 125     625   met (TPOT = bound)  met
    b    chat   1     1.25    1.375   3       250   125/2 = 62.5    375   met             TTFT > 150
    c    chat   2     2.0625  2.0625  1       62.5  none            62.5  met             met
    d    batch  3     3.25    5.5     10      250   2250/9 = 250    2500  TPOT > 125      (the same)
    e    batch  4     4.25    6.5     19      250   2250/18 = 125   2500  E2E > 2000      (the same)
    f    batch  5     rejected        8                                   no              no
    g    batch  6     6.125   6.25    2       125   125             250   met             met
    idle: no request (its own E2E bound 500, the scenario's TTFT and TPOT)."""
    q = requests([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.125, 1.25, 2.0625, 3.25, 4.25, nan, 6.125],
                 [0.625, 1.375, 2.0625, 5.5, 6.5, nan, 6.25], [5, 3, 1, 10, 19, 8, 2], [0, 0, 0, 0, 0, 1, 0],
                 **{"class": [0, 0, 0, 1, 1, 1, 1], "priority": [0, 0, 0, 2, 2, 2, 2]})
    sc = scenario(slo={"ttft_ms": 300, "tpot_ms": 125, "e2e_ms": 2000, "p99_ttft_ms": 250},
                  workload={"classes": CLASSES})
    return result(q, scenario=sc)


def test_goodput_counts_the_requests_within_every_bound() -> None:
    r = classy()
    g = _goodput(r, per_request(r), 8.0)
    # a, b, c and g of the seven; TTFTs 125 250 62.5 250 250 125: p99 between the two largest,
    # 250, at its bound (met); no p99 TPOT bound: None
    assert g == {"requests_per_s": 4 / 8, "fraction": 4 / 7, "requests": 4,
                 "slo": {"ttft_ms": 300, "tpot_ms": 125, "e2e_ms": 2000}, "p99_ttft_ok": True, "p99_tpot_ok": None}
    assert _goodput(r, per_request(r), 0.5)["requests_per_s"] == 4 / 0.5
    assert _goodput(r, per_request(r), 0.0)["requests_per_s"] is None
    r.scenario.slo.p99_ttft_ms = 249.0
    assert _goodput(r, per_request(r), 8.0)["p99_ttft_ok"] is False


def test_goodput_without_an_slo_counts_every_completed_request() -> None:
    r = classy()
    r.scenario.slo = None
    g = _goodput(r, per_request(r), 8.0)
    assert g == {"requests_per_s": 6 / 8, "fraction": 6 / 7, "requests": 6, "slo": {},
                 "p99_ttft_ok": None, "p99_tpot_ok": None}


def test_goodput_of_one_request_and_of_none() -> None:
    # one request, TTFT 125 and TPOT 250 ms: its own p99; bounds 125 and 250 hold, 124 fails
    r = result(requests([0.0], [0.125], [0.375], [2], [0]),
               scenario=scenario(slo={"p99_ttft_ms": 125, "p99_tpot_ms": 250}))
    g = _goodput(r, per_request(r), 1.0)
    assert (g["p99_ttft_ok"], g["p99_tpot_ok"], g["fraction"]) == (True, True, 1.0)
    r.scenario.slo.p99_tpot_ms = 124
    assert _goodput(r, per_request(r), 1.0)["p99_tpot_ok"] is False
    # TTFTs 125 and 250: p99 = 125 + 0.99 x 125 = 248.75 (not the largest): a bound of 249 holds
    r = result(requests([0.0, 1.0], [0.125, 1.25], [0.375, 1.5], [2, 2], [0, 0]),
               scenario=scenario(slo={"p99_ttft_ms": 249}))
    assert _goodput(r, per_request(r), 1.0)["p99_ttft_ok"] is True
    # nothing arrived: no fraction, no p99 (no TTFT at all fails a p99 bound)
    empty = result(requests([], [], [], [], []), scenario=scenario(slo={"p99_ttft_ms": 100}))
    g = _goodput(empty, per_request(empty), 1.0)
    assert (g["fraction"], g["requests"], g["requests_per_s"], g["p99_ttft_ok"]) == (None, 0, 0.0, False)


def test_per_class_latency_and_goodput_by_hand() -> None:
    r = classy()
    c = per_class(r, per_request(r), 8.0)
    assert list(c) == ["chat", "batch", "idle"]
    chat, batch, idle = c["chat"], c["batch"], c["idle"]
    assert (chat["requests"], chat["completed"], chat["priority"]) == (3, 3, 0)
    # TTFT 125, 250, 62.5: sorted 62.5 125 250, p90 at rank 1.8: 125 + 0.8 x 125, p99 125 + 0.98 x 125
    assert chat["ttft_ms"] == pytest.approx({"mean": 437.5 / 3, "p50": 125, "p90": 225, "p99": 247.5}, rel=1e-12)
    # TPOT 125 and 62.5 (c has one token): p90 62.5 + 0.9 x 62.5
    assert chat["tpot_ms"] == pytest.approx({"mean": 93.75, "p50": 93.75, "p90": 118.75, "p99": 124.375}, rel=1e-12)
    assert chat["e2e_ms"]["mean"] == pytest.approx(1062.5 / 3, rel=1e-12) and chat["e2e_ms"]["p50"] == 375
    # chat's own TTFT bound 150 with the scenario's TPOT and E2E: a and c
    assert chat["goodput"] == {"fraction": 2 / 3, "requests_per_s": 2 / 8,
                               "slo": {"ttft_ms": 150, "tpot_ms": 125, "e2e_ms": 2000}}
    assert (batch["requests"], batch["completed"], batch["priority"]) == (4, 3, 2)
    assert batch["ttft_ms"]["mean"] == pytest.approx(625 / 3, rel=1e-12) and batch["ttft_ms"]["p50"] == 250
    assert batch["goodput"] == {"fraction": 1 / 4, "requests_per_s": 1 / 8,
                                "slo": {"ttft_ms": 300, "tpot_ms": 125, "e2e_ms": 2000}}  # g only
    assert idle == {"requests": 0, "completed": 0, "priority": None, "ttft_ms": dict.fromkeys(LATENCY_KEYS),
                    "tpot_ms": dict.fromkeys(LATENCY_KEYS), "e2e_ms": dict.fromkeys(LATENCY_KEYS),
                    "goodput": {"fraction": None, "requests_per_s": 0.0,
                                "slo": {"ttft_ms": 300, "tpot_ms": 125, "e2e_ms": 500}}}
    assert per_class(r, per_request(r), 0.0)["chat"]["goodput"]["requests_per_s"] is None
    assert per_class(r, per_request(r), 0.5)["chat"]["goodput"]["requests_per_s"] == 2 / 0.5


def test_per_class_of_a_traces_priority_levels() -> None:
    """A trace's priority column makes the classes (class_names), with no class in the scenario and
    no SLO: every completed request is within its class's (empty) bounds."""
    q = requests([0.0, 0.5, 1.0], [0.25, 0.75, nan], [0.5, 1.0, nan], [2, 2, 2], [0, 0, 1],
                 **{"class": [1, 0, 1], "priority": [3, 0, 3]})
    for sc in (scenario(), None):  # a result without a scenario too
        r = result(q, class_names=("priority 0", "priority 3"), scenario=sc)
        c = per_class(r, per_request(r), 2.0)
        assert list(c) == ["priority 0", "priority 3"]
        assert (c["priority 0"]["requests"], c["priority 0"]["priority"]) == (1, 0)
        assert (c["priority 3"]["requests"], c["priority 3"]["completed"], c["priority 3"]["priority"]) == (2, 1, 3)
        assert c["priority 3"]["goodput"] == {"fraction": 0.5, "requests_per_s": 0.5, "slo": {}}
        assert c["priority 0"]["ttft_ms"]["mean"] == 250
    assert per_class(result(six_requests()), per_request(result(six_requests())), 8.0) is None  # one class
    # a class column with no names for it (no classes in a scenario, no class_names): no class to report
    bare = SimpleNamespace(requests=q)
    assert per_class(bare, per_request(bare), 2.0) == {}  # type: ignore[arg-type]


def test_summary_of_classes() -> None:
    s = summarize(classy())
    assert list(s["classes"]) == ["chat", "batch", "idle"] and s["classes"]["chat"]["goodput"]["fraction"] == \
        pytest.approx(2 / 3)
    assert s["goodput"]["requests"] == 4 and s["latency_of"] == {"requests": "completed", "count": 6}
    assert "classes" not in summarize(result(six_requests()))


# -- the TTFT split ------------------------------------------------------------------------------

def test_ttft_split_without_a_front_end() -> None:
    """No reached_s and no request_out_s: a request reaches the engine when it arrives and its
    tokens leave at once. Prefills started 0.5 and 0.25 s after arrival, TTFTs 750 and 1000 ms:
    queue 500 and 250, prefill 250 and 750, overheads 0; the third was rejected."""
    q = requests([0.0, 2.0, 3.0], [0.75, 3.0, nan], [1.0, 3.5, nan], [2, 2, 2], [0, 0, 1],
                 started_s=[0.5, 2.25, nan])
    s = ttft_split(result(q, stats={}))
    # two values a < b: p90 = a + 0.9 (b - a), p99 = a + 0.99 (b - a)
    assert s["queue"] == pytest.approx({"mean": 375, "p50": 375, "p90": 475, "p99": 497.5}, rel=1e-12)
    assert s["prefill"] == pytest.approx({"mean": 500, "p50": 500, "p90": 700, "p99": 745}, rel=1e-12)
    assert s["overheads"] == {"mean": 0, "p50": 0, "p90": 0, "p99": 0}
    # no started_s at all (an older result): no queue, no prefill; still the overheads
    del q["started_s"]
    s = ttft_split(result(q))
    assert s["queue"] == dict.fromkeys(LATENCY_KEYS) and s["prefill"] == dict.fromkeys(LATENCY_KEYS)
    assert s["overheads"]["mean"] == 0


def test_ttft_split_reads_lists_with_none() -> None:
    """A front end: reached 1/64 s after arrival, tokens out 1/32 s after the engine made them.
    TTFT 750 = 15.625 in + 250 queue + 453.125 prefill + 31.25 out."""
    q = requests([0.0, 1.0], [0.75, nan], [1.0, nan], [2, 2], [0, 1], started_s=[0.265625, nan],
                 reached_s=[0.015625, nan])
    for cols in (q, as_lists(q)):
        s = ttft_split(result(cols, stats={"request_out_s": 0.03125}))  # type: ignore[arg-type]
        assert (s["queue"]["mean"], s["prefill"]["mean"], s["overheads"]["mean"]) == (250, 453.125, 46.875)


# -- queue, moments, latency blocks --------------------------------------------------------------

def test_queue_block_and_missing_series() -> None:
    ts = {"queue_len": np.array([0.0, 2.0, 1.0]), "running": np.array([1.0, 3.0, 2.0]),
          "outstanding": np.zeros(0)}
    assert _queue(ts) == {"mean_len": 1.0, "max_len": 2.0, "mean_running": 2.0, "max_running": 3.0,
                          "mean_outstanding": None, "max_outstanding": None}
    assert _queue({}) == dict.fromkeys(["mean_len", "max_len", "mean_running", "max_running",
                                        "mean_outstanding", "max_outstanding"])


def test_latency_stats_of_one_value_and_of_eleven() -> None:
    assert latency_stats(np.array([7.0])) == {"mean": 7.0, "p50": 7.0, "p90": 7.0, "p99": 7.0}
    # 0, 10, ..., 100: p50 50, p90 90, p99 between 90 and 100 at 0.9: 99; infinities are dropped
    v = np.append(np.arange(0.0, 101.0, 10.0), [np.inf, nan])
    assert latency_stats(v) == pytest.approx({"mean": 50, "p50": 50, "p90": 90, "p99": 99}, rel=1e-12)
    assert latency_stats([1.0, None, 3.0]) == pytest.approx({"mean": 2.0, "p50": 2.0, "p90": 2.8, "p99": 2.98})
    assert latency_stats(np.zeros(0)) == dict.fromkeys(LATENCY_KEYS)


def test_float32_columns_give_the_float64_answers() -> None:
    """A run stored in compact dtypes (float32 times) is summarised in float64: the same summary as
    the same values in float64 arrays (float32 sums, means and comparisons would round)."""
    q = six_requests()
    m = {"start_s": np.array([0.1, 0.3, 0.7, 1.1]), "dur_s": np.array([0.1, 0.2, 0.3, 0.7]),
         "replica": np.zeros(4, dtype=int), "engine": np.zeros(4, dtype=int), "kind": np.array([0, 1, 2, 1]),
         "kv_blocks_used": np.array([1, 2, 3, 4]), "decodes": np.array([0, 3, 3, 3]),
         "firsts": np.array([3, 0, 0, 0]), "held": np.zeros(4, dtype=bool)}
    t = np.arange(80) * 0.1  # the overload window (3.5, 6] holds 25 of these intervals
    ts = {"t_s": t, "queue_len": np.exp(t) / 100 + np.sin(7 * t) / 10, "running": np.cos(t) ** 2, "outstanding": t * 0.7,
          "kv_used_frac": np.sin(t) ** 2}
    r64 = result(q, m, timeseries=ts)
    f32 = lambda d: {k: v.astype(np.float32) if v.dtype == float else v for k, v in d.items()}  # noqa: E731
    r32 = result(f32(q), f32(m), timeseries=f32(ts))
    cast = lambda d: {k: v.astype(float) if v.dtype == np.float32 else v for k, v in d.items()}  # noqa: E731
    r32_64 = result(cast(r32.requests), cast(r32.moments), timeseries=cast(r32.timeseries))
    assert summarize(r32) == summarize(r32_64)
    assert overload(r32) == overload(r32_64)  # the queue's trend unrounded
    assert summarize(r64)["moment_ms"]["mean"] == pytest.approx(325, rel=1e-8)
    assert summarize(r32)["overload"]["queue_growth"] != 0 and summarize(r32)["kv"]["mean_frac"] > 0
    d32 = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    assert moment_stats(d32) == moment_stats(d32.astype(float))
    assert _queue(f32(ts)) == _queue(cast(f32(ts)))
    # float32 arrivals 1, 1 + 2^-22 and 1 + 3 x 2^-23: mid 1 + 1.5 x 2^-23 lies between two float32
    # numbers and rounds to the second arrival; in float64 that arrival is after mid, in the window
    a = np.array([1.0, 1 + 2.0**-22, 1 + 3 * 2.0**-23], dtype=np.float32)
    done = np.array([a[1], nan, nan], dtype=np.float32)
    q32 = {**requests(a, done, done, [2] * 3, [0, 1, 1]), "arrival_s": a, "first_token_s": done, "finish_s": done}
    ov = overload(result(q32))
    assert (ov["arrivals"], ov["completion_rate"]) == (2, 1 / (1.5 * 2.0**-23))  # r0 done at a[1], after mid


# -- weighted percentiles and the gaps between tokens ---------------------------------------------

def pooled(values: np.ndarray, weights: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """What weighted_stats must give: numpy on the samples written out, the smallest value whose
    cumulative count reaches q of them (numpy's inverted_cdf)."""
    x = np.repeat(values, weights) * scale
    return {"mean": float(x.mean()), **{f"p{q}": float(np.percentile(x, q, method="inverted_cdf"))
                                        for q in (50, 90, 99)}}


@pytest.mark.parametrize("chunk", [metrics.CHUNK, 1, 2, 3])
def test_weighted_stats_are_numpys_percentiles_of_the_expanded_samples(chunk: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CHUNK", chunk)  # the chunked passes must not change the answer
    rng = np.random.default_rng(chunk)
    for n in (1, 2, 3, 7, 40):
        v, w = rng.normal(5.0, 3.0, n), rng.integers(1, 5, n)
        assert weighted_stats(v, w, scale=1e3) == pytest.approx(pooled(v, w, 1e3), rel=1e-12)
    # 1, 2, 3, 4 once each: the median is 2 (the 2nd of 4 samples), at the end of a 2-chunk
    assert weighted_stats(np.array([4.0, 3.0, 2.0, 1.0]), np.ones(4, dtype=int)) == \
        {"mean": 2.5, "p50": 2.0, "p90": 4.0, "p99": 4.0}


def test_weighted_stats_drop_what_is_not_a_sample() -> None:
    """NaN and infinite values and non-positive counts are no samples; the rest are numpy's."""
    v = np.array([3.0, nan, 1.0, 2.0, np.inf, 5.0, 4.0])
    w = np.array([1, 4, 2, 0, 3, -1, 1])
    assert weighted_stats(v, w) == pytest.approx(pooled(np.array([3.0, 1.0, 4.0]), np.array([1, 2, 1])), rel=1e-12)
    assert weighted_stats(np.array([nan, 2.0]), np.array([1, 0])) == dict.fromkeys(LATENCY_KEYS)
    assert weighted_stats(np.array([1.0, 2.0]), np.array([0, 0])) == dict.fromkeys(LATENCY_KEYS)  # no sample
    assert weighted_stats(np.array([1.0, nan]), np.array([3, 3]))["mean"] == 1.0
    # float32 values with int16 counts: the mean in float64 all the same
    v32, w16 = np.array([0.1, 0.7, 0.3], dtype=np.float32), np.array([3, 5, 7], dtype=np.int16)
    assert weighted_stats(v32, w16)["mean"] == float(np.dot(v32.astype(float), w16)) / 15


def token_schedule(rng: np.random.Generator, units: list[tuple[int, int]],
                   pp: int) -> tuple[dict, list[float], tuple[list[int], list[float]]]:
    """A random moment log of continuous batching on each engine (replica, engine), the gaps
    between each request's streamed tokens written out one request at a time, and the engines
    (replica x pp + engine) and times of the one-token replies.

    Each engine runs moments one after another (sometimes idle between them): prefill-only,
    decode-only or mixed. A prefill that ends gives its request's first token at the moment's end;
    a one-token reply ends there, any other request gets a token from every later moment with
    decodes on that engine until its output is done; a multi-step block (all decode, nobody joins
    or leaves) holds its tokens until its last step. A request's gaps are the differences of the
    distinct times its tokens reached the client."""
    cols: dict[str, list] = {k: [] for k in ("start_s", "dur_s", "replica", "engine", "decodes", "firsts", "held")}
    gaps: list[float] = []
    ended: tuple[list[int], list[float]] = ([], [])
    for replica, engine in units:
        t = float(rng.integers(0, 4)) / 64
        running: dict[int, int] = {}  # request -> tokens still to decode
        times: dict[int, list[float]] = {}
        pending: list[int] = []  # tokens of a held block: whose
        nreq = 0
        steps = int(rng.integers(5, 25))
        block = 0
        for step in range(steps):
            last = step == steps - 1
            if block:
                kind = "decode"
            elif not running or rng.random() < 0.3:
                kind = "prefill" if rng.random() < 0.5 or not running else "mixed"
            else:
                kind = "decode"
                if rng.random() < 0.3 and min(running.values()) >= 3:
                    block = 3  # this and the next two steps, streamed at the third
            dur = float(rng.integers(1, 8)) / 64
            end = t + dur
            dec = len(running) if kind != "prefill" else 0
            held = block > 1
            for i in list(running):  # decodes
                if kind == "prefill":
                    break
                running[i] -= 1
                if held:
                    pending.append(i)
                else:
                    times[i].append(end)
                if running[i] == 0:
                    del running[i]
            if not held:
                for i in pending:
                    times[i].append(end)
                pending.clear()
            if block:
                block -= 1
            firsts = 0
            if kind != "decode":  # prefills that end here (at the last step: one-token replies)
                for _ in range(int(rng.integers(0, 3))):
                    i = nreq = nreq + 1
                    times[i] = [end]
                    if last or rng.random() < 0.25:
                        ended[0].append(replica * pp + engine)
                        ended[1].append(end)
                    else:
                        running[i] = int(rng.integers(1, 6))
                    firsts += 1
            for k, v in zip(cols, (t, dur, replica, engine, dec, firsts, held), strict=True):
                cols[k].append(v)
            t = end + (float(rng.integers(0, 3)) / 64 if rng.random() < 0.3 else 0.0)
        for ts in times.values():
            gaps += np.diff(sorted(set(ts))).tolist()
    order = np.argsort(np.asarray(cols["start_s"]), kind="stable")
    m = {k: np.asarray(v)[order] for k, v in cols.items()}
    m["held"] = m["held"].astype(bool)
    return m, gaps, ended


@pytest.mark.parametrize("units, pp", [([(0, 0)], 1), ([(0, 0), (1, 0), (3, 0)], 1),
                                       ([(0, 1), (0, 0), (1, 1), (2, 0)], 2)])
def test_itl_is_each_requests_gaps_between_tokens(units: list[tuple[int, int]], pp: int) -> None:
    for seed in range(6):
        m, gaps, ended = token_schedule(np.random.default_rng(seed), units, pp)
        g, w = itl_samples(m, pp, (np.asarray(ended[0], dtype=int), np.asarray(ended[1])))
        np.testing.assert_allclose(np.sort(np.repeat(g, w)), np.sort(gaps), rtol=0, atol=1e-12)


def test_a_one_token_reply_takes_no_gap() -> None:
    """Request X decodes on engine 1 of replica 1 (pp 2): first token at 0.625, tokens at 0.75 and
    1.0; between them a prefill-only moment ends Y's prompt at 0.90625, a one-token reply. X's gaps
    are 125 and 250 ms; Y has none. Tokens reach the client 0.1 s after the engine made them (Y's
    time less 0.1 is above 0.90625 by round-off). Before the fix, Y counted a gap of 93.75 ms and
    X's 250 was lost. Engine 0 of replica 1 decodes another request at the same times: gap 250."""
    m = {"start_s": np.array([0.5, 0.625, 0.75, 0.75, 0.90625, 1.0]),
         "dur_s": np.array([0.125, 0.125, 0.15625, 0.25, 0.09375, 0.25]),
         "replica": np.ones(6, dtype=int), "engine": np.array([1, 1, 1, 0, 1, 0]), "kind": np.array([0, 1, 0, 1, 1, 1]),
         "kv_blocks_used": np.array([4, 4, 8, 4, 4, 4]), "decodes": np.array([0, 1, 0, 1, 1, 1]),
         "firsts": np.array([1, 0, 1, 0, 0, 0]), "held": np.zeros(6, dtype=bool)}
    for out in (0.1, 0.0):  # with a front end's way out, and without (no request_out_s)
        q = requests([0.0, 0.7], [0.625 + out, 0.90625 + out], [1.0 + out, 0.90625 + out], [3, 1], [0, 0],
                     replica=[1, 1], engine=[1, 1])
        r = result(q, m, stats={"request_out_s": out} if out else {}, pp=2)
        g, w = itl(r, per_request(r)["completed"])
        np.testing.assert_allclose(np.sort(np.repeat(g, w)), [0.125, 0.25, 0.25], rtol=0, atol=1e-12)
    assert summarize(r)["itl_ms"] == {"mean": pytest.approx(625 / 3), "p50": 250.0, "p90": 250.0, "p99": 250.0}


def test_itl_numbers_the_engines_of_pools_of_different_pp() -> None:
    """A disaggregated run whose prefill pool has pp 1 (replica 0) and decode pool pp 2 (replicas 1
    and 2): replica 1's engine 1 and replica 2's engine 0 are different engines (1 x 2 + 1 and
    2 x 2 + 0, not 1 + 1 and 2 + 0). Each decodes one request twice: gaps 250 and 375 ms."""
    r = two_pools()
    r.pools[1]["pp"] = 2
    r.moments = {"start_s": np.array([0.0, 0.125, 0.25, 0.5]), "dur_s": np.array([0.25, 0.375, 0.25, 0.375]),
                 "replica": np.array([1, 2, 1, 2]), "engine": np.array([1, 0, 1, 0]), "kind": np.ones(4, dtype=int),
                 "kv_blocks_used": np.ones(4, dtype=int), "pool": np.ones(4, dtype=int),
                 "decodes": np.ones(4, dtype=int), "firsts": np.zeros(4, dtype=int), "held": np.zeros(4, dtype=bool)}
    assert r.pp == 1 and summarize(r)["itl_ms"] == {"mean": 312.5, "p50": 250.0, "p90": 375.0, "p99": 375.0}


def test_itl_of_requests_that_join_a_decode_pool() -> None:
    """A disaggregated run (decode pool pp 2). Replica 0 prefills D, A, B, C and E (a one-token
    reply) in moments ending 0.25, 0.5, 0.75, 1.0, 1.0; their KV goes to replica 1. Its engine 1
    decodes A in [1, 1.25], A and B in [1.25, 1.5], then a multi-step block of two steps
    [1.5, 1.625] (held) and [1.625, 1.75] with A, B and C (C joins at the block's start); engine 0
    decodes D in [1, 1.25] and [1.25, 1.75]. Each joining request's first gap runs from its first
    token on replica 0: A 1.25 - 0.5, B 1.5 - 0.75, C 1.75 - 1.0, D 1.25 - 0.25. Gaps (s):
    A 0.75, 0.25, 0.25; B 0.75, 0.25; C 0.75; D 1.0, 0.5. Eight: mean 4.5 / 8 = 562.5 ms, p50 the
    4th smallest (0.5), p90 and p99 the 8th (1.0). Tokens reach the client 1/16 s after the
    engine made them. Before the fix B and C counted as continuing at their first decode (0.25
    each) and A's and D's first gaps (at their engines' first streaming moments) were lost: six
    gaps, five of 0.25 and one of 0.5."""
    r = two_pools()
    r.pools[1]["pp"] = 2
    out = 0.0625
    r.stats = {"request_out_s": out}
    r.moments = {"start_s": np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.25, 1.25, 1.5, 1.625]),
                 "dur_s": np.array([0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.5, 0.125, 0.125]),
                 "replica": np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), "engine": np.array([0, 0, 0, 0, 1, 0, 1, 0, 1, 1]),
                 "kind": np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), "kv_blocks_used": np.ones(10, dtype=int),
                 "pool": np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), "decodes": np.array([0, 0, 0, 0, 1, 1, 2, 1, 3, 3]),
                 "firsts": np.array([1, 1, 1, 2, 0, 0, 0, 0, 0, 0]),
                 "held": np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0], dtype=bool)}
    #                  D     A     B     C     E
    first = np.array([0.25, 0.5, 0.75, 1.0, 1.0]) + out
    r.requests = requests([0.0, 0.25, 0.5, 0.75, 0.75], first, [1.75 + out] * 4 + [first[4]], [3, 4, 3, 2, 1],
                          [0] * 5, replica=[0] * 5, engine=[0] * 5, decode_replica=[1, 1, 1, 1, -1],
                          decode_engine=[0, 1, 1, 1, 0], kv_transfer_s=[0.5, 0.5, 0.5, 0.5, nan],
                          decode_admitted_s=[1.0, 1.0, 1.25, 1.5, nan])
    g, w = itl(r, per_request(r)["completed"])
    np.testing.assert_allclose(np.sort(np.repeat(g, w)), [0.25, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 1.0],
                               rtol=0, atol=1e-12)
    assert summarize(r)["itl_ms"] == {"mean": 562.5, "p50": 500.0, "p90": 1000.0, "p99": 1000.0}


def test_itl_of_an_engine_with_no_decodes_and_of_an_empty_log() -> None:
    """Replica 0 only prefills (a one-token reply at 0.25); replica 1 decodes one request: first token
    at 0.125, tokens at 0.25 and 0.5: gaps 125 and 250 ms."""
    m = {"start_s": np.array([0.0, 0.0, 0.125, 0.25]), "dur_s": np.array([0.25, 0.125, 0.125, 0.25]),
         "replica": np.array([0, 1, 1, 1]), "engine": np.zeros(4, dtype=int), "decodes": np.array([0, 0, 1, 1]),
         "firsts": np.array([1, 1, 0, 0]), "held": np.zeros(4, dtype=bool)}
    g, w = itl_samples(m)
    np.testing.assert_array_equal(np.sort(np.repeat(g, w)), [0.125, 0.25])
    s = weighted_stats(*itl_samples(m), scale=1e3)
    assert s == {"mean": 187.5, "p50": 125.0, "p90": 250.0, "p99": 250.0}
    # a third replica: a prefill, then one decode step of its request: one gap of 250 ms
    m3 = {k: np.append(v, a) for (k, v), a in zip(m.items(), ([0.0, 0.25], [0.25, 0.25], [2, 2], [0, 0], [0, 1],
                                                             [1, 0], [False, False]), strict=True)}
    g, w = itl_samples(m3)
    np.testing.assert_array_equal(np.sort(np.repeat(g, w)), [0.125, 0.25, 0.25])
    # decodes only (a disaggregated decode pool: its requests' first tokens came from elsewhere):
    # two sequences at 0.25, two at 0.5, one at 0.625
    d = {"start_s": np.array([0.0, 0.25, 0.5]), "dur_s": np.array([0.25, 0.25, 0.125]), "replica": np.zeros(3, dtype=int),
         "engine": np.zeros(3, dtype=int), "decodes": np.array([2, 2, 1]), "firsts": np.zeros(3, dtype=int),
         "held": np.zeros(3, dtype=bool)}
    g, w = itl_samples(d)
    np.testing.assert_array_equal(np.sort(np.repeat(g, w)), [0.125, 0.25, 0.25])
    for log in (no_moments(), {k: v[:1] for k, v in m.items()}, {k: v for k, v in m.items() if k != "decodes"}):
        g, w = itl_samples(log)
        assert g.size == 0 and w.size == 0 and g.dtype == float and w.dtype == np.int32


# -- overload ------------------------------------------------------------------------------------

def overload_run(rejected_at: dict[int, int], queue: list[float], finish: dict[int, float]) -> SimResult:
    """Eleven arrivals at 0, 1, ..., 10 s: the window is (5, 10] (mid 5, span 5 s). rejected_at:
    request -> its replica (-1: rejected before routing). queue: the time series' queue_len at
    t = 0, 1, ..., 10 (intervals of 1 s). finish: completion times of completed requests."""
    n = 11
    status = np.array([1 if i in rejected_at else 0 for i in range(n)])
    fin = np.array([finish.get(i, 11.0) if i not in rejected_at else nan for i in range(n)])
    q = requests(np.arange(11.0), np.where(status == 0, fin, nan), fin, np.full(n, 2), status,
                 replica=[rejected_at.get(i, 0) for i in range(n)])
    return result(q, timeseries={"t_s": np.arange(11.0), "queue_len": np.asarray(queue, dtype=float)}, makespan_s=12.0)


def test_overload_trend_by_hand() -> None:
    """Window (5, 10]: arrivals 6..10; 7 was rejected before routing (not offered), 8 turned away by
    a full queue (offered, dropped): 4 arrivals counted. The queue's intervals starting at 5..9
    (those inside [mid, last]) hold 1, 2, 2, 4, 6: centres 5.5..9.5, x = -2..2, deviations from the
    mean 3: -2, -1, -1, 1, 3; slope (4 + 1 + 0 + 1 + 6) / 10 = 1.2 a second: growth 1.2 x 5 + 1 = 7
    > max(0.05 x 4, 2 sqrt 4) = 4. Completions in (5, 10]: at 6 and 10 (5 and 10.5 are outside)."""
    r = overload_run({7: -1, 8: 0}, [9, 9, 9, 9, 9, 1, 2, 2, 4, 6, 0], {0: 1.5, 1: 5.0, 2: 6.0, 3: 10.0, 4: 10.5})
    ov = overload(r)
    assert ov == {"overloaded": True, "queue_growth": pytest.approx(7.0, rel=1e-12), "threshold": 4.0,
                  "arrivals": 4, "window_s": [5.0, 10.0], "arrival_rate": 0.8, "completion_rate": 0.4}
    # growth exactly at the threshold is not overload: a flat queue and 4 of 4 arrivals turned away
    r = overload_run({6: 0, 8: 0, 9: 0, 10: 0, 7: -1}, [0] * 11, {})
    ov = overload(r)
    assert (ov["queue_growth"], ov["threshold"], ov["arrivals"], ov["overloaded"]) == (4.0, 4.0, 4, False)
    # nothing offered in the window: no rate to outrun, whatever the queue does
    r = overload_run({6: -1, 7: -1, 8: -1, 9: -1, 10: -1}, list(range(11)), {})
    ov = overload(r)
    assert (ov["arrivals"], ov["arrival_rate"], ov["overloaded"]) == (0, 0.0, False)
    assert ov["queue_growth"] == pytest.approx(5.0, rel=1e-12)  # slope 1 over 5 s


def test_overload_of_one_arrival_and_three_intervals() -> None:
    """Arrivals 0, 3, 6: the window (3, 6] holds the last, turned away by a full queue (offered,
    dropped). The queue's intervals at 3, 4, 5 (three: enough for a trend) hold 0, 1, 2 (preempted
    requests back in the queue): slope 1 a second over 3 s, growth 3 + 1 = 4 > max(0.05, 2 sqrt 1)."""
    q = requests([0.0, 3.0, 6.0], [0.5, 3.5, nan], [1.0, 4.0, nan], [2, 2, 2], [0, 0, 1], replica=[0, 0, 0])
    r = result(q, timeseries={"t_s": np.arange(7.0), "queue_len": np.array([0.0, 0, 0, 0, 1, 2, 5])})
    ov = overload(r)
    assert (ov["arrivals"], ov["queue_growth"], ov["threshold"], ov["overloaded"]) == (1, 4.0, 2.0, True)


def test_overload_keeps_the_interval_that_ends_at_the_last_arrival_to_round_off() -> None:
    """The engine's grid: np.linspace over a 333.3 s run, 8 intervals of 41.6625 s. The last arrival
    is the grid point 291.6375, where the interval from 249.975 ends (to 6e-14 s of round-off: inside
    the window). Window (145.81875, 291.6375]: intervals from 166.65, 208.3125, 249.975 hold a queue
    of 1, 2, 3: a slope of 1 per interval, growth 145.81875 / 41.6625 = 3.5 > 2 for one arrival."""
    edges = np.linspace(0.0, 333.3, 9)
    last = float(edges[7])
    assert edges[6] + (edges[1] - edges[0]) > last  # the round-off the tolerance is for
    q = requests([0.0, 100.0, last], [nan] * 3, [nan] * 3, [2] * 3, [0] * 3)
    r = result(q, timeseries={"t_s": edges[:-1], "queue_len": np.array([0.0, 0, 0, 0, 1, 2, 3, 9])})
    ov = overload(r)
    assert ov["queue_growth"] == pytest.approx(3.5, rel=1e-9) and ov["overloaded"] is True


def test_overload_counts_many_arrivals_by_their_share() -> None:
    """5,001 arrivals one a second: 2,500 in (2500, 5000]; the threshold is the larger of 5 % of them
    (125) and 2 sqrt(2500) = 100. No time series: no slope, no growth."""
    n = 5001
    r = result(requests(np.arange(float(n)), np.full(n, nan), np.full(n, nan), np.ones(n, dtype=int),
                        np.zeros(n, dtype=int)))
    ov = overload(r)
    assert (ov["threshold"], ov["arrivals"], ov["queue_growth"], ov["overloaded"]) == (125.0, 2500, 0.0, False)


def test_overload_edges_of_the_window() -> None:
    """Arrivals 0, 0, 1: the window (0.5, 1] holds the last; 2 arrivals at 0 and 2; a run without
    replicas (every request counts as offered); one arrival, a burst: no window."""
    q = requests([0.0, 0.0, 1.0], [nan] * 3, [nan] * 3, [1, 1, 1], [1, 1, 1])
    ov = overload(result(q))  # all rejected, no replica column: offered (a full queue turned them away)
    assert (ov["window_s"], ov["arrivals"], ov["queue_growth"], ov["overloaded"]) == ([0.5, 1.0], 1, 1.0, False)
    ov = overload(result(requests([0.0, 1.0, 1.0], [nan] * 3, [nan] * 3, [1] * 3, [0] * 3)))
    assert (ov["window_s"], ov["arrivals"]) == ([0.5, 1.0], 2)
    ov = overload(result(requests([0.0, 2.0], [nan] * 2, [nan] * 2, [1] * 2, [0] * 2)))
    assert (ov["window_s"], ov["arrivals"], ov["arrival_rate"]) == ([1.0, 2.0], 1, 1.0)
    default = {"overloaded": False, "queue_growth": 0.0, "threshold": None, "arrivals": 0, "window_s": None,
               "arrival_rate": None, "completion_rate": None}
    assert overload(result(requests([3.0], [nan], [nan], [1], [0]))) == default
    assert overload(result(requests([3.0] * 4, [nan] * 4, [nan] * 4, [1] * 4, [0] * 4))) == default


# -- pools, caches, energy -----------------------------------------------------------------------

def two_pools() -> SimResult:
    """A 10 s disaggregated run: pool 0 prefills (1 replica x tp 2), pool 1 decodes (3 replicas x
    tp 1 x pp 2). Five moments, pools 0 1 1 0 1, KV blocks 30 100 300 50 200 of 100 and 400 per
    replica; four requests, three KV transfers of 2, 4 and 6 ms."""
    e0 = {"known": True, "total_j": 3000.0, "avg_power_w": np.array([600.0]), "peak_power_w": np.array([900.0])}
    e1 = {"known": True, "total_j": 9000.0, "avg_power_w": np.array([500.0, 400.0, 600.0]),
          "peak_power_w": np.array([700.0, 950.0, 800.0])}
    pools = [{"role": "prefill", "hardware": "h100-sxm", "tp": 2, "pp": 1, "replicas": 1, "devices_per_replica": 2,
              "kv_capacity_blocks": 100, "scheduler": "chunked", "max_batch_size": 64, "peak_flops": 1e15,
              "mem_bw": 3e12, "total_flops": 2e15, "busy_s": 2.0, "energy": e0},
             {"role": "decode", "hardware": "h200-sxm", "tp": 1, "pp": 2, "replicas": 3, "devices_per_replica": 2,
              "kv_capacity_blocks": 400, "scheduler": "continuous", "max_batch_size": 128, "peak_flops": 2e15,
              "mem_bw": 4e12, "total_flops": 6e15, "busy_s": 9.0, "energy": e1}]
    m = {"start_s": np.array([0.0, 1.0, 2.0, 3.0, 4.0]), "dur_s": np.array([0.5, 1.0, 1.0, 0.5, 1.0]),
         "replica": np.array([0, 1, 2, 0, 3]), "kind": np.array([0, 1, 1, 0, 1]),
         "kv_blocks_used": np.array([30, 100, 300, 50, 200]), "pool": np.array([0, 1, 1, 0, 1])}
    q = requests([0.0, 0.5, 1.0, 1.5], [0.5, 1.0, 1.5, 2.0], [2.0, 3.0, 4.0, 2.0], [3, 3, 3, 1], [0, 0, 0, 0],
                 kv_transfer_s=[0.002, 0.004, 0.006, nan])
    return result(q, m, pools=pools, makespan_s=10.0, replicas=4, devices_per_replica=2, total_flops=8e15,
                  total_bytes=6e13, peak_flops=1e15, mem_bw=3e12, kv_capacity_blocks=100)


def test_disaggregated_summary_of_two_pools_by_hand() -> None:
    r = two_pools()
    d = disaggregated_summary(r, r.pools, 10.0)
    pre, dec = d["pools"]
    assert pre == {"role": "prefill", "hardware": "h100-sxm", "tp": 2, "pp": 1, "replicas": 1, "devices": 2,
                   "scheduler": "chunked", "max_batch_size": 64, "moments": 2,
                   "gpu_busy_frac": 2 / 10,               # 2 busy seconds of 1 replica x 10 s
                   "mfu": 2e15 / (10 * 1e15 * 2),          # 0.1
                   "kv_peak_frac": 50 / 100, "energy_j": 3000.0,
                   "avg_power_w_per_replica": 600.0, "peak_power_w_per_replica": 900.0}
    assert dec == {"role": "decode", "hardware": "h200-sxm", "tp": 1, "pp": 2, "replicas": 3, "devices": 6,
                   "scheduler": "continuous", "max_batch_size": 128, "moments": 3,
                   "gpu_busy_frac": 9 / (10 * 3), "mfu": 6e15 / (10 * 2e15 * 6), "kv_peak_frac": 300 / 400,
                   "energy_j": 9000.0, "avg_power_w_per_replica": 500.0,  # (500 + 400 + 600) / 3
                   "peak_power_w_per_replica": 950.0}
    # transfers 2, 4, 6 ms: p90 at rank 1.8: 4 + 0.8 x 2
    assert d["kv_transfer_ms"] == pytest.approx({"mean": 4.0, "p50": 4.0, "p90": 5.6, "p99": 5.96}, rel=1e-12)
    assert d["transferred"] == 3
    r.requests["kv_transfer_s"] = [0.002, 0.004, 0.006, None]  # read back from JSON: None, not sent
    assert disaggregated_summary(r, r.pools, 10.0) == d
    assert disaggregated_summary(r, r.pools, 0.0)["pools"][1]["gpu_busy_frac"] is None
    assert disaggregated_summary(r, r.pools, 0.0)["pools"][1]["mfu"] is None
    assert disaggregated_summary(r, r.pools, 0.5)["pools"][1]["mfu"] == pytest.approx(6e15 / (0.5 * 2e15 * 6))
    assert disaggregated_summary(r, r.pools, 0.5)["pools"][0]["gpu_busy_frac"] == 4.0


def test_disaggregated_summary_without_power_moments_or_transfers() -> None:
    r = two_pools()
    r.pools[1]["energy"] = {"known": False}
    r.pools[1]["kv_capacity_blocks"] = 0
    r.moments = {k: v[[0, 3]] for k, v in r.moments.items()}  # pool 1 ran nothing
    del r.requests["kv_transfer_s"]
    d = disaggregated_summary(r, r.pools, 10.0)
    dec = d["pools"][1]
    assert (dec["moments"], dec["kv_peak_frac"], dec["energy_j"], dec["avg_power_w_per_replica"],
            dec["peak_power_w_per_replica"]) == (0, None, None, None, None)
    assert d["pools"][0]["kv_peak_frac"] == 0.5
    assert d["kv_transfer_ms"] == dict.fromkeys(LATENCY_KEYS) and d["transferred"] == 0
    r.pools[1]["kv_capacity_blocks"] = 400
    assert disaggregated_summary(r, r.pools, 10.0)["pools"][1]["kv_peak_frac"] is None


def test_summary_of_two_pools_counts_both() -> None:
    s = summarize(two_pools())
    # devices 1 x 2 + 3 x 2 = 8; busy 2 + 9 = 11 s of 4 replicas x 10 s; peaks 1e15 x 2 + 2e15 x 6
    # = 1.4e16 FLOP/s, 3e12 x 2 + 4e12 x 6 = 3e13 B/s
    assert s["config"]["devices"] == 8
    assert s["gpu_busy_frac"] == pytest.approx(11 / 40, rel=1e-8)
    assert s["mfu"] == pytest.approx(8e15 / (10 * 1.4e16), rel=1e-8)
    assert s["mbu"] == pytest.approx(6e13 / (10 * 3e13), rel=1e-8)
    # KV as a share of each moment's pool: 0.3, 0.25, 0.75, 0.5, 0.5
    assert s["kv"] == {"capacity_blocks": 1, "block_size": 16, "peak_blocks": 0.75, "peak_frac": 0.75,
                       "mean_frac": None}
    assert s["disaggregated"]["transferred"] == 3 and len(s["disaggregated"]["pools"]) == 2
    assert "disaggregated" not in summarize(result(six_requests()))


def test_cache_summary_by_hand() -> None:
    sc = scenario(serving={"kv_offload": {"cpu_gb": 8.0}})
    st = {"prefix_lookups": 20, "prefix_hits": 15, "prefix_host_hits": 5, "host_capacity_blocks": 4096,
          "copied_in_blocks": 40, "stored_blocks": 12, "swapped_out_blocks": 7, "swap_fallbacks": 2, "transfer_s": 0.25}
    r = result(six_requests(), scenario=sc, cache_stats=st)
    assert cache_summary(r) == {"kv_offload": {
        "cpu_gb": 8.0, "host_capacity_blocks": 4096, "prefix_lookups": 20, "prefix_hit_rate": 0.75,  # 15 / 20
        "prefix_host_hits": 5, "host_hit_rate": 0.25, "copied_in_blocks": 40, "stored_blocks": 12,
        "swapped_out_blocks": 7, "swap_fallbacks": 2, "transfer_s": 0.25}}
    assert summarize(r)["kv_offload"]["prefix_hit_rate"] == 0.75
    # nothing looked up: no rates; missing counters are 0
    r.cache_stats = {"prefix_lookups": 0}
    assert cache_summary(r) == {"kv_offload": {
        "cpu_gb": 8.0, "host_capacity_blocks": 0, "prefix_lookups": 0, "prefix_hit_rate": None,
        "prefix_host_hits": 0, "host_hit_rate": None, "copied_in_blocks": 0, "stored_blocks": 0,
        "swapped_out_blocks": 0, "swap_fallbacks": 0, "transfer_s": 0.0}}
    r.cache_stats = {"prefix_lookups": 4}  # no hit counted: none
    k = cache_summary(r)["kv_offload"]
    assert (k["prefix_hit_rate"], k["host_hit_rate"]) == (0.0, 0.0)
    r.cache_stats = {"swapped_out_blocks": 3}  # swaps, no lookup counted
    k = cache_summary(r)["kv_offload"]
    assert (k["prefix_lookups"], k["prefix_hit_rate"], k["swapped_out_blocks"]) == (0, None, 3)
    r.cache_stats = {}
    assert cache_summary(r) == {}
    r.cache_stats, r.scenario = st, scenario()  # no CPU tier
    assert cache_summary(r) == {} and "kv_offload" not in summarize(r)
    r.scenario = None
    assert cache_summary(r) == {}


def test_energy_summary_by_hand() -> None:
    e = {"known": True, "total_j": 7.2e6, "idle_j": 2.0e6, "dynamic_j": 5.2e6, "avg_power_w": np.array([300.0, 500.0]),
         "peak_power_w": np.array([650.0, 700.0]), "idle_power_w": 100.0, "tdp_w": 700.0}
    assert energy_summary(e, 1000.0, 3600.0) == {
        "j_per_output_token": 7200.0, "total_j": 7.2e6, "idle_j": 2.0e6, "dynamic_j": 5.2e6,
        "kwh": 2.0,                      # 7.2e6 J / 3.6e6 J per kWh
        "avg_power_w": 2000.0,           # 7.2e6 J over an hour
        "avg_power_w_per_replica": 400.0, "peak_power_w_per_replica": 700.0,
        "idle_power_w_per_replica": 100.0, "tdp_w_per_replica": 700.0}
    s = energy_summary(e, 0.0, 0.0)
    assert s["j_per_output_token"] is None and s["avg_power_w"] is None
    a32 = np.array([300.1, 500.7, 411.3], dtype=np.float32)  # float32 powers: averaged in float64
    assert energy_summary({**e, "avg_power_w": a32}, 1.0, 1.0)["avg_power_w_per_replica"] == \
        sum(float(x) for x in a32) / 3
    s = energy_summary(e, 0.5, 0.5)
    assert (s["j_per_output_token"], s["avg_power_w"]) == (1.44e7, 1.44e7)
    s = energy_summary({**e, "avg_power_w": [], "peak_power_w": []}, 1.0, 1.0)
    assert s["avg_power_w_per_replica"] is None and s["peak_power_w_per_replica"] is None
    unknown = {"j_per_output_token": None, "total_j": None,
               "note": "no power figures for this hardware (hardware.device.power: tdp_w, idle_w)"}
    assert energy_summary({"known": False, "total_j": 5.0}, 1.0, 1.0) == unknown
    assert energy_summary({}, 1.0, 1.0) == unknown


def test_prefix_cache_hit_rate_by_hand() -> None:
    r = result(six_requests(), stats={"prompt_tokens_admitted": 400, "prefix_hit_tokens": 100})
    assert _prefix_cache(r) == {"hit_rate": 0.25, "hit_tokens": 100, "prompt_tokens": 400}
    r.stats = {"prefix_hit_tokens": 100}
    assert _prefix_cache(r) == {"hit_rate": None, "hit_tokens": 100, "prompt_tokens": 0}
    r.stats = {"prompt_tokens_admitted": 400}
    assert _prefix_cache(r) == {"hit_rate": 0.0, "hit_tokens": 0, "prompt_tokens": 400}
    r.stats = None  # type: ignore[assignment]
    assert _prefix_cache(r) == {"hit_rate": None, "hit_tokens": 0, "prompt_tokens": 0}


def test_config_names_what_was_simulated() -> None:
    sc = scenario(name="cfg", seed=7, serving={"stack": "vllm", "tp": 2, "pp": 2, "mode": "eager",
                                               "cuda_graph_sizes": [1, 8, 64], "max_batch_size": 96})
    r = result(six_requests(), scenario=sc, replicas=3, devices_per_replica=4, clock_ghz=1.98, peak_flops=9.9e14,
               mem_bw=4.8e12)
    sv = sc.serving
    stack = {"name": "vllm", "max_batch_size": 96, "max_batched_tokens": sv.max_batched_tokens,
             "block_size": sv.block_size, "gpu_memory_utilization": sv.gpu_memory_utilization,
             "prefix_caching": sv.prefix_caching, "async_scheduling": sv.async_scheduling,
             "num_scheduler_steps": sv.num_scheduler_steps, "guaranteed_no_evict": sv.guaranteed_no_evict,
             "cuda_graph_padding": sv.cuda_graph_padding, "graph_mixed": sv.graph_mixed,
             "overheads": sv.overheads.model_dump(), "cuda_graph_max": 64}
    assert _config(r, 12) == {"scenario": "cfg", "model": "llama-3.2-1b", "hardware": "h100-sxm",
                              "scheduler": "continuous", "tp": 2, "pp": 2, "mode": "eager", "seed": 7,
                              "replicas": 3, "devices_per_replica": 4, "devices": 12, "clock_ghz": 1.98,
                              "peak_flops": 9.9e14, "mem_bw": 4.8e12, "stack": stack}
    sv.cuda_graph_sizes = None  # every step one graph: no largest size
    assert _config(r, 12)["stack"]["cuda_graph_max"] is None
    sv.stack = None
    assert "stack" not in _config(r, 12)
    base = {"replicas": 3, "devices_per_replica": 4, "devices": 12, "clock_ghz": 1.98, "peak_flops": 9.9e14,
            "mem_bw": 4.8e12}
    r.scenario = None
    assert _config(r, 12) == base
    r.scenario = SimpleNamespace(name="not a scenario")  # no serving: only what the result says
    assert _config(r, 12) == base


# -- warnings, clean -----------------------------------------------------------------------------

def test_warnings_in_words() -> None:
    ov = {"arrival_rate": 12.345, "completion_rate": 0.5, "queue_growth": 1234.4, "arrivals": 5000}
    s = {"requests": {"arrived": 5002, "completed": 4000, "reject_reasons": {R_QUEUE: 1500, "other": 2}},
         "overloaded": True, "overload": ov}
    assert metrics.warnings(s) == [
        "overloaded: arrivals (12.3 req/s) outran completions (0.5 req/s) in the second half of the arrivals "
        "and the queue grew by 1,234 of 5,000 arrivals; latency grows with the run's length, the percentiles "
        "are not a steady state",
        f"1,500 of 5,002 requests rejected: {R_QUEUE} ({metrics.REJECT_ADVICE[R_QUEUE]})",
        "2 of 5,002 requests rejected: other"]
    s = {"requests": {"arrived": 1200, "completed": 0, "reject_reasons": {R_KV: 1199, "other": 1}},
         "overloaded": True, "overload": ov}
    assert metrics.warnings(s) == [f"no request completed: all 1,200 were rejected: 1,199 {R_KV} "
                                   f"({metrics.REJECT_ADVICE[R_KV]}); 1 other"]
    s = {"requests": {"arrived": 1, "completed": 1, "reject_reasons": {}}, "overloaded": False, "overload": ov}
    assert metrics.warnings(s) == []


def test_numbers_shares_and_moments_of_nothing() -> None:
    assert [metrics.num(x) for x in (100.0, 99.5, 10.0, 9.995, 1.0, 0.9995)] == ["100", "99.5", "10.0", "9.99",
                                                                                  "1.00", "1"]
    assert shares({"a": 0.0, "b": -1.0}) == {"a": 0.0, "b": 0.0} and shares({"a": 2.0, "b": 2.0}) == {"a": 0.5, "b": 0.5}
    assert moment_stats(np.zeros(0), clock_ghz=2.0) == {"mean": None, "std": None, "p50": None, "p99": None, "count": 0,
                                                        "mean_cycles": None, "p50_cycles": None}
    s = moment_stats(np.array([0.25e-3, 0.75e-3]), clock_ghz=2.0)  # 0.25 and 0.75 ms at 2e6 cycles a ms
    assert (s["mean_cycles"], s["p50_cycles"]) == (pytest.approx(1e6, rel=1e-12), pytest.approx(1e6, rel=1e-12))
    assert s["p99"] == pytest.approx(0.25 + 0.99 * 0.5, rel=1e-12)  # not the largest


def test_clean_makes_json() -> None:
    x = {1: [np.float64(0.1) * 3, np.int32(7), np.bool_(True), True, nan],
         "a": (np.array([1.5, np.inf]), None, "s")}
    assert clean(x) == {"1": [0.3, 7, True, True, None], "a": [[1.5, None], None, "s"]}
    assert type(clean(np.int64(3))) is int and type(clean(np.bool_(False))) is bool
    assert clean(1 / 3) == 0.333333333  # 9 significant digits


# -- the whole summary ---------------------------------------------------------------------------

SUMMARY_KEYS = {"requests", "makespan_s", "output_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms", "e2e_ms",
                "itl_ms", "moment_ms", "breakdown_share", "overloaded", "energy_j_per_token", "latency_of",
                "overload", "warnings", "moments_by_kind", "breakdown_share_by_kind", "mfu", "mbu", "gpu_busy_frac",
                "host_busy_frac", "kv", "ttft_split_ms", "prefix_cache", "preemptions", "goodput", "queue",
                "output_tokens", "config", "energy"}


def busy_run() -> SimResult:
    """six_requests on 2 replicas of pp 2 (4 devices each) in 8 s. Moments (ms, replica/engine):
    prefill 125, decodes 62.5 and 62.5 (0/0); mixed 250 and decode 250 (1/0) around a prefill 125
    (0/1); r0 and r2 were preempted once and twice; 1,000 recomputed tokens worth 1e14 FLOPs;
    energy known."""
    q = six_requests()
    q["preemptions"] = np.array([1, 0, 2, 0, 0, 0])
    q["replica"] = np.array([0, 0, 1, 1, -1, 0])
    m = {"start_s": np.array([1.0, 1.125, 1.1875, 3.0, 3.0625, 3.25]),
         "dur_s": np.array([0.125, 0.0625, 0.0625, 0.25, 0.125, 0.25]),
         "replica": np.array([0, 0, 0, 1, 0, 1]), "engine": np.array([0, 0, 0, 0, 1, 0]),
         "kind": np.array([0, 1, 1, 2, 0, 1]), "kv_blocks_used": np.array([10, 12, 12, 60, 30, 50]),
         "decodes": np.array([0, 1, 1, 1, 0, 1]), "firsts": np.array([1, 0, 0, 0, 1, 0]),
         "held": np.zeros(6, dtype=bool)}
    ts = {"t_s": np.arange(8.0), "queue_len": np.array([0.0, 1, 1, 2, 0, 0, 0, 0]),
          "running": np.array([0.0, 1, 1, 1, 1, 0, 1, 0]), "outstanding": np.array([0.0, 2, 2, 3, 1, 0, 1, 0]),
          "kv_used_frac": np.array([0.0, 0.1, 0.1, 0.3, 0.1, 0, 0.1, 0])}
    energy = {"known": True, "total_j": 4000.0, "idle_j": 1000.0, "dynamic_j": 3000.0,
              "avg_power_w": np.array([200.0, 300.0]), "peak_power_w": np.array([500.0, 400.0]),
              "idle_power_w": 60.0, "tdp_w": 700.0}
    return result(q, m, timeseries=ts, replicas=2, devices_per_replica=4, pp=2, clock_ghz=2.0, peak_flops=1e15,
                  mem_bw=2e12, total_flops=3.3e15, total_bytes=1.6e14, host_busy_s=0.5, recomputed_tokens=1000,
                  recomputed_flops=1e14, energy=energy, reject_reasons={R_KV: 1, "aborted": 1},
                  category_s={"prefill": {"attention": 0.5, "ffn": 0.25, "host": -0.25},
                              "decode": {"attention": 0.0625, "ffn": 0.0625}},
                  stats={"prompt_tokens_admitted": 300, "prefix_hit_tokens": 60, "request_out_s": 0.0})


def test_summary_by_hand() -> None:
    s = summarize(busy_run())
    assert set(s) == SUMMARY_KEYS
    assert s["requests"] == {"arrived": 6, "completed": 4, "rejected": 2,
                             "reject_reasons": {R_KV: 1, "aborted": 1}}
    assert s["makespan_s"] == 8.0
    assert s["output_tokens"] == 5 + 1 + 2 + 1 and s["output_tokens_per_s"] == 9 / 8 and s["requests_per_s"] == 0.5
    # per_request's numbers: TTFT 250 500 125 250 500 (r5's first token counts), E2E of the four completed
    assert s["ttft_ms"] == {"mean": 325.0, "p50": 250.0, "p90": 500.0, "p99": 500.0}
    assert s["tpot_ms"] == {"mean": 250.0, "p50": 250.0, "p90": 250.0, "p99": 250.0}
    assert s["e2e_ms"]["mean"] == (1250 + 500 + 375 + 500) / 4
    assert s["latency_of"] == {"requests": "completed", "count": 4}
    # replica 0 engine 0: a first token at 1.125 (the prefill), tokens at 1.1875 and 1.25: 62.5 ms
    # twice; replica 1 engine 0: one sequence at 3.25 and 3.5: 250 ms (engine 1 of replica 0, whose
    # prefill at 3.1875 comes between them, is another engine: 0 x 2 + 1, not 1 x 2 + 0)
    assert s["itl_ms"] == {"mean": 125.0, "p50": 62.5, "p90": 250.0, "p99": 250.0}
    # moments 125, 62.5, 62.5, 250, 125, 250: sorted 62.5 62.5 125 125 250 250
    ms = [125, 62.5, 62.5, 250, 125, 250]
    assert s["moment_ms"] == pytest.approx({"mean": 875 / 6, "std": math.sqrt(sum((x - 875 / 6) ** 2 for x in ms) / 6),
                                            "p50": 125, "p99": 250, "count": 6}, rel=1e-8)
    k = s["moments_by_kind"]  # with prefill: 125, 250, 125; decode: 62.5, 62.5, 250
    assert (k["prefill"]["count"], k["prefill"]["mean"], k["prefill"]["mean_cycles"]) == \
        (3, pytest.approx(500 / 3), pytest.approx(500 / 3 * 2e6))  # 2 GHz: 2e6 cycles a ms
    assert (k["decode"]["count"], k["decode"]["p50"], k["decode"]["p50_cycles"], k["mixed_count"]) == \
        (3, 62.5, 1.25e8, 1)
    # categories: attention 0.5625, ffn 0.3125, host 0 (negative seconds are none): of 0.875
    assert s["breakdown_share"] == pytest.approx({"attention": 9 / 14, "ffn": 5 / 14, "host": 0.0}, rel=1e-8)
    assert s["breakdown_share_by_kind"] == {"prefill": pytest.approx({"attention": 2 / 3, "ffn": 1 / 3, "host": 0.0}),
                                            "decode": {"attention": 0.5, "ffn": 0.5}}
    # 8 devices; useful FLOPs 3.3e15 - 1e14 of 8 s x 8e15; bytes 1.6e14 of 8 s x 1.6e13; busy: the
    # moments' 0.875 s over pp 2 of 2 replicas x 8 s; host 0.5 s of 16
    assert s["mfu"] == pytest.approx(3.2e15 / 6.4e16, rel=1e-8) and s["mbu"] == pytest.approx(1.6e14 / 1.28e14)
    assert s["gpu_busy_frac"] == 0.4375 / 16 and s["host_busy_frac"] == 0.5 / 16
    assert s["kv"] == {"capacity_blocks": 100, "block_size": 16, "peak_blocks": 60.0, "peak_frac": 0.6,
                       "mean_frac": pytest.approx(0.0875)}
    assert s["preemptions"] == {"total": 3, "requests": 2, "recomputed_tokens": 1000}
    assert s["prefix_cache"] == {"hit_rate": 0.2, "hit_tokens": 60, "prompt_tokens": 300}
    assert s["queue"] == {"mean_len": 0.5, "max_len": 2.0, "mean_running": 0.625, "max_running": 1.0,
                          "mean_outstanding": 1.125, "max_outstanding": 3.0}
    assert s["goodput"] == {"requests_per_s": 0.5, "fraction": pytest.approx(4 / 6), "requests": 4, "slo": {},
                            "p99_ttft_ok": None, "p99_tpot_ok": None}
    assert s["energy"]["j_per_output_token"] == pytest.approx(4000 / 9) and s["energy_j_per_token"] == \
        s["energy"]["j_per_output_token"]
    assert s["energy"]["avg_power_w"] == 500.0 and s["energy"]["peak_power_w_per_replica"] == 500.0
    assert s["config"]["devices"] == 8 and s["config"]["replicas"] == 2 and s["config"]["model"] == "llama-3.2-1b"
    # arrivals in (3.5, 6]: r3, r4 (rejected unrouted: not offered), r5 (aborted on replica 0: dropped)
    assert s["overloaded"] is False and (s["overload"]["arrivals"], s["overload"]["queue_growth"]) == (2, 1.0)
    assert s["warnings"] == [f"1 of 6 requests rejected: {R_KV} ({metrics.REJECT_ADVICE[R_KV]})",
                             "1 of 6 requests rejected: aborted"]
    assert s["ttft_split_ms"]["overheads"]["mean"] == 0.0
    r = busy_run()
    r.kv_capacity_blocks = 0  # unknown: no share
    assert summarize(r)["kv"] == {"capacity_blocks": 0, "block_size": 16, "peak_blocks": 60.0, "peak_frac": None,
                                  "mean_frac": pytest.approx(0.0875)}


def test_summary_of_an_overloaded_run_and_of_nothing() -> None:
    s = summarize(overload_run({7: -1, 8: 0}, [9, 9, 9, 9, 9, 1, 2, 2, 4, 6, 0], {0: 1.5, 2: 6.0, 3: 10.0}))
    assert s["overloaded"] is True and "overloaded" not in s["overload"] and s["overload"]["arrivals"] == 4
    assert s["warnings"][0].startswith("overloaded: arrivals (0.8 req/s)")
    r = result(requests([], [], [], [], []), makespan_s=0.0)
    with warnings.catch_warnings():  # nothing to average: no mean of an empty array behind the nulls
        warnings.simplefilter("error", RuntimeWarning)
        s = summarize(r)
    assert set(s) == SUMMARY_KEYS
    assert (s["output_tokens_per_s"], s["requests_per_s"], s["mfu"], s["mbu"], s["gpu_busy_frac"],
            s["host_busy_frac"]) == (None, None, None, None, None, None)  # NaN per second: null
    assert s["kv"] == {"capacity_blocks": 100, "block_size": 16, "peak_blocks": 0.0, "peak_frac": None,
                       "mean_frac": None}
    assert s["moments_by_kind"]["prefill"]["mean_cycles"] is None and s["itl_ms"] == dict.fromkeys(LATENCY_KEYS)
    assert s["warnings"] == ["no request completed: all 0 were rejected: "]


def test_summary_of_a_run_in_half_a_second() -> None:
    """Rates over a makespan below 1 s: 4 completions of 9 tokens in 0.5 s."""
    r = busy_run()
    r.makespan_s = 0.5
    s = summarize(r)
    assert (s["requests_per_s"], s["output_tokens_per_s"]) == (8.0, 18.0)
    assert s["gpu_busy_frac"] == 0.4375 and s["host_busy_frac"] == 0.5  # 0.4375 and 0.5 s of 2 x 0.5 s
    assert s["mfu"] == pytest.approx(3.2e15 / (0.5 * 8e15)) and s["mbu"] == pytest.approx(1.6e14 / (0.5 * 1.6e13))


def test_summary_of_a_bare_result() -> None:
    """Summaries work on any object with a result's required fields (no scenario, stats, pools, pp,
    energy, classes or cache counters): pp 1, no recomputed FLOPs, no SLO, no power figures."""
    full = busy_run()
    bare = SimpleNamespace(**{k: getattr(full, k) for k in (
        "requests", "reject_reasons", "moments", "category_s", "timeseries", "makespan_s", "kv_capacity_blocks",
        "block_size", "replicas", "devices_per_replica", "clock_ghz", "peak_flops", "mem_bw", "total_bytes",
        "host_busy_s", "recomputed_tokens")}, total_flops=3.0)
    bare.moments = {**full.moments, "engine": np.zeros(6, dtype=int)}  # pp 1: one engine a replica
    bare.requests = {**full.requests, "class": np.array([0, 0, 1, 1, 1, 0]), "priority": np.array([0, 0, 1, 1, 1, 0])}
    s = summarize(bare)  # type: ignore[arg-type]
    assert s["gpu_busy_frac"] == 0.875 / 16  # 0.875 s of moments on 2 replicas x 8 s, pp 1
    assert s["mfu"] == pytest.approx(3.0 / 6.4e16, rel=1e-8, abs=0)  # 3 FLOPs, none recomputed
    assert s["goodput"]["slo"] == {} and s["goodput"]["requests"] == 4
    assert s["prefix_cache"] == {"hit_rate": None, "hit_tokens": 0, "prompt_tokens": 0}
    assert s["energy_j_per_token"] is None and s["energy"]["total_j"] is None
    assert s["config"] == {"replicas": 2, "devices_per_replica": 4, "devices": 8, "clock_ghz": 2.0,
                           "peak_flops": 1e15, "mem_bw": 2e12}
    assert s["classes"] == {} and "kv_offload" not in s  # a class column, but no names for it
    assert s["ttft_split_ms"]["overheads"]["mean"] == 0.0
    assert s["itl_ms"]["mean"] == 125.0
