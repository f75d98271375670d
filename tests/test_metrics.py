"""summarize() on a hand-built run whose every number was worked out by hand (below), and the
outputs written from it (CSV cells, trace events, plots) checked against the same numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.reports.metrics import (
    _within,
    clean,
    latency_stats,
    moment_stats,
    num,
    per_request,
    shares,
    summarize,
    ttft_split,
)
from simulator.reports.progress import Progress
from simulator.serving.result import SimResult
from simulator.serving.scenario import scenario_from_dict

nan = math.nan


def fake_result() -> SimResult:
    """Four requests on one replica of two devices, a 5 s run:

    r0 arrives 0.0, first token 0.1, finishes 1.1, 11 tokens: TTFT 100, TPOT 1000/10 = 100, E2E 1100 ms
    r1 arrives 0.5, first token 0.8, finishes 4.8, 21 tokens: TTFT 300, TPOT 4000/20 = 200, E2E 4300 ms
    r2 arrives 1.0, first token 1.2, finishes 1.2,  1 token:  TTFT 200, no TPOT,            E2E  200 ms
    r3 arrives 2.0, rejected (kv_too_long).
    Moments 100 (prefill), 20, 20 (decode), 60 (mixed) ms.
    """
    sc = scenario_from_dict({"model": "llama-3.2-1b", "hardware": "h100-sxm",
                             "slo": {"ttft_ms": 250, "tpot_ms": 150, "p99_ttft_ms": 200, "p99_tpot_ms": 250}},
                            "test")
    return SimResult(
        requests={
            "arrival_s": np.array([0.0, 0.5, 1.0, 2.0]),
            "prompt_len": np.array([100, 200, 50, 9000]),
            "output_len": np.array([11, 21, 1, 5]),
            "first_token_s": np.array([0.1, 0.8, 1.2, nan]),
            "finish_s": np.array([1.1, 4.8, 1.2, nan]),
            "replica": np.array([0, 0, 0, -1]),
            "status": np.array([0, 0, 0, 1]),
            "preemptions": np.array([0, 2, 0, 0]),
        },
        reject_reasons={"kv_too_long": 1},
        moments={
            "start_s": np.array([0.0, 0.5, 1.0, 2.0]),
            "dur_s": np.array([0.1, 0.02, 0.02, 0.06]),
            "replica": np.array([0, 0, 0, 0]),
            "kind": np.array([0, 1, 1, 2]),
            "tokens": np.array([100, 1, 2, 52]),
            "batch": np.array([1, 1, 2, 3]),
            "kv_blocks_used": np.array([10, 30, 25, 40]),
        },
        category_s={"prefill": {"attention": 0.04, "ffn_up": 0.08, "host": 0.04},
                    "decode": {"attention": 0.02, "ffn_up": 0.01, "host": 0.01}},
        timeseries={"t_s": np.arange(5.0), "queue_len": np.array([0, 1, 2, 1, 0]),
                    "running": np.array([1, 2, 1, 1, 0]), "kv_used_frac": np.array([0.1, 0.3, 0.2, 0.2, 0.0]),
                    "busy_frac": np.array([1.0, 0.5, 0.2, 0.1, 0.0]), "outstanding": np.array([1, 3, 3, 2, 0])},
        makespan_s=5.0, kv_capacity_blocks=100, block_size=16, replicas=1, devices_per_replica=2,
        clock_ghz=2.0, peak_flops=1e15, mem_bw=2e12, total_flops=1e15, total_bytes=4e12, host_busy_s=0.5,
        scenario=sc,
    )


@pytest.fixture
def summary() -> dict[str, Any]:
    return summarize(fake_result())


def test_contract_keys(summary: dict[str, Any]) -> None:
    for k in ("requests", "makespan_s", "output_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms",
              "e2e_ms", "moment_ms", "breakdown_share"):
        assert k in summary
    assert set(summary["requests"]) >= {"arrived", "completed", "rejected"}
    for k in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert set(summary[k]) == {"mean", "p50", "p90", "p99"}
    assert set(summary["moment_ms"]) == {"mean", "std", "p50", "p99", "count"}
    json.dumps(summary, allow_nan=False)  # JSON-safe


def test_requests_and_throughput(summary: dict[str, Any]) -> None:
    assert summary["requests"] == {"arrived": 4, "completed": 3, "rejected": 1,
                                   "reject_reasons": {"kv_too_long": 1}}
    assert summary["makespan_s"] == 5.0
    assert summary["output_tokens_per_s"] == pytest.approx((11 + 21 + 1) / 5)
    assert summary["requests_per_s"] == pytest.approx(3 / 5)


def test_latencies(summary: dict[str, Any]) -> None:
    t = summary["ttft_ms"]  # 100, 300, 200
    assert t["mean"] == pytest.approx(200)
    assert t["p50"] == pytest.approx(200)
    assert t["p90"] == pytest.approx(280)  # linear: 200 + 0.8 * 100
    assert t["p99"] == pytest.approx(298)
    p = summary["tpot_ms"]  # 100, 200 (r2 has one token: no TPOT)
    assert p["mean"] == pytest.approx(150)
    assert p["p50"] == pytest.approx(150)
    e = summary["e2e_ms"]  # 1100, 4300, 200
    assert e["mean"] == pytest.approx(5600 / 3)
    assert e["p50"] == pytest.approx(1100)


def test_moments(summary: dict[str, Any]) -> None:
    m = summary["moment_ms"]  # 100, 20, 20, 60
    assert m["count"] == 4
    assert m["mean"] == pytest.approx(50)
    assert m["std"] == pytest.approx(math.sqrt((50**2 + 30**2 + 30**2 + 10**2) / 4))
    assert m["p50"] == pytest.approx(40)
    k = summary["moments_by_kind"]
    assert k["prefill"]["count"] == 2 and k["prefill"]["mean"] == pytest.approx(80)  # 100 and mixed 60
    assert k["decode"]["count"] == 2 and k["decode"]["mean"] == pytest.approx(20)
    assert k["mixed_count"] == 1
    assert k["prefill"]["mean_cycles"] == pytest.approx(0.080 * 2e9)  # 2 GHz
    assert k["decode"]["p50_cycles"] == pytest.approx(0.020 * 2e9)


def test_breakdown_and_utilisation(summary: dict[str, Any]) -> None:
    b = summary["breakdown_share"]
    assert sum(b.values()) == pytest.approx(1.0)
    assert b == pytest.approx({"attention": 0.06 / 0.2, "ffn_up": 0.09 / 0.2, "host": 0.05 / 0.2})
    for part in ("prefill", "decode"):
        assert sum(summary["breakdown_share_by_kind"][part].values()) == pytest.approx(1.0)
    assert summary["breakdown_share_by_kind"]["decode"]["attention"] == pytest.approx(0.5)
    assert summary["mfu"] == pytest.approx(1e15 / (5 * 1e15 * 2))  # 2 devices
    assert summary["mbu"] == pytest.approx(4e12 / (5 * 2e12 * 2))
    assert summary["gpu_busy_frac"] == pytest.approx(0.2 / 5)
    assert summary["host_busy_frac"] == pytest.approx(0.5 / 5)
    assert summary["kv"]["peak_frac"] == pytest.approx(0.4)
    assert summary["kv"]["mean_frac"] == pytest.approx(0.16)
    assert summary["preemptions"] == {"total": 2, "requests": 1, "recomputed_tokens": 0}
    assert summary["queue"]["mean_len"] == pytest.approx(0.8)
    assert summary["queue"]["max_len"] == 2


def test_goodput(summary: dict[str, Any]) -> None:
    g = summary["goodput"]
    # ttft <= 250 and tpot <= 150: r0 yes, r1 no (TTFT 300), r2 yes (no TPOT), r3 rejected
    assert g["requests"] == 2
    assert g["fraction"] == pytest.approx(0.5)
    assert g["requests_per_s"] == pytest.approx(2 / 5)
    assert g["p99_ttft_ok"] is False  # p99 TTFT 298 > 200
    assert g["p99_tpot_ok"] is True  # p99 TPOT 199 <= 250


def test_empty_run_is_null_not_nan() -> None:
    r = fake_result()
    r.requests["status"][:] = 1
    r.requests["first_token_s"][:] = nan
    r.requests["finish_s"][:] = nan
    for k in r.moments:
        r.moments[k] = r.moments[k][:0]
    r.category_s = {"prefill": {}, "decode": {}}
    s = summarize(r)
    assert s["ttft_ms"]["mean"] is None and s["moment_ms"]["count"] == 0
    assert s["moments_by_kind"]["decode"]["mean_cycles"] is None
    assert s["output_tokens_per_s"] == 0
    json.dumps(s, allow_nan=False)


def test_clean() -> None:
    assert clean({"a": np.float32(1.5), "b": np.int64(3), "c": [nan, np.inf], 1: np.bool_(True)}) == \
        {"a": 1.5, "b": 3, "c": [None, None], "1": True}
    assert latency_stats(np.array([nan])) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_outputs_from_fake(tmp_path: Path) -> None:
    from simulator.reports.run import write_outputs

    r = fake_result()
    out = write_outputs(r, summarize(r), tmp_path)
    assert out["notes"] == []
    rows = list(csv.DictReader(open(tmp_path / "requests.csv")))
    assert [row["ttft_ms"] for row in rows] == ["100.0000", "300.0000", "200.0000", ""]
    assert rows[2]["tpot_ms"] == "" and rows[1]["tpot_ms"] == "200.0000"
    assert rows[3]["status"] == "rejected" and rows[3]["first_token_s"] == ""
    mom = list(csv.DictReader(open(tmp_path / "moments.csv")))
    assert [m["kind"] for m in mom] == ["prefill", "decode", "decode", "mixed"]
    assert mom[0]["dur_ms"] == "100.0000"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["requests"]["completed"] == 3
    tr = json.loads((tmp_path / "trace.json").read_text())
    xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in xs] == ["prefill", "decode", "decode", "mixed"]
    assert xs[0]["ts"] == 0 and xs[0]["dur"] == pytest.approx(100_000)  # microseconds
    assert xs[3]["args"] == {"tokens": 52, "batch": 3, "kv_blocks": 40}
    assert any(e["ph"] == "C" for e in tr["traceEvents"])
    for name in ("latency_cdf.png", "timeline.png", "moment_hist.png", "breakdown.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_csv_cap_and_trace_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simulator.reports.run as run
    from simulator.reports.trace import trace_events

    r = fake_result()
    monkeypatch.setattr(run, "MAX_CSV_ROWS", 2)
    # the plots do not depend on the cap: test_outputs_from_fake draws them for this same result
    monkeypatch.setattr("simulator.reports.plots.write_plots", lambda r, out: [])
    out = run.write_outputs(r, summarize(r), tmp_path)
    assert out["moments_csv_rows"] == 2 and "first 2 of 4" in out["notes"][0]
    assert len((tmp_path / "moments.csv").read_text().splitlines()) == 3
    tr = trace_events(r, max_events=12)
    assert tr["otherData"]["truncated"] is True
    assert len(tr["traceEvents"]) <= 12
    xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert xs and xs[0]["ts"] == 0  # the first moments are kept


def test_throughput_curve_integrates_to_tokens() -> None:
    from simulator.reports.plots import output_rate

    r = fake_result()
    edges = np.linspace(0, 5, 11)
    rate = output_rate(r, edges)
    assert float((rate * np.diff(edges)).sum()) == pytest.approx(33)  # every output token once
    # bin [0.5, 1.0): r0 emits 10 tokens over (0.1, 1.1] (10/s); r1 emits 20 over (0.8, 4.8]
    # (5/s for 0.2 s = 1 token) and its first token at 0.8: 5 + 1 + 1 tokens in 0.5 s
    assert rate[1] == pytest.approx(14)


def test_progress_line() -> None:
    import io

    s = io.StringIO()
    p = Progress(stream=s, enabled=True, interval=0.0)
    p(0.5)
    assert "50.0%" in s.getvalue() and "ETA" in s.getvalue()
    p.close()
    q = Progress(stream=io.StringIO())  # not a tty: draws nothing
    q(0.3)
    assert q.stream.getvalue() == ""


def test_weighted_stats_are_the_pooled_samples() -> None:
    from simulator.reports.metrics import weighted_stats

    s = weighted_stats(np.array([3.0, 1.0, 2.0]), np.array([2, 1, 1]))  # pooled: 1, 2, 3, 3
    assert (s["mean"], s["p50"], s["p90"], s["p99"]) == (2.25, 2.0, 3.0, 3.0)
    assert weighted_stats(np.zeros(0), np.zeros(0))["mean"] is None


def test_itl_from_a_hand_built_moment_log() -> None:
    """One engine: a prefill-only moment ends two prompts at 0.10, a decode of both ends at 0.12,
    another prefill ends one prompt at 0.20, a decode of all three ends at 0.23, then a multi-step
    block of two decodes streams at 0.29 (its first step, ending 0.26, holds its tokens).
    Gaps: the first decode's two sequences waited 0.02 since their first token; at 0.23 the two
    older ones waited 0.11 (the prefill stall in it) and the new one 0.03; at 0.29 all three 0.06."""
    from simulator.reports.metrics import itl_samples, weighted_stats

    m = {"start_s": np.array([0.0, 0.10, 0.12, 0.20, 0.23, 0.26]),
         "dur_s": np.array([0.10, 0.02, 0.08, 0.03, 0.03, 0.03]),
         "replica": np.zeros(6, dtype=int), "engine": np.zeros(6, dtype=int),
         "decodes": np.array([0, 2, 0, 3, 3, 3]), "firsts": np.array([2, 0, 1, 0, 0, 0]),
         "held": np.array([False, False, False, False, True, False])}
    gaps, weights = itl_samples(m)
    pooled = np.sort(np.repeat(gaps, weights.astype(int)))
    np.testing.assert_allclose(pooled, [0.02, 0.02, 0.03, 0.06, 0.06, 0.06, 0.11, 0.11], atol=1e-12)
    s = weighted_stats(gaps * 1e3, weights)
    assert s["mean"] == pytest.approx(58.75) and s["p50"] == pytest.approx(60.0)


def test_prefix_cache_hit_rate_counts_the_shared_tokens() -> None:
    """20 requests, one after another, each a 256-token shared prefix + 44 tokens of its own: the
    first computes the prefix, the 19 others find it: 19 x 256 of 20 x 300 prompt tokens."""
    from simulator.serving.engine import simulate

    sc = scenario_from_dict({"model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 0,
                             "serving": {"scheduler": "chunked", "prefix_caching": True},
                             "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate": 2.0},
                                          "prompt_len": {"dist": "fixed", "value": 300},
                                          "output_len": {"dist": "fixed", "value": 4},
                                          "prefix": {"groups": 1, "length": 256}}}, "test")
    s = summarize(simulate(sc))
    assert s["prefix_cache"] == {"hit_rate": pytest.approx(19 * 256 / (20 * 300)), "hit_tokens": 19 * 256,
                                 "prompt_tokens": 20 * 300}
    assert "itl_ms" in s and s["itl_ms"]["p50"] > 0 and s["ttft_split_ms"]["queue"]["mean"] >= 0


def test_numbers_for_people_change_format_exactly_at_1_10_and_100() -> None:
    assert [num(x) for x in (1234.5, 100.0, 100.4, 99.96)] == ["1,234", "100", "100", "100.0"]
    assert [num(x) for x in (10.0, 10.44, 9.994)] == ["10.0", "10.4", "9.99"]
    assert [num(x) for x in (1.0, 1.5, 0.1234, -250.0)] == ["1.00", "1.50", "0.123", "-250"]


def test_moment_stats_by_hand() -> None:
    """1..100 ms: mean 50.5, p50 50.5, p99 99.01 (linear interpolation between 99 and 100), and
    at a 1 GHz clock a millisecond is 1e6 cycles."""
    s = moment_stats(np.arange(1, 101) * 1e-3, clock_ghz=1.0)
    assert (s["mean"], s["p50"], s["p99"], s["count"]) == (pytest.approx(50.5, rel=1e-12),
                                                           pytest.approx(50.5, rel=1e-12),
                                                           pytest.approx(99.01, rel=1e-12), 100)
    assert s["std"] == pytest.approx(math.sqrt((100**2 - 1) / 12), rel=1e-12)
    assert s["mean_cycles"] == pytest.approx(50.5e6, rel=1e-12) and s["p50_cycles"] == pytest.approx(50.5e6, rel=1e-12)
    assert moment_stats(np.zeros(0)) == {"mean": None, "std": None, "p50": None, "p99": None, "count": 0}


def test_shares_of_nothing_are_zero_and_negative_seconds_count_as_none() -> None:
    assert shares({"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}
    assert shares({"a": 3.0, "b": 1.0, "c": -1.0}) == {"a": 0.75, "b": 0.25, "c": 0.0}


def test_tpot_of_two_tokens_and_an_slo_met_exactly() -> None:
    """Output 2: one gap, TPOT = finish - first. A request whose latency equals its bound meets it."""
    r = fake_result()
    q = r.requests
    q["output_len"][0], q["first_token_s"][0], q["finish_s"][0] = 2, q["arrival_s"][0] + 0.1, q["arrival_s"][0] + 0.35
    lat = per_request(r)
    assert lat["tpot_ms"][0] == pytest.approx(250.0, rel=1e-9)
    assert _within(lat, {"tpot_ms": float(lat["tpot_ms"][0]), "ttft_ms": None})[0]
    assert not _within(lat, {"tpot_ms": float(lat["tpot_ms"][0]) * (1 - 1e-9), "ttft_ms": None})[0]


def test_ttft_split_by_hand() -> None:
    """The fake's three completed requests with a front end: each reaches the engine 5 ms after
    arriving, its prefill starts 20, 100 and 50 ms later, and every token reaches the client
    2 ms after the engine made it (first_token_s includes it): TTFT 100, 300, 200 ms split into
    queue 20/100/50, overheads 7 each, prefill the rest, 73/193/143."""
    r = fake_result()
    q = r.requests
    q["reached_s"] = q["arrival_s"] + 0.005
    q["started_s"] = q["reached_s"] + np.array([0.02, 0.1, 0.05, nan])
    r.stats = {"request_out_s": 0.002}
    s = ttft_split(r)
    assert s["queue"]["mean"] == pytest.approx((20 + 100 + 50) / 3, rel=1e-9)
    assert s["overheads"]["mean"] == pytest.approx(7.0, rel=1e-9) and s["overheads"]["p99"] == pytest.approx(7.0)
    assert s["prefill"]["mean"] == pytest.approx((73 + 193 + 143) / 3, rel=1e-9)
    assert s["prefill"]["p50"] == pytest.approx(143.0, rel=1e-9)


def test_queue_block_is_the_time_series_means_and_maxima(summary: dict[str, Any]) -> None:
    # queue_len 0 1 2 1 0, running 1 2 1 1 0, outstanding 1 3 3 2 0 (the fake's time series)
    assert summary["queue"] == {"mean_len": pytest.approx(0.8), "max_len": 2.0, "mean_running": pytest.approx(1.0),
                                "max_running": 2.0, "mean_outstanding": pytest.approx(1.8), "max_outstanding": 3.0}


def test_goodput_names_its_bounds_and_a_p99_at_its_bound_holds(summary: dict[str, Any]) -> None:
    assert summary["goodput"]["slo"] == {"ttft_ms": 250, "tpot_ms": 150}
    r = fake_result()
    ttft = per_request(r)["ttft_ms"]
    r.scenario.slo.p99_ttft_ms = float(np.percentile(ttft[np.isfinite(ttft)], 99))  # ~298 ms, to the bit
    assert summarize(r)["goodput"]["p99_ttft_ok"] is True
