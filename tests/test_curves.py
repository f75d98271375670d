"""`momentsim curves`: properties that follow from how a step is costed, checked by hand or from
the ops' FLOP counts, never numbers copied from a run."""

import csv
import json
import time
from itertools import pairwise

import pytest

from hwmodels.load import load_hardware
from simulator.cli import main
from simulator.moment.cost import step_model
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes, attention_ops, total_flops
from simulator.studies.curves import compute

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CONTEXTS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
PROMPTS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def curves(mode="graph", model="llama-3-8b", hw="h100-sxm", prompts=PROMPTS, kernels="fused"):
    return compute(load_model(model), load_hardware(hw), 1, 1, mode, Dtypes(), BATCHES, CONTEXTS, prompts, kernels)


def fitting(points):
    return [p for p in points if p["fits"]]


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_decode_step_never_shrinks_with_batch_or_context(mode):
    r = curves(mode)
    for c in CONTEXTS:  # (a): more sequences never make a step shorter
        steps = [p["step_ms"] for p in fitting(r["decode_vs_batch"]) if p["context"] == c]
        assert steps and all(b >= a for a, b in pairwise(steps))
    for b in BATCHES:  # (b): more cached tokens to read never make it shorter; the device strictly longer
        pts = [p for p in fitting(r["decode_vs_context"]) if p["batch"] == b]
        assert all(q["step_ms"] >= p["step_ms"] and q["device_ms"] > p["device_ms"] for p, q in pairwise(pts))


def test_every_point_is_exactly_the_step_models_cost_and_shares_sum_to_one():
    r = curves()
    sm = step_model(load_model("llama-3-8b"), load_hardware("h100-sxm"), 1, 1, "graph", Dtypes())
    pts = [(p, Batch.of(decode=[(p["batch"], p["context"])]), p["batch"]) for p in fitting(r["decode_vs_batch"])]
    pts += [(p, Batch.of(prefill=[(1, p["prompt"])]), p["prompt"]) for p in fitting(r["prefill_vs_prompt"])]
    assert len(pts) > 60
    for p, batch, new_tokens in pts:
        c = sm.cost(batch)
        assert (p["step_ms"], p["device_ms"], p["host_ms"]) == (c.step_ms, c.device_ms, c.host_ms)
        assert sum(p["share"].values()) == pytest.approx(1.0, abs=1e-12)
        assert p["per_token_ms"] * new_tokens == pytest.approx(p["step_ms"], rel=1e-12)
        assert p["tokens_per_s"] == pytest.approx(new_tokens * 1000 / p["step_ms"], rel=1e-12)
        assert p["cycles"] == round(p["step_ms"] * 1.83e6)  # the H100 SXM's 1.83 GHz boost clock


def test_points_beyond_the_kv_capacity_are_marked_and_carry_no_numbers():
    r = curves()
    cap = footprint(load_model("llama-3-8b"), load_hardware("h100-sxm")).kv_capacity_tokens
    for p in r["decode_vs_batch"]:
        assert p["kv_tokens"] == p["batch"] * (p["context"] + 1)
        assert p["fits"] == (p["kv_tokens"] <= cap)
        assert ("step_ms" in p) == p["fits"] and (p.get("note") == "does not fit") != p["fits"]
    big = {(p["batch"], p["context"]): p for p in r["decode_vs_batch"]}
    assert not big[256, 32768]["fits"] and big[1, 32768]["fits"]  # 8.4M tokens of KV do not fit in 80 GB


def test_eager_host_share_vanishes_with_batch_and_attention_share_grows_with_context():
    eager = curves("eager", kernels="pytorch")  # plain eager PyTorch: ~1,200 kernels a step
    for c in CONTEXTS:
        host = [p["share"]["host"] for p in fitting(eager["decode_vs_batch"]) if p["context"] == c]
        assert all(b <= a for a, b in pairwise(host))
    at = {(p["batch"], p["context"]): p["share"] for p in fitting(eager["decode_vs_batch"])}
    assert at[1, 128]["host"] > 0.5  # one sequence: the host issuing kernels is most of the step
    graph = curves("graph")
    for b in BATCHES:
        att = [p["share"]["attention"] for p in fitting(graph["decode_vs_context"]) if p["batch"] == b]
        assert all(y > x for x, y in pairwise(att))


def _attention_flops(model, n):
    return total_flops(attention_ops(model, Batch.of(prefill=[(1, n)]), Dtypes()))


@pytest.mark.parametrize("model,hw", [("llama-3-8b", "h100-sxm"), ("llama-3.2-1b", "cpu")])
def test_prefill_grows_super_linearly_as_attentions_flops_say(model, hw):
    r = curves(model=model, hw=hw, prompts=[8192, 16384])
    p8, p16 = r["prefill_vs_prompt"]
    f = _attention_flops(load_model(model), 16384) / _attention_flops(load_model(model), 8192)
    assert f == pytest.approx(16384 * 16385 / (8192 * 8193))  # causal pairs: n(n+1)/2, so ~4x per doubling
    att = p16["step_ms"] * p16["share"]["attention"] / (p8["step_ms"] * p8["share"]["attention"])
    # compute-bound: attention time follows its FLOPs, less the cache writes (linear in tokens)
    assert 2 < att < f and att == pytest.approx(f, rel=0.06)
    ratio = p16["step_ms"] / p8["step_ms"]
    s8 = p8["share"]["attention"]
    assert ratio > 2  # the rest is linear (x2), attention x4: the whole is super-linear ...
    assert ratio == pytest.approx(2 * (1 - s8) + f * s8, rel=0.02)  # ... by as much as attention's share says
    if p16["share"]["attention"] > 0.5:  # where attention dominates (the 1B model on a CPU) it is far from linear
        assert ratio > 2.5


def test_sliding_window_makes_long_prefills_linear():
    m = load_model("mistral-7b")  # window 4096: beyond it each token attends to 4096 others, not all
    assert m.sliding_window == 4096
    # token i sees min(i, 4096) keys: the first 4096 the causal triangle, every later one 4096
    tri = 4096 * 4097 / 2
    f = (tri + (16384 - 4096) * 4096) / (tri + (8192 - 4096) * 4096)
    assert _attention_flops(m, 16384) / _attention_flops(m, 8192) == pytest.approx(f)
    assert _attention_flops(m, 24576) - _attention_flops(m, 16384) == pytest.approx(
        _attention_flops(m, 16384) - _attention_flops(m, 8192))  # linear beyond the window
    p8, p16 = curves(model="mistral-7b", prompts=[8192, 16384])["prefill_vs_prompt"]
    s8 = p8["share"]["attention"]
    assert p16["step_ms"] / p8["step_ms"] == pytest.approx(2 * (1 - s8) + f * s8, rel=0.02)


@pytest.mark.parametrize("flag,value", [("--batch", "1,x"), ("--batch", "0,2"), ("--context", "4,-1"),
                                        ("--prompt", ","), ("--prompt", "2.5"), ("--batch", "4000000")])
def test_bad_lists_are_one_line_exit_2(capsys, flag, value):
    rc = main(["curves", "--model", "llama-3-8b", "--hardware", "h100-sxm", f"{flag}={value}"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith(f"momentsim: {flag}: {value}")


def test_a_model_that_never_fits_is_one_line_exit_2(capsys):
    rc = main(["curves", "--model", "llama-3-70b", "--hardware", "h100-sxm"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and "needs" in err and "tp >= 2" in err


def test_json_out_csv_and_png(capsys, tmp_path):
    t0 = time.perf_counter()
    rc = main(["curves", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--mode", "eager", "--json",
               "--out", str(tmp_path / "c")])
    assert rc == 0 and time.perf_counter() - t0 < 4  # defaults, plot included (< 2 s unloaded)
    d = json.loads(capsys.readouterr().out)
    assert [len(d[k]) for k in ("decode_vs_batch", "decode_vs_context", "prefill_vs_prompt")] == [81, 81, 8]
    png = (tmp_path / "c" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    rows = list(csv.DictReader(open(tmp_path / "c" / "curves.csv")))
    assert len(rows) == 81 + 8 and {r["curve"] for r in rows} == {"decode", "prefill"}
    ok = [r for r in rows if r["fits"] == "True"]
    assert ok and all(sum(float(v) for k, v in r.items() if k.startswith("share_")) == pytest.approx(1) for r in ok)


def test_table_is_fast_and_marks_what_does_not_fit(capsys):
    t0 = time.perf_counter()
    assert main(["curves", "--model", "llama-3-8b", "--hardware", "h100-sxm"]) == 0
    assert time.perf_counter() - t0 < 2
    out = capsys.readouterr().out
    assert "decode step [ms]" in out and "prefill, batch 1" in out and "does not fit" in out
