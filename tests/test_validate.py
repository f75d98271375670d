"""The reference decoder (determinism, KV cache, kernel counts) and a tiny `validate` run."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="validation needs PyTorch (pip install 'momentsim[calibration]')")

from calibration.microbench import TINY  # noqa: E402
from calibration.reference import (  # noqa: E402
    Reference,
    apply_rope,
    attention,
    count_kernels,
    rms_norm,
    split_qkv,
    swiglu,
)
from calibration.validate import layer_ops, predict_layer, validate  # noqa: E402
from hwmodels.load import load_hardware  # noqa: E402
from simulator.moment.cost import op_seconds, step_model  # noqa: E402
from simulator.moment.ops import EAGER_KERNELS, Batch, Dtypes  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


def ids(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (b, n), generator=torch.Generator().manual_seed(seed))


def test_logits_are_deterministic_for_a_seed():
    outs = []
    for seed in (0, 0, 1):
        r = Reference(TINY, seed=seed)
        r.alloc_cache(2, 32)
        outs.append(r.logits(ids(2, 7), 0))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 3e-2)])
def test_decode_with_the_kv_cache_matches_a_full_recompute(dtype, tol):
    r = Reference(TINY, dtype=dtype)
    seq = ids(2, 12)
    r.alloc_cache(2, 32)
    full = r.logits(seq, 0)
    r.alloc_cache(2, 32)
    r.logits(seq[:, :9], 0)              # prefill 9 tokens
    for i in range(9, 11):               # then decode one at a time
        r.logits(seq[:, i:i + 1], i)
    last = r.logits(seq[:, 11:12], 11)
    assert torch.allclose(last, full, atol=tol * full.abs().max().item(), rtol=0)


def test_generation_is_greedy_and_static():
    r = Reference(TINY)
    r.alloc_cache(2, 32)
    out = r.generate(ids(2, 5), 4)
    assert len(out) == 2 and all(len(s) == 4 for s in out)
    r.alloc_cache(2, 32)
    assert r.generate(ids(2, 5), 4) == out


def test_kernel_counts_match_eager_kernels_bf16():
    """bf16 (the .to() of RMSNorm convert): the primitives launch what simulator.moment.ops counts."""
    bf = torch.bfloat16
    x = torch.randn(2, 3, 64, dtype=bf)
    w = torch.randn(64, dtype=bf)
    assert count_kernels(lambda: rms_norm(x, w))[0] == EAGER_KERNELS["norm"] == 8
    q, k = torch.randn(2, 4, 3, 16, dtype=bf), torch.randn(2, 2, 3, 16, dtype=bf)
    cos, sin = torch.randn(3, 16, dtype=bf), torch.randn(3, 16, dtype=bf)
    assert count_kernels(lambda: apply_rope(q, k, cos, sin))[0] == EAGER_KERNELS["rope"] == 10
    gu = torch.randn(2, 3, 256, dtype=bf)
    assert count_kernels(lambda: swiglu(gu))[0] == EAGER_KERNELS["ffn_act"] == 2
    kc, vc = torch.zeros(2, 2, 8, 16, dtype=bf), torch.zeros(2, 2, 8, 16, dtype=bf)
    q, k, v = split_qkv(torch.randn(2, 3, (4 + 2 * 2) * 16, dtype=bf), 4, 2, 16)  # the decoder's layout
    pos = torch.arange(3)
    n, names = count_kernels(lambda: attention(q, k, v, kc, vc, pos, 3, causal=True))
    # 2 cache writes + SDPA. With q a transposed view of (b, n, h, d), as a fused QKV output is,
    # SDPA returns its output (b, n, h, d)-strided and the head merge before o_proj is a view
    assert names == ["index_copy_", "index_copy_", "scaled_dot_product_attention"]
    assert n == EAGER_KERNELS["attention"] == 3


def test_kernel_counts_of_a_layer_and_a_step():
    r = Reference(TINY, dtype="bf16")
    r.alloc_cache(2, 32, fill=True)
    lay = r.layers[0]
    x = torch.randn(2, 1, 64, dtype=torch.bfloat16)
    pos, cos, sin = r.rope_at(10, 1)
    e = EAGER_KERNELS
    ffn = e["norm"] + e["ffn_up"] + e["ffn_act"] + e["ffn_down"] + e["residual_add"]
    assert count_kernels(lambda: r.ffn_block(x, lay))[0] == ffn
    attn = e["norm"] + e["qkv_proj"] + e["rope"] + e["attention"] + e["o_proj"] + e["residual_add"]
    assert count_kernels(lambda: r.attn_block(x, lay, pos, cos, sin, 11))[0] == attn
    # a step: 3 for positions and RoPE rows, embed, layers, final norm, lm_head (+ .float()), argmax
    step = e["step_inputs"] + e["embed"] + TINY.num_hidden_layers * (attn + ffn) + e["norm"] + e["lm_head"] + 1
    tok = torch.zeros(2, 1, dtype=torch.long)
    assert count_kernels(lambda: r.step(tok, 10))[0] == step


def test_fp32_norm_skips_the_no_op_conversions():
    x, w = torch.randn(2, 3, 64), torch.randn(64)
    assert count_kernels(lambda: rms_norm(x, w))[0] == EAGER_KERNELS["norm"] - 2


def test_layer_predictions_add_up_to_the_step():
    """Per-layer device time x layers + embed, final norm and logits = the step's device time
    (plain PyTorch's kernels inside a CUDA graph, as validate replays a GPU layer)."""
    hw = load_hardware("h100-sxm")
    spec = TINY.model_copy(update={"num_hidden_layers": 3})
    dt = Dtypes("bf16", "bf16", "bf16")
    b = Batch.of(decode=[(4, 100)])
    layer = predict_layer(spec, hw, "attn", 4, b, dt, "graph") + predict_layer(spec, hw, "ffn", 4, None, dt, "graph")
    sm = step_model(spec, hw, mode="graph", dtypes=dt, kernels="pytorch")
    rest = sum(float(op_seconds(o, hw, dt, graph=True)) for o in sm.ops(4, 4)
               if o.name in ("embed", "final_norm", "lm_head", "lm_head_epilogue"))
    assert 3 * layer + rest * 1e3 == pytest.approx(sm.cost(b).device_ms, rel=1e-6)
    names = {o.name for o in layer_ops(spec, "attn", 4, b, dt)}
    assert names == {"input_norm", "qkv_proj", "rope", "o_proj", "attn_residual", "attn_decode"}


PROFILER_VIEWS = {"slice", "transpose", "view", "split_with_sizes", "reshape", "chunk", "select", "split"}


def _profiled_calls(fn) -> dict[str, int]:
    """Top-level aten calls of fn by op, named as simulator.moment.kernels names them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out: dict[str, int] = {}
    for e in prof.events():
        if e.cpu_parent is None and e.name.startswith("aten::"):
            name = e.name.removeprefix("aten::")
            if name == "to" and not e.cpu_children:
                name = "view"  # a .to() to the dtype it has: a call, no kernel
            name = {"scaled_dot_product_attention": "sdpa"}.get(name, "view" if name in PROFILER_VIEWS else name)
            out[name] = out.get(name, 0) + 1
    return out


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_pytorch_kernels_are_the_reference_decoders_calls(dtype):
    """simulator.moment.kernels "pytorch" lists exactly the framework calls (views included) and
    kernels that the reference decoder's layer and step make, counted by torch.profiler."""
    from calibration.microbench import layer_calls
    from simulator.moment.kernels import host_calls

    r = Reference(TINY, dtype=dtype)
    r.alloc_cache(2, 32, fill=True)
    lay = r.layers[0]
    x = torch.randn(2, 1, TINY.hidden_size).to(r.dtype)
    pos, cos, sin = r.rope_at(10, 1)
    got = _profiled_calls(lambda: r.ffn_block(r.attn_block(x, lay, pos, cos, sin, 11), lay))
    assert got == layer_calls(dtype)
    assert sum(got.values()) == 55 and got["view"] == (18 if dtype == "bf16" else 22)  # fp32: 4 no-op .to()
    tok = torch.zeros(2, 1, dtype=torch.long)
    step = _profiled_calls(lambda: r.step(tok, 10).cpu())
    want = host_calls(TINY, "pytorch", Dtypes(dtype, dtype, dtype))
    want = {**want, "view": want["view"] + 1, "copy": 0}  # on a CPU the read-back .cpu() is a no-op
    assert {k: v for k, v in step.items() if v} == {k: v for k, v in want.items() if v}


def test_tiny_validate_writes_its_report(tmp_path):
    data = validate("cpu", "cpu", tmp_path, size="tiny", log=lambda s: None)
    md = (tmp_path / "validation.md").read_text()
    js = json.loads((tmp_path / "validation.json").read_text())
    assert (tmp_path / "pred_vs_measured.png").stat().st_size > 0
    assert (tmp_path / "error_by_case.png").stat().st_size > 0
    fams = {c["family"] for c in js["cases"]}
    assert fams == {"attn_layer", "ffn_layer", "decode_step", "prefill", "generation"}
    assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in js["cases"])
    # a case's time is the median of its samples (3 for tiny), never below their minimum, and
    # its error is (predicted - measured) / measured; the summary counts every case once
    for c in js["cases"]:
        assert c["samples"] >= 3 and c["measured_ms"] >= c["min_ms"] > 0
        assert c["err"] == pytest.approx((c["predicted_ms"] - c["measured_ms"]) / c["measured_ms"], abs=1e-4)
    assert sum(v["cases"] for k, v in js["summary"].items() if k != "all") == len(js["cases"])
    assert js["meta"]["fingerprint"]["device"] == "cpu" and js["meta"]["dtype"] == "fp32"
    assert "| family | case |" in md and data["summary"]["all"]["cases"] == len(js["cases"])


def test_validate_runs_and_repredicts_in_the_dtype_it_is_given(tmp_path):
    # --dtype bf16 on a CPU: the decoder runs in bf16 (half the bytes of every weight and cache
    # entry), the predictions are bf16's, and a repredict of the saved file prices it in bf16 again
    from calibration.validate import predict_case, repredict

    validate("cpu", "cpu", tmp_path / "b", size="tiny", log=lambda s: None, dtype="bf16")
    js = json.loads((tmp_path / "b" / "validation.json").read_text())
    assert js["meta"]["dtype"] == "bf16" and "bf16" in (tmp_path / "b" / "validation.md").read_text()
    hw = load_hardware("cpu")
    for c in js["cases"]:
        assert c["predicted_ms"] == pytest.approx(predict_case(c, hw, "cpu", "bf16"), abs=1e-6)  # (6 decimals kept)
    again = repredict(tmp_path / "b" / "validation.json", "cpu", tmp_path / "r")
    assert [c["predicted_ms"] for c in again["cases"]] == pytest.approx([c["predicted_ms"] for c in js["cases"]],
                                                                        abs=1e-6)
    # priced as fp32 (twice the bytes, no casts around the fp32 norms) every case comes out otherwise
    assert all(abs(predict_case(c, hw, "cpu", "fp32") - c["predicted_ms"]) > 1e-5 for c in js["cases"])


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_decode_matches_eager():
    r = Reference(TINY, dtype="bf16", device="cuda")
    r.alloc_cache(2, 32, fill=True)
    tok = ids(2, 1)
    eager = r.step(tok.cuda(), 10).cpu()
    replay = r.capture(2, 10)
    assert torch.equal(replay(tok), eager)


def test_generation_prediction_is_the_engine_makespan_and_the_sum_of_its_steps():
    """The static-batch generation predicted through the serving engine equals, by hand, the
    prefill step plus new - 1 decode steps with contexts growing by one."""
    from calibration.validate import predict_generation

    hw = load_hardware("cpu", use_profile=False)
    spec = TINY.model_copy(update={"num_hidden_layers": 2})
    dt = Dtypes("fp32", "fp32", "fp32")
    sm = step_model(spec, hw, mode="eager", dtypes=dt, kernels="pytorch")
    b, n, new = 4, 32, 6
    by_hand = sm.cost(Batch.of(prefill=[(b, n)])).step_ms + sum(
        sm.cost(Batch.of(decode=[(b, n + i)])).step_ms for i in range(new - 1))
    assert predict_generation(spec, hw, b, n, new, "eager", dt) == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_wide_cases_reach_past_the_full_set(device):
    # --wide: the ranges where a model fitted on small microbenchmarks must extrapolate (batches to
    # 256, contexts to 16k, prompts to 8k), each beyond what the full set measures
    from calibration.validate import shapes_for

    wide, full = shapes_for(device, "wide"), shapes_for(device, "full")
    assert max(b for b, _ in wide.decode) == 256 > max(b for b, _ in full.decode)
    assert max(c for _, c in wide.decode) == 16384 > max(c for _, c in full.decode)
    assert max(n for _, n in wide.prefill) == 8192 >= max(n for _, n in full.prefill)
    assert min(c for _, c in wide.decode) == 256 and min(n for _, n in wide.prefill) <= 2048
    assert {b for b, _, _ in wide.generation} == ({1, 32} if device == "cpu" else {1, 64})


def test_quick_and_wide_together_are_refused(capsys):
    from simulator.cli import main

    assert main(["validate", "--device", "cpu", "--quick", "--wide", "--hardware", "cpu", "--out", "/tmp/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["momentsim: --wide: give --quick or --wide, not both"]


def _gpu_session(tmp_path, **env):
    import os
    import subprocess
    import sys

    run_env = {**os.environ, "DEVICE": "cpu", "HW": "cpu", "MODELS": "tiny-llama:2", "WHEELS": "none",
               "OUT": str(tmp_path), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "calibration/gpu-session.sh"], env=run_env, capture_output=True, text=True,
                          timeout=300)


def test_gpu_session_script_parses_and_keeps_nothing_when_out_of_time(tmp_path):
    import subprocess

    assert subprocess.run(["bash", "-n", "calibration/gpu-session.sh"]).returncode == 0
    r = _gpu_session(tmp_path, BUDGET_S="0")  # no time: every validate is skipped, the log still written
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.log"]
    assert "# done after" in (tmp_path / "session.log").read_text()


def test_gpu_session_goes_on_past_a_step_its_timeout_kills(tmp_path):
    # each step capped at 2 s: the validations are killed (timeout's exit 124), none leaves a
    # half-written file, and the script still ends with its log
    r = _gpu_session(tmp_path, STEP_CAP_S="2", MODELS="tiny-llama:1")
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "session.log").read_text()
    assert log.count(": exit 124 at") == 2 and "# done after" in log  # the validation and the wide one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.log"]


@pytest.mark.slow
def test_gpu_session_dry_run_on_a_cpu_keeps_one_json_per_model_and_the_wide_cases(tmp_path):
    r = _gpu_session(tmp_path, BUDGET_S="300")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["session.log", "validation-tiny-llama.json", "validation-wide-tiny-llama.json"]
    for n in names[1:]:
        js = json.loads((tmp_path / n).read_text())
        assert js["cases"] and all(c["measured_ms"] > 0 for c in js["cases"])
    assert json.loads((tmp_path / "validation-wide-tiny-llama.json").read_text())["meta"]["size"] == "wide"


def test_a_repredict_compares_the_saved_probe_with_its_own_profile(tmp_path):
    # the machine's speed measured then, against the calibration of the profile predicting now
    from calibration.validate import profile_probe, repredict

    saved = json.loads(open("calibration/validation-cpu/validation.json", encoding="utf-8").read())
    probes = {"start": {"gflops": {"fp32": 140.0}, "copy_gbps": 28.0}, "end": {"gflops": {"fp32": 150.0}, "copy_gbps": 29.0},
              "profile": {"gflops": {"fp32": 999.0}, "copy_gbps": 99.0}}
    saved["meta"]["probe"] = probes
    src = tmp_path / "v.json"
    src.write_text(json.dumps(saved), encoding="utf-8")
    other = "calibration/data/cpu-2026-11-25/profile.json"
    data = repredict(src, other, tmp_path / "out")
    assert data["meta"]["probe"]["profile"] == profile_probe(other) and profile_probe(other)["gflops"]["fp32"] == 196.1
    assert data["meta"]["probe"]["start"] == probes["start"]
    assert "ran 26 % slower" in (tmp_path / "out" / "validation.md").read_text()  # 145 against 196.1
