"""PyTorch microbenchmarks of one device (a CPU or a CUDA GPU), as records for calibration.fit.

Every case is an op of `simulator.moment.ops` run in isolation in the exact form the reference decoder
runs it (the primitives are shared with calibration.reference), and its record carries the FLOPs
and bytes that `simulator.moment.ops` counts for it, so the fit compares like with like.

Timing:
- cuda: CUDA events around the op, medians of repeats; before each repeat a 256 MB buffer is
  written (flushes the L2) and the stream sleeps long enough for the host to enqueue every kernel
  of the op, so the events see device time only, not host dispatch gaps.
- cpu: time.perf_counter medians of repeats, torch threads = the cores this process may use;
  a buffer of twice the last-level cache is written before each repeat of an op that streams
  more than a few KB (in a real model a layer's weights are cold). The cost model charges a
  CPU's eager dispatch separately (Host.dispatch_us per kernel), so a device record's "ms" is the
  measured wall time less the measured dispatch of its kernels; "wall_ms" keeps the raw time.
- host costs: eager dispatch as a loop of tiny ops (wall clock per op), CUDA graph replay as a
  loop of replays, the per-step scaffolding of the reference decoder (inputs, RoPE rows, argmax,
  the read-back) as "step" records.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from calibration.fit import DEVICE_KINDS, Record, record
from calibration.records import MINI, TINY
from calibration.reference import (
    TORCH_DTYPES,
    Reference,
    apply_rope,
    attention,
    rms_norm,
    split_qkv,
    swiglu,
)
from simulator.moment import kernels as kn
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import EAGER_KERNELS, Batch, Dtypes, Op, attention_ops, dense_ops

CUDA_FLUSH_BYTES = 256 * 2**20


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class one_thread:  # noqa: N801  (a context manager, named like contextlib's)
    """On a CPU, torch runs with one thread inside the block (host costs without thread hand-offs)."""

    def __init__(self, device: str):
        self.cpu = device == "cpu"
        self.n = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.cpu:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.cpu:
            torch.set_num_threads(self.n)


def setup_threads() -> int:
    n = cores()
    torch.set_num_threads(n)
    return n


# -- fingerprint ----------------------------------------------------------------------------------

def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def cache_bytes() -> int:
    """The last-level cache of this CPU (sysfs), 32 MB if unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            try:
                with open(f"{base}/{idx}/size", encoding="utf-8") as f:
                    s = f.read().strip()
            except OSError:
                continue
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(s[-1:], 1)
            best = max(best, int(s.rstrip("KMG")) * mult)
    except OSError:
        pass
    return best or 32 * 2**20


def _meminfo(key: str, default: int) -> int:
    """A /proc/meminfo field in bytes (Linux), or `default` where there is none."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return default


def mem_total_bytes() -> int:
    return _meminfo("MemTotal", 16 * 10**9)


def mem_available_bytes() -> int:
    return _meminfo("MemAvailable", 8 * 10**9)


def _smi() -> dict[str, str]:
    """Clocks, driver and power from nvidia-smi, where it exists."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    fields = ("name", "driver_version", "clocks.max.sm", "clocks.max.memory", "clocks.sm", "memory.total",
              "power.limit", "pci.bus_id")
    try:
        r = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    line = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    vals = [v.strip() for v in line.split(",")]
    return dict(zip(fields, vals, strict=False)) if len(vals) == len(fields) else {"raw": line}


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: on a shared machine, how busy it was (ours included)."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def fingerprint(device: str) -> dict[str, Any]:
    """What the profile was measured on: enough to tell two machines apart."""
    fp: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                          "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                          "host": platform.node(), "os": platform.platform(), "load_average_start": loadavg()}
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    fp["cpu"] = {"model_name": info.get("model name", platform.processor() or "unknown"),
                 "cpu_family": info.get("cpu family"), "model": info.get("model"),
                 "cores_usable": cores(), "cores_online": os.cpu_count(),
                 "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
                 "llc_bytes": cache_bytes(), "memory_bytes": mem_total_bytes(),
                 "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        fp["gpu"] = {"name": torch.cuda.get_device_name(0), "sm_count": p.multi_processor_count,
                     "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                     "l2_bytes": getattr(p, "L2_cache_size", None), "count": torch.cuda.device_count(),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                     "nvidia_smi": _smi()}
    return fp


# -- timing -------------------------------------------------------------------------------------

class Flusher:
    """Writes a buffer larger than the last-level cache, so the next op starts cold."""

    def __init__(self, device: str):
        self.device = device
        nbytes = CUDA_FLUSH_BYTES if device == "cuda" else max(2 * cache_bytes(), 64 * 2**20)
        self.buf = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        self.i = 0.0

    def __call__(self) -> None:
        self.i += 1.0
        self.buf.fill_(self.i)


def time_cpu(fn: Callable[[], object], reps: int, warmup: int = 1, flush: Callable[[], None] | None = None,
             inner: int = 1) -> list[float]:
    """Seconds per call, one sample per repeat (`inner` calls per sample for tiny ops)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if flush is not None:
            flush()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner)
    return out


def time_cuda(fn: Callable[[], object], reps: int, warmup: int = 2, flush: Callable[[], None] | None = None,
              sleep_cycles: int = 0) -> list[float]:
    """Device seconds per call from CUDA events; the flush and a sleep run before the start
    event, so the host has queued the op's kernels by the time the device reaches them."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(reps):
        if flush is not None:
            flush()
        if sleep_cycles > 0:
            torch.cuda._sleep(sleep_cycles)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
    torch.cuda.synchronize()
    return [a.elapsed_time(b) * 1e-3 for a, b in pairs]


def time_wall(fn: Callable[[], object], reps: int, warmup: int = 1, sync: bool = False) -> list[float]:
    """Wall seconds per call including a device sync: what a user waiting on the result sees."""
    for _ in range(warmup):
        fn()
    if sync:
        torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


# -- cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One microbenchmark: what it measures (the record's fields) and how to build it."""

    op: str
    category: str
    dtype: str
    label: str
    build: Callable[[], Callable[[], object]]
    flops: float = 0.0
    bytes: float = 0.0
    launches: int = 1
    m: float = 0.0
    n: float = 0.0
    seqs: float = 0.0
    kernels: int = 1             # eager kernels of the op (dispatches); `launches` is ops' count: 1
    est_s: float = 1e-4          # rough time per call, to pick repeats and skip huge cases
    mem: float = 0.0             # bytes the case allocates
    fit: bool = True             # False: kept in the profile, not given to the fit (copies)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Speed:
    """Rough speeds of this device, probed first, to estimate case times."""

    flops: dict[str, float]
    bw: float

    def est(self, flops: float, nbytes: float, dtype: str, launches: int = 1) -> float:
        return flops / self.flops.get(dtype, min(self.flops.values())) + nbytes / self.bw + launches * 5e-6


class Pool:
    """The most recent tensors of each kind, so consecutive cases share a 1 GB weight."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[tuple, Any]] = {}

    def get(self, kind: str, key: tuple, make: Callable[[], Any]) -> Any:
        have = self.items.get(kind)
        if have is not None and have[0] == key:
            return have[1]
        self.items.pop(kind, None)  # free the old one before allocating the new one
        val = make()
        self.items[kind] = (key, val)
        return val

    def clear(self) -> None:
        self.items.clear()


def _rand(shape: Sequence[int], dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    t = torch.empty(tuple(shape), dtype=torch.float32, device=device).uniform_(-0.5, 0.5, generator=g)
    return t.to(dtype)


def one_layer(spec: ModelSpec) -> ModelSpec:
    return spec.model_copy(update={"num_hidden_layers": 1})


def _op(ops: Iterable[Op], name: str) -> Op:
    for o in ops:
        if o.name == name:
            return o
    raise KeyError(name)


def _dtypes(dtype: str) -> Dtypes:
    if dtype == "fp8":
        return Dtypes(weight="fp8", act="bf16", kv="bf16")
    return Dtypes(weight=dtype, act=dtype, kv=dtype)


GEMM_OPS = ("qkv_proj", "o_proj", "ffn_up", "ffn_down", "lm_head")


def gemm_cases(models: Sequence[ModelSpec], tokens: Sequence[int], dtypes: Sequence[str], device: str,
               speed: Speed, pool: Pool, tp: Sequence[int] = (1,), lm_head_max: int | None = None) -> list[Case]:
    """The projections of each model (sharded for each tp) over token counts; one case per
    distinct (n, k, m, dtype). FLOPs and bytes are simulator.moment.ops' own."""
    cases: list[Case] = []
    seen: set[tuple] = set()
    for spec in models:
        for t in tp:
            if spec.num_attention_heads % t or (spec.kv_heads % t and t % spec.kv_heads):
                continue
            for dt in dtypes:
                for name in GEMM_OPS:
                    for m in tokens:
                        if name == "lm_head" and lm_head_max is not None and m > lm_head_max:
                            continue
                        m_run = max(16, -(-m // 16) * 16) if dt == "fp8" else m  # _scaled_mm wants 16 | M
                        ops = dense_ops(one_layer(spec), m_run, m_run, _dtypes(dt), tp=t)
                        o = _op(ops, name)
                        n, k = int(round(o.n)), int(round(o.k))
                        key = (n, k, m_run, dt)
                        if key in seen:
                            continue
                        seen.add(key)
                        fl, by = float(o.flops), float(o.bytes)
                        cases.append(Case(
                            "gemm", name, dt, f"gemm {dt} {name} m={m_run} n={n} k={k}",
                            _gemm_builder(m_run, n, k, dt, device, pool), fl, by, 1, m_run, n,
                            est_s=speed.est(fl, by, dt), mem=by,
                            extra={"k": k, "model": spec.name, "tp": t}))
    return cases


def _gemm_builder(m: int, n: int, k: int, dt: str, device: str, pool: Pool) -> Callable[[], Callable[[], object]]:
    def build() -> Callable[[], object]:
        if dt == "fp8":
            w8 = pool.get("w", (n, k, dt), lambda: _rand((n, k), torch.bfloat16, device).to(torch.float8_e4m3fn))
            x8 = _rand((m, k), torch.bfloat16, device, 1).to(torch.float8_e4m3fn)
            one = torch.ones((), device=device, dtype=torch.float32)
            wt = w8.t()  # (k, n) column-major, as _scaled_mm wants its second operand
            return lambda: torch._scaled_mm(x8, wt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        tdt = TORCH_DTYPES[dt]
        w = pool.get("w", (n, k, dt), lambda: _rand((n, k), tdt, device))
        x = _rand((m, k), tdt, device, 1)
        return lambda: F.linear(x, w)
    return build


# a CPU's bf16 SDPA converts to fp32 and computes: on a 2-core EPYC (2026-12-01) its prefill ran at
# the fp32 GEMM probe's FLOP rate / 3 (median) and its decode at / 46; for the time estimates only
CPU_BF16_SDPA_SLOWDOWN = {"prefill": 3.0, "decode": 45.0}


def attention_cases(models: Sequence[ModelSpec], prefill: Sequence[tuple[int, int]],
                    decode: Sequence[tuple[int, int]], dtype: str, device: str, speed: Speed,
                    mem_cap: float) -> list[Case]:
    """Attention as the decoder runs it (2 cache writes, SDPA, the head merge), prefill (causal,
    from position 0) over (batch, length) and decode (one query) over (batch, context)."""
    own_path = device == "cpu" and dtype == "bf16"
    cases: list[Case] = []
    seen: set[tuple] = set()
    size = torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size()
    for spec in models:
        heads, kvh, hd = spec.num_attention_heads, spec.kv_heads, spec.hd
        for mode, shapes in (("prefill", prefill), ("decode", decode)):
            for b, n in shapes:
                key = (mode, heads, kvh, hd, b, n)
                if key in seen:
                    continue
                seen.add(key)
                batch = Batch.of(prefill=[(b, n)]) if mode == "prefill" else Batch.of(decode=[(b, n)])
                o = attention_ops(one_layer(spec), batch, _dtypes(dtype))[0]
                length = n if mode == "prefill" else n + 1
                mem = 2.0 * b * kvh * length * hd * size + 3.0 * b * heads * (n if mode == "prefill" else 1) * hd * size
                if mem > mem_cap:
                    continue
                fl, by = float(o.flops), float(o.bytes)
                est = (speed.est(fl * CPU_BF16_SDPA_SLOWDOWN[mode], by, "fp32", 4) if own_path
                       else speed.est(fl, by, dtype, 4))
                cases.append(Case(
                    o.kind, "attention", dtype, f"{o.kind} {dtype} h={heads}/{kvh}x{hd} b={b} {'len' if mode == 'prefill' else 'ctx'}={n}",
                    _attn_builder(mode, b, n, heads, kvh, hd, dtype, device), fl, by, 1, 0.0, 0.0, float(o.seqs),
                    kernels=EAGER_KERNELS["attention"], est_s=est, mem=mem,
                    extra={"model": spec.name, "batch": b, "len": n, "heads": heads, "kv_heads": kvh,
                           "head_dim": hd}))
    return cases


def _attn_builder(mode: str, b: int, n: int, heads: int, kvh: int, hd: int, dt: str, device: str
                  ) -> Callable[[], Callable[[], object]]:
    def build() -> Callable[[], object]:
        tdt = TORCH_DTYPES[dt]
        new = n if mode == "prefill" else 1
        length = n if mode == "prefill" else n + 1
        qkv = _rand((b, new, (heads + 2 * kvh) * hd), tdt, device)
        q, k, v = split_qkv(qkv, heads, kvh, hd)
        kc = _rand((b, kvh, length, hd), tdt, device, 2)
        vc = _rand((b, kvh, length, hd), tdt, device, 3)
        start = 0 if mode == "prefill" else n
        pos = torch.arange(start, start + new, device=device)
        return lambda: attention(q, k, v, kc, vc, pos, length, causal=mode == "prefill")
    return build


STREAMS = ("input_norm", "rope", "ffn_act", "attn_residual", "embed")


def stream_cases(models: Sequence[ModelSpec], tokens: Sequence[int], dtype: str, device: str,
                 speed: Speed) -> list[Case]:
    """The element-wise ops of a layer over token counts: RMSNorm, RoPE on q and k, SiLU * up,
    the residual add, the embedding gather."""
    cases: list[Case] = []
    seen: set[tuple] = set()
    for spec in models:
        for t in tokens:
            ops = dense_ops(one_layer(spec), t, 0, _dtypes(dtype))
            for name in STREAMS:
                o = _op(ops, name)
                key = (name, spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size, spec.hd,
                       spec.vocab_size if name == "embed" else 0, t)
                if key in seen:
                    continue
                seen.add(key)
                fl, by = float(o.flops), float(o.bytes)
                cases.append(Case("stream", o.category, dtype, f"{o.category} {dtype} {spec.name} t={t}",
                                  _stream_builder(name, spec, t, dtype, device), fl, by, 1, float(t),
                                  kernels=o.kernels, est_s=speed.est(0.0, 3 * by, dtype, o.kernels), mem=3 * by,
                                  extra={"model": spec.name, "tokens": t, "elems": float(o.elems)}))
    return cases


def _stream_builder(name: str, spec: ModelSpec, t: int, dt: str, device: str) -> Callable[[], Callable[[], object]]:
    def build() -> Callable[[], object]:
        tdt = TORCH_DTYPES[dt]
        h = spec.hidden_size
        if name == "input_norm":
            x, w = _rand((1, t, h), tdt, device), _rand((h,), tdt, device, 1)
            return lambda: rms_norm(x, w)
        if name == "rope":
            qkv = _rand((1, t, spec.q_dim + 2 * spec.kv_dim), tdt, device)
            q, k, _ = split_qkv(qkv, spec.num_attention_heads, spec.kv_heads, spec.hd)
            cos, sin = _rand((t, spec.hd), tdt, device, 1), _rand((t, spec.hd), tdt, device, 2)
            return lambda: apply_rope(q, k, cos, sin)
        if name == "ffn_act":
            gu = _rand((1, t, 2 * spec.intermediate_size), tdt, device)
            return lambda: swiglu(gu)
        if name == "attn_residual":
            x, y = _rand((1, t, h), tdt, device), _rand((1, t, h), tdt, device, 1)
            return lambda: x + y
        if name == "embed":
            table = _rand((spec.vocab_size, h), tdt, device)
            ids = torch.randint(0, spec.vocab_size, (1, t), device=device,
                                generator=torch.Generator(device=device).manual_seed(0))
            return lambda: F.embedding(ids, table)
        raise KeyError(name)
    return build


def copy_cases(sizes: Sequence[int], device: str, speed: Speed) -> list[Case]:
    """Plain copies (read + write) and a read-only reduction: the memory bandwidth this device
    really streams, which the profile keeps as device.memory_bw_gbps. Not fitted."""
    cases = []
    for nbytes in sizes:
        elems = nbytes // 4

        def build_copy(e: int = elems) -> Callable[[], object]:
            x, y = _rand((e,), torch.float32, device), torch.empty(e, device=device)
            return lambda: y.copy_(x)

        def build_read(e: int = elems) -> Callable[[], object]:
            x = _rand((e,), torch.float32, device)
            return lambda: x.sum()

        cases.append(Case("stream", "copy", "fp32", f"copy {nbytes / 2**20:.0f} MiB", build_copy, 0.0,
                          2.0 * nbytes, 1, est_s=speed.est(0, 2 * nbytes, "fp32"), mem=2 * nbytes, fit=False,
                          extra={"what": "copy"}))
        cases.append(Case("stream", "copy", "fp32", f"read {nbytes / 2**20:.0f} MiB", build_read, float(elems),
                          float(nbytes), 1, est_s=speed.est(0, nbytes, "fp32"), mem=nbytes, fit=False,
                          extra={"what": "read"}))
    return cases


# -- host costs -------------------------------------------------------------------------------------

def dispatch_ops(device: str, dtype: str = "fp32") -> dict[str, Callable[[], object]]:
    """Tiny instances of the ops the decoder dispatches: what eager PyTorch costs per op when the
    work is nothing (SDPA in the decoder's dtype and grouped-query form: its backend's host path)."""
    x = torch.ones(1, 1, 8, device=device)
    w = torch.ones(8, 8, device=device)
    cache = torch.zeros(1, 1, 4, 8, device=device)
    src = torch.ones(1, 1, 1, 8, device=device)
    pos = torch.zeros(1, dtype=torch.long, device=device)
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    q = torch.ones(1, 1, 1, 8, device=device)
    tdt = TORCH_DTYPES[dtype]
    q2 = torch.ones(1, 2, 1, 8, device=device, dtype=tdt)
    kv = torch.zeros(1, 1, 4, 8, device=device, dtype=tdt)
    other = torch.bfloat16 if dtype == "fp32" else torch.float32
    return {
        "add": lambda: x + x, "mul": lambda: x * x, "pow": lambda: x.pow(2),
        "mean": lambda: x.mean(-1, keepdim=True), "rsqrt": lambda: torch.rsqrt(x), "neg": lambda: -x,
        "cat": lambda: torch.cat((x, x), dim=-1), "silu": lambda: F.silu(x), "linear": lambda: F.linear(x, w),
        "index_copy_": lambda: cache.index_copy_(2, pos, src), "embedding": lambda: F.embedding(ids, w),
        "sdpa": lambda: F.scaled_dot_product_attention(q2, kv, kv, enable_gqa=True), "argmax": lambda: x.argmax(-1),
        "to": lambda: x.to(other), "index_select": lambda: w.index_select(0, pos),
        "arange": lambda: torch.arange(0, 1, device=device), "view": lambda: q.transpose(1, 2),
    }


def dispatch_records(device: str, loops: int, reps: int, dtype: str = "fp32") -> list[Record]:
    """One record per op: `loops` back-to-back calls, wall clock, synchronised once at the end."""
    recs = []
    sync = device == "cuda"
    for name, fn in dispatch_ops(device, dtype).items():
        def loop(f: Callable[[], object] = fn) -> None:
            for _ in range(loops):
                f()
        ms = median(time_wall(loop, reps, warmup=1, sync=sync)) * 1e3
        recs.append(record("dispatch", ms, category="host", launches=loops, dtype="fp32", name=name,
                                source=f"eager dispatch: {loops} x {name} on tiny tensors, wall clock"))
    return recs


LAYER_OPS = ("input_norm", "qkv_proj", "rope", "attention", "o_proj", "attn_residual", "post_attn_norm", "ffn_up",
             "ffn_act", "ffn_down", "ffn_residual")


def layer_calls(dtype: str) -> dict[str, int]:
    """The framework calls of one layer of the reference decoder (simulator.moment.kernels "pytorch")."""
    a = torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size()
    out: dict[str, int] = {}
    for name in LAYER_OPS:
        for c in kn.calls("pytorch", name):
            out[c.host_op(a)] = out.get(c.host_op(a), 0) + 1
    return out


def sequence_records(device: str, dtype: str, loops: int, reps: int) -> list[Record]:
    """The host's cost of a real layer's calls: one decode layer of the reference decoder at tiny
    shapes (nothing to compute, so the host's calls are the time), `loops` layers back to back
    per sample, the median of `reps` samples. What it costs beyond the tight-loop dispatch of
    its calls is Host.sequence_us. Samples as short as the dispatch loops' see a loaded machine
    the same way."""
    ref = Reference(TINY, n_layers=1, dtype=dtype, device=device)
    ref.alloc_cache(1, 64, fill=True)
    lay = ref.layers[0]
    x = torch.zeros(1, 1, TINY.hidden_size, device=device, dtype=ref.dtype)
    pos, cos, sin = ref.rope_at(40, 1)

    def layers() -> None:
        for _ in range(loops):
            ref.ffn_block(ref.attn_block(x, lay, pos, cos, sin, 41), lay)
    ms = median(time_wall(layers, reps, warmup=1, sync=device == "cuda")) * 1e3 / loops
    return [record("sequence", ms, category="host", launches=1, dtype=dtype, calls=layer_calls(dtype),
                   source=f"host sequence: {loops} decode layers of the reference decoder at tiny shapes ({dtype}), "
                          "wall clock per layer")]


def graph_records(loops: int, reps: int) -> list[Record]:
    """CUDA graph replay: a graph of one tiny kernel replayed `loops` times (host cost per replay)
    and a graph of 100 tiny kernels timed with events (device time of the shortest kernel)."""
    from calibration.graphs import Captured

    x = torch.ones(8, device="cuda")
    recs: list[Record] = []
    for kernels in (1, 100):
        def adds(n: int = kernels) -> None:
            for _ in range(n):
                x.add_(1)
        g = Captured(adds, (x,), "cuda", warmup=1)
        if kernels == 1:
            def loop(graph: Captured = g) -> None:
                for _ in range(loops):
                    graph.replay()
            ms = median(time_wall(loop, reps, warmup=1, sync=True)) * 1e3
            recs.append(record("graph_launch", ms, category="host", launches=loops, dtype="fp32",
                                    source=f"CUDA graph replay: {loops} replays of a 1-kernel graph, wall clock"))
        else:
            ms = median(time_cuda(g.replay, reps, warmup=2)) * 1e3 / kernels
            recs.append(record("graph_floor", ms, category="host", launches=1, dtype="fp32",
                               source="kernel floor: a CUDA graph of 100 tiny in-place adds, events / 100"))
    return recs


def step_records(device: str, vocab: int, hd: int, reps: int, batches: Sequence[int] = (1, 8, 32)) -> list[Record]:
    """The decoder's per-step scaffolding without its layers: token ids to the device, positions
    and RoPE rows, argmax over the logits, the read-back. Becomes Host.step_overhead_us."""
    recs = []
    cos = torch.ones(4096, hd, device=device)
    for b in batches:
        logits = _rand((b, vocab), torch.float32, device)
        tokens = list(range(b))

        def scaffold(lg: torch.Tensor = logits, tk: list[int] = tokens) -> list[int]:
            ids = torch.tensor(tk, device=device).view(-1, 1)
            pos = torch.arange(100, 101, device=device)
            cos.index_select(0, pos), cos.index_select(0, pos)
            del ids
            return lg.argmax(-1).cpu().tolist()

        ms = median(time_wall(scaffold, reps, warmup=2)) * 1e3
        recs.append(record("step", ms, category="host", launches=EAGER_KERNELS["sample"], dtype="fp32", m=b,
                                n=vocab, source=f"per-step scaffolding: ids to {device}, positions, RoPE rows, "
                                f"argmax over {b} x {vocab} logits, read-back"))
    return recs


# -- all-reduce between GPUs --------------------------------------------------------------------------

def _collective_worker(rank: int, world: int, port: int, sizes: list[int], reps: int, backend: str,
                       path: str) -> None:
    """One rank: all-reduce over groups of 2, 4, ... ranks and a ping-pong between ranks 0 and 1;
    rank 0 writes the records to `path` (JSON)."""
    import json

    import torch.distributed as dist

    dev = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sync = (lambda: torch.cuda.synchronize(dev)) if backend == "nccl" else (lambda: None)
    recs: list[Record] = []
    groups = [g for g in (2, 4, 8, 16) if g <= world]
    for g in groups:
        pg = dist.new_group(list(range(g)))
        for nbytes in sizes:
            t = torch.ones(max(nbytes // 2, 1), dtype=torch.bfloat16, device=dev)
            samples = []
            for i in range(reps + 2):
                if rank < g:
                    dist.barrier(group=pg)
                    sync()
                    t0 = time.perf_counter()
                    dist.all_reduce(t, group=pg)
                    sync()
                    if i >= 2:
                        samples.append(time.perf_counter() - t0)
            if rank == 0:
                recs.append(record("allreduce", median(samples) * 1e3, category="comm", bytes=float(nbytes),
                                        group=g, launches=1, dtype="bf16",
                                        source=f"torch.distributed all_reduce ({backend}) over {g} ranks"))
            dist.barrier()
    for nbytes in sizes:
        t = torch.ones(max(nbytes // 2, 1), dtype=torch.bfloat16, device=dev)
        samples = []
        for i in range(reps + 2):
            dist.barrier()
            sync()
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(t, 1)
                dist.recv(t, 1)
            elif rank == 1:
                dist.recv(t, 0)
                dist.send(t, 0)
            sync()
            if i >= 2:
                samples.append(time.perf_counter() - t0)
        if rank == 0:
            recs.append(record("send", median(samples) * 1e3 / 2, category="comm", bytes=float(nbytes), group=2,
                                    launches=1, dtype="bf16", source=f"torch.distributed send/recv ping-pong / 2 ({backend})"))
    dist.barrier()
    if rank == 0:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(recs, f)
    dist.destroy_process_group()


def collective_records(world: int, sizes: Sequence[int], reps: int, backend: str = "nccl") -> list[Record]:
    """Spawn one process per GPU (only when there are several) and collect their records."""
    import json
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "collectives.json")
        mp.spawn(_collective_worker, args=(world, port, list(sizes), reps, backend, path), nprocs=world, join=True)
        with open(path, encoding="utf-8") as f:
            return json.load(f)


# -- records --------------------------------------------------------------------------------------

def case_record(c: Case, ms: float, device: str, samples: int, wall_ms: float | None = None,
                dispatch_ms: float = 0.0) -> Record:
    r = record(c.op, ms, category=c.category, flops=c.flops, bytes=c.bytes, launches=c.launches, m=c.m,
                    n=c.n, seqs=c.seqs, dtype=c.dtype,
                    source=f"microbench {device}: {c.label} (median of {samples})")
    r["kernels"] = c.kernels
    if wall_ms is not None:
        r["wall_ms"] = wall_ms
        r["dispatch_ms"] = dispatch_ms
    if not c.fit:
        r["fit"] = False
    r.update({k: v for k, v in c.extra.items() if k in ("k", "model", "tp", "batch", "len", "tokens", "what", "heads",
                                                            "kv_heads", "head_dim", "elems")})
    if c.op in ("stream", "attn_prefill", "attn_decode") and c.fit:
        r["impl"] = "pytorch"  # the reference decoder's primitives: plain PyTorch's kernels
    r["timer"] = device == "cuda" and c.op in DEVICE_KINDS  # CUDA events: a fixed overhead per sample
    return r


# -- plans ------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """Which shapes to measure. `size`: tiny (tests), quick, full."""

    size: str
    device: str
    models: list[ModelSpec]
    gemm_models: list[ModelSpec]
    tokens: list[int]
    gemm_dtypes: list[str]
    act_dtype: str
    prefill: list[tuple[int, int]]
    decode: list[tuple[int, int]]
    copy_sizes: list[int]
    cap_s: float            # skip cases estimated slower than this per call
    budget_s: float         # target seconds of repeats per case
    min_reps: int
    max_reps: int
    tp: list[int] = field(default_factory=lambda: [1])
    lm_head_max: int | None = None
    dispatch_loops: int = 200


def _pow2(lo: int, hi: int, step: int = 2) -> list[int]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= step
    return out


def make_plan(device: str, size: str, gemm_dtypes: Sequence[str] | None = None,
              models: Sequence[ModelSpec] | None = None) -> Plan:
    """Shapes per device and size. CPU: the validation models (llama-3.2-1b, a half-width mini
    Llama) plus llama-3-8b's projections; CUDA: every dense preset, sharded up to tp=8."""
    if size == "tiny":
        mods = list(models or [TINY])
        return Plan("tiny", device, mods, mods, [1, 8, 32], list(gemm_dtypes or ["fp32"]),
                    "fp32" if device == "cpu" else "bf16", [(1, 16), (2, 32)], [(1, 16), (4, 32)],
                    [2**20], cap_s=0.05, budget_s=0.004, min_reps=3, max_reps=10, dispatch_loops=50)
    if device == "cpu":
        base = list(models or [load_model("llama-3.2-1b"), MINI])
        gm = base + ([load_model("llama-3-8b")] if models is None else [])
        dts = list(gemm_dtypes or ["fp32"])
        if size == "quick":
            return Plan("quick", device, base, base, [1, 4, 16, 64, 256, 1024], dts, "fp32",
                        [(1, 128), (1, 512), (2, 256)], [(1, 128), (8, 512), (32, 1024)],
                        [8 * 2**20, 256 * 2**20], cap_s=0.12, budget_s=0.05, min_reps=5, max_reps=15, lm_head_max=16)
        return Plan("full", device, base, gm, _pow2(1, 16384, 4) + [2, 8, 32, 128, 512], dts, "fp32",
                    [(1, 64), (1, 128), (1, 256), (1, 512), (1, 1024), (1, 2048), (2, 256), (4, 512), (8, 128)],
                    [(b, c) for b in (1, 4, 16, 64) for c in (128, 512, 2048, 8192)],
                    [4 * 2**20, 64 * 2**20, 512 * 2**20], cap_s=0.3, budget_s=0.25, min_reps=3, max_reps=25,
                    lm_head_max=64)
    # cuda
    names = ["llama-3.2-1b", "llama-3-8b", "llama-2-7b", "llama-2-13b", "mistral-7b", "qwen2-7b", "llama-3-70b",
             "llama-2-70b"]
    quick = size == "quick"
    mods = list(models or [load_model(n) for n in (names[:2] if quick else names)])
    dts = list(gemm_dtypes or (["bf16"] if quick else ["bf16", "fp16", "fp8"]))
    toks = _pow2(1, 16384, 4) if quick else _pow2(1, 16384)
    prefill = [(b, n) for n in _pow2(128, 16384, 2 if not quick else 4) for b in (1, 4, 16) if b * n <= 32768]
    decode = [(b, c) for b in _pow2(1, 256, 2 if not quick else 4) for c in _pow2(128, 32768, 2 if not quick else 4)
              if b * c <= 2**21]
    return Plan(size, device, mods, mods, toks, dts, "bf16", prefill, decode,
                [2**20, 16 * 2**20, 256 * 2**20, 2**30], cap_s=0.5, budget_s=0.05 if quick else 0.1,
                min_reps=5, max_reps=50, tp=[1] if quick else [1, 2, 4, 8], dispatch_loops=1000)


def cpu_bf16_fast(reps: int = 3, n: int = 512) -> tuple[bool, float]:
    """Is bf16 worth measuring here: a bf16 GEMM at >= 0.8x the fp32 GEMM's FLOP rate
    (CPUs without AVX512-BF16/AMX emulate it slowly)."""
    rates = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = _rand((n, n), dt, "cpu"), _rand((n, n), dt, "cpu", 1)
        rates[dt] = 2 * n**3 / median(time_cpu(lambda a=a, b=b: a @ b, reps, warmup=1))
    ratio = rates[torch.bfloat16] / rates[torch.float32]
    return ratio >= 0.8, ratio


def probe_speed(device: str) -> Speed:
    """A large GEMM and a large copy per dtype: rough speeds for estimating case times."""
    n = 1024 if device == "cpu" else 4096
    flops: dict[str, float] = {}
    dts = ["fp32", "bf16"] if device == "cpu" else ["bf16", "fp16", "fp32"]
    for dt in dts:
        a, b = _rand((n, n), TORCH_DTYPES[dt], device), _rand((n, n), TORCH_DTYPES[dt], device, 1)
        f = lambda a=a, b=b: a @ b
        s = median(time_cpu(f, 3) if device == "cpu" else time_cuda(f, 5))
        flops[dt] = 2 * n**3 / s
    flops["fp8"] = 2 * flops.get("bf16", flops["fp32"])
    x = torch.empty(64 * 2**20 // 4, device=device).fill_(1.0)
    y = torch.empty_like(x)
    f = lambda: y.copy_(x)
    s = median(time_cpu(f, 3) if device == "cpu" else time_cuda(f, 5))
    return Speed(flops, 2 * x.numel() * 4 / s)


# -- running ------------------------------------------------------------------------------------------

class Progress:
    """One updating line on a terminal; quiet otherwise (a log gets one line per section)."""

    def __init__(self, total: int, stream: Any = None, enabled: bool | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if enabled is None else enabled
        self.total, self.done, self.t0 = max(total, 1), 0, time.perf_counter()
        self.width = 0

    def step(self, label: str) -> None:
        self.done += 1
        if not self.tty:
            return
        el = time.perf_counter() - self.t0
        line = f"[{self.done:4d}/{self.total}] {el:6.1f}s  {label}"[:110]
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        self.stream.flush()

    def section(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def reps_for(est: float, plan: Plan) -> int:
    return int(min(plan.max_reps, max(plan.min_reps, plan.budget_s / max(est, 1e-7))))


def measure_case(c: Case, plan: Plan, flush: Flusher | None) -> list[float]:
    """Seconds per call of one case, one value per repeat (cuda: device time)."""
    fn = c.build()
    reps = reps_for(c.est_s, plan)
    if plan.device == "cuda":
        sleep = int(min(max(c.kernels * 40e-6, 20e-6), 5e-3) * 1.5e9)  # host time to enqueue the op
        s = time_cuda(fn, reps, warmup=2, flush=flush, sleep_cycles=sleep)
    else:
        s = time_cpu(fn, reps, warmup=1, flush=_cpu_flush(c, flush), inner=_inner(c))
    del fn
    return s


def _inner(c: Case) -> int:
    """Calls per sample: several for tiny ops (cache-resident anyway, as in a real step)."""
    return 1 if c.est_s > 2e-4 or c.bytes > 4 * 2**20 else max(1, int(2e-4 / max(c.est_s, 1e-6)))


def _cpu_flush(c: Case, flush: Flusher | None) -> Flusher | None:
    return flush if (_inner(c) == 1 and c.bytes > 256 * 2**10) else None


def chunks(cases: Sequence[Case], plan: Plan, mem_cap: float) -> list[list[Case]]:
    """Consecutive cases measured together, their repeats interleaved in rounds: on a shared
    machine a burst of someone else's load then lands on different cases in different rounds,
    and each case's median shrugs it off. A chunk is bounded in memory and in time per round."""
    out: list[list[Case]] = []
    cur: list[Case] = []
    mem = t = 0.0
    for c in cases:
        if cur and (len(cur) >= 12 or mem + c.mem > mem_cap or t + c.est_s > 4 * plan.budget_s):
            out.append(cur)
            cur, mem, t = [], 0.0, 0.0
        cur.append(c)
        mem += c.mem
        t += c.est_s
    if cur:
        out.append(cur)
    return out


def measure_chunk(chunk: Sequence[Case], plan: Plan, flush: Flusher | None,
                  prog: Progress) -> list[tuple[Case, list[float] | str]]:
    """CPU: build every case of the chunk, warm each up, then take one sample of each per round."""
    fns: list[Callable[[], object] | str] = []
    for c in chunk:
        try:
            fns.append(c.build())
        except (RuntimeError, NotImplementedError) as e:
            fns.append(str(e).splitlines()[0][:160])
    reps = [reps_for(c.est_s, plan) for c in chunk]
    samples: list[list[float]] = [[] for _ in chunk]
    for fn in fns:
        if callable(fn):
            time_cpu(fn, 0, warmup=1)
    for r in range(max(reps)):
        for i, (c, fn) in enumerate(zip(chunk, fns, strict=True)):
            if callable(fn) and r < reps[i]:
                samples[i] += time_cpu(fn, 1, warmup=0, flush=_cpu_flush(c, flush), inner=_inner(c))
    out: list[tuple[Case, list[float] | str]] = []
    for c, fn, smp in zip(chunk, fns, samples, strict=True):
        prog.step(c.label)
        out.append((c, smp if callable(fn) else fn))
    fns.clear()
    return out


def run_plan(plan: Plan, progress_stream: Any = None, tty: bool | None = None,
             log: Callable[[str], None] | None = None) -> tuple[list[Record], dict[str, Any]]:
    """Run every case of `plan` on its device; returns the records and facts found on the way
    (dispatch, bandwidth, whether bf16 was measured, skipped cases)."""
    device = plan.device
    facts: dict[str, Any] = {"plan": plan.size, "skipped": 0}
    t_start = time.perf_counter()
    threads = setup_threads() if device == "cpu" else torch.get_num_threads()
    facts["threads"] = threads
    if device == "cpu" and plan.size != "tiny" and "bf16" not in plan.gemm_dtypes:
        fast, ratio = cpu_bf16_fast()
        facts["bf16_ratio"] = round(ratio, 3)
        if fast:
            plan.gemm_dtypes = plan.gemm_dtypes + ["bf16"]
    speed = probe_speed(device) if plan.size != "tiny" else Speed({"fp32": 5e10, "bf16": 5e10}, 1e10)
    facts["probe"] = {"gflops": {k: round(v / 1e9, 1) for k, v in speed.flops.items()},
                      "copy_gbps": round(speed.bw / 1e9, 1)}
    mem_cap = 0.25 * (mem_available_bytes() if device == "cpu" else torch.cuda.mem_get_info()[0])
    pool = Pool()
    cases: list[Case] = []
    cases += gemm_cases(plan.gemm_models, plan.tokens, plan.gemm_dtypes, device, speed, pool, plan.tp, plan.lm_head_max)
    cases += attention_cases(plan.models, plan.prefill, plan.decode, plan.act_dtype, device, speed, mem_cap)
    if device == "cpu" and "bf16" in plan.gemm_dtypes and plan.act_dtype != "bf16":
        # a CPU's bf16 SDPA takes its own path (3-6x slower than fp32 in decode on an EPYC): fitted apart
        cases += attention_cases(plan.models, plan.prefill, plan.decode, "bf16", device, speed, mem_cap)
    cases += stream_cases(plan.models, plan.tokens, plan.act_dtype, device, speed)
    cases += copy_cases(plan.copy_sizes, device, speed)
    kept = [c for c in cases if c.est_s <= plan.cap_s and c.mem <= mem_cap]
    facts["skipped"] = len(cases) - len(kept)
    facts["estimated_s"] = round(sum(c.est_s * (reps_for(c.est_s, plan) + 2) for c in kept), 1)
    say = log or (lambda s: None)
    say(f"{len(kept)} cases ({facts['skipped']} skipped as too slow or too large), about "
        f"{facts['estimated_s']:.0f} s of kernels")

    # host costs first: on a CPU every device record is net of them
    loops, hreps = plan.dispatch_loops, (5 if plan.size == "tiny" else 11)
    with one_thread(device):  # the host's own cost; a CPU's thread-pool hand-offs show in its kernels
        records = dispatch_records(device, loops, hreps, plan.act_dtype)
        records += sequence_records(device, plan.act_dtype, max(loops // 50, 2), max(hreps, 21))
    dispatch_us = median([r["ms"] * 1e3 / r["launches"] for r in records if r.get("name") not in (None, "view")])
    facts["dispatch_us"] = round(dispatch_us, 3)
    if device == "cuda":
        records += graph_records(loops, hreps)
    vocab = max(m.vocab_size for m in plan.models)
    records += step_records(device, vocab, plan.models[0].hd, hreps)

    flush = Flusher(device) if plan.size != "tiny" or device == "cuda" else None
    prog = Progress(len(kept), progress_stream, tty)
    results: list[tuple[Case, list[float] | str]] = []
    if device == "cuda":
        for c in kept:
            prog.step(c.label)
            try:
                results.append((c, measure_case(c, plan, flush)))
            except (RuntimeError, NotImplementedError) as e:  # e.g. fp8 unsupported on this GPU
                results.append((c, str(e).splitlines()[0][:160]))
                torch.cuda.empty_cache()
    else:
        for ch in chunks(kept, plan, min(mem_cap, 3e9)):
            results += measure_chunk(ch, plan, flush, prog)
    for c, got in results:
        if isinstance(got, str):
            facts.setdefault("errors", []).append(f"{c.label}: {got}")
            continue
        ms, lo = median(got) * 1e3, min(got) * 1e3
        if device == "cpu" and c.op in DEVICE_KINDS and c.fit:
            disp = c.kernels * dispatch_us * 1e-3
            rec = case_record(c, ms - disp, device, len(got), wall_ms=ms, dispatch_ms=disp)
        else:
            rec = case_record(c, ms, device, len(got))
        rec["min_ms"] = lo
        records.append(rec)
    prog.close()
    pool.clear()
    del flush
    if device == "cuda" and torch.cuda.device_count() > 1:
        say(f"all-reduce and send over {torch.cuda.device_count()} GPUs")
        sizes = [2**k for k in range(12, 29, 2)]
        records += collective_records(torch.cuda.device_count(), sizes, reps=10 if plan.size == "full" else 5)
    facts["seconds"] = round(time.perf_counter() - t_start, 1)
    big = 4 * (cache_bytes() if device == "cpu" else (torch.cuda.get_device_properties(0).L2_cache_size or 2**26))
    copies = [r for r in records if r.get("what") == "copy" and r["bytes"] >= big]
    reads = [r for r in records if r.get("what") == "read" and r["bytes"] >= big]
    if copies or reads:
        facts["copy_gbps"] = round(max((r["bytes"] / (r["ms"] * 1e-3) / 1e9 for r in copies), default=0.0), 2)
        facts["read_gbps"] = round(max((r["bytes"] / (r["ms"] * 1e-3) / 1e9 for r in reads), default=0.0), 2)
    return records, facts


def fit_records(records: Sequence[Record]) -> list[Record]:
    """The records the fit may see: microbenchmarks of modelled ops, device share dominating.

    On a CPU a tiny op is almost all dispatch; after its dispatch is taken off what is left is
    noise, so a record whose device share is under 10 % of its wall time is kept out."""
    out = []
    for r in records:
        if r.get("fit") is False or r["op"] == "step":
            continue
        if "wall_ms" in r and r["ms"] < 0.1 * r["wall_ms"]:
            continue
        if not (math.isfinite(r["ms"]) and r["ms"] > 0):
            continue
        out.append(r)
    return out


__all__ = ["Case", "Plan", "Record", "make_plan", "run_plan", "fingerprint", "fit_records", "time_cpu",
           "time_cuda", "time_wall", "Flusher", "collective_records", "MINI", "TINY", "cores",
           "setup_threads", "median", "Progress"]
