"""Overload is never shown as a normal result.

A static scheduler with max_batch_size 1 and fixed lengths makes a replica an M/D/1 queue with
service time S (tests/test_queueing.py). Above capacity (rho = rate x S > 1) the server is busy
all the time, so over the second half of the arrivals it completes exactly 1/S requests per
second while about rho/S arrive: the waiting queue grows by (1 - 1/rho) of the arrivals there.
Below capacity it does not grow at all. `metrics.overload` must say which, and the summary,
the JSON and the exit code must not let an overloaded or empty run pass as a normal one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_queueing import md1

from simulator.cli import main
from simulator.reports.metrics import OVERLOAD_GROWTH, OVERLOAD_SIGMAS, summarize
from simulator.reports.run import format_summary
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario


@settings(max_examples=12, deadline=None)
@given(rho=st.floats(0.05, 0.8), seed=st.integers(0, 10_000))
def test_a_stable_md1_queue_is_not_overloaded(rho: float, seed: int) -> None:
    r, _, _ = md1(rho, 1000, seed)
    s = summarize(r)
    assert s["overloaded"] is False
    assert s["warnings"] == []
    assert abs(s["overload"]["queue_growth"]) < s["overload"]["threshold"]


@settings(max_examples=12, deadline=None)
@given(rho=st.floats(1.25, 4.0), seed=st.integers(0, 10_000))
def test_an_md1_queue_above_capacity_is_overloaded(rho: float, seed: int) -> None:
    r, _, _ = md1(rho, 1000, seed)
    s = summarize(r)
    assert s["overloaded"] is True
    assert s["warnings"][0].startswith("overloaded")


@pytest.mark.parametrize("rho", [1.3, 2.0])
def test_overloaded_queue_grows_as_the_closed_form_says(rho: float) -> None:
    r, _, S = md1(rho, 4000, seed=5)
    ov = summarize(r)["overload"]
    a = ov["arrivals"]
    # the busy server completes 1/S per second (+- one request over the window)
    span = ov["window_s"][1] - ov["window_s"][0]
    assert ov["completion_rate"] == pytest.approx(1 / S, abs=1.5 / span)
    # the queue grows by arrivals - completions = (1 - 1/rho_hat) of the window's arrivals, where
    # rho_hat is the window's own arrival rate times S; the slope's noise is of order sqrt(a)
    rho_hat = ov["arrival_rate"] * S
    assert rho_hat == pytest.approx(rho, rel=4 / math.sqrt(a))
    assert ov["queue_growth"] == pytest.approx((1 - 1 / rho_hat) * a, abs=3 * math.sqrt(a))


def test_at_rho_half_and_1_3_as_the_issue_asks() -> None:
    assert summarize(md1(0.5, 1000, 1)[0])["overloaded"] is False
    assert summarize(md1(1.3, 1000, 1)[0])["overloaded"] is True


def test_the_threshold_is_the_larger_of_a_share_and_the_chance_wander() -> None:
    ov = summarize(md1(0.5, 1000, 2)[0])["overload"]
    a = ov["arrivals"]
    assert ov["threshold"] == pytest.approx(max(OVERLOAD_GROWTH * a, OVERLOAD_SIGMAS * math.sqrt(a)))


def scenario(**serving) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": "l4", "seed": 4,
        "serving": {"scheduler": "continuous", "max_batch_size": 8, **serving},
        "workload": {"num_requests": 1000, "arrival": {"process": "poisson", "rate": 200.0},
                     "prompt_len": {"dist": "fixed", "value": 128}, "output_len": {"dist": "fixed", "value": 32}}})


def test_a_full_queue_that_turns_requests_away_is_overload_too() -> None:
    # max_queue keeps the queue short; what it turns away is the growth it was not allowed
    s = summarize(simulate(scenario(max_queue=4)))
    assert s["requests"]["reject_reasons"].get("queue full", 0) > 100
    assert s["overloaded"] is True
    assert any("queue full" in w and "max_queue" in w for w in s["warnings"])


def test_a_burst_has_no_rate_to_outrun() -> None:
    data = scenario().model_dump()
    data["workload"]["arrival"] = {"process": "burst"}
    assert summarize(simulate(Scenario.model_validate(data)))["overloaded"] is False


def test_the_summary_headline_says_overloaded_and_what_percentiles_cover() -> None:
    s = summarize(simulate(scenario()))
    assert s["overloaded"] is True and s["latency_of"] == {"requests": "completed", "count": 1000}
    text = format_summary(s).splitlines()
    assert text[0].endswith("OVERLOADED")
    assert text[1].startswith("warning") and "overloaded" in text[1]
    assert any(line.startswith("latency of") and "completed requests only" in line for line in text)


def write(tmp_path: Path, **serving) -> Path:
    p = tmp_path / "s.yaml"
    data = scenario(**serving).model_dump(mode="json")
    data["workload"].update(num_requests=40, arrival={"process": "poisson", "rate": 5.0},
                            prompt_len={"dist": "uniform", "low": 64, "high": 512})
    p.write_text(yaml.safe_dump(data))
    return p


def test_rejections_by_max_batched_tokens_are_in_the_headline(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, max_batched_tokens=256)
    assert main(["run", str(p)]) == 0
    head = capsys.readouterr().out.splitlines()
    assert "REQUESTS REJECTED" in head[0]
    assert "prompt > max_batched_tokens" in head[1] and "serving.max_batched_tokens" in head[1]


def test_a_run_that_completes_nothing_exits_1_with_one_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, max_batched_tokens=32)  # every prompt is longer
    assert main(["run", str(p)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert str(p) in err and "no request completed" in err and "max_batched_tokens" in err
    assert main(["run", str(p), "--json"]) == 1  # a program still gets the JSON, and the exit code
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert s["requests"]["completed"] == 0 and s["ttft_ms"]["p99"] is None and err.count("\n") == 1
