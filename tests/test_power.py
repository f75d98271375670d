"""Energy and power (simulator/moment/power.py): limiting cases (no dynamic share: idle power x
time; no load: idle power), a memory-bound decode's power from the weights it streams worked out
by hand, the power limit, the peak of overlapping moments by hand, the run's energy summary, and
electricity in a plan's cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.load import hardware_from_dict, load_hardware
from simulator.moment.cost import step_model
from simulator.moment.model import load_model
from simulator.moment.power import MomentPower, peak_power
from simulator.reports.metrics import summarize
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario
from simulator.studies.plan import run_plan
from simulator.studies.plan_schema import Plan


def scen(hardware: str = "h100-sxm", workload: dict | None = None, **serving: Any) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": hardware, "seed": 3, "serving": serving,
        "workload": {"num_requests": 60, "arrival": {"process": "poisson", "rate": 20.0},
                     "prompt_len": {"dist": "uniform", "low": 64, "high": 900},
                     "output_len": {"dist": "uniform", "low": 4, "high": 120}, **(workload or {})}})


def part(tmp_path, **power: float) -> str:
    p = tmp_path / "part.yaml"
    fields = ", ".join(f"{k}: {v}" for k, v in power.items())
    p.write_text(f"base: h100-sxm\nname: powered\ndevice:\n  power: {{{fields}}}\n")
    return str(p)


def test_without_a_dynamic_share_energy_is_idle_power_times_time(tmp_path):
    # both shares 0: every device draws idle_w all the time, busy or not: 2 replicas x tp 2 devices
    hw = part(tmp_path, tdp_w=700, idle_w=90, compute_share=0, memory_share=0)
    r = simulate(scen(hw, replicas=2, tp=2))
    e = r.energy
    assert e["dynamic_j"] == 0.0
    assert e["total_j"] == pytest.approx(90 * 4 * r.makespan_s, rel=1e-12)
    assert e["peak_power_w"].tolist() == pytest.approx([180.0, 180.0])
    np.testing.assert_allclose(r.timeseries["power_w"], 360.0, rtol=1e-12)


def test_at_no_load_a_server_draws_its_idle_power():
    # 5 short requests over ~500 s: the GPU is busy well under 0.1 % of the time, and the energy
    # above idle is at most (TDP - idle) x busy time
    r = simulate(scen(workload={"num_requests": 5, "arrival": {"process": "poisson", "rate": 0.01}}))
    e, idle = r.energy, load_hardware("h100-sxm").device.power.idle_w
    busy = float(r.moments["dur_s"].sum())
    assert busy < 1e-3 * r.makespan_s
    assert e["idle_j"] == pytest.approx(idle * r.makespan_s, rel=1e-12)
    assert 0 < e["dynamic_j"] <= (700 - idle) * busy
    assert 1.0 < e["total_j"] / (idle * r.makespan_s) <= 1 + (700 - idle) / idle * busy / r.makespan_s


def test_a_memory_bound_decode_draws_for_the_weights_it_streams():
    # Llama 3 8B, one sequence of 1000 tokens: a decode step streams every weight once (16.06 GB
    # in bf16) and the KV cache (1001 tokens x 128 KiB), and does 2 FLOPs per parameter; its
    # demand is dyn x (memory_share x bytes / (bw x eff_m) + compute_share x flops / (peak x eff_c))
    model, hw = load_model("llama-3-8b"), load_hardware("h100-sxm")
    sm = step_model(model, hw)
    p = MomentPower(sm, hw.device.power)
    pw, eff, dev = hw.device.power, hw.efficiency, hw.device
    params = model.num_params() - model.vocab_size * model.hidden_size  # the embedding table is gathered, not streamed
    stream = params * 2 + 1001 * 2 * 8 * 128 * 32 * 2  # weights + K and V of 8 KV heads x 128 x 32 layers
    flops = 2 * params + 4 * 32 * 128 * 1001 * 32       # GEMMs + attention (4 x heads x head_dim per key)
    dyn = pw.tdp_w - pw.idle_w
    hand = dyn * (pw.memory_share * stream / (dev.bandwidth * eff.gemm_memory)
                  + pw.compute_share * flops / (dev.peak_flops("bf16") * eff.gemm_compute))
    assert p.demand(1, 1000, 0, 0, 0.0, 0, 1) == pytest.approx(hand, rel=0.02)
    dt = sm.step_agg(1, 1000, 0, 0, 0.0, 0, 1)
    watts = pw.idle_w + p.energy(np.array([p.demand(1, 1000, 0, 0, 0.0, 0, 1)]), np.array([dt]))[0] / dt
    assert pw.idle_w < watts < pw.tdp_w


def test_a_compute_bound_prefill_runs_at_the_power_limit(tmp_path):
    # with compute_share 1.5, an 8k-token prefill's tensor work alone asks for more than the limit
    hw = hardware_from_dict({"base": "h100-sxm", "name": "hot", "device": {"power": {
        "tdp_w": 700, "idle_w": 70, "compute_share": 1.5}}}, "hot.yaml")
    sm = step_model(load_model("llama-3-8b"), hw)
    p = MomentPower(sm, hw.device.power)
    b = (0, 0, 1, 8192, 8192 * 8193 / 2, 0, 1)
    dt = sm.step_agg(*b)
    assert p.demand(*b) > 630 * dt
    assert p.energy(np.array([p.demand(*b)]), np.array([dt]))[0] == pytest.approx(630 * dt, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(ds=st.integers(0, 256), ctx=st.integers(0, 8000), pt=st.integers(0, 4096), share=st.floats(0.1, 2.0))
def test_power_stays_between_idle_and_the_limit_and_scales_with_the_shares(ds, ctx, pt, share):
    if ds + pt == 0:
        return
    model = load_model("llama-3.2-1b")
    base = load_hardware("h100-sxm")
    sm = step_model(model, base)
    b = (ds, ds * ctx, 1 if pt else 0, pt, pt * (pt + 1) / 2, 0, ds + (1 if pt else 0))
    one = MomentPower(sm, base.device.power.model_copy(update={"compute_share": 1.0, "memory_share": 1.0}))
    scaled = MomentPower(sm, base.device.power.model_copy(update={"compute_share": share, "memory_share": share}))
    assert scaled.demand(*b) == pytest.approx(share * one.demand(*b), rel=1e-9)  # linear in the shares
    more = one.demand(ds, ds * ctx + ds * 100, *b[2:])                           # more context, more energy
    assert more >= one.demand(*b)
    dt = sm.step_agg(*b)
    e = scaled.energy(np.array([scaled.demand(*b)]), np.array([dt]))[0]
    assert 0 <= e <= scaled.dyn_w * dt * (1 + 1e-12)


@settings(max_examples=80, deadline=None)
@given(model=st.sampled_from(["llama-3.2-1b", "gemma-3-1b", "gpt-oss-20b", "deepseek-v2-lite"]),
       ds=st.integers(0, 300), ctx=st.integers(0, 5000), ps=st.integers(0, 8), chunk=st.integers(1, 3000),
       cached=st.integers(0, 9000), q=st.integers(1, 6))
def test_the_vectorised_demand_is_the_scalar_one(model, ds, ctx, ps, chunk, cached, q):
    # the run's energy comes from demand_array over logged aggregates; demand() is its definition
    sm = step_model(load_model(model), load_hardware("h100-sxm"))
    p = MomentPower(sm, load_hardware("h100-sxm").device.power)
    pt = ps * chunk
    if ds + pt == 0:
        return
    b = (ds, ds * ctx, ps, pt, ps * (chunk * cached + chunk * (chunk + 1) / 2), ps * cached, ds + ps)
    arr = p.demand_array(*(np.array([x]) for x in b), q=q)[0]
    assert arr == pytest.approx(p.demand(*b, q=q), rel=1e-12)


def test_peak_power_of_overlapping_moments_by_hand():
    # replica 0: 100 W on [0, 2), 50 W on [1, 3), 120 W on [3, 4) -> 150 W at once on [1, 2);
    # replica 1: 30 W on [0, 1), 40 W on [1, 2) (touching, not overlapping) -> 40 W
    start = np.array([0.0, 1.0, 3.0, 0.0, 1.0])
    end = np.array([2.0, 3.0, 4.0, 1.0, 2.0])
    w = np.array([100.0, 50.0, 120.0, 30.0, 40.0])
    g = np.array([0, 0, 0, 1, 1])
    assert peak_power(start, end, w, g, 2).tolist() == pytest.approx([150.0, 40.0])
    # moments of one engine never overlap: the largest of them
    assert peak_power(start[3:], end[3:], w[3:], g[3:] - 1, 1, overlap=False).tolist() == [40.0]


def test_pipelined_replica_peak_sums_its_virtual_engines():
    # pp 2: the virtual engines' moments overlap; the peak is the most power drawn at once, found
    # here by brute force at every moment's start
    r = simulate(scen(pp=2, replicas=2))
    m = r.moments
    start, end = m["start_s"], m["start_s"] + m["dur_s"]
    watts = m["energy_j"] / m["dur_s"]
    for rep in (0, 1):
        sel = m["replica"] == rep
        at = [watts[sel & (start <= t) & (t < end)].sum() for t in start[sel]]
        assert r.energy["peak_power_w"][rep] == pytest.approx(r.energy["idle_power_w"] + max(at), rel=1e-9)
    assert r.energy["dynamic_j"] == pytest.approx(float(m["energy_j"].sum()), rel=1e-12)


def test_the_summary_reports_energy_per_token_and_power_per_replica():
    r = simulate(scen(replicas=2))
    s = summarize(r)
    e = s["energy"]
    assert s["energy_j_per_token"] == e["j_per_output_token"]
    assert e["j_per_output_token"] == pytest.approx(r.energy["total_j"] / s["output_tokens"], rel=1e-8)
    assert e["avg_power_w"] == pytest.approx(r.energy["total_j"] / r.makespan_s, rel=1e-8)
    assert e["avg_power_w_per_replica"] == pytest.approx(e["avg_power_w"] / 2, rel=1e-8)
    assert e["idle_power_w_per_replica"] <= e["avg_power_w_per_replica"] <= e["peak_power_w_per_replica"] <= 700
    # the time series averages over intervals that tile the run: its mean is the average power
    assert float(np.mean(r.timeseries["power_w"])) == pytest.approx(e["avg_power_w"], rel=1e-8)  # 9 digits kept


def test_hardware_without_power_figures_reports_none():
    sc = Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "tpu-v5e",
                                  "workload": {"num_requests": 4, "output_len": {"dist": "fixed", "value": 4}}})
    s = summarize(simulate(sc))
    assert s["energy_j_per_token"] is None and "power" in s["energy"]["note"]


def test_a_plan_prices_electricity_beside_the_hourly_price():
    # two identical parts at the same hourly price; the stand-in runs draw 2 kW on the first and
    # 1 kW on the second: at $0.5/kWh the second is $0.50/hour cheaper and becomes the answer
    def run(sc: Scenario) -> dict[str, Any]:
        watts = 2000.0 if "h100" in sc.hardware else 1000.0
        return {"output_tokens_per_s": 640.0, "ttft_ms": {"p99": 50.0}, "tpot_ms": {"p99": 5.0},
                "goodput": {"fraction": 1.0}, "requests": {"rejected": 0}, "energy_j_per_token": 1.0,
                "energy": {"avg_power_w": watts}}
    data = {"model": "llama-3.2-1b", "workload": {"num_requests": 50, "arrival": {"process": "poisson", "rate": 5.0}},
            "slo": {"p99_ttft_ms": 200}, "search": {"tp": [1], "max_replicas": 1, "max_batch_size": [16]},
            "candidates": [{"hardware": "h100-sxm", "price_per_hour": 4.0}, {"hardware": "h200-sxm", "price_per_hour": 4.0}],
            "rate_steps": 0}
    plain = run_plan(Plan.model_validate(data), Path("."), runner=run, workers=1)
    assert [c.cost_per_hour for c in plain.candidates] == [4.0, 4.0]
    priced = run_plan(Plan.model_validate({**data, "electricity_usd_per_kwh": 0.5}), Path("."),
                      runner=run, workers=1)
    h100, h200 = priced.candidates
    assert (h100.cost_per_hour, h200.cost_per_hour) == (pytest.approx(5.0), pytest.approx(4.5))
    assert priced.best is h200
    assert h200.summary()["electricity_per_hour"] == pytest.approx(0.5)
    assert h200.cost_per_m_output_tokens == pytest.approx(4.5 / 3600 / 640 * 1e6)


def test_power_figures_are_checked():
    with pytest.raises(Exception, match="idle_w"):
        hardware_from_dict({"base": "h100-sxm", "name": "x", "device": {"power": {"tdp_w": 100, "idle_w": 200}}}, "x")


def test_each_moments_energy_is_its_own_batchs_demand_by_hand():
    # one request alone on two replicas (one stays idle): its prefill moment asks for the demand
    # of P tokens from nothing cached, decode step j for one sequence after P + j tokens, each at
    # most the power limit over its length; the idle replica draws its idle power only
    from simulator.moment.power import MomentPower
    from simulator.serving.scenario import Scenario

    P, out = 700, 6
    r = simulate(Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", "serving": {"replicas": 2},
                                          "workload": {"num_requests": 1, "prompt_len": {"dist": "fixed", "value": P},
                                                       "output_len": {"dist": "fixed", "value": out}}}))
    hw = load_hardware("h100-sxm")
    p = MomentPower(step_model(load_model("llama-3.2-1b"), hw), hw.device.power)
    want = [p.demand(0, 0, 1, P, P * (P + 1) / 2, 0, 1)] + [p.demand(1, P + j, 0, 0, 0.0, 0, 1) for j in range(out - 1)]
    m = r.moments
    np.testing.assert_allclose(m["energy_j"], p.energy(np.asarray(want), m["dur_s"]), rtol=1e-12)
    e, t = r.energy, r.makespan_s
    idle = hw.device.power.idle_w
    np.testing.assert_allclose(e["replica_j"], [m["energy_j"].sum() + idle * t, idle * t], rtol=1e-12)
    assert e["peak_power_w"][1] == idle and e["avg_power_w"][1] == pytest.approx(idle, rel=1e-12)


def test_the_peak_of_a_pipelined_replica_adds_its_overlapping_moments():
    # pp 2: a replica's two virtual engines run moments at once; its peak power is its devices' idle power
    # plus the largest sum of the dynamic power of moments running together (by a sweep here)
    from simulator.serving.scenario import Scenario

    r = simulate(Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", "serving": {"pp": 2},
                                          "workload": {"num_requests": 40, "arrival": {"process": "burst"}}}))
    m = r.moments
    watts = m["energy_j"] / m["dur_s"]
    start, end = m["start_s"], m["start_s"] + m["dur_s"]
    assert (np.diff(start) < m["dur_s"][:-1]).any()  # moments overlap
    best = max(float(watts[(start <= s) & (end > s)].sum()) for s in start)
    idle = 2 * load_hardware("h100-sxm").device.power.idle_w  # the replica's two devices
    assert r.energy["peak_power_w"][0] == pytest.approx(idle + best, rel=1e-9)
