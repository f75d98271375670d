"""Clients as benchmarks run them (workload.concurrency) and a stack's front end (request_in_ms,
request_out_ms), against closed forms: N clients with a fixed service time S complete N/S
requests per second; a constant front-end delay moves every TTFT by in + out and no gap between
tokens; the TTFT split adds up."""

import numpy as np
import pytest

from simulator.reports.metrics import summarize, ttft_split
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario


def scenario(workload: dict, serving: dict | None = None) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 3,
        "serving": {"scheduler": "static", "max_batch_size": 1, **(serving or {})},
        "workload": {"prompt_len": {"dist": "fixed", "value": 100}, "output_len": {"dist": "fixed", "value": 20},
                     **workload}})


def service_s(serving: dict | None = None) -> float:
    """One request alone, from sending to its last token at the client."""
    r = simulate(scenario({"num_requests": 1}, serving))
    return float(r.requests["finish_s"][0] - r.requests["arrival_s"][0])


@pytest.mark.parametrize("clients,think_ms", [(1, 0.0), (3, 0.0), (4, 50.0)])
def test_closed_loop_of_n_clients_completes_n_over_s(clients, think_ms):
    sv = {"replicas": clients, "router": "least_outstanding", "overheads": {"request_out_ms": 5.0}}
    S = service_s(sv)
    assert S > 0.005  # the front end's 5 ms are in it
    rounds = 6
    r = simulate(scenario({"num_requests": clients * rounds, "concurrency": clients, "think_ms": think_ms}, sv))
    q = r.requests
    # every client sends, waits S, thinks, sends again: rounds of S + think
    assert r.makespan_s == pytest.approx(rounds * S + (rounds - 1) * think_ms * 1e-3, rel=1e-9)
    s = summarize(r)
    assert s["requests_per_s"] == pytest.approx(clients / (S + think_ms * 1e-3 * (rounds - 1) / rounds), rel=1e-8)
    sent = np.sort(q["arrival_s"])
    assert sent.tolist() == q["arrival_s"].tolist()  # sent in request order
    np.testing.assert_allclose(np.asarray(q["finish_s"]) - q["arrival_s"], S, rtol=1e-9)


def test_a_requests_way_in_varies_around_its_mean_and_adds_to_its_service():
    """request_in_ms is a mean: each request's is uniform on [0, 2 x the mean] (a closed loop of
    clients would otherwise lock to the steps' grid), and it adds to that request's time alone."""
    sv = {"replicas": 4, "router": "least_outstanding", "overheads": {"request_in_ms": 30.0, "request_out_ms": 5.0}}
    S = service_s({"replicas": 4, "overheads": {"request_out_ms": 5.0}})
    r = simulate(scenario({"num_requests": 400, "concurrency": 4}, sv))
    q = r.requests
    way_in = (q["reached_s"] - q["arrival_s"]) * 1e3
    assert way_in.min() >= 0.0 and way_in.max() <= 60.0 and way_in.max() - way_in.min() > 55.0
    assert way_in.mean() == pytest.approx(30.0, abs=3.0)  # 400 draws: sd of the mean 0.87 ms
    assert way_in.std() == pytest.approx(60.0 / 12**0.5, rel=0.1)  # a uniform's
    np.testing.assert_allclose(q["finish_s"] - q["reached_s"], S, rtol=1e-9)


def test_concurrency_caps_requests_in_flight_under_poisson_arrivals():
    planned = simulate(scenario({"num_requests": 200, "arrival": {"process": "poisson", "rate": 80.0}}))
    r = simulate(scenario({"num_requests": 200, "arrival": {"process": "poisson", "rate": 80.0}, "concurrency": 2}))
    a, f = r.requests["arrival_s"], r.requests["finish_s"]
    assert np.all(a >= planned.requests["arrival_s"] - 1e-12)  # never before its planned time
    events = sorted([(t, 1) for t in a] + [(t, -1) for t in f], key=lambda e: (e[0], e[1]))
    assert max(np.cumsum([d for _, d in events])) == 2  # at most 2 in flight, and 2 reached
    late = a > planned.requests["arrival_s"] + 1e-12
    assert late.any()  # the cap delayed some: each then left when a client freed
    assert np.all(np.isin(np.round(a[late], 12), np.round(f, 12)))


def test_front_end_moves_ttft_by_in_plus_out_and_no_token_gap():
    # requests about 1 s apart (gaps within a few %), each served in under 0.2 s: the engine serves
    # each alone, whenever it comes
    wl = {"num_requests": 60, "arrival": {"process": "gamma", "rate": 1.0, "cv": 0.05},
          "output_len": {"dist": "uniform", "low": 2, "high": 30}}
    base = simulate(scenario(wl, {"scheduler": "chunked", "max_batch_size": 32}))
    r = simulate(scenario(wl, {"scheduler": "chunked", "max_batch_size": 32,
                               "overheads": {"request_in_ms": 30.0, "request_out_ms": 12.0}}))
    q, b = r.requests, base.requests
    way_in = q["reached_s"] - q["arrival_s"]
    ttft, ttft0 = q["first_token_s"] - q["arrival_s"], b["first_token_s"] - b["arrival_s"]
    np.testing.assert_allclose(ttft, ttft0 + way_in + 0.012, rtol=0, atol=1e-9)
    s, s0 = summarize(r), summarize(base)
    for k in ("mean", "p50", "p99"):
        assert s["tpot_ms"][k] == pytest.approx(s0["tpot_ms"][k], rel=1e-6)
        assert s["itl_ms"][k] == pytest.approx(s0["itl_ms"][k], rel=1e-6)
    split = ttft_split(r)
    assert split["overheads"]["mean"] == pytest.approx(way_in.mean() * 1e3 + 12.0)
    # queue + prefill + front end is each request's TTFT
    total = split["queue"]["mean"] + split["prefill"]["mean"] + split["overheads"]["mean"]
    assert total == pytest.approx(s["ttft_ms"]["mean"], rel=1e-9)
    assert split["queue"]["p50"] >= 0 and split["prefill"]["p50"] > 0


def test_an_offline_engine_has_no_front_end():
    sv = {"overheads": {"request_in_ms": 30.0, "request_out_ms": 12.0}}
    assert service_s({**sv, "api_server": False}) == pytest.approx(service_s(), rel=1e-12)


def test_a_faster_host_shortens_the_front_end_and_its_draws_follow_the_seed(tmp_path):
    """The front end's times are the reference host's: a host twice as fast (host.speed 2) takes
    half of them. Way in: uniform on [0, 2 x 30 ms] / 2; way out: 12 ms / 2. The way-in draws are
    the scenario seed's own: the same seed gives the same draws, another seed others."""
    hw = tmp_path / "fast-host.yaml"
    hw.write_text("base: h100-sxm\nhost: {speed: 2.0}\n")
    wl = {"num_requests": 60, "arrival": {"process": "gamma", "rate": 1.0, "cv": 0.05}}
    sv = {"scheduler": "chunked", "max_batch_size": 32, "overheads": {"request_in_ms": 30.0, "request_out_ms": 12.0}}

    def way_in(seed: int):
        sc = scenario(wl, sv).model_copy(update={"hardware": str(hw), "seed": seed})
        r = simulate(sc)
        assert r.stats["request_out_s"] == pytest.approx(0.006, rel=1e-12)
        return r.requests["reached_s"] - r.requests["arrival_s"]

    w = way_in(3)
    assert 0.0 <= w.min() and w.max() <= 0.030
    assert 0.010 < w.mean() < 0.020  # 15 ms; 60 draws of sd 8.7 ms: within 5 ms by > 4 standard errors
    np.testing.assert_array_equal(way_in(3), w)
    assert not np.array_equal(way_in(4), w)


@pytest.mark.parametrize("in_ms", [0.0, 30.0])
def test_arrivals_read_a_chunk_at_a_time_give_the_same_run(monkeypatch, in_ms):
    """The engine hands out arrivals a chunk at a time (memory); chunks of 7 requests must give
    the run that one chunk gives, in index order and, with a front end, in the order the
    requests reach the engine."""
    import simulator.serving.engine as engine

    wl = {"num_requests": 50, "arrival": {"process": "poisson", "rate": 40.0}}
    sv = {"scheduler": "continuous", "max_batch_size": 8, "overheads": {"request_in_ms": in_ms}}
    whole = simulate(scenario(wl, sv)).requests
    monkeypatch.setattr(engine, "ARRIVAL_CHUNK", 7)
    chunked = simulate(scenario(wl, sv)).requests
    for key in ("arrival_s", "first_token_s", "finish_s"):
        np.testing.assert_array_equal(chunked[key], whole[key])


def test_a_request_that_overtakes_on_its_way_in_is_served_when_it_reaches_the_engine():
    """The front end's draws reorder requests (a later one can reach the engine first). Under a
    light load (at most 3 of 8 slots busy on average) the engine takes a request at the first
    moment boundary after it reaches it, so no request waits longer than the longest moment:
    handing them over in sending order instead would hold an overtaking one until the ones sent
    before it have reached the engine (tens of ms with a 40 ms mean way in)."""
    wl = {"num_requests": 80, "arrival": {"process": "poisson", "rate": 60.0}}
    r = simulate(scenario(wl, {"scheduler": "continuous", "max_batch_size": 8, "overheads": {"request_in_ms": 40.0}}))
    q = r.requests
    assert np.any(np.diff(q["reached_s"]) < 0)  # overtaking happens
    wait = q["started_s"] - q["reached_s"]
    assert wait.min() >= 0.0
    assert wait.max() <= r.moments["dur_s"].max() + 1e-12


def test_no_request_is_served_before_it_reaches_the_engine():
    """With a front end the requests reach the engine out of their sending order (each way in
    is drawn): each is handed over when it arrives there, never before, and its prefill starts
    no earlier. Without one it reaches the engine when it is sent."""
    wl = {"num_requests": 80, "arrival": {"process": "poisson", "rate": 60.0}}
    for sv in ({"scheduler": "continuous", "max_batch_size": 8, "overheads": {"request_in_ms": 40.0}},
               {"scheduler": "continuous", "max_batch_size": 8}):
        q = simulate(scenario(wl, sv)).requests
        assert np.all(q["started_s"] >= q["reached_s"])
        assert np.all(q["reached_s"] >= q["arrival_s"])
        if "overheads" not in sv:
            np.testing.assert_array_equal(q["reached_s"], q["arrival_s"])
        else:
            assert np.any(np.diff(q["reached_s"]) < 0)  # overtaking happens
