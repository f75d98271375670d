"""Fit the cost model's efficiency parameters to measured op times (numpy only, no torch).

A measurement record is a plain dict, so calibrate runs, published data and tests share one
format and a profile can store them as JSON:

    {"op": "gemm" | "attn_prefill" | "attn_decode" | "stream" | "allreduce" | "send"
           | "dispatch" | "graph_launch" | "graph_floor" | "sequence" | "step",
     "category": one of simulator.moment.ops.CATEGORIES, "flops", "bytes", "launches", "m", "n",
     "seqs", "group", "dtype", "ms" (measured median), "source"}

calibration.records.prepare adds what momentsim's own microbenchmarks ran (plain PyTorch's
kernels of each op, attention shapes, a timer's fixed overhead), so records of any vintage fit.

The fit minimises the squared log error of the model (hwmodels.roofline.op_time,
hwmodels.attention) (relative errors, so a 5 us kernel counts as much as a 5 ms one),
Huber-robust beyond 15 %. The parameters separate by op kind: GEMM shape from GEMM records;
per element-wise category its bandwidth fraction and cache gain (and, for one-block-per-token
kernels, a per-row rate); flash attention's matmul share, tail and the KV-cache writes from
prefill records; decode attention's bandwidth and per-work-unit cost from decode records; link
efficiency, latency and ring/tree hops from collectives. Three constants are shared across
groups, so they alternate with the groups' parameters until they settle: `floor_us` (GEMM and
attention kernels), `elementwise_floor_us`, and the timer's fixed overhead of a CUDA-event
measurement (`timer_us`, a property of the measurement, reported but not part of the
hardware). Host costs are medians, not fits. Relative errors in the report are fractions
(0.05 = 5 %). A small bounded Nelder-Mead does the work, so the fit runs wherever numpy does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from annotated_types import Ge, Gt, Le, Lt

from calibration.records import prepare
from hwmodels import attention as attn
from hwmodels.roofline import floor_us, op_time
from hwmodels.spec import DTYPE_BYTES, PARALLEL_GRAIN, Efficiency, Hardware

Record = dict[str, Any]
DEVICE_KINDS = ("gemm", "attn_prefill", "attn_decode", "stream")
ATTN_KINDS = ("attn_prefill", "attn_decode")
COMM_KINDS = ("allreduce", "send")
HOST_KINDS = {"dispatch": "dispatch_us", "graph_launch": "graph_launch_us"}
# fitted values that belong to the host description (Host), not to the device's Efficiency
HOST_PARAMS = ("dispatch_us", "op_dispatch_us", "view_us", "sequence_us", "graph_launch_us")
# the pytorch composition of an attention record: SDPA (a heavy kernel) and two index_copy_
ATTN_LIGHT_KERNELS = 2
DEFAULTS: Record = {"op": "gemm", "category": "", "flops": 0.0, "bytes": 0.0, "launches": 1, "m": 0.0,
                    "n": 0.0, "seqs": 0.0, "group": 1, "dtype": "bf16", "ms": float("nan"), "source": ""}
# parameter groups fitted together, by the op kinds whose records constrain them
GROUPS: dict[str, tuple[str, ...]] = {
    "gemm": ("gemm_compute", "gemm_memory", "softmax_p", "gemm_wave"),
    "attn_prefill": ("attn_prefill_compute", "attn_tail", "elementwise_memory.index_copy"),
    "attn_decode": ("attn_decode_memory", "attn_decode_cta_us", "attn_decode_ramp_us"),
    "comm": ("comm_bw", "comm_latency_us"),
}
# log errors beyond this count linearly (Huber): cuBLAS's occasional 2x kernel-choice outliers
# should not drag the smooth curve; below it the loss is the plain squared log error
HUBER = 0.15
# practical upper bounds where the schema has none (microseconds)
# where a cost that defaults to 0 (off) starts its search: a typical size of it (us)
START = {"parallel_us": 10.0, "attn_decode_cta_us": 1.0, "attn_decode_ramp_us": 10.0}
OPEN_BOUNDS = {"floor_us": 50.0, "elementwise_floor_us": 50.0, "attn_decode_seq_us": 50.0, "comm_latency_us": 200.0,
               "attn_decode_cta_us": 20.0, "attn_decode_ramp_us": 100.0, "parallel_us": 1000.0, "attn_softmax_cycles": 1.0, "timer_us": 20.0}


def record(op: str, ms: float, **fields: Any) -> Record:
    """A complete record: the defaults filled in, so every consumer sees every field."""
    r = dict(DEFAULTS)
    r.update(fields, op=op, ms=float(ms))
    return r


# -- prediction ---------------------------------------------------------------------------------

def _batches(records: Sequence[Record]) -> dict[tuple, np.ndarray]:
    """Indices of records that one vectorised call can price (same scalar arguments)."""
    out: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        cat = "" if r["op"] in ("gemm",) + ATTN_KINDS else r.get("category", "")  # priced alike: one call
        key = (r["op"], cat, r.get("dtype", "bf16"), int(r.get("launches", 1)), int(r.get("group", 1)))
        out.setdefault(key, []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


FIELDS = ("flops", "bytes", "m", "n", "seqs", "ms", "heads", "kv_heads", "head_dim", "batch", "len", "elems")


def _columns(records: Sequence[Record]) -> dict[str, np.ndarray]:
    return {f: np.array([float(r.get(f, DEFAULTS.get(f, 0.0)) or 0.0) for r in records]) for f in FIELDS}


def attention_ms(hw: Hardware, op: str, dtype: str, heads, kv_heads, head_dim, batch, length) -> np.ndarray:
    """An attention microbenchmark as the reference decoder runs it, in ms: the flash kernel
    (hwmodels.attention), the two index_copy_ writes of the new keys and values (strided: their
    own bandwidth share, `elementwise_memory.index_copy`), a floor per kernel."""
    eff, dev = hw.efficiency, hw.device
    b, n = np.asarray(batch, dtype=float), np.asarray(length, dtype=float)
    a = DTYPE_BYTES[dtype]
    shape = attn.standard(np.asarray(heads, dtype=float), np.asarray(kv_heads, dtype=float),
                          np.asarray(head_dim, dtype=float), a, a)
    if op == "attn_prefill":
        new = b * n
        t = attn.prefill_s(hw, dtype, b, new, b * n * (n + 1) / 2, 0.0, np.asarray(heads, dtype=float),
                           shape["pair_flops"], shape["ctx_flops"], shape["ctx_bytes"], shape["new_bytes"])
    else:
        new = b
        t = attn.decode_s(hw, dtype, b, b * (n + 1), shape["key_flops"], shape["key_bytes"], shape["seq_bytes"],
                          np.asarray(kv_heads, dtype=float))
    copy = new * shape["key_bytes"] * 2 / (dev.bandwidth * eff.elementwise_memory.get("index_copy", eff.gemm_memory))
    floors = (floor_us(eff, True) + ATTN_LIGHT_KERNELS * floor_us(eff, False)) * 1e-6
    return (t + copy + floors) * 1e3


class _Priced:
    """Records pre-sorted into vectorised batches, so a fit evaluates the model cheaply."""

    def __init__(self, records: Sequence[Record]):
        self.records = list(records)
        self.cols = _columns(self.records)
        self.batches = _batches(self.records)
        self.timed = np.array([bool(r.get("timer")) for r in self.records], dtype=bool)

    def predict(self, hw: Hardware, timer_us: float = 0.0) -> np.ndarray:
        out = np.full(len(self.records), np.nan)
        c = self.cols
        for (op, cat, dtype, launches, group), idx in self.batches.items():
            if op in ATTN_KINDS:
                out[idx] = attention_ms(hw, op, dtype, c["heads"][idx], c["kv_heads"][idx], c["head_dim"][idx],
                                        c["batch"][idx], c["len"][idx])
            elif op in DEVICE_KINDS or op in COMM_KINDS:
                if op in COMM_KINDS and (hw.link is None or (group > hw.devices_per_node and hw.network is None)):
                    continue
                t = op_time(op, cat, c["flops"][idx], c["bytes"][idx], launches, dtype, hw,
                            m=c["m"][idx], n=c["n"][idx], seqs=c["seqs"][idx], group=group, elems=c["elems"][idx])
                out[idx] = np.broadcast_to(np.asarray(t, dtype=float), idx.shape) * 1e3
            elif op == "dispatch":
                out[idx] = [_dispatch_us(hw, self.records[i].get("name")) * 1e-3 * launches for i in idx]
            elif op in HOST_KINDS:
                out[idx] = getattr(hw.host, HOST_KINDS[op]) * 1e-3 * launches
            elif op == "graph_floor" and hw.efficiency.graph_floor_us is not None:
                out[idx] = hw.efficiency.graph_floor_us * 1e-3
        if timer_us:
            out = np.where(self.timed, out + timer_us * 1e-3, out)
        return out


def _dispatch_us(hw: Hardware, name: str | None) -> float:
    """A dispatch record's tight-loop cost per iteration: its op's, or its views'."""
    from calibration.records import VIEW_PAIRS

    if name in VIEW_PAIRS:
        return hw.host.view_us * VIEW_PAIRS[name]
    if name == "view":
        return hw.host.view_us
    return hw.host.op_dispatch_us.get(name or "", hw.host.dispatch_us)


def predict(records: Sequence[Record], hw: Hardware, timer_us: float = 0.0) -> np.ndarray:
    """Predicted ms for each record (NaN for kinds the model does not price, e.g. "step");
    `timer_us` is added to records timed with CUDA events (their measurement's fixed cost)."""
    return _Priced(prepare(list(records))).predict(hw, timer_us)


def rel_errors(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """Signed relative error (pred - meas) / meas."""
    return (np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)


def summary(err: np.ndarray) -> dict[str, float | int]:
    """cases, median and worst absolute relative error (fractions) of finite errors."""
    e = np.abs(np.asarray(err, dtype=float))
    e = e[np.isfinite(e)]
    if e.size == 0:
        return {"cases": 0, "median_abs_err": float("nan"), "worst_abs_err": float("nan")}
    return {"cases": int(e.size), "median_abs_err": round(float(np.median(e)), 5),
            "worst_abs_err": round(float(e.max()), 5)}


def op_label(r: Record) -> str:
    """What the per-op error tables group by: the category for device kernels, else the kind."""
    return (r.get("category") or r["op"]) if r["op"] in DEVICE_KINDS else r["op"]


def error_table(records: Sequence[Record], pred: np.ndarray, key: Callable[[Record], str] = op_label
                ) -> dict[str, dict[str, float | int]]:
    """Per-label error summaries (fractions)."""
    meas = np.array([r["ms"] for r in records], dtype=float)
    err = rel_errors(pred, meas)
    labels = np.array([key(r) for r in records])
    return {lab: summary(err[labels == lab]) for lab in sorted(set(labels.tolist()))}


# -- parameters: get, set, bounds -----------------------------------------------------------------

# per kind of record fitted apart in another dtype (own_dtypes): the one parameter such records set
OWN_DTYPE_PARAM = {"gemm": "gemm_memory_dtype", "attn_prefill": "attn_prefill_compute_dtype",
                   "attn_decode": "attn_decode_compute_dtype"}
DICT_PARAMS = ("elementwise_memory", "elementwise_row_gbps", "elementwise_cache_gain", *OWN_DTYPE_PARAM.values())
# kernels that launch one thread block per token (vLLM-style rms_norm, rotary embedding,
# silu_and_mul): only these get the per-row bound; torch's element-wise kernels (add, embedding
# gather) spread over all elements
ROW_CATEGORIES = ("norm", "rope", "ffn_act")


def get_param(eff: Efficiency, name: str) -> float:
    field, _, cat = name.partition(".")
    if field == "elementwise_memory":
        return float(eff.elementwise_memory.get(cat, eff.gemm_memory))
    if field == "elementwise_row_gbps":
        return float(eff.elementwise_row_gbps.get(cat, float("nan")))
    if field == "elementwise_cache_gain":
        return float(eff.elementwise_cache_gain.get(cat, 0.0))
    if field == "gemm_memory_dtype":
        return float(eff.gemm_memory_dtype.get(cat, eff.gemv_memory or eff.gemm_memory))
    if field in (OWN_DTYPE_PARAM["attn_prefill"], OWN_DTYPE_PARAM["attn_decode"]):
        return float(getattr(eff, field).get(cat, getattr(eff, field.removesuffix("_dtype"))))
    if field == "elementwise_floor_us" and eff.elementwise_floor_us is None:
        return float(eff.floor_us)
    if field in ("gemv_memory", "wide_gemm_memory") and getattr(eff, field) is None:
        return float(eff.gemm_memory)
    v = getattr(eff, name)
    return float(v) if v is not None else float("nan")


def set_params(eff: Efficiency, values: dict[str, float]) -> Efficiency:
    """A copy of `eff` with the named parameters replaced (frozen model: never mutated)."""
    data = eff.model_dump()
    for name, v in values.items():
        field, _, cat = name.partition(".")
        if field in DICT_PARAMS:
            data[field] = {**data[field], cat: float(v)}
        else:
            data[name] = float(v)
    return Efficiency.model_validate(data)


def bounds(name: str) -> tuple[float, float]:
    """Bounds from the pydantic Field constraints (open ends closed by OPEN_BOUNDS)."""
    if name.startswith(("elementwise_memory.", *(f"{p}." for p in OWN_DTYPE_PARAM.values()))):
        return 1e-3, 1.0
    if name.startswith("elementwise_row_gbps."):
        return 0.5, 500.0
    if name.startswith("elementwise_cache_gain."):
        return 0.0, 4.0
    lo, hi = 0.0, OPEN_BOUNDS.get(name, 1e3)
    for c in Efficiency.model_fields[name].metadata:
        if isinstance(c, Gt):
            lo = max(lo, float(c.gt) + 1e-3)
        elif isinstance(c, Ge):
            lo = max(lo, float(c.ge))
        elif isinstance(c, Le):
            hi = min(float(c.le), OPEN_BOUNDS.get(name, float(c.le)))
        elif isinstance(c, Lt):
            hi = float(c.lt) - 1e-3
    return lo, hi


# -- a small bounded Nelder-Mead ------------------------------------------------------------------

def _to_unit(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    u = np.clip((x - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    return np.log(u / (1 - u))


def _from_unit(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) / (1.0 + np.exp(-np.clip(z, -700.0, 700.0)))  # exp(700) still fits a float


def minimize(f: Callable[[np.ndarray], float], x0: Sequence[float], lo: Sequence[float], hi: Sequence[float],
             iters: int = 600, restarts: int = 3, tol: float = 1e-10) -> np.ndarray:
    """Nelder-Mead in a logistic transform of the box [lo, hi], restarted from its best point
    (restarts escape the collapsed simplices NM is known for). Deterministic."""
    lo_, hi_ = np.asarray(lo, float), np.asarray(hi, float)
    g = lambda z: f(_from_unit(z, lo_, hi_))
    z = _to_unit(np.asarray(x0, float), lo_, hi_)
    n = z.size
    for _ in range(restarts):
        simplex = np.vstack([z] + [z + np.eye(n)[i] * 0.7 for i in range(n)])
        vals = np.array([g(s) for s in simplex])
        for _ in range(iters):
            order = np.argsort(vals)
            simplex, vals = simplex[order], vals[order]
            if abs(vals[-1] - vals[0]) <= tol * (abs(vals[0]) + tol):
                break
            centre = simplex[:-1].mean(axis=0)
            xr = centre + (centre - simplex[-1])
            fr = g(xr)
            if fr < vals[0]:
                xe = centre + 2.0 * (centre - simplex[-1])
                fe = g(xe)
                simplex[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
            elif fr < vals[-2]:
                simplex[-1], vals[-1] = xr, fr
            else:
                xc = centre + 0.5 * (simplex[-1] - centre)
                fc = g(xc)
                if fc < vals[-1]:
                    simplex[-1], vals[-1] = xc, fc
                else:  # shrink towards the best vertex
                    simplex[1:] = simplex[0] + 0.5 * (simplex[1:] - simplex[0])
                    vals[1:] = [g(s) for s in simplex[1:]]
        z = simplex[int(np.argmin(vals))]
    return _from_unit(z, lo_, hi_)


# -- the fit ------------------------------------------------------------------------------------

# a width knee must cut the loss of the GEMM fit by this much to be kept: one more parameter
# (and a choice among widths) always fits a little better
WIDE_GAIN = 0.8


def wide_gemm_knee(priced: _Priced, hw: Hardware, names: list[str]) -> Hardware:
    """The output width from which a CPU BLAS's blocked small-M GEMM streams weights at its own,
    lower rate (efficiency.wide_gemm_n): each measured width in turn is tried as the knee, with
    the GEMM parameters and wide_gemm_memory fitted on either side of it; the best is kept if it
    fits clearly better (WIDE_GAIN) than no knee. A discrete choice, like comm_hops."""
    rows = priced.cols["m"] > 1
    widths = sorted({float(n) for n in priced.cols["n"][rows]})
    base = _fit_group(priced, hw, names)
    best, best_loss = base, _loss(priced, base)
    no_knee = best_loss
    for knee in widths[1:]:  # a knee needs records on both sides of it
        above = rows & (priced.cols["n"] >= knee)
        if above.sum() < 3 or (rows & ~above).sum() < 3:
            continue
        eff = Efficiency.model_validate({**hw.efficiency.model_dump(), "wide_gemm_n": int(knee),
                                         "wide_gemm_memory": get_param(hw.efficiency, "gemm_memory")})
        h = _fit_group(priced, hw.model_copy(update={"efficiency": eff}), names + ["wide_gemm_memory"])
        loss = _loss(priced, h)
        if loss < best_loss:
            best, best_loss = h, loss
    return hw if best is base or best_loss > WIDE_GAIN * no_knee else best


def _loss(priced: _Priced, hw: Hardware, timer_us: float = 0.0) -> float:
    p = priced.predict(hw, timer_us)
    ok = np.isfinite(p) & (p > 0)
    if not ok.any():
        return 0.0
    d = np.abs(np.log(p[ok]) - np.log(priced.cols["ms"][ok]))
    h = np.where(d <= HUBER, d * d, HUBER * (2.0 * d - HUBER))
    return float(h.sum()) + 1e3 * float((~ok).sum())


def _fit_group(priced: _Priced, hw: Hardware, names: list[str], timer_us: float = 0.0, warm: bool = False) -> Hardware:
    if not names or not priced.records:
        return hw
    x0 = [get_param(hw.efficiency, n) for n in names]
    bl = [bounds(n) for n in names]
    # an absent per-row rate starts where such kernels are (~10 GB/s per block), else mid-box; a
    # value on its lower bound (a cost that is off by default) starts at a typical size instead,
    # where the search can move it
    x0 = [min(max(START.get(n, v) if (not math.isfinite(v) or v <= lo) and n in START else
                  v if math.isfinite(v) else 10.0 if n.startswith("elementwise_row_gbps") else 0.5 * (lo + hi),
                  lo), hi) for n, v, (lo, hi) in zip(names, x0, bl, strict=True)]

    def f(x: np.ndarray) -> float:
        eff = set_params(hw.efficiency, dict(zip(names, x, strict=True)))
        return _loss(priced, hw.model_copy(update={"efficiency": eff}), timer_us)
    restarts = 1 if warm else (2 if len(names) == 1 else 3)  # a warm start (a later round) needs no restart
    best = minimize(f, x0, [b[0] for b in bl], [b[1] for b in bl], restarts=restarts)
    return hw.model_copy(update={"efficiency": set_params(hw.efficiency, dict(zip(names, best, strict=True)))})


def _fit_timer(priced: _Priced, hw: Hardware, timer_us: float) -> float:
    lo, hi = 0.0, OPEN_BOUNDS["timer_us"]
    return float(minimize(lambda x: _loss(priced, hw, float(x[0])), [min(max(timer_us, lo + 1e-3), hi - 1e-3)],
                          [lo], [hi], restarts=1)[0])


def _with_comm_latency(hw: Hardware) -> Hardware:
    """comm_latency_us None means 'the link's latency': make it a number so it can be fitted."""
    if hw.efficiency.comm_latency_us is not None or hw.link is None:
        return hw
    return hw.model_copy(update={"efficiency": set_params(hw.efficiency, {"comm_latency_us": hw.link.latency_us})})


def host_costs(records: Sequence[Record]) -> dict[str, Any]:
    """Host costs from dispatch, graph-launch and sequence records: medians, not fits.

    A dispatch record times a loop of one tiny op: its op's tight-loop cost (`op_dispatch_us`),
    and the median over the kernel-launching ones is `dispatch_us`; a loop of views gives
    `view_us` (older runs timed a transpose + reshape pair: half of it). A sequence record times
    a model's layer at tiny shapes, host-bound: what its calls cost beyond their tight loops is
    `sequence_us` per call."""
    from calibration.records import VIEW_PAIRS

    out: dict[str, Any] = {}
    per_op: dict[str, list[float]] = {}
    generic: list[float] = []
    for r in records:
        if r["op"] != "dispatch":
            continue
        us = float(r["ms"]) * 1e3 / max(int(r.get("launches", 1)), 1)
        name = r.get("name")
        if name in VIEW_PAIRS:
            per_op.setdefault("view", []).append(us / VIEW_PAIRS[name])
        elif name:
            per_op.setdefault(name, []).append(us)
        else:
            generic.append(us)
    ops = {k: round(float(np.median(v)), 3) for k, v in per_op.items()}
    kernel_ops = [v for k, v in ops.items() if k != "view"] or generic
    if kernel_ops:
        out["dispatch_us"] = round(float(np.median(kernel_ops)), 3)
    if "view" in ops:
        out["view_us"] = ops.pop("view")
    if ops:
        out["op_dispatch_us"] = ops
    g = [float(r["ms"]) * 1e3 / max(int(r.get("launches", 1)), 1) for r in records if r["op"] == "graph_launch"]
    if g:
        out["graph_launch_us"] = round(float(np.median(g)), 3)
    seq = [r for r in records if r["op"] == "sequence"]
    if seq and "dispatch_us" in out:
        from hwmodels.spec import Host

        host = Host(**{k: v for k, v in out.items()}, sequence_us=0.0)
        extra = []
        for r in seq:
            calls: dict[str, int] = r["calls"]
            tight = sum(n * host.call_us(k) for k, n in calls.items())
            extra.append((float(r["ms"]) * 1e3 - tight) / max(sum(calls.values()), 1))
        out["sequence_us"] = round(max(float(np.median(extra)), 0.0), 3)
    return out


def net_of_host(records: Sequence[Record], host: Any) -> list[Record]:
    """CPU records keep their wall time (`wall_ms`): their device share is the wall time less
    the host's tight-loop cost of the calls the microbenchmark made (its composition)."""
    from simulator.moment import kernels as kn

    out = []
    for r in records:
        if "wall_ms" in r and r["op"] in DEVICE_KINDS:
            a = DTYPE_BYTES.get(r.get("dtype", "fp32"), 4.0)
            name = {"attn_prefill": "attention", "attn_decode": "attention", "gemm": "linear"}.get(
                r["op"], STREAM_NAME.get(r.get("category", ""), ""))
            cs = kn.calls("pytorch", name) if name != "linear" else (kn.Call("linear"),)
            host_ms = sum(host.view_us if c.host_op(a) == "view" else
                          host.op_dispatch_us.get(c.op, host.dispatch_us) for c in cs) * 1e-3
            r = {**r, "ms": float(r["wall_ms"]) - host_ms, "dispatch_ms": host_ms}
        out.append(r)
    return out


STREAM_NAME = {"norm": "input_norm", "rope": "rope", "ffn_act": "ffn_act", "residual_add": "attn_residual",
               "embed": "embed"}


def own_dtypes(records: Sequence[Record], kind: str) -> list[str]:
    """The dtypes of one op kind's records fitted apart from fp32's: a CPU runs each other dtype
    on that dtype's own kernels (oneDNN's bf16 GEMMs beside MKL's fp32; a bf16 SDPA that converts
    to fp32), which set only that op's OWN_DTYPE_PARAM for it."""
    dtypes = {r["dtype"] for r in records}
    return sorted(dtypes - {"fp32"}) if kind == "cpu" and "fp32" in dtypes else []


def apart(records: Sequence[Record], kind: str) -> list[Record]:
    """The records of `records` fitted apart in their own dtype (own_dtypes of each op kind)."""
    out: list[Record] = []
    for op in OWN_DTYPE_PARAM:
        rs = [r for r in records if r["op"] == op]
        own = own_dtypes(rs, kind)
        out += [r for r in rs if r["dtype"] in own]
    return out


def fit_profile(records: Iterable[Record], hw: Hardware, fix: set[str] | Iterable[str] = (),
                outer: int = 20) -> tuple[Hardware, dict[str, Any]]:
    """Fit the efficiencies of `hw` (and its host costs) to `records`.

    `fix`: parameter names held at their value in `hw` (e.g. {"softmax_p", "gemm_wave"} or
    "elementwise_memory.embed"). Records marked "fit": False (copies) are left out, and on a
    CPU those whose device share is under a tenth of their wall time (noise once the host's
    share is taken off). The shared constants (floors, the timer) alternate with the groups'
    own parameters for up to `outer` rounds. Returns the fitted hardware and a report with the
    values, the number of cases and the median/worst absolute relative errors overall, per op
    kind and per op (category).
    """
    recs = prepare([r for r in records if r.get("fit", True) is not False])
    fix = set(fix)
    # the floors are what is measured here: the base part's kernel_launch_us (a bound under every
    # eager kernel, roofline.floor_us) must not hold them up; calibrate sets it from the fitted floors
    hw = hw.model_copy(update={"device": hw.device.model_copy(update={"kernel_launch_us": 0.0})})
    host_upd = {k: v for k, v in host_costs(recs).items() if k not in fix}
    if host_upd:
        hw = hw.model_copy(update={"host": hw.host.model_copy(update=host_upd)})
    recs = net_of_host(recs, hw.host)
    recs = [r for r in recs if math.isfinite(float(r.get("ms", float("nan")))) and float(r["ms"]) > 0
            and not ("wall_ms" in r and float(r["ms"]) < 0.1 * float(r["wall_ms"]))]
    by_kind: dict[str, list[Record]] = {}
    for r in recs:
        by_kind.setdefault(r["op"], []).append(r)
    free = lambda names: [n for n in names if n not in fix]  # noqa: E731
    eff_upd: dict[str, float] = {}
    floors = by_kind.get("graph_floor", [])
    if floors and "graph_floor_us" not in fix:
        eff_upd["graph_floor_us"] = round(float(np.median([r["ms"] * 1e3 for r in floors])), 4)
    if hw.efficiency.elementwise_floor_us is None:
        eff_upd["elementwise_floor_us"] = hw.efficiency.floor_us
    if eff_upd:
        hw = hw.model_copy(update={"efficiency": set_params(hw.efficiency, eff_upd)})
    groups: list[tuple[_Priced, list[str]]] = []
    wide_n: dict[str, int] = {}
    gemm = by_kind.get("gemm", [])
    own = own_dtypes(gemm, hw.device.kind)
    if gemm:
        names = free(GROUPS["gemm"])
        if hw.device.kind == "cpu" and any(0 < float(r.get("m", 0) or 0) <= 1 for r in gemm) and "gemv_memory" not in fix:
            # a CPU's BLAS streams a matrix-vector product on another path than a blocked GEMM
            if hw.efficiency.gemv_memory is None:
                hw = hw.model_copy(update={"efficiency": set_params(hw.efficiency,
                                                                    {"gemv_memory": hw.efficiency.gemm_memory})})
            names.append("gemv_memory")
        fp32 = [r for r in gemm if r["dtype"] not in own]
        if hw.device.kind == "cpu" and "wide_gemm_memory" not in fix:
            hw = wide_gemm_knee(_Priced(fp32), hw, names)
            if hw.efficiency.wide_gemm_n is not None:
                names.append("wide_gemm_memory")
                wide_n = {"wide_gemm_n": hw.efficiency.wide_gemm_n}
        groups.append((_Priced(fp32), names))
        for d in own:  # only their weights' stream is theirs: the fp32 GEMMs set the rest
            groups.append((_Priced([r for r in gemm if r["dtype"] == d]), free([f"gemm_memory_dtype.{d}"])))
    for kind in ATTN_KINDS:
        rs = by_kind.get(kind, [])
        own_attn = own_dtypes(rs, hw.device.kind)
        main = [r for r in rs if r["dtype"] not in own_attn]
        if main:
            names = free(GROUPS[kind])
            if kind == "attn_prefill" and len({r.get("head_dim") for r in main}) > 1:
                names += free(["attn_softmax_cycles"])  # head dims apart separate softmax from matmul
            groups.append((_Priced(main), names))
        for d in own_attn:  # only their matmul rate is theirs: the fp32 records set the rest
            groups.append((_Priced([r for r in rs if r["dtype"] == d]), free([f"{OWN_DTYPE_PARAM[kind]}.{d}"])))
    streams = by_kind.get("stream", [])
    for cat in sorted({r["category"] for r in streams}):
        rs = [r for r in streams if r["category"] == cat]
        names = [f"elementwise_memory.{cat}"]
        cache = hw.device.cache_mb * 1e6
        if any(float(r["bytes"]) < cache * max(int(r.get("launches", 1)), 1) for r in rs):
            names.append(f"elementwise_cache_gain.{cat}")  # only cases that fit in cache tell
        if cat in ROW_CATEGORIES and any(float(r.get("m", 0) or 0) > 0 for r in rs):
            names.append(f"elementwise_row_gbps.{cat}")
        groups.append((_Priced(rs), free(names)))
    device = [r for k in DEVICE_KINDS for r in by_kind.get(k, [])]
    shared: list[tuple[str, _Priced]] = []
    # (not another dtype's CPU GEMMs or attention: their library's per-call cost is not the kernel floor)
    other = {id(r) for r in apart(device, hw.device.kind)}
    heavy = [r for r in device if r["op"] != "stream" and id(r) not in other]
    if heavy and "floor_us" not in fix:
        shared.append(("floor_us", _Priced(heavy)))
    light = [r for r in device if r["op"] != "gemm" and id(r) not in other]
    if light and "elementwise_floor_us" not in fix:
        shared.append(("elementwise_floor_us", _Priced(light)))
    wide = [r for r in streams if float(r.get("elems", 0) or 0) >= PARALLEL_GRAIN]
    if hw.device.kind == "cpu" and wide and len(wide) < len(streams) and "parallel_us" not in fix:
        shared.append(("parallel_us", _Priced(streams)))  # kernels on both sides of the grain tell
    timed = [r for r in device if r.get("timer")]
    timer = 0.0
    fitted: list[str] = []
    timed_priced = _Priced(timed)
    for k in range(outer if shared or timed else 1):
        before = [get_param(hw.efficiency, n) for n, _ in shared] + [timer]
        for priced, names in groups:
            hw = _fit_group(priced, hw, names, timer, warm=k > 0)
        for name, priced in shared:
            hw = _fit_group(priced, hw, [name], timer, warm=k > 0)
        if timed and "timer_us" not in fix:
            timer = _fit_timer(timed_priced, hw, timer)
        after = [get_param(hw.efficiency, n) for n, _ in shared] + [timer]
        # settled: no shared constant moved by more than 0.3 % (or 0.01 us)
        if all(abs(a - b) <= max(3e-3 * abs(b), 1e-2) for a, b in zip(after, before, strict=True)):
            break
    fitted += [n for _, names in groups for n in names] + [n for n, _ in shared]
    comm = [r for r in recs if r["op"] in COMM_KINDS]
    hops_param: dict[str, str] = {}
    if comm and hw.link is not None:
        hw = _with_comm_latency(hw)
        names = free(GROUPS["comm"])
        if "comm_hops" not in fix and any(r["op"] == "allreduce" and int(r.get("group", 1)) > 2 for r in comm):
            # ring or tree latency: a discrete choice, kept where it fits the all-reduces better
            fits = []
            for hops in ("ring", "tree"):
                h = hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update={"comm_hops": hops})})
                h = _fit_group(_Priced(comm), h, names)
                fits.append((_loss(_Priced(comm), h), hops, h))
            _, hops, hw = min(fits, key=lambda x: x[0])
            hops_param["comm_hops"] = hops
        else:
            hw = _fit_group(_Priced(comm), hw, names)
        fitted += names
    # round for a readable profile; the rounding moves predictions by < 0.1 %
    rounded = {n: round(get_param(hw.efficiency, n), 4) for n in fitted}
    hw = hw.model_copy(update={"efficiency": set_params(hw.efficiency, rounded)})
    timer = round(timer, 4)
    pred = _Priced(recs).predict(hw, timer)
    priced = np.isfinite(pred)  # sequence records shape a host cost; the model does not price them
    recs = [r for r, ok in zip(recs, priced, strict=True) if ok]
    pred = pred[priced]
    meas = np.array([r["ms"] for r in recs], dtype=float)
    params: dict[str, Any] = {**rounded, **wide_n, **hops_param, **{k: v for k, v in eff_upd.items() if k == "graph_floor_us"},
                              **host_upd}
    report: dict[str, Any] = {"params": params, **summary(rel_errors(pred, meas)),
                              "per_kind": error_table(recs, pred, key=lambda r: r["op"]),
                              "per_op": error_table(recs, pred), "timer_us": timer}
    return hw, report


__all__ = ["Record", "record", "predict", "fit_profile", "host_costs", "attention_ms", "HOST_PARAMS", "rel_errors", "summary", "error_table", "op_label",
           "minimize", "bounds", "get_param", "set_params"]


def attention_held_out(records: Sequence[Record], hw: Hardware, timer_us: float = 0.0,
                       start: Efficiency | None = None) -> dict[str, Any]:
    """Attention fitted on some models and checked on the others: for each model among the
    attention records, its attention parameters (fit.GROUPS, the softmax cycles where head sizes
    differ) are fitted afresh from `start` (default: the efficiencies before any fit) on the
    other models' records, everything else held at `hw`, and its own records are predicted.
    The records are of one dtype (a GPU's bf16, as the H200 run's): a CPU's bf16 records, fitted
    apart by fit_profile (own_dtypes), would be mixed with its fp32 ones here.
    Returns the held-out errors per model and overall (fractions)."""
    recs = [r for r in prepare(list(records)) if r["op"] in ATTN_KINDS]
    start = start or Efficiency()
    names = {k: list(GROUPS[k]) for k in ATTN_KINDS}
    init = {n: get_param(start, n) for k in ATTN_KINDS for n in names[k] + ["attn_softmax_cycles"]}
    out: dict[str, Any] = {"per_model": {}}
    errs: list[np.ndarray] = []
    for model in sorted({r.get("model", "") for r in recs}):
        train = [r for r in recs if r.get("model") != model]
        test = [r for r in recs if r.get("model") == model]
        h = hw.model_copy(update={"efficiency": set_params(hw.efficiency, init)})
        for kind in ATTN_KINDS:
            rs = [r for r in train if r["op"] == kind]
            extra = ["attn_softmax_cycles"] if kind == "attn_prefill" and len({r["head_dim"] for r in rs}) > 1 else []
            if rs:
                h = _fit_group(_Priced(rs), h, names[kind] + extra, timer_us)
        e = rel_errors(_Priced(test).predict(h, timer_us), np.array([r["ms"] for r in test]))
        out["per_model"][model] = summary(e)
        errs.append(e)
    out["all"] = summary(np.concatenate(errs)) if errs else summary(np.array([]))
    return out
