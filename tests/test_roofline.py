"""hwmodels.roofline by hand: each formula of its docstrings evaluated here on round numbers.

A made-up device keeps the arithmetic visible: 1 GHz x 100 units x 1000 FLOPs per cycle
= 1e14 FLOP/s in bf16 (4e13 in fp32), 1000 GB/s of memory, 10 MB of cache.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.roofline import (
    allreduce_time,
    alltoall_time,
    floor_us,
    op_time,
    send_time,
    soft_max,
    stream_time,
    wave_factor,
)
from hwmodels.spec import PARALLEL_GRAIN, Efficiency, Hardware, Link

PEAK, FP32, BW = 1e14, 4e13, 1e12


def hw(**eff) -> Hardware:
    base = dict(gemm_compute=0.5, gemm_memory=0.8, gemm_wave=0.0, softmax_p=64, floor_us=3.0,
                elementwise_memory={"norm": 0.4}, elementwise_row_gbps={}, elementwise_cache_gain={},
                comm_bw=0.5)
    return Hardware.model_validate({
        "name": "toy",
        "device": {"name": "toy", "kind": "gpu", "clock_ghz": 1.0, "compute_units": 100, "memory_bw_gbps": 1000, "memory_gb": 80,
                   "cache_mb": 10, "flops_per_cycle": {"bf16": 1000, "fp32": 400}},
        "devices_per_node": 8, "nodes": 2,
        "link": {"name": "nvlink", "bw_gbps": 100, "latency_us": 2.0},
        "network": {"name": "ib", "bw_gbps": 10, "latency_us": 20.0},
        "efficiency": {**base, **eff}})


def test_the_toy_device_is_what_the_docstring_says():
    h = hw()
    assert h.device.peak_flops("bf16") == PEAK and h.device.peak_flops("fp32") == FP32 and h.device.bandwidth == BW


# -- soft_max and wave_factor ----------------------------------------------------------------------

def test_soft_max_closed_forms():
    assert soft_max(3.0, 4.0, 64) == 4.0 and soft_max(4.0, 3.0, 100) == 4.0  # p >= 64: the plain max
    assert float(soft_max(3.0, 4.0, 1)) == pytest.approx(7.0)                 # p = 1: the sum
    assert float(soft_max(3.0, 4.0, 2)) == pytest.approx(5.0)                 # p = 2: the hypotenuse
    assert float(soft_max(0.0, 4.0, 3)) == pytest.approx(4.0)                 # one side zero: the other
    assert float(soft_max(2.0, 2.0, 4)) == pytest.approx(2.0 * 2 ** 0.25)     # at the ridge: 2^(1/p) x
    np.testing.assert_allclose(soft_max([3.0, 6.0], [4.0, 8.0], 2), [5.0, 10.0])


@settings(max_examples=200, deadline=None)
@given(a=st.one_of(st.just(0.0), st.floats(1e-9, 1e3)), b=st.one_of(st.just(0.0), st.floats(1e-9, 1e3)),
       p=st.floats(1, 63))
def test_soft_max_lies_between_the_max_and_the_sum(a, b, p):
    v = float(soft_max(a, b, p))
    assert max(a, b) * (1 - 1e-12) <= v <= (a + b) * (1 + 1e-12)
    assert v == pytest.approx(float(soft_max(b, a, p)), rel=1e-12)


def test_wave_factor_by_hand():
    assert float(wave_factor(128, 128, 1)) == 1.0                        # one full tile on one unit
    assert float(wave_factor(128, 128 * 100, 100)) == 1.0                # 100 tiles, one wave of 100 units
    # 101 tiles on 100 units: two waves, 101 / 200 of the issued tile slots useful
    assert float(wave_factor(128, 128 * 101, 100)) == pytest.approx(101 / 200)
    # a 1 x 1 output: one tile, one wave, 1 / (100 x 128 x 128) useful
    assert float(wave_factor(1, 1, 100)) == pytest.approx(1 / (100 * 128 * 128))
    # ragged tiles: 129 rows are 2 row tiles; 64-wide tiles when asked
    assert float(wave_factor(129, 128, 4)) == pytest.approx(129 * 128 / (4 * 128 * 128))
    assert float(wave_factor(64, 64, 1, tile=64)) == 1.0
    assert float(wave_factor(0, 0, 1)) == pytest.approx(1 / 128 ** 2)   # empty is costed as 1 x 1


# -- floors --------------------------------------------------------------------------------------

def test_floors_by_hand():
    e = Efficiency(floor_us=5.0)
    assert floor_us(e, True) == 5.0 and floor_us(e, False) == 5.0       # one floor for every kernel
    e = Efficiency(floor_us=5.0, elementwise_floor_us=2.0)
    assert floor_us(e, True) == 5.0 and floor_us(e, False) == 2.0
    assert floor_us(e, True, graph=True) == 5.0                         # no graph floor measured: as eager
    # in a graph each floor loses the light floor's excess over the graph floor (2 - 0.5 = 1.5 us)
    e = Efficiency(floor_us=5.0, elementwise_floor_us=2.0, graph_floor_us=0.5)
    assert floor_us(e, True, graph=True) == 3.5 and floor_us(e, False, graph=True) == 0.5
    assert floor_us(e, True, graph=False) == 5.0
    # never below the graph floor, and a light floor already below it removes nothing
    e = Efficiency(floor_us=1.0, elementwise_floor_us=0.2, graph_floor_us=0.5)
    assert floor_us(e, True, graph=True) == 1.0 and floor_us(e, False, graph=True) == 0.5


# -- GEMMs -----------------------------------------------------------------------------------------

def test_gemm_compute_and_memory_bound_by_hand():
    h = hw()
    # 1e12 FLOPs, little memory: 1e12 / (1e14 x 0.5) = 20 ms, plus 3 us floor x 4 launches
    t = float(op_time("gemm", "ffn_up", 1e12, 1e6, 4, "bf16", h, m=4096, n=4096))
    assert t == pytest.approx(0.02 + 12e-6, rel=1e-12)
    # 8e9 bytes, few FLOPs: 8e9 / (1e12 x 0.8) = 10 ms
    t = float(op_time("gemm", "ffn_up", 1e6, 8e9, 1, "bf16", h, m=1, n=4096))
    assert t == pytest.approx(0.01 + 3e-6, rel=1e-12)
    # an fp32 GEMM runs at the fp32 peak
    t = float(op_time("gemm", "ffn_up", 4e11, 0.0, 1, "fp32", h, m=4096, n=4096))
    assert t == pytest.approx(4e11 / (FP32 * 0.5) + 3e-6, rel=1e-12)
    # inside a CUDA graph the floor is the graph's
    g = hw(graph_floor_us=1.0, elementwise_floor_us=1.5)
    t = float(op_time("gemm", "ffn_up", 1e12, 0.0, 4, "bf16", g, m=4096, n=4096, graph=True))
    assert t == pytest.approx(0.02 + 4 * (3.0 - 0.5) * 1e-6, rel=1e-12)


def test_gemm_rounded_roofline_and_waves_by_hand():
    # at the ridge (both bounds 10 ms) the soft max with p = 2 is sqrt(2) x 10 ms
    h = hw(softmax_p=2.0)
    t = float(op_time("gemm", "ffn_up", 0.5e12, 8e9, 1, "bf16", h, m=4096, n=4096))
    assert t == pytest.approx(math.sqrt(2) * 0.01 + 3e-6, rel=1e-12)
    # waves: 101 tiles on 100 units are half useful; gemm_wave 0.4 takes 40 % of the peak from it
    h = hw(gemm_wave=0.4)
    t = float(op_time("gemm", "ffn_up", 1e12, 0.0, 1, "bf16", h, m=128, n=128 * 101))
    assert t == pytest.approx(1e12 / (PEAK * 0.5 * (0.6 + 0.4 * 101 / 200)) + 3e-6, rel=1e-12)


def test_gemv_memory_applies_to_one_row_only():
    h = hw(gemv_memory=0.4)
    one = float(op_time("gemm", "ffn_up", 0.0, 8e9, 1, "bf16", h, m=1, n=4096))
    two = float(op_time("gemm", "ffn_up", 0.0, 8e9, 1, "bf16", h, m=2, n=4096))
    assert one == pytest.approx(8e9 / (BW * 0.4) + 3e-6, rel=1e-12)
    assert two == pytest.approx(8e9 / (BW * 0.8) + 3e-6, rel=1e-12)


def test_wide_gemm_memory_applies_to_several_rows_from_its_width_on():
    """A CPU BLAS's small-M path streams matrices at least wide_gemm_n wide at its own rate; one
    row (the matrix-vector path) and narrower matrices keep theirs."""
    h = hw(gemv_memory=0.4, wide_gemm_n=8192, wide_gemm_memory=0.2)
    t = lambda m, n: float(op_time("gemm", "ffn_up", 0.0, 8e9, 1, "bf16", h, m=m, n=n))  # noqa: E731
    assert t(4, 8192) == pytest.approx(8e9 / (BW * 0.2) + 3e-6, rel=1e-12)
    assert t(4, 8191) == pytest.approx(8e9 / (BW * 0.8) + 3e-6, rel=1e-12)
    assert t(1, 8192) == pytest.approx(8e9 / (BW * 0.4) + 3e-6, rel=1e-12)
    # vectorised over shapes as the step tables call it
    got = op_time("gemm", "ffn_up", 0.0, 8e9, 1, "bf16", h, m=np.array([1.0, 2.0, 2.0]), n=np.array([9e3, 9e3, 4e3]))
    assert np.allclose(got, [8e9 / (BW * f) + 3e-6 for f in (0.4, 0.2, 0.8)], rtol=1e-12)
    with pytest.raises(ValueError, match="both or neither"):
        hw(wide_gemm_n=8192)


def test_a_dtypes_own_gemm_rate_replaces_every_other_for_it():
    """A CPU's bf16 GEMMs run their library's own kernels: gemm_memory_dtype sets their rate at
    every row count and width, and the other dtypes keep theirs."""
    h = hw(gemv_memory=0.4, wide_gemm_n=8192, wide_gemm_memory=0.2, gemm_memory_dtype={"bf16": 0.6})
    t = lambda m, n, dt: float(op_time("gemm", "ffn_up", 0.0, 8e9, 1, dt, h, m=m, n=n))  # noqa: E731
    for m, n in ((1, 4096), (4, 4096), (4, 9000), (64, 1e5)):
        assert t(m, n, "bf16") == pytest.approx(8e9 / (BW * 0.6) + 3e-6, rel=1e-12)
    assert [t(1, 4096, "fp32"), t(4, 4096, "fp32"), t(4, 9000, "fp32")] == pytest.approx(
        [8e9 / (BW * f) + 3e-6 for f in (0.4, 0.8, 0.2)], rel=1e-12)
    # a compute-bound bf16 GEMM is unchanged: the rate is the weights' stream
    assert float(op_time("gemm", "ffn_up", 1e12, 0.0, 1, "bf16", h, m=4096, n=4096)) == pytest.approx(
        1e12 / (PEAK * 0.5) + 3e-6, rel=1e-12)
    with pytest.raises(ValueError, match="unknown dtype 'bf17' in gemm_memory_dtype"):
        hw(gemm_memory_dtype={"bf17": 0.5})
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError):
            hw(gemm_memory_dtype={"bf16": bad})


def test_dequantising_weights_adds_vector_work_on_the_fp32_units():
    h = hw()
    t = float(op_time("gemm", "ffn_up", 1e12, 0.0, 1, "bf16", h, m=4096, n=4096, dequant=2e11))
    assert t == pytest.approx(1e12 / (PEAK * 0.5) + 2e11 / (FP32 * 0.5) + 3e-6, rel=1e-12)


def test_op_time_refuses_attention_and_unknown_kinds():
    with pytest.raises(ValueError, match="hwmodels.attention"):
        op_time("attn_decode", "attention", 1.0, 1.0, 1, "bf16", hw())
    with pytest.raises(ValueError, match="unknown op kind"):
        op_time("conv", "x", 1.0, 1.0, 1, "bf16", hw())


# -- element-wise kernels ---------------------------------------------------------------------------

def test_stream_by_hand():
    h = hw()
    # norm at 40 % of 1 TB/s: 4e9 bytes take 10 ms, plus the floor per launch
    assert float(stream_time("norm", 4e9, 2, h)) == pytest.approx(0.01 + 6e-6, rel=1e-12)
    # a category without its own efficiency streams at the GEMMs' 80 %
    assert float(stream_time("rope", 8e9, 1, h)) == pytest.approx(0.01 + 3e-6, rel=1e-12)
    # op_time routes a stream the same way
    assert float(op_time("stream", "norm", 0.0, 4e9, 2, "bf16", h)) == float(stream_time("norm", 4e9, 2, h))


def test_stream_cache_gain_by_hand():
    h = hw(elementwise_cache_gain={"norm": 1.0})
    # 5 MB in a 10 MB cache: fits (min(1, 2) = 1): time / (1 + 1 x 1^4), half
    assert float(stream_time("norm", 5e6, 1, h)) == pytest.approx(5e6 / (BW * 0.4) / 2 + 3e-6, rel=1e-12)
    # 20 MB: half fits: / (1 + 0.5^4)
    assert float(stream_time("norm", 20e6, 1, h)) == pytest.approx(20e6 / (BW * 0.4) / (1 + 0.5 ** 4) + 3e-6,
                                                                   rel=1e-12)
    # 20 MB over 4 launches is 5 MB each: fits
    assert float(stream_time("norm", 20e6, 4, h)) == pytest.approx(20e6 / (BW * 0.4) / 2 + 12e-6, rel=1e-12)
    # a part without a cache gains nothing
    h0 = h.model_copy(update={"device": h.device.model_copy(update={"cache_mb": 0.0})})
    assert float(stream_time("norm", 5e6, 1, h0)) == pytest.approx(5e6 / (BW * 0.4) + 3e-6, rel=1e-12)


def test_stream_row_bound_by_hand():
    h = hw(elementwise_row_gbps={"norm": 10.0})
    # 4 tokens, 4e6 bytes: 1e6 bytes per row at 10 GB/s = 100 us > 4e6 / 4e11 = 10 us
    assert float(stream_time("norm", 4e6, 1, h, m=4)) == pytest.approx(100e-6 + 3e-6, rel=1e-12)
    # many tokens: the bandwidth bound again (4e9 / 4e11 = 10 ms > 4e9 / 4096 / 1e10 = 98 us)
    assert float(stream_time("norm", 4e9, 1, h, m=4096)) == pytest.approx(0.01 + 3e-6, rel=1e-12)
    # m = 0 (not a per-token kernel): no row bound
    assert float(stream_time("norm", 4e6, 1, h, m=0)) == pytest.approx(10e-6 + 3e-6, rel=1e-12)
    # op_time passes an element-wise op's rows on: the same bound through the common entry
    assert float(op_time("stream", "norm", 0.0, 4e6, 1, "bf16", h, m=4)) == pytest.approx(100e-6 + 3e-6, rel=1e-12)


def test_cpu_thread_pool_hand_off_from_the_grain_up():
    h = hw(parallel_us=50.0)
    base = 4e6 / (BW * 0.4) + 2 * 3e-6
    assert float(stream_time("norm", 4e6, 2, h, elems=PARALLEL_GRAIN - 1)) == pytest.approx(base, rel=1e-12)
    assert float(stream_time("norm", 4e6, 2, h, elems=PARALLEL_GRAIN)) == pytest.approx(base + 100e-6, rel=1e-12)
    assert float(op_time("stream", "norm", 0.0, 4e6, 2, "bf16", h, elems=PARALLEL_GRAIN)) == pytest.approx(
        base + 100e-6, rel=1e-12)


def test_light_floor_for_element_wise_kernels():
    h = hw(elementwise_floor_us=1.0)
    assert float(stream_time("norm", 0.0, 3, h)) == pytest.approx(3e-6, rel=1e-12)
    assert float(op_time("gemm", "ffn_up", 0.0, 0.0, 3, "bf16", h)) == pytest.approx(9e-6, rel=1e-12)


# -- collectives ------------------------------------------------------------------------------------

def test_ring_and_tree_allreduce_by_hand():
    link, eff = Link(bw_gbps=100, latency_us=2.0), Efficiency(comm_bw=0.5)
    # 8 devices, 1e9 bytes: 2 x 7/8 x 1e9 / 5e10 = 35 ms; 14 ring hops of 2 us per call, 3 calls
    assert float(allreduce_time(1e9, 8, 3, link, eff)) == pytest.approx(0.035 + 14 * 2e-6 * 3, rel=1e-12)
    tree = Efficiency(comm_bw=0.5, comm_hops="tree", comm_latency_us=7.0)
    # tree: 2 ceil(log2 8) = 6 hops of the fitted 7 us; 5 devices: 2 x 3 = 6 hops too
    assert float(allreduce_time(1e9, 8, 1, link, tree)) == pytest.approx(0.035 + 6 * 7e-6, rel=1e-12)
    assert float(allreduce_time(1e9, 5, 1, link, tree)) == pytest.approx(2 * 4 / 5 * 1e9 / 5e10 + 6 * 7e-6, rel=1e-12)
    assert float(allreduce_time(1e9, 2, 1, link, eff)) == pytest.approx(1e9 / 5e10 + 2 * 2e-6, rel=1e-12)
    assert float(allreduce_time(1e9, 1, 1, None, eff)) == 0.0  # one device: nothing to reduce
    with pytest.raises(ValueError, match="link"):
        allreduce_time(1e9, 2, 1, None, eff)


def test_send_and_alltoall_by_hand():
    link, eff = Link(bw_gbps=100, latency_us=2.0), Efficiency(comm_bw=0.5)
    assert float(send_time(1e9, 3, link, eff)) == pytest.approx(1e9 / 5e10 + 3 * 2e-6, rel=1e-12)
    assert float(alltoall_time(1e9, 8, 3, link, eff)) == pytest.approx(1e9 / 5e10 + 3 * 2e-6, rel=1e-12)
    assert float(alltoall_time(1e9, 1, 3, None, eff)) == 0.0
    with pytest.raises(ValueError, match="pipeline"):
        send_time(1e9, 1, None, eff)
    with pytest.raises(ValueError, match="expert"):
        alltoall_time(1e9, 2, 1, None, eff)


def test_op_time_uses_the_link_inside_a_node_and_the_network_across_nodes():
    h = hw()  # 8 devices per node on a 100 GB/s link, nodes joined by 10 GB/s
    within = float(op_time("allreduce", "comm", 0.0, 1e9, 1, "bf16", h, group=8))
    across = float(op_time("allreduce", "comm", 0.0, 1e9, 1, "bf16", h, group=16))
    assert within == pytest.approx(2 * 7 / 8 * 1e9 / 5e10 + 14 * 2e-6, rel=1e-12)
    assert across == pytest.approx(2 * 15 / 16 * 1e9 / 5e9 + 30 * 20e-6, rel=1e-12)
    assert float(op_time("send", "comm", 0.0, 1e9, 2, "bf16", h)) == pytest.approx(1e9 / 5e10 + 4e-6, rel=1e-12)
    assert float(op_time("alltoall", "comm", 0.0, 1e9, 2, "bf16", h, group=8)) == pytest.approx(
        1e9 / 5e10 + 4e-6, rel=1e-12)
    assert float(op_time("alltoall", "comm", 0.0, 1e9, 1, "bf16", h, group=16)) == pytest.approx(
        1e9 / 5e9 + 20e-6, rel=1e-12)


# -- defaults and edges, exactly (abs=0: a picosecond matters at these sizes) ------------------------

def exactly(x: float):
    return pytest.approx(x, rel=1e-12, abs=0)


def test_defaults_are_eager_no_rows_no_dequantising_one_device():
    g = hw(graph_floor_us=1.0, elementwise_floor_us=1.5, elementwise_row_gbps={"norm": 10.0})
    # a stream's defaults: eager floor, no per-row bound (m = 0), no thread-pool hand-off
    assert float(stream_time("norm", 4e6, 1, g)) == exactly(4e6 / (BW * 0.4) + 1.5e-6)
    assert float(op_time("stream", "norm", 0.0, 4e6, 1, "bf16", g)) == exactly(4e6 / (BW * 0.4) + 1.5e-6)
    assert floor_us(g.efficiency, False) == 1.5 and floor_us(g.efficiency, True) == 3.0
    # in a graph: the graph floor, through op_time too
    assert float(stream_time("norm", 4e6, 1, g, graph=True)) == exactly(4e6 / (BW * 0.4) + 1e-6)
    assert float(op_time("stream", "norm", 0.0, 4e6, 1, "bf16", g, graph=True)) == exactly(4e6 / (BW * 0.4) + 1e-6)
    # a GEMM without dequantising work: exactly its roofline (no vector ops added)
    assert float(op_time("gemm", "ffn_up", 1e12, 0.0, 1, "bf16", g, m=4096, n=4096)) == exactly(0.02 + 3e-6)
    # half a vector op is still work
    assert float(op_time("gemm", "ffn_up", 1e12, 0.0, 1, "bf16", g, m=4096, n=4096, dequant=0.5)) == exactly(
        0.02 + 0.5 / (FP32 * 0.5) + 3e-6)
    # a collective over one device (the default group) costs nothing
    assert float(op_time("allreduce", "comm", 0.0, 1e9, 1, "bf16", g)) == 0.0
    assert float(op_time("alltoall", "comm", 0.0, 1e9, 1, "bf16", g)) == 0.0


def test_one_token_rows_and_exact_row_rate():
    h = hw(elementwise_row_gbps={"norm": 10.0})
    # one token (a batch-1 decode): its whole row through one block at 10 GB/s
    assert float(stream_time("norm", 1e6, 1, h, m=1)) == exactly(1e6 / 10e9 + 3e-6)
    assert float(stream_time("norm", 4e6, 1, h, m=4)) == exactly(1e6 / 10e9 + 3e-6)


def test_a_cache_under_a_megabyte_still_gains():
    h = hw(elementwise_cache_gain={"norm": 1.0})
    h = h.model_copy(update={"device": h.device.model_copy(update={"cache_mb": 0.5})})
    # 0.25 MB fits a 0.5 MB cache: twice as fast
    assert float(stream_time("norm", 0.25e6, 1, h)) == exactly(0.25e6 / (BW * 0.4) / 2 + 3e-6)


def test_collectives_return_float_arrays_of_their_input_shape():
    link, eff = Link(bw_gbps=100, latency_us=2.0), Efficiency(comm_bw=0.5)
    for f in (lambda b: allreduce_time(b, 1, 1, None, eff), lambda b: alltoall_time(b, 1, 1, None, eff)):
        z = f(np.array([1000, 2000]))
        assert z.dtype == np.float64 and z.shape == (2,) and not z.any()
    assert allreduce_time(np.array([1e9, 2e9]), 2, 1, link, eff).shape == (2,)


def test_collective_errors_say_what_is_missing():
    eff = Efficiency()
    with pytest.raises(ValueError, match="^a collective over several devices needs a link$"):
        allreduce_time(1e9, 2, 1, None, eff)
    with pytest.raises(ValueError, match="^pipeline parallelism needs a link between devices$"):
        send_time(1e9, 1, None, eff)
    with pytest.raises(ValueError, match="^expert parallelism over several devices needs a link$"):
        alltoall_time(1e9, 2, 1, None, eff)
    for kind in ("attn_prefill", "attn_decode"):
        with pytest.raises(ValueError, match=f"^{kind} is priced by hwmodels.attention"):
            op_time(kind, "attention", 1.0, 1.0, 1, "bf16", hw())


def test_the_devices_launch_time_bounds_every_eager_kernel_not_graph_replays():
    e = Efficiency(floor_us=3.0, elementwise_floor_us=1.0, graph_floor_us=0.5)
    assert floor_us(e, True, launch_us=4.0) == 4.0 and floor_us(e, False, launch_us=2.0) == 2.0
    assert floor_us(e, True, launch_us=2.0) == 3.0 and floor_us(e, False, launch_us=0.5) == 1.0
    assert floor_us(e, True, graph=True, launch_us=9.0) == 2.5  # a graph has no launch gaps
    assert floor_us(Efficiency(floor_us=3.0), True, graph=True, launch_us=9.0) == 3.0  # nor without a graph floor
    assert floor_us(Efficiency(floor_us=0.5), True) == 0.5  # no launch time given: no bound
    h = hw(elementwise_floor_us=1.0, graph_floor_us=0.5)
    h = h.model_copy(update={"device": h.device.model_copy(update={"kernel_launch_us": 4.0})})
    assert float(stream_time("norm", 0.0, 2, h)) == exactly(8e-6)
    assert float(stream_time("norm", 0.0, 2, h, graph=True)) == exactly(1e-6)
    assert float(op_time("gemm", "ffn_up", 0.0, 0.0, 2, "bf16", h)) == exactly(8e-6)
    assert float(op_time("gemm", "ffn_up", 0.0, 0.0, 2, "bf16", h, graph=True)) == exactly(2 * 2.5e-6)
