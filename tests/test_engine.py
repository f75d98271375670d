"""The engine's invariants: every request accounted for, KV within capacity, exact token counts,
time moving forward, determinism, hand-computed static batches, preemption, token budgets;
pipeline parallelism as pp virtual engines per replica."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodels.load import load_hardware
from simulator.moment.cost import DEVICE_CATEGORIES, step_model
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes, step_ops, total_flops
from simulator.reports.metrics import summarize
from simulator.serving.engine import DECODE, MIXED, PREFILL, simulate
from simulator.serving.result import CATEGORY_SAMPLES, TIMESERIES_POINTS
from simulator.serving.scenario import Scenario

MODEL = "llama-3.2-1b"


def scen(hardware="h100-sxm", seed=0, **parts) -> Scenario:
    d = {"model": MODEL, "hardware": hardware, "seed": seed, "serving": {}, "workload": {}}
    for k, v in parts.items():
        section, key = k.split("__")
        d[section][key] = v
    return Scenario.model_validate(d)


def sm_of(hw="h100-sxm", pp=1):
    return step_model(load_model(MODEL), load_hardware(hw), 1, pp, "graph", Dtypes())


def tiny_hw(tmp_path, kv_tokens: int, pp: int = 1) -> str:
    """A what-if H100 whose memory leaves room for about kv_tokens of llama-3.2-1b KV cache per
    replica of pp stages (tp 1)."""
    m = load_model(MODEL)
    gb = (m.weight_bytes("bf16", 1, pp) + 1e9 + (kv_tokens + 0.5) * m.kv_bytes_per_token("bf16", 1, pp)) / 0.9 / 1e9
    p = tmp_path / "tiny.yaml"
    p.write_text(f"base: h100-sxm\nname: tiny-h100\ndevice:\n  memory_gb: {gb!r}\n")
    return str(p)


def check(r, exact_tokens: bool = True) -> None:
    """Invariants every run keeps (with pp > 1: per virtual engine, and busy at most 1)."""
    q, m = r.requests, r.moments
    n = q["arrival_s"].size
    st_ = q["status"]
    pp = r.scenario.serving.pp
    assert r.pp == pp
    # compact request columns (a run may hold 10M requests) and whole blocks
    assert [q[k].dtype for k in ("replica", "engine", "status", "preemptions")] == [np.int32, np.int16, np.int8,
                                                                                   np.int32]
    assert m["kv_blocks_used"].dtype.kind == m["kv_blocks_engine"].dtype.kind == "i"
    assert set(np.unique(st_).tolist()) <= {0, 1}
    assert int((st_ == 1).sum()) == sum(r.reject_reasons.values())
    done = st_ == 0
    assert not np.isnan(q["finish_s"][done]).any() and np.isnan(q["finish_s"][~done]).all()
    assert np.all(q["first_token_s"][done] <= q["finish_s"][done])
    assert np.all(q["first_token_s"][done] >= q["arrival_s"][done])
    assert np.all(m["kv_blocks_used"] <= r.kv_capacity_blocks) and np.all(m["kv_blocks_used"] >= 0)
    # each virtual engine holds at most its share of the replica's blocks
    assert np.all(m["kv_blocks_engine"] <= r.kv_capacity_blocks // pp) and np.all(m["kv_blocks_engine"] >= 0)
    assert np.all(m["kv_blocks_engine"] <= m["kv_blocks_used"])
    assert np.all((0 <= m["engine"]) & (m["engine"] < pp)) and np.all((0 <= q["engine"]) & (q["engine"] < pp))
    if pp == 1:
        assert not m["engine"].any() and not q["engine"].any()
        assert np.array_equal(m["kv_blocks_used"], m["kv_blocks_engine"])
    assert np.all(m["dur_s"] > 0)
    assert np.all(np.diff(m["start_s"]) >= 0)  # time never goes back
    units = [(rep, e) for rep in range(r.replicas) for e in range(pp)]
    for rep, e in units:
        sel = (m["replica"] == rep) & (m["engine"] == e)
        s, d = m["start_s"][sel], m["dur_s"][sel]
        assert np.all(np.diff(s) >= 0)
        assert np.all(s[1:] >= (s + d)[:-1] - 1e-9 * np.maximum(1.0, s[1:]))  # no overlap in a virtual engine
    assert r.makespan_s >= (m["start_s"] + m["dur_s"]).max(initial=0.0) - 1e-12
    assert n == done.sum() + (st_ == 1).sum()
    # busy fractions are sums of n moment lengths over the makespan (itself n additions): at most
    # 1 up to the round-off of n additions, n eps relative; the time series divides differences of
    # prefix sums of makespan size by intervals 1/TIMESERIES_POINTS as long, so 1000 times that
    eps = len(m["dur_s"]) * np.finfo(float).eps
    assert r.timeseries["busy_frac"].max(initial=0.0) <= 1.0 + 4 * TIMESERIES_POINTS * eps
    busy = summarize(r)["gpu_busy_frac"]
    assert busy is None or busy <= 1.0 + 4 * eps
    if exact_tokens:
        # each completed request produced exactly output_len tokens: its first at the end of its
        # prefill, then one per decode-bearing moment of its virtual engine until it finished
        for rep, e in units:
            sel = (m["replica"] == rep) & (m["engine"] == e) & (m["kind"] != PREFILL)
            ends = np.sort(m["start_s"][sel] + m["dur_s"][sel])
            mine = done & (q["replica"] == rep) & (q["engine"] == e)
            steps = np.searchsorted(ends, q["finish_s"][mine], "right") - np.searchsorted(
                ends, q["first_token_s"][mine], "right")
            assert np.array_equal(steps, q["output_len"][mine] - 1)


def test_step_cost_matches_step_model():
    sm = sm_of()
    c = sm.step_agg
    rng = np.random.default_rng(0)
    for _ in range(200):
        ds, ps = int(rng.integers(0, 300)), int(rng.integers(0, 4))
        pt = int(rng.integers(ps, 5 * ps + 1) * 100) if ps else 0
        if ds + pt == 0:
            continue
        dc = int(rng.integers(0, 2000)) * ds
        pairs = float(rng.integers(0, 10**6)) * ps
        pc = int(rng.integers(0, 100)) * ps
        b = Batch(ds, dc, ps, pt, pairs, pc, ds + ps)
        assert c(ds, dc, ps, pt, pairs, pc, ds + ps) == pytest.approx(sm.step_s(b), rel=1e-9)


@pytest.mark.parametrize("sched", ["static", "continuous", "chunked"])
def test_invariants_poisson(sched):
    sc = scen(serving__scheduler=sched, serving__max_batch_size=16, serving__max_batched_tokens=2048,
              workload__num_requests=300, workload__arrival={"process": "poisson", "rate": 40.0},
              workload__prompt_len={"dist": "lognormal", "mean": 300, "sigma": 0.6, "max": 2000},
              workload__output_len={"dist": "lognormal", "mean": 40, "sigma": 0.8})
    r = simulate(sc)
    check(r)
    assert r.requests["status"].sum() == 0 and r.requests["preemptions"].sum() == 0
    # no preemption, no prefix cache: the moments processed every prompt token and every
    # generated token but the last of each request (whose KV is never needed)
    q = r.requests
    assert r.moments["tokens"].sum() == q["prompt_len"].sum() + (q["output_len"] - 1).sum()
    kinds = set(np.unique(r.moments["kind"]).tolist())
    assert kinds <= ({PREFILL, DECODE, MIXED} if sched == "chunked" else {PREFILL, DECODE})
    assert sum(sum(v.values()) for v in r.category_s.values()) == pytest.approx(r.moments["dur_s"].sum(), rel=1e-9)
    assert r.host_busy_s == pytest.approx(r.moments["dur_s"].size * (sm_of().issue_s + sm_of().overhead_s))
    assert 0 < r.total_flops and 0 < r.total_bytes


def test_same_seed_same_result_other_seed_differs():
    kw = dict(serving__scheduler="continuous", workload__num_requests=100,
              workload__arrival={"process": "poisson", "rate": 30.0},
              workload__output_len={"dist": "uniform", "low": 1, "high": 60})
    a, b, c = simulate(scen(seed=1, **kw)), simulate(scen(seed=1, **kw)), simulate(scen(seed=2, **kw))
    for k in a.requests:
        assert np.array_equal(a.requests[k], b.requests[k], equal_nan=True)
    for k in a.moments:
        assert np.array_equal(a.moments[k], b.moments[k])
    assert not np.array_equal(a.requests["finish_s"], c.requests["finish_s"], equal_nan=True)


@pytest.mark.parametrize("n,maxb", [(4, 8), (6, 4)])
def test_static_makespan_by_hand(n, maxb):
    P, OUT = 100, 20
    sc = scen(serving__scheduler="static", serving__max_batch_size=maxb, workload__num_requests=n,
              workload__arrival={"process": "burst"}, workload__prompt_len={"dist": "fixed", "value": P},
              workload__output_len={"dist": "fixed", "value": OUT})
    r = simulate(sc)
    check(r)
    sm = sm_of()

    def batch_s(b: int) -> float:  # prefill of b prompts, then OUT-1 decode steps, contexts +1 each
        return sm.step_s(Batch.of(prefill=[(b, P)])) + sum(
            sm.step_s(Batch(b, b * (P + k - 1))) for k in range(1, OUT))

    sizes = [maxb] * (n // maxb) + ([n % maxb] if n % maxb else [])
    assert r.makespan_s == pytest.approx(sum(batch_s(b) for b in sizes), rel=1e-9)
    assert r.moments["dur_s"].size == len(sizes) * OUT
    first = sm.step_s(Batch.of(prefill=[(sizes[0], P)]))
    assert r.requests["first_token_s"][0] == pytest.approx(first, rel=1e-12)
    # device work from the running sums = the ops of every moment added up (dense model: exact)
    batches = [b for n_ in sizes for b in [Batch.of(prefill=[(n_, P)])] + [Batch(n_, n_ * (P + k - 1))
                                                                          for k in range(1, OUT)]]
    model = load_model(MODEL)
    ops = [step_ops(model, b) for b in batches]
    assert r.total_flops == pytest.approx(sum(total_flops(o) for o in ops), rel=1e-9)
    assert r.total_bytes == pytest.approx(sum(float(np.sum(x.bytes)) for o in ops for x in o), rel=1e-9)


def test_continuous_beats_static_throughput():
    kw = dict(serving__max_batch_size=32, workload__num_requests=300,
              workload__arrival={"process": "poisson", "rate": 200.0},
              workload__prompt_len={"dist": "lognormal", "mean": 200, "sigma": 0.5},
              workload__output_len={"dist": "lognormal", "mean": 100, "sigma": 1.0})
    s = simulate(scen(serving__scheduler="static", **kw))
    c = simulate(scen(serving__scheduler="continuous", **kw))
    tput = lambda r: r.requests["output_len"][r.requests["status"] == 0].sum() / r.makespan_s
    assert tput(c) >= tput(s)
    assert np.nanmean(c.requests["finish_s"] - c.requests["arrival_s"]) < np.nanmean(
        s.requests["finish_s"] - s.requests["arrival_s"])


@pytest.mark.parametrize("sched", ["continuous", "chunked"])
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_when_kv_is_tiny(tmp_path, sched, mode):
    hw = tiny_hw(tmp_path, 3000)
    sc = scen(hardware=hw, serving__scheduler=sched, serving__preemption=mode, serving__max_batch_size=64,
              serving__max_batched_tokens=1024, workload__num_requests=120,
              workload__arrival={"process": "poisson", "rate": 100.0},
              workload__prompt_len={"dist": "uniform", "low": 50, "high": 400},
              workload__output_len={"dist": "uniform", "low": 50, "high": 500})
    r = simulate(sc)
    assert r.kv_capacity_blocks == 3000 // 16
    check(r, exact_tokens=False)
    assert r.requests["preemptions"].sum() > 0
    assert (r.requests["status"] == 0).all()  # every one still completes
    assert r.moments["kv_blocks_used"].max() > 0.8 * r.kv_capacity_blocks


def test_swap_keeps_kv_recompute_reprefills(tmp_path):
    """Token counts only; the time each swap transfer adds is checked moment by moment against
    the reference scheduler (tests/test_reference.py)."""
    hw = tiny_hw(tmp_path, 3000)
    kw = dict(hardware=hw, serving__scheduler="continuous", serving__max_batch_size=64,
              workload__num_requests=80, workload__arrival={"process": "burst"},
              workload__prompt_len={"dist": "fixed", "value": 200}, workload__output_len={"dist": "fixed", "value": 300})
    rec = simulate(scen(serving__preemption="recompute", **kw))
    swp = simulate(scen(serving__preemption="swap", **kw))
    q = rec.requests
    base = q["prompt_len"].sum() + (q["output_len"] - 1).sum()
    assert rec.requests["preemptions"].sum() > 0 and rec.moments["tokens"].sum() > base  # re-prefills
    assert swp.requests["preemptions"].sum() > 0 and swp.moments["tokens"].sum() == base  # no recompute


def test_chunked_never_exceeds_token_budget():
    sc = scen(serving__scheduler="chunked", serving__max_batched_tokens=512, serving__max_batch_size=64,
              workload__num_requests=150, workload__arrival={"process": "poisson", "rate": 100.0},
              workload__prompt_len={"dist": "lognormal", "mean": 1500, "sigma": 0.5},
              workload__output_len={"dist": "fixed", "value": 30})
    r = simulate(sc)
    check(r)
    assert r.moments["tokens"].max() <= 512
    assert (r.moments["kind"] == MIXED).any()
    assert r.requests["status"].sum() == 0  # long prompts are chunked, not rejected


def test_rejections_have_reasons(tmp_path):
    hw = tiny_hw(tmp_path, 1000)
    sc = scen(hardware=hw, serving__scheduler="continuous", serving__max_batched_tokens=600,
              workload__num_requests=400, workload__arrival={"process": "poisson", "rate": 50.0},
              workload__prompt_len={"dist": "uniform", "low": 100, "high": 1200},
              workload__output_len={"dist": "fixed", "value": 50})
    r = simulate(sc)
    check(r, exact_tokens=False)
    q = r.requests
    cap = r.kv_capacity_blocks * r.block_size
    too_big = q["prompt_len"] + q["output_len"] > cap
    too_long = (q["prompt_len"] > 600) & ~too_big
    assert too_big.any() and too_long.any()
    assert np.all(q["status"][too_big | too_long] == 1) and np.all(q["status"][~(too_big | too_long)] == 0)
    assert r.reject_reasons == {"exceeds kv capacity": int(too_big.sum()), "prompt > max_batched_tokens":
                                int(too_long.sum())}


def test_queue_full():
    sc = scen(serving__scheduler="static", serving__max_batch_size=2, serving__max_queue=3,
              workload__num_requests=20, workload__arrival={"process": "burst"})
    r = simulate(sc)
    check(r)
    assert r.reject_reasons == {"queue full": 17}  # all arrive at once: 3 wait, the rest are turned away


def test_replicas_and_routers():
    for router in ("round_robin", "least_outstanding"):
        sc = scen(serving__replicas=3, serving__router=router, workload__num_requests=200,
                  workload__arrival={"process": "poisson", "rate": 300.0},
                  workload__output_len={"dist": "uniform", "low": 1, "high": 100})
        r = simulate(sc)
        check(r)
        counts = np.bincount(r.requests["replica"], minlength=3)
        assert counts.min() > 40
        if router == "round_robin":
            assert counts.tolist() == [67, 67, 66]
        assert r.timeseries["busy_frac"].max() <= 1.0 + 4 * TIMESERIES_POINTS * len(r.moments["dur_s"]) * 2.0 ** -52


def test_prefix_caching_skips_shared_prefill():
    kw = dict(serving__scheduler="continuous", workload__num_requests=200,
              workload__arrival={"process": "poisson", "rate": 50.0},
              workload__prompt_len={"dist": "uniform", "low": 50, "high": 150},
              workload__prefix={"groups": 2, "length": 512, "fraction": 1.0})
    off = simulate(scen(**kw))
    on = simulate(scen(serving__prefix_caching=True, **kw))
    check(off)
    check(on)
    # all but the first request of each group reuse 512 cached tokens (32 blocks)
    saved = off.moments["tokens"].sum() - on.moments["tokens"].sum()
    assert saved >= (200 - 2 * 4) * 512
    assert np.nanmean(on.requests["first_token_s"] - on.requests["arrival_s"]) < np.nanmean(
        off.requests["first_token_s"] - off.requests["arrival_s"])


def test_timeseries_and_progress():
    seen = []
    sc = scen(workload__num_requests=300, workload__arrival={"process": "poisson", "rate": 100.0})
    r = simulate(sc, progress=seen.append)
    check(r)
    ts = r.timeseries
    assert set(ts) == {"t_s", "queue_len", "running", "kv_used_frac", "busy_frac", "outstanding", "power_w"}
    assert all(v.size == ts["t_s"].size for v in ts.values()) and ts["t_s"].size >= 500
    assert np.all(np.diff(ts["t_s"]) > 0)
    assert 0 <= ts["kv_used_frac"].min() and ts["kv_used_frac"].max() <= 1
    assert np.all(ts["queue_len"] >= 0) and np.all(ts["running"] <= ts["outstanding"] + 1e-6)
    # busy fraction averaged over the grid = busy seconds / makespan
    assert ts["busy_frac"].mean() == pytest.approx(r.moments["dur_s"].sum() / r.makespan_s, rel=1e-6)
    assert seen and seen[-1] == 1.0 and all(0 <= x <= 1 for x in seen)


def test_model_that_does_not_fit_is_input_error(tmp_path):
    from hwmodels.errors import InputError
    p = tmp_path / "small.yaml"
    p.write_text("base: h100-sxm\nname: small\ndevice:\n  memory_gb: 2\n")
    with pytest.raises(InputError, match="needs"):
        simulate(scen(hardware=str(p)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sched=st.sampled_from(["static", "continuous", "chunked"]), maxb=st.integers(1, 12),
       mbt=st.sampled_from([64, 256, 1024]), bs=st.sampled_from([1, 4, 16]), kv=st.integers(300, 3000),
       mode=st.sampled_from(["recompute", "swap"]), pc=st.booleans(), n=st.integers(1, 30),
       rate=st.floats(1.0, 1000.0), replicas=st.integers(1, 2), seed=st.integers(0, 3),
       prefix=st.booleans(), pp=st.sampled_from([1, 2]))
def test_property_all_accounted_kv_within_capacity(tmp_path_factory, sched, maxb, mbt, bs, kv, mode, pc, n, rate,
                                                   replicas, seed, prefix, pp):
    hw = tiny_hw(tmp_path_factory.mktemp("hw"), kv, pp)
    wl = {"num_requests": n, "arrival": {"process": "poisson", "rate": rate},
          "prompt_len": {"dist": "uniform", "low": 1, "high": 600},
          "output_len": {"dist": "lognormal", "mean": 60, "sigma": 1.0, "max": 800}}
    if prefix:
        wl["prefix"] = {"groups": 2, "length": 40, "fraction": 0.7}
    sc = Scenario.model_validate({
        "model": MODEL, "hardware": hw, "seed": seed, "workload": wl,
        "serving": {"scheduler": sched, "max_batch_size": maxb, "max_batched_tokens": mbt, "block_size": bs,
                    "preemption": mode, "prefix_caching": pc, "replicas": replicas, "pp": pp}})
    r = simulate(sc)
    check(r, exact_tokens=r.requests["preemptions"].sum() == 0)
    q = r.requests
    cap = r.kv_capacity_blocks // pp * bs  # a request lives on one virtual engine
    fits = q["prompt_len"] + q["output_len"] <= cap
    if sched == "continuous":
        fits &= q["prompt_len"] <= mbt
    assert np.array_equal(q["status"] == 0, fits)
    if sched == "chunked":
        assert r.moments["tokens"].max(initial=0) <= mbt
    assert math.isfinite(r.makespan_s)


# -- pipeline parallelism: pp virtual engines per replica ------------------------------------------

@pytest.mark.parametrize("sched", ["static", "continuous", "chunked"])
def test_pipeline_invariants(sched):
    sc = scen(serving__scheduler=sched, serving__pp=2, serving__replicas=2, serving__max_batch_size=16,
              serving__max_batched_tokens=2048, workload__num_requests=300,
              workload__arrival={"process": "poisson", "rate": 80.0},
              workload__prompt_len={"dist": "lognormal", "mean": 300, "sigma": 0.6, "max": 2000},
              workload__output_len={"dist": "lognormal", "mean": 40, "sigma": 0.8})
    r = simulate(sc)
    check(r)
    q, m = r.requests, r.moments
    assert (q["status"] == 0).all() and q["preemptions"].sum() == 0
    fp = footprint(load_model(MODEL), load_hardware("h100-sxm"), 1, 2)
    assert r.kv_capacity_blocks == fp.kv_capacity_tokens // 16  # the replica's, all its engines together
    # every virtual engine of every replica served requests (round robin over all four)
    assert np.bincount(q["replica"] * 2 + q["engine"], minlength=4).tolist() == [75] * 4
    assert set(zip(m["replica"].tolist(), m["engine"].tolist(), strict=True)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert m["tokens"].sum() == q["prompt_len"].sum() + (q["output_len"] - 1).sum()
    # the virtual engines of a replica overlap in time (pp batches in flight)...
    sel0, sel1 = [(m["replica"] == 0) & (m["engine"] == e) for e in (0, 1)]
    s0, e0, s1 = m["start_s"][sel0], (m["start_s"] + m["dur_s"])[sel0], m["start_s"][sel1]
    k = np.searchsorted(s0, s1, "right") - 1
    assert np.any((k >= 0) & (e0[np.maximum(k, 0)] > s1))
    # ...so busy time counts dur / pp per moment: the time series and the summary agree
    ts = r.timeseries
    assert ts["busy_frac"].mean() == pytest.approx(m["dur_s"].sum() / 2 / r.makespan_s / 2, rel=1e-6)
    assert summarize(r)["gpu_busy_frac"] == pytest.approx(m["dur_s"].sum() / 2 / (r.makespan_s * 2), rel=1e-9)
    assert ts["kv_used_frac"].max() <= 1 + 1e-9
    # device work is the same sum of batch aggregates: MFU/MBU need no correction
    assert r.host_busy_s == pytest.approx(m["dur_s"].size * (sm_of(pp=2).issue_s + sm_of(pp=2).overhead_s))


@pytest.mark.parametrize("pp", [2, 4])  # pp 4: a replica sums more than two engines
def test_pipeline_replica_kv_is_sum_over_virtual_engines(tmp_path, pp):
    """kv_blocks_used of a moment = what every virtual engine of its replica holds at its start
    (brute force: the engine's moment running then, else nothing); the time series' KV is the
    engines' sum too, never above the replica's capacity."""
    hw = tiny_hw(tmp_path, 4000, pp=pp)
    sc = scen(hardware=hw, serving__pp=pp, serving__replicas=2, serving__scheduler="chunked",
              serving__max_batched_tokens=512, workload__num_requests=150,
              workload__arrival={"process": "poisson", "rate": 60.0},
              workload__prompt_len={"dist": "uniform", "low": 50, "high": 600},
              workload__output_len={"dist": "uniform", "low": 20, "high": 300})
    r = simulate(sc)
    check(r, exact_tokens=False)
    assert r.kv_capacity_blocks == 4000 // 16
    m = r.moments
    st_, en = m["start_s"], m["start_s"] + m["dur_s"]
    want = np.zeros(st_.size, dtype=np.int64)
    # the moments of each (replica, engine), in log order (computed once: the scan below is
    # quadratic in the moments, on these shorter lists rather than the whole log)
    of = {(r, e): np.flatnonzero((m["replica"] == r) & (m["engine"] == e))
          for r in np.unique(m["replica"]).tolist() for e in range(pp)}
    for j in range(st_.size):
        for e in range(pp):
            same = of[int(m["replica"][j]), e]
            cand = same[st_[same] <= st_[j]]
            if cand.size and en[cand[-1]] > st_[j]:
                want[j] += m["kv_blocks_engine"][cand[-1]]
    assert np.array_equal(m["kv_blocks_used"], want)
    assert np.any(m["kv_blocks_used"] > m["kv_blocks_engine"])  # both engines hold KV at times
    assert m["kv_blocks_engine"].max() <= r.kv_capacity_blocks // pp
    assert r.timeseries["kv_used_frac"].max() <= 1.0 + 1e-9


def test_a_pipeline_run_of_one_moment_holds_that_moments_kv():
    """One request of one output token on pp = 2: one prefill moment, whose replica holds its
    prompt's blocks, ceil(100 / 16) = 7 (the only engine that runs)."""
    r = simulate(scen(serving__pp=2, workload__num_requests=1, workload__prompt_len={"dist": "fixed", "value": 100},
                      workload__output_len={"dist": "fixed", "value": 1}))
    m = r.moments
    assert m["dur_s"].size == 1
    assert m["kv_blocks_used"].tolist() == m["kv_blocks_engine"].tolist() == [7]


def test_pipeline_rejects_what_exceeds_an_engines_share(tmp_path):
    hw = tiny_hw(tmp_path, 3000, pp=2)
    cap_eng = 3000 // 16 // 2 * 16  # tokens of one virtual engine's blocks
    sc = scen(hardware=hw, serving__pp=2, serving__scheduler="chunked", serving__max_batched_tokens=512,
              workload__num_requests=100, workload__arrival={"process": "poisson", "rate": 40.0},
              workload__prompt_len={"dist": "uniform", "low": 100, "high": 2000},
              workload__output_len={"dist": "fixed", "value": 20})
    r = simulate(sc)
    check(r, exact_tokens=False)
    q = r.requests
    too_big = q["prompt_len"] + q["output_len"] > cap_eng
    assert too_big.any() and (~too_big).any()
    assert np.array_equal(q["status"] == 1, too_big)
    assert r.reject_reasons == {"exceeds kv capacity": int(too_big.sum())}


def test_pipeline_throughput_is_pp_times_the_serial_pipeline():
    """A burst of identical requests, continuous batching: each virtual engine runs batches of B,
    a prefill of B prompts then OUT-1 decode steps (all finish together). A pp = 2 replica without
    overlap would serve B requests per batch_s(B) (each moment taking step_s of the pp = 2 step
    model, one after another); with 2 virtual engines in flight it serves twice that."""
    P, OUT, B, N = 128, 32, 32, 512
    sc = scen(serving__scheduler="continuous", serving__pp=2, serving__max_batch_size=B, workload__num_requests=N,
              workload__arrival={"process": "burst"}, workload__prompt_len={"dist": "fixed", "value": P},
              workload__output_len={"dist": "fixed", "value": OUT})
    r = simulate(sc)
    check(r)
    sm = sm_of(pp=2)
    batch_s = sm.step_s(Batch.of(prefill=[(B, P)])) + sum(sm.step_s(Batch(B, B * (P + k - 1))) for k in range(1, OUT))
    serial = B / batch_s  # requests/s of a pp = 2 replica that runs one batch at a time
    tput = (r.requests["status"] == 0).sum() / r.makespan_s
    # each engine gets N / 2 requests and runs N / 2 / B whole batches back to back: exactly
    assert r.makespan_s == pytest.approx(N / 2 / B * batch_s, rel=1e-9)
    assert tput == pytest.approx(2 * serial, rel=1e-9)
    assert summarize(r)["gpu_busy_frac"] == pytest.approx(1.0, rel=1e-9)  # both engines always busy
    one = simulate(scen(serving__scheduler="continuous", serving__max_batch_size=B, workload__num_requests=N,
                        workload__arrival={"process": "burst"}, workload__prompt_len={"dist": "fixed", "value": P},
                        workload__output_len={"dist": "fixed", "value": OUT}))
    assert not one.moments["engine"].any() and summarize(one)["gpu_busy_frac"] <= 1.0


def test_pipeline_routers_and_queue():
    for router in ("round_robin", "least_outstanding"):
        sc = scen(serving__replicas=3, serving__pp=2, serving__router=router, workload__num_requests=300,
                  workload__arrival={"process": "poisson", "rate": 600.0},
                  workload__output_len={"dist": "uniform", "low": 1, "high": 100})
        r = simulate(sc)
        check(r)
        q = r.requests
        units = np.bincount(q["replica"] * 2 + q["engine"], minlength=6)
        assert units.min() > 30
        if router == "round_robin":
            assert units.tolist() == [50] * 6
            assert q["replica"][:6].tolist() == [0, 1, 2, 0, 1, 2] and q["engine"][:6].tolist() == [0, 0, 0, 1, 1, 1]
    # max_queue bounds the requests waiting on a replica, all its virtual engines together
    r = simulate(scen(serving__scheduler="static", serving__pp=2, serving__max_batch_size=2, serving__max_queue=3,
                      workload__num_requests=20, workload__arrival={"process": "burst"}))
    check(r)
    assert r.reject_reasons == {"queue full": 17}


@pytest.mark.parametrize("pp,replicas", [(1, 1), (2, 2)])
def test_timeseries_by_brute_force(pp, replicas):
    """Each interval of the time series is the average over it of the step functions it
    describes, integrated here one request and one moment at a time: outstanding requests
    (arrival to finish, or to arrival when rejected), running requests and KV blocks of every
    moment (the engines' sum), the devices' busy share (dur / pp of each moment, per replica)."""
    sc = scen(serving__scheduler="chunked", serving__pp=pp, serving__replicas=replicas,
              serving__max_batched_tokens=256, workload__num_requests=40,
              workload__arrival={"process": "poisson", "rate": 200.0},
              workload__prompt_len={"dist": "uniform", "low": 10, "high": 400},
              workload__output_len={"dist": "uniform", "low": 1, "high": 30})
    r = simulate(sc)
    q, m, ts = r.requests, r.moments, r.timeseries
    n = ts["t_s"].size
    width = r.makespan_s / n
    edges = np.arange(n + 1) * width

    def average(starts, ends, weights):
        lo = np.maximum(starts[None, :], edges[:-1, None])
        hi = np.minimum(ends[None, :], edges[1:, None])
        return (np.clip(hi - lo, 0.0, None) * weights[None, :]).sum(axis=1) / width

    leave = np.where(q["status"] == 0, q["finish_s"], q["arrival_s"])
    end = m["start_s"] + m["dur_s"]
    outstanding = average(q["arrival_s"], leave, np.ones(leave.size))
    running = average(m["start_s"], end, m["running"].astype(float))
    np.testing.assert_allclose(ts["outstanding"], outstanding, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ts["running"], running, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ts["queue_len"], np.maximum(outstanding - running, 0.0), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ts["busy_frac"], average(m["start_s"], end, np.full(end.size, 1.0 / pp)) / replicas,
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ts["kv_used_frac"], average(m["start_s"], end, m["kv_blocks_engine"].astype(float))
                               / (r.kv_capacity_blocks * replicas), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ts["t_s"], edges[:-1], rtol=1e-12, atol=1e-15)


def test_category_seconds_are_the_moments_breakdowns_sampled_as_documented():
    """One request, prompt 100, output 6,600: one prefill moment and 6,599 decode moments, the
    j-th with context 100 + j. Written out plainly: every decode moment's breakdown until
    CATEGORY_SAMPLES are taken, then every 2nd (weighted 2), then every 4th (weighted 4); the
    shares scaled to each kind's seconds, which are the moments' own durations of that kind."""
    P, OUT = 100, 6600
    r = simulate(scen(workload__num_requests=1, workload__prompt_len={"dist": "fixed", "value": P},
                      workload__output_len={"dist": "fixed", "value": OUT}))
    m, sm = r.moments, sm_of()
    assert (m["kind"] == DECODE).sum() == OUT - 1 > 3 * CATEGORY_SAMPLES
    names = list(DEVICE_CATEGORIES) + ["host"]

    def breakdown(b: Batch) -> np.ndarray:
        c = sm.cost(b)
        return np.array([c.breakdown_ms[x] for x in names])

    est, stride, taken = np.zeros(len(names)), 1, 0
    for j in range(OUT - 1):
        if j % stride == 0:
            est += breakdown(Batch(1, P + j, 0, 0, 0.0, 0, 1)) * stride
            taken += 1
            if taken == CATEGORY_SAMPLES:
                stride, taken = stride * 2, 0
    assert stride == 4
    for kind, want, moments in (("prefill", breakdown(Batch(0, 0, 1, P, P * (P + 1) / 2, 0, 1)), m["kind"] != DECODE),
                                ("decode", est, m["kind"] == DECODE)):
        got = np.array([r.category_s[kind][x] for x in names])
        np.testing.assert_allclose(got, want / want.sum() * m["dur_s"][moments].sum(), rtol=1e-9, atol=0)


def test_sampled_breakdowns_by_hand():
    # CATEGORY_SAMPLES moments at stride 1, as many at stride 2, then stride 4: of 7,000 moments of
    # a kind, 0..1999, 2000..5998 step 2 and 6000..6996 step 4 are sampled
    from simulator.serving.result import CATEGORY_SAMPLES, _sampled

    assert CATEGORY_SAMPLES == 2000
    js, strides = _sampled(7000)
    assert js == list(range(2000)) + list(range(2000, 6000, 2)) + list(range(6000, 7000, 4))
    assert strides == [1] * 2000 + [2] * 2000 + [4] * 250
    assert sum(strides) == 7000  # each sample stands for its stride's moments: all of them, once


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-6, 10.0), st.booleans()), max_size=300), st.integers(1, 40))
def test_post_run_sums_and_positions_are_the_running_ones(moments, chunk):
    # the moment log's post-run helpers give what a running sum and a scan during the run would:
    # the same float (added one by one from 0.0) and the positions of the j-th moments of a kind
    from simulator.serving.result import _ordered_sum, _positions

    x = np.array([d for d, _ in moments], dtype=float)
    mask = np.array([k for _, k in moments], dtype=bool)
    running = 0.0
    for d, k in moments:
        if k:
            running += d
    assert _ordered_sum(x, mask, chunk) == running
    where = [i for i, (_, k) in enumerate(moments) if k]
    js = list(range(0, len(where), 3))
    assert _positions(mask, js, chunk).tolist() == [where[j] for j in js]


@pytest.mark.parametrize("disaggregated", [None, {}])
def test_a_run_reports_its_progress_as_the_share_of_requests_done_and_its_own_wall_time(monkeypatch, disaggregated):
    """Every 1024 moments (and at most every 0.1 s) a run hands the share of requests done so far
    to its progress callback, ending at 1: with a clock that advances a second per reading, each
    report is due. Colocated or disaggregated, the shares only grow; the run's wall time lies
    within what the caller measured around it."""
    import time
    from types import SimpleNamespace

    import simulator.serving.result as result

    ticks = iter(range(1, 10**9))
    monkeypatch.setattr(result, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    seen: list[float] = []
    sc = Scenario.model_validate({
        "model": MODEL, "hardware": "h100-sxm",
        "serving": {"scheduler": "continuous", "max_batch_size": 2, "disaggregated": disaggregated},
        "workload": {"num_requests": 120, "arrival": {"process": "poisson", "rate": 2000.0},
                     "prompt_len": {"dist": "fixed", "value": 32}, "output_len": {"dist": "fixed", "value": 40}}})
    t0 = time.perf_counter()
    r = simulate(sc, seen.append)
    elapsed = time.perf_counter() - t0
    assert len(r.moments["dur_s"]) > 2048
    assert seen[-1] == 1.0
    middle = seen[:-1]
    assert len(middle) >= 2 and all(0.0 < a < 1.0 for a in middle)
    assert middle == sorted(middle)
    assert all(abs(a * 120 - round(a * 120)) < 1e-9 for a in middle)  # k of the 120 requests
    assert 0.0 < r.wall_s <= elapsed


def test_a_pools_layout_and_memory_are_refused_with_the_field_that_breaks_them():
    """check_scenario names the serving field behind each refusal (pp for a stage count that
    does not divide the layers, ep for experts, tp otherwise; a disaggregated pool's own prefix)
    and checks memory with every setting that takes it: the share of memory and what it is a
    share of, the activation reserve, a KV block per pipeline stage, the experts' spread and a
    speculative draft's weights. Llama 3 8B holds 16.06 GB of bf16 weights; with a 1 GB reserve
    it fits 80 GB x u when u x 80 GB > 17.06 GB."""
    from hwmodels.errors import InputError
    from simulator.serving.engine import check_scenario

    def refused(serving: dict, model: str = "llama-3-8b", hardware: str = "h100-sxm") -> str:
        with pytest.raises(InputError) as e:
            check_scenario(Scenario.model_validate({"model": model, "hardware": hardware, "serving": serving}))
        return str(e.value)

    def accepted(serving: dict, model: str = "llama-3-8b", hardware: str = "h100-sxm") -> None:
        check_scenario(Scenario.model_validate({"model": model, "hardware": hardware, "serving": serving}))

    assert refused({"pp": 5}) == "scenario: serving.pp: pp=5 must divide num_hidden_layers=32"
    assert refused({"tp": 4, "pp": 4}) == \
        "scenario: serving.tp: tp x pp = 16 exceeds the 8 devices of h100-sxm (devices_per_node x nodes)"
    assert refused({"ep": 3}, "mixtral-8x7b").startswith("scenario: serving.ep: ep=3 must be 1 or equal tp=1")
    assert refused({"disaggregated": {"prefill": {"pp": 5}}}) == \
        "scenario: serving.disaggregated.prefill.pp: pp=5 must divide num_hidden_layers=32"
    assert refused({"disaggregated": {"decode": {"hardware": "no-such-part"}}}).startswith(
        "scenario: serving.disaggregated.decode.hardware: ")
    draft = {"method": "draft_model", "draft_model": "no-such-model", "k": 3, "acceptance": 0.7}
    assert refused({"speculative": draft}).startswith("scenario: serving.speculative.draft_model: ")
    assert refused({"speculative": draft, "disaggregated": {}}).startswith(
        "scenario: serving.disaggregated.prefill.speculative.draft_model: ")
    # memory: 0.225 x 80 GB leaves 0.94 GB of KV beside the weights and the reserve
    accepted({"gpu_memory_utilization": 0.225})
    assert refused({"gpu_memory_utilization": 0.225, "activation_reserve_gb": 2.0}).startswith(
        "scenario: model/hardware")
    assert refused({"gpu_memory_utilization": 0.225, "speculative": {  # + a 2.47 GB Llama 3.2 1B draft
        "method": "draft_model", "draft_model": "llama-3.2-1b", "k": 3, "acceptance": 0.7}}).startswith(
        "scenario: model/hardware")
    # 0.2 x 80 GB is less than the weights, but 0.2 of what they and the reserve leave is 12.6 GB
    assert refused({"gpu_memory_utilization": 0.2}).startswith("scenario: model/hardware")
    accepted({"gpu_memory_utilization": 0.2, "memory_fraction_of": "free"})
    # 1 MB of KV: 7 tokens of 128 KiB, less than one 16-token block
    tight = (16_060_522_496 + 1e9 + 1e6) / 80e9
    assert refused({"gpu_memory_utilization": tight}).startswith("scenario: model/hardware")
    accepted({"gpu_memory_utilization": tight, "block_size": 4})
    # DeepSeek-V3 at tp 8 on an H200: 84.95 GB a device with its experts sharded, 87.19 GB spread
    accepted({"tp": 8, "gpu_memory_utilization": 87e9 / 141e9}, "deepseek-v3", "h200-sxm")
    assert refused({"tp": 8, "ep": 8, "gpu_memory_utilization": 87e9 / 141e9}, "deepseek-v3", "h200-sxm").startswith(
        "scenario: model/hardware")


def test_a_workload_the_schema_lets_through_but_cannot_be_drawn_is_named_with_the_scenario():
    """A length drawn from a trace needs the trace's arrivals: simulate() names the scenario and
    the field (the same line the CLI prints with the file's name)."""
    from hwmodels.errors import InputError

    sc = Scenario.model_validate({"model": MODEL, "hardware": "h100-sxm",
                                  "workload": {"num_requests": 3, "prompt_len": {"dist": "trace"}}})
    with pytest.raises(InputError) as e:
        simulate(sc)
    assert str(e.value) == "scenario: workload.prompt_len: dist trace needs workload.arrival.process: trace"


def test_check_scenario_resolves_the_dtypes_and_names_each_input_it_refuses():
    """check_scenario hands back the formats the serving fields ask for (the model's own where
    they say nothing), and names the scenario and the field for a draft the pool cannot shard,
    a trace path that is no file, and a KV transfer over a link the hardware lacks."""
    from hwmodels.errors import InputError
    from simulator.moment.ops import Dtypes
    from simulator.serving.engine import check_scenario

    def check(d: dict):
        return check_scenario(Scenario.model_validate({"model": "llama-3-8b", "hardware": "h100-sxm", **d}))

    def refused(d: dict) -> str:
        with pytest.raises(InputError) as e:
            check(d)
        return str(e.value)

    assert check({"serving": {"weight_dtype": "fp8", "kv_dtype": "fp8"}})[2] == Dtypes("fp8", "bf16", "fp8")
    assert check({"serving": {"act_dtype": "fp16"}})[2] == Dtypes("bf16", "fp16", "bf16")
    assert check({})[2] == Dtypes("bf16", "bf16", "bf16")
    assert refused({"serving": {"tp": 8, "speculative": {
        "method": "draft_model", "draft_model": "gemma-3-1b", "k": 3, "acceptance": 0.7}}}) == \
        "scenario: serving.speculative.draft_model: the draft: tp=8 must divide num_attention_heads=4"
    folder = str(Path(__file__).parent)
    assert refused({"workload": {"arrival": {"process": "trace", "path": folder}, "prompt_len": {"dist": "trace"},
                                 "output_len": {"dist": "trace"}}}) == \
        f"scenario: workload.arrival.path: {folder}: is a folder, not a regular file; give a trace file"
    assert refused({"hardware": "cpu", "model": "llama-3.2-1b",
                    "serving": {"disaggregated": {"transfer": {"path": "link"}}}}) == \
        "scenario: serving.disaggregated.transfer: cpu names no link: give bw_gbps and latency_us, or path: network"


def test_a_stack_whose_defaults_break_the_schema_is_one_line_naming_the_stack(monkeypatch):
    # no preset does today; a stack edited to default max_batch_size 0 must still end in one line
    # that names the scenario, the stack and the field, not a pydantic traceback
    from hwmodels.errors import InputError
    from simulator.serving import stacks
    from simulator.serving.engine import check_scenario

    v1 = stacks.PRESETS["vllm-v1"]
    monkeypatch.setitem(stacks.PRESETS, "vllm-v1", v1.model_copy(update={"defaults": {**v1.defaults,
                                                                                     "max_batch_size": 0}}))
    sc = Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", "serving": {"stack": "vllm-v1"}})
    for where in ("scenario", "s.yaml"):
        with pytest.raises(InputError) as e:
            check_scenario(sc, *([where] if where != "scenario" else []))
        msg = str(e.value)
        assert msg.startswith(f"{where} (serving.stack vllm-v1): max_batch_size: ") and "\n" not in msg, msg


def test_the_kv_room_a_pool_needs_counts_the_drafts_kv_and_a_block_per_stage():
    """A pool must hold a KV block per pipeline stage, a speculative draft's KV beside the
    target's (Llama 3 8B 128 KiB a token, its Llama 3.2 1B draft 32 KiB): 2.3 MB of room is 14
    tokens of both, short of a 16-token block and enough for an 8-token one; at pp 2 (half the
    layers, 64 KiB a token) 20 tokens of room are short of two 16-token blocks and enough for two
    of 8. A disaggregated pool that does not fit names itself."""
    from hwmodels.errors import InputError
    from simulator.serving.engine import check_scenario

    def check(serving: dict) -> None:
        check_scenario(Scenario.model_validate({"model": "llama-3-8b", "hardware": "h100-sxm", "serving": serving}))

    both = 16_060_522_496 + 2_471_628_800
    spec = {"method": "draft_model", "draft_model": "llama-3.2-1b", "k": 3, "acceptance": 0.7}
    u = (both + 1e9 + 2.3e6) / 80e9
    with pytest.raises(InputError, match="^scenario: model/hardware: "):
        check({"gpu_memory_utilization": u, "speculative": spec})
    check({"gpu_memory_utilization": u, "speculative": spec, "block_size": 8})
    half = 8_030_261_248  # the first stage's layers and embedding (the same bytes as the last's)
    u2 = (half + 1e9 + 20 * 65536) / 80e9
    with pytest.raises(InputError, match="^scenario: model/hardware: "):
        check({"pp": 2, "gpu_memory_utilization": u2})
    check({"pp": 2, "gpu_memory_utilization": u2, "block_size": 8})
    with pytest.raises(InputError, match=r"^scenario: model/hardware \(serving\.disaggregated\.prefill\): "):
        check({"gpu_memory_utilization": 0.2, "disaggregated": {}})


def _trace(tmp_path, rows, priority=None):
    p = tmp_path / "t.csv"
    head = "arrival_s,prompt_len,output_len" + (",priority" if priority is not None else "")
    p.write_text(head + "\n" + "".join(f"{a},{b},{c}" + (f",{priority[i]}" if priority is not None else "") + "\n"
                                       for i, (a, b, c) in enumerate(rows)))
    return {"arrival": {"process": "trace", "path": str(p)}, "prompt_len": {"dist": "trace"},
            "output_len": {"dist": "trace"}}


def test_the_makespan_reaches_the_last_arrival_and_nothing_longer(tmp_path):
    # a request rejected on arrival 50 s after the last token: the run lasts until it arrived; a
    # run whose only request is rejected at 0 s lasts 0 s (no moment, no token)
    too_long = 200_000  # beyond llama-3.2-1b's 131,072-token context
    r = simulate(Scenario.model_validate({"model": MODEL, "hardware": "h100-sxm",
                                          "workload": _trace(tmp_path, [(0.0, 100, 5), (50.0, too_long, 5)])}))
    assert r.requests["status"].tolist() == [0, 1] and r.requests["finish_s"][0] < 1.0
    assert r.requests["replica"].tolist() == [0, -1]  # rejected before it was routed
    assert r.makespan_s == 50.0
    r = simulate(Scenario.model_validate({"model": MODEL, "hardware": "h100-sxm",
                                          "workload": _trace(tmp_path, [(0.0, too_long, 5)])}))
    assert r.requests["status"].tolist() == [1] and r.moments["dur_s"].size == 0 and r.makespan_s == 0.0
    assert r.energy["avg_power_w"].tolist() == [0.0] and r.energy["total_j"] == 0.0  # no time, no energy
    # its time series: nothing, on a grid over 1 s
    ts = r.timeseries
    np.testing.assert_array_equal(ts["t_s"], np.linspace(0.0, 1.0, TIMESERIES_POINTS + 1)[:-1])
    assert all(not ts[k].any() for k in ("queue_len", "running", "kv_used_frac", "busy_frac", "outstanding"))


def test_a_run_carries_request_classes_only_when_it_has_them(tmp_path):
    # one class and no priorities: no class columns; two classes of priority 0, or one level of
    # priority 3 from a trace: both columns, by request
    base = {"model": MODEL, "hardware": "h100-sxm"}
    plain = simulate(Scenario.model_validate({**base, "workload": {"num_requests": 5}}))
    assert "class" not in plain.requests and "priority" not in plain.requests
    two = simulate(Scenario.model_validate({**base, "workload": {"num_requests": 20, "classes": [
        {"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}}))
    assert set(two.requests["class"].tolist()) == {0, 1} and not two.requests["priority"].any()
    one = simulate(Scenario.model_validate({**base, "serving": {"queue": "priority"},
                                            "workload": _trace(tmp_path, [(0.0, 100, 3)] * 3, priority=[3, 3, 3])}))
    assert one.requests["priority"].tolist() == [3, 3, 3] and one.requests["class"].tolist() == [0, 0, 0]


def test_the_request_log_counts_what_ended_and_the_work_done_again():
    """RequestLog by hand: every request that completes or is rejected counts once (the progress
    share), a client hears each end with its request and time (the token's, out_delay after the
    engine's), routing starts at -1, and each recomputed prefill chunk adds its count, tokens,
    causal pairs (l c + l (l + 1) / 2) and cached tokens before it."""
    from simulator.serving.result import RequestLog
    from simulator.serving.scenario import Workload
    from simulator.serving.workload import make_requests

    log = RequestLog(make_requests(Workload(num_requests=4), seed=0))
    heard = []
    log.on_end = lambda i, t: heard.append((i, t))
    log.out_delay = 0.25
    assert log.replica.tolist() == [-1] * 4 and log.done == 0 and log.recomputed == [0, 0, 0.0, 0]
    log.finish(2, 1.0)
    log.reject(0, "too long", 3.0)
    log.finish(1, 2.0)
    log.reject(3, "too long")
    assert log.done == 4 and heard == [(2, 1.25), (0, 3.0), (1, 2.25), (3, 0.0)]
    assert log.status.tolist() == [1, 0, 0, 1] and log.reasons == {"too long": 2}
    log.recompute(100, 50)
    log.recompute(30, 7)
    assert log.recomputed == [2, 57, 50 * 100 + 50 * 51 / 2 + 7 * 30 + 7 * 8 / 2, 130]


def test_a_stacks_host_work_counts_every_sequence_of_every_moment():
    # a serving stack's host work per step and per sequence in it (decodes and prefill chunks of
    # mixed moments alike), from the moment log; host_busy_s itself is checked by hand in test_cost
    from simulator.serving.engine import effective, pool_model

    sc = scen(serving__stack="vllm-v1", serving__max_batched_tokens=512, workload__num_requests=60,
              workload__arrival={"process": "poisson", "rate": 40.0})
    r = simulate(sc)
    m = r.moments
    assert (m["kind"] == 2).any()  # mixed moments: decodes and chunks
    run, model, hw, dt = effective(sc)
    sm = pool_model(model, hw, dt, run.serving).cost
    assert r.host_busy_s == pytest.approx(sm.host_busy_s(m["dur_s"].size, int(m["batch"].sum())), rel=1e-12)
    assert sm.host_busy_s(10, 7) > sm.host_busy_s(10, 0)


@pytest.mark.parametrize("model, serving", [
    ("llama-3.2-1b", {}),
    ("llama-3.2-1b", {"pp": 2}),
    ("llama-3.2-1b", {"tp": 2}),
    ("mixtral-8x7b", {"tp": 2}),
    ("mixtral-8x7b", {"tp": 2, "ep": 2, "moe_imbalance": 1.3}),
])
def test_one_requests_work_is_its_prefill_and_decode_steps_by_hand(model, serving):
    # one request alone: the run's FLOPs are tp x (its prefill of P tokens + a decode step at each
    # context P .. P + O - 2), each step's ops per device as step_ops counts them with the run's
    # parallelism (expert-parallel layers on the average device: the busiest one's routing spread
    # and the imbalance make a step wait, they add no work); an output of one token is the prefill
    # alone (one moment); no moment, no work
    from simulator.moment.ops import Batch as B

    P, out = 500, 9
    m = load_model(model)
    par = {k: serving.get(k, d) for k, d in (("tp", 1), ("pp", 1), ("ep", 1))}
    f = lambda b: total_flops(step_ops(m, b, Dtypes(), **par, busiest=False))  # noqa: E731
    prefill = B(0, 0, 1, P, P * (P + 1) / 2, 0)
    for o in (out, 1):
        r = simulate(Scenario.model_validate({"model": model, "hardware": "h100-sxm", "serving": serving,
                                              "workload": {"num_requests": 1, "prompt_len": {"dist": "fixed", "value": P},
                                                           "output_len": {"dist": "fixed", "value": o}}}))
        assert r.moments["dur_s"].size == o
        want = par["tp"] * (f(prefill) + sum(f(B(1, P + j)) for j in range(o - 1)))
        assert r.total_flops == pytest.approx(want, rel=1e-12)
        if not m.is_moe:  # and the bytes each step moves (an MoE's experts touched are taken at the sums)
            by = lambda b: sum(float(np.sum(x.bytes)) for x in step_ops(m, b, Dtypes(), **par))  # noqa: E731
            want = par["tp"] * (by(prefill) + sum(by(B(1, P + j)) for j in range(o - 1)))
            assert r.total_bytes == pytest.approx(want, rel=1e-12)
    if serving.get("moe_imbalance"):  # skewed routing slows the busiest device, it is not more work
        even = simulate(r.scenario.model_copy(update={"serving": r.scenario.serving.model_copy(
            update={"moe_imbalance": 1.0})}))
        assert even.total_flops == pytest.approx(r.total_flops, rel=1e-12) and even.makespan_s < r.makespan_s
    empty = simulate(Scenario.model_validate({"model": model, "hardware": "h100-sxm", "serving": serving,
                                              "workload": {"num_requests": 1,
                                                           "prompt_len": {"dist": "fixed", "value": 10**6}}}))
    assert empty.moments["dur_s"].size == 0 and empty.total_flops == 0.0 and empty.total_bytes == 0.0
