"""Time of one operation on one device: roofline bounds shaped by efficiency curves, a floor.

Pure functions of numbers (scalars or numpy arrays), so the simulator can vectorise them over
batch shapes and cache per-model tables. An op is described by its kind and totals: FLOPs and
bytes summed over the `launches` kernels that carry it (its kernels per layer x layers).
Attention kernels are priced from their shapes in hwmodels.attention.
"""

from __future__ import annotations

import math

import numpy as np

from hwmodels.spec import PARALLEL_GRAIN, Efficiency, Hardware, Link

KINDS = ("gemm", "attn_prefill", "attn_decode", "stream", "allreduce", "send", "alltoall")


def soft_max(a, b, p: float):
    """(a^p + b^p)^(1/p): the roofline's max, rounded at the ridge point."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if p >= 64:
        return np.maximum(a, b)
    m = np.maximum(np.maximum(a, b), 1e-30)
    return m * ((a / m) ** p + (b / m) ** p) ** (1.0 / p)


def wave_factor(m, n, units: int, tile: int = 128):
    """Useful / issued work when an m x n output is cut into tiles spread over compute units."""
    m = np.maximum(np.asarray(m, dtype=float), 1.0)
    n = np.maximum(np.asarray(n, dtype=float), 1.0)
    tiles = np.ceil(m / tile) * np.ceil(n / tile)
    waves = np.ceil(tiles / units)
    return m * n / (waves * units * tile * tile)


def floor_us(eff: Efficiency, heavy: bool, graph: bool = False, launch_us: float = 0.0) -> float:
    """Device time of the shortest kernel: a GEMM or attention kernel (`heavy`) or an element-wise
    one. Inside a CUDA graph the kernels follow each other without the launch gap of eager mode,
    so each floor shrinks by the element-wise floor's excess over the graph floor. Outside a
    graph no kernel is shorter than the device's launch plus tail (`launch_us`,
    Device.kernel_launch_us): a part with slower launches slows every short kernel."""
    light = eff.floor_us if eff.elementwise_floor_us is None else eff.elementwise_floor_us
    f = eff.floor_us if heavy else light
    if graph and eff.graph_floor_us is not None:
        return max(eff.graph_floor_us, f - max(light - eff.graph_floor_us, 0.0))
    return f if graph else max(f, launch_us)


def op_time(kind: str, category: str, flops, bytes_, launches: int, dtype: str, hw: Hardware,
            m=0.0, n: float = 0.0, seqs=0.0, group: int = 1, graph: bool = False, elems=0.0, dequant=0.0):
    """Seconds for an op of `launches` kernels on one device of `hw` (`graph`: inside a CUDA
    graph; `elems`: an element-wise kernel's elements). `group` is the number of devices in a
    collective; `dequant`: vector ops that unpack quantised weights inside a GEMM (on the fp32
    units, beside the tensor cores' work). Attention kernels are priced by hwmodels.attention,
    from their shapes."""
    dev, eff = hw.device, hw.efficiency
    if kind == "gemm":
        peak = dev.peak_flops(dtype) * eff.gemm_compute
        if eff.gemm_wave > 0:
            peak = peak * ((1 - eff.gemm_wave) + eff.gemm_wave * wave_factor(m, n, dev.compute_units))
        mem = eff.gemm_memory
        if eff.wide_gemm_n is not None:  # (with wide_gemm_memory: the schema sets both or neither)
            mem = np.where(np.asarray(n) >= eff.wide_gemm_n, eff.wide_gemm_memory, mem)
        if eff.gemv_memory is not None:
            mem = np.where(np.asarray(m) <= 1, eff.gemv_memory, mem)
        mem = eff.gemm_memory_dtype.get(dtype, mem)  # that dtype's own kernels
        t_c = np.asarray(flops) / peak
        if np.any(np.asarray(dequant) > 0):
            t_c = t_c + np.asarray(dequant) / (dev.peak_flops("fp32") * eff.gemm_compute)
        return soft_max(t_c, np.asarray(bytes_) / (dev.bandwidth * mem), eff.softmax_p) \
            + floor_us(eff, True, graph, dev.kernel_launch_us) * 1e-6 * launches
    if kind == "stream":
        return stream_time(category, bytes_, launches, hw, m, graph, elems)
    if kind == "allreduce":
        return allreduce_time(bytes_, group, launches, hw.link if group <= hw.devices_per_node else hw.network, eff)
    if kind == "send":
        return send_time(bytes_, launches, hw.link, eff)
    if kind == "alltoall":
        return alltoall_time(bytes_, group, launches, hw.link if group <= hw.devices_per_node else hw.network, eff)
    if kind in ("attn_prefill", "attn_decode"):
        raise ValueError(f"{kind} is priced by hwmodels.attention from its shapes, not by op_time")
    raise ValueError(f"unknown op kind {kind!r}; known: {KINDS}")


def stream_time(category: str, bytes_, launches: int, hw: Hardware, m=0.0, graph: bool = False, elems=0.0):
    """Element-wise kernels: their bytes at the category's share of bandwidth (faster while the
    working set fits in L2), or, for kernels that give each of the m tokens one thread block, at
    least one row's serial time (what bounds a small batch: one block cannot use the whole
    memory system), plus a floor per kernel; on a CPU, kernels over `elems` >= PARALLEL_GRAIN
    elements also hand off to the thread pool and back (`parallel_us`)."""
    dev, eff = hw.device, hw.efficiency
    b = np.asarray(bytes_, dtype=float)
    t = b / (dev.bandwidth * eff.elementwise_memory.get(category, eff.gemm_memory))
    gain = eff.elementwise_cache_gain.get(category, 0.0)
    if gain > 0 and dev.cache_mb > 0:  # a working set that fits in L2 was just written there
        fits = np.minimum(1.0, dev.cache_mb * 1e6 * launches / np.maximum(b, 1.0))
        t = t / (1.0 + gain * fits**4)
    row = eff.elementwise_row_gbps.get(category)
    if row:
        m = np.asarray(m, dtype=float)
        t = np.maximum(t, np.where(m > 0, b / np.maximum(m, 1.0) / (row * 1e9), 0.0))
    if eff.parallel_us:
        t = t + np.where(np.asarray(elems, dtype=float) >= PARALLEL_GRAIN, eff.parallel_us * 1e-6 * launches, 0.0)
    return t + floor_us(eff, False, graph, dev.kernel_launch_us) * 1e-6 * launches


def _latency(link: Link, eff: Efficiency) -> float:
    return (eff.comm_latency_us if eff.comm_latency_us is not None else link.latency_us) * 1e-6


def allreduce_time(bytes_, n: int, launches: int, link: Link | None, eff: Efficiency):
    """All-reduce of `bytes_` in total over `launches` calls: 2(n-1)/n of each message crosses
    every link (ring bandwidth), in 2(n-1) latency-bound hops per call (ring) or 2*ceil(log2 n)
    (tree, eff.comm_hops)."""
    if n <= 1:
        return np.zeros_like(np.asarray(bytes_, dtype=float))
    if link is None:
        raise ValueError("a collective over several devices needs a link")
    bw = link.bw_gbps * 1e9 * eff.comm_bw
    hops = 2 * (n - 1) if eff.comm_hops == "ring" else 2 * math.ceil(math.log2(n))
    return 2.0 * (n - 1) / n * np.asarray(bytes_, dtype=float) / bw + hops * _latency(link, eff) * launches


def send_time(bytes_, launches: int, link: Link | None, eff: Efficiency):
    """Point-to-point sends between pipeline stages."""
    if link is None:
        raise ValueError("pipeline parallelism needs a link between devices")
    return np.asarray(bytes_, dtype=float) / (link.bw_gbps * 1e9 * eff.comm_bw) + _latency(link, eff) * launches


def alltoall_time(bytes_, n: int, launches: int, link: Link | None, eff: Efficiency):
    """All-to-all (expert-parallel dispatch or combine) over n devices: `bytes_` is what the
    busiest device receives from the others in all `launches` calls; every device talks to all
    others at once over a switch, so one latency per call."""
    if n <= 1:
        return np.zeros_like(np.asarray(bytes_, dtype=float))
    if link is None:
        raise ValueError("expert parallelism over several devices needs a link")
    return np.asarray(bytes_, dtype=float) / (link.bw_gbps * 1e9 * eff.comm_bw) + _latency(link, eff) * launches
