"""Kernel composition and the host: kernels, bytes and calls of each implementation worked out by
hand from the code they describe (calibration/reference.py for pytorch; vLLM's fused kernels),
and the eager host time as the sum of its calls."""

from __future__ import annotations

import json

import pytest

from hwmodels.load import load_hardware
from hwmodels.roofline import floor_us
from hwmodels.spec import Efficiency, Host
from simulator.moment.cost import StepModel, step_model
from simulator.moment.kernels import compose, host_calls, kernel_count
from simulator.moment.model import PRESET_DIR, load_model
from simulator.moment.ops import Batch, Dtypes, dense_ops

M8B = load_model("llama-3-8b")


def _op(impl: str, name: str, a: float, tokens: int = 16):
    dt = Dtypes("fp32", "fp32", "fp32") if a == 4 else Dtypes()
    ops = compose(dense_ops(M8B, tokens, 0, dt), impl, a)
    return next((o for o in ops if o.name == name), None)


@pytest.mark.parametrize("a,kernels,per_elem", [
    # HF RMSNorm in bf16: x.to(fp32) 2+4, pow 4+4, mean 4, +eps and rsqrt per row, h*rsqrt 4+4,
    # .to(bf16) 4+2, weight* 2+2: 8 kernels, 36 bytes per element
    (2.0, 8, 36.0),
    # in fp32 the two .to() are no-ops: pow 8, mean 4, mul 8, mul 8
    (4.0, 6, 28.0),
])
def test_plain_pytorch_rmsnorm(a, kernels, per_elem):
    o = _op("pytorch", "input_norm", a)
    assert o.kernels == kernels
    assert float(o.bytes) == pytest.approx(per_elem * 16 * 4096 * 32)  # tokens x hidden x layers


def test_fused_add_rmsnorm_absorbs_the_residual_add():
    o = _op("fused", "post_attn_norm", 2.0)
    assert o.kernels == 1 and float(o.bytes) == pytest.approx(4 * 2 * 16 * 4096 * 32)  # x, residual in; both out
    assert _op("fused", "attn_residual", 2.0) is None and _op("fused", "ffn_residual", 2.0) is None
    assert _op("pytorch", "attn_residual", 2.0).kernels == 1


def test_rope_and_swiglu():
    # rotate_half on q, then k: mul 2, neg 1 (half), cat 2, mul 2, add 3 = 10 elements moved each
    qk = 16 * (4096 + 1024) * 32
    assert _op("pytorch", "rope", 2.0).kernels == 10
    assert float(_op("pytorch", "rope", 2.0).bytes) == pytest.approx(10 * 2 * qk)
    assert _op("fused", "rope", 2.0).kernels == 1 and float(_op("fused", "rope", 2.0).bytes) == pytest.approx(2 * 2 * qk)
    inter = 16 * 14336 * 32  # SiLU(gate): 1 in 1 out; * up: 2 in 1 out; fused silu_and_mul: 2 in 1 out
    assert (_op("pytorch", "ffn_act", 2.0).kernels, float(_op("pytorch", "ffn_act", 2.0).bytes)) == (2, 5 * 2 * inter)
    assert (_op("fused", "ffn_act", 2.0).kernels, float(_op("fused", "ffn_act", 2.0).bytes)) == (1, 3 * 2 * inter)


def test_logits_cast_is_its_own_kernel():
    ops = compose(dense_ops(M8B, 0, 8, Dtypes()), "pytorch", 2.0)
    epi = next(o for o in ops if o.name == "lm_head_epilogue")
    assert epi.kernels == 1 and float(epi.bytes) == pytest.approx(8 * 128256 * (2 + 4))  # bf16 in, fp32 out


def test_kernels_per_step_by_hand():
    # plain PyTorch: per layer norm 8 + qkv 1 + rope 10 + 2 index_copy_ + SDPA + o 1 + add 1 + norm 8 +
    # up 1 + SiLU, mul 2 + down 1 + add 1 = 37; then embedding, final norm 8, lm_head + .float(),
    # arange + 2 index_select (positions, RoPE rows), argmax + read-back
    pt = host_calls(M8B, "pytorch", Dtypes())
    assert kernel_count(pt) == 32 * 37 + 1 + 8 + 2 + 3 + 2 == 1200
    assert pt["view"] == 32 * 18 + 1  # views per layer (torch.profiler, tests/test_validate.py) + the last token
    # fused: add+norm 2, qkv, rope, reshape_and_cache, attention, o, up, silu_and_mul, down = 10 per layer
    fu = host_calls(M8B, "fused", Dtypes())
    assert kernel_count(fu) == 32 * 10 + 1 + 1 + 2 + 3 + 2 == 329


def test_eager_host_time_is_the_sum_of_its_calls():
    host = Host(dispatch_us=10.0, op_dispatch_us={"linear": 20.0}, view_us=1.0, sequence_us=0.5,
                step_overhead_us=0.0)
    hw = load_hardware("h100-sxm").model_copy(update={"host": host})
    sm = StepModel(M8B, hw, mode="eager", kernels="pytorch")
    linear = 32 * 4 + 1
    by_hand = (1200 - linear) * (10 + 0.5) + linear * (20 + 0.5) + 577 * (1 + 0.5)
    assert sm.issue_s * 1e6 == pytest.approx(by_hand)
    # a host-bound step: the calls, then the final norm and logits the device runs after the last one
    b = Batch.of(decode=[(1, 128)])
    assert sm.step_s(b) == pytest.approx(sm.issue_s + sm.tail_s(1))
    # CUDA graphs: one launch per step, whatever the kernels
    g = StepModel(M8B, hw, mode="graph", kernels="pytorch")
    assert g.issue_s == pytest.approx(host.graph_launch_us * 1e-6)


def test_default_sequence_cost_scales_with_the_host():
    assert Host(view_us=2.0).sequence_extra_us == pytest.approx(2.4)  # 1.2 views: see hwmodels.spec
    assert Host(view_us=2.0, sequence_us=0.0).call_us("view") == 2.0


def test_a_cpu_runs_calls_and_kernels_in_turn():
    cpu = load_hardware("cpu")
    sm = step_model(load_model("llama-3.2-1b"), cpu, mode="graph", kernels="pytorch")  # no graphs on a CPU
    b = Batch.of(decode=[(2, 64)])
    assert sm.step_s(b) == pytest.approx(sm.device_s(b) + sm.issue_s + sm.overhead_s)


def test_graph_floors_by_hand():
    eff = Efficiency(floor_us=7.0, elementwise_floor_us=4.0, graph_floor_us=1.0)
    assert floor_us(eff, True) == 7.0 and floor_us(eff, False) == 4.0
    # inside a graph every kernel loses the eager launch gap: 4 - 1 = 3 us
    assert floor_us(eff, False, graph=True) == 1.0 and floor_us(eff, True, graph=True) == 4.0
    assert floor_us(Efficiency(floor_us=7.0, elementwise_floor_us=4.0), True, graph=True) == 7.0  # unmeasured


def test_fused_kernels_are_never_slower_than_plain_pytorch():
    hw = load_hardware("h200-sxm")
    for mode in ("graph", "eager"):
        for b in (Batch.of(decode=[(1, 1024)]), Batch.of(decode=[(64, 4096)]), Batch.of(prefill=[(2, 2048)])):
            fused = step_model(M8B, hw, mode=mode, kernels="fused").step_s(b)
            plain = step_model(M8B, hw, mode=mode, kernels="pytorch").step_s(b)
            assert fused < plain


def test_a_host_is_swapped_by_name_or_overridden_by_field(tmp_path):
    p = tmp_path / "h.yaml"
    p.write_text("base: h100-sxm\nname: h100-fast-host\nhost: h200-xeon\n")
    hw = load_hardware(str(p))
    assert hw.host.op_dispatch_us["linear"] == pytest.approx(13.612) and hw.device.name == "NVIDIA H100 SXM5 80GB"
    q = tmp_path / "h2.yaml"
    q.write_text("base: h200-sxm\nname: h200-slow-host\nhost: {dispatch_us: 40, op_dispatch_us: {}}\n")
    hw = load_hardware(str(q))
    assert hw.host.dispatch_us == 40 and hw.host.view_us == pytest.approx(1.4)  # the rest of the H200 host stays


def test_a_hardware_or_model_file_edited_between_calls_is_read_again(tmp_path):
    # load_hardware and load_model keep what they read; a file edited since (a notebook, a study
    # writing its variants) must not come back as it was: 2 TB/s, then 4 TB/s in the same file
    p = tmp_path / "part.yaml"
    p.write_text("base: h100-sxm\nname: part\ndevice: {memory_bw_gbps: 2000}\n")
    assert load_hardware(str(p)).device.bandwidth == pytest.approx(2e12)
    assert load_hardware(str(p)) is load_hardware(str(p))  # unchanged: the same object, not read again
    p.write_text("base: h100-sxm\nname: part\ndevice: {memory_bw_gbps: 4000.0}\n")
    assert load_hardware(str(p)).device.bandwidth == pytest.approx(4e12)
    cfg = json.loads((PRESET_DIR / "llama-3.2-1b.json").read_text())
    m = tmp_path / "config.json"
    m.write_text(json.dumps(cfg | {"num_hidden_layers": 4}))
    assert load_model(str(m)).num_hidden_layers == 4
    m.write_text(json.dumps(cfg | {"num_hidden_layers": 12}))
    assert load_model(str(m)).num_hidden_layers == 12
