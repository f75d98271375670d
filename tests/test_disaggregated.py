"""Disaggregated prefill and decode: isolated requests take exactly a colocated replica's time
plus their KV transfer (tokens x KV bytes / (devices x bandwidth) + latency, by hand; nothing as
the link becomes infinitely fast), the link serves one prompt after another, the prefill replica
holds a prompt's blocks until it is sent, rejections, the merged moment log and the checks."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from simulator.moment.model import load_model
from simulator.moment.ops import Dtypes
from simulator.reports.metrics import itl, per_request, summarize
from simulator.serving.engine import check_scenario, simulate
from simulator.serving.scenario import Scenario
from simulator.serving.schedulers import PREFILL, Scheduler

KVB = load_model("llama-3.2-1b").kv_bytes_per_token("bf16")  # 32 KiB: 16 layers x 8 KV heads x 64 x 2 x 2 bytes


def trace(tmp_path, rows: list[tuple[float, int, int]]) -> str:
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_len,output_len\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return str(p)


def scen(path: str, dis: dict | None = None, hardware: str = "h100-sxm", **serving: Any) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": hardware,
        "serving": {"scheduler": "continuous", "disaggregated": dis, **serving},
        "workload": {"arrival": {"process": "trace", "path": path},
                     "prompt_len": {"dist": "trace"}, "output_len": {"dist": "trace"}}})


@pytest.mark.parametrize("bw_gbps, latency_us", [(100_000.0, 0.0), (10.0, 20.0), (0.5, 1000.0)])
def test_isolated_requests_take_a_colocated_replicas_time_plus_their_transfer(tmp_path, bw_gbps, latency_us):
    # requests 30 s apart never meet: the prefill pool's moment is the colocated prefill, the
    # decode pool's steps the colocated decode steps; only the transfer is added between them
    rows = [(0.0, 700, 40), (30.0, 2000, 5), (60.0, 129, 300)]
    path = trace(tmp_path, rows)
    col = simulate(scen(path))
    dis = simulate(scen(path, {"transfer": {"bw_gbps": bw_gbps, "latency_us": latency_us}}))
    q0, q1 = col.requests, dis.requests
    np.testing.assert_array_equal(q1["first_token_s"], q0["first_token_s"])
    transfer = np.array([p for _a, p, _o in rows]) * KVB / (bw_gbps * 1e9) + latency_us * 1e-6  # tp 1: one lane
    np.testing.assert_allclose(q1["kv_transfer_s"], transfer, rtol=1e-12)
    np.testing.assert_allclose(q1["finish_s"] - q0["finish_s"], transfer, rtol=1e-9, atol=1e-9)
    # the same moments, one pool each: prefill moments in pool 0 (replica 0), decode in pool 1 (replica 1)
    m = dis.moments
    assert sorted(m["dur_s"].tolist()) == pytest.approx(sorted(col.moments["dur_s"].tolist()), rel=1e-12)
    assert set(m["replica"][m["pool"] == 0].tolist()) == {0} and set(m["replica"][m["pool"] == 1].tolist()) == {1}
    assert (m["kind"][m["pool"] == 0] == 0).all() and (m["kind"][m["pool"] == 1] == 1).all()
    assert q1["decode_replica"].tolist() == [1, 1, 1] and q1["replica"].tolist() == [0, 0, 0]
    assert np.all(np.diff(m["start_s"]) >= 0)
    # the same work: the pools' FLOPs and bytes add up to the colocated replica's
    assert dis.total_flops == pytest.approx(col.total_flops, rel=1e-12)
    assert dis.total_bytes == pytest.approx(col.total_bytes, rel=1e-12)


@pytest.mark.parametrize("bw_gbps, latency_us", [(100_000.0, 0.0), (0.5, 1000.0)])
def test_isolated_requests_itl_is_their_transfer_then_a_colocated_replicas_steps(tmp_path, bw_gbps, latency_us):
    # requests 30 s apart: each waits for nobody, so its gaps are, by hand, one of (its transfer +
    # its first decode step: the idle decode engine starts it at once) and output_len - 2 of its
    # other decode steps, the steps a colocated replica runs after its prefill (whose gaps
    # tests/test_reference.py checks). Before the fix the first gap was counted from the decode
    # engine's previous token, the request before's, 30 s earlier (and the first request's not at all).
    rows = [(0.0, 700, 40), (30.0, 2000, 5), (60.0, 129, 300)]
    path = trace(tmp_path, rows)
    col = simulate(scen(path))
    dis = simulate(scen(path, {"transfer": {"bw_gbps": bw_gbps, "latency_us": latency_us}}))
    m = col.moments
    want = []
    for (a, p, o), nxt in zip(rows, [30.0, 60.0, np.inf], strict=True):
        steps = m["dur_s"][(m["kind"] == 1) & (m["start_s"] >= a) & (m["start_s"] < nxt)]
        assert steps.size == o - 1  # one decode step per token after the first
        transfer = p * KVB / (bw_gbps * 1e9) + latency_us * 1e-6
        want += [transfer + steps[0], *steps[1:]]
    want = np.sort(want)
    gaps, weights = itl(dis, per_request(dis)["completed"])
    np.testing.assert_allclose(np.sort(np.repeat(gaps, weights)), want, rtol=1e-9)
    n = want.size  # 342 gaps: p99 is the smallest gap with at least 99 % of them at or below it
    s = summarize(dis)["itl_ms"]  # 9 significant digits
    assert s["mean"] == pytest.approx(want.mean() * 1e3, rel=1e-8)
    assert s["p99"] == pytest.approx(want[math.ceil(0.99 * n) - 1] * 1e3, rel=1e-8)
    assert s["p90"] == pytest.approx(want[math.ceil(0.90 * n) - 1] * 1e3, rel=1e-8)
    # the gaps of each request add up to its time from first to last token (conservation)
    q = dis.requests
    assert float(np.dot(gaps, weights)) == pytest.approx(float((q["finish_s"] - q["first_token_s"]).sum()), rel=1e-12)


def token_times(monkeypatch) -> dict[int, list[float]]:
    """Every request's token times (engine time), recorded one by one as the engines hand them out:
    at the end of a moment that is not held, one for each sequence in its decode set, and one for
    each prompt whose last chunk ran in it (a first token on the prefill pool)."""
    times: dict[int, list[float]] = defaultdict(list)
    done = Scheduler.on_step_done

    def spy(self, m, now):
        if m.kind != PREFILL and not m.held:
            for i in self.decode.entries:
                times[i].append(now)
        for st, n in m.prefills:
            if st.done + n >= st.target:
                times[st.request].append(now)
        done(self, m, now)

    monkeypatch.setattr(Scheduler, "on_step_done", spy)
    return times


@pytest.mark.parametrize("sched", ["continuous", "chunked", "prefill_first", "mixed"])
@pytest.mark.parametrize("pp, steps", [(1, 1), (2, 1), (1, 4)])
def test_loaded_disaggregated_itl_is_every_requests_own_gaps(tmp_path, monkeypatch, sched, pp, steps):
    """A loaded run (500 req/s on 2 prefill replicas; 2 decode replicas of pp virtual engines, 6 sequences each,
    so transferred requests wait for a place; one-token replies; a front end's way out): the gaps
    metrics.itl derives from the moment log are the requests' own, recorded token by token. With
    a multi-step block of 4 every output is 1 or 1 + a multiple of 4, so nobody finishes inside a
    block (a block streams once, at its end)."""
    rng = np.random.default_rng(7)
    n = 150
    out = rng.integers(1, 60, n) if steps == 1 else 1 + steps * rng.integers(0, 12, n)
    rows = list(zip(np.cumsum(rng.exponential(1 / 500.0, n)).tolist(), rng.integers(1, 1500, n).tolist(),
                    out.tolist(), strict=True))
    sc = scen(trace(tmp_path, rows), {"prefill": {"replicas": 2, "scheduler": "chunked"},
                                      "decode": {"replicas": 2, "pp": pp, "scheduler": sched, "max_batch_size": 6},
                                      "transfer": {"bw_gbps": 5.0, "latency_us": 20.0}},
              max_batched_tokens=1024, num_scheduler_steps=steps, overheads={"request_out_ms": 0.5})
    times = token_times(monkeypatch)
    r = simulate(sc)
    q = r.requests
    assert (q["status"] == 0).all() and not q["preemptions"].any() and (q["output_len"] == 1).sum() >= 3
    assert r.stats["request_out_s"] > 0 and (r.moments["engine"].max() == pp - 1)
    # some waited on the decode pool for more than a few steps after their KV arrived
    waited = q["decode_admitted_s"] - (q["first_token_s"] - r.stats["request_out_s"] + q["kv_transfer_s"])
    assert np.nanmax(waited) > 5 * r.moments["dur_s"][r.moments["kind"] == 1].max()
    slow = np.sort([b - a for ts in times.values() for a, b in itertools.pairwise(ts)])
    gaps, weights = itl(r, per_request(r)["completed"])
    np.testing.assert_allclose(np.sort(np.repeat(gaps, weights)), slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sched, preemption", [("continuous", "recompute"), ("continuous", "swap"),
                                               ("chunked", "swap")])
def test_itl_counts_each_token_once_when_the_decode_pool_preempts(tmp_path, sched, preemption):
    """A decode pool with KV for 3,000 tokens and 150 requests of up to 800 + 300: requests wait for
    blocks and are preempted, some before their first token there. Every token after a request's
    first has one gap (a request preempted before its first decode step is counted once, from its
    re-prefill, not also as joining), except that a recompute preemption loses the gap across it
    (from the request's last token to its re-prefill, as on a colocated engine); continuous
    batching's prefills are whole, so each preemption is of a decoding request: one gap each."""
    hw = tmp_path / "tiny.yaml"
    m = load_model("llama-3.2-1b")
    gb = (m.weight_bytes("bf16") + 1e9 + 3000.5 * KVB) / 0.9 / 1e9
    hw.write_text(f"base: h100-sxm\nname: tiny\ndevice:\n  memory_gb: {gb!r}\n")
    rng = np.random.default_rng(3)
    n = 150
    rows = list(zip(np.cumsum(rng.exponential(1 / 500.0, n)).tolist(), rng.integers(1, 800, n).tolist(),
                    rng.integers(1, 300, n).tolist(), strict=True))
    r = simulate(scen(trace(tmp_path, rows), {"decode": {"hardware": str(hw)}, "prefill": {"scheduler": "chunked"}},
                      scheduler=sched, preemption=preemption))
    q = r.requests
    done = per_request(r)["completed"]
    assert done.all() and q["preemptions"].sum() > 20
    _gaps, weights = itl(r, done)
    if preemption == "recompute":  # one was preempted before its first decode step there
        assert (np.isnan(q["decode_admitted_s"]) & np.isfinite(q["kv_transfer_s"])).any()
    lost = q["preemptions"].sum() if preemption == "recompute" else 0
    assert weights.sum() == (q["output_len"] - 1).sum() - lost


def test_the_link_sends_one_prompt_after_another(tmp_path):
    # two prompts prefilled in one moment at t=0: the second waits for the first on the link
    path = trace(tmp_path, [(0.0, 1000, 4), (0.0, 3000, 4)])
    r = simulate(scen(path, {"transfer": {"bw_gbps": 2.0, "latency_us": 50.0}}, scheduler="chunked"))
    s = KVB / 2e9
    assert r.requests["first_token_s"][0] == r.requests["first_token_s"][1]
    np.testing.assert_allclose(r.requests["kv_transfer_s"], [1000 * s + 50e-6, 4000 * s + 50e-6], rtol=1e-12)


def test_tp_lanes_share_the_transfer(tmp_path):
    # tp 2 on both sides: each device's NIC carries half the prompt's KV
    path = trace(tmp_path, [(0.0, 1000, 4)])
    r = simulate(scen(path, {"transfer": {"bw_gbps": 2.0, "latency_us": 0.0}}, tp=2))
    assert r.requests["kv_transfer_s"][0] == pytest.approx(1000 * KVB / 2 / 2e9, rel=1e-12)
    r = simulate(scen(path, {"decode": {"tp": 1}, "transfer": {"bw_gbps": 2.0, "latency_us": 0.0}}, tp=2))
    assert r.requests["kv_transfer_s"][0] == pytest.approx(1000 * KVB / 2e9, rel=1e-12)  # one lane at the decode end


def test_a_prefill_replica_holds_a_prompts_blocks_until_it_is_sent(tmp_path):
    # 20 prompts at once over a slow link: they all sit in the prefill replica's KV while they
    # wait for the link; over a fast one the blocks come back almost at once
    path = trace(tmp_path, [(0.0, 800, 3)] * 20)
    peak = {}
    for bw in (0.05, 1000.0):
        s = summarize(simulate(scen(path, {"transfer": {"bw_gbps": bw, "latency_us": 5.0}}, scheduler="chunked",
                                    max_batched_tokens=2048)))
        peak[bw] = s["disaggregated"]["pools"][0]["kv_peak_frac"]
        assert s["requests"]["completed"] == 20
    assert peak[0.05] > 2 * peak[1000.0]


@pytest.mark.parametrize("sched", ["continuous", "chunked"])
def test_guaranteed_no_evict_reserves_the_whole_request_on_both_pools(tmp_path, sched):
    # TensorRT-LLM's guaranteed_no_evict: each pool reserves a request's prompt and whole output
    # when it takes it. Isolated requests, by hand: every moment holds blocks(prompt + output) of
    # its one request, on the prefill replica and on the decode replica alike (before the fix
    # the decode pool took only the prompt's blocks and gave back the whole reservation: its
    # free blocks grew past its capacity and the run ended with "holding KV blocks")
    rows = [(0.0, 700, 40), (30.0, 2000, 5), (60.0, 129, 300)]
    r = simulate(scen(trace(tmp_path, rows), {}, scheduler=sched, guaranteed_no_evict=True))
    m = r.moments
    assert (r.requests["status"] == 0).all()
    for a, p, o in rows:
        mine = (m["start_s"] >= a) & (m["start_s"] < a + 30.0)
        assert set(m["kv_blocks_used"][mine].tolist()) == {math.ceil((p + o) / 16)}
    assert m["kv_blocks_used"][m["pool"] == 1].size == sum(o - 1 for _a, _p, o in rows)
    # loaded: 60 requests of 3200 tokens (200 blocks) at once on a small KV cache; the decode
    # pool fills it with as many whole reservations as fit, and never more
    path = trace(tmp_path, [(0.0, 3000, 200)] * 60)
    r = simulate(scen(path, {"decode": {"max_batch_size": 64}}, scheduler=sched, guaranteed_no_evict=True,
                      gpu_memory_utilization=0.07))
    assert (r.requests["status"] == 0).all()
    cap = r.pools[1]["kv_capacity_blocks"]
    used = r.moments["kv_blocks_used"]
    assert used[r.moments["pool"] == 1].max() == 200 * (cap // 200) and cap // 200 < 60
    assert used.min() >= 200 and used[r.moments["pool"] == 0].max() <= r.pools[0]["kv_capacity_blocks"]


def test_requests_that_cannot_decode_are_rejected_on_arrival(tmp_path):
    # the decode pool's KV is small (a larger tp on the prefill side holds more): a request whose
    # prompt and output overflow a decode replica is turned away before its prefill
    hw = tmp_path / "tiny.yaml"
    m = load_model("llama-3.2-1b")
    gb = (m.weight_bytes("bf16") + 1e9 + 4000.5 * KVB) / 0.9 / 1e9
    hw.write_text(f"base: h100-sxm\nname: tiny\ndevice:\n  memory_gb: {gb!r}\n")
    path = trace(tmp_path, [(0.0, 3000, 2000), (0.0, 100, 1), (0.0, 300, 20)])
    r = simulate(scen(path, {"decode": {"hardware": str(hw)}}))
    assert r.requests["status"].tolist() == [1, 0, 0] and r.reject_reasons == {"exceeds kv capacity": 1}
    t = r.requests["kv_transfer_s"]
    assert np.isnan(t[0]) and np.isnan(t[1]) and t[2] > 0  # a one-token reply ends at its prefill
    assert r.requests["finish_s"][1] == r.requests["first_token_s"][1]


def test_pools_of_different_parts_merge_into_one_run(tmp_path):
    path = trace(tmp_path, [(0.01 * i, 500 + 37 * i, 20 + i) for i in range(60)])
    r = simulate(scen(path, {"prefill": {"replicas": 2, "hardware": "h100-sxm"},
                             "decode": {"replicas": 3, "hardware": "h200-sxm", "scheduler": "chunked"}}))
    assert (r.requests["status"] == 0).all() and r.replicas == 5
    assert set(r.requests["replica"].tolist()) <= {0, 1} and set(r.requests["decode_replica"].tolist()) <= {2, 3, 4}
    assert [p["hardware"] for p in r.pools] == ["h100-sxm", "h200-sxm"]
    assert r.energy["total_j"] == pytest.approx(sum(p["energy"]["total_j"] for p in r.pools))
    assert r.stats["moments"] == r.moments["start_s"].size
    s = summarize(r)
    d = s["disaggregated"]
    assert [p["devices"] for p in d["pools"]] == [2, 3] and d["transferred"] == 60
    assert s["config"]["devices"] == 5
    # every decode moment ran on a decode replica, every prefill on a prefill replica
    assert set(r.moments["replica"][r.moments["kind"] == 0].tolist()) <= {0, 1}


def test_disaggregated_settings_are_checked(tmp_path):
    path = trace(tmp_path, [(0.0, 10, 2)])
    with pytest.raises(ValueError, match="continuous or chunked"):
        scen(path, {"decode": {"scheduler": "static"}})
    with pytest.raises(InputError, match="disaggregated.prefill.hardware"):
        check_scenario(scen(path, {"prefill": {"hardware": "no-such-part"}}))
    with pytest.raises(InputError, match="disaggregated.decode.tp"):
        check_scenario(scen(path, {"decode": {"tp": 3}}))
    with pytest.raises(InputError, match="names no network"):
        check_scenario(scen(path, {"prefill": {"hardware": "cpu"}}, hardware="cpu"))
    assert load_hardware("h100-sxm").network is not None
    # the KV leaves from the prefill pool's devices: its part's network is the one that must exist
    # (the decode pool's part may lack one), and its bandwidth is the transfer's
    assert load_hardware("cpu").network is None
    with pytest.raises(InputError, match="cpu names no network"):
        check_scenario(scen(path, {"prefill": {"hardware": "cpu"}}))
    rows = [(0.0, 700, 3)]
    r = simulate(scen(trace(tmp_path, rows), {"decode": {"hardware": "cpu"}}))
    net = load_hardware("h100-sxm").network
    assert r.requests["kv_transfer_s"][0] == pytest.approx(700 * KVB / (net.bw_gbps * 1e9) + net.latency_us * 1e-6,
                                                           rel=1e-12)


def test_a_plan_searches_the_prefill_decode_ratio(tmp_path):
    # a stand-in simulator: colocated serving never meets the SLO, a disaggregated deployment does
    # once it has at least 2 prefill and 4 decode replicas: 1:2 needs 2 units (6 devices), 1:1
    # needs 4 units (8 devices), 2:3 needs 2 units (10 devices): the plan picks 1:2 x2
    from pathlib import Path

    from simulator.studies.plan import run_plan
    from simulator.studies.plan_schema import Plan

    seen: list[Scenario] = []

    def run(sc: Scenario) -> dict[str, Any]:
        seen.append(sc)
        d = sc.serving.disaggregated
        ok = d is not None and d.prefill.replicas >= 2 and d.decode.replicas >= 4
        return {"output_tokens_per_s": 640.0, "ttft_ms": {"p99": 50.0 if ok else 5000.0}, "tpot_ms": {"p99": 5.0},
                "goodput": {"fraction": 1.0}, "requests": {"rejected": 0}}

    plan = Plan.model_validate({
        "model": "llama-3.2-1b", "workload": {"num_requests": 50, "arrival": {"process": "poisson", "rate": 5.0}},
        "slo": {"p99_ttft_ms": 200}, "candidates": [{"hardware": "h100-sxm"}],
        "search": {"tp": [1], "max_replicas": 8, "max_batch_size": [16], "scheduler": ["chunked"],
                   "pd_ratios": ["1:1", "1:2", "2:3"]},
        "rate_steps": 0})
    res = run_plan(plan, Path("."), runner=run, workers=1)
    c = res.candidates[0]
    assert c.best.pd == (1, 2) and c.best.replicas == 2 and c.devices == 6
    assert c.cost_per_hour == pytest.approx(6 * load_hardware("h100-sxm").price_per_hour)
    by = {cfg.pd: cfg for cfg in c.configs}
    assert by[None].status == "infeasible" and by[(1, 1)].replicas in (None, 4)
    d = [sc.serving.disaggregated for sc in seen if sc.serving.disaggregated is not None]
    layouts = {(a * u, b * u) for a, b in ((1, 1), (1, 2), (2, 3)) for u in range(1, 9)}
    assert d and all((x.prefill.replicas, x.decode.replicas) in layouts for x in d)
    with pytest.raises(ValueError, match="P:D"):
        Plan.model_validate({**plan.model_dump(), "search": {"pd_ratios": ["1-2"]}})


def test_a_sweep_prices_both_pools():
    from simulator.studies.sweep_report import _parts

    sc = Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", "serving": {
        "replicas": 7, "disaggregated": {"prefill": {"replicas": 1, "tp": 2}, "decode": {"replicas": 3, "hardware": "h200-sxm"}}}})
    assert [(h.name, n) for h, n in _parts(sc)] == [("h100-sxm", 2), ("h200-sxm", 3)]


def hw_file(tmp_path, name: str, base: str, **power: float) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"base: {base}\nname: {name}\ndevice:\n  power: {{{', '.join(f'{k}: {v}' for k, v in power.items())}}}\n")
    return str(p)


def test_the_energy_of_two_pools_by_hand(tmp_path):
    # no dynamic share: every device draws its idle power all run long. One prefill replica at
    # 90 W (tdp 700) and two decode replicas at 50 W (tdp 400), tp 2: each replica's energy is
    # 2 x idle x makespan; the run's per-replica figures are the pools' in replica order, and its
    # idle power and tdp per replica the replica-weighted means
    pre = hw_file(tmp_path, "pre", "h100-sxm", tdp_w=700, idle_w=90, compute_share=0, memory_share=0)
    dec = hw_file(tmp_path, "dec", "h200-sxm", tdp_w=400, idle_w=50, compute_share=0, memory_share=0)
    path = trace(tmp_path, [(0.02 * i, 300 + 11 * i, 10 + i) for i in range(30)])
    r = simulate(scen(path, {"prefill": {"replicas": 1, "hardware": pre}, "decode": {"replicas": 2, "hardware": dec}},
                      tp=2))
    e, t = r.energy, r.makespan_s
    assert e["known"] is True and e["dynamic_j"] == 0.0
    np.testing.assert_allclose(e["replica_j"], [180 * t, 100 * t, 100 * t], rtol=1e-12)
    np.testing.assert_allclose(e["avg_power_w"], [180.0, 100.0, 100.0], rtol=1e-12)
    np.testing.assert_allclose(e["peak_power_w"], [180.0, 100.0, 100.0], rtol=1e-12)
    assert e["total_j"] == pytest.approx(380 * t, rel=1e-12) and e["idle_j"] == pytest.approx(380 * t, rel=1e-12)
    assert e["idle_power_w"] == pytest.approx((180 + 2 * 100) / 3, rel=1e-12)
    assert e["tdp_w"] == pytest.approx((1400 + 2 * 800) / 3, rel=1e-12)
    np.testing.assert_allclose(r.timeseries["power_w"], 380.0, rtol=1e-12)
    # with dynamic power each replica adds its own moments' energy (numbered across the pools:
    # the decode replicas are 1 and 2), and the run all of them; a replica's peak is its idle
    # power plus its most power-hungry moment (pp 1: its moments never overlap)
    pre = hw_file(tmp_path, "pre", "h100-sxm", tdp_w=700, idle_w=90)
    dec = hw_file(tmp_path, "dec2", "h200-sxm", tdp_w=400, idle_w=50)
    r = simulate(scen(path, {"prefill": {"replicas": 1, "hardware": pre}, "decode": {"replicas": 2, "hardware": dec}},
                      tp=2))
    m, e, t = r.moments, r.energy, r.makespan_s
    dyn = np.bincount(m["replica"], weights=m["energy_j"], minlength=3)
    assert (dyn > 0).all() and dyn[1] != dyn[2]
    np.testing.assert_allclose(e["replica_j"], dyn + [180 * t, 100 * t, 100 * t], rtol=1e-12)
    np.testing.assert_allclose(e["avg_power_w"], (dyn + [180 * t, 100 * t, 100 * t]) / t, rtol=1e-12)
    watts = m["energy_j"] / m["dur_s"]
    np.testing.assert_allclose(e["peak_power_w"], [idle + watts[m["replica"] == k].max() for k, idle in
                                                   enumerate((180, 100, 100))], rtol=1e-12)
    assert e["dynamic_j"] == pytest.approx(m["energy_j"].sum(), rel=1e-12)
    assert e["total_j"] == pytest.approx(380 * t + m["energy_j"].sum(), rel=1e-12)
    # the power over time: the idle 380 W plus each moment's dynamic power while it runs
    grid = np.append(r.timeseries["t_s"], t)
    share = lambda a, b: np.clip((np.minimum(m["start_s"] + m["dur_s"], b) - np.maximum(m["start_s"], a))  # noqa: E731
                                 / m["dur_s"], 0, 1)  # of each moment inside [a, b)
    on = [float(np.sum(m["energy_j"] * share(a, b))) / (b - a) for a, b in zip(grid[:-1], grid[1:], strict=True)]
    np.testing.assert_allclose(r.timeseries["power_w"], 380.0 + np.asarray(on), rtol=1e-9)
    # a pool without power figures makes the run's energy unknown
    (tmp_path / "bare.yaml").write_text("base: h100-sxm\nname: bare\ndevice: {power: null}\n")
    r = simulate(scen(path, {"prefill": {"replicas": 1, "hardware": pre},
                             "decode": {"replicas": 1, "hardware": str(tmp_path / "bare.yaml")}}))
    assert r.energy["known"] is False and "power_w" not in r.timeseries


def test_a_two_pool_runs_accounting_by_hand(tmp_path):
    # a prefill pool (1 replica of tp 2 on H100s, a serving stack with per-sequence host work) and
    # a decode pool (2 replicas of pp 2 on H200s): each pool's own figures, and the run's time
    # series and category seconds as sums over both pools' moments
    from simulator.serving.engine import pool_model, stack_serving
    from simulator.serving.scenario import pool_serving

    path = trace(tmp_path, [(0.01 * i, 400 + 53 * i, 30 + 3 * i) for i in range(40)])
    sc = scen(path, {"prefill": {"replicas": 1, "tp": 2}, "decode": {"replicas": 2, "pp": 2, "hardware": "h200-sxm"}},
              stack="vllm-v1")
    r = simulate(sc)
    m, pools = r.moments, r.pools
    assert [(p["replica_offset"], p["devices_per_replica"], p["block_size"], p["tp"], p["pp"]) for p in pools] == \
        [(0, 2, 16, 2, 1), (1, 2, 16, 1, 2)]
    for k, (p, part) in enumerate(zip(pools, ("h100-sxm", "h200-sxm"), strict=True)):
        mine = m["pool"] == k
        hw = load_hardware(part)
        assert p["peak_flops"] == hw.device.peak_flops("bf16") and p["mem_bw"] == hw.device.bandwidth
        assert p["busy_s"] == pytest.approx(m["dur_s"][mine].sum() / p["pp"], rel=1e-12)
        assert p["moments"] == int(mine.sum())
        spec = sc.serving.disaggregated.prefill if k == 0 else sc.serving.disaggregated.decode
        sv = stack_serving(pool_serving(sc.serving, spec), hw, load_model("llama-3.2-1b"))  # the stack's, for its part
        sm = pool_model(load_model("llama-3.2-1b"), hw, Dtypes(), sv).cost
        # the host's work: per moment, and per sequence in it (the stack's), from the moment log
        assert p["host_busy_s"] == pytest.approx(sm.host_busy_s(int(mine.sum()), int(m["batch"][mine].sum())),
                                                 rel=1e-12)
        assert sm.host_busy_s(10, 7) != sm.host_busy_s(10, 0)  # the stack's per-sequence host work counts
    # seconds by category: all prefill moments' (pool 0), all decode-only moments' (pool 1)
    assert sum(r.category_s["prefill"].values()) == pytest.approx(m["dur_s"][m["kind"] != 1].sum(), rel=1e-9)
    assert sum(r.category_s["decode"].values()) == pytest.approx(m["dur_s"][m["kind"] == 1].sum(), rel=1e-9)
    # the time series average exactly: busy devices (a moment keeps its pool's pp stages busy for
    # dur / pp each) over all replicas, KV blocks over all pools' blocks
    ts, span = r.timeseries, r.makespan_s
    assert ts["busy_frac"].mean() * span * r.replicas == pytest.approx(sum(p["busy_s"] for p in pools), rel=1e-9)
    blocks = sum(p["kv_capacity_blocks"] * p["replicas"] for p in pools)
    assert pools[0]["kv_capacity_blocks"] != pools[1]["kv_capacity_blocks"]
    assert ts["kv_used_frac"].mean() * span * blocks == pytest.approx(
        float(np.sum(m["kv_blocks_engine"] * m["dur_s"])), rel=1e-9)


def test_each_pool_takes_its_stacks_defaults_for_its_own_part(tmp_path):
    # SGLang 0.5's KV share of memory is tiered by the GPU's memory (0.83 on an 80 GB H100,
    # 0.906 on a 141 GB H200): a decode pool of H200s gets the H200's, not the scenario's H100 one
    from hwmodels.load import load_hardware as hw_of
    from simulator.moment.memory import footprint
    from simulator.serving.stacks import resolve

    model = load_model("llama-3.2-1b")
    h100, h200 = hw_of("h100-sxm"), hw_of("h200-sxm")
    share = {p.name: resolve(Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm",
                                                      "serving": {"stack": "sglang"}}).serving, p, model)
             for p in (h100, h200)}
    assert share["h100-sxm"].gpu_memory_utilization != share["h200-sxm"].gpu_memory_utilization
    path = trace(tmp_path, [(0.0, 500, 20)] * 4)
    r = simulate(scen(path, {"decode": {"hardware": "h200-sxm"}}, stack="sglang"))
    for p, part in zip(r.pools, (h100, h200), strict=True):
        sv = share[part.name]
        fp = footprint(model, part, 1, 1, Dtypes(), sv.gpu_memory_utilization, sv.activation_reserve_gb, 1,
                       sv.memory_fraction_of)
        assert p["kv_capacity_blocks"] == fp.kv_capacity_tokens // sv.block_size
    assert r.pools[0]["kv_capacity_blocks"] != r.pools[1]["kv_capacity_blocks"]
