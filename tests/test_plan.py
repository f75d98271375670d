"""`momentsim plan`: pruning by memory and by theory, the fewest replicas by bisection, the cost
per million tokens worked out by hand, and monotone capacity in the replica count."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from hwmodels.load import load_hardware
from simulator.cli import main
from simulator.moment.cost import step_model
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes
from simulator.reports.run import run_scenario
from simulator.serving.scenario import Scenario
from simulator.studies.plan import decode_bound, evaluate, max_sustainable_rate, run_plan
from simulator.studies.plan_report import alternatives, alternatives_head, format_table
from simulator.studies.plan_schema import Candidate, Plan

HERE = Path(".")


def plan_of(**kw: Any) -> Plan:
    data: dict[str, Any] = {
        "model": "llama-3.2-1b",
        # gamma gaps with cv 0.05: arrivals nearly every 1/rate s, so the run's throughput is
        # rate x output_len up to the last request's latency (a hand-checkable number)
        "workload": {"num_requests": 300, "arrival": {"process": "gamma", "rate": 10.0, "cv": 0.05},
                     "prompt_len": {"dist": "fixed", "value": 128}, "output_len": {"dist": "fixed", "value": 64}},
        "slo": {"p99_ttft_ms": 200, "p99_tpot_ms": 20},
        "candidates": [{"hardware": "h100-sxm"}],
        "search": {"tp": [1], "max_replicas": 2, "max_batch_size": [16]},
        "rate_steps": 3,
    }
    data.update(kw)
    return Plan.model_validate(data)


def meets(calls: list[Scenario], need: int = 1):
    """A stand-in simulator: the SLO holds from `need` replicas up (TTFT explodes below)."""
    def run(sc: Scenario) -> dict[str, Any]:
        calls.append(sc)
        ok = sc.serving.replicas >= need
        return {"output_tokens_per_s": 640.0, "ttft_ms": {"p99": 50.0 if ok else 5000.0},
                "tpot_ms": {"p99": 5.0}, "goodput": {"fraction": 1.0}, "requests": {"rejected": 0}}
    return run


def test_a_model_that_does_not_fit_is_never_simulated() -> None:
    # Llama 3 70B in bf16 is 141 GB: tp 2 on 24 GB L4s leaves no room, so tp 1 is not even sized;
    # on 141 GB H200s tp 1 does not fit either (127 GB usable) but tp 2 does
    calls: list[Scenario] = []
    plan = plan_of(model="llama-3-70b", candidates=[{"hardware": "l4"}, {"hardware": "h200-sxm"}],
                   search={"tp": [1, 2], "max_replicas": 2, "max_batch_size": [16]},
                   slo={"p99_ttft_ms": 1000, "p99_tpot_ms": 60})
    res = run_plan(plan, HERE, runner=meets(calls), workers=1)
    l4, h200 = res.candidates
    assert all(load_hardware(sc.hardware).name == "h200-sxm" for sc in calls) and calls
    assert l4.best is None and l4.binding == "memory" and not l4.runs
    st = {c.tp: c for c in l4.configs}
    assert st[2].status == "pruned: memory" and "GB" in st[2].reason
    assert st[1].status == "pruned: memory" and "monotone" in st[1].reason
    assert footprint(load_model("llama-3-70b"), load_hardware("l4"), 2).kv_capacity_tokens == 0
    assert res.best is h200 and h200.best is not None and h200.best.tp == 2
    assert [c.status for c in h200.configs] == ["ok", "pruned: memory"]


def test_fewest_replicas_by_bisection_above_the_analytic_bound() -> None:
    calls: list[Scenario] = []
    plan = plan_of(workload={"num_requests": 100, "arrival": {"process": "poisson", "rate": 400.0},
                             "prompt_len": {"dist": "fixed", "value": 128}, "output_len": {"dist": "fixed", "value": 64}},
                   search={"tp": [1], "max_replicas": 64, "max_batch_size": [16]}, rate_steps=0)
    res = run_plan(plan, HERE, runner=meets(calls, need=23), workers=1)
    c = res.candidates[0]
    assert c.best is not None and c.best.replicas == 23
    bound = c.best.min_replicas
    # the bound: 400 req/s x 64 tokens over one replica's best decode rate (16 sequences per step)
    sm = step_model(load_model("llama-3.2-1b"), load_hardware("h100-sxm"), 1, 1, "graph", Dtypes())
    per_replica = 16 / sm.step_s(Batch(decode_seqs=16, decode_ctx=16 * 128))
    assert bound == math.ceil(400 * 64 / per_replica) and 1 < bound < 23
    assert all(sc.serving.replicas >= bound for sc in calls)  # nothing below the bound is tried
    seeds: dict[int, list[int]] = {}
    for sc in calls:
        seeds.setdefault(sc.serving.replicas, []).append(sc.seed)
    assert len(seeds) <= 2 * math.ceil(math.log2(64)) + 1  # gallop + bisect, not a linear scan
    # a pass is checked under every seed, a miss stops at the first
    assert all(s == ([0, 1, 2] if r >= 23 else [0]) for r, s in seeds.items())
    assert c.cost_per_hour == 4.0 * 23


def test_tpot_bound_prunes_without_simulating() -> None:
    calls: list[Scenario] = []
    plan = plan_of(slo={"p99_tpot_ms": 0.05})  # no decode step of any model is 50 us on an H100
    res = run_plan(plan, HERE, runner=meets(calls), workers=1)
    assert not calls and res.best is None
    assert res.candidates[0].configs[0].status == "pruned: TPOT bound" and res.candidates[0].binding == "TPOT"


def test_tiny_plan_meets_the_slo_and_costs_what_the_formula_says() -> None:
    plan = plan_of()
    res = run_plan(plan, HERE, workers=1)
    c = res.best
    assert c is not None and c.best is not None and (c.best.tp, c.best.replicas) == (1, 1)
    s = c.summary()
    assert s["p99_ttft_ms"] <= 200 and s["p99_tpot_ms"] <= 20
    # by hand: $4/h for 1 H100; 10 req/s x 64 tokens = 640 tokens/s -> 4 / 3600 / 640 x 1e6 = $1.736
    assert s["cost_per_m_output_tokens"] == pytest.approx(4.0 / 3600 / 640 * 1e6, rel=0.02)
    assert s["cost_per_m_output_tokens"] == pytest.approx(4.0 * 1 / 3600 / s["output_tokens_per_s"] * 1e6, rel=1e-12)
    assert c.max_rate is not None and c.max_rate >= 10.0 and c.binding in ("TTFT", "TPOT")


def test_more_replicas_never_reduce_the_sustainable_rate() -> None:
    plan = plan_of(workload={"num_requests": 200, "arrival": {"process": "poisson", "rate": 5.0},
                             "prompt_len": {"dist": "fixed", "value": 128}, "output_len": {"dist": "fixed", "value": 32}},
                   slo={"p99_ttft_ms": 100, "p99_tpot_ms": 20})
    cand = Candidate(hardware="l4")
    rates = [max_sustainable_rate(plan, cand, HERE, 1, 1, 16, "continuous", r, steps=6) for r in (1, 2, 3)]
    assert rates[0] > 0
    assert rates[0] <= rates[1] <= rates[2]


def test_the_decode_bound_is_never_beaten() -> None:
    # a burst keeps the replica as busy as it can be: its throughput stays under the bound
    model, hw = load_model("llama-3.2-1b"), load_hardware("l4")
    fp = footprint(model, hw)
    bound, step1 = decode_bound(model, hw, 1, 1, "graph", Dtypes(), 32, fp.kv_capacity_tokens, 256)
    sc = Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "l4", "serving": {"max_batch_size": 32},
                                  "workload": {"num_requests": 128, "arrival": {"process": "burst"},
                                               "prompt_len": {"dist": "fixed", "value": 256},
                                               "output_len": {"dist": "fixed", "value": 64}}})
    m = run_scenario(sc)
    assert 0 < m["output_tokens_per_s"] <= bound
    assert m["tpot_ms"]["p50"] >= step1 * 1e3


def test_plan_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = plan_of().model_dump(mode="json", exclude_none=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "candidates": [{"hardware": "h100"}]}), encoding="utf-8")
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "candidates[0].hardware" in err and "h100-sxm" in err
    calls: list[Scenario] = []
    monkeypatch.setattr("simulator.studies.plan.default_runner", meets(calls))
    good = tmp_path / "plan.yaml"
    good.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["plan", str(good), "--out", str(tmp_path / "o"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["hardware"] == "h100-sxm" and out["best"]["replicas"] == 1 and out["simulations"] == len(calls)
    for f in ("plan.csv", "configs.csv", "runs.csv", "plan.png"):
        assert (tmp_path / "o" / f).stat().st_size > 0
    assert main(["plan", str(good), "--out", str(tmp_path / "o")]) == 0
    assert "cheapest: h100-sxm" in capsys.readouterr().out


# -- trust: seeds, headroom, the binding constraint -------------------------------------------------
def by_seed(calls: list[Scenario], ttft: dict[int, float], need: int = 1, overloaded_below: int = 0):
    """A stand-in simulator whose p99 TTFT depends on the seed (and explodes below `need` replicas)."""
    def run(sc: Scenario) -> dict[str, Any]:
        calls.append(sc)
        r = sc.serving.replicas
        return {"output_tokens_per_s": 640.0, "ttft_ms": {"p99": ttft[sc.seed] if r >= need else 5000.0},
                "tpot_ms": {"p99": 10.0}, "goodput": {"fraction": 0.99}, "requests": {"rejected": 0},
                "overloaded": r < overloaded_below}
    return run


def test_headroom_keeps_the_answer_that_far_below_each_limit() -> None:
    # p99 TTFT 95 ms under a 100 ms bound passes with no headroom and fails with 10 % (limit 90 ms)
    slo = {"p99_ttft_ms": 100, "p99_tpot_ms": 20}
    for headroom, ok in ((0.0, True), (0.1, False), (0.04, True)):
        plan = plan_of(slo={**slo, "headroom": headroom}, rate_steps=0,
                       search={"tp": [1], "max_replicas": 1, "max_batch_size": [16]})
        res = run_plan(plan, HERE, runner=by_seed([], {0: 95.0, 1: 95.0, 2: 95.0}), workers=1)
        assert (res.best is not None) is ok, headroom
    # the default is 10 %
    assert plan_of().slo.headroom == 0.1


def test_evaluate_shares_of_each_limit_by_hand() -> None:
    slo = Plan.model_validate({**plan_of().model_dump(), "slo": {
        "p99_ttft_ms": 200, "p99_tpot_ms": 20, "goodput": 0.9, "headroom": 0.1}}).slo
    m = {"ttft_ms": {"p99": 150.0}, "tpot_ms": {"p99": 19.0}, "goodput": {"fraction": 0.95}, "requests": {}}
    ok, ratios = evaluate(m, slo)
    # 150/200, 19/20, misses 5 % of the 10 % allowed
    assert ratios == pytest.approx({"TTFT": 0.75, "TPOT": 0.95, "goodput": 0.5}) and not ok  # TPOT > 0.9
    ok, ratios = evaluate({**m, "tpot_ms": {"p99": 13.0}}, slo)
    assert ok and max(ratios, key=ratios.get) == "TTFT"  # 0.75 > 0.65 > 0.5
    ok, ratios = evaluate({**m, "tpot_ms": {"p99": 13.0}, "overloaded": True}, slo)
    assert not ok and ratios["throughput"] == math.inf  # whatever the percentiles say


def test_every_answer_holds_under_at_least_three_seeds() -> None:
    # seed 2 misses at one replica: the plan must not take one replica, whatever seeds 0 and 1 say
    calls: list[Scenario] = []
    plan = plan_of(rate_steps=0, search={"tp": [1], "max_replicas": 4, "max_batch_size": [16]})
    res = run_plan(plan, HERE, runner=by_seed(calls, {0: 50.0, 1: 60.0, 2: 190.0}, need=1), workers=1)
    assert res.best is None or res.best.best.replicas != 1
    seeds_at = {}
    for sc in calls:
        seeds_at.setdefault(sc.serving.replicas, []).append(sc.seed)
    assert seeds_at[1] == [0, 1, 2]  # the miss was found on the third seed
    # with seed 2 fine too, one replica is the answer, checked under seeds 0, 1, 2, and the spread
    # of its p99 TTFT is the seeds' range
    res = run_plan(plan, HERE, runner=by_seed([], {0: 50.0, 1: 60.0, 2: 70.0}), workers=1)
    s = res.best.summary()
    assert s["replicas"] == 1 and s["seeds"] == [0, 1, 2]
    assert s["spread"]["p99_ttft_ms"] == {"min": 50.0, "mean": 60.0, "max": 70.0}
    assert s["p99_ttft_ms"] == 70.0 and s["goodput"] == 0.99  # the answer reports the worst seeds
    assert s["output_tokens_per_s"] == 640.0 and s["cost_per_m_output_tokens"] == pytest.approx(4 / 3600 / 640 * 1e6)
    assert s["limit_used"] == pytest.approx({"TTFT": 70 / 200, "TPOT": 10 / 20}) and s["nearest_limit"] == "TPOT"
    with pytest.raises(ValueError):
        plan_of(seeds=2)


def test_the_plan_says_what_binds_and_how_far_each_alternative_is() -> None:
    calls: list[Scenario] = []
    plan = plan_of(rate_steps=0, search={"tp": [1], "max_replicas": 8, "max_batch_size": [16, 32]})
    # 3 replicas needed; below that the queue grows (overloaded), so the runs "miss" on throughput
    res = run_plan(plan, HERE, runner=by_seed(calls, {0: 100.0, 1: 120.0, 2: 140.0}, need=3,
                                              overloaded_below=3), workers=1)
    s = res.best.summary()
    assert s["replicas"] == 3 and s["nearest_limit"] == "TTFT"
    assert s["limit_used"]["TTFT"] == pytest.approx(0.7)  # 140 / 200
    assert s["one_replica_fewer"]["replicas"] == 2 and s["one_replica_fewer"]["fails_on"] in ("TTFT", "throughput")
    text = format_table(res)
    assert "binding: TTFT at 10 req/s uses 70% of its limit" in text
    alts = alternatives(res)
    assert alts[0][-1] == "the answer" and alts[0][0].endswith("x3")
    head = alternatives_head(res)
    rows = [dict(zip(head, a, strict=True)) for a in alts]
    assert any(r["verdict"].startswith("misses: one replica fewer") and r["configuration"].endswith("x2")
               and r["TTFT used"] == "2500%" and "throughput" in r["also"] for r in rows)


def test_plans_size_models_in_their_own_weight_format() -> None:
    # gpt-oss-120b's experts are MXFP4 in its checkpoint: 65 GB, so one 80 GB H100 holds it;
    # forced to bf16 (234 GB) it needs tp 4
    calls: list[Scenario] = []
    plan = plan_of(model="gpt-oss-120b", search={"tp": [1, 4], "max_replicas": 1, "max_batch_size": [16]},
                   slo={"p99_ttft_ms": 1000, "p99_tpot_ms": 60})
    own = run_plan(plan, HERE, runner=meets(calls), workers=1).candidates[0]
    assert {c.tp: c.status for c in own.configs}[1] != "pruned: memory"
    bf16 = run_plan(plan.model_copy(update={"serving": {"weight_dtype": "bf16"}}), HERE, runner=meets([]),
                    workers=1).candidates[0]
    assert {c.tp: c.status for c in bf16.configs}[1] == "pruned: memory"
    assert all(sc.serving.weight_dtype is None for sc in calls)  # the scenarios keep the checkpoint's format


def test_plans_with_expert_parallelism_need_ep_equal_tp() -> None:
    plan = plan_of(model="deepseek-v3", candidates=[{"hardware": "h200-sxm"}], serving={"ep": 8},
                   search={"tp": [4, 8], "max_replicas": 1, "max_batch_size": [16]},
                   slo={"p99_ttft_ms": 5000, "p99_tpot_ms": 200})
    c = run_plan(plan, HERE, runner=meets([]), workers=1).candidates[0]
    st = {k.tp: k for k in c.configs}
    assert st[4].status == "pruned: tp" and "ep=8 must be 1 or equal tp=4" in st[4].reason
    assert st[8].status == "ok"
