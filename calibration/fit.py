"""Fit the roofline's efficiency parameters to measured op times (numpy only, no torch).

A measurement record is a plain dict, so calibrate runs, published data and tests share one
format and a profile can store them as JSON:

    {"op": "gemm" | "attn_prefill" | "attn_decode" | "stream" | "allreduce" | "send"
           | "dispatch" | "graph_launch" | "step",
     "category": one of simulator.moment.ops.CATEGORIES, "flops", "bytes", "launches", "m", "n",
     "seqs", "group", "dtype", "ms" (measured median), "source"}

The fit minimises the squared log error of `hwmodels.roofline.op_time` (relative errors, so a
5 us kernel counts as much as a 5 ms one), Huber-robust beyond 15 %. The parameters separate
by op kind: GEMM shape from GEMM records; per element-wise category its bandwidth fraction, its
cache gain and (one block per token kernels) its per-row rate; attention from attention
records; link efficiency, latency and ring/tree hops from collectives. Two floors are shared
across groups, so they alternate with the groups' parameters until they settle: `floor_us`
(GEMM, attention) and `elementwise_floor_us`. Host costs are medians, not fits. Relative
errors in the report are fractions (0.05 = 5 %). A small bounded Nelder-Mead does the work,
so the fit runs wherever numpy does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from annotated_types import Ge, Gt, Le, Lt

from hwmodels.roofline import op_time
from hwmodels.spec import Efficiency, Hardware

Record = dict[str, Any]
DEVICE_KINDS = ("gemm", "attn_prefill", "attn_decode", "stream")
COMM_KINDS = ("allreduce", "send")
HOST_KINDS = {"dispatch": "dispatch_us", "graph_launch": "graph_launch_us"}
DEFAULTS: Record = {"op": "gemm", "category": "", "flops": 0.0, "bytes": 0.0, "launches": 1, "m": 0.0,
                    "n": 0.0, "seqs": 0.0, "group": 1, "dtype": "bf16", "ms": float("nan"), "source": ""}
# parameter groups fitted together, by the op kinds whose records constrain them
GROUPS: dict[str, tuple[str, ...]] = {
    "gemm": ("gemm_compute", "gemm_memory", "softmax_p", "gemm_wave"),
    "attn_prefill": ("attn_prefill_compute",),
    "attn_decode": ("attn_decode_memory", "attn_decode_compute", "attn_decode_seq_us"),
    "comm": ("comm_bw", "comm_latency_us"),
}
# log errors beyond this count linearly (Huber): cuBLAS's occasional 2x kernel-choice outliers
# should not drag the smooth curve; below it the loss is the plain squared log error
HUBER = 0.15
# practical upper bounds where the schema has none (microseconds)
OPEN_BOUNDS = {"floor_us": 50.0, "elementwise_floor_us": 50.0, "attn_decode_seq_us": 50.0, "comm_latency_us": 200.0}


def record(op: str, ms: float, **fields: Any) -> Record:
    """A complete record: the defaults filled in, so every consumer sees every field."""
    r = dict(DEFAULTS)
    r.update(fields, op=op, ms=float(ms))
    return r


# -- prediction ---------------------------------------------------------------------------------

def _batches(records: Sequence[Record]) -> dict[tuple, np.ndarray]:
    """Indices of records that one vectorised op_time call can price (same scalar arguments)."""
    out: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        key = (r["op"], r.get("category", ""), r.get("dtype", "bf16"), int(r.get("launches", 1)),
               int(r.get("group", 1)))
        out.setdefault(key, []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


def _columns(records: Sequence[Record]) -> dict[str, np.ndarray]:
    return {f: np.array([float(r.get(f, DEFAULTS[f]) or 0.0) for r in records])
            for f in ("flops", "bytes", "m", "n", "seqs", "ms")}


class _Priced:
    """Records pre-sorted into vectorised batches, so a fit evaluates op_time cheaply."""

    def __init__(self, records: Sequence[Record]):
        self.records = list(records)
        self.cols = _columns(self.records)
        self.batches = _batches(self.records)

    def predict(self, hw: Hardware) -> np.ndarray:
        out = np.full(len(self.records), np.nan)
        c = self.cols
        for (op, cat, dtype, launches, group), idx in self.batches.items():
            if op in DEVICE_KINDS or op in COMM_KINDS:
                if op in COMM_KINDS and (hw.link is None or (group > hw.devices_per_node and hw.network is None)):
                    continue
                t = op_time(op, cat, c["flops"][idx], c["bytes"][idx], launches, dtype, hw,
                            m=c["m"][idx], n=c["n"][idx], seqs=c["seqs"][idx], group=group)
                out[idx] = np.broadcast_to(np.asarray(t, dtype=float), idx.shape) * 1e3
            elif op in HOST_KINDS:
                out[idx] = getattr(hw.host, HOST_KINDS[op]) * 1e-3 * launches
        return out


def predict(records: Sequence[Record], hw: Hardware) -> np.ndarray:
    """Predicted ms for each record (NaN for kinds the roofline does not price, e.g. "step")."""
    return _Priced(records).predict(hw)


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

DICT_PARAMS = ("elementwise_memory", "elementwise_row_gbps", "elementwise_cache_gain")
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
    if field == "elementwise_floor_us" and eff.elementwise_floor_us is None:
        return float(eff.floor_us)
    if field == "gemv_memory" and eff.gemv_memory is None:
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
    if name.startswith("elementwise_memory."):
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
            hi = float(c.le)
        elif isinstance(c, Lt):
            hi = float(c.lt) - 1e-3
    return lo, hi


# -- a small bounded Nelder-Mead ------------------------------------------------------------------

def _to_unit(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    u = np.clip((x - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    return np.log(u / (1 - u))


def _from_unit(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) / (1.0 + np.exp(-z))


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

def _loss(priced: _Priced, hw: Hardware) -> float:
    p = priced.predict(hw)
    ok = np.isfinite(p) & (p > 0)
    if not ok.any():
        return 0.0
    d = np.abs(np.log(p[ok]) - np.log(priced.cols["ms"][ok]))
    h = np.where(d <= HUBER, d * d, HUBER * (2.0 * d - HUBER))
    return float(h.sum()) + 1e3 * float((~ok).sum())


def _fit_group(priced: _Priced, hw: Hardware, names: list[str]) -> Hardware:
    if not names or not priced.records:
        return hw
    x0 = [get_param(hw.efficiency, n) for n in names]
    bl = [bounds(n) for n in names]
    # an absent per-row rate starts where such kernels are (~10 GB/s per block), else mid-box
    x0 = [min(max(v if math.isfinite(v) else 10.0 if n.startswith("elementwise_row_gbps") else 0.5 * (lo + hi),
                  lo), hi) for n, v, (lo, hi) in zip(names, x0, bl, strict=True)]

    def f(x: np.ndarray) -> float:
        return _loss(priced, hw.model_copy(update={"efficiency": set_params(hw.efficiency, dict(zip(names, x, strict=True)))}))
    best = minimize(f, x0, [b[0] for b in bl], [b[1] for b in bl], restarts=2 if len(names) == 1 else 3)
    return hw.model_copy(update={"efficiency": set_params(hw.efficiency, dict(zip(names, best, strict=True)))})


def _with_comm_latency(hw: Hardware) -> Hardware:
    """comm_latency_us None means 'the link's latency': make it a number so it can be fitted."""
    if hw.efficiency.comm_latency_us is not None or hw.link is None:
        return hw
    return hw.model_copy(update={"efficiency": set_params(hw.efficiency, {"comm_latency_us": hw.link.latency_us})})


def fit_profile(records: Iterable[Record], hw: Hardware, fix: set[str] | Iterable[str] = (),
                outer: int = 20) -> tuple[Hardware, dict[str, Any]]:
    """Fit the efficiencies of `hw` (and host dispatch/graph-launch costs) to `records`.

    `fix`: parameter names held at their value in `hw` (e.g. {"softmax_p", "gemm_wave"} or
    "elementwise_memory.embed"). Records marked "fit": False (copies) are left out. The floors,
    shared by groups, alternate with the groups' own parameters for up to `outer` rounds.
    Returns the fitted hardware and a report with the values, the number of cases and the
    median/worst absolute relative errors overall, per op kind and per op (category).
    """
    recs = [r for r in records if r.get("fit", True) is not False
            and math.isfinite(float(r.get("ms", float("nan")))) and float(r["ms"]) > 0]
    fix = set(fix)
    # the floors are what is measured here: the base part's kernel_launch_us (a bound under every
    # kernel, Hardware.floor_us) must not hold them up; calibrate sets it from the fitted floors
    hw = hw.model_copy(update={"device": hw.device.model_copy(update={"kernel_launch_us": 0.0})})
    by_kind: dict[str, list[Record]] = {}
    for r in recs:
        by_kind.setdefault(r["op"], []).append(r)
    free = lambda names: [n for n in names if n not in fix]  # noqa: E731
    # blocks: (records sharing a floor, the floor's name, [(group records, group params)])
    heavy = [(_Priced(by_kind[k]), free(GROUPS[k])) for k in ("gemm", "attn_prefill", "attn_decode") if k in by_kind]
    gemv = [r for r in by_kind.get("gemm", []) if 0 < float(r.get("m", 0) or 0) <= 1]
    if gemv and hw.device.kind == "cpu" and "gemv_memory" not in fix:
        # a CPU's BLAS streams a matrix-vector product on another path than a blocked GEMM
        if hw.efficiency.gemv_memory is None:
            hw = hw.model_copy(update={"efficiency": set_params(hw.efficiency, {"gemv_memory": hw.efficiency.gemm_memory})})
        heavy[0] = (heavy[0][0], heavy[0][1] + ["gemv_memory"])
    streams = by_kind.get("stream", [])
    light = []
    for cat in sorted({r["category"] for r in streams}):
        rs = [r for r in streams if r["category"] == cat]
        names = [f"elementwise_memory.{cat}"]
        cache = hw.device.cache_mb * 1e6
        if any(float(r["bytes"]) < cache * max(int(r.get("launches", 1)), 1) for r in rs):
            names.append(f"elementwise_cache_gain.{cat}")  # only cases that fit in cache tell
        if cat in ROW_CATEGORIES and any(float(r.get("m", 0) or 0) > 0 for r in rs):
            names.append(f"elementwise_row_gbps.{cat}")
        light.append((_Priced(rs), free(names)))
    blocks = [([r for k in ("gemm", "attn_prefill", "attn_decode") for r in by_kind.get(k, [])], "floor_us", heavy),
              (streams, "elementwise_floor_us", light)]
    fitted: list[str] = []
    hops_param: dict[str, str] = {}
    for rs, floor, groups in blocks:
        if not rs:
            continue
        if floor == "elementwise_floor_us" and hw.efficiency.elementwise_floor_us is None:
            hw = hw.model_copy(update={"efficiency": set_params(hw.efficiency, {floor: hw.efficiency.floor_us})})
        shared = _Priced(rs) if floor not in fix else None
        for _ in range(outer if shared else 1):
            before = get_param(hw.efficiency, floor)
            for priced, names in groups:
                hw = _fit_group(priced, hw, names)
            if shared:
                hw = _fit_group(shared, hw, [floor])
                if abs(get_param(hw.efficiency, floor) - before) <= 1e-4 * max(before, 1e-3):
                    break
        fitted += [n for _, names in groups for n in names] + ([floor] if shared else [])
    comm = [r for r in recs if r["op"] in COMM_KINDS]
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
    host_upd: dict[str, float] = {}
    for kind, field in HOST_KINDS.items():
        rs = by_kind.get(kind, [])
        if rs and field not in fix:
            host_upd[field] = round(float(np.median([r["ms"] * 1e3 / max(int(r.get("launches", 1)), 1) for r in rs])), 3)
    if host_upd:
        hw = hw.model_copy(update={"host": hw.host.model_copy(update=host_upd)})
    # round for a readable profile; the rounding moves predictions by < 0.1 %
    rounded = {n: round(get_param(hw.efficiency, n), 4) for n in fitted}
    hw = hw.model_copy(update={"efficiency": set_params(hw.efficiency, rounded)})
    pred = predict(recs, hw)
    meas = np.array([r["ms"] for r in recs], dtype=float)
    report: dict[str, Any] = {"params": {**rounded, **hops_param, **host_upd}, **summary(rel_errors(pred, meas)),
                              "per_kind": error_table(recs, pred, key=lambda r: r["op"]),
                              "per_op": error_table(recs, pred)}
    return hw, report


__all__ = ["Record", "record", "predict", "fit_profile", "rel_errors", "summary", "error_table", "op_label",
           "minimize", "bounds", "get_param", "set_params"]
